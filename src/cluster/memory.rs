//! The in-process backend: what standalone mode runs on, and what unit tests of the node's
//! cluster logic use. It follows etcd's semantics where the trait exposes them: one revision
//! counter for every change, leases that expire on tokio time (so tests can pause and advance
//! it), registrations and candidacies that vanish with their lease, first-come leadership.
//! Clones share one cluster: each clone stands for a node's connection to it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use super::backend::{
    ClusterBackend, Leadership, Lease, OnceAction, Renewer, Watched, campaign_with,
};
use super::{ClusterError, LeaseId, NodeId, NodeInfo, ShardMap, Versioned};

/// The in-process cluster backend.
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    members: watch::Sender<Vec<NodeInfo>>,
    leader: watch::Sender<Option<NodeId>>,
    shard_map: watch::Sender<Option<Versioned<ShardMap>>>,
    /// Bumped on every change; campaigners wait on it.
    revision: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    revision: u64,
    next_lease: i64,
    /// Lease id to (ttl, deadline).
    leases: HashMap<i64, (Duration, Instant)>,
    members: BTreeMap<NodeId, (NodeInfo, i64)>,
    /// Campaigners in arrival order: (revision, lease, node). The first one leads.
    candidates: Vec<(u64, i64, NodeId)>,
    shard_map: Option<Versioned<ShardMap>>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// A new, empty cluster.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    next_lease: 1,
                    ..State::default()
                }),
                members: watch::channel(Vec::new()).0,
                leader: watch::channel(None).0,
                shard_map: watch::channel(None).0,
                revision: watch::channel(0).0,
            }),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // a panic while holding the lock leaves plain data behind, still consistent enough
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the state to the watchers. Called with the lock held so watchers see
    /// changes in revision order.
    fn publish(&self, st: &State) {
        let members: Vec<NodeInfo> = st.members.values().map(|(n, _)| n.clone()).collect();
        self.members.send_if_modified(|m| replace_if_ne(m, members));
        let leader = st.candidates.first().map(|(_, _, n)| n.clone());
        self.leader.send_if_modified(|l| replace_if_ne(l, leader));
        let map = st.shard_map.clone();
        self.shard_map.send_if_modified(|m| replace_if_ne(m, map));
        self.revision.send_replace(st.revision);
    }

    /// Ends a lease and everything attached to it.
    fn end_lease(&self, st: &mut State, lease: i64) -> bool {
        if st.leases.remove(&lease).is_none() {
            return false;
        }
        st.revision += 1;
        st.members.retain(|_, (_, l)| *l != lease);
        st.candidates.retain(|(_, l, _)| *l != lease);
        self.publish(st);
        true
    }
}

fn replace_if_ne<T: PartialEq>(slot: &mut T, new: T) -> bool {
    if *slot == new {
        return false;
    }
    *slot = new;
    true
}

/// Expires a lease once its deadline passes unrenewed.
async fn expire_when_due(inner: Weak<Inner>, lease: i64) {
    loop {
        let deadline = {
            let Some(inner) = inner.upgrade() else { return };
            let st = inner.lock();
            match st.leases.get(&lease) {
                Some((_, deadline)) => *deadline,
                None => return,
            }
        };
        sleep_until(deadline).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut st = inner.lock();
        if st
            .leases
            .get(&lease)
            .is_some_and(|(_, d)| Instant::now() >= *d)
        {
            inner.end_lease(&mut st, lease);
            return;
        }
    }
}

struct MemoryRenewer {
    inner: Weak<Inner>,
    lease: i64,
}

impl Renewer for MemoryRenewer {
    async fn renew(&mut self) -> Result<Option<Duration>, ClusterError> {
        let inner = self.inner.upgrade().ok_or(ClusterError::Closed)?;
        let mut st = inner.lock();
        Ok(st.leases.get_mut(&self.lease).map(|(ttl, deadline)| {
            *deadline = Instant::now() + *ttl;
            *ttl
        }))
    }
}

