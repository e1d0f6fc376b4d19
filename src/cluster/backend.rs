//! The cluster backend trait and the handles it returns.
//!
//! The trait is object-safe (methods return boxed futures) so the node can pick etcd or the
//! in-memory backend at start-up and hold an `Arc<dyn ClusterBackend>`.
//!
//! Liveness is judged locally and conservatively: a lease counts as alive only until its TTL
//! runs out after the last keep-alive that etcd *answered*, timed from when that keep-alive
//! was sent. A node that froze or lost etcd therefore stops counting itself alive no later
//! than etcd stops counting it, whatever its keep-alive task is doing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{debug, warn};

use super::{ClusterError, LeaseId, NodeId, NodeInfo, ShardMap, Versioned};

/// Membership, election and the shard map, as the node needs them. One contract test suite
/// (`tests/cluster_contract.rs`) holds every implementation to the same behaviour.
pub trait ClusterBackend: Send + Sync + 'static {
    /// Registers `node` under a new lease of `ttl` (etcd rounds up to whole seconds), kept
    /// alive in the background until the [`Lease`] is dropped, stopped or revoked. The
    /// registration vanishes when the lease ends.
    fn register(&self, node: NodeInfo, ttl: Duration)
    -> BoxFuture<'_, Result<Lease, ClusterError>>;

    /// Replaces what `node.id`'s registration under `lease` says (e.g. that it is draining).
    /// Fails with [`ClusterError::LeaseLost`] if the lease is gone.
    fn update_member(
        &self,
        lease: LeaseId,
        node: NodeInfo,
    ) -> BoxFuture<'_, Result<(), ClusterError>>;

    /// The registered nodes, sorted by id.
    fn members(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, ClusterError>>;

    /// The registered nodes, sorted by id, kept current: every join and leave is published.
    fn watch_members(&self) -> BoxFuture<'_, Result<Watched<Vec<NodeInfo>>, ClusterError>>;

    /// Campaigns for coordinator with `lease` (etcd's election API): waits while another node
    /// leads, and returns once this node won and a keep-alive sent after the win succeeded.
    /// Leadership ends with the lease. Fails with [`ClusterError::LeaseLost`] if the lease
    /// ends first.
    fn campaign<'a>(
        &'a self,
        lease: &'a Lease,
        node: &'a NodeId,
    ) -> BoxFuture<'a, Result<Leadership, ClusterError>>;

    /// The current coordinator, if any.
    fn leader(&self) -> BoxFuture<'_, Result<Option<NodeId>, ClusterError>>;

    /// The current coordinator, kept current.
    fn watch_leader(&self) -> BoxFuture<'_, Result<Watched<Option<NodeId>>, ClusterError>>;

    /// The current shard map with its revision, if one was ever written.
    fn shard_map(&self) -> BoxFuture<'_, Result<Option<Versioned<ShardMap>>, ClusterError>>;

    /// Writes `map` if the stored map's revision is still `expected` (`None`: no map yet) and
    /// returns the new revision; otherwise fails with [`ClusterError::StaleRevision`] and
    /// writes nothing. This is the fence against a deposed or stale coordinator.
    fn compare_and_set_shard_map<'a>(
        &'a self,
        expected: Option<u64>,
        map: &'a ShardMap,
    ) -> BoxFuture<'a, Result<u64, ClusterError>>;

    /// The shard map, kept current.
    fn watch_shard_map(
        &self,
    ) -> BoxFuture<'_, Result<Watched<Option<Versioned<ShardMap>>>, ClusterError>>;
}

/// A value the backend keeps current in the background. Dropping it stops the watch.
pub struct Watched<T> {
    rx: watch::Receiver<T>,
    _task: Option<AbortOnDrop>,
}

impl<T: Clone> Watched<T> {
    pub(crate) fn new(rx: watch::Receiver<T>, task: Option<JoinHandle<()>>) -> Self {
        Self {
            rx,
            _task: task.map(AbortOnDrop),
        }
    }

    /// The latest value.
    pub fn current(&self) -> T {
        self.rx.borrow().clone()
    }

    /// Waits for the next change and returns the new value.
    pub async fn changed(&mut self) -> Result<T, ClusterError> {
        self.rx.changed().await.map_err(|_| ClusterError::Closed)?;
        Ok(self.rx.borrow_and_update().clone())
    }

    /// Waits until the value satisfies `f` (now or later) and returns it.
    pub async fn wait_for(&mut self, f: impl FnMut(&T) -> bool) -> Result<T, ClusterError> {
        let v = self
            .rx
            .wait_for(f)
            .await
            .map_err(|_| ClusterError::Closed)?;
        Ok(v.clone())
    }
}

