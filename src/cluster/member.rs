//! A node's membership in an etcd cluster: it registers under a lease, campaigns for
//! coordinator, and while it leads keeps the shard map planned over the live nodes (a new
//! map only by compare-and-set on the stored revision, [`super::plan`] for what changes).
//! Everything it learns is published as a [`ClusterView`] for routing, fencing and the
//! cluster status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::plan::{flip, plan};
use super::{
    ClusterBackend, ClusterError, Epoch, Lease, LeaseId, LeaseProbe, NodeId, NodeInfo, ShardId,
    ShardMap, Versioned,
};

/// What this node knows about the cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub me: Option<NodeId>,
    pub members: Vec<NodeInfo>,
    pub leader: Option<NodeId>,
    pub map: Option<Versioned<ShardMap>>,
    /// This node's registration stands (it re-registers after losing its lease).
    pub registered: bool,
    /// This node's current lease, judged on the write path.
    pub lease: Option<LeaseProbe>,
    /// Owners that left without handing off, still waited for (known on the leader only).
    pub waiting_for: BTreeMap<NodeId, Duration>,
}

impl ClusterView {
    pub fn is_leader(&self) -> bool {
        self.me.is_some() && self.leader == self.me
    }

    /// Whether this node may write to `shard` now: registered under a live lease, and the
    /// map it holds names it as owner with no move under way (fencing).
    pub fn may_write(&self, shard: ShardId) -> bool {
        let (Some(me), Some(map)) = (&self.me, &self.map) else {
            return false;
        };
        self.registered
            && self.lease.as_ref().is_some_and(LeaseProbe::is_alive)
            && map.value.owner(shard) == Some(me)
            && map.value.moving_to(shard).is_none()
    }

    pub fn member(&self, id: &NodeId) -> Option<&NodeInfo> {
        self.members.iter().find(|m| &m.id == id)
    }

    fn set_map(&mut self, m: Option<Versioned<ShardMap>>) {
        // a watch resyncing after an error must not take the map back to an older revision
        let older = match (&self.map, &m) {
            (Some(cur), Some(new)) => new.revision < cur.revision,
            (Some(_), None) => true,
            _ => false,
        };
        if !older {
            self.map = m;
        }
    }
}

/// Why a member was not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vetting {
    /// It answered, but without the cluster's credentials (or with another shard count).
    Refused(String),
    /// It could not be asked.
    Unreachable(String),
}

/// Checks that a node holds the cluster's credentials before it is given shards (the
/// gateway's peer clients implement it with the internal `Hello` call).
pub trait Vetter: Send + Sync {
    fn vet<'a>(
        &'a self,
        node: &'a NodeInfo,
        shard_count: u32,
    ) -> futures::future::BoxFuture<'a, Result<(), Vetting>>;
}

/// How this node joins.
#[derive(Clone)]
pub struct MembershipConfig {
    pub node: NodeInfo,
    pub shard_count: u32,
    pub lease_ttl: Duration,
    /// A dead owner's shards wait this long for it before they are reassigned.
    pub dead_node_grace: Duration,
    /// When leading, new members are admitted only once this vouches for them (`None`:
    /// everyone registered is admitted).
    pub vetter: Option<Arc<dyn Vetter>>,
}

impl std::fmt::Debug for MembershipConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipConfig")
            .field("node", &self.node)
            .field("shard_count", &self.shard_count)
            .field("lease_ttl", &self.lease_ttl)
            .field("dead_node_grace", &self.dead_node_grace)
            .field("vetter", &self.vetter.is_some())
            .finish()
    }
}

/// How long a member may stay unreachable before the map reports it.
const UNREACHABLE_REPORTED_AFTER: Duration = Duration::from_secs(5);
/// How often a refused member is asked again.
const REFUSED_RETRY: Duration = Duration::from_secs(5);

/// The leader's record of which members proved the cluster's credentials.
#[derive(Default)]
struct Admission {
    /// Admitted, by id and the address they were vetted at.
    admitted: BTreeMap<NodeId, String>,
    /// Not (yet) admitted: since when, when last asked, why.
    pending: BTreeMap<NodeId, (Instant, Instant, Vetting)>,
}

