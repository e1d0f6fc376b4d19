use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A provider's id as the marketplace names it. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProviderId(Arc<str>);

impl ProviderId {
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProviderId({})", &*self.0)
    }
}

impl From<&str> for ProviderId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// A logical shard: providers map to one by a stable hash of their id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct ShardId(pub u32);

impl ShardId {
    /// The shard a provider lives in, out of `shard_count` logical shards (jump consistent hash
    /// over a 64-bit FNV-1a of the id: stable across processes, versions and platforms).
    pub fn for_provider(id: &ProviderId, shard_count: u32) -> Self {
        Self(jump_hash(
            fnv1a64(id.as_str().as_bytes()),
            shard_count.max(1),
        ))
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A node of the cluster.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A 64-bit fingerprint of an event id, kept per provider to make ingest idempotent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct EventFingerprint(pub u64);

impl EventFingerprint {
    pub fn of(event_id: &str) -> Self {
        Self(fnv1a64(event_id.as_bytes()))
    }
}

/// FNV-1a, 64 bit: a fixed, documented hash so shard placement never depends on a std
/// hasher's seed or version.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014).
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_is_stable_and_in_range() {
        let a = ShardId::for_provider(&ProviderId::new("prov-1"), 256);
        let b = ShardId::for_provider(&ProviderId::new("prov-1"), 256);
        assert_eq!(a, b);
        for i in 0..1000 {
            assert!(ShardId::for_provider(&ProviderId::new(format!("p{i}")), 256).0 < 256);
        }
    }

    #[test]
    fn jump_hash_moves_few_keys_when_buckets_grow() {
        let moved = (0..10_000u64)
            .filter(|k| {
                jump_hash(fnv1a64(&k.to_le_bytes()), 10) != jump_hash(fnv1a64(&k.to_le_bytes()), 11)
            })
            .count();
        // the ideal is 1/11 of the keys
        assert!((700..1200).contains(&moved), "moved {moved}");
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
