//! Nodes of an etcd cluster, as processes against a real etcd: they register under leases,
//! elect one coordinator, place every logical shard on the live nodes, route every call to
//! the shard's owner, hand shards off when nodes join and leave, and fence writes by the
//! shard map and the lease.

mod common;
mod support_etcd;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::NodeProc;
use depin_analytics::model::{ProviderId, ShardId};
use depin_analytics::proto::v1 as pb;
use support_etcd::Etcd;

const SHARDS: u32 = 32;
const TTL_SECONDS: u64 = 2;

fn start_node(etcd: &Etcd, id: &str, extra: &[&str]) -> NodeProc {
    let shards = SHARDS.to_string();
    let mut args = vec![
        "--shards",
        &shards,
        "--node-id",
        id,
        "--etcd-endpoints",
        etcd.endpoint(),
        "--lease-ttl",
        "2s",
        "--handoff-timeout",
        "30s",
    ];
    args.extend_from_slice(extra);
    NodeProc::start(&args, &[("ANALYTICS_INTERVAL", "1s")])
}

async fn status(node: &NodeProc) -> Option<pb::ClusterStatus> {
    let mut c = node.cluster().await;
    tokio::time::timeout(
        Duration::from_secs(5),
        c.get_cluster_status(pb::GetClusterStatusRequest {}),
    )
    .await
    .ok()?
    .ok()
    .map(|r| r.into_inner())
}

/// Shards per node id in a status's map.
fn owners(s: &pb::ClusterStatus) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in &s.shards {
        *m.entry(a.node_id.clone()).or_default() += 1;
    }
    m
}

/// Providers of the fleet whose shards the status reports lost.
fn lost_providers(st: &pb::ClusterStatus) -> u64 {
    let lost: std::collections::BTreeSet<u32> = st.lost.iter().map(|l| l.shard_id).collect();
    fleet_ids(60)
        .iter()
        .filter(|p| lost.contains(&ShardId::for_provider(&ProviderId::new(p.as_str()), SHARDS).0))
        .count() as u64
}

