//! Acceptance tests of issue 3 ("A real node"): the real binary on a loopback port, spoken to
//! over real gRPC with the generated tonic clients, as a scheduler and a collector would.
//!
//! Every test starts its own node (16 shards, a coordinator cycle every second) so they can
//! run in parallel; every wait is bounded.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    NodeProc, binary, ingest_clean, ingest_one, scenario_events, wait_for_snapshot, wall_seconds,
};
use depin_analytics::proto::v1 as pb;
use depin_analytics::sim::Scenario;
use pb::telemetry_event::Payload;
use tonic::Code;

/// Providers in the known-truth scenario.
const SCENARIO_PROVIDERS: u64 = 4 + Scenario::ORDINARY as u64;
/// Longest we wait for a coordinator snapshot to include what was ingested.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(20);

async fn profile(
    rep: &mut pb::reputation_service_client::ReputationServiceClient<tonic::transport::Channel>,
    id: &str,
) -> pb::ProviderPerformanceProfile {
    rep.get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
        provider_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("profile of {id}: {e}"))
    .into_inner()
}

/// The first page (100, every scenario provider) of the overall rankings.
async fn overall_rankings(
    rep: &mut pb::reputation_service_client::ReputationServiceClient<tonic::transport::Channel>,
) -> pb::GetProviderRankingsResponse {
    rep.get_provider_rankings(pb::GetProviderRankingsRequest {
        category: pb::RankingCategory::Overall as i32,
        page: Some(pb::PageRequest {
            page_size: 100,
            page_token: String::new(),
        }),
        ..Default::default()
    })
    .await
    .expect("GetProviderRankings")
    .into_inner()
}

