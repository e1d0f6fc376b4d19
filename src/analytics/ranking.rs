//! Multi-criteria ranking, tiers with hysteresis, top-k and the k-way merge of shard top-k
//! lists.
//!
//! Rankings read compact [`ProviderSummary`] records, never full states, so a shard can rank
//! its providers and the coordinator can merge the shards' lists. Order is total and
//! deterministic: higher score first, then the smaller provider id.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use serde::{Deserialize, Serialize};

use crate::analytics::network::ProviderSummary;
use crate::analytics::score::{ScoreDistribution, clamp_score, relative_score, uptime_score};
use crate::config::{RankingWeights, TierFloors};
use crate::model::ProviderId;

/// Provider tiers, ordered from the lowest: `Tier::Platinum > Tier::Gold`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Tier {
    #[default]
    Basic,
    Bronze,
    Silver,
    Gold,
    Platinum,
}

impl Tier {
    /// Every tier, the highest first.
    pub const DESCENDING: [Tier; 5] = [
        Tier::Platinum,
        Tier::Gold,
        Tier::Silver,
        Tier::Bronze,
        Tier::Basic,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Basic => "Basic",
            Tier::Bronze => "Bronze",
            Tier::Silver => "Silver",
            Tier::Gold => "Gold",
            Tier::Platinum => "Platinum",
        }
    }
}

/// The minimum composite score of each tier, as the coordinator publishes them: the larger
/// of the tier's floor and the score at its percentile (top 5/20/50/80 %).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierCutoffs {
    pub platinum: f64,
    pub gold: f64,
    pub silver: f64,
    pub bronze: f64,
}

impl Default for TierCutoffs {
    /// The floors alone (what applies before any distribution is known).
    fn default() -> Self {
        Self::from_distribution(&ScoreDistribution::empty(), &TierFloors::default())
    }
}

impl TierCutoffs {
    /// Cut-offs from the network's score distribution: being in the top 5 % means scoring
    /// at least the 95th percentile.
    pub fn from_distribution(dist: &ScoreDistribution, floors: &TierFloors) -> Self {
        let at = |p: f64, floor: f64| dist.quantile(p).map_or(floor, |q| q.max(floor));
        Self {
            platinum: at(95.0, floors.platinum),
            gold: at(80.0, floors.gold),
            silver: at(50.0, floors.silver),
            bronze: at(20.0, floors.bronze),
        }
    }

    /// The minimum score of `tier` (Basic has none).
    pub fn cutoff(&self, tier: Tier) -> f64 {
        match tier {
            Tier::Platinum => self.platinum,
            Tier::Gold => self.gold,
            Tier::Silver => self.silver,
            Tier::Bronze => self.bronze,
            Tier::Basic => f64::NEG_INFINITY,
        }
    }

    /// The highest tier whose cut-off `score` reaches.
    pub fn tier_for(&self, score: f64) -> Tier {
        Tier::DESCENDING
            .into_iter()
            .find(|t| score >= self.cutoff(*t))
            .unwrap_or(Tier::Basic)
    }

    /// The tier with hysteresis: promotion needs the cut-off itself, but a provider keeps a
    /// tier it held (or falls to the highest tier in between) until it drops more than
    /// `margin_points` below that tier's cut-off, so one on a boundary does not flap.
    pub fn tier_with_hysteresis(
        &self,
        score: f64,
        previous: Option<Tier>,
        margin_points: f64,
    ) -> Tier {
        let raw = self.tier_for(score);
        let margin = if margin_points.is_finite() {
            margin_points.max(0.0)
        } else {
            0.0
        };
        match previous {
            Some(prev) if prev > raw => Tier::DESCENDING
                .into_iter()
                .filter(|t| *t <= prev && *t > raw)
                .find(|t| score >= self.cutoff(*t) - margin)
                .unwrap_or(raw),
            _ => raw,
        }
    }
}

/// A score with a provider key, ordered best first: a greater `Scored` has the higher
/// score, or on a tie the smaller id. Scores must not be NaN (every score here is finite).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored<I> {
    pub score: f64,
    pub id: I,
}

impl<I: Ord> Eq for Scored<I> {}

impl<I: Ord> PartialOrd for Scored<I> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<I: Ord> Ord for Scored<I> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.id.cmp(&self.id))
    }
}

