//! The actors: one [`ProviderActor`] per provider under one [`ShardActor`] per logical shard,
//! and the [`CoordinatorActor`] that turns shard summaries into network analytics, rankings
//! and tier cut-offs.
//!
//! Actors hold state and do I/O; every computation is a pure function from
//! [`crate::analytics`], called inside a read closure sent to the actor (`ProviderMsg::Read`;
//! a parked provider's shard runs it over a decoded copy), so the actor layer does not need
//! to know the shape of each answer.

pub mod coordinator;
pub mod provider;
pub mod shard;

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{broadcast, watch};

use crate::analytics::alerts::Alert;
use crate::analytics::recommend::CandidateIndex;
use crate::analytics::state::StateParams;
use crate::analytics::view::AnalyticsSnapshot;
use crate::config::AnalyticsConfig;

pub use coordinator::{CoordinatorActor, CoordinatorMsg};
pub use provider::{ProviderActor, ProviderMsg};
pub use shard::{ShardActor, ShardMsg};

/// An alert with the provider's region, as WatchAlerts filters and shows it.
#[derive(Clone, Debug)]
pub struct NodeAlert {
    pub alert: Alert,
    pub region: String,
}

/// What every actor of a node shares: configuration, the latest coordinator snapshot, the
/// alert bus and node-wide counters.
pub struct NodeShared {
    pub config: AnalyticsConfig,
    pub params: StateParams,
    pub snapshot: watch::Receiver<Arc<AnalyticsSnapshot>>,
    pub alerts: broadcast::Sender<NodeAlert>,
    /// Newest event time accepted on this node: the reference for the window and skew checks.
    pub newest_event_time: AtomicI64,
    pub providers: AtomicU64,
    /// Of those, the parked (no actor, state encoded).
    pub parked: AtomicU64,
    /// How long a provider stays idle before it is parked (zero: never).
    pub passivate_after: std::time::Duration,
    pub events_ingested: AtomicU64,
    /// The write-ahead log, when the node has a data directory.
    pub wal: Option<crate::storage::WalHandle>,
    /// What the cluster layer knows (etcd mode); `None` when standalone (every shard owned).
    pub cluster: Option<watch::Receiver<crate::cluster::member::ClusterView>>,
    /// Each shard's [`ShardMode`] as its actor last set it, for the gateway's routing.
    pub shard_modes: Box<[AtomicU8]>,
    /// Each shard's candidate index as its actor last built it (every coordinator cycle;
    /// emptied when the shard leaves), scanned by the gateway for recommendations.
    pub candidate_indexes: Box<[RwLock<Arc<CandidateIndex>>]>,
}

/// What a shard actor does with its shard on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ShardMode {
    /// Not served here (owned elsewhere, or not yet confirmed by the map). It may hold
    /// providers received in a handoff, waiting for the map to flip.
    Inactive = 0,
    /// Owned: reads and writes.
    Active = 1,
    /// Being handed off: reads, no writes (they get a retryable refusal).
    Frozen = 2,
}

impl ShardMode {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Active,
            2 => Self::Frozen,
            _ => Self::Inactive,
        }
    }
}

impl NodeShared {
    pub fn new(
        config: AnalyticsConfig,
        snapshot: watch::Receiver<Arc<AnalyticsSnapshot>>,
        wal: Option<crate::storage::WalHandle>,
        shard_count: u32,
        cluster: Option<watch::Receiver<crate::cluster::member::ClusterView>>,
    ) -> Arc<Self> {
        let params = StateParams {
            window_hours: config.window_hours(),
            // The gateway bounds timestamps by the wall clock; against the newest event time
            // a skew bound would reject a provider (or a whole node) back from a silence.
            max_future_skew_seconds: i64::MAX,
            ..StateParams::default()
        };
        let (alerts, _) = broadcast::channel(4096);
        let passivate_after = config.passivate_after;
        Arc::new(Self {
            config,
            params,
            snapshot,
            alerts,
            newest_event_time: AtomicI64::new(i64::MIN),
            providers: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            passivate_after,
            events_ingested: AtomicU64::new(0),
            wal,
            shard_modes: (0..shard_count)
                .map(|_| AtomicU8::new(ShardMode::Inactive as u8))
                .collect(),
            candidate_indexes: (0..shard_count).map(|_| RwLock::default()).collect(),
            cluster,
        })
    }

    /// Counts `n` more (or, negative, fewer) parked providers, and shows it in metrics.
    pub fn count_parked(&self, n: i64) {
        let now = if n >= 0 {
            self.parked.fetch_add(n as u64, Ordering::Relaxed) + n as u64
        } else {
            self.parked.fetch_sub(n.unsigned_abs(), Ordering::Relaxed) - n.unsigned_abs()
        };
        metrics::gauge!("depin_providers_parked").set(now as f64);
    }

    pub fn reference_time(&self) -> i64 {
        self.newest_event_time.load(Ordering::Relaxed)
    }

    pub fn observe_event_time(&self, ts: i64) {
        self.newest_event_time.fetch_max(ts, Ordering::Relaxed);
    }

    /// The candidate index `shard` last published on this node (empty if none).
    pub fn candidate_index(&self, shard: crate::model::ShardId) -> Arc<CandidateIndex> {
        self.candidate_indexes
            .get(shard.0 as usize)
            .map(|x| x.read().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Replaces the candidate index of `shard` on this node.
    pub fn publish_candidate_index(&self, shard: crate::model::ShardId, index: CandidateIndex) {
        if let Some(x) = self.candidate_indexes.get(shard.0 as usize) {
            *x.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(index);
        }
    }

    /// The mode of `shard` on this node.
    pub fn shard_mode(&self, shard: crate::model::ShardId) -> ShardMode {
        self.shard_modes
            .get(shard.0 as usize)
            .map_or(ShardMode::Inactive, |m| {
                ShardMode::from_u8(m.load(Ordering::Acquire))
            })
    }

    /// Whether writes to `shard` are allowed by the cluster (always, standalone).
    pub fn may_write(&self, shard: crate::model::ShardId) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|c| c.borrow().may_write(shard))
    }

    /// The latest coordinator results.
    pub fn snapshot(&self) -> Arc<AnalyticsSnapshot> {
        self.snapshot.borrow().clone()
    }
}
