//! Issue 4 acceptance: nothing acknowledged is ever lost.
//!
//! The real binary on one data directory is SIGKILLed at random moments while a simulated
//! fleet streams into it; after each restart the client resends what was not acknowledged
//! and compares, provider by provider, the events the node stores with the events it saw
//! acknowledged. Also: a second process on the same directory is refused, and a graceful
//! stop + restart answers exactly as before.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::NodeProc;
use depin_analytics::gateway::convert::event_to_proto;
use depin_analytics::model::{ProviderId, TelemetryEvent};
use depin_analytics::proto::v1 as pb;
use depin_analytics::proto::v1::ingest_service_client::IngestServiceClient;
use depin_analytics::sim::{Fleet, FleetConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::timeout;

const PROVIDERS: usize = 40;
/// Providers whose few hours go out first and who then get no event: a restarted node
/// restores every provider parked and these stay so, so every checkpoint after the first
/// kill captures them parked (their bytes shared at the pause, decoded after it) and the
/// log segments holding their events are pruned; from then on only those snapshots keep
/// them. (Checked: dropping parked captures fails the test within the first rounds.)
const EARLY_PROVIDERS: usize = 6;
const EARLY_HOURS: u32 = 2;
/// The node takes 70–100k events/s even in a debug build; 40 providers × 48 h (77k events at
/// 120 s heartbeats) would be acknowledged within the first five kill rounds. 15 days give
/// ~575k events, enough for every kill to land mid-stream even on a machine twice as fast.
const HOURS: u32 = 360;
const BATCH: usize = 500;
/// Batches the client keeps on the stream before it waits for the oldest ack.
const MAX_INFLIGHT: usize = 6;
const KILLS: usize = 22;
/// Before this kill round the node is stopped gracefully once (a checkpoint: snapshots and
/// a truncated log), so the later rounds recover from snapshots plus log, not the log alone.
const GRACEFUL_BEFORE_ROUND: usize = 11;
const SEED: u64 = 0x4d00_2b1e;
/// Coordinator cycle of the node, so rankings refresh within the test; a checkpoint every
/// 128 KiB of log (a round streams ~600 KB), so that kills land during and after checkpoints
/// that ran while ingest went on (a checkpoint captures the shards in groups, ingest
/// resuming between them); 16 shards, so that a checkpoint is quick enough to finish
/// within a round.
const NODE_ARGS: &[&str] = &[
    "--analytics-interval",
    "1s",
    "--checkpoint-kib",
    "128",
    "--shards",
    "16",
];
const RPC: Duration = Duration::from_secs(20);

/// One batch of the fleet, and the provider of each of its events (by index).
struct Batch {
    proto: pb::IngestBatch,
    providers: Vec<String>,
}

/// What the client knows. Batches are sent and acknowledged in order (one stream, acked in
/// order); the ones sent but not (yet) acknowledged wait in `unacked` to be resent.
struct Client<'f> {
    source: Box<dyn Iterator<Item = Vec<TelemetryEvent>> + 'f>,
    next_id: u64,
    /// Sent at least once, ack not received, oldest first.
    unacked: VecDeque<Batch>,
    /// Batches and events taken from the fleet so far.
    generated: (u64, u64),
    acked_batches: u64,
    /// Provider → events of acknowledged batches that the node did not reject.
    counts: BTreeMap<String, u64>,
    stats: Stats,
}

#[derive(Default, Debug)]
struct Stats {
    resent_batches: u64,
    /// Resent batches answered entirely with duplicates: durable before the kill, ack lost.
    resent_all_duplicates: u64,
    /// Resent batches answered entirely with accepted: not durable (or never applied).
    resent_all_accepted: u64,
    /// Resent batches answered partly one way, partly the other (killed mid-batch).
    resent_mixed: u64,
    unacked_at_kill: Vec<usize>,
}