impl Admission {
    /// The members that may hold shards: those already owning or receiving shards in the
    /// map (a former leader admitted them), this node, and those the vetter vouched for.
    /// Returns them and the members to report as refused.
    async fn admit(
        &mut self,
        cfg: &MembershipConfig,
        nodes: &[NodeInfo],
        map: Option<&ShardMap>,
    ) -> (Vec<NodeInfo>, BTreeMap<NodeId, String>) {
        let Some(vetter) = &cfg.vetter else {
            return (nodes.to_vec(), BTreeMap::new());
        };
        let placed: BTreeSet<&NodeId> = map
            .map(|m| m.assignments.iter().chain(m.pending.values()).collect())
            .unwrap_or_default();
        let now = Instant::now();
        let mut ask = Vec::new();
        for n in nodes {
            let known = self.admitted.get(&n.id) == Some(&n.advertise_addr);
            if n.id == cfg.node.id || known {
                continue;
            }
            if placed.contains(&n.id) && !self.pending.contains_key(&n.id) {
                self.admitted.insert(n.id.clone(), n.advertise_addr.clone());
                continue;
            }
            let due = match self.pending.get(&n.id) {
                Some((_, asked, Vetting::Refused(_))) => now - *asked >= REFUSED_RETRY,
                _ => true,
            };
            if due {
                ask.push(n);
            }
        }
        let answers = futures::future::join_all(ask.iter().map(|n| async move {
            let r = tokio::time::timeout(Duration::from_secs(3), vetter.vet(n, cfg.shard_count))
                .await
                .unwrap_or_else(|_| Err(Vetting::Unreachable("no answer within 3 s".into())));
            (*n, r)
        }))
        .await;
        for (n, r) in answers {
            match r {
                Ok(()) => {
                    if self.pending.remove(&n.id).is_some() {
                        info!(node = %n.id, "node proved the cluster's credentials: admitted");
                    }
                    self.admitted.insert(n.id.clone(), n.advertise_addr.clone());
                }
                Err(v) => {
                    let first = self.pending.get(&n.id).map_or(now, |p| p.0);
                    if let Vetting::Refused(why) = &v
                        && self.pending.get(&n.id).map(|p| &p.2) != Some(&v)
                    {
                        error!(node = %n.id, addr = %n.advertise_addr, reason = %why, "node REFUSED: it did not prove the cluster's credentials and gets no shards");
                    }
                    self.pending.insert(n.id.clone(), (first, now, v));
                }
            }
        }
        let alive: BTreeSet<&NodeId> = nodes.iter().map(|n| &n.id).collect();
        self.pending.retain(|id, _| alive.contains(id));
        self.admitted.retain(|id, _| alive.contains(id));
        let admitted = nodes
            .iter()
            .filter(|n| n.id == cfg.node.id || self.admitted.get(&n.id) == Some(&n.advertise_addr))
            .cloned()
            .collect();
        let refused = self
            .pending
            .iter()
            .filter_map(|(id, (since, _, v))| match v {
                Vetting::Refused(why) => Some((id.clone(), why.clone())),
                Vetting::Unreachable(why) if now - *since >= UNREACHABLE_REPORTED_AFTER => Some((
                    id.clone(),
                    format!("not reachable from the coordinator: {why}"),
                )),
                Vetting::Unreachable(_) => None,
            })
            .collect();
        metrics::gauge!("depin_cluster_nodes_refused").set(self.pending.len() as f64);
        (admitted, refused)
    }
}

/// The registration as it stands: the lease it lives under and what it says.
struct Registration {
    lease: LeaseId,
    node: NodeInfo,
}

