//! Per-provider state and its O(1) update from one event.
//!
//! [`ProviderState`] is what a `ProviderActor` holds and what a snapshot stores: the spec,
//! a ring of hourly [`HourBucket`]s over the trend window, lifetime counters, the uptime
//! state machine, failure patterns and the recent event ids that make ingest idempotent.
//! Every query reads buckets and counters, never raw events.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::model::{
    EventFingerprint, EventPayload, HOUR, HeartbeatStatus, JobStatus, ProviderId, ProviderSpec,
    TelemetryEvent, UnixSeconds, hour_of,
};

/// Why an event was not applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum EventError {
    #[error(
        "timestamp {ts} is older than the {window_hours}h window (newest hour starts at {newest})"
    )]
    TooOld {
        ts: UnixSeconds,
        window_hours: u32,
        newest: UnixSeconds,
    },
    #[error("timestamp {ts} is more than {max_skew_seconds}s ahead of the newest event time {now}")]
    TooFarInFuture {
        ts: UnixSeconds,
        now: UnixSeconds,
        max_skew_seconds: i64,
    },
    #[error("duplicate event id")]
    Duplicate,
}

/// Tunables of the state itself (the window, the clock-skew bound, the heartbeat timeout).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateParams {
    pub window_hours: u32,
    /// An event more than this far ahead of the reference time is rejected.
    pub max_future_skew_seconds: i64,
    /// No heartbeat for this long means the provider went down at its last heartbeat.
    pub heartbeat_timeout_seconds: i64,
    /// How many recent event ids a provider remembers for de-duplication.
    pub recent_ids: usize,
}

impl Default for StateParams {
    fn default() -> Self {
        Self {
            window_hours: 168,
            max_future_skew_seconds: 300,
            heartbeat_timeout_seconds: 180,
            recent_ids: 256,
        }
    }
}

/// One hour of a provider's activity. Compact on purpose (about 48 bytes): a full week
/// costs 168 of these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HourBucket {
    pub completed: u16,
    pub failed: u16,
    pub timed_out: u16,
    pub cancelled: u16,
    pub sla_met: u16,
    pub sla_missed: u16,
    /// Error responses and failed jobs with an error code.
    pub errors: u16,
    pub rt_count: u16,
    /// Welford running mean and sum of squared deviations of response time (ms).
    pub rt_mean: f32,
    pub rt_m2: f32,
    pub util_count: u16,
    /// Utilization means in [0, 1], stored as fractions of `u16::MAX`.
    util_cpu: u16,
    util_gpu: u16,
    util_mem: u16,
    pub uptime_seconds: u16,
    pub downtime_seconds: u16,
    pub cost: f32,
    /// Job seconds run in this hour.
    pub busy_seconds: f32,
    /// The composite performance score at the close of the hour; NaN when none was taken.
    pub score: f32,
}

const Q: f64 = u16::MAX as f64;

/// A field type of [`HourBucket`] as a column of `u32`s ([`crate::analytics::parked`]).
trait Column: Copy {
    /// Bytes a value takes in the fixed-width form.
    const WIDTH: usize;
    fn to_column(self) -> u32;
    /// The value of [`Column::to_column`]; a `u16` keeps the low 16 bits.
    fn from_column(c: u32) -> Self;
}

impl Column for u16 {
    const WIDTH: usize = 2;
    fn to_column(self) -> u32 {
        u32::from(self)
    }
    fn from_column(c: u32) -> Self {
        c as u16
    }
}

impl Column for f32 {
    const WIDTH: usize = 4;
    fn to_column(self) -> u32 {
        self.to_bits()
    }
    fn from_column(c: u32) -> Self {
        f32::from_bits(c)
    }
}

/// The columns of an [`HourBucket`], listed once: every field with its type, in
/// declaration order. The destructuring in `to_columns` fails to compile when a field is
/// missing from the list, and the typed calls when a type is wrong.
macro_rules! bucket_columns {
    ($($field:ident: $ty:ty),* $(,)?) => {
        impl HourBucket {
            /// The number of fields, a column each in [`HourBucket::to_columns`].
            pub const COLUMNS: usize = [$(stringify!($field)),*].len();

            const WIDTHS: [usize; Self::COLUMNS] = [$(<$ty as Column>::WIDTH),*];

            /// Every field as a number, in declaration order (`f32`s as their bits): the
            /// columns of [`crate::analytics::parked`]'s packing.
            /// [`HourBucket::from_columns`] is the inverse.
            pub fn to_columns(&self) -> [u32; Self::COLUMNS] {
                let HourBucket { $($field),* } = *self;
                [$(<$ty as Column>::to_column($field)),*]
            }

            /// Bytes of column `c` of [`HourBucket::to_columns`]: 4 for the `f32`s, else 2.
            pub fn column_width(c: usize) -> usize {
                Self::WIDTHS[c]
            }

            /// The bucket of [`HourBucket::to_columns`]; the `u16` columns must fit 16 bits
            /// (their high bits are dropped otherwise).
            pub fn from_columns(c: [u32; Self::COLUMNS]) -> Self {
                let [$($field),*] = c;
                HourBucket { $($field: <$ty as Column>::from_column($field)),* }
            }
        }
    };
}

