//! Job matching: filter a shard's candidate index by a job's requirements, rank the
//! compatible providers with a job-aware score, and explain every answer.
//!
//! One linear pass over the candidates evaluates every constraint (a bitmask per
//! candidate, built a column at a time over a [`MatchIndex`]), counts eliminations, and
//! feeds a bounded heap; a node scans all its shards' indexes in that one pass
//! ([`shortlist`] over [`Segment`]s) and reasons and warnings are built only for the final
//! suggestions. When nothing fits, the answer names
//! the constraints that eliminated providers and, where relaxing one constraint would
//! help, suggests providers marked `relaxed` — never a silent empty list.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use crate::analytics::network::ProviderSummary;
use crate::analytics::ranking::{
    RankingContext, Scored, Tier, TopK, cost_score, criterion_scores, price_per_unit_of,
};
use crate::analytics::score::{clamp_score, with_match_quality};
use crate::config::AnalyticsConfig;
use crate::model::{EventFingerprint, ProviderId, fnv1a64};

/// A shard's job-matching index holds the same compact record it sends the coordinator.
pub type Candidate = ProviderSummary;

/// Weights of the job-aware score: performance, reliability, price, fit.
const JOB_WEIGHTS: [f64; 4] = [0.35, 0.25, 0.25, 0.15];

/// Provisioning at or above this multiple of the request counts as over-provisioned.
const OVERPROVISIONED_RATIO: f64 = 4.0;

/// What a job needs. Zero / `None` / empty means "no requirement".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobRequirements {
    pub cpu_cores: u32,
    pub memory_gb: f64,
    /// A GPU model (case-insensitive); implies at least one GPU.
    pub gpu_model: Option<String>,
    pub gpu_count: u32,
    /// VRAM per GPU.
    pub min_vram_gb: f64,
    /// Any of these regions.
    pub regions: Vec<String>,
    pub expected_duration_hours: f64,
    /// For the whole expected duration.
    pub max_budget: Option<f64>,
    /// Minimum uptime ratio (0.99 = 99 %).
    pub min_uptime: Option<f64>,
    pub max_response_time_ms: Option<f64>,
    pub min_tier: Option<Tier>,
    pub max_results: usize,
}

impl Default for JobRequirements {
    fn default() -> Self {
        Self {
            cpu_cores: 0,
            memory_gb: 0.0,
            gpu_model: None,
            gpu_count: 0,
            min_vram_gb: 0.0,
            regions: Vec::new(),
            expected_duration_hours: 1.0,
            max_budget: None,
            min_uptime: None,
            max_response_time_ms: None,
            min_tier: None,
            max_results: 5,
        }
    }
}

impl JobRequirements {
    /// GPUs the job needs (a named model alone means one).
    pub fn gpus_needed(&self) -> u32 {
        if self.gpu_model.is_some() {
            self.gpu_count.max(1)
        } else {
            self.gpu_count
        }
    }

    fn duration(&self) -> f64 {
        if self.expected_duration_hours.is_finite() {
            self.expected_duration_hours.max(0.0)
        } else {
            0.0
        }
    }
}

/// One requirement a provider can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Constraint {
    Online,
    Region,
    CpuCores,
    Memory,
    GpuModel,
    GpuCount,
    GpuVram,
    Budget,
    Uptime,
    ResponseTime,
    Tier,
}

impl Constraint {
    pub const ALL: [Constraint; 11] = [
        Constraint::Online,
        Constraint::Region,
        Constraint::CpuCores,
        Constraint::Memory,
        Constraint::GpuModel,
        Constraint::GpuCount,
        Constraint::GpuVram,
        Constraint::Budget,
        Constraint::Uptime,
        Constraint::ResponseTime,
        Constraint::Tier,
    ];

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    pub fn name(self) -> &'static str {
        match self {
            Constraint::Online => "online",
            Constraint::Region => "region",
            Constraint::CpuCores => "cpu cores",
            Constraint::Memory => "memory",
            Constraint::GpuModel => "gpu model",
            Constraint::GpuCount => "gpu count",
            Constraint::GpuVram => "gpu vram",
            Constraint::Budget => "budget",
            Constraint::Uptime => "minimum uptime",
            Constraint::ResponseTime => "maximum response time",
            Constraint::Tier => "minimum tier",
        }
    }

    /// An offline provider cannot take a job now, so "online" is never relaxed.
    fn relaxable(self) -> bool {
        self != Constraint::Online
    }
}

/// `x <= max`, false for NaN (a NaN price or response time fails its constraint).
fn at_most(x: f64, max: f64) -> bool {
    x <= max
}

/// The smallest `f32` that is at least `m` as an `f64` (NaN for NaN): for every `f32`
/// `x`, `x < f32_at_least(m)` exactly when `f64::from(x) < m`.
fn f32_at_least(m: f64) -> f32 {
    let t = m as f32;
    if f64::from(t) < m { t.next_up() } else { t }
}

/// The largest `f32` that is at most `m` as an `f64` (NaN for NaN): for every `f32` `x`,
/// `x <= f32_at_most(m)` exactly when `f64::from(x) <= m`.
fn f32_at_most(m: f64) -> f32 {
    let t = m as f32;
    if f64::from(t) > m { t.next_down() } else { t }
}

/// The constraints `c` fails, as a bitmask of [`Constraint::bit`].
fn failures(c: &Candidate, req: &JobRequirements) -> u16 {
    let mut m = 0;
    let mut fail = |k: Constraint, failed: bool| {
        if failed {
            m |= k.bit();
        }
    };
    fail(Constraint::Online, !c.online);
    fail(
        Constraint::Region,
        !req.regions.is_empty() && !req.regions.contains(&c.region),
    );
    fail(Constraint::CpuCores, c.cpu_cores < req.cpu_cores);
    fail(Constraint::Memory, f64::from(c.memory_gb) < req.memory_gb);
    let gpus = req.gpus_needed();
    if gpus > 0 {
        let model_ok = req.gpu_model.as_ref().is_none_or(|want| {
            c.gpu_model
                .as_ref()
                .is_some_and(|m| m.eq_ignore_ascii_case(want))
        });
        fail(Constraint::GpuModel, !model_ok);
        fail(Constraint::GpuCount, u32::from(c.gpu_count) < gpus);
        fail(Constraint::GpuVram, f64::from(c.vram_gb) < req.min_vram_gb);
    }
    if let Some(budget) = req.max_budget {
        fail(Constraint::Budget, !at_most(estimated_cost(c, req), budget));
    }
    if let Some(u) = req.min_uptime {
        fail(Constraint::Uptime, f64::from(c.uptime_ratio) < u);
    }
    if let Some(rt) = req.max_response_time_ms {
        fail(
            Constraint::ResponseTime,
            !at_most(f64::from(c.response_time_ms), rt),
        );
    }
    if let Some(t) = req.min_tier {
        fail(Constraint::Tier, c.tier < t);
    }
    m
}

/// Price per hour × expected duration.
pub fn estimated_cost(c: &Candidate, req: &JobRequirements) -> f64 {
    cost_at(c.price_per_hour, req)
}

/// [`estimated_cost`] from the price per hour.
fn cost_at(price_per_hour: f32, req: &JobRequirements) -> f64 {
    f64::from(price_per_hour).max(0.0) * req.duration()
}

/// How many times the job's dominant request the provider offers: GPUs for a GPU job,
/// else CPU cores, else memory; a GPU machine for a CPU-only job counts as
/// [`OVERPROVISIONED_RATIO`] (its GPUs would idle).
fn provisioning_ratio(c: &Candidate, req: &JobRequirements) -> f64 {
    provisioning_ratio_of(c.gpu_count, c.cpu_cores, c.memory_gb, req)
}

/// [`provisioning_ratio`] from the offer's GPUs, cores and memory.
fn provisioning_ratio_of(
    gpu_count: u16,
    cpu_cores: u32,
    memory_gb: f32,
    req: &JobRequirements,
) -> f64 {
    let gpus = req.gpus_needed();
    if gpus > 0 {
        return f64::from(gpu_count) / f64::from(gpus);
    }
    let base = if req.cpu_cores > 0 {
        f64::from(cpu_cores) / f64::from(req.cpu_cores)
    } else if req.memory_gb > 0.0 {
        f64::from(memory_gb) / req.memory_gb
    } else {
        1.0
    };
    if gpu_count > 0 {
        base.max(OVERPROVISIONED_RATIO)
    } else {
        base
    }
}

/// Fit 0–100: 100 up to twice the request, then `200 / ratio` (4× → 50).
fn fit_score(ratio: f64) -> f64 {
    if ratio.is_finite() && ratio > 2.0 {
        clamp_score(200.0 / ratio)
    } else {
        100.0
    }
}

/// The job-aware score 0–100: 0.35 performance + 0.25 reliability + 0.25 price + 0.15
/// fit. Price is `100·(1 − cost/budget)` with a budget, else the ranking's cost criterion
/// (price per capability unit against the network median).
pub fn job_score(c: &Candidate, req: &JobRequirements, ctx: &RankingContext) -> f64 {
    let price = match req.max_budget {
        Some(b) if b > 0.0 => clamp_score(100.0 * (1.0 - estimated_cost(c, req) / b)),
        Some(_) => 0.0,
        None => criterion_scores(c, ctx).cost,
    };
    combine(
        clamp_score(f64::from(c.performance_score)),
        clamp_score(f64::from(c.reliability_score)),
        price,
        fit_score(provisioning_ratio(c, req)),
    )
}

