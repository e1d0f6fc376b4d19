//! Forecasts of an hourly series: additive Holt-Winters (daily season; no, linear or damped
//! trend) with parameters fitted by one-step SSE, plus simpler rivals, chosen per series.
//!
//! Plain Holt-Winters loses to the seasonal naive forecast on hourly data, so every
//! forecast is a small model selection: each candidate (seasonal naive, the seasonal
//! smoothing models ETS(A,N,A), ETS(A,A,A) and ETS(A,Ad,A), a Theta-like SES with drift on
//! the deseasonalised series, and a weekly seasonal naive when the history holds two weeks)
//! is fitted on the history before the earliest of a few rolling forecast origins, scored
//! by its mean error on the holdouts that follow the origins (each as long as the horizon,
//! not overlapping, the last ending with the history), and the best two are combined with
//! inverse-error weights. When the history is too short for the weekly candidate, seasonal
//! naive always takes the second place of the combination (shrinkage toward the benchmark,
//! whose ranking on short holdouts is noisy). The fitted parameters are then run over the
//! whole history (no second optimisation), and the damped fit starts from the linear one,
//! which keeps one forecast cheap.
//!
//! With less than two seasons of history the seasonal models are out: Holt (linear trend)
//! and then simple exponential smoothing take over, with a warning.
//!
//! Prediction intervals use the analytic variance of the ETS(A,Ad,A) / (A,N,N) models
//! (Hyndman et al. 2008, class 1): `σ²_h = σ²(1 + Σ_{j<h} c_j²)` with
//! `c_j = α + αβ*·φ_j + γ·[j mod m = 0]`; seasonal naive uses `σ²(⌊(h−1)/m⌋ + 1)`. A
//! combination uses the weighted mean of its members' standard deviations, scaled by the
//! RMS ratio of the holdout errors to the spread predicted for them (clamped to 0.8–3).

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

use crate::analytics::state::{HourBucket, HourWindow};
use crate::config::ForecastingConfig;
use crate::model::{HOUR, UnixSeconds};

/// Bounds on the holdout calibration of the interval widths: one holdout is a small
/// sample, so it may narrow the analytic intervals a little but widen them a lot.
const MIN_WIDEN: f64 = 0.8;
const MAX_WIDEN: f64 = 3.0;

/// Why no forecast could be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForecastError {
    #[error("history has {points} points, at least {min} are needed")]
    TooShort { points: usize, min: usize },
    #[error("interval level {0} is not in (0, 1)")]
    BadLevel(f64),
    #[error("horizon must be at least one step")]
    ZeroHorizon,
}

/// Tunables of the forecaster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastParams {
    /// Steps ahead.
    pub horizon: usize,
    /// Level of the prediction intervals (0.95 = 95 %).
    pub interval_level: f64,
    /// The main season (24 for hourly data, 7 for daily).
    pub season: usize,
    /// A second, longer season tried with seasonal naive when the history holds two of
    /// them plus the holdout (168 for hourly data; 0 = off).
    pub long_season: usize,
    /// Only the newest this many points are used (0 = all).
    pub max_history: usize,
    /// Points held out to choose between models (0 = the horizon, capped at one season).
    pub holdout: usize,
    /// Objective evaluations allowed per fitted model (each is one O(n) pass).
    pub max_evals: usize,
    /// Rolling forecast origins at which the candidates are scored, each followed by its
    /// own holdout (fewer when the history is short; 1 = a single holdout at the end).
    pub origins: usize,
    /// How many of the best candidates are combined (1 = pick the best).
    pub combine_top: usize,
    /// Also try the smoothing models on the log of a positive series (seasonality that
    /// scales with the level); doubles the fitting cost.
    pub log_candidates: bool,
    /// Clip values and bounds to this range (scores live in 0–100).
    pub clamp: Option<(f64, f64)>,
    /// Forecasts whose confidence is below this are flagged.
    pub confidence_threshold: f64,
}

impl Default for ForecastParams {
    fn default() -> Self {
        Self {
            horizon: 24,
            interval_level: 0.95,
            season: 24,
            long_season: 168,
            max_history: 0,
            holdout: 0,
            max_evals: 36,
            origins: 3,
            combine_top: 2,
            log_candidates: false,
            clamp: None,
            confidence_threshold: 0.7,
        }
    }
}

impl ForecastParams {
    /// Hourly forecasting as the product configures it.
    pub fn from_config(cfg: &ForecastingConfig) -> Self {
        Self {
            horizon: cfg.horizon_hours.max(1) as usize,
            interval_level: cfg.interval_level,
            confidence_threshold: cfg.confidence_threshold,
            ..Self::default()
        }
    }
}

/// The model families the forecaster can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    /// The value one season ago.
    SeasonalNaive,
    /// Additive Holt-Winters, linear trend.
    HoltWinters,
    /// Additive Holt-Winters, damped trend.
    DampedHoltWinters,
    /// SES with half the regression drift on the deseasonalised series, reseasonalised.
    ThetaDeseasonalised,
    /// Holt's linear trend (no season).
    Holt,
    /// Simple exponential smoothing (no trend, no season).
    Ses,
    /// Additive seasonal smoothing without trend (ETS(A,N,A)).
    SeasonalSes,
}

/// Smoothing parameters in Hyndman's HW form (`beta` is β*, the trend's own weight).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SmoothingParams {
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
    /// Damping of the trend; 1 = undamped.
    pub phi: f64,
}

/// One member of the chosen forecast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelChoice {
    pub kind: ModelKind,
    /// Season length the model used (1 = none).
    pub period: usize,
    /// Weight in the combination (sums to 1 over members).
    pub weight: f64,
    /// Mean absolute error on the holdout; `None` when no holdout was possible.
    pub holdout_mae: Option<f64>,
    /// Fitted smoothing parameters, for the smoothing models.
    pub params: Option<SmoothingParams>,
    /// Whether the model ran on the log of the series.
    pub log_scale: bool,
}

/// One forecast step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastPoint {
    /// Start of the forecast hour (or day, for daily forecasts).
    pub timestamp: UnixSeconds,
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
}

/// A forecast with its model, parameters, warnings and accuracy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderForecast {
    pub points: Vec<ForecastPoint>,
    /// Name of the forecast: one model's, or "combination" of `members`.
    pub model: String,
    pub members: Vec<ModelChoice>,
    pub interval_level: f64,
    pub history_points: usize,
    /// sMAPE (%) of the chosen forecast on the holdout; `None` without a holdout.
    pub holdout_smape_percent: Option<f64>,
    /// 1 − holdout sMAPE / 100, clamped to [0, 1]; 0.5 when no holdout was possible.
    pub confidence: f64,
    pub low_confidence: bool,
    pub warnings: Vec<String>,
}

/// Initial states of the recursion: level and trend just before the first observation,
/// and the seasonal term of each of the first `m` observations.
#[derive(Clone, Debug, PartialEq)]
pub struct HwInit {
    pub level: f64,
    pub trend: f64,
    pub season: Vec<f64>,
}

/// States after the last observation. `season[i]` applies to step `i + 1` ahead (mod m).
#[derive(Clone, Debug, PartialEq)]
pub struct HwState {
    pub level: f64,
    pub trend: f64,
    pub season: Vec<f64>,
    pub sse: f64,
    pub n: usize,
}

/// Which components a smoothing model has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    trend: bool,
    damped: bool,
    seasonal: bool,
}

/// Additive Holt-Winters recursion (statsmodels' `ExponentialSmoothing` in HW form):
/// `l_t = α(y_t − s_{t−m}) + (1−α)(l_{t−1} + φb_{t−1})`,
/// `b_t = β*(l_t − l_{t−1}) + (1−β*)φb_{t−1}`,
/// `s_t = γ(y_t − l_{t−1} − φb_{t−1}) + (1−γ)s_{t−m}`. Writes one-step fitted values when
/// asked. With γ = 0 and a zero season it is Holt; with β* = 0 and b₀ = 0 it is SES.
pub fn hw_filter(
    y: &[f64],
    p: &SmoothingParams,
    init: &HwInit,
    mut fitted: Option<&mut Vec<f64>>,
) -> HwState {
    let m = init.season.len().max(1);
    let mut season = if init.season.is_empty() {
        vec![0.0]
    } else {
        init.season.clone()
    };
    let (mut l, mut b) = (init.level, init.trend);
    let mut sse = 0.0;
    let mut j = 0;
    for &yt in y {
        let s = season[j];
        let pb = p.phi * b;
        let f = l + pb + s;
        if let Some(out) = fitted.as_deref_mut() {
            out.push(f);
        }
        let e = yt - f;
        sse += e * e;
        let nl = l + pb + p.alpha * e;
        b = pb + p.beta * (nl - l - pb);
        season[j] = s + p.gamma * e;
        l = nl;
        j += 1;
        if j == m {
            j = 0;
        }
    }
    // Rotate so that season[0] belongs to the first step ahead.
    season.rotate_left(j);
    HwState {
        level: l,
        trend: b,
        season,
        sse,
        n: y.len(),
    }
}

