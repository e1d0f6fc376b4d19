//! Network analytics over many compact per-provider summaries.
//!
//! A shard keeps one [`ProviderSummary`] per provider (its ranking and job-matching index)
//! and sends them to the coordinator, which computes [`NetworkAnalytics`] every
//! ANALYTICS_INTERVAL. The utilization forecast by region is deliberately simple (seasonal
//! naive with a daily season, Holt below two days of history); the forecast module can
//! replace [`forecast_series`] later.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analytics::ranking::{Scored, Tier, TierCutoffs, top_k};
use crate::analytics::score::{
    ConfidenceInputs, DecayedSums, NetworkPrior, RateSums, ReliabilityInputs, ScoreDistribution,
    half_life_hours, performance_from_sums,
};
use crate::analytics::state::ProviderState;
use crate::config::AnalyticsConfig;
use crate::model::{HOUR, ProviderId, ProviderSpec, UnixSeconds, hour_of};

/// The compact record a shard keeps per provider and sends to the coordinator: about 80
/// bytes plus the id, region and GPU model strings. Ratios and scores are `f32` because
/// nothing downstream needs more than six digits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderSummary {
    pub id: ProviderId,
    pub region: String,
    /// The GPU model with the most units (mixed-GPU providers are summarised by it).
    pub gpu_model: Option<String>,
    /// Units of `gpu_model`.
    pub gpu_count: u16,
    /// VRAM of one `gpu_model` unit.
    pub vram_gb: f32,
    pub cpu_cores: u32,
    pub memory_gb: f32,
    pub price_per_hour: f32,
    /// Up at its newest heartbeat.
    pub online: bool,
    /// The trend module saw a significant decline.
    pub declining: bool,
    /// An anomaly episode is open now.
    pub anomaly: bool,
    /// Means over the newest hour with samples, as fractions.
    pub cpu_utilization: f32,
    pub gpu_utilization: f32,
    pub memory_utilization: f32,
    pub performance_score: f32,
    pub reliability_score: f32,
    pub uptime_ratio: f32,
    pub response_time_ms: f32,
    /// The composite score recorded 24 hours earlier, for top movers.
    pub score_24h_ago: Option<f32>,
    /// Confidence (0–1) without a job's match quality.
    pub confidence: f32,
    pub data_points: u32,
    pub tier: Tier,
    /// Posterior rates behind the score (for the network prior).
    pub completion_rate: f32,
    pub sla_rate: f32,
    pub error_rate: f32,
    /// Jobs in the window.
    pub jobs_window: u32,
}

impl Default for ProviderSummary {
    fn default() -> Self {
        Self {
            id: ProviderId::new(""),
            region: String::new(),
            gpu_model: None,
            gpu_count: 0,
            vram_gb: 0.0,
            cpu_cores: 0,
            memory_gb: 0.0,
            price_per_hour: 0.0,
            online: false,
            declining: false,
            anomaly: false,
            cpu_utilization: 0.0,
            gpu_utilization: 0.0,
            memory_utilization: 0.0,
            performance_score: 0.0,
            reliability_score: 0.0,
            uptime_ratio: 0.0,
            response_time_ms: 0.0,
            score_24h_ago: None,
            confidence: 0.0,
            data_points: 0,
            tier: Tier::Basic,
            completion_rate: 0.0,
            sla_rate: 0.0,
            error_rate: 0.0,
            jobs_window: 0,
        }
    }
}

/// Signals computed outside this module that a summary carries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SummaryFlags {
    pub declining: bool,
    pub anomaly: bool,
    pub previous_tier: Option<Tier>,
}

/// Summarise a provider's state at `now` (what a shard does each cycle).
pub fn summarize(
    state: &ProviderState,
    cfg: &AnalyticsConfig,
    prior: &NetworkPrior,
    cutoffs: &TierCutoffs,
    flags: &SummaryFlags,
    now: UnixSeconds,
) -> ProviderSummary {
    let basis = SummaryBasis::of(state, cfg, flags.declining);
    let sums = basis
        .sums
        .at(now)
        .unwrap_or_else(|| RateSums::direct(state, now, half_life_hours(cfg)));
    let ago = state
        .window
        .get(hour_of(now) - 24)
        .map(|b| b.score)
        .filter(|s| s.is_finite());
    basis.compose(&sums, ago, cfg, prior, cutoffs, flags, now)
}

/// Hours of recorded scores a [`SummaryBasis`] keeps: the newest bucket's and the 24 before
/// it, what a summary's `score_24h_ago` can read while `now` is within a day of the newest.
const RECENT_SCORES: usize = 25;