/// The weighted sum of the job score's four parts (each 0–100). Rounding is monotone, so
/// raising a part never lowers the result: with the price part at its maximum of 100 this
/// is an exact upper bound of the score.
fn combine(performance: f64, reliability: f64, price: f64, fit: f64) -> f64 {
    let parts = [performance, reliability, price, fit];
    clamp_score(parts.iter().zip(JOB_WEIGHTS).map(|(s, w)| s * w).sum())
}

/// How the price part of the job score is computed for a request.
#[derive(Clone, Copy)]
enum PricePart {
    /// `100·(1 − cost/budget)` for a positive budget.
    Budget(f64),
    /// A budget that is not positive (or NaN): the part is 0.
    Zero,
    /// No budget: the ranking's cost criterion against this (usable) network median
    /// price per unit, as [`criterion_scores`] computes it.
    Relative(f64),
}

/// The fields the scan reads of a candidate, as one row ([`Hot`]) and as the index's
/// columns ([`Columns`]): its region and main GPU model as ids into its [`MatchIndex`]'s
/// tables, and the numbers the constraints and the job score use.
macro_rules! hot_fields {
    ($($field:ident: $ty:ty),* $(,)?) => {
        /// One candidate's fields the scan reads, as the index takes them in.
        #[derive(Clone, Copy, Debug, PartialEq)]
        struct Hot {
            $($field: $ty),*
        }

        /// The scan's fields of every candidate, a column each (49 bytes a candidate against
        /// the summary's 152: `hot_rows_are_a_third_of_a_summary`). Each constraint is one
        /// tight loop over one column that the compiler vectorises ([`Matcher::masks`]), and
        /// no pointer is followed.
        #[derive(Clone, Debug, Default)]
        struct Columns {
            $($field: Vec<$ty>),*
        }

        impl Columns {
            fn push(&mut self, h: Hot) {
                $(self.$field.push(h.$field);)*
            }
        }
    };
}

hot_fields! {
    region: u32,
    model: u32,
    cpu_cores: u32,
    memory_gb: f32,
    vram_gb: f32,
    price_per_hour: f32,
    uptime_ratio: f32,
    response_time_ms: f32,
    performance_score: f32,
    reliability_score: f32,
    data_points: u32,
    gpu_count: u16,
    tier: Tier,
    online: bool,
    // neither declining nor in an anomaly now (may explore)
    steady: bool,
}

/// The model id of a candidate without a GPU.
const NO_MODEL: u32 = u32::MAX;
/// The model id a request gets when no candidate of the index has its model.
const ABSENT_MODEL: u32 = u32::MAX - 1;

/// The regions and GPU models of a list of candidates interned once (a shard builds it with
/// its candidate index), so the scan compares small ids held beside each other instead of
/// following every candidate's strings: a request's regions and model are looked up in the
/// few distinct names once per call. Exact: the ids stand for the very strings.
#[derive(Clone, Debug, Default)]
pub struct MatchIndex {
    regions: Vec<String>,
    /// [`fnv1a64`] of each region, so a request resolves its regions by comparing numbers.
    region_hashes: Vec<u64>,
    /// ASCII-lowercased (models match case-insensitively).
    models: Vec<Box<[u8]>>,
    /// [`fnv1a64`] of each (lowercased) model.
    model_hashes: Vec<u64>,
    cols: Columns,
}

impl MatchIndex {
    pub fn new(candidates: &[Candidate]) -> Self {
        let mut index = MatchIndex::default();
        let mut regions: std::collections::HashMap<&str, u32> = Default::default();
        let mut models: std::collections::HashMap<Box<[u8]>, u32> = Default::default();
        for c in candidates {
            let next = index.regions.len() as u32;
            let region = *regions.entry(c.region.as_str()).or_insert_with(|| {
                index.regions.push(c.region.clone());
                index.region_hashes.push(fnv1a64(c.region.as_bytes()));
                next
            });
            let model = match &c.gpu_model {
                None => NO_MODEL,
                Some(m) => {
                    let lower = m.as_bytes().to_ascii_lowercase().into_boxed_slice();
                    let next = index.models.len() as u32;
                    *models.entry(lower.clone()).or_insert_with(|| {
                        index.model_hashes.push(fnv1a64(&lower));
                        index.models.push(lower);
                        next
                    })
                }
            };
            index.cols.push(Hot {
                region,
                model,
                cpu_cores: c.cpu_cores,
                memory_gb: c.memory_gb,
                vram_gb: c.vram_gb,
                price_per_hour: c.price_per_hour,
                uptime_ratio: c.uptime_ratio,
                response_time_ms: c.response_time_ms,
                performance_score: c.performance_score,
                reliability_score: c.reliability_score,
                data_points: c.data_points,
                gpu_count: c.gpu_count,
                tier: c.tier,
                online: c.online,
                steady: !c.anomaly && !c.declining,
            });
        }
        index
    }

    pub fn len(&self) -> usize {
        self.cols.online.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cols.online.is_empty()
    }
}

/// The request unpacked once for the linear pass: [`failures`] and [`job_score`] with the
/// strings resolved against the candidates' [`MatchIndex`] and the options resolved. Both
/// give exactly the same answers as those functions (debug builds assert it for every
/// candidate). Built once a call ([`Matcher::new`]) and pointed at each segment's index in
/// turn ([`Matcher::use_index`]: a few number comparisons into a buffer kept for the call).
struct Matcher<'r> {
    req: &'r JobRequirements,
    gpus: u32,
    /// [`fnv1a64`] of each requested region.
    region_hashes: Vec<u64>,
    /// The requested model, ASCII-lowercased, and its [`fnv1a64`].
    model: Option<(Box<[u8]>, u64)>,
    /// By region id of the current index: 1 if the request does not name the region, else
    /// 0 (a table lookup, where a branch on random regions would mispredict half the time).
    region_fails: Vec<u16>,
    /// Id of the requested model in the current index ([`ABSENT_MODEL`] if none has it).
    model_id: Option<u32>,
    price: PricePart,
}

impl<'r> Matcher<'r> {
    fn new(req: &'r JobRequirements, ctx: &RankingContext) -> Self {
        let price = match req.max_budget {
            Some(b) if b > 0.0 => PricePart::Budget(b),
            Some(_) => PricePart::Zero,
            None => PricePart::Relative(ctx.unit_price()),
        };
        let model = req.gpu_model.as_ref().map(|m| {
            let lower = m.as_bytes().to_ascii_lowercase().into_boxed_slice();
            let hash = fnv1a64(&lower);
            (lower, hash)
        });
        Self {
            req,
            gpus: req.gpus_needed(),
            region_hashes: req.regions.iter().map(|r| fnv1a64(r.as_bytes())).collect(),
            // until `use_index`: no region is known and the model is absent (all fail)
            region_fails: Vec::new(),
            model_id: model.as_ref().map(|_| ABSENT_MODEL),
            model,
            price,
        }
    }

    /// Resolves the request's regions and model against `index`'s names (compared as
    /// hashes first, as strings only when the hashes agree).
    fn use_index(&mut self, index: &MatchIndex) {
        let req = self.req;
        self.region_fails.clear();
        self.region_fails.extend(
            index
                .regions
                .iter()
                .zip(&index.region_hashes)
                .map(|(r, h)| {
                    let named = self
                        .region_hashes
                        .iter()
                        .zip(&req.regions)
                        .any(|(rh, want)| rh == h && want == r);
                    u16::from(!named)
                }),
        );
        self.model_id = self.model.as_ref().map(|(lower, hash)| {
            index
                .models
                .iter()
                .zip(&index.model_hashes)
                .position(|(x, h)| h == hash && **x == **lower)
                .map_or(ABSENT_MODEL, |i| i as u32)
        });
    }

    /// The [`failures`] bitmask of every candidate of `cols`, into `masks`: a pass over
    /// one column per constraint the request sets ([`vectorised`]: eight lanes a step with
    /// AVX2).
    fn masks(&self, cols: &Columns, masks: &mut Vec<u16>) {
        vectorised(
            #[inline(always)]
            || self.masks_portable(cols, masks),
        );
    }

    /// The body of [`Matcher::masks`].
    #[inline(always)]
    fn masks_portable(&self, cols: &Columns, masks: &mut Vec<u16>) {
        let req = self.req;
        masks.clear();
        masks.extend(
            cols.online
                .iter()
                .map(|o| u16::from(!*o) << Constraint::Online as u16),
        );
        let cores = req.cpu_cores;
        mark(masks, &cols.cpu_cores, Constraint::CpuCores, |x| x < cores);
        // `f64::from(x) < memory` for every f32 `x`, compared in f32 (twice the lanes)
        let memory = f32_at_least(req.memory_gb);
        mark(masks, &cols.memory_gb, Constraint::Memory, |x| x < memory);
        if self.gpus > 0 {
            let gpus = self.gpus;
            mark(masks, &cols.gpu_count, Constraint::GpuCount, |x| {
                u32::from(x) < gpus
            });
            let vram = f32_at_least(req.min_vram_gb);
            mark(masks, &cols.vram_gb, Constraint::GpuVram, |x| x < vram);
            // `eq_ignore_ascii_case` of the model names, through the index's ids
            if let Some(want) = self.model_id {
                mark(masks, &cols.model, Constraint::GpuModel, |x| x != want);
            }
        }
        if let Some(budget) = req.max_budget {
            mark(masks, &cols.price_per_hour, Constraint::Budget, |p| {
                !at_most(cost_at(p, req), budget)
            });
        }
        if let Some(u) = req.min_uptime {
            let u = f32_at_least(u);
            mark(masks, &cols.uptime_ratio, Constraint::Uptime, |x| x < u);
        }
        if let Some(rt) = req.max_response_time_ms {
            // `!at_most(f64::from(x), rt)`, in f32; negated so that a NaN on either side fails
            let rt = f32_at_most(rt);
            mark(
                masks,
                &cols.response_time_ms,
                Constraint::ResponseTime,
                #[allow(clippy::neg_cmp_op_on_partial_ord)]
                |x| !(x <= rt),
            );
        }
        if let Some(t) = req.min_tier {
            mark(masks, &cols.tier, Constraint::Tier, |x| x < t);
        }
        // only when a region is requested
        if !req.regions.is_empty() {
            let bit = Constraint::Region as u16;
            let table = &self.region_fails;
            if table.len() <= 32 {
                // a bit per region id: a shift a lane instead of a lookup a candidate; an id
                // the table does not know fails, as the lookup below has it
                let fails = table.iter().enumerate().fold(
                    u32::MAX.checked_shl(table.len() as u32).unwrap_or(0),
                    |acc, (i, f)| acc | (u32::from(*f) << i),
                );
                mark(masks, &cols.region, Constraint::Region, |r| {
                    r >= 32 || (fails >> (r & 31)) & 1 != 0
                });
            } else {
                for (m, r) in masks.iter_mut().zip(&cols.region) {
                    *m |= table.get(*r as usize).copied().unwrap_or(1) << bit;
                }
            }
        }
    }

