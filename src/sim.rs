//! A simulated fleet of providers with known behaviour, for the demo, the `simulate`
//! command, integration tests and benchmarks.
//!
//! Pure and deterministic: a [`FleetConfig`] (with its seed) fixes every event. Each
//! provider-hour draws from its own RNG seeded from (seed, provider, hour), so an hour can be
//! generated on its own, in any order or in parallel, and always comes out the same.
//!
//! ```text
//! let fleet = Fleet::new(FleetConfig { providers: 3000, hours: 168, ..Default::default() });
//! for batch in fleet.batches(1000) { send(batch) }      // hours in order, time order inside
//! let truth = fleet.truth();                              // who is star, degrading, flaky, …
//! ```
//!
//! Contracts a consumer relies on:
//! - hours come out in order and every event of hour `h` lies in
//!   `[start + h·3600, start + (h+1)·3600)`;
//! - [`Fleet::generate_hour`] groups events by provider, each provider's in time order;
//!   [`Fleet::generate_hour_ordered`], [`Fleet::hours`] and [`Fleet::batches`] give global
//!   time order within the hour (stable: ties keep provider order);
//! - event ids are `<provider id>-<hour·100000 + n>`: unique, and the same on every run, so
//!   a resent batch is a duplicate for an idempotent ingest;
//! - a provider's spec is its first event, at the start of its first active hour;
//! - applied in time order with the stream's newest timestamp as the reference time, every
//!   event passes [`ProviderState::check`](crate::analytics::state::ProviderState::check)
//!   with the default [`StateParams`](crate::analytics::state::StateParams) (heartbeats come
//!   at most `heartbeat_interval_seconds` apart while a provider is up, so keep it under the
//!   state's 180 s timeout).

mod hardware;
mod scenario;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::model::{
    EventFingerprint, EventPayload, HOUR, Heartbeat, HeartbeatStatus, JobOutcome, JobStatus,
    ProviderId, ProviderSpec, ResponseTimeSample, TelemetryEvent, UnixSeconds, UtilizationSample,
};

pub use hardware::{CPU_ONLY_SHARE, GPU_MODELS, GpuModel, REGIONS, Region, fair_price};
pub use scenario::Scenario;

/// 2026-11-01T00:00:00Z (a Sunday): the default start, so runs are reproducible.
pub const DEFAULT_START: UnixSeconds = 1_793_491_200;

/// Event-id sequence numbers are `hour * SEQ_PER_HOUR + n`, `n` the event's index within
/// its provider-hour.
pub const SEQ_PER_HOUR: u64 = 100_000;

/// What to simulate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetConfig {
    pub providers: usize,
    pub hours: u32,
    pub seed: u64,
    /// First simulated hour; rounded down to a whole hour.
    pub start: UnixSeconds,
    /// Heartbeat period while up. Must stay below the state's heartbeat timeout (180 s by
    /// default) or every provider looks down; it dominates the volume (3600 / interval
    /// heartbeats per provider-hour against ~15 other events at the defaults).
    pub heartbeat_interval_seconds: u32,
    /// Jobs in a peak-load hour, drawn uniformly from this inclusive range; quieter hours,
    /// weekends and downtime scale it down.
    pub jobs_per_hour: (u32, u32),
    /// Response-time samples per fully-up hour.
    pub response_samples_per_hour: u32,
    /// Utilization samples per fully-up hour.
    pub utilization_samples_per_hour: u32,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            providers: 1000,
            hours: 168,
            seed: 42,
            start: DEFAULT_START,
            heartbeat_interval_seconds: 60,
            jobs_per_hour: (2, 12),
            response_samples_per_hour: 6,
            utilization_samples_per_hour: 4,
        }
    }
}

/// How a simulated provider behaves over the run.
///
/// Shares in a generated [`Fleet`] (by count, after rounding; every kind but `SteadyGood`
/// and `SteadyAverage` gets at least one provider once the fleet has 10 or more):
///
/// | behaviour | share | signature |
/// |---|---|---|
/// | `Star` | 0.2 % (≥ 1) | completion ≈ 99.8 %, ~30 ms, no downtime, priced under list |
/// | `SteadyGood` | 30 % | completion 95.5–98.5 %, 70–140 ms, rare short outages |
/// | `SteadyAverage` | 40.8 % | completion 86–94 %, 150–400 ms, outages ~1 % of hours |
/// | `Degrading` | 8 % | good until 55–75 % of the run, then completion, SLA and response time collapse and outages multiply |
/// | `Flaky` | 8 % | average quality, outages start in ~7 % of hours and last 20 min–5 h (uptime ≈ 80 %), half silent, half `Offline` heartbeats |
/// | `Improving` | 6 % | starts poor (completion ≈ 78 %, 3× slower, more outages) and becomes good by the end |
/// | `BrandNew` | 7 % | appears only in the last 2–12 hours, with a third of the usual jobs |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Behaviour {
    Star,
    SteadyGood,
    SteadyAverage,
    Degrading,
    Flaky,
    Improving,
    BrandNew,
}

impl Behaviour {
    pub const ALL: [Behaviour; 7] = [
        Self::Star,
        Self::SteadyGood,
        Self::SteadyAverage,
        Self::Degrading,
        Self::Flaky,
        Self::Improving,
        Self::BrandNew,
    ];

    /// Share of a generated fleet; `SteadyAverage` takes whatever the others leave.
    pub fn share(self) -> f64 {
        match self {
            Self::Star => 0.002,
            Self::SteadyGood => 0.30,
            Self::SteadyAverage => 0.408,
            Self::Degrading | Self::Flaky => 0.08,
            Self::Improving => 0.06,
            Self::BrandNew => 0.07,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Star => "star",
            Self::SteadyGood => "steady_good",
            Self::SteadyAverage => "steady_average",
            Self::Degrading => "degrading",
            Self::Flaky => "flaky",
            Self::Improving => "improving",
            Self::BrandNew => "brand_new",
        }
    }
}