/// The running membership: dropping it stops the tasks (the lease then expires).
pub struct Membership {
    pub view: watch::Receiver<ClusterView>,
    pub backend: Arc<dyn ClusterBackend>,
    registration: Arc<Mutex<Registration>>,
    tasks: Vec<JoinHandle<()>>,
    revoke: Arc<tokio::sync::Mutex<Option<Lease>>>,
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
        let registration = Arc::new(Mutex::new(Registration {
            lease: lease.id(),
            node: cfg.node.clone(),
        }));
        let (tx, view) = watch::channel(ClusterView {
            me: Some(cfg.node.id.clone()),
            registered: true,
            lease: Some(lease.probe()),
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
                t.send_modify(|v| v.set_map(m));
                if map.changed().await.is_err() {
                    break;
                }
            }
        }));
        let revoke = Arc::new(tokio::sync::Mutex::new(None));
        let t = tx.clone();
        let b = backend.clone();
        let reg = registration.clone();
        let rv = revoke.clone();
        tasks.push(tokio::spawn(async move {
            campaign_loop(b, cfg, lease, t, reg, rv).await
        }));
        Ok(Membership {
            view,
            backend,
            registration,
            tasks,
            revoke,
        })
    }

    /// Marks this node as leaving: the coordinator plans its shards away and it hands them
    /// off. Kept across re-registrations.
    pub async fn set_draining(&self) -> Result<(), ClusterError> {
        let (lease, node) = {
            let mut r = self.registration.lock().expect("registration lock");
            r.node.draining = true;
            (r.lease, r.node.clone())
        };
        self.backend.update_member(lease, node).await
    }

    /// Leaves now: stops the campaign and revokes the lease, so that the registration and
    /// any leadership end at once instead of after the TTL.
    pub async fn leave(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.tasks.clear();
        if let Some(lease) = self.revoke.lock().await.take()
            && let Err(e) = lease.revoke().await
        {
            warn!(error = %e, "revoking the lease failed; it expires after its TTL");
        }
    }
}