impl<'f> Client<'f> {
    /// The `early` fleet's batches (its ids prefixed `early-`), then the main fleet's.
    fn new(early: &'f Fleet, fleet: &'f Fleet) -> Client<'f> {
        let early = early.batches_by_provider(BATCH).map(|mut events| {
            for e in &mut events {
                e.provider_id = ProviderId::new(format!("early-{}", e.provider_id));
                e.event_id = format!("early-{}", e.event_id);
            }
            events
        });
        Client {
            source: Box::new(early.chain(fleet.batches_by_provider(BATCH))),
            next_id: 1,
            unacked: VecDeque::new(),
            generated: (0, 0),
            acked_batches: 0,
            counts: BTreeMap::new(),
            stats: Stats::default(),
        }
    }

    /// The next batch of the fleet, if any is left.
    fn next_batch(&mut self) -> Option<Batch> {
        let events = self.source.next()?;
        let b = Batch {
            providers: events.iter().map(|e| e.provider_id.to_string()).collect(),
            proto: pb::IngestBatch {
                batch_id: self.next_id,
                events: events.iter().map(event_to_proto).collect(),
            },
        };
        self.next_id += 1;
        self.generated.0 += 1;
        self.generated.1 += events.len() as u64;
        Some(b)
    }

    fn events_acked(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Records the ack of the oldest unacknowledged batch.
    ///
    /// What is counted, and why the comparison with the node can be exact: every event of
    /// an acknowledged batch that the node did not reject, i.e. accepted + duplicates, once,
    /// when the batch's ack is received. An acknowledged event is durable whichever way it
    /// was answered: "accepted" means it was logged and fsynced before the ack, "duplicate"
    /// means the node already had it (it can only have come from an earlier send of this
    /// same batch whose ack was lost in a kill: event ids are unique across the fleet). A
    /// batch whose ack never arrived is not counted at all, whether or not it reached the
    /// log before the kill; after the restart it is resent (same ids) before any comparison,
    /// and counted when that ack arrives: the events that were durable come back as
    /// duplicates, the others are accepted now. So once every sent batch is acknowledged,
    /// each provider's count is exactly the number of its distinct events the node has
    /// stored, and `events_ingested` must equal it: less would be an acknowledged event
    /// lost, more an event stored twice (idempotence broken by the restart).
    fn record_ack(&mut self, b: &Batch, ack: &pb::IngestAck, resent: bool) {
        let n = b.providers.len() as u32;
        assert_eq!(ack.batch_id, b.proto.batch_id, "acks come in batch order");
        assert_eq!(
            ack.accepted + ack.duplicates + ack.rejected,
            n,
            "batch {}: accepted + duplicates + rejected is not the batch size",
            ack.batch_id
        );
        // The simulated fleet passes every check (its contract); a rejection here would be
        // a resent, already stored event refused instead of recognised as a duplicate.
        assert_eq!(
            ack.rejected, 0,
            "batch {} (resent: {resent}): rejections {:?}",
            ack.batch_id, ack.rejections
        );
        if !resent {
            assert_eq!(
                ack.duplicates, 0,
                "batch {} was sent for the first time but has duplicates",
                ack.batch_id
            );
        } else {
            self.stats.resent_batches += 1;
            if ack.duplicates == n {
                self.stats.resent_all_duplicates += 1;
            } else if ack.accepted == n {
                self.stats.resent_all_accepted += 1;
            } else {
                self.stats.resent_mixed += 1;
            }
        }
        let rejected: std::collections::HashSet<u32> =
            ack.rejections.iter().map(|r| r.index).collect();
        for (k, p) in b.providers.iter().enumerate() {
            if !rejected.contains(&(k as u32)) {
                *self.counts.entry(p.clone()).or_default() += 1;
            }
        }
        self.acked_batches += 1;
    }
}

/// Streams on one Ingest stream: first resends the batches sent earlier but never
/// acknowledged, then (unless `resend_only`) the rest of the fleet, with up to `MAX_INFLIGHT`
/// batches unacknowledged on the stream. Returns when everything sent is acknowledged, or
/// the error that ended the stream. The client stays consistent if this future is dropped
/// at any await: a batch leaves `unacked` only when its ack is counted.
/// New batches put on a stream so far, so a kill can be timed by progress rather than by the
/// clock (a fast machine would otherwise finish the fleet before the kills are done).
static NEW_BATCHES_SENT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn stream(c: &mut Client<'_>, addr: &str, resend_only: bool) -> Result<(), String> {
    let channel = depin_analytics::client::connect(addr)
        .await
        .map_err(|e| format!("connect: {e:#}"))?;
    let mut ingest = IngestServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::IngestBatch>(MAX_INFLIGHT);
    let mut acks = ingest
        .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("opening the stream: {s}"))?
        .into_inner();
    // The first `to_resend` of `unacked` were sent before; `on_stream` of it are sent now.
    let mut to_resend = c.unacked.len();
    let mut on_stream = 0;
    loop {
        while on_stream < MAX_INFLIGHT {
            if on_stream == c.unacked.len() {
                if resend_only {
                    break;
                }
                let Some(b) = c.next_batch() else { break };
                c.unacked.push_back(b);
                NEW_BATCHES_SENT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            if tx.send(c.unacked[on_stream].proto.clone()).await.is_err() {
                break;
            }
            on_stream += 1;
        }
        if on_stream == 0 {
            return Ok(());
        }
        let ack = acks
            .message()
            .await
            .map_err(|s| format!("stream: {s}"))?
            .ok_or("the node closed the stream")?;
        let b = c.unacked.pop_front().expect("an ack for a batch sent");
        on_stream -= 1;
        c.record_ack(&b, &ack, to_resend > 0);
        to_resend = to_resend.saturating_sub(1);
    }
}

