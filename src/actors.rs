//! The actors: one [`ProviderActor`] per provider under one [`ShardActor`] per logical shard,
//! and the [`CoordinatorActor`] that turns shard summaries into network analytics, rankings
//! and tier cut-offs.
//!
//! Actors hold state and do I/O; every computation is a pure function from
//! [`crate::analytics`], called inside a read closure sent to the actor (`ProviderMsg::Read`),
//! so the actor layer does not need to know the shape of each answer.

pub mod coordinator;
pub mod provider;
pub mod shard;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tokio::sync::{broadcast, watch};

use crate::analytics::alerts::Alert;
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
    pub events_ingested: AtomicU64,
    /// The write-ahead log, when the node has a data directory.
    pub wal: Option<crate::storage::WalHandle>,
}

impl NodeShared {
    pub fn new(
        config: AnalyticsConfig,
        snapshot: watch::Receiver<Arc<AnalyticsSnapshot>>,
        wal: Option<crate::storage::WalHandle>,
    ) -> Arc<Self> {
        let params = StateParams {
            window_hours: config.window_hours(),
            // The gateway bounds timestamps by the wall clock; against the newest event time
            // a skew bound would reject a provider (or a whole node) back from a silence.
            max_future_skew_seconds: i64::MAX,
            ..StateParams::default()
        };
        let (alerts, _) = broadcast::channel(4096);
        Arc::new(Self {
            config,
            params,
            snapshot,
            alerts,
            newest_event_time: AtomicI64::new(i64::MIN),
            providers: AtomicU64::new(0),
            events_ingested: AtomicU64::new(0),
            wal,
        })
    }

    pub fn reference_time(&self) -> i64 {
        self.newest_event_time.load(Ordering::Relaxed)
    }

    pub fn observe_event_time(&self, ts: i64) {
        self.newest_event_time.fetch_max(ts, Ordering::Relaxed);
    }

    /// The latest coordinator results.
    pub fn snapshot(&self) -> Arc<AnalyticsSnapshot> {
        self.snapshot.borrow().clone()
    }
}