/// The node's cluster status, over a new connection.
async fn cluster_status(node: &NodeProc) -> pb::ClusterStatus {
    node.cluster()
        .await
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

fn tier(t: i32) -> pb::Tier {
    pb::Tier::try_from(t).unwrap_or(pb::Tier::Unspecified)
}

fn ordinary_ids() -> Vec<String> {
    (1..=Scenario::ORDINARY)
        .map(|i| format!("ordinary-{i:02}"))
        .collect()
}

/// Starts a light node and ingests the whole known-truth scenario, then waits for a
/// coordinator snapshot that counts all of its providers.
async fn scenario_node(env: &[(&str, &str)]) -> (NodeProc, pb::NetworkAnalytics) {
    let node = NodeProc::start_light(env);
    let events = scenario_events();
    ingest_clean(&node, &events).await;
    let network = wait_for_snapshot(&node, SCENARIO_PROVIDERS, SNAPSHOT_TIMEOUT).await;
    (node, network)
}

// ------------------------------------------------------------------- 1. known truth

#[tokio::test]
async fn known_truth_scenario_gives_a_scheduler_what_it_relies_on() {
    // PARALLEL_SCAN_MIN=0: every recommendation below scans its shards in two halves on two
    // threads and merges them (a node with 16k candidates or more does so by default)
    let (node, network) =
        scenario_node(&[("FORECAST_HORIZON", "12h"), ("PARALLEL_SCAN_MIN", "0")]).await;
    assert_eq!(network.total_providers, SCENARIO_PROVIDERS);
    let mut rep = node.reputation().await;

    // ---- rankings: `best` first, in the top tier present.
    let rankings = overall_rankings(&mut rep).await;
    assert_eq!(rankings.total, SCENARIO_PROVIDERS);
    assert_eq!(
        rankings.rankings.len() as u64,
        SCENARIO_PROVIDERS,
        "one page of 100 holds every provider"
    );
    let order: Vec<&str> = rankings
        .rankings
        .iter()
        .map(|r| r.provider_id.as_str())
        .collect();
    for (i, r) in rankings.rankings.iter().enumerate() {
        assert_eq!(
            r.rank as usize,
            i + 1,
            "ranks are 1-based and in order: {order:?}"
        );
    }
    let rank_of: HashMap<&str, u32> = rankings
        .rankings
        .iter()
        .map(|r| (r.provider_id.as_str(), r.rank))
        .collect();
    assert_eq!(
        order[0],
        Scenario::BEST,
        "best must rank first overall: {order:?}"
    );

    let cutoffs = rankings.tier_cutoffs.expect("tier_cutoffs");
    assert!(
        cutoffs.platinum >= cutoffs.gold
            && cutoffs.gold >= cutoffs.silver
            && cutoffs.silver >= cutoffs.bronze,
        "cut-offs must descend: {cutoffs:?}"
    );
    let best = profile(&mut rep, Scenario::BEST).await;
    let best_rank = &rankings.rankings[0];
    let top_present = rankings
        .rankings
        .iter()
        .map(|r| tier(r.tier))
        .max()
        .expect("non-empty");
    assert_eq!(
        tier(best_rank.tier),
        top_present,
        "best sits in the top tier present: {order:?}"
    );
    assert_eq!(
        tier(best.tier),
        tier(best_rank.tier),
        "profile and ranking agree on best's tier"
    );
    // Tiers are assigned from the performance score against the published cut-offs (with
    // hysteresis that can only keep a higher tier): a score reaching the platinum cut-off
    // must be platinum; otherwise the platinum tier is out of reach and best must be gold,
    // which needs its score to reach the gold cut-off.
    if best.performance_score >= cutoffs.platinum {
        assert_eq!(
            tier(best.tier),
            pb::Tier::Platinum,
            "score {} ≥ platinum cut-off {cutoffs:?}",
            best.performance_score
        );
    } else {
        assert!(
            best.performance_score >= cutoffs.gold,
            "best's score {} must reach at least the gold cut-off: {cutoffs:?}",
            best.performance_score
        );
        assert_eq!(
            tier(best.tier),
            pb::Tier::Gold,
            "score {} between gold and platinum cut-offs {cutoffs:?}",
            best.performance_score
        );
    }

    // ---- three-jobs: a perfect record on three jobs must not outrank proven providers.
    // Asserted: it ranks below `best` and below each of the six steady-good ordinary
    // providers (ordinary-01, -03, … -11: a week of ~good work each); with its confidence
    // shrunk towards the network prior it also must not sit in the top tier.
    let three = rank_of[Scenario::THREE_JOBS];
    assert!(
        three > rank_of[Scenario::BEST],
        "three-jobs outranks best: {order:?}"
    );
    for id in ordinary_ids().iter().step_by(2) {
        assert!(
            three > rank_of[id.as_str()],
            "three-jobs (rank {three}) outranks proven {id} (rank {}): {order:?}",
            rank_of[id.as_str()]
        );
    }
    let three_rank = &rankings.rankings[three as usize - 1];
    assert!(
        tier(three_rank.tier) < top_present,
        "three-jobs must not share the top tier: {three_rank:?}"
    );
    let three_profile = profile(&mut rep, Scenario::THREE_JOBS).await;
    assert_eq!(three_profile.jobs_lifetime, 3);
    assert!(
        three_profile.confidence < best.confidence,
        "3 jobs give less confidence than a week: {} vs {}",
        three_profile.confidence,
        best.confidence
    );

    // ---- degrading: declining trend, with a declining_trend risk factor.
    let trend = rep
        .get_provider_trend_analysis(pb::GetProviderTrendAnalysisRequest {
            provider_id: Scenario::DEGRADING.into(),
            metric: "performance_score".into(),
        })
        .await
        .expect("trend of degrading")
        .into_inner();
    assert_eq!(trend.provider_id, Scenario::DEGRADING);
    assert_eq!(
        trend.direction, "declining",
        "degrading's score trend: {} (slope/day {})",
        trend.direction, trend.slope_per_day
    );
    assert!(trend.slope_per_day < 0.0);
    let degrading = profile(&mut rep, Scenario::DEGRADING).await;
    assert_eq!(degrading.trend_direction, "declining");
    let kinds: Vec<&str> = degrading
        .risk_factors
        .iter()
        .map(|r| r.kind.as_str())
        .collect();
    assert!(
        kinds.contains(&"declining_trend"),
        "degrading's risk factors: {kinds:?}"
    );
    assert!(rank_of[Scenario::DEGRADING] > rank_of[Scenario::BEST]);

    // ---- recommendation: GPU model, count, VRAM, region and budget honoured, with reasons.
    let mut specs: BTreeMap<String, pb::ProviderSpec> = BTreeMap::new();
    for r in &rankings.rankings {
        let p = profile(&mut rep, &r.provider_id).await;
        specs.insert(
            r.provider_id.clone(),
            p.spec
                .unwrap_or_else(|| panic!("{} has no spec", r.provider_id)),
        );
    }
    let hours = 4.0;
    let regions = ["us-east".to_string(), "us-west".to_string()];
    // Just above what `best` (85 % of list) charges for the job: its list-priced twins
    // (degrading, ordinary-01) are over budget, so the budget must actually filter.
    let budget = specs[Scenario::BEST].price_per_hour * hours * 1.01;
    let fits_hardware = |s: &pb::ProviderSpec| {
        regions.contains(&s.region)
            && s.gpus
                .iter()
                .any(|g| g.model.eq_ignore_ascii_case("A100") && g.count >= 2 && g.vram_gb >= 80.0)
    };
    let fits = |s: &pb::ProviderSpec| fits_hardware(s) && s.price_per_hour * hours <= budget + 1e-9;
    let hardware_ok: Vec<&String> = specs
        .iter()
        .filter(|(_, s)| fits_hardware(s))
        .map(|(id, _)| id)
        .collect();
    let all_ok: Vec<&String> = specs
        .iter()
        .filter(|(_, s)| fits(s))
        .map(|(id, _)| id)
        .collect();
    assert!(
        all_ok.len() < hardware_ok.len(),
        "the budget must exclude someone: {hardware_ok:?} vs {all_ok:?}"
    );
    let recs = rep
        .get_provider_recommendations(pb::GetProviderRecommendationsRequest {
            requirements: Some(pb::JobRequirements {
                gpu_model: "A100".into(),
                gpu_count: 2,
                min_vram_gb: 80.0,
                regions: regions.to_vec(),
                expected_duration_hours: hours,
                max_budget: budget,
                ..Default::default()
            }),
            max_results: 10,
            allow_relaxed: false,
        })
        .await
        .expect("GetProviderRecommendations")
        .into_inner();
    assert!(
        !recs.recommendations.is_empty(),
        "best fits this job: {recs:?}"
    );
    let recommended: Vec<&str> = recs
        .recommendations
        .iter()
        .map(|r| r.provider_id.as_str())
        .collect();
    assert!(
        recommended.contains(&Scenario::BEST),
        "best fits and must be recommended: {recommended:?} (fitting: {all_ok:?})"
    );
    for r in &recs.recommendations {
        let spec = &specs[&r.provider_id];
        assert!(
            fits(spec),
            "{} recommended but its spec does not fit: {spec:?}",
            r.provider_id
        );
        assert!(
            !r.reasons.is_empty() && r.reasons.iter().all(|x| !x.is_empty()),
            "{} without reasons",
            r.provider_id
        );
        assert!(
            r.estimated_cost <= budget + 1e-9,
            "{} costs {} > budget {budget}",
            r.provider_id,
            r.estimated_cost
        );
        assert!(
            r.estimated_cost > 0.0,
            "{}: a paid job has a cost",
            r.provider_id
        );
        assert!(!r.relaxed, "no relaxed suggestions were asked for");
        assert_eq!(r.region, spec.region);
    }
    assert!(
        recs.compatible as usize <= all_ok.len(),
        "compatible {} > fitting {all_ok:?}",
        recs.compatible
    );

    let impossible = rep
        .get_provider_recommendations(pb::GetProviderRecommendationsRequest {
            requirements: Some(pb::JobRequirements {
                gpu_model: "H100".into(),
                gpu_count: 64,
                expected_duration_hours: 1.0,
                ..Default::default()
            }),
            max_results: 5,
            allow_relaxed: false,
        })
        .await
        .expect("impossible recommendation")
        .into_inner();
    assert!(
        impossible.recommendations.is_empty(),
        "nothing offers 64 H100s: {:?}",
        impossible.recommendations
    );
    assert_eq!(impossible.compatible, 0);
    assert!(
        !impossible.eliminations.is_empty(),
        "eliminations must say why"
    );
    assert!(impossible.eliminations.iter().any(|e| e.eliminated > 0));
    assert!(
        !impossible.explanation.is_empty(),
        "an empty answer explains itself"
    );
    assert!(
        impossible
            .eliminations
            .iter()
            .any(|e| !e.constraint.is_empty() && impossible.explanation.contains(&e.constraint)),
        "the explanation must name a constraint: {:?} / {:?}",
        impossible.explanation,
        impossible.eliminations
    );
    assert!(
        impossible.explanation.contains("gpu"),
        "64 H100s fail on GPUs: {}",
        impossible.explanation
    );

    // ---- forecast: the configured horizon (FORECAST_HORIZON=12h), intervals around values.
    for (asked, expected) in [(0u32, 12usize), (6, 6)] {
        let f = rep
            .get_provider_forecasts(pb::GetProviderForecastsRequest {
                provider_id: Scenario::BEST.into(),
                metric: String::new(),
                horizon_hours: asked,
            })
            .await
            .expect("GetProviderForecasts")
            .into_inner();
        assert_eq!(f.provider_id, Scenario::BEST);
        assert_eq!(
            f.points.len(),
            expected,
            "horizon_hours {asked}: {} points",
            f.points.len()
        );
        let mut last = i64::MIN;
        for p in &f.points {
            assert!(
                p.value.is_finite() && p.lower.is_finite() && p.upper.is_finite(),
                "{p:?}"
            );
            assert!(
                p.lower <= p.value && p.value <= p.upper,
                "interval must hold the value: {p:?}"
            );
            let t = p.time.as_ref().expect("point time").seconds;
            assert!(t > last, "forecast times increase");
            last = t;
        }
    }

    // ---- utilization patterns: answers (contents being finished elsewhere).
    let pat = rep
        .get_provider_utilization_pattern(pb::GetProviderUtilizationPatternRequest {
            provider_id: Scenario::BEST.into(),
        })
        .await
        .expect("GetProviderUtilizationPattern")
        .into_inner();
    assert_eq!(pat.provider_id, Scenario::BEST);

    // ---- half-offline: uptime ≈ documented value, MTTR one hour. (Last, so that every
    // assertion above is checked even while this one fails.)
    let half = profile(&mut rep, Scenario::HALF_OFFLINE).await;
    assert!(
        (half.mttr_seconds - Scenario::HALF_OFFLINE_MTTR_SECONDS).abs() <= 1.0,
        "half-offline MTTR {} s vs documented {} s",
        half.mttr_seconds,
        Scenario::HALF_OFFLINE_MTTR_SECONDS
    );
    assert!(
        (half.uptime_ratio - Scenario::HALF_OFFLINE_UPTIME).abs() <= 0.01,
        "half-offline uptime {} vs documented {}",
        half.uptime_ratio,
        Scenario::HALF_OFFLINE_UPTIME
    );
    assert!(
        (best.uptime_ratio - 1.0).abs() < 1e-9,
        "best is never down: {}",
        best.uptime_ratio
    );
}

// ------------------------------------------------------------------- alerts

#[tokio::test]
async fn degrading_provider_raises_an_alert_on_watch_alerts() {
    let node = NodeProc::start_light(&[]);
    let mut rep = node.reputation().await;
    // Subscribe before ingesting: alerts are live, not replayed.
    let mut alerts = tokio::time::timeout(
        Duration::from_secs(10),
        rep.watch_alerts(pb::WatchAlertsRequest {
            provider_ids: vec![Scenario::DEGRADING.into()],
            ..Default::default()
        }),
    )
    .await
    .expect("WatchAlerts did not open within 10 s")
    .expect("WatchAlerts")
    .into_inner();
    let collector = tokio::spawn(async move {
        let wanted = [
            "performance_degradation",
            "anomaly_episode",
            "trend_reversal",
        ];
        let mut seen = Vec::new();
        loop {
            match alerts.message().await {
                Ok(Some(a)) => {
                    assert_eq!(
                        a.provider_id,
                        Scenario::DEGRADING,
                        "the provider filter must hold: {a:?}"
                    );
                    if wanted.contains(&a.kind.as_str()) {
                        return (Some(a), seen);
                    }
                    seen.push(a.kind);
                }
                Ok(None) => return (None, seen),
                Err(e) => panic!("WatchAlerts failed: {e}"),
            }
        }
    });
    ingest_clean(&node, &scenario_events()).await;
    // After the ingest, the alert must be out within a coordinator cycle or two.
    let (alert, seen) = tokio::time::timeout(Duration::from_secs(30), collector)
        .await
        .expect("no degradation / anomaly / trend_reversal alert for degrading within 30 s of the ingest")
        .expect("collector task");
    let alert = alert.unwrap_or_else(|| panic!("alert stream ended; kinds seen: {seen:?}"));
    assert!(
        !alert.key.is_empty() && !alert.message.is_empty(),
        "{alert:?}"
    );
    assert_eq!(alert.region, "us-east");
    assert!(alert.at.is_some());
}

// ------------------------------------------------------------------- 2. idempotency

#[tokio::test]
async fn a_resent_batch_changes_nothing() {
    let node = NodeProc::start_light(&[]);
    // The scenario's first 1000 events: hour 0 of every provider present then.
    let batch: Vec<pb::TelemetryEvent> = scenario_events().into_iter().take(1000).collect();
    let best_in_batch = batch
        .iter()
        .filter(|e| e.provider_id == Scenario::BEST)
        .count() as u64;
    assert!(best_in_batch > 0, "the batch holds events of best");

    let first = ingest_one(&node, &batch).await;
    assert_eq!(
        (first.accepted, first.duplicates, first.rejected),
        (1000, 0, 0),
        "{:?}",
        first.rejections.first()
    );
    let mut rep = node.reputation().await;
    let before = profile(&mut rep, Scenario::BEST).await;
    assert_eq!(
        before.events_ingested, best_in_batch,
        "events_ingested counts the stored events"
    );
    assert_eq!(cluster_status(&node).await.events_ingested, 1000);

    let again = ingest_one(&node, &batch).await;
    assert_eq!(again.accepted, 0, "a resent batch accepts nothing");
    assert_eq!(again.duplicates, 1000, "every resent event is a duplicate");
    assert_eq!(again.rejected, 0, "a duplicate is not a rejection");

    let after = profile(&mut rep, Scenario::BEST).await;
    assert_eq!(after.events_ingested, before.events_ingested);
    assert_eq!(after.jobs_lifetime, before.jobs_lifetime);
    assert_eq!(cluster_status(&node).await.events_ingested, 1000);
}

/// Live actors and providers on a node, from its cluster status.
async fn live_actors(node: &NodeProc) -> (u64, u64) {
    let s = cluster_status(node).await;
    (s.live_provider_actors, s.provider_count)
}

/// The scheduler's view of a node: the overall rankings (without the cycle's time), every
/// scenario provider's profile and a recommendation.
async fn answers(node: &NodeProc) -> Answers {
    let mut rep = node.reputation().await;
    let rankings = overall_rankings(&mut rep).await.rankings;
    let mut ids = vec![
        Scenario::BEST.to_string(),
        Scenario::DEGRADING.to_string(),
        Scenario::THREE_JOBS.to_string(),
        Scenario::HALF_OFFLINE.to_string(),
    ];
    ids.extend(ordinary_ids());
    let mut profiles = Vec::new();
    for id in &ids {
        profiles.push(profile(&mut rep, id).await);
    }
    let recs = rep
        .get_provider_recommendations(pb::GetProviderRecommendationsRequest {
            requirements: Some(pb::JobRequirements {
                expected_duration_hours: 2.0,
                ..Default::default()
            }),
            max_results: 10,
            allow_relaxed: false,
        })
        .await
        .expect("GetProviderRecommendations")
        .into_inner();
    (rankings, profiles, recs)
}

/// Passivation is invisible to a scheduler. A node ingests the scenario and stops
/// (SIGTERM: final checkpoint); two nodes restart from copies of its data, one that never
/// parks and one that parks (its restored providers start parked). Same data, same
/// checkpointed analytics, no ingest while their cycles run: they give the same answers —
/// the parking one from the summaries of cycles and from profiles read from parked states
/// without waking them — and an event then wakes the provider it is for. (Two nodes fed at
/// once would not compare exactly: an hour's recorded score uses the network prior of the
/// cycle that ran when the hour closed.)
#[tokio::test]
async fn parked_providers_answer_exactly_as_live_ones() {
    let events = scenario_events();
    let mut first = NodeProc::start_light(&[("PASSIVATE_AFTER", "0s")]);
    ingest_clean(&first, &events).await;
    settle(&first).await;
    let dir = first.data_dir.clone();
    let tmp = first.take_dir();
    assert!(first.terminate(Duration::from_secs(30)).success());
    let copy = tempfile::tempdir().expect("temp dir");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", dir.display()))
        .arg(copy.path())
        .status()
        .expect("cp");
    assert!(copied.success(), "copying the data directory");

    let restart = |dir: &std::path::Path, passivate: &str, tmp| {
        NodeProc::start_in(
            dir,
            &["--shards", "16"],
            &[("ANALYTICS_INTERVAL", "1s"), ("PASSIVATE_AFTER", passivate)],
            tmp,
        )
    };
    let copy_dir = copy.path().to_path_buf();
    let live = restart(&copy_dir, "0s", Some(copy));
    let parking = restart(&dir, "2s", tmp);
    assert_eq!(
        live_actors(&parking).await,
        (0, SCENARIO_PROVIDERS),
        "restored providers start parked"
    );
    settle(&live).await;
    settle(&parking).await;
    assert_eq!(
        live_actors(&live).await,
        (SCENARIO_PROVIDERS, SCENARIO_PROVIDERS),
        "PASSIVATE_AFTER=0s never parks"
    );
    assert_eq!(
        live_actors(&parking).await.0,
        0,
        "a coordinator cycle reads parked providers without waking them"
    );
    let expected = answers(&live).await;
    let got = answers(&parking).await;
    same_answers(&got, &expected, "parked");
    assert_eq!(
        live_actors(&parking).await.0,
        0,
        "reads answer from parked states and leave them parked"
    );

    // A new event for a parked provider: a job for best, an hour after the scenario's end.
    let last = events
        .iter()
        .map(|e| e.timestamp.as_ref().unwrap().seconds)
        .max()
        .unwrap();
    let more = [event(
        "after-parking",
        Scenario::BEST,
        Some(last + 3600),
        Some(Payload::JobOutcome(pb::JobOutcome {
            status: pb::JobStatus::Completed as i32,
            duration_seconds: 600.0,
            cost: 1.5,
            ..Default::default()
        })),
    )];
    ingest_clean(&parking, &more).await;
    assert_eq!(
        live_actors(&parking).await.0,
        1,
        "the event woke the provider it is for"
    );
    let mut rep = parking.reputation().await;
    assert_eq!(
        profile(&mut rep, Scenario::BEST).await.jobs_lifetime,
        expected.1[0].jobs_lifetime + 1
    );
}

type Answers = (
    Vec<pb::ProviderRanking>,
    Vec<pb::ProviderPerformanceProfile>,
    pb::GetProviderRecommendationsResponse,
);

/// Two coordinator cycles that started after the last event: the second one's network prior
/// comes from the complete data on any node, whatever cycles ran during its ingest.
async fn settle(node: &NodeProc) {
    wait_for_snapshot(node, SCENARIO_PROVIDERS, SNAPSHOT_TIMEOUT).await;
    wait_for_snapshot(node, SCENARIO_PROVIDERS, SNAPSHOT_TIMEOUT).await;
}

/// Two nodes' answers are the same, field for field.
fn same_answers(got: &Answers, expected: &Answers, when: &str) {
    assert_eq!(got.0, expected.0, "rankings, {when}");
    for (g, e) in got.1.iter().zip(&expected.1) {
        assert_eq!(g, e, "profile of {}, {when}", e.provider_id);
    }
    assert_eq!(got.1.len(), expected.1.len());
    assert_eq!(
        got.2.recommendations, expected.2.recommendations,
        "recommendations, {when}"
    );
}

// ------------------------------------------------------------------- 3. bad input

fn event(
    id: &str,
    provider: &str,
    seconds: Option<i64>,
    payload: Option<Payload>,
) -> pb::TelemetryEvent {
    pb::TelemetryEvent {
        event_id: id.into(),
        provider_id: provider.into(),
        timestamp: seconds.map(|s| prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        }),
        payload,
    }
}

