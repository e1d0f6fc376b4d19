//! Logs (tracing) and metrics (Prometheus exposition on `/metrics`).

use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing_subscriber::EnvFilter;

/// Logs at `level` (INFO, DEBUG, … or a full `tracing` filter such as
/// `depin_analytics=debug,info`), as JSON when `json` is set. Safe to call twice.
pub fn init_logging(level: &str, json: bool) {
    let filter =
        EnvFilter::try_new(level.to_lowercase()).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.compact().try_init()
    };
}

/// Serves Prometheus metrics on `addr` (path `/metrics`, or any path) from a background task.
/// Must run inside a tokio runtime.
pub fn init_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    let latency = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0,
    ];
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
        .context("histogram buckets")?
        .install()
        .with_context(|| format!("starting the metrics listener on {addr}"))?;
    describe();
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("depin_events_ingested_total", "events accepted and applied");
    describe_counter!("depin_events_rejected_total", "events rejected, by reason");
    describe_counter!(
        "depin_events_duplicate_total",
        "events already ingested (idempotent resends)"
    );
    describe_histogram!(
        "depin_ingest_batch_seconds",
        "time to validate, route and apply one ingest batch"
    );
    describe_histogram!("depin_query_seconds", "query latency by rpc");
    describe_histogram!(
        "depin_checkpoint_pause_seconds",
        "time one checkpoint paused ingest (capturing states, not writing them)"
    );
    describe_histogram!(
        "depin_coordinator_cycle_seconds",
        "time of one coordinator analytics cycle"
    );
    describe_histogram!(
        "depin_coordinator_gather_seconds",
        "time of one coordinator cycle spent gathering the shards' summaries"
    );
    describe_gauge!("depin_providers", "providers known to this node");
    describe_gauge!(
        "depin_providers_parked",
        "providers parked after PASSIVATE_AFTER idle (no actor, state encoded)"
    );
    describe_gauge!(
        "depin_shards",
        "logical shards of the cluster (--shards; depin_shards_owned counts this node's)"
    );
    describe_gauge!(
        "depin_ingest_inflight_events",
        "events admitted and not yet answered"
    );
    describe_gauge!(
        "depin_tier_providers",
        "providers per tier after the last cycle"
    );
    describe_gauge!(
        "depin_network_score",
        "network score distribution (quantile label)"
    );
    describe_counter!("depin_alerts_total", "alerts raised, by kind");
}