/// One-step SSE of the same recursion, rearranged for speed (the objective of the fit):
/// with `a_t = l_{t−1} + φb_{t−1}`, `p_t = φb_{t−1}`, `x_t = y_t − s_t` and `e = x − a`,
/// `p_{t+1} = φp_t + c·e` (`c = φαβ*`) and `a_{t+1} = a_t + αe + p_{t+1}
/// = (1 − α − c)·a_t + (α + c)·x_t + φp_t`. Each state now depends on the previous ones
/// through a multiply and two adds (the textbook form needs four operations), which
/// shortens the loop-carried dependency chain that bounds the speed of `hw_filter`.
#[cfg(test)]
fn hw_sse(y: &[f64], p: &SmoothingParams, init: &HwInit, season: &mut Vec<f64>) -> f64 {
    season.clear();
    if init.season.is_empty() {
        season.push(0.0);
    } else {
        season.extend_from_slice(&init.season);
    }
    let (alpha, gamma, phi) = (p.alpha, p.gamma, p.phi);
    let c = phi * p.alpha * p.beta;
    let (ka, kx) = (1.0 - alpha - c, alpha + c);
    let mut pb = phi * init.trend;
    let mut a = init.level + pb;
    let mut sse = 0.0;
    for chunk in y.chunks(season.len()) {
        for (yt, s) in chunk.iter().zip(season.iter_mut()) {
            let x = yt - *s;
            let e = x - a;
            *s += gamma * e;
            let na = ka * a + (kx * x + phi * pb);
            pb = phi * pb + c * e;
            a = na;
            sse += e * e;
        }
    }
    sse
}

/// Parameter sets `hw_sse4` evaluates in one pass.
const LANES: usize = 4;

/// `hw_sse` for `LANES` parameter sets in one pass over `y`. Each lane performs exactly the
/// operations of `hw_sse` in the same order, so its result is bit-identical; the lanes are
/// independent, so they fill the pipeline while one lane waits on its dependency chain
/// (and the compiler packs them into vector registers), which makes four evaluations cost
/// little more than one. The seasonal rings are interleaved by lane in `season`.
fn hw_sse4(
    y: &[f64],
    p: &[SmoothingParams; LANES],
    init: &HwInit,
    season: &mut Vec<f64>,
) -> [f64; LANES] {
    season.clear();
    if init.season.is_empty() {
        season.extend([0.0; LANES]);
    } else {
        for s in &init.season {
            season.extend([*s; LANES]);
        }
    }
    let m = season.len() / LANES;
    let gamma = p.map(|p| p.gamma);
    let phi = p.map(|p| p.phi);
    let c = p.map(|p| p.phi * p.alpha * p.beta);
    let mut ka = [0.0; LANES];
    let mut kx = [0.0; LANES];
    #[cfg_attr(target_arch = "x86_64", allow(unused_mut))]
    let mut pb = [0.0; LANES];
    #[cfg_attr(target_arch = "x86_64", allow(unused_mut))]
    let mut a = [0.0; LANES];
    for k in 0..LANES {
        ka[k] = 1.0 - p[k].alpha - c[k];
        kx[k] = p[k].alpha + c[k];
        pb[k] = phi[k] * init.trend;
        a[k] = init.level + pb[k];
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of every x86-64 CPU (and enabled for the target).
        unsafe { hw_sse4_sse2(y, m, season, [gamma, phi, c, ka, kx, pb, a]) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut sse = [0.0; LANES];
        for chunk in y.chunks(m) {
            for (yt, s) in chunk.iter().zip(season.chunks_exact_mut(LANES)) {
                for k in 0..LANES {
                    let x = yt - s[k];
                    let e = x - a[k];
                    s[k] += gamma[k] * e;
                    let na = ka[k] * a[k] + (kx[k] * x + phi[k] * pb[k]);
                    pb[k] = phi[k] * pb[k] + c[k] * e;
                    a[k] = na;
                    sse[k] += e * e;
                }
            }
        }
        sse
    }
}

/// The lanes of `hw_sse4` in two SSE2 registers (part of every x86-64 CPU): the compiler
/// does not pack the scalar lanes by itself. Packed IEEE operations round each lane as the
/// scalar ones do, so the results stay bit-identical to `hw_sse`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn hw_sse4_sse2(y: &[f64], m: usize, season: &mut [f64], v: [[f64; LANES]; 7]) -> [f64; LANES] {
    use std::arch::x86_64::{
        __m128d, _mm_add_pd, _mm_loadu_pd, _mm_mul_pd, _mm_set1_pd, _mm_setzero_pd, _mm_storeu_pd,
        _mm_sub_pd,
    };
    let load = |x: &[f64; LANES], h: usize| -> __m128d {
        let pair = [x[2 * h], x[2 * h + 1]];
        // SAFETY: reads the two f64 of `pair`.
        unsafe { _mm_loadu_pd(pair.as_ptr()) }
    };
    let [gamma, phi, c, ka, kx, pb, a] = v;
    let gamma = [load(&gamma, 0), load(&gamma, 1)];
    let phi = [load(&phi, 0), load(&phi, 1)];
    let c = [load(&c, 0), load(&c, 1)];
    let ka = [load(&ka, 0), load(&ka, 1)];
    let kx = [load(&kx, 0), load(&kx, 1)];
    let mut pb = [load(&pb, 0), load(&pb, 1)];
    let mut a = [load(&a, 0), load(&a, 1)];
    let mut sse = [_mm_setzero_pd(), _mm_setzero_pd()];
    for chunk in y.chunks(m) {
        for (yt, s) in chunk.iter().zip(season.chunks_exact_mut(LANES)) {
            let yv = _mm_set1_pd(*yt);
            for h in 0..2 {
                let sp = s[2 * h..2 * h + 2].as_mut_ptr();
                // SAFETY: `sp` points at two f64 inside `s`; unaligned loads and stores.
                let sv = unsafe { _mm_loadu_pd(sp) };
                let x = _mm_sub_pd(yv, sv);
                let e = _mm_sub_pd(x, a[h]);
                // SAFETY: as above.
                unsafe { _mm_storeu_pd(sp, _mm_add_pd(sv, _mm_mul_pd(gamma[h], e))) };
                let na = _mm_add_pd(
                    _mm_mul_pd(ka[h], a[h]),
                    _mm_add_pd(_mm_mul_pd(kx[h], x), _mm_mul_pd(phi[h], pb[h])),
                );
                pb[h] = _mm_add_pd(_mm_mul_pd(phi[h], pb[h]), _mm_mul_pd(c[h], e));
                a[h] = na;
                sse[h] = _mm_add_pd(sse[h], _mm_mul_pd(e, e));
            }
        }
    }
    let mut out = [0.0; LANES];
    // SAFETY: stores two f64 each into the four-element `out`.
    unsafe {
        _mm_storeu_pd(out.as_mut_ptr(), sse[0]);
        _mm_storeu_pd(out.as_mut_ptr().add(2), sse[1]);
    }
    out
}

/// Point forecasts `l_T + φ_h b_T + s_{T+h−m(k+1)}` with `φ_h = φ + … + φ^h`.
pub fn hw_forecast(state: &HwState, phi: f64, horizon: usize) -> Vec<f64> {
    let m = state.season.len().max(1);
    let mut phi_h = 0.0;
    let mut pk = 1.0;
    (0..horizon)
        .map(|h| {
            pk *= phi;
            phi_h += pk;
            state.level + phi_h * state.trend + state.season.get(h % m).copied().unwrap_or(0.0)
        })
        .collect()
}

/// Forecast variances of ETS(A,Ad,A) for steps 1..=horizon (σ² is the one-step variance).
pub fn hw_variances(
    p: &SmoothingParams,
    m: usize,
    seasonal: bool,
    sigma2: f64,
    horizon: usize,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(horizon);
    let mut acc = 1.0;
    let mut phi_j = 0.0;
    let mut pk = 1.0;
    for h in 1..=horizon {
        out.push(sigma2 * acc);
        // c_h enters the variance of step h + 1.
        pk *= p.phi;
        phi_j += pk;
        let mut c = p.alpha + p.alpha * p.beta * phi_j;
        if seasonal && m > 1 && h % m == 0 {
            c += p.gamma;
        }
        acc += c * c;
    }
    out
}

