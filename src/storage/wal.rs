//! The write-ahead log: framed, checksummed records in numbered segment files, written by one
//! thread that groups every pending append into one write and one `fdatasync`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::model::TelemetryEvent;
use crate::storage::{StorageError, io_err};

/// Bytes this process has appended to the log (drives checkpoints).
pub static BYTES_WRITTEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Largest record accepted when reading (a larger length field is damage, not data).
pub const MAX_RECORD_BYTES: u32 = 64 << 20;
const HEADER: usize = 8;

/// The accepted events of one provider batch, for one shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WalRecord {
    pub shard: u32,
    pub events: Vec<TelemetryEvent>,
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_RECORD_BYTES as usize }>()
}

/// Frames one record.
pub fn encode(rec: &WalRecord) -> Vec<u8> {
    let payload =
        bincode::serde::encode_to_vec(rec, bincode_config()).expect("a record always encodes");
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.log"))
}

/// Segments in `dir`, oldest first.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub reason: String,
    /// Damage a crash mid-write explains (at the end of the newest segment it is cut off).
    pub torn_if_last: bool,
}

/// Decodes the frame at the start of `rest`: the record and the bytes it took. Never
/// allocates more than the frame's bytes allow: the length field is checked against
/// [`MAX_RECORD_BYTES`] and the input before anything is read, and the payload is decoded
/// with a limit bounded by its size ([`crate::storage::bounded`]).
pub fn decode_frame(rest: &[u8]) -> Result<(WalRecord, usize), FrameError> {
    let torn = |reason: String| FrameError {
        reason,
        torn_if_last: true,
    };
    if rest.len() < HEADER {
        return Err(torn(format!(
            "{} bytes left, shorter than a record header",
            rest.len()
        )));
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len > MAX_RECORD_BYTES {
        // A garbage length can only be a torn header if nothing readable follows it.
        return Err(torn(format!(
            "record length {len} exceeds the maximum {MAX_RECORD_BYTES}"
        )));
    }
    let end = HEADER + len as usize;
    if rest.len() < end {
        return Err(torn(format!(
            "record of {len} bytes runs past the end of the file"
        )));
    }
    let payload = &rest[HEADER..end];
    if crc32fast::hash(payload) != crc {
        return Err(FrameError {
            reason: if end == rest.len() {
                "checksum mismatch in the last record".into()
            } else {
                "checksum mismatch".into()
            },
            torn_if_last: end == rest.len(),
        });
    }
    let (rec, _): (WalRecord, usize) =
        crate::storage::bounded::decode(payload).map_err(|e| FrameError {
            reason: format!("undecodable record: {e}"),
            torn_if_last: false,
        })?;
    Ok((rec, end))
}

/// Decodes every frame of a segment's bytes: the records before the first bad frame, and
/// the offset and error of that frame (none when the bytes end cleanly).
pub fn decode_segment(bytes: &[u8]) -> (Vec<WalRecord>, Option<(usize, FrameError)>) {
    let mut out = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        match decode_frame(&bytes[off..]) {
            Ok((rec, n)) => {
                out.push(rec);
                off += n;
            }
            Err(e) => return (out, Some((off, e))),
        }
    }
    (out, None)
}

/// Reads every record of a segment in order. A damaged record at the end of the newest
/// segment (`is_last`) is a torn write: the file is truncated there and the number of bytes
/// cut is returned. Damage anywhere else is an error naming the offset.
pub fn replay_segment(
    path: &Path,
    is_last: bool,
    mut f: impl FnMut(WalRecord),
) -> Result<u64, StorageError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let mut off = 0usize;
    while off < bytes.len() {
        let damage = |reason: String| StorageError::CorruptRecord {
            path: path.to_path_buf(),
            offset: off as u64,
            reason,
        };
        let rest = &bytes[off..];
        let torn = |reason: String| -> Result<u64, StorageError> {
            if is_last {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                file.set_len(off as u64).map_err(io_err(path))?;
                file.sync_all().map_err(io_err(path))?;
                Ok(rest.len() as u64)
            } else {
                Err(damage(reason))
            }
        };
        match decode_frame(rest) {
            Ok((rec, n)) => {
                f(rec);
                off += n;
            }
            Err(e) if e.torn_if_last => return torn(e.reason),
            Err(e) => return Err(damage(e.reason)),
        }
    }
    Ok(0)
}

enum Cmd {
    Append(Vec<u8>, oneshot::Sender<Result<(), String>>),
    /// Close the current segment and start the next; answers its sequence number.
    Rotate(oneshot::Sender<Result<u64, String>>),
    /// Delete segments older than the given sequence.
    Prune(u64, oneshot::Sender<Result<(), String>>),
}

