//! Glue between a provider's state, the coordinator's snapshot and the analytics: what a
//! shard summarises, what a closed hour records, what the coordinator computes each cycle.
//! Pure functions; the actors call them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::analytics::alerts::{Alert, AlertInputs, AlertParams, MetricEpisode, derive_alerts};
use crate::analytics::anomaly::{AnomalyDirection, AnomalyEpisode, AnomalyParams, detect_window};
use crate::analytics::forecast::{self, ForecastError, ForecastParams, ProviderForecast};
use crate::analytics::network::{
    NetworkAnalytics, ProviderSummary, RegionUtilizationSeries, SummaryBasis, SummaryFlags,
    network_analytics, summarize,
};
use crate::analytics::patterns::{PatternParams, ResourceUtilizationPattern, utilization_pattern};
use crate::analytics::ranking::{
    CriterionScores, ProviderRanking, RankingCategory, RankingContext, RankingFilter, RankingQuery,
    Tier, TierCutoffs, category_score, criterion_scores,
};
use crate::analytics::recommend::{self, JobRequirements, RecommendationResult};
use crate::analytics::score::{
    self, NetworkPrior, ProfileContext, ProviderPerformanceProfile, ScoreDistribution, TrendSignal,
};
use crate::analytics::state::{HourBucket, ProviderState};
use crate::analytics::trend::{self, Trend, TrendDirection, TrendParams};
use crate::config::{AnalyticsConfig, RankingWeights};
use crate::model::{HOUR, ProviderId, UnixSeconds, hour_of};

/// Every ranking category, in the order rankings are kept.
pub const CATEGORIES: [RankingCategory; 6] = [
    RankingCategory::Overall,
    RankingCategory::Performance,
    RankingCategory::Reliability,
    RankingCategory::Cost,
    RankingCategory::Availability,
    RankingCategory::Speed,
];

/// What the coordinator publishes after each cycle.
#[derive(Clone, Debug, Default)]
pub struct AnalyticsSnapshot {
    /// Event time the cycle ran at (the newest event time seen); 0 before the first cycle.
    pub computed_at: UnixSeconds,
    /// Wall-clock time of the cycle, for operators.
    pub computed_at_wall: i64,
    pub cycle: u64,
    pub cycle_ms: f64,
    pub prior: NetworkPrior,
    pub ranking_context: RankingContext,
    pub cutoffs: TierCutoffs,
    pub distribution: ScoreDistribution,
    /// Every provider's summary, sorted by provider id.
    pub summaries: Vec<ProviderSummary>,
    /// [`id_key`] of each summary's id, in the same order: the next cycle walks them, not
    /// the ids (empty: computed from the ids when needed).
    pub id_keys: Vec<u128>,
    /// Each summary's tier, in the same order: the shards' [`TierWalk`]s read these, not
    /// the summaries, a cache miss each (empty: read from the summaries).
    pub tiers: Vec<Tier>,
    /// Orders and ranks of this cycle.
    pub ranks: Arc<RankData>,
    /// Those of the cycle before, for rank changes.
    pub previous: Option<Arc<RankData>>,
    pub network: Option<NetworkAnalytics>,
    pub region_series: Vec<RegionUtilizationSeries>,
}

/// A coordinator snapshot as the leader sends it to the other nodes: everything but the rank
/// orders, which each node derives from the summaries (cheaper to compute than to send).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotWire {
    pub computed_at: UnixSeconds,
    pub computed_at_wall: i64,
    pub cycle: u64,
    pub cycle_ms: f64,
    pub prior: NetworkPrior,
    pub ranking_context: RankingContext,
    pub cutoffs: TierCutoffs,
    pub distribution: ScoreDistribution,
    pub summaries: Vec<ProviderSummary>,
    pub network: Option<NetworkAnalytics>,
    pub region_series: Vec<RegionUtilizationSeries>,
}

impl AnalyticsSnapshot {
    pub fn to_wire(&self) -> SnapshotWire {
        SnapshotWire {
            computed_at: self.computed_at,
            computed_at_wall: self.computed_at_wall,
            cycle: self.cycle,
            cycle_ms: self.cycle_ms,
            prior: self.prior.clone(),
            ranking_context: self.ranking_context.clone(),
            cutoffs: self.cutoffs.clone(),
            distribution: self.distribution.clone(),
            summaries: self.summaries.clone(),
            network: self.network.clone(),
            region_series: self.region_series.clone(),
        }
    }

    /// The snapshot a node installs from the leader's `wire`; rank changes are against
    /// `previous`, the snapshot it held before.
    pub fn from_wire(w: SnapshotWire, previous: &AnalyticsSnapshot, cfg: &AnalyticsConfig) -> Self {
        let id_keys: Vec<u128> = w.summaries.iter().map(|s| id_key(&s.id)).collect();
        let ranks = Arc::new(rank_all(
            &w.summaries,
            &id_keys,
            &w.ranking_context,
            &cfg.ranking_weights,
        ));
        Self {
            computed_at: w.computed_at,
            computed_at_wall: w.computed_at_wall,
            cycle: w.cycle,
            cycle_ms: w.cycle_ms,
            prior: w.prior,
            ranking_context: w.ranking_context,
            cutoffs: w.cutoffs,
            distribution: w.distribution,
            id_keys,
            tiers: w.summaries.iter().map(|s| s.tier).collect(),
            summaries: w.summaries,
            ranks,
            previous: (previous.cycle > 0).then(|| previous.ranks.clone()),
            network: w.network,
            region_series: w.region_series,
        }
    }
}

/// The part of a coordinator snapshot that later cycles depend on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorSeed {
    pub prior: NetworkPrior,
    pub cutoffs: TierCutoffs,
    pub distribution: ScoreDistribution,
    pub ranking_context: RankingContext,
    pub tiers: Vec<(ProviderId, Tier)>,
}

/// Provider id → position in the snapshot's `summaries`. An id shorter than 16 bytes is
/// found by its [`id_key`] alone (see [`key_holds_whole_id`]), a longer one by the id: a
/// cycle builds the index from the keys it already has, without reading a million ids or
/// touching their reference counts, a cache miss each (foldhash: a million SipHashes of
/// ids were a tenth of a cycle).
#[derive(Clone, Debug, Default)]
pub struct RankIndex {
    by_key: HashMap<u128, u32, foldhash::fast::RandomState>,
    long: HashMap<ProviderId, u32, foldhash::fast::RandomState>,
}

impl RankIndex {
    /// The index of `summaries`, whose [`id_key`]s are `keys` (empty: computed here).
    pub fn new(summaries: &[ProviderSummary], keys: &[u128]) -> Self {
        let computed: Vec<u128>;
        let keys = if keys.len() == summaries.len() {
            keys
        } else {
            computed = summaries.iter().map(|s| id_key(&s.id)).collect();
            &computed
        };
        let mut index = Self::default();
        index
            .by_key
            .reserve(keys.iter().filter(|k| key_holds_whole_id(**k)).count());
        for (i, (s, key)) in summaries.iter().zip(keys).enumerate() {
            if key_holds_whole_id(*key) {
                index.by_key.insert(*key, i as u32);
            } else {
                index.long.insert(s.id.clone(), i as u32);
            }
        }
        index
    }

    /// The position of `id`'s summary.
    pub fn get(&self, id: &ProviderId) -> Option<usize> {
        let key = id_key(id);
        let i = if key_holds_whole_id(key) {
            self.by_key.get(&key)
        } else {
            self.long.get(id)
        };
        i.map(|i| *i as usize)
    }

