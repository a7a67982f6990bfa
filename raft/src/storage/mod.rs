//! openraft's storage: the Raft log store ([`LogStore`]: entries in [`wal`]'s segment
//! files under `raft-log/`, vote and purge marks in sled's `raft_meta` tree) and the state
//! machine ([`StateMachineStore`], over [`MvccStore`] in sled), with snapshots kept in
//! `snapshot.bin` in the data directory.
//!
//! Durability: an append is reported durable (openraft's `LogFlushed`) only after the
//! log's fdatasync, one per batch of appends waiting for it; `save_vote` returns after
//! sled's flush. The state machine is not flushed on the write path: sled flushes it in
//! the background, and after a crash the entries it lost are applied again from the log
//! (`last_applied` is written with the data). `purge` flushes sled before dropping log
//! entries, so the log always reaches back to what the durable state machine holds.
//!
//! This is the only module that knows where the Raft log lives; the state machine's own
//! layout belongs to `mvcc`.

// openraft's trait signatures fix the error type (`StorageError`, large); helpers return it
// too so `?` works without conversions.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::{Cursor, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, StorageIOError,
};

use crate::codec::{decode, encode};
use crate::metrics::{Metrics, Stage};
use crate::mvcc::{MvccError, MvccStore};
use crate::types::{
    BatchResult, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
    Vote,
};
use crate::watch::ApplyListener;

const SNAPSHOT_FILE: &str = "snapshot.bin";
const LOG_DIR: &str = "raft-log";
const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

/// Opens the log store and the state machine. `mvcc` must be opened on the same `db`;
/// `listener` (the watch hub) hears about every applied revision; `metrics` times the
/// log's appends and flushes and the applies.
pub fn open_stores(
    db: sled::Db,
    data_dir: &Path,
    mvcc: MvccStore,
    listener: Arc<dyn ApplyListener>,
    metrics: Metrics,
) -> Result<(LogStore, StateMachineStore), StorageError> {
    let meta = db
        .open_tree("raft_meta")
        .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
    let wal = Wal::open(&data_dir.join(LOG_DIR), metrics.clone())
        .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
    let sm = StateMachineStore {
        db: db.clone(),
        mvcc,
        listener,
        snapshot_file: SnapshotPath {
            path: data_dir.join(SNAPSHOT_FILE),
            writing: Arc::default(),
        },
        metrics: metrics.clone(),
    };
    sm.recover_snapshot()?;
    let store = LogStore {
        db,
        wal,
        meta,
        metrics,
    };
    store.migrate_sled_log()?;
    if let Some(purged) = store.meta_get::<LogId>(KEY_PURGED)? {
        // A kept segment may still hold entries behind the purge mark.
        store
            .wal
            .purge(purged.index)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
    }
    Ok((store, sm))
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    wal: Wal,
    meta: sled::Tree,
    metrics: Metrics,
}

impl LogStore {
    /// Makes everything written to sled so far durable (the vote, the purge mark and the
    /// state machine): one flush of the database.
    async fn flush(&self) -> Result<(), sled::Error> {
        let started = std::time::Instant::now();
        let flushed = self.db.flush_async().await.map(|_| ());
        self.metrics.log_flushed();
        self.metrics
            .observe_stage(Stage::LogFlush, started.elapsed());
        flushed
    }

