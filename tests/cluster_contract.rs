//! One contract for every cluster backend: each behaviour is a generic `async fn` run against
//! the in-memory backend and against a real etcd (its own etcd process and key prefix per
//! test). Times scale with the harness's lease ttl: etcd cannot grant less than 2 s, the
//! memory backend runs the same behaviours on a short ttl (tokio's `test-util`, which would
//! let it pause time, is not enabled in this crate).

mod support_etcd;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use depin_analytics::cluster::{
    ClusterBackend, ClusterError, EtcdBackend, Keys, MemoryBackend, NodeId, NodeInfo, ShardMap,
    place,
};
use tokio::time::{Instant, timeout};

use support_etcd::Etcd;

/// A cluster under test.
trait Harness: Sync {
    /// A new connection to the cluster, as one node opens it.
    fn connect(&self) -> impl Future<Output = Arc<dyn ClusterBackend>> + Send;

    /// The lease ttl the tests register with.
    fn ttl(&self) -> Duration;

    /// Time allowed past a ttl for what the backend does "within one ttl" (etcd checks for
    /// expired leases every 500 ms, and a watch event arrives a little later).
    fn slack(&self) -> Duration {
        self.ttl() * 3 / 4
    }
}

struct Memory(MemoryBackend);

impl Harness for Memory {
    async fn connect(&self) -> Arc<dyn ClusterBackend> {
        Arc::new(self.0.clone())
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(400)
    }
}

struct RealEtcd {
    etcd: Etcd,
    keys: Keys,
}

impl Harness for RealEtcd {
    async fn connect(&self) -> Arc<dyn ClusterBackend> {
        let endpoints = [self.etcd.endpoint().to_owned()];
        match EtcdBackend::connect(&endpoints, self.keys.clone()).await {
            Ok(b) => Arc::new(b),
            Err(e) => panic!("connect to etcd: {e}\n{}", self.etcd.log()),
        }
    }

    /// etcd's smallest ttl with its default election timeout.
    fn ttl(&self) -> Duration {
        Duration::from_secs(2)
    }
}

fn node(id: &str) -> NodeInfo {
    NodeInfo {
        id: NodeId(id.into()),
        advertise_addr: format!("127.0.0.1:{}", 7000 + id.len()),
        region: Some("eu".into()),
        draining: false,
    }
}

fn ids(nodes: &[NodeInfo]) -> Vec<&str> {
    nodes.iter().map(|n| n.id.0.as_str()).collect()
}

/// Polls `f` until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn registration_lists_members_until_keep_alive_stops(h: &impl Harness) {
    let (ttl, slack) = (h.ttl(), h.slack());
    let (a, b) = (h.connect().await, h.connect().await);
    let la = a.register(node("n1"), ttl).await.unwrap();
    let lb = b.register(node("n2"), ttl).await.unwrap();
    assert_eq!(la.ttl(), ttl);
    let members = b.members().await.unwrap();
    assert_eq!(ids(&members), ["n1", "n2"]);
    assert_eq!(members[0], node("n1"), "registration carries the node info");
    eventually(ttl, "first keep-alive", || async { la.is_confirmed() }).await;
    assert!(la.is_alive());

    // n1 freezes: its registration is gone within a ttl; n2, kept alive, outlives it
    let stopped = Instant::now();
    la.stop_keep_alive();
    eventually(ttl + slack, "n1 expires", || async {
        ids(&a.members().await.unwrap()) == ["n2"]
    })
    .await;
    assert!(
        !la.is_alive(),
        "a lease past its ttl is not alive locally either"
    );
    assert!(
        stopped.elapsed() >= ttl / 2,
        "expired too early: {:?}",
        stopped.elapsed()
    );
    tokio::time::sleep(ttl).await;
    assert_eq!(
        ids(&a.members().await.unwrap()),
        ["n2"],
        "keep-alive holds n2"
    );
    assert!(lb.is_alive());

    // revoking leaves at once
    lb.revoke().await.unwrap();
    assert!(a.members().await.unwrap().is_empty());
}

