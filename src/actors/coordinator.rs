//! `CoordinatorActor`: every ANALYTICS_INTERVAL (and on request) gathers shard summaries and
//! publishes network analytics, global rankings and tier cut-offs to the node.

use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::actors::NodeShared;
use crate::actors::shard::ShardMsg;
use crate::analytics::view::{self, AnalyticsSnapshot};

pub enum CoordinatorMsg {
    /// The periodic cycle.
    Tick,
    /// Run a cycle now and answer with its result.
    Refresh(RpcReplyPort<Arc<AnalyticsSnapshot>>),
}

impl std::fmt::Debug for CoordinatorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoordinatorMsg")
    }
}

pub struct CoordinatorActor;

pub struct CoordinatorArgs {
    pub shards: Vec<ActorRef<ShardMsg>>,
    pub shared: Arc<NodeShared>,
    pub publish: watch::Sender<Arc<AnalyticsSnapshot>>,
}

pub struct CoordinatorState {
    args: CoordinatorArgs,
}

impl CoordinatorState {
    async fn cycle(&mut self) -> Arc<AnalyticsSnapshot> {
        let started = Instant::now();
        let calls = self
            .args
            .shards
            .iter()
            .map(|s| async move { ractor::call!(s, ShardMsg::Summaries) });
        let mut summaries = Vec::new();
        for r in join_all(calls).await {
            match r {
                Ok(v) => summaries.push(v),
                Err(e) => warn!(error = %e, "shard did not answer the coordinator"),
            }
        }
        let previous = self.args.publish.borrow().clone();
        let now = self.args.shared.reference_time();
        let wall = crate::gateway::ingest::wall_clock_seconds();
        let mut snapshot = view::cycle(summaries, &previous, &self.args.shared.config, now, wall);
        let elapsed = started.elapsed();
        snapshot.cycle_ms = elapsed.as_secs_f64() * 1e3;
        metrics::histogram!("depin_coordinator_cycle_seconds").record(elapsed.as_secs_f64());
        view::record_snapshot_metrics(&snapshot);
        debug!(
            providers = snapshot.providers(),
            ms = snapshot.cycle_ms,
            "analytics cycle"
        );
        let snapshot = Arc::new(snapshot);
        self.args.publish.send_replace(snapshot.clone());
        snapshot
    }
}

impl Actor for CoordinatorActor {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CoordinatorMsg>,
        args: CoordinatorArgs,
    ) -> Result<CoordinatorState, ActorProcessingErr> {
        let interval = args.shared.config.analytics_interval;
        myself.send_interval(interval, || CoordinatorMsg::Tick);
        Ok(CoordinatorState { args })
    }

    async fn handle(
        &self,
        _myself: ActorRef<CoordinatorMsg>,
        msg: CoordinatorMsg,
        st: &mut CoordinatorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CoordinatorMsg::Tick => {
                st.cycle().await;
            }
            CoordinatorMsg::Refresh(reply) => {
                let s = st.cycle().await;
                let _ = reply.send(s);
            }
        }
        Ok(())
    }
}