/// The quality knobs of a provider at one hour.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Quality {
    /// P(a job that is not cancelled completes).
    completion: f64,
    /// P(SLA met | completed).
    sla: f64,
    /// Median response time and its log-normal spread.
    rt_ms: f64,
    rt_sigma: f64,
    /// P(a response is an error).
    resp_error: f64,
    /// P(the customer cancels).
    cancel: f64,
    /// Utilization at full load.
    util: f64,
}

impl Quality {
    fn draw<R: Rng>(b: Behaviour, rng: &mut R) -> Self {
        let mut u = |lo: f64, hi: f64| lo + (hi - lo) * rng.random::<f64>();
        let good = |u: &mut dyn FnMut(f64, f64) -> f64| Quality {
            completion: u(0.955, 0.985),
            sla: u(0.93, 0.97),
            rt_ms: u(70.0, 140.0),
            rt_sigma: 0.3,
            resp_error: u(0.002, 0.01),
            cancel: 0.02,
            util: u(0.55, 0.8),
        };
        let average = |u: &mut dyn FnMut(f64, f64) -> f64| Quality {
            completion: u(0.86, 0.94),
            sla: u(0.8, 0.9),
            rt_ms: u(150.0, 400.0),
            rt_sigma: 0.45,
            resp_error: u(0.01, 0.04),
            cancel: 0.03,
            util: u(0.3, 0.65),
        };
        match b {
            Behaviour::Star => Quality {
                completion: 0.998,
                sla: 0.995,
                rt_ms: u(25.0, 35.0),
                rt_sigma: 0.15,
                resp_error: 0.0005,
                cancel: 0.01,
                util: 0.8,
            },
            Behaviour::SteadyGood | Behaviour::Degrading | Behaviour::Improving => good(&mut u),
            Behaviour::SteadyAverage | Behaviour::Flaky => average(&mut u),
            Behaviour::BrandNew => {
                if u(0.0, 1.0) < 0.5 {
                    good(&mut u)
                } else {
                    average(&mut u)
                }
            }
        }
    }
}

/// How a provider's downtime is planned.
#[derive(Clone, Copy, Debug, PartialEq)]
enum OutagePlan {
    /// Drawn from the behaviour's outage rate.
    Random,
    /// Never down.
    Never,
    /// Up `up` hours, then `Offline` heartbeats for `down` hours, repeating from the first
    /// active hour.
    Alternating { up: u32, down: u32 },
}

/// A stretch of downtime, in seconds since the fleet's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outage {
    pub start: i64,
    pub end: i64,
    /// Heartbeats stop (a crash) rather than saying `Offline` (maintenance).
    pub silent: bool,
}

/// One simulated provider. Build your own with [`SimProvider::new`] and the modifiers
/// for hand-made scenarios ([`Fleet::from_providers`]); [`Fleet::new`] draws them.
#[derive(Clone, Debug)]
pub struct SimProvider {
    pub id: ProviderId,
    pub spec: ProviderSpec,
    pub behaviour: Behaviour,
    /// First simulated hour with events (late for `BrandNew`).
    pub first_hour: u32,
    /// `Degrading`: hour the decline starts.
    pub onset_hour: Option<u32>,
    quality: Quality,
    fixed_jobs_per_hour: Option<u32>,
    plan: OutagePlan,
    outages: Vec<Outage>,
    expected_uptime: f64,
    heartbeat_phase: u32,
    utc_offset_hours: i8,
}

impl SimProvider {
    /// A provider with the typical quality of `behaviour`, drawn from a seed derived from
    /// its id (so a hand-made scenario is as reproducible as a generated fleet).
    pub fn new(id: impl Into<ProviderId>, spec: ProviderSpec, behaviour: Behaviour) -> Self {
        let id = id.into();
        let mut rng = SmallRng::seed_from_u64(EventFingerprint::of(id.as_str()).0);
        let quality = Quality::draw(behaviour, &mut rng);
        let utc_offset_hours = hardware::region(&spec.region).map_or(0, |r| r.utc_offset_hours);
        Self {
            id,
            spec,
            behaviour,
            first_hour: 0,
            onset_hour: None,
            quality,
            fixed_jobs_per_hour: None,
            plan: if behaviour == Behaviour::Star {
                OutagePlan::Never
            } else {
                OutagePlan::Random
            },
            outages: Vec::new(),
            expected_uptime: 1.0,
            heartbeat_phase: 0,
            utc_offset_hours,
        }
    }

    /// No events before `hour`.
    pub fn active_from(mut self, hour: u32) -> Self {
        self.first_hour = hour;
        self
    }

    /// Exactly `n` jobs in every active hour, whatever the load.
    pub fn jobs_per_hour(mut self, n: u32) -> Self {
        self.fixed_jobs_per_hour = Some(n);
        self
    }

    /// `Degrading` only: the hour the decline starts (default: 55–75 % into the run in a
    /// generated fleet, two thirds of the way for a hand-made provider).
    pub fn degrading_from(mut self, hour: u32) -> Self {
        self.onset_hour = Some(hour);
        self
    }

    /// Every job completes within its SLA, no error responses, no downtime.
    pub fn flawless(mut self) -> Self {
        self.quality.completion = 1.0;
        self.quality.sla = 1.0;
        self.quality.resp_error = 0.0;
        self.quality.cancel = 0.0;
        self.plan = OutagePlan::Never;
        self
    }

    /// Up `up` hours, then `down` hours of `Offline` heartbeats, repeating.
    pub fn alternating_offline(mut self, up: u32, down: u32) -> Self {
        self.plan = OutagePlan::Alternating {
            up: up.max(1),
            down,
        };
        self
    }

    /// Share of its active time the provider was scheduled up. For silent outages the
    /// state measures slightly more (up to the heartbeat timeout per outage).
    pub fn expected_uptime(&self) -> f64 {
        self.expected_uptime
    }

    /// The planned downtime, in seconds since the fleet's start, sorted and disjoint.
    pub fn outages(&self) -> &[Outage] {
        &self.outages
    }

