//! Shard snapshots: every provider state of one shard, bincode 2, behind a versioned header.
//!
//! Format version 2 (current):
//! `magic "DPASNAP\0" | version u16 | shard u32 | wal segment u64 | body length u64 |
//! crc32 of body u32 | body = bincode Vec<ProviderState>`.
//! Version 1 (the first release) had no shard, length or checksum: `magic | version u16 |
//! wal segment u64 | body = bincode (shard u32, Vec<ProviderState>)`; it is read and migrated
//! in memory, and the next checkpoint rewrites it as version 2.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::analytics::state::ProviderState;
use crate::model::ShardId;
use crate::storage::wal::sync_dir;
use crate::storage::{StorageError, io_err};

pub const MAGIC: &[u8; 8] = b"DPASNAP\0";
pub const VERSION: u16 = 2;
const MAX_SNAPSHOT_BYTES: usize = 4 << 30;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_SNAPSHOT_BYTES>()
}

/// A loaded snapshot.
#[derive(Debug)]
pub struct ShardSnapshot {
    pub shard: ShardId,
    /// Replay starts at this log segment.
    pub wal_segment: u64,
    pub providers: Vec<ProviderState>,
    /// The format version it was read from.
    pub version: u16,
}

pub fn path(dir: &Path, shard: ShardId) -> PathBuf {
    dir.join(format!("shard-{:05}.snap", shard.0))
}

/// Snapshot files in `dir`, by shard.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let p = entry.map_err(io_err(dir))?.path();
        if p.extension().is_some_and(|e| e == "snap") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Writes a shard's snapshot atomically: temp file, fsync, rename, fsync of the directory.
/// Returns the bytes written.
pub fn write(
    dir: &Path,
    shard: ShardId,
    wal_segment: u64,
    providers: &[ProviderState],
) -> Result<u64, StorageError> {
    let body = bincode::serde::encode_to_vec(providers, config()).map_err(|e| {
        StorageError::CorruptSnapshot {
            path: path(dir, shard),
            reason: format!("encoding: {e}"),
        }
    })?;
    write_body(dir, shard, wal_segment, &[&body])
}

/// The encoding of one shard's states as it arrives in consecutive parts (a handoff's
/// chunks, each the bincode encoding of a slice of the states), kept as received: a snapshot
/// body is the states' count followed by every part's items, so the receiver writes its
/// snapshot without encoding the states again.
#[derive(Default)]
pub struct EncodedStates {
    count: u64,
    /// Each part with the offset of its first item (past its own count).
    parts: Vec<(Vec<u8>, usize)>,
}

impl EncodedStates {
    /// Adds the next part: the bincode encoding of a slice of states.
    pub fn push(&mut self, part: Vec<u8>) -> Result<(), String> {
        let (n, items): (u64, usize) =
            bincode::decode_from_slice(&part, bincode::config::standard())
                .map_err(|e| format!("a part of a shard's states has no count: {e}"))?;
        self.count += n;
        self.parts.push((part, items));
        Ok(())
    }

    /// States in all parts.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Writes a snapshot whose body arrived encoded ([`EncodedStates`]).
pub fn write_encoded(
    dir: &Path,
    shard: ShardId,
    wal_segment: u64,
    states: &EncodedStates,
) -> Result<u64, StorageError> {
    let count =
        bincode::encode_to_vec(states.count, bincode::config::standard()).expect("a count encodes");
    let mut body: Vec<&[u8]> = vec![&count];
    body.extend(states.parts.iter().map(|(p, items)| &p[*items..]));
    write_body(dir, shard, wal_segment, &body)
}

/// Writes the header and the body (given in pieces) atomically.
fn write_body(
    dir: &Path,
    shard: ShardId,
    wal_segment: u64,
    body: &[&[u8]],
) -> Result<u64, StorageError> {
    let started = Instant::now();
    let len: usize = body.iter().map(|b| b.len()).sum();
    let mut crc = crc32fast::Hasher::new();
    for b in body {
        crc.update(b);
    }
    let mut header = Vec::with_capacity(34);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&shard.0.to_le_bytes());
    header.extend_from_slice(&wal_segment.to_le_bytes());
    header.extend_from_slice(&(len as u64).to_le_bytes());
    header.extend_from_slice(&crc.finalize().to_le_bytes());
    let final_path = path(dir, shard);
    let tmp = final_path.with_extension("snap.tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    for b in std::iter::once(&header[..]).chain(body.iter().copied()) {
        f.write_all(b).map_err(io_err(&tmp))?;
    }
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &final_path).map_err(io_err(&final_path))?;
    sync_dir(dir)?;
    let bytes = (header.len() + len) as u64;
    metrics::histogram!("depin_snapshot_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("depin_snapshot_bytes_total").increment(bytes);
    Ok(bytes)
}

