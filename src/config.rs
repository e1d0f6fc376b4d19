//! Configuration: the YAML file of DESIGN.md §6 plus environment overrides.
//!
//! Every weight, threshold and window the analytics use lives in [`AnalyticsConfig`].
//! Loading validates it: an unknown key or bad weights are errors naming the key.

use std::path::{Path, PathBuf};
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
        Self {
            completion_rate: 0.25,
            efficiency: 0.20,
            uptime: 0.20,
            response_time: 0.15,
            sla_compliance: 0.12,
            error_rate: 0.08,
        }
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
        Self {
            performance: 0.30,
            reliability: 0.25,
            cost: 0.20,
            availability: 0.15,
            speed: 0.10,
        }
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
        Self {
            platinum: 95.0,
            gold: 85.0,
            silver: 75.0,
            bronze: 65.0,
        }
    }
}

/// Forecast horizon, interval level and anomaly threshold.
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
        Self {
            horizon_hours: 24,
            confidence_threshold: 0.7,
            anomaly_detection_std_devs: 2.5,
            interval_level: 0.95,
        }
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
    /// A provider with no event and no read for this long is parked: its actor stops and
    /// its state is kept encoded until the next event (reads decode it in place;
    /// PASSIVATE_AFTER; 0 = never, else at least 100 ms).
    #[serde(with = "humantime_serde_compat")]
    pub passivate_after: Duration,
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
            passivate_after: Duration::from_secs(600),
        }
    }
}

/// Why a configuration was rejected. Messages name the key (or environment variable).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors and unknown or mistyped keys, as the YAML parser words them (it names
    /// the key and the line).
    #[error("invalid configuration: {0}")]
    Yaml(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A float for an error message: at most six decimals, no trailing zeros (0.8999999 → 0.9).
fn show(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// Each weight finite and non-negative, and their sum 1 within 1e-6.
fn check_weights(section: &str, weights: &[(&str, f64)]) -> Result<(), ConfigError> {
    for (name, w) in weights {
        if !w.is_finite() {
            return Err(ConfigError::invalid(
                format!("{section}.{name}"),
                format!("must be a finite number, got {w}"),
            ));
        }
        if *w < 0.0 {
            return Err(ConfigError::invalid(
                format!("{section}.{name}"),
                format!("must be non-negative, got {}", show(*w)),
            ));
        }
    }
    let sum: f64 = weights.iter().map(|(_, w)| w).sum();
    if (sum - 1.0).abs() > 1e-6 {
        return Err(ConfigError::invalid(
            section,
            format!("must sum to 1, got {}", show(sum)),
        ));
    }
    Ok(())
}

fn check_range(key: &str, x: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
    if x.is_finite() && (lo..=hi).contains(&x) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!(
                "must be between {} and {}, got {}",
                show(lo),
                show(hi),
                show(x)
            ),
        ))
    }
}

fn parse_env_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        ConfigError::invalid(
            key,
            format!("expected a duration like \"5m\" or \"168h\", got {value:?} ({e})"),
        )
    })
}

impl AnalyticsConfig {
    /// The trend window in whole hours (at least 1).
    pub fn window_hours(&self) -> u32 {
        (self.trend_window.as_secs() / 3600).max(1) as u32
    }

    /// Parse the YAML of DESIGN.md §6 (every key optional, unknown keys rejected) and
    /// validate it.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, ConfigError> {
        // an empty file is the defaults, not a parse error
        let cfg: Self = if yaml.trim().is_empty() {
            Self::default()
        } else {
            serde_saphyr::from_str(yaml).map_err(|e| ConfigError::Yaml(e.to_string()))?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read and parse a YAML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_str(&text)
    }

