//! Ingest throughput through real gRPC with durable acknowledgements (fsync before ack),
//! with `unsafe_no_fsync`, and with no data directory at all, in the same run.
//!
//! `cargo bench --bench ingest`; fleet size from `INGEST_BENCH_PROVIDERS` (default 1000)
//! and `INGEST_BENCH_HOURS` (default 24). Prints a table, then one JSON line last.

use std::path::PathBuf;
use std::time::Instant;

use depin_analytics::client::{FleetArgs, stream_fleet};
use depin_analytics::node::{Node, NodeConfig};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not a valid number")),
        Err(_) => default,
    }
}

struct Run {
    name: &'static str,
    events: u64,
    seconds: f64,
}

impl Run {
    fn per_s(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

/// Starts a node, streams the fleet into it over gRPC, shuts it down.
async fn run(
    name: &'static str,
    data_dir: Option<PathBuf>,
    unsafe_no_fsync: bool,
    fleet: &FleetArgs,
) -> Run {
    let node = Node::start(NodeConfig {
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        data_dir,
        unsafe_no_fsync,
        ..NodeConfig::default()
    })
    .await
    .expect("starting the node");
    let channel = depin_analytics::client::connect(&node.local_addr.to_string())
        .await
        .expect("connecting");
    let started = Instant::now();
    let (acked, result) = stream_fleet(channel, fleet, |_| {}).await;
    let seconds = started.elapsed().as_secs_f64();
    result.unwrap_or_else(|e| panic!("{name}: streaming failed: {e:#}"));
    node.shutdown().await.expect("shutdown");
    Run {
        name,
        events: acked.values().sum(),
        seconds,
    }
}

fn main() {
    let fleet = FleetArgs {
        providers: env_or("INGEST_BENCH_PROVIDERS", 1000),
        hours: env_or("INGEST_BENCH_HOURS", 24),
        rate: 0,
        seed: 42,
        batch: 1000,
        heartbeat_interval: 120,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tmp = tempfile::tempdir().expect("temp dir");
    let runs = rt.block_on(async {
        vec![
            run("durable", Some(tmp.path().join("durable")), false, &fleet).await,
            run("no_fsync", Some(tmp.path().join("no-fsync")), true, &fleet).await,
            run("memory_only", None, false, &fleet).await,
        ]
    });
    println!(
        "ingest: {} providers × {} h, batches of {}, one stream, {} cores",
        fleet.providers,
        fleet.hours,
        fleet.batch,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<12} {:>12} {:>10} {:>14}",
        "mode", "events", "seconds", "events/s"
    );
    for r in &runs {
        println!(
            "{:<12} {:>12} {:>10.2} {:>14.0}",
            r.name,
            r.events,
            r.seconds,
            r.per_s()
        );
    }
    assert!(
        runs.windows(2).all(|w| w[0].events == w[1].events),
        "every mode must acknowledge the same events"
    );
    println!(
        "{}",
        serde_json::json!({
            "durable_events_per_s": runs[0].per_s().round(),
            "no_fsync_events_per_s": runs[1].per_s().round(),
            "memory_only_events_per_s": runs[2].per_s().round(),
        })
    );
}