    /// The price part of [`job_score`] for candidate `i` of `cols`.
    #[inline]
    fn price_part(&self, cols: &Columns, i: usize) -> f64 {
        match self.price {
            PricePart::Budget(b) => {
                clamp_score(100.0 * (1.0 - cost_at(cols.price_per_hour[i], self.req) / b))
            }
            PricePart::Zero => 0.0,
            PricePart::Relative(unit_price) => {
                let ppu = price_per_unit_of(
                    cols.price_per_hour[i],
                    cols.cpu_cores[i],
                    cols.memory_gb[i],
                    cols.gpu_count[i],
                    cols.vram_gb[i],
                );
                cost_score(ppu, unit_price)
            }
        }
    }

    /// [`job_score`] of candidate `i` of `cols`, or `None` when it is certainly below
    /// `floor`: bounded first by its performance and reliability with price and fit at
    /// their best, then with its fit; the price part, the costly one, is computed last.
    /// Reads only the columns it needs.
    #[inline(always)]
    fn score_reaching(&self, cols: &Columns, i: usize, floor: f64) -> Option<f64> {
        let performance = clamp_score(f64::from(cols.performance_score[i]));
        let reliability = clamp_score(f64::from(cols.reliability_score[i]));
        if combine(performance, reliability, 100.0, 100.0) < floor {
            return None;
        }
        let fit = fit_score(provisioning_ratio_of(
            cols.gpu_count[i],
            cols.cpu_cores[i],
            cols.memory_gb[i],
            self.req,
        ));
        if combine(performance, reliability, 100.0, fit) < floor {
            return None;
        }
        Some(combine(
            performance,
            reliability,
            self.price_part(cols, i),
            fit,
        ))
    }
}

/// Runs `f` compiled for AVX2 when the CPU has it (checked at run time; the build targets
/// baseline x86-64), else as built. `f` and what it calls must be inlined into it
/// (`#[inline(always)]`) for the AVX2 copy to be vectorised for AVX2.
#[inline(always)]
fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { avx2(f) };
    }
    f()
}

/// Sets constraint `k`'s bit in the mask of every candidate whose `column` value `fails`.
#[inline(always)]
fn mark<T: Copy>(masks: &mut [u16], column: &[T], k: Constraint, fails: impl Fn(T) -> bool) {
    let bit = k as u16;
    for (m, x) in masks.iter_mut().zip(column) {
        *m |= u16::from(fails(*x)) << bit;
    }
}

/// The best `k` picks so far, as [`TopK`] keeps them, and the score a newcomer must reach.
struct Best<'a> {
    k: usize,
    heap: BinaryHeap<Reverse<Pick<'a>>>,
    /// The smallest kept score once `k` are kept (−∞ before, +∞ for `k = 0`): anything
    /// scoring below it cannot enter.
    floor: f64,
}

impl<'a> Best<'a> {
    fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k.saturating_add(1).min(1 << 16)),
            floor: if k == 0 {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            },
        }
    }

    /// Score candidate `c` (row `row` of `cols`, position `i`) and keep it if it is among
    /// the best `k` so far (a candidate scoring below the floor is not scored in full).
    #[inline(always)]
    fn offer(
        &mut self,
        m: &Matcher<'_>,
        cols: &Columns,
        row: usize,
        c: &'a Candidate,
        i: usize,
        ctx: &RankingContext,
    ) {
        let Some(score) = m.score_reaching(cols, row, self.floor) else {
            return;
        };
        debug_assert_eq!(score.to_bits(), job_score(c, m.req, ctx).to_bits());
        let x = Scored {
            score,
            id: (&c.id, i),
        };
        if self.heap.len() < self.k {
            self.heap.push(Reverse(x));
        } else if let Some(mut min) = self.heap.peek_mut()
            && x > min.0
        {
            *min = Reverse(x);
        } else {
            return;
        }
        if self.heap.len() == self.k
            && let Some(min) = self.heap.peek()
        {
            self.floor = min.0.score;
        }
    }

    /// The kept picks, best first.
    fn into_sorted_vec(self) -> Vec<Pick<'a>> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.0)
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WarningKind {
    LittleHistory,
    DecliningTrend,
    PriceNearBudget,
    AnomalyNow,
    OverProvisioned,
    /// Suggested only because a constraint was relaxed.
    Relaxed,
    /// Chosen to explore a provider with little history.
    Exploration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    pub kind: WarningKind,
    pub message: String,
}

/// One suggested provider for a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderRecommendation {
    pub provider_id: ProviderId,
    /// 1-based position in the answer.
    pub rank: u32,
    /// The job-aware score 0–100.
    pub score: f64,
    /// Price per hour × expected duration.
    pub estimated_cost: f64,
    pub price_per_hour: f64,
    /// 0–1: fit of the offer to the request (halved for relaxed suggestions).
    pub match_quality: f64,
    /// 0–1: the provider's confidence blended with the match quality.
    pub confidence: f64,
    /// Why it fits, one line per requirement met.
    pub reasons: Vec<String>,
    pub warnings: Vec<Warning>,
    pub relaxed: bool,
    pub relaxed_constraint: Option<Constraint>,
    pub exploration: bool,
    pub region: String,
    pub tier: Tier,
}

/// How many providers a constraint ruled out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Elimination {
    pub constraint: Constraint,
    /// Providers failing this constraint (a provider failing several counts in each).
    pub eliminated: u64,
    /// Providers failing only this one: what relaxing it alone would admit.
    pub only_this: u64,
}

/// The answer to a recommendation request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecommendationResult {
    pub recommendations: Vec<ProviderRecommendation>,
    pub considered: u64,
    pub compatible: u64,
    /// Constraints that eliminated anyone, most eliminations first.
    pub eliminations: Vec<Elimination>,
    /// Set when no provider met every requirement.
    pub explanation: Option<String>,
    /// The constraint relaxed for the suggestions, if any was.
    pub relaxed_constraint: Option<Constraint>,
}

/// A number without a trailing ".0": 99.0 → "99", 99.25 → "99.2".
fn num(x: f64) -> String {
    let s = format!("{x:.1}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

/// Deterministic exploration order: a seeded 64-bit mix of the provider id, the same on
/// every shard and in every process.
fn exploration_key(id: &ProviderId, seed: u64) -> u64 {
    // splitmix64 finaliser over FNV-1a of the id, so nearby ids spread out
    let mut z = EventFingerprint::of(id.as_str()).0 ^ seed;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

type Pick<'a> = Scored<(&'a ProviderId, usize)>;
type ExplorePick<'a> = Reverse<(u64, &'a ProviderId, usize)>;

/// Exploration slots of an answer of `k`.
fn exploration_slots(k: usize, cfg: &AnalyticsConfig) -> usize {
    let share = if cfg.exploration_share.is_finite() {
        cfg.exploration_share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    (share * k as f64).floor() as usize
}

/// The constraints that eliminated anyone, from (eliminated, only this) counts indexed as
/// [`Constraint::ALL`]: most eliminations first, then most eliminated by it alone.
fn eliminations(counts: &[(u64, u64); 11]) -> Vec<Elimination> {
    let mut list: Vec<Elimination> = Constraint::ALL
        .iter()
        .zip(counts)
        .filter(|(_, (eliminated, _))| *eliminated > 0)
        .map(|(c, (eliminated, only_this))| Elimination {
            constraint: *c,
            eliminated: *eliminated,
            only_this: *only_this,
        })
        .collect();
    list.sort_by(|a, b| {
        b.eliminated
            .cmp(&a.eliminated)
            .then(b.only_this.cmp(&a.only_this))
    });
    list
}

/// One pass over `candidates`: the counts by constraint, the `k` best compatible ones by
/// job score (best first) and the exploration candidates (smallest key first).
struct Scan {
    compatible: u64,
    eliminations: Vec<Elimination>,
    best: Vec<usize>,
    explore: Vec<usize>,
}

impl Scan {
    /// The answer's picks as (index, exploring): the best that are not explored, then the
    /// explored. (By position: [`finish`] does the same by provider id for merged lists.)
    fn picks(&self, k: usize) -> Vec<(usize, bool)> {
        self.best
            .iter()
            .copied()
            .filter(|i| !self.explore.contains(i))
            .take(k - self.explore.len())
            .map(|i| (i, false))
            .chain(self.explore.iter().map(|i| (*i, true)))
            .collect()
    }
}

/// One shard's candidates with their match index.
pub type Segment<'a> = (&'a [Candidate], &'a MatchIndex);

/// A shard's candidates as of the last coordinator cycle, with their match index: what the
/// shard publishes for its node's gateway, which scans the indexes of every shard it
/// serves in one pass ([`shortlist`]) instead of asking each shard actor.
#[derive(Clone, Debug, Default)]
pub struct CandidateIndex {
    pub candidates: Vec<Candidate>,
    pub keys: MatchIndex,
}

impl CandidateIndex {
    pub fn new(candidates: Vec<Candidate>) -> Self {
        let keys = MatchIndex::new(&candidates);
        Self { candidates, keys }
    }

    pub fn segment(&self) -> Segment<'_> {
        (&self.candidates, &self.keys)
    }
}

/// The candidate at position `i` of the segments laid end to end.
fn nth<'a>(segments: &[Segment<'a>], mut i: usize) -> &'a Candidate {
    for (candidates, _) in segments {
        match candidates.get(i) {
            Some(c) => return c,
            None => i -= candidates.len(),
        }
    }
    panic!("candidate {i} past the segments' end")
}