    pub fn len(&self) -> usize {
        self.by_key.len() + self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rankings of one cycle, by position in the snapshot's `summaries`.
#[derive(Clone, Debug, Default)]
pub struct RankData {
    pub index: RankIndex,
    /// Per category: summary positions, best first.
    pub order: HashMap<RankingCategory, Vec<u32>>,
    /// Per category: the 1-based rank of each summary position.
    pub rank_of: HashMap<RankingCategory, Vec<u32>>,
    /// Per category: the score of each summary position.
    pub score_of: HashMap<RankingCategory, Vec<f64>>,
}

impl RankData {
    pub fn rank(&self, category: RankingCategory, id: &ProviderId) -> Option<u32> {
        let i = self.index.get(id)?;
        self.rank_of.get(&category).and_then(|r| r.get(i).copied())
    }
}

impl AnalyticsSnapshot {
    /// A snapshot restored at start, before the first cycle, from what the last checkpoint
    /// kept: the first cycle then scores with the same prior and continues tier hysteresis
    /// from the same tiers.
    pub fn from_seed(seed: CoordinatorSeed) -> Self {
        let mut tiers = seed.tiers;
        tiers.sort_by(|a, b| a.0.cmp(&b.0));
        let summaries: Vec<ProviderSummary> = tiers
            .into_iter()
            .map(|(id, tier)| ProviderSummary {
                id,
                tier,
                ..Default::default()
            })
            .collect();
        let id_keys: Vec<u128> = summaries.iter().map(|s| id_key(&s.id)).collect();
        let index = RankIndex::new(&summaries, &id_keys);
        Self {
            tiers: summaries.iter().map(|s| s.tier).collect(),
            id_keys,
            summaries,
            ranks: Arc::new(RankData {
                index,
                ..Default::default()
            }),
            prior: seed.prior,
            cutoffs: seed.cutoffs,
            distribution: seed.distribution,
            ranking_context: seed.ranking_context,
            ..Default::default()
        }
    }

    /// What a checkpoint keeps of this snapshot.
    pub fn seed(&self) -> CoordinatorSeed {
        CoordinatorSeed {
            prior: self.prior.clone(),
            cutoffs: self.cutoffs.clone(),
            distribution: self.distribution.clone(),
            ranking_context: self.ranking_context.clone(),
            tiers: self
                .summaries
                .iter()
                .map(|s| (s.id.clone(), s.tier))
                .collect(),
        }
    }

    pub fn providers(&self) -> usize {
        self.summaries.len()
    }

    pub fn summary(&self, id: &ProviderId) -> Option<&ProviderSummary> {
        self.ranks.index.get(id).map(|i| &self.summaries[i])
    }

    pub fn tier_of(&self, id: &ProviderId) -> Option<Tier> {
        self.summary(id).map(|s| s.tier)
    }

    pub fn computed_at_timestamp(&self) -> Option<prost_types::Timestamp> {
        (self.cycle > 0).then_some(prost_types::Timestamp {
            seconds: self.computed_at_wall,
            nanos: 0,
        })
    }
}

impl Default for ScoreDistribution {
    fn default() -> Self {
        Self::empty()
    }
}

/// The metrics a trend or a forecast can follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    PerformanceScore,
    CompletionRate,
    ResponseTimeMs,
    Uptime,
    CpuUtilization,
    GpuUtilization,
}

impl Metric {
    pub const NAMES: &'static str = "performance_score, completion_rate, response_time_ms, uptime, cpu_utilization, gpu_utilization";

    /// Parses a metric name; empty means the performance score.
    pub fn parse(s: &str) -> Option<Metric> {
        Some(match s {
            "" | "performance_score" | "score" => Metric::PerformanceScore,
            "completion_rate" => Metric::CompletionRate,
            "response_time_ms" | "response_time" => Metric::ResponseTimeMs,
            "uptime" => Metric::Uptime,
            "cpu_utilization" | "cpu" => Metric::CpuUtilization,
            "gpu_utilization" | "gpu" => Metric::GpuUtilization,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::PerformanceScore => "performance_score",
            Metric::CompletionRate => "completion_rate",
            Metric::ResponseTimeMs => "response_time_ms",
            Metric::Uptime => "uptime",
            Metric::CpuUtilization => "cpu_utilization",
            Metric::GpuUtilization => "gpu_utilization",
        }
    }

    /// The metric's value in one hour; NaN when the hour holds no data for it.
    pub fn of(self, b: &HourBucket) -> f64 {
        match self {
            Metric::PerformanceScore => f64::from(b.score),
            Metric::CompletionRate => {
                let d = b.decided_jobs();
                if d == 0 {
                    f64::NAN
                } else {
                    f64::from(b.completed) / f64::from(d)
                }
            }
            Metric::ResponseTimeMs => {
                if b.rt_count == 0 {
                    f64::NAN
                } else {
                    f64::from(b.rt_mean)
                }
            }
            Metric::Uptime => {
                let o = b.observed_seconds();
                if o == 0 {
                    f64::NAN
                } else {
                    f64::from(b.uptime_seconds) / f64::from(o)
                }
            }
            Metric::CpuUtilization => {
                if b.util_count == 0 {
                    f64::NAN
                } else {
                    b.cpu()
                }
            }
            Metric::GpuUtilization => {
                if b.util_count == 0 {
                    f64::NAN
                } else {
                    b.gpu()
                }
            }
        }
    }

    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::ResponseTimeMs)
    }

    /// The range forecasts are clipped to.
    pub fn range(self) -> Option<(f64, f64)> {
        match self {
            Metric::PerformanceScore => Some((0.0, 100.0)),
            Metric::ResponseTimeMs => Some((0.0, f64::INFINITY)),
            _ => Some((0.0, 1.0)),
        }
    }
}

/// "Now" for a provider: the node's newest event time, or the provider's own when later.
pub fn provider_now(state: &ProviderState, reference: UnixSeconds) -> UnixSeconds {
    reference.max(state.last_seen().unwrap_or(0))
}

/// Trend parameters for a metric (the practical-slope floor scales with the metric).
pub fn trend_params(metric: Metric) -> TrendParams {
    let min_slope_per_day = match metric {
        Metric::PerformanceScore => 0.5,
        Metric::ResponseTimeMs => 5.0,
        _ => 0.005,
    };
    TrendParams {
        higher_is_better: metric.higher_is_better(),
        min_slope_per_day,
        ..TrendParams::default()
    }
}

/// The trend of a metric over the provider's window.
pub fn metric_trend(state: &ProviderState, metric: Metric) -> Trend {
    trend::analyze_trend(&metric_series(state, metric), &trend_params(metric))
}

/// A metric's hourly points over the provider's window (hours without data skipped).
fn metric_series(state: &ProviderState, metric: Metric) -> Vec<(f64, f64)> {
    trend::window_series(&state.window, |b| metric.of(b))
}

/// The trend signal the scores and warnings use: a significant decline of the score.
pub fn trend_signal(state: &ProviderState) -> TrendSignal {
    let metric = Metric::PerformanceScore;
    let (fit, direction) =
        trend::fit_direction(&metric_series(state, metric), &trend_params(metric));
    TrendSignal {
        declining: direction == TrendDirection::Declining,
        slope_per_day: fit.slope_per_day,
    }
}

/// The provider's full profile at `now`.
pub fn profile(
    state: &ProviderState,
    snapshot: &AnalyticsSnapshot,
    cfg: &AnalyticsConfig,
    now: UnixSeconds,
) -> ProviderPerformanceProfile {
    let ctx = ProfileContext {
        prior: &snapshot.prior,
        distribution: &snapshot.distribution,
        cutoffs: &snapshot.cutoffs,
        previous_tier: snapshot.tier_of(&state.id),
        trend: Some(trend_signal(state)),
    };
    score::performance_profile(state, cfg, &ctx, now)
}

