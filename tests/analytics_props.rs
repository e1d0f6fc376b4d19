//! Property tests of the scoring, ranking and configuration invariants, through the
//! crate's public API.

use depin_analytics::analytics::ranking::{Scored, TierCutoffs, merge_top_k, top_k};
use depin_analytics::analytics::score::{
    NetworkPrior, ProfileContext, ScoreDistribution, confidence, performance_profile,
    performance_score, reliability,
};
use depin_analytics::analytics::state::{ProviderState, StateParams};
use depin_analytics::config::{AnalyticsConfig, PerformanceWeights, RankingWeights};
use depin_analytics::model::{
    EventPayload, Heartbeat, HeartbeatStatus, JobOutcome, JobStatus, ProviderId,
    ResponseTimeSample, TelemetryEvent, UtilizationSample, hour_of,
};
use proptest::prelude::*;

const T0: i64 = 1_700_000_000 - 1_700_000_000 % 3600;

/// Plausible values plus the extremes a buggy collector might send.
fn wild(normal: std::ops::Range<f64>) -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => normal,
        1 => Just(0.0),
        1 => Just(-1.0),
        1 => Just(1e12),
        1 => Just(f64::MAX),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NAN),
    ]
}

fn payload() -> impl Strategy<Value = EventPayload> {
    let status = prop_oneof![
        Just(JobStatus::Completed),
        Just(JobStatus::Failed),
        Just(JobStatus::TimedOut),
        Just(JobStatus::Cancelled),
    ];
    prop_oneof![
        4 => (status, wild(0.0..86_400.0), any::<bool>(), 0u32..4, wild(0.0..100.0)).prop_map(
            |(status, duration_seconds, sla_met, error_code, cost)| {
                EventPayload::JobOutcome(JobOutcome { status, duration_seconds, sla_met, error_code, cost })
            }
        ),
        3 => any::<bool>().prop_map(|up| EventPayload::Heartbeat(Heartbeat {
            status: if up { HeartbeatStatus::Online } else { HeartbeatStatus::Offline },
        })),
        2 => (wild(0.0..5_000.0), any::<bool>()).prop_map(|(response_time_ms, is_error)| {
            EventPayload::ResponseTime(ResponseTimeSample { response_time_ms, is_error })
        }),
        2 => (wild(0.0..1.0), wild(0.0..1.0), wild(0.0..1.0)).prop_map(|(cpu, gpu, memory)| {
            EventPayload::Utilization(UtilizationSample { cpu, gpu, memory })
        }),
    ]
}

/// Events at offsets up to 400 hours after T0 (so some leave the window), in any order.
fn events() -> impl Strategy<Value = Vec<(i64, EventPayload)>> {
    prop::collection::vec((0i64..400 * 3600, payload()), 0..150)
}

fn build(evs: &[(i64, EventPayload)]) -> ProviderState {
    let p = StateParams::default();
    let mut s = ProviderState::new(ProviderId::new("p"), &p);
    let mut reference = i64::MIN;
    for (i, (off, payload)) in evs.iter().enumerate() {
        let ts = T0 + off;
        let ev = TelemetryEvent {
            event_id: format!("e{i}"),
            provider_id: ProviderId::new("p"),
            timestamp: ts,
            payload: payload.clone(),
        };
        // rejections (too old, too far ahead) are part of the input space
        if s.apply(&ev, reference, &p).is_ok() {
            reference = reference.max(ts);
        }
    }
    s
}