/// Aborts a background task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An action run once against the backend (revoke a lease, resign an election).
pub(crate) type OnceAction =
    Box<dyn FnOnce() -> BoxFuture<'static, Result<(), ClusterError>> + Send + Sync>;

/// The lease as its keep-alive task last saw it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseState {
    /// When the grant was requested: the lease cannot outlive `granted_at + ttl` unrenewed.
    granted_at: Instant,
    /// When the last answered keep-alive was sent: etcd refreshed the TTL no earlier.
    renewed_at: Option<Instant>,
    ttl: Duration,
    /// The backend said the lease is gone (expired or revoked).
    lost: bool,
}

impl LeaseState {
    fn expires_at(&self) -> Instant {
        self.renewed_at
            .unwrap_or(self.granted_at)
            .max(self.granted_at)
            + self.ttl
    }

    fn alive_at(&self, now: Instant) -> bool {
        !self.lost && now < self.expires_at()
    }
}

/// Resolves once the lease is no longer alive: lost, or its TTL ran out unrenewed.
async fn until_dead(mut rx: watch::Receiver<LeaseState>) {
    loop {
        let st = *rx.borrow_and_update();
        if !st.alive_at(Instant::now()) {
            return;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() {
                // the lease handle is gone: nothing will renew the lease any more
                sleep_until(st.expires_at()).await;
                return;
            },
            _ = sleep_until(st.expires_at()) => {}
        }
    }
}

/// A lease's liveness, as [`Lease::is_alive`] judges it, detached from the handle.
#[derive(Clone)]
pub struct LeaseProbe(watch::Receiver<LeaseState>);

impl LeaseProbe {
    pub fn is_alive(&self) -> bool {
        self.0.borrow().alive_at(Instant::now())
    }
}

impl std::fmt::Debug for LeaseProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeaseProbe(alive: {})", self.is_alive())
    }
}

/// One keep-alive round trip, as a backend does it.
pub(crate) trait Renewer: Send + 'static {
    /// Refreshes the lease once: `Some(ttl)` if the backend still holds it, `None` if not.
    fn renew(&mut self) -> impl Future<Output = Result<Option<Duration>, ClusterError>> + Send;
}

/// A registered node's lease. Kept alive in the background; dropping the handle stops the
/// keep-alive (the lease then expires after its TTL, as if the process had died); call
/// [`Lease::revoke`] to leave at once.
pub struct Lease {
    id: LeaseId,
    state: watch::Receiver<LeaseState>,
    /// Shared with the keep-alive task, so that revoking marks the lease lost at once.
    tx: watch::Sender<LeaseState>,
    kick: Arc<Notify>,
    keeper: AbortOnDrop,
    revoke: Option<OnceAction>,
}

impl Lease {
    /// Starts the keep-alive task for a lease granted at `granted_at` with `ttl`.
    pub(crate) fn start(
        id: LeaseId,
        ttl: Duration,
        granted_at: Instant,
        renewer: impl Renewer,
        revoke: OnceAction,
    ) -> Self {
        let (tx, rx) = watch::channel(LeaseState {
            granted_at,
            renewed_at: None,
            ttl,
            lost: false,
        });
        let kick = Arc::new(Notify::new());
        let keeper = tokio::spawn(keep_alive(id, renewer, tx.clone(), kick.clone()));
        Self {
            id,
            state: rx,
            tx,
            kick,
            keeper: AbortOnDrop(keeper),
            revoke: Some(revoke),
        }
    }

    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The TTL the backend granted.
    pub fn ttl(&self) -> Duration {
        self.state.borrow().ttl
    }

    /// Whether the lease is alive by the conservative local rule (module docs).
    pub fn is_alive(&self) -> bool {
        self.state.borrow().alive_at(Instant::now())
    }

    /// A cheap, clonable view of this lease's liveness, for checks on the write path.
    pub fn probe(&self) -> LeaseProbe {
        LeaseProbe(self.state.clone())
    }

    /// Whether a keep-alive has succeeded since the grant.
    pub fn is_confirmed(&self) -> bool {
        self.state.borrow().renewed_at.is_some()
    }