/// The forecast of a metric, `horizon` hours ahead.
pub fn metric_forecast(
    state: &ProviderState,
    metric: Metric,
    horizon: usize,
    cfg: &AnalyticsConfig,
) -> Result<ProviderForecast, ForecastError> {
    let Some((y, last_hour)) = forecast::window_metric(&state.window, |b| metric.of(b)) else {
        return Err(ForecastError::TooShort { points: 0, min: 2 });
    };
    let params = ForecastParams {
        horizon: horizon.max(1),
        clamp: metric.range(),
        ..ForecastParams::from_config(&cfg.forecasting)
    };
    forecast::forecast_series(&y, last_hour * HOUR, HOUR, &params)
}

/// What a shard sends the coordinator for one provider, its tier without hysteresis:
/// [`ShardSummaries::sort_and_tier`] sets the tiers of a shard's list as it sorts it.
pub fn summary(
    state: &ProviderState,
    snapshot: &AnalyticsSnapshot,
    cfg: &AnalyticsConfig,
    reference: UnixSeconds,
) -> ProviderSummary {
    let now = provider_now(state, reference);
    let flags = SummaryFlags {
        declining: trend_signal(state).declining,
        anomaly: false,
        previous_tier: None,
    };
    summarize(state, cfg, &snapshot.prior, &snapshot.cutoffs, &flags, now)
}

/// [`summary`] of a parked provider, from its [`SummaryBasis`] without decoding its state;
/// `None` when the basis cannot answer at this `reference` (see [`SummaryBasis::summary`]).
pub fn parked_summary(
    basis: &SummaryBasis,
    snapshot: &AnalyticsSnapshot,
    cfg: &AnalyticsConfig,
    reference: UnixSeconds,
) -> Option<ProviderSummary> {
    let now = reference.max(basis.last_seen().unwrap_or(0));
    basis.summary(cfg, &snapshot.prior, &snapshot.cutoffs, None, now)
}

/// Sets the tiers of a list sorted by id, with hysteresis against the tiers the snapshot's
/// list (sorted the same way) gave the same ids, under `cutoffs`. Each id is found by
/// galloping forwards from the one before: a shard's providers are a small part of the
/// snapshot's, so that is a few steps through the keys read in order, where a lookup in
/// the snapshot's index by id was a few cache misses (a sixth of a node's samples while it
/// gathered a parked million, session 14); the coordinator's whole list takes a step or
/// two each. A snapshot without keys is looked up by id.
pub struct TierWalk<'a> {
    snapshot: &'a AnalyticsSnapshot,
    cutoffs: &'a TierCutoffs,
    cfg: &'a AnalyticsConfig,
    keyed: bool,
    /// Every snapshot position before it holds a smaller id than the ones still to come.
    from: usize,
}

impl<'a> TierWalk<'a> {
    pub fn new(
        snapshot: &'a AnalyticsSnapshot,
        cutoffs: &'a TierCutoffs,
        cfg: &'a AnalyticsConfig,
    ) -> Self {
        Self {
            snapshot,
            cutoffs,
            cfg,
            keyed: snapshot.id_keys.len() == snapshot.summaries.len(),
            from: 0,
        }
    }

    /// Sets `s`'s tier; `key` is its [`id_key`], and each call's id follows the last one's.
    pub fn set_tier(&mut self, s: &mut ProviderSummary, key: u128) {
        let snapshot = self.snapshot;
        let previous = if self.keyed {
            let (keys, before) = (&snapshot.id_keys, &snapshot.summaries);
            let below = |j: usize| {
                let pk = keys[j];
                pk < key || (pk == key && !key_holds_whole_id(key) && before[j].id < s.id)
            };
            // gallop to a bound past the id, then bisect the last step
            let (mut from, mut step) = (self.from, 1);
            while from + step <= keys.len() && below(from + step - 1) {
                from += step;
                step *= 2;
            }
            let mut end = (from + step - 1).min(keys.len());
            while from < end {
                let mid = from + (end - from) / 2;
                if below(mid) {
                    from = mid + 1;
                } else {
                    end = mid;
                }
            }
            self.from = from;
            (from < keys.len()
                && keys[from] == key
                && (key_holds_whole_id(key) || before[from].id == s.id))
                .then(|| {
                    snapshot
                        .tiers
                        .get(from)
                        .copied()
                        .unwrap_or(before[from].tier)
                })
        } else {
            snapshot.tier_of(&s.id)
        };
        s.tier = self.cutoffs.tier_with_hysteresis(
            f64::from(s.performance_score),
            previous,
            self.cfg.tier_hysteresis_points,
        );
    }
}

/// Record the composite score of a closed hour (scored as of the hour's end).
pub fn record_hour_score(
    state: &mut ProviderState,
    hour: i64,
    snapshot: &AnalyticsSnapshot,
    cfg: &AnalyticsConfig,
) {
    let at = (hour + 1) * HOUR - 1;
    let s = score::performance_score(state, &snapshot.prior, cfg, at).composite;
    state.record_score(hour, s);
}

/// Utilization sums by region and hour, gathered from provider windows by the shards.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionHourly {
    /// region → epoch hour → (cpu sum, gpu sum, providers with samples). Keyed by region
    /// first, so that a provider costs one lookup by name, not one per hour.
    pub sums: BTreeMap<String, BTreeMap<i64, (f64, f64, u32)>>,
}

/// One provider's last `hours` hours of utilization with samples, newest first:
/// (epoch hour, cpu, gpu). Empty for a provider without a spec (no region to count it in).
pub fn utilization_hours(state: &ProviderState, hours: usize) -> Vec<(i64, f64, f64)> {
    if state.spec.is_none() {
        return Vec::new();
    }
    // sized once: growing it sample by sample cost more than filling it
    let mut out = Vec::with_capacity(hours.min(state.window.len()));
    out.extend(
        state
            .window
            .iter()
            .rev()
            .take(hours)
            .filter(|(_, b)| b.util_count > 0)
            .map(|(hour, b)| (hour, b.cpu(), b.gpu())),
    );
    out
}

impl RegionHourly {
    /// Add one provider's last `hours` hours of utilization.
    pub fn add(&mut self, state: &ProviderState, hours: usize) {
        if let Some(spec) = &state.spec {
            self.add_hours(&spec.region, &utilization_hours(state, hours));
        }
    }

    /// Add one provider's hours (from [`utilization_hours`]) to its region.
    pub fn add_hours(&mut self, region: &str, hours: &[(i64, f64, f64)]) {
        if hours.is_empty() {
            return;
        }
        if !self.sums.contains_key(region) {
            self.sums.insert(region.to_string(), BTreeMap::new());
        }
        let by_hour = self.sums.get_mut(region).expect("inserted above");
        for &(hour, cpu, gpu) in hours {
            let e = by_hour.entry(hour).or_default();
            e.0 += cpu;
            e.1 += gpu;
            e.2 += 1;
        }
    }

    pub fn merge(&mut self, other: RegionHourly) {
        for (region, hours) in other.sums {
            let mine = self.sums.entry(region).or_default();
            for (hour, v) in hours {
                let e = mine.entry(hour).or_default();
                e.0 += v.0;
                e.1 += v.1;
                e.2 += v.2;
            }
        }
    }

    /// Mean utilization series per region, gap-free (missing hours carry the last value).
    pub fn series(&self) -> Vec<RegionUtilizationSeries> {
        self.sums
            .iter()
            .filter_map(|(region, hours)| {
                let (&first, _) = hours.first_key_value()?;
                let (&last, _) = hours.last_key_value()?;
                let mut cpu = Vec::with_capacity((last - first + 1) as usize);
                let mut gpu = Vec::with_capacity(cpu.capacity());
                let mean = |(c, g, n): (f64, f64, u32)| {
                    let n = f64::from(n.max(1));
                    (c / n, g / n)
                };
                let mut it = hours.iter().peekable();
                let (mut c, mut g) = mean(hours[&first]);
                for h in first..=last {
                    if let Some((_, v)) = it.next_if(|(hour, _)| **hour == h) {
                        (c, g) = mean(*v);
                    }
                    cpu.push(c);
                    gpu.push(g);
                }
                Some(RegionUtilizationSeries {
                    region: region.clone(),
                    last_hour: last,
                    cpu,
                    gpu,
                })
            })
            .collect()
    }
}

