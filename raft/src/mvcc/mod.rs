//! The multi-version key-value state: one cluster-wide revision, per-key create/mod revision
//! and version, history retained until compaction, the lease table, and applying a batch of
//! [`Command`]s atomically (data, revision, `last_applied` and membership in one sled write).
//!
//! Owns the state machine's sled trees. Knows nothing of Raft networking or HTTP; the
//! `storage` module drives it from openraft, `http` and `watch` read from it.
//!
//! [`MvccStore`] is a cheap-to-clone handle; all methods take `&self` and are safe to call
//! concurrently with `apply_batch` (which only the state machine calls, one at a time).

use crate::types::*;

/// Shared handle on the MVCC state.
#[derive(Clone)]
pub struct MvccStore {}

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

impl MvccStore {
    /// Opens (or creates) the state machine's trees in `db` and loads the in-memory index.
    pub fn open(_db: &sled::Db) -> Result<Self, MvccError> {
        todo!()
    }

    /// Applies one log entry's commands. `log_id` and `membership` are persisted in the same
    /// atomic write as the data, so re-applying an entry after a crash is harmless.
    pub fn apply_batch(
        &self,
        _log_id: LogId,
        _commands: &[Command],
        _membership: Option<StoredMembership>,
    ) -> Result<Applied, MvccError> {
        todo!()
    }

    /// Reads a key or range at the current revision or, with `op.revision`, in history.
    pub fn range(&self, _op: &RangeOp) -> Result<RangeResult, CommandError> {
        todo!()
    }

    /// The store's current revision (1 for an empty store, as in etcd).
    pub fn current_revision(&self) -> i64 {
        todo!()
    }

    /// Revisions below this are gone (0 = never compacted).
    pub fn compact_revision(&self) -> i64 {
        todo!()
    }

    /// History for watchers: every revision in `[from, to]` (inclusive, `to` capped at the
    /// current revision), at most `max_revisions` of them, each whole, `prev_kv` filled.
    /// `Err(Compacted)` when `from` is below the compact revision.
    pub fn events_between(
        &self,
        _from: i64,
        _to: i64,
        _max_revisions: usize,
    ) -> Result<Vec<RevisionEvents>, CommandError> {
        todo!()
    }

    pub fn lease(&self, _id: i64) -> Option<LeaseRecord> {
        todo!()
    }

    /// Every lease: (id, granted ttl).
    pub fn leases(&self) -> Vec<(i64, i64)> {
        todo!()
    }
}