impl ClusterBackend for MemoryBackend {
    fn register(
        &self,
        node: NodeInfo,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Lease, ClusterError>> {
        async move {
            let granted_at = Instant::now();
            let id = {
                let mut st = self.inner.lock();
                let id = st.next_lease;
                st.next_lease += 1;
                st.revision += 1;
                st.leases.insert(id, (ttl, granted_at + ttl));
                st.members.insert(node.id.clone(), (node, id));
                self.inner.publish(&st);
                id
            };
            tokio::spawn(expire_when_due(Arc::downgrade(&self.inner), id));
            let weak = Arc::downgrade(&self.inner);
            let revoke: OnceAction = Box::new(move || {
                async move {
                    if let Some(inner) = weak.upgrade() {
                        let mut st = inner.lock();
                        inner.end_lease(&mut st, id);
                    }
                    Ok(())
                }
                .boxed()
            });
            let renewer = MemoryRenewer {
                inner: Arc::downgrade(&self.inner),
                lease: id,
            };
            Ok(Lease::start(LeaseId(id), ttl, granted_at, renewer, revoke))
        }
        .boxed()
    }

    fn update_member(
        &self,
        lease: LeaseId,
        node: NodeInfo,
    ) -> BoxFuture<'_, Result<(), ClusterError>> {
        async move {
            let mut st = self.inner.lock();
            if !st.leases.contains_key(&lease.0) {
                return Err(ClusterError::LeaseLost(lease));
            }
            st.revision += 1;
            st.members.insert(node.id.clone(), (node, lease.0));
            self.inner.publish(&st);
            Ok(())
        }
        .boxed()
    }

    fn members(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, ClusterError>> {
        async move { Ok(self.inner.members.borrow().clone()) }.boxed()
    }

    fn watch_members(&self) -> BoxFuture<'_, Result<Watched<Vec<NodeInfo>>, ClusterError>> {
        async move { Ok(Watched::new(self.inner.members.subscribe(), None)) }.boxed()
    }

    fn campaign<'a>(
        &'a self,
        lease: &'a Lease,
        node: &'a NodeId,
    ) -> BoxFuture<'a, Result<Leadership, ClusterError>> {
        let raw = async move {
            let seq = {
                let mut st = self.inner.lock();
                if !st.leases.contains_key(&lease.id().0) {
                    return Err(ClusterError::LeaseLost(lease.id()));
                }
                st.revision += 1;
                let seq = st.revision;
                st.candidates.push((seq, lease.id().0, node.clone()));
                self.inner.publish(&st);
                seq
            };
            let mut changes = self.inner.revision.subscribe();
            loop {
                {
                    let st = self.inner.lock();
                    match st.candidates.iter().position(|(s, _, _)| *s == seq) {
                        Some(0) => break,
                        Some(_) => {}
                        None => return Err(ClusterError::LeaseLost(lease.id())),
                    }
                }
                changes.changed().await.map_err(|_| ClusterError::Closed)?;
            }
            let weak = Arc::downgrade(&self.inner);
            let resign: OnceAction = Box::new(move || {
                async move {
                    if let Some(inner) = weak.upgrade() {
                        let mut st = inner.lock();
                        let before = st.candidates.len();
                        st.candidates.retain(|(s, _, _)| *s != seq);
                        if st.candidates.len() != before {
                            st.revision += 1;
                            inner.publish(&st);
                        }
                    }
                    Ok(())
                }
                .boxed()
            });
            Ok(resign)
        };
        campaign_with(lease, node, raw).boxed()
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<NodeId>, ClusterError>> {
        async move { Ok(self.inner.leader.borrow().clone()) }.boxed()
    }

    fn watch_leader(&self) -> BoxFuture<'_, Result<Watched<Option<NodeId>>, ClusterError>> {
        async move { Ok(Watched::new(self.inner.leader.subscribe(), None)) }.boxed()
    }

    fn shard_map(&self) -> BoxFuture<'_, Result<Option<Versioned<ShardMap>>, ClusterError>> {
        async move { Ok(self.inner.lock().shard_map.clone()) }.boxed()
    }

    fn compare_and_set_shard_map<'a>(
        &'a self,
        expected: Option<u64>,
        map: &'a ShardMap,
    ) -> BoxFuture<'a, Result<u64, ClusterError>> {
        async move {
            let mut st = self.inner.lock();
            let current = st.shard_map.as_ref().map(|v| v.revision);
            if current != expected {
                return Err(ClusterError::StaleRevision { expected, current });
            }
            st.revision += 1;
            let revision = st.revision;
            st.shard_map = Some(Versioned {
                revision,
                value: map.clone(),
            });
            self.inner.publish(&st);
            Ok(revision)
        }
        .boxed()
    }

    fn watch_shard_map(
        &self,
    ) -> BoxFuture<'_, Result<Watched<Option<Versioned<ShardMap>>>, ClusterError>> {
        async move { Ok(Watched::new(self.inner.shard_map.subscribe(), None)) }.boxed()
    }
}