/// Heuristic initial states from the first seasons: level and trend from a line through
/// the first seasons' means, seasonal terms from the detrended first seasons (centred).
pub fn initial_states(y: &[f64], m: usize, trend: bool, seasonal: bool) -> HwInit {
    let n = y.len();
    if !seasonal || m < 2 || n < 2 * m {
        let k = n.clamp(1, 10);
        let head = &y[..k.min(n)];
        let (level, slope) = if trend && head.len() >= 2 {
            line(head)
        } else {
            (mean(head), 0.0)
        };
        // `line` gives the value at index 0; step back one so the first forecast is it.
        return HwInit {
            level: level - slope,
            trend: slope,
            season: Vec::new(),
        };
    }
    let k = (n / m).min(4);
    let means: Vec<f64> = (0..k).map(|i| mean(&y[i * m..(i + 1) * m])).collect();
    let (c0, per_season) = if trend {
        line(&means)
    } else {
        (mean(&means), 0.0)
    };
    let slope = per_season / m as f64;
    // The first season's mean sits at its centre, (m − 1)/2 steps after observation 0.
    let level0 = c0 - slope * (m as f64 - 1.0) / 2.0;
    let mut season = vec![0.0; m];
    for (j, s) in season.iter_mut().enumerate() {
        let mut acc = 0.0;
        for i in 0..k {
            let t = i * m + j;
            acc += y[t] - (level0 + slope * t as f64);
        }
        *s = acc / k as f64;
    }
    let sm = mean(&season);
    season.iter_mut().for_each(|s| *s -= sm);
    HwInit {
        level: level0 - slope,
        trend: slope,
        season,
    }
}

fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        0.0
    } else {
        x.iter().sum::<f64>() / x.len() as f64
    }
}

/// Least-squares line through `x` at indices 0.. → (value at 0, slope).
fn line(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mx = (n - 1.0) / 2.0;
    let my = mean(x);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, v) in x.iter().enumerate() {
        let dx = i as f64 - mx;
        sxy += dx * (v - my);
        sxx += dx * dx;
    }
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - b * mx, b)
}