    fn meta_get<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self
            .meta
            .get(key)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?
        {
            Some(v) => decode(&v)
                .map(Some)
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e)),
            None => Ok(None),
        }
    }

    fn meta_put<T: serde::Serialize>(&self, key: &[u8], v: &T) -> Result<(), StorageError> {
        let bytes = encode(v).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        Ok(())
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let Some(last) = self.wal.last_index() else {
            return Ok(None);
        };
        let entries = self
            .wal
            .read(last, last + 1, usize::MAX)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(entries.last().map(|e| e.log_id))
    }

    /// A data directory from before the log had its own files keeps its entries in sled's
    /// `raft_log` tree: they move into the log files (synced) and the tree is dropped.
    fn migrate_sled_log(&self) -> Result<(), StorageError> {
        let err = |e: &dyn std::fmt::Display| io_err(ErrorSubject::Logs, ErrorVerb::Write, e);
        if !self
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == b"raft_log")
        {
            return Ok(());
        }
        let old = self.db.open_tree("raft_log").map_err(|e| err(&e))?;
        let mut entries = Vec::new();
        for item in old.iter() {
            let (_, v) = item.map_err(|e| err(&e))?;
            entries.push(decode::<Entry>(&v).map_err(|e| err(&e))?);
        }
        let moved = entries.len();
        if self.wal.last_index().is_none() && moved > 0 {
            let (tx, rx) = std::sync::mpsc::channel();
            self.wal
                .append(
                    entries,
                    Box::new(move |r| {
                        let _ = tx.send(r);
                    }),
                )
                .map_err(|e| err(&e))?;
            rx.recv().map_err(|e| err(&e))?.map_err(|e| err(&e))?;
        }
        drop(old);
        self.db.drop_tree("raft_log").map_err(|e| err(&e))?;
        self.db.flush().map_err(|e| err(&e))?;
        tracing::info!(
            entries = moved,
            "moved the raft log out of sled into its own files"
        );
        Ok(())
    }
}

fn log_read_err(e: wal::WalError) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.wal.read(start, end, usize::MAX).map_err(log_read_err)
    }

    /// What replication sends in one AppendEntries: at most [`MAX_APPEND_BYTES`] of entries
    /// (at least one), so that a run of large values never makes a request too big to
    /// travel within openraft's per-request timeout (the heartbeat interval).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.wal
            .read(start, end, MAX_APPEND_BYTES)
            .map_err(log_read_err)
    }
}

/// Most encoded entry bytes replication sends in one AppendEntries (one entry always goes,
/// however large).
pub const MAX_APPEND_BYTES: usize = 1024 * 1024;

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.meta_get(KEY_PURGED)?;
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.meta_put(KEY_VOTE, vote)?;
        self.flush()
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.meta_get(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: losing it only means re-applying from the last applied entry.
        self.meta_put(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta_get::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let n = entries.len();
        let written = self
            .wal
            .append(entries, Box::new(move |r| callback.log_io_completed(r)));
        self.metrics.log_appended(n);
        self.metrics
            .observe_stage(Stage::LogAppend, started.elapsed());
        written.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wal
            .truncate(log_id.index)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Make the state machine durable before the log behind it disappears.
        let started = std::time::Instant::now();
        self.meta_put(KEY_PURGED, &log_id)?;
        self.flush()
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.wal
            .purge(log_id.index)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        tracing::info!(
            up_to = log_id.index,
            millis = started.elapsed().as_millis() as u64,
            "purged the log"
        );
        Ok(())
    }
}

/// The replicated state machine: applies entries to the MVCC store and tells the watch hub.
pub struct StateMachineStore {
    db: sled::Db,
    mvcc: MvccStore,
    listener: Arc<dyn ApplyListener>,
    snapshot_file: SnapshotPath,
    metrics: Metrics,
}

/// What `snapshot.bin` holds: the payload (see `mvcc`'s export) and its metadata.
struct SnapshotFile {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The layout of `snapshot.bin` before the payload was streamed: bincode of this.
#[derive(serde::Deserialize)]
struct ListSnapshotFile {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// `snapshot.bin` starts with this, then the payload, the metadata (bincode) and the
/// metadata's length (u64, big-endian): the payload streams out first, the metadata
/// follows once the export knows it.
const SNAPSHOT_MAGIC: &[u8; 8] = b"MKSNAP2\n";

fn sm_err(e: MvccError) -> StorageError {
    io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}

fn snapshot_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)
}

fn snapshot_read_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e)
}

/// Splits a `snapshot.bin` into metadata and payload (either layout).
fn parse_snapshot_file(mut bytes: Vec<u8>) -> Result<SnapshotFile, StorageError> {
    if !bytes.starts_with(SNAPSHOT_MAGIC) {
        let old: ListSnapshotFile = decode(&bytes).map_err(snapshot_read_err)?;
        return Ok(SnapshotFile {
            meta: old.meta,
            data: old.data,
        });
    }
    let short = || snapshot_read_err("snapshot.bin is cut short");
    let len_at = bytes.len().checked_sub(8).ok_or_else(short)?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[len_at..]);
    let meta_len = usize::try_from(u64::from_be_bytes(len)).map_err(|_| short())?;
    let meta_at = len_at
        .checked_sub(meta_len)
        .filter(|at| *at >= SNAPSHOT_MAGIC.len())
        .ok_or_else(short)?;
    let meta: SnapshotMeta = decode(&bytes[meta_at..len_at]).map_err(snapshot_read_err)?;
    bytes.truncate(meta_at);
    bytes.drain(..SNAPSHOT_MAGIC.len());
    Ok(SnapshotFile { meta, data: bytes })
}

