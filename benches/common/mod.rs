//! What the benches share: a simulated fleet's providers run through a stretch of history.

// Each bench uses part of it.
#![allow(dead_code)]

use depin_analytics::analytics::state::{ProviderState, StateParams};
use depin_analytics::analytics::view::{self, AnalyticsSnapshot};
use depin_analytics::config::AnalyticsConfig;
use depin_analytics::model::{UnixSeconds, hour_of};
use depin_analytics::sim::{Fleet, FleetConfig};

/// Providers with simulated history, and what it took.
pub struct SimulatedStates {
    pub params: StateParams,
    pub states: Vec<ProviderState>,
    /// Events applied.
    pub events: u64,
    /// Newest event time of the simulation.
    pub now: UnixSeconds,
}

/// `providers` of a simulated fleet (seed 42) run `hours` through `ProviderState::apply`,
/// each closed hour scored as the provider actor does.
pub fn simulate(cfg: &AnalyticsConfig, providers: usize, hours: u32) -> SimulatedStates {
    let params = StateParams {
        window_hours: cfg.window_hours(),
        ..StateParams::default()
    };
    let fleet = Fleet::new(FleetConfig {
        providers,
        hours,
        ..FleetConfig::default()
    });
    let empty = AnalyticsSnapshot::default();
    let mut buf = Vec::new();
    let mut states = Vec::with_capacity(providers);
    let mut events = 0u64;
    for (i, p) in fleet.providers().iter().enumerate() {
        let mut s = ProviderState::new(p.id.clone(), &params);
        for h in 0..hours {
            buf.clear();
            fleet.generate_provider_hour(i, h, &mut buf);
            for ev in &buf {
                s.apply(ev, ev.timestamp, &params)
                    .expect("simulated events are valid");
            }
            events += buf.len() as u64;
            if s.window.newest_hour().is_some() {
                // the hour is closed: score it as the provider actor does
                view::record_hour_score(&mut s, hour_of(fleet.hour_start(h)), &empty, cfg);
            }
        }
        states.push(s);
    }
    SimulatedStates {
        params,
        states,
        events,
        now: fleet.end() - 1,
    }
}
