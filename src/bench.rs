//! `depin-analytics bench`: measures a real node from the outside and checks its answers.
//!
//! Three processes, all this binary: the bench (this module's [`run`]) starts a node
//! (`serve`, a temporary data directory, durable acknowledgements unless asked otherwise,
//! free loopback ports), then runs a separate client process (the hidden `bench-client`
//! subcommand) twice: once to stream a simulated fleet in over several gRPC streams
//! (throughput with durable acks; every event must be acknowledged), once to time the
//! scheduler's queries with bounded, closed loops (one call in flight; latencies in an
//! HDR histogram) and to check each answer. Between the two the bench reads the node's
//! resident memory (`/proc/<pid>/status`) and its `depin_coordinator_cycle_seconds`
//! histogram from the metrics port. The client prints its measurements as one JSON line on
//! stdout; the bench prints a table (and with `--json` one JSON object last).
//!
//! A wrong answer fails the run (nonzero exit, the reasons on stderr): a node that dies, a
//! batch whose acknowledged count differs from what was sent, an empty recommendation for a
//! job an online provider fits, a rankings page out of order, a profile or forecast that
//! is not what was asked. Times are reported, never judged.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::client::{self, FleetArgs};
use crate::model::ProviderSpec;
use crate::proto::v1 as pb;
use crate::proto::v1::ingest_service_client::IngestServiceClient;
use crate::proto::v1::reputation_service_client::ReputationServiceClient;
use crate::security::BearerInterceptor;
use crate::sim::Fleet;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Quick mode: a fleet and a query count that finish in well under a minute on 2 cores.
const QUICK_PROVIDERS: usize = 2_000;
const QUICK_QUERIES: u32 = 300;
const DEFAULT_PROVIDERS: usize = 100_000;
const DEFAULT_HOURS: u32 = 24;
const DEFAULT_QUERIES: u32 = 2_000;
/// How long the node idles once every provider is parked before its RSS is read again (the
/// parked figure): long enough for the allocator's purge delay and a worker's next idle
/// moment.
const PARKED_SETTLE: Duration = Duration::from_secs(3);
/// Untimed calls of each kind before the timed ones.
const WARMUP: u32 = 20;
/// Jobs built from sampled online providers' specs (recommendations cycle through them).
const JOBS: usize = 32;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Providers in the simulated fleet [default: 100000; 2000 with --quick].
    #[arg(long)]
    pub providers: Option<usize>,
    /// Simulated hours of history per provider (168 fills the trend window).
    #[arg(long, default_value_t = DEFAULT_HOURS)]
    pub hours: u32,
    /// A small run that checks the answers and finishes in under a minute on 2 cores
    /// (2,000 providers, 300 timed calls of each query).
    #[arg(long)]
    pub quick: bool,
    /// Nodes to start. More than one starts a private etcd (on PATH: cluster/install-etcd
    /// installs it) and a cluster on loopback; ingest is spread over every node's gateway,
    /// queries go to the first, and after the queries a node joins to time the shard
    /// handoffs, then every provider's job count is checked on the grown cluster.
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// Logical shards of the nodes started (their --shards) [default: the node's, 256].
    /// Fewer shards hold more providers each: `--shards 10` with 100,000 providers times
    /// the handoff of 10,000-provider shards.
    #[arg(long)]
    pub shards: Option<u32>,
    /// Measure a running node or cluster instead of starting one (HOST:PORT or a URL;
    /// https:// or --tls-ca for TLS). It must hold no providers but the bench's fleet (the
    /// answers are checked against it). Memory, cycle, handoff and shutdown figures need
    /// the bench's own nodes and are left out.
    #[arg(long)]
    pub target: Option<String>,
    #[command(flatten)]
    pub auth: crate::security::ClientSecurityArgs,
    /// Concurrent ingest streams opened by the client (each acknowledges in order; the
    /// node's group commit shares an fsync between the streams' batches).
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    /// Events per ingest batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Timed calls of each query kind [default: 2000; 300 with --quick].
    #[arg(long)]
    pub queries: Option<u32>,
    /// Start the node with --unsafe-no-fsync (acknowledge before the log is on disk).
    #[arg(long)]
    pub unsafe_no_fsync: bool,
    /// The node's ANALYTICS_INTERVAL [default: 3s with --quick, else 20s]. Queries start
    /// right after a cycle, so a longer interval keeps cycles out of the timed calls.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub analytics_interval: Option<Duration>,
    /// The nodes' PASSIVATE_AFTER [default: 2s with --quick, else 10s]. After the load the
    /// bench waits until every provider is parked and measures memory again.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub passivate_after: Option<Duration>,
    /// Seed of the simulated fleet.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also print the results as one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// Keep the temporary data directory and the node's log.
    #[arg(long)]
    pub keep: bool,
    /// Log level of the bench's nodes (their logs are in the data directory: `--keep`;
    /// INFO shows each shard handoff's phases).
    #[arg(long, default_value = "WARN")]
    pub node_log_level: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Ingest,
    Queries,
    /// Waits until the network analytics count the whole fleet.
    Settle,
    /// Checks every provider's lifetime job count against the fleet.
    Verify,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Ingest => "ingest",
            Phase::Queries => "queries",
            Phase::Settle => "settle",
            Phase::Verify => "verify",
        }
    }
}

/// The bench's client process (hidden subcommand `bench-client`).
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Gateways, comma-separated: ingest streams take them in turn, queries use the first.
    #[arg(long, value_delimiter = ',', required = true)]
    pub target: Vec<String>,
    #[arg(long, value_enum)]
    pub phase: Phase,
    #[arg(long)]
    pub providers: usize,
    #[arg(long)]
    pub hours: u32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    #[arg(long, default_value_t = QUICK_QUERIES)]
    pub queries: u32,
    /// Settle: how long to wait.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub wait: Duration,
    #[command(flatten)]
    pub auth: crate::security::ClientSecurityArgs,
}

impl ClientArgs {
    fn fleet(&self) -> Fleet {
        Fleet::new(client::fleet_config(&FleetArgs {
            providers: self.providers,
            hours: self.hours,
            rate: 0,
            seed: self.seed,
            batch: self.batch,
            heartbeat_interval: 120,
        }))
    }
}