/// Everything a provider's summary reads of its state, gathered once: what the state alone
/// decides (spec, counts, trend, the newest utilization), the window's [`DecayedSums`], and
/// the inputs of its reliability and confidence. A summary at any later `now`, under any
/// prior, cut-offs and previous tier, is composed from it in well under a microsecond
/// ([`SummaryBasis::summary`]); [`summarize`] composes through it too, so a parked
/// provider's summary equals the one its live actor would give, to the bit. A parked
/// provider keeps one beside its encoded state (about 0.6 KB), so a coordinator cycle over a
/// parked fleet decodes nothing (session 14).
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryBasis {
    /// The summary's state-only fields; scores, rates, confidence and tier are filled in by
    /// [`SummaryBasis::compose`].
    fixed: ProviderSummary,
    sums: DecayedSums,
    reliability: ReliabilityInputs,
    confidence: ConfidenceInputs,
    measured_uptime: Option<f64>,
    /// Recorded scores of the hours `newest - 24 ..= newest`, oldest first (NaN: none).
    recent_scores: [f32; RECENT_SCORES],
}

impl SummaryBasis {
    /// `declining`: the trend signal of the state (`view::trend_signal`).
    pub fn of(state: &ProviderState, cfg: &AnalyticsConfig, declining: bool) -> Self {
        let no_spec = ProviderSpec::default();
        let spec = state.spec.as_ref().unwrap_or(&no_spec);
        let gpu = spec.primary_gpu();
        let util = state
            .window
            .iter()
            .rev()
            .find(|(_, b)| b.util_count > 0)
            .map(|(_, b)| *b);
        let confidence = ConfidenceInputs::of(state);
        let mut recent_scores = [f32::NAN; RECENT_SCORES];
        if let Some(newest) = state.window.newest_hour() {
            let first = newest - (RECENT_SCORES as i64 - 1);
            for (i, slot) in recent_scores.iter_mut().enumerate() {
                if let Some(b) = state.window.get(first + i as i64) {
                    *slot = b.score;
                }
            }
        }
        Self {
            fixed: ProviderSummary {
                id: state.id.clone(),
                region: spec.region.clone(),
                gpu_model: gpu.map(|g| g.model.clone()),
                gpu_count: gpu.map_or(0, |g| g.count.min(u32::from(u16::MAX)) as u16),
                vram_gb: gpu.map_or(0.0, |g| g.vram_gb as f32),
                cpu_cores: spec.cpu_cores,
                memory_gb: spec.memory_gb as f32,
                price_per_hour: spec.price_per_hour as f32,
                online: state.uptime.up && state.uptime.last_heartbeat.is_some(),
                declining,
                anomaly: false,
                cpu_utilization: util.map_or(0.0, |b| b.cpu() as f32),
                gpu_utilization: util.map_or(0.0, |b| b.gpu() as f32),
                memory_utilization: util.map_or(0.0, |b| b.memory() as f32),
                data_points: confidence.data_points(),
                jobs_window: state.window.iter().map(|(_, b)| b.jobs()).sum(),
                ..ProviderSummary::default()
            },
            sums: DecayedSums::of(state, half_life_hours(cfg)),
            reliability: ReliabilityInputs::of(state),
            confidence,
            measured_uptime: crate::analytics::score::measured_uptime(state),
            recent_scores,
        }
    }

    pub fn id(&self) -> &ProviderId {
        &self.fixed.id
    }

    /// The region of the provider's spec (empty without one).
    pub fn region(&self) -> &str {
        &self.fixed.region
    }

    /// The newest event time of the state (what a summary's `now` is at least).
    pub fn last_seen(&self) -> Option<UnixSeconds> {
        self.confidence.last_seen()
    }

    /// The summary at `now`, as [`summarize`] gives it from the state; `None` when `now` is
    /// before the newest bucket's hour (the caller then summarises the decoded state).
    pub fn summary(
        &self,
        cfg: &AnalyticsConfig,
        prior: &NetworkPrior,
        cutoffs: &TierCutoffs,
        previous_tier: Option<Tier>,
        now: UnixSeconds,
    ) -> Option<ProviderSummary> {
        let sums = self.sums.at(now)?;
        let ago = match self.sums.newest_hour() {
            None => None,
            Some(newest) => {
                let first = newest - (RECENT_SCORES as i64 - 1);
                let hour = hour_of(now) - 24;
                if hour > newest {
                    None
                } else {
                    let i = usize::try_from(hour - first).ok()?;
                    Some(self.recent_scores[i]).filter(|s| s.is_finite())
                }
            }
        };
        let flags = SummaryFlags {
            declining: self.fixed.declining,
            anomaly: false,
            previous_tier,
        };
        Some(self.compose(&sums, ago, cfg, prior, cutoffs, &flags, now))
    }