bucket_columns! {
    completed: u16,
    failed: u16,
    timed_out: u16,
    cancelled: u16,
    sla_met: u16,
    sla_missed: u16,
    errors: u16,
    rt_count: u16,
    rt_mean: f32,
    rt_m2: f32,
    util_count: u16,
    util_cpu: u16,
    util_gpu: u16,
    util_mem: u16,
    uptime_seconds: u16,
    downtime_seconds: u16,
    cost: f32,
    busy_seconds: f32,
    score: f32,
}

impl HourBucket {
    fn empty() -> Self {
        Self {
            score: f32::NAN,
            ..Default::default()
        }
    }

    pub fn jobs(&self) -> u32 {
        u32::from(self.completed)
            + u32::from(self.failed)
            + u32::from(self.timed_out)
            + u32::from(self.cancelled)
    }

    /// Jobs that count for the completion rate: cancelled ones were the customer's choice.
    pub fn decided_jobs(&self) -> u32 {
        u32::from(self.completed) + u32::from(self.failed) + u32::from(self.timed_out)
    }

    pub fn failures(&self) -> u32 {
        u32::from(self.failed) + u32::from(self.timed_out)
    }

    pub fn cpu(&self) -> f64 {
        f64::from(self.util_cpu) / Q
    }
    pub fn gpu(&self) -> f64 {
        f64::from(self.util_gpu) / Q
    }
    pub fn memory(&self) -> f64 {
        f64::from(self.util_mem) / Q
    }

    /// Response-time variance (population) within the hour.
    pub fn rt_variance(&self) -> f64 {
        if self.rt_count < 2 {
            0.0
        } else {
            f64::from(self.rt_m2) / f64::from(self.rt_count)
        }
    }

    /// Seconds the provider was observed at all (up or down) in this hour.
    pub fn observed_seconds(&self) -> u32 {
        u32::from(self.uptime_seconds) + u32::from(self.downtime_seconds)
    }

    /// True when nothing was recorded in the hour.
    pub fn is_empty(&self) -> bool {
        self.jobs() == 0
            && self.rt_count == 0
            && self.util_count == 0
            && self.observed_seconds() == 0
    }

    fn add_utilization(&mut self, cpu: f64, gpu: f64, mem: f64) {
        let n = f64::from(self.util_count) + 1.0;
        let upd = |old: u16, x: f64| {
            let m = f64::from(old) / Q;
            ((m + (x.clamp(0.0, 1.0) - m) / n) * Q).round() as u16
        };
        self.util_cpu = upd(self.util_cpu, cpu);
        self.util_gpu = upd(self.util_gpu, gpu);
        self.util_mem = upd(self.util_mem, mem);
        self.util_count = self.util_count.saturating_add(1);
    }

    fn add_response_time(&mut self, ms: f64) {
        let n = f64::from(self.rt_count) + 1.0;
        let mean = f64::from(self.rt_mean);
        let delta = ms - mean;
        let new_mean = mean + delta / n;
        self.rt_m2 = (f64::from(self.rt_m2) + delta * (ms - new_mean)) as f32;
        self.rt_mean = new_mean as f32;
        self.rt_count = self.rt_count.saturating_add(1);
    }

    fn add_uptime(&mut self, up: bool, seconds: i64) {
        let s = seconds.clamp(0, HOUR) as u16;
        if up {
            self.uptime_seconds = self.uptime_seconds.saturating_add(s).min(HOUR as u16);
        } else {
            self.downtime_seconds = self.downtime_seconds.saturating_add(s).min(HOUR as u16);
        }
    }
}

/// The hourly buckets of the trend window, as a ring ending at `newest_hour`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HourWindow {
    /// Epoch hour of the newest bucket (`buckets.back()`); `i64::MIN` when empty.
    newest_hour: i64,
    buckets: VecDeque<HourBucket>,
    capacity: u32,
}