fn logistic(u: f64) -> f64 {
    1.0 / (1.0 + (-u).exp())
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// Nelder-Mead minimiser (reflection 1, expansion 2, contraction ½, shrink ½) of a
/// function of one point.
#[cfg(test)]
fn nelder_mead(
    f: &mut impl FnMut(&[f64]) -> f64,
    x0: &[f64],
    step: f64,
    max_evals: usize,
) -> (Vec<f64>, f64) {
    let mut batch = |pts: &[&[f64]], out: &mut [f64]| {
        for (x, v) in pts.iter().zip(out.iter_mut()) {
            *v = f(x);
        }
    };
    nelder_mead_batch(&mut batch, x0, step, max_evals)
}

/// An objective that values a batch of points (at most `LANES`) into `out`.
trait BatchObjective: FnMut(&[&[f64]], &mut [f64]) {}
impl<F: FnMut(&[&[f64]], &mut [f64])> BatchObjective for F {}

/// Nelder-Mead with speculative evaluation: `f` values up to `LANES` points at once. Each
/// iteration evaluates the reflection together with the expansion and both contractions,
/// and the search then takes exactly the path, and counts exactly the evaluations, of the
/// sequential method (which evaluates the second point only when it needs it); the initial
/// simplex and shrinks are evaluated in batches too. With a batched objective whose cost
/// barely grows with the batch, an iteration costs one pass instead of up to two.
fn nelder_mead_batch(
    f: &mut impl FnMut(&[&[f64]], &mut [f64]),
    x0: &[f64],
    step: f64,
    max_evals: usize,
) -> (Vec<f64>, f64) {
    let d = x0.len();
    let finite = |v: f64| if v.is_finite() { v } else { f64::INFINITY };
    let eval_all = |pts: &[Vec<f64>], f: &mut dyn BatchObjective| {
        let mut vals = Vec::with_capacity(pts.len());
        for group in pts.chunks(LANES) {
            let mut refs: [&[f64]; LANES] = [&[]; LANES];
            for (r, x) in refs.iter_mut().zip(group) {
                *r = x;
            }
            let mut out = [0.0; LANES];
            f(&refs[..group.len()], &mut out[..group.len()]);
            vals.extend(out[..group.len()].iter().map(|v| finite(*v)));
        }
        vals
    };
    let mut points = vec![x0.to_vec()];
    for i in 0..d {
        let mut x = x0.to_vec();
        x[i] += step;
        points.push(x);
    }
    let vals = eval_all(&points, f);
    let mut evals = d + 1;
    let mut simplex: Vec<(Vec<f64>, f64)> = points.into_iter().zip(vals).collect();
    let mut centroid = vec![0.0; d];
    // Reflection, expansion, outside and inside contraction.
    let mut trial = vec![vec![0.0; d]; 4];
    while evals < max_evals {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        if (simplex[d].1 - simplex[0].1).abs() <= 1e-10 * (1.0 + simplex[0].1.abs()) {
            break;
        }
        centroid.iter_mut().for_each(|c| *c = 0.0);
        for (x, _) in &simplex[..d] {
            for (c, v) in centroid.iter_mut().zip(x) {
                *c += v / d as f64;
            }
        }
        let worst = &simplex[d].0;
        for i in 0..d {
            let xr = centroid[i] + (centroid[i] - worst[i]);
            trial[0][i] = xr;
            trial[1][i] = centroid[i] + 2.0 * (centroid[i] - worst[i]);
            trial[2][i] = centroid[i] + 0.5 * (xr - centroid[i]);
            trial[3][i] = centroid[i] + 0.5 * (worst[i] - centroid[i]);
        }
        let v = eval_all(&trial, f);
        let (fr, fe) = (v[0], v[1]);
        evals += 1;
        if fr < simplex[0].1 {
            evals += 1;
            simplex[d] = if fe < fr {
                (trial[1].clone(), fe)
            } else {
                (trial[0].clone(), fr)
            };
        } else if fr < simplex[d - 1].1 {
            simplex[d] = (trial[0].clone(), fr);
        } else {
            let k = if fr < simplex[d].1 { 2 } else { 3 };
            evals += 1;
            if v[k] < simplex[d].1.min(fr) {
                simplex[d] = (trial[k].clone(), v[k]);
            } else {
                let best = simplex[0].0.clone();
                let shrunk: Vec<Vec<f64>> = simplex[1..]
                    .iter()
                    .map(|(x, _)| (0..d).map(|i| best[i] + 0.5 * (x[i] - best[i])).collect())
                    .collect();
                let vals = eval_all(&shrunk, f);
                evals += d;
                for ((x, v), (nx, nv)) in simplex[1..].iter_mut().zip(shrunk.into_iter().zip(vals))
                {
                    *x = nx;
                    *v = nv;
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex.swap_remove(0)
}

/// Unconstrained coordinates → parameters: α ∈ (0, 1), β* ∈ (0, 1), γ ∈ (0, 1 − α),
/// φ ∈ (0.8, 0.98); absent components are fixed (β* = 0, γ = 0, φ = 1).
fn decode(u: &[f64], shape: Shape) -> SmoothingParams {
    let mut it = u.iter().copied();
    let alpha = logistic(it.next().unwrap_or(0.0)).clamp(1e-4, 1.0 - 1e-4);
    let beta = if shape.trend {
        logistic(it.next().unwrap_or(0.0))
    } else {
        0.0
    };
    let gamma = if shape.seasonal {
        (1.0 - alpha) * logistic(it.next().unwrap_or(0.0))
    } else {
        0.0
    };
    let phi = if shape.trend && shape.damped {
        0.8 + 0.18 * logistic(it.next().unwrap_or(0.0))
    } else {
        1.0
    };
    SmoothingParams {
        alpha,
        beta,
        gamma,
        phi,
    }
}

fn start(shape: Shape) -> Vec<f64> {
    let mut u = vec![logit(0.2)];
    if shape.trend {
        u.push(logit(0.05));
    }
    if shape.seasonal {
        u.push(logit(0.1));
    }
    if shape.trend && shape.damped {
        u.push(logit((0.95 - 0.8) / 0.18));
    }
    u
}

/// A smoothing model fitted by one-step SSE.
#[derive(Clone, Debug)]
struct FittedSmoothing {
    params: SmoothingParams,
    init: HwInit,
}

/// Inverse of `decode` (up to the clamps): the coordinates of `p` for `shape`.
fn encode(p: &SmoothingParams, shape: Shape) -> Vec<f64> {
    let safe = |x: f64| logit(x.clamp(1e-6, 1.0 - 1e-6));
    let mut u = vec![safe(p.alpha)];
    if shape.trend {
        u.push(safe(p.beta));
    }
    if shape.seasonal {
        u.push(safe(p.gamma / (1.0 - p.alpha).max(1e-6)));
    }
    if shape.trend && shape.damped {
        u.push(safe((p.phi - 0.8) / 0.18));
    }
    u
}

/// Fits by Nelder-Mead from `warm` (a nearby solution, searched with a smaller simplex)
/// or from the default start.
fn fit_smoothing(
    y: &[f64],
    m: usize,
    shape: Shape,
    max_evals: usize,
    warm: Option<&SmoothingParams>,
) -> FittedSmoothing {
    let init = initial_states(y, m, shape.trend, shape.seasonal);
    let init = if shape.trend {
        init
    } else {
        HwInit { trend: 0.0, ..init }
    };
    let mut scratch = Vec::with_capacity(m.max(1));
    let mut obj = |pts: &[&[f64]], out: &mut [f64]| {
        let first = decode(pts[0], shape);
        let mut ps = [first; LANES];
        for (p, u) in ps.iter_mut().zip(pts).skip(1) {
            *p = decode(u, shape);
        }
        let sse = hw_sse4(y, &ps, &init, &mut scratch);
        out.copy_from_slice(&sse[..out.len()]);
    };
    let (x0, step) = match warm {
        Some(p) => (encode(p, shape), 0.5),
        None => (start(shape), 1.0),
    };
    let (u, _) = nelder_mead_batch(&mut obj, &x0, step, max_evals);
    FittedSmoothing {
        params: decode(&u, shape),
        init,
    }
}

/// Mean and standard deviation of each forecast step.
struct Path {
    mean: Vec<f64>,
    sd: Vec<f64>,
}

/// A candidate fitted on a training prefix (of the series or of its log), able to
/// forecast from any longer prefix without refitting; forecasts are on the original scale.
struct Fitted {
    model: FittedModel,
    log: bool,
}

impl Fitted {
    fn kind(&self) -> ModelKind {
        self.model.kind()
    }
    fn period(&self) -> usize {
        self.model.period()
    }
    fn params(&self) -> Option<SmoothingParams> {
        self.model.params()
    }
    fn log_scale(&self) -> bool {
        self.log
    }

    /// `y` is on the model's scale (logs for a log model).
    fn forecast(&self, y: &[f64], horizon: usize) -> Path {
        let p = self.model.forecast(y, horizon);
        if !self.log {
            return p;
        }
        // Back-transform the median; the spread by the delta method.
        let mean: Vec<f64> = p.mean.iter().map(|v| v.exp()).collect();
        let sd = p.sd.iter().zip(&mean).map(|(s, m)| s * m).collect();
        Path { mean, sd }
    }
}

enum FittedModel {
    SeasonalNaive {
        period: usize,
    },
    Smoothing {
        kind: ModelKind,
        period: usize,
        fit: FittedSmoothing,
    },
    Theta {
        period: usize,
        alpha: f64,
    },
}

impl FittedModel {
    fn kind(&self) -> ModelKind {
        match self {
            Self::SeasonalNaive { .. } => ModelKind::SeasonalNaive,
            Self::Smoothing { kind, .. } => *kind,
            Self::Theta { .. } => ModelKind::ThetaDeseasonalised,
        }
    }

    fn period(&self) -> usize {
        match self {
            Self::SeasonalNaive { period }
            | Self::Smoothing { period, .. }
            | Self::Theta { period, .. } => *period,
        }
    }

    fn params(&self) -> Option<SmoothingParams> {
        match self {
            Self::SeasonalNaive { .. } => None,
            Self::Smoothing { fit, .. } => Some(fit.params),
            Self::Theta { alpha, .. } => Some(SmoothingParams {
                alpha: *alpha,
                beta: 0.0,
                gamma: 0.0,
                phi: 1.0,
            }),
        }
    }

    fn forecast(&self, y: &[f64], horizon: usize) -> Path {
        match self {
            Self::SeasonalNaive { period } => seasonal_naive(y, *period, horizon),
            Self::Smoothing { fit, period, .. } => {
                let st = hw_filter(y, &fit.params, &fit.init, None);
                let sigma2 = st.sse / st.n.max(1) as f64;
                let seasonal = fit.init.season.len() > 1;
                let var = hw_variances(&fit.params, *period, seasonal, sigma2, horizon);
                Path {
                    mean: hw_forecast(&st, fit.params.phi, horizon),
                    sd: var.iter().map(|v| v.sqrt()).collect(),
                }
            }
            Self::Theta { period, alpha } => theta(y, *period, *alpha, horizon),
        }
    }
}

fn seasonal_naive(y: &[f64], m: usize, horizon: usize) -> Path {
    let n = y.len();
    let m = m.clamp(1, n.max(1));
    let diffs = n.saturating_sub(m);
    let sigma2 = if diffs > 0 {
        (m..n).map(|t| (y[t] - y[t - m]).powi(2)).sum::<f64>() / diffs as f64
    } else {
        0.0
    };
    let mean = (0..horizon).map(|h| y[n - m + h % m]).collect();
    let sd = (0..horizon)
        .map(|h| (sigma2 * (h / m + 1) as f64).sqrt())
        .collect();
    Path { mean, sd }
}

/// Additive seasonal indices by phase from the series minus its centred moving average
/// (classical decomposition), summing to zero.
fn seasonal_indices(y: &[f64], m: usize) -> Vec<f64> {
    let n = y.len();
    let mut sum = vec![0.0; m];
    let mut cnt = vec![0usize; m];
    if m < 2 || n < 2 * m {
        return vec![0.0; m.max(1)];
    }
    // 2×m centred moving average (m even) or m-point (m odd), kept as a running sum.
    let half = m / 2;
    let even = m.is_multiple_of(2);
    let mut window: f64 = y[..m].iter().sum();
    for t in half..n - half - usize::from(even) {
        let ma = if even {
            let next = window - y[t - half] + y[t + half];
            let v = (window + next) / (2.0 * m as f64);
            window = next;
            v
        } else {
            let v = window / m as f64;
            if t + half + 1 < n {
                window += y[t + half + 1] - y[t - half];
            }
            v
        };
        sum[t % m] += y[t] - ma;
        cnt[t % m] += 1;
    }
    let mut idx: Vec<f64> = sum
        .iter()
        .zip(&cnt)
        .map(|(s, &c)| if c > 0 { s / c as f64 } else { 0.0 })
        .collect();
    let mi = mean(&idx);
    idx.iter_mut().for_each(|v| *v -= mi);
    idx
}

/// SES on `x` with α fixed: the final level and the one-step SSE.
fn ses_run(x: &[f64], alpha: f64) -> (f64, f64) {
    let mut l = x[0];
    let mut sse = 0.0;
    let keep = 1.0 - alpha;
    for &v in &x[1..] {
        let e = v - l;
        sse += e * e;
        // (1 − α)·l + α·v: one multiply-add on the dependency chain instead of three ops.
        l = keep * l + alpha * v;
    }
    (l, sse)
}

fn deseasonalise(y: &[f64], m: usize) -> (Vec<f64>, Vec<f64>) {
    let idx = seasonal_indices(y, m);
    let k = idx.len();
    (
        y.iter().enumerate().map(|(t, v)| v - idx[t % k]).collect(),
        idx,
    )
}

fn fit_theta(y: &[f64], m: usize) -> f64 {
    let (x, _) = deseasonalise(y, m);
    // Golden-section search on α: SES's SSE is unimodal enough in practice.
    let (mut a, mut b) = (0.01f64, 0.99f64);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (ses_run(&x, c).1, ses_run(&x, d).1);
    // 14 steps shrink the bracket to 0.6 % of its width, finer than the SSE can tell.
    for _ in 0..14 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = ses_run(&x, c).1;
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = ses_run(&x, d).1;
        }
    }
    (a + b) / 2.0
}

/// Theta method (Hyndman & Billah 2003 form) on the deseasonalised series.
fn theta(y: &[f64], m: usize, alpha: f64, horizon: usize) -> Path {
    let (x, idx) = deseasonalise(y, m);
    let n = x.len();
    let k = idx.len();
    let (level, sse) = ses_run(&x, alpha);
    let (_, slope) = line(&x);
    let sigma2 = sse / (n.max(2) - 1) as f64;
    let tail = (1.0 - alpha).powi(n as i32);
    let mean = (1..=horizon)
        .map(|h| {
            level
                + slope / 2.0 * (h as f64 - 1.0 + 1.0 / alpha - tail / alpha)
                + idx[(n + h - 1) % k]
        })
        .collect();
    let sd = (1..=horizon)
        .map(|h| (sigma2 * (1.0 + (h as f64 - 1.0) * alpha * alpha)).sqrt())
        .collect();
    Path { mean, sd }
}

fn fit_candidate(
    kind: ModelKind,
    y: &[f64],
    m: usize,
    max_evals: usize,
    log: bool,
    warm: Option<&SmoothingParams>,
) -> Fitted {
    Fitted {
        model: fit_model(kind, y, m, max_evals, warm),
        log,
    }
}

/// Objective evaluations for a model with `dim` free parameters when four get
/// `max_evals`: Nelder-Mead needs fewer steps in fewer dimensions.
fn evals_for(dim: usize, max_evals: usize) -> usize {
    (max_evals * (dim + 2) / 6).max(dim + 2)
}

fn fit_model(
    kind: ModelKind,
    y: &[f64],
    m: usize,
    max_evals: usize,
    warm: Option<&SmoothingParams>,
) -> FittedModel {
    let shape = |trend, damped, seasonal| Shape {
        trend,
        damped,
        seasonal,
    };
    match kind {
        ModelKind::SeasonalNaive => FittedModel::SeasonalNaive { period: m },
        ModelKind::HoltWinters => FittedModel::Smoothing {
            kind,
            period: m,
            fit: fit_smoothing(y, m, shape(true, false, true), max_evals, None),
        },
        ModelKind::DampedHoltWinters => FittedModel::Smoothing {
            kind,
            period: m,
            fit: match warm {
                // From the linear-trend fit, with a little damping.
                Some(w) => fit_smoothing(
                    y,
                    m,
                    shape(true, true, true),
                    evals_for(2, max_evals),
                    Some(&SmoothingParams { phi: 0.95, ..*w }),
                ),
                None => fit_smoothing(y, m, shape(true, true, true), max_evals, None),
            },
        },
        ModelKind::SeasonalSes => FittedModel::Smoothing {
            kind,
            period: m,
            fit: fit_smoothing(
                y,
                m,
                shape(false, false, true),
                evals_for(2, max_evals),
                None,
            ),
        },
        ModelKind::ThetaDeseasonalised => FittedModel::Theta {
            period: m,
            alpha: fit_theta(y, m),
        },
        ModelKind::Holt => FittedModel::Smoothing {
            kind,
            period: 1,
            fit: fit_smoothing(y, 1, shape(true, false, false), max_evals, None),
        },
        ModelKind::Ses => FittedModel::Smoothing {
            kind,
            period: 1,
            fit: fit_smoothing(y, 1, shape(false, false, false), max_evals, None),
        },
    }
}

fn smape(actual: &[f64], pred: &[f64]) -> f64 {
    let s: f64 = actual
        .iter()
        .zip(pred)
        .map(|(a, p)| {
            let d = a.abs() + p.abs();
            if d > 0.0 {
                200.0 * (a - p).abs() / d
            } else {
                0.0
            }
        })
        .sum();
    s / actual.len().max(1) as f64
}

fn mae(actual: &[f64], pred: &[f64]) -> f64 {
    actual
        .iter()
        .zip(pred)
        .map(|(a, p)| (a - p).abs())
        .sum::<f64>()
        / actual.len().max(1) as f64
}

/// Forecast `y` (equally spaced, oldest first, no gaps), its last point at `last_ts`,
/// steps `step_seconds` apart.
pub fn forecast_series(
    y: &[f64],
    last_ts: UnixSeconds,
    step_seconds: i64,
    params: &ForecastParams,
) -> Result<ProviderForecast, ForecastError> {
    if !(params.interval_level > 0.0 && params.interval_level < 1.0) {
        return Err(ForecastError::BadLevel(params.interval_level));
    }
    if params.horizon == 0 {
        return Err(ForecastError::ZeroHorizon);
    }
    let y = if params.max_history > 0 && y.len() > params.max_history {
        &y[y.len() - params.max_history..]
    } else {
        y
    };
    let n = y.len();
    if n < 2 {
        return Err(ForecastError::TooShort { points: n, min: 2 });
    }
    let m = params.season.max(1);
    let h = params.horizon;
    let mut warnings = Vec::new();
    let seasonal = m > 1 && n >= 2 * m;
    if !seasonal && m > 1 {
        warnings.push(format!(
            "history of {n} points is shorter than two seasons ({}): no seasonal model, using {}",
            2 * m,
            if n >= 10 {
                "holt"
            } else {
                "simple exponential smoothing"
            }
        ));
    }
    // The holdout mimics the task: as many steps as will be forecast (Tashman 2000, "out-of-
    // sample tests of forecasting accuracy"), so steps beyond one season are checked too.
    let wanted = if params.holdout > 0 {
        params.holdout
    } else {
        h
    };
    // Seasonal candidates need two seasons in the training part too.
    let min_train = if seasonal { 2 * m } else { 6 };
    let holdout = wanted.min(n.saturating_sub(min_train));
    let holdout = if holdout >= 4.min(wanted) && holdout > 0 {
        holdout
    } else {
        0
    };

    let mut kinds: Vec<(ModelKind, usize, bool)> = Vec::new();
    // Whether seasonal naive joins every combination (see below).
    let mut anchored = false;
    if seasonal {
        let positive = params.log_candidates && y.iter().all(|v| *v > 0.0);
        for log in [false, true] {
            if log && !positive {
                continue;
            }
            // The ETS family with an additive season, no / linear / damped trend (as in
            // Hyndman et al.'s automatic ETS). The damped fit starts from the linear one,
            // which lacks only φ, so it needs fewer evaluations. A trend that extrapolates
            // badly over the horizon loses on the horizon-long holdout.
            kinds.extend([
                (ModelKind::SeasonalSes, m, log),
                (ModelKind::HoltWinters, m, log),
                (ModelKind::DampedHoltWinters, m, log),
                (ModelKind::ThetaDeseasonalised, m, log),
            ]);
        }
        kinds.push((ModelKind::SeasonalNaive, m, false));
        let lm = params.long_season;
        if lm > m && n >= 2 * lm + holdout {
            kinds.push((ModelKind::SeasonalNaive, lm, false));
        } else {
            anchored = holdout > 0;
        }
    } else if n >= 10 {
        kinds.extend([(ModelKind::Holt, 1, false), (ModelKind::Ses, 1, false)]);
    } else {
        kinds.push((ModelKind::Ses, 1, false));
    }
    let ly: Vec<f64> = if kinds.iter().any(|k| k.2) {
        y.iter().map(|v| v.ln()).collect()
    } else {
        Vec::new()
    };

    // Rolling origin (Tashman 2000): the candidates are scored on `origins` holdouts that
    // follow each other without overlapping (origins a whole number of seasons apart, so
    // every holdout starts at the same phase as the forecast), the last ending with the
    // history; as many origins as leave two seasons to fit on. One holdout is a small
    // sample of one stretch of the series, and which model wins it is noisy; the mean
    // error over a few stretches ranks the models more reliably. The parameters are fitted
    // once, on the history before the earliest origin, and each origin's forecast runs
    // them over its own prefix, so no holdout is in the fit.
    let step = holdout.div_ceil(m) * m;
    let mut origins = if holdout > 0 {
        params.origins.max(1)
    } else {
        1
    };
    while origins > 1 && n < holdout + (origins - 1) * step + min_train {
        origins -= 1;
    }
    let fit_end = n - holdout - (origins - 1) * step;
    let ends: Vec<usize> = (0..origins).map(|k| fit_end + k * step).collect();
    // The linear-trend fit on each scale, to start the damped one from.
    let mut warm: [Option<SmoothingParams>; 2] = [None, None];
    let mut scored: Vec<(Fitted, Option<f64>, Vec<Path>)> = Vec::with_capacity(kinds.len());
    for &(k, p, log) in &kinds {
        let series = if log { &ly[..] } else { y };
        let start_from = match k {
            ModelKind::DampedHoltWinters => warm[usize::from(log)],
            _ => None,
        };
        let f = fit_candidate(
            k,
            &series[..fit_end],
            p,
            params.max_evals,
            log,
            start_from.as_ref(),
        );
        if k == ModelKind::HoltWinters {
            warm[usize::from(log)] = f.params();
        }
        scored.push(if holdout > 0 {
            let paths: Vec<Path> = ends
                .iter()
                .map(|&e| f.forecast(&series[..e], holdout))
                .collect();
            let err = ends
                .iter()
                .zip(&paths)
                .map(|(&e, path)| mae(&y[e..e + holdout], &path.mean))
                .sum::<f64>()
                / origins as f64;
            (f, Some(err), paths)
        } else {
            (f, None, Vec::new())
        });
    }
    // Best first; without a holdout the listed order is the preference order.
    if holdout > 0 {
        scored.sort_by(|a, b| {
            a.1.unwrap_or(f64::INFINITY)
                .total_cmp(&b.1.unwrap_or(f64::INFINITY))
        });
    }
    let combine = |paths: &[&Path], weights: &[f64], len: usize| -> Path {
        let mut mean = vec![0.0; len];
        let mut sd = vec![0.0; len];
        for (p, w) in paths.iter().zip(weights) {
            for i in 0..len {
                mean[i] += w * p.mean[i];
                sd[i] += w * p.sd[i];
            }
        }
        Path { mean, sd }
    };
    let top = params.combine_top.clamp(1, scored.len());
    // Shrinkage toward seasonal naive when the history is short (too short for the weekly
    // candidate, as with the product's 168 h window): holdouts on a few days rank the
    // fitted models noisily, and their parameters and seasonal states rest on a few
    // seasons, so the benchmark they must beat takes the last place of the combination
    // (with its own inverse-error weight) instead of the next-ranked fitted model, whatever
    // the ranking says; when it ranks first it stands alone.
    let mut count = match (holdout > 0, anchored) {
        (false, _) => 1,
        (true, false) => top,
        (true, true) => (top - 1).max(1),
    };
    if anchored
        && let Some(j) = scored
            .iter()
            .position(|(f, _, _)| f.kind() == ModelKind::SeasonalNaive && f.period() == m)
        && j >= count
    {
        scored[count..=j].rotate_right(1);
        count += 1;
    }
    let inv: Vec<f64> = scored[..count]
        .iter()
        .map(|(_, e, _)| e.map_or(1.0, |e| 1.0 / e.max(1e-12)))
        .collect();
    let total: f64 = inv.iter().sum();
    let weights: Vec<f64> = inv.iter().map(|w| w / total).collect();
    let members = &scored[..count];

    // Holdouts: accuracy of the combined forecast and how its predicted spread compares,
    // over every origin.
    let (holdout_smape, widen) = if holdout > 0 {
        let (mut ratio2, mut sm) = (0.0, 0.0);
        for (o, &e) in ends.iter().enumerate() {
            let hp: Vec<&Path> = members.iter().map(|(_, _, p)| &p[o]).collect();
            let c = combine(&hp, &weights, holdout);
            let actual = &y[e..e + holdout];
            ratio2 += actual
                .iter()
                .zip(c.mean.iter().zip(&c.sd))
                .map(|(a, (m, s))| if *s > 0.0 { ((a - m) / s).powi(2) } else { 0.0 })
                .sum::<f64>();
            sm += smape(actual, &c.mean);
        }
        let ratio2 = ratio2 / (holdout * origins) as f64;
        (
            Some(sm / origins as f64),
            ratio2.sqrt().clamp(MIN_WIDEN, MAX_WIDEN),
        )
    } else {
        (None, 1.0)
    };

    let paths: Vec<Path> = members
        .iter()
        .map(|(f, _, _)| f.forecast(if f.log_scale() { &ly } else { y }, h))
        .collect();
    let path = combine(&paths.iter().collect::<Vec<_>>(), &weights, h);
    let z = Normal::standard().inverse_cdf(0.5 + params.interval_level / 2.0);
    let clip = |v: f64| params.clamp.map_or(v, |(lo, hi)| v.clamp(lo, hi));
    let points = (0..h)
        .map(|i| {
            let half = z * path.sd[i] * widen;
            ForecastPoint {
                timestamp: last_ts + step_seconds * (i as i64 + 1),
                value: clip(path.mean[i]),
                lower: clip(path.mean[i] - half),
                upper: clip(path.mean[i] + half),
            }
        })
        .collect();
    let members: Vec<ModelChoice> = members
        .iter()
        .zip(&weights)
        .map(|((f, e, _), w)| ModelChoice {
            kind: f.kind(),
            period: f.period(),
            weight: *w,
            holdout_mae: *e,
            params: f.params(),
            log_scale: f.log_scale(),
        })
        .collect();
    let model = if members.len() == 1 {
        model_name(&members[0])
    } else {
        "combination".to_string()
    };
    let confidence = holdout_smape.map_or(0.5, |s| (1.0 - s / 100.0).clamp(0.0, 1.0));
    let low_confidence = confidence < params.confidence_threshold;
    if low_confidence {
        warnings.push(format!(
            "forecast confidence {confidence:.2} is below {:.2}",
            params.confidence_threshold
        ));
    }
    Ok(ProviderForecast {
        points,
        model,
        members,
        interval_level: params.interval_level,
        history_points: n,
        holdout_smape_percent: holdout_smape,
        confidence,
        low_confidence,
        warnings,
    })
}

fn model_name(c: &ModelChoice) -> String {
    let base = match c.kind {
        ModelKind::SeasonalNaive => "seasonal_naive",
        ModelKind::HoltWinters => "holt_winters",
        ModelKind::DampedHoltWinters => "damped_holt_winters",
        ModelKind::SeasonalSes => "seasonal_ses",
        ModelKind::ThetaDeseasonalised => "theta_deseasonalised",
        ModelKind::Holt => "holt",
        ModelKind::Ses => "ses",
    };
    if c.period > 1 {
        format!("{base}_{}", c.period)
    } else {
        base.to_string()
    }
}

/// A window metric as a gap-free series: leading and trailing hours without data are
/// dropped, interior gaps are filled by linear interpolation. Returns the series and the
/// epoch hour of its last point.
pub fn window_metric(
    window: &HourWindow,
    metric: impl Fn(&HourBucket) -> f64,
) -> Option<(Vec<f64>, i64)> {
    let raw: Vec<(i64, f64)> = window.iter().map(|(hr, b)| (hr, metric(b))).collect();
    let first = raw.iter().position(|(_, v)| v.is_finite())?;
    let last = raw.iter().rposition(|(_, v)| v.is_finite())?;
    let mut out: Vec<f64> = raw[first..=last].iter().map(|(_, v)| *v).collect();
    let mut prev = 0;
    for i in 1..out.len() {
        if out[i].is_finite() {
            if i - prev > 1 {
                let (a, b) = (out[prev], out[i]);
                for (k, v) in out[prev + 1..i].iter_mut().enumerate() {
                    *v = a + (b - a) * (k + 1) as f64 / (i - prev) as f64;
                }
            }
            prev = i;
        }
    }
    Some((out, raw[last].0))
}

/// Forecast of the hourly composite score (clipped to 0–100) from a provider's window.
/// Points start at the hour after the newest scored hour.
pub fn forecast_score(
    window: &HourWindow,
    params: &ForecastParams,
) -> Result<ProviderForecast, ForecastError> {
    let Some((y, last_hour)) = window_metric(window, |b| f64::from(b.score)) else {
        return Err(ForecastError::TooShort { points: 0, min: 2 });
    };
    let p = ForecastParams {
        clamp: params.clamp.or(Some((0.0, 100.0))),
        ..params.clone()
    };
    forecast_series(&y, last_hour * HOUR, HOUR, &p)
}

/// Long-term (daily) forecast: hourly values averaged per UTC day, weekly season (7) when
/// two weeks are available, `horizon_days` ahead. `first_hour` is the epoch hour of `y[0]`.
pub fn forecast_daily(
    y_hourly: &[f64],
    first_hour: i64,
    horizon_days: usize,
    interval_level: f64,
) -> Result<ProviderForecast, ForecastError> {
    let mut days: Vec<(i64, f64, u32)> = Vec::new();
    for (i, v) in y_hourly.iter().enumerate() {
        if !v.is_finite() {
            continue;
        }
        let day = (first_hour + i as i64).div_euclid(24);
        match days.last_mut() {
            Some((d, s, c)) if *d == day => {
                *s += v;
                *c += 1;
            }
            _ => days.push((day, *v, 1)),
        }
    }
    let y: Vec<f64> = days.iter().map(|(_, s, c)| s / f64::from(*c)).collect();
    let last_day = days.last().map_or(0, |d| d.0);
    let params = ForecastParams {
        horizon: horizon_days,
        interval_level,
        season: 7,
        long_season: 0,
        holdout: 7,
        ..ForecastParams::default()
    };
    forecast_series(&y, last_day * 24 * HOUR, 24 * HOUR, &params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Fixture {
        seasonal_periods: usize,
        horizon: usize,
        y: Vec<f64>,
        cases: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        alpha: f64,
        beta: f64,
        gamma: f64,
        phi: f64,
        initial_level: f64,
        initial_trend: f64,
        initial_seasonal: Vec<f64>,
        fitted: Vec<f64>,
        sse: f64,
        final_level: f64,
        final_trend: f64,
        final_season: Vec<f64>,
        forecast: Vec<f64>,
        forecast_from_states: Vec<f64>,
    }

    fn fixture() -> Fixture {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/holt_winters_statsmodels.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture"))
            .expect("fixture json")
    }

    #[test]
    fn recursion_matches_statsmodels() {
        let fx = fixture();
        let m = fx.seasonal_periods;
        assert_eq!(fx.cases.len(), 2);
        for c in &fx.cases {
            let p = SmoothingParams {
                alpha: c.alpha,
                beta: c.beta,
                gamma: c.gamma,
                phi: c.phi,
            };
            let init = HwInit {
                level: c.initial_level,
                trend: c.initial_trend,
                season: c.initial_seasonal.clone(),
            };
            let mut fitted = Vec::new();
            let st = hw_filter(&fx.y, &p, &init, Some(&mut fitted));
            assert_eq!(fitted.len(), c.fitted.len());
            for (i, (a, b)) in fitted.iter().zip(&c.fitted).enumerate() {
                assert!((a - b).abs() < 1e-6, "{} fitted[{i}]: {a} vs {b}", c.name);
            }
            assert!(
                (st.sse - c.sse).abs() < 1e-6 * c.sse.max(1.0),
                "{} sse",
                c.name
            );
            assert!((st.level - c.final_level).abs() < 1e-6, "{} level", c.name);
            assert!((st.trend - c.final_trend).abs() < 1e-6, "{} trend", c.name);
            for (a, b) in st.season.iter().zip(&c.final_season) {
                assert!((a - b).abs() < 1e-6, "{} season", c.name);
            }
            let fc = hw_forecast(&st, p.phi, fx.horizon);
            for h in 1..=fx.horizon {
                // statsmodels ≤ 0.15 uses a stale seasonal factor at multiples of m
                // (statsmodels issue #9538); there we check Hyndman's equation on its states.
                let want = if h % m == 0 {
                    c.forecast_from_states[h - 1]
                } else {
                    c.forecast[h - 1]
                };
                let got = fc[h - 1];
                assert!(
                    (got - want).abs() < 1e-6,
                    "{} forecast h={h}: {got} vs {want}",
                    c.name
                );
                assert!((c.forecast_from_states[h - 1] - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn fast_sse_equals_textbook_recursion() {
        let fx = fixture();
        let init = HwInit {
            level: 59.0,
            trend: 0.03,
            season: fx.cases[0].initial_seasonal.clone(),
        };
        for (a, b, g, phi) in [
            (0.35, 0.08, 0.2, 1.0),
            (0.9, 0.5, 0.05, 0.85),
            (0.01, 0.99, 0.5, 0.95),
        ] {
            let p = SmoothingParams {
                alpha: a,
                beta: b,
                gamma: g,
                phi,
            };
            let want = hw_filter(&fx.y, &p, &init, None).sse;
            let got = hw_sse(&fx.y, &p, &init, &mut Vec::new());
            assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
        }
        // No season (Holt): the ring is a single zero.
        let holt = HwInit {
            level: 59.0,
            trend: 0.03,
            season: Vec::new(),
        };
        let p = SmoothingParams {
            alpha: 0.3,
            beta: 0.1,
            gamma: 0.0,
            phi: 1.0,
        };
        let want = hw_filter(&fx.y, &p, &holt, None).sse;
        assert!((hw_sse(&fx.y, &p, &holt, &mut Vec::new()) - want).abs() <= 1e-9 * want);
    }

    #[test]
    fn variances_match_hand_calculation() {
        // α = 0.5, β* = 0.2, γ = 0.3, φ = 1, m = 2, σ² = 1: c_j = 0.5 + 0.1·j (+0.3 when j even).
        // c1 = 0.6, c2 = 1.0, c3 = 0.8 → v1 = 1, v2 = 1.36, v3 = 2.36, v4 = 3.0.
        let p = SmoothingParams {
            alpha: 0.5,
            beta: 0.2,
            gamma: 0.3,
            phi: 1.0,
        };
        let v = hw_variances(&p, 2, true, 1.0, 4);
        for (a, b) in v.iter().zip([1.0, 1.36, 2.36, 3.0]) {
            assert!((a - b).abs() < 1e-12, "{v:?}");
        }
        // SES (β* = γ = 0): 1 + (h − 1)α².
        let s = SmoothingParams {
            alpha: 0.4,
            beta: 0.0,
            gamma: 0.0,
            phi: 1.0,
        };
        let v = hw_variances(&s, 1, false, 2.0, 3);
        for (a, b) in v.iter().zip([2.0, 2.32, 2.64]) {
            assert!((a - b).abs() < 1e-12, "{v:?}");
        }
    }

    #[test]
    fn nelder_mead_finds_quadratic_minimum() {
        let mut f = |x: &[f64]| (x[0] - 1.0).powi(2) + 3.0 * (x[1] + 2.0).powi(2) + 5.0;
        let (x, v) = nelder_mead(&mut f, &[0.0, 0.0], 1.0, 400);
        assert!(
            (x[0] - 1.0).abs() < 1e-3 && (x[1] + 2.0).abs() < 1e-3,
            "{x:?}"
        );
        assert!((v - 5.0).abs() < 1e-6);
    }

    fn daily_series(n: usize, noise: f64) -> Vec<f64> {
        (0..n)
            .map(|t| {
                let tf = t as f64;
                50.0 + 10.0 * (2.0 * std::f64::consts::PI * tf / 24.0).sin()
                    + noise * ((tf * 12.9898).sin() * 43758.5453).fract()
            })
            .collect()
    }

    #[test]
    fn fitting_recovers_pure_seasonal_pattern() {
        // A noiseless daily sine: every seasonal model should nail it.
        let y = daily_series(168, 0.0);
        let f = forecast_series(&y, 0, HOUR, &ForecastParams::default()).unwrap();
        assert_eq!(f.points.len(), 24);
        for (i, p) in f.points.iter().enumerate() {
            let want = 50.0 + 10.0 * (2.0 * std::f64::consts::PI * (168 + i) as f64 / 24.0).sin();
            assert!(
                (p.value - want).abs() < 0.05,
                "step {i}: {} vs {want}",
                p.value
            );
            assert!(p.lower <= p.value && p.value <= p.upper);
            assert_eq!(p.timestamp, (i as i64 + 1) * HOUR);
        }
        assert!(f.confidence > 0.99);
        assert!(f.warnings.is_empty());
    }

    #[test]
    fn short_history_falls_back_with_warning() {
        // 30 points on a line: no two seasons, so Holt or SES with a warning.
        let y: Vec<f64> = (0..30).map(|t| 10.0 + 0.5 * t as f64).collect();
        let f = forecast_series(&y, 0, HOUR, &ForecastParams::default()).unwrap();
        assert!(
            f.warnings
                .iter()
                .any(|w| w.contains("shorter than two seasons"))
        );
        assert!(
            f.members
                .iter()
                .all(|m| matches!(m.kind, ModelKind::Holt | ModelKind::Ses))
        );
        // Holt follows an exact line, and it wins the holdout over SES.
        assert_eq!(f.members[0].kind, ModelKind::Holt);
        assert!(
            (f.points[0].value - 25.0).abs() < 0.5,
            "{}",
            f.points[0].value
        );
        let tiny = forecast_series(&[1.0, 2.0, 3.0], 0, HOUR, &ForecastParams::default()).unwrap();
        assert_eq!(tiny.model, "ses");
        assert!(forecast_series(&[1.0], 0, HOUR, &ForecastParams::default()).is_err());
    }

    #[test]
    fn intervals_widen_with_horizon_and_level() {
        let y = daily_series(168, 6.0);
        let p95 = forecast_series(&y, 0, HOUR, &ForecastParams::default()).unwrap();
        let p80 = forecast_series(
            &y,
            0,
            HOUR,
            &ForecastParams {
                interval_level: 0.8,
                ..Default::default()
            },
        )
        .unwrap();
        let w = |f: &ProviderForecast, i: usize| f.points[i].upper - f.points[i].lower;
        assert!(w(&p95, 23) >= w(&p95, 0));
        assert!(w(&p95, 5) > w(&p80, 5));
        assert!(
            forecast_series(
                &y,
                0,
                HOUR,
                &ForecastParams {
                    interval_level: 1.0,
                    ..Default::default()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn seasonal_naive_repeats_last_season() {
        let y: Vec<f64> = (0..10)
            .map(|t| (t % 3) as f64 + if t >= 6 { 1.0 } else { 0.0 })
            .collect();
        let p = seasonal_naive(&y, 3, 5);
        assert_eq!(p.mean, vec![2.0, 3.0, 1.0, 2.0, 3.0]);
        // Seasonal differences: three of 1 (at t = 6, 7, 8), four of 0 → σ² = 3/7.
        let s2: f64 = 3.0 / 7.0;
        assert!((p.sd[0] - s2.sqrt()).abs() < 1e-12);
        assert!((p.sd[3] - (2.0 * s2).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn daily_forecast_uses_weekly_season_when_history_allows() {
        // 28 days of hourly values, constant within a day: 60 on weekdays-ish phases 0–4,
        // 20 on phases 5 and 6 of a 7-day cycle. Daily means repeat with period 7 exactly.
        let y: Vec<f64> = (0..28 * 24)
            .map(|h| if (h / 24) % 7 >= 5 { 20.0 } else { 60.0 })
            .collect();
        let f = forecast_daily(&y, 0, 7, 0.95).unwrap();
        assert_eq!(f.points.len(), 7);
        assert!(f.members.iter().all(|m| m.period == 7), "{:?}", f.members);
        // Day 28 has phase 0 … day 34 phase 6.
        let want = [60.0, 60.0, 60.0, 60.0, 60.0, 20.0, 20.0];
        for (p, w) in f.points.iter().zip(want) {
            assert!((p.value - w).abs() < 0.5, "{} vs {w}", p.value);
        }
        assert_eq!(f.points[0].timestamp, 28 * 24 * HOUR);
        // Ten days: shorter than two weeks, so no weekly season and a warning.
        let short = forecast_daily(&y[..240], 0, 3, 0.95).unwrap();
        assert!(
            short
                .warnings
                .iter()
                .any(|w| w.contains("shorter than two seasons"))
        );
    }

    #[test]
    fn encode_inverts_decode() {
        let shapes = [
            (false, false, true),
            (true, false, true),
            (true, true, true),
            (true, true, false),
        ];
        let p = SmoothingParams {
            alpha: 0.3,
            beta: 0.07,
            gamma: 0.2,
            phi: 0.9,
        };
        for (trend, damped, seasonal) in shapes {
            let shape = Shape {
                trend,
                damped,
                seasonal,
            };
            let q = decode(&encode(&p, shape), shape);
            assert!((q.alpha - p.alpha).abs() < 1e-12, "{shape:?}");
            if trend {
                assert!((q.beta - p.beta).abs() < 1e-12, "{shape:?}");
            }
            if seasonal {
                assert!((q.gamma - p.gamma).abs() < 1e-12, "{shape:?}");
            }
            if trend && damped {
                assert!((q.phi - p.phi).abs() < 1e-12, "{shape:?}");
            }
        }
    }

    #[test]
    fn warm_started_fit_is_no_worse_than_its_start() {
        let y: Vec<f64> = daily_series(144, 6.0)
            .iter()
            .enumerate()
            .map(|(t, v)| v + 0.05 * t as f64)
            .collect();
        let shape = Shape {
            trend: true,
            damped: true,
            seasonal: true,
        };
        let start = SmoothingParams {
            alpha: 0.3,
            beta: 0.05,
            gamma: 0.2,
            phi: 0.95,
        };
        let fit = fit_smoothing(&y, 24, shape, 24, Some(&start));
        let sse = |p: &SmoothingParams| hw_filter(&y, p, &fit.init, None).sse;
        assert!(sse(&fit.params) <= sse(&decode(&encode(&start, shape), shape)));
        assert!(fit.params.phi > 0.8 && fit.params.phi < 0.98);
    }

    #[test]
    fn candidates_are_scored_over_rolling_origins() {
        // Seasonal naive's score is the mean of its holdout MAEs at the origins, which are
        // a horizon apart (rounded up to whole seasons) and end with the history.
        let y: Vec<f64> = daily_series(24 * 30, 4.0)
            .iter()
            .enumerate()
            .map(|(t, v)| v + 0.05 * t as f64)
            .collect();
        let n = y.len();
        for (horizon, origins) in [(24, 3), (30, 2), (48, 1)] {
            let p = ForecastParams {
                horizon,
                origins,
                combine_top: 20,
                ..ForecastParams::default()
            };
            let f = forecast_series(&y, 0, HOUR, &p).unwrap();
            let step = horizon.div_ceil(24) * 24;
            let expected = (0..origins)
                .map(|k| {
                    let e = n - horizon - k * step;
                    let fc: Vec<f64> = (0..horizon).map(|i| y[e - 24 + i % 24]).collect();
                    mae(&y[e..e + horizon], &fc)
                })
                .sum::<f64>()
                / origins as f64;
            let snaive = f
                .members
                .iter()
                .find(|m| m.kind == ModelKind::SeasonalNaive && m.period == 24)
                .unwrap();
            let got = snaive.holdout_mae.unwrap();
            assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
        }
        // Origins that would leave less than two seasons to fit on are dropped.
        let short = &y[..24 * 4];
        let p = ForecastParams {
            origins: 5,
            ..ForecastParams::default()
        };
        let f = forecast_series(short, 0, HOUR, &p).unwrap();
        assert_eq!(f.points.len(), 24);
        assert!(f.points.iter().all(|pt| pt.value.is_finite()));
    }

    #[test]
    fn short_history_always_combines_with_seasonal_naive() {
        // A week of noisy hours with a drift: too short for the weekly candidate, so
        // seasonal naive is a member whatever the holdout ranking says.
        let y: Vec<f64> = daily_series(168, 6.0)
            .iter()
            .enumerate()
            .map(|(t, v)| v + 0.1 * t as f64)
            .collect();
        for horizon in [24, 48] {
            let p = ForecastParams {
                horizon,
                ..ForecastParams::default()
            };
            let f = forecast_series(&y, 0, HOUR, &p).unwrap();
            assert_eq!(f.points.len(), horizon);
            assert!(
                f.members
                    .iter()
                    .any(|m| m.kind == ModelKind::SeasonalNaive && m.period == 24),
                "{:?}",
                f.members
            );
            assert!(f.members.len() <= p.combine_top);
            let total: f64 = f.members.iter().map(|m| m.weight).sum();
            assert!((total - 1.0).abs() < 1e-12);
            assert!(f.members.iter().all(|m| m.holdout_mae.is_some()));
        }
    }

    /// The sequential Nelder-Mead this module used before batching (the reference).
    /// Nelder-Mead minimiser (reflection 1, expansion 2, contraction ½, shrink ½).
    fn nelder_mead_sequential(
        f: &mut impl FnMut(&[f64]) -> f64,
        x0: &[f64],
        step: f64,
        max_evals: usize,
    ) -> (Vec<f64>, f64) {
        let d = x0.len();
        let mut evals = 0;
        let mut eval = |x: &[f64], evals: &mut usize| {
            *evals += 1;
            let v = f(x);
            if v.is_finite() { v } else { f64::INFINITY }
        };
        let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(d + 1);
        simplex.push((x0.to_vec(), eval(x0, &mut evals)));
        for i in 0..d {
            let mut x = x0.to_vec();
            x[i] += step;
            let v = eval(&x, &mut evals);
            simplex.push((x, v));
        }
        let mut centroid = vec![0.0; d];
        let mut xr = vec![0.0; d];
        let mut xt = vec![0.0; d];
        while evals < max_evals {
            simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
            if (simplex[d].1 - simplex[0].1).abs() <= 1e-10 * (1.0 + simplex[0].1.abs()) {
                break;
            }
            centroid.iter_mut().for_each(|c| *c = 0.0);
            for (x, _) in &simplex[..d] {
                for (c, v) in centroid.iter_mut().zip(x) {
                    *c += v / d as f64;
                }
            }
            let worst = simplex[d].0.clone();
            for i in 0..d {
                xr[i] = centroid[i] + (centroid[i] - worst[i]);
            }
            let fr = eval(&xr, &mut evals);
            if fr < simplex[0].1 {
                for i in 0..d {
                    xt[i] = centroid[i] + 2.0 * (centroid[i] - worst[i]);
                }
                let fe = eval(&xt, &mut evals);
                simplex[d] = if fe < fr {
                    (xt.clone(), fe)
                } else {
                    (xr.clone(), fr)
                };
            } else if fr < simplex[d - 1].1 {
                simplex[d] = (xr.clone(), fr);
            } else {
                let outside = fr < simplex[d].1;
                for i in 0..d {
                    let towards = if outside { xr[i] } else { worst[i] };
                    xt[i] = centroid[i] + 0.5 * (towards - centroid[i]);
                }
                let fc = eval(&xt, &mut evals);
                if fc < simplex[d].1.min(fr) {
                    simplex[d] = (xt.clone(), fc);
                } else {
                    let best = simplex[0].0.clone();
                    for (x, v) in simplex.iter_mut().skip(1) {
                        for i in 0..d {
                            x[i] = best[i] + 0.5 * (x[i] - best[i]);
                        }
                        *v = eval(x, &mut evals);
                    }
                }
            }
        }
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        simplex.swap_remove(0)
    }

    #[test]
    fn batched_fit_takes_the_sequential_path_exactly() {
        let fx = fixture();
        let y: Vec<f64> = fx.y.iter().chain(&fx.y).copied().collect();
        let m = fx.seasonal_periods;
        for (trend, damped, seasonal) in [
            (false, false, true),
            (true, false, true),
            (true, true, true),
            (true, false, false),
        ] {
            let shape = Shape {
                trend,
                damped,
                seasonal,
            };
            let init = initial_states(&y, m, trend, seasonal);
            let mut scratch = Vec::new();
            for (x0, step, evals) in [(start(shape), 1.0, 36), (start(shape), 0.5, 200)] {
                let mut seq = |u: &[f64]| hw_sse(&y, &decode(u, shape), &init, &mut scratch);
                let want = nelder_mead_sequential(&mut seq, &x0, step, evals);
                let mut count = 0;
                let mut batch = |pts: &[&[f64]], out: &mut [f64]| {
                    count += 1;
                    let mut ps = [decode(pts[0], shape); LANES];
                    for (p, u) in ps.iter_mut().zip(pts).skip(1) {
                        *p = decode(u, shape);
                    }
                    let sse = hw_sse4(&y, &ps, &init, &mut Vec::new());
                    out.copy_from_slice(&sse[..out.len()]);
                };
                let got = nelder_mead_batch(&mut batch, &x0, step, evals);
                assert_eq!(got, want, "{shape:?}");
                assert!(count < evals, "{count} passes for {evals} evaluations");
            }
        }
    }

    #[test]
    fn lanes_equal_the_scalar_objective_bit_for_bit() {
        let fx = fixture();
        let init = initial_states(&fx.y, fx.seasonal_periods, true, true);
        let ps = [
            (0.35, 0.08, 0.2, 1.0),
            (0.9, 0.5, 0.05, 0.85),
            (0.01, 0.99, 0.5, 0.95),
            (0.5, 0.0, 0.3, 1.0),
        ]
        .map(|(alpha, beta, gamma, phi)| SmoothingParams {
            alpha,
            beta,
            gamma,
            phi,
        });
        let got = hw_sse4(&fx.y, &ps, &init, &mut Vec::new());
        for (p, g) in ps.iter().zip(got) {
            assert_eq!(
                g.to_bits(),
                hw_sse(&fx.y, p, &init, &mut Vec::new()).to_bits()
            );
        }
    }

    #[test]
    fn window_metric_interpolates_gaps() {
        use crate::analytics::state::{ProviderState, StateParams};
        use crate::model::ProviderId;
        let mut st = ProviderState::new(ProviderId::new("p"), &StateParams::default());
        st.record_score(10, 40.0);
        st.record_score(13, 70.0);
        st.record_score(14, 60.0);
        let (y, last) = window_metric(&st.window, |b| f64::from(b.score)).unwrap();
        assert_eq!(y, vec![40.0, 50.0, 60.0, 70.0, 60.0]);
        assert_eq!(last, 14);
    }
}
