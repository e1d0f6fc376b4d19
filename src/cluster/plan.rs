//! The coordinator's next shard map: pure, from the members, the previous map and the nodes
//! still inside their grace period.
//!
//! [`place`](super::place) says where every shard *should* be. This module turns that into a
//! map the cluster can reach without losing anything:
//! - a shard whose owner is alive (draining or not) is never taken from it: it is marked in
//!   motion (`pending[s] = target`) and the owner hands it off ([`flip`] ends the move);
//! - a shard whose owner died stays with it while the owner is in its grace period (it may
//!   come back with its disk); the shard answers UNAVAILABLE meanwhile;
//! - after the grace period it is reassigned at once and recorded as lost.

use std::collections::{BTreeMap, BTreeSet};

use super::{ClusterError, Epoch, LostShard, NodeId, NodeInfo, ShardId, ShardMap, place};

/// What a planning round decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub map: ShardMap,
    /// Shards reassigned away from dead owners in this round.
    pub lost: Vec<LostShard>,
}

/// The next map, or `None` when the stored one already says it all (or no node can take
/// shards). `members` are the registered nodes; `in_grace` the departed owners still waited
/// for; `now` stamps lost shards.
pub fn plan(
    shard_count: u32,
    members: &[NodeInfo],
    previous: Option<&ShardMap>,
    in_grace: &BTreeSet<NodeId>,
    now: i64,
) -> Result<Option<Plan>, ClusterError> {
    let alive: BTreeSet<&NodeId> = members.iter().map(|n| &n.id).collect();
    let mut targets: Vec<NodeInfo> = members.iter().filter(|n| !n.draining).cloned().collect();
    if targets.is_empty() {
        return Ok(None);
    }
    let target_ids: BTreeSet<NodeId> = targets.iter().map(|n| n.id.clone()).collect();
    // nodes in their grace period keep their share: place them as if alive
    for id in in_grace {
        if !alive.contains(id) {
            let region = previous.and_then(|p| p.regions.get(id)).map(String::as_str);
            targets.push(NodeInfo::new(id.0.clone(), region));
        }
    }
    let ideal = place(shard_count, &targets, previous)?;
    let Some(prev) = previous else {
        // the first map: nothing to hand off; waiting nodes do not exist yet
        let mut map = ideal;
        map.epoch = Epoch(1);
        return Ok(Some(Plan {
            map,
            lost: Vec::new(),
        }));
    };
    let mut next = prev.clone();
    next.pending.clear();
    let mut lost = Vec::new();
    // load of the real targets, for shards `place` gave to a node only waited for
    let mut load: BTreeMap<NodeId, u32> = target_ids.iter().map(|id| (id.clone(), 0)).collect();
    for a in &ideal.assignments {
        if let Some(l) = load.get_mut(a) {
            *l += 1;
        }
    }
    for s in 0..shard_count as usize {
        let owner = &prev.assignments[s];
        let mut want = ideal.assignments[s].clone();
        if want != *owner && in_grace.contains(&want) && !alive.contains(&want) {
            // never move a shard *to* a node that is gone: to the least loaded live one
            let (id, l) = load
                .iter_mut()
                .min_by(|a, b| (*a.1).cmp(&*b.1).then(a.0.cmp(b.0)))
                .expect("targets is not empty");
            *l += 1;
            want = id.clone();
        }
        if want == *owner {
            continue;
        }
        if alive.contains(owner) {
            next.pending.insert(s as u32, want);
        } else if in_grace.contains(owner) {
            // keep it with its owner until the grace period ends
        } else {
            lost.push(LostShard {
                shard: s as u32,
                node: owner.clone(),
                at: now,
            });
            next.assignments[s] = want;
        }
    }
    // a move the plan keeps keeps the epoch that planned it; a new or changed one is this
    // map's (see `ShardMap::pending_since`)
    let epoch = Epoch(prev.epoch.0 + 1);
    next.pending_since = next
        .pending
        .iter()
        .map(|(s, to)| {
            let since = match prev.move_of(ShardId(*s)) {
                Some((was, since)) if was == to => since,
                _ => epoch,
            };
            (*s, since)
        })
        .collect();
    next.lost.extend(lost.iter().cloned());
    let excess = next.lost.len().saturating_sub(ShardMap::MAX_LOST);
    next.lost.drain(..excess);
    next.regions = regions_of(&next, members, prev);
    if next.assignments == prev.assignments
        && next.pending == prev.pending
        && next.regions == prev.regions
    {
        return Ok(None);
    }
    next.epoch = epoch;
    Ok(Some(Plan { map: next, lost }))
}

