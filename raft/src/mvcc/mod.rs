//! The multi-version key-value state: one cluster-wide revision, per-key create/mod revision
//! and version, history retained until compaction, the lease table, and applying a batch of
//! [`Command`]s atomically (data, revision, `last_applied` and membership in one sled write).
//!
//! Owns the state machine's sled tree (`mvcc`, layout in [`keys`]) and an in-memory key
//! index (key → the revisions that changed it), which serves historical reads the way etcd's
//! `treeIndex` does. Knows nothing of Raft networking or HTTP; the `storage` module drives it
//! from openraft, `http` and `watch` read from it.
//!
//! [`MvccStore`] is a cheap-to-clone handle; all methods take `&self` and are safe to call
//! concurrently with `apply_batch` (which only the state machine calls, one at a time). A
//! reader holds a read lock for the duration of one read, so it sees one revision whole.

mod apply;
mod export;
pub mod keys;

pub use export::Exported;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::codec::{self, CodecError};
use crate::types::*;

/// Shared handle on the MVCC state.
#[derive(Clone)]
pub struct MvccStore {
    inner: Arc<Inner>,
}

struct Inner {
    tree: sled::Tree,
    state: RwLock<State>,
    revision: AtomicI64,
    compact: AtomicI64,
    /// Held shared by a snapshot export, exclusively by what deletes history (a
    /// compaction, an import): history at or below an export's revision stays put.
    history_pin: RwLock<()>,
}

/// One change of one key, as the index remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeyRev {
    revision: i64,
    sub: u32,
    tombstone: bool,
}

#[derive(Default)]
struct State {
    /// Every key that has history since the compact revision, with its changes ascending.
    index: BTreeMap<Vec<u8>, Vec<KeyRev>>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    lease_seq: i64,
    /// Members whose NOSPACE alarm is raised.
    alarms: BTreeSet<NodeId>,
    /// etcd's `cluster_id`; 0 until the first entry is applied.
    cluster_id: u64,
}

/// What one `apply_batch` produced.
pub struct Applied {
    /// One per command, in order.
    pub results: Vec<CommandResult>,
    /// One per revision written, in revision order (for the watch hub).
    pub events: Vec<RevisionEvents>,
}

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl From<CodecError> for MvccError {
    fn from(e: CodecError) -> Self {
        MvccError::Corrupt(match e {
            CodecError::Encode(m) => format!("encoding: {m}"),
            CodecError::Decode(m) => format!("decoding: {m}"),
        })
    }
}

impl From<sled::Error> for MvccError {
    fn from(e: sled::Error) -> Self {
        MvccError::Storage(e.to_string())
    }
}

fn read_error(e: MvccError) -> CommandError {
    tracing::error!(error = %e, "mvcc read failed");
    CommandError::Storage(e.to_string())
}

