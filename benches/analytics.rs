//! Micro-benchmarks of the analytics (issue 2, issue 7): one event update, one profile, one
//! 24 h forecast, what a shard computes per provider for a coordinator cycle (live and
//! parked), ranking and a coordinator cycle over 100k providers, one recommendation over
//! 100k candidates, and the merge of per-shard top-k lists.
//!
//! Fixture (built once, a few seconds): a simulated fleet of 1,000 providers
//! (`sim::Fleet`, seed 42; `benches/common`) runs a full week (168 h) through `ProviderState::apply`, each
//! closed hour scored as the provider actor does. The 100k summaries are those 1,000 real
//! summaries cloned under distinct ids with a small seeded jitter on the scores, price and
//! response time (so the rankings do not degenerate into ties), shuffled and split into 8
//! shards as the coordinator receives them.
//!
//! Run: `cargo bench --bench analytics` (a release build). No timing is asserted here; the
//! few `assert!`s check that what is measured is the intended work.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

mod common;

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use depin_analytics::actors::provider::Parked;
use depin_analytics::analytics::forecast::{self, ForecastParams};
use depin_analytics::analytics::network::ProviderSummary;
use depin_analytics::analytics::ranking::{
    RankingCategory, RankingQuery, Scored, merge_top_k, rank_providers, shard_top_k,
};
use depin_analytics::analytics::recommend::{
    CandidateIndex, JobRequirements, finish, recommend, shortlist,
};
use depin_analytics::analytics::score::{self, ProfileContext};
use depin_analytics::analytics::state::{ProviderState, StateParams};
use depin_analytics::analytics::view::{self, AnalyticsSnapshot, RegionHourly, ShardSummaries};
use depin_analytics::config::AnalyticsConfig;
use depin_analytics::model::{
    EventPayload, HOUR, Heartbeat, HeartbeatStatus, JobOutcome, JobStatus, ProviderId,
    ResponseTimeSample, TelemetryEvent, UnixSeconds,
};

const REAL_PROVIDERS: usize = 1_000;
const HOURS: u32 = 168;
const MANY: usize = 100_000;
const SHARDS: usize = 8;
const MERGE_LISTS: usize = 256;
const TOP: usize = 100;
/// Hours of utilization a shard sends for the regional series (as the shard actor does).
const REGION_HOURS: usize = 72;

struct Fixture {
    cfg: AnalyticsConfig,
    params: StateParams,
    /// Newest event time of the simulated week.
    now: UnixSeconds,
    /// A provider with a full 168 h window (jobs, heartbeats, response times, scores).
    full: ProviderState,
    /// The week's summaries of the simulated providers.
    real: Vec<ProviderSummary>,
    /// The coordinator's input for 100k providers, 8 shards.
    shards: Vec<ShardSummaries>,
    /// A snapshot after one cycle over `shards` (the "previous" cycle of the next).
    snapshot: AnalyticsSnapshot,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build_fixture)
}

fn build_fixture() -> Fixture {
    let cfg = AnalyticsConfig::default();
    let common::SimulatedStates {
        params,
        states,
        events,
        now,
    } = common::simulate(&cfg, REAL_PROVIDERS, HOURS);
    let empty = AnalyticsSnapshot::default();

    // The provider the per-provider benches use: a full window, the first such one.
    let full = states
        .iter()
        .find(|s| s.window.len() == HOURS as usize && s.lifetime.jobs() > 0)
        .expect("a provider with a full week")
        .clone();
    report_memory(&states, &full, events);

    // Real summaries, then 100k by cloning with distinct ids and a seeded jitter.
    let real: Vec<ProviderSummary> = states
        .iter()
        .map(|s| view::summary(s, &empty, &cfg, now))
        .collect();
    let mut shards = coordinator_input(&real, MANY, SHARDS);
    let mut regions = RegionHourly::default();
    for s in &states {
        regions.add(s, REGION_HOURS);
    }
    shards[0].regions = regions;
    let snapshot = view::cycle(shards.clone(), &empty, &cfg, now, 0);
    assert_eq!(snapshot.providers(), MANY);
    Fixture {
        real,
        cfg,
        params,
        now,
        full,
        shards,
        snapshot,
    }
}

