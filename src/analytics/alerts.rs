//! Alerts derived from the time-series results: performance degradation, trend reversal,
//! anomaly episode and forecast below a tier floor.
//!
//! [`derive_alerts`] is a pure function of the latest results, so it is re-run on every
//! analysis cycle; each alert carries a stable `key` so the caller emits it once. Keys use
//! the event's own start where one exists (anomaly episode start, reversal point) and the
//! UTC day otherwise (degradation, forecast breach), so those repeat at most daily.

use serde::{Deserialize, Serialize};

use crate::analytics::anomaly::{AnomalyDirection, AnomalyEpisode};
use crate::analytics::forecast::ProviderForecast;
use crate::analytics::trend::{Trend, TrendDirection};
use crate::config::TierFloors;
use crate::model::{HOUR, ProviderId, UnixSeconds};

const DAY: i64 = 24 * HOUR;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlertKind {
    PerformanceDegradation,
    TrendReversal,
    AnomalyEpisode,
    ForecastBelowTierFloor,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerformanceDegradation => "performance_degradation",
            Self::TrendReversal => "trend_reversal",
            Self::AnomalyEpisode => "anomaly_episode",
            Self::ForecastBelowTierFloor => "forecast_below_tier_floor",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// One alert about one provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub severity: Severity,
    pub provider_id: ProviderId,
    /// Event time the alert refers to (episode start, reversal point, evaluation time).
    pub at: UnixSeconds,
    /// Stable identity for de-duplication: the same condition gives the same key.
    pub key: String,
    pub message: String,
    /// The observed value and the threshold it crossed, in the metric's units.
    pub value: f64,
    pub threshold: f64,
}

/// Tunables of the alert rules.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertParams {
    /// Score points below the baseline that count as degradation, and as critical.
    pub degradation_points: f64,
    pub degradation_critical_points: f64,
    /// An anomaly whose |peak z| is this many times its threshold is critical.
    pub anomaly_critical_ratio: f64,
}

impl Default for AlertParams {
    fn default() -> Self {
        Self {
            degradation_points: 10.0,
            degradation_critical_points: 20.0,
            anomaly_critical_ratio: 2.0,
        }
    }
}

/// An anomaly episode of a named metric.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricEpisode<'a> {
    pub metric: &'a str,
    /// Whether a rise is good news (score) or bad news (response time); `None` = neutral.
    pub higher_is_better: Option<bool>,
    pub episode: &'a AnomalyEpisode,
}

/// Everything the rules look at. Absent parts raise no alert.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertInputs<'a> {
    pub provider_id: &'a ProviderId,
    /// Evaluation time (event time).
    pub now: UnixSeconds,
    /// Score trend and the event time of its x = 0.
    pub trend: Option<(&'a Trend, UnixSeconds)>,
    pub anomalies: &'a [MetricEpisode<'a>],
    pub score_forecast: Option<&'a ProviderForecast>,
    /// Recent score (e.g. last hours) and the provider's own baseline (e.g. window mean).
    pub current_score: Option<f64>,
    pub baseline_score: Option<f64>,
    pub tier_floors: &'a TierFloors,
}

/// The highest tier floor `score` meets, with its name.
pub fn floor_met(score: f64, floors: &TierFloors) -> Option<(&'static str, f64)> {
    [
        ("platinum", floors.platinum),
        ("gold", floors.gold),
        ("silver", floors.silver),
        ("bronze", floors.bronze),
    ]
    .into_iter()
    .find(|(_, f)| score >= *f)
}

