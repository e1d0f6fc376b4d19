//! The cluster layer: membership, leader election and the shard map (DESIGN.md §2).
//!
//! - [`keys`] — every etcd key, built in one place under a configurable prefix
//! - [`placement`] — pure: which node owns which logical shard
//! - [`backend`] — the one trait the node talks to, with the lease and leadership handles
//! - [`memory`] — the in-process backend (standalone mode, unit tests)
//! - [`etcd`] — the etcd backend
//! - [`plan`] — pure: the next map from the members, moves as handoffs, grace for the dead
//! - [`member`] — a node's registration, campaign and placement duty as coordinator
//!
//! `cluster/` at the top of the repository is different: shell tooling that runs a local
//! cluster of processes. This module is the Rust side.

pub mod backend;
pub mod etcd;
pub mod keys;
pub mod member;
pub mod memory;
pub mod placement;
pub mod plan;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::model::{NodeId, ShardId};
pub use backend::{ClusterBackend, Leadership, Lease, LeaseProbe, Watched};
pub use etcd::EtcdBackend;
pub use keys::Keys;
pub use memory::MemoryBackend;
pub use placement::place;

/// The version of a shard map as placement numbers it: every new placement gets the previous
/// epoch plus one. Fencing compares epochs: a node acts on a shard only under the epoch that
/// gives it the shard.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A lease granted by the backend; keys attached to it vanish when it expires.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// What a node publishes about itself when it registers.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Where other nodes reach its internal service (`HOST:PORT`); empty in placement tests.
    #[serde(default)]
    pub advertise_addr: String,
    #[serde(default)]
    pub region: Option<String>,
    /// The node is leaving (SIGTERM): it gets no shards and hands off the ones it has.
    #[serde(default)]
    pub draining: bool,
}

impl NodeInfo {
    /// A node with no address, for placement and tests.
    pub fn new(id: impl Into<String>, region: Option<&str>) -> Self {
        Self {
            id: NodeId(id.into()),
            advertise_addr: String::new(),
            region: region.map(str::to_owned),
            draining: false,
        }
    }
}

/// A shard reassigned after its owner died without handing it off and did not come back
/// within the grace period: the events only that owner held are gone. Kept in the map (the
/// newest [`ShardMap::MAX_LOST`]) so every node reports it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LostShard {
    pub shard: u32,
    pub node: NodeId,
    /// Unix seconds of the reassignment.
    pub at: i64,
}

/// Which node owns each logical shard. Versioned and never edited in place: a change is a
/// new map with the next epoch, written with a compare-and-set on the stored revision.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ShardMap {
    /// On-disk format version of this record, so a later format can migrate explicitly.
    pub format: u32,
    pub epoch: Epoch,
    /// `assignments[s]` owns shard `s`.
    pub assignments: Vec<NodeId>,
    /// The region of every node named in `assignments`, as it was when the map was written:
    /// placement needs a departed owner's region to keep its shards in that region.
    #[serde(default)]
    pub regions: std::collections::BTreeMap<NodeId, String>,
    /// Shards in motion: `pending[s]` is the node shard `s` is being handed to. Until the
    /// handoff flips the map, `assignments[s]` (the old owner) still owns it.
    #[serde(default)]
    pub pending: std::collections::BTreeMap<u32, NodeId>,
    /// The epoch of the map that planned each move in `pending` (kept while the plan keeps
    /// the move). A handoff carries it from its transfer to its flip, and the flip needs it
    /// unchanged: a move planned away and back (to B, then C, then B again) is a new move,
    /// and the copy B took in the first one (which B drops when the map moves the shard
    /// elsewhere) can never be flipped into service. Absent: epoch 0 (older maps).
    #[serde(default)]
    pub pending_since: std::collections::BTreeMap<u32, Epoch>,
    /// Shards whose data was lost with a dead owner, newest last.
    #[serde(default)]
    pub lost: Vec<LostShard>,
    /// Registered nodes the coordinator gives no shards because they did not prove the
    /// cluster's credentials (or cannot be reached), with the reason.
    #[serde(default)]
    pub refused: std::collections::BTreeMap<NodeId, String>,
}

impl ShardMap {
    /// The current record format.
    pub const FORMAT: u32 = 1;
    /// How many [`LostShard`] records a map keeps.
    pub const MAX_LOST: usize = 256;

    /// The node shard `s` is moving to, if it is in motion.
    pub fn moving_to(&self, shard: ShardId) -> Option<&NodeId> {
        self.pending.get(&shard.0)
    }

    /// The move of `shard` in motion: its target and the epoch that planned it.
    pub fn move_of(&self, shard: ShardId) -> Option<(&NodeId, Epoch)> {
        let to = self.pending.get(&shard.0)?;
        Some((
            to,
            self.pending_since
                .get(&shard.0)
                .copied()
                .unwrap_or(Epoch(0)),
        ))
    }

    pub fn shard_count(&self) -> u32 {
        self.assignments.len() as u32
    }

    /// The owner of `shard`, if the map covers it.
    pub fn owner(&self, shard: ShardId) -> Option<&NodeId> {
        self.assignments.get(shard.0 as usize)
    }

    /// The shards `node` owns, ascending.
    pub fn shards_of<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = ShardId> + 'a {
        self.assignments
            .iter()
            .enumerate()
            .filter(move |(_, n)| *n == node)
            .map(|(i, _)| ShardId(i as u32))
    }

    /// Shards whose owner differs between `self` and `other` (all of them if the sizes differ).
    pub fn moved_from(&self, other: &ShardMap) -> Vec<ShardId> {
        if self.assignments.len() != other.assignments.len() {
            return (0..self.shard_count()).map(ShardId).collect();
        }
        (0..self.shard_count())
            .map(ShardId)
            .filter(|s| self.owner(*s) != other.owner(*s))
            .collect()
    }
}

/// A value as stored, with the backend's revision of its key (etcd's `mod_revision`). The
/// revision is what [`ClusterBackend::compare_and_set_shard_map`] compares.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Versioned<T> {
    pub revision: u64,
    pub value: T,
}

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The shard map changed since the caller read it: a stale writer lost.
    #[error("shard map revision is {current:?}, expected {expected:?}")]
    StaleRevision {
        expected: Option<u64>,
        current: Option<u64>,
    },
    /// The lease expired or was revoked: the node must register again.
    #[error("lease {0} is lost")]
    LeaseLost(LeaseId),
    #[error("no live node to place shards on")]
    NoLiveNodes,
    #[error("shard map has {found} shards, the cluster has {expected}")]
    ShardCountMismatch { expected: u32, found: u32 },
    #[error("cannot decode {key}: {reason}")]
    Decode { key: String, reason: String },
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("cluster backend closed")]
    Closed,
}