/// A bounded min-heap keeping the `k` greatest items pushed: O(log k) a push, O(k)
/// memory.
#[derive(Clone, Debug)]
pub struct TopK<T: Ord> {
    k: usize,
    heap: BinaryHeap<Reverse<T>>,
}

impl<T: Ord> TopK<T> {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k.saturating_add(1).min(1 << 16)),
        }
    }

    pub fn push(&mut self, x: T) {
        if self.heap.len() < self.k {
            self.heap.push(Reverse(x));
        } else if let Some(mut min) = self.heap.peek_mut()
            && x > min.0
        {
            *min = Reverse(x);
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The kept items, greatest first.
    pub fn into_sorted_vec(self) -> Vec<T> {
        // ascending order of Reverse<T> is descending order of T
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.0)
            .collect()
    }
}

/// The `k` greatest items, greatest first, in O(n log k) time and O(k) memory.
pub fn top_k<T: Ord>(items: impl IntoIterator<Item = T>, k: usize) -> Vec<T> {
    let mut top = TopK::new(k);
    for x in items {
        top.push(x);
    }
    top.into_sorted_vec()
}

/// Merge lists that are each sorted greatest first (per-shard top-k lists) into the global
/// first `k`, in O(k log m) for m lists. Items are assumed distinct across lists (a
/// provider lives in one shard).
pub fn merge_top_k<T: Ord + Clone>(lists: &[Vec<T>], k: usize) -> Vec<T> {
    struct Head<'a, T> {
        item: &'a T,
        list: usize,
        pos: usize,
    }
    impl<T: Ord> PartialEq for Head<'_, T> {
        fn eq(&self, o: &Self) -> bool {
            self.item == o.item
        }
    }
    impl<T: Ord> Eq for Head<'_, T> {}
    impl<T: Ord> PartialOrd for Head<'_, T> {
        fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
            Some(self.cmp(o))
        }
    }
    impl<T: Ord> Ord for Head<'_, T> {
        fn cmp(&self, o: &Self) -> Ordering {
            self.item.cmp(o.item)
        }
    }
    let mut heap: BinaryHeap<Head<'_, T>> = lists
        .iter()
        .enumerate()
        .filter_map(|(list, l)| l.first().map(|item| Head { item, list, pos: 0 }))
        .collect();
    let mut out = Vec::with_capacity(k.min(lists.iter().map(Vec::len).sum()));
    while out.len() < k {
        let Some(h) = heap.pop() else { break };
        out.push(h.item.clone());
        if let Some(item) = lists[h.list].get(h.pos + 1) {
            heap.push(Head {
                item,
                list: h.list,
                pos: h.pos + 1,
            });
        }
    }
    out
}

/// Network references for the relative criteria (cost, speed), published by the
/// coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankingContext {
    /// Median of price per hour / capability unit across the network.
    pub median_price_per_unit: f64,
    pub median_response_time_ms: f64,
}

impl Default for RankingContext {
    fn default() -> Self {
        Self {
            median_price_per_unit: 0.05,
            median_response_time_ms: 250.0,
        }
    }
}

/// A provider's capability in "units": one a CPU core, one per 8 GB of memory, and per GPU
/// 8 plus one per 2 GB of VRAM (an 80 GB A100 is 48 units). Never below 1.
pub fn capability_units(cpu_cores: u32, memory_gb: f64, gpu_count: u32, vram_gb: f64) -> f64 {
    let mem = if memory_gb.is_finite() {
        memory_gb.max(0.0)
    } else {
        0.0
    };
    let vram = if vram_gb.is_finite() {
        vram_gb.max(0.0)
    } else {
        0.0
    };
    (f64::from(cpu_cores) + mem / 8.0 + f64::from(gpu_count) * (8.0 + vram / 2.0)).max(1.0)
}

/// Price per hour and capability unit of a summary.
pub fn price_per_unit(s: &ProviderSummary) -> f64 {
    price_per_unit_of(
        s.price_per_hour,
        s.cpu_cores,
        s.memory_gb,
        s.gpu_count,
        s.vram_gb,
    )
}

/// [`price_per_unit`] from a summary's fields.
pub fn price_per_unit_of(
    price_per_hour: f32,
    cpu_cores: u32,
    memory_gb: f32,
    gpu_count: u16,
    vram_gb: f32,
) -> f64 {
    f64::from(price_per_hour).max(0.0)
        / capability_units(
            cpu_cores,
            f64::from(memory_gb),
            u32::from(gpu_count),
            f64::from(vram_gb),
        )
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    Some(*m)
}