impl MvccStore {
    /// Opens (or creates) the state machine's tree in `db` and loads the in-memory index.
    pub fn open(db: &sled::Db) -> Result<Self, MvccError> {
        let tree = db.open_tree("mvcc")?;
        let store = MvccStore {
            inner: Arc::new(Inner {
                tree,
                state: RwLock::new(State::default()),
                revision: AtomicI64::new(1),
                compact: AtomicI64::new(0),
                history_pin: RwLock::new(()),
            }),
        };
        {
            let mut st = store.write_state();
            store.load(&mut st)?;
        }
        Ok(store)
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the in-memory state from the tree.
    fn load(&self, st: &mut State) -> Result<(), MvccError> {
        let tree = &self.inner.tree;
        let get_i64 = |k: &[u8]| -> Result<Option<i64>, MvccError> {
            tree.get(k)?.map(|v| keys::parse_i64(&v)).transpose()
        };
        let revision = get_i64(keys::META_REVISION)?.unwrap_or(1);
        let compact = get_i64(keys::META_COMPACT)?.unwrap_or(0);
        st.lease_seq = get_i64(keys::META_LEASE_SEQ)?.unwrap_or(0);
        st.last_applied = match tree.get(keys::META_APPLIED)? {
            Some(v) => codec::decode(&v)?,
            None => None,
        };
        st.membership = match tree.get(keys::META_MEMBERSHIP)? {
            Some(v) => codec::decode(&v)?,
            None => StoredMembership::default(),
        };
        st.alarms = match tree.get(keys::META_ALARMS)? {
            Some(v) => codec::decode(&v)?,
            None => BTreeSet::new(),
        };
        st.cluster_id = get_i64(keys::META_CLUSTER_ID)?.map_or(0, |v| v as u64);
        st.index.clear();
        for item in tree.scan_prefix([keys::HIST]) {
            let (k, v) = item?;
            let (rev, sub) = keys::parse_hist(&k)?;
            let event: Event = codec::decode(&v)?;
            st.index.entry(event.kv.key).or_default().push(KeyRev {
                revision: rev,
                sub,
                tombstone: event.kind == EventType::Delete,
            });
        }
        self.inner.revision.store(revision, Ordering::SeqCst);
        self.inner.compact.store(compact, Ordering::SeqCst);
        Ok(())
    }

    /// Applies one log entry's commands. `log_id` and `membership` are persisted in the same
    /// atomic write as the data, so re-applying an entry after a crash is harmless.
    pub fn apply_batch(
        &self,
        log_id: LogId,
        commands: &[Command],
        membership: Option<StoredMembership>,
    ) -> Result<Applied, MvccError> {
        // Compaction deletes history: it waits for a snapshot export in progress.
        let _pin = commands
            .iter()
            .any(|c| matches!(c, Command::Compact { .. }))
            .then(|| {
                self.inner
                    .history_pin
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
            });
        let mut st = self.write_state();
        let mut ctx = apply::ApplyCtx::new(
            &self.inner.tree,
            &st,
            self.current_revision(),
            self.compact_revision(),
        );
        let mut results = Vec::with_capacity(commands.len());
        for cmd in commands {
            results.push(ctx.apply(cmd)?);
        }
        let mut out = ctx.finish(log_id, membership.as_ref())?;
        // The first entry any member applies is the same entry on every member (the
        // cluster's first), so the id it gives is the same everywhere; snapshots carry it.
        let new_cluster_id = (st.cluster_id == 0).then(|| cluster_id_of(log_id));
        if let Some(id) = new_cluster_id {
            out.batch
                .insert(keys::META_CLUSTER_ID, &keys::i64_value(id as i64));
        }
        self.inner.tree.apply_batch(out.batch)?;
        if let Some(id) = new_cluster_id {
            st.cluster_id = id;
        }

        for (key, kr) in out.index_adds {
            st.index.entry(key).or_default().push(kr);
        }
        for (key, drop_front) in out.index_prunes {
            if let Some(revs) = st.index.get_mut(&key) {
                revs.drain(..drop_front.min(revs.len()));
                if revs.is_empty() {
                    st.index.remove(&key);
                }
            }
        }
        st.last_applied = Some(log_id);
        if let Some(m) = membership {
            st.membership = m;
        }
        st.lease_seq = out.lease_seq;
        if let Some(alarms) = out.alarms {
            st.alarms = alarms;
        }
        self.inner.compact.store(out.compact, Ordering::SeqCst);
        self.inner.revision.store(out.revision, Ordering::SeqCst);
        Ok(Applied {
            results,
            events: out.events,
        })
    }

    /// Reads a key or range at the current revision or, with `op.revision`, in history.
    pub fn range(&self, op: &RangeOp) -> Result<RangeResult, CommandError> {
        let st = self.read_state();
        let current = self.current_revision();
        let compact = self.compact_revision();
        if op.revision > current {
            return Err(CommandError::FutureRevision {
                requested: op.revision,
                current,
            });
        }
        if op.revision > 0 && op.revision < compact {
            return Err(CommandError::Compacted {
                requested: op.revision,
                compact_revision: compact,
            });
        }
        if op.revision == 0 || op.revision == current {
            self.range_current(op).map_err(read_error)
        } else {
            range_at(&self.inner.tree, &st, op).map_err(read_error)
        }
    }

    fn range_current(&self, op: &RangeOp) -> Result<RangeResult, MvccError> {
        let mut out = RangeResult::default();
        let tree = &self.inner.tree;
        if op.range_end.is_empty() {
            if let Some(v) = tree.get(keys::cur(&op.key))? {
                out.count = 1;
                if !op.count_only {
                    out.kvs.push(shape(codec::decode(&v)?, op));
                }
            }
            return Ok(out);
        }
        let start = keys::cur(&op.key);
        let end = keys::cur_end(&op.range_end);
        if start >= end {
            return Ok(out);
        }
        for item in tree.range(start..end) {
            let (_, v) = item?;
            if admit(&mut out, op) {
                out.kvs.push(shape(codec::decode(&v)?, op));
            }
        }
        Ok(out)
    }

    /// The store's current revision (1 for an empty store, as in etcd).
    pub fn current_revision(&self) -> i64 {
        self.inner.revision.load(Ordering::SeqCst)
    }

    /// Revisions below this are gone (0 = never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.inner.compact.load(Ordering::SeqCst)
    }

    /// History for watchers: every revision in `[from, to]` (inclusive, `to` capped at the
    /// current revision), at most `max_revisions` of them, each whole, `prev_kv` filled.
    /// `Err(Compacted)` when `from` is below the compact revision.
    pub fn events_between(
        &self,
        from: i64,
        to: i64,
        max_revisions: usize,
    ) -> Result<Vec<RevisionEvents>, CommandError> {
        let _st = self.read_state();
        let compact = self.compact_revision();
        if from < compact {
            return Err(CommandError::Compacted {
                requested: from,
                compact_revision: compact,
            });
        }
        let to = to.min(self.current_revision());
        let mut out: Vec<RevisionEvents> = Vec::new();
        if from > to || max_revisions == 0 {
            return Ok(out);
        }
        let tree = &self.inner.tree;
        for item in tree.range(keys::hist(from.max(1), 0)..keys::hist(to + 1, 0)) {
            let (k, v) = item.map_err(|e| read_error(e.into()))?;
            let (rev, _) = keys::parse_hist(&k).map_err(read_error)?;
            let event: Event = codec::decode(&v).map_err(|e| read_error(e.into()))?;
            match out.last_mut() {
                Some(last) if last.revision == rev => last.events.push(event),
                _ => {
                    if out.len() == max_revisions {
                        break;
                    }
                    out.push(RevisionEvents {
                        revision: rev,
                        events: vec![event],
                    });
                }
            }
        }
        Ok(out)
    }