fn util(cpu: f64) -> Option<Payload> {
    Some(Payload::Utilization(pb::UtilizationSample {
        cpu,
        gpu: 0.5,
        memory: 0.5,
    }))
}

#[tokio::test]
async fn bad_events_are_rejected_with_their_field_named() {
    let node = NodeProc::start_light(&[]);
    let now = wall_seconds() - 60;
    let batch = vec![
        event("ok-0", "good-a", Some(now), util(0.4)),
        event("bad-1", "bad-cpu", Some(now), util(1.5)),
        event(
            "bad-2",
            "bad-nan",
            Some(now),
            Some(Payload::ResponseTime(pb::ResponseTimeSample {
                response_time_ms: f64::NAN,
                is_error: false,
            })),
        ),
        event("bad-3", "", Some(now), util(0.4)),
        event("bad-4", "has space", Some(now), util(0.4)),
        event(
            "ok-5",
            "good-b",
            Some(now),
            Some(Payload::Heartbeat(pb::Heartbeat {
                status: pb::HeartbeatStatus::Online as i32,
            })),
        ),
        event("bad-6", "bad-no-timestamp", None, util(0.4)),
        event("bad-7", "bad-no-payload", Some(now), None),
        event(
            "bad-8",
            "bad-status",
            Some(now),
            Some(Payload::JobOutcome(pb::JobOutcome {
                status: pb::JobStatus::Unspecified as i32,
                duration_seconds: 60.0,
                sla_met: true,
                error_code: 0,
                cost: 1.0,
            })),
        ),
        event("bad-9", "bad-future", Some(now + 86_400), util(0.4)),
        event(
            "ok-10",
            "good-a",
            Some(now + 1),
            Some(Payload::JobOutcome(pb::JobOutcome {
                status: pb::JobStatus::Completed as i32,
                duration_seconds: 60.0,
                sla_met: true,
                error_code: 0,
                cost: 1.0,
            })),
        ),
    ];
    let ack = ingest_one(&node, &batch).await;
    assert_eq!(
        ack.accepted, 3,
        "exactly the good events are accepted: {:?}",
        ack.rejections
    );
    assert_eq!(ack.duplicates, 0);
    assert_eq!(ack.rejected, 8);
    let expected: [(u32, &str); 8] = [
        (1, "events[1].utilization.cpu"),
        (2, "events[2].response_time.response_time_ms"),
        (3, "events[3].provider_id"),
        (4, "events[4].provider_id"),
        (6, "events[6].timestamp"),
        (7, "events[7].payload"),
        (8, "events[8].job_outcome.status"),
        (9, "events[9].timestamp"),
    ];
    let got: Vec<(u32, &str)> = ack
        .rejections
        .iter()
        .map(|r| (r.index, r.field.as_str()))
        .collect();
    assert_eq!(
        got, expected,
        "each bad event named by index and field: {:#?}",
        ack.rejections
    );
    for r in &ack.rejections {
        assert!(!r.reason.is_empty() && !r.description.is_empty(), "{r:?}");
        assert_eq!(r.event_id, batch[r.index as usize].event_id);
    }

    let mut rep = node.reputation().await;
    let a = profile(&mut rep, "good-a").await;
    assert_eq!(a.events_ingested, 2);
    assert_eq!(a.jobs_lifetime, 1);
    assert_eq!(profile(&mut rep, "good-b").await.events_ingested, 1);
    // Providers whose only event was bad were never created.
    for id in [
        "bad-cpu",
        "bad-nan",
        "bad-no-timestamp",
        "bad-no-payload",
        "bad-status",
        "bad-future",
    ] {
        let err = rep
            .get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
                provider_id: id.into(),
            })
            .await
            .expect_err(id);
        assert_eq!(err.code(), Code::NotFound, "{id}: {err:?}");
    }
    let err = rep
        .get_provider_reputation_profile(pb::GetProviderReputationProfileRequest {
            provider_id: "no-such-provider".into(),
        })
        .await
        .expect_err("unknown provider");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // A unary INVALID_ARGUMENT names its field in a BadRequest detail.
    let err = rep
        .get_provider_trend_analysis(pb::GetProviderTrendAnalysisRequest {
            provider_id: "good-a".into(),
            metric: "bogus".into(),
        })
        .await
        .expect_err("metric bogus");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let details = tonic_types::StatusExt::get_error_details(&err);
    let bad = details.bad_request().expect("a BadRequest detail");
    assert!(
        bad.field_violations
            .iter()
            .any(|v| v.field == "metric" && !v.description.is_empty()),
        "{bad:?}"
    );
}