// ------------------------------------------------------------------------ reports

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IngestReport {
    pub streams: usize,
    pub batches: u64,
    pub sent: u64,
    pub acked: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Batches answered RESOURCE_EXHAUSTED (and resent on a new stream).
    pub busy_retries: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    pub failures: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct QueriesReport {
    /// Providers in the network analytics the queries ran against.
    pub network_providers: u64,
    /// `coordinator_cycle_ms` of that snapshot.
    pub last_cycle_ms: f64,
    /// Jobs built (one per sampled online provider).
    pub jobs: usize,
    pub gpu_jobs: usize,
    pub recommend: Latency,
    pub rankings_top100: Latency,
    pub profile: Latency,
    pub forecast_24h: Latency,
    pub failures: Vec<String>,
    /// All failed checks, including those not listed.
    pub failure_count: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HandoffReport {
    /// Shard handoffs the senders completed while the new node joined.
    pub shards_moved: u64,
    pub providers_per_shard: f64,
    /// Mean of `depin_shard_handoff_seconds` over those handoffs (freeze, stream, flip).
    pub mean_ms: f64,
    pub join_to_settled_seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SettleReport {
    pub seconds: f64,
    pub network_providers: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub providers: u64,
    /// Job outcomes the fleet sent, summed over its providers.
    pub jobs_expected: u64,
    /// Lifetime jobs the profiles report, summed.
    pub jobs_found: u64,
    pub seconds: f64,
    pub failures: Vec<String>,
    pub failure_count: u64,
}

/// Failed checks: the first few in full, all counted.
#[derive(Default)]
struct Failures {
    list: Vec<String>,
    count: u64,
}

impl Failures {
    fn push(&mut self, msg: String) {
        self.count += 1;
        if self.list.len() < 20 {
            self.list.push(msg);
        }
    }
}

// ------------------------------------------------------------------------ client process

/// `bench-client`: one phase against a running node; its report as one JSON line on stdout.
pub async fn client_main(args: ClientArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init_logging("warn", false);
    let line = match args.phase {
        Phase::Ingest => serde_json::to_string(&ingest(&args).await?)?,
        Phase::Queries => {
            // One call in flight: a single-threaded runtime on a thread of its own, so a call
            // and its connection's tasks never hand over between threads (each such wake-up
            // is tens of microseconds on a small VM, and would be timed as the node's).
            let a = args.clone();
            let report = tokio::task::spawn_blocking(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the query client's runtime")?
                    .block_on(queries(&a))
            })
            .await
            .context("the query client panicked")??;
            serde_json::to_string(&report)?
        }
        Phase::Settle => serde_json::to_string(&settle(&args).await?)?,
        Phase::Verify => serde_json::to_string(&verify(&args).await?)?,
    };
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

/// What one ingest stream saw.
#[derive(Default)]
struct StreamTally {
    batches: u64,
    sent: u64,
    acked: u64,
    duplicates: u64,
    rejected: u64,
    busy_retries: u64,
    failures: Failures,
}

/// The reputation service of the first gateway, with the bearer token if any.
async fn reputation(
    args: &ClientArgs,
) -> anyhow::Result<ReputationServiceClient<InterceptedService<Channel, BearerInterceptor>>> {
    let channel = client::connect_with(&args.target[0], &args.auth).await?;
    let bearer = BearerInterceptor::new(args.auth.token.as_deref())?;
    Ok(ReputationServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(64 << 20))
}

async fn ingest(args: &ClientArgs) -> anyhow::Result<IngestReport> {
    let fleet = Arc::new(args.fleet());
    let mut channels = Vec::new();
    for t in &args.target {
        channels.push(client::connect_with(t, &args.auth).await?);
    }
    let bearer = BearerInterceptor::new(args.auth.token.as_deref())?;
    let streams = args.streams.clamp(1, 64);
    let batch = args.batch.clamp(1, 10_000);
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|k| {
            tokio::spawn(ingest_stream(
                IngestServiceClient::with_interceptor(
                    channels[k % channels.len()].clone(),
                    bearer.clone(),
                ),
                fleet.clone(),
                k,
                streams,
                batch,
                acked.clone(),
            ))
        })
        .collect();
    let progress = tokio::spawn(report_progress(acked.clone(), fleet.estimated_events()));
    let mut tally = StreamTally::default();
    let mut first_error = None;
    for t in tasks {
        match t.await.context("an ingest stream panicked")? {
            Ok(s) => {
                tally.batches += s.batches;
                tally.sent += s.sent;
                tally.acked += s.acked;
                tally.duplicates += s.duplicates;
                tally.rejected += s.rejected;
                tally.busy_retries += s.busy_retries;
                for f in s.failures.list {
                    tally.failures.push(f);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.abort();
    if let Some(e) = first_error {
        return Err(e.context(format!(
            "ingest stream failed ({} events acknowledged before)",
            acked.load(Ordering::Relaxed)
        )));
    }
    if tally.acked != tally.sent {
        tally.failures.push(format!(
            "{} events sent, {} acknowledged as accepted ({} duplicates, {} rejected)",
            tally.sent, tally.acked, tally.duplicates, tally.rejected
        ));
    }
    Ok(IngestReport {
        streams,
        batches: tally.batches,
        sent: tally.sent,
        acked: tally.acked,
        duplicates: tally.duplicates,
        rejected: tally.rejected,
        busy_retries: tally.busy_retries,
        seconds,
        events_per_s: (tally.acked as f64 / seconds).round(),
        failures: tally.failures.list,
    })
}

/// A progress bar on a terminal, else a line every 10 s (stderr either way).
async fn report_progress(acked: Arc<AtomicU64>, estimated: u64) {
    let started = Instant::now();
    if std::io::stderr().is_terminal() {
        let bar = client::progress_bar(estimated);
        loop {
            bar.set_position(acked.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let n = acked.load(Ordering::Relaxed);
            eprintln!(
                "bench: ingest {n} of ~{estimated} events acknowledged ({:.0} events/s)",
                n as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Batches one stream keeps unacknowledged.
const WINDOW: usize = 8;
/// RESOURCE_EXHAUSTED answers one stream retries before it gives up.
const MAX_BUSY_RETRIES: u64 = 10_000;

/// Streams providers `k, k + of, k + 2·of, …` (every hour of each, in hour order) on one
/// gRPC stream and checks every acknowledgement. A RESOURCE_EXHAUSTED answer (the node
/// pauses ingest during a checkpoint) ends the stream before anything of that batch is
/// applied: the stream is reopened and every unacknowledged batch resent, as a collector
/// does.
async fn ingest_stream(
    client: IngestServiceClient<InterceptedService<Channel, BearerInterceptor>>,
    fleet: Arc<Fleet>,
    k: usize,
    of: usize,
    batch: usize,
    acked_total: Arc<AtomicU64>,
) -> anyhow::Result<StreamTally> {
    use crate::model::TelemetryEvent;
    let mut client = client
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (gen_tx, mut gen_rx) = tokio::sync::mpsc::channel::<Vec<TelemetryEvent>>(4);
    let generator = tokio::spawn(async move {
        let n = fleet.providers().len();
        let mut buf = Vec::with_capacity(batch * 2);
        for h in 0..fleet.config().hours {
            for i in (k..n).step_by(of) {
                fleet.generate_provider_hour(i, h, &mut buf);
                while buf.len() >= batch {
                    // the batch keeps the buffer; only the few events past it move
                    let mut rest = Vec::with_capacity(batch * 2);
                    rest.extend(buf.drain(batch..));
                    if gen_tx
                        .send(std::mem::replace(&mut buf, rest))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        if !buf.is_empty() {
            let _ = gen_tx.send(buf).await;
        }
    });
    let to_proto = |id: u64, events: &[TelemetryEvent]| pb::IngestBatch {
        batch_id: id,
        events: events
            .iter()
            .map(crate::gateway::convert::event_to_proto)
            .collect(),
    };
    let mut t = StreamTally::default();
    // Sent and not yet acknowledged, oldest first (kept to resend after a busy answer).
    let mut unacked: std::collections::VecDeque<(u64, Vec<TelemetryEvent>)> = Default::default();
    let mut next_id = 0u64;
    let mut generated_all = false;
    'stream: loop {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::IngestBatch>(WINDOW);
        let mut acks = client
            .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .context("opening an ingest stream")?
            .into_inner();
        // A failed send means the node ended the call (busy during a checkpoint, say): stop
        // sending and read the acks, the last of which is the node's status saying why.
        let mut open = true;
        for (id, events) in &unacked {
            if tx.send(to_proto(*id, events)).await.is_err() {
                open = false;
                break;
            }
        }
        loop {
            while open && !generated_all && unacked.len() < WINDOW {
                match gen_rx.recv().await {
                    Some(events) => {
                        next_id += 1;
                        open = tx.send(to_proto(next_id, &events)).await.is_ok();
                        unacked.push_back((next_id, events));
                    }
                    None => generated_all = true,
                }
            }
            let Some(&(id, ref events)) = unacked.front() else {
                break 'stream;
            };
            let n = events.len() as u32;
            let ack = match acks.message().await {
                Ok(Some(ack)) => ack,
                Ok(None) => bail!("the node closed the stream before acknowledging batch {id}"),
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    t.busy_retries += 1;
                    if t.busy_retries > MAX_BUSY_RETRIES {
                        bail!(
                            "still RESOURCE_EXHAUSTED after {MAX_BUSY_RETRIES} retries: {status}"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'stream;
                }
                Err(status) => {
                    return Err(anyhow::Error::new(status)
                        .context(format!("waiting for the ack of batch {id}")));
                }
            };
            if ack.batch_id != id {
                bail!("ack for batch {} while waiting for {id}", ack.batch_id);
            }
            unacked.pop_front();
            t.batches += 1;
            t.sent += u64::from(n);
            t.acked += u64::from(ack.accepted);
            t.duplicates += u64::from(ack.duplicates);
            t.rejected += u64::from(ack.rejected);
            if ack.accepted != n {
                let why = ack
                    .rejections
                    .first()
                    .map(|r| {
                        format!(
                            "; first rejection: {} {}: {}",
                            r.field, r.reason, r.description
                        )
                    })
                    .unwrap_or_default();
                t.failures.push(format!(
                    "stream {k} batch {id}: {n} events sent, {} accepted, {} duplicates, {} rejected{why}",
                    ack.accepted, ack.duplicates, ack.rejected
                ));
            }
            acked_total.fetch_add(u64::from(ack.accepted), Ordering::Relaxed);
        }
    }
    generator.await.context("the batch generator panicked")?;
    Ok(t)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// A job that `spec` satisfies, with room to spare so other providers can fit it too:
/// half its cores and memory, one unit of its main GPU model with at most its VRAM, its
/// region, 4 hours, a budget half again its price.
fn job_for(spec: &ProviderSpec) -> pb::JobRequirements {
    let hours = 4.0;
    let gpu = spec.primary_gpu();
    pb::JobRequirements {
        cpu_cores: (spec.cpu_cores / 2).max(1),
        // whole numbers: the node keeps memory and VRAM as f32, which cannot round below one
        memory_gb: (spec.memory_gb / 2.0).floor(),
        gpu_model: gpu.map(|g| g.model.clone()).unwrap_or_default(),
        gpu_count: u32::from(gpu.is_some()),
        min_vram_gb: gpu.map_or(0.0, |g| g.vram_gb.floor()),
        regions: vec![spec.region.clone()],
        expected_duration_hours: hours,
        max_budget: spec.price_per_hour * hours * 1.5 + 1.0,
        ..Default::default()
    }
}

const CATEGORIES: [pb::RankingCategory; 6] = [
    pb::RankingCategory::Overall,
    pb::RankingCategory::Performance,
    pb::RankingCategory::Reliability,
    pb::RankingCategory::Cost,
    pb::RankingCategory::Availability,
    pb::RankingCategory::Speed,
];

/// The problems of a top-100 rankings page, if any.
fn check_rankings(
    r: &pb::GetProviderRankingsResponse,
    category: pb::RankingCategory,
    providers: usize,
) -> Option<String> {
    let want = providers.min(100);
    let name = category.as_str_name();
    if r.rankings.len() != want {
        return Some(format!(
            "rankings {name}: {} lines, expected {want}",
            r.rankings.len()
        ));
    }
    if r.total != providers as u64 {
        return Some(format!(
            "rankings {name}: total {}, expected {providers}",
            r.total
        ));
    }
    if r.rankings.first().is_some_and(|l| l.rank != 1) {
        return Some(format!(
            "rankings {name}: first rank is {}",
            r.rankings[0].rank
        ));
    }
    for w in r.rankings.windows(2) {
        let ordered = w[0]
            .score
            .partial_cmp(&w[1].score)
            .is_some_and(|o| o != std::cmp::Ordering::Less);
        if !ordered || w[1].rank != w[0].rank + 1 {
            return Some(format!(
                "rankings {name} not sorted: #{} {} score {} before #{} {} score {}",
                w[0].rank, w[0].provider_id, w[0].score, w[1].rank, w[1].provider_id, w[1].score
            ));
        }
    }
    None
}

async fn queries(args: &ClientArgs) -> anyhow::Result<QueriesReport> {
    let fleet = args.fleet();
    let n = fleet.providers().len();
    if n == 0 {
        bail!("no providers");
    }
    let mut rep = reputation(args).await?;
    let mut failures = Failures::default();
    let mut report = QueriesReport::default();

    let net = rep
        .get_network_analytics(pb::GetNetworkAnalyticsRequest {})
        .await
        .context("GetNetworkAnalytics")?
        .into_inner();
    report.network_providers = net.total_providers;
    report.last_cycle_ms = net.coordinator_cycle_ms;
    if net.total_providers != n as u64 {
        failures.push(format!(
            "network analytics counts {} providers after the load, {n} were sent",
            net.total_providers
        ));
    }

    // Jobs from the specs of sampled providers the node reports online: each has at least
    // its source provider as an answer.
    let mut rng = SmallRng::seed_from_u64(args.seed ^ 0xbe4c_4a11);
    let mut jobs = Vec::new();
    for _ in 0..(JOBS * 8) {
        if jobs.len() == JOBS {
            break;
        }
        let p = &fleet.providers()[rng.random_range(0..n)];
        let profile = rep
            .get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
                provider_id: p.id.to_string(),
            })
            .await
            .with_context(|| format!("profile of {}", p.id))?
            .into_inner();
        if profile.online {
            report.gpu_jobs += usize::from(!p.spec.gpus.is_empty());
            jobs.push((p.id.to_string(), job_for(&p.spec)));
        }
    }
    report.jobs = jobs.len();
    if jobs.is_empty() {
        failures.push(format!(
            "none of {} sampled providers is online at the end of the load",
            JOBS * 8
        ));
    }
    // Forecasts of providers with the whole run's history (brand-new ones have hours).
    let veterans: Vec<String> = fleet
        .providers()
        .iter()
        .filter(|p| p.first_hour == 0)
        .map(|p| p.id.to_string())
        .collect();

    let rounds = args.queries;
    let mut h = histogram();
    for i in 0..(WARMUP + rounds) {
        if jobs.is_empty() {
            break;
        }
        let (source, job) = &jobs[i as usize % jobs.len()];
        let req = pb::GetProviderRecommendationsRequest {
            requirements: Some(job.clone()),
            max_results: 10,
            allow_relaxed: false,
        };
        let t = Instant::now();
        let r = rep.get_provider_recommendations(req).await;
        let d = t.elapsed();
        if i >= WARMUP {
            h.record(micros(d))?;
        }
        match r {
            Ok(r) => {
                let r = r.into_inner();
                if r.recommendations.is_empty() {
                    failures.push(format!(
                        "no recommendation for a job {source} fits (online): {job:?}; {}",
                        r.explanation
                    ));
                } else if let Some(x) = r.recommendations.iter().find(|x| x.relaxed) {
                    failures.push(format!(
                        "a relaxed suggestion ({}) without allow_relaxed",
                        x.provider_id
                    ));
                }
            }
            Err(e) => failures.push(format!("GetProviderRecommendations: {e}")),
        }
    }
    report.recommend = Latency::of(&h);

    let mut h = histogram();
    for i in 0..(WARMUP + rounds) {
        let category = CATEGORIES[i as usize % CATEGORIES.len()];
        let req = pb::GetProviderRankingsRequest {
            category: category as i32,
            page: Some(pb::PageRequest {
                page_size: 100,
                page_token: String::new(),
            }),
            ..Default::default()
        };
        let t = Instant::now();
        let r = rep.get_provider_rankings(req).await;
        let d = t.elapsed();
        if i >= WARMUP {
            h.record(micros(d))?;
        }
        match r {
            Ok(r) => {
                if let Some(f) = check_rankings(&r.into_inner(), category, n) {
                    failures.push(f);
                }
            }
            Err(e) => failures.push(format!("GetProviderRankings: {e}")),
        }
    }
    report.rankings_top100 = Latency::of(&h);

    let mut h = histogram();
    for i in 0..(WARMUP + rounds) {
        let id = fleet.providers()[rng.random_range(0..n)].id.to_string();
        let t = Instant::now();
        let r = rep
            .get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
                provider_id: id.clone(),
            })
            .await;
        let d = t.elapsed();
        if i >= WARMUP {
            h.record(micros(d))?;
        }
        match r {
            Ok(p) if p.get_ref().provider_id == id => {}
            Ok(p) => failures.push(format!(
                "asked the profile of {id}, got {}",
                p.get_ref().provider_id
            )),
            Err(e) => failures.push(format!("GetProviderReputationProfile {id}: {e}")),
        }
    }
    report.profile = Latency::of(&h);

    let mut h = histogram();
    for i in 0..(WARMUP + rounds) {
        if veterans.is_empty() {
            break;
        }
        let id = veterans[rng.random_range(0..veterans.len())].clone();
        let t = Instant::now();
        let r = rep
            .get_provider_forecasts(pb::GetProviderForecastsRequest {
                provider_id: id.clone(),
                metric: String::new(),
                horizon_hours: 24,
            })
            .await;
        let d = t.elapsed();
        if i >= WARMUP {
            h.record(micros(d))?;
        }
        match r {
            Ok(f) => {
                let f = f.into_inner();
                if f.provider_id != id
                    || f.points.len() != 24
                    || f.points.iter().any(|p| !p.value.is_finite())
                {
                    failures.push(format!(
                        "forecast of {id}: {} points for {} (model {}), expected 24 finite ones",
                        f.points.len(),
                        f.provider_id,
                        f.model
                    ));
                }
            }
            // A provider with fewer than two hours of data (a short run: an outage can
            // cover all but one hour) is rightly refused; its profile must say so.
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                let points = rep
                    .get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
                        provider_id: id.clone(),
                    })
                    .await
                    .map(|p| p.into_inner().data_points);
                if !matches!(points, Ok(n) if n < 2) {
                    failures.push(format!(
                        "GetProviderForecasts {id}: {e} (profile's data points: {points:?})"
                    ));
                }
            }
            Err(e) => failures.push(format!("GetProviderForecasts {id}: {e}")),
        }
    }
    report.forecast_24h = Latency::of(&h);

    report.failure_count = failures.count;
    report.failures = failures.list;
    Ok(report)
}

/// Polls the network analytics until a coordinator cycle computed after this phase began
/// (the load is over) counts the whole fleet, or fails after `--wait`.
async fn settle(args: &ClientArgs) -> anyhow::Result<SettleReport> {
    let want = args.fleet().providers().len() as u64;
    let mut rep = reputation(args).await?;
    let started = Instant::now();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    loop {
        let (seen, at) = match rep
            .get_network_analytics(pb::GetNetworkAnalyticsRequest {})
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                (r.total_providers, r.computed_at.map_or(0, |t| t.seconds))
            }
            Err(s) if s.code() == tonic::Code::Unavailable => (0, 0),
            Err(s) => return Err(anyhow::Error::new(s).context("GetNetworkAnalytics")),
        };
        // strictly after: a cycle computed in the second the load ended may have begun before
        if seen == want && at > since {
            return Ok(SettleReport {
                seconds: started.elapsed().as_secs_f64(),
                network_providers: seen,
            });
        }
        if started.elapsed() > args.wait {
            bail!(
                "the network analytics count {seen} providers, not {want}, {:?} after the load",
                args.wait
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every provider's lifetime job count (its profile, asked of the first gateway) against
/// the job outcomes the fleet generated for it: nothing acknowledged was lost or doubled.
async fn verify(args: &ClientArgs) -> anyhow::Result<VerifyReport> {
    use crate::model::EventPayload;
    let fleet = args.fleet();
    let mut rep = reputation(args).await?;
    let started = Instant::now();
    let mut failures = Failures::default();
    let mut report = VerifyReport::default();
    let mut buf = Vec::new();
    for (i, p) in fleet.providers().iter().enumerate() {
        buf.clear();
        for h in 0..fleet.config().hours {
            fleet.generate_provider_hour(i, h, &mut buf);
        }
        let expected = buf
            .iter()
            .filter(|e| matches!(e.payload, EventPayload::JobOutcome(_)))
            .count() as u64;
        let id = p.id.to_string();
        let mut tries = 0;
        let found = loop {
            match rep
                .get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
                    provider_id: id.clone(),
                })
                .await
            {
                Ok(r) => break Some(r.into_inner().jobs_lifetime),
                // a shard still settling: retried, as a scheduler would
                Err(s) if s.code() == tonic::Code::Unavailable && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(s) => {
                    failures.push(format!("profile of {id}: {s}"));
                    break None;
                }
            }
        };
        report.providers += 1;
        report.jobs_expected += expected;
        if let Some(found) = found {
            report.jobs_found += found;
            if found != expected {
                failures.push(format!("{id}: {found} lifetime jobs, {expected} were sent"));
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.failure_count = failures.count;
    report.failures = failures.list;
    Ok(report)
}

// ------------------------------------------------------------------------ the bench

/// One line of progress on stderr.
fn phase(msg: &str) {
    eprintln!("bench: {msg}");
}

/// A temporary working directory, removed on drop unless kept.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create(keep: bool) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("depin-bench-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The node under test; killed on drop if still running.
struct NodeProcess {
    id: String,
    child: Child,
    addr: String,
    metrics_port: u16,
    log: PathBuf,
}

impl NodeProcess {
    /// Starts `serve` as node `id` (standalone unless `etcd` is given); waits until it
    /// listens.
    fn start(
        exe: &Path,
        work: &Path,
        args: &BenchArgs,
        interval: Duration,
        id: &str,
        etcd: Option<&str>,
    ) -> anyhow::Result<Self> {
        let metrics_port = free_port()?;
        let log = work.join(format!("{id}.log"));
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .args(["--grpc-port", "127.0.0.1:0"])
            .arg("--metrics-port")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--data-dir")
            .arg(work.join(id))
            .arg("--analytics-interval")
            .arg(humantime::format_duration(interval).to_string())
            .arg("--passivate-after")
            .arg(humantime::format_duration(passivate_after(args)).to_string())
            .args(["--log-level", &args.node_log_level, "--node-id", id])
            // the bench's nodes are private, on loopback, without TLS or tokens
            .env_remove("ETCD_ENDPOINTS")
            .env_remove("AUTH_TOKENS")
            .env_remove("TLS_CERT")
            .env_remove("TLS_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).context("creating the node log")?);
        if args.unsafe_no_fsync {
            cmd.arg("--unsafe-no-fsync");
        }
        if let Some(shards) = args.shards {
            cmd.args(["--shards", &shards.to_string()]);
        }
        if let Some(endpoint) = etcd {
            cmd.args(["--etcd-endpoints", endpoint, "--lease-ttl", "5s"]);
        }
        let mut child = cmd.spawn().context("spawning the node (serve)")?;
        let stdout = child.stdout.take().context("the node's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send(a.trim().to_string());
                    break;
                }
            }
            // keep draining so the node never blocks on a full pipe
            for _ in lines {}
        });
        let mut node = Self {
            id: id.to_string(),
            child,
            addr: String::new(),
            metrics_port,
            log,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => node.addr = addr,
            Err(_) => {
                node.check_alive()?;
                bail!("node {id} did not print \"listening on\" within 60 s");
            }
        }
        Ok(node)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error (with the tail of the node's log) if the node has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "a node crashed ({status}); last lines of its log ({}):\n{}",
                self.log.display(),
                tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        self.check_alive()?;
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!(
                        "the node exited with {status} on SIGTERM; last lines of its log:\n{}",
                        tail(&self.log, 30)
                    );
                }
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("the node did not stop within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The private etcd of a multi-node bench (Debian's etcd-server; `cluster/install-etcd`).
struct EtcdProcess {
    child: Child,
    endpoint: String,
}

impl EtcdProcess {
    fn start(work: &Path) -> anyhow::Result<Self> {
        match Command::new("etcd").arg("--version").output() {
            Ok(out) if out.status.success() => {}
            _ => bail!(
                "--nodes > 1 needs etcd on PATH: run cluster/install-etcd (Debian's etcd-server package)"
            ),
        }
        let (client, peer) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client}");
        let log = work.join("etcd.log");
        let child = crate::cluster::etcd::loopback_etcd(&work.join("etcd"), client, peer)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("creating the etcd log")?)
            .spawn()
            .context("spawning etcd")?;
        let mut etcd = Self {
            child,
            endpoint: client_url,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = etcd.child.try_wait()? {
                bail!("etcd exited ({status}):\n{}", tail(&log, 20));
            }
            let ready = std::fs::read_to_string(&log)
                .is_ok_and(|t| t.contains("ready to serve client requests"));
            if ready && TcpStream::connect(("127.0.0.1", client)).is_ok() {
                return Ok(etcd);
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("etcd was not ready within 20 s:\n{}", tail(&log, 20));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the bench measures: its own nodes (one standalone, or a cluster with its etcd), or
/// a running deployment given with `--target`.
struct Deployment {
    nodes: Vec<NodeProcess>,
    // dropped after the nodes (fields drop in order), so they never lose etcd first
    etcd: Option<EtcdProcess>,
    external: Option<String>,
}

/// Shard gauges of one node: (cluster nodes it sees, shards it owns, in motion, unassigned).
type ShardGauges = (u64, u64, u64, u64);

impl Deployment {
    fn external(target: String) -> Self {
        Self {
            nodes: Vec::new(),
            etcd: None,
            external: Some(target),
        }
    }

    fn start(
        exe: &Path,
        work: &Path,
        args: &BenchArgs,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        if args.nodes == 1 {
            let node = NodeProcess::start(exe, work, args, interval, "bench-node", None)?;
            return Ok(Self {
                nodes: vec![node],
                etcd: None,
                external: None,
            });
        }
        let etcd = EtcdProcess::start(work)?;
        let mut dep = Self {
            nodes: Vec::new(),
            etcd: Some(etcd),
            external: None,
        };
        for _ in 0..args.nodes {
            dep.add_node(exe, work, args, interval)?;
        }
        Ok(dep)
    }

    /// Starts one more cluster node (`node-<n>`).
    fn add_node(
        &mut self,
        exe: &Path,
        work: &Path,
        args: &BenchArgs,
        interval: Duration,
    ) -> anyhow::Result<()> {
        let endpoint = self.etcd.as_ref().map(|e| e.endpoint.clone());
        let id = format!("node-{}", self.nodes.len() + 1);
        let node = NodeProcess::start(exe, work, args, interval, &id, endpoint.as_deref())?;
        self.nodes.push(node);
        Ok(())
    }

    fn targets(&self) -> String {
        match &self.external {
            Some(t) => t.clone(),
            None => self
                .nodes
                .iter()
                .map(|n| n.addr.as_str())
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.nodes.iter_mut().try_for_each(NodeProcess::check_alive)
    }

    /// Resident memory of all the nodes, KiB.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        self.nodes.iter().map(|n| rss_kib(n.pid())).sum()
    }

    /// Each of these metrics summed over the nodes (one scrape of each node).
    fn summed<const N: usize>(&self, names: [&str; N]) -> anyhow::Result<[f64; N]> {
        let mut total = [0.0; N];
        for n in &self.nodes {
            let text = scrape_retrying(n.metrics_port)?;
            for (t, name) in total.iter_mut().zip(names) {
                *t += metric(&text, name);
            }
        }
        Ok(total)
    }

    /// A count and a seconds total, each summed over the nodes' metrics.
    fn count_and_seconds(&self, count: &str, seconds: &str) -> anyhow::Result<(u64, f64)> {
        let [c, s] = self.summed([count, seconds])?;
        Ok((c as u64, s))
    }

    /// Providers parked on the nodes.
    fn parked(&self) -> anyhow::Result<u64> {
        let [p] = self.summed(["depin_providers_parked"])?;
        Ok(p as u64)
    }

    /// Coordinator cycles (count, seconds, seconds of them spent gathering the summaries)
    /// summed over the nodes: only a leader runs them.
    fn cycle_metrics(&self) -> anyhow::Result<(u64, f64, f64)> {
        let [c, s, g] = self.summed([
            "depin_coordinator_cycle_seconds_count",
            "depin_coordinator_cycle_seconds_sum",
            "depin_coordinator_gather_seconds_sum",
        ])?;
        Ok((c as u64, s, g))
    }

    /// Shard handoffs done (count, seconds) summed over the nodes.
    fn handoff_metrics(&self) -> anyhow::Result<(u64, f64)> {
        self.count_and_seconds(
            "depin_shard_handoffs_total",
            "depin_shard_handoff_seconds_sum",
        )
    }

    fn shard_gauges(&self) -> anyhow::Result<Vec<ShardGauges>> {
        self.nodes
            .iter()
            .map(|n| {
                let text = scrape_retrying(n.metrics_port)?;
                Ok((
                    metric(&text, "depin_cluster_nodes") as u64,
                    metric(&text, "depin_shards_owned") as u64,
                    metric(&text, "depin_shards_in_motion") as u64,
                    metric(&text, "depin_shards_unassigned") as u64,
                ))
            })
            .collect()
    }

    /// Waits until every node sees them all, each shard is owned once, none is moving and
    /// every node owns its share (⌊shards / nodes⌋ at least: the placement has run).
    fn wait_settled(&mut self, shards: u32, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let want = self.nodes.len() as u64;
        let share = u64::from(shards) / want;
        loop {
            self.check_alive()?;
            let g = self.shard_gauges()?;
            let owned: u64 = g.iter().map(|x| x.1).sum();
            let settled = g.iter().all(|&(nodes, owned, moving, unassigned)| {
                nodes == want && owned >= share && moving == 0 && unassigned == 0
            });
            if settled && owned == u64::from(shards) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                bail!(
                    "the cluster did not settle within {within:?}: per node (nodes seen, shards owned, in motion, unassigned) {g:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A loopback port nobody listens on right now.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The nodes' PASSIVATE_AFTER.
fn passivate_after(args: &BenchArgs) -> Duration {
    args.passivate_after.unwrap_or(if args.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(10)
    })
}

/// Resident memory of a process in KiB (`VmRSS` in `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// A sample's value in a Prometheus text page (0 when absent: a counter never touched).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// The node's metrics page, retried for 5 s.
fn scrape_retrying(port: u16) -> anyhow::Result<String> {
    let mut last_err = None;
    for _ in 0..50 {
        match scrape(port) {
            Ok(text) => return Ok(text),
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no answer")))
        .with_context(|| format!("scraping the node's metrics on port {port}"))
}

fn scrape(port: u16) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.1 200") {
        bail!(
            "unexpected answer: {}",
            out.lines().next().unwrap_or_default()
        );
    }
    Ok(out)
}

/// Runs `bench-client` for one phase against the deployment; its JSON report.
fn run_client<T: serde::de::DeserializeOwned>(
    exe: &Path,
    dep: &mut Deployment,
    auth: &crate::security::ClientSecurityArgs,
    phase: Phase,
    cargs: &[String],
) -> anyhow::Result<T> {
    let name = phase.name();
    let mut cmd = Command::new(exe);
    cmd.arg("bench-client")
        .args(["--target", &dep.targets(), "--phase", name])
        .args(cargs)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    // credentials through the environment, not the command line (ps shows that)
    for (var, value) in [
        ("TOKEN", auth.token.as_ref().map(std::ffi::OsString::from)),
        (
            "TLS_CA",
            auth.tls_ca.as_ref().map(|p| p.as_os_str().to_owned()),
        ),
        (
            "TLS_CLIENT_CERT",
            auth.tls_client_cert
                .as_ref()
                .map(|p| p.as_os_str().to_owned()),
        ),
        (
            "TLS_CLIENT_KEY",
            auth.tls_client_key
                .as_ref()
                .map(|p| p.as_os_str().to_owned()),
        ),
    ] {
        match value {
            Some(v) => cmd.env(var, v),
            None => cmd.env_remove(var),
        };
    }
    let out = cmd.output().context("running the bench client")?;
    dep.check_alive()
        .with_context(|| format!("during the {name} phase"))?;
    if !out.status.success() {
        bail!(
            "the bench client failed in the {name} phase ({})",
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("reading the {name} report: {line:?}"))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `depin-analytics bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if args.target.is_some() && (args.nodes > 1 || args.shards.is_some() || args.unsafe_no_fsync) {
        bail!(
            "--target measures a running deployment as it is; --nodes, --shards and --unsafe-no-fsync configure the bench's own nodes"
        );
    }
    let a = &args.auth;
    if args.target.is_none()
        && (a.token.is_some() || a.tls_ca.is_some() || a.tls_client_cert.is_some())
    {
        phase(
            "note: --token and --tls-* (or TOKEN, TLS_* in the environment) apply to --target; the bench's own nodes run on loopback without them",
        );
    }
    let providers = args.providers.unwrap_or(if args.quick {
        QUICK_PROVIDERS
    } else {
        DEFAULT_PROVIDERS
    });
    if providers == 0 || args.hours == 0 {
        bail!("--providers and --hours must be at least 1");
    }
    let queries = args.queries.unwrap_or(if args.quick {
        QUICK_QUERIES
    } else {
        DEFAULT_QUERIES
    });
    let interval = args.analytics_interval.unwrap_or(if args.quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(20)
    });
    let exe = std::env::current_exe().context("locating this binary")?;
    let work = WorkDir::create(args.keep)?;
    let started = Instant::now();
    let local = args.target.is_none();
    let durability = match (&args.target, args.unsafe_no_fsync) {
        (Some(_), _) => "as deployed",
        (None, true) => "--unsafe-no-fsync",
        (None, false) => "durable, fsync before ack",
    };
    let mut dep = match &args.target {
        Some(t) => {
            phase(&format!("measuring the running deployment at {t}"));
            Deployment::external(t.clone())
        }
        None => {
            phase(&format!(
                "starting {} ({durability}, data in {}, analytics every {})",
                if args.nodes == 1 {
                    "a node".to_string()
                } else {
                    format!("etcd and {} nodes", args.nodes)
                },
                work.path.display(),
                humantime::format_duration(interval)
            ));
            Deployment::start(&exe, &work.path, &args, interval)?
        }
    };
    let shards = match dep.nodes.first() {
        Some(n) => metric(&scrape_retrying(n.metrics_port)?, "depin_shards") as u32,
        None => 0,
    };
    for n in &dep.nodes {
        phase(&format!(
            "node {} (pid {}) listening on {} (metrics on :{})",
            n.id,
            n.pid(),
            n.addr,
            n.metrics_port
        ));
    }
    if dep.nodes.len() > 1 {
        let took = dep.wait_settled(shards, Duration::from_secs(120))?;
        phase(&format!(
            "cluster settled: {shards} shards over {} nodes ({:.1} s)",
            dep.nodes.len(),
            took.as_secs_f64()
        ));
    }
    // Let the start-up cycle finish so the baseline is an idle node.
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = if local { dep.rss_kib()? } else { 0 };

    let cargs: Vec<String> = vec![
        "--providers".into(),
        providers.to_string(),
        "--hours".into(),
        args.hours.to_string(),
        "--seed".into(),
        args.seed.to_string(),
        "--streams".into(),
        args.streams.to_string(),
        "--batch".into(),
        args.batch.to_string(),
        "--queries".into(),
        queries.to_string(),
    ];
    let estimated = Fleet::new(client::fleet_config(&FleetArgs {
        providers,
        hours: args.hours,
        rate: 0,
        seed: args.seed,
        batch: args.batch,
        heartbeat_interval: 120,
    }))
    .estimated_events();
    phase(&format!(
        "ingest: {providers} providers × {} h (~{estimated} events) over {} streams, batches of {}",
        args.hours, args.streams, args.batch
    ));
    let ingest: IngestReport = run_client(&exe, &mut dep, &args.auth, Phase::Ingest, &cargs)?;
    phase(&format!(
        "ingest: {} events acknowledged in {:.1} s ({:.0} events/s)",
        ingest.acked, ingest.seconds, ingest.events_per_s
    ));
    let loaded_at = Instant::now();
    // Memory right after the load: the providers idle for PASSIVATE_AFTER during it (a
    // checkpoint's pause can make them so) are parked already.
    let (rss_after, parked_after) = if local {
        (dep.rss_kib()?, dep.parked()?)
    } else {
        (0, 0)
    };
    // Checkpoints during the load, and how long they paused ingest in all.
    let (checkpoints, checkpoint_pause_s) = if local {
        dep.count_and_seconds(
            "depin_checkpoint_pause_seconds_count",
            "depin_checkpoint_pause_seconds_sum",
        )?
    } else {
        (0, 0.0)
    };
    if local {
        phase(&format!(
            "RSS of the node(s) {:.1} MiB before the load, {:.1} MiB right after it ({parked_after} of {providers} providers parked then)",
            rss_before as f64 / 1024.0,
            rss_after as f64 / 1024.0
        ));
    }

    // Local: two cycles that start after the load (the second surely saw every provider),
    // timed from the metrics. A deployment we did not start: until its analytics count the
    // fleet.
    let (c0, s0, g0) = if local {
        dep.cycle_metrics()?
    } else {
        (0, 0.0, 0.0)
    };
    let mut c1 = 0;
    if local {
        phase("waiting for two coordinator cycles after the load");
        let wait_started = Instant::now();
        let wait_limit = (interval * 3).max(Duration::from_secs(60)) + Duration::from_secs(60);
        loop {
            dep.check_alive()?;
            let (c, _, _) = dep.cycle_metrics()?;
            if c >= c0 + 2 {
                c1 = c;
                break;
            }
            if wait_started.elapsed() > wait_limit {
                bail!("no two coordinator cycles within {wait_limit:?} after the load");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        phase("waiting until the network analytics count the whole fleet");
        let s: SettleReport = run_client(&exe, &mut dep, &args.auth, Phase::Settle, &cargs)?;
        phase(&format!("settled after {:.1} s", s.seconds));
    }
    let mut rss_parked = None;
    if local {
        let idle = passivate_after(&args);
        if !idle.is_zero() {
            phase(&format!(
                "waiting until every provider is parked (idle for {})",
                humantime::format_duration(idle)
            ));
            let limit = idle * 2 + Duration::from_secs(60);
            let since = Instant::now();
            loop {
                dep.check_alive()?;
                let parked = dep.parked()?;
                if parked >= providers as u64 {
                    break;
                }
                if since.elapsed() > limit {
                    bail!("{parked} of {providers} providers parked after {limit:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let first = dep.rss_kib()?;
            let parked_at = loaded_at.elapsed();
            // Then the node idles a few seconds, as any node between bursts does: the
            // allocator returns freed pages after its purge delay (1 s), on a worker's next
            // idle moment (`return_freed_memory` in main.rs).
            std::thread::sleep(PARKED_SETTLE);
            dep.check_alive()?;
            let rss = dep.rss_kib()?;
            phase(&format!(
                "RSS with every provider parked: {:.1} MiB when the last one parked ({:.1} s after the load), {:.1} MiB {} later",
                first as f64 / 1024.0,
                parked_at.as_secs_f64(),
                rss as f64 / 1024.0,
                humantime::format_duration(PARKED_SETTLE)
            ));
            rss_parked = Some((first, rss));
        }
    }

    phase(&format!(
        "queries: {queries} timed calls each of recommend, rankings top-100, profile, 24 h forecast"
    ));
    let q: QueriesReport = run_client(&exe, &mut dep, &args.auth, Phase::Queries, &cargs)?;
    let (c2, s2, g2) = if local {
        dep.cycle_metrics()?
    } else {
        (0, 0.0, 0.0)
    };

    // A node joins: the shards placement gives it are handed off under the bench's eyes.
    let mut handoff = None;
    if dep.nodes.len() > 1 {
        let (h0, hs0) = dep.handoff_metrics()?;
        phase(&format!(
            "handoff: node-{} joins; waiting until its shards have moved",
            dep.nodes.len() + 1
        ));
        let t = Instant::now();
        dep.add_node(&exe, &work.path, &args, interval)?;
        dep.wait_settled(shards, Duration::from_secs(600))?;
        let took = t.elapsed();
        let (h1, hs1) = dep.handoff_metrics()?;
        let moved = h1.saturating_sub(h0);
        let report = HandoffReport {
            shards_moved: moved,
            providers_per_shard: providers as f64 / f64::from(shards.max(1)),
            mean_ms: if moved > 0 {
                (hs1 - hs0) / moved as f64 * 1e3
            } else {
                f64::NAN
            },
            join_to_settled_seconds: took.as_secs_f64(),
        };
        phase(&format!(
            "handoff: {moved} shards moved, {:.0} ms each on average; settled {:.1} s after the start",
            report.mean_ms, report.join_to_settled_seconds
        ));
        handoff = Some(report);
    }

    phase("verify: every provider's lifetime jobs against what the fleet sent");
    let v: VerifyReport = run_client(&exe, &mut dep, &args.auth, Phase::Verify, &cargs)?;
    let mut stop_time = None;
    if local {
        phase("stopping the node(s) (SIGTERM: handoff in a cluster, final checkpoint)");
        while let Some(mut node) = dep.nodes.pop() {
            let t = node.stop(Duration::from_secs(600))?;
            stop_time.get_or_insert((node.id.clone(), t));
        }
    }

    let mut failures: Vec<String> = ingest.failures.clone();
    failures.extend(q.failures.iter().cloned());
    if q.failure_count > q.failures.len() as u64 {
        failures.push(format!("… {} failed query checks in all", q.failure_count));
    }
    failures.extend(v.failures.iter().cloned());
    if v.failure_count > v.failures.len() as u64 {
        failures.push(format!("… {} failed verify checks in all", v.failure_count));
    }
    let cycles_after_load = c2.saturating_sub(c0);
    let per_cycle_ms = |total_s: f64| {
        if cycles_after_load > 0 {
            total_s / cycles_after_load as f64 * 1e3
        } else {
            f64::NAN
        }
    };
    let cycle_mean_ms = per_cycle_ms(s2 - s0);
    let gather_mean_ms = per_cycle_ms(g2 - g0);
    let cycles_during_queries = c2.saturating_sub(c1);
    let rss_delta = rss_after.saturating_sub(rss_before);
    let per_provider_kib = rss_delta as f64 / providers as f64;
    let per_provider = |rss: u64| rss.saturating_sub(rss_before) as f64 / providers as f64;
    let parked_per_provider_kib = rss_parked.map(|(_, settled)| per_provider(settled));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = cpu_model();

    let what = match &args.target {
        Some(t) => format!("the deployment at {t}"),
        None if args.nodes == 1 => "1 node".to_string(),
        None => format!("{} nodes, {shards} shards", args.nodes),
    };
    println!(
        "depin-analytics bench: {what}, {providers} providers × {} h, {durability}, {} ingest streams, batches of {}",
        args.hours, ingest.streams, args.batch
    );
    println!(
        "machine: {cores} cores, {cpu}; {}",
        if local {
            "nodes, client and bench on the same machine"
        } else {
            "the client's machine"
        }
    );
    println!(
        "ingest       {} events in {:.2} s = {:.0} events/s ({} batches; acked {} of {} sent; {} busy answers retried)",
        ingest.acked,
        ingest.seconds,
        ingest.events_per_s,
        ingest.batches,
        ingest.acked,
        ingest.sent,
        ingest.busy_retries
    );
    if local {
        println!(
            "checkpoints  {checkpoints} during the load, ingest paused {:.2} s in all while they captured states",
            checkpoint_pause_s
        );
        println!(
            "memory       RSS {:.1} → {:.1} MiB right after the load: {:.2} KiB per provider ({} h history; {parked_after} of {providers} parked then, the rest with their actors)",
            rss_before as f64 / 1024.0,
            rss_after as f64 / 1024.0,
            per_provider_kib,
            args.hours
        );
        if let (Some((first, r)), Some(per)) = (rss_parked, parked_per_provider_kib) {
            println!(
                "             RSS {:.1} MiB with every provider parked (idle {}), {} after the last one parked: {:.2} KiB per provider ({:.2} KiB when the last one parked)",
                r as f64 / 1024.0,
                humantime::format_duration(passivate_after(&args)),
                humantime::format_duration(PARKED_SETTLE),
                per,
                per_provider(first)
            );
        }
        println!(
            "coordinator  cycle {:.1} ms mean over {} cycles after the load, {:.1} ms of it gathering the shards' summaries (last {:.1} ms; {} during the timed queries)",
            cycle_mean_ms,
            cycles_after_load,
            gather_mean_ms,
            q.last_cycle_ms,
            cycles_during_queries
        );
    }
    if let Some(h) = &handoff {
        println!(
            "handoff      a node joined: {} shards of ~{:.0} providers moved, {:.1} ms mean per shard; {:.2} s from its start to a settled map",
            h.shards_moved, h.providers_per_shard, h.mean_ms, h.join_to_settled_seconds
        );
    }
    println!(
        "verify       {} profiles: {} of {} lifetime jobs found in {:.1} s",
        v.providers, v.jobs_found, v.jobs_expected, v.seconds
    );
    if let Some((id, t)) = &stop_time {
        println!(
            "shutdown     {:.1} s from SIGTERM to exit of {id} ({})",
            t.as_secs_f64(),
            if args.nodes > 1 {
                "handing its shards off, then the final checkpoint"
            } else {
                "final checkpoint"
            }
        );
    }
    println!(
        "{:<20} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "query (µs)", "calls", "mean", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, l) in [
        ("recommend", &q.recommend),
        ("rankings top-100", &q.rankings_top100),
        ("profile", &q.profile),
        ("forecast 24 h", &q.forecast_24h),
    ] {
        println!(
            "{:<20} {:>7} {:>9.0} {:>9} {:>9} {:>9} {:>9} {:>9}",
            name, l.count, l.mean_us, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
        );
    }
    println!(
        "recommendation jobs: {} from online providers' specs ({} GPU); checks: {}",
        q.jobs,
        q.gpu_jobs,
        if failures.is_empty() {
            "all passed".to_string()
        } else {
            format!("{} FAILED", failures.len())
        }
    );
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    if args.json {
        let round2 = |x: f64| x.is_finite().then(|| (x * 100.0).round() / 100.0);
        let json = serde_json::json!({
            "ok": failures.is_empty(),
            "failures": failures,
            "nodes": if local { Some(args.nodes) } else { None },
            "target": args.target,
            "shards": if local { Some(shards) } else { None },
            "providers": providers,
            "hours": args.hours,
            "durable": local.then_some(!args.unsafe_no_fsync),
            "cores": cores,
            "cpu": cpu,
            "ingest": ingest,
            "checkpoints_during_load": local.then_some(checkpoints),
            "checkpoint_pause_seconds": if local { round2(checkpoint_pause_s) } else { None },
            "rss_before_kib": local.then_some(rss_before),
            "rss_after_kib": local.then_some(rss_after),
            "memory_per_provider_kib": if local { round2(per_provider_kib) } else { None },
            "parked_after_load": local.then_some(parked_after),
            "rss_parked_kib": rss_parked.map(|(_, settled)| settled),
            "rss_last_parked_kib": rss_parked.map(|(first, _)| first),
            "parked_settle_seconds": rss_parked.map(|_| PARKED_SETTLE.as_secs_f64()),
            "memory_parked_per_provider_kib": parked_per_provider_kib.and_then(round2),
            "memory_last_parked_per_provider_kib": rss_parked.and_then(|(first, _)| round2(per_provider(first))),
            "coordinator_cycle_mean_ms": round2(cycle_mean_ms),
            "coordinator_gather_mean_ms": round2(gather_mean_ms),
            "coordinator_cycles_after_load": cycles_after_load,
            "coordinator_cycles_during_queries": cycles_during_queries,
            "queries": q,
            "handoff": handoff,
            "verify": v,
            "shutdown_seconds": stop_time.map(|(_, t)| t.as_secs_f64()),
            "total_seconds": started.elapsed().as_secs_f64(),
        });
        println!("{json}");
    }
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            eprintln!("bench: FAILED: {f}");
        }
        eprintln!("bench: {} check(s) failed", failures.len());
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GpuSpec;

    fn line(rank: u32, score: f64) -> pb::ProviderRanking {
        pb::ProviderRanking {
            rank,
            provider_id: format!("prov-{rank:06}"),
            score,
            ..Default::default()
        }
    }

    fn page(scores: &[f64]) -> pb::GetProviderRankingsResponse {
        pb::GetProviderRankingsResponse {
            rankings: scores
                .iter()
                .enumerate()
                .map(|(i, s)| line(i as u32 + 1, *s))
                .collect(),
            total: scores.len() as u64,
            ..Default::default()
        }
    }

    #[test]
    fn rankings_check_accepts_a_sorted_page_and_names_an_unsorted_one() {
        let cat = pb::RankingCategory::Overall;
        assert_eq!(
            check_rankings(&page(&[90.0, 80.0, 80.0, 10.0]), cat, 4),
            None
        );
        let bad = check_rankings(&page(&[90.0, 70.0, 80.0]), cat, 3).expect("unsorted");
        assert!(bad.contains("not sorted"), "{bad}");
        assert!(check_rankings(&page(&[90.0, f64::NAN]), cat, 2).is_some());
        // a short page or a wrong total is a wrong answer too
        assert!(check_rankings(&page(&[90.0]), cat, 2).is_some());
    }

    #[test]
    fn a_job_built_from_a_spec_fits_that_spec() {
        let spec = ProviderSpec {
            region: "eu-central".into(),
            cpu_cores: 7,
            memory_gb: 31.7,
            gpus: vec![GpuSpec {
                model: "A100".into(),
                count: 2,
                vram_gb: 79.6,
            }],
            storage_gb: 500.0,
            price_per_hour: 3.2,
        };
        let job = job_for(&spec);
        assert!(job.cpu_cores <= spec.cpu_cores && job.cpu_cores >= 1);
        assert!(job.memory_gb <= f64::from(spec.memory_gb as f32));
        assert_eq!(job.gpu_model, "A100");
        assert_eq!(job.gpu_count, 1);
        assert!(job.min_vram_gb <= f64::from(79.6f32));
        assert_eq!(job.regions, vec!["eu-central".to_string()]);
        assert!(job.max_budget > spec.price_per_hour * job.expected_duration_hours);
        let cpu_only = job_for(&ProviderSpec {
            gpus: Vec::new(),
            ..spec
        });
        assert!(cpu_only.gpu_model.is_empty() && cpu_only.gpu_count == 0);
    }
}
