//! The maths: pure, synchronous functions over plain data (no tokio, no actors).
//!
//! | module | what |
//! |---|---|
//! | `state` | per-provider state and its O(1) update from one event |
//! | `score` | performance score, Bayesian rates, confidence, risk factors, reliability |
//! | `ranking` | multi-criteria ranking, tiers with hysteresis, top-k and k-way merge |
//! | `recommend` | job matching, reasons, warnings, cost, confidence, explanations |
//! | `trend` | regression trend, significance, reversal |
//! | `anomaly` | rolling z-score anomalies grouped into episodes |
//! | `forecast` | Holt-Winters with fitted parameters, fallbacks, model selection |
//! | `patterns` | hour-of-day / day-of-week / hour-of-week utilization patterns |
//! | `alerts` | degradation, reversal, anomaly episode, forecast below a tier floor |
//! | `network` | network analytics over many profiles |

pub mod alerts;
pub mod anomaly;
pub mod forecast;
pub mod network;
pub mod parked;
pub mod patterns;
pub mod ranking;
pub mod recommend;
pub mod score;
pub mod state;
pub mod trend;
pub mod view;