fn in_range(x: f64) -> bool {
    (0.0..=100.0).contains(&x)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_score_is_in_range_and_never_nan(evs in events(), later in 0i64..1000 * 3600, half_life_h in 1u64..500) {
        let s = build(&evs);
        let now = s.last_seen().unwrap_or(T0) + later;
        let cfg = AnalyticsConfig {
            decay_half_life: std::time::Duration::from_secs(half_life_h * 3600),
            ..Default::default()
        };
        let prior = NetworkPrior::default();
        let perf = performance_score(&s, &prior, &cfg, now);
        let c = &perf.components;
        for (name, x) in [
            ("completion", c.completion_rate),
            ("efficiency", c.efficiency),
            ("uptime", c.uptime),
            ("response_time", c.response_time),
            ("sla", c.sla_compliance),
            ("error_rate", c.error_rate),
            ("composite", perf.composite),
        ] {
            prop_assert!(in_range(x), "{name} = {x}");
        }
        let rel = reliability(&s, &prior, now);
        prop_assert!(in_range(rel.score), "reliability = {}", rel.score);
        let conf = confidence(&s, &cfg, now, Some(0.5));
        prop_assert!((0.0..=1.0).contains(&conf.overall), "confidence = {}", conf.overall);

        let dist = ScoreDistribution::from_scores(&mut vec![40.0, 60.0, 80.0, 95.0]);
        let cutoffs = TierCutoffs::from_distribution(&dist, &cfg.ranking_tiers);
        let ctx = ProfileContext { prior: &prior, distribution: &dist, cutoffs: &cutoffs, previous_tier: None, trend: None };
        let prof = performance_profile(&s, &cfg, &ctx, now);
        prop_assert!(in_range(prof.percentile));
        prop_assert!(in_range(prof.reliability_score) && in_range(prof.composite_score));
        for r in [prof.completion_rate, prof.failure_rate, prof.timeout_rate, prof.sla_compliance_rate, prof.error_rate, prof.uptime_ratio] {
            prop_assert!((0.0..=1.0).contains(&r), "rate {r}");
        }
    }

    #[test]
    fn another_success_never_lowers_the_completion_component(evs in events(), pick in any::<prop::sample::Index>(), later in 0i64..200 * 3600) {
        let s = build(&evs);
        let Some(oldest) = s.window.oldest_hour() else { return Ok(()) };
        let newest = s.window.newest_hour().unwrap();
        // an hour already in the window, so the extra event cannot slide it
        let hour = oldest + pick.index((newest - oldest + 1) as usize) as i64;
        let now = s.last_seen().unwrap() + later;
        let cfg = AnalyticsConfig::default();
        let prior = NetworkPrior::default();
        let before = performance_score(&s, &prior, &cfg, now).components.completion_rate;
        let mut s2 = s.clone();
        let ev = TelemetryEvent {
            event_id: "extra".into(),
            provider_id: ProviderId::new("p"),
            timestamp: hour * 3600 + 1,
            payload: EventPayload::JobOutcome(JobOutcome {
                status: JobStatus::Completed, duration_seconds: 10.0, sla_met: true, error_code: 0, cost: 1.0,
            }),
        };
        prop_assume!(s2.apply(&ev, s.last_seen().unwrap(), &StateParams::default()).is_ok());
        prop_assert_eq!(hour_of(ev.timestamp), hour);
        let after = performance_score(&s2, &prior, &cfg, now).components.completion_rate;
        prop_assert!(after >= before - 1e-12, "{before} -> {after}");
    }

    #[test]
    fn negative_weights_are_rejected_naming_the_key(i in 0usize..6, w in -10.0f64..-1e-9) {
        let mut cfg = AnalyticsConfig::default();
        let p = &mut cfg.performance_weights;
        let (name, slot) = [
            ("completion_rate", &mut p.completion_rate),
            ("efficiency", &mut p.efficiency),
            ("uptime", &mut p.uptime),
            ("response_time", &mut p.response_time),
            ("sla_compliance", &mut p.sla_compliance),
            ("error_rate", &mut p.error_rate),
        ]
        .into_iter()
        .nth(i)
        .unwrap();
        *slot = w;
        let e = cfg.validate().unwrap_err().to_string();
        prop_assert!(e.starts_with(&format!("performance_weights.{name}: must be non-negative")), "{}", e);
    }

    #[test]
    fn weights_must_sum_to_one(raw in prop::array::uniform5(0.0f64..10.0), scale in 0.0f64..3.0) {
        let total: f64 = raw.iter().sum();
        prop_assume!(total > 1e-3);
        let w = raw.map(|x| x / total);
        let weights = |k: f64| RankingWeights {
            performance: w[0] * k, reliability: w[1] * k, cost: w[2] * k, availability: w[3] * k, speed: w[4] * k,
        };
        let ok = AnalyticsConfig { ranking_weights: weights(1.0), ..Default::default() };
        prop_assert!(ok.validate().is_ok());
        prop_assume!((scale - 1.0).abs() > 1e-5);
        let bad = AnalyticsConfig { ranking_weights: weights(scale), ..Default::default() };
        let e = bad.validate().unwrap_err().to_string();
        prop_assert!(e.starts_with("ranking_weights: must sum to 1"), "{}", e);
        let nan = AnalyticsConfig {
            performance_weights: PerformanceWeights { uptime: f64::NAN, ..Default::default() },
            ..Default::default()
        };
        prop_assert!(nan.validate().is_err());
    }

    #[test]
    fn top_k_is_the_head_of_a_full_sort(scores in prop::collection::vec(0u8..20, 0..300), k in 0usize..50) {
        // few distinct scores, so ties (broken by id) are common
        let items: Vec<Scored<u32>> = scores.iter().enumerate()
            .map(|(i, s)| Scored { score: f64::from(*s), id: i as u32 * 7919 % 1000 + i as u32 * 1000 })
            .collect();
        let mut sorted = items.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        sorted.truncate(k);
        prop_assert_eq!(top_k(items, k), sorted);
    }

    #[test]
    fn merged_shard_top_k_is_the_global_top_k(
        scores in prop::collection::vec((0u8..20, 0usize..8), 0..300),
        k in 0usize..40,
    ) {
        let items: Vec<(Scored<u32>, usize)> = scores.iter().enumerate()
            .map(|(i, (s, shard))| (Scored { score: f64::from(*s), id: i as u32 }, *shard))
            .collect();
        let shards: Vec<Vec<Scored<u32>>> = (0..8)
            .map(|sh| top_k(items.iter().filter(|(_, s)| *s == sh).map(|(x, _)| x.clone()), k))
            .collect();
        let global = top_k(items.into_iter().map(|(x, _)| x), k);
        prop_assert_eq!(merge_top_k(&shards, k), global);
    }

    #[test]
    fn percentile_is_monotone(mut sample in prop::collection::vec(0.0f64..100.0, 1..200), a in 0.0f64..100.0, b in 0.0f64..100.0) {
        let d = ScoreDistribution::from_scores(&mut sample);
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(d.percentile_of(lo) <= d.percentile_of(hi) + 1e-9);
        prop_assert!(in_range(d.percentile_of(a)));
    }
}