impl RankingContext {
    /// Medians over the summaries in O(n); the defaults where there is nothing to measure.
    pub fn from_summaries(summaries: &[ProviderSummary]) -> Self {
        let d = Self::default();
        let price = median(
            summaries
                .iter()
                .map(price_per_unit)
                .filter(|p| *p > 0.0)
                .collect(),
        );
        let rt = median(
            summaries
                .iter()
                .map(|s| f64::from(s.response_time_ms))
                .filter(|r| *r > 0.0)
                .collect(),
        );
        Self {
            median_price_per_unit: price.unwrap_or(d.median_price_per_unit),
            median_response_time_ms: rt.unwrap_or(d.median_response_time_ms),
        }
    }
}

/// The five ranking criteria of a provider, each 0–100.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CriterionScores {
    /// The composite performance score.
    pub performance: f64,
    /// The reliability score (MTBF, MTTR, failure streaks).
    pub reliability: f64,
    /// Price per capability unit against the network median: 50 at the median, 80 at
    /// half of it, 100 when free.
    pub cost: f64,
    /// `100·uptime^4`, halved while the provider is offline.
    pub availability: f64,
    /// Response time against the network median: 50 at the median.
    pub speed: f64,
}

/// Which score a ranking orders by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RankingCategory {
    /// The weighted sum of the five criteria.
    #[default]
    Overall,
    Performance,
    Reliability,
    Cost,
    Availability,
    Speed,
}

fn positive_or(x: f64, d: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { d }
}

impl RankingContext {
    /// The median price per capability unit, or the default's when it is not a usable
    /// (positive, finite) price.
    pub fn unit_price(&self) -> f64 {
        positive_or(
            self.median_price_per_unit,
            RankingContext::default().median_price_per_unit,
        )
    }
}

/// The cost criterion: a price per capability unit against the network's `unit_price`.
pub fn cost_score(price_per_unit: f64, unit_price: f64) -> f64 {
    relative_score(price_per_unit / unit_price, 1.0)
}

/// The criteria of one provider.
pub fn criterion_scores(s: &ProviderSummary, ctx: &RankingContext) -> CriterionScores {
    let d = RankingContext::default();
    let unit_price = ctx.unit_price();
    let rt = positive_or(ctx.median_response_time_ms, d.median_response_time_ms);
    let avail = uptime_score(f64::from(s.uptime_ratio)) * if s.online { 1.0 } else { 0.5 };
    CriterionScores {
        performance: clamp_score(f64::from(s.performance_score)),
        reliability: clamp_score(f64::from(s.reliability_score)),
        cost: cost_score(price_per_unit(s), unit_price),
        availability: clamp_score(avail),
        speed: relative_score(f64::from(s.response_time_ms) / rt, 1.0),
    }
}

/// The score a category ranks by (overall: normalised weighted sum).
pub fn category_score(c: &CriterionScores, category: RankingCategory, w: &RankingWeights) -> f64 {
    match category {
        RankingCategory::Performance => c.performance,
        RankingCategory::Reliability => c.reliability,
        RankingCategory::Cost => c.cost,
        RankingCategory::Availability => c.availability,
        RankingCategory::Speed => c.speed,
        RankingCategory::Overall => {
            let pairs = [
                (c.performance, w.performance),
                (c.reliability, w.reliability),
                (c.cost, w.cost),
                (c.availability, w.availability),
                (c.speed, w.speed),
            ];
            let ok = |w: f64| if w.is_finite() { w.max(0.0) } else { 0.0 };
            let total: f64 = pairs.iter().map(|(_, w)| ok(*w)).sum();
            if total <= 0.0 {
                return clamp_score(pairs.iter().map(|(s, _)| s).sum::<f64>() / 5.0);
            }
            clamp_score(pairs.iter().map(|(s, w)| s * ok(*w)).sum::<f64>() / total)
        }
    }
}

/// Which providers a ranking includes (every `None` matches all).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RankingFilter {
    pub region: Option<String>,
    pub gpu_model: Option<String>,
    /// Exactly this tier.
    pub tier: Option<Tier>,
    /// This tier or a higher one.
    pub min_tier: Option<Tier>,
    pub min_data_points: Option<u32>,
}