    pub fn lease(&self, id: i64) -> Option<LeaseRecord> {
        let _st = self.read_state();
        let tree = &self.inner.tree;
        let ttl = match tree.get(keys::lease(id)) {
            Ok(Some(v)) => keys::parse_i64(&v).ok()?,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(error = %e, lease = id, "reading a lease");
                return None;
            }
        };
        let prefix = keys::lease_keys_prefix(id);
        let keys = tree
            .scan_prefix(&prefix)
            .filter_map(|item| item.ok())
            .map(|(k, _)| k[prefix.len()..].to_vec())
            .collect();
        Some(LeaseRecord { id, ttl, keys })
    }

    /// Every lease: (id, granted ttl).
    pub fn leases(&self) -> Vec<(i64, i64)> {
        let _st = self.read_state();
        self.inner
            .tree
            .scan_prefix([keys::LEASE])
            .filter_map(|item| item.ok())
            .filter_map(|(k, v)| Some((keys::parse_lease(&k).ok()?, keys::parse_i64(&v).ok()?)))
            .collect()
    }

    /// The last log entry applied (persisted with the data).
    pub fn last_applied(&self) -> Option<LogId> {
        self.read_state().last_applied
    }

    /// The membership as of the last applied membership entry.
    pub fn last_membership(&self) -> StoredMembership {
        self.read_state().membership.clone()
    }

    /// The cluster's id, as etcd reports it in every response header (0 before the first
    /// entry is applied).
    pub fn cluster_id(&self) -> u64 {
        self.read_state().cluster_id
    }

    /// The members whose NOSPACE alarm is raised, ascending.
    pub fn alarms(&self) -> Vec<NodeId> {
        self.read_state().alarms.iter().copied().collect()
    }

    /// Number of live keys (for metrics and status).
    pub fn key_count(&self) -> usize {
        let _st = self.read_state();
        self.inner.tree.scan_prefix([keys::CUR]).count()
    }
}

/// A cluster id from the log id of the cluster's first entry (FNV-1a, never 0).
fn cluster_id_of(log_id: LogId) -> u64 {
    fnv1a64(log_id.to_string().as_bytes()).max(1)
}

/// The 64-bit FNV-1a hash: stable across Rust releases and platforms (unlike std's
/// `DefaultHasher`), for values every member must compute alike.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Counts one more pair in range; true if it also goes into the answer (not `count_only`,
/// and within `limit`; past it, `more` is set).
fn admit(out: &mut RangeResult, op: &RangeOp) -> bool {
    out.count += 1;
    if op.count_only {
        return false;
    }
    if op.limit > 0 && out.kvs.len() as i64 >= op.limit {
        out.more = true;
        return false;
    }
    true
}

/// Applies `keys_only` to a pair.
fn shape(mut kv: KeyValue, op: &RangeOp) -> KeyValue {
    if op.keys_only {
        kv.value.clear();
    }
    kv
}

/// The change of a key in effect at `revision`, if any.
fn at_revision(revs: &[KeyRev], revision: i64) -> Option<KeyRev> {
    let n = revs.partition_point(|r| r.revision <= revision);
    n.checked_sub(1).map(|i| revs[i])
}

/// Bounds of a user range in the index.
fn index_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    if range_end.is_empty() {
        (Bound::Included(key), Bound::Included(key))
    } else if range_end == [0] {
        (Bound::Included(key), Bound::Unbounded)
    } else {
        (Bound::Included(key), Bound::Excluded(range_end))
    }
}

/// A read at a past revision, through the index.
fn range_at(tree: &sled::Tree, st: &State, op: &RangeOp) -> Result<RangeResult, MvccError> {
    let mut out = RangeResult::default();
    if !op.range_end.is_empty()
        && op.range_end != [0]
        && op.range_end.as_slice() <= op.key.as_slice()
    {
        return Ok(out);
    }
    for (_, revs) in st
        .index
        .range::<[u8], _>(index_bounds(&op.key, &op.range_end))
    {
        let Some(kr) = at_revision(revs, op.revision) else {
            continue;
        };
        if kr.tombstone {
            continue;
        }
        if !admit(&mut out, op) {
            continue;
        }
        let v = tree
            .get(keys::hist(kr.revision, kr.sub))?
            .ok_or_else(|| MvccError::Corrupt(format!("history at {} missing", kr.revision)))?;
        let event: Event = codec::decode(&v)?;
        out.kvs.push(shape(event.kv, op));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