    #[allow(clippy::too_many_arguments)]
    fn compose(
        &self,
        sums: &RateSums,
        score_24h_ago: Option<f32>,
        cfg: &AnalyticsConfig,
        prior: &NetworkPrior,
        cutoffs: &TierCutoffs,
        flags: &SummaryFlags,
        now: UnixSeconds,
    ) -> ProviderSummary {
        let perf = performance_from_sums(sums, prior, cfg);
        ProviderSummary {
            declining: flags.declining,
            anomaly: flags.anomaly,
            performance_score: perf.composite as f32,
            reliability_score: self.reliability.score(prior) as f32,
            uptime_ratio: self.measured_uptime.unwrap_or(perf.estimates.uptime_ratio) as f32,
            response_time_ms: perf.estimates.response_time_ms as f32,
            score_24h_ago,
            confidence: self.confidence.at(cfg, now, None).overall as f32,
            completion_rate: perf.estimates.completion_rate as f32,
            sla_rate: perf.estimates.sla_rate as f32,
            error_rate: perf.estimates.error_rate as f32,
            tier: cutoffs.tier_with_hysteresis(
                perf.composite,
                flags.previous_tier,
                cfg.tier_hysteresis_points,
            ),
            ..self.fixed.clone()
        }
    }
}

/// Installed capacity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpu_cores: u64,
    pub memory_gb: f64,
    pub gpus: u64,
    /// GPU units by model, sorted by model name.
    pub gpus_by_model: BTreeMap<String, u64>,
}

/// Capacity-weighted mean utilization of online providers, as fractions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Utilization {
    pub cpu: f64,
    pub gpu: f64,
    pub memory: f64,
}

/// One region's share of the network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionAnalytics {
    pub region: String,
    pub providers: u64,
    pub online: u64,
    pub capacity: Capacity,
    pub utilization: Utilization,
    pub online_cpu_cores: u64,
    pub online_gpus: u64,
    /// Online capacity not in use now.
    pub free_cpu_cores: f64,
    pub free_gpus: f64,
}

/// Mean, spread, percentiles and a histogram of the composite scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreStats {
    pub count: u64,
    pub mean: f64,
    pub std: f64,
    pub p10: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p99: f64,
    /// Ten bins of width 10: [0, 10), …, [90, 100].
    pub histogram: Vec<u64>,
    /// The 101-point sketch nodes use for percentiles and tier cut-offs.
    pub distribution: ScoreDistribution,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TierCounts {
    pub platinum: u64,
    pub gold: u64,
    pub silver: u64,
    pub bronze: u64,
    pub basic: u64,
}

/// A provider whose score moved the most over 24 hours.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mover {
    pub provider_id: ProviderId,
    pub score: f64,
    pub score_24h_ago: f64,
    pub change: f64,
}

/// Hourly utilization of one region, oldest first, as the coordinator accumulates it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionUtilizationSeries {
    pub region: String,
    /// Epoch hour of the last element.
    pub last_hour: i64,
    pub cpu: Vec<f64>,
    pub gpu: Vec<f64>,
}

/// One forecast hour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastPoint {
    /// Start of the forecast hour (event time).
    pub at: UnixSeconds,
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
}

/// Which simple method produced a forecast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForecastMethod {
    /// Same hour yesterday (48+ hours of history).
    SeasonalNaive,
    /// Holt's linear trend (3+ hours).
    Holt,
    /// The last value (fewer).
    Last,
    /// No history at all.
    None,
}

/// Forecast utilization and free capacity of one region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionForecast {
    pub region: String,
    pub method: ForecastMethod,
    pub cpu_utilization: Vec<ForecastPoint>,
    pub gpu_utilization: Vec<ForecastPoint>,
    /// Online CPU cores × (1 − forecast CPU utilization), per hour.
    pub free_cpu_cores: Vec<f64>,
    pub free_gpus: Vec<f64>,
}

/// The network at one coordinator cycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkAnalytics {
    pub computed_at: UnixSeconds,
    pub provider_count: u64,
    pub online_count: u64,
    pub online_share: f64,
    pub capacity: Capacity,
    pub utilization: Utilization,
    /// Sorted by region name.
    pub regions: Vec<RegionAnalytics>,
    pub scores: ScoreStats,
    pub tier_counts: TierCounts,
    /// Largest absolute 24-hour score change first.
    pub top_movers: Vec<Mover>,
    pub forecasts: Vec<RegionForecast>,
}

/// Accumulates capacity-weighted utilization.
#[derive(Default)]
struct UtilAcc {
    cpu: (f64, f64),
    gpu: (f64, f64),
    mem: (f64, f64),
}