    /// Quality decline in [0, 1] at hour `h` of a run of `hours`.
    fn decline(&self, h: u32, hours: u32) -> f64 {
        let x = |a: u32, b: u32| f64::from(a) / f64::from(b.max(1));
        match self.behaviour {
            Behaviour::Degrading => {
                let onset = self.onset_hour.unwrap_or(hours);
                if h < onset {
                    0.0
                } else {
                    // A step, so anomaly detection sees the break, then a steady slide.
                    0.3 + 0.7 * x(h - onset + 1, hours - onset)
                }
            }
            Behaviour::Improving => 1.0 - x(h, hours),
            _ => 0.0,
        }
    }

    fn quality_at(&self, h: u32, hours: u32) -> Quality {
        let q = self.quality;
        let d = self.decline(h, hours);
        match self.behaviour {
            Behaviour::Degrading if d > 0.0 => Quality {
                completion: q.completion - d * (q.completion - 0.45),
                sla: q.sla - d * (q.sla - 0.3),
                rt_ms: q.rt_ms * (1.0 + 7.0 * d),
                resp_error: q.resp_error + 0.15 * d,
                ..q
            },
            Behaviour::Improving => Quality {
                completion: q.completion - d * (q.completion - 0.78),
                sla: q.sla - d * (q.sla - 0.7),
                rt_ms: q.rt_ms * (1.0 + 2.0 * d),
                resp_error: q.resp_error + 0.04 * d,
                ..q
            },
            _ => q,
        }
    }

    /// Outage start probability per hour, min and max length (s), share that is silent.
    fn outage_model(&self, h: u32, hours: u32) -> (f64, i64, i64, f64) {
        let d = self.decline(h, hours);
        match self.behaviour {
            Behaviour::Star => (0.0, 0, 0, 0.0),
            Behaviour::SteadyGood => (0.002, 300, 1800, 1.0),
            Behaviour::SteadyAverage | Behaviour::BrandNew => (0.008, 600, 5400, 0.7),
            Behaviour::Flaky => (0.07, 1200, 5 * HOUR, 0.5),
            Behaviour::Degrading => (0.002 + 0.12 * d, 1200, 2 * HOUR, 0.8),
            Behaviour::Improving => (0.002 + 0.03 * d, 600, 3 * HOUR, 0.7),
        }
    }

    /// Fix the outages and the expected uptime for a run (called once by the fleet).
    fn plan_outages(&mut self, seed: u64, index: usize, hours: u32) {
        let first = i64::from(self.first_hour) * HOUR;
        let end = i64::from(hours) * HOUR;
        self.outages.clear();
        match self.plan {
            OutagePlan::Never => {}
            OutagePlan::Alternating { up, down } => {
                let mut t = first + i64::from(up) * HOUR;
                while down > 0 && t < end {
                    let stop = (t + i64::from(down) * HOUR).min(end);
                    self.outages.push(Outage {
                        start: t,
                        end: stop,
                        silent: false,
                    });
                    t = stop + i64::from(up) * HOUR;
                }
            }
            OutagePlan::Random => {
                let mut rng = SmallRng::seed_from_u64(mix(mix(seed, index as u64), 0x07a6e));
                let mut free_from = first;
                for h in self.first_hour..hours {
                    let (p, min, max, silent_share) = self.outage_model(h, hours);
                    let hour_start = i64::from(h) * HOUR;
                    if rng.random::<f64>() >= p {
                        continue;
                    }
                    let start = hour_start + rng.random_range(0..HOUR);
                    let len = rng.random_range(min..=max);
                    let silent = rng.random::<f64>() < silent_share;
                    // Keep outages apart so each is a separate failure for MTBF/MTTR.
                    if start < free_from + 600 {
                        continue;
                    }
                    let stop = (start + len).min(end);
                    self.outages.push(Outage {
                        start,
                        end: stop,
                        silent,
                    });
                    free_from = stop;
                }
            }
        }
        let active = (end - first).max(1);
        let down: i64 = self.outages.iter().map(|o| o.end - o.start).sum();
        self.expected_uptime = 1.0 - down as f64 / active as f64;
    }
}

/// Who is what in a fleet, for tests and for the demo's commentary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetTruth {
    /// Clearly the best providers; the first is "the" star.
    pub stars: Vec<ProviderId>,
    pub degrading: Vec<ProviderId>,
    /// Flaky providers with their scheduled uptime share.
    pub flaky: Vec<(ProviderId, f64)>,
    pub improving: Vec<ProviderId>,
    pub brand_new: Vec<ProviderId>,
}

impl FleetTruth {
    /// "The" star: clearly the best provider of the fleet.
    pub fn star(&self) -> Option<&ProviderId> {
        self.stars.first()
    }
}

/// All events of one simulated hour, in global time order.
#[derive(Clone, Debug, PartialEq)]
pub struct HourBatch {
    /// Simulated hour, 0-based.
    pub hour: u32,
    /// Its first second.
    pub start: UnixSeconds,
    pub events: Vec<TelemetryEvent>,
}

/// A simulated fleet: providers plus the rules that turn them into events.
#[derive(Clone, Debug)]
pub struct Fleet {
    cfg: FleetConfig,
    providers: Vec<SimProvider>,
}

