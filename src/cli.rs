//! Command line: `serve` runs a node, `demo` runs one in-process against a simulated fleet,
//! `simulate` streams that fleet into a running node, `query` calls one RPC, `bench`
//! measures a node from a separate client process.
//!
//! Every `serve` flag has an environment variable of the same meaning (DESIGN.md §6).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tracing::info;

use crate::client;
use crate::config::AnalyticsConfig;
use crate::node::{Node, NodeConfig};
use crate::telemetry;

#[derive(Parser, Debug)]
#[command(
    name = "depin-analytics",
    version,
    about = "Provider reputation and performance analytics for a decentralized compute marketplace"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size of the serve variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node (standalone: every shard in this process, no etcd).
    Serve(ServeArgs),
    /// Start a node in-process, stream a simulated fleet into it and print what it found.
    Demo(DemoArgs),
    /// Stream a simulated fleet into a running node or cluster.
    Simulate(SimulateArgs),
    /// Call one RPC of a running node and print the answer.
    Query(client::QueryArgs),
    /// Measure a node: start one, load a simulated fleet from a separate client process,
    /// time ingest and queries, check the answers, print a table.
    Bench(crate::bench::BenchArgs),
    /// The bench's client process (internal).
    #[command(hide = true)]
    BenchClient(crate::bench::ClientArgs),
}

#[derive(Args, Debug, Clone)]
pub struct AnalyticsArgs {
    /// YAML analytics configuration (weights, tiers, forecasting; DESIGN.md §6).
    #[arg(long, env = "CONFIG")]
    pub config: Option<PathBuf>,
    /// How often network analytics, rankings and tiers are recomputed.
    #[arg(long, env = "ANALYTICS_INTERVAL", value_parser = humantime::parse_duration)]
    pub analytics_interval: Option<Duration>,
    /// Park a provider (stop its actor, keep its state encoded) after this long with no
    /// event and no read; 0s never parks.
    #[arg(long, env = "PASSIVATE_AFTER", value_parser = humantime::parse_duration)]
    pub passivate_after: Option<Duration>,
    /// Data points below which a provider's data counts as thin.
    #[arg(long, env = "MIN_DATA_POINTS")]
    pub min_data_points: Option<u32>,
    /// The window trends, rates and history cover.
    #[arg(long, env = "TREND_ANALYSIS_WINDOW", value_parser = humantime::parse_duration)]
    pub trend_analysis_window: Option<Duration>,
    /// How far ahead forecasts go.
    #[arg(long, env = "FORECAST_HORIZON", value_parser = humantime::parse_duration)]
    pub forecast_horizon: Option<Duration>,
    /// Log level (ERROR, WARN, INFO, DEBUG, TRACE) or a tracing filter.
    #[arg(long, env = "LOG_LEVEL", default_value = "INFO")]
    pub log_level: String,
    /// Log as JSON lines.
    #[arg(long, env = "LOG_JSON")]
    pub log_json: bool,
    /// Logical shards (fixed when a cluster is created).
    #[arg(long, env = "SHARD_COUNT", default_value_t = 256)]
    pub shards: u32,
}