/// Polls until every node in `nodes` names the same leader among `live`; that leader.
async fn wait_leader(nodes: &[&NodeProc], live: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within + Duration::from_millis(500);
    loop {
        let mut leaders = Vec::new();
        for n in nodes {
            leaders.push(status(n).await.map(|s| s.leader_node_id));
        }
        if let Some(Some(l)) = leaders.first()
            && live.contains(&l.as_str())
            && leaders.iter().all(|x| x.as_ref() == Some(l))
        {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no new leader among {live:?} within {within:?}: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The simulated fleet's events as proto, provider-grouped batches flattened.
fn fleet(providers: usize, hours: u32) -> depin_analytics::sim::Fleet {
    depin_analytics::sim::Fleet::new(depin_analytics::sim::FleetConfig {
        providers,
        hours,
        seed: 7,
        ..Default::default()
    })
}

fn fleet_batches(providers: usize, hours: u32, batch: usize) -> Vec<Vec<pb::TelemetryEvent>> {
    let f = fleet(providers, hours);
    f.batches_by_provider(batch)
        .map(|b| {
            b.iter()
                .map(depin_analytics::gateway::convert::event_to_proto)
                .collect()
        })
        .collect()
}

fn fleet_events(providers: usize, hours: u32) -> Vec<pb::TelemetryEvent> {
    fleet_batches(providers, hours, 1000).concat()
}

fn fleet_ids(providers: usize) -> Vec<String> {
    let mut ids: Vec<String> = fleet_events(providers, 1)
        .into_iter()
        .map(|e| e.provider_id)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Polls every node until all agree on a leader among `live` and a map over exactly `live`.
async fn wait_agreement(
    nodes: &[&NodeProc],
    live: &[&str],
    within: Duration,
) -> (String, u64, BTreeMap<String, usize>) {
    let deadline = Instant::now() + within;
    loop {
        let mut seen = Vec::new();
        for n in nodes {
            seen.push(status(n).await);
        }
        let agreed = seen.iter().all(|s| {
            s.as_ref().is_some_and(|s| {
                s.mode == "etcd"
                    && live.contains(&s.leader_node_id.as_str())
                    && owners(s)
                        .keys()
                        .map(String::as_str)
                        .eq(live.iter().copied())
                    && s.nodes.len() == live.len()
                    && s.shards_in_motion.is_empty()
            })
        });
        if agreed {
            let first = seen[0].as_ref().expect("checked");
            if seen.iter().all(|s| {
                let s = s.as_ref().expect("checked");
                s.leader_node_id == first.leader_node_id
                    && s.shard_map_revision == first.shard_map_revision
            }) {
                return (
                    first.leader_node_id.clone(),
                    first.shard_map_revision,
                    owners(first),
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agreement on {live:?} within {within:?}; last statuses: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_coordinator_and_survive_its_death() {
    let etcd = Etcd::start().await;
    let grace = ["--dead-node-grace", "1s"];
    let a = start_node(&etcd, "node-a", &grace);
    let b = start_node(&etcd, "node-b", &grace);
    let c = start_node(&etcd, "node-c", &grace);
    // data on every node, to see rankings refresh after the coordinator dies
    common::ingest_clean(&a, &fleet_events(60, 6)).await;

    let (leader, revision, owned) = wait_agreement(
        &[&a, &b, &c],
        &["node-a", "node-b", "node-c"],
        Duration::from_secs(30),
    )
    .await;
    // 32 shards over 3 nodes: 11, 11, 10 — balanced to one shard.
    let counts: Vec<usize> = owned.values().copied().collect();
    assert_eq!(counts.iter().sum::<usize>(), SHARDS as usize, "{owned:?}");
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
        "{owned:?}"
    );

    // SIGKILL the coordinator: its lease expires, another node leads within two TTLs, and
    // after the (here one-second) grace period the dead node's shards are reassigned over the
    // two survivors, reported as lost, moving nothing else.
    let mut nodes = vec![("node-a", a), ("node-b", b), ("node-c", c)];
    let dead = nodes
        .iter()
        .position(|(id, _)| *id == leader)
        .expect("leader is one of ours");
    let (_, mut dead_proc) = nodes.remove(dead);
    let killed_at = Instant::now();
    dead_proc.signal("KILL");
    let _ = dead_proc.child.wait();
    let live: Vec<&str> = nodes.iter().map(|(id, _)| *id).collect();
    let procs: Vec<&NodeProc> = nodes.iter().map(|(_, p)| p).collect();
    let new_leader = wait_leader(&procs, &live, Duration::from_secs(2 * TTL_SECONDS)).await;
    let took = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    let (_, new_revision, new_owned) =
        wait_agreement(&procs, &live, Duration::from_secs(2 * TTL_SECONDS + 8)).await;
    assert!(new_revision > revision);
    assert_eq!(new_owned.values().sum::<usize>(), SHARDS as usize);
    assert!(new_owned.values().all(|n| *n == 16), "{new_owned:?}");
    let st = status(procs[0]).await.expect("status");
    assert_eq!(
        st.lost.len(),
        owned[leader.as_str()],
        "every shard of the dead node is reported lost: {:?}",
        st.lost
    );
    assert!(st.lost.iter().all(|l| l.node_id == leader));
    // rankings keep refreshing under the new coordinator, on every survivor
    for p in &procs {
        let n =
            common::wait_for_snapshot(p, 60 - lost_providers(&st), Duration::from_secs(15)).await;
        assert!(n.total_providers > 0);
    }
    for (id, n) in &owned {
        if *id != leader {
            assert!(
                new_owned[id] >= *n,
                "{id} lost shards it owned: {owned:?} -> {new_owned:?}"
            );
        }
    }
    println!(
        "coordinator {leader} killed; {new_leader} leads and the map is re-placed after {took:?} (lease TTL {TTL_SECONDS}s)"
    );
}

/// Every node's answer to the same query, once they are all equal (cycles run every second,
/// so a query can straddle one): `None` if they never agree within `within`.
async fn same_answer<T, F, Fut>(nodes: &[&NodeProc], within: Duration, ask: F) -> Result<T, Vec<T>>
where
    T: PartialEq + std::fmt::Debug,
    F: Fn(pb::reputation_service_client::ReputationServiceClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = Instant::now() + within;
    loop {
        let mut answers = Vec::new();
        for n in nodes {
            answers.push(ask(n.reputation().await).await);
        }
        if answers.windows(2).all(|w| w[0] == w[1]) {
            return Ok(answers.pop().expect("nodes"));
        }
        if Instant::now() >= deadline {
            return Err(answers);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_give_the_same_answers_whichever_is_asked() {
    let etcd = Etcd::start().await;
    let a = start_node(&etcd, "node-a", &[]);
    let b = start_node(&etcd, "node-b", &[]);
    let c = start_node(&etcd, "node-c", &[]);
    let all = [&a, &b, &c];
    wait_agreement(
        &all,
        &["node-a", "node-b", "node-c"],
        Duration::from_secs(30),
    )
    .await;

    // everything through one node
    let providers = 90;
    common::ingest_clean(&b, &fleet_events(providers, 24)).await;
    for n in all {
        common::wait_for_snapshot(n, providers as u64, Duration::from_secs(30)).await;
    }
    // the providers really are spread: every node serves some
    let st = status(&a).await.expect("status");
    for node in &st.nodes {
        assert!(node.provider_count > 0, "{node:?} holds no provider");
    }

    let ids = fleet_ids(providers);
    let wait = Duration::from_secs(10);
    for id in ids.iter().step_by(9) {
        let profile = same_answer(&all, wait, |mut r| {
            let id = id.clone();
            async move {
                r.get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
                    provider_id: id,
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|e| e.to_string())
            }
        })
        .await
        .unwrap_or_else(|a| panic!("profiles of {id} differ between nodes: {a:#?}"));
        let p = profile.expect("profile");
        assert_eq!(p.provider_id, *id);
        assert!(p.events_ingested > 0);

        let forecast = same_answer(&all, wait, |mut r| {
            let id = id.clone();
            async move {
                r.get_provider_forecasts(pb::GetProviderForecastsRequest {
                    provider_id: id,
                    metric: "performance_score".into(),
                    horizon_hours: 12,
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|e| e.to_string())
            }
        })
        .await;
        assert!(forecast.is_ok(), "forecasts of {id} differ: {forecast:#?}");
    }
    let rankings = same_answer(&all, wait, |mut r| async move {
        r.get_provider_rankings(pb::GetProviderRankingsRequest {
            page: Some(pb::PageRequest {
                page_size: 50,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|a| panic!("rankings differ between nodes: {a:#?}"))
    .expect("rankings");
    assert_eq!(rankings.total, providers as u64);
    assert_eq!(rankings.rankings.len(), 50);

    let recs = same_answer(&all, wait, |mut r| async move {
        r.get_provider_recommendations(pb::GetProviderRecommendationsRequest {
            requirements: Some(pb::JobRequirements {
                cpu_cores: 4,
                ..Default::default()
            }),
            max_results: 10,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|a| panic!("recommendations differ between nodes: {a:#?}"))
    .expect("recommendations");
    assert!(!recs.recommendations.is_empty());

    let network = same_answer(&all, wait, |mut r| async move {
        r.get_network_analytics(pb::GetNetworkAnalyticsRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|a| panic!("network analytics differ between nodes: {a:#?}"))
    .expect("network analytics");
    assert_eq!(network.total_providers, providers as u64);
}

/// A collector that keeps sending a fleet's batches, each to the next of `targets` in turn,
/// and resends a batch (to the next target) until it is acknowledged: what it counts per
/// provider is exactly what the cluster acknowledged.
struct Collector {
    targets: Arc<Mutex<Vec<String>>>,
    acked_batches: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<BTreeMap<String, u64>>,
}

impl Collector {
    fn start(batches: Vec<Vec<pb::TelemetryEvent>>, targets: Vec<String>) -> Self {
        let targets = Arc::new(Mutex::new(targets));
        let acked_batches = Arc::new(AtomicU64::new(0));
        let (t, n) = (targets.clone(), acked_batches.clone());
        let task = tokio::spawn(async move {
            let mut acked: BTreeMap<String, u64> = BTreeMap::new();
            let mut turn = 0usize;
            for (i, events) in batches.into_iter().enumerate() {
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let addr = {
                        let t = t.lock().unwrap();
                        turn += 1;
                        t[turn % t.len()].clone()
                    };
                    match send_batch(&addr, i as u64 + 1, &events).await {
                        Ok(ack) => {
                            // a resent batch comes back as duplicates; nothing is rejected
                            assert_eq!(ack.rejected, 0, "batch {i}: {:?}", ack.rejections);
                            for e in &events {
                                *acked.entry(e.provider_id.clone()).or_default() += 1;
                            }
                            n.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Err(e) => {
                            assert!(
                                Instant::now() < deadline,
                                "batch {i} not acknowledged within 120 s: {e}"
                            );
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            acked
        });
        Self {
            targets,
            acked_batches,
            task,
        }
    }

    async fn wait_batches(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.acked_batches.load(Ordering::SeqCst) < n {
            assert!(!self.task.is_finished(), "the collector finished early");
            assert!(
                Instant::now() < deadline,
                "collector stuck before batch {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn send_batch(
    addr: &str,
    id: u64,
    events: &[pb::TelemetryEvent],
) -> Result<pb::IngestAck, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = pb::ingest_service_client::IngestServiceClient::new(channel)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let batch = pb::IngestBatch {
        batch_id: id,
        events: events.to_vec(),
    };
    let call = async {
        let mut acks = client
            .ingest(tokio_stream::iter([batch]))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        acks.message()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "stream closed without an ack".to_string())
    };
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .map_err(|_| "no ack within 30 s".to_string())?
}

/// Stored counts equal acknowledged counts, provider by provider (the differences shown).
fn assert_counts(stored: &BTreeMap<String, u64>, acked: &BTreeMap<String, u64>) {
    let diff: Vec<(&String, Option<&u64>, Option<&u64>)> = acked
        .keys()
        .chain(stored.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| stored.get(*k) != acked.get(*k))
        .map(|k| (k, acked.get(k), stored.get(k)))
        .collect();
    assert!(
        diff.is_empty(),
        "per-provider counts differ from what was acknowledged (provider, acked, stored): {diff:?}"
    );
}

/// Asks `node` for every provider's profile; `events_ingested` by provider.
async fn counts_via(node: &NodeProc, ids: &[String]) -> BTreeMap<String, u64> {
    let mut r = node.reputation().await;
    let mut out = BTreeMap::new();
    for id in ids {
        let p = r
            .get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
                provider_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("profile of {id}: {e}"))
            .into_inner();
        out.insert(id.clone(), p.events_ingested);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_and_leave_under_ingest_without_losing_an_acknowledged_event() {
    let etcd = Etcd::start().await;
    let a = start_node(&etcd, "node-a", &[]);
    let b = start_node(&etcd, "node-b", &[]);
    let c = start_node(&etcd, "node-c", &[]);
    wait_agreement(
        &[&a, &b, &c],
        &["node-a", "node-b", "node-c"],
        Duration::from_secs(30),
    )
    .await;

    let providers = 120;
    let batches = fleet_batches(providers, 48, 200);
    let total = batches.len() as u64;
    let collector = Collector::start(
        batches,
        vec![a.addr.clone(), b.addr.clone(), c.addr.clone()],
    );

    // 3 -> 4 while the collector sends
    collector.wait_batches(total / 5).await;
    let mut d = start_node(&etcd, "node-d", &[]);
    collector.targets.lock().unwrap().push(d.addr.clone());
    let (_, _, owned) = wait_agreement(
        &[&a, &b, &c, &d],
        &["node-a", "node-b", "node-c", "node-d"],
        Duration::from_secs(60),
    )
    .await;
    assert!(
        owned.values().all(|n| *n == 8),
        "balanced over four: {owned:?}"
    );
    let joined_at = collector.acked_batches.load(Ordering::SeqCst);
    assert!(joined_at < total, "the join finished under ingest");

    // 4 -> 2 by SIGTERM: c and d hand their shards off before they exit
    collector.wait_batches((total / 2).max(joined_at + 1)).await;
    *collector.targets.lock().unwrap() = vec![a.addr.clone(), b.addr.clone()];
    let mut c = c;
    let started = Instant::now();
    c.signal("TERM");
    d.signal("TERM");
    assert!(
        c.terminate(Duration::from_secs(60)).success(),
        "node-c exits cleanly"
    );
    assert!(
        d.terminate(Duration::from_secs(60)).success(),
        "node-d exits cleanly"
    );
    println!("two nodes handed off and left in {:?}", started.elapsed());

    let acked = collector.task.await.expect("collector");
    let (_, _, owned) =
        wait_agreement(&[&a, &b], &["node-a", "node-b"], Duration::from_secs(30)).await;
    assert!(
        owned.values().all(|n| *n == 16),
        "balanced over two: {owned:?}"
    );
    let st = status(&a).await.expect("status");
    assert!(
        st.lost.is_empty(),
        "nothing may be lost in a graceful change: {:?}",
        st.lost
    );

    let ids: Vec<String> = acked.keys().cloned().collect();
    assert_eq!(ids.len(), providers);
    for via in [&a, &b] {
        assert_counts(&counts_via(via, &ids).await, &acked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_past_its_lease_writes_nothing_for_shards_that_moved() {
    let etcd = Etcd::start().await;
    let grace = ["--dead-node-grace", "1s"];
    let a = start_node(&etcd, "node-a", &grace);
    let b = start_node(&etcd, "node-b", &grace);
    let c = start_node(&etcd, "node-c", &grace);
    let (leader, _, _) = wait_agreement(
        &[&a, &b, &c],
        &["node-a", "node-b", "node-c"],
        Duration::from_secs(30),
    )
    .await;
    let first = fleet_events(60, 6);
    common::ingest_clean(&a, &first).await;
    // freeze a node that does not lead
    let (frozen, frozen_id, others): (&NodeProc, &str, Vec<&NodeProc>) = if leader == "node-c" {
        (&a, "node-a", vec![&b, &c])
    } else {
        (&c, "node-c", vec![&a, &b])
    };
    let before = status(frozen).await.expect("status");
    let its_shards: std::collections::BTreeSet<u32> = before
        .shards
        .iter()
        .filter(|s| s.node_id == frozen_id)
        .map(|s| s.shard_id)
        .collect();
    assert!(!its_shards.is_empty());
    let in_its_shards =
        |id: &str| its_shards.contains(&ShardId::for_provider(&ProviderId::new(id), SHARDS).0);
    frozen.signal("STOP");
    // lease (2 s) + grace (1 s): its shards go to the others, reported lost
    let live: Vec<&str> = ["node-a", "node-b", "node-c"]
        .into_iter()
        .filter(|n| *n != frozen_id)
        .collect();
    wait_agreement(&others, &live, Duration::from_secs(20)).await;
    let st = status(others[0]).await.expect("status");
    assert_eq!(st.lost.len(), its_shards.len(), "{:?}", st.lost);
    frozen.signal("CONT");
    // at once, before it can have caught up: writes for the moved shards, sent to it. It
    // may forward them (or, once the map hands a shard back to it, take them as owner); had
    // it applied one under its stale map, the owner's copy would not have it.
    let victims: Vec<pb::TelemetryEvent> = fleet_events(60, 7)
        .into_iter()
        .filter(|e| in_its_shards(&e.provider_id))
        .filter(|e| {
            e.timestamp
                .as_ref()
                .is_some_and(|t| t.seconds >= fleet_last_hour(6))
        })
        .collect();
    assert!(!victims.is_empty());
    let deadline = Instant::now() + Duration::from_secs(60);
    let ack = loop {
        match send_batch(&frozen.addr, 1, &victims).await {
            Ok(ack) => break ack,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the woken node never took the batch: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(ack.rejected, 0, "{:?}", ack.rejections);
    let mut all: Vec<&NodeProc> = others.clone();
    all.push(frozen);
    let (_, _, owned) = wait_agreement(
        &all,
        &["node-a", "node-b", "node-c"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(owned.values().sum::<usize>(), SHARDS as usize);
    // what the cluster holds: the frozen node's old data is gone (reported lost), every
    // write acknowledged after it woke is there exactly once
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for e in first
        .iter()
        .filter(|e| !in_its_shards(&e.provider_id))
        .chain(&victims)
    {
        *expected.entry(e.provider_id.clone()).or_default() += 1;
    }
    let ids: Vec<String> = expected.keys().cloned().collect();
    for via in &all {
        assert_eq!(counts_via(via, &ids).await, expected);
    }
}

/// Unix seconds of the first event of the fleet's hour `hour` (the fleet starts at the
/// simulator's default start).
fn fleet_last_hour(hour: u32) -> i64 {
    depin_analytics::sim::DEFAULT_START + i64::from(hour) * 3600
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_ride_through_an_etcd_restart_under_load() {
    let mut etcd = Etcd::start().await;
    let mut a = start_node(&etcd, "node-a", &[]);
    let mut b = start_node(&etcd, "node-b", &[]);
    let mut c = start_node(&etcd, "node-c", &[]);
    wait_agreement(
        &[&a, &b, &c],
        &["node-a", "node-b", "node-c"],
        Duration::from_secs(30),
    )
    .await;
    let providers = 80;
    let batches = fleet_batches(providers, 48, 200);
    let total = batches.len() as u64;
    let collector = Collector::start(
        batches,
        vec![a.addr.clone(), b.addr.clone(), c.addr.clone()],
    );
    collector.wait_batches(total / 4).await;
    etcd.restart(Duration::from_secs(3)).await;
    let acked = collector.task.await.expect("collector");
    for n in [&mut a, &mut b, &mut c] {
        assert!(
            n.child.try_wait().expect("wait").is_none(),
            "a node exited when etcd restarted"
        );
    }
    wait_agreement(
        &[&a, &b, &c],
        &["node-a", "node-b", "node-c"],
        Duration::from_secs(30),
    )
    .await;
    let ids: Vec<String> = acked.keys().cloned().collect();
    assert_eq!(ids.len(), providers);
    assert_counts(&counts_via(&b, &ids).await, &acked);
    // and the cluster keeps working: analytics refresh after the restart
    common::wait_for_snapshot(&c, providers as u64, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_a_subscriber_on_every_node() {
    use depin_analytics::sim::Scenario;
    let etcd = Etcd::start().await;
    let a = start_node(&etcd, "node-a", &[]);
    let b = start_node(&etcd, "node-b", &[]);
    let c = start_node(&etcd, "node-c", &[]);
    let all = [&a, &b, &c];
    wait_agreement(
        &all,
        &["node-a", "node-b", "node-c"],
        Duration::from_secs(30),
    )
    .await;
    let owner_shard = ShardId::for_provider(&ProviderId::new(Scenario::DEGRADING), SHARDS).0;
    let owner = status(&a).await.expect("status").shards[owner_shard as usize]
        .node_id
        .clone();
    // subscribe on every node before ingesting: alerts are live, not replayed
    let mut watchers = Vec::new();
    for n in all {
        let mut alerts = n
            .reputation()
            .await
            .watch_alerts(pb::WatchAlertsRequest {
                provider_ids: vec![Scenario::DEGRADING.into()],
                ..Default::default()
            })
            .await
            .expect("WatchAlerts")
            .into_inner();
        watchers.push(tokio::spawn(async move {
            loop {
                match alerts.message().await {
                    Ok(Some(a)) if a.kind != "forecast_below_tier_floor" => return Some(a),
                    Ok(Some(_)) => continue,
                    _ => return None,
                }
            }
        }));
    }
    // peers' alert streams are opened within a second of subscribing
    tokio::time::sleep(Duration::from_secs(2)).await;
    common::ingest_clean(&b, &common::scenario_events()).await;
    for (i, w) in watchers.into_iter().enumerate() {
        let alert = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .unwrap_or_else(|_| panic!("no alert on node {i} within 30 s (owner {owner})"))
            .expect("watcher")
            .unwrap_or_else(|| panic!("alert stream on node {i} ended"));
        assert_eq!(alert.provider_id, Scenario::DEGRADING);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_keeps_its_shards_through_the_grace_period_and_returns_with_its_disk() {
    let etcd = Etcd::start().await;
    let events = fleet_events(40, 6);
    let (early, late) = events.split_at(events.len() / 2);
    // the first half goes to node-a alone: the others then receive shards holding data in
    // handoffs, so the victim comes back on snapshots written from the chunks it received
    let mut a = start_node(&etcd, "node-a", &[]);
    wait_agreement(&[&a], &["node-a"], Duration::from_secs(30)).await;
    common::ingest_clean(&a, early).await;
    let mut b = start_node(&etcd, "node-b", &[]);
    let mut c = start_node(&etcd, "node-c", &[]);
    // the data directories outlive the processes (a node comes back on its disk)
    let _dirs: Vec<_> = [&mut a, &mut b, &mut c].map(|n| n.take_dir()).into();
    let (leader, _, _) = wait_agreement(
        &[&a, &b, &c],
        &["node-a", "node-b", "node-c"],
        Duration::from_secs(30),
    )
    .await;
    // kill a node that does not lead (the default grace period is minutes)
    let (victim, victim_id, others) = if leader == "node-c" {
        (&b, "node-b", [&a, &c])
    } else {
        (&c, "node-c", [&a, &b])
    };
    common::ingest_clean(&a, late).await;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for e in &events {
        *expected.entry(e.provider_id.clone()).or_default() += 1;
    }
    let st = status(&a).await.expect("status");
    let victim_shards: std::collections::BTreeSet<u32> = st
        .shards
        .iter()
        .filter(|s| s.node_id == victim_id)
        .map(|s| s.shard_id)
        .collect();
    let on_victim = expected
        .keys()
        .find(|p| {
            victim_shards.contains(&ShardId::for_provider(&ProviderId::new(p.as_str()), SHARDS).0)
        })
        .expect("a provider on the victim")
        .clone();
    let victim_dir = victim.data_dir.clone();
    victim.signal("KILL");
    // its shards stay with it, answering UNAVAILABLE, and are not reported lost
    tokio::time::sleep(Duration::from_secs(2 * TTL_SECONDS + 1)).await;
    let mut r = others[0].reputation().await;
    let err = r
        .get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
            provider_id: on_victim.clone(),
        })
        .await
        .expect_err("a dead owner's provider cannot be answered");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains(victim_id),
        "the error names the owner: {err:?}"
    );
    let st = status(others[0]).await.expect("status");
    assert!(st.lost.is_empty(), "{:?}", st.lost);
    let down = st
        .nodes
        .iter()
        .find(|n| n.node_id == victim_id)
        .expect("listed");
    assert_eq!(down.state, "down");
    assert!(!down.healthy);
    // it comes back on the same disk: it serves its shards again, nothing lost
    let back = NodeProc::start_in(
        &victim_dir,
        &[
            "--shards",
            &SHARDS.to_string(),
            "--node-id",
            victim_id,
            "--etcd-endpoints",
            etcd.endpoint(),
            "--lease-ttl",
            "2s",
        ],
        &[("ANALYTICS_INTERVAL", "1s")],
        None,
    );
    wait_agreement(
        &[others[0], others[1], &back],
        &["node-a", "node-b", "node-c"],
        Duration::from_secs(30),
    )
    .await;
    let ids: Vec<String> = expected.keys().cloned().collect();
    assert_counts(&counts_via(others[0], &ids).await, &expected);
    assert!(status(&back).await.expect("status").lost.is_empty());
}