impl Fleet {
    /// A fleet of `cfg.providers` drawn providers (see [`Behaviour`] for the mix).
    pub fn new(cfg: FleetConfig) -> Self {
        let n = cfg.providers;
        let mut rng = SmallRng::seed_from_u64(mix(cfg.seed, 0xbe4a_71c0));
        let mut kinds = behaviour_counts(n)
            .into_iter()
            .flat_map(|(b, k)| std::iter::repeat_n(b, k))
            .collect::<Vec<_>>();
        kinds.shuffle(&mut rng);
        let providers = kinds
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                let mut rng = SmallRng::seed_from_u64(mix(mix(cfg.seed, i as u64), u64::MAX));
                // Stars undercut the list price; everyone else prices around it.
                let bias = if b == Behaviour::Star { 0.85 } else { 1.0 };
                let spec = hardware::random_spec(&mut rng, bias);
                let mut p = SimProvider::new(format!("prov-{i:06}").as_str(), spec, b);
                p.quality = Quality::draw(b, &mut rng);
                p.heartbeat_phase = rng.random_range(0..cfg.heartbeat_interval_seconds.max(1));
                match b {
                    Behaviour::Degrading => {
                        let at = f64::from(cfg.hours) * rng.random_range(0.55..0.75);
                        p.onset_hour = Some(at as u32);
                    }
                    Behaviour::BrandNew => {
                        p.first_hour = cfg.hours.saturating_sub(rng.random_range(2..=12));
                    }
                    _ => {}
                }
                p
            })
            .collect();
        Self::from_providers(cfg, providers)
    }

    /// A fleet of hand-made providers (`cfg.providers` is set to their count).
    pub fn from_providers(mut cfg: FleetConfig, mut providers: Vec<SimProvider>) -> Self {
        cfg.start -= cfg.start.rem_euclid(HOUR);
        cfg.heartbeat_interval_seconds = cfg.heartbeat_interval_seconds.max(1);
        cfg.jobs_per_hour.1 = cfg.jobs_per_hour.1.max(cfg.jobs_per_hour.0);
        cfg.providers = providers.len();
        for (i, p) in providers.iter_mut().enumerate() {
            if p.behaviour == Behaviour::Degrading && p.onset_hour.is_none() {
                p.onset_hour = Some(cfg.hours * 2 / 3);
            }
            p.heartbeat_phase %= cfg.heartbeat_interval_seconds;
            p.plan_outages(cfg.seed, i, cfg.hours);
        }
        Self { cfg, providers }
    }

    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    pub fn providers(&self) -> &[SimProvider] {
        &self.providers
    }

    pub fn provider(&self, id: &str) -> Option<&SimProvider> {
        self.providers.iter().find(|p| p.id.as_str() == id)
    }

    /// First second of simulated hour `h`.
    pub fn hour_start(&self, h: u32) -> UnixSeconds {
        self.cfg.start + i64::from(h) * HOUR
    }

    /// The first second after the run.
    pub fn end(&self) -> UnixSeconds {
        self.hour_start(self.cfg.hours)
    }

    pub fn truth(&self) -> FleetTruth {
        let ids = |b: Behaviour| {
            self.providers
                .iter()
                .filter(move |p| p.behaviour == b)
                .map(|p| p.id.clone())
        };
        FleetTruth {
            stars: ids(Behaviour::Star).collect(),
            degrading: ids(Behaviour::Degrading).collect(),
            flaky: self
                .providers
                .iter()
                .filter(|p| p.behaviour == Behaviour::Flaky)
                .map(|p| (p.id.clone(), p.expected_uptime))
                .collect(),
            improving: ids(Behaviour::Improving).collect(),
            brand_new: ids(Behaviour::BrandNew).collect(),
        }
    }

    /// A rough count of the events the whole run produces (for progress bars).
    pub fn estimated_events(&self) -> u64 {
        let c = &self.cfg;
        let per_hour = 3600 / u64::from(c.heartbeat_interval_seconds)
            + u64::from(c.jobs_per_hour.0 + c.jobs_per_hour.1) / 4
            + u64::from(c.response_samples_per_hour + c.utilization_samples_per_hour);
        let provider_hours: u64 = self
            .providers
            .iter()
            .map(|p| u64::from(c.hours.saturating_sub(p.first_hour)))
            .sum();
        provider_hours * per_hour
    }

    /// All events of hour `h`, grouped by provider, each provider's in time order.
    pub fn generate_hour(&self, h: u32) -> Vec<TelemetryEvent> {
        let mut out = Vec::new();
        self.generate_hour_into(h, &mut out);
        out
    }

    /// [`generate_hour`](Self::generate_hour) appending to `out`, to reuse its allocation.
    pub fn generate_hour_into(&self, h: u32, out: &mut Vec<TelemetryEvent>) {
        let mut scratch = Vec::with_capacity(128);
        for i in 0..self.providers.len() {
            self.provider_hour(i, h, &mut scratch, out);
        }
    }

    /// The events of provider `index` in hour `h`, in time order, appended to `out`.
    pub fn generate_provider_hour(&self, index: usize, h: u32, out: &mut Vec<TelemetryEvent>) {
        self.provider_hour(index, h, &mut Vec::with_capacity(128), out);
    }

    /// All events of hour `h` in global time order (ties keep provider order).
    pub fn generate_hour_ordered(&self, h: u32) -> Vec<TelemetryEvent> {
        let events = self.generate_hour(h);
        // Counting sort on the second within the hour: stable, O(n), and several times
        // cheaper than a comparison sort moving 128-byte events around.
        let start = self.hour_start(h);
        let mut next = vec![0usize; HOUR as usize + 1];
        for e in &events {
            next[(e.timestamp - start) as usize + 1] += 1;
        }
        for s in 1..next.len() {
            next[s] += next[s - 1];
        }
        let mut slots: Vec<Option<TelemetryEvent>> = Vec::with_capacity(events.len());
        slots.resize_with(events.len(), || None);
        for e in events {
            let s = (e.timestamp - start) as usize;
            slots[next[s]] = Some(e);
            next[s] += 1;
        }
        slots
            .into_iter()
            .map(|e| e.expect("every slot is filled once"))
            .collect()
    }

    /// Every hour of the run, in order.
    pub fn hours(&self) -> impl Iterator<Item = HourBatch> + '_ {
        (0..self.cfg.hours).map(|h| HourBatch {
            hour: h,
            start: self.hour_start(h),
            events: self.generate_hour_ordered(h),
        })
    }

    /// The whole run in batches of at most `max` events (at least 1), for streaming: hours
    /// in order, global time order within an hour, and no batch spans two hours.
    pub fn batches(&self, max: usize) -> Batches<'_> {
        Batches {
            fleet: self,
            next_hour: 0,
            max: max.max(1),
            pending: Vec::new().into_iter(),
            grouped: false,
        }
    }

    /// Like [`Fleet::batches`], but within an hour the events are grouped by provider (each
    /// provider's in time order): a batch then touches a few providers instead of hundreds,
    /// which is how a collector that buffers per provider sends, and much cheaper to apply.
    pub fn batches_by_provider(&self, max: usize) -> Batches<'_> {
        Batches {
            grouped: true,
            ..self.batches(max)
        }
    }

    /// Local load in [0.1, 1]: peaks mid-afternoon in the provider's region, weekends at
    /// 65 %.
    fn load(&self, p: &SimProvider, ts: UnixSeconds) -> f64 {
        let local = ts + i64::from(p.utc_offset_hours) * HOUR;
        let hour_of_day = local.div_euclid(HOUR).rem_euclid(24) as f64;
        let day = local.div_euclid(24 * HOUR);
        // 1970-01-01 was a Thursday: (day + 4) % 7 is 0 on Sunday, 6 on Saturday.
        let weekday = (day + 4).rem_euclid(7);
        let diurnal =
            0.55 + 0.45 * (std::f64::consts::TAU * (hour_of_day + 0.5 - 15.0) / 24.0).cos();
        diurnal
            * if weekday == 0 || weekday == 6 {
                0.65
            } else {
                1.0
            }
    }

    fn provider_hour(
        &self,
        index: usize,
        h: u32,
        scratch: &mut Vec<u32>,
        out: &mut Vec<TelemetryEvent>,
    ) {
        let p = &self.providers[index];
        let cfg = &self.cfg;
        if h < p.first_hour || h >= cfg.hours {
            return;
        }
        let mut rng = SmallRng::seed_from_u64(mix(mix(cfg.seed, index as u64), u64::from(h)));
        let rel0 = i64::from(h) * HOUR;
        let hour_start = cfg.start + rel0;
        let lo = p.outages.partition_point(|o| o.end <= rel0);
        let hi = p.outages.partition_point(|o| o.start < rel0 + HOUR);
        let outages = &p.outages[lo..hi];
        // The outage covering offset `t` of this hour, if any.
        let down_at = |t: u32| {
            let t = rel0 + i64::from(t);
            outages.iter().find(|o| o.start <= t && t < o.end)
        };
        let down_secs: i64 = outages
            .iter()
            .map(|o| o.end.min(rel0 + HOUR) - o.start.max(rel0))
            .sum();
        let up_frac = 1.0 - down_secs as f64 / HOUR as f64;
        let load = self.load(p, hour_start);
        let q = p.quality_at(h, cfg.hours);

        // Schedule as sortable keys: offset in the hour << 3 | kind.
        scratch.clear();
        if h == p.first_hour {
            scratch.push(KIND_SPEC);
        }
        let mut t = p.heartbeat_phase;
        while t < HOUR as u32 {
            if down_at(t).is_none_or(|o| !o.silent) {
                scratch.push(t << 3 | KIND_HEARTBEAT);
            }
            t += cfg.heartbeat_interval_seconds;
        }
        let jobs = match p.fixed_jobs_per_hour {
            Some(n) => n,
            None => {
                let peak = rng.random_range(cfg.jobs_per_hour.0..=cfg.jobs_per_hour.1);
                let scale = if p.behaviour == Behaviour::BrandNew {
                    0.33
                } else {
                    1.0
                };
                (f64::from(peak) * load * scale * up_frac + rng.random::<f64>()) as u32
            }
        };
        let mut place = |n: u32, kind: u32, rng: &mut SmallRng| {
            for _ in 0..n {
                // A few tries to land in up time; an hour that is all down gets nothing.
                for _ in 0..4 {
                    let t = rng.random_range(0..HOUR as u32);
                    if down_at(t).is_none() {
                        scratch.push(t << 3 | kind);
                        break;
                    }
                }
            }
        };
        place(jobs, KIND_JOB, &mut rng);
        let frac = |n: u32| (f64::from(n) * up_frac).round() as u32;
        place(frac(cfg.response_samples_per_hour), KIND_RT, &mut rng);
        place(frac(cfg.utilization_samples_per_hour), KIND_UTIL, &mut rng);
        scratch.sort_unstable();

        let seq0 = u64::from(h) * SEQ_PER_HOUR;
        out.reserve(scratch.len());
        for (n, &key) in scratch.iter().enumerate() {
            let offset = key >> 3;
            let payload = match key & 7 {
                KIND_SPEC => EventPayload::Spec(Box::new(p.spec.clone())),
                KIND_HEARTBEAT => {
                    let status = if down_at(offset).is_some() {
                        HeartbeatStatus::Offline
                    } else {
                        HeartbeatStatus::Online
                    };
                    EventPayload::Heartbeat(Heartbeat { status })
                }
                KIND_JOB => EventPayload::JobOutcome(job(&q, p.spec.price_per_hour, &mut rng)),
                KIND_RT => {
                    let ms = q.rt_ms * (q.rt_sigma * normal(&mut rng)).exp() * (0.85 + 0.3 * load);
                    EventPayload::ResponseTime(ResponseTimeSample {
                        response_time_ms: (ms * 10.0).round() / 10.0,
                        is_error: rng.random::<f64>() < q.resp_error,
                    })
                }
                _ => {
                    let busy = q.util * (0.25 + 0.75 * load);
                    let cpu = (busy + 0.05 * normal(&mut rng)).clamp(0.0, 1.0);
                    let gpu = if p.spec.gpus.is_empty() {
                        0.0
                    } else {
                        (busy * 1.1 + 0.05 * normal(&mut rng)).clamp(0.0, 1.0)
                    };
                    let memory = (0.2 + 0.6 * cpu + 0.03 * normal(&mut rng)).clamp(0.0, 1.0);
                    EventPayload::Utilization(UtilizationSample { cpu, gpu, memory })
                }
            };
            out.push(TelemetryEvent {
                event_id: event_id(p.id.as_str(), seq0 + n as u64),
                provider_id: p.id.clone(),
                timestamp: hour_start + i64::from(offset),
                payload,
            });
        }
    }
}