/// `n` summaries for a coordinator cycle, sorted and keyed in `shards` lists as the shards
/// send them: the `real` ones cloned under distinct ids with a seeded jitter on the scores,
/// price and response time (so the rankings do not degenerate into ties), shuffled.
fn coordinator_input(real: &[ProviderSummary], n: usize, shards: usize) -> Vec<ShardSummaries> {
    let mut rng = SmallRng::seed_from_u64(7);
    let mut many: Vec<ProviderSummary> = (0..n)
        .map(|k| {
            let mut s = real[k % real.len()].clone();
            if k >= real.len() {
                s.id = ProviderId::new(format!("prov-{k:07}"));
                let j = |rng: &mut SmallRng, x: f32, d: f32| {
                    (x + rng.random_range(-d..d)).clamp(0.0, 100.0)
                };
                s.performance_score = j(&mut rng, s.performance_score, 1.5);
                s.reliability_score = j(&mut rng, s.reliability_score, 1.5);
                s.price_per_hour *= rng.random_range(0.9..1.1);
                s.response_time_ms *= rng.random_range(0.9..1.1);
            }
            s
        })
        .collect();
    many.shuffle(&mut rng);
    many.chunks(n.div_ceil(shards))
        .map(|c| {
            // as a shard sends them: sorted by id and keyed
            let mut shard = ShardSummaries {
                providers: c.to_vec(),
                ..Default::default()
            };
            shard.sort();
            shard
        })
        .collect()
}

fn report_memory(states: &[ProviderState], full: &ProviderState, events: u64) {
    let bincode_len = |s: &ProviderState| {
        bincode::serde::encode_to_vec(s, bincode::config::standard())
            .expect("a state serialises")
            .len()
    };
    let full_week: Vec<&ProviderState> = states
        .iter()
        .filter(|s| s.window.len() == HOURS as usize)
        .collect();
    let n = full_week.len().max(1);
    let approx: Vec<usize> = full_week.iter().map(|s| s.approx_bytes()).collect();
    let encoded: Vec<usize> = full_week.iter().map(|s| bincode_len(s)).collect();
    println!("fixture: {REAL_PROVIDERS} simulated providers x {HOURS} h, {events} events applied");
    println!(
        "memory of one provider with a full {HOURS} h window ({}, {} events, {} ids remembered): \
         approx_bytes {} B, bincode {} B",
        full.id,
        full.lifetime.events_ingested,
        full.recent_ids.len(),
        full.approx_bytes(),
        bincode_len(full),
    );
    println!(
        "over the {} full-week providers: approx_bytes mean {} B max {} B; bincode mean {} B max {} B",
        full_week.len(),
        approx.iter().sum::<usize>() / n,
        approx.iter().max().copied().unwrap_or(0),
        encoded.iter().sum::<usize>() / n,
        encoded.iter().max().copied().unwrap_or(0),
    );
    println!(
        "size_of: ProviderState {} B, HourBucket {} B, ProviderSummary {} B",
        std::mem::size_of::<ProviderState>(),
        std::mem::size_of::<depin_analytics::analytics::state::HourBucket>(),
        std::mem::size_of::<ProviderSummary>(),
    );
}

/// Apply events of one kind to a full-window state, one per iteration. Events come from a
/// pool of 1,024 with distinct ids (more than the 256 ids a state remembers, so a reused
/// id has been forgotten) and a timestamp advancing `step` seconds an event, so the window
/// slides an hour every `3600 / step` events as in steady state.
fn bench_apply(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    step: i64,
    payload: impl Fn(usize) -> EventPayload,
) {
    let f = fixture();
    let mut pool: Vec<TelemetryEvent> = (0..1024)
        .map(|i| TelemetryEvent {
            event_id: format!("{}-bench-{name}-{i}", f.full.id),
            provider_id: f.full.id.clone(),
            timestamp: 0,
            payload: payload(i),
        })
        .collect();
    group.bench_function(name, |b| {
        let mut state = f.full.clone();
        let mut t = state.last_seen().expect("a full state has events");
        let (mut i, mut ok, mut n) = (0usize, 0u64, 0u64);
        b.iter(|| {
            let ev = &mut pool[i & 1023];
            i += 1;
            t += step;
            ev.timestamp = t;
            let r = state.apply(black_box(ev), t, &f.params);
            ok += u64::from(r.is_ok());
            n += 1;
        });
        assert_eq!(ok, n, "every benchmarked event must be applied");
        black_box(&state);
    });
}

fn state_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("state");
    configure(&mut g, 3);
    bench_apply(&mut g, "apply_event/job_outcome", 10, |i| {
        let status = match i % 20 {
            0 | 10 => JobStatus::Failed,
            5 => JobStatus::TimedOut,
            15 => JobStatus::Cancelled,
            _ => JobStatus::Completed,
        };
        EventPayload::JobOutcome(JobOutcome {
            status,
            duration_seconds: 600.0,
            sla_met: status == JobStatus::Completed,
            error_code: if status == JobStatus::Failed {
                (i % 3 + 1) as u32
            } else {
                0
            },
            cost: 1.25,
        })
    });
    bench_apply(&mut g, "apply_event/heartbeat", 60, |_| {
        EventPayload::Heartbeat(Heartbeat {
            status: HeartbeatStatus::Online,
        })
    });
    bench_apply(&mut g, "apply_event/response_time", 10, |i| {
        EventPayload::ResponseTime(ResponseTimeSample {
            response_time_ms: 80.0 + (i % 17) as f64 * 7.0,
            is_error: i % 50 == 0,
        })
    });
    g.finish();
}

