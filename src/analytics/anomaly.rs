//! Anomalies: a robust rolling z-score, grouped into episodes, one alert an episode.
//!
//! Each point is scored against the points before it in a rolling window:
//! `z = (x − median) / σ̂`, with `σ̂` from the median absolute deviation (floored by the
//! mean absolute deviation, so a window of identical values does not make every wiggle
//! infinite). A point with `|z|` at or above the threshold (2.5 σ by default,
//! `ForecastingConfig::anomaly_detection_std_devs`) is anomalous. Anomalous points less
//! than `merge_gap` normal points apart form one episode; an episode raises one alert, at
//! its first point, unless it starts within `cooldown` points of the previous alert.
//!
//! Three further guards make the alerts worth reading (a plain per-point 2.5 σ alarm fires
//! all the time on real telemetry):
//! - σ̂ is never below the series' long-run (exponentially weighted) standard deviation: a
//!   window that happens to be flat does not turn an ordinary burst into a 10⁹ σ event;
//! - the threshold adapts: it is at least `adaptive_factor` times a high quantile (99.5 %)
//!   of the series' own recent |z| values, so a naturally spiky series must spike harder;
//! - anomalous points do not enter the baseline window, so a long episode is judged
//!   against the behaviour before it, until `max_excluded` points have been held out (a
//!   lasting level shift then becomes the new normal).
//!
//! [`AnomalyDetector`] is streaming (O(window + history) per point, a few µs); the batch
//! helpers run it over a series or an [`HourWindow`]. The defaults were checked with
//! `examples/nab_eval.rs` (NAB realAWSCloudwatch, see the README for the numbers and the
//! alternatives tried); counts are in points, i.e. hours in the product.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::analytics::state::{HourBucket, HourWindow};
use crate::config::ForecastingConfig;
use crate::model::{HOUR, UnixSeconds};

/// MAD → σ for normal data.
const MAD_TO_SIGMA: f64 = 1.4826;
/// Mean absolute deviation → σ for normal data (√(π/2)).
const MEAN_AD_TO_SIGMA: f64 = 1.2533;

/// Tunables of the detector. Counts are in points of the series (hours in the product).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyParams {
    /// |z| at or above which a point is anomalous (before adaptation).
    pub threshold_std_devs: f64,
    /// Points in the rolling baseline.
    pub window: usize,
    /// Points needed in the baseline before anything is flagged.
    pub warmup: usize,
    /// Normal points that close an episode.
    pub merge_gap: usize,
    /// Points after an alert during which a new episode raises no alert.
    pub cooldown: usize,
    /// The threshold is at least this times the `adaptive_quantile` of recent |z|.
    pub adaptive_factor: f64,
    pub adaptive_quantile: f64,
    /// Recent |z| values kept for the adaptive threshold.
    pub adaptive_history: usize,
    /// Anomalous points of one episode kept out of the baseline; later ones enter it.
    pub max_excluded: usize,
    /// σ̂ is at least this share of the series' long-run standard deviation, so a series
    /// that is flat for a window and bursty over longer spans is not alarmed by each burst.
    pub long_run_floor: f64,
    /// Half-life (points) of the exponentially weighted long-run mean and variance.
    pub long_run_half_life: f64,
}

impl Default for AnomalyParams {
    fn default() -> Self {
        Self {
            threshold_std_devs: 2.5,
            window: 168,
            warmup: 24,
            merge_gap: 3,
            cooldown: 24,
            adaptive_factor: 1.0,
            adaptive_quantile: 0.995,
            adaptive_history: 672,
            max_excluded: 24,
            long_run_floor: 1.0,
            long_run_half_life: 672.0,
        }
    }
}

impl AnomalyParams {
    /// Defaults with the threshold from the forecasting config.
    pub fn from_config(cfg: &ForecastingConfig) -> Self {
        Self {
            threshold_std_devs: cfg.anomaly_detection_std_devs,
            ..Self::default()
        }
    }
}

