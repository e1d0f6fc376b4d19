//! Performance score, Bayesian rates, reliability, confidence, risk factors and the
//! provider profile.
//!
//! Every function reads a [`ProviderState`] (buckets and counters, never raw events) at an
//! event time `now` and never returns NaN: a provider without data gets the network prior.
//!
//! Rates are beta-posterior means: the prior is the network mean ([`NetworkPrior`]) worth
//! `prior_strength` pseudo-observations, the counts come from the window's hourly buckets,
//! each weighted by `2^(-age / decay_half_life)`. So 3 successes out of 3 sit close to the
//! prior, while 2,970 out of 3,000 sit close to 0.99.

use serde::{Deserialize, Serialize};

use crate::analytics::ranking::{Tier, TierCutoffs};
use crate::analytics::state::{HourBucket, ProviderState};
use crate::config::{AnalyticsConfig, PerformanceWeights};
use crate::model::{HOUR, ProviderId, UnixSeconds};

/// Data older than this (event time since the provider's newest event) counts as stale;
/// freshness halves with every such period.
pub const STALE_AFTER_SECONDS: i64 = 6 * HOUR;

/// Hourly-score standard deviation (points) at which consistency drops to one half.
const CONSISTENCY_STD_POINTS: f64 = 10.0;

/// Network-wide means and medians the coordinator publishes; the prior of every Bayesian
/// estimate and the reference of the relative scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkPrior {
    /// Completed / (completed + failed + timed out), network mean.
    pub completion_rate: f64,
    /// SLA met / jobs with an SLA verdict, network mean.
    pub sla_rate: f64,
    /// Errors per operation (job or response), network mean.
    pub error_rate: f64,
    /// Share of observed time up, network mean.
    pub uptime_ratio: f64,
    /// Median response time across the network (ms).
    pub median_response_time_ms: f64,
    /// Median of max(CPU, GPU) utilization across the network, as a fraction.
    pub median_utilization: f64,
    /// Mean time between failures assumed for a provider with no failure yet (hours).
    pub mtbf_hours: f64,
    /// Mean time to repair assumed for a provider with no repair yet (hours).
    pub mttr_hours: f64,
}

impl Default for NetworkPrior {
    /// Values for a fresh network: a decent but unproven provider.
    fn default() -> Self {
        Self {
            completion_rate: 0.95,
            sla_rate: 0.95,
            error_rate: 0.02,
            uptime_ratio: 0.98,
            median_response_time_ms: 250.0,
            median_utilization: 0.5,
            mtbf_hours: 168.0,
            mttr_hours: 0.5,
        }
    }
}

impl NetworkPrior {
    /// A copy with every field finite and in range (a bad published prior falls back to the
    /// default field by field rather than poisoning every score).
    pub fn sanitized(&self) -> Self {
        let d = Self::default();
        let unit = |x: f64, dflt: f64| {
            if x.is_finite() {
                x.clamp(0.0, 1.0)
            } else {
                dflt
            }
        };
        let pos = |x: f64, dflt: f64| if x.is_finite() && x > 0.0 { x } else { dflt };
        Self {
            completion_rate: unit(self.completion_rate, d.completion_rate),
            sla_rate: unit(self.sla_rate, d.sla_rate),
            error_rate: unit(self.error_rate, d.error_rate),
            uptime_ratio: unit(self.uptime_ratio, d.uptime_ratio),
            median_response_time_ms: pos(self.median_response_time_ms, d.median_response_time_ms),
            median_utilization: unit(self.median_utilization, d.median_utilization),
            mtbf_hours: pos(self.mtbf_hours, d.mtbf_hours),
            mttr_hours: pos(self.mttr_hours, d.mttr_hours),
        }
    }
}

/// The posterior estimates behind the component scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateEstimates {
    pub completion_rate: f64,
    pub sla_rate: f64,
    pub error_rate: f64,
    pub uptime_ratio: f64,
    pub response_time_ms: f64,
    /// Mean of max(CPU, GPU) utilization per hour, as a fraction.
    pub utilization: f64,
    /// Decay-weighted count of decided jobs (completed, failed, timed out) behind the rates.
    pub effective_jobs: f64,
}

/// The six component scores, each in [0, 100].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComponentScores {
    pub completion_rate: f64,
    pub efficiency: f64,
    pub uptime: f64,
    pub response_time: f64,
    pub sla_compliance: f64,
    pub error_rate: f64,
}

impl ComponentScores {
    /// The weighted sum, normalised by the weights' total so a slightly-off sum still yields
    /// a score in [0, 100].
    pub fn composite(&self, w: &PerformanceWeights) -> f64 {
        let pairs = [
            (self.completion_rate, w.completion_rate),
            (self.efficiency, w.efficiency),
            (self.uptime, w.uptime),
            (self.response_time, w.response_time),
            (self.sla_compliance, w.sla_compliance),
            (self.error_rate, w.error_rate),
        ];
        let total: f64 = pairs
            .iter()
            .map(|(_, w)| w.max(0.0))
            .filter(|w| w.is_finite())
            .sum();
        if total <= 0.0 {
            return clamp_score(pairs.iter().map(|(s, _)| s).sum::<f64>() / 6.0);
        }
        let sum: f64 = pairs
            .iter()
            .filter(|(_, w)| w.is_finite())
            .map(|(s, w)| s * w.max(0.0))
            .sum();
        clamp_score(sum / total)
    }
}

/// Component scores, their composite and the estimates behind them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerformanceScore {
    pub components: ComponentScores,
    pub composite: f64,
    pub estimates: RateEstimates,
}

/// Clamp to [0, 100]; NaN becomes 0 so no score can ever be NaN.
pub fn clamp_score(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 100.0) }
}

/// `100 / (1 + (ratio / midpoint)²)`: a logistic in log(ratio), 50 at `midpoint`, 100 at
/// ratio 0. Used for response time and price against a network median. (A square, not a
/// `pow`: a recommendation prices thousands of candidates.)
pub fn relative_score(ratio: f64, midpoint: f64) -> f64 {
    if ratio.is_nan() {
        return 0.0;
    }
    let q = ratio.max(0.0) / midpoint;
    clamp_score(100.0 / (1.0 + q * q))
}

/// Response time against the network median: 50 at three times the median, 90 at the
/// median, 97 at half of it.
pub fn response_time_score(response_time_ms: f64, median_ms: f64) -> f64 {
    let median = if median_ms.is_finite() && median_ms > 0.0 {
        median_ms
    } else {
        250.0
    };
    relative_score(response_time_ms / median, 3.0)
}

/// Uptime ratio to score: `100·u^4`, because uptimes crowd near 1 (99 % → 96, 95 % → 81,
/// 90 % → 66).
pub fn uptime_score(ratio: f64) -> f64 {
    clamp_score(100.0 * ratio.clamp(0.0, 1.0).powi(4))
}

/// Error rate to score: `100·exp(-10·rate)`, each percent of errors costs about a tenth.
pub fn error_rate_score(rate: f64) -> f64 {
    clamp_score(100.0 * (-10.0 * rate.clamp(0.0, 1.0)).exp())
}

/// Resource efficiency from the mean of max(CPU, GPU) utilization: 100 in the healthy band
/// 55–85 %, rising linearly from 40 at idle (capacity wasted) and falling to 50 at 100 %
/// (saturation slows jobs).
pub fn efficiency_score(utilization: f64) -> f64 {
    let u = if utilization.is_nan() {
        0.0
    } else {
        utilization.clamp(0.0, 1.0)
    };
    let s = if u < 0.55 {
        40.0 + 60.0 * u / 0.55
    } else if u <= 0.85 {
        100.0
    } else {
        100.0 - 50.0 * (u - 0.85) / 0.15
    };
    clamp_score(s)
}

