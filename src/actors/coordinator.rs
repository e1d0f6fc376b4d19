//! `CoordinatorActor`: every ANALYTICS_INTERVAL (and on request) gathers shard summaries and
//! publishes network analytics, global rankings and tier cut-offs.
//!
//! Standalone, it gathers from this node's shards. In a cluster every node runs one, but only
//! the elected leader's cycles: it gathers the summaries of every node's served shards
//! (internal `Summaries`), computes, and publishes the result to every other node (internal
//! `Publish`), which installs it with [`CoordinatorMsg::Install`]. Rankings and network
//! analytics are therefore the same whichever node is asked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::actors::NodeShared;
use crate::actors::shard::ShardMsg;
use crate::analytics::view::{self, AnalyticsSnapshot, ShardSummaries, SnapshotWire};
use crate::gateway::{Gateway, internal};

pub enum CoordinatorMsg {
    /// The periodic cycle.
    Tick,
    /// Run a cycle now and answer with its result.
    Refresh(RpcReplyPort<Arc<AnalyticsSnapshot>>),
    /// The gateway, for the cluster-wide cycle (sent once, right after start).
    Attach(Box<Gateway>),
    /// The leader's results of a cycle.
    Install(Box<SnapshotWire>),
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
    gateway: Option<Gateway>,
}

impl CoordinatorState {
    /// Summaries from every node (cluster) or every local shard (standalone); `None` when
    /// this node is a cluster member but not the leader.
    async fn gather(&self) -> Option<Vec<ShardSummaries>> {
        if let Some(gw) = self.gateway.as_ref().filter(|g| g.cluster.is_some()) {
            if !gw.cluster.as_ref()?.borrow().is_leader() {
                return None;
            }
            let remote = gw
                .other_nodes()
                .into_iter()
                .map(|(node, mut c)| async move {
                    let r = tokio::time::timeout(
                        Duration::from_secs(10),
                        c.summaries(crate::proto::internal::SummariesRequest {}),
                    )
                    .await
                    .map_err(|_| format!("node {node}: no answer within 10 s"))?
                    .map_err(|s| format!("node {node}: {}", s.message()))?;
                    internal::from_blob::<Vec<ShardSummaries>>(&r.into_inner().bincode)
                        .map_err(|e| format!("node {node}: {e}"))
                });
            let (local, remote) = futures::join!(gw.local_summaries(), join_all(remote));
            let mut out = match local {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "local shards did not answer the coordinator");
                    Vec::new()
                }
            };
            for r in remote {
                match r {
                    Ok(p) => out.extend(p),
                    Err(e) => {
                        warn!(error = %e, "a node did not answer the coordinator: its providers are missing from this cycle");
                        metrics::counter!("depin_coordinator_gather_failures_total").increment(1);
                    }
                }
            }
            return Some(out);
        }
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
        Some(summaries)
    }

    async fn cycle(&mut self) -> Arc<AnalyticsSnapshot> {
        let started = Instant::now();
        let Some(summaries) = self.gather().await else {
            return self.args.publish.borrow().clone();
        };
        let gathered = started.elapsed();
        metrics::histogram!("depin_coordinator_gather_seconds").record(gathered.as_secs_f64());
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
            gather_ms = gathered.as_secs_f64() * 1e3,
            "analytics cycle"
        );
        let snapshot = Arc::new(snapshot);
        self.args.publish.send_replace(snapshot.clone());
        self.broadcast(&snapshot).await;
        snapshot
    }

    /// Sends a cycle's results to every other node, waiting (bounded) for their answers so
    /// that a cycle returns once the cluster can answer from it.
    async fn broadcast(&self, snapshot: &AnalyticsSnapshot) {
        let Some(gw) = self.gateway.as_ref().filter(|g| g.cluster.is_some()) else {
            return;
        };
        let others = gw.other_nodes();
        if others.is_empty() {
            return;
        }
        let wire = internal::to_blob(&snapshot.to_wire());
        let sends = others.into_iter().map(|(node, mut c)| {
            let bincode = wire.clone();
            async move {
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    c.publish(crate::proto::internal::Blob { bincode }),
                )
                .await;
                match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(s)) => warn!(node = %node, error = %s.message(), "publishing the analytics cycle failed"),
                    Err(_) => warn!(node = %node, "publishing the analytics cycle timed out"),
                }
            }
        });
        join_all(sends).await;
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
        Ok(CoordinatorState {
            args,
            gateway: None,
        })
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
            CoordinatorMsg::Attach(gw) => st.gateway = Some(*gw),
            CoordinatorMsg::Install(wire) => {
                let previous = st.args.publish.borrow().clone();
                let snapshot =
                    AnalyticsSnapshot::from_wire(*wire, &previous, &st.args.shared.config);
                view::record_snapshot_metrics(&snapshot);
                st.args.publish.send_replace(Arc::new(snapshot));
            }
        }
        Ok(())
    }
}