/// The region of every node the map names (owners and targets), from the members, else as
/// the previous map recorded it.
fn regions_of(map: &ShardMap, members: &[NodeInfo], prev: &ShardMap) -> BTreeMap<NodeId, String> {
    let named: BTreeSet<&NodeId> = map.assignments.iter().chain(map.pending.values()).collect();
    named
        .into_iter()
        .filter_map(|id| {
            let r = members
                .iter()
                .find(|m| &m.id == id)
                .and_then(|m| m.region.clone())
                .or_else(|| prev.regions.get(id).cloned())?;
            Some((id.clone(), r))
        })
        .collect()
}

/// Ends the move of `shard` from `from` to `to` that the map of epoch `planned_at` planned:
/// the map with `to` as owner, or `None` if the map no longer says that move is under way
/// (another plan replaced it, even by the same move planned again).
pub fn flip(
    map: &ShardMap,
    shard: ShardId,
    from: &NodeId,
    to: &NodeId,
    planned_at: Epoch,
) -> Option<ShardMap> {
    if map.owner(shard) != Some(from) || map.move_of(shard) != Some((to, planned_at)) {
        return None;
    }
    let mut next = map.clone();
    next.assignments[shard.0 as usize] = to.clone();
    next.pending.remove(&shard.0);
    next.pending_since.remove(&shard.0);
    next.epoch = Epoch(map.epoch.0 + 1);
    let named: BTreeSet<&NodeId> = next
        .assignments
        .iter()
        .chain(next.pending.values())
        .collect();
    next.regions.retain(|id, _| named.contains(id));
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[&str]) -> Vec<NodeInfo> {
        ids.iter().map(|id| NodeInfo::new(*id, None)).collect()
    }

    fn first(ids: &[&str]) -> ShardMap {
        plan(12, &nodes(ids), None, &BTreeSet::new(), 0)
            .unwrap()
            .unwrap()
            .map
    }

    fn count(map: &ShardMap, id: &str) -> usize {
        map.assignments.iter().filter(|n| n.0 == id).count()
    }

    #[test]
    fn a_joining_node_gets_shards_by_handoff_not_by_decree() {
        let m = first(&["a", "b", "c"]);
        let p = plan(
            12,
            &nodes(&["a", "b", "c", "d"]),
            Some(&m),
            &BTreeSet::new(),
            0,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            p.map.assignments, m.assignments,
            "owners keep shards until handed off"
        );
        assert_eq!(
            p.map.pending.len(),
            3,
            "12 shards over 4 nodes: 3 move to d"
        );
        assert!(p.map.pending.values().all(|t| t.0 == "d"));
        assert!(p.lost.is_empty());
        // once every move flipped, planning again changes nothing
        let mut m2 = p.map.clone();
        for (s, t) in p.map.pending.clone() {
            let from = m2.assignments[s as usize].clone();
            m2 = flip(&m2, ShardId(s), &from, &t, p.map.epoch).unwrap();
        }
        assert_eq!(count(&m2, "d"), 3);
        assert!(
            plan(
                12,
                &nodes(&["a", "b", "c", "d"]),
                Some(&m2),
                &BTreeSet::new(),
                0
            )
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn a_draining_node_hands_everything_off() {
        let m = first(&["a", "b", "c"]);
        let mut members = nodes(&["a", "b", "c"]);
        members[2].draining = true;
        let p = plan(12, &members, Some(&m), &BTreeSet::new(), 0)
            .unwrap()
            .unwrap();
        assert_eq!(p.map.pending.len(), 4);
        assert!(p.map.pending.values().all(|t| t.0 != "c"));
        assert!(
            p.map
                .pending
                .keys()
                .all(|s| p.map.assignments[*s as usize].0 == "c")
        );
    }

    #[test]
    fn a_dead_node_keeps_its_shards_through_the_grace_period_then_they_are_lost() {
        let m = first(&["a", "b", "c"]);
        let grace: BTreeSet<NodeId> = [NodeId("c".into())].into();
        assert!(
            plan(12, &nodes(&["a", "b"]), Some(&m), &grace, 0)
                .unwrap()
                .is_none(),
            "nothing moves while c may come back"
        );
        // a node joining meanwhile takes nothing from c
        let p = plan(12, &nodes(&["a", "b", "d"]), Some(&m), &grace, 0)
            .unwrap()
            .unwrap();
        assert_eq!(count(&p.map, "c"), 4);
        assert!(p.map.pending.values().all(|t| t.0 != "c"));
        // grace over: c's shards are reassigned and reported
        let p = plan(12, &nodes(&["a", "b"]), Some(&m), &BTreeSet::new(), 77)
            .unwrap()
            .unwrap();
        assert_eq!(count(&p.map, "c"), 0);
        assert_eq!(p.lost.len(), 4);
        assert!(p.lost.iter().all(|l| l.node.0 == "c" && l.at == 77));
        assert_eq!(p.map.lost, p.lost);
        assert_eq!(count(&p.map, "a") + count(&p.map, "b"), 12);
    }

    #[test]
    fn flip_refuses_a_move_the_map_no_longer_describes() {
        let m = first(&["a", "b"]);
        let p = plan(12, &nodes(&["a", "b", "c"]), Some(&m), &BTreeSet::new(), 0)
            .unwrap()
            .unwrap();
        let (s, t) = p
            .map
            .pending
            .iter()
            .next()
            .map(|(s, t)| (*s, t.clone()))
            .unwrap();
        let from = p.map.assignments[s as usize].clone();
        let e = p.map.epoch;
        assert!(flip(&p.map, ShardId(s), &from, &NodeId("zz".into()), e).is_none());
        assert!(flip(&p.map, ShardId(s), &t, &t, e).is_none());
        assert!(flip(&p.map, ShardId(s), &from, &t, Epoch(e.0 - 1)).is_none());
        let f = flip(&p.map, ShardId(s), &from, &t, e).unwrap();
        assert_eq!(f.owner(ShardId(s)), Some(&t));
        assert_eq!(f.epoch.0, p.map.epoch.0 + 1);
        assert!(f.move_of(ShardId(s)).is_none());
        assert!(f.pending_since.len() == f.pending.len());
        assert!(
            flip(&f, ShardId(s), &from, &t, e).is_none(),
            "a flip happens once"
        );
    }

    /// A move the plan keeps keeps the epoch that planned it; a move planned elsewhere and
    /// then back is a new move, and the flip of the first one is refused: its target
    /// dropped what it took when the map moved the shard away (two nodes leaving at once
    /// lost a shard's events that way).
    #[test]
    fn a_move_planned_away_and_back_is_a_new_move() {
        let m = first(&["a", "b", "c"]);
        let none = BTreeSet::new();
        let mut members = nodes(&["a", "b", "c"]);
        members[2].draining = true;
        let p1 = plan(12, &members, Some(&m), &none, 0).unwrap().unwrap().map;
        assert!(
            p1.pending
                .keys()
                .all(|s| p1.move_of(ShardId(*s)).unwrap().1 == p1.epoch)
        );
        let (s, t) = p1
            .pending
            .iter()
            .map(|(s, t)| (ShardId(*s), t.clone()))
            .next()
            .unwrap();
        let other = if t.0 == "a" { 1 } else { 0 };
        // the target drains too: the move goes to the other node; moves already going there
        // keep their epoch
        members[if t.0 == "a" { 0 } else { 1 }].draining = true;
        let p2 = plan(12, &members, Some(&p1), &none, 0)
            .unwrap()
            .unwrap()
            .map;
        assert_eq!(p2.move_of(s), Some((&members[other].id, p2.epoch)));
        let kept: Vec<u32> = p1
            .pending
            .iter()
            .filter(|(_, to)| **to == members[other].id)
            .map(|(s, _)| *s)
            .collect();
        assert!(!kept.is_empty());
        for k in kept {
            assert_eq!(p2.move_of(ShardId(k)), Some((&members[other].id, p1.epoch)));
        }
        // it stays after all: the same move again, planned anew
        members[if t.0 == "a" { 0 } else { 1 }].draining = false;
        let p3 = plan(12, &members, Some(&p2), &none, 0)
            .unwrap()
            .unwrap()
            .map;
        assert_eq!(p3.move_of(s), Some((&t, p3.epoch)));
        let from = p3.assignments[s.0 as usize].clone();
        assert!(
            flip(&p3, s, &from, &t, p1.epoch).is_none(),
            "the first move's flip is refused"
        );
        assert!(flip(&p3, s, &from, &t, p3.epoch).is_some());
    }
}