/// Which way an episode departs from the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnomalyDirection {
    Spike,
    Drop,
}

/// A run of anomalous points (gaps shorter than `merge_gap` included).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyEpisode {
    /// Time of the first and the last anomalous point.
    pub start: UnixSeconds,
    pub end: UnixSeconds,
    /// Anomalous points in the episode.
    pub points: usize,
    /// The z-score of largest magnitude, with its value and time.
    pub peak_z: f64,
    pub peak_value: f64,
    pub peak_at: UnixSeconds,
    /// Baseline median and σ̂ when the episode started.
    pub baseline_median: f64,
    pub baseline_sigma: f64,
    /// Threshold in force when the episode started.
    pub threshold: f64,
    pub direction: AnomalyDirection,
    /// Whether the episode raised an alert (false inside a cooldown).
    pub alerted: bool,
    /// Whether the episode was still open at the last point seen.
    pub open: bool,
}

/// What the detector says about one point.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointVerdict {
    /// `None` during warm-up.
    pub z: Option<f64>,
    pub threshold: f64,
    pub anomalous: bool,
    /// True on the point that raises an episode's alert.
    pub alert: bool,
}

/// Streaming detector state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyDetector {
    params: AnomalyParams,
    baseline: VecDeque<f64>,
    recent_abs_z: VecDeque<f64>,
    /// Index of the next point.
    index: u64,
    last_alert: Option<u64>,
    open: Option<AnomalyEpisode>,
    /// Normal points since the open episode's last anomalous point.
    quiet: usize,
    /// Anomalous points of the open episode held out of the baseline.
    excluded_run: usize,
    closed: Vec<AnomalyEpisode>,
    /// Exponentially weighted mean and variance over all points seen.
    ew_mean: f64,
    ew_var: f64,
    #[serde(skip)]
    scratch: Vec<f64>,
}

impl AnomalyDetector {
    pub fn new(params: AnomalyParams) -> Self {
        Self {
            params,
            baseline: VecDeque::with_capacity(params.window),
            recent_abs_z: VecDeque::new(),
            index: 0,
            last_alert: None,
            open: None,
            quiet: 0,
            excluded_run: 0,
            closed: Vec::new(),
            ew_mean: f64::NAN,
            ew_var: 0.0,
            scratch: Vec::new(),
        }
    }

    pub fn params(&self) -> &AnomalyParams {
        &self.params
    }

    /// Median and σ̂ of the baseline window.
    fn baseline_stats(&mut self) -> (f64, f64) {
        self.scratch.clear();
        self.scratch.extend(self.baseline.iter().copied());
        let med = median_in_place(&mut self.scratch);
        let mean_ad =
            self.scratch.iter().map(|v| (v - med).abs()).sum::<f64>() / self.scratch.len() as f64;
        for v in self.scratch.iter_mut() {
            *v = (*v - med).abs();
        }
        let mad = median_in_place(&mut self.scratch);
        let long_run = self.params.long_run_floor * self.ew_var.sqrt();
        let sigma = (MAD_TO_SIGMA * mad)
            .max(MEAN_AD_TO_SIGMA * mean_ad)
            .max(long_run)
            .max(1e-9 * (1.0 + med.abs()));
        (med, sigma)
    }

    fn adaptive_threshold(&mut self) -> f64 {
        let p = self.params;
        if self.recent_abs_z.len() < p.warmup.max(1) || p.adaptive_factor <= 0.0 {
            return p.threshold_std_devs;
        }
        self.scratch.clear();
        self.scratch.extend(self.recent_abs_z.iter().copied());
        let k = ((self.scratch.len() - 1) as f64 * p.adaptive_quantile.clamp(0.0, 1.0)).round()
            as usize;
        let (_, q, _) = self.scratch.select_nth_unstable_by(k, f64::total_cmp);
        p.threshold_std_devs.max(p.adaptive_factor * *q)
    }

