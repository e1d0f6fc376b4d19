//! Configuration: the YAML file of DESIGN.md §6 plus environment overrides.
//!
//! Every weight, threshold and window the analytics use lives in [`AnalyticsConfig`].
//! Loading validates it: an unknown key or bad weights are errors naming the key.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Weights of the six performance-score components (must be non-negative and sum to 1).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerformanceWeights {
    pub completion_rate: f64,
    pub efficiency: f64,
    pub uptime: f64,
    pub response_time: f64,
    pub sla_compliance: f64,
    pub error_rate: f64,
}

impl Default for PerformanceWeights {
    fn default() -> Self {
        Self { completion_rate: 0.25, efficiency: 0.20, uptime: 0.20, response_time: 0.15, sla_compliance: 0.12, error_rate: 0.08 }
    }
}

/// Weights of the five ranking criteria (non-negative, sum to 1).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RankingWeights {
    pub performance: f64,
    pub reliability: f64,
    pub cost: f64,
    pub availability: f64,
    pub speed: f64,
}

impl Default for RankingWeights {
    fn default() -> Self {
        Self { performance: 0.30, reliability: 0.25, cost: 0.20, availability: 0.15, speed: 0.10 }
    }
}

/// Score floors of the tiers (a tier also needs its percentile: top 5/20/50/80 %).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierFloors {
    pub platinum: f64,
    pub gold: f64,
    pub silver: f64,
    pub bronze: f64,
}

impl Default for TierFloors {
    fn default() -> Self {
        Self { platinum: 95.0, gold: 85.0, silver: 75.0, bronze: 65.0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForecastingConfig {
    pub horizon_hours: u32,
    /// Confidence below which a forecast is flagged as low-confidence.
    pub confidence_threshold: f64,
    pub anomaly_detection_std_devs: f64,
    /// Level of the prediction intervals (0.95 = 95 %).
    pub interval_level: f64,
}

impl Default for ForecastingConfig {
    fn default() -> Self {
        Self { horizon_hours: 24, confidence_threshold: 0.7, anomaly_detection_std_devs: 2.5, interval_level: 0.95 }
    }
}

/// Everything the analytics need, with the defaults of DESIGN.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    pub performance_weights: PerformanceWeights,
    pub ranking_weights: RankingWeights,
    pub ranking_tiers: TierFloors,
    pub forecasting: ForecastingConfig,
    /// Points below which a provider's data counts as thin (MIN_DATA_POINTS).
    pub min_data_points: u32,
    /// The trend window (TREND_ANALYSIS_WINDOW).
    #[serde(with = "humantime_serde_compat")]
    pub trend_window: Duration,
    /// How often the coordinator recomputes network analytics (ANALYTICS_INTERVAL).
    #[serde(with = "humantime_serde_compat")]
    pub analytics_interval: Duration,
    /// Half-life of the recency decay applied to rates.
    #[serde(with = "humantime_serde_compat")]
    pub decay_half_life: Duration,
    /// Strength (pseudo-observations) of the network prior in Bayesian rate estimates.
    pub prior_strength: f64,
    /// Tier hysteresis: a provider keeps its tier until it falls this many score points
    /// (and this share of percentile) below the cut-off.
    pub tier_hysteresis_points: f64,
    /// Share of recommendations that may go to promising new providers (0 = off).
    pub exploration_share: f64,
    /// Seed for the exploration choice, so answers are reproducible.
    pub exploration_seed: u64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            performance_weights: PerformanceWeights::default(),
            ranking_weights: RankingWeights::default(),
            ranking_tiers: TierFloors::default(),
            forecasting: ForecastingConfig::default(),
            min_data_points: 10,
            trend_window: Duration::from_secs(168 * 3600),
            analytics_interval: Duration::from_secs(300),
            decay_half_life: Duration::from_secs(48 * 3600),
            prior_strength: 10.0,
            tier_hysteresis_points: 2.0,
            exploration_share: 0.0,
            exploration_seed: 0,
        }
    }
}

impl AnalyticsConfig {
    pub fn window_hours(&self) -> u32 {
        (self.trend_window.as_secs() / 3600).max(1) as u32
    }
}

/// Durations as humantime strings ("5m", "168h") in YAML.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}