fn configure(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    seconds: u64,
) {
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(seconds));
}

fn profile_benches(c: &mut Criterion) {
    let f = fixture();
    let s = &f.snapshot;
    let mut g = c.benchmark_group("profile");
    configure(&mut g, 3);
    let trend = view::trend_signal(&f.full);
    g.bench_function("one", |b| {
        let ctx = ProfileContext {
            prior: &s.prior,
            distribution: &s.distribution,
            cutoffs: &s.cutoffs,
            previous_tier: s.tier_of(&f.full.id),
            trend: Some(trend),
        };
        b.iter(|| score::performance_profile(black_box(&f.full), &f.cfg, &ctx, f.now));
    });
    // What the gateway calls: the profile plus the trend analysis of the score.
    g.bench_function("one_with_trend", |b| {
        b.iter(|| view::profile(black_box(&f.full), s, &f.cfg, f.now));
    });
    g.finish();
}

fn forecast_benches(c: &mut Criterion) {
    let f = fixture();
    let mut g = c.benchmark_group("forecast");
    configure(&mut g, 3);
    let params = ForecastParams {
        horizon: 24,
        ..ForecastParams::from_config(&f.cfg.forecasting)
    };
    let series = |metric: view::Metric| {
        let (y, last_hour) =
            forecast::window_metric(&f.full.window, |b| metric.of(b)).expect("a full window");
        assert_eq!(y.len(), HOURS as usize, "{metric:?} history");
        (y, last_hour * HOUR)
    };
    let (score, score_ts) = series(view::Metric::PerformanceScore);
    let score_params = ForecastParams {
        clamp: Some((0.0, 100.0)),
        ..params.clone()
    };
    g.bench_function("24h", |b| {
        b.iter(|| {
            forecast::forecast_series(black_box(&score), score_ts, HOUR, &score_params)
                .expect("a forecast")
        });
    });
    let (cpu, cpu_ts) = series(view::Metric::CpuUtilization);
    let cpu_params = ForecastParams {
        clamp: Some((0.0, 1.0)),
        ..params
    };
    g.bench_function("24h_cpu_utilization", |b| {
        b.iter(|| {
            forecast::forecast_series(black_box(&cpu), cpu_ts, HOUR, &cpu_params)
                .expect("a forecast")
        });
    });
    g.finish();
}