/// `2^(-age / half-life)`; 1 when the half-life is not a positive number (no decay).
fn halving(age_hours: f64, half_life_hours: f64) -> f64 {
    if half_life_hours.is_finite() && half_life_hours > 0.0 {
        0.5f64.powf(age_hours / half_life_hours)
    } else {
        1.0
    }
}

/// Weight of an hour bucket at `now`: halves every `half_life_hours` of age (measured from
/// the middle of the hour; buckets ahead of `now` weigh 1).
fn decay_weight(now: UnixSeconds, hour: i64, half_life_hours: f64) -> f64 {
    let mid = hour.saturating_mul(HOUR).saturating_add(HOUR / 2);
    let age_hours = (now.saturating_sub(mid) as f64 / HOUR as f64).max(0.0);
    halving(age_hours, half_life_hours)
}

pub fn half_life_hours(cfg: &AnalyticsConfig) -> f64 {
    cfg.decay_half_life.as_secs_f64() / HOUR as f64
}

/// The sums behind a provider's rate estimates: weighted counts of one bucket, or the
/// decay-weighted totals of a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RateSums {
    done: f64,
    decided: f64,
    sla_met: f64,
    sla_all: f64,
    errors: f64,
    ops: f64,
    up_h: f64,
    obs_h: f64,
    rt_sum: f64,
    rt_n: f64,
    util_sum: f64,
    util_n: f64,
}

impl RateSums {
    fn of(b: &HourBucket) -> Self {
        let rt = f64::from(b.rt_mean);
        let rt_ok = b.rt_count > 0 && rt.is_finite();
        let util = b.util_count > 0;
        Self {
            done: f64::from(b.completed),
            decided: f64::from(b.decided_jobs()),
            sla_met: f64::from(b.sla_met),
            sla_all: f64::from(b.sla_met) + f64::from(b.sla_missed),
            errors: f64::from(b.errors),
            ops: f64::from(b.jobs()) + f64::from(b.rt_count),
            up_h: f64::from(b.uptime_seconds) / HOUR as f64,
            obs_h: f64::from(b.observed_seconds()) / HOUR as f64,
            rt_sum: if rt_ok {
                f64::from(b.rt_count) * rt.max(0.0)
            } else {
                0.0
            },
            rt_n: if rt_ok { f64::from(b.rt_count) } else { 0.0 },
            util_sum: if util { b.cpu().max(b.gpu()) } else { 0.0 },
            util_n: if util { 1.0 } else { 0.0 },
        }
    }

    fn add_scaled(&mut self, o: &RateSums, w: f64) {
        self.done += w * o.done;
        self.decided += w * o.decided;
        self.sla_met += w * o.sla_met;
        self.sla_all += w * o.sla_all;
        self.errors += w * o.errors;
        self.ops += w * o.ops;
        self.up_h += w * o.up_h;
        self.obs_h += w * o.obs_h;
        self.rt_sum += w * o.rt_sum;
        self.rt_n += w * o.rt_n;
        self.util_sum += w * o.util_sum;
        self.util_n += w * o.util_n;
    }

    /// Every bucket weighed at `now` on its own (the general case, see [`DecayedSums::at`]).
    pub fn direct(state: &ProviderState, now: UnixSeconds, half_life: f64) -> Self {
        let mut sums = Self::default();
        for (hour, b) in state.window.iter() {
            sums.add_scaled(&Self::of(b), decay_weight(now, hour, half_life));
        }
        sums
    }

    /// The window's sums at `now`: from [`DecayedSums`] when it can answer, else directly.
    /// Every path that scores a provider comes here, so a summary composed from a parked
    /// provider's [`DecayedSums`] and a profile of the live provider agree to the bit.
    fn at(state: &ProviderState, now: UnixSeconds, half_life: f64) -> Self {
        match state.window.newest_hour() {
            Some(h) if now >= h.saturating_mul(HOUR) => DecayedSums::of(state, half_life)
                .at(now)
                .expect("now is within the newest hour or later"),
            _ => Self::direct(state, now, half_life),
        }
    }

    fn estimates(&self, prior: &NetworkPrior, cfg: &AnalyticsConfig) -> RateEstimates {
        let prior = prior.sanitized();
        let k = cfg.prior_strength;
        RateEstimates {
            completion_rate: shrink(self.done, self.decided, prior.completion_rate, k)
                .clamp(0.0, 1.0),
            sla_rate: shrink(self.sla_met, self.sla_all, prior.sla_rate, k).clamp(0.0, 1.0),
            error_rate: shrink(self.errors, self.ops, prior.error_rate, k).clamp(0.0, 1.0),
            uptime_ratio: shrink(self.up_h, self.obs_h, prior.uptime_ratio, k).clamp(0.0, 1.0),
            response_time_ms: shrink(self.rt_sum, self.rt_n, prior.median_response_time_ms, k)
                .max(0.0),
            utilization: shrink(self.util_sum, self.util_n, prior.median_utilization, k)
                .clamp(0.0, 1.0),
            effective_jobs: self.decided,
        }
    }
}

/// A window's decay-weighted sums, gathered once and brought to any later `now` with one
/// factor: a bucket's weight `2^(-age/half-life)` is the product of a factor common to
/// every bucket and one fixed by its distance from the newest bucket. A parked provider
/// keeps these (its state cannot change while parked), so a coordinator cycle scores it
/// without decoding its window (session 14). Only the newest bucket is kept apart: it is the
/// one bucket whose middle can lie ahead of `now`, where its weight stops at 1.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DecayedSums {
    /// The newest bucket's hour; `None` for an empty window.
    newest_hour: Option<i64>,
    /// The older buckets, each weighed `2^(-(newest_hour - hour)/half-life)`.
    older: RateSums,
    /// The newest bucket, unweighted.
    newest: RateSums,
    half_life: f64,
}

impl DecayedSums {
    pub fn of(state: &ProviderState, half_life: f64) -> Self {
        let Some(newest_hour) = state.window.newest_hour() else {
            return Self {
                half_life,
                ..Self::default()
            };
        };
        let mut older = RateSums::default();
        let mut newest = RateSums::default();
        for (hour, b) in state.window.iter() {
            if hour == newest_hour {
                newest = RateSums::of(b);
            } else {
                let distance = newest_hour.saturating_sub(hour) as f64;
                older.add_scaled(&RateSums::of(b), halving(distance, half_life));
            }
        }
        Self {
            newest_hour: Some(newest_hour),
            older,
            newest,
            half_life,
        }
    }

    pub fn newest_hour(&self) -> Option<i64> {
        self.newest_hour
    }

    /// The sums at `now`, or `None` when `now` is before the newest bucket's hour began
    /// (then an older bucket's middle may lie ahead of `now`: [`RateSums::direct`]).
    pub fn at(&self, now: UnixSeconds) -> Option<RateSums> {
        let Some(h) = self.newest_hour else {
            return Some(RateSums::default());
        };
        if now < h.saturating_mul(HOUR) {
            return None;
        }
        let mid = h.saturating_mul(HOUR).saturating_add(HOUR / 2);
        let common = halving(now.saturating_sub(mid) as f64 / HOUR as f64, self.half_life);
        let mut sums = RateSums::default();
        sums.add_scaled(&self.older, common);
        sums.add_scaled(&self.newest, decay_weight(now, h, self.half_life));
        Some(sums)
    }
}