#[tokio::test]
async fn a_provider_silent_for_ten_minutes_is_heard_again() {
    // A provider (or the whole collector) goes quiet for ten minutes — a crash, a network
    // cut — then reports again. Its timestamps are well behind the node's wall clock, so
    // nothing is "in the future": every event after the gap must be accepted.
    let node = NodeProc::start_light(&[]);
    // All four events fall in one hour bucket (the start of the hour before last), so the
    // forecast below sees one point of history whatever the time of day the test runs.
    let t0 = (wall_seconds() / 3600 - 1) * 3600;
    let hb = |i: u32, t: i64| {
        event(
            &format!("gap-{i}"),
            "gappy",
            Some(t),
            Some(Payload::Heartbeat(pb::Heartbeat {
                status: pb::HeartbeatStatus::Online as i32,
            })),
        )
    };
    let first = ingest_one(&node, &[hb(0, t0), hb(1, t0 + 60)]).await;
    assert_eq!(first.accepted, 2, "{:?}", first.rejections);
    let after_gap = ingest_one(&node, &[hb(2, t0 + 660), hb(3, t0 + 720)]).await;
    assert_eq!(
        after_gap.accepted, 2,
        "events after a 10-minute silence are rejected: {:?}",
        after_gap.rejections
    );
    let mut rep = node.reputation().await;
    assert_eq!(profile(&mut rep, "gappy").await.events_ingested, 4);

    // Minutes of history are too few for a forecast: FAILED_PRECONDITION, saying why, at
    // once — not UNAVAILABLE, which the gateway and clients would retry in vain.
    let asked = Instant::now();
    let st = rep
        .get_provider_forecasts(pb::GetProviderForecastsRequest {
            provider_id: "gappy".into(),
            metric: String::new(),
            horizon_hours: 24,
        })
        .await
        .expect_err("a forecast from minutes of history");
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    assert!(st.message().contains("history has"), "{st:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "the refusal took {:?}: retried as if the shard were moving",
        asked.elapsed()
    );
}