/// A handle to the log writer thread. Cloning is cheap; the thread stops when every handle
/// is dropped.
#[derive(Clone)]
pub struct WalHandle {
    tx: mpsc::Sender<Cmd>,
}

impl std::fmt::Debug for WalHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WalHandle")
    }
}

/// Where a node's log lives and how it syncs.
#[derive(Clone, Debug)]
pub struct WalOptions {
    pub dir: PathBuf,
    pub first_segment: u64,
    /// `false` skips fdatasync: acknowledged events written but not yet on disk are lost if
    /// the machine (not only the process) crashes.
    pub fsync: bool,
}

impl WalHandle {
    pub fn open(opts: WalOptions) -> Result<WalHandle, StorageError> {
        std::fs::create_dir_all(&opts.dir).map_err(io_err(&opts.dir))?;
        let mut writer = Writer::open(&opts)?;
        let (tx, rx) = mpsc::channel::<Cmd>();
        std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(&opts.dir))?;
        Ok(WalHandle { tx })
    }

    /// Queue a record; the receiver answers once it is durable. Records queued from one
    /// thread or actor are written in the order they were queued.
    pub fn append(&self, rec: &WalRecord) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::SendError(Cmd::Append(_, tx))) = self.tx.send(Cmd::Append(encode(rec), tx))
        {
            let _ = tx.send(Err("write-ahead log is closed".into()));
        }
        rx
    }

    pub async fn rotate(&self) -> Result<u64, StorageError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Rotate(tx))
            .map_err(|_| StorageError::Closed)?;
        rx.await
            .map_err(|_| StorageError::Closed)?
            .map_err(|e| StorageError::Io {
                path: PathBuf::from("wal"),
                source: std::io::Error::other(e),
            })
    }

    pub async fn prune_before(&self, seq: u64) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Prune(seq, tx))
            .map_err(|_| StorageError::Closed)?;
        rx.await
            .map_err(|_| StorageError::Closed)?
            .map_err(|e| StorageError::Io {
                path: PathBuf::from("wal"),
                source: std::io::Error::other(e),
            })
    }
}

struct Writer {
    dir: PathBuf,
    seq: u64,
    path: PathBuf,
    file: BufWriter<File>,
    fsync: bool,
}