impl HourWindow {
    pub fn new(window_hours: u32) -> Self {
        Self {
            newest_hour: i64::MIN,
            buckets: VecDeque::new(),
            capacity: window_hours.max(1),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The newest hour, the capacity and the buckets, oldest first: what
    /// [`HourWindow::from_parts`] takes back.
    pub fn parts(&self) -> (i64, u32, &VecDeque<HourBucket>) {
        (self.newest_hour, self.capacity, &self.buckets)
    }

    /// The window of [`HourWindow::parts`].
    pub fn from_parts(newest_hour: i64, capacity: u32, buckets: VecDeque<HourBucket>) -> Self {
        Self {
            newest_hour,
            buckets,
            capacity,
        }
    }

    /// Epoch hour of the newest bucket, if any data arrived.
    pub fn newest_hour(&self) -> Option<i64> {
        (!self.buckets.is_empty()).then_some(self.newest_hour)
    }

    /// Epoch hour of the oldest bucket held.
    pub fn oldest_hour(&self) -> Option<i64> {
        self.newest_hour()
            .map(|h| h - self.buckets.len() as i64 + 1)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The buckets oldest first, each with its epoch hour.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (i64, &HourBucket)> + ExactSizeIterator {
        let first = self.oldest_hour().unwrap_or(0);
        self.buckets
            .iter()
            .enumerate()
            .map(move |(i, b)| (first + i as i64, b))
    }

    pub fn get(&self, hour: i64) -> Option<&HourBucket> {
        let oldest = self.oldest_hour()?;
        if hour < oldest || hour > self.newest_hour {
            return None;
        }
        self.buckets.get((hour - oldest) as usize)
    }

    /// The bucket for `hour`, advancing the window when the hour is new. `None` when the
    /// hour has already left the window.
    fn bucket_mut(&mut self, hour: i64) -> Option<&mut HourBucket> {
        if self.buckets.is_empty() {
            self.buckets.reserve_exact(self.capacity as usize);
            self.newest_hour = hour;
            self.buckets.push_back(HourBucket::empty());
        } else if hour > self.newest_hour {
            let gap = (hour - self.newest_hour) as u64;
            if gap >= u64::from(self.capacity) {
                self.buckets.clear();
                self.buckets.push_back(HourBucket::empty());
            } else {
                for _ in 0..gap {
                    self.buckets.push_back(HourBucket::empty());
                }
                while self.buckets.len() > self.capacity as usize {
                    self.buckets.pop_front();
                }
            }
            self.newest_hour = hour;
        }
        let oldest = self.newest_hour - self.buckets.len() as i64 + 1;
        if hour < oldest {
            // Inside the window but before the first bucket we ever held: grow backwards.
            if self.newest_hour - hour >= i64::from(self.capacity) {
                return None;
            }
            for _ in 0..(oldest - hour) {
                self.buckets.push_front(HourBucket::empty());
            }
        }
        let oldest = self.newest_hour - self.buckets.len() as i64 + 1;
        self.buckets.get_mut((hour - oldest) as usize)
    }
}

/// Counters over the provider's whole life (not windowed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LifetimeCounters {
    pub events_ingested: u64,
    pub completed: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub cancelled: u64,
    pub sla_met: u64,
    pub sla_missed: u64,
    pub errors: u64,
    pub rt_count: u64,
    pub rt_mean: f64,
    pub rt_m2: f64,
    pub cost: f64,
    pub first_seen: Option<UnixSeconds>,
    pub last_seen: Option<UnixSeconds>,
}

impl LifetimeCounters {
    pub fn jobs(&self) -> u64 {
        self.completed + self.failed + self.timed_out + self.cancelled
    }
    pub fn rt_std(&self) -> f64 {
        if self.rt_count < 2 {
            0.0
        } else {
            (self.rt_m2 / self.rt_count as f64).sqrt()
        }
    }
}

/// Up/down state machine fed by heartbeats (event time). A gap longer than the heartbeat
/// timeout counts as downtime from the last heartbeat plus the timeout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UptimeTracker {
    pub up: bool,
    /// Time of the newest heartbeat seen.
    pub last_heartbeat: Option<UnixSeconds>,
    /// When the current up or down period began.
    pub since: Option<UnixSeconds>,
    pub total_up_seconds: i64,
    pub total_down_seconds: i64,
    /// Up → down transitions (failures) and down → up transitions (repairs).
    pub failures: u64,
    pub repairs: u64,
    /// Total length of completed down periods, for MTTR.
    pub repaired_down_seconds: i64,
    /// Total length of up periods that ended in a failure, plus the current one, for MTBF.
    pub last_failure: Option<UnixSeconds>,
    pub last_repair: Option<UnixSeconds>,
}

impl UptimeTracker {
    /// Mean time between failures: time spent up per failure; `None` before any failure.
    pub fn mtbf_seconds(&self) -> Option<f64> {
        (self.failures > 0).then(|| self.total_up_seconds as f64 / self.failures as f64)
    }

    /// Mean time to repair: mean length of completed down periods.
    pub fn mttr_seconds(&self) -> Option<f64> {
        (self.repairs > 0).then(|| self.repaired_down_seconds as f64 / self.repairs as f64)
    }

    /// Share of observed time spent up.
    pub fn uptime_ratio(&self) -> Option<f64> {
        let total = self.total_up_seconds + self.total_down_seconds;
        (total > 0).then(|| self.total_up_seconds as f64 / total as f64)
    }

    /// Feed one heartbeat. Returns the (start, end, up) periods that were closed, so the
    /// caller can spread them over hour buckets. Heartbeats older than the newest one seen
    /// only count in no period (the state machine is ordered by time).
    fn on_heartbeat(
        &mut self,
        ts: UnixSeconds,
        up_now: bool,
        timeout: i64,
    ) -> Vec<(i64, i64, bool)> {
        let mut periods = Vec::new();
        let Some(last) = self.last_heartbeat else {
            self.last_heartbeat = Some(ts);
            self.since = Some(ts);
            self.up = up_now;
            return periods;
        };
        if ts <= last {
            return periods;
        }
        let gap = ts - last;
        if self.up && gap > timeout {
            // Silent: up until the last heartbeat plus the timeout, then down.
            let fail_at = last + timeout;
            periods.push((last, fail_at, true));
            self.total_up_seconds += timeout;
            self.fail(fail_at);
            periods.push((fail_at, ts, false));
            self.total_down_seconds += ts - fail_at;
        } else {
            periods.push((last, ts, self.up));
            if self.up {
                self.total_up_seconds += gap;
            } else {
                self.total_down_seconds += gap;
            }
        }
        if up_now && !self.up {
            self.repair(ts);
        } else if !up_now && self.up {
            self.fail(ts);
        }
        self.last_heartbeat = Some(ts);
        periods
    }