/// Reads a snapshot of any known version; damage is an error naming the file.
pub fn read(p: &Path) -> Result<ShardSnapshot, StorageError> {
    let bytes = std::fs::read(p).map_err(io_err(p))?;
    decode(p, &bytes)
}

/// Decodes a snapshot file's bytes (`p` names it in errors). Never panics on damaged input
/// and allocates at most a bounded multiple of the input ([`crate::storage::bounded`]).
pub fn decode(p: &Path, bytes: &[u8]) -> Result<ShardSnapshot, StorageError> {
    let bad = |reason: String| StorageError::CorruptSnapshot {
        path: p.to_path_buf(),
        reason,
    };
    if bytes.len() < 10 || &bytes[..8] != MAGIC {
        return Err(bad("not a snapshot (bad magic)".into()));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    match version {
        1 => {
            let wal_segment = u64_at(10).ok_or_else(|| bad("truncated header".into()))?;
            let ((shard, providers), _): ((u32, Vec<ProviderState>), usize) =
                crate::storage::bounded::decode(&bytes[18..])
                    .map_err(|e| bad(format!("undecodable body: {e}")))?;
            Ok(ShardSnapshot {
                shard: ShardId(shard),
                wal_segment,
                providers,
                version,
            })
        }
        2 => {
            if bytes.len() < 34 {
                return Err(bad("truncated header".into()));
            }
            let shard = u32::from_le_bytes(bytes[10..14].try_into().expect("4 bytes"));
            let wal_segment = u64_at(14).expect("checked length");
            let len = u64_at(22).expect("checked length") as usize;
            let crc = u32::from_le_bytes(bytes[30..34].try_into().expect("4 bytes"));
            let body = &bytes[34..];
            if body.len() != len {
                return Err(bad(format!(
                    "body is {} bytes, header says {len}",
                    body.len()
                )));
            }
            if crc32fast::hash(body) != crc {
                return Err(bad("checksum mismatch".into()));
            }
            let (providers, _): (Vec<ProviderState>, usize) = crate::storage::bounded::decode(body)
                .map_err(|e| bad(format!("undecodable body: {e}")))?;
            Ok(ShardSnapshot {
                shard: ShardId(shard),
                wal_segment,
                providers,
                version,
            })
        }
        v => Err(StorageError::UnknownVersion {
            path: p.to_path_buf(),
            version: v,
        }),
    }
}

/// What the coordinator last published, kept at each checkpoint: scores depend on the
/// network prior and tiers (hysteresis) on the previous tier, so a restarted node must start
/// from the same ones to give the same answers. Format: `magic "DPATIER\0" | version u16 |
/// crc32 u32 | bincode body`.
pub const TIERS_MAGIC: &[u8; 8] = b"DPATIER\0";

pub fn tiers_path(dir: &Path) -> PathBuf {
    dir.join("tiers.bin")
}

pub fn write_tiers(
    dir: &Path,
    tiers: &crate::analytics::view::CoordinatorSeed,
) -> Result<(), StorageError> {
    let p = tiers_path(dir);
    let body = bincode::serde::encode_to_vec(tiers, config()).map_err(|e| {
        StorageError::CorruptSnapshot {
            path: p.clone(),
            reason: format!("encoding: {e}"),
        }
    })?;
    let mut bytes = TIERS_MAGIC.to_vec();
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    let tmp = p.with_extension("bin.tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &p).map_err(io_err(&p))?;
    sync_dir(dir)
}

/// The saved tiers, or none when no checkpoint wrote them yet.
pub fn read_tiers(
    dir: &Path,
) -> Result<Option<crate::analytics::view::CoordinatorSeed>, StorageError> {
    let p = tiers_path(dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::Io { path: p, source: e }),
    };
    let bad = |reason: &str| StorageError::CorruptSnapshot {
        path: p.clone(),
        reason: reason.to_string(),
    };
    if bytes.len() < 14 || &bytes[..8] != TIERS_MAGIC {
        return Err(bad("not a tiers file (bad magic)"));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != 1 {
        return Err(StorageError::UnknownVersion { path: p, version });
    }
    let crc = u32::from_le_bytes(bytes[10..14].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[14..]) != crc {
        return Err(bad("checksum mismatch"));
    }
    crate::storage::bounded::decode(&bytes[14..])
        .map(|(t, _)| Some(t))
        .map_err(|e| bad(&format!("undecodable body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::state::StateParams;
    use crate::model::{EventPayload, Heartbeat, HeartbeatStatus, TelemetryEvent};

    fn states() -> Vec<ProviderState> {
        let p = StateParams::default();
        (0..3)
            .map(|i| {
                let mut s = ProviderState::new(format!("p{i}").as_str().into(), &p);
                for t in 0..5 {
                    let ev = TelemetryEvent {
                        event_id: format!("e{i}-{t}"),
                        provider_id: s.id.clone(),
                        timestamp: 3600 * 1000 + t * 60,
                        payload: EventPayload::Heartbeat(Heartbeat {
                            status: HeartbeatStatus::Online,
                        }),
                    };
                    s.apply(&ev, ev.timestamp, &p).unwrap();
                }
                s
            })
            .collect()
    }

    fn same(a: &[ProviderState], b: &[ProviderState]) {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn round_trip_is_atomic_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let s = states();
        write(dir.path(), ShardId(7), 12, &s).unwrap();
        assert!(!dir.path().join("shard-00007.snap.tmp").exists());
        let got = read(&path(dir.path(), ShardId(7))).unwrap();
        assert_eq!(
            (got.shard, got.wal_segment, got.version),
            (ShardId(7), 12, VERSION)
        );
        same(&got.providers, &s);
    }

    /// A handoff's receiver writes the chunks it received as they are: the file must be the
    /// one encoding the whole vector would give, and read back to the same states.
    #[test]
    fn a_snapshot_from_received_chunks_is_the_whole_encoding() {
        let s = states();
        let (whole, parts) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(whole.path(), ShardId(3), 9, &s).unwrap();
        let mut enc = EncodedStates::default();
        for chunk in s.chunks(2) {
            enc.push(bincode::serde::encode_to_vec(chunk, bincode::config::standard()).unwrap())
                .unwrap();
        }
        assert_eq!(enc.count(), 3);
        write_encoded(parts.path(), ShardId(3), 9, &enc).unwrap();
        let file = |d: &tempfile::TempDir| std::fs::read(path(d.path(), ShardId(3))).unwrap();
        assert_eq!(file(&parts), file(&whole));
        same(
            &read(&path(parts.path(), ShardId(3))).unwrap().providers,
            &s,
        );
        assert!(EncodedStates::default().push(Vec::new()).is_err());
    }

    #[test]
    fn corrupt_snapshot_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), ShardId(3), 1, &states()).unwrap();
        let p = path(dir.path(), ShardId(3));
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 0x55;
        std::fs::write(&p, &bytes).unwrap();
        let err = read(&p).unwrap_err();
        assert!(
            matches!(err, StorageError::CorruptSnapshot { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("shard-00003.snap") && err.to_string().contains("checksum"),
            "{err}"
        );
        std::fs::write(&p, b"garbage").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("bad magic"));
    }

    #[test]
    fn a_version_1_snapshot_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let s = states();
        // Version 1 as the first release wrote it: no shard, length or checksum in the header.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&9u64.to_le_bytes());
        bytes.extend(
            bincode::serde::encode_to_vec((5u32, &s), bincode::config::standard()).unwrap(),
        );
        let p = path(dir.path(), ShardId(5));
        std::fs::write(&p, bytes).unwrap();
        let got = read(&p).unwrap();
        assert_eq!(
            (got.shard, got.wal_segment, got.version),
            (ShardId(5), 9, 1)
        );
        same(&got.providers, &s);
        // Rewritten, it comes back as the current version with the same content.
        write(dir.path(), got.shard, got.wal_segment, &got.providers).unwrap();
        let again = read(&p).unwrap();
        assert_eq!(again.version, VERSION);
        same(&again.providers, &s);
    }

    #[test]
    fn tiers_round_trip_and_detect_damage() {
        use crate::analytics::ranking::Tier;
        use crate::analytics::view::CoordinatorSeed;
        let dir = tempfile::tempdir().unwrap();
        assert!(read_tiers(dir.path()).unwrap().is_none());
        let prior = crate::analytics::score::NetworkPrior {
            median_response_time_ms: 123.0,
            ..Default::default()
        };
        let seed = CoordinatorSeed {
            tiers: vec![("a".into(), Tier::Gold), ("b".into(), Tier::Basic)],
            prior,
            ..Default::default()
        };
        write_tiers(dir.path(), &seed).unwrap();
        assert_eq!(read_tiers(dir.path()).unwrap(), Some(seed));
        let p = tiers_path(dir.path());
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(&p, bytes).unwrap();
        assert!(
            read_tiers(dir.path())
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
    }

    #[test]
    fn unknown_future_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shard-00001.snap");
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&99u16.to_le_bytes());
        std::fs::write(&p, bytes).unwrap();
        assert!(matches!(
            read(&p),
            Err(StorageError::UnknownVersion { version: 99, .. })
        ));
    }
}