/// Alerts for the current state of one provider, most severe first.
pub fn derive_alerts(inp: &AlertInputs<'_>, params: &AlertParams) -> Vec<Alert> {
    let pid = inp.provider_id;
    let mut out = Vec::new();
    let alert =
        |kind: AlertKind, severity, at, key_part: String, message: String, value, threshold| {
            Alert {
                kind,
                severity,
                provider_id: pid.clone(),
                at,
                key: format!("{}:{}:{}", kind.as_str(), pid, key_part),
                message,
                value,
                threshold,
            }
        };

    if let (Some(cur), Some(base)) = (inp.current_score, inp.baseline_score)
        && cur.is_finite()
        && base.is_finite()
    {
        let drop = base - cur;
        if drop >= params.degradation_points {
            let severity = if drop >= params.degradation_critical_points {
                Severity::Critical
            } else {
                Severity::Warning
            };
            out.push(alert(
                AlertKind::PerformanceDegradation,
                severity,
                inp.now,
                format!("day{}", inp.now.div_euclid(DAY)),
                format!(
                    "score {cur:.1} is {drop:.1} points below the provider's baseline {base:.1}"
                ),
                cur,
                base - params.degradation_points,
            ));
        }
    }

    if let Some((trend, origin)) = inp.trend
        && let Some(rev) = &trend.reversal
    {
        let at = origin + (rev.at_hour * HOUR as f64).round() as i64;
        let severity = if rev.to == TrendDirection::Declining {
            Severity::Warning
        } else {
            Severity::Info
        };
        out.push(alert(
            AlertKind::TrendReversal,
            severity,
            at,
            format!("{at}"),
            format!(
                "trend reversed from {:?} ({:+.2}/day) to {:?} ({:+.2}/day)",
                rev.from, rev.first_half.slope_per_day, rev.to, rev.second_half.slope_per_day
            )
            .to_lowercase(),
            rev.second_half.slope_per_day,
            0.0,
        ));
    }

    for m in inp.anomalies.iter().filter(|m| m.episode.alerted) {
        let e = m.episode;
        let good_news = matches!(
            (m.higher_is_better, e.direction),
            (Some(true), AnomalyDirection::Spike) | (Some(false), AnomalyDirection::Drop)
        );
        let severity = if good_news {
            Severity::Info
        } else if e.peak_z.abs() >= params.anomaly_critical_ratio * e.threshold {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let dir = match e.direction {
            AnomalyDirection::Spike => "spike",
            AnomalyDirection::Drop => "drop",
        };
        out.push(alert(
            AlertKind::AnomalyEpisode,
            severity,
            e.start,
            format!("{}:{}", m.metric, e.start),
            format!(
                "{} {dir}: {:.3} against a baseline of {:.3} ({:+.1} σ, {} point{})",
                m.metric,
                e.peak_value,
                e.baseline_median,
                e.peak_z,
                e.points,
                if e.points == 1 { "" } else { "s" }
            ),
            e.peak_value,
            e.baseline_median + e.threshold * e.baseline_sigma * e.peak_z.signum(),
        ));
    }

    if let (Some(fc), Some(cur)) = (inp.score_forecast, inp.current_score)
        && let Some((tier, floor)) = floor_met(cur, inp.tier_floors)
        && let Some(p) = fc.points.iter().find(|p| p.value < floor)
    {
        // Critical when even the optimistic bound falls short.
        let severity = if p.upper < floor {
            Severity::Critical
        } else {
            Severity::Warning
        };
        out.push(alert(
            AlertKind::ForecastBelowTierFloor,
            severity,
            p.timestamp,
            format!("{tier}:day{}", p.timestamp.div_euclid(DAY)),
            format!(
                "score forecast {:.1} (interval {:.1}–{:.1}) falls below the {tier} floor {floor:.0} at {}",
                p.value, p.lower, p.upper, p.timestamp
            ),
            p.value,
            floor,
        ));
    }

    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.at.cmp(&b.at)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::forecast::ForecastPoint;
    use crate::analytics::trend::{TrendParams, analyze_trend};

    fn episode(start: i64, z: f64, alerted: bool) -> AnomalyEpisode {
        AnomalyEpisode {
            start,
            end: start + HOUR,
            points: 2,
            peak_z: z,
            peak_value: 40.0,
            peak_at: start,
            baseline_median: 80.0,
            baseline_sigma: 4.0,
            threshold: 2.5,
            direction: if z > 0.0 {
                AnomalyDirection::Spike
            } else {
                AnomalyDirection::Drop
            },
            alerted,
            open: false,
        }
    }

    fn inputs<'a>(pid: &'a ProviderId, floors: &'a TierFloors) -> AlertInputs<'a> {
        AlertInputs {
            provider_id: pid,
            now: 100 * DAY + 5 * HOUR,
            trend: None,
            anomalies: &[],
            score_forecast: None,
            current_score: None,
            baseline_score: None,
            tier_floors: floors,
        }
    }

    #[test]
    fn degradation_thresholds_and_daily_key() {
        let pid = ProviderId::new("p1");
        let floors = TierFloors::default();
        let mut i = inputs(&pid, &floors);
        i.current_score = Some(75.0);
        i.baseline_score = Some(84.0);
        assert!(derive_alerts(&i, &AlertParams::default()).is_empty());
        i.current_score = Some(70.0);
        let a = derive_alerts(&i, &AlertParams::default());
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].kind, a[0].severity),
            (AlertKind::PerformanceDegradation, Severity::Warning)
        );
        assert_eq!(a[0].threshold, 74.0);
        assert_eq!(a[0].key, "performance_degradation:p1:day100");
        // Later the same day: same key. 20 points down: critical.
        i.now += 3 * HOUR;
        i.current_score = Some(64.0);
        let b = derive_alerts(&i, &AlertParams::default());
        assert_eq!(b[0].key, a[0].key);
        assert_eq!(b[0].severity, Severity::Critical);
    }

    #[test]
    fn one_alert_per_alerted_episode_with_stable_key() {
        let pid = ProviderId::new("p1");
        let floors = TierFloors::default();
        let (e1, e2, e3) = (
            episode(10 * HOUR, -6.0, true),
            episode(12 * HOUR, -3.0, false),
            episode(40 * HOUR, 3.0, true),
        );
        let eps = [
            MetricEpisode {
                metric: "score",
                higher_is_better: Some(true),
                episode: &e1,
            },
            MetricEpisode {
                metric: "score",
                higher_is_better: Some(true),
                episode: &e2,
            },
            MetricEpisode {
                metric: "score",
                higher_is_better: Some(true),
                episode: &e3,
            },
        ];
        let mut i = inputs(&pid, &floors);
        i.anomalies = &eps;
        let a = derive_alerts(&i, &AlertParams::default());
        assert_eq!(a.len(), 2);
        // |−6| ≥ 2 × 2.5: a critical drop; the spike of a score is good news.
        assert_eq!((a[0].severity, a[0].at), (Severity::Critical, 10 * HOUR));
        assert_eq!(a[0].key, format!("anomaly_episode:p1:score:{}", 10 * HOUR));
        assert_eq!(a[0].threshold, 80.0 - 2.5 * 4.0);
        assert!(a[0].message.contains("score drop"), "{}", a[0].message);
        assert_eq!(a[1].severity, Severity::Info);
    }

    #[test]
    fn reversal_alert_at_absolute_time() {
        let pts: Vec<_> = (0..48)
            .map(|i| {
                let x = i as f64;
                (
                    x,
                    if i < 24 {
                        60.0 + 0.2 * x
                    } else {
                        60.0 + 4.6 - 0.2 * (x - 23.0)
                    },
                )
            })
            .collect();
        let t = analyze_trend(&pts, &TrendParams::default());
        let pid = ProviderId::new("p1");
        let floors = TierFloors::default();
        let mut i = inputs(&pid, &floors);
        let origin = 1000 * HOUR;
        i.trend = Some((&t, origin));
        let a = derive_alerts(&i, &AlertParams::default());
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, AlertKind::TrendReversal);
        assert_eq!(a[0].severity, Severity::Warning);
        assert_eq!(a[0].at, origin + 24 * HOUR);
        assert!(
            a[0].message.contains("improving") && a[0].message.contains("declining"),
            "{}",
            a[0].message
        );
    }

    #[test]
    fn forecast_breaching_current_tier_floor() {
        let pid = ProviderId::new("p1");
        let floors = TierFloors::default();
        let pt = |h: i64, v: f64, lo: f64, hi: f64| ForecastPoint {
            timestamp: h * HOUR,
            value: v,
            lower: lo,
            upper: hi,
        };
        let fc = ProviderForecast {
            points: vec![
                pt(1, 88.0, 84.0, 92.0),
                pt(2, 84.0, 80.0, 88.0),
                pt(3, 80.0, 75.0, 84.0),
            ],
            model: "test".into(),
            members: vec![],
            interval_level: 0.95,
            history_points: 168,
            holdout_smape_percent: None,
            confidence: 0.9,
            low_confidence: false,
            warnings: vec![],
        };
        let mut i = inputs(&pid, &floors);
        i.score_forecast = Some(&fc);
        // 87 is gold (floor 85): the first point under 85 is hour 2, upper 88 → warning.
        i.current_score = Some(87.0);
        let a = derive_alerts(&i, &AlertParams::default());
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].kind, a[0].severity, a[0].at),
            (
                AlertKind::ForecastBelowTierFloor,
                Severity::Warning,
                2 * HOUR
            )
        );
        assert_eq!(a[0].threshold, 85.0);
        assert_eq!(a[0].key, "forecast_below_tier_floor:p1:gold:day0");
        // 96 is platinum (95): hour 1 at 88 with upper 92 already below → critical.
        i.current_score = Some(96.0);
        let b = derive_alerts(&i, &AlertParams::default());
        assert_eq!((b[0].severity, b[0].at), (Severity::Critical, HOUR));
        // 60 meets no floor: nothing to fall below.
        i.current_score = Some(60.0);
        assert!(derive_alerts(&i, &AlertParams::default()).is_empty());
    }

    #[test]
    fn floor_met_picks_highest() {
        let f = TierFloors::default();
        assert_eq!(floor_met(95.0, &f), Some(("platinum", 95.0)));
        assert_eq!(floor_met(70.0, &f), Some(("bronze", 65.0)));
        assert_eq!(floor_met(10.0, &f), None);
    }
}
