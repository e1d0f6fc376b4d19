//! Hand-made fleets with known truth, for integration tests.

use crate::model::{TelemetryEvent, UnixSeconds};

use super::hardware::{GPU_MODELS, machine};
use super::{Behaviour, Fleet, FleetConfig, SimProvider};

/// A week (168 h, heartbeats every 60 s, fixed seed) of sixteen providers whose expected
/// analytics are known:
///
/// - `best` — 4× A100 80 GB in us-east priced at 85 % of list; completes ≈ 99.8 % of jobs
///   within SLA, ~30 ms responses, never down. It should rank first, in the top tier.
/// - `degrading` — the same machine at list price; good for the first 5 days, then from
///   hour [`DEGRADING_ONSET_HOUR`](Self::DEGRADING_ONSET_HOUR) completion drops at once
///   from ~97 % to ~80 % and slides to ~45 % by the end, response time rises from ~100 ms
///   to ~8× that and outages multiply: a clearly declining score trend with an anomaly at
///   the break.
/// - `three-jobs` — appears for the last 3 hours only, with exactly three jobs (one an
///   hour), all completed within SLA, plus a few response-time and utilization samples. A
///   perfect record on almost no data: it must not outrank proven providers.
/// - `half-offline` — up for an hour, then an hour of `Offline` heartbeats, repeating from
///   hour 0; every heartbeat on the minute. Through `ProviderState::apply` with the
///   default parameters: [`HALF_OFFLINE_UP_SECONDS`](Self::HALF_OFFLINE_UP_SECONDS) up,
///   [`HALF_OFFLINE_DOWN_SECONDS`](Self::HALF_OFFLINE_DOWN_SECONDS) down (the run ends 60 s
///   into its last, open, down hour), 84 failures, 83 repairs, MTTR and MTBF exactly
///   3600 s, uptime [`HALF_OFFLINE_UPTIME`](Self::HALF_OFFLINE_UPTIME) (50 % within 0.01 %).
/// - `ordinary-01` … `ordinary-12` — alternately steady good and steady average, on a
///   spread of regions and hardware (H100, A100 40/80 GB, RTX4090, L4, CPU-only) priced
///   around list, so recommendation filters have something to choose between.
#[derive(Clone, Debug)]
pub struct Scenario {
    fleet: Fleet,
}

impl Scenario {
    pub const HOURS: u32 = 168;
    pub const SEED: u64 = 20_261_101;
    pub const BEST: &'static str = "best";
    pub const DEGRADING: &'static str = "degrading";
    pub const THREE_JOBS: &'static str = "three-jobs";
    pub const HALF_OFFLINE: &'static str = "half-offline";
    /// Ids `ordinary-01` to `ordinary-12`.
    pub const ORDINARY: usize = 12;
    pub const DEGRADING_ONSET_HOUR: u32 = 120;
    pub const THREE_JOBS_FIRST_HOUR: u32 = 165;
    pub const HALF_OFFLINE_UP_SECONDS: i64 = 84 * 3600;
    pub const HALF_OFFLINE_DOWN_SECONDS: i64 = 83 * 3600 + 3540;
    pub const HALF_OFFLINE_FAILURES: u64 = 84;
    pub const HALF_OFFLINE_REPAIRS: u64 = 83;
    pub const HALF_OFFLINE_MTTR_SECONDS: f64 = 3600.0;
    pub const HALF_OFFLINE_MTBF_SECONDS: f64 = 3600.0;
    pub const HALF_OFFLINE_UPTIME: f64 = 302_400.0 / 604_740.0;

