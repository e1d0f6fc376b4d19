//! Linear trend of an hourly series: least-squares slope, Pearson r, a t-test on the slope,
//! and a reversal check between the two halves of the window.
//!
//! The direction is only called improving or declining when the slope is both
//! statistically significant (two-sided t-test, `alpha`) and practically meaningful
//! (`min_slope_per_day`): with a week of hourly scores a tiny drift is often "significant"
//! yet nothing an operator should act on.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::analytics::state::{HourBucket, HourWindow};

/// Hours in a day, for the per-day slope.
const HOURS_PER_DAY: f64 = 24.0;

/// Tunables of the trend analysis.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrendParams {
    /// Significance level of the two-sided t-test on the slope.
    pub alpha: f64,
    /// Smallest slope (series units per day) that counts as a real change.
    pub min_slope_per_day: f64,
    /// Whether a rising series is good news (scores) or bad news (response times).
    pub higher_is_better: bool,
    /// Fewer points than this give a stable, insignificant trend.
    pub min_points: usize,
}

impl Default for TrendParams {
    fn default() -> Self {
        // 0.5 points a day is 3.5 score points over the default 168 h window.
        Self {
            alpha: 0.05,
            min_slope_per_day: 0.5,
            higher_is_better: true,
            min_points: 3,
        }
    }
}

/// Where the series is heading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrendDirection {
    Improving,
    Stable,
    Declining,
}

/// How well a straight line explains the series, from |r|: below 0.3 weak, below 0.7
/// moderate, else strong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrendStrength {
    Weak,
    Moderate,
    Strong,
}

impl TrendStrength {
    pub fn from_r(r: f64) -> Self {
        let a = r.abs();
        if a >= 0.7 {
            Self::Strong
        } else if a >= 0.3 {
            Self::Moderate
        } else {
            Self::Weak
        }
    }
}

/// A least-squares line through `(x hours, y)` points with its t-test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearFit {
    pub n_points: usize,
    pub slope_per_hour: f64,
    pub slope_per_day: f64,
    /// Value of the line at x = 0.
    pub intercept: f64,
    /// Pearson correlation of x and y (0 when either is constant).
    pub r: f64,
    pub r_squared: f64,
    /// Standard error of the slope (per hour); `None` with fewer than 3 points.
    pub slope_std_error: Option<f64>,
    /// Two-sided p-value of H0: slope = 0; `None` with fewer than 3 points.
    pub p_value: Option<f64>,
}

/// The two halves of the window pull in opposite directions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrendReversal {
    pub first_half: LinearFit,
    pub second_half: LinearFit,
    /// Direction of the first half, then of the second.
    pub from: TrendDirection,
    pub to: TrendDirection,
    /// x (hours) of the first point of the second half.
    pub at_hour: f64,
}

/// The trend of a series over the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    pub fit: LinearFit,
    pub strength: TrendStrength,
    pub direction: TrendDirection,
    /// Whether the slope passed the t-test at `alpha`.
    pub significant: bool,
    pub reversal: Option<TrendReversal>,
}