/// Beta (or normal-mean) posterior mean: `(sum + k·prior) / (n + k)`, the prior when both
/// are zero.
fn shrink(sum: f64, n: f64, prior: f64, k: f64) -> f64 {
    let k = if k.is_finite() { k.max(0.0) } else { 0.0 };
    let (sum, n) = if sum.is_finite() && n.is_finite() {
        (sum, n)
    } else {
        (0.0, 0.0)
    };
    if n + k <= 0.0 {
        prior
    } else {
        (sum + k * prior) / (n + k)
    }
}

/// Posterior estimates of a provider's rates at `now`.
pub fn estimate_rates(
    state: &ProviderState,
    prior: &NetworkPrior,
    cfg: &AnalyticsConfig,
    now: UnixSeconds,
) -> RateEstimates {
    RateSums::at(state, now, half_life_hours(cfg)).estimates(prior, cfg)
}

/// Component scores from the estimates.
pub fn component_scores(e: &RateEstimates, prior: &NetworkPrior) -> ComponentScores {
    ComponentScores {
        completion_rate: clamp_score(100.0 * e.completion_rate),
        efficiency: efficiency_score(e.utilization),
        uptime: uptime_score(e.uptime_ratio),
        response_time: response_time_score(e.response_time_ms, prior.median_response_time_ms),
        sla_compliance: clamp_score(100.0 * e.sla_rate),
        error_rate: error_rate_score(e.error_rate),
    }
}

/// The performance score of a provider at `now`.
pub fn performance_score(
    state: &ProviderState,
    prior: &NetworkPrior,
    cfg: &AnalyticsConfig,
    now: UnixSeconds,
) -> PerformanceScore {
    performance_from_sums(&RateSums::at(state, now, half_life_hours(cfg)), prior, cfg)
}

/// The performance score from a window's sums at some `now` ([`DecayedSums::at`]).
pub fn performance_from_sums(
    sums: &RateSums,
    prior: &NetworkPrior,
    cfg: &AnalyticsConfig,
) -> PerformanceScore {
    let estimates = sums.estimates(prior, cfg);
    let components = component_scores(&estimates, prior);
    let composite = components.composite(&cfg.performance_weights);
    PerformanceScore {
        components,
        composite,
        estimates,
    }
}

/// Count of one provider-side error code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorCodeCount {
    pub code: u32,
    pub count: u64,
}

/// How a provider fails.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailurePatterns {
    pub failed_jobs: u64,
    pub timed_out_jobs: u64,
    /// Up → down transitions of the uptime state machine.
    pub outages: u64,
    /// Most frequent error codes first (approximate counts beyond eight distinct codes).
    pub error_codes: Vec<ErrorCodeCount>,
    /// Failed and timed-out jobs by UTC hour of day (24 entries).
    pub failures_by_hour_of_day: Vec<u32>,
    /// The UTC hour with the most failures, if any failed.
    pub worst_hour_of_day: Option<u32>,
    pub current_failure_streak: u32,
    pub longest_failure_streak: u32,
    /// Since the newest job failure or outage, whichever is later.
    pub seconds_since_last_failure: Option<i64>,
}

/// MTBF/MTTR, failure patterns and the reliability score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reliability {
    /// Observed: up time per outage; `None` before the first outage.
    pub mtbf_seconds: Option<f64>,
    /// Observed: mean length of a repaired outage; `None` before the first repair.
    pub mttr_seconds: Option<f64>,
    /// Posterior estimates used by the score (one pseudo-outage at the network prior).
    pub estimated_mtbf_seconds: f64,
    pub estimated_mttr_seconds: f64,
    pub patterns: FailurePatterns,
    /// 0–100: 0.5·MTBF score + 0.3·MTTR score + 0.2·failure-streak score.
    pub score: f64,
}

/// The reliability score alone (what a summary needs; no patterns gathered).
pub fn reliability_score(state: &ProviderState, prior: &NetworkPrior) -> f64 {
    ReliabilityInputs::of(state).score(prior)
}

/// What the reliability score reads of a state (a parked provider keeps these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityInputs {
    up_seconds: i64,
    failures: u64,
    repaired_down_seconds: i64,
    repairs: u64,
    failure_streak: u32,
}

impl ReliabilityInputs {
    pub fn of(state: &ProviderState) -> Self {
        let u = &state.uptime;
        Self {
            up_seconds: u.total_up_seconds,
            failures: u.failures,
            repaired_down_seconds: u.repaired_down_seconds,
            repairs: u.repairs,
            failure_streak: state.failures.current_streak,
        }
    }

    pub fn score(&self, prior: &NetworkPrior) -> f64 {
        reliability_parts(self, prior).0
    }
}

/// (score, estimated MTBF hours, estimated MTTR hours).
fn reliability_parts(u: &ReliabilityInputs, prior: &NetworkPrior) -> (f64, f64, f64) {
    let prior = prior.sanitized();
    let h = HOUR as f64;
    let mtbf_h = (u.up_seconds.max(0) as f64 / h + prior.mtbf_hours) / (u.failures as f64 + 1.0);
    let mttr_h =
        (u.repaired_down_seconds.max(0) as f64 / h + prior.mttr_hours) / (u.repairs as f64 + 1.0);
    let mtbf_score = 100.0 * mtbf_h / (mtbf_h + 24.0);
    let mttr_score = 100.0 / (1.0 + mttr_h / 2.0);
    let streak_score = 100.0 * 0.5f64.powf(f64::from(u.failure_streak) / 3.0);
    let score = clamp_score(0.5 * mtbf_score + 0.3 * mttr_score + 0.2 * streak_score);
    (score, mtbf_h, mttr_h)
}

/// Reliability of a provider at `now`.
///
/// MTBF score `100·m/(m + 24 h)` (a day → 50, a week → 87.5); MTTR score
/// `100/(1 + r/2 h)` (2 h → 50); streak score `100·2^(-streak/3)`. MTBF and MTTR are
/// gamma-posterior means with one pseudo-event at the prior, so a new provider starts at
/// the network's values rather than at zero or infinity.
pub fn reliability(state: &ProviderState, prior: &NetworkPrior, now: UnixSeconds) -> Reliability {
    let u = &state.uptime;
    let f = &state.failures;
    let h = HOUR as f64;
    let (score, mtbf_h, mttr_h) = reliability_parts(&ReliabilityInputs::of(state), prior);

    let worst = f
        .by_hour_of_day
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
        .map(|(h, _)| h as u32);
    let last_failure = match (f.last_failure, u.last_failure) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    Reliability {
        mtbf_seconds: u.mtbf_seconds(),
        mttr_seconds: u.mttr_seconds(),
        estimated_mtbf_seconds: mtbf_h * h,
        estimated_mttr_seconds: mttr_h * h,
        patterns: FailurePatterns {
            failed_jobs: state.lifetime.failed,
            timed_out_jobs: state.lifetime.timed_out,
            outages: u.failures,
            error_codes: f
                .error_codes
                .iter()
                .map(|&(code, count)| ErrorCodeCount { code, count })
                .collect(),
            failures_by_hour_of_day: f.by_hour_of_day.to_vec(),
            worst_hour_of_day: worst,
            current_failure_streak: f.current_streak,
            longest_failure_streak: f.longest_streak,
            seconds_since_last_failure: last_failure.map(|t| now.saturating_sub(t).max(0)),
        },
        score,
    }
}

/// Hours in the window with any data: the "data points" MIN_DATA_POINTS is compared with.
pub fn data_points(state: &ProviderState) -> u32 {
    state.window.iter().filter(|(_, b)| !b.is_empty()).count() as u32
}