// ------------------------------------------------------------------- 4. shutdown

#[tokio::test]
async fn sigterm_on_an_idle_node_exits_zero() {
    let mut node = NodeProc::start_light(&[]);
    // It serves before we stop it; the client stays connected (idle) across the signal.
    let mut cluster = node.cluster().await;
    let status = cluster
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.shard_count, 16);
    // Wait on another thread so this runtime keeps serving the client's side of the
    // connection (it must answer the server's GOAWAY/PING for a graceful close).
    let (node, exit, took) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let exit = node.terminate(Duration::from_secs(10));
        (node, exit, started.elapsed())
    })
    .await
    .expect("join");
    assert!(
        exit.success(),
        "SIGTERM must end the node with status 0, got {exit:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Stopped accepting: the next call fails.
    let after = tokio::time::timeout(
        Duration::from_secs(10),
        cluster.get_cluster_status(pb::GetClusterStatusRequest {}),
    )
    .await
    .expect("a call to a stopped node fails fast");
    assert!(after.is_err(), "a stopped node must not answer");
    drop(node);
}

#[tokio::test]
async fn sigterm_exits_even_if_a_client_connection_never_answers() {
    let node = NodeProc::start_light(&[]);
    // A client whose process is frozen: a raw TCP connection that sent the HTTP/2 preface
    // and settings and then never reads again.
    let mut raw = std::net::TcpStream::connect(&node.addr).expect("connect");
    std::io::Write::write_all(
        &mut raw,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    )
    .expect("preface");
    std::thread::sleep(Duration::from_millis(200));
    let (mut node, raw) = (node, raw);
    let exit = tokio::task::spawn_blocking(move || node.terminate(Duration::from_secs(10))).await;
    drop(raw);
    let exit = exit
        .expect("SIGTERM must end the node within 10 s even with an unresponsive peer connected");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn sigterm_right_after_the_listening_line_exits_zero() {
    // "listening on" is what scripts and probes wait for: from then on SIGTERM must be a
    // graceful stop, never the default action (death by signal). Ten nodes, signalled as
    // soon as they say they listen (no client is connected, so blocking here is fine).
    for i in 0..10 {
        let mut node = NodeProc::start_light(&[]);
        let exit = node.terminate(Duration::from_secs(10));
        assert!(
            exit.success(),
            "node {i}: SIGTERM right after \"listening on\" must exit 0, got {exit:?}"
        );
    }
}

// ------------------------------------------------------------------- 5. CLI

fn run_cli(args: &[&str]) -> std::process::Output {
    // The child is waited for by a thread so a hung CLI fails the test instead of hanging it.
    let mut child = Command::new(binary())
        .args(args)
        .env("LOG_LEVEL", "WARN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning the CLI");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{args:?} did not finish within 120 s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn last_json_line(out: &std::process::Output, what: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("{what}: no output"));
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{what}: last line is not JSON ({e}): {line}"))
}

#[tokio::test]
async fn cli_query_prints_proto3_json() {
    let (node, network) = scenario_node(&[]).await;
    let addr = node.addr.clone();
    let net = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || run_cli(&["query", "--target", &addr, "--json", "network"])
    })
    .await
    .expect("join");
    let net = last_json_line(&net, "query network");
    // proto3 JSON: lowerCamelCase names, 64-bit integers as strings.
    assert_eq!(
        net["totalProviders"],
        serde_json::json!(SCENARIO_PROVIDERS.to_string()),
        "{net}"
    );
    assert!(net["scoreDistribution"].is_object(), "{net}");
    assert!(
        net.get("total_providers").is_none(),
        "field names are lowerCamelCase"
    );
    assert_eq!(network.total_providers, SCENARIO_PROVIDERS);

    let prof = tokio::task::spawn_blocking(move || {
        run_cli(&[
            "query",
            "--target",
            &addr,
            "--json",
            "profile",
            Scenario::BEST,
        ])
    })
    .await
    .expect("join");
    let prof = last_json_line(&prof, "query profile best");
    assert_eq!(prof["providerId"], Scenario::BEST, "{prof}");
    let mut rep = node.reputation().await;
    let best = profile(&mut rep, Scenario::BEST).await;
    assert_eq!(
        prof["eventsIngested"],
        serde_json::json!(best.events_ingested.to_string()),
        "{prof}"
    );
    assert_eq!(prof["spec"]["region"], "us-east");
}