async fn watch_sees_join_and_leave(h: &impl Harness) {
    let (ttl, slack) = (h.ttl(), h.slack());
    let (a, b) = (h.connect().await, h.connect().await);
    let mut w = a.watch_members().await.unwrap();
    assert!(w.current().is_empty());
    let l1 = a.register(node("n1"), ttl).await.unwrap();
    let within = ttl + slack;
    let seen = timeout(within, w.wait_for(|m| ids(m) == ["n1"])).await;
    assert!(seen.is_ok(), "join of n1 not seen: {:?}", w.current());
    let l2 = b.register(node("n2"), ttl).await.unwrap();
    timeout(within, w.wait_for(|m| ids(m) == ["n1", "n2"]))
        .await
        .expect("join of n2")
        .unwrap();
    l1.revoke().await.unwrap();
    timeout(within, w.wait_for(|m| ids(m) == ["n2"]))
        .await
        .expect("leave of n1")
        .unwrap();
    l2.stop_keep_alive();
    timeout(within, w.wait_for(|m| m.is_empty()))
        .await
        .expect("expiry of n2")
        .unwrap();
}

async fn one_leader_and_takeover_on_revoke(h: &impl Harness) {
    let ttl = h.ttl();
    let (a, b) = (h.connect().await, h.connect().await);
    let mut leader = b.watch_leader().await.unwrap();
    assert_eq!(b.leader().await.unwrap(), None);
    let la = a.register(node("n1"), ttl).await.unwrap();
    let lb = b.register(node("n2"), ttl).await.unwrap();
    let n1 = NodeId("n1".into());
    let n2 = NodeId("n2".into());

    let lead_a = a.campaign(&la, &n1).await.unwrap();
    assert!(lead_a.is_leader());
    assert!(la.is_confirmed(), "leader only after a keep-alive");
    assert_eq!(b.leader().await.unwrap(), Some(n1.clone()));
    timeout(ttl, leader.wait_for(|l| l.as_ref() == Some(&n1)))
        .await
        .expect("watch sees n1 lead")
        .unwrap();

    // n2 waits while n1 leads
    let b2 = b.clone();
    let n2c = n2.clone();
    let mut second = tokio::spawn(async move {
        let r = b2.campaign(&lb, &n2c).await;
        (r, lb)
    });
    assert!(
        timeout(Duration::from_secs(1), &mut second).await.is_err(),
        "two leaders at once"
    );
    assert!(lead_a.is_leader());

    let revoked = Instant::now();
    la.revoke().await.unwrap();
    let (lead_b, _lb) = timeout(2 * ttl, second)
        .await
        .expect("n2 takes over within two ttls")
        .unwrap();
    let lead_b = lead_b.unwrap();
    assert!(revoked.elapsed() < 2 * ttl);
    assert!(lead_b.is_leader());
    assert!(!lead_a.is_leader(), "a revoked lease ends leadership");
    assert_eq!(a.leader().await.unwrap(), Some(n2.clone()));
    timeout(ttl, leader.wait_for(|l| l.as_ref() == Some(&n2)))
        .await
        .expect("watch sees n2 lead")
        .unwrap();

    // resigning hands over without ending the lease
    lead_b.resign().await.unwrap();
    eventually(ttl, "no leader after resign", || async {
        a.leader().await.unwrap().is_none()
    })
    .await;
}

