//! Durability: a write-ahead log of accepted events and periodic snapshots of provider state.
//!
//! Layout of a data directory:
//!
//! ```text
//! DATA_DIR/LOCK                      held (flock) by the one process using the directory
//! DATA_DIR/wal/00000000000000000007.log   log segments, named by sequence number
//! DATA_DIR/snapshots/shard-00042.snap     one snapshot per logical shard
//! ```
//!
//! The log is per shard *logically*: every record names its shard, and a shard's log is the
//! subsequence of records carrying its id. Physically the shards of a node share one segment
//! file, so that one `fdatasync` makes a whole group of batches from every shard durable
//! (group commit) instead of one fsync per shard per batch.
//!
//! A record is `[payload length u32 LE][crc32 of payload u32 LE][payload]`, the payload a
//! bincode-2 [`WalRecord`]. An ingest batch is acknowledged only after the records of its
//! accepted events are written and fsynced (unless the node runs with `--unsafe-no-fsync`).
//!
//! A checkpoint (every `checkpoint_bytes` of log) goes over the shards in groups: for each,
//! it pauses ingest, rotates the log to a new segment and captures the group's states, then
//! resumes ingest and writes their snapshots (temp file, fsync, rename, fsync of the
//! directory) stamped with that segment's sequence. Then it deletes the segments older than
//! the first group's. Recovery loads
//! each shard's snapshot and replays, for that shard, the records of segments at or after its
//! stamp. A torn record at the very end of the newest segment is cut off with a warning; any
//! other damage stops start-up with an error naming the file and the offset.

pub mod bounded;
pub mod snapshot;
pub mod wal;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{info, warn};

use crate::analytics::state::{ProviderState, StateParams};
use crate::model::{ProviderId, ShardId};

pub use wal::{WalHandle, WalRecord};

/// Errors of the storage layer; every one names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {0} is in use by another process (lock file held)")]
    Locked(PathBuf),
    #[error("{path}: corrupt record at offset {offset}: {reason}")]
    CorruptRecord {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{path}: corrupt snapshot: {reason}")]
    CorruptSnapshot { path: PathBuf, reason: String },
    #[error("{path}: snapshot format version {version} is newer than this binary understands")]
    UnknownVersion { path: PathBuf, version: u16 },
    #[error("write-ahead log is closed")]
    Closed,
}

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The exclusive lock on a data directory, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, StorageError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join("LOCK");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => Err(StorageError::Io { path, source: e }),
        }
    }
}

/// A data directory in use: its lock, its log, one mutex that orders every snapshot write
/// (checkpoints, shards arriving or leaving in a handoff), and one per shard that a handoff
/// or a release holds from deciding a shard's content to its snapshot being on disk.
pub struct StorageCtl {
    pub wal: WalHandle,
    pub dir: PathBuf,
    pub writing: tokio::sync::Mutex<()>,
    shard_locks: Vec<tokio::sync::Mutex<()>>,
    _lock: DirLock,
}

impl StorageCtl {
    pub fn new(lock: DirLock, wal: WalHandle, dir: PathBuf, shard_count: u32) -> Self {
        Self {
            wal,
            dir,
            writing: tokio::sync::Mutex::new(()),
            shard_locks: (0..shard_count)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            _lock: lock,
        }
    }