/// One pass over the segments' candidates (positions count through the segments laid end
/// to end).
fn scan<'a>(
    segments: &[Segment<'a>],
    req: &JobRequirements,
    ctx: &RankingContext,
    cfg: &AnalyticsConfig,
) -> Scan {
    let k = req.max_results;
    let n_explore = exploration_slots(k, cfg);
    // candidates by failure mask; the per-constraint counts are summed from it afterwards
    let mut by_mask = vec![0u64; 1 << Constraint::ALL.len()];
    let mut best = Best::new(k);
    let mut explore: TopK<ExplorePick<'_>> = TopK::new(n_explore);
    let mut masks = Vec::new();
    let mut matcher = Matcher::new(req, ctx);
    let mut offset = 0;
    for (candidates, index) in segments {
        assert_eq!(
            candidates.len(),
            index.len(),
            "a match index of other candidates"
        );
        matcher.use_index(index);
        matcher.masks(&index.cols, &mut masks);
        let cols = &index.cols;
        for (i, &m) in masks.iter().enumerate() {
            debug_assert_eq!(m, failures(&candidates[i], req));
            by_mask[usize::from(m)] += 1;
            if m != 0 {
                continue;
            }
            let c = &candidates[i];
            best.offer(&matcher, cols, i, c, offset + i, ctx);
            if n_explore > 0 && cols.data_points[i] < cfg.min_data_points && cols.steady[i] {
                explore.push(Reverse((
                    exploration_key(&c.id, cfg.exploration_seed),
                    &c.id,
                    offset + i,
                )));
            }
        }
        offset += candidates.len();
    }
    let compatible = by_mask[0];
    let mut counts = [(0u64, 0u64); 11];
    for (m, n) in by_mask.iter().enumerate().skip(1).filter(|(_, n)| **n > 0) {
        for (j, con) in Constraint::ALL.iter().enumerate() {
            let b = usize::from(con.bit());
            if m & b != 0 {
                counts[j].0 += n;
                if m == b {
                    counts[j].1 += n;
                }
            }
        }
    }
    Scan {
        compatible,
        eliminations: eliminations(&counts),
        best: best.into_sorted_vec().into_iter().map(|p| p.id.1).collect(),
        explore: explore
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.0.2)
            .collect(),
    }
}

/// A shard's part of a recommendation: its counts and its candidates for the answer, as
/// plain summaries without reasons or warnings. The gateway merges the shortlists of every
/// shard ([`merge_shortlists`]) and builds the text for the final few only ([`finish`]):
/// the same answer [`recommend`] gives over all the candidates at once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Shortlist {
    pub considered: u64,
    pub compatible: u64,
    pub eliminations: Vec<Elimination>,
    /// The best compatible candidates by job score, best first.
    pub best: Vec<ShortlistPick>,
    /// Exploration candidates, smallest exploration key first.
    pub explore: Vec<ShortlistPick>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShortlistPick {
    /// [`job_score`] of the candidate.
    pub score: f64,
    /// Its exploration key (the exploration order).
    pub key: u64,
    pub candidate: Candidate,
}

/// The compatible part of [`recommend`] over the candidates of one or more shards, in one
/// pass (no relaxation: the gateway decides that on the merged counts).
pub fn shortlist(
    segments: &[Segment<'_>],
    req: &JobRequirements,
    ctx: &RankingContext,
    cfg: &AnalyticsConfig,
) -> Shortlist {
    let scan = scan(segments, req, ctx, cfg);
    let pick = |i: usize| {
        let c = nth(segments, i);
        ShortlistPick {
            score: job_score(c, req, ctx),
            key: exploration_key(&c.id, cfg.exploration_seed),
            candidate: c.clone(),
        }
    };
    Shortlist {
        considered: segments.iter().map(|(c, _)| c.len() as u64).sum(),
        compatible: scan.compatible,
        eliminations: scan.eliminations,
        best: scan.best.iter().map(|i| pick(*i)).collect(),
        explore: scan.explore.iter().map(|i| pick(*i)).collect(),
    }
}

/// Where to cut segments of these sizes into two runs of about half the candidates each
/// (both runs non-empty when there are two segments or more), for two threads to
/// [`shortlist`] one each; [`merge_shortlists`] joins their answers exactly.
pub fn halfway(sizes: &[usize]) -> usize {
    if sizes.len() < 2 {
        return sizes.len();
    }
    let total: usize = sizes.iter().sum();
    // the segment that crosses the middle goes to whichever side leaves the halves closer
    let mut before = 0;
    for (i, n) in sizes.iter().enumerate() {
        let after = before + n;
        if after * 2 >= total {
            let cut = if total - 2 * before <= 2 * after - total {
                i
            } else {
                i + 1
            };
            return cut.clamp(1, sizes.len() - 1);
        }
        before = after;
    }
    sizes.len() - 1
}

/// Merges shortlists into one as if their candidates were one shard's: counts summed,
/// eliminations re-sorted, the `k` best by score and the exploration slots' candidates by
/// key. Each part holds its own `k` best and its own exploration candidates, so the merge
/// is exact.
pub fn merge_shortlists(parts: Vec<Shortlist>, k: usize, cfg: &AnalyticsConfig) -> Shortlist {
    let mut merged = Shortlist::default();
    let mut counts = [(0u64, 0u64); 11];
    for p in parts {
        merged.considered += p.considered;
        merged.compatible += p.compatible;
        for e in p.eliminations {
            let j = e.constraint as usize;
            counts[j].0 += e.eliminated;
            counts[j].1 += e.only_this;
        }
        merged.best.extend(p.best);
        merged.explore.extend(p.explore);
    }
    merged.eliminations = eliminations(&counts);
    // as `Best` orders: higher score first, then the smaller id
    let by_score = |a: &ShortlistPick, b: &ShortlistPick| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.candidate.id.cmp(&b.candidate.id))
    };
    keep_first(&mut merged.best, k, by_score);
    keep_first(&mut merged.explore, exploration_slots(k, cfg), |a, b| {
        (a.key, &a.candidate.id).cmp(&(b.key, &b.candidate.id))
    });
    merged
}

/// Sorts `v` by `order` and keeps the first `k` (selecting them first when `v` is long).
fn keep_first<T>(v: &mut Vec<T>, k: usize, order: impl Fn(&T, &T) -> std::cmp::Ordering) {
    if k == 0 {
        v.clear();
        return;
    }
    if v.len() > k {
        v.select_nth_unstable_by(k - 1, &order);
        v.truncate(k);
    }
    v.sort_by(order);
}

/// The answer from a merged shortlist: regular picks then exploration picks, each with its
/// reasons and warnings.
pub fn finish(
    merged: Shortlist,
    req: &JobRequirements,
    ctx: &RankingContext,
    cfg: &AnalyticsConfig,
) -> RecommendationResult {
    let k = req.max_results;
    let explore_ids: Vec<&ProviderId> = merged.explore.iter().map(|p| &p.candidate.id).collect();
    let picks: Vec<(&Candidate, bool)> = merged
        .best
        .iter()
        .filter(|p| !explore_ids.contains(&&p.candidate.id))
        .take(k - merged.explore.len())
        .map(|p| (&p.candidate, false))
        .chain(merged.explore.iter().map(|p| (&p.candidate, true)))
        .collect();
    RecommendationResult {
        recommendations: if merged.compatible > 0 {
            picks
                .into_iter()
                .enumerate()
                .map(|(pos, (c, exploring))| suggestion(c, pos, req, ctx, cfg, None, exploring))
                .collect()
        } else {
            Vec::new()
        },
        considered: merged.considered,
        compatible: merged.compatible,
        eliminations: merged.eliminations,
        explanation: None,
        relaxed_constraint: None,
    }
}