/// One shard's answer to the coordinator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardSummaries {
    /// Sorted by provider id (a shard sorts its own; the coordinator merges the shards').
    pub providers: Vec<ProviderSummary>,
    /// [`id_key`] of each provider's id, in the same order (the shard computes them while
    /// its ids are in its cache; the coordinator merges by them).
    pub keys: Vec<u128>,
    pub regions: RegionHourly,
}

/// The network prior from the summaries: means of what they carry, defaults elsewhere.
pub fn network_prior(summaries: &[ProviderSummary]) -> NetworkPrior {
    let mut prior = NetworkPrior::default();
    let seen: Vec<&ProviderSummary> = summaries.iter().filter(|s| s.data_points > 0).collect();
    if seen.is_empty() {
        return prior;
    }
    prior.uptime_ratio =
        seen.iter().map(|s| f64::from(s.uptime_ratio)).sum::<f64>() / seen.len() as f64;
    let with_jobs: Vec<&&ProviderSummary> = seen.iter().filter(|s| s.jobs_window > 0).collect();
    if !with_jobs.is_empty() {
        let jobs: f64 = with_jobs.iter().map(|s| f64::from(s.jobs_window)).sum();
        let weighted = |f: fn(&ProviderSummary) -> f32| {
            with_jobs
                .iter()
                .map(|s| f64::from(f(s)) * f64::from(s.jobs_window))
                .sum::<f64>()
                / jobs
        };
        prior.completion_rate = weighted(|s| s.completion_rate);
        prior.sla_rate = weighted(|s| s.sla_rate);
        prior.error_rate = weighted(|s| s.error_rate);
    }
    let mut rts: Vec<f64> = seen
        .iter()
        .map(|s| f64::from(s.response_time_ms))
        .filter(|r| *r > 0.0)
        .collect();
    if !rts.is_empty() {
        let mid = rts.len() / 2;
        prior.median_response_time_ms = *rts.select_nth_unstable_by(mid, f64::total_cmp).1;
    }
    prior.sanitized()
}

/// One coordinator cycle over every provider's summary: prior, distribution, tiers (with
/// hysteresis against the previous cycle), rankings in every category, network analytics.
pub fn cycle(
    mut shards: Vec<ShardSummaries>,
    previous: &AnalyticsSnapshot,
    cfg: &AnalyticsConfig,
    now: UnixSeconds,
    wall_now: i64,
) -> AnalyticsSnapshot {
    let mut regions = RegionHourly::default();
    let mut lists = Vec::with_capacity(shards.len());
    for mut s in shards.drain(..) {
        regions.merge(std::mem::take(&mut s.regions));
        lists.push(s);
    }
    let (mut summaries, id_keys) = merge_by_id(lists);
    let mut scores: Vec<f64> = summaries
        .iter()
        .map(|s| f64::from(s.performance_score))
        .collect();
    let distribution = ScoreDistribution::from_scores(&mut scores);
    let cutoffs = TierCutoffs::from_distribution(&distribution, &cfg.ranking_tiers);
    // Both lists are sorted by id: the previous tiers in one walk, not a lookup each
    let mut walk = TierWalk::new(previous, &cutoffs, cfg);
    let tiers = summaries
        .iter_mut()
        .zip(&id_keys)
        .map(|(s, key)| {
            walk.set_tier(s, *key);
            s.tier
        })
        .collect();
    let ranking_context = RankingContext::from_summaries(&summaries);
    let ranks = Arc::new(rank_all(
        &summaries,
        &id_keys,
        &ranking_context,
        &cfg.ranking_weights,
    ));
    let region_series = regions.series();
    let network = network_analytics(&summaries, &region_series, cfg, 10, now);
    AnalyticsSnapshot {
        computed_at: now,
        computed_at_wall: wall_now,
        cycle: previous.cycle + 1,
        cycle_ms: 0.0,
        prior: network_prior(&summaries),
        id_keys,
        tiers,
        ranking_context,
        cutoffs,
        distribution,
        summaries,
        previous: (previous.cycle > 0).then(|| previous.ranks.clone()),
        ranks,
        network: Some(network),
        region_series,
    }
}

/// An id's first 16 bytes as one integer: ids ordered by it are in `str` order wherever it
/// differs (ids are ASCII without NUL, so the zero padding orders a prefix first); equal
/// keys leave the order to the ids themselves. At a million providers, reading every id's
/// bytes in the coordinator's merge and tier walk was a cache miss each: a third of a
/// cycle's own pass (session 14).
pub fn id_key(id: &ProviderId) -> u128 {
    let bytes = id.as_str().as_bytes();
    let mut first = [0u8; 16];
    let n = bytes.len().min(16);
    first[..n].copy_from_slice(&bytes[..n]);
    u128::from_be_bytes(first)
}

/// Whether a key is its whole id: an id shorter than 16 bytes fills its key but the last
/// byte, and the padding cannot be mistaken for the id's own bytes (ids hold no NUL: the
/// gateway admits letters, digits and `.` `_` `:` `-` only). Two such equal keys are the
/// same id, and the walks over sorted lists skip reading the ids (a cache miss each, and
/// a tenth of a node's samples as they gathered a parked million, session 15).
fn key_holds_whole_id(key: u128) -> bool {
    key & 0xff == 0
}

impl ShardSummaries {
    /// Sorts the providers by id and keys them, as a shard sends them: by the keys, the ids
    /// compared only where keys tie (a shard's list comes from its map in no order, and
    /// comparing ids was a tenth of a cycle over a parked million). Stable.
    pub fn sort(&mut self) {
        self.sort_and_tier(None);
    }

    /// [`sort`](Self::sort), setting each summary's tier against the snapshot's as it moves
    /// the summary into place (see [`TierWalk`]): the summary is in cache then, where a
    /// separate pass over the sorted list missed it again.
    pub fn sort_and_tier(&mut self, tiers: Option<TierWalk<'_>>) {
        let mut tiers = tiers;
        let providers = std::mem::take(&mut self.providers);
        let mut keyed: Vec<(u128, usize)> = providers
            .iter()
            .enumerate()
            .map(|(i, s)| (id_key(&s.id), i))
            .collect();
        keyed.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| providers[a.1].id.cmp(&providers[b.1].id))
                .then(a.1.cmp(&b.1))
        });
        let mut slots: Vec<Option<ProviderSummary>> = providers.into_iter().map(Some).collect();
        self.providers = keyed
            .iter()
            .map(|(key, i)| {
                let mut s = slots[*i].take().expect("each position is taken once");
                if let Some(walk) = &mut tiers {
                    walk.set_tier(&mut s, *key);
                }
                s
            })
            .collect();
        self.keys = keyed.into_iter().map(|(k, _)| k).collect();
    }
}