async fn start_node(dir: &Path) -> NodeProc {
    let dir = dir.to_path_buf();
    timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || NodeProc::start_in(&dir, NODE_ARGS, &[], None)),
    )
    .await
    .expect("node start timed out")
    .expect("node start panicked")
}

/// The log segments the snapshots in `dir` are stamped with (one per checkpoint group of
/// the checkpoints that wrote them).
fn snapshot_stamps(dir: &Path) -> std::collections::BTreeSet<u64> {
    use depin_analytics::storage::snapshot;
    let snaps = dir.join("snapshots");
    let Ok(files) = snapshot::list(&snaps) else {
        return Default::default();
    };
    files
        .iter()
        .map(|p| snapshot::read(p).expect("a snapshot reads").wal_segment)
        .collect()
}

/// Waits (bounded) for a signalled node to exit.
async fn wait_exit(node: &mut NodeProc, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = node.child.try_wait().expect("wait") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "node did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Events the node stores for `provider` (0 if it does not know it).
async fn stored(node: &NodeProc, provider: &str) -> u64 {
    let mut rep = node.reputation().await;
    let req = pb::GetProviderReputationProfileRequest {
        provider_id: provider.to_string(),
    };
    match timeout(RPC, rep.get_provider_reputation_profile(req))
        .await
        .expect("profile call timed out")
    {
        Ok(r) => r.into_inner().events_ingested,
        Err(s) if s.code() == tonic::Code::NotFound => 0,
        Err(s) => panic!("profile of {provider}: {s}"),
    }
}

async fn assert_counts_equal(node: &NodeProc, c: &Client<'_>, providers: &[String], when: &str) {
    assert!(c.unacked.is_empty(), "{when}: batches still unacknowledged");
    for p in providers {
        let want = c.counts.get(p).copied().unwrap_or(0);
        let got = stored(node, p).await;
        assert_eq!(
            got, want,
            "{when}: provider {p}: the node stores {got} events, the client saw {want} acknowledged"
        );
    }
}

/// The answers compared across a graceful restart: every provider's profile and the top 5
/// of the overall ranking (without `computed_at`, the wall-clock time of the cycle).
#[derive(Debug, PartialEq)]
struct Answers {
    profiles: Vec<pb::ProviderPerformanceProfile>,
    top5: pb::GetProviderRankingsResponse,
}

async fn answers(node: &NodeProc, providers: &[String]) -> Answers {
    let mut rep = node.reputation().await;
    let mut profiles = Vec::new();
    for p in providers {
        let req = pb::GetProviderReputationProfileRequest {
            provider_id: p.clone(),
        };
        let r = timeout(RPC, rep.get_provider_reputation_profile(req))
            .await
            .expect("profile call timed out")
            .unwrap_or_else(|s| panic!("profile of {p}: {s}"));
        profiles.push(r.into_inner());
    }
    let req = pb::GetProviderRankingsRequest {
        page: Some(pb::PageRequest {
            page_size: 5,
            page_token: String::new(),
        }),
        ..Default::default()
    };
    let mut top5 = timeout(RPC, rep.get_provider_rankings(req))
        .await
        .expect("rankings call timed out")
        .expect("rankings")
        .into_inner();
    top5.computed_at = None;
    Answers { profiles, top5 }
}

/// Answers once they no longer change from one coordinator cycle to the next (after a
/// start, the first cycle marks every ranking entry new; the next one settles).
async fn settled_answers(node: &NodeProc, providers: &[String]) -> Answers {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = answers(node, providers).await;
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = answers(node, providers).await;
        if now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "answers did not settle within 30 s"
        );
        last = now;
    }
}

