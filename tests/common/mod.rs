//! Test support: start the real `depin-analytics` binary on a free loopback port and talk to
//! it over real gRPC. (A `common/mod.rs` so cargo does not build it as a test of its own.)

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use depin_analytics::proto::v1::cluster_service_client::ClusterServiceClient;
use depin_analytics::proto::v1::ingest_service_client::IngestServiceClient;
use depin_analytics::proto::v1::reputation_service_client::ReputationServiceClient;
use tonic::transport::Channel;

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_depin-analytics"))
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

    pub fn start_in(dir: &Path, extra: &[&str], env: &[(&str, &str)], tmp: Option<tempfile::TempDir>) -> NodeProc {
        let mut cmd = Command::new(binary());
        cmd.args(["serve", "--grpc-port", "127.0.0.1:0", "--metrics-port", "off", "--data-dir"])
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
        NodeProc { child, addr, data_dir: dir.to_path_buf(), _tmp: tmp }
    }

    pub async fn channel(&self) -> Channel {
        depin_analytics::client::connect(&self.addr).await.expect("connect")
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
        let status = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// SIGTERM and wait for the exit status (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "node did not exit within {timeout:?} of SIGTERM");
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
