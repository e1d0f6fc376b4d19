//! Starts a real etcd for a test: Debian's `etcd` binary on two free loopback ports with a
//! temporary data directory, killed when the handle drops. A missing binary fails the test
//! with the way to install it; it never skips.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// A running etcd server.
pub struct Etcd {
    child: Child,
    endpoint: String,
    dir: TempDir,
    ports: (u16, u16),
}

const INSTALL_HINT: &str = "etcd is not installed: run `apt-get install etcd-server` (or \
                            ./tests/run.sh, which installs it); these tests need a real etcd";

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> Self {
        match Command::new("etcd").arg("--version").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!("{INSTALL_HINT} (`etcd --version` failed: {out:?})"),
            Err(e) => panic!("{INSTALL_HINT} ({e})"),
        }
        // a free port can be taken between probing and etcd binding it: try again then
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temporary directory");
            let (client, peer) = (free_port(), free_port());
            let mut child = spawn(dir.path(), client, peer);
            let endpoint = format!("http://127.0.0.1:{client}");
            if wait_healthy(&endpoint, &mut child).await {
                return Self {
                    child,
                    endpoint,
                    dir,
                    ports: (client, peer),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
        }
        panic!("etcd did not become healthy; its log:\n{last_log}");
    }

    /// The client URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Kills etcd (SIGKILL), keeps it down for `down_for`, then starts it again on the same
    /// ports and data directory and waits until it answers.
    pub async fn restart(&mut self, down_for: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tokio::time::sleep(down_for).await;
        self.child = spawn(self.dir.path(), self.ports.0, self.ports.1);
        assert!(
            wait_healthy(&self.endpoint, &mut self.child).await,
            "etcd did not come back; its log:\n{}",
            self.log()
        );
    }

    /// etcd's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

fn spawn(dir: &Path, client: u16, peer: u16) -> Child {
    let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log file");
    depin_analytics::cluster::etcd::loopback_etcd(&dir.join("data"), client, peer)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("etcd log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"))
}

async fn wait_healthy(endpoint: &str, child: &mut Child) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let probe = async {
            let mut c = etcd_client::Client::connect([endpoint], None).await?;
            c.get("health-probe", None).await
        };
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