    /// The scenario starting at `start` (rounded down to the hour).
    pub fn known_truth(start: UnixSeconds) -> Self {
        let [h100, a100_80, a100_40, rtx4090, l4] = &GPU_MODELS;
        let a100_box = |region: &str, price: f64| {
            machine(region, Some((a100_80, 4)), 64, 512.0, 4000.0, price)
        };
        let mut providers = vec![
            SimProvider::new(Self::BEST, a100_box("us-east", 0.85), Behaviour::Star),
            SimProvider::new(
                Self::DEGRADING,
                a100_box("us-east", 1.0),
                Behaviour::Degrading,
            )
            .degrading_from(Self::DEGRADING_ONSET_HOUR),
            SimProvider::new(
                Self::THREE_JOBS,
                a100_box("eu-central", 1.0),
                Behaviour::BrandNew,
            )
            .active_from(Self::THREE_JOBS_FIRST_HOUR)
            .jobs_per_hour(1)
            .flawless(),
            SimProvider::new(
                Self::HALF_OFFLINE,
                a100_box("eu-west", 0.95),
                Behaviour::SteadyGood,
            )
            .alternating_offline(1, 1),
        ];
        let ordinary = [
            ("us-east", Some((a100_80, 4)), 64, 512.0, 4000.0, 1.00),
            ("us-west", Some((a100_80, 2)), 32, 256.0, 2000.0, 1.05),
            ("eu-central", Some((h100, 8)), 128, 1024.0, 8000.0, 1.00),
            ("eu-west", Some((h100, 4)), 64, 512.0, 4000.0, 1.10),
            ("ap-southeast", Some((rtx4090, 4)), 48, 192.0, 2000.0, 0.95),
            ("ap-northeast", Some((rtx4090, 8)), 96, 384.0, 4000.0, 1.00),
            ("sa-east", Some((l4, 2)), 16, 64.0, 1000.0, 1.05),
            ("us-east", Some((l4, 4)), 32, 128.0, 1000.0, 1.00),
            ("eu-central", Some((a100_40, 4)), 64, 256.0, 2000.0, 0.98),
            ("us-west", Some((a100_40, 8)), 96, 768.0, 4000.0, 1.08),
            ("eu-west", None, 64, 256.0, 2000.0, 1.00),
            ("us-east", None, 128, 512.0, 4000.0, 1.02),
        ];
        for (i, (region, gpu, cores, mem, disk, price)) in ordinary.into_iter().enumerate() {
            let behaviour = if i % 2 == 0 {
                Behaviour::SteadyGood
            } else {
                Behaviour::SteadyAverage
            };
            let id = format!("ordinary-{:02}", i + 1);
            let spec = machine(region, gpu, cores, mem, disk, price);
            providers.push(SimProvider::new(id.as_str(), spec, behaviour));
        }
        let cfg = FleetConfig {
            hours: Self::HOURS,
            seed: Self::SEED,
            start,
            heartbeat_interval_seconds: 60,
            ..FleetConfig::default()
        };
        Self {
            fleet: Fleet::from_providers(cfg, providers),
        }
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The first second after the scenario: a natural "now" for queries.
    pub fn end(&self) -> UnixSeconds {
        self.fleet.end()
    }

    /// Every event of the scenario (about 175 000), hours in order, time order within.
    pub fn events(&self) -> Vec<TelemetryEvent> {
        self.fleet.hours().flat_map(|b| b.events).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::analytics::state::{ProviderState, StateParams};
    use crate::model::{EventPayload, HeartbeatStatus, ProviderId, hour_of};

    fn states(s: &Scenario) -> HashMap<ProviderId, ProviderState> {
        let p = StateParams::default();
        let mut states = HashMap::new();
        let mut now = i64::MIN;
        for e in s.events() {
            now = now.max(e.timestamp);
            let st = states
                .entry(e.provider_id.clone())
                .or_insert_with(|| ProviderState::new(e.provider_id.clone(), &p));
            st.apply(&e, now, &p)
                .unwrap_or_else(|err| panic!("{} rejected: {err}", e.event_id));
        }
        states
    }

    #[test]
    fn known_truth_gives_the_documented_numbers() {
        // Not hour-aligned on purpose: the scenario rounds down.
        let s = Scenario::known_truth(crate::sim::DEFAULT_START + 1234);
        assert_eq!(s.fleet().config().start, crate::sim::DEFAULT_START);
        let st = states(&s);
        assert_eq!(st.len(), 4 + Scenario::ORDINARY);

        let half = &st[&ProviderId::new(Scenario::HALF_OFFLINE)].uptime;
        assert_eq!(half.total_up_seconds, Scenario::HALF_OFFLINE_UP_SECONDS);
        assert_eq!(half.total_down_seconds, Scenario::HALF_OFFLINE_DOWN_SECONDS);
        assert_eq!(half.failures, Scenario::HALF_OFFLINE_FAILURES);
        assert_eq!(half.repairs, Scenario::HALF_OFFLINE_REPAIRS);
        assert_eq!(
            half.mttr_seconds(),
            Some(Scenario::HALF_OFFLINE_MTTR_SECONDS)
        );
        assert_eq!(
            half.mtbf_seconds(),
            Some(Scenario::HALF_OFFLINE_MTBF_SECONDS)
        );
        assert_eq!(half.uptime_ratio(), Some(Scenario::HALF_OFFLINE_UPTIME));
        assert!((Scenario::HALF_OFFLINE_UPTIME - 0.5).abs() < 1e-4);

        let three = &st[&ProviderId::new(Scenario::THREE_JOBS)];
        assert_eq!(three.lifetime.jobs(), 3);
        assert_eq!(three.lifetime.completed, 3);
        assert_eq!(three.lifetime.sla_met, 3);
        let first = s.fleet().hour_start(Scenario::THREE_JOBS_FIRST_HOUR);
        assert_eq!(three.lifetime.first_seen, Some(first));

        let best = &st[&ProviderId::new(Scenario::BEST)];
        assert_eq!(best.uptime.uptime_ratio(), Some(1.0));
        let rate = |s: &ProviderState| {
            s.lifetime.completed as f64
                / (s.lifetime.completed + s.lifetime.failed + s.lifetime.timed_out) as f64
        };
        for (id, other) in &st {
            if id.as_str() != Scenario::BEST && id.as_str() != Scenario::THREE_JOBS {
                assert!(rate(best) > rate(other), "{id}");
                assert!(best.lifetime.rt_mean < other.lifetime.rt_mean, "{id}");
            }
        }

        // degrading: the last two days are far worse than the first five.
        let d = &st[&ProviderId::new(Scenario::DEGRADING)];
        let h0 = hour_of(s.fleet().config().start);
        let onset = h0 + i64::from(Scenario::DEGRADING_ONSET_HOUR);
        let window = |from: i64, to: i64| {
            let (mut done, mut decided, mut rt, mut n) = (0u32, 0u32, 0.0, 0.0);
            for (_, b) in d.window.iter().filter(|(h, _)| (from..to).contains(h)) {
                done += u32::from(b.completed);
                decided += b.decided_jobs();
                if b.rt_count > 0 {
                    rt += f64::from(b.rt_mean);
                    n += 1.0;
                }
            }
            (f64::from(done) / f64::from(decided), rt / n)
        };
        let (early_rate, early_rt) = window(h0, onset);
        let (late_rate, late_rt) = window(onset + 24, h0 + 168);
        assert!(
            early_rate > 0.93 && late_rate < 0.7,
            "{early_rate} → {late_rate}"
        );
        assert!(late_rt > 4.0 * early_rt, "{early_rt} → {late_rt}");
    }

    #[test]
    fn half_offline_says_offline_on_the_hour() {
        let s = Scenario::known_truth(crate::sim::DEFAULT_START);
        let i = s
            .fleet()
            .providers()
            .iter()
            .position(|p| p.id.as_str() == Scenario::HALF_OFFLINE)
            .unwrap();
        let mut out = Vec::new();
        s.fleet().generate_provider_hour(i, 1, &mut out);
        let hbs: Vec<_> = out
            .iter()
            .filter_map(|e| match e.payload {
                EventPayload::Heartbeat(h) => Some((e.timestamp, h.status)),
                _ => None,
            })
            .collect();
        assert_eq!(hbs.len(), 60);
        assert_eq!(hbs[0], (s.fleet().hour_start(1), HeartbeatStatus::Offline));
        assert!(hbs.iter().all(|(_, st)| *st == HeartbeatStatus::Offline));
        assert!(
            !out.iter()
                .any(|e| matches!(e.payload, EventPayload::JobOutcome(_)))
        );
    }
}