impl AnalyticsArgs {
    /// The YAML file (if any), then these flags and their environment variables on top.
    pub fn analytics_config(&self) -> anyhow::Result<AnalyticsConfig> {
        let mut cfg = match &self.config {
            Some(path) => AnalyticsConfig::from_file(path)?,
            None => AnalyticsConfig::default(),
        };
        if let Some(d) = self.analytics_interval {
            cfg.analytics_interval = d;
        }
        if let Some(d) = self.passivate_after {
            cfg.passivate_after = d;
        }
        if let Some(n) = self.min_data_points {
            cfg.min_data_points = n;
        }
        if let Some(d) = self.trend_analysis_window {
            cfg.trend_window = d;
        }
        if let Some(d) = self.forecast_horizon {
            cfg.forecasting.horizon_hours = (d.as_secs() / 3600).max(1) as u32;
        }
        cfg.validate()?;
        if self.shards == 0 || self.shards > 65_536 {
            bail!("--shards must be between 1 and 65536, got {}", self.shards);
        }
        Ok(cfg)
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// gRPC listen address: PORT, :PORT or HOST:PORT (host defaults to 127.0.0.1).
    #[arg(long, env = "GRPC_PORT", default_value = ":9090")]
    pub grpc_port: String,
    /// Prometheus metrics listen address (same forms); "off" disables it.
    #[arg(long, env = "METRICS_PORT", default_value = ":9100")]
    pub metrics_port: String,
    /// Directory for the write-ahead log and snapshots.
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// This node's id.
    #[arg(long, env = "NODE_ID", default_value = "node-0")]
    pub node_id: String,
    /// Acknowledge ingest before the log is fsynced: faster, but a machine crash (power,
    /// kernel) loses recently acknowledged events. A process crash alone loses nothing.
    #[arg(long, env = "UNSAFE_NO_FSYNC")]
    pub unsafe_no_fsync: bool,
    /// Checkpoint (snapshot every shard, drop the log before it) each time the write-ahead
    /// log has grown by this many KiB (default 256 MiB): less means faster restarts and
    /// more snapshot writing.
    #[arg(long, env = "CHECKPOINT_KIB", default_value_t = 256 << 10,
          value_parser = clap::value_parser!(u64).range(64..=1 << 30))]
    pub checkpoint_kib: u64,
    /// etcd endpoints (comma-separated URLs) to join a cluster; without them the node is
    /// standalone and owns every shard.
    #[arg(long, env = "ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of this cluster in etcd.
    #[arg(long, env = "ETCD_PREFIX", default_value = "/depin/")]
    pub etcd_prefix: String,
    /// HOST:PORT other nodes use to reach this one (default: the gRPC listen address).
    #[arg(long, env = "ADVERTISE_ADDR", default_value = "")]
    pub advertise_addr: String,
    /// This node's region, for region-aware shard placement.
    #[arg(long, env = "REGION")]
    pub region: Option<String>,
    /// TTL of the node's etcd lease: a node silent this long is gone.
    #[arg(long, env = "LEASE_TTL", value_parser = humantime::parse_duration, default_value = "10s")]
    pub lease_ttl: Duration,
    /// How long a node that died without handing off keeps its shards (they answer
    /// UNAVAILABLE meanwhile) before they are reassigned and its unreplicated data is
    /// reported lost. A StatefulSet pod normally returns with its disk well within it.
    #[arg(long, env = "DEAD_NODE_GRACE", value_parser = humantime::parse_duration, default_value = "5m")]
    pub dead_node_grace: Duration,
    /// On SIGTERM, how long the node may spend handing its shards to other nodes before it
    /// exits anyway (shards not handed off then wait out DEAD_NODE_GRACE).
    #[arg(long, env = "HANDOFF_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub handoff_timeout: Duration,
    #[command(flatten)]
    pub analytics: AnalyticsArgs,
    #[command(flatten)]
    pub security: crate::security::SecurityArgs,
    #[command(flatten)]
    pub limits: crate::gateway::limits::LimitArgs,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub fleet: client::FleetArgs,
    #[arg(long, env = "LOG_LEVEL", default_value = "WARN")]
    pub log_level: String,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The node to stream into (HOST:PORT or http://HOST:PORT).
    #[arg(long, env = "TARGET")]
    pub target: String,
    #[command(flatten)]
    pub fleet: client::FleetArgs,
    /// Write `{"acked": {"<provider>": <events acknowledged>}}` here, even on failure.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub auth: crate::security::ClientSecurityArgs,
}

/// Parses PORT, :PORT or HOST:PORT; a missing host means loopback.
pub fn parse_listen_addr(s: &str) -> anyhow::Result<SocketAddr> {
    let s = s.trim();
    let full = if let Some(port) = s.strip_prefix(':') {
        format!("127.0.0.1:{port}")
    } else if s.chars().all(|c| c.is_ascii_digit()) {
        format!("127.0.0.1:{s}")
    } else {
        s.to_string()
    };
    full.to_socket_addrs()
        .with_context(|| format!("invalid listen address {s:?}"))?
        .next()
        .with_context(|| format!("listen address {s:?} resolves to nothing"))
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(args).await.map(|_| ExitCode::SUCCESS),
        Command::Demo(args) => crate::demo::run(args).await.map(|_| ExitCode::SUCCESS),
        Command::Simulate(args) => client::simulate_cmd(args).await,
        Command::Query(args) => client::query_cmd(args).await.map(|_| ExitCode::SUCCESS),
        // Child processes and blocking waits: off the async workers.
        Command::Bench(args) => tokio::task::spawn_blocking(move || crate::bench::run(args))
            .await
            .context("the bench panicked")?,
        Command::BenchClient(args) => crate::bench::client_main(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init_logging(&args.analytics.log_level, args.analytics.log_json);
    let analytics = args.analytics.analytics_config()?;
    if !args.metrics_port.eq_ignore_ascii_case("off") {
        let addr = parse_listen_addr(&args.metrics_port)?;
        telemetry::init_metrics(addr)?;
        info!(addr = %addr, "metrics on /metrics");
    }
    let cfg = NodeConfig {
        node_id: args.node_id,
        grpc_addr: parse_listen_addr(&args.grpc_port)?,
        data_dir: args.data_dir,
        unsafe_no_fsync: args.unsafe_no_fsync,
        checkpoint_bytes: args.checkpoint_kib << 10,
        cluster: (!args.etcd_endpoints.is_empty()).then(|| crate::node::ClusterConfig {
            etcd_endpoints: args.etcd_endpoints.clone(),
            etcd_prefix: args.etcd_prefix.clone(),
            advertise_addr: args.advertise_addr.clone(),
            region: args.region.clone(),
            lease_ttl: args.lease_ttl,
            dead_node_grace: args.dead_node_grace,
            handoff_timeout: args.handoff_timeout,
        }),
        shard_count: args.analytics.shards,
        analytics,
        security: args.security.config(),
        limits: args.limits.limits()?,
    };
    // Handlers first: a SIGTERM right after the ready line must still shut down cleanly.
    let signals = shutdown_signal()?;
    let node = Node::start(cfg).await?;
    // A line scripts can wait for.
    println!("listening on {}", node.local_addr);
    signals.await;
    info!("shutting down");
    node.shutdown().await
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves on either signal.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