#[tokio::test]
async fn cli_simulate_report_matches_the_profiles() {
    let node = NodeProc::start_light(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("acked.json");
    let out = tokio::task::spawn_blocking({
        let addr = node.addr.clone();
        let report = report.clone();
        move || {
            run_cli(&[
                "simulate",
                "--target",
                &addr,
                "--providers",
                "20",
                "--hours",
                "6",
                "--quiet",
                "--report",
                report.to_str().expect("utf-8 path"),
            ])
        }
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "simulate failed: {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&report).expect("the report is written");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
    let acked = json["acked"].as_object().expect("an \"acked\" map");
    assert_eq!(
        acked.len(),
        20,
        "20 providers acknowledged: {:?}",
        acked.keys().collect::<Vec<_>>()
    );

    let mut rep = node.reputation().await;
    let mut total = 0;
    let mut seen = HashSet::new();
    for (id, n) in acked {
        let n = n
            .as_u64()
            .unwrap_or_else(|| panic!("{id}: count {n} is not an integer"));
        assert!(n > 0, "{id}: nothing acknowledged");
        let p = profile(&mut rep, id).await;
        assert_eq!(
            p.events_ingested, n,
            "{id}: profile events_ingested vs the report's acked count"
        );
        total += n;
        seen.insert(id.clone());
    }
    let status = cluster_status(&node).await;
    assert_eq!(
        status.events_ingested, total,
        "the node stored exactly what the report says was acknowledged"
    );
    assert_eq!(status.provider_count, seen.len() as u64);
}

// ------------------------------------------------------------------- 6. health + reflection

#[tokio::test]
async fn health_and_reflection_answer() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let node = NodeProc::start_light(&[]);
    let channel = node.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("Health.Check(\"\")")
        .into_inner();
    assert_eq!(resp.status(), ServingStatus::Serving);

    // Reflection, both versions: the services are discoverable by name.
    let wanted = [
        "depin.analytics.v1.ReputationService",
        "depin.analytics.v1.IngestService",
        "depin.analytics.v1.ClusterService",
    ];
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .expect("reflection v1")
            .into_inner();
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("reflection v1 answers within 10 s")
            .expect("reflection v1")
            .expect("one response");
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("unexpected reflection v1 answer: {msg:?}");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        for w in wanted {
            assert!(names.contains(&w), "reflection v1 lists {w}: {names:?}");
        }
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .expect("reflection v1alpha")
            .into_inner();
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("reflection v1alpha answers within 10 s")
            .expect("reflection v1alpha")
            .expect("one response");
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("unexpected reflection v1alpha answer: {msg:?}");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        for w in wanted {
            assert!(
                names.contains(&w),
                "reflection v1alpha lists {w}: {names:?}"
            );
        }
    }
}

/// On SIGTERM the node says NOT_SERVING to health watchers before it stops serving, so a
/// balancer or readiness probe stops sending it work while it hands off and checkpoints.
#[tokio::test]
async fn health_turns_not_serving_on_sigterm_before_the_node_stops() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let node = NodeProc::start_light(&[]);
    let mut health = HealthClient::new(node.channel().await);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("Health.Watch")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("first status")
        .expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    node.signal("TERM");
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a status within 10 s of SIGTERM")
        .expect("the watch stream delivers the change before the node stops")
        .expect("a status, not the end of the stream");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
}