/// Population standard deviation of the hourly composite scores recorded in the window;
/// `None` with fewer than two.
pub fn hourly_score_std(state: &ProviderState) -> Option<f64> {
    let (mut n, mut mean, mut m2) = (0.0, 0.0, 0.0);
    for (_, b) in state.window.iter() {
        let x = f64::from(b.score);
        if x.is_finite() {
            n += 1.0;
            let d = x - mean;
            mean += d / n;
            m2 += d * (x - mean);
        }
    }
    (n >= 2.0).then(|| (m2 / n).max(0.0).sqrt())
}

/// The parts of a confidence value, each in [0, 1].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Confidence {
    /// min(1, data points / MIN_DATA_POINTS).
    pub data_quality: f64,
    /// `2^(-age / 6 h)`, age = `now` − newest event; 0 without any event.
    pub freshness: f64,
    /// `1 / (1 + (std / 10)^2)` of the hourly scores; 0.5 with fewer than two.
    pub consistency: f64,
    /// How well a provider fits a job, when the confidence is for a job.
    pub match_quality: Option<f64>,
    /// 0.4·data quality + 0.3·freshness + 0.3·consistency, then for a job
    /// 0.75·that + 0.25·match quality.
    pub overall: f64,
}

fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// Blend a provider's base confidence with a job's match quality.
pub fn with_match_quality(base: f64, match_quality: f64) -> f64 {
    unit(0.75 * unit(base) + 0.25 * unit(match_quality))
}

/// Confidence in a provider's numbers at `now`, optionally for a job of `match_quality`.
pub fn confidence(
    state: &ProviderState,
    cfg: &AnalyticsConfig,
    now: UnixSeconds,
    match_quality: Option<f64>,
) -> Confidence {
    ConfidenceInputs::of(state).at(cfg, now, match_quality)
}

/// What a confidence reads of a state (a parked provider keeps these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceInputs {
    data_points: u32,
    last_seen: Option<UnixSeconds>,
    score_std: Option<f64>,
}

impl ConfidenceInputs {
    pub fn of(state: &ProviderState) -> Self {
        Self {
            data_points: data_points(state),
            last_seen: state.last_seen(),
            score_std: hourly_score_std(state),
        }
    }

    pub fn data_points(&self) -> u32 {
        self.data_points
    }

    pub fn last_seen(&self) -> Option<UnixSeconds> {
        self.last_seen
    }

    pub fn at(
        &self,
        cfg: &AnalyticsConfig,
        now: UnixSeconds,
        match_quality: Option<f64>,
    ) -> Confidence {
        let min_points = f64::from(cfg.min_data_points.max(1));
        let data_quality = unit(f64::from(self.data_points) / min_points);
        let freshness = self.last_seen.map_or(0.0, |t| {
            let age = now.saturating_sub(t).max(0) as f64;
            unit(0.5f64.powf(age / STALE_AFTER_SECONDS as f64))
        });
        let consistency = self.score_std.map_or(0.5, |s| {
            unit(1.0 / (1.0 + (s / CONSISTENCY_STD_POINTS).powi(2)))
        });
        let base = 0.4 * data_quality + 0.3 * freshness + 0.3 * consistency;
        let overall = match match_quality {
            Some(m) => with_match_quality(base, m),
            None => unit(base),
        };
        Confidence {
            data_quality,
            freshness,
            consistency,
            match_quality: match_quality.map(unit),
            overall,
        }
    }
}

/// A trend signal computed elsewhere (the trend module) and passed in.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrendSignal {
    /// The trend test found a significant decline.
    pub declining: bool,
    /// Composite-score points per day.
    pub slope_per_day: f64,
}

/// How bad a risk or how urgent a recommendation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    Low,
    Medium,
    High,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RiskKind {
    DecliningTrend,
    HighErrorRate,
    LowUptime,
    VolatileScores,
    LittleData,
    StaleData,
}

/// One reason to distrust or avoid a provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RiskFactor {
    pub kind: RiskKind,
    pub severity: Severity,
    pub message: String,
}

