//! Nodes of an etcd cluster, as processes against a real etcd: they register under leases,
//! elect one coordinator, and the coordinator places every logical shard on the live nodes;
//! when the coordinator is killed another takes over and re-places its shards.
//! (Data routing between nodes and shard handoff are not wired yet: issue 5.)

mod common;
mod support_etcd;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::NodeProc;
use depin_analytics::proto::v1 as pb;
use support_etcd::Etcd;

const SHARDS: &str = "64";
const TTL_SECONDS: u64 = 2;

fn start_node(etcd: &Etcd, id: &str) -> NodeProc {
    NodeProc::start(
        &[
            "--shards",
            SHARDS,
            "--node-id",
            id,
            "--etcd-endpoints",
            etcd.endpoint(),
            "--lease-ttl",
            "2s",
        ],
        &[],
    )
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
    let a = start_node(&etcd, "node-a");
    let b = start_node(&etcd, "node-b");
    let c = start_node(&etcd, "node-c");

    let (leader, revision, owned) = wait_agreement(
        &[&a, &b, &c],
        &["node-a", "node-b", "node-c"],
        Duration::from_secs(30),
    )
    .await;
    // 64 shards over 3 nodes: 22, 21, 21 — balanced to one shard.
    let counts: Vec<usize> = owned.values().copied().collect();
    assert_eq!(counts.iter().sum::<usize>(), 64, "{owned:?}");
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
        "{owned:?}"
    );

    // SIGKILL the coordinator: its lease expires, another node leads within two TTLs, and the
    // map is re-placed over the two survivors, moving only the dead node's shards.
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
    let (new_leader, new_revision, new_owned) =
        wait_agreement(&procs, &live, Duration::from_secs(2 * TTL_SECONDS + 8)).await;
    let took = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(new_revision > revision);
    assert_eq!(new_owned.values().sum::<usize>(), 64);
    assert!(new_owned.values().all(|n| *n == 32), "{new_owned:?}");
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
