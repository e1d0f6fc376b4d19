//! depin-analytics: provider performance analytics for a decentralized compute marketplace.
//!
//! Module map:
//! - [`model`] — domain types (ids, events, specs) shared by every layer
//! - [`analytics`] — the maths: pure, synchronous, unit-tested
//! - [`config`] — the YAML configuration and environment overrides
//! - [`sim`] — a simulated fleet of providers with known behaviour (demo, tests, benches)

pub mod analytics;
pub mod config;
pub mod model;
pub mod sim;
