//! Shard placement: a pure function from the live nodes and the previous map to the next map.
//!
//! Guarantees (checked by the tests below):
//! - every logical shard is on a live node, and loads differ by at most one shard;
//! - a shard moves only if its owner left or its owner holds more than its balanced share,
//!   and the shares are chosen so that the fewest shards move (adding a node to `n` moves
//!   `floor(shards / (n + 1))` shards, all to the new node; removing one moves only its own);
//! - the result depends only on the inputs' contents, not on the order of `nodes`.
//!
//! Region-aware here means: a shard that must move prefers a node in the region its previous
//! owner was in (the map records owners' regions, so this works after the owner is gone),
//! keeping a shard's data and traffic in its region when the region has room. Regions never
//! override balance. Placing by provider region would need per-shard region weights, which
//! shards do not carry yet (providers are hashed to shards regardless of region).

use std::collections::{BTreeMap, BTreeSet};

use super::{ClusterError, Epoch, NodeId, NodeInfo, ShardMap};

/// Places `shard_count` logical shards on `nodes` (the live members), moving as few as possible
/// from `previous`. The epoch is the previous one plus one if any shard moved, else unchanged.
pub fn place(
    shard_count: u32,
    nodes: &[NodeInfo],
    previous: Option<&ShardMap>,
) -> Result<ShardMap, ClusterError> {
    if let Some(p) = previous
        && p.shard_count() != shard_count
    {
        return Err(ClusterError::ShardCountMismatch {
            expected: shard_count,
            found: p.shard_count(),
        });
    }
    // sorted and deduplicated, so input order never matters
    let live: BTreeMap<&NodeId, Option<&str>> =
        nodes.iter().map(|n| (&n.id, n.region.as_deref())).collect();
    if live.is_empty() {
        return Err(ClusterError::NoLiveNodes);
    }
    let n = live.len() as u32;
    let (base, extra) = (shard_count / n, (shard_count % n) as usize);

    let prev_owner = |s: usize| previous.map(|p| &p.assignments[s]);
    let mut prev_load: BTreeMap<&NodeId, u32> = live.keys().map(|id| (*id, 0)).collect();
    for s in 0..shard_count as usize {
        if let Some(load) = prev_owner(s).and_then(|o| prev_load.get_mut(o)) {
            *load += 1;
        }
    }
    // the `extra` nodes allowed one more shard are those holding the most already: any other
    // choice makes a fuller node give up a shard that a less full one then has to take
    let mut by_load: Vec<&NodeId> = live.keys().copied().collect();
    by_load.sort_by(|a, b| prev_load[b].cmp(&prev_load[a]).then(a.cmp(b)));
    let capacity: BTreeMap<&NodeId, u32> = by_load
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, base + u32::from(i < extra)))
        .collect();

    // keep every shard whose owner is live and within capacity (lowest shard ids kept first)
    let mut assignments: Vec<Option<&NodeId>> = vec![None; shard_count as usize];
    let mut load: BTreeMap<&NodeId, u32> = live.keys().map(|id| (*id, 0)).collect();
    for (s, slot) in assignments.iter_mut().enumerate() {
        if let Some(owner) = prev_owner(s)
            && let Some((id, l)) = load.get_key_value(owner).map(|(k, v)| (*k, *v))
            && l < capacity[id]
        {
            *slot = Some(id);
            *load.get_mut(id).expect("live node") += 1;
        }
    }

    // the rest go, in shard order, to the node with the most room, preferring the region the
    // shard lived in; ties go to the smaller id
    let home_region = |s: usize| -> Option<&str> {
        let p = previous?;
        p.regions.get(&p.assignments[s]).map(String::as_str)
    };
    for (s, slot) in assignments.iter_mut().enumerate() {
        if slot.is_some() {
            continue;
        }
        let region = home_region(s);
        let target = live
            .iter()
            .filter(|(id, _)| load[*id] < capacity[*id])
            .max_by(|(a, ra), (b, rb)| {
                let in_region = |r: &Option<&str>| region.is_some() && *r == region;
                in_region(ra)
                    .cmp(&in_region(rb))
                    .then((capacity[*a] - load[*a]).cmp(&(capacity[*b] - load[*b])))
                    .then(b.cmp(a))
            })
            .map(|(id, _)| *id)
            .expect("capacities sum to the shard count");
        *slot = Some(target);
        *load.get_mut(target).expect("live node") += 1;
    }

    let assignments: Vec<NodeId> = assignments
        .into_iter()
        .map(|a| a.expect("every shard placed").clone())
        .collect();
    let owners: BTreeSet<&NodeId> = assignments.iter().collect();
    let regions = live
        .iter()
        .filter(|(id, _)| owners.contains(*id))
        .filter_map(|(id, r)| r.map(|r| ((*id).clone(), r.to_owned())))
        .collect();
    let epoch = match previous {
        Some(p) if p.assignments == assignments && p.regions == regions => p.epoch,
        Some(p) => Epoch(p.epoch.0 + 1),
        None => Epoch(1),
    };
    Ok(ShardMap {
        format: ShardMap::FORMAT,
        epoch,
        assignments,
        regions,
        pending: Default::default(),
        pending_since: Default::default(),
        lost: Default::default(),
        refused: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn nodes(ids: &[&str]) -> Vec<NodeInfo> {
        ids.iter().map(|id| NodeInfo::new(*id, None)).collect()
    }

    fn loads(map: &ShardMap) -> BTreeMap<NodeId, u32> {
        let mut l = BTreeMap::new();
        for n in &map.assignments {
            *l.entry(n.clone()).or_default() += 1;
        }
        l
    }

    fn assert_balanced(map: &ShardMap, live: &[NodeInfo]) {
        let l = loads(map);
        for n in &map.assignments {
            assert!(live.iter().any(|x| &x.id == n), "{n} is not live");
        }
        let counts: Vec<u32> = live
            .iter()
            .map(|n| l.get(&n.id).copied().unwrap_or(0))
            .collect();
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "unbalanced: {counts:?}");
    }

    /// The fewest moves any balanced placement needs from `prev` onto `live`: shards of
    /// departed nodes, plus what live nodes hold beyond their share when the `extra` larger
    /// shares go to the fullest nodes.
    fn lower_bound(prev: &ShardMap, live: &[NodeInfo]) -> usize {
        let l = loads(prev);
        let ids: BTreeSet<&NodeId> = live.iter().map(|n| &n.id).collect();
        let orphans = prev.assignments.iter().filter(|o| !ids.contains(o)).count();
        let n = ids.len() as u32;
        let (base, extra) = (prev.shard_count() / n, prev.shard_count() % n);
        let mut held: Vec<u32> = ids
            .iter()
            .map(|id| l.get(*id).copied().unwrap_or(0))
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        let excess: u32 = held
            .iter()
            .enumerate()
            .map(|(i, h)| h.saturating_sub(base + u32::from((i as u32) < extra)))
            .sum();
        orphans + excess as usize
    }

    #[test]
    fn first_placement_is_balanced_and_starts_at_epoch_one() {
        let live = nodes(&["a", "b", "c"]);
        let map = place(256, &live, None).unwrap();
        assert_eq!(map.epoch, Epoch(1));
        assert_eq!(map.shard_count(), 256);
        assert_balanced(&map, &live);
    }

    #[test]
    fn adding_a_fourth_node_moves_a_quarter_removing_one_moves_only_its_shards() {
        let three = nodes(&["a", "b", "c"]);
        let m3 = place(256, &three, None).unwrap();
        let four = nodes(&["a", "b", "c", "d"]);
        let m4 = place(256, &four, Some(&m3)).unwrap();
        assert_balanced(&m4, &four);
        let moved = m4.moved_from(&m3);
        assert_eq!(moved.len(), 64, "256 / 4");
        assert!(
            moved
                .iter()
                .all(|s| m4.owner(*s) == Some(&NodeId("d".into())))
        );
        assert_eq!(m4.epoch, Epoch(2));

        let without_b = nodes(&["a", "c", "d"]);
        let m = place(256, &without_b, Some(&m4)).unwrap();
        assert_balanced(&m, &without_b);
        let moved = m.moved_from(&m4);
        assert_eq!(moved.len(), m4.shards_of(&NodeId("b".into())).count());
        assert!(
            moved
                .iter()
                .all(|s| m4.owner(*s) == Some(&NodeId("b".into())))
        );
    }

    #[test]
    fn an_unchanged_membership_keeps_the_map_and_its_epoch() {
        let live = nodes(&["a", "b"]);
        let m = place(16, &live, None).unwrap();
        assert_eq!(place(16, &live, Some(&m)).unwrap(), m);
    }

    #[test]
    fn no_nodes_and_a_wrong_shard_count_are_errors() {
        assert!(matches!(
            place(8, &[], None),
            Err(ClusterError::NoLiveNodes)
        ));
        let m = place(8, &nodes(&["a"]), None).unwrap();
        assert!(matches!(
            place(16, &nodes(&["a"]), Some(&m)),
            Err(ClusterError::ShardCountMismatch {
                expected: 16,
                found: 8
            })
        ));
    }

    #[test]
    fn shards_of_a_departed_node_stay_in_its_region() {
        let live = vec![
            NodeInfo::new("eu-1", Some("eu")),
            NodeInfo::new("eu-2", Some("eu")),
            NodeInfo::new("eu-3", Some("eu")),
            NodeInfo::new("us-1", Some("us")),
            NodeInfo::new("us-2", Some("us")),
            NodeInfo::new("us-3", Some("us")),
        ];
        let m = place(60, &live, None).unwrap();
        assert_eq!(m.regions.len(), 6);
        let after: Vec<NodeInfo> = live.iter().filter(|n| n.id.0 != "eu-1").cloned().collect();
        let m2 = place(60, &after, Some(&m)).unwrap();
        assert_balanced(&m2, &after);
        // eu-1's 10 shards: the two other eu nodes take 2 each up to the balanced 12, so 4
        // stay in eu and 6 must cross; without regions they would spread by room alone
        let moved = m2.moved_from(&m);
        assert_eq!(moved.len(), 10);
        let to_eu = moved
            .iter()
            .filter(|s| m2.owner(**s).unwrap().0.starts_with("eu"))
            .count();
        assert_eq!(to_eu, 4);
        assert!(m2.regions.keys().all(|id| id.0 != "eu-1"));
    }

    #[test]
    fn shards_prefer_their_region_when_it_has_room() {
        // an eu node is replaced by another while a us node joins: the new eu node takes the
        // departed one's shards up to its share, though us-2 has as much room
        let before = vec![
            NodeInfo::new("eu-1", Some("eu")),
            NodeInfo::new("us-1", Some("us")),
        ];
        let m = place(20, &before, None).unwrap();
        let after = vec![
            NodeInfo::new("eu-2", Some("eu")),
            NodeInfo::new("us-1", Some("us")),
            NodeInfo::new("us-2", Some("us")),
        ];
        let m2 = place(20, &after, Some(&m)).unwrap();
        assert_balanced(&m2, &after);
        for s in m.shards_of(&NodeId("eu-1".into())).take(7) {
            assert_eq!(m2.owner(s).unwrap().0, "eu-2", "shard {s}");
        }
    }

    fn node_set() -> impl Strategy<Value = Vec<NodeInfo>> {
        proptest::collection::btree_set(0u8..24, 1..10).prop_map(|ids| {
            ids.into_iter()
                .map(|i| {
                    let region = ["eu", "us", "ap"][usize::from(i) % 3];
                    NodeInfo::new(format!("n{i:02}"), (i % 4 != 0).then_some(region))
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn any_change_is_balanced_and_moves_the_fewest_shards(
            shards in 1u32..300,
            before in node_set(),
            after in node_set(),
        ) {
            let m1 = place(shards, &before, None).unwrap();
            assert_balanced(&m1, &before);
            let m2 = place(shards, &after, Some(&m1)).unwrap();
            assert_balanced(&m2, &after);
            prop_assert_eq!(m2.moved_from(&m1).len(), lower_bound(&m1, &after));
        }

        #[test]
        fn placement_ignores_input_order(
            shards in 1u32..300,
            before in node_set(),
            after in node_set(),
            seed in any::<u64>(),
        ) {
            let m1 = place(shards, &before, None).unwrap();
            let mut shuffled = after.clone();
            shuffled.rotate_left((seed as usize) % after.len());
            shuffled.reverse();
            prop_assert_eq!(
                place(shards, &after, Some(&m1)).unwrap(),
                place(shards, &shuffled, Some(&m1)).unwrap()
            );
        }

        #[test]
        fn adding_a_node_moves_shards_over_n_plus_one(shards in 1u32..1000, n in 1usize..12) {
            let ids: Vec<String> = (0..=n).map(|i| format!("n{i:02}")).collect();
            let all: Vec<NodeInfo> = ids.iter().map(|id| NodeInfo::new(id.as_str(), None)).collect();
            let m1 = place(shards, &all[..n], None).unwrap();
            let m2 = place(shards, &all, Some(&m1)).unwrap();
            let moved = m2.moved_from(&m1);
            prop_assert_eq!(moved.len() as u32, shards / (n as u32 + 1));
            prop_assert!(moved.iter().all(|s| m2.owner(*s) == Some(&all[n].id)));
        }

        #[test]
        fn removing_a_node_moves_only_its_shards(shards in 1u32..1000, n in 2usize..12, gone in 0usize..12) {
            let all: Vec<NodeInfo> = (0..n).map(|i| NodeInfo::new(format!("n{i:02}"), None)).collect();
            let gone = gone % n;
            let m1 = place(shards, &all, None).unwrap();
            let rest: Vec<NodeInfo> = all.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, x)| x.clone()).collect();
            let m2 = place(shards, &rest, Some(&m1)).unwrap();
            let moved = m2.moved_from(&m1);
            prop_assert_eq!(moved.len(), m1.shards_of(&all[gone].id).count());
            prop_assert!(moved.iter().all(|s| m1.owner(*s) == Some(&all[gone].id)));
        }
    }
}