/// Recommend providers for a job out of `candidates` (linear in their number, plus
/// O(log k) a compatible one).
pub fn recommend(
    candidates: &[Candidate],
    req: &JobRequirements,
    ctx: &RankingContext,
    cfg: &AnalyticsConfig,
) -> RecommendationResult {
    let k = req.max_results;
    let index = MatchIndex::new(candidates);
    let scan = scan(&[(candidates, &index)], req, ctx, cfg);
    let mut result = RecommendationResult {
        recommendations: Vec::new(),
        considered: candidates.len() as u64,
        compatible: scan.compatible,
        eliminations: Vec::new(),
        explanation: None,
        relaxed_constraint: None,
    };
    if scan.compatible > 0 {
        result.recommendations = scan
            .picks(k)
            .into_iter()
            .enumerate()
            .map(|(pos, (i, exploring))| {
                suggestion(&candidates[i], pos, req, ctx, cfg, None, exploring)
            })
            .collect();
        result.eliminations = scan.eliminations;
        return result;
    }
    result.eliminations = scan.eliminations;

    let mut text = if candidates.is_empty() {
        "no providers to consider".to_string()
    } else {
        let parts: Vec<String> = result
            .eliminations
            .iter()
            .map(|e| format!("{} eliminated {}", e.constraint.name(), e.eliminated))
            .collect();
        format!(
            "no provider meets every requirement ({} considered): {}",
            candidates.len(),
            parts.join(", ")
        )
    };
    // relax the one constraint whose removal admits the most providers
    let relax = result
        .eliminations
        .iter()
        .filter(|e| e.constraint.relaxable() && e.only_this > 0)
        .max_by(|a, b| {
            a.only_this
                .cmp(&b.only_this)
                .then(b.eliminated.cmp(&a.eliminated))
        })
        .map(|e| e.constraint);
    if let Some(con) = relax {
        let mut matcher = Matcher::new(req, ctx);
        matcher.use_index(&index);
        let mut masks = Vec::new();
        matcher.masks(&index.cols, &mut masks);
        let mut best = Best::new(k);
        for (i, (c, m)) in candidates.iter().zip(&masks).enumerate() {
            if m & !con.bit() == 0 {
                best.offer(&matcher, &index.cols, i, c, i, ctx);
            }
        }
        result.recommendations = best
            .into_sorted_vec()
            .into_iter()
            .enumerate()
            .map(|(pos, p)| suggestion(&candidates[p.id.1], pos, req, ctx, cfg, Some(con), false))
            .collect();
        result.relaxed_constraint = Some(con);
        text.push_str(&format!(
            "; relaxing {} admits {} (suggestions marked relaxed)",
            con.name(),
            result
                .eliminations
                .iter()
                .find(|e| e.constraint == con)
                .map_or(0, |e| e.only_this)
        ));
    } else if !candidates.is_empty() {
        text.push_str("; no single relaxed constraint would admit a provider");
    }
    result.explanation = Some(text);
    result
}