impl RankingFilter {
    pub fn matches(&self, s: &ProviderSummary) -> bool {
        self.region.as_ref().is_none_or(|r| *r == s.region)
            && self.gpu_model.as_ref().is_none_or(|m| {
                s.gpu_model
                    .as_ref()
                    .is_some_and(|g| g.eq_ignore_ascii_case(m))
            })
            && self.tier.is_none_or(|t| t == s.tier)
            && self.min_tier.is_none_or(|t| s.tier >= t)
            && self.min_data_points.is_none_or(|n| s.data_points >= n)
    }
}

/// One line of a ranking.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderRanking {
    pub provider_id: ProviderId,
    /// 1-based.
    pub rank: u32,
    pub category: RankingCategory,
    /// The score ranked by.
    pub score: f64,
    pub criteria: CriterionScores,
    pub tier: Tier,
    pub region: String,
    pub gpu_model: Option<String>,
    pub previous_rank: Option<u32>,
    /// previous rank − rank: positive when the provider moved up; `None` when it is new.
    pub rank_change: Option<i64>,
}

/// A ranking request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RankingQuery {
    pub category: RankingCategory,
    pub filter: RankingFilter,
    /// How many lines to return.
    pub limit: usize,
}

/// The first `query.limit` providers matching the filter, by the query's category, in
/// O(n log limit); rank changes against `previous` (provider → previous rank).
pub fn rank_providers(
    summaries: &[ProviderSummary],
    query: &RankingQuery,
    weights: &RankingWeights,
    ctx: &RankingContext,
    previous: &HashMap<ProviderId, u32>,
) -> Vec<ProviderRanking> {
    let scored = summaries
        .iter()
        .enumerate()
        .filter(|(_, s)| query.filter.matches(s))
        .map(|(i, s)| {
            let score = category_score(&criterion_scores(s, ctx), query.category, weights);
            Scored {
                score,
                id: (&s.id, i),
            }
        });
    top_k(scored, query.limit)
        .into_iter()
        .enumerate()
        .map(|(pos, sc)| {
            let s = &summaries[sc.id.1];
            let rank = pos as u32 + 1;
            let previous_rank = previous.get(&s.id).copied();
            ProviderRanking {
                provider_id: s.id.clone(),
                rank,
                category: query.category,
                score: sc.score,
                criteria: criterion_scores(s, ctx),
                tier: s.tier,
                region: s.region.clone(),
                gpu_model: s.gpu_model.clone(),
                previous_rank,
                rank_change: previous_rank.map(|p| i64::from(p) - i64::from(rank)),
            }
        })
        .collect()
}