    /// Apply the environment overrides MIN_DATA_POINTS, TREND_ANALYSIS_WINDOW,
    /// FORECAST_HORIZON and ANALYTICS_INTERVAL, looked up through `env` (pass
    /// `|k| std::env::var(k).ok()`; tests pass a map), then validate.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = env("MIN_DATA_POINTS") {
            self.min_data_points = v.trim().parse().map_err(|_| {
                ConfigError::invalid(
                    "MIN_DATA_POINTS",
                    format!("expected a whole number, got {v:?}"),
                )
            })?;
        }
        if let Some(v) = env("TREND_ANALYSIS_WINDOW") {
            self.trend_window = parse_env_duration("TREND_ANALYSIS_WINDOW", &v)?;
        }
        if let Some(v) = env("FORECAST_HORIZON") {
            let d = parse_env_duration("FORECAST_HORIZON", &v)?;
            if d.as_secs() % 3600 != 0 || d.subsec_nanos() != 0 {
                return Err(ConfigError::invalid(
                    "FORECAST_HORIZON",
                    format!("must be whole hours, got {v:?}"),
                ));
            }
            self.forecasting.horizon_hours = u32::try_from(d.as_secs() / 3600).map_err(|_| {
                ConfigError::invalid("FORECAST_HORIZON", format!("too long, got {v:?}"))
            })?;
        }
        if let Some(v) = env("ANALYTICS_INTERVAL") {
            self.analytics_interval = parse_env_duration("ANALYTICS_INTERVAL", &v)?;
        }
        if let Some(v) = env("PASSIVATE_AFTER") {
            self.passivate_after = parse_env_duration("PASSIVATE_AFTER", &v)?;
        }
        self.validate()
    }

    /// The file (if any), then the environment, then validation.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => Self::from_file(p)?,
            None => Self::default(),
        };
        cfg.apply_env(env)?;
        Ok(cfg)
    }

    /// Check every value; the first problem is returned, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.performance_weights;
        check_weights(
            "performance_weights",
            &[
                ("completion_rate", w.completion_rate),
                ("efficiency", w.efficiency),
                ("uptime", w.uptime),
                ("response_time", w.response_time),
                ("sla_compliance", w.sla_compliance),
                ("error_rate", w.error_rate),
            ],
        )?;
        let r = &self.ranking_weights;
        check_weights(
            "ranking_weights",
            &[
                ("performance", r.performance),
                ("reliability", r.reliability),
                ("cost", r.cost),
                ("availability", r.availability),
                ("speed", r.speed),
            ],
        )?;
        let t = &self.ranking_tiers;
        let floors = [
            ("platinum", t.platinum),
            ("gold", t.gold),
            ("silver", t.silver),
            ("bronze", t.bronze),
        ];
        for (name, f) in floors {
            check_range(&format!("ranking_tiers.{name}"), f, 0.0, 100.0)?;
        }
        for pair in floors.windows(2) {
            let ((hi_name, hi), (lo_name, lo)) = (pair[0], pair[1]);
            if lo > hi {
                return Err(ConfigError::invalid(
                    format!("ranking_tiers.{lo_name}"),
                    format!("must not exceed {hi_name} ({}), got {}", show(hi), show(lo)),
                ));
            }
        }
        let f = &self.forecasting;
        if f.horizon_hours == 0 {
            return Err(ConfigError::invalid(
                "forecasting.horizon_hours",
                "must be at least 1",
            ));
        }
        check_range(
            "forecasting.confidence_threshold",
            f.confidence_threshold,
            0.0,
            1.0,
        )?;
        if !(f.anomaly_detection_std_devs.is_finite() && f.anomaly_detection_std_devs > 0.0) {
            return Err(ConfigError::invalid(
                "forecasting.anomaly_detection_std_devs",
                format!(
                    "must be positive, got {}",
                    show(f.anomaly_detection_std_devs)
                ),
            ));
        }
        if !(f.interval_level > 0.0 && f.interval_level < 1.0) {
            return Err(ConfigError::invalid(
                "forecasting.interval_level",
                format!(
                    "must be between 0 and 1 (exclusive), got {}",
                    show(f.interval_level)
                ),
            ));
        }
        if self.min_data_points == 0 {
            return Err(ConfigError::invalid(
                "min_data_points",
                "must be at least 1",
            ));
        }
        if self.trend_window < Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "trend_window",
                format!(
                    "must be at least 1h, got {}",
                    humantime::format_duration(self.trend_window)
                ),
            ));
        }
        if !self.passivate_after.is_zero() && self.passivate_after < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "passivate_after",
                format!(
                    "must be 0s (never park) or at least 100ms, got {}",
                    humantime::format_duration(self.passivate_after)
                ),
            ));
        }
        if self.analytics_interval.is_zero() {
            return Err(ConfigError::invalid(
                "analytics_interval",
                "must be positive",
            ));
        }
        if self.decay_half_life.is_zero() {
            return Err(ConfigError::invalid("decay_half_life", "must be positive"));
        }
        if !(self.prior_strength.is_finite() && self.prior_strength >= 0.0) {
            return Err(ConfigError::invalid(
                "prior_strength",
                format!("must be non-negative, got {}", show(self.prior_strength)),
            ));
        }
        if !(self.tier_hysteresis_points.is_finite() && self.tier_hysteresis_points >= 0.0) {
            return Err(ConfigError::invalid(
                "tier_hysteresis_points",
                format!(
                    "must be non-negative, got {}",
                    show(self.tier_hysteresis_points)
                ),
            ));
        }
        check_range("exploration_share", self.exploration_share, 0.0, 1.0)
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const DESIGN_YAML: &str = "\
performance_weights: {completion_rate: 0.25, efficiency: 0.20, uptime: 0.20,
                      response_time: 0.15, sla_compliance: 0.12, error_rate: 0.08}