    /// Feed the next point (times ascending). Non-finite values are ignored.
    pub fn push(&mut self, at: UnixSeconds, x: f64) -> PointVerdict {
        let p = self.params;
        if !x.is_finite() {
            return PointVerdict {
                z: None,
                threshold: p.threshold_std_devs,
                anomalous: false,
                alert: false,
            };
        }
        let i = self.index;
        self.index += 1;
        self.update_long_run(x);
        if self.baseline.len() < p.warmup.max(2) {
            self.admit(x);
            return PointVerdict {
                z: None,
                threshold: p.threshold_std_devs,
                anomalous: false,
                alert: false,
            };
        }
        let (med, sigma) = self.baseline_stats();
        let threshold = self.adaptive_threshold();
        let z = (x - med) / sigma;
        let anomalous = z.abs() >= threshold;
        let mut alert = false;
        if anomalous {
            self.quiet = 0;
            match self.open.as_mut() {
                Some(ep) => {
                    ep.end = at;
                    ep.points += 1;
                    if z.abs() > ep.peak_z.abs() {
                        ep.peak_z = z;
                        ep.peak_value = x;
                        ep.peak_at = at;
                    }
                }
                None => {
                    let cooled = self.last_alert.is_none_or(|a| i - a > p.cooldown as u64);
                    if cooled {
                        self.last_alert = Some(i);
                        alert = true;
                    }
                    self.open = Some(AnomalyEpisode {
                        start: at,
                        end: at,
                        points: 1,
                        peak_z: z,
                        peak_value: x,
                        peak_at: at,
                        baseline_median: med,
                        baseline_sigma: sigma,
                        threshold,
                        direction: if z > 0.0 {
                            AnomalyDirection::Spike
                        } else {
                            AnomalyDirection::Drop
                        },
                        alerted: cooled,
                        open: true,
                    });
                }
            }
        } else if self.open.is_some() {
            self.quiet += 1;
            if self.quiet >= p.merge_gap.max(1) {
                self.close();
            }
        }
        // Capped so that one huge outlier does not blind the detector for a long time.
        self.recent_abs_z.push_back(z.abs().min(1e3));
        while self.recent_abs_z.len() > p.adaptive_history.max(1) {
            self.recent_abs_z.pop_front();
        }
        if anomalous && self.excluded_run < p.max_excluded {
            self.excluded_run += 1;
        } else {
            self.admit(x);
        }
        PointVerdict {
            z: Some(z),
            threshold,
            anomalous,
            alert,
        }
    }

    fn update_long_run(&mut self, x: f64) {
        if self.ew_mean.is_nan() {
            self.ew_mean = x;
            return;
        }
        // West's exponentially weighted variance; anomalies included on purpose: bursts
        // are part of what this series normally does over long spans.
        let w = 1.0 - 0.5f64.powf(1.0 / self.params.long_run_half_life.max(1.0));
        let d = x - self.ew_mean;
        self.ew_mean += w * d;
        self.ew_var = (1.0 - w) * (self.ew_var + w * d * d);
    }

    fn admit(&mut self, x: f64) {
        self.baseline.push_back(x);
        while self.baseline.len() > self.params.window.max(2) {
            self.baseline.pop_front();
        }
    }

    fn close(&mut self) {
        if let Some(mut ep) = self.open.take() {
            ep.open = false;
            self.closed.push(ep);
        }
        self.quiet = 0;
        self.excluded_run = 0;
    }

    /// Episodes closed so far (drained), oldest first.
    pub fn take_closed(&mut self) -> Vec<AnomalyEpisode> {
        std::mem::take(&mut self.closed)
    }

    /// The episode in progress, if any.
    pub fn open_episode(&self) -> Option<&AnomalyEpisode> {
        self.open.as_ref()
    }
}

fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    let (_, m, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let hi = *m;
    if n % 2 == 1 {
        return hi;
    }
    let lo = v[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo + hi) / 2.0
}

