//! A secured cluster against a real etcd (issue 8 on top of issue 5): nodes that serve mutual
//! TLS and share a cluster token route calls and ingest to each other over TLS; a node with
//! the wrong token cannot join; a node the coordinator cannot vouch for gets no shards and
//! is reported; the internal service refuses a caller without the cluster token.

mod common;
mod support_etcd;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::{NodeProc, binary};
use depin_analytics::proto::internal::node_service_client::NodeServiceClient;
use depin_analytics::proto::v1 as pb;
use depin_analytics::proto::v1::cluster_service_client::ClusterServiceClient;
use depin_analytics::proto::v1::ingest_service_client::IngestServiceClient;
use depin_analytics::proto::v1::reputation_service_client::ReputationServiceClient;
use depin_analytics::security::BearerInterceptor;
use support_etcd::Etcd;
use tonic::transport::{Channel, Endpoint};

const SHARDS: &str = "16";
const CLUSTER_TOKEN: &str = "cluster-token-0123456789abcdef";
const WRONG_TOKEN: &str = "not-the-cluster-token-0123456789";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// The flags of a node of the secured cluster: mutual TLS with the test CA (which it also
/// trusts for its peers), and `token_file` as its cluster token.
fn secure_flags(etcd: &Etcd, pki: &Pki, id: &str, token_file: &str) -> Vec<String> {
    [
        "--shards",
        SHARDS,
        "--node-id",
        id,
        "--etcd-endpoints",
        etcd.endpoint(),
        "--lease-ttl",
        "2s",
        "--tls-cert",
        &s(&pki.server_cert),
        "--tls-key",
        &s(&pki.server_key),
        "--tls-client-ca",
        &s(&pki.ca),
        "--cluster-token-file",
        token_file,
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

fn start(flags: &[String]) -> NodeProc {
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    NodeProc::start(&args, &[("ANALYTICS_INTERVAL", "1s")])
}

/// A TLS channel presenting the collector's client certificate.
async fn tls(pki: &Pki, addr: &str) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .tls_config(pki.client_tls(true))
        .unwrap()
        .connect()
        .await
        .expect("TLS connection with a client certificate")
}

async fn status(pki: &Pki, addr: &str) -> pb::ClusterStatus {
    ClusterServiceClient::new(tls(pki, addr).await)
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .expect("cluster status")
        .into_inner()
}

/// Shards per node in a status.
fn owners(st: &pb::ClusterStatus) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in &st.shards {
        *m.entry(a.node_id.clone()).or_default() += 1;
    }
    m
}