impl UtilAcc {
    fn add(&mut self, s: &ProviderSummary) {
        let f = |x: f32| f64::from(x).clamp(0.0, 1.0);
        let cores = f64::from(s.cpu_cores);
        let gpus = f64::from(s.gpu_count);
        let mem = f64::from(s.memory_gb).max(0.0);
        self.cpu.0 += cores * f(s.cpu_utilization);
        self.cpu.1 += cores;
        self.gpu.0 += gpus * f(s.gpu_utilization);
        self.gpu.1 += gpus;
        self.mem.0 += mem * f(s.memory_utilization);
        self.mem.1 += mem;
    }

    fn get(&self) -> Utilization {
        let m = |(a, b): (f64, f64)| if b > 0.0 && a.is_finite() { a / b } else { 0.0 };
        Utilization {
            cpu: m(self.cpu),
            gpu: m(self.gpu),
            memory: m(self.mem),
        }
    }
}

fn add_capacity(c: &mut Capacity, s: &ProviderSummary) {
    c.cpu_cores += u64::from(s.cpu_cores);
    let mem = f64::from(s.memory_gb);
    if mem.is_finite() {
        c.memory_gb += mem.max(0.0);
    }
    c.gpus += u64::from(s.gpu_count);
    if let Some(m) = s.gpu_model.as_ref().filter(|_| s.gpu_count > 0) {
        // the model's name is copied only the first time it is seen (a copy per provider
        // was two allocations per GPU provider per cycle)
        match c.gpus_by_model.get_mut(m.as_str()) {
            Some(n) => *n += u64::from(s.gpu_count),
            None => {
                c.gpus_by_model.insert(m.clone(), u64::from(s.gpu_count));
            }
        }
    }
}

/// Score statistics of a sample of composite scores.
pub fn score_stats(scores: &mut Vec<f64>) -> ScoreStats {
    let distribution = ScoreDistribution::from_scores(scores);
    let n = scores.len();
    let mean = if n == 0 {
        0.0
    } else {
        scores.iter().sum::<f64>() / n as f64
    };
    let var = if n == 0 {
        0.0
    } else {
        scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n as f64
    };
    let mut histogram = vec![0u64; 10];
    for s in scores.iter() {
        histogram[((s.clamp(0.0, 100.0) / 10.0) as usize).min(9)] += 1;
    }
    let q = |p| distribution.quantile(p).unwrap_or(0.0);
    ScoreStats {
        count: n as u64,
        mean,
        std: var.sqrt(),
        p10: q(10.0),
        p25: q(25.0),
        p50: q(50.0),
        p75: q(75.0),
        p90: q(90.0),
        p99: q(99.0),
        histogram,
        distribution,
    }
}