/// Run the detector over `(time, value)` points (ascending). Returns every episode, the
/// last one marked `open` if it had not closed.
pub fn detect_episodes(
    points: &[(UnixSeconds, f64)],
    params: &AnomalyParams,
) -> Vec<AnomalyEpisode> {
    let mut d = AnomalyDetector::new(*params);
    for &(t, x) in points {
        d.push(t, x);
    }
    let mut out = d.take_closed();
    out.extend(d.open_episode().cloned());
    out
}

/// Episodes of a per-bucket metric over a provider's window (hours without data skipped).
pub fn detect_window(
    window: &HourWindow,
    metric: impl Fn(&HourBucket) -> f64,
    params: &AnomalyParams,
) -> Vec<AnomalyEpisode> {
    let pts: Vec<(UnixSeconds, f64)> = window
        .iter()
        .map(|(h, b)| (h * HOUR, metric(b)))
        .filter(|p| p.1.is_finite())
        .collect();
    detect_episodes(&pts, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic, bounded wiggle in [−1, 1] (no RNG needed).
    fn wiggle(t: usize) -> f64 {
        ((t as f64 * 0.7).sin() + (t as f64 * 1.3 + 0.5).sin()) / 2.0
    }

    fn base(n: usize) -> Vec<(UnixSeconds, f64)> {
        (0..n)
            .map(|t| (t as i64 * HOUR, 50.0 + wiggle(t)))
            .collect()
    }

    fn plain() -> AnomalyParams {
        AnomalyParams {
            adaptive_factor: 0.0,
            long_run_floor: 0.0,
            ..AnomalyParams::default()
        }
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median_in_place(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_in_place(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn z_score_matches_hand_calculation() {
        // Baseline 1..=25: median 13, |x − 13| = 0,1,1,…,12,12 → MAD = 6, σ̂ = 1.4826·6 =
        // 8.8956; mean AD = 2·(1+…+12)/25 = 6.24 → 1.2533·6.24 = 7.8206 < 8.8956.
        let mut d = AnomalyDetector::new(AnomalyParams {
            warmup: 25,
            window: 25,
            ..plain()
        });
        for i in 1..=25 {
            assert!(d.push(i, i as f64).z.is_none());
        }
        let v = d.push(26, 40.0);
        let want = (40.0 - 13.0) / (1.4826 * 6.0);
        assert!((v.z.unwrap() - want).abs() < 1e-9, "{v:?}");
        assert!(v.anomalous && v.alert);
    }

    #[test]
    fn quiet_series_has_no_episode() {
        assert!(detect_episodes(&base(300), &AnomalyParams::default()).is_empty());
    }

    #[test]
    fn consecutive_spikes_form_one_episode_with_one_alert() {
        let mut pts = base(200);
        // Hours 100–104 jump by +20 (σ̂ of the wiggle is below 1), 106 again after one
        // quiet hour (inside merge_gap = 3), so one episode 100..=106.
        for t in [100, 101, 102, 103, 104, 106] {
            pts[t].1 += 20.0;
        }
        let eps = detect_episodes(&pts, &plain());
        assert_eq!(eps.len(), 1, "{eps:?}");
        let e = &eps[0];
        assert_eq!((e.start, e.end), (100 * HOUR, 106 * HOUR));
        assert_eq!(e.points, 6);
        assert_eq!(e.direction, AnomalyDirection::Spike);
        assert!(e.alerted && !e.open);
        assert!(e.peak_z > 10.0);
        let mut d = AnomalyDetector::new(plain());
        let alerts = pts.iter().filter(|(t, x)| d.push(*t, *x).alert).count();
        assert_eq!(alerts, 1);
    }

    #[test]
    fn drop_direction_and_cooldown() {
        let mut pts = base(300);
        pts[100].1 -= 15.0;
        // Second episode 10 h later: inside the 24-point cooldown, so no alert.
        pts[110].1 -= 15.0;
        // Third episode far away: alerts again.
        pts[200].1 += 15.0;
        let eps = detect_episodes(&pts, &plain());
        assert_eq!(eps.len(), 3, "{eps:?}");
        assert_eq!(eps[0].direction, AnomalyDirection::Drop);
        assert_eq!(
            eps.iter().map(|e| e.alerted).collect::<Vec<_>>(),
            vec![true, false, true]
        );
        assert_eq!(eps[2].direction, AnomalyDirection::Spike);
    }

    #[test]
    fn warmup_flags_nothing() {
        let mut pts = base(30);
        pts[5].1 += 100.0;
        assert!(detect_episodes(&pts, &plain()).is_empty());
    }

    #[test]
    fn level_shift_is_absorbed_after_max_excluded() {
        // A lasting +10 step at 100: one episode, closed once the new level has entered
        // the baseline (held out for max_excluded points, then admitted).
        let mut pts = base(400);
        for p in pts.iter_mut().skip(100) {
            p.1 += 10.0;
        }
        let eps = detect_episodes(&pts, &plain());
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert!(!eps[0].open);
        assert!(eps[0].end < 300 * HOUR);
    }

    #[test]
    fn adaptive_threshold_rises_on_spiky_series() {
        // Every 10th point is +8: with the plain 2.5 σ rule these keep firing; the adaptive
        // threshold learns them as normal and flags only the +40 outlier.
        let mut pts = base(800);
        for (t, p) in pts.iter_mut().enumerate() {
            if t % 10 == 0 {
                p.1 += 8.0;
            }
        }
        pts[700].1 += 40.0;
        let plain_eps = detect_episodes(
            &pts,
            &AnomalyParams {
                cooldown: 0,
                ..plain()
            },
        );
        assert!(plain_eps.len() > 20);
        let adaptive = AnomalyParams {
            adaptive_factor: 1.2,
            ..AnomalyParams::default()
        };
        let eps = detect_episodes(&pts, &adaptive);
        let late: Vec<_> = eps.iter().filter(|e| e.start > 400 * HOUR).collect();
        assert_eq!(late.len(), 1, "{late:?}");
        assert_eq!(late[0].start, 700 * HOUR);
    }

    #[test]
    fn long_run_floor_tames_bursts_after_flat_windows() {
        // Zero except a 100 burst every 100 points. Bursts stay out of the baseline, so each
        // window is flat and alone makes every burst astronomically anomalous. The
        // long-run σ (about 100·√(0.01·0.99) ≈ 10) bounds the z of later bursts near 10.
        let pts: Vec<_> = (0..3000)
            .map(|t| (t as i64, if t % 100 == 99 { 100.0 } else { 0.0 }))
            .collect();
        let no_floor = detect_episodes(
            &pts,
            &AnomalyParams {
                cooldown: 0,
                ..plain()
            },
        );
        assert!(
            no_floor
                .iter()
                .filter(|e| e.start > 2000)
                .all(|e| e.peak_z > 1e6)
        );
        let floor = detect_episodes(
            &pts,
            &AnomalyParams {
                cooldown: 0,
                long_run_floor: 1.0,
                ..plain()
            },
        );
        let late: Vec<_> = floor.iter().filter(|e| e.start > 2000).collect();
        assert!(
            !late.is_empty() && late.iter().all(|e| e.peak_z < 30.0),
            "{late:?}"
        );
        // Bursts are 1 % of points, above the adaptive 99.5 % quantile: they stop alerting.
        let shipped = detect_episodes(&pts, &AnomalyParams::default());
        assert!(
            shipped
                .iter()
                .filter(|e| e.start > 2000 && e.alerted)
                .count()
                <= 1,
            "{shipped:?}"
        );
    }

    #[test]
    fn constant_series_does_not_divide_by_zero() {
        let mut pts: Vec<_> = (0..100).map(|t| (t as i64, 5.0)).collect();
        pts[80].1 = 5.5;
        let eps = detect_episodes(&pts, &plain());
        assert_eq!(eps.len(), 1);
        assert!(eps[0].peak_z.is_finite());
    }
}