/// Campaign; while leading, plan the shard map. A lost lease means registering again (the
/// node was frozen or partitioned past its TTL): the map is read again before the node
/// counts itself registered, so it never writes under a map older than its new lease.
async fn campaign_loop(
    backend: Arc<dyn ClusterBackend>,
    cfg: MembershipConfig,
    lease: Lease,
    tx: Arc<watch::Sender<ClusterView>>,
    registration: Arc<Mutex<Registration>>,
    revoke: Arc<tokio::sync::Mutex<Option<Lease>>>,
) {
    *revoke.lock().await = Some(lease);
    loop {
        let outcome = {
            let guard = revoke.lock().await;
            let lease = guard.as_ref().expect("a lease is held while campaigning");
            // the guard is held while campaigning: `leave` aborts this task first
            match backend.campaign(lease, &cfg.node.id).await {
                Ok(leadership) => {
                    info!(node = %cfg.node.id, "elected coordinator");
                    tokio::select! {
                        _ = leadership.lost() => warn!(node = %cfg.node.id, "coordinator leadership lost"),
                        r = lead(&*backend, &cfg, &tx) => if let Err(e) = r { warn!(error = %e, "coordinator stopped planning shards") },
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        match outcome {
            Ok(()) => {}
            Err(ClusterError::LeaseLost(id)) => {
                warn!(lease = %id, "lease lost: no writes until registered again");
                tx.send_modify(|v| v.registered = false);
                loop {
                    let node = registration.lock().expect("registration lock").node.clone();
                    match backend.register(node, cfg.lease_ttl).await {
                        Ok(l) => {
                            let map = match backend.shard_map().await {
                                Ok(m) => m,
                                Err(e) => {
                                    warn!(error = %e, "reading the shard map after registering failed; retrying");
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                    continue;
                                }
                            };
                            registration.lock().expect("registration lock").lease = l.id();
                            let probe = l.probe();
                            *revoke.lock().await = Some(l);
                            tx.send_modify(|v| {
                                v.set_map(map);
                                v.lease = Some(probe);
                                v.registered = true;
                            });
                            info!(node = %cfg.node.id, "registered again");
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

/// The coordinator's placement duty: keep the stored map equal to the plan over the live
/// nodes, re-planning on every membership or map change and every second (grace periods
/// run out on their own).
async fn lead(
    backend: &dyn ClusterBackend,
    cfg: &MembershipConfig,
    tx: &watch::Sender<ClusterView>,
) -> Result<(), ClusterError> {
    let mut members = backend.watch_members().await?;
    let mut map = backend.watch_shard_map().await?;
    // when this leader first saw each departed owner gone
    let mut gone_since: BTreeMap<NodeId, Instant> = BTreeMap::new();
    let mut admission = Admission::default();
    loop {
        let current = map.current();
        let (nodes, refused) = admission
            .admit(cfg, &members.current(), current.as_ref().map(|m| &m.value))
            .await;
        let alive: BTreeSet<&NodeId> = nodes.iter().map(|n| &n.id).collect();
        let mut in_grace = BTreeSet::new();
        let mut waiting = BTreeMap::new();
        if let Some(m) = &current {
            let owners: BTreeSet<&NodeId> = m.value.assignments.iter().collect();
            gone_since.retain(|id, _| owners.contains(id) && !alive.contains(id));
            for o in owners {
                if alive.contains(o) {
                    continue;
                }
                let since = *gone_since.entry(o.clone()).or_insert_with(|| {
                    warn!(node = %o, grace = ?cfg.dead_node_grace, "shard owner left without handing off: its shards answer UNAVAILABLE until it returns or the grace period ends");
                    Instant::now()
                });
                let waited = since.elapsed();
                if waited < cfg.dead_node_grace {
                    in_grace.insert(o.clone());
                    waiting.insert(o.clone(), cfg.dead_node_grace - waited);
                }
            }
        }
        tx.send_modify(|v| v.waiting_for = waiting);
        if !nodes.is_empty() {
            plan_once(backend, cfg.shard_count, &nodes, &in_grace, &refused).await?;
        }
        tokio::select! {
            r = members.changed() => { r?; }
            r = map.changed() => { r?; }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Writes the planned map if it differs from the stored one; retries when another writer got
/// there first (the compare-and-set fences stale coordinators).
pub async fn plan_once(
    backend: &dyn ClusterBackend,
    shard_count: u32,
    nodes: &[NodeInfo],
    in_grace: &BTreeSet<NodeId>,
    refused: &BTreeMap<NodeId, String>,
) -> Result<(), ClusterError> {
    loop {
        let current = backend.shard_map().await?;
        let previous = current.as_ref().map(|v| &v.value);
        let now = crate::gateway::ingest::wall_clock_seconds();
        let next = match plan(shard_count, nodes, previous, in_grace, now)? {
            Some(mut next) => {
                next.map.refused = refused.clone();
                next
            }
            // nothing moves, but the refused members changed: same epoch, new revision
            None => match previous {
                Some(p) if p.refused != *refused => super::plan::Plan {
                    map: ShardMap {
                        refused: refused.clone(),
                        ..p.clone()
                    },
                    lost: Vec::new(),
                },
                _ => return Ok(()),
            },
        };
        match backend
            .compare_and_set_shard_map(current.as_ref().map(|v| v.revision), &next.map)
            .await
        {
            Ok(rev) => {
                for l in &next.lost {
                    error!(shard = l.shard, node = %l.node, "shard reassigned after its owner did not return within the grace period: the events only that node held are LOST");
                }
                metrics::counter!("depin_shards_lost_total").increment(next.lost.len() as u64);
                info!(
                    epoch = %next.map.epoch,
                    revision = rev,
                    nodes = nodes.len(),
                    in_motion = next.map.pending.len(),
                    lost = next.lost.len(),
                    "shard map written"
                );
                return Ok(());
            }
            Err(ClusterError::StaleRevision { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Ends a handoff: flips `shard` from `from` to `to` in the stored map, the move the map of
/// epoch `planned_at` planned. `Ok(false)` if the map no longer describes that move (the
/// coordinator planned something else, or planned it again: see `ShardMap::pending_since`).
pub async fn flip_shard(
    backend: &dyn ClusterBackend,
    shard: ShardId,
    from: &NodeId,
    to: &NodeId,
    planned_at: Epoch,
) -> Result<bool, ClusterError> {
    loop {
        let Some(current) = backend.shard_map().await? else {
            return Ok(false);
        };
        let Some(next) = flip(&current.value, shard, from, to, planned_at) else {
            return Ok(false);
        };
        match backend
            .compare_and_set_shard_map(Some(current.revision), &next)
            .await
        {
            Ok(_) => return Ok(true),
            Err(ClusterError::StaleRevision { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}
