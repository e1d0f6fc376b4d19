use serde::{Deserialize, Serialize};

use super::{ProviderId, ProviderSpec, UnixSeconds};

/// One telemetry event from the metrics collector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TelemetryEvent {
    /// Collector-assigned id; a resent event with the same id changes nothing.
    pub event_id: String,
    pub provider_id: ProviderId,
    /// Event time (seconds since the Unix epoch).
    pub timestamp: UnixSeconds,
    pub payload: EventPayload,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventPayload {
    JobOutcome(JobOutcome),
    Heartbeat(Heartbeat),
    ResponseTime(ResponseTimeSample),
    Utilization(UtilizationSample),
    /// Boxed: a spec is rare and large, and every event is moved several times on its way
    /// from the wire to the log (the enum is 40 bytes instead of 88).
    Spec(Box<ProviderSpec>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobStatus {
    Completed,
    Failed,
    TimedOut,
    Cancelled,
}

/// A finished job: `timestamp` is when it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobOutcome {
    pub status: JobStatus,
    pub duration_seconds: f64,
    pub sla_met: bool,
    /// Provider-side error code for failed jobs (0 = none).
    pub error_code: u32,
    /// What the job cost the customer.
    pub cost: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeartbeatStatus {
    Online,
    /// The provider says it is down (maintenance, drained); counted as downtime.
    Offline,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub status: HeartbeatStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseTimeSample {
    pub response_time_ms: f64,
    /// An error answer (5xx, refused) rather than a normal response.
    pub is_error: bool,
}

/// Resource utilization fractions in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct UtilizationSample {
    pub cpu: f64,
    pub gpu: f64,
    pub memory: f64,
}