/// Forecast `horizon` hours of a series of fractions, with intervals at `level`
/// (a normal approximation). Seasonal naive (period 24) with 48+ points, its residual
/// spread from the in-sample seasonal differences widening with each season ahead; Holt
/// (α 0.5, β 0.1) with 3+ points; otherwise the last value.
pub fn forecast_series(
    series: &[f64],
    horizon: usize,
    level: f64,
) -> (ForecastMethod, Vec<(f64, f64, f64)>) {
    let y: Vec<f64> = series
        .iter()
        .map(|x| {
            if x.is_finite() {
                x.clamp(0.0, 1.0)
            } else {
                0.0
            }
        })
        .collect();
    let z = normal_quantile(0.5 + level.clamp(0.5, 0.999) / 2.0);
    let clamp3 = |v: f64, s: f64| {
        (
            v.clamp(0.0, 1.0),
            (v - z * s).clamp(0.0, 1.0),
            (v + z * s).clamp(0.0, 1.0),
        )
    };
    let n = y.len();
    if n == 0 {
        return (ForecastMethod::None, Vec::new());
    }
    if n >= 48 {
        const P: usize = 24;
        let diffs: Vec<f64> = (P..n).map(|t| y[t] - y[t - P]).collect();
        let sigma = (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt();
        let out = (1..=horizon)
            .map(|h| {
                let seasons = h.div_ceil(P);
                // the last observed season repeats: same hour of the newest day
                let v = y[n - P + (h - 1) % P];
                clamp3(v, sigma * (seasons as f64).sqrt())
            })
            .collect();
        return (ForecastMethod::SeasonalNaive, out);
    }
    if n >= 3 {
        let (alpha, beta) = (0.5, 0.1);
        let (mut level, mut trend) = (y[0], y[1] - y[0]);
        let mut sse = 0.0;
        for &x in &y[1..] {
            let pred = level + trend;
            sse += (x - pred).powi(2);
            let new_level = alpha * x + (1.0 - alpha) * pred;
            trend = beta * (new_level - level) + (1.0 - beta) * trend;
            level = new_level;
        }
        let sigma = (sse / (n - 1) as f64).sqrt();
        let out = (1..=horizon)
            .map(|h| clamp3(level + h as f64 * trend, sigma * (h as f64).sqrt()))
            .collect();
        return (ForecastMethod::Holt, out);
    }
    let last = y[n - 1];
    (
        ForecastMethod::Last,
        (0..horizon).map(|_| clamp3(last, 0.0)).collect(),
    )
}

/// Quantile of the standard normal.
fn normal_quantile(p: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    Normal::standard().inverse_cdf(p.clamp(1e-9, 1.0 - 1e-9))
}

/// Network analytics over all summaries at `now`: counts, capacity, utilization by
/// resource and region, score distribution, tier counts, the `movers` biggest movers, and
/// a forecast by region over the configured horizon.
pub fn network_analytics(
    summaries: &[ProviderSummary],
    series: &[RegionUtilizationSeries],
    cfg: &AnalyticsConfig,
    movers: usize,
    now: UnixSeconds,
) -> NetworkAnalytics {
    let mut capacity = Capacity::default();
    let mut util = UtilAcc::default();
    let mut regions: BTreeMap<&str, (RegionAnalytics, UtilAcc)> = BTreeMap::new();
    let mut tiers = TierCounts::default();
    let mut scores = Vec::with_capacity(summaries.len());
    let mut online = 0u64;
    for s in summaries {
        add_capacity(&mut capacity, s);
        let (r, racc) = regions.entry(s.region.as_str()).or_insert_with(|| {
            (
                RegionAnalytics {
                    region: s.region.clone(),
                    ..Default::default()
                },
                UtilAcc::default(),
            )
        });
        r.providers += 1;
        add_capacity(&mut r.capacity, s);
        if s.online {
            online += 1;
            r.online += 1;
            r.online_cpu_cores += u64::from(s.cpu_cores);
            r.online_gpus += u64::from(s.gpu_count);
            util.add(s);
            racc.add(s);
            let free = |x: f32| 1.0 - f64::from(x).clamp(0.0, 1.0);
            r.free_cpu_cores += f64::from(s.cpu_cores) * free(s.cpu_utilization);
            r.free_gpus += f64::from(s.gpu_count) * free(s.gpu_utilization);
        }
        match s.tier {
            Tier::Platinum => tiers.platinum += 1,
            Tier::Gold => tiers.gold += 1,
            Tier::Silver => tiers.silver += 1,
            Tier::Bronze => tiers.bronze += 1,
            Tier::Basic => tiers.basic += 1,
        }
        scores.push(f64::from(s.performance_score));
    }
    let regions: Vec<RegionAnalytics> = regions
        .into_values()
        .map(|(mut r, acc)| {
            r.utilization = acc.get();
            r
        })
        .collect();
    let top_movers = top_k(
        summaries.iter().enumerate().filter_map(|(i, s)| {
            let change = f64::from(s.performance_score) - f64::from(s.score_24h_ago?);
            change.is_finite().then_some(Scored {
                score: change.abs(),
                id: (&s.id, i),
            })
        }),
        movers,
    )
    .into_iter()
    .map(|m| {
        let s = &summaries[m.id.1];
        let (now_score, ago) = (
            f64::from(s.performance_score),
            f64::from(s.score_24h_ago.unwrap_or(0.0)),
        );
        Mover {
            provider_id: s.id.clone(),
            score: now_score,
            score_24h_ago: ago,
            change: now_score - ago,
        }
    })
    .collect();
    let horizon = cfg.forecasting.horizon_hours as usize;
    let level = cfg.forecasting.interval_level;
    let forecasts = series
        .iter()
        .map(|s| {
            let region = regions.iter().find(|r| r.region == s.region);
            let (cores, gpus) = region.map_or((0.0, 0.0), |r| {
                (r.online_cpu_cores as f64, r.online_gpus as f64)
            });
            let (method, cpu) = forecast_series(&s.cpu, horizon, level);
            let (_, gpu) = forecast_series(&s.gpu, horizon, level);
            let point = |h: usize, (v, lo, hi): (f64, f64, f64)| ForecastPoint {
                at: (s.last_hour + 1 + h as i64) * HOUR,
                value: v,
                lower: lo,
                upper: hi,
            };
            RegionForecast {
                region: s.region.clone(),
                method,
                free_cpu_cores: cpu.iter().map(|p| cores * (1.0 - p.0)).collect(),
                free_gpus: gpu.iter().map(|p| gpus * (1.0 - p.0)).collect(),
                cpu_utilization: cpu
                    .into_iter()
                    .enumerate()
                    .map(|(h, p)| point(h, p))
                    .collect(),
                gpu_utilization: gpu
                    .into_iter()
                    .enumerate()
                    .map(|(h, p)| point(h, p))
                    .collect(),
            }
        })
        .collect();
    let n = summaries.len() as u64;
    NetworkAnalytics {
        computed_at: now,
        provider_count: n,
        online_count: online,
        online_share: if n == 0 {
            0.0
        } else {
            online as f64 / n as f64
        },
        capacity,
        utilization: util.get(),
        regions,
        scores: score_stats(&mut scores),
        tier_counts: tiers,
        top_movers,
        forecasts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::state::StateParams;
    use crate::model::{
        EventPayload, GpuSpec, Heartbeat, HeartbeatStatus, ProviderSpec, TelemetryEvent,
    };

    fn fleet() -> Vec<ProviderSummary> {
        let a = ProviderSummary {
            id: ProviderId::new("a"),
            region: "eu".into(),
            online: true,
            cpu_cores: 8,
            memory_gb: 32.0,
            gpu_model: Some("A100".into()),
            gpu_count: 2,
            cpu_utilization: 0.5,
            gpu_utilization: 0.25,
            memory_utilization: 0.5,
            performance_score: 90.0,
            score_24h_ago: Some(80.0),
            tier: Tier::Gold,
            ..Default::default()
        };
        let b = ProviderSummary {
            id: ProviderId::new("b"),
            region: "eu".into(),
            online: false,
            cpu_cores: 16,
            memory_gb: 64.0,
            cpu_utilization: 1.0,
            performance_score: 60.0,
            score_24h_ago: Some(70.0),
            ..Default::default()
        };
        let c = ProviderSummary {
            id: ProviderId::new("c"),
            region: "us".into(),
            online: true,
            cpu_cores: 24,
            memory_gb: 96.0,
            gpu_model: Some("H100".into()),
            gpu_count: 4,
            cpu_utilization: 0.25,
            gpu_utilization: 1.0,
            memory_utilization: 0.25,
            performance_score: 75.0,
            tier: Tier::Silver,
            ..Default::default()
        };
        vec![a, b, c]
    }

    #[test]
    fn counts_capacity_and_utilization_by_hand() {
        let n = network_analytics(&fleet(), &[], &AnalyticsConfig::default(), 5, 1000);
        assert_eq!((n.provider_count, n.online_count), (3, 2));
        assert!((n.online_share - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(n.capacity.cpu_cores, 48);
        assert_eq!(n.capacity.memory_gb, 192.0);
        assert_eq!(n.capacity.gpus, 6);
        assert_eq!(n.capacity.gpus_by_model.get("H100"), Some(&4));
        // capacity-weighted over online providers: cpu (8·0.5 + 24·0.25)/32,
        // gpu (2·0.25 + 4·1)/6, memory (32·0.5 + 96·0.25)/128
        assert!((n.utilization.cpu - 0.3125).abs() < 1e-12);
        assert!((n.utilization.gpu - 0.75).abs() < 1e-12);
        assert!((n.utilization.memory - 0.3125).abs() < 1e-12);
        let eu = &n.regions[0];
        assert_eq!((eu.region.as_str(), eu.providers, eu.online), ("eu", 2, 1));
        assert_eq!((eu.free_cpu_cores, eu.free_gpus), (4.0, 1.5));
        assert_eq!(n.regions[1].free_cpu_cores, 18.0);
        assert_eq!(n.scores.mean, 75.0);
        assert!((n.scores.std - 150f64.sqrt()).abs() < 1e-12);
        assert_eq!(n.scores.p50, 75.0);
        assert_eq!(n.scores.histogram, vec![0, 0, 0, 0, 0, 0, 1, 1, 0, 1]);
        assert_eq!(
            n.tier_counts,
            TierCounts {
                gold: 1,
                silver: 1,
                basic: 1,
                ..Default::default()
            }
        );
        // a +10 and b −10 tie on size; the smaller id comes first
        let movers: Vec<_> = n
            .top_movers
            .iter()
            .map(|m| (m.provider_id.as_str(), m.change))
            .collect();
        assert_eq!(movers, vec![("a", 10.0), ("b", -10.0)]);
    }

    #[test]
    fn empty_network_is_all_zeros() {
        let n = network_analytics(&[], &[], &AnalyticsConfig::default(), 5, 0);
        assert_eq!(n.provider_count, 0);
        assert_eq!(n.online_share, 0.0);
        assert_eq!(n.scores.mean, 0.0);
        assert!(n.top_movers.is_empty());
    }

    #[test]
    fn forecast_methods_by_hand() {
        // day one at 0.5, day two at 0.6: seasonal differences all 0.1 → σ = 0.1
        let y: Vec<f64> = (0..48).map(|t| if t < 24 { 0.5 } else { 0.6 }).collect();
        let (m, f) = forecast_series(&y, 30, 0.95);
        assert_eq!(m, ForecastMethod::SeasonalNaive);
        assert_eq!(f.len(), 30);
        assert!((f[0].0 - 0.6).abs() < 1e-12);
        assert!((f[0].1 - (0.6 - 1.959964 * 0.1)).abs() < 1e-6);
        assert!((f[0].2 - (0.6 + 1.959964 * 0.1)).abs() < 1e-6);
        // the second day ahead repeats the same season, with σ·√2
        assert!((f[24].0 - 0.6).abs() < 1e-12);
        assert!((f[24].2 - (0.6 + 1.959964 * 0.1 * 2f64.sqrt())).abs() < 1e-6);
        let daily: Vec<f64> = (0..48).map(|t| f64::from(t % 24) / 24.0).collect();
        let (_, f) = forecast_series(&daily, 2, 0.95);
        assert_eq!((f[0].0, f[1].0), (0.0, 1.0 / 24.0));
        // a straight line: Holt tracks it exactly
        let (m, f) = forecast_series(&[0.1, 0.2, 0.3, 0.4], 2, 0.95);
        assert_eq!(m, ForecastMethod::Holt);
        assert!((f[0].0 - 0.5).abs() < 1e-12 && (f[1].0 - 0.6).abs() < 1e-12);
        assert_eq!(
            forecast_series(&[0.3], 2, 0.95),
            (ForecastMethod::Last, vec![(0.3, 0.3, 0.3); 2])
        );
        assert_eq!(forecast_series(&[], 2, 0.95).0, ForecastMethod::None);
    }

    #[test]
    fn region_forecast_turns_utilization_into_free_capacity() {
        let series = RegionUtilizationSeries {
            region: "us".into(),
            last_hour: 10,
            cpu: vec![0.25; 3],
            gpu: vec![0.5; 3],
        };
        let cfg = AnalyticsConfig::default();
        let n = network_analytics(&fleet(), &[series], &cfg, 0, 0);
        let f = &n.forecasts[0];
        assert_eq!(f.cpu_utilization.len(), 24);
        assert_eq!(f.cpu_utilization[0].at, 11 * HOUR);
        // 24 online cores at 25 %, 4 GPUs at 50 %
        assert!((f.free_cpu_cores[0] - 18.0).abs() < 1e-12);
        assert!((f.free_gpus[5] - 2.0).abs() < 1e-12);
    }

    #[test]
    fn summarize_reads_the_state() {
        let p = StateParams::default();
        let mut s = ProviderState::new("p".into(), &p);
        let t0 = 1_700_000_000 - 1_700_000_000 % HOUR;
        let spec = ProviderSpec {
            region: "eu".into(),
            cpu_cores: 16,
            memory_gb: 64.0,
            gpus: vec![GpuSpec {
                model: "A100".into(),
                count: 4,
                vram_gb: 80.0,
            }],
            storage_gb: 1000.0,
            price_per_hour: 9.5,
        };
        let ev = |id: &str, payload| TelemetryEvent {
            event_id: id.into(),
            provider_id: "p".into(),
            timestamp: t0,
            payload,
        };
        s.apply(&ev("s", EventPayload::Spec(Box::new(spec))), t0, &p)
            .unwrap();
        s.apply(
            &ev(
                "h",
                EventPayload::Heartbeat(Heartbeat {
                    status: HeartbeatStatus::Online,
                }),
            ),
            t0,
            &p,
        )
        .unwrap();
        let sum = summarize(
            &s,
            &AnalyticsConfig::default(),
            &NetworkPrior::default(),
            &TierCutoffs::default(),
            &SummaryFlags::default(),
            t0,
        );
        assert_eq!(sum.region, "eu");
        assert_eq!(
            (sum.gpu_model.as_deref(), sum.gpu_count, sum.vram_gb),
            (Some("A100"), 4, 80.0)
        );
        assert!(sum.online);
        assert_eq!(sum.price_per_hour, 9.5);
        assert_eq!(sum.data_points, 0);
        assert_eq!(sum.score_24h_ago, None);
    }

    /// Simulated providers after `hours`, each closed hour scored as the actor does.
    fn simulated(providers: usize, hours: u32, cfg: &AnalyticsConfig) -> Vec<ProviderState> {
        let params = StateParams {
            window_hours: cfg.window_hours(),
            ..StateParams::default()
        };
        let fleet = crate::sim::Fleet::new(crate::sim::FleetConfig {
            providers,
            hours,
            ..Default::default()
        });
        let empty = crate::analytics::view::AnalyticsSnapshot::default();
        let mut buf = Vec::new();
        (0..providers)
            .map(|i| {
                let mut s = ProviderState::new(fleet.providers()[i].id.clone(), &params);
                for h in 0..hours {
                    buf.clear();
                    fleet.generate_provider_hour(i, h, &mut buf);
                    for ev in &buf {
                        s.apply(ev, ev.timestamp, &params).unwrap();
                    }
                    let hour = hour_of(fleet.hour_start(h));
                    crate::analytics::view::record_hour_score(&mut s, hour, &empty, cfg);
                }
                s
            })
            .collect()
    }

    /// What a parked provider's summary is composed from gives, at any later `now` and
    /// under any prior, cut-offs and previous tier, the summary its state gives — to the
    /// bit, so a parked provider ranks exactly as it would live — and declines before the
    /// newest hour, where the state must be read.
    #[test]
    fn a_summary_from_the_basis_is_the_summary_from_the_state() {
        let cfg = AnalyticsConfig::default();
        let priors = [
            NetworkPrior::default(),
            NetworkPrior {
                completion_rate: 0.6,
                uptime_ratio: 0.8,
                median_response_time_ms: 420.0,
                ..NetworkPrior::default()
            },
        ];
        let cutoffs = TierCutoffs {
            platinum: 80.0,
            gold: 70.0,
            silver: 60.0,
            bronze: 50.0,
        };
        let mut compared = 0;
        for hours in [3, 30] {
            for state in simulated(10, hours, &cfg) {
                let newest = state.window.newest_hour().expect("simulated hours") * HOUR;
                let declining = crate::analytics::view::trend_signal(&state).declining;
                let basis = SummaryBasis::of(&state, &cfg, declining);
                assert_eq!(
                    basis.summary(&cfg, &priors[0], &cutoffs, None, newest - 1),
                    None
                );
                for offset in [
                    0,
                    1,
                    1799,
                    1800,
                    1801,
                    3599,
                    3600,
                    7 * HOUR + 11,
                    24 * HOUR,
                    25 * HOUR,
                    400 * HOUR,
                ] {
                    for prior in &priors {
                        for previous_tier in [None, Some(Tier::Gold), Some(Tier::Basic)] {
                            let now = newest + offset;
                            let flags = SummaryFlags {
                                declining,
                                anomaly: false,
                                previous_tier,
                            };
                            let from_state = summarize(&state, &cfg, prior, &cutoffs, &flags, now);
                            let from_basis =
                                basis.summary(&cfg, prior, &cutoffs, previous_tier, now);
                            assert_eq!(
                                from_basis.as_ref(),
                                Some(&from_state),
                                "{} at +{offset} s",
                                state.id
                            );
                            compared += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(compared, 2 * 10 * 11 * 2 * 3);
    }

    /// The window's decayed sums, brought to `now` by one common factor, agree with every
    /// bucket weighed on its own (the definition) within rounding.
    #[test]
    fn decayed_sums_agree_with_weighing_every_bucket() {
        let cfg = AnalyticsConfig::default();
        let prior = NetworkPrior::default();
        let half_life = half_life_hours(&cfg);
        for state in simulated(10, 48, &cfg) {
            let newest = state.window.newest_hour().unwrap() * HOUR;
            let sums = DecayedSums::of(&state, half_life);
            for offset in [0, 1800, 5000, 30 * HOUR, 300 * HOUR] {
                let now = newest + offset;
                let by_factor = performance_from_sums(&sums.at(now).unwrap(), &prior, &cfg);
                let each =
                    performance_from_sums(&RateSums::direct(&state, now, half_life), &prior, &cfg);
                let (a, b) = (by_factor.estimates, each.estimates);
                for (x, y) in [
                    (a.completion_rate, b.completion_rate),
                    (a.sla_rate, b.sla_rate),
                    (a.error_rate, b.error_rate),
                    (a.uptime_ratio, b.uptime_ratio),
                    (a.response_time_ms, b.response_time_ms),
                    (a.utilization, b.utilization),
                    (a.effective_jobs, b.effective_jobs),
                    (by_factor.composite, each.composite),
                ] {
                    assert!(
                        (x - y).abs() <= 1e-9 * y.abs().max(1.0),
                        "{} at +{offset} s: {x} vs {y}",
                        state.id
                    );
                }
            }
        }
    }
}