/// See [`Fleet::batches`].
#[derive(Debug)]
pub struct Batches<'a> {
    fleet: &'a Fleet,
    next_hour: u32,
    max: usize,
    pending: std::vec::IntoIter<TelemetryEvent>,
    grouped: bool,
}

impl Iterator for Batches<'_> {
    type Item = Vec<TelemetryEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pending.len() == 0 {
            if self.next_hour >= self.fleet.cfg.hours {
                return None;
            }
            self.pending = if self.grouped {
                self.fleet.generate_hour(self.next_hour).into_iter()
            } else {
                self.fleet.generate_hour_ordered(self.next_hour).into_iter()
            };
            self.next_hour += 1;
        }
        Some(self.pending.by_ref().take(self.max).collect())
    }
}

const KIND_SPEC: u32 = 0;
const KIND_HEARTBEAT: u32 = 1;
const KIND_JOB: u32 = 2;
const KIND_RT: u32 = 3;
const KIND_UTIL: u32 = 4;

const ERROR_CODES: [u32; 5] = [1, 137, 139, 500, 503];

fn job(q: &Quality, price_per_hour: f64, rng: &mut SmallRng) -> JobOutcome {
    // Log-uniform between one minute and one hour.
    let duration = (60f64.ln() + rng.random::<f64>() * 60f64.ln())
        .exp()
        .round();
    let (status, sla_met, error_code, duration) = if rng.random::<f64>() < q.cancel {
        (
            JobStatus::Cancelled,
            true,
            0,
            duration * rng.random::<f64>(),
        )
    } else if rng.random::<f64>() < q.completion {
        (
            JobStatus::Completed,
            rng.random::<f64>() < q.sla,
            0,
            duration,
        )
    } else if rng.random::<f64>() < 0.7 {
        let code = ERROR_CODES[rng.random_range(0..ERROR_CODES.len())];
        (
            JobStatus::Failed,
            false,
            code,
            duration * rng.random::<f64>(),
        )
    } else {
        (JobStatus::TimedOut, false, 0, duration * 1.5)
    };
    let duration_seconds = duration.round().max(1.0);
    JobOutcome {
        status,
        duration_seconds,
        sla_met,
        error_code,
        cost: ((price_per_hour * duration_seconds / 3600.0) * 10_000.0).round() / 10_000.0,
    }
}