/// The shards' summaries as one list sorted by id, and their [`id_key`]s. Each shard sorts
/// and keys its own, so this is a k-way merge by the keys that moves each summary once (a
/// list that is not sorted or not keyed, as from an older node, is sorted and keyed first).
/// Equal ids keep the lists' order, as a stable sort would.
fn merge_by_id(mut lists: Vec<ShardSummaries>) -> (Vec<ProviderSummary>, Vec<u128>) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    for l in &mut lists {
        if l.keys.len() != l.providers.len() || !l.providers.is_sorted_by(|a, b| a.id <= b.id) {
            l.sort();
        }
    }
    let total = lists.iter().map(|l| l.providers.len()).sum();
    // The order first, from the keys (an id is read only where two keys tie).
    let mut order: Vec<u32> = Vec::with_capacity(total);
    let mut keys: Vec<u128> = Vec::with_capacity(total);
    {
        let head = |list: usize, pos: usize| {
            let key = *lists[list].keys.get(pos)?;
            Some(Reverse((key, &lists[list].providers[pos].id, list, pos)))
        };
        let mut heads: BinaryHeap<_> = (0..lists.len()).filter_map(|l| head(l, 0)).collect();
        while let Some(mut top) = heads.peek_mut() {
            let (key, _, list, pos) = top.0;
            order.push(list as u32);
            keys.push(key);
            match head(list, pos + 1) {
                Some(next) => *top = next,
                None => {
                    std::collections::binary_heap::PeekMut::pop(top);
                }
            }
        }
    }
    // Then each summary moved once, straight from its list into its place.
    let mut lists: Vec<_> = lists.into_iter().map(|l| l.providers.into_iter()).collect();
    let summaries = order
        .into_iter()
        .map(|l| {
            lists[l as usize]
                .next()
                .expect("the order counts each list's length")
        })
        .collect();
    (summaries, keys)
}

/// A page of a ranking: `offset` lines skipped, at most `limit` returned, with the total
/// that matched the filter.
/// Every category's order over the summaries: criteria computed once per provider, one
/// sort of positions per category (ties by provider id, as everywhere).
pub fn rank_all(
    summaries: &[ProviderSummary],
    keys: &[u128],
    ctx: &RankingContext,
    weights: &RankingWeights,
) -> RankData {
    let criteria: Vec<CriterionScores> =
        summaries.iter().map(|s| criterion_scores(s, ctx)).collect();
    let rank = |c: RankingCategory| {
        let scores: Vec<f64> = criteria
            .iter()
            .map(|x| category_score(x, c, weights))
            .collect();
        // Best first; ties by position, which is id order (summaries are sorted by id). One
        // key per provider sorted in place: the indirect comparison of positions by their
        // scores missed the cache on every step at a million providers.
        let mut keyed: Vec<(u64, u32)> = scores
            .iter()
            .enumerate()
            .map(|(i, s)| (!total_order_key(*s), i as u32))
            .collect();
        keyed.sort_unstable();
        let order: Vec<u32> = keyed.into_iter().map(|(_, i)| i).collect();
        let mut rank_of = vec![0u32; summaries.len()];
        for (pos, i) in order.iter().enumerate() {
            rank_of[*i as usize] = pos as u32 + 1;
        }
        (c, order, rank_of, scores)
    };
    // The categories on two threads (a cycle is the coordinator's only work; at a million
    // providers each category's sort takes tens of milliseconds).
    let (half, index, rest) = std::thread::scope(|scope| {
        let half = scope.spawn(|| CATEGORIES[..3].iter().map(|c| rank(*c)).collect::<Vec<_>>());
        let index = RankIndex::new(summaries, keys);
        let rest: Vec<_> = CATEGORIES[3..].iter().map(|c| rank(*c)).collect();
        (half.join().expect("a ranking thread panicked"), index, rest)
    });
    let mut data = RankData {
        index,
        ..Default::default()
    };
    for (c, order, rank_of, scores) in half.into_iter().chain(rest) {
        data.order.insert(c, order);
        data.rank_of.insert(c, rank_of);
        data.score_of.insert(c, scores);
    }
    data
}

/// `f64::total_cmp`'s order as an unsigned integer's.
fn total_order_key(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

fn no_filter(f: &RankingFilter) -> bool {
    f.region.is_none()
        && f.gpu_model.is_none()
        && f.tier.is_none()
        && f.min_tier.is_none()
        && f.min_data_points.is_none()
}

/// A page of a ranking from the cycle's precomputed order: `offset` lines skipped, at most
/// `query.limit` returned, with the total that matched the filter. Without a filter this is
/// O(page); with one, a scan that stops at the page's end (the total needs the full count).
pub fn rankings_page(
    snapshot: &AnalyticsSnapshot,
    query: &RankingQuery,
    offset: usize,
    _cfg: &AnalyticsConfig,
) -> (Vec<ProviderRanking>, usize) {
    let ranks = &snapshot.ranks;
    let Some(order) = ranks.order.get(&query.category) else {
        return (Vec::new(), 0);
    };
    let scores = &ranks.score_of[&query.category];
    let line = |pos: usize, i: u32| {
        let s = &snapshot.summaries[i as usize];
        let rank = pos as u32 + 1;
        let previous_rank = snapshot
            .previous
            .as_ref()
            .and_then(|p| p.rank(query.category, &s.id));
        ProviderRanking {
            provider_id: s.id.clone(),
            rank,
            category: query.category,
            score: scores[i as usize],
            criteria: criterion_scores(s, &snapshot.ranking_context),
            tier: s.tier,
            region: s.region.clone(),
            gpu_model: s.gpu_model.clone(),
            previous_rank,
            rank_change: previous_rank.map(|p| i64::from(p) - i64::from(rank)),
        }
    };
    if no_filter(&query.filter) {
        let page = order
            .iter()
            .enumerate()
            .skip(offset)
            .take(query.limit)
            .map(|(pos, i)| line(pos, *i))
            .collect();
        return (page, order.len());
    }
    let mut total = 0;
    let mut page = Vec::with_capacity(query.limit);
    for i in order {
        if query.filter.matches(&snapshot.summaries[*i as usize]) {
            if total >= offset && page.len() < query.limit {
                page.push(line(total, *i));
            }
            total += 1;
        }
    }
    (page, total)
}

/// What a shard answers for a recommendation.
pub type ShardRecommendations = recommend::Shortlist;

/// A recommendation request as it travels to the shards.
#[derive(Clone, Debug)]
pub struct RecommendQuery {
    pub requirements: JobRequirements,
    pub context: RankingContext,
    pub config: AnalyticsConfig,
}

/// The hour "now" falls in, as the newest closed hour's successor.
pub fn current_hour(now: UnixSeconds) -> i64 {
    hour_of(now)
}

/// Prometheus gauges for one snapshot.
pub fn record_snapshot_metrics(s: &AnalyticsSnapshot) {
    let mut tiers: BTreeMap<&'static str, u64> = BTreeMap::new();
    for t in [
        Tier::Platinum,
        Tier::Gold,
        Tier::Silver,
        Tier::Bronze,
        Tier::Basic,
    ] {
        tiers.insert(t.name(), 0);
    }
    for p in &s.summaries {
        *tiers.entry(p.tier.name()).or_default() += 1;
    }
    for (tier, n) in tiers {
        metrics::gauge!("depin_tier_providers", "tier" => tier.to_ascii_lowercase()).set(n as f64);
    }
    metrics::gauge!("depin_providers").set(s.summaries.len() as f64);
    for q in [0.1, 0.5, 0.9, 0.99] {
        if let Some(v) = s.distribution.quantile(q * 100.0) {
            metrics::gauge!("depin_network_score", "quantile" => q.to_string()).set(v);
        }
    }
}

/// An anomaly episode as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyView {
    pub start: UnixSeconds,
    pub end: UnixSeconds,
    pub peak_at: UnixSeconds,
    pub peak_value: f64,
    pub peak_z: f64,
    pub direction: &'static str,
    pub points: u32,
}

/// Anomalies and alerts of a metric over the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrendAnalysis {
    pub anomalies: Vec<AnomalyView>,
    pub alerts: Vec<Alert>,
}

fn anomaly_episodes(
    state: &ProviderState,
    metric: Metric,
    cfg: &AnalyticsConfig,
) -> Vec<AnomalyEpisode> {
    detect_window(
        &state.window,
        |b| metric.of(b),
        &AnomalyParams::from_config(&cfg.forecasting),
    )
}