async fn takeover_when_the_leader_lease_expires(h: &impl Harness) {
    let (ttl, slack) = (h.ttl(), h.slack());
    let (a, b) = (h.connect().await, h.connect().await);
    let la = a.register(node("n1"), ttl).await.unwrap();
    let lb = b.register(node("n2"), ttl).await.unwrap();
    let lead_a = a.campaign(&la, &NodeId("n1".into())).await.unwrap();
    let b2 = b.clone();
    let second = tokio::spawn(async move {
        let r = b2.campaign(&lb, &NodeId("n2".into())).await;
        (r, lb)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // n1 freezes: it stops counting itself leader within a ttl, n2 leads within two
    let frozen = Instant::now();
    la.stop_keep_alive();
    timeout(ttl + slack, lead_a.lost())
        .await
        .expect("old leader notices");
    assert!(!lead_a.is_leader());
    let (lead_b, _lb) = timeout(2 * ttl + slack, second)
        .await
        .expect("n2 takes over within two ttls")
        .unwrap();
    let lead_b = lead_b.unwrap();
    assert!(lead_b.is_leader());
    let took = frozen.elapsed();
    assert!(took < 2 * ttl + slack, "takeover took {took:?}");
    assert_eq!(a.leader().await.unwrap(), Some(NodeId("n2".into())));
}

async fn a_lease_without_keep_alive_never_leads(h: &impl Harness) {
    let (ttl, slack) = (h.ttl(), h.slack());
    let a = h.connect().await;
    let la = a.register(node("n1"), ttl).await.unwrap();
    la.stop_keep_alive();
    let r = timeout(2 * ttl + slack, a.campaign(&la, &NodeId("n1".into())))
        .await
        .expect("campaign gives up when the lease ends");
    assert!(
        matches!(r, Err(ClusterError::LeaseLost(_))),
        "expected a lost lease, got {:?}",
        r.map(|l| l.is_leader())
    );
}

async fn shard_map_compare_and_set_fences_stale_writers(h: &impl Harness) {
    let ttl = h.ttl();
    let (a, b) = (h.connect().await, h.connect().await);
    let mut w = b.watch_shard_map().await.unwrap();
    assert_eq!(a.shard_map().await.unwrap(), None);
    assert_eq!(w.current(), None);
    let nodes = [node("n1"), node("n2")];
    let m1 = place(16, &nodes, None).unwrap();

    let r1 = a.compare_and_set_shard_map(None, &m1).await.unwrap();
    let err = b.compare_and_set_shard_map(None, &m1).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::StaleRevision { expected: None, current: Some(c) } if c == r1),
        "{err:?}"
    );
    let got = b.shard_map().await.unwrap().unwrap();
    assert_eq!((got.revision, &got.value), (r1, &m1));

    // two coordinators both read r1; the first write wins, the stale one fails
    let m2 = place(16, &[node("n1"), node("n2"), node("n3")], Some(&m1)).unwrap();
    let m2_rival = place(16, &[node("n1")], Some(&m1)).unwrap();
    let r2 = a.compare_and_set_shard_map(Some(r1), &m2).await.unwrap();
    assert!(r2 > r1);
    let err = b
        .compare_and_set_shard_map(Some(r1), &m2_rival)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::StaleRevision { expected: Some(e), current: Some(c) } if e == r1 && c == r2),
        "{err:?}"
    );
    let got = a.shard_map().await.unwrap().unwrap();
    assert_eq!(got.revision, r2);
    assert_eq!(got.value, m2);
    assert_eq!(got.value.epoch.0, 2);
    let seen = timeout(
        ttl,
        w.wait_for(|m| m.as_ref().is_some_and(|v| v.revision == r2)),
    )
    .await
    .expect("watch sees the new map")
    .unwrap()
    .unwrap();
    let _: &ShardMap = &seen.value;
    assert_eq!(seen.value, m2);
}

macro_rules! contract {
    ($($behaviour:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    super::$behaviour(&super::Memory(super::MemoryBackend::new())).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let etcd = super::Etcd::start().await;
                    // a prefix of its own, as on an etcd that other clusters share
                    let keys = super::Keys::new(concat!("/depin-test/", stringify!($behaviour)));
                    super::$behaviour(&super::RealEtcd { etcd, keys }).await;
                }
            )*
        }
    };
}

contract!(
    registration_lists_members_until_keep_alive_stops,
    watch_sees_join_and_leave,
    one_leader_and_takeover_on_revoke,
    takeover_when_the_leader_lease_expires,
    a_lease_without_keep_alive_never_leads,
    shard_map_compare_and_set_fences_stale_writers,
);
