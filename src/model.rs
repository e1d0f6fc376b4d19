//! Domain types shared by the analytics, the actors, the gateway and the benchmarks.
//!
//! Plain data only: no I/O and no maths beyond trivial accessors. The proto messages are
//! converted to and from these at the gateway edge (`gateway::convert`).

mod event;
mod ids;
mod spec;

pub use event::{
    EventPayload, Heartbeat, HeartbeatStatus, JobOutcome, JobStatus, ResponseTimeSample,
    TelemetryEvent, UtilizationSample,
};
pub use ids::{EventFingerprint, NodeId, ProviderId, ShardId, fnv1a64};
pub use spec::{GpuSpec, ProviderSpec};

/// Event time, in seconds since the Unix epoch. Analytics never read the wall clock.
pub type UnixSeconds = i64;

/// Seconds in an hour bucket.
pub const HOUR: i64 = 3600;

/// The epoch hour an event time falls in.
pub fn hour_of(ts: UnixSeconds) -> i64 {
    ts.div_euclid(HOUR)
}