impl Writer {
    fn open(opts: &WalOptions) -> Result<Writer, StorageError> {
        let path = segment_path(&opts.dir, opts.first_segment);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&opts.dir)?;
        Ok(Writer {
            dir: opts.dir.clone(),
            seq: opts.first_segment,
            path,
            file: BufWriter::with_capacity(1 << 20, file),
            fsync: opts.fsync,
        })
    }

    fn run(&mut self, rx: mpsc::Receiver<Cmd>) {
        let mut waiting: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            let mut bytes = 0u64;
            // Group commit: take everything already queued, write it all, sync once.
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Append(buf, done) => {
                        bytes += buf.len() as u64;
                        if let Err(e) = self.file.write_all(&buf) {
                            let _ = done.send(Err(format!("{}: {e}", self.path.display())));
                        } else {
                            waiting.push(done);
                        }
                    }
                    Cmd::Rotate(done) => {
                        let r = self.sync(&mut waiting).and_then(|_| self.rotate());
                        let _ = done.send(r);
                    }
                    Cmd::Prune(seq, done) => {
                        let _ = done.send(self.prune(seq));
                    }
                }
                next = rx.try_recv().ok();
            }
            if !waiting.is_empty() {
                metrics::counter!("depin_wal_bytes_total").increment(bytes);
                BYTES_WRITTEN.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                let _ = self.sync(&mut waiting);
            }
        }
        let _ = self.sync(&mut waiting);
    }

    fn sync(
        &mut self,
        waiting: &mut Vec<oneshot::Sender<Result<(), String>>>,
    ) -> Result<(), String> {
        let started = Instant::now();
        let mut r = self
            .file
            .flush()
            .map_err(|e| format!("{}: {e}", self.path.display()));
        if r.is_ok() && self.fsync {
            r = self
                .file
                .get_ref()
                .sync_data()
                .map_err(|e| format!("{}: fdatasync: {e}", self.path.display()));
            metrics::histogram!("depin_wal_fsync_seconds").record(started.elapsed().as_secs_f64());
        }
        for w in waiting.drain(..) {
            let _ = w.send(r.clone());
        }
        r
    }

    fn rotate(&mut self) -> Result<u64, String> {
        let next = self.seq + 1;
        let path = segment_path(&self.dir, next);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        sync_dir(&self.dir).map_err(|e| e.to_string())?;
        self.file = BufWriter::with_capacity(1 << 20, file);
        self.seq = next;
        self.path = path;
        Ok(next)
    }

    fn prune(&mut self, before: u64) -> Result<(), String> {
        for (seq, path) in list_segments(&self.dir).map_err(|e| e.to_string())? {
            if seq < before {
                std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        sync_dir(&self.dir).map_err(|e| e.to_string())
    }
}

/// fsync a directory so a created, renamed or removed entry is durable.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventPayload, Heartbeat, HeartbeatStatus, ProviderId};

    fn rec(shard: u32, n: usize) -> WalRecord {
        WalRecord {
            shard,
            events: (0..n)
                .map(|i| TelemetryEvent {
                    event_id: format!("e{shard}-{i}"),
                    provider_id: ProviderId::new("p"),
                    timestamp: 1000 + i as i64,
                    payload: EventPayload::Heartbeat(Heartbeat {
                        status: HeartbeatStatus::Online,
                    }),
                })
                .collect(),
        }
    }

    fn write(path: &Path, recs: &[WalRecord]) -> Vec<u64> {
        let mut offsets = Vec::new();
        let mut bytes = Vec::new();
        for r in recs {
            offsets.push(bytes.len() as u64);
            bytes.extend(encode(r));
        }
        std::fs::write(path, bytes).unwrap();
        offsets
    }

    fn read(path: &Path, is_last: bool) -> Result<(Vec<WalRecord>, u64), StorageError> {
        let mut out = Vec::new();
        let torn = replay_segment(path, is_last, |r| out.push(r))?;
        Ok((out, torn))
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        let recs = vec![rec(1, 3), rec(2, 1), rec(7, 10)];
        write(&p, &recs);
        assert_eq!(read(&p, true).unwrap(), (recs, 0));
    }

    #[test]
    fn torn_tail_is_cut_off_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        let recs = vec![rec(1, 3), rec(2, 4)];
        let offsets = write(&p, &recs);
        let full = std::fs::metadata(&p).unwrap().len();
        // Cut the last record in half, as a crash mid-write would.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(full - 5).unwrap();
        let (got, torn) = read(&p, true).unwrap();
        assert_eq!(got, vec![recs[0].clone()]);
        assert_eq!(torn, full - 5 - offsets[1]);
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            offsets[1],
            "file truncated at the torn record"
        );
        // A second recovery finds a clean log.
        assert_eq!(read(&p, true).unwrap(), (vec![recs[0].clone()], 0));
    }

    #[test]
    fn corrupt_record_in_the_middle_is_an_error_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        let offsets = write(&p, &[rec(1, 3), rec(2, 4), rec(3, 2)]);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[offsets[1] as usize + HEADER + 2] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let err = read(&p, true).unwrap_err();
        match &err {
            StorageError::CorruptRecord { path, offset, .. } => {
                assert_eq!(path, &p);
                assert_eq!(*offset, offsets[1]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string().contains(&format!("offset {}", offsets[1])),
            "{err}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "nothing was cut");
    }

    #[test]
    fn damage_at_the_end_of_an_older_segment_is_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        write(&p, &[rec(1, 3), rec(2, 4)]);
        let len = std::fs::metadata(&p).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert!(matches!(
            read(&p, false),
            Err(StorageError::CorruptRecord { .. })
        ));
    }

    #[tokio::test]
    async fn writer_groups_appends_rotates_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let wal = WalHandle::open(WalOptions {
            dir: dir.path().to_path_buf(),
            first_segment: 5,
            fsync: true,
        })
        .unwrap();
        let acks: Vec<_> = (0..50).map(|i| wal.append(&rec(i, 2))).collect();
        for a in acks {
            a.await.unwrap().unwrap();
        }
        let next = wal.rotate().await.unwrap();
        assert_eq!(next, 6);
        wal.append(&rec(99, 1)).await.unwrap().unwrap();
        let segs = list_segments(dir.path()).unwrap();
        assert_eq!(segs.iter().map(|s| s.0).collect::<Vec<_>>(), vec![5, 6]);
        let (first, _) = read(&segs[0].1, false).unwrap();
        assert_eq!(
            first.iter().map(|r| r.shard).collect::<Vec<_>>(),
            (0..50).collect::<Vec<_>>()
        );
        wal.prune_before(6).await.unwrap();
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    }
}