/// `prefix-seq` without going through `fmt`, which costs more than the rest of the event.
fn event_id(prefix: &str, seq: u64) -> String {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = seq;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut s = String::with_capacity(prefix.len() + 1 + digits.len() - i);
    s.push_str(prefix);
    s.push('-');
    s.extend(digits[i..].iter().map(|&d| d as char));
    s
}

/// Counts per behaviour for a fleet of `n` (see [`Behaviour`]).
fn behaviour_counts(n: usize) -> Vec<(Behaviour, usize)> {
    use Behaviour::*;
    if n < 10 {
        // Too few for shares: the most telling kinds first.
        let order = [
            Star,
            SteadyAverage,
            Degrading,
            Flaky,
            SteadyGood,
            Improving,
            BrandNew,
        ];
        let mut counts: Vec<(Behaviour, usize)> = order.iter().map(|&b| (b, 0)).collect();
        for i in 0..n {
            counts[i % order.len()].1 += 1;
        }
        return counts;
    }
    let share = |b: Behaviour| ((n as f64 * b.share()).round() as usize).max(1);
    let mut counts: Vec<(Behaviour, usize)> =
        [Star, Degrading, Flaky, Improving, BrandNew, SteadyGood]
            .iter()
            .map(|&b| (b, share(b)))
            .collect();
    let taken: usize = counts.iter().map(|c| c.1).sum();
    counts.push((SteadyAverage, n.saturating_sub(taken)));
    counts
}

