//! The public gRPC gateway: validates requests, routes provider-keyed calls to the shard that
//! owns the provider, answers rankings and network analytics from the latest coordinator
//! snapshot, and answers recommendations from a pass over the candidate indexes its shards
//! publish (two halves at once on two threads for a large node; merged with the other
//! nodes' shortlists in a cluster).

pub mod cluster;
pub mod convert;
pub mod ingest;
pub mod internal;
pub mod limits;
pub mod reputation;
pub mod route;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::Semaphore;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::actors::{CoordinatorMsg, NodeShared, ShardMsg};
use crate::analytics::state::ProviderState;
use crate::model::{ProviderId, ShardId};

/// Errors the gateway answers with; mapped once to a `tonic::Status`.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{description}")]
    InvalidArgument { field: String, description: String },
    #[error("provider {0} is not known to this cluster")]
    ProviderNotFound(String),
    #[error("{0}")]
    Unavailable(String),
    /// The provider lacks the data the answer needs (too little history for a forecast):
    /// FAILED_PRECONDITION, which no retry fixes until more telemetry arrives.
    #[error("{0}")]
    NotEnoughData(String),
    #[error("node is busy: {0}")]
    Busy(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Another node's answer, passed on as it came.
    #[error("{}", .0.message())]
    Remote(Status),
}

impl GatewayError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Status {
        let msg = e.to_string();
        match e {
            GatewayError::InvalidArgument { field, description } => {
                let mut d = ErrorDetails::new();
                d.add_bad_request_violation(field, description);
                Status::with_error_details(Code::InvalidArgument, msg, d)
            }
            GatewayError::ProviderNotFound(_) => Status::not_found(msg),
            GatewayError::Unavailable(_) => Status::with_error_details(
                Code::Unavailable,
                msg,
                ErrorDetails::with_retry_info(Some(Duration::from_millis(200))),
            ),
            GatewayError::NotEnoughData(_) => Status::failed_precondition(msg),
            GatewayError::Busy(_) => Status::with_error_details(
                Code::ResourceExhausted,
                msg,
                ErrorDetails::with_retry_info(Some(Duration::from_millis(100))),
            ),
            GatewayError::Internal(_) => Status::internal(msg),
            GatewayError::Remote(s) => s,
        }
    }
}

impl<T: std::fmt::Debug> From<ractor::RactorErr<T>> for GatewayError {
    fn from(e: ractor::RactorErr<T>) -> Self {
        Self::Unavailable(format!("shard unavailable: {e}"))
    }
}

/// Limits of the gateway.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Events in one ingest batch.
    pub max_batch_events: usize,
    /// Events in flight on this node across all streams: beyond, ingest waits (flow control)
    /// for `busy_timeout`, then answers RESOURCE_EXHAUSTED.
    pub max_inflight_events: usize,
    pub busy_timeout: Duration,
    pub max_page_size: u32,
    /// Seconds an event may be ahead of this node's clock.
    pub max_future_skew_seconds: i64,
    /// How long a call keeps retrying a shard that is in motion or whose owner is away
    /// before it answers UNAVAILABLE (with retry info).
    pub route_retry: Duration,
    /// Largest gRPC message a client may send (bytes).
    pub max_message_bytes: usize,
    /// Events a second one client (token, else peer address) may ingest; 0: no limit.
    pub ingest_events_per_second: u64,
    /// Events a client may save up for a burst; 0: one second's worth (at least a batch).
    pub ingest_burst_events: u64,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Ingest streams open on this node at once.
    pub max_ingest_streams: usize,
    /// WatchAlerts subscribers on this node at once.
    pub max_alert_subscribers: usize,
    /// Candidates from which a node scans a recommendation on two threads (two halves of
    /// its shards at once); 0: whenever it serves two shards or more. Below the default
    /// (16,384) the second thread's wake-up costs about what it saves.
    pub parallel_scan_min: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch_events: 10_000,
            max_inflight_events: 200_000,
            busy_timeout: Duration::from_secs(5),
            max_page_size: 1000,
            max_future_skew_seconds: 300,
            route_retry: Duration::from_secs(10),
            max_message_bytes: 16 << 20,
            ingest_events_per_second: 1_000_000,
            ingest_burst_events: 0,
            max_concurrent_streams: 256,
            max_ingest_streams: 1024,
            max_alert_subscribers: 1024,
            parallel_scan_min: 16_384,
        }
    }
}

/// What the gRPC services share.
#[derive(Clone)]
pub struct Gateway {
    pub shared: Arc<NodeShared>,
    pub shards: Arc<Vec<ActorRef<ShardMsg>>>,
    pub coordinator: ActorRef<CoordinatorMsg>,
    pub limits: Limits,
    pub inflight: Arc<Semaphore>,
    pub node_id: String,
    /// What the cluster layer knows, when the node runs in an etcd cluster.
    pub cluster: Option<tokio::sync::watch::Receiver<crate::cluster::member::ClusterView>>,
    /// Clients to the other nodes (etcd mode).
    pub peers: Option<Arc<route::Peers>>,
    /// The data directory's log and snapshots, for shards arriving in a handoff.
    pub storage: Option<Arc<crate::storage::StorageCtl>>,
    /// Rate limiter and stream caps (`limits.rs`).
    pub guards: Arc<limits::Guards>,
}

impl Gateway {
    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    pub fn shard_of(&self, id: &ProviderId) -> ShardId {
        ShardId::for_provider(id, self.shard_count())
    }

    /// Run `f` over a provider's state (inside its actor, or over a decoded copy if it is
    /// parked) and return its answer: NOT_FOUND if the provider is unknown, UNAVAILABLE if this node does not serve
    /// its shard.
    pub async fn read<T, F>(&self, raw_id: &str, f: F) -> Result<T, GatewayError>
    where
        T: Send + 'static,
        F: FnOnce(&ProviderState) -> T + Send + 'static,
    {
        validate::check_id("provider_id", raw_id)
            .map_err(|v| GatewayError::invalid(v.field, v.description))?;
        let id = ProviderId::new(raw_id);
        let shard_id = self.shard_of(&id);
        if !matches!(self.route(shard_id), route::Route::Local) {
            return Err(GatewayError::Unavailable(format!(
                "shard {shard_id} is not served by this node"
            )));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let read: crate::actors::provider::ReadFn = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        // Through the shard, so the read is queued before any later park of the provider.
        let shard = &self.shards[shard_id.0 as usize];
        match ractor::call!(shard, ShardMsg::Read, id, read)? {
            Ok(true) => {}
            Ok(false) => return Err(GatewayError::ProviderNotFound(raw_id.to_string())),
            Err(why) => return Err(GatewayError::Unavailable(why)),
        }
        rx.await
            .map_err(|_| GatewayError::Internal("provider actor stopped while answering".into()))
    }
}
