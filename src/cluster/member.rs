//! A node's membership in an etcd cluster: it registers under a lease, campaigns for
//! coordinator, and while it leads keeps the shard map placed over the live nodes (a new
//! map only by compare-and-set on the stored revision). Everything it learns is published as
//! a [`ClusterView`] for the cluster status and, later, for routing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{ClusterBackend, ClusterError, Lease, NodeId, NodeInfo, ShardMap, Versioned, place};

/// What this node knows about the cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub me: Option<NodeId>,
    pub members: Vec<NodeInfo>,
    pub leader: Option<NodeId>,
    pub map: Option<Versioned<ShardMap>>,
    /// This node's lease is alive (its registration stands).
    pub registered: bool,
}

impl ClusterView {
    pub fn is_leader(&self) -> bool {
        self.me.is_some() && self.leader == self.me
    }
}

/// How this node joins.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    pub node: NodeInfo,
    pub shard_count: u32,
    pub lease_ttl: Duration,
}

/// The running membership: dropping it stops the tasks (the lease then expires).
pub struct Membership {
    pub view: watch::Receiver<ClusterView>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Membership {
    /// Registers, then runs the watches and the campaign in the background.
    pub async fn start(
        backend: Arc<dyn ClusterBackend>,
        cfg: MembershipConfig,
    ) -> Result<Membership, ClusterError> {
        let lease = backend.register(cfg.node.clone(), cfg.lease_ttl).await?;
        info!(node = %cfg.node.id, ttl = ?cfg.lease_ttl, "registered in the cluster");
        let (tx, view) = watch::channel(ClusterView {
            me: Some(cfg.node.id.clone()),
            registered: true,
            ..Default::default()
        });
        let tx = Arc::new(tx);
        let mut tasks = Vec::new();

        let mut members = backend.watch_members().await?;
        let t = tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let m = members.current();
                t.send_modify(|v| v.members = m);
                if members.changed().await.is_err() {
                    break;
                }
            }
        }));
        let mut leader = backend.watch_leader().await?;
        let t = tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let l = leader.current();
                t.send_modify(|v| v.leader = l);
                if leader.changed().await.is_err() {
                    break;
                }
            }
        }));
        let mut map = backend.watch_shard_map().await?;
        let t = tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let m = map.current();
                t.send_modify(|v| v.map = m);
                if map.changed().await.is_err() {
                    break;
                }
            }
        }));
        let t = tx.clone();
        tasks.push(tokio::spawn(async move {
            campaign_loop(backend, cfg, lease, t).await
        }));
        Ok(Membership { view, tasks })
    }
}

/// Campaign; while leading, re-place shards on every membership change. A lost lease means
/// registering again (the node was frozen or partitioned past its TTL).
async fn campaign_loop(
    backend: Arc<dyn ClusterBackend>,
    cfg: MembershipConfig,
    mut lease: Lease,
    tx: Arc<watch::Sender<ClusterView>>,
) {
    loop {
        match backend.campaign(&lease, &cfg.node.id).await {
            Ok(leadership) => {
                info!(node = %cfg.node.id, "elected coordinator");
                tokio::select! {
                    _ = leadership.lost() => warn!(node = %cfg.node.id, "coordinator leadership lost"),
                    r = lead(&*backend, &cfg) => if let Err(e) = r { warn!(error = %e, "coordinator stopped placing shards") },
                }
            }
            Err(ClusterError::LeaseLost(id)) => {
                warn!(lease = %id, "lease lost: registering again");
                tx.send_modify(|v| v.registered = false);
                loop {
                    match backend.register(cfg.node.clone(), cfg.lease_ttl).await {
                        Ok(l) => {
                            lease = l;
                            tx.send_modify(|v| v.registered = true);
                            break;
                        }
                        Err(e) => {
                            warn!(error = %e, "registering failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "campaign failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The coordinator's placement duty: keep the stored map equal to `place(live nodes)`.
async fn lead(backend: &dyn ClusterBackend, cfg: &MembershipConfig) -> Result<(), ClusterError> {
    let mut members = backend.watch_members().await?;
    loop {
        let nodes = members.current();
        if !nodes.is_empty() {
            place_once(backend, cfg.shard_count, &nodes).await?;
        }
        members.changed().await?;
    }
}

/// Writes a new map if the live nodes call for one; retries when another writer got there
/// first (the compare-and-set fences stale coordinators).
pub async fn place_once(
    backend: &dyn ClusterBackend,
    shard_count: u32,
    nodes: &[NodeInfo],
) -> Result<(), ClusterError> {
    loop {
        let current = backend.shard_map().await?;
        let previous = current.as_ref().map(|v| &v.value);
        let next = place(shard_count, nodes, previous)?;
        if previous.is_some_and(|p| p.assignments == next.assignments) {
            return Ok(());
        }
        match backend
            .compare_and_set_shard_map(current.as_ref().map(|v| v.revision), &next)
            .await
        {
            Ok(rev) => {
                let moved = previous.map_or(shard_count as usize, |p| next.moved_from(p).len());
                info!(epoch = %next.epoch, revision = rev, nodes = nodes.len(), moved, "shard map written");
                return Ok(());
            }
            Err(ClusterError::StaleRevision { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}