    /// Resolves when the lease is no longer alive (lost, or its TTL ran out unrenewed).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        until_dead(self.state.clone())
    }

    /// Waits until a keep-alive sent at or after `since` has succeeded, asking the keep-alive
    /// task to send one now rather than at its next tick.
    pub(crate) async fn renewed_since(&self, since: Instant) -> Result<(), ClusterError> {
        self.kick.notify_one();
        let mut rx = self.state.clone();
        tokio::select! {
            r = rx.wait_for(|s| s.renewed_at.is_some_and(|r| r >= since)) => {
                r.map(|_| ()).map_err(|_| ClusterError::LeaseLost(self.id))
            }
            _ = until_dead(self.state.clone()) => Err(ClusterError::LeaseLost(self.id)),
        }
    }

    /// Stops keeping the lease alive without revoking it: it expires after its TTL. This is
    /// how tests make a node look dead or frozen.
    pub fn stop_keep_alive(&self) {
        self.keeper.0.abort();
    }

    /// Revokes the lease: the registration and any leadership end now.
    pub async fn revoke(mut self) -> Result<(), ClusterError> {
        self.keeper.0.abort();
        // stop counting on the lease before it is gone, not after
        self.tx.send_modify(|s| s.lost = true);
        match self.revoke.take() {
            Some(revoke) => revoke().await,
            None => Ok(()),
        }
    }

    pub(crate) fn state(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }
}

async fn keep_alive(
    id: LeaseId,
    mut renewer: impl Renewer,
    tx: watch::Sender<LeaseState>,
    kick: Arc<Notify>,
) {
    loop {
        let st = *tx.borrow();
        // a third of the TTL leaves two more tries before the lease would lapse
        let period = (st.ttl / 3).max(Duration::from_millis(50));
        let sent = Instant::now();
        match timeout(period, renewer.renew()).await {
            Ok(Ok(Some(ttl))) => {
                tx.send_modify(|s| {
                    s.renewed_at = Some(sent);
                    s.ttl = ttl;
                });
                tokio::select! {
                    _ = sleep(period) => {}
                    _ = kick.notified() => {}
                }
            }
            Ok(Ok(None)) => {
                warn!(lease = %id, "lease is gone");
                tx.send_modify(|s| s.lost = true);
                return;
            }
            Ok(Err(e)) => {
                // keep trying past the local deadline: etcd extends leases when it restarts, so
                // the lease may well be alive again once etcd answers
                debug!(lease = %id, error = %e, "lease keep-alive failed, retrying");
                if !st.alive_at(Instant::now()) {
                    warn!(lease = %id, error = %e, "lease keep-alive failing past its ttl");
                }
                sleep(period.min(Duration::from_millis(250))).await;
            }
            Err(_) => debug!(lease = %id, "lease keep-alive timed out, retrying"),
        }
    }
}

/// This node's coordinator leadership. It holds only while the campaign's lease is alive; a
/// keep-alive must have succeeded after the win before it counts at all.
pub struct Leadership {
    node: NodeId,
    lease: LeaseId,
    won_at: Instant,
    state: watch::Receiver<LeaseState>,
    resign: Option<OnceAction>,
}

impl Leadership {
    /// Called by a backend once its campaign returned: waits for a keep-alive sent after the
    /// win to succeed (STYLE.md: a node counts as leader only after that).
    pub(crate) async fn confirm(
        node: NodeId,
        lease: &Lease,
        won_at: Instant,
        resign: OnceAction,
    ) -> Result<Self, ClusterError> {
        if let Err(e) = lease.renewed_since(won_at).await {
            let _ = resign().await;
            return Err(e);
        }
        Ok(Self {
            node,
            lease: lease.id(),
            won_at,
            state: lease.state(),
            resign: Some(resign),
        })
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// Whether this node may act as coordinator now.
    pub fn is_leader(&self) -> bool {
        let st = *self.state.borrow();
        st.renewed_at.is_some_and(|r| r >= self.won_at) && st.alive_at(Instant::now())
    }

    /// Resolves when the leadership ends with its lease.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        until_dead(self.state.clone())
    }

    /// Gives up leadership; the next campaigner takes over. The lease stays.
    pub async fn resign(mut self) -> Result<(), ClusterError> {
        match self.resign.take() {
            Some(resign) => resign().await,
            None => Ok(()),
        }
    }
}

/// Runs a backend's raw campaign, abandoning it if the lease ends first, then confirms.
pub(crate) async fn campaign_with<F>(
    lease: &Lease,
    node: &NodeId,
    raw: F,
) -> Result<Leadership, ClusterError>
where
    F: Future<Output = Result<OnceAction, ClusterError>> + Send,
{
    let resign = tokio::select! {
        r = raw => r?,
        _ = lease.lost() => return Err(ClusterError::LeaseLost(lease.id())),
    };
    Leadership::confirm(node.clone(), lease, Instant::now(), resign).await
}