/// `query health`, the command container probes run: exit 0 and SERVING for the node and
/// its services, non-zero with the reason for a service it does not have or no node at all.
#[tokio::test]
async fn cli_query_health_exits_zero_only_when_serving() {
    let node = NodeProc::start_light(&[]);
    let addr = node.addr.clone();
    let (node_ok, service_ok, unknown, down) = tokio::task::spawn_blocking(move || {
        let down = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        (
            run_cli(&["query", "--target", &addr, "health"]),
            run_cli(&[
                "query",
                "--target",
                &addr,
                "--json",
                "health",
                "--service",
                "depin.analytics.v1.IngestService",
            ]),
            run_cli(&["query", "--target", &addr, "health", "--service", "no.Such"]),
            run_cli(&["query", "--target", &down, "health"]),
        )
    })
    .await
    .expect("join");
    assert!(node_ok.status.success(), "{node_ok:?}");
    assert_eq!(String::from_utf8_lossy(&node_ok.stdout).trim(), "SERVING");
    assert_eq!(
        last_json_line(&service_ok, "query health --service")["status"],
        "SERVING"
    );
    for (out, want) in [(&unknown, "no.Such"), (&down, "connecting")] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{out:?}");
        assert!(stderr.contains(want), "{stderr}");
    }
}