    fn fail(&mut self, at: UnixSeconds) {
        self.up = false;
        self.failures += 1;
        self.last_failure = Some(at);
        self.since = Some(at);
    }

    fn repair(&mut self, at: UnixSeconds) {
        if let Some(since) = self.since {
            self.repaired_down_seconds += at - since;
        }
        self.up = true;
        self.repairs += 1;
        self.last_repair = Some(at);
        self.since = Some(at);
    }
}

/// How a provider fails.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FailureCounters {
    /// Failed or timed-out jobs by hour of day (UTC).
    pub by_hour_of_day: [u32; 24],
    /// Up to 8 most frequent error codes with their counts.
    pub error_codes: Vec<(u32, u64)>,
    /// Consecutive failed jobs now, and the longest such run.
    pub current_streak: u32,
    pub longest_streak: u32,
    pub last_failure: Option<UnixSeconds>,
}

impl FailureCounters {
    fn record_error_code(&mut self, code: u32) {
        if let Some(e) = self.error_codes.iter_mut().find(|(c, _)| *c == code) {
            e.1 += 1;
        } else if self.error_codes.len() < 8 {
            self.error_codes.push((code, 1));
        } else if let Some(min) = self.error_codes.iter_mut().min_by_key(|(_, n)| *n) {
            // Space-saving sketch: the rarest slot is replaced and inherits its count.
            *min = (code, min.1 + 1);
        }
        self.error_codes.sort_by_key(|e| std::cmp::Reverse(e.1));
    }
}

/// A bounded set of recent event fingerprints (FIFO eviction): a ring scanned linearly,
/// which for a few hundred ids costs about what hashing would and a quarter of the memory.
/// Beside each id it keeps a 16-bit tag of it, so a lookup scans 512 bytes of tags (eight
/// cache lines, 16 at a compare) and reads an id only where its tag matches (0.4 % of the
/// ids a lookup): the ids of a provider are usually cold in cache when its batch arrives.
/// Only the ids are stored (encoded as the plain ring); the tags are rebuilt on decode.
#[derive(Clone, Default, PartialEq, Debug, Deserialize)]
#[serde(from = "VecDeque<u64>")]
pub struct RecentIds {
    order: VecDeque<u64>,
    /// [`tag`] of each id of `order`, at the same positions.
    tags: VecDeque<u16>,
}

/// The 16 bits of a fingerprint a lookup compares first.
fn tag(fp: u64) -> u16 {
    (fp >> 48) as u16
}

/// Bit `k` set where `chunk[k]` is `t` (vectorised: two or four compares a chunk).
#[inline]
fn tag_matches(chunk: &[u16; 32], t: u16) -> u32 {
    chunk
        .iter()
        .enumerate()
        .fold(0, |m, (k, x)| m | (u32::from(*x == t) << k))
}

impl From<VecDeque<u64>> for RecentIds {
    fn from(order: VecDeque<u64>) -> Self {
        let tags = order.iter().map(|fp| tag(*fp)).collect();
        Self { order, tags }
    }
}

impl Serialize for RecentIds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.order.serialize(s)
    }
}

impl RecentIds {
    pub fn contains(&self, fp: EventFingerprint) -> bool {
        let t = tag(fp.0);
        let (a, b) = self.tags.as_slices();
        let mut base = 0;
        for part in [a, b] {
            let mut chunks = part.chunks_exact(32);
            let mut at = base;
            for chunk in chunks.by_ref() {
                let chunk: &[u16; 32] = chunk.try_into().expect("32 tags");
                let mut m = tag_matches(chunk, t);
                while m != 0 {
                    if self.order[at + m.trailing_zeros() as usize] == fp.0 {
                        return true;
                    }
                    m &= m - 1;
                }
                at += 32;
            }
            for (k, x) in chunks.remainder().iter().enumerate() {
                if *x == t && self.order[at + k] == fp.0 {
                    return true;
                }
            }
            base += part.len();
        }
        false
    }