/// Where `snapshot.bin` is, and the lock its writers hold: a build and an install may
/// overlap (a follower building its own snapshot receives the leader's), and both write
/// through the same temporary file.
#[derive(Clone)]
struct SnapshotPath {
    path: PathBuf,
    writing: Arc<std::sync::Mutex<()>>,
}

/// The metadata of the snapshot in `path`, if there is one, read from the end of the file.
fn read_snapshot_meta(path: &Path) -> Result<Option<SnapshotMeta>, StorageError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(snapshot_read_err(e)),
    };
    let mut magic = [0u8; 8];
    let len = f.metadata().map_err(snapshot_read_err)?.len();
    if len < 16 || f.read_exact(&mut magic).is_err() || &magic != SNAPSHOT_MAGIC {
        // The older layout keeps its metadata in front: read it whole.
        let bytes = std::fs::read(path).map_err(snapshot_read_err)?;
        return parse_snapshot_file(bytes).map(|f| Some(f.meta));
    }
    let mut meta_len = [0u8; 8];
    f.seek(SeekFrom::End(-8))
        .and_then(|_| f.read_exact(&mut meta_len))
        .map_err(snapshot_read_err)?;
    let meta_len = u64::from_be_bytes(meta_len);
    if meta_len > len - 16 {
        return Err(snapshot_read_err("snapshot.bin is cut short"));
    }
    let mut meta = vec![0u8; meta_len as usize];
    f.seek(SeekFrom::End(-8 - meta_len as i64))
        .and_then(|_| f.read_exact(&mut meta))
        .map_err(snapshot_read_err)?;
    decode(&meta).map(Some).map_err(snapshot_read_err)
}

/// Writes `snapshot.bin` atomically (temp file, fsync, rename, fsync the directory), one
/// writer at a time: `payload` streams the payload onto the file and says the metadata. A
/// snapshot older than the one already there (a build that overlapped an install) is
/// dropped: the file never goes back.
fn write_snapshot_file(
    file: &SnapshotPath,
    payload: impl FnOnce(&mut dyn Write) -> Result<SnapshotMeta, StorageError>,
) -> Result<SnapshotMeta, StorageError> {
    let _writing = file.writing.lock().unwrap_or_else(|p| p.into_inner());
    let path = file.path.as_path();
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(snapshot_err)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, SyncingWriter::new(file));
    out.write_all(SNAPSHOT_MAGIC).map_err(snapshot_err)?;
    let meta = payload(&mut out)?;
    let meta_bytes = encode(&meta).map_err(snapshot_err)?;
    out.write_all(&meta_bytes).map_err(snapshot_err)?;
    out.write_all(&(meta_bytes.len() as u64).to_be_bytes())
        .map_err(snapshot_err)?;
    let written = out.into_inner().map_err(|e| snapshot_err(e.error()))?.file;
    written.sync_all().map_err(snapshot_err)?;
    if let Some(existing) = read_snapshot_meta(path)? {
        if existing.last_log_id > meta.last_log_id {
            tracing::info!(
                kept = ?existing.last_log_id,
                dropped = ?meta.last_log_id,
                "a newer snapshot is already in place; dropping this one"
            );
            std::fs::remove_file(&tmp).map_err(snapshot_err)?;
            return Ok(meta);
        }
    }
    std::fs::rename(&tmp, path).map_err(snapshot_err)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(meta)
}

/// Most bytes a snapshot file takes on before they are synced: the disk writes the file
/// in steps alongside the log's fdatasyncs, not all at once in the final sync.
const SNAPSHOT_SYNC_BYTES: u64 = 4 << 20;

/// A file writer that syncs the data written every [`SNAPSHOT_SYNC_BYTES`].
struct SyncingWriter {
    file: std::fs::File,
    unsynced: u64,
}