/// Polls `addr`'s status until `ok` holds; panics with the last status after `within`.
async fn wait_status(
    pki: &Pki,
    addr: &str,
    within: Duration,
    what: &str,
    ok: impl Fn(&pb::ClusterStatus) -> bool,
) -> pb::ClusterStatus {
    let deadline = Instant::now() + within;
    loop {
        let st = status(pki, addr).await;
        if ok(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}: {st:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fleet_events() -> Vec<pb::TelemetryEvent> {
    let f = depin_analytics::sim::Fleet::new(depin_analytics::sim::FleetConfig {
        providers: 40,
        hours: 2,
        seed: 11,
        ..Default::default()
    });
    f.batches_by_provider(500)
        .flat_map(|b| {
            b.iter()
                .map(depin_analytics::gateway::convert::event_to_proto)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_routes_over_tls_and_admits_only_nodes_with_its_credentials() {
    let etcd = Etcd::start().await;
    let pki = Pki::new();
    let secrets = tempfile::tempdir().unwrap();
    let token = write(secrets.path(), "cluster-token", CLUSTER_TOKEN);
    let wrong = write(secrets.path(), "wrong-token", WRONG_TOKEN);

    let a = start(&secure_flags(&etcd, &pki, "node-a", &token));
    let b = start(&secure_flags(&etcd, &pki, "node-b", &token));
    // the coordinator vouched for both (Hello over mutual TLS with the token) and split the
    // shards; every node says so
    for n in [&a, &b] {
        wait_status(
            &pki,
            &n.addr,
            Duration::from_secs(30),
            "both nodes own shards",
            |st| {
                let o = owners(st);
                st.shards_in_motion.is_empty()
                    && o.get("node-a") == Some(&8)
                    && o.get("node-b") == Some(&8)
            },
        )
        .await;
    }

    // ingest through node a: the events of node b's shards are forwarded over TLS
    let events = fleet_events();
    let total = events.len() as u64;
    let mut ingest = IngestServiceClient::new(tls(&pki, &a.addr).await);
    let batches: Vec<pb::IngestBatch> = events
        .chunks(1000)
        .enumerate()
        .map(|(i, c)| pb::IngestBatch {
            batch_id: i as u64 + 1,
            events: c.to_vec(),
        })
        .collect();
    let n_batches = batches.len();
    let mut acks = ingest
        .ingest(tokio_stream::iter(batches))
        .await
        .expect("ingest stream through node a")
        .into_inner();
    let mut acked = 0u64;
    for _ in 0..n_batches {
        let ack = tokio::time::timeout(Duration::from_secs(60), acks.message())
            .await
            .expect("an ack within 60 s")
            .expect("ack")
            .expect("an ack per batch");
        assert!(ack.rejections.is_empty(), "{:?}", ack.rejections);
        acked += u64::from(ack.accepted);
    }
    assert_eq!(acked, total);

    // every provider's profile, asked at node b, counts every event sent through node a
    let mut per_provider: BTreeMap<String, u64> = BTreeMap::new();
    for e in &events {
        *per_provider.entry(e.provider_id.clone()).or_default() += 1;
    }
    let mut rep_b = ReputationServiceClient::new(tls(&pki, &b.addr).await);
    for (id, n) in &per_provider {
        let p = rep_b
            .get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
                provider_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("profile of {id} at node b: {e}"))
            .into_inner();
        assert_eq!(p.events_ingested, *n, "events of {id} seen from node b");
    }

    // a node with another token cannot join: the others refuse it and it says why
    let mut flags = secure_flags(&etcd, &pki, "node-wrong", &wrong);
    flags.extend(["--grpc-port".into(), "127.0.0.1:0".into()]);
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary())
        .arg("serve")
        .args(&flags)
        .args(["--metrics-port", "off", "--data-dir"])
        .arg(dir.path())
        .env("LOG_LEVEL", "WARN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a node with the wrong cluster token was still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !code.success(),
        "the node with the wrong token exited {code}"
    );
    assert!(
        err.contains("refuse this node's credentials") && err.contains("cluster token"),
        "the error says the cluster refused the credentials: {err}"
    );

    // a node the coordinator cannot vouch for (it speaks plaintext; the cluster speaks TLS)
    // registers, but gets no shards, and every node reports it refused
    let plain = NodeProc::start(
        &[
            "--shards",
            SHARDS,
            "--node-id",
            "node-plain",
            "--etcd-endpoints",
            etcd.endpoint(),
            "--lease-ttl",
            "2s",
        ],
        &[("ANALYTICS_INTERVAL", "1s")],
    );
    for n in [&a, &b] {
        let st = wait_status(
            &pki,
            &n.addr,
            Duration::from_secs(30),
            "the plaintext node is reported refused",
            |st| {
                st.nodes
                    .iter()
                    .any(|x| x.node_id == "node-plain" && x.state == "refused")
            },
        )
        .await;
        let o = owners(&st);
        assert_eq!(o.get("node-plain"), None, "the refused node holds no shard");
        assert_eq!(o.values().sum::<usize>(), 16);
        let reason = &st
            .nodes
            .iter()
            .find(|x| x.node_id == "node-plain")
            .unwrap()
            .refused_reason;
        assert!(reason.contains("not reachable"), "reason: {reason}");
    }
    drop(plain);

    // the internal service: a caller with a valid client certificate but no cluster token
    // can neither learn the proof nor hand in a shard
    let ch = tls(&pki, &a.addr).await;
    let mut outsider = NodeServiceClient::new(ch.clone());
    let st = outsider
        .hello(depin_analytics::proto::internal::HelloRequest {
            from: "outsider".into(),
            nonce: vec![7; 32],
            shard_count: 16,
        })
        .await
        .expect_err("Hello without the cluster token");
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    let chunk = depin_analytics::proto::internal::ShardChunk::default();
    let st = outsider
        .transfer_shard(futures::stream::iter(vec![chunk]))
        .await
        .expect_err("a shard handed in without the cluster token");
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    // with the wrong token: refused as well
    let mut wrong_client =
        NodeServiceClient::with_interceptor(ch, BearerInterceptor::new(Some(WRONG_TOKEN)).unwrap());
    let st = wrong_client
        .hello(depin_analytics::proto::internal::HelloRequest {
            from: "outsider".into(),
            nonce: vec![7; 32],
            shard_count: 16,
        })
        .await
        .expect_err("Hello with the wrong token");
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
}