    /// Remembers `fp`, which the caller found absent, forgetting the oldest beyond `cap`.
    fn insert_absent(&mut self, fp: EventFingerprint, cap: usize) {
        debug_assert!(!self.contains(fp));
        if cap == 0 {
            return;
        }
        if self.order.capacity() < cap {
            self.order.reserve_exact(cap - self.order.len());
            self.tags.reserve_exact(cap - self.tags.len());
        }
        while self.order.len() >= cap {
            self.order.pop_front();
            self.tags.pop_front();
        }
        self.order.push_back(fp.0);
        self.tags.push_back(tag(fp.0));
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// The fingerprints remembered, oldest first.
    pub fn fingerprints(&self) -> &VecDeque<u64> {
        &self.order
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Everything the analytics know about one provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderState {
    pub id: ProviderId,
    pub spec: Option<ProviderSpec>,
    /// Event time of the spec in force (a later upsert wins, an older one is ignored).
    pub spec_time: Option<UnixSeconds>,
    pub window: HourWindow,
    pub lifetime: LifetimeCounters,
    pub uptime: UptimeTracker,
    pub failures: FailureCounters,
    pub recent_ids: RecentIds,
}

impl ProviderState {
    pub fn new(id: ProviderId, params: &StateParams) -> Self {
        Self {
            id,
            spec: None,
            spec_time: None,
            window: HourWindow::new(params.window_hours),
            lifetime: LifetimeCounters::default(),
            uptime: UptimeTracker::default(),
            failures: FailureCounters::default(),
            recent_ids: RecentIds::default(),
        }
    }

    /// Newest event time seen for this provider.
    pub fn last_seen(&self) -> Option<UnixSeconds> {
        self.lifetime.last_seen
    }

    /// Check an event against the window, the skew bound (relative to `reference`, the
    /// newest event time the caller knows of, e.g. the shard's) and the recent-id set,
    /// without changing anything.
    pub fn check(
        &self,
        ev: &TelemetryEvent,
        reference: UnixSeconds,
        p: &StateParams,
    ) -> Result<EventFingerprint, EventError> {
        let reference = reference.max(self.lifetime.last_seen.unwrap_or(i64::MIN));
        if reference != i64::MIN {
            if ev.timestamp > reference.saturating_add(p.max_future_skew_seconds)
                && self.lifetime.last_seen.is_some()
            {
                return Err(EventError::TooFarInFuture {
                    ts: ev.timestamp,
                    now: reference,
                    max_skew_seconds: p.max_future_skew_seconds,
                });
            }
            let newest = hour_of(reference);
            if hour_of(ev.timestamp) <= newest - i64::from(p.window_hours) {
                return Err(EventError::TooOld {
                    ts: ev.timestamp,
                    window_hours: p.window_hours,
                    newest: newest * HOUR,
                });
            }
        }
        let fp = EventFingerprint::of(&ev.event_id);
        if self.recent_ids.contains(fp) {
            return Err(EventError::Duplicate);
        }
        Ok(fp)
    }

    /// Apply one event in O(1) (amortised; a heartbeat after a long silence touches one
    /// bucket per hour of the gap, at most the window).
    pub fn apply(
        &mut self,
        ev: &TelemetryEvent,
        reference: UnixSeconds,
        p: &StateParams,
    ) -> Result<(), EventError> {
        let fp = self.check(ev, reference, p)?;
        self.apply_checked(ev, fp, p);
        Ok(())
    }

    /// Re-apply an event from the write-ahead log: it passed the time checks when it was
    /// accepted (against a reference recovery cannot rebuild), so only the duplicate check
    /// runs. Returns whether it was applied.
    pub fn replay(&mut self, ev: &TelemetryEvent, p: &StateParams) -> bool {
        let fp = EventFingerprint::of(&ev.event_id);
        if self.recent_ids.contains(fp) {
            return false;
        }
        self.apply_checked(ev, fp, p);
        true
    }

    /// Applies `ev`, whose fingerprint `fp` is not among the recent ids.
    fn apply_checked(&mut self, ev: &TelemetryEvent, fp: EventFingerprint, p: &StateParams) {
        let ts = ev.timestamp;
        let hour = hour_of(ts);
        match &ev.payload {
            EventPayload::Spec(spec) => {
                if self.spec_time.is_none_or(|t| ts >= t) {
                    self.spec = Some(ProviderSpec::clone(spec));
                    self.spec_time = Some(ts);
                }
            }
            EventPayload::JobOutcome(job) => {
                let lt = &mut self.lifetime;
                let is_failure = matches!(job.status, JobStatus::Failed | JobStatus::TimedOut);
                if let Some(b) = self.window.bucket_mut(hour) {
                    match job.status {
                        JobStatus::Completed => b.completed = b.completed.saturating_add(1),
                        JobStatus::Failed => b.failed = b.failed.saturating_add(1),
                        JobStatus::TimedOut => b.timed_out = b.timed_out.saturating_add(1),
                        JobStatus::Cancelled => b.cancelled = b.cancelled.saturating_add(1),
                    }
                    if job.status != JobStatus::Cancelled {
                        if job.sla_met {
                            b.sla_met = b.sla_met.saturating_add(1);
                        } else {
                            b.sla_missed = b.sla_missed.saturating_add(1);
                        }
                    }
                    if job.error_code != 0 {
                        b.errors = b.errors.saturating_add(1);
                    }
                    b.cost += job.cost as f32;
                    b.busy_seconds += job.duration_seconds as f32;
                }
                match job.status {
                    JobStatus::Completed => lt.completed += 1,
                    JobStatus::Failed => lt.failed += 1,
                    JobStatus::TimedOut => lt.timed_out += 1,
                    JobStatus::Cancelled => lt.cancelled += 1,
                }
                if job.status != JobStatus::Cancelled {
                    if job.sla_met {
                        lt.sla_met += 1
                    } else {
                        lt.sla_missed += 1
                    }
                }
                if job.error_code != 0 {
                    lt.errors += 1;
                    self.failures.record_error_code(job.error_code);
                }
                lt.cost += job.cost;
                let f = &mut self.failures;
                if is_failure {
                    f.by_hour_of_day[(hour.rem_euclid(24)) as usize] += 1;
                    f.current_streak += 1;
                    f.longest_streak = f.longest_streak.max(f.current_streak);
                    f.last_failure = Some(f.last_failure.map_or(ts, |t| t.max(ts)));
                } else if job.status == JobStatus::Completed {
                    f.current_streak = 0;
                }
            }
            EventPayload::Heartbeat(hb) => {
                let up = hb.status == HeartbeatStatus::Online;
                let periods = self
                    .uptime
                    .on_heartbeat(ts, up, p.heartbeat_timeout_seconds);
                for (start, end, was_up) in periods {
                    self.spread_period(start, end, was_up);
                }
            }
            EventPayload::ResponseTime(rt) => {
                if let Some(b) = self.window.bucket_mut(hour) {
                    b.add_response_time(rt.response_time_ms);
                    if rt.is_error {
                        b.errors = b.errors.saturating_add(1);
                    }
                }
                let lt = &mut self.lifetime;
                lt.rt_count += 1;
                let delta = rt.response_time_ms - lt.rt_mean;
                lt.rt_mean += delta / lt.rt_count as f64;
                lt.rt_m2 += delta * (rt.response_time_ms - lt.rt_mean);
                if rt.is_error {
                    lt.errors += 1;
                }
            }
            EventPayload::Utilization(u) => {
                if let Some(b) = self.window.bucket_mut(hour) {
                    b.add_utilization(u.cpu, u.gpu, u.memory);
                }
            }
        }
        let lt = &mut self.lifetime;
        lt.events_ingested += 1;
        lt.first_seen = Some(lt.first_seen.map_or(ts, |t| t.min(ts)));
        lt.last_seen = Some(lt.last_seen.map_or(ts, |t| t.max(ts)));
        self.recent_ids.insert_absent(fp, p.recent_ids);
    }

    /// Add an up or down period to the hour buckets it covers (those still in the window).
    fn spread_period(&mut self, start: i64, end: i64, up: bool) {
        let mut t = start.max(end - i64::from(self.window.capacity()) * HOUR);
        while t < end {
            let hour_end = (hour_of(t) + 1) * HOUR;
            let until = end.min(hour_end);
            if let Some(b) = self.window.bucket_mut(hour_of(t)) {
                b.add_uptime(up, until - t);
            }
            t = until;
        }
    }

    /// Record the composite score of the hour `hour` (called when an hour closes or on a
    /// coordinator cycle; a later call for the same hour overwrites).
    pub fn record_score(&mut self, hour: i64, score: f64) {
        if let Some(b) = self.window.bucket_mut(hour) {
            b.score = score as f32;
        }
    }

    /// Approximate heap plus inline bytes this state costs.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.window.buckets.capacity() * std::mem::size_of::<HourBucket>()
            + self.spec.as_ref().map_or(0, |s| {
                s.region.capacity()
                    + s.gpus.capacity() * std::mem::size_of::<crate::model::GpuSpec>()
                    + s.gpus.iter().map(|g| g.model.capacity()).sum::<usize>()
            })
            + self.failures.error_codes.capacity() * 16
            + self.recent_ids.order.capacity() * 8
            + self.recent_ids.tags.capacity() * 2
            + self.id.as_str().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Heartbeat, JobOutcome, ResponseTimeSample, UtilizationSample};

    fn ev(id: &str, ts: i64, payload: EventPayload) -> TelemetryEvent {
        TelemetryEvent {
            event_id: id.into(),
            provider_id: ProviderId::new("p"),
            timestamp: ts,
            payload,
        }
    }

    #[test]
    fn recent_ids_answer_as_a_plain_scan_across_wraps_and_tag_collisions() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let cap = 256;
        let mut ids = RecentIds::default();
        let mut reference: VecDeque<u64> = VecDeque::new();
        // ids sharing a tag (same top 16 bits), and random ones
        let next = |rng: &mut rand::rngs::SmallRng| {
            if rng.random_bool(0.5) {
                0xabcd_0000_0000_0000 | rng.random_range(0..1u64 << 20)
            } else {
                rng.random()
            }
        };
        for step in 0..3_000 {
            let fp = EventFingerprint(next(&mut rng));
            let plain = reference.contains(&fp.0);
            assert_eq!(ids.contains(fp), plain, "step {step}");
            if !plain {
                ids.insert_absent(fp, cap);
                reference.push_back(fp.0);
                if reference.len() > cap {
                    reference.pop_front();
                }
            }
            // an id seen earlier, still remembered or already forgotten
            let back = rng.random_range(0..reference.len());
            let old = EventFingerprint(reference[back]);
            assert!(ids.contains(old), "step {step}: a remembered id not found");
        }
        assert_eq!(ids.len(), cap);
        // only the ids are encoded; decoding rebuilds the tags
        let bytes = bincode::serde::encode_to_vec(&ids, bincode::config::standard()).unwrap();
        let plain = bincode::serde::encode_to_vec(&reference, bincode::config::standard()).unwrap();
        assert_eq!(bytes, plain);
        let (back, _): (RecentIds, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, ids);
    }

    fn hb(id: &str, ts: i64, up: bool) -> TelemetryEvent {
        let status = if up {
            HeartbeatStatus::Online
        } else {
            HeartbeatStatus::Offline
        };
        ev(id, ts, EventPayload::Heartbeat(Heartbeat { status }))
    }

    fn job(id: &str, ts: i64, status: JobStatus) -> TelemetryEvent {
        ev(
            id,
            ts,
            EventPayload::JobOutcome(JobOutcome {
                status,
                duration_seconds: 60.0,
                sla_met: status == JobStatus::Completed,
                error_code: 0,
                cost: 1.0,
            }),
        )
    }

    const T0: i64 = 1_700_000_000 - 1_700_000_000 % 3600;

    /// A parked provider's compact encoding (`analytics::parked`) gives back the state bit
    /// for bit (as its plain bincode shows: NaN scores included), its head gives the state
    /// without its recent ids, and it is smaller than the plain encoding.
    #[test]
    fn parked_encoding_is_exact_and_its_head_drops_only_the_ids() {
        let p = StateParams::default();
        let mut s = ProviderState::new("p".into(), &p);
        let spec = ProviderSpec {
            region: "eu".into(),
            cpu_cores: 4,
            ..Default::default()
        };
        s.apply(&ev("spec", T0, EventPayload::Spec(Box::new(spec))), T0, &p)
            .unwrap();
        for i in 0..300 {
            let t = T0 + i * 97;
            let status = if i % 7 == 0 {
                JobStatus::Failed
            } else {
                JobStatus::Completed
            };
            s.apply(&job(&format!("j{i}"), t, status), t, &p).unwrap();
            s.apply(&hb(&format!("h{i}"), t, true), t, &p).unwrap();
        }
        assert!(s.recent_ids.order.len() > 100 && s.window.iter().count() > 5);
        assert!(
            s.window.iter().any(|(_, b)| b.score.is_nan()),
            "an hour without a score"
        );
        let bits = |s: &ProviderState| {
            bincode::serde::encode_to_vec(s, bincode::config::standard()).unwrap()
        };
        let alerted = vec!["alert".to_string(), "other".to_string()];
        let packed = crate::analytics::parked::encode(&s, &alerted);
        let (back, keys) = crate::analytics::parked::decode(&packed).unwrap();
        assert!(bits(&back) == bits(&s), "the state comes back exactly");
        assert_eq!(back.recent_ids.tags, s.recent_ids.tags, "tags rebuilt");
        assert_eq!(keys, alerted);
        assert!(packed.len() < bits(&s).len(), "{} bytes", packed.len());

        let read = crate::analytics::parked::decode_head(&packed).unwrap();
        assert!(read.recent_ids.order.is_empty());
        let mut expected = s.clone();
        expected.recent_ids = RecentIds::default();
        assert!(bits(&read) == bits(&expected));

        // damage is an error, not a panic or a wrong state
        for cut in [1, packed.len() / 2, packed.len() - 1] {
            assert!(crate::analytics::parked::decode(&packed[..cut]).is_err());
        }
        let mut longer = packed.clone();
        longer.push(0);
        assert!(crate::analytics::parked::decode(&longer).is_err());
    }

    #[test]
    fn mtbf_and_mttr_from_a_hand_written_heartbeat_sequence() {
        let p = StateParams {
            heartbeat_timeout_seconds: 120,
            ..Default::default()
        };
        let mut s = ProviderState::new("p".into(), &p);
        // heartbeats every 60 s: up 0..600, offline 600..900, up 900..1500 then silent until
        // 2000 (timeout 120 → down from 1620), up again 2000..2060.
        let mut seq: Vec<(i64, bool)> = (0..10).map(|i| (i * 60, true)).collect();
        seq.push((600, false));
        seq.extend((11..15).map(|i| (i * 60, false)));
        seq.extend((15..=25).map(|i| (i * 60, true)));
        seq.extend([(2000, true), (2060, true)]);
        for (i, (t, up)) in seq.iter().enumerate() {
            s.apply(&hb(&format!("h{i}"), T0 + t, *up), T0 + t, &p)
                .unwrap();
        }
        // up periods: 0..600 (600), 900..1620 (720), 2000..2060 (60) = 1380
        // down periods: 600..900 (300), 1620..2000 (380) = 680
        assert_eq!(s.uptime.total_up_seconds, 1380);
        assert_eq!(s.uptime.total_down_seconds, 680);
        assert_eq!(s.uptime.failures, 2);
        assert_eq!(s.uptime.repairs, 2);
        assert_eq!(s.uptime.mtbf_seconds(), Some(690.0));
        assert_eq!(s.uptime.mttr_seconds(), Some(340.0));
        let b = s.window.get(hour_of(T0)).unwrap();
        assert_eq!(b.uptime_seconds, 1380);
        assert_eq!(b.downtime_seconds, 680);
    }

    #[test]
    fn out_of_order_events_land_in_their_hour() {
        let p = StateParams::default();
        let mut s = ProviderState::new("p".into(), &p);
        s.apply(
            &job("a", T0 + 5 * HOUR, JobStatus::Completed),
            T0 + 5 * HOUR,
            &p,
        )
        .unwrap();
        s.apply(
            &job("b", T0 + HOUR + 10, JobStatus::Failed),
            T0 + 5 * HOUR,
            &p,
        )
        .unwrap();
        s.apply(
            &job("c", T0 + 3 * HOUR, JobStatus::Completed),
            T0 + 5 * HOUR,
            &p,
        )
        .unwrap();
        assert_eq!(s.window.get(hour_of(T0) + 1).unwrap().failed, 1);
        assert_eq!(s.window.get(hour_of(T0) + 3).unwrap().completed, 1);
        assert_eq!(s.window.get(hour_of(T0) + 5).unwrap().completed, 1);
        assert_eq!(s.window.len(), 5);
        assert_eq!(s.lifetime.jobs(), 3);
    }

    #[test]
    fn too_old_too_new_and_duplicate_events_are_rejected_and_change_nothing() {
        let p = StateParams::default();
        let mut s = ProviderState::new("p".into(), &p);
        let now = T0 + 200 * HOUR;
        s.apply(&job("a", now, JobStatus::Completed), now, &p)
            .unwrap();
        let before = s.clone();
        assert!(matches!(
            s.apply(&job("b", now - 168 * HOUR, JobStatus::Completed), now, &p),
            Err(EventError::TooOld { .. })
        ));
        assert!(matches!(
            s.apply(&job("c", now + 3600, JobStatus::Completed), now, &p),
            Err(EventError::TooFarInFuture { .. })
        ));
        assert_eq!(
            s.apply(&job("a", now, JobStatus::Completed), now, &p),
            Err(EventError::Duplicate)
        );
        assert_eq!(format!("{s:?}"), format!("{before:?}"));
        s.apply(&job("d", now - 167 * HOUR, JobStatus::Completed), now, &p)
            .unwrap();
    }

    #[test]
    fn window_slides_and_keeps_capacity() {
        let p = StateParams {
            window_hours: 24,
            ..Default::default()
        };
        let mut s = ProviderState::new("p".into(), &p);
        for h in 0..100 {
            let t = T0 + h * HOUR;
            s.apply(&job(&format!("j{h}"), t, JobStatus::Completed), t, &p)
                .unwrap();
        }
        assert_eq!(s.window.len(), 24);
        assert_eq!(s.window.oldest_hour(), Some(hour_of(T0) + 76));
        assert_eq!(s.lifetime.completed, 100);
    }

    #[test]
    fn welford_and_utilization_means() {
        let p = StateParams::default();
        let mut s = ProviderState::new("p".into(), &p);
        for (i, ms) in [10.0, 20.0, 30.0, 40.0].iter().enumerate() {
            let e = ev(
                &format!("r{i}"),
                T0 + i as i64,
                EventPayload::ResponseTime(ResponseTimeSample {
                    response_time_ms: *ms,
                    is_error: false,
                }),
            );
            s.apply(&e, T0, &p).unwrap();
        }
        let b = s.window.get(hour_of(T0)).unwrap();
        assert!((f64::from(b.rt_mean) - 25.0).abs() < 1e-4);
        assert!((b.rt_variance() - 125.0).abs() < 1e-3);
        assert!((s.lifetime.rt_std() - 125f64.sqrt()).abs() < 1e-9);
        for (i, c) in [0.2, 0.4].iter().enumerate() {
            let e = ev(
                &format!("u{i}"),
                T0 + 5,
                EventPayload::Utilization(UtilizationSample {
                    cpu: *c,
                    gpu: 1.0,
                    memory: 0.0,
                }),
            );
            s.apply(&e, T0, &p).unwrap();
        }
        let b = s.window.get(hour_of(T0)).unwrap();
        assert!((b.cpu() - 0.3).abs() < 1e-4);
        assert!((b.gpu() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn a_full_week_costs_a_few_kib() {
        let p = StateParams::default();
        let mut s = ProviderState::new("provider-000001".into(), &p);
        for h in 0..168 {
            let t = T0 + h * HOUR;
            s.apply(&job(&format!("j{h}"), t, JobStatus::Completed), t, &p)
                .unwrap();
        }
        let bytes = s.approx_bytes();
        let encoded = bincode::serde::encode_to_vec(&s, bincode::config::standard())
            .unwrap()
            .len();
        println!("full week: {bytes} bytes in memory, {encoded} bytes as bincode");
        assert!(
            std::mem::size_of::<HourBucket>() <= 48,
            "{}",
            std::mem::size_of::<HourBucket>()
        );
        assert!(bytes < 14 * 1024, "{bytes}");
    }
}