impl SyncingWriter {
    fn new(file: std::fs::File) -> Self {
        SyncingWriter { file, unsynced: 0 }
    }
}

impl Write for SyncingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= SNAPSHOT_SYNC_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl StateMachineStore {
    fn read_snapshot_file(&self) -> Result<Option<SnapshotFile>, StorageError> {
        match std::fs::read(&self.snapshot_file.path) {
            Ok(bytes) => parse_snapshot_file(bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(snapshot_read_err(e)),
        }
    }

    /// A crash between writing a received snapshot and importing it leaves the file ahead
    /// of the state machine: finish the import at start.
    fn recover_snapshot(&self) -> Result<(), StorageError> {
        if let Some(file) = self.read_snapshot_file()? {
            if file.meta.last_log_id > self.mvcc.last_applied() {
                tracing::warn!(
                    snapshot = ?file.meta.last_log_id,
                    applied = ?self.mvcc.last_applied(),
                    "state machine is behind its snapshot file; importing it"
                );
                self.mvcc
                    .import(
                        &file.data,
                        file.meta.last_log_id,
                        &file.meta.last_membership,
                    )
                    .map_err(sm_err)?;
            }
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.mvcc.last_applied(), self.mvcc.last_membership()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let applied = match entry.payload {
                EntryPayload::Blank => self.mvcc.apply_batch(log_id, &[], None),
                EntryPayload::Normal(batch) => self.mvcc.apply_batch(log_id, &batch.commands, None),
                EntryPayload::Membership(m) => {
                    self.mvcc
                        .apply_batch(log_id, &[], Some(StoredMembership::new(Some(log_id), m)))
                }
            }
            .map_err(|e| io_err(ErrorSubject::Apply(log_id), ErrorVerb::Write, e))?;
            if !applied.events.is_empty() {
                self.listener.applied(applied.events);
            }
            out.push(BatchResult {
                results: applied.results,
            });
        }
        self.metrics.observe_stage(Stage::Apply, started.elapsed());
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            mvcc: self.mvcc.clone(),
            snapshot_file: self.snapshot_file.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        write_snapshot_file(&self.snapshot_file, |out| {
            out.write_all(&data).map_err(snapshot_err)?;
            Ok(meta.clone())
        })?;
        let revision = self
            .mvcc
            .import(&data, meta.last_log_id, &meta.last_membership)
            .map_err(sm_err)?;
        self.db.flush_async().await.map_err(snapshot_err)?;
        tracing::info!(snapshot = ?meta.last_log_id, revision, "installed a snapshot");
        self.listener.reset(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.read_snapshot_file()?.map(|f| Snapshot {
            meta: f.meta,
            snapshot: Box::new(Cursor::new(f.data)),
        }))
    }
}

/// Builds a snapshot from a point-in-time export of the MVCC state, streamed into
/// `snapshot.bin` on a blocking thread while the state machine goes on applying.
pub struct SnapshotBuilder {
    mvcc: MvccStore,
    snapshot_file: SnapshotPath,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// The returned snapshot carries the metadata only: openraft keeps nothing of a built
    /// snapshot but its metadata, and a follower that needs the payload gets it from
    /// [`RaftStateMachine::get_current_snapshot`], read from the file. So the store is
    /// never held twice in memory.
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let mvcc = self.mvcc.clone();
        let file = self.snapshot_file.clone();
        let started = std::time::Instant::now();
        let meta = tokio::task::spawn_blocking(move || {
            write_snapshot_file(&file, |out| {
                let exported = mvcc.export_to(out).map_err(sm_err)?;
                let snapshot_id = match exported.last_applied {
                    Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, exported.bytes),
                    None => format!("empty-{}", exported.bytes),
                };
                tracing::info!(
                    snapshot = ?exported.last_applied,
                    revision = exported.revision,
                    bytes = exported.bytes,
                    "exported the state"
                );
                Ok(SnapshotMeta {
                    last_log_id: exported.last_applied,
                    last_membership: exported.membership,
                    snapshot_id,
                })
            })
        })
        .await
        .map_err(snapshot_err)??;
        tracing::info!(
            snapshot = ?meta.last_log_id,
            millis = started.elapsed().as_millis() as u64,
            "built a snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

#[cfg(test)]
mod tests;

mod wal;
use wal::Wal;