/// Runs `serve` on `dir` expecting it to refuse; returns its exit status and stderr.
async fn refused_start(dir: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(common::binary())
        .args([
            "serve",
            "--grpc-port",
            "127.0.0.1:0",
            "--metrics-port",
            "off",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("LOG_LEVEL", "WARN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning a second serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second node on a data directory in use did not exit within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("reading stderr");
    (status, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir: PathBuf = tmp.path().join("data");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let fleet = Fleet::new(FleetConfig {
        providers: PROVIDERS,
        hours: HOURS,
        seed: SEED,
        heartbeat_interval_seconds: 120,
        // Entirely in the past of this machine's clock, or the node rejects it as future.
        start: depin_analytics::sim::DEFAULT_START.min(now - i64::from(HOURS + 2) * 3600),
        ..FleetConfig::default()
    });
    let early = Fleet::new(FleetConfig {
        providers: EARLY_PROVIDERS,
        hours: EARLY_HOURS,
        seed: SEED + 1,
        ..fleet.config().clone()
    });
    let mut providers: Vec<String> = fleet.providers().iter().map(|p| p.id.to_string()).collect();
    assert_eq!(providers.len(), PROVIDERS);
    providers.extend(early.providers().iter().map(|p| format!("early-{}", p.id)));
    let mut c = Client::new(&early, &fleet);
    let mut rng = SmallRng::seed_from_u64(SEED);

    let mut node = start_node(&dir).await;
    let mut kills = 0;
    // Distinct log segments the shards' snapshots start replay at, after each kill.
    let mut stamps_at_kill = Vec::new();
    for round in 1..=KILLS {
        // The restarted node has recovered; resend what was never acknowledged, then every
        // provider's stored count must equal the client's.
        let resend = c.unacked.len();
        timeout(Duration::from_secs(60), stream(&mut c, &node.addr, true))
            .await
            .unwrap_or_else(|_| panic!("round {round}: resending timed out"))
            .unwrap_or_else(|e| panic!("round {round}: resending {resend} batches: {e}"));
        assert_counts_equal(
            &node,
            &c,
            &providers,
            &format!("round {round} (after kill {kills}, {resend} batches resent)"),
        )
        .await;

        if round == GRACEFUL_BEFORE_ROUND {
            let status = node.terminate(Duration::from_secs(30));
            assert!(status.success(), "graceful stop exited with {status}");
            node = start_node(&dir).await;
            assert_counts_equal(
                &node,
                &c,
                &providers,
                &format!("round {round}, after a graceful restart"),
            )
            .await;
        }

        // Stream on and SIGKILL at a random moment: after a random number of new batches
        // (so the fleet lasts on any machine) plus a random delay, with batches in flight;
        // acks already on their way are still read (and counted) until the stream breaks.
        let after = rng.random_range(2..=40usize);
        let delay = Duration::from_millis(rng.random_range(0..=30));
        eprintln!(
            "round {round}: {} batches acknowledged, {resend} resent, kill after {after} new batches + {delay:?} ({:.1} s)",
            c.acked_batches,
            started.elapsed().as_secs_f64()
        );
        let addr = node.addr.clone();
        {
            let target = NEW_BATCHES_SENT.load(std::sync::atomic::Ordering::SeqCst) + after;
            let fut = stream(&mut c, &addr, false);
            tokio::pin!(fut);
            let trigger = async {
                while NEW_BATCHES_SENT.load(std::sync::atomic::Ordering::SeqCst) < target {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tokio::time::sleep(delay).await;
            };
            let finished = tokio::select! {
                r = &mut fut => Some(r),
                _ = trigger => None,
            };
            if let Some(r) = finished {
                r.unwrap_or_else(|e| panic!("round {round}: stream failed with no kill: {e}"));
                panic!(
                    "round {round}: the whole fleet was acknowledged before kill {}: make the \
                     fleet larger",
                    kills + 1
                );
            }
            node.signal("KILL");
            kills += 1;
            let _ = timeout(Duration::from_secs(20), &mut fut)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the stream did not end after SIGKILL"));
        }
        c.stats.unacked_at_kill.push(c.unacked.len());
        wait_exit(&mut node, Duration::from_secs(20)).await;
        stamps_at_kill.push(snapshot_stamps(&dir));
        node = start_node(&dir).await;
    }

    // Kill rounds in which a checkpoint ran while the fleet streamed: the next recovery
    // started from snapshots written while ingest went on between the groups' captures.
    let checkpointed_rounds = stamps_at_kill
        .windows(2)
        .enumerate()
        .filter(|(i, w)| i + 2 != GRACEFUL_BEFORE_ROUND && w[0] != w[1])
        .count();
    eprintln!(
        "kill rounds with a checkpoint under ingest: {checkpointed_rounds} of {}",
        stamps_at_kill.len() - 1
    );
    assert!(
        checkpointed_rounds >= 3,
        "only {checkpointed_rounds} kill rounds saw a checkpoint under ingest: the test no \
         longer exercises recovery from checkpoints taken during ingest"
    );

    // Last recovery: resend, compare, stream the rest, compare once more.
    let resend = c.unacked.len();
    timeout(Duration::from_secs(60), stream(&mut c, &node.addr, true))
        .await
        .expect("final resend timed out")
        .expect("final resend");
    assert_counts_equal(
        &node,
        &c,
        &providers,
        &format!("after kill {kills} ({resend} batches resent)"),
    )
    .await;
    let under_kills = (c.acked_batches, c.events_acked());
    eprintln!("kills done at {:.1} s", started.elapsed().as_secs_f64());
    timeout(Duration::from_secs(120), stream(&mut c, &node.addr, false))
        .await
        .expect("streaming the rest timed out")
        .expect("streaming the rest");
    assert!(c.source.next().is_none(), "the whole fleet was streamed");
    assert_eq!(c.acked_batches, c.generated.0);
    assert_eq!(c.events_acked(), c.generated.1);
    assert_counts_equal(&node, &c, &providers, "after the whole fleet").await;

    eprintln!(
        "whole fleet acknowledged at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let s = &c.stats;
    println!(
        "durability: {kills} SIGKILLs; {} batches ({} events) streamed under kills, {} ({} \
         events) in all; unacknowledged at each kill {:?}; {} batches resent: {} all \
         duplicates (durable, ack lost), {} all accepted, {} mixed; {:.1} s",
        under_kills.0,
        under_kills.1,
        c.generated.0,
        c.generated.1,
        s.unacked_at_kill,
        s.resent_batches,
        s.resent_all_duplicates,
        s.resent_all_accepted,
        s.resent_mixed,
        started.elapsed().as_secs_f64()
    );
    // A second process on the same directory is refused.
    let (status, stderr) = refused_start(&dir).await;
    assert!(
        !status.success(),
        "a second node on {} started",
        dir.display()
    );
    assert!(
        stderr.contains("in use"),
        "the refusal does not say the directory is in use: {stderr}"
    );

    // A graceful stop and restart answers exactly as before.
    let before = settled_answers(&node, &providers).await;
    assert_eq!(before.top5.rankings.len(), 5, "{:?}", before.top5);
    eprintln!(
        "answers settled at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let status = node.terminate(Duration::from_secs(30));
    assert!(status.success(), "graceful stop exited with {status}");
    let node = start_node(&dir).await;
    eprintln!("restarted at {:.1} s", started.elapsed().as_secs_f64());
    assert_counts_equal(&node, &c, &providers, "after the final graceful restart").await;
    let after = settled_answers(&node, &providers).await;
    // Differences, tier first (hysteresis against the previous cycle's tier is the one piece
    // of query state that is not provider state).
    let mut tier_only = Vec::new();
    let mut other = Vec::new();
    for (b, a) in before.profiles.iter().zip(&after.profiles) {
        if b == a {
            continue;
        }
        let (mut b2, mut a2) = (b.clone(), a.clone());
        (b2.tier, a2.tier) = (0, 0);
        if b2 == a2 {
            tier_only.push(format!(
                "{}: {:?} -> {:?}",
                b.provider_id,
                b.tier(),
                a.tier()
            ));
        } else {
            other.push(format!("before {b:?}\n after {a:?}"));
        }
    }
    eprintln!(
        "elapsed {:.1} s; tier cut-offs before {:?} after {:?}",
        started.elapsed().as_secs_f64(),
        before.top5.tier_cutoffs,
        after.top5.tier_cutoffs
    );
    let top5_same = before.top5 == after.top5;
    assert!(
        other.is_empty(),
        "profiles differ after a graceful restart:\n{}",
        other.join("\n")
    );
    assert!(
        tier_only.is_empty() && top5_same,
        "after a graceful restart the tier of {} of {} providers differs (all else equal): {}; \
         top 5 of the rankings {}:\n before {:?}\n after {:?}",
        tier_only.len(),
        providers.len(),
        tier_only.join(", "),
        if top5_same { "identical" } else { "differ" },
        before.top5.rankings,
        after.top5.rankings
    );
    drop(node);

    assert!(kills >= 20);
    assert!(
        s.unacked_at_kill.iter().filter(|&&n| n > 1).count() >= KILLS / 2,
        "too few kills had several batches in flight: {:?}",
        s.unacked_at_kill
    );
}