ranking_tiers: {platinum: 95.0, gold: 85.0, silver: 75.0, bronze: 65.0}
forecasting: {horizon_hours: 24, confidence_threshold: 0.7, anomaly_detection_std_devs: 2.5}
";

    fn err(yaml: &str) -> String {
        AnalyticsConfig::from_yaml_str(yaml)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_design_yaml_parses_as_is() {
        let cfg = AnalyticsConfig::from_yaml_str(DESIGN_YAML).unwrap();
        assert_eq!(cfg, AnalyticsConfig::default());
        assert_eq!(
            AnalyticsConfig::from_yaml_str("").unwrap(),
            AnalyticsConfig::default()
        );
    }

    #[test]
    fn other_keys_and_durations_parse() {
        let cfg = AnalyticsConfig::from_yaml_str(
            "min_data_points: 24\ntrend_window: 72h\ndecay_half_life: 1day\nexploration_share: 0.1\n",
        )
        .unwrap();
        assert_eq!(cfg.min_data_points, 24);
        assert_eq!(cfg.window_hours(), 72);
        assert_eq!(cfg.decay_half_life, Duration::from_secs(86_400));
        assert_eq!(cfg.exploration_share, 0.1);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err("performance_weights: {completion_rate: 0.25, latency: 0.1}");
        assert!(e.contains("latency"), "{e}");
        let e = err("ranking_tierz: {platinum: 95.0}");
        assert!(e.contains("ranking_tierz"), "{e}");
    }

    #[test]
    fn bad_weights_are_named() {
        let yaml = "performance_weights: {completion_rate: 0.45, uptime: -0.1, efficiency: 0.2, response_time: 0.15, sla_compliance: 0.12, error_rate: 0.08}";
        assert_eq!(
            err(yaml),
            "performance_weights.uptime: must be non-negative, got -0.1"
        );
        let yaml = "ranking_weights: {performance: 0.2, reliability: 0.25, cost: 0.2, availability: 0.15, speed: 0.1}";
        assert_eq!(err(yaml), "ranking_weights: must sum to 1, got 0.9");
        let yaml = "ranking_weights: {performance: .nan}";
        assert_eq!(
            err(yaml),
            "ranking_weights.performance: must be a finite number, got NaN"
        );
        // a tiny rounding error is fine
        let mut cfg = AnalyticsConfig::default();
        cfg.ranking_weights.speed += 1e-7;
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn other_invalid_values_are_named() {
        assert_eq!(
            err("ranking_tiers: {gold: 96.0}"),
            "ranking_tiers.gold: must not exceed platinum (95), got 96"
        );
        assert_eq!(
            err("ranking_tiers: {bronze: 120}"),
            "ranking_tiers.bronze: must be between 0 and 100, got 120"
        );
        assert_eq!(
            err("forecasting: {horizon_hours: 0}"),
            "forecasting.horizon_hours: must be at least 1"
        );
        assert_eq!(
            err("exploration_share: 1.5"),
            "exploration_share: must be between 0 and 1, got 1.5"
        );
        assert_eq!(
            err("trend_window: 30m"),
            "trend_window: must be at least 1h, got 30m"
        );
        assert_eq!(
            err("passivate_after: 5ms"),
            "passivate_after: must be 0s (never park) or at least 100ms, got 5ms"
        );
        assert!(
            err("trend_window: soon").contains("trend_window"),
            "{}",
            err("trend_window: soon")
        );
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn env_overrides() {
        let mut cfg = AnalyticsConfig::from_yaml_str(DESIGN_YAML).unwrap();
        cfg.apply_env(env(&[
            ("MIN_DATA_POINTS", "20"),
            ("TREND_ANALYSIS_WINDOW", "48h"),
            ("FORECAST_HORIZON", "2days"),
            ("ANALYTICS_INTERVAL", "30s"),
        ]))
        .unwrap();
        assert_eq!(cfg.min_data_points, 20);
        assert_eq!(cfg.trend_window, Duration::from_secs(48 * 3600));
        assert_eq!(cfg.forecasting.horizon_hours, 48);
        assert_eq!(cfg.analytics_interval, Duration::from_secs(30));
        let mut untouched = AnalyticsConfig::default();
        untouched.apply_env(env(&[])).unwrap();
        assert_eq!(untouched, AnalyticsConfig::default());
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let e = |pairs: &[(&str, &str)]| {
            AnalyticsConfig::default()
                .apply_env(env(pairs))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(&[("MIN_DATA_POINTS", "ten")]),
            "MIN_DATA_POINTS: expected a whole number, got \"ten\""
        );
        assert_eq!(
            e(&[("MIN_DATA_POINTS", "0")]),
            "min_data_points: must be at least 1"
        );
        assert_eq!(
            e(&[("FORECAST_HORIZON", "90m")]),
            "FORECAST_HORIZON: must be whole hours, got \"90m\""
        );
        assert!(
            e(&[("ANALYTICS_INTERVAL", "5 minutes please")])
                .starts_with("ANALYTICS_INTERVAL: expected a duration")
        );
        assert!(e(&[("TREND_ANALYSIS_WINDOW", "")]).starts_with("TREND_ANALYSIS_WINDOW:"));
    }

    #[test]
    fn from_file_reads_and_reports_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("analytics.yaml");
        std::fs::write(&path, DESIGN_YAML).unwrap();
        assert_eq!(
            AnalyticsConfig::from_file(&path).unwrap(),
            AnalyticsConfig::default()
        );
        let cfg = AnalyticsConfig::load(Some(&path), env(&[("MIN_DATA_POINTS", "3")])).unwrap();
        assert_eq!(cfg.min_data_points, 3);
        let missing = dir.path().join("nope.yaml");
        let e = AnalyticsConfig::from_file(&missing)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("nope.yaml"),
            "{e}"
        );
    }
}