/// A shard's best `k` by one category, as (score, id) pairs sorted best first, for the
/// coordinator's [`merge_top_k`].
pub fn shard_top_k(
    summaries: &[ProviderSummary],
    category: RankingCategory,
    weights: &RankingWeights,
    ctx: &RankingContext,
    k: usize,
) -> Vec<Scored<ProviderId>> {
    let scored = summaries.iter().map(|s| Scored {
        score: category_score(&criterion_scores(s, ctx), category, weights),
        id: &s.id,
    });
    top_k(scored, k)
        .into_iter()
        .map(|s| Scored {
            score: s.score,
            id: s.id.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str, perf: f32) -> ProviderSummary {
        ProviderSummary {
            id: ProviderId::new(id),
            region: "eu".into(),
            cpu_cores: 8,
            memory_gb: 32.0,
            price_per_hour: 0.6,
            performance_score: perf,
            reliability_score: 80.0,
            uptime_ratio: 0.99,
            response_time_ms: 250.0,
            online: true,
            data_points: 20,
            ..Default::default()
        }
    }

    fn high_cutoffs() -> TierCutoffs {
        // 90.0, 90.1, ..., 100.0: q(p) = 90 + p/10
        let mut v: Vec<f64> = (0..=100).map(|i| 90.0 + f64::from(i) / 10.0).collect();
        TierCutoffs::from_distribution(
            &ScoreDistribution::from_scores(&mut v),
            &TierFloors::default(),
        )
    }

    #[test]
    fn tier_cutoffs_take_the_larger_of_percentile_and_floor() {
        let c = high_cutoffs();
        assert!((c.platinum - 99.5).abs() < 1e-9);
        assert!((c.gold - 98.0).abs() < 1e-9);
        assert!((c.silver - 95.0).abs() < 1e-9);
        assert!((c.bronze - 92.0).abs() < 1e-9);
        // scores 0..=100: percentiles 95/80/50/20 are below the floors except platinum's
        let mut v: Vec<f64> = (0..=100).map(f64::from).collect();
        let low = TierCutoffs::from_distribution(
            &ScoreDistribution::from_scores(&mut v),
            &TierFloors::default(),
        );
        assert_eq!(
            (low.platinum, low.gold, low.silver, low.bronze),
            (95.0, 85.0, 75.0, 65.0)
        );
        assert_eq!(TierCutoffs::default(), low);
    }

    #[test]
    fn tier_boundaries() {
        let c = high_cutoffs();
        assert_eq!(c.tier_for(100.0), Tier::Platinum);
        assert_eq!(c.tier_for(99.5), Tier::Platinum);
        assert_eq!(c.tier_for(99.49), Tier::Gold);
        assert_eq!(c.tier_for(98.0), Tier::Gold);
        assert_eq!(c.tier_for(97.99), Tier::Silver);
        assert_eq!(c.tier_for(95.0), Tier::Silver);
        assert_eq!(c.tier_for(94.99), Tier::Bronze);
        assert_eq!(c.tier_for(92.0), Tier::Bronze);
        assert_eq!(c.tier_for(91.99), Tier::Basic);
        let floors = TierCutoffs::default();
        assert_eq!(floors.tier_for(95.0), Tier::Platinum);
        assert_eq!(floors.tier_for(84.9), Tier::Silver);
        assert_eq!(floors.tier_for(64.9), Tier::Basic);
    }

    #[test]
    fn hysteresis_keeps_a_tier_within_the_margin() {
        let c = high_cutoffs();
        // 98 is 1.5 below platinum's 99.5: kept with a margin of 2
        assert_eq!(
            c.tier_with_hysteresis(98.0, Some(Tier::Platinum), 2.0),
            Tier::Platinum
        );
        assert_eq!(c.tier_with_hysteresis(98.0, None, 2.0), Tier::Gold);
        // 97.4 is beyond platinum's margin (97.5) but within gold's (96): one step down
        assert_eq!(
            c.tier_with_hysteresis(97.4, Some(Tier::Platinum), 2.0),
            Tier::Gold
        );
        // 90 is exactly bronze's 92 − 2: still bronze; below every margin, the raw tier
        assert_eq!(
            c.tier_with_hysteresis(90.0, Some(Tier::Platinum), 2.0),
            Tier::Bronze
        );
        assert_eq!(
            c.tier_with_hysteresis(89.9, Some(Tier::Platinum), 2.0),
            Tier::Basic
        );
        // promotion needs the cut-off itself
        assert_eq!(
            c.tier_with_hysteresis(99.4, Some(Tier::Silver), 2.0),
            Tier::Gold
        );
        assert_eq!(
            c.tier_with_hysteresis(98.0, Some(Tier::Gold), 0.0),
            Tier::Gold
        );
        // a provider oscillating around the gold cut-off keeps gold once it got there
        let mut tier = None;
        let mut seen = Vec::new();
        for s in [98.1, 97.9, 98.05, 97.2, 98.2] {
            let t = c.tier_with_hysteresis(s, tier, 2.0);
            seen.push(t);
            tier = Some(t);
        }
        assert!(seen.iter().all(|t| *t == Tier::Gold), "{seen:?}");
    }

    #[test]
    fn top_k_is_sorted_best_first_with_id_tie_break() {
        let items =
            [(5.0, "c"), (7.0, "a"), (5.0, "b"), (1.0, "d"), (7.0, "e")].map(|(score, id)| {
                Scored {
                    score,
                    id: id.to_string(),
                }
            });
        let got: Vec<_> = top_k(items.iter().cloned(), 3)
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(got, ["a", "e", "b"]);
        assert!(top_k(items.iter().cloned(), 0).is_empty());
        assert_eq!(top_k(items.iter().cloned(), 10).len(), 5);
    }

    #[test]
    fn merge_of_sorted_lists() {
        let l = |v: &[(f64, &str)]| {
            v.iter()
                .map(|(s, i)| Scored {
                    score: *s,
                    id: i.to_string(),
                })
                .collect::<Vec<_>>()
        };
        let lists = vec![
            l(&[(9.0, "a"), (4.0, "b")]),
            l(&[]),
            l(&[(9.0, "0"), (8.0, "c"), (1.0, "z")]),
        ];
        let got: Vec<_> = merge_top_k(&lists, 4).into_iter().map(|s| s.id).collect();
        assert_eq!(got, ["0", "a", "c", "b"]);
        assert_eq!(merge_top_k(&lists, 99).len(), 5);
    }

    #[test]
    fn criteria_by_hand() {
        let ctx = RankingContext {
            median_price_per_unit: 0.05,
            median_response_time_ms: 250.0,
        };
        // 8 cores + 32/8 = 12 units at 0.6 → 0.05 a unit: the median → 50
        let s = summary("a", 90.0);
        let c = criterion_scores(&s, &ctx);
        // prices are f32 in a summary: 0.6 is off by 2e-8, hence the 1e-4 tolerances
        assert!((c.cost - 50.0).abs() < 1e-4);
        assert!((c.speed - 50.0).abs() < 1e-9);
        assert!((c.availability - 100.0 * 0.99f64.powi(4)).abs() < 1e-4);
        let cheap = ProviderSummary {
            price_per_hour: 0.3,
            response_time_ms: 125.0,
            online: false,
            ..s.clone()
        };
        let c2 = criterion_scores(&cheap, &ctx);
        assert!((c2.cost - 80.0).abs() < 1e-4);
        assert!((c2.speed - 80.0).abs() < 1e-9);
        assert!((c2.availability - c.availability / 2.0).abs() < 1e-9);
        let w = RankingWeights::default();
        let want = 0.30 * 90.0 + 0.25 * 80.0 + 0.20 * 50.0 + 0.15 * c.availability + 0.10 * 50.0;
        assert!((category_score(&c, RankingCategory::Overall, &w) - want).abs() < 1e-4);
        assert_eq!(category_score(&c, RankingCategory::Cost, &w), c.cost);
        assert!((capability_units(0, 0.0, 1, 80.0) - 48.0).abs() < 1e-12);
    }

    #[test]
    fn ranking_filters_and_rank_change() {
        let mut v = vec![
            summary("a", 70.0),
            summary("b", 90.0),
            summary("c", 80.0),
            summary("d", 95.0),
        ];
        v[3].region = "us".into();
        v[1].gpu_model = Some("A100".into());
        v[1].tier = Tier::Gold;
        let ctx = RankingContext::from_summaries(&v);
        let w = RankingWeights::default();
        let prev: HashMap<_, _> = [(ProviderId::new("c"), 1u32), (ProviderId::new("b"), 2)]
            .into_iter()
            .collect();
        let q = RankingQuery {
            category: RankingCategory::Performance,
            filter: RankingFilter {
                region: Some("eu".into()),
                ..Default::default()
            },
            limit: 10,
        };
        let r = rank_providers(&v, &q, &w, &ctx, &prev);
        let ids: Vec<_> = r.iter().map(|x| x.provider_id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "a"]);
        assert_eq!(r[0].rank_change, Some(1));
        assert_eq!(r[1].rank_change, Some(-1));
        assert_eq!(r[2].rank_change, None);
        assert_eq!(r[0].score, 90.0);
        let q = RankingQuery {
            filter: RankingFilter {
                gpu_model: Some("a100".into()),
                min_tier: Some(Tier::Silver),
                ..Default::default()
            },
            ..q
        };
        assert_eq!(rank_providers(&v, &q, &w, &ctx, &prev).len(), 1);
        let q = RankingQuery {
            filter: RankingFilter {
                min_data_points: Some(21),
                ..Default::default()
            },
            ..q
        };
        assert!(rank_providers(&v, &q, &w, &ctx, &prev).is_empty());
    }

    #[test]
    fn shard_top_k_merges_into_the_global_ranking() {
        let all: Vec<_> = (0..40)
            .map(|i| summary(&format!("p{i:02}"), (i * 37 % 23) as f32 * 4.0))
            .collect();
        let ctx = RankingContext::default();
        let w = RankingWeights::default();
        let shards: Vec<_> = all
            .chunks(7)
            .map(|c| shard_top_k(c, RankingCategory::Overall, &w, &ctx, 5))
            .collect();
        let merged = merge_top_k(&shards, 5);
        assert_eq!(
            merged,
            shard_top_k(&all, RankingCategory::Overall, &w, &ctx, 5)
        );
    }
}