/// Risk factors of a provider at `now`.
///
/// Thresholds: error rate above twice the network's and above 2 % (high above 10 %);
/// uptime below 95 % (high below 90 %); hourly-score std above 10 points (high above 20);
/// fewer data points than MIN_DATA_POINTS (high with none); newest event older than 6 h
/// (high beyond 24 h); a declining trend (high when losing 5+ points a day).
pub fn risk_factors(
    state: &ProviderState,
    estimates: &RateEstimates,
    prior: &NetworkPrior,
    cfg: &AnalyticsConfig,
    trend: Option<TrendSignal>,
    now: UnixSeconds,
) -> Vec<RiskFactor> {
    let prior = prior.sanitized();
    let mut out = Vec::new();
    let mut push = |kind, severity, message: String| {
        out.push(RiskFactor {
            kind,
            severity,
            message,
        })
    };
    if let Some(t) = trend.filter(|t| t.declining) {
        let sev = if t.slope_per_day <= -5.0 {
            Severity::High
        } else {
            Severity::Medium
        };
        push(
            RiskKind::DecliningTrend,
            sev,
            format!("score declining by {:.1} points a day", -t.slope_per_day),
        );
    }
    let e = estimates.error_rate;
    if e > 0.02 && e > 2.0 * prior.error_rate {
        let sev = if e > 0.10 {
            Severity::High
        } else {
            Severity::Medium
        };
        push(
            RiskKind::HighErrorRate,
            sev,
            format!(
                "error rate {:.1} % against a network mean of {:.1} %",
                100.0 * e,
                100.0 * prior.error_rate
            ),
        );
    }
    let u = estimates.uptime_ratio;
    if u < 0.95 {
        let sev = if u < 0.90 {
            Severity::High
        } else {
            Severity::Medium
        };
        push(
            RiskKind::LowUptime,
            sev,
            format!("uptime {:.1} % is below 95 %", 100.0 * u),
        );
    }
    if let Some(s) = hourly_score_std(state).filter(|s| *s > 10.0) {
        let sev = if s > 20.0 {
            Severity::High
        } else {
            Severity::Medium
        };
        push(
            RiskKind::VolatileScores,
            sev,
            format!("hourly scores vary by {s:.1} points (std)"),
        );
    }
    let points = data_points(state);
    if points < cfg.min_data_points {
        let sev = if points == 0 {
            Severity::High
        } else {
            Severity::Medium
        };
        push(
            RiskKind::LittleData,
            sev,
            format!(
                "{points} hours of data, fewer than the {} required",
                cfg.min_data_points
            ),
        );
    }
    if let Some(t) = state.last_seen() {
        let age = now.saturating_sub(t);
        if age > STALE_AFTER_SECONDS {
            let sev = if age > 24 * HOUR {
                Severity::High
            } else {
                Severity::Medium
            };
            push(
                RiskKind::StaleData,
                sev,
                format!("no event for {:.1} h", age as f64 / HOUR as f64),
            );
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OptimizationKind {
    ImproveCompletion,
    ImproveEfficiency,
    ImproveUptime,
    ImproveResponseTime,
    ImproveSlaCompliance,
    ReduceErrors,
}

/// Something a provider could do to raise its score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizationRecommendation {
    pub kind: OptimizationKind,
    pub priority: Severity,
    pub message: String,
    /// Composite points gained by bringing the component to 90.
    pub expected_gain_points: f64,
}

/// Recommendations for every component below 75 (high priority below 50), largest
/// expected gain first.
pub fn optimization_recommendations(
    c: &ComponentScores,
    e: &RateEstimates,
    w: &PerformanceWeights,
) -> Vec<OptimizationRecommendation> {
    const TARGET: f64 = 90.0;
    let items = [
        (
            OptimizationKind::ImproveCompletion,
            c.completion_rate,
            w.completion_rate,
            format!(
                "completion rate {:.1} %: investigate failed and timed-out jobs",
                100.0 * e.completion_rate
            ),
        ),
        (
            OptimizationKind::ImproveEfficiency,
            c.efficiency,
            w.efficiency,
            if e.utilization < 0.55 {
                format!(
                    "utilization {:.0} %: lower the price or advertise capacity to attract jobs",
                    100.0 * e.utilization
                )
            } else {
                format!(
                    "utilization {:.0} %: saturated, accept fewer concurrent jobs",
                    100.0 * e.utilization
                )
            },
        ),
        (
            OptimizationKind::ImproveUptime,
            c.uptime,
            w.uptime,
            format!(
                "uptime {:.1} %: reduce outages and keep heartbeats flowing",
                100.0 * e.uptime_ratio
            ),
        ),
        (
            OptimizationKind::ImproveResponseTime,
            c.response_time,
            w.response_time,
            format!(
                "response time {:.0} ms: slower than the network",
                e.response_time_ms
            ),
        ),
        (
            OptimizationKind::ImproveSlaCompliance,
            c.sla_compliance,
            w.sla_compliance,
            format!("SLA met on {:.1} % of jobs", 100.0 * e.sla_rate),
        ),
        (
            OptimizationKind::ReduceErrors,
            c.error_rate,
            w.error_rate,
            format!(
                "error rate {:.1} %: fix the most frequent error codes",
                100.0 * e.error_rate
            ),
        ),
    ];
    let mut out: Vec<_> = items
        .into_iter()
        .filter(|(_, score, _, _)| *score < 75.0)
        .map(
            |(kind, score, weight, message)| OptimizationRecommendation {
                kind,
                priority: if score < 50.0 {
                    Severity::High
                } else {
                    Severity::Medium
                },
                message,
                expected_gain_points: (weight.max(0.0) * (TARGET - score)).max(0.0),
            },
        )
        .collect();
    out.sort_by(|a, b| b.expected_gain_points.total_cmp(&a.expected_gain_points));
    out
}

/// The network's score distribution as a 101-point quantile sketch (`quantiles[i]` is the
/// i-th percentile), cheap for the coordinator to publish and for anyone to query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreDistribution {
    pub count: u64,
    /// 101 non-decreasing values, or empty when `count` is 0.
    pub quantiles: Vec<f64>,
}

/// Puts into place, as a sort by `total_cmp` would, the elements of `v` at `positions`
/// (ascending; `v` starts at position `offset` of the whole): the middle one by selection,
/// then the ones below it in the part below, the ones above in the part above. O(n log k)
/// for k positions.
fn select_in_place(v: &mut [f64], offset: usize, positions: &[usize]) {
    if positions.is_empty() || v.is_empty() {
        return;
    }
    let mid = positions.len() / 2;
    let p = positions[mid] - offset;
    v.select_nth_unstable_by(p, f64::total_cmp);
    let (below, above) = v.split_at_mut(p);
    select_in_place(below, offset, &positions[..mid]);
    select_in_place(&mut above[1..], offset + p + 1, &positions[mid + 1..]);
}

impl ScoreDistribution {
    pub fn empty() -> Self {
        Self {
            count: 0,
            quantiles: Vec::new(),
        }
    }

    /// The sketch of a sample (non-finite values are ignored). Reorders `scores` in place (the
    /// order statistics it reads are put where a sort would put them; the rest is unsorted).
    pub fn from_scores(scores: &mut Vec<f64>) -> Self {
        scores.retain(|s| s.is_finite());
        if scores.is_empty() {
            return Self::empty();
        }
        let n = scores.len();
        // linear interpolation between order statistics (Hyndman–Fan type 7)
        let at = |i: usize| {
            let pos = i as f64 / 100.0 * (n - 1) as f64;
            let lo = pos.floor() as usize;
            (pos, lo, (lo + 1).min(n - 1))
        };
        // only the order statistics the percentiles read are put in place, by selection
        // (at a million providers a full sort was a tenth of the coordinator's pass)
        let mut positions: Vec<usize> = (0..=100)
            .flat_map(|i| {
                let (_, lo, hi) = at(i);
                [lo, hi]
            })
            .collect();
        positions.sort_unstable();
        positions.dedup();
        select_in_place(scores, 0, &positions);
        let quantiles = (0..=100)
            .map(|i| {
                let (pos, lo, hi) = at(i);
                scores[lo] + (pos - lo as f64) * (scores[hi] - scores[lo])
            })
            .collect();
        Self {
            count: n as u64,
            quantiles,
        }
    }

    /// The value at percentile `p` (0–100), interpolated; `None` when empty.
    pub fn quantile(&self, p: f64) -> Option<f64> {
        if self.quantiles.len() != 101 || p.is_nan() {
            return None;
        }
        let pos = p.clamp(0.0, 100.0);
        let lo = pos.floor() as usize;
        let hi = (lo + 1).min(100);
        let q = &self.quantiles;
        Some(q[lo] + (pos - lo as f64) * (q[hi] - q[lo]))
    }

    /// Percentile (0–100) of `score`: the share of the network below it, with ties counted
    /// half (mid-rank). 50 for an empty distribution or a NaN score.
    pub fn percentile_of(&self, score: f64) -> f64 {
        let q = &self.quantiles;
        if q.len() != 101 || score.is_nan() {
            return 50.0;
        }
        if score < q[0] {
            return 0.0;
        }
        if score > q[100] {
            return 100.0;
        }
        // knots equal to the score: a flat run means ties, take its middle
        let first_ge = q.partition_point(|&x| x < score);
        let first_gt = q.partition_point(|&x| x <= score);
        if first_gt > first_ge {
            return (first_ge + first_gt - 1) as f64 / 2.0;
        }
        // strictly between knots first_ge-1 and first_ge
        let (i, j) = (first_ge - 1, first_ge);
        i as f64 + (score - q[i]) / (q[j] - q[i])
    }
}

/// What the profile needs beyond the provider's own state.
#[derive(Clone, Debug)]
pub struct ProfileContext<'a> {
    pub prior: &'a NetworkPrior,
    pub distribution: &'a ScoreDistribution,
    pub cutoffs: &'a TierCutoffs,
    pub previous_tier: Option<Tier>,
    pub trend: Option<TrendSignal>,
}

/// Every metric of one provider, as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderPerformanceProfile {
    pub provider_id: ProviderId,
    pub computed_at: UnixSeconds,
    // rates (posterior means unless said otherwise)
    pub completion_rate: f64,
    /// Raw share of decided jobs in the window that failed / timed out (0 without jobs).
    pub failure_rate: f64,
    pub timeout_rate: f64,
    pub sla_compliance_rate: f64,
    pub error_rate: f64,
    // response time
    pub avg_response_time_ms: f64,
    pub response_time_std_ms: f64,
    /// mean + 1.645·std over the provider's life: a p95 under a normal assumption.
    pub approx_p95_response_time_ms: f64,
    // availability
    pub uptime_ratio: f64,
    pub mtbf_seconds: Option<f64>,
    pub mttr_seconds: Option<f64>,
    // utilization means over the window's hours with samples
    pub cpu_utilization: f64,
    pub gpu_utilization: f64,
    pub memory_utilization: f64,
    // volume and money
    pub jobs_window: u64,
    pub jobs_lifetime: u64,
    pub cost_earned_window: f64,
    pub cost_earned_lifetime: f64,
    pub price_per_hour: Option<f64>,
    // scores
    pub components: ComponentScores,
    pub composite_score: f64,
    pub reliability_score: f64,
    pub reliability: Reliability,
    pub percentile: f64,
    pub tier: Tier,
    pub confidence: Confidence,
    pub risk_factors: Vec<RiskFactor>,
    pub recommendations: Vec<OptimizationRecommendation>,
    // bookkeeping
    pub data_points: u32,
    pub events_ingested: u64,
    pub first_seen: Option<UnixSeconds>,
    pub last_seen: Option<UnixSeconds>,
}