/// Mean of the newest `n` hourly scores, and of the whole window's.
fn recent_and_baseline(state: &ProviderState, n: usize) -> (Option<f64>, Option<f64>) {
    let scores: Vec<f64> = trend::score_series(&state.window)
        .into_iter()
        .map(|p| p.1)
        .collect();
    if scores.len() < n * 2 {
        return (None, None);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    (
        Some(mean(&scores[scores.len() - n..])),
        Some(mean(&scores[..scores.len() - n])),
    )
}

/// The alerts a provider's state shows at `now`: degradation against its own baseline, a
/// trend reversal, anomaly episodes of the score, and (with `with_forecast`) a forecast
/// below the floor of the tier it holds.
pub fn provider_alerts(
    state: &ProviderState,
    score_anomalies: &[AnomalyEpisode],
    cfg: &AnalyticsConfig,
    now: UnixSeconds,
    with_forecast: bool,
) -> Vec<Alert> {
    let trend = metric_trend(state, Metric::PerformanceScore);
    let x0 = state.window.oldest_hour().unwrap_or(0) * HOUR;
    let forecast = if with_forecast {
        metric_forecast(state, Metric::PerformanceScore, 24, cfg).ok()
    } else {
        None
    };
    let episodes: Vec<MetricEpisode<'_>> = score_anomalies
        .iter()
        .map(|e| MetricEpisode {
            metric: Metric::PerformanceScore.name(),
            higher_is_better: Some(true),
            episode: e,
        })
        .collect();
    let (current, baseline) = recent_and_baseline(state, 6);
    derive_alerts(
        &AlertInputs {
            provider_id: &state.id,
            now,
            trend: Some((&trend, x0)),
            anomalies: &episodes,
            score_forecast: forecast.as_ref(),
            current_score: current,
            baseline_score: baseline,
            tier_floors: &cfg.ranking_tiers,
        },
        &AlertParams::default(),
    )
}

/// Anomaly episodes of a metric, and the provider's current alerts.
pub fn trend_analysis(
    state: &ProviderState,
    metric: Metric,
    cfg: &AnalyticsConfig,
    now: UnixSeconds,
) -> TrendAnalysis {
    let episodes = anomaly_episodes(state, metric, cfg);
    let score_episodes = if metric == Metric::PerformanceScore {
        episodes.clone()
    } else {
        anomaly_episodes(state, Metric::PerformanceScore, cfg)
    };
    TrendAnalysis {
        anomalies: episodes
            .iter()
            .map(|e| AnomalyView {
                start: e.start,
                end: e.end,
                peak_at: e.peak_at,
                peak_value: e.peak_value,
                peak_z: e.peak_z,
                direction: match e.direction {
                    AnomalyDirection::Spike => "spike",
                    AnomalyDirection::Drop => "drop",
                },
                points: e.points as u32,
            })
            .collect(),
        alerts: provider_alerts(state, &score_episodes, cfg, now, true),
    }
}

/// Alerts to raise when hours close: evaluated every `ALERT_EVERY_HOURS` closed hours of a
/// provider (a week of history costs ~0.1 ms to evaluate), with the forecast rule once a day.
pub fn closed_hour_alerts(state: &ProviderState, hour: i64, cfg: &AnalyticsConfig) -> Vec<Alert> {
    if hour.rem_euclid(ALERT_EVERY_HOURS) != 0 {
        return Vec::new();
    }
    let episodes = anomaly_episodes(state, Metric::PerformanceScore, cfg);
    provider_alerts(
        state,
        &episodes,
        cfg,
        (hour + 1) * HOUR,
        hour.rem_euclid(24) == 0,
    )
}

/// How often (closed hours) a provider's alert rules run while ingesting.
pub const ALERT_EVERY_HOURS: i64 = 3;

/// Utilization patterns over the provider's window.
pub fn patterns(state: &ProviderState) -> ResourceUtilizationPattern {
    utilization_pattern(&state.window, &PatternParams::default())
}

/// The requirements with one constraint dropped, for relaxed suggestions.
pub fn without(req: &JobRequirements, c: recommend::Constraint) -> JobRequirements {
    use recommend::Constraint as C;
    let mut r = req.clone();
    match c {
        C::Online => {}
        C::Region => r.regions.clear(),
        C::CpuCores => r.cpu_cores = 0,
        C::Memory => r.memory_gb = 0.0,
        C::GpuModel => r.gpu_model = None,
        C::GpuCount => r.gpu_count = r.gpu_model.as_ref().map_or(0, |_| 1),
        C::GpuVram => r.min_vram_gb = 0.0,
        C::Budget => r.max_budget = None,
        C::Uptime => r.min_uptime = None,
        C::ResponseTime => r.max_response_time_ms = None,
        C::Tier => r.min_tier = None,
    }
    r
}

/// The answer from every shard's shortlist: merged, cut to the query's `max_results`, and
/// only then given reasons and warnings.
pub fn merge_recommendations(
    parts: Vec<ShardRecommendations>,
    q: &RecommendQuery,
) -> RecommendationResult {
    let merged = recommend::merge_shortlists(parts, q.requirements.max_results, &q.config);
    recommend::finish(merged, &q.requirements, &q.context, &q.config)
}

/// When nothing fits: the constraint whose removal alone admits the most providers.
pub fn relax_choice(merged: &RecommendationResult) -> Option<recommend::Constraint> {
    merged
        .eliminations
        .iter()
        .filter(|e| e.constraint != recommend::Constraint::Online && e.only_this > 0)
        .max_by(|a, b| {
            a.only_this
                .cmp(&b.only_this)
                .then(b.eliminated.cmp(&a.eliminated))
        })
        .map(|e| e.constraint)
}

/// The explanation of an answer where nothing met every requirement.
pub fn explain_empty(
    merged: &RecommendationResult,
    relaxed: Option<recommend::Constraint>,
    offered: bool,
) -> String {
    if merged.considered == 0 {
        return "no providers to consider".into();
    }
    let parts: Vec<String> = merged
        .eliminations
        .iter()
        .map(|e| format!("{} eliminated {}", e.constraint.name(), e.eliminated))
        .collect();
    let mut text = format!(
        "no provider meets every requirement ({} considered): {}",
        merged.considered,
        parts.join(", ")
    );
    match relaxed {
        Some(c) => {
            let n = merged
                .eliminations
                .iter()
                .find(|e| e.constraint == c)
                .map_or(0, |e| e.only_this);
            if offered {
                text.push_str(&format!(
                    "; relaxing {} admits {n} (suggestions marked relaxed)",
                    c.name()
                ));
            } else {
                text.push_str(&format!(
                    "; relaxing {} would admit {n} (ask with allow_relaxed for suggestions)",
                    c.name()
                ));
            }
        }
        None => text.push_str("; no single relaxed constraint would admit a provider"),
    }
    text
}

/// Mark suggestions found with `c` relaxed.
pub fn mark_relaxed(recs: &mut [recommend::ProviderRecommendation], c: recommend::Constraint) {
    for r in recs {
        r.relaxed = true;
        r.relaxed_constraint = Some(c);
        r.match_quality *= 0.5;
        r.warnings.push(recommend::Warning {
            kind: recommend::WarningKind::Relaxed,
            message: format!(
                "does not meet the {} requirement: suggested because nothing met every requirement",
                c.name()
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::ranking::rank_providers;

    fn summaries(n: usize) -> Vec<ProviderSummary> {
        let mut v: Vec<ProviderSummary> = (0..n)
            .map(|i| ProviderSummary {
                id: ProviderId::new(format!("p{i:04}")),
                region: if i % 3 == 0 { "eu".into() } else { "us".into() },
                cpu_cores: 8,
                memory_gb: 32.0,
                price_per_hour: 1.0 + (i % 7) as f32 * 0.3,
                online: i % 5 != 0,
                performance_score: ((i * 37) % 100) as f32,
                reliability_score: ((i * 53) % 100) as f32,
                uptime_ratio: 0.9 + (i % 10) as f32 / 100.0,
                response_time_ms: 100.0 + (i % 13) as f32 * 20.0,
                data_points: (i % 30) as u32,
                ..Default::default()
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn snapshot(s: Vec<ProviderSummary>, cfg: &AnalyticsConfig) -> AnalyticsSnapshot {
        let ctx = RankingContext::from_summaries(&s);
        AnalyticsSnapshot {
            cycle: 1,
            ranks: Arc::new(rank_all(&s, &[], &ctx, &cfg.ranking_weights)),
            ranking_context: ctx,
            summaries: s,
            ..Default::default()
        }
    }

    /// Regional series: per-hour means over the providers with samples, the hours between
    /// carried forward, a provider without a spec left out; shards merged as the
    /// coordinator does give the same sums as one pass.
    #[test]
    fn regional_series_average_providers_per_hour_and_merge_across_shards() {
        use crate::analytics::state::StateParams;
        use crate::model::{EventPayload, ProviderSpec, TelemetryEvent, UtilizationSample};
        let p = StateParams::default();
        let h0 = 1_700_000_000 / HOUR;
        let state = |id: &str, region: Option<&str>, samples: &[(i64, f64, f64)]| {
            let mut s = ProviderState::new(id.into(), &p);
            let mut n = 0;
            let mut apply = |s: &mut ProviderState, t: i64, payload| {
                n += 1;
                let ev = TelemetryEvent {
                    event_id: format!("{id}-{n}"),
                    provider_id: id.into(),
                    timestamp: t,
                    payload,
                };
                s.apply(&ev, t, &p).unwrap();
            };
            if let Some(region) = region {
                let spec = ProviderSpec {
                    region: region.into(),
                    cpu_cores: 8,
                    ..Default::default()
                };
                apply(&mut s, h0 * HOUR, EventPayload::Spec(Box::new(spec)));
            }
            for &(h, cpu, gpu) in samples {
                let sample = UtilizationSample {
                    cpu,
                    gpu,
                    memory: 0.5,
                };
                apply(
                    &mut s,
                    (h0 + h) * HOUR + 60,
                    EventPayload::Utilization(sample),
                );
            }
            s
        };
        let a = state(
            "a",
            Some("eu"),
            &[(0, 0.2, 0.0), (1, 0.4, 0.2), (3, 0.6, 0.4)],
        );
        let b = state("b", Some("eu"), &[(1, 0.8, 0.6)]);
        let c = state("c", Some("us"), &[(2, 0.5, 0.5)]);
        let d = state("d", None, &[(1, 0.9, 0.9)]);
        let mut one = RegionHourly::default();
        for s in [&a, &b, &c, &d] {
            one.add(s, 72);
        }
        let (mut shard1, mut shard2) = (RegionHourly::default(), RegionHourly::default());
        shard1.add(&a, 72);
        shard1.add(&d, 72);
        shard2.add_hours("eu", &utilization_hours(&b, 72));
        shard2.add_hours("us", &utilization_hours(&c, 72));
        let mut merged = RegionHourly::default();
        merged.merge(shard1);
        merged.merge(shard2);
        assert_eq!(merged, one);
        assert!(utilization_hours(&d, 72).is_empty(), "no spec, no region");
        let series = one.series();
        assert_eq!(series.len(), 2);
        let (eu, us) = (&series[0], &series[1]);
        assert_eq!((eu.region.as_str(), eu.last_hour), ("eu", h0 + 3));
        let close = |x: &[f64], y: &[f64]| {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| (x - y).abs() < 1e-3)
        };
        // hour 1 is the mean of a and b; hour 2 carries hour 1 forward
        assert!(close(&eu.cpu, &[0.2, 0.6, 0.6, 0.6]), "{:?}", eu.cpu);
        assert!(close(&eu.gpu, &[0.0, 0.4, 0.4, 0.4]), "{:?}", eu.gpu);
        assert_eq!((us.region.as_str(), us.last_hour), ("us", h0 + 2));
        assert!(close(&us.cpu, &[0.5]) && close(&us.gpu, &[0.5]));
    }

    #[test]
    fn precomputed_pages_equal_a_full_ranking() {
        let cfg = AnalyticsConfig::default();
        let snap = snapshot(summaries(500), &cfg);
        for category in CATEGORIES {
            for filter in [
                RankingFilter::default(),
                RankingFilter {
                    region: Some("eu".into()),
                    min_data_points: Some(10),
                    ..Default::default()
                },
            ] {
                let full = rank_providers(
                    &snap.summaries,
                    &RankingQuery {
                        category,
                        filter: filter.clone(),
                        limit: usize::MAX,
                    },
                    &cfg.ranking_weights,
                    &snap.ranking_context,
                    &HashMap::new(),
                );
                let (page, total) = rankings_page(
                    &snap,
                    &RankingQuery {
                        category,
                        filter: filter.clone(),
                        limit: 25,
                    },
                    40,
                    &cfg,
                );
                assert_eq!(total, full.len(), "{category:?} {filter:?}");
                let want: Vec<(&ProviderId, u32)> = full[40..65]
                    .iter()
                    .map(|r| (&r.provider_id, r.rank))
                    .collect();
                let got: Vec<(&ProviderId, u32)> =
                    page.iter().map(|r| (&r.provider_id, r.rank)).collect();
                assert_eq!(got, want, "{category:?} {filter:?}");
            }
        }
    }

    #[test]
    fn rank_change_against_the_previous_cycle() {
        let cfg = AnalyticsConfig::default();
        let first = snapshot(summaries(50), &cfg);
        let mut second_summaries = summaries(50);
        // The last provider jumps to the top.
        second_summaries[49].performance_score = 100.0;
        second_summaries[49].reliability_score = 100.0;
        let mut second = snapshot(second_summaries, &cfg);
        second.previous = Some(first.ranks.clone());
        let id = second.summaries[49].id.clone();
        let before = first.ranks.rank(RankingCategory::Overall, &id).unwrap();
        let (page, _) = rankings_page(
            &second,
            &RankingQuery {
                limit: 50,
                ..Default::default()
            },
            0,
            &cfg,
        );
        let line = page.iter().find(|r| r.provider_id == id).unwrap();
        assert!(line.rank < before);
        assert_eq!(
            line.rank_change,
            Some(i64::from(before) - i64::from(line.rank))
        );
    }

    /// The ranking sorts by one integer key a score: the order `f64::total_cmp` gives, NaNs,
    /// infinities and signed zeros included.
    #[test]
    fn score_keys_order_as_total_cmp() {
        let mut xs = vec![
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            1e-310,
            -1e-310,
        ];
        xs.extend((0..200).map(|i| ((i * 7919) % 1000) as f64 / 7.0 - 70.0));
        let mut by_cmp = xs.clone();
        by_cmp.sort_by(f64::total_cmp);
        let mut by_key = xs;
        by_key.sort_by_key(|x| total_order_key(*x));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&by_key), bits(&by_cmp));
    }

    /// The cycle merges the shards' lists into one sorted by id (a list out of order too, as
    /// an older node sends it) and continues each provider's tier from the previous cycle:
    /// the walk over both sorted lists finds the tiers a lookup by id would.
    #[test]
    fn cycle_merges_shards_by_id_and_continues_tiers_from_the_previous_cycle() {
        let cfg = AnalyticsConfig::default();
        let mut all = summaries(600);
        // half the ids share their first 16 bytes, where the keys the merge orders by tie
        for (i, s) in all.iter_mut().enumerate().filter(|(i, _)| i % 2 == 0) {
            s.id = ProviderId::new(format!("operator-000000000-{i:04}"));
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        // the previous cycle knew every third provider, and some that have left since
        let mut before: Vec<ProviderSummary> = all.iter().step_by(3).cloned().collect();
        before.extend((0..40).map(|i| ProviderSummary {
            id: ProviderId::new(format!("p{:04}x", i * 13)),
            ..Default::default()
        }));
        before.sort_by(|a, b| a.id.cmp(&b.id));
        let tiers = [
            Tier::Platinum,
            Tier::Gold,
            Tier::Silver,
            Tier::Bronze,
            Tier::Basic,
        ];
        for (k, s) in before.iter_mut().enumerate() {
            s.tier = tiers[k % tiers.len()];
        }
        let mut previous = snapshot(before, &cfg);
        previous.cycle = 4;
        // lists sorted and keyed as a shard sends them, and some neither, as an older node's
        let mut shards: Vec<ShardSummaries> = (0..7)
            .map(|k| {
                let mut shard = ShardSummaries {
                    providers: all.iter().skip(k).step_by(7).cloned().collect(),
                    ..Default::default()
                };
                if k % 2 == 0 {
                    shard.sort();
                }
                shard
            })
            .collect();
        shards[3].providers.reverse();
        shards.push(ShardSummaries::default());
        let next = cycle(shards.clone(), &previous, &cfg, 1_000_000, 0);
        assert_eq!(next.id_keys.len(), next.summaries.len());
        // a cycle after it walks its keys: the same tiers as from the unkeyed previous
        let mut unkeyed = next.clone();
        unkeyed.id_keys.clear();
        let after = cycle(shards.clone(), &next, &cfg, 1_000_000, 0);
        let after_unkeyed = cycle(shards.clone(), &unkeyed, &cfg, 1_000_000, 0);
        // and from the tiers it keeps beside the keys, or from the summaries without them
        assert_eq!(next.tiers.len(), next.summaries.len());
        let mut untiered = next.clone();
        untiered.tiers.clear();
        let after_untiered = cycle(shards, &untiered, &cfg, 1_000_000, 0);
        let tiers = |s: &AnalyticsSnapshot| s.summaries.iter().map(|s| s.tier).collect::<Vec<_>>();
        assert_eq!(tiers(&after), tiers(&after_unkeyed));
        assert_eq!(tiers(&after), tiers(&after_untiered));
        assert_eq!(after.tiers, tiers(&after));
        let ids: Vec<&str> = next.summaries.iter().map(|s| s.id.as_str()).collect();
        let want: Vec<&str> = all.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, want);
        let (mut carried, mut kept) = (0, 0);
        for s in &next.summaries {
            let prev = previous.tier_of(&s.id);
            carried += usize::from(prev.is_some());
            let fresh = next.cutoffs.tier_with_hysteresis(
                f64::from(s.performance_score),
                None,
                cfg.tier_hysteresis_points,
            );
            let tier = next.cutoffs.tier_with_hysteresis(
                f64::from(s.performance_score),
                prev,
                cfg.tier_hysteresis_points,
            );
            assert_eq!(s.tier, tier, "{}", s.id.as_str());
            kept += usize::from(tier != fresh);
        }
        assert_eq!(carried, 200);
        // some providers kept a previous tier their score alone would not give them
        assert!(kept > 0, "no tier depended on the previous cycle");
    }

    /// A shard finds its providers' previous tiers by galloping through the snapshot's
    /// sorted keys: the tiers a lookup by id gives, with ids that share their first 16
    /// bytes, and none for a provider the snapshot did not know.
    #[test]
    fn a_shard_walks_the_snapshot_for_its_providers_previous_tiers() {
        let cfg = AnalyticsConfig::default();
        let mut all = summaries(600);
        for (i, s) in all.iter_mut().enumerate().filter(|(i, _)| i % 2 == 0) {
            s.id = ProviderId::new(format!("operator-000000000-{i:04}"));
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        // the snapshot knew two providers in three
        let known = ShardSummaries {
            providers: all
                .iter()
                .step_by(3)
                .chain(all.iter().skip(1).step_by(3))
                .cloned()
                .collect(),
            ..Default::default()
        };
        let mut previous = cycle(
            vec![known],
            &AnalyticsSnapshot::default(),
            &cfg,
            1_000_000,
            0,
        );
        // every provider it knew was in the top tier: hysteresis keeps a tier, or one
        // between, for everyone within its margin below a cut-off, long ids and short
        for s in &mut previous.summaries {
            s.tier = Tier::Platinum;
        }
        previous.tiers = vec![Tier::Platinum; previous.summaries.len()];
        assert_eq!(previous.id_keys.len(), 400);
        assert_eq!(previous.tiers.len(), 400);
        let mut unkeyed = previous.clone();
        unkeyed.id_keys.clear();
        let mut untiered = previous.clone();
        untiered.tiers.clear();
        // scores fell a point since: hysteresis keeps some tiers
        for s in &mut all {
            s.performance_score = (s.performance_score - 1.0).max(0.0);
        }
        let (mut found, mut kept) = (0, 0);
        for k in 0..5 {
            let mut shard = ShardSummaries {
                providers: all.iter().skip(k).step_by(5).cloned().collect(),
                ..Default::default()
            };
            // as a shard does it: sorted from no order, the tiers set on the way
            let mut on_the_way = shard.clone();
            on_the_way.providers.reverse();
            let cutoffs = &previous.cutoffs;
            on_the_way.sort_and_tier(Some(TierWalk::new(&previous, cutoffs, &cfg)));
            // and from a list already sorted, against each kind of snapshot
            shard.sort();
            let (mut looked_up, mut from_summaries) = (shard.clone(), shard.clone());
            shard.sort_and_tier(Some(TierWalk::new(&previous, cutoffs, &cfg)));
            looked_up.sort_and_tier(Some(TierWalk::new(&unkeyed, cutoffs, &cfg)));
            from_summaries.sort_and_tier(Some(TierWalk::new(&untiered, cutoffs, &cfg)));
            assert_eq!(on_the_way.keys, shard.keys);
            let all_four = shard
                .providers
                .iter()
                .zip(&looked_up.providers)
                .zip(&from_summaries.providers)
                .zip(&on_the_way.providers);
            for (((s, l), f), w) in all_four {
                assert_eq!(f.tier, l.tier, "{}", s.id.as_str());
                assert_eq!(w.tier, l.tier, "{}", s.id.as_str());
                let score = f64::from(s.performance_score);
                let prev = previous.tier_of(&s.id);
                let margin = cfg.tier_hysteresis_points;
                let want = previous.cutoffs.tier_with_hysteresis(score, prev, margin);
                assert_eq!(s.tier, want, "{}", s.id.as_str());
                assert_eq!(l.tier, want, "{}", s.id.as_str());
                found += usize::from(prev.is_some());
                kept +=
                    usize::from(want != previous.cutoffs.tier_with_hysteresis(score, None, margin));
            }
        }
        assert_eq!(found, 400);
        assert!(kept > 0, "no tier depended on the previous one");
    }

    /// The index finds every id at its position, short ids by key and long ones (sharing
    /// their first 16 bytes) by id, and nothing for ids it does not hold.
    #[test]
    fn the_rank_index_finds_short_ids_by_key_and_long_ids_by_id() {
        let mut all = summaries(300);
        for (i, s) in all.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
            s.id = ProviderId::new(format!("operator-000000000-{i:04}"));
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let keys: Vec<u128> = all.iter().map(|s| id_key(&s.id)).collect();
        for index in [RankIndex::new(&all, &keys), RankIndex::new(&all, &[])] {
            assert_eq!(index.len(), 300);
            for (i, s) in all.iter().enumerate() {
                assert_eq!(index.get(&s.id), Some(i), "{}", s.id.as_str());
            }
            for unknown in [
                "p9999",
                "p00",
                "operator-000000000-9999",
                "operator-000000000",
            ] {
                assert_eq!(index.get(&ProviderId::new(unknown)), None, "{unknown}");
            }
        }
    }
}