/// Build one suggestion with its reasons and warnings (only for the final few).
fn suggestion(
    c: &Candidate,
    pos: usize,
    req: &JobRequirements,
    ctx: &RankingContext,
    cfg: &AnalyticsConfig,
    relaxed: Option<Constraint>,
    exploration: bool,
) -> ProviderRecommendation {
    let cost = estimated_cost(c, req);
    let ratio = provisioning_ratio(c, req);
    let fit = fit_score(ratio) / 100.0;
    let match_quality = if relaxed.is_some() { fit / 2.0 } else { fit };
    let failed = failures(c, req);
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    let mut warn = |kind, message: String| warnings.push(Warning { kind, message });
    let met = |k: Constraint| failed & k.bit() == 0;

    let gpus = req.gpus_needed();
    if gpus > 0
        && met(Constraint::GpuModel)
        && met(Constraint::GpuCount)
        && met(Constraint::GpuVram)
    {
        let model = c.gpu_model.as_deref().unwrap_or("GPU");
        let want = req.gpu_model.as_deref().unwrap_or("GPU");
        let vram = if req.min_vram_gb > 0.0 {
            format!(" ≥ {} GB", num(req.min_vram_gb))
        } else {
            String::new()
        };
        reasons.push(format!(
            "{model} ×{} with {} GB VRAM meets {gpus}×{want}{vram}",
            c.gpu_count,
            num(f64::from(c.vram_gb))
        ));
    }
    if req.cpu_cores > 0 && met(Constraint::CpuCores) {
        reasons.push(format!("{} CPU cores ≥ {}", c.cpu_cores, req.cpu_cores));
    }
    if req.memory_gb > 0.0 && met(Constraint::Memory) {
        reasons.push(format!(
            "{} GB memory ≥ {} GB",
            num(f64::from(c.memory_gb)),
            num(req.memory_gb)
        ));
    }
    if !req.regions.is_empty() && met(Constraint::Region) {
        reasons.push(format!("in {}, one of the requested regions", c.region));
    }
    if let Some(u) = req.min_uptime.filter(|_| met(Constraint::Uptime)) {
        reasons.push(format!(
            "{} % uptime ≥ {} %",
            num(100.0 * f64::from(c.uptime_ratio)),
            num(100.0 * u)
        ));
    }
    if let Some(rt) = req
        .max_response_time_ms
        .filter(|_| met(Constraint::ResponseTime))
    {
        reasons.push(format!(
            "{} ms response time ≤ {} ms",
            num(f64::from(c.response_time_ms)),
            num(rt)
        ));
    }
    if let Some(b) = req.max_budget.filter(|_| met(Constraint::Budget)) {
        reasons.push(format!(
            "estimated cost {cost:.2} within the budget of {b:.2}"
        ));
    }
    if let Some(t) = req.min_tier.filter(|_| met(Constraint::Tier)) {
        reasons.push(format!("{} tier ≥ {}", c.tier.name(), t.name()));
    }
    reasons.push(format!(
        "performance {}, reliability {}",
        num(f64::from(c.performance_score)),
        num(f64::from(c.reliability_score))
    ));

    if let Some(con) = relaxed {
        warn(
            WarningKind::Relaxed,
            format!("does not meet the {} requirement (relaxed)", con.name()),
        );
    }
    if exploration {
        warn(
            WarningKind::Exploration,
            "little history: suggested to explore a promising new provider".into(),
        );
    }
    if c.data_points < cfg.min_data_points {
        warn(
            WarningKind::LittleHistory,
            format!(
                "only {} hours of history (fewer than {})",
                c.data_points, cfg.min_data_points
            ),
        );
    }
    if c.declining {
        warn(
            WarningKind::DecliningTrend,
            "performance is on a declining trend".into(),
        );
    }
    if let Some(b) = req.max_budget.filter(|b| *b > 0.0 && cost >= 0.9 * b) {
        warn(
            WarningKind::PriceNearBudget,
            format!(
                "estimated cost {cost:.2} is {:.0} % of the budget",
                100.0 * cost / b
            ),
        );
    }
    if c.anomaly {
        warn(
            WarningKind::AnomalyNow,
            "an anomaly is open on this provider now".into(),
        );
    }
    if ratio >= OVERPROVISIONED_RATIO {
        let what = if gpus == 0 && c.gpu_count > 0 {
            format!("has {} GPUs the job does not use", c.gpu_count)
        } else {
            format!("offers {}× what the job needs", num(ratio))
        };
        warn(
            WarningKind::OverProvisioned,
            format!("over-provisioned: {what}"),
        );
    }
    ProviderRecommendation {
        provider_id: c.id.clone(),
        rank: pos as u32 + 1,
        score: job_score(c, req, ctx),
        estimated_cost: cost,
        price_per_hour: f64::from(c.price_per_hour),
        match_quality,
        confidence: with_match_quality(f64::from(c.confidence), match_quality),
        reasons,
        warnings,
        relaxed: relaxed.is_some(),
        relaxed_constraint: relaxed,
        exploration,
        region: c.region.clone(),
        tier: c.tier,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, region: &str, gpu: Option<(&str, u16, f32)>, price: f32) -> Candidate {
        Candidate {
            id: ProviderId::new(id),
            region: region.into(),
            gpu_model: gpu.map(|g| g.0.to_string()),
            gpu_count: gpu.map_or(0, |g| g.1),
            vram_gb: gpu.map_or(0.0, |g| g.2),
            cpu_cores: 32,
            memory_gb: 256.0,
            price_per_hour: price,
            online: true,
            performance_score: 85.0,
            reliability_score: 85.0,
            uptime_ratio: 0.995,
            response_time_ms: 150.0,
            confidence: 0.8,
            data_points: 50,
            tier: Tier::Silver,
            ..Default::default()
        }
    }

    fn fleet() -> Vec<Candidate> {
        let mut a4 = cand("a100x4", "eu", Some(("A100", 4, 80.0)), 10.0);
        a4.performance_score = 92.0;
        a4.reliability_score = 90.0;
        a4.uptime_ratio = 0.992;
        let mut a2 = cand("a100x2", "eu", Some(("A100", 2, 40.0)), 6.0);
        a2.cpu_cores = 16;
        let h100 = cand("h100", "us", Some(("H100", 8, 80.0)), 30.0);
        let mut cpu = cand("cpu", "eu", None, 2.0);
        cpu.cpu_cores = 64;
        let mut off = cand("offline", "eu", Some(("A100", 2, 40.0)), 5.0);
        off.online = false;
        let v100 = cand("v100", "eu", Some(("V100", 2, 16.0)), 3.0);
        vec![a4, a2, h100, cpu, off, v100]
    }

    fn gpu_job() -> JobRequirements {
        JobRequirements {
            cpu_cores: 8,
            memory_gb: 32.0,
            gpu_model: Some("a100".into()),
            gpu_count: 2,
            min_vram_gb: 40.0,
            regions: vec!["eu".into(), "ap".into()],
            expected_duration_hours: 10.0,
            max_budget: Some(100.0),
            min_uptime: Some(0.99),
            max_response_time_ms: Some(200.0),
            min_tier: None,
            max_results: 5,
        }
    }

    fn elim(r: &RecommendationResult, c: Constraint) -> (u64, u64) {
        r.eliminations
            .iter()
            .find(|e| e.constraint == c)
            .map_or((0, 0), |e| (e.eliminated, e.only_this))
    }

    #[test]
    fn filters_count_each_constraint() {
        let r = recommend(
            &fleet(),
            &gpu_job(),
            &RankingContext::default(),
            &AnalyticsConfig::default(),
        );
        assert_eq!((r.considered, r.compatible), (6, 2));
        assert_eq!(elim(&r, Constraint::GpuModel), (3, 0));
        assert_eq!(elim(&r, Constraint::GpuVram), (2, 0));
        assert_eq!(elim(&r, Constraint::GpuCount), (1, 0));
        assert_eq!(elim(&r, Constraint::Region), (1, 0));
        assert_eq!(elim(&r, Constraint::Budget), (1, 0));
        assert_eq!(elim(&r, Constraint::Online), (1, 1));
        assert_eq!(r.eliminations[0].constraint, Constraint::GpuModel);
        assert!(r.explanation.is_none());
    }

    #[test]
    fn ranks_by_job_score_with_reasons_and_warnings() {
        let r = recommend(
            &fleet(),
            &gpu_job(),
            &RankingContext::default(),
            &AnalyticsConfig::default(),
        );
        let ids: Vec<_> = r
            .recommendations
            .iter()
            .map(|x| x.provider_id.as_str())
            .collect();
        // a100x2: 0.35·85 + 0.25·85 + 0.25·(100·(1 − 60/100)) + 0.15·100 = 76
        // a100x4: 0.35·92 + 0.25·90 + 0.25·0 + 0.15·100 = 69.7
        assert_eq!(ids, ["a100x2", "a100x4"]);
        assert!((r.recommendations[0].score - 76.0).abs() < 1e-4);
        assert!((r.recommendations[1].score - 69.7).abs() < 1e-4);
        let a4 = &r.recommendations[1];
        assert_eq!(a4.rank, 2);
        assert_eq!(a4.estimated_cost, 100.0);
        assert!(
            a4.reasons
                .contains(&"A100 ×4 with 80 GB VRAM meets 2×a100 ≥ 40 GB".to_string()),
            "{:?}",
            a4.reasons
        );
        assert!(
            a4.reasons.contains(&"99.2 % uptime ≥ 99 %".to_string()),
            "{:?}",
            a4.reasons
        );
        assert!(
            a4.reasons
                .contains(&"150 ms response time ≤ 200 ms".to_string())
        );
        assert!(
            a4.reasons
                .contains(&"in eu, one of the requested regions".to_string())
        );
        let kinds: Vec<_> = a4.warnings.iter().map(|w| w.kind).collect();
        assert_eq!(kinds, [WarningKind::PriceNearBudget]);
        assert!(r.recommendations[0].warnings.is_empty());
        // 4 GPUs for 2 is twice the request: still a full fit
        assert_eq!(a4.match_quality, 1.0);
        // 0.75·0.8 + 0.25·1
        assert!((a4.confidence - 0.85).abs() < 1e-6);
        assert!(!a4.relaxed && !a4.exploration);
    }

    #[test]
    fn warns_about_history_trend_anomaly_and_over_provisioning() {
        let mut v = fleet();
        v[3].data_points = 3;
        v[3].declining = true;
        v[3].anomaly = true;
        let job = JobRequirements {
            cpu_cores: 4,
            max_results: 10,
            ..Default::default()
        };
        let r = recommend(
            &v,
            &job,
            &RankingContext::default(),
            &AnalyticsConfig::default(),
        );
        let cpu = r
            .recommendations
            .iter()
            .find(|x| x.provider_id.as_str() == "cpu")
            .unwrap();
        let kinds: Vec<_> = cpu.warnings.iter().map(|w| w.kind).collect();
        assert_eq!(
            kinds,
            [
                WarningKind::LittleHistory,
                WarningKind::DecliningTrend,
                WarningKind::AnomalyNow,
                WarningKind::OverProvisioned
            ]
        );
        // 64 cores for 4: ratio 16 → fit 200/16 = 12.5 %
        assert_eq!(cpu.match_quality, 0.125);
        assert!(
            cpu.warnings[3].message.contains("16×"),
            "{}",
            cpu.warnings[3].message
        );
        let gpu = r
            .recommendations
            .iter()
            .find(|x| x.provider_id.as_str() == "a100x2")
            .unwrap();
        assert!(
            gpu.warnings
                .iter()
                .any(|w| w.message.contains("2 GPUs the job does not use"))
        );
        assert_eq!(r.compatible, 5);
    }

    #[test]
    fn empty_result_explains_and_relaxes_the_most_eliminating_constraint() {
        let job = JobRequirements {
            gpu_model: Some("H100".into()),
            regions: vec!["eu".into()],
            ..Default::default()
        };
        let r = recommend(
            &fleet(),
            &job,
            &RankingContext::default(),
            &AnalyticsConfig::default(),
        );
        assert_eq!(r.compatible, 0);
        assert_eq!(elim(&r, Constraint::GpuModel), (5, 3));
        assert_eq!(elim(&r, Constraint::Region), (1, 1));
        // gpu model has more only-this eliminations (a100x4, a100x2, v100) than region
        assert_eq!(r.relaxed_constraint, Some(Constraint::GpuModel));
        let text = r.explanation.as_deref().unwrap();
        assert!(text.contains("gpu model eliminated 5"), "{text}");
        assert!(text.contains("region eliminated 1"), "{text}");
        assert!(text.contains("relaxing gpu model admits 3"), "{text}");
        assert_eq!(r.recommendations.len(), 3);
        assert!(
            r.recommendations
                .iter()
                .all(|x| x.relaxed && x.relaxed_constraint == Some(Constraint::GpuModel))
        );
        assert!(
            r.recommendations[0]
                .warnings
                .iter()
                .any(|w| w.kind == WarningKind::Relaxed)
        );
        assert!(r.recommendations[0].match_quality <= 0.5);
    }

    #[test]
    fn relaxes_region_when_it_alone_blocks() {
        let job = JobRequirements {
            gpu_model: Some("H100".into()),
            regions: vec!["eu".into()],
            min_vram_gb: 80.0,
            gpu_count: 4,
            ..Default::default()
        };
        let r = recommend(
            &fleet(),
            &job,
            &RankingContext::default(),
            &AnalyticsConfig::default(),
        );
        assert_eq!(r.relaxed_constraint, Some(Constraint::Region));
        let ids: Vec<_> = r
            .recommendations
            .iter()
            .map(|x| x.provider_id.as_str())
            .collect();
        assert_eq!(ids, ["h100"]);
    }

    #[test]
    fn nothing_to_relax_still_explains() {
        let job = JobRequirements {
            cpu_cores: 1000,
            gpu_model: Some("TPU".into()),
            ..Default::default()
        };
        let r = recommend(
            &fleet(),
            &job,
            &RankingContext::default(),
            &AnalyticsConfig::default(),
        );
        assert!(r.recommendations.is_empty());
        let text = r.explanation.unwrap();
        assert!(
            text.contains("cpu cores eliminated 6")
                && text.contains("no single relaxed constraint"),
            "{text}"
        );
        let r = recommend(
            &[],
            &job,
            &RankingContext::default(),
            &AnalyticsConfig::default(),
        );
        assert_eq!(r.explanation.as_deref(), Some("no providers to consider"));
    }

    #[test]
    fn exploration_is_bounded_and_deterministic() {
        let mut v: Vec<Candidate> = (0..10)
            .map(|i| cand(&format!("p{i}"), "eu", None, 1.0))
            .collect();
        for (i, c) in v.iter_mut().enumerate() {
            c.performance_score = 90.0 - i as f32;
        }
        for c in &mut v[7..] {
            c.data_points = 1;
        }
        let job = JobRequirements {
            cpu_cores: 16,
            max_results: 5,
            ..Default::default()
        };
        let ctx = RankingContext::default();
        let off = recommend(&v, &job, &ctx, &AnalyticsConfig::default());
        assert!(off.recommendations.iter().all(|r| !r.exploration));
        let cfg = AnalyticsConfig {
            exploration_share: 0.4,
            exploration_seed: 7,
            ..Default::default()
        };
        let on = recommend(&v, &job, &ctx, &cfg);
        let ids = |r: &RecommendationResult| {
            r.recommendations
                .iter()
                .map(|x| x.provider_id.to_string())
                .collect::<Vec<_>>()
        };
        let got = ids(&on);
        // 40 % of 5 slots: the best three regular ones, then two of the newcomers p7..p9
        assert_eq!(&got[..3], ["p0", "p1", "p2"]);
        assert!(
            on.recommendations[3..]
                .iter()
                .all(|r| r.exploration && ["p7", "p8", "p9"].contains(&r.provider_id.as_str()))
        );
        assert!(
            on.recommendations[3]
                .warnings
                .iter()
                .any(|w| w.kind == WarningKind::Exploration)
        );
        // the choice does not depend on the order of the candidates
        v.reverse();
        assert_eq!(ids(&recommend(&v, &job, &ctx, &cfg)), got);
    }

    /// The straightforward algorithm: every candidate through [`failures`] and
    /// [`job_score`], a full sort instead of a bounded heap, counts constraint by
    /// constraint.
    fn reference(
        candidates: &[Candidate],
        req: &JobRequirements,
        ctx: &RankingContext,
        cfg: &AnalyticsConfig,
    ) -> RecommendationResult {
        let k = req.max_results;
        let share = if cfg.exploration_share.is_finite() {
            cfg.exploration_share.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let n_explore = (share * k as f64).floor() as usize;
        let masks: Vec<u16> = candidates.iter().map(|c| failures(c, req)).collect();
        let mut eliminations: Vec<Elimination> = Constraint::ALL
            .iter()
            .map(|con| Elimination {
                constraint: *con,
                eliminated: masks.iter().filter(|m| **m & con.bit() != 0).count() as u64,
                only_this: masks.iter().filter(|m| **m == con.bit()).count() as u64,
            })
            .filter(|e| e.eliminated > 0)
            .collect();
        eliminations.sort_by(|a, b| {
            b.eliminated
                .cmp(&a.eliminated)
                .then(b.only_this.cmp(&a.only_this))
        });
        // best first: higher score, then the smaller id, then the earlier position
        let ranked = |admit: &dyn Fn(u16) -> bool| {
            let mut v: Vec<(f64, usize)> = (0..candidates.len())
                .filter(|i| admit(masks[*i]))
                .map(|i| (job_score(&candidates[i], req, ctx), i))
                .collect();
            v.sort_by(|a, b| {
                b.0.total_cmp(&a.0)
                    .then_with(|| candidates[a.1].id.cmp(&candidates[b.1].id))
                    .then(a.1.cmp(&b.1))
            });
            v.into_iter().map(|(_, i)| i).collect::<Vec<_>>()
        };
        let compatible = masks.iter().filter(|m| **m == 0).count() as u64;
        let mut result = RecommendationResult {
            recommendations: Vec::new(),
            considered: candidates.len() as u64,
            compatible,
            eliminations,
            explanation: None,
            relaxed_constraint: None,
        };
        if compatible > 0 {
            let mut newcomers: Vec<(u64, usize)> = (0..candidates.len())
                .filter(|i| {
                    let c = &candidates[*i];
                    masks[*i] == 0
                        && c.data_points < cfg.min_data_points
                        && !c.anomaly
                        && !c.declining
                })
                .map(|i| (exploration_key(&candidates[i].id, cfg.exploration_seed), i))
                .collect();
            newcomers.sort_by(|a, b| {
                a.0.cmp(&b.0)
                    .then_with(|| candidates[a.1].id.cmp(&candidates[b.1].id))
                    .then(a.1.cmp(&b.1))
            });
            let explore: Vec<usize> = newcomers.iter().take(n_explore).map(|x| x.1).collect();
            let regular: Vec<usize> = ranked(&|m| m == 0)
                .into_iter()
                .take(k)
                .filter(|i| !explore.contains(i))
                .take(k - explore.len())
                .collect();
            result.recommendations = regular
                .iter()
                .map(|i| (*i, false))
                .chain(explore.iter().map(|i| (*i, true)))
                .enumerate()
                .map(|(pos, (i, e))| suggestion(&candidates[i], pos, req, ctx, cfg, None, e))
                .collect();
            return result;
        }
        let mut text = if candidates.is_empty() {
            "no providers to consider".to_string()
        } else {
            let parts: Vec<String> = result
                .eliminations
                .iter()
                .map(|e| format!("{} eliminated {}", e.constraint.name(), e.eliminated))
                .collect();
            format!(
                "no provider meets every requirement ({} considered): {}",
                candidates.len(),
                parts.join(", ")
            )
        };
        let relax = result
            .eliminations
            .iter()
            .filter(|e| e.constraint != Constraint::Online && e.only_this > 0)
            .max_by(|a, b| {
                a.only_this
                    .cmp(&b.only_this)
                    .then(b.eliminated.cmp(&a.eliminated))
            })
            .map(|e| (e.constraint, e.only_this));
        if let Some((con, admits)) = relax {
            result.recommendations = ranked(&|m| m & !con.bit() == 0)
                .into_iter()
                .take(k)
                .enumerate()
                .map(|(pos, i)| suggestion(&candidates[i], pos, req, ctx, cfg, Some(con), false))
                .collect();
            result.relaxed_constraint = Some(con);
            text.push_str(&format!(
                "; relaxing {} admits {admits} (suggestions marked relaxed)",
                con.name()
            ));
        } else if !candidates.is_empty() {
            text.push_str("; no single relaxed constraint would admit a provider");
        }
        result.explanation = Some(text);
        result
    }

    /// A seeded fleet with every kind of variety the filter and the score see: region and
    /// GPU-model spellings (case, equal lengths), quantised scores and duplicate ids (ties),
    /// odd prices (0, negative, NaN), offline, anomalous and new providers.
    fn random_fleet(n: usize, seed: u64) -> Vec<Candidate> {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(seed);
        let regions = [
            "us-east",
            "us-west",
            "eu-central",
            "eu-west",
            "ap-southeast",
            "EU-WEST",
            "",
        ];
        let models = [
            None,
            Some("A100"),
            Some("a100"),
            Some("H100"),
            Some("A10"),
            Some("L4"),
        ];
        let tiers = [
            Tier::Basic,
            Tier::Bronze,
            Tier::Silver,
            Tier::Gold,
            Tier::Platinum,
        ];
        (0..n)
            .map(|i| {
                let model = models[rng.random_range(0..models.len())];
                let id = if rng.random_bool(0.02) {
                    "dup".to_string()
                } else {
                    format!("p{:05}", rng.random_range(0..1_000_000))
                };
                let price = match rng.random_range(0..40) {
                    0 => 0.0,
                    1 => -1.0,
                    2 => f32::NAN,
                    _ => rng.random_range(0.05..12.0),
                };
                let perf = if i % 3 == 0 {
                    f32::from(rng.random_range(60u8..100))
                } else {
                    rng.random_range(0.0..105.0)
                };
                Candidate {
                    id: ProviderId::new(id),
                    region: regions[rng.random_range(0..regions.len())].into(),
                    gpu_model: model.map(str::to_string),
                    gpu_count: if model.is_some() {
                        rng.random_range(0..9)
                    } else {
                        0
                    },
                    vram_gb: if model.is_some() {
                        [16.0, 24.0, 40.0, 80.0][rng.random_range(0..4)]
                    } else {
                        0.0
                    },
                    cpu_cores: [2, 4, 8, 16, 32, 64][rng.random_range(0..6)],
                    memory_gb: [8.0, 16.0, 32.0, 64.0, 256.0][rng.random_range(0..5)],
                    price_per_hour: price,
                    online: rng.random_bool(0.95),
                    declining: rng.random_bool(0.05),
                    anomaly: rng.random_bool(0.05),
                    performance_score: perf,
                    reliability_score: f32::from(rng.random_range(50u8..100)),
                    uptime_ratio: rng.random_range(0.9..1.0),
                    response_time_ms: if rng.random_bool(0.01) {
                        f32::NAN
                    } else {
                        rng.random_range(20.0..900.0)
                    },
                    confidence: rng.random_range(0.0..1.0),
                    data_points: rng.random_range(0..100),
                    tier: tiers[rng.random_range(0..tiers.len())],
                    ..Default::default()
                }
            })
            .collect()
    }

    #[test]
    fn optimised_pass_matches_the_reference_on_a_random_fleet() {
        let jobs = test_jobs();
        let contexts = [
            RankingContext::default(),
            RankingContext {
                median_price_per_unit: 0.02,
                median_response_time_ms: 100.0,
            },
            RankingContext {
                median_price_per_unit: f64::NAN,
                median_response_time_ms: 0.0,
            },
        ];
        let explore = AnalyticsConfig {
            exploration_share: 0.3,
            exploration_seed: 11,
            ..Default::default()
        };
        for seed in [1, 2] {
            let fleet = random_fleet(2_000, seed);
            for (j, job) in jobs.iter().enumerate() {
                for ctx in &contexts {
                    for cfg in [&AnalyticsConfig::default(), &explore] {
                        let want = reference(&fleet, job, ctx, cfg);
                        let got = recommend(&fleet, job, ctx, cfg);
                        // compare through the Debug text: NaN-free here, but exact to the bit
                        assert_eq!(
                            format!("{got:?}"),
                            format!("{want:?}"),
                            "seed {seed}, job {j}, {ctx:?}"
                        );
                    }
                }
            }
        }
        // the shapes above reach both answers: some jobs fit, some are relaxed
        let fleet = random_fleet(2_000, 1);
        let ctx = RankingContext::default();
        let cfg = AnalyticsConfig::default();
        assert!(recommend(&fleet, &jobs[0], &ctx, &cfg).compatible > 5);
        assert!(recommend(&fleet, &jobs[1], &ctx, &cfg).compatible > 1_000);
        assert!(
            recommend(&fleet, &jobs[8], &ctx, &cfg)
                .relaxed_constraint
                .is_some()
        );
    }

    #[test]
    fn f32_thresholds_compare_exactly_as_f64() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(3);
        let mut limits = vec![
            0.0,
            -0.0,
            0.95,
            0.1,
            16.0,
            1e-40,
            -1e-40,
            f64::from(f32::MAX),
            f64::from(f32::MAX) * 1.000_000_1,
            f64::from(f32::MIN),
            -1e300,
            1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        limits.extend((0..2_000).map(|_| rng.random_range(-1e3..1e3)));
        for m in limits {
            let near = m as f32;
            let mut xs = vec![
                near,
                near.next_up(),
                near.next_down(),
                0.0,
                -0.0,
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::MAX,
                f32::MIN,
            ];
            xs.extend((0..20).map(|_| rng.random_range(-1e3f32..1e3)));
            let (lo, hi) = (f32_at_least(m), f32_at_most(m));
            for x in xs {
                assert_eq!(x < lo, f64::from(x) < m, "{x} < {m}");
                assert_eq!(x <= hi, f64::from(x) <= m, "{x} <= {m}");
            }
        }
    }

    #[test]
    fn portable_and_vectorised_masks_agree_with_failures() {
        let many_regions = JobRequirements {
            regions: vec!["r3".into(), "r31".into(), "r39".into(), "r40".into()],
            ..test_jobs()[0].clone()
        };
        for seed in [1, 2, 3, 4] {
            let mut fleet = random_fleet(2_000, seed);
            // 40 regions (past a bitset's 32) and exactly 32
            let spread = [0, 0, 0, 40, 32][seed as usize];
            if spread > 0 {
                for (i, c) in fleet.iter_mut().enumerate() {
                    c.region = format!("r{}", i % spread);
                }
            }
            let index = MatchIndex::new(&fleet);
            let mut jobs = test_jobs();
            jobs.push(many_regions.clone());
            jobs.push(JobRequirements {
                max_response_time_ms: Some(f64::NAN),
                min_uptime: Some(f64::NAN),
                ..Default::default()
            });
            for (j, job) in jobs.iter().enumerate() {
                let mut m = Matcher::new(job, &RankingContext::default());
                m.use_index(&index);
                let want: Vec<u16> = fleet.iter().map(|c| failures(c, job)).collect();
                let (mut portable, mut dispatched) = (Vec::new(), Vec::new());
                m.masks_portable(&index.cols, &mut portable);
                m.masks(&index.cols, &mut dispatched);
                assert_eq!(portable, want, "seed {seed}, job {j}");
                assert_eq!(dispatched, want, "seed {seed}, job {j}");
            }
        }
    }

    #[test]
    fn two_halves_merged_give_the_one_pass_answer() {
        assert_eq!(halfway(&[]), 0);
        assert_eq!(halfway(&[5]), 1);
        assert_eq!(halfway(&[10, 10]), 1);
        assert_eq!(halfway(&[1, 100]), 1);
        assert_eq!(halfway(&[100, 1, 1]), 1);
        assert_eq!(halfway(&[0, 0, 0]), 1);
        assert_eq!(halfway(&[3, 3, 3, 3]), 2);
        assert_eq!(halfway(&[45, 50, 5]), 1);
        assert_eq!(halfway(&[5, 50, 45]), 2);
        assert_eq!(halfway(&[10, 80, 10]), 1);
        let ctx = RankingContext::default();
        let cfg = AnalyticsConfig {
            exploration_share: 0.3,
            min_data_points: 400,
            ..Default::default()
        };
        let fleet = random_fleet(3_000, 9);
        // uneven shards, as placement leaves them
        let mut parts: Vec<Vec<Candidate>> = vec![Vec::new(); 13];
        for (i, c) in fleet.iter().enumerate() {
            parts[(i * i + 3) % 13].push(c.clone());
        }
        let indexes: Vec<CandidateIndex> = parts.into_iter().map(CandidateIndex::new).collect();
        let sizes: Vec<usize> = indexes.iter().map(|x| x.candidates.len()).collect();
        let mid = halfway(&sizes);
        let (a, b): (usize, usize) = (sizes[..mid].iter().sum(), sizes[mid..].iter().sum());
        // no other cut leaves the halves closer
        let best = (1..sizes.len())
            .map(|c| {
                let left: usize = sizes[..c].iter().sum();
                left.abs_diff(3_000 - left)
            })
            .min()
            .unwrap();
        assert_eq!(a.abs_diff(b), best, "{a} vs {b} ({sizes:?})");
        for (j, job) in test_jobs().iter().enumerate() {
            let whole = recommend(&fleet, job, &ctx, &cfg);
            let halves = [&indexes[..mid], &indexes[mid..]].map(|half| half.iter().collect());
            let got = merged_answer(&halves, job, &ctx, &cfg);
            assert_same_answer(&got, &whole, &format!("job {j}"));
        }
    }

    /// The scan's rows stay small: what keeps a 100k-candidate scan within the caches'
    /// reach (a regression here shows as recommendation latency, not as a wrong answer).
    #[test]
    fn hot_rows_are_a_third_of_a_summary() {
        let (hot, summary) = (std::mem::size_of::<Hot>(), std::mem::size_of::<Candidate>());
        assert!(hot <= 52, "a row of {hot} bytes");
        assert!(
            hot * 5 <= summary * 2,
            "a row of {hot} bytes for a summary of {summary}"
        );
    }

    /// The gateway's path — a shortlist per node from one pass over its shards' indexes,
    /// the nodes' shortlists merged, text built last — gives exactly the answer of one pass
    /// over the whole fleet, exploration slots included.
    /// The answer the gateway gives from a shortlist of each group of indexes (one pass a
    /// group), merged.
    fn merged_answer(
        groups: &[Vec<&CandidateIndex>],
        job: &JobRequirements,
        ctx: &RankingContext,
        cfg: &AnalyticsConfig,
    ) -> RecommendationResult {
        let parts: Vec<Shortlist> = groups
            .iter()
            .map(|group| {
                let segments: Vec<Segment<'_>> = group.iter().map(|x| x.segment()).collect();
                shortlist(&segments, job, ctx, cfg)
            })
            .collect();
        finish(merge_shortlists(parts, job.max_results, cfg), job, ctx, cfg)
    }

    /// `got` (a merged answer) is `whole` (the one-pass answer): counts, eliminations and
    /// the recommendations to the bit.
    fn assert_same_answer(got: &RecommendationResult, whole: &RecommendationResult, what: &str) {
        assert_eq!(got.considered, whole.considered, "{what}");
        assert_eq!(got.compatible, whole.compatible, "{what}");
        assert_eq!(got.eliminations, whole.eliminations, "{what}");
        if whole.compatible > 0 {
            assert_eq!(
                format!("{:?}", got.recommendations),
                format!("{:?}", whole.recommendations),
                "{what}"
            );
        } else {
            assert!(got.recommendations.is_empty(), "{what}");
        }
    }

    #[test]
    fn merged_shard_shortlists_give_the_one_pass_answer() {
        let ctx = RankingContext::default();
        let explore = AnalyticsConfig {
            exploration_share: 0.3,
            exploration_seed: 11,
            // most of the random fleet counts as little-known, so exploration has candidates
            min_data_points: 400,
            ..Default::default()
        };
        let mut explored = 0;
        for (j, job) in test_jobs().iter().enumerate() {
            for cfg in [&AnalyticsConfig::default(), &explore] {
                let fleet = random_fleet(3_000, 7);
                let whole = recommend(&fleet, job, &ctx, cfg);
                for shards in [1, 7, 64] {
                    // providers spread over shards by position, shards over 3 nodes
                    let mut parts: Vec<Vec<Candidate>> = vec![Vec::new(); shards];
                    for (i, c) in fleet.iter().enumerate() {
                        parts[(i * 31 + 5) % shards].push(c.clone());
                    }
                    let indexes: Vec<CandidateIndex> =
                        parts.into_iter().map(CandidateIndex::new).collect();
                    // a node scans its shards' indexes in one pass
                    let per_node: Vec<Vec<&CandidateIndex>> = (0..3)
                        .map(|n| indexes.iter().skip(n).step_by(3).collect())
                        .collect();
                    let got = merged_answer(&per_node, job, &ctx, cfg);
                    assert_same_answer(&got, &whole, &format!("job {j}, {shards} shards"));
                    explored += got.recommendations.iter().filter(|r| r.exploration).count();
                }
            }
        }
        assert!(explored > 0, "no exploration pick was exercised");
    }

    fn test_jobs() -> Vec<JobRequirements> {
        let gpu = JobRequirements {
            cpu_cores: 8,
            memory_gb: 32.0,
            gpu_model: Some("a100".into()),
            gpu_count: 1,
            min_vram_gb: 40.0,
            regions: vec!["us-east".into(), "eu-central".into()],
            expected_duration_hours: 4.0,
            max_budget: Some(20.0),
            min_uptime: Some(0.95),
            max_response_time_ms: Some(500.0),
            min_tier: None,
            max_results: 5,
        };
        let cpu = JobRequirements {
            cpu_cores: 8,
            memory_gb: 16.0,
            expected_duration_hours: 2.0,
            max_results: 10,
            ..Default::default()
        };
        vec![
            gpu.clone(),
            cpu.clone(),
            // ties on the score decide by id; many results
            JobRequirements {
                max_results: 300,
                ..cpu.clone()
            },
            JobRequirements {
                max_results: 0,
                ..cpu.clone()
            },
            JobRequirements {
                max_results: 1,
                regions: vec!["eu-west".into(), "EU-WEST".into(), "".into()],
                min_tier: Some(Tier::Gold),
                ..Default::default()
            },
            // a named model alone, a zero and a NaN budget, an infinite duration
            JobRequirements {
                gpu_model: Some("H100".into()),
                max_budget: Some(0.0),
                ..Default::default()
            },
            JobRequirements {
                gpu_count: 2,
                max_budget: Some(f64::NAN),
                ..Default::default()
            },
            JobRequirements {
                memory_gb: 64.0,
                expected_duration_hours: f64::INFINITY,
                max_budget: Some(50.0),
                max_results: 20,
                ..Default::default()
            },
            // nothing fits: the relaxed path, each way
            JobRequirements {
                regions: vec!["mars".into()],
                ..gpu.clone()
            },
            JobRequirements {
                gpu_model: Some("TPU".into()),
                max_results: 7,
                ..cpu.clone()
            },
            JobRequirements {
                cpu_cores: 10_000,
                ..cpu.clone()
            },
        ]
    }
}