fn finite_or(x: f64, d: f64) -> f64 {
    if x.is_finite() { x } else { d }
}

/// Share of the observed seconds in the window that the provider was up (what an operator
/// reads as "uptime"; the score uses the decayed, prior-shrunk estimate instead).
pub fn measured_uptime(state: &ProviderState) -> Option<f64> {
    let (up, observed) = state.window.iter().fold((0u64, 0u64), |(u, o), (_, b)| {
        (
            u + u64::from(b.uptime_seconds),
            o + u64::from(b.observed_seconds()),
        )
    });
    (observed > 0).then(|| up as f64 / observed as f64)
}

/// Assemble the profile of one provider at `now`.
pub fn performance_profile(
    state: &ProviderState,
    cfg: &AnalyticsConfig,
    ctx: &ProfileContext<'_>,
    now: UnixSeconds,
) -> ProviderPerformanceProfile {
    let perf = performance_score(state, ctx.prior, cfg, now);
    let rel = reliability(state, ctx.prior, now);
    let (mut decided, mut failed, mut timed_out, mut jobs) = (0u64, 0u64, 0u64, 0u64);
    let (mut cost, mut util_n) = (0.0, 0.0);
    let (mut cpu, mut gpu, mut mem) = (0.0, 0.0, 0.0);
    for (_, b) in state.window.iter() {
        decided += u64::from(b.decided_jobs());
        failed += u64::from(b.failed);
        timed_out += u64::from(b.timed_out);
        jobs += u64::from(b.jobs());
        cost += finite_or(f64::from(b.cost), 0.0);
        if b.util_count > 0 {
            util_n += 1.0;
            cpu += b.cpu();
            gpu += b.gpu();
            mem += b.memory();
        }
    }
    let share = |x: u64| {
        if decided == 0 {
            0.0
        } else {
            x as f64 / decided as f64
        }
    };
    let mean_util = |x: f64| if util_n == 0.0 { 0.0 } else { x / util_n };
    let lt = &state.lifetime;
    let rt_mean = finite_or(lt.rt_mean, 0.0).max(0.0);
    let rt_std = finite_or(lt.rt_std(), 0.0);
    let tier = ctx.cutoffs.tier_with_hysteresis(
        perf.composite,
        ctx.previous_tier,
        cfg.tier_hysteresis_points,
    );
    ProviderPerformanceProfile {
        provider_id: state.id.clone(),
        computed_at: now,
        completion_rate: perf.estimates.completion_rate,
        failure_rate: share(failed),
        timeout_rate: share(timed_out),
        sla_compliance_rate: perf.estimates.sla_rate,
        error_rate: perf.estimates.error_rate,
        avg_response_time_ms: rt_mean,
        response_time_std_ms: rt_std,
        approx_p95_response_time_ms: rt_mean + 1.645 * rt_std,
        uptime_ratio: measured_uptime(state).unwrap_or(perf.estimates.uptime_ratio),
        mtbf_seconds: rel.mtbf_seconds,
        mttr_seconds: rel.mttr_seconds,
        cpu_utilization: mean_util(cpu),
        gpu_utilization: mean_util(gpu),
        memory_utilization: mean_util(mem),
        jobs_window: jobs,
        jobs_lifetime: lt.jobs(),
        cost_earned_window: cost,
        cost_earned_lifetime: finite_or(lt.cost, 0.0),
        price_per_hour: state.spec.as_ref().map(|s| s.price_per_hour),
        risk_factors: risk_factors(state, &perf.estimates, ctx.prior, cfg, ctx.trend, now),
        recommendations: optimization_recommendations(
            &perf.components,
            &perf.estimates,
            &cfg.performance_weights,
        ),
        percentile: ctx.distribution.percentile_of(perf.composite),
        tier,
        confidence: confidence(state, cfg, now, None),
        reliability_score: rel.score,
        reliability: rel,
        composite_score: perf.composite,
        components: perf.components,
        data_points: data_points(state),
        events_ingested: lt.events_ingested,
        first_seen: lt.first_seen,
        last_seen: lt.last_seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::state::StateParams;
    use crate::model::hour_of;
    use crate::model::{
        EventPayload, Heartbeat, HeartbeatStatus, JobOutcome, JobStatus, ResponseTimeSample,
        TelemetryEvent, UtilizationSample,
    };

    const T0: i64 = 1_700_000_000 - 1_700_000_000 % 3600;

    fn ev(id: String, ts: i64, payload: EventPayload) -> TelemetryEvent {
        TelemetryEvent {
            event_id: id,
            provider_id: ProviderId::new("p"),
            timestamp: ts,
            payload,
        }
    }

    fn job(status: JobStatus) -> EventPayload {
        EventPayload::JobOutcome(JobOutcome {
            status,
            duration_seconds: 60.0,
            sla_met: status == JobStatus::Completed,
            error_code: 0,
            cost: 1.0,
        })
    }

    /// A provider with `ok` completed and `bad` failed jobs, all at `T0 + 10`.
    fn with_jobs(ok: u32, bad: u32) -> ProviderState {
        let p = StateParams::default();
        let mut s = ProviderState::new("p".into(), &p);
        for i in 0..ok + bad {
            let st = if i < ok {
                JobStatus::Completed
            } else {
                JobStatus::Failed
            };
            s.apply(&ev(format!("j{i}"), T0 + 10, job(st)), T0 + 10, &p)
                .unwrap();
        }
        s
    }

    fn cfg_no_decay() -> AnalyticsConfig {
        AnalyticsConfig {
            decay_half_life: std::time::Duration::from_secs(1_000_000 * 3600),
            ..Default::default()
        }
    }

    #[test]
    fn three_of_three_does_not_outrank_2970_of_3000() {
        let cfg = AnalyticsConfig::default();
        let prior = NetworkPrior::default();
        let small = estimate_rates(&with_jobs(3, 0), &prior, &cfg, T0 + 1800);
        let big = estimate_rates(&with_jobs(2970, 30), &prior, &cfg, T0 + 1800);
        // at the bucket's middle the weight is 1: (3 + 10·0.95)/(3 + 10) and (2970 + 9.5)/3010
        assert!((small.completion_rate - 12.5 / 13.0).abs() < 1e-12);
        assert!((big.completion_rate - 2979.5 / 3010.0).abs() < 1e-12);
        let sc = component_scores(&small, &prior);
        let bc = component_scores(&big, &prior);
        assert!(bc.completion_rate > sc.completion_rate);
        assert!(bc.composite(&cfg.performance_weights) > sc.composite(&cfg.performance_weights));
    }

    #[test]
    fn recency_decay_halves_old_evidence() {
        // 10 failures a half-life (48 h) ago and 10 successes now: weights 0.5 and 1, so
        // (10 + 10·0.95) / (10 + 5 + 10) = 19.5 / 25.
        let p = StateParams::default();
        let mut s = ProviderState::new("p".into(), &p);
        let now = T0 + 48 * HOUR + 1800;
        for i in 0..10 {
            s.apply(
                &ev(format!("f{i}"), T0 + 10, job(JobStatus::Failed)),
                now,
                &p,
            )
            .unwrap();
            s.apply(
                &ev(format!("c{i}"), now, job(JobStatus::Completed)),
                now,
                &p,
            )
            .unwrap();
        }
        let e = estimate_rates(
            &s,
            &NetworkPrior::default(),
            &AnalyticsConfig::default(),
            now,
        );
        assert!(
            (e.completion_rate - 19.5 / 25.0).abs() < 1e-9,
            "{}",
            e.completion_rate
        );
    }

    #[test]
    fn empty_state_scores_the_prior() {
        let s = ProviderState::new("p".into(), &StateParams::default());
        let cfg = AnalyticsConfig::default();
        let prior = NetworkPrior::default();
        let perf = performance_score(&s, &prior, &cfg, T0);
        let c = &perf.components;
        assert_eq!(c.completion_rate, 95.0);
        assert_eq!(c.sla_compliance, 95.0);
        // 0.98^4 = 0.92236816
        assert!((c.uptime - 92.236816).abs() < 1e-9);
        // median response time → 100/(1 + 1/9) = 90
        assert!((c.response_time - 90.0).abs() < 1e-9);
        // utilization 0.5 → 40 + 60·0.5/0.55
        assert!((c.efficiency - (40.0 + 30.0 / 0.55)).abs() < 1e-9);
        // exp(-0.2)
        assert!((c.error_rate - 100.0 * (-0.2f64).exp()).abs() < 1e-9);
        let want = 0.25 * 95.0
            + 0.20 * (40.0 + 30.0 / 0.55)
            + 0.20 * 92.236816
            + 0.15 * 90.0
            + 0.12 * 95.0
            + 0.08 * 100.0 * (-0.2f64).exp();
        assert!((perf.composite - want).abs() < 1e-9);
    }

    #[test]
    fn component_mappings_by_hand() {
        assert!((response_time_score(750.0, 250.0) - 50.0).abs() < 1e-12);
        assert!((response_time_score(125.0, 250.0) - 100.0 / (1.0 + 1.0 / 36.0)).abs() < 1e-12);
        assert_eq!(response_time_score(0.0, 250.0), 100.0);
        assert_eq!(response_time_score(f64::INFINITY, 250.0), 0.0);
        assert!((uptime_score(0.9) - 65.61).abs() < 1e-9);
        assert_eq!(efficiency_score(0.7), 100.0);
        assert!((efficiency_score(1.0) - 50.0).abs() < 1e-9);
        assert_eq!(efficiency_score(0.0), 40.0);
        assert_eq!(error_rate_score(0.0), 100.0);
        assert!((error_rate_score(0.1) - 100.0 * (-1.0f64).exp()).abs() < 1e-9);
        assert_eq!(clamp_score(f64::NAN), 0.0);
    }

    #[test]
    fn response_time_and_utilization_are_shrunk_toward_the_network() {
        let p = StateParams::default();
        let mut s = ProviderState::new("p".into(), &p);
        for i in 0..10 {
            let rt = EventPayload::ResponseTime(ResponseTimeSample {
                response_time_ms: 50.0,
                is_error: i == 0,
            });
            s.apply(&ev(format!("r{i}"), T0 + i, rt), T0, &p).unwrap();
        }
        let u = EventPayload::Utilization(UtilizationSample {
            cpu: 0.2,
            gpu: 0.9,
            memory: 0.1,
        });
        s.apply(&ev("u".into(), T0 + 20, u), T0, &p).unwrap();
        let e = estimate_rates(&s, &NetworkPrior::default(), &cfg_no_decay(), T0 + 1800);
        // (10·50 + 10·250) / 20 = 150 ms; errors (1 + 10·0.02) / (10 + 10) = 0.06
        assert!((e.response_time_ms - 150.0).abs() < 1e-6);
        assert!((e.error_rate - 0.06).abs() < 1e-9);
        // one hour at max(cpu, gpu) = 0.9: (0.9 + 10·0.5) / 11
        assert!((e.utilization - 5.9 / 11.0).abs() < 1e-4);
    }

    #[test]
    fn reliability_from_a_heartbeat_sequence() {
        let p = StateParams {
            heartbeat_timeout_seconds: 120,
            ..Default::default()
        };
        let mut s = ProviderState::new("p".into(), &p);
        // up 0..3600, offline 3600..5400, up 5400..9000: 2 h up, one outage of 0.5 h
        let mut t = 0;
        let mut i = 0;
        while t <= 9000 {
            let status = if (3600..5400).contains(&t) {
                HeartbeatStatus::Offline
            } else {
                HeartbeatStatus::Online
            };
            let e = ev(
                format!("h{i}"),
                T0 + t,
                EventPayload::Heartbeat(Heartbeat { status }),
            );
            s.apply(&e, T0 + t, &p).unwrap();
            t += 60;
            i += 1;
        }
        let prior = NetworkPrior::default();
        let r = reliability(&s, &prior, T0 + 9000);
        assert_eq!(r.mtbf_seconds, Some(7200.0));
        assert_eq!(r.mttr_seconds, Some(1800.0));
        // MTBF (2 + 168) / 2 = 85 h; MTTR (0.5 + 0.5) / 2 = 0.5 h
        let mtbf_score = 100.0 * 85.0 / 109.0;
        let mttr_score = 100.0 / 1.25;
        let want = 0.5 * mtbf_score + 0.3 * mttr_score + 0.2 * 100.0;
        assert!((r.score - want).abs() < 1e-9, "{} vs {want}", r.score);
        assert_eq!(r.patterns.outages, 1);
        assert_eq!(r.patterns.seconds_since_last_failure, Some(9000 - 3600));
    }

    #[test]
    fn failure_patterns_and_streaks() {
        let mut s = with_jobs(2, 3);
        let r = reliability(&s, &NetworkPrior::default(), T0 + 100);
        assert_eq!(r.patterns.failed_jobs, 3);
        assert_eq!(r.patterns.current_failure_streak, 3);
        assert_eq!(
            r.patterns.worst_hour_of_day,
            Some((hour_of(T0).rem_euclid(24)) as u32)
        );
        assert_eq!(r.patterns.seconds_since_last_failure, Some(90));
        // streak 3 halves the streak part: 20 → 10 points
        let r0 = reliability(&with_jobs(2, 0), &NetworkPrior::default(), T0 + 100);
        assert!((r0.score - r.score - 10.0).abs() < 1e-9);
        let p = StateParams::default();
        s.apply(
            &ev("x".into(), T0 + 20, job(JobStatus::Completed)),
            T0 + 20,
            &p,
        )
        .unwrap();
        assert_eq!(
            reliability(&s, &NetworkPrior::default(), T0 + 100)
                .patterns
                .current_failure_streak,
            0
        );
    }

    #[test]
    fn confidence_parts_by_hand() {
        let mut s = with_jobs(5, 0);
        let cfg = AnalyticsConfig::default();
        // one hour of data out of 10; 6 h old → freshness 0.5; no hourly scores → 0.5
        let c = confidence(&s, &cfg, T0 + 10 + 6 * HOUR, None);
        assert!((c.data_quality - 0.1).abs() < 1e-12);
        assert!((c.freshness - 0.5).abs() < 1e-12);
        assert_eq!(c.consistency, 0.5);
        assert!((c.overall - (0.04 + 0.15 + 0.15)).abs() < 1e-12);
        // hourly scores 80 and 100: std 10 → consistency 0.5; with scores 90, 90 → 1
        s.record_score(hour_of(T0), 80.0);
        s.record_score(hour_of(T0) + 1, 100.0);
        assert!((confidence(&s, &cfg, T0, None).consistency - 0.5).abs() < 1e-12);
        s.record_score(hour_of(T0), 90.0);
        s.record_score(hour_of(T0) + 1, 90.0);
        let c = confidence(&s, &cfg, T0 + 10, Some(0.6));
        assert_eq!(c.consistency, 1.0);
        // a bucket holding only a score is no data point: base 0.04 + 0.3 + 0.3, then
        // 0.75·base + 0.25·0.6
        assert!((c.overall - (0.75 * 0.64 + 0.15)).abs() < 1e-12);
        assert_eq!(
            confidence(
                &ProviderState::new("q".into(), &StateParams::default()),
                &cfg,
                T0,
                None
            )
            .freshness,
            0.0
        );
    }

    #[test]
    fn risk_factors_fire_on_their_thresholds() {
        let s = with_jobs(5, 0);
        let cfg = AnalyticsConfig::default();
        let prior = NetworkPrior::default();
        let mut e = estimate_rates(&s, &prior, &cfg, T0);
        e.error_rate = 0.05;
        e.uptime_ratio = 0.93;
        let trend = TrendSignal {
            declining: true,
            slope_per_day: -6.0,
        };
        let r = risk_factors(&s, &e, &prior, &cfg, Some(trend), T0 + 10 + 7 * HOUR);
        let kinds: Vec<_> = r.iter().map(|f| (f.kind, f.severity)).collect();
        assert_eq!(
            kinds,
            vec![
                (RiskKind::DecliningTrend, Severity::High),
                (RiskKind::HighErrorRate, Severity::Medium),
                (RiskKind::LowUptime, Severity::Medium),
                (RiskKind::LittleData, Severity::Medium),
                (RiskKind::StaleData, Severity::Medium),
            ]
        );
        e.error_rate = 0.03;
        e.uptime_ratio = 0.99;
        let r = risk_factors(&s, &e, &prior, &cfg, None, T0 + 10);
        // 3 % is above 2 % but not above twice the 2 % prior
        assert_eq!(
            r.iter().map(|f| f.kind).collect::<Vec<_>>(),
            vec![RiskKind::LittleData]
        );
    }

    #[test]
    fn recommendations_sorted_by_gain() {
        let c = ComponentScores {
            completion_rate: 60.0,
            efficiency: 100.0,
            uptime: 40.0,
            response_time: 80.0,
            sla_compliance: 74.0,
            error_rate: 90.0,
        };
        let e = RateEstimates {
            completion_rate: 0.6,
            sla_rate: 0.74,
            error_rate: 0.01,
            uptime_ratio: 0.8,
            response_time_ms: 300.0,
            utilization: 0.7,
            effective_jobs: 10.0,
        };
        let r = optimization_recommendations(&c, &e, &PerformanceWeights::default());
        // gains: uptime 0.2·50 = 10, completion 0.25·30 = 7.5, sla 0.12·16 = 1.92
        let got: Vec<_> = r.iter().map(|x| (x.kind, x.priority)).collect();
        assert_eq!(
            got,
            vec![
                (OptimizationKind::ImproveUptime, Severity::High),
                (OptimizationKind::ImproveCompletion, Severity::Medium),
                (OptimizationKind::ImproveSlaCompliance, Severity::Medium),
            ]
        );
        assert!((r[0].expected_gain_points - 10.0).abs() < 1e-12);
        assert!((r[2].expected_gain_points - 1.92).abs() < 1e-12);
    }

    /// The percentiles from the order statistics put in place by selection are those of
    /// a full sort, exactly, at sizes around the 101 cut points and with ties.
    #[test]
    fn percentiles_by_selection_are_those_of_a_sort() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for n in [1usize, 2, 3, 7, 100, 101, 102, 999, 4096] {
            for ties in [false, true] {
                let v: Vec<f64> = (0..n)
                    .map(|_| {
                        let r = next();
                        if ties {
                            (r % 7) as f64 * 10.0
                        } else {
                            (r % 1_000_000) as f64 / 10_000.0
                        }
                    })
                    .collect();
                let mut sorted = v.clone();
                sorted.sort_by(f64::total_cmp);
                let want: Vec<f64> = (0..=100)
                    .map(|i| {
                        let pos = i as f64 / 100.0 * (n - 1) as f64;
                        let lo = pos.floor() as usize;
                        let hi = (lo + 1).min(n - 1);
                        sorted[lo] + (pos - lo as f64) * (sorted[hi] - sorted[lo])
                    })
                    .collect();
                let d = ScoreDistribution::from_scores(&mut v.clone());
                assert_eq!(d.quantiles, want, "n = {n}, ties: {ties}");
                assert_eq!(d.count, n as u64);
            }
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 0, 1, ..., 100: the sketch is the sample itself
        let mut v: Vec<f64> = (0..=100).map(f64::from).collect();
        let d = ScoreDistribution::from_scores(&mut v);
        assert_eq!(d.quantiles[37], 37.0);
        assert_eq!(d.percentile_of(37.0), 37.0);
        assert_eq!(d.percentile_of(37.5), 37.5);
        assert_eq!(d.percentile_of(-1.0), 0.0);
        assert_eq!(d.percentile_of(101.0), 100.0);
        assert_eq!(d.quantile(95.0), Some(95.0));
        // 0..=200 step 1: q[i] = 2i, so 50 sits at the 25th percentile
        let mut v: Vec<f64> = (0..=200).map(f64::from).collect();
        let d = ScoreDistribution::from_scores(&mut v);
        assert_eq!(d.percentile_of(50.0), 25.0);
        // all equal: mid-rank 50
        let d = ScoreDistribution::from_scores(&mut vec![70.0; 9]);
        assert_eq!(d.percentile_of(70.0), 50.0);
        assert_eq!(ScoreDistribution::empty().percentile_of(70.0), 50.0);
        assert_eq!(ScoreDistribution::from_scores(&mut vec![f64::NAN]).count, 0);
    }

    #[test]
    fn profile_assembles_every_metric() {
        let p = StateParams::default();
        let mut s = with_jobs(8, 2);
        s.apply(
            &ev(
                "spec".into(),
                T0,
                EventPayload::Spec(Box::new(crate::model::ProviderSpec {
                    price_per_hour: 2.5,
                    ..Default::default()
                })),
            ),
            T0 + 10,
            &p,
        )
        .unwrap();
        let cfg = AnalyticsConfig::default();
        let prior = NetworkPrior::default();
        let dist = ScoreDistribution::from_scores(&mut (0..=100).map(f64::from).collect());
        let cutoffs = TierCutoffs::from_distribution(&dist, &cfg.ranking_tiers);
        let ctx = ProfileContext {
            prior: &prior,
            distribution: &dist,
            cutoffs: &cutoffs,
            previous_tier: None,
            trend: None,
        };
        let prof = performance_profile(&s, &cfg, &ctx, T0 + 1800);
        assert_eq!(prof.jobs_window, 10);
        assert_eq!(prof.jobs_lifetime, 10);
        assert!((prof.failure_rate - 0.2).abs() < 1e-12);
        assert_eq!(prof.timeout_rate, 0.0);
        assert!((prof.cost_earned_window - 10.0).abs() < 1e-6);
        assert_eq!(prof.price_per_hour, Some(2.5));
        // (8 + 9.5) / 20
        assert!((prof.completion_rate - 0.875).abs() < 1e-12);
        assert!((prof.percentile - prof.composite_score).abs() < 1e-9);
        assert_eq!(prof.events_ingested, 11);
        assert_eq!(prof.first_seen, Some(T0));
        assert_eq!(prof.data_points, 1);
        assert!(
            prof.risk_factors
                .iter()
                .any(|r| r.kind == RiskKind::LittleData)
        );
        let json = serde_json::to_string(&prof).unwrap();
        assert!(json.contains("\"composite_score\""));
    }
}
