//! depin-analytics: provider performance analytics for a decentralized compute marketplace.
//!
//! Module map:
//! - [`model`] — domain types (ids, events, specs) shared by every layer
//! - [`analytics`] — the maths: pure, synchronous, unit-tested
//! - [`cluster`] — membership, election, shard placement and the shard map (etcd or in-memory)
//! - [`config`] — the YAML configuration and environment overrides
//! - [`sim`] — a simulated fleet of providers with known behaviour (demo, tests, benches)

pub mod actors;
pub mod analytics;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod gateway;
pub mod model;
pub mod node;
pub mod proto;
pub mod security;
pub mod sim;
pub mod storage;
pub mod telemetry;
pub mod tls;
