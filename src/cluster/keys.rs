//! Every etcd key the cluster uses, built here and nowhere else, under one prefix so that
//! several clusters (or test runs) share an etcd without seeing each other.
//!
//! Layout under the prefix (default `/depin/`):
//! - `nodes/<node_id>` — a node's [`NodeInfo`](super::NodeInfo) as JSON, under its lease
//! - `election/coordinator` — the election name; etcd creates `election/coordinator/<lease>`
//! - `shardmap/current` — the whole [`ShardMap`](super::ShardMap) as JSON, changed only by
//!   compare-and-set on its `mod_revision`
//! - `shardmap/history/<epoch>` — past maps, for debugging and status
//! - `handoff/<shard>` — the state of a shard in motion

use super::{Epoch, NodeId, ShardId};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/depin/";

/// Builds the cluster's etcd keys under a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    /// Keys under `prefix`; a missing trailing `/` is added so prefixes never overlap
    /// (`/a` would otherwise also match `/ab/...`).
    pub fn new(prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix all node registrations live under.
    pub fn nodes_prefix(&self) -> String {
        format!("{}nodes/", self.prefix)
    }

    /// A node's registration.
    pub fn node(&self, id: &NodeId) -> String {
        format!("{}{}", self.nodes_prefix(), id.0)
    }

    /// The node id in a registration key, if the key is one.
    pub fn parse_node(&self, key: &str) -> Option<NodeId> {
        let id = key.strip_prefix(&self.nodes_prefix())?;
        (!id.is_empty() && !id.contains('/')).then(|| NodeId(id.to_owned()))
    }

    /// The name of the coordinator election (etcd's election API keys it by name).
    pub fn election(&self) -> String {
        format!("{}election/coordinator", self.prefix)
    }

    /// The prefix of the campaigners' keys (`<election>/<lease id>`).
    pub fn election_candidates_prefix(&self) -> String {
        format!("{}/", self.election())
    }

    /// The current shard map.
    pub fn shard_map(&self) -> String {
        format!("{}shardmap/current", self.prefix)
    }

    /// A past shard map. Zero-padded so keys sort by epoch.
    pub fn shard_map_history(&self, epoch: Epoch) -> String {
        format!("{}shardmap/history/{:020}", self.prefix, epoch.0)
    }

    /// The handoff state of a shard in motion. Zero-padded so keys sort by shard.
    pub fn handoff(&self, shard: ShardId) -> String {
        format!("{}handoff/{:05}", self.prefix, shard.0)
    }

    /// The prefix of every handoff key.
    pub fn handoff_prefix(&self) -> String {
        format!("{}handoff/", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix() {
        let k = Keys::default();
        assert_eq!(k.node(&NodeId("n1".into())), "/depin/nodes/n1");
        assert_eq!(k.election(), "/depin/election/coordinator");
        assert_eq!(k.shard_map(), "/depin/shardmap/current");
        assert_eq!(
            k.shard_map_history(Epoch(7)),
            "/depin/shardmap/history/00000000000000000007"
        );
        assert_eq!(k.handoff(ShardId(3)), "/depin/handoff/00003");
        let t = Keys::new("/test/a");
        assert_eq!(t.prefix(), "/test/a/");
        assert_eq!(t.node(&NodeId("x".into())), "/test/a/nodes/x");
    }

    #[test]
    fn node_keys_round_trip() {
        let k = Keys::new("/p/");
        let id = NodeId("node-7".into());
        assert_eq!(k.parse_node(&k.node(&id)), Some(id));
        assert_eq!(k.parse_node("/p/nodes/"), None);
        assert_eq!(k.parse_node("/p/shardmap/current"), None);
        assert_eq!(k.parse_node("/q/nodes/x"), None);
    }
}
