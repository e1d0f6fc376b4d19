//! Alerts (placeholder types until the alert derivation lands).

use serde::{Deserialize, Serialize};

use crate::model::{ProviderId, UnixSeconds};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlertKind {
    Degradation,
    TrendReversal,
    Anomaly,
    ForecastBelowTierFloor,
}

impl AlertKind {
    pub const ALL: [AlertKind; 4] =
        [AlertKind::Degradation, AlertKind::TrendReversal, AlertKind::Anomaly, AlertKind::ForecastBelowTierFloor];

    pub fn name(self) -> &'static str {
        match self {
            AlertKind::Degradation => "degradation",
            AlertKind::TrendReversal => "trend_reversal",
            AlertKind::Anomaly => "anomaly",
            AlertKind::ForecastBelowTierFloor => "forecast_below_tier_floor",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlertSeverity {
    Info,
    Warning,
    Critical,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub key: String,
    pub kind: AlertKind,
    pub severity: AlertSeverity,
    pub provider_id: ProviderId,
    pub at: UnixSeconds,
    pub message: String,
    pub value: f64,
    pub threshold: f64,
}