    /// Held while a shard's content changes hands and until its snapshot says so: without
    /// it, a release's empty snapshot could land after (and erase) the snapshot of states
    /// that arrived in between.
    pub async fn lock_shard(&self, shard: ShardId) -> tokio::sync::MutexGuard<'_, ()> {
        self.shard_locks[shard.0 as usize].lock().await
    }

    /// Makes `states` the durable content of each listed shard: the log moves to a new
    /// segment and the shards' snapshots are stamped with it, so recovery loads these states
    /// and replays only the records written after them (empty states forget a shard).
    pub async fn persist_shards(
        &self,
        shards: Vec<(ShardId, Vec<ProviderState>)>,
    ) -> Result<u64, StorageError> {
        self.persist_with(move |dir, seq| {
            let mut bytes = 0;
            for (shard, states) in shards {
                bytes += snapshot::write(dir, shard, seq, &states)?;
            }
            Ok(bytes)
        })
        .await
    }

    /// [`persist_shards`](Self::persist_shards) for one shard whose states arrived encoded
    /// (a handoff): written as received, not encoded again.
    pub async fn persist_encoded(
        &self,
        shard: ShardId,
        states: snapshot::EncodedStates,
    ) -> Result<u64, StorageError> {
        self.persist_with(move |dir, seq| snapshot::write_encoded(dir, shard, seq, &states))
            .await
    }

    /// Moves the log to a new segment and runs `write` (the snapshot directory, the new
    /// segment's number) on the blocking pool, one persist at a time.
    async fn persist_with(
        &self,
        write: impl FnOnce(&Path, u64) -> Result<u64, StorageError> + Send + 'static,
    ) -> Result<u64, StorageError> {
        let _writing = self.writing.lock().await;
        let seq = self.wal.rotate().await?;
        let dir = self.dir.join("snapshots");
        tokio::task::spawn_blocking(move || write(&dir, seq))
            .await
            .map_err(|e| StorageError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })?
    }
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Provider states by shard.
    pub shards: HashMap<ShardId, Vec<ProviderState>>,
    /// The next log segment to write.
    pub next_segment: u64,
    pub records_replayed: u64,
    pub events_replayed: u64,
    pub torn_tail_bytes: u64,
}

/// Loads snapshots and replays the log. `shard_count` maps providers to shards.
pub fn recover(
    dir: &Path,
    shard_count: u32,
    params: &StateParams,
) -> Result<Recovered, StorageError> {
    let started = Instant::now();
    let snap_dir = dir.join("snapshots");
    let wal_dir = dir.join("wal");
    std::fs::create_dir_all(&snap_dir).map_err(io_err(&snap_dir))?;
    std::fs::create_dir_all(&wal_dir).map_err(io_err(&wal_dir))?;

    let mut out = Recovered::default();
    let mut stamps: HashMap<ShardId, u64> = HashMap::new();
    let mut states: HashMap<ShardId, HashMap<ProviderId, ProviderState>> = HashMap::new();
    for snap in snapshot::list(&snap_dir)? {
        let loaded = snapshot::read(&snap)?;
        stamps.insert(loaded.shard, loaded.wal_segment);
        states.insert(
            loaded.shard,
            loaded
                .providers
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect(),
        );
    }

    let segments = wal::list_segments(&wal_dir)?;
    let last = segments.last().map(|(seq, _)| *seq);
    for (seq, path) in &segments {
        let is_last = Some(*seq) == last;
        let torn = wal::replay_segment(path, is_last, |rec: WalRecord| {
            let shard = ShardId(rec.shard);
            if stamps.get(&shard).is_some_and(|s| *seq < *s) {
                return;
            }
            out.records_replayed += 1;
            let shard_states = states.entry(shard).or_default();
            for ev in rec.events {
                let st = shard_states
                    .entry(ev.provider_id.clone())
                    .or_insert_with(|| ProviderState::new(ev.provider_id.clone(), params));
                if st.replay(&ev, params) {
                    out.events_replayed += 1;
                }
            }
        })?;
        if torn > 0 {
            warn!(file = %path.display(), bytes = torn, "cut a torn record off the end of the log");
            out.torn_tail_bytes += torn;
        }
    }
    out.next_segment = last.map_or(1, |s| s + 1);
    for (shard, m) in states {
        if let Some(id) = m
            .keys()
            .find(|id| ShardId::for_provider(id, shard_count) != shard)
        {
            return Err(StorageError::CorruptSnapshot {
                path: dir.to_path_buf(),
                reason: format!(
                    "provider {id} is stored in shard {shard} but belongs to shard {} of {shard_count}: \
                     the data directory was written with a different shard count",
                    ShardId::for_provider(id, shard_count)
                ),
            });
        }
        out.shards.insert(shard, m.into_values().collect());
    }
    let providers: usize = out.shards.values().map(Vec::len).sum();
    let secs = started.elapsed().as_secs_f64();
    metrics::histogram!("depin_recovery_seconds").record(secs);
    info!(
        providers,
        records = out.records_replayed,
        events = out.events_replayed,
        seconds = secs,
        "recovered from {}",
        dir.display()
    );
    Ok(out)
}