fn ranking_benches(c: &mut Criterion) {
    let f = fixture();
    let s = &f.snapshot;
    let mut g = c.benchmark_group("ranking");
    configure(&mut g, 3);
    let query = RankingQuery {
        category: RankingCategory::Overall,
        limit: TOP,
        ..RankingQuery::default()
    };
    let previous: std::collections::HashMap<_, _> = s
        .summaries
        .iter()
        .filter_map(|p| {
            s.ranks
                .rank(RankingCategory::Overall, &p.id)
                .map(|r| (p.id.clone(), r))
        })
        .collect();
    let previous = &previous;
    g.bench_function("top100_of_100k", |b| {
        b.iter(|| {
            rank_providers(
                black_box(&s.summaries),
                &query,
                &f.cfg.ranking_weights,
                &s.ranking_context,
                previous,
            )
        });
    });
    // What the gateway answers: the filter count for the total plus the same top-k.
    g.bench_function("page_top100_of_100k", |b| {
        b.iter(|| view::rankings_page(black_box(s), &query, 0, &f.cfg));
    });
    g.finish();

    let mut g = c.benchmark_group("ranking");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(12))
        .sampling_mode(SamplingMode::Flat);
    g.bench_function("full_cycle_100k", |b| {
        b.iter_batched(
            || f.shards.clone(),
            |shards| view::cycle(shards, s, &f.cfg, f.now, 0),
            BatchSize::LargeInput,
        );
    });
    g.finish();

    // A million providers in 256 shards, after a cycle over the same million (so every
    // provider has a previous tier to continue from, as in a running node).
    let million = coordinator_input(&f.real, 1_000_000, 256);
    let previous = view::cycle(million.clone(), s, &f.cfg, f.now, 0);
    let mut g = c.benchmark_group("ranking");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20))
        .sampling_mode(SamplingMode::Flat);
    g.bench_function("full_cycle_1m", |b| {
        b.iter_batched(
            || million.clone(),
            |shards| view::cycle(shards, &previous, &f.cfg, f.now, 0),
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn recommend_benches(c: &mut Criterion) {
    let f = fixture();
    let s = &f.snapshot;
    let mut g = c.benchmark_group("recommend");
    configure(&mut g, 3);
    // A typical GPU job: one model, a VRAM floor, two regions, a budget and an SLA.
    let gpu_job = JobRequirements {
        cpu_cores: 8,
        memory_gb: 32.0,
        gpu_model: Some("A100".into()),
        gpu_count: 1,
        min_vram_gb: 40.0,
        regions: vec!["us-east".into(), "eu-central".into()],
        expected_duration_hours: 4.0,
        max_budget: Some(20.0),
        min_uptime: Some(0.95),
        max_response_time_ms: Some(500.0),
        min_tier: None,
        max_results: 5,
    };
    // A broad CPU job that most of the network can take (many compatible candidates).
    let cpu_job = JobRequirements {
        cpu_cores: 8,
        memory_gb: 16.0,
        expected_duration_hours: 2.0,
        max_results: 10,
        ..JobRequirements::default()
    };
    for (name, req) in [("100k", &gpu_job), ("100k_broad_cpu_job", &cpu_job)] {
        let r = recommend(&s.summaries, req, &s.ranking_context, &f.cfg);
        assert!(
            !r.recommendations.is_empty(),
            "{name}: the job must find candidates"
        );
        println!(
            "recommend/{name}: {} considered, {} compatible",
            r.considered, r.compatible
        );
        g.bench_function(name, |b| {
            b.iter(|| recommend(black_box(&s.summaries), req, &s.ranking_context, &f.cfg));
        });
        // The node's path: the candidates spread over 256 shard indexes built once (as each
        // coordinator cycle builds them), one pass over all of them, text for the final few.
        let mut parts = vec![Vec::new(); 256];
        for (i, c) in s.summaries.iter().enumerate() {
            parts[i % 256].push(c.clone());
        }
        let indexes: Vec<CandidateIndex> = parts.into_iter().map(CandidateIndex::new).collect();
        g.bench_function(format!("{name}_node_path_256_shards"), |b| {
            b.iter(|| {
                let segments: Vec<_> = indexes.iter().map(CandidateIndex::segment).collect();
                let list = shortlist(black_box(&segments), req, &s.ranking_context, &f.cfg);
                finish(list, req, &s.ranking_context, &f.cfg)
            });
        });
    }
    g.finish();
}

fn merge_benches(c: &mut Criterion) {
    let f = fixture();
    let s = &f.snapshot;
    let per_list = MANY.div_ceil(MERGE_LISTS);
    let lists: Vec<Vec<Scored<ProviderId>>> = s
        .summaries
        .chunks(per_list)
        .map(|c| {
            shard_top_k(
                c,
                RankingCategory::Overall,
                &f.cfg.ranking_weights,
                &s.ranking_context,
                TOP,
            )
        })
        .collect();
    assert_eq!(lists.len(), MERGE_LISTS);
    // The merge must give the global top 100 the full ranking gives.
    let merged: Vec<ProviderId> = merge_top_k(&lists, TOP).into_iter().map(|x| x.id).collect();
    let query = RankingQuery {
        category: RankingCategory::Overall,
        limit: TOP,
        ..RankingQuery::default()
    };
    let direct: Vec<ProviderId> = rank_providers(
        &s.summaries,
        &query,
        &f.cfg.ranking_weights,
        &s.ranking_context,
        &Default::default(),
    )
    .into_iter()
    .map(|r| r.provider_id)
    .collect();
    assert_eq!(merged, direct);
    let mut g = c.benchmark_group("merge");
    configure(&mut g, 3);
    g.bench_function("top_k", |b| {
        b.iter(|| merge_top_k(black_box(&lists), TOP));
    });
    g.finish();
}

/// What a shard does per provider for a coordinator cycle: the summary plus its regional
/// utilization, over a live state and over a parked (encoded) one.
fn summary_benches(c: &mut Criterion) {
    let f = fixture();
    let s = &f.snapshot;
    let mut g = c.benchmark_group("summary");
    configure(&mut g, 3);
    let one = |st: &ProviderState| {
        (
            view::summary(st, s, &f.cfg, f.now),
            view::utilization_hours(st, REGION_HOURS),
        )
    };
    g.bench_function("one_168h", |b| b.iter(|| one(black_box(&f.full))));
    let parked = Parked::new(f.full.clone(), Vec::new(), &f.cfg);
    g.bench_function("one_168h_parked_decoded", |b| {
        b.iter(|| one(&black_box(&parked).state_for_reading()))
    });
    // what a cycle does for a parked provider: its summary composed from the basis it keeps
    // (the shard's regional sums of parked providers are kept between cycles)
    g.bench_function("one_168h_parked", |b| {
        b.iter(|| view::parked_summary(black_box(&parked).basis(), s, &f.cfg, f.now))
    });
    g.finish();
}

criterion_group!(
    benches,
    state_benches,
    profile_benches,
    summary_benches,
    forecast_benches,
    ranking_benches,
    recommend_benches,
    merge_benches
);
criterion_main!(benches);
