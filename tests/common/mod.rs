//! Test support: start the real `depin-analytics` binary on a free loopback port and talk to
//! it over real gRPC. (A `common/mod.rs` so cargo does not build it as a test of its own.)

#![allow(dead_code)]

pub mod pki;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use depin_analytics::proto::v1 as pb;
use depin_analytics::proto::v1::cluster_service_client::ClusterServiceClient;
use depin_analytics::proto::v1::ingest_service_client::IngestServiceClient;
use depin_analytics::proto::v1::reputation_service_client::ReputationServiceClient;
use tonic::transport::Channel;

/// The binary under test: `DEPIN_BIN` when set (tests/run.sh points it at the release build
/// it just made), else the one cargo built for this test.
pub fn binary() -> PathBuf {
    match std::env::var_os("DEPIN_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_depin-analytics")),
    }
}

/// A node process; killed when dropped.
pub struct NodeProc {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl NodeProc {
    /// Starts `serve` on 127.0.0.1:0 with `extra` flags and environment, waits for its
    /// "listening on" line.
    pub fn start(extra: &[&str], env: &[(&str, &str)]) -> NodeProc {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        Self::start_in(&dir, extra, env, Some(tmp))
    }

    pub fn start_in(
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        tmp: Option<tempfile::TempDir>,
    ) -> NodeProc {
        let mut cmd = Command::new(binary());
        cmd.args([
            "serve",
            "--grpc-port",
            "127.0.0.1:0",
            "--metrics-port",
            "off",
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .env("LOG_LEVEL", "WARN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning depin-analytics serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(a) = line.strip_prefix("listening on ") {
                        break a.trim().to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    panic!("node exited before listening");
                }
            }
            assert!(Instant::now() < deadline, "node did not start within 60 s");
        };
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        NodeProc {
            child,
            addr,
            data_dir: dir.to_path_buf(),
            _tmp: tmp,
        }
    }

    /// A light node for the API tests: 16 shards, a coordinator cycle every second.
    pub fn start_light(env: &[(&str, &str)]) -> NodeProc {
        let mut all = vec![("ANALYTICS_INTERVAL", "1s")];
        all.extend_from_slice(env);
        Self::start(&["--shards", "16"], &all)
    }

    pub async fn channel(&self) -> Channel {
        depin_analytics::client::connect(&self.addr)
            .await
            .expect("connect")
    }

    pub async fn reputation(&self) -> ReputationServiceClient<Channel> {
        ReputationServiceClient::new(self.channel().await)
    }

    pub async fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel().await)
    }

    pub async fn cluster(&self) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.channel().await)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Takes the temporary data directory out of this handle, so that it outlives the
    /// process (a node restarted on the same disk).
    pub fn take_dir(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }

    /// SIGTERM and wait for the exit status (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "node did not exit within {timeout:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The known-truth scenario (`Scenario::known_truth(sim::DEFAULT_START)`) as proto events, in
/// the order the simulator produces them (hours in order, time order within).
pub fn scenario_events() -> Vec<pb::TelemetryEvent> {
    let s = depin_analytics::sim::Scenario::known_truth(depin_analytics::sim::DEFAULT_START);
    s.events()
        .iter()
        .map(depin_analytics::gateway::convert::event_to_proto)
        .collect()
}

/// Wall-clock seconds since the epoch.
pub fn wall_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Streams `events` over one Ingest stream in batches of at most `batch_size` and returns,
/// for each batch in order, its size and its ack. Checks what every ack must satisfy: it
/// echoes its batch id and accepted + duplicates + rejected = batch size, with one rejection
/// entry per rejected event. Each ack must arrive within 60 s.
pub async fn ingest_batches(
    node: &NodeProc,
    events: &[pb::TelemetryEvent],
    batch_size: usize,
) -> Vec<(usize, pb::IngestAck)> {
    assert!(batch_size > 0);
    let batches: Vec<pb::IngestBatch> = events
        .chunks(batch_size)
        .enumerate()
        .map(|(i, c)| pb::IngestBatch {
            batch_id: i as u64 + 1,
            events: c.to_vec(),
        })
        .collect();
    let sizes: Vec<usize> = batches.iter().map(|b| b.events.len()).collect();
    let mut client = node
        .ingest()
        .await
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut acks = tokio::time::timeout(
        Duration::from_secs(30),
        client.ingest(tokio_stream::iter(batches)),
    )
    .await
    .expect("Ingest did not open within 30 s")
    .expect("Ingest")
    .into_inner();
    let mut out = Vec::with_capacity(sizes.len());
    for (i, n) in sizes.into_iter().enumerate() {
        let ack = tokio::time::timeout(Duration::from_secs(60), acks.message())
            .await
            .unwrap_or_else(|_| panic!("no ack for batch {} within 60 s", i + 1))
            .unwrap_or_else(|e| panic!("batch {}: {e}", i + 1))
            .unwrap_or_else(|| panic!("stream closed before the ack of batch {}", i + 1));
        assert_eq!(
            ack.batch_id,
            i as u64 + 1,
            "acks come in order and echo the batch id"
        );
        assert_eq!(
            ack.accepted as usize + ack.duplicates as usize + ack.rejected as usize,
            n,
            "batch {}: accepted + duplicates + rejected must equal the batch size: {ack:?}",
            ack.batch_id
        );
        assert_eq!(
            ack.rejections.len(),
            ack.rejected as usize,
            "one rejection entry per rejected event"
        );
        out.push((n, ack));
    }
    out
}

/// One batch on its own stream.
pub async fn ingest_one(node: &NodeProc, events: &[pb::TelemetryEvent]) -> pb::IngestAck {
    let mut acks = ingest_batches(node, events, events.len().max(1)).await;
    assert_eq!(acks.len(), 1);
    acks.pop().expect("one ack").1
}

/// Ingests `events` in batches of 1000 and asserts nothing was rejected or duplicated.
pub async fn ingest_clean(node: &NodeProc, events: &[pb::TelemetryEvent]) {
    for (n, ack) in ingest_batches(node, events, 1000).await {
        assert!(n <= 1000);
        assert_eq!(
            ack.rejected,
            0,
            "batch {}: nothing may be rejected: {:?}",
            ack.batch_id,
            ack.rejections.first()
        );
        assert_eq!(
            ack.duplicates, 0,
            "batch {}: a fresh node has no duplicates",
            ack.batch_id
        );
        assert_eq!(ack.accepted as usize, n);
    }
}

/// Polls GetNetworkAnalytics until a coordinator cycle that started after this call (its
/// wall-clock `computed_at` is a later second) counts `providers` providers; at most
/// `timeout`. Returns that snapshot's network analytics.
pub async fn wait_for_snapshot(
    node: &NodeProc,
    providers: u64,
    timeout: Duration,
) -> pb::NetworkAnalytics {
    let after = wall_seconds();
    let mut rep = node.reputation().await;
    let deadline = Instant::now() + timeout;
    loop {
        let n = rep
            .get_network_analytics(pb::GetNetworkAnalyticsRequest {})
            .await
            .expect("GetNetworkAnalytics")
            .into_inner();
        let fresh = n.computed_at.as_ref().is_some_and(|t| t.seconds > after);
        if fresh && n.total_providers == providers {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "no fresh coordinator snapshot with {providers} providers within {timeout:?}: last had {} (computed at {:?}, waiting for > {after})",
            n.total_providers,
            n.computed_at
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