/// Least-squares fit with its t-test. Non-finite points are skipped.
pub fn linear_fit(points: &[(f64, f64)]) -> LinearFit {
    let finite = || {
        points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let n = finite().count();
    let empty = LinearFit {
        n_points: n,
        slope_per_hour: 0.0,
        slope_per_day: 0.0,
        intercept: 0.0,
        r: 0.0,
        r_squared: 0.0,
        slope_std_error: None,
        p_value: None,
    };
    if n == 0 {
        return empty;
    }
    let nf = n as f64;
    let (sx, sy) = finite().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / nf, sy / nf);
    // Centred sums: raw sums of squares lose everything when x is an epoch hour.
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in finite() {
        let (dx, dy) = (x - mx, y - my);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx <= 0.0 {
        return LinearFit {
            intercept: my,
            ..empty
        };
    }
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let r = if syy > 0.0 {
        (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let (se, p) = if n >= 3 {
        let sse = (syy - slope * sxy).max(0.0);
        let df = nf - 2.0;
        let se = (sse / df / sxx).sqrt();
        let p = if se > 0.0 {
            let t = (slope / se).abs();
            StudentsT::new(0.0, 1.0, df).map_or(1.0, |d| (2.0 * d.sf(t)).clamp(0.0, 1.0))
        } else if slope != 0.0 {
            0.0
        } else {
            1.0
        };
        (Some(se), Some(p))
    } else {
        (None, None)
    };
    LinearFit {
        n_points: n,
        slope_per_hour: slope,
        slope_per_day: slope * HOURS_PER_DAY,
        intercept,
        r,
        r_squared: r * r,
        slope_std_error: se,
        p_value: p,
    }
}

fn direction_of(fit: &LinearFit, params: &TrendParams) -> (TrendDirection, bool) {
    let significant =
        fit.n_points >= params.min_points.max(3) && fit.p_value.is_some_and(|p| p < params.alpha);
    if !significant || fit.slope_per_day.abs() < params.min_slope_per_day {
        return (TrendDirection::Stable, significant);
    }
    let rising = fit.slope_per_hour > 0.0;
    let dir = if rising == params.higher_is_better {
        TrendDirection::Improving
    } else {
        TrendDirection::Declining
    };
    (dir, significant)
}

/// The direction of the fit over all the points, without the reversal search of
/// [`analyze_trend`] (two more fits): what a provider's summary needs each cycle.
pub fn fit_direction(points: &[(f64, f64)], params: &TrendParams) -> (LinearFit, TrendDirection) {
    let fit = linear_fit(points);
    let (direction, _) = direction_of(&fit, params);
    (fit, direction)
}

/// Trend of `(x hours, y)` points (x ascending). A reversal is reported when each half
/// of the points, fitted on its own, has a significant and meaningful slope and the two
/// slopes have opposite signs.
pub fn analyze_trend(points: &[(f64, f64)], params: &TrendParams) -> Trend {
    let fit = linear_fit(points);
    let (direction, significant) = direction_of(&fit, params);
    let finite: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let reversal = (finite.len() >= 2 * params.min_points.max(3))
        .then(|| {
            let (a, b) = finite.split_at(finite.len() / 2);
            let (fa, fb) = (linear_fit(a), linear_fit(b));
            let (da, _) = direction_of(&fa, params);
            let (db, _) = direction_of(&fb, params);
            let opposite = da != TrendDirection::Stable && db != TrendDirection::Stable && da != db;
            opposite.then(|| TrendReversal {
                at_hour: b[0].0,
                first_half: fa,
                second_half: fb,
                from: da,
                to: db,
            })
        })
        .flatten();
    Trend {
        strength: TrendStrength::from_r(fit.r),
        fit,
        direction,
        significant,
        reversal,
    }
}

/// `(x, metric)` points from a window, x in hours since the window's oldest bucket;
/// buckets where `metric` is NaN (no data) are skipped.
pub fn window_series(window: &HourWindow, metric: impl Fn(&HourBucket) -> f64) -> Vec<(f64, f64)> {
    let Some(oldest) = window.oldest_hour() else {
        return Vec::new();
    };
    window
        .iter()
        .filter_map(|(hour, b)| {
            let v = metric(b);
            v.is_finite().then(|| ((hour - oldest) as f64, v))
        })
        .collect()
}

/// The hourly composite score series of a window (hours without a score skipped).
pub fn score_series(window: &HourWindow) -> Vec<(f64, f64)> {
    window_series(window, |b| f64::from(b.score))
}

/// Trend of the hourly composite score over the window.
pub fn analyze_score_trend(window: &HourWindow, params: &TrendParams) -> Trend {
    analyze_trend(&score_series(window), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn five_point_series_matches_hand_calculation() {
        // x̄ = 2, ȳ = 3, Sxx = 10, Sxy = 8, Syy = 10: slope 0.8, intercept 1.4, r 0.8.
        // SSE = 10 − 0.8·8 = 3.6, se = √(3.6/3/10), t² = 16/3, df 3; the t(3) CDF has the
        // closed form ½ + (1/π)(u/(1+u²) + atan u) with u = t/√3 = 4/3.
        let pts = [(0.0, 1.0), (1.0, 3.0), (2.0, 2.0), (3.0, 5.0), (4.0, 4.0)];
        let f = linear_fit(&pts);
        assert!(close(f.slope_per_hour, 0.8, 1e-12));
        assert!(close(f.slope_per_day, 19.2, 1e-10));
        assert!(close(f.intercept, 1.4, 1e-12));
        assert!(close(f.r, 0.8, 1e-12));
        assert!(close(f.slope_std_error.unwrap(), 0.12f64.sqrt(), 1e-12));
        let u: f64 = 4.0 / 3.0;
        let p = 1.0 - 2.0 / std::f64::consts::PI * (u / (1.0 + u * u) + u.atan());
        assert!(
            close(f.p_value.unwrap(), p, 1e-9),
            "{} vs {p}",
            f.p_value.unwrap()
        );
        // p ≈ 0.104 > 0.05: not significant, so stable despite a steep slope.
        let t = analyze_trend(&pts, &TrendParams::default());
        assert_eq!(t.direction, TrendDirection::Stable);
        assert_eq!(t.strength, TrendStrength::Strong);
        assert!(!t.significant);
    }

    #[test]
    fn offset_x_gives_same_slope_and_shifted_intercept() {
        // Epoch-hour x values must not wreck precision.
        let base = 400_000.0;
        let pts: Vec<_> = (0..48)
            .map(|i| (base + i as f64, 50.0 - 0.1 * i as f64))
            .collect();
        let f = linear_fit(&pts);
        assert!(close(f.slope_per_hour, -0.1, 1e-9));
        assert!(close(f.intercept, 50.0 + 0.1 * base, 1e-4));
        assert!(close(f.r, -1.0, 1e-12));
        assert!(f.p_value.unwrap() < 1e-12);
    }

    /// The summary's shortcut answers as the full analysis does, reversal or not.
    #[test]
    fn fit_direction_agrees_with_the_full_analysis() {
        let v_shape: Vec<_> = (0..48)
            .map(|i| (i as f64, 50.0 + (i as f64 - 24.0).abs()))
            .collect();
        let series: Vec<Vec<(f64, f64)>> = vec![
            (0..24).map(|i| (i as f64, 70.0 + 0.1 * i as f64)).collect(),
            (0..24).map(|i| (i as f64, 70.0 - 0.1 * i as f64)).collect(),
            (0..48).map(|i| (i as f64, 60.0 + (i % 3) as f64)).collect(),
            v_shape,
            vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0)],
            Vec::new(),
        ];
        let mut directions = Vec::new();
        for pts in &series {
            let full = analyze_trend(pts, &TrendParams::default());
            let (fit, direction) = fit_direction(pts, &TrendParams::default());
            assert_eq!(direction, full.direction, "{pts:?}");
            assert_eq!(
                fit.slope_per_day.to_bits(),
                full.fit.slope_per_day.to_bits()
            );
            directions.push(direction);
        }
        assert_eq!(
            directions[..2],
            [TrendDirection::Improving, TrendDirection::Declining]
        );
    }

    #[test]
    fn direction_needs_significance_and_size() {
        // Perfect line up 0.1/h = 2.4/day: significant and meaningful.
        let up: Vec<_> = (0..24).map(|i| (i as f64, 70.0 + 0.1 * i as f64)).collect();
        assert_eq!(
            analyze_trend(&up, &TrendParams::default()).direction,
            TrendDirection::Improving
        );
        let down: Vec<_> = up.iter().map(|&(x, y)| (x, 140.0 - y)).collect();
        assert_eq!(
            analyze_trend(&down, &TrendParams::default()).direction,
            TrendDirection::Declining
        );
        // For response times a rising series is a decline.
        let p = TrendParams {
            higher_is_better: false,
            ..Default::default()
        };
        assert_eq!(analyze_trend(&up, &p).direction, TrendDirection::Declining);
        // 0.01/h = 0.24/day is significant on an exact line but below the practical floor.
        let tiny: Vec<_> = (0..24)
            .map(|i| (i as f64, 70.0 + 0.01 * i as f64))
            .collect();
        let t = analyze_trend(&tiny, &TrendParams::default());
        assert!(t.significant);
        assert_eq!(t.direction, TrendDirection::Stable);
    }

    #[test]
    fn constant_and_short_series_are_stable() {
        let flat: Vec<_> = (0..10).map(|i| (i as f64, 80.0)).collect();
        let t = analyze_trend(&flat, &TrendParams::default());
        assert_eq!(t.fit.slope_per_hour, 0.0);
        assert_eq!(t.fit.r, 0.0);
        assert_eq!(t.fit.p_value, Some(1.0));
        assert_eq!(t.direction, TrendDirection::Stable);
        let two = analyze_trend(&[(0.0, 1.0), (1.0, 5.0)], &TrendParams::default());
        assert_eq!(two.fit.p_value, None);
        assert_eq!(two.direction, TrendDirection::Stable);
        assert_eq!(analyze_trend(&[], &TrendParams::default()).fit.n_points, 0);
    }

    #[test]
    fn tent_series_reverses_between_halves() {
        // Up 0.2/h for 24 h, then down 0.2/h: the full-window slope is ~0, the halves
        // are exact lines of opposite sign.
        let pts: Vec<_> = (0..48)
            .map(|i| {
                let x = i as f64;
                (
                    x,
                    if i < 24 {
                        60.0 + 0.2 * x
                    } else {
                        60.0 + 0.2 * 23.0 - 0.2 * (x - 23.0)
                    },
                )
            })
            .collect();
        let t = analyze_trend(&pts, &TrendParams::default());
        let rev = t.reversal.expect("reversal");
        assert_eq!(rev.from, TrendDirection::Improving);
        assert_eq!(rev.to, TrendDirection::Declining);
        assert!(close(rev.first_half.slope_per_hour, 0.2, 1e-9));
        assert!(close(rev.second_half.slope_per_hour, -0.2, 1e-9));
        assert_eq!(rev.at_hour, 24.0);
        // A straight line has no reversal.
        let line: Vec<_> = (0..48).map(|i| (i as f64, i as f64)).collect();
        assert!(
            analyze_trend(&line, &TrendParams::default())
                .reversal
                .is_none()
        );
    }

    #[test]
    fn window_series_skips_hours_without_score() {
        use crate::analytics::state::{ProviderState, StateParams};
        use crate::model::ProviderId;
        let params = StateParams::default();
        let mut st = ProviderState::new(ProviderId::new("p"), &params);
        // Hours 100, 101 and 103 get scores; 102 exists but stays NaN.
        st.record_score(100, 80.0);
        st.record_score(101, 82.0);
        st.record_score(103, 86.0);
        let s = score_series(&st.window);
        assert_eq!(s, vec![(0.0, 80.0), (1.0, 82.0), (3.0, 86.0)]);
        let f = linear_fit(&s);
        // x̄ = 4/3, ȳ = 248/3; Sxx = 14/3, Sxy = 28/3 → slope exactly 2.
        assert!(close(f.slope_per_hour, 2.0, 1e-5));
    }
}