/// SplitMix64 finaliser over a combination of two words: decorrelates the per-provider-hour
/// seeds (neighbouring seeds give unrelated streams).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A standard normal draw (Box–Muller; rand 0.9 has no normal distribution without
/// rand_distr).
fn normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::analytics::state::{ProviderState, StateParams};

    fn small(providers: usize, hours: u32) -> FleetConfig {
        FleetConfig {
            providers,
            hours,
            ..FleetConfig::default()
        }
    }

    /// Applies events in order, with the stream's newest time as the reference, and
    /// returns the states; panics on any rejection.
    fn apply_all(
        events: impl IntoIterator<Item = TelemetryEvent>,
    ) -> HashMap<ProviderId, ProviderState> {
        let p = StateParams::default();
        let mut states = HashMap::new();
        let mut now = i64::MIN;
        for e in events {
            now = now.max(e.timestamp);
            let s = states
                .entry(e.provider_id.clone())
                .or_insert_with(|| ProviderState::new(e.provider_id.clone(), &p));
            s.apply(&e, now, &p)
                .unwrap_or_else(|err| panic!("{} rejected: {err}", e.event_id));
        }
        states
    }

    fn completion(s: &ProviderState, hours: std::ops::Range<i64>) -> f64 {
        let (done, decided) = hours
            .filter_map(|h| s.window.get(h))
            .fold((0, 0), |(d, n), b| {
                (d + b.completed as u32, n + b.decided_jobs())
            });
        f64::from(done) / f64::from(decided.max(1))
    }

    fn mean_rt(s: &ProviderState, hours: std::ops::Range<i64>) -> f64 {
        let bs: Vec<_> = hours
            .filter_map(|h| s.window.get(h))
            .filter(|b| b.rt_count > 0)
            .collect();
        bs.iter().map(|b| f64::from(b.rt_mean)).sum::<f64>() / bs.len().max(1) as f64
    }

    #[test]
    fn same_seed_same_events_other_seed_other_events() {
        let a = Fleet::new(small(50, 6));
        let b = Fleet::new(small(50, 6));
        let c = Fleet::new(FleetConfig {
            seed: 7,
            ..small(50, 6)
        });
        for h in [0, 3, 5] {
            assert_eq!(a.generate_hour(h), b.generate_hour(h));
            assert_ne!(a.generate_hour(h), c.generate_hour(h));
        }
        // An hour generated alone equals the same hour generated in sequence.
        let seq: Vec<_> = a.hours().collect();
        assert_eq!(seq[4].events, b.generate_hour_ordered(4));
    }

    #[test]
    fn events_stay_in_their_hour_in_time_order_with_unique_ids() {
        let fleet = Fleet::new(small(40, 30));
        let mut ids = HashSet::new();
        for h in 0..30 {
            let events = fleet.generate_hour(h);
            let mut last: HashMap<&ProviderId, i64> = HashMap::new();
            let mut seen_providers: Vec<&ProviderId> = Vec::new();
            for e in &events {
                assert!((fleet.hour_start(h)..fleet.hour_start(h + 1)).contains(&e.timestamp));
                let prev = last.insert(&e.provider_id, e.timestamp);
                assert!(
                    prev.is_none_or(|t| t <= e.timestamp),
                    "{} out of order",
                    e.event_id
                );
                if seen_providers.last() != Some(&&e.provider_id) {
                    assert!(
                        !seen_providers.contains(&&e.provider_id),
                        "provider events not grouped"
                    );
                    seen_providers.push(&e.provider_id);
                }
                assert!(e.event_id.starts_with(e.provider_id.as_str()));
                assert!(
                    ids.insert(e.event_id.clone()),
                    "duplicate id {}",
                    e.event_id
                );
            }
        }
    }

    #[test]
    fn batches_are_bounded_in_global_time_order_and_cover_every_event() {
        let fleet = Fleet::new(small(30, 5));
        let total: usize = (0..5).map(|h| fleet.generate_hour(h).len()).sum();
        let mut n = 0;
        let mut prev = i64::MIN;
        for batch in fleet.batches(1000) {
            assert!(!batch.is_empty() && batch.len() <= 1000);
            let hour = crate::model::hour_of(batch[0].timestamp);
            for e in &batch {
                assert!(e.timestamp >= prev);
                assert_eq!(
                    crate::model::hour_of(e.timestamp),
                    hour,
                    "a batch spans two hours"
                );
                prev = e.timestamp;
            }
            n += batch.len();
        }
        assert_eq!(n, total);
        let est = fleet.estimated_events() as f64;
        assert!(
            (0.7..1.3).contains(&(n as f64 / est)),
            "estimate {est} for {n}"
        );
    }

    #[test]
    fn behaviour_mix_follows_the_documented_shares() {
        let fleet = Fleet::new(small(1000, 1));
        let count = |b| {
            fleet
                .providers()
                .iter()
                .filter(|p| p.behaviour == b)
                .count()
        };
        assert_eq!(count(Behaviour::Star), 2);
        assert_eq!(count(Behaviour::SteadyGood), 300);
        assert_eq!(count(Behaviour::Degrading), 80);
        assert_eq!(count(Behaviour::Flaky), 80);
        assert_eq!(count(Behaviour::Improving), 60);
        assert_eq!(count(Behaviour::BrandNew), 70);
        assert_eq!(count(Behaviour::SteadyAverage), 408);
        let twelve = Fleet::new(small(12, 1));
        for b in [
            Behaviour::Star,
            Behaviour::Degrading,
            Behaviour::Flaky,
            Behaviour::Improving,
            Behaviour::BrandNew,
        ] {
            assert!(
                twelve.providers().iter().any(|p| p.behaviour == b),
                "{b:?} missing"
            );
        }
        assert_eq!(Fleet::new(small(3, 1)).providers().len(), 3);
    }

    #[test]
    fn a_week_applies_cleanly_and_behaviours_show_their_signature() {
        let hours = 168;
        let fleet = Fleet::new(FleetConfig {
            heartbeat_interval_seconds: 120,
            ..small(60, hours)
        });
        let states = apply_all(fleet.batches(1000).flatten());
        let h0 = crate::model::hour_of(fleet.config().start);
        let truth = fleet.truth();
        assert!(!truth.stars.is_empty() && !truth.degrading.is_empty() && !truth.flaky.is_empty());

        for p in fleet.providers() {
            let s = &states[&p.id];
            assert_eq!(s.spec.as_ref(), Some(&p.spec));
            match p.behaviour {
                Behaviour::Degrading => {
                    let onset = i64::from(p.onset_hour.unwrap());
                    let early = completion(s, h0..h0 + onset);
                    let late = completion(s, h0 + hours as i64 - 24..h0 + hours as i64);
                    assert!(late < early - 0.2, "{}: {early} → {late}", p.id);
                    let rt_late = mean_rt(s, h0 + hours as i64 - 24..h0 + hours as i64);
                    assert!(rt_late > 3.0 * mean_rt(s, h0..h0 + onset), "{}", p.id);
                }
                Behaviour::Improving => {
                    let early = completion(s, h0..h0 + 48);
                    let late = completion(s, h0 + 120..h0 + 168);
                    assert!(late > early, "{}: {early} → {late}", p.id);
                }
                Behaviour::Flaky => {
                    let measured = s.uptime.uptime_ratio().unwrap();
                    assert!(s.uptime.failures >= 3, "{}", p.id);
                    assert!(
                        (measured - p.expected_uptime()).abs() < 0.03,
                        "{}: {measured} vs {}",
                        p.id,
                        p.expected_uptime()
                    );
                    assert!(
                        measured < 0.97,
                        "{} too reliable for flaky: {measured}",
                        p.id
                    );
                }
                Behaviour::BrandNew => {
                    assert_eq!(
                        s.lifetime.first_seen,
                        Some(fleet.hour_start(p.first_hour)),
                        "{}",
                        p.id
                    );
                    assert!(p.first_hour >= hours - 12);
                }
                Behaviour::Star => {
                    assert_eq!(s.uptime.uptime_ratio(), Some(1.0));
                }
                _ => {}
            }
        }
        // Flaky outages come both as silence and as Offline heartbeats.
        let offline = fleet
            .providers()
            .iter()
            .filter(|p| p.behaviour == Behaviour::Flaky)
            .flat_map(|p| p.outages())
            .fold(
                (0, 0),
                |(s, o), x| if x.silent { (s + 1, o) } else { (s, o + 1) },
            );
        assert!(offline.0 > 0 && offline.1 > 0, "{offline:?}");

        // Stars beat everyone on completion and speed.
        let star = &states[&truth.stars[0]];
        let all = h0..h0 + hours as i64;
        for p in fleet
            .providers()
            .iter()
            .filter(|p| p.behaviour != Behaviour::Star && p.first_hour == 0)
        {
            assert!(
                completion(star, all.clone()) > completion(&states[&p.id], all.clone()),
                "{}",
                p.id
            );
            assert!(
                mean_rt(star, all.clone()) < mean_rt(&states[&p.id], all.clone()),
                "{}",
                p.id
            );
        }
    }

    #[test]
    fn resending_an_hour_changes_nothing() {
        let fleet = Fleet::new(small(5, 3));
        let p = StateParams::default();
        let events: Vec<_> = fleet.batches(100).flatten().collect();
        let mut states = apply_all(events.iter().cloned());
        let before = format!("{states:?}");
        let now = events.last().unwrap().timestamp;
        for e in events.iter().filter(|e| e.timestamp >= fleet.hour_start(2)) {
            let s = states.get_mut(&e.provider_id).unwrap();
            assert_eq!(
                s.apply(e, now, &p),
                Err(crate::analytics::state::EventError::Duplicate)
            );
        }
        assert_eq!(format!("{states:?}"), before);
    }

    #[test]
    fn load_follows_the_regional_afternoon_and_weekends_are_quieter() {
        let fleet = Fleet::new(FleetConfig {
            jobs_per_hour: (20, 20),
            ..small(200, 168)
        });
        // DEFAULT_START is a Sunday 00:00 UTC; count jobs by the provider's local hour.
        let mut by_local_hour = [0u32; 24];
        let mut weekday_jobs = 0;
        let mut weekend_jobs = 0;
        for h in 0..168 {
            for e in fleet.generate_hour(h) {
                if !matches!(e.payload, EventPayload::JobOutcome(_)) {
                    continue;
                }
                let p = fleet.provider(e.provider_id.as_str()).unwrap();
                let local = e.timestamp + i64::from(p.utc_offset_hours) * HOUR;
                by_local_hour[local.div_euclid(HOUR).rem_euclid(24) as usize] += 1;
                if matches!((local.div_euclid(86_400) + 4).rem_euclid(7), 0 | 6) {
                    weekend_jobs += 1;
                } else {
                    weekday_jobs += 1;
                }
            }
        }
        assert!(
            by_local_hour[15] > 3 * by_local_hour[3],
            "{by_local_hour:?}"
        );
        // 5 weekdays against 2 weekend days, so compare per day.
        assert!((weekend_jobs as f64 / 2.0) < 0.8 * (weekday_jobs as f64 / 5.0));
    }

    #[test]
    fn prices_follow_hardware() {
        let fleet = Fleet::new(small(2000, 1));
        let mean_price = |pred: &dyn Fn(&ProviderSpec) -> bool| {
            let ps: Vec<f64> = fleet
                .providers()
                .iter()
                .map(|p| &p.spec)
                .filter(|s| pred(s))
                .map(|s| s.price_per_hour)
                .collect();
            ps.iter().sum::<f64>() / ps.len() as f64
        };
        let gpu = |m: &'static str| {
            move |s: &ProviderSpec| {
                s.primary_gpu()
                    .is_some_and(|g| g.model == m && g.count == 4)
            }
        };
        let (h100, l4, cpu) = (
            mean_price(&gpu("H100")),
            mean_price(&gpu("L4")),
            mean_price(&|s| s.gpus.is_empty()),
        );
        assert!(h100 > 3.0 * l4 && l4 > cpu, "{h100} {l4} {cpu}");
        for p in fleet.providers() {
            let ratio = p.spec.price_per_hour / fair_price(&p.spec);
            assert!((0.5..1.7).contains(&ratio), "{}: {ratio}", p.id);
        }
        let regions: HashSet<_> = fleet
            .providers()
            .iter()
            .map(|p| p.spec.region.as_str())
            .collect();
        assert_eq!(regions.len(), REGIONS.len());
    }

    #[test]
    fn event_ids_are_short_and_decimal() {
        assert_eq!(event_id("prov-000042", 0), "prov-000042-0");
        assert_eq!(event_id("prov-000042", 16_700_012), "prov-000042-16700012");
    }

    #[test]
    #[ignore = "timing, run by hand: cargo test --lib sim::tests::generation_speed -- --ignored --nocapture"]
    fn generation_speed() {
        let fleet = Fleet::new(FleetConfig {
            providers: 5000,
            ..FleetConfig::default()
        });
        let mut out = Vec::new();
        let t = std::time::Instant::now();
        for h in 0..4 {
            out.clear();
            fleet.generate_hour_into(h, &mut out);
        }
        let grouped = t.elapsed();
        let n = out.len() * 4;
        let t = std::time::Instant::now();
        let ordered: usize = (4..8).map(|h| fleet.generate_hour_ordered(h).len()).sum();
        let ordered_t = t.elapsed();
        println!(
            "grouped: {n} events in {grouped:?} = {:.0} events/s; ordered: {ordered} in {ordered_t:?} = {:.0} events/s",
            n as f64 / grouped.as_secs_f64(),
            ordered as f64 / ordered_t.as_secs_f64()
        );
    }
}
