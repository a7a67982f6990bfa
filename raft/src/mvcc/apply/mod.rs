//! Applying commands: computes, for one log entry, every record to write (one `sled::Batch`),
//! the results, the events per revision and the index changes. Reads see the entry's own
//! earlier writes through an overlay, so a transaction's range sees its own puts and several
//! commands in one entry build on each other. Nothing is written until
//! [`MvccStore::apply_batch`](super::MvccStore::apply_batch) applies the batch; a failure
//! half-way leaves the store untouched.
//!
//! [`ApplyCtx::apply`] passes each command through the NOSPACE gate ([`capped`]) to a
//! dispatcher over the plain operations (put, delete, transaction, compaction, here);
//! leases ([`lease`]) and alarms ([`alarm`]) have handlers of their own. Everything here is
//! deterministic and touches only the entry's batch and overlay, never sled directly.

use std::collections::{BTreeMap, BTreeSet};

mod alarm;
mod capped;
mod lease;

use super::{at_revision, keys, range_at, KeyRev, MvccError, State};
use crate::codec;
use crate::types::*;

/// Everything one entry produced, ready to commit.
pub(super) struct Output {
    pub batch: sled::Batch,
    pub events: Vec<RevisionEvents>,
    pub index_adds: Vec<(Vec<u8>, KeyRev)>,
    /// Keys whose first `n` index entries were compacted away.
    pub index_prunes: Vec<(Vec<u8>, usize)>,
    pub revision: i64,
    pub compact: i64,
    pub lease_seq: i64,
    /// The alarm set, if this entry changed it.
    pub alarms: Option<BTreeSet<NodeId>>,
}

pub(super) struct ApplyCtx<'a> {
    tree: &'a sled::Tree,
    st: &'a State,
    batch: sled::Batch,
    /// Current values written by this entry (None = deleted).
    cur: BTreeMap<Vec<u8>, Option<KeyValue>>,
    /// Leases granted (Some(ttl)) or revoked (None) by this entry.
    leases: BTreeMap<i64, Option<i64>>,
    /// Lease attachments added (true) or removed (false) by this entry.
    lease_keys: BTreeMap<(i64, Vec<u8>), bool>,
    revision: i64,
    compact: i64,
    lease_seq: i64,
    /// The alarm set, if this entry changed it.
    alarms: Option<BTreeSet<NodeId>>,
    /// Events of the revision being written.
    pending: Vec<Event>,
    events: Vec<RevisionEvents>,
    index_adds: Vec<(Vec<u8>, KeyRev)>,
    index_prunes: Vec<(Vec<u8>, usize)>,
}

impl<'a> ApplyCtx<'a> {
    pub fn new(tree: &'a sled::Tree, st: &'a State, revision: i64, compact: i64) -> Self {
        ApplyCtx {
            tree,
            st,
            batch: sled::Batch::default(),
            cur: BTreeMap::new(),
            leases: BTreeMap::new(),
            lease_keys: BTreeMap::new(),
            revision,
            compact,
            lease_seq: st.lease_seq,
            alarms: None,
            pending: Vec::new(),
            events: Vec::new(),
            index_adds: Vec::new(),
            index_prunes: Vec::new(),
        }
    }

    /// Applies one command: through the NOSPACE gate ([`capped`]), then [`Self::dispatch`].
    /// Deterministic: the same state and command give the same result on every member.
    pub fn apply(&mut self, cmd: &Command) -> Result<CommandResult, MvccError> {
        capped::NoSpaceGate(self).apply(cmd)
    }

    /// Applies one command, ungated: each kind to its operation.
    fn dispatch(&mut self, cmd: &Command) -> Result<CommandResult, MvccError> {
        match cmd {
            Command::Put(op) => self.apply_put(op),
            Command::DeleteRange(op) => self.apply_delete(op),
            Command::Txn(txn) => self.txn(txn),
            Command::LeaseGrant { id, ttl } => self.lease_grant(*id, *ttl),
            Command::LeaseRevoke { id } => self.lease_revoke(*id),
            Command::Compact { revision } => self.apply_compact(*revision),
            Command::Alarm { member, raise } => Ok(self.alarm(*member, *raise)),
        }
    }

    /// A put at the next revision; refused if it names a lease that does not exist.
    fn apply_put(&mut self, op: &PutOp) -> Result<CommandResult, MvccError> {
        if op.lease != 0 && !self.lease_exists(op.lease)? {
            return Ok(self.rejected(CommandError::LeaseNotFound(op.lease)));
        }
        let rev = self.revision + 1;
        let prev = self.put(op, rev)?;
        self.commit_revision(rev);
        Ok(CommandResult::Put {
            revision: self.revision,
            prev_kv: if op.prev_kv { prev } else { None },
        })
    }

    /// A deletion of a key or range at the next revision (no revision if nothing matched).
    fn apply_delete(&mut self, op: &DeleteOp) -> Result<CommandResult, MvccError> {
        let rev = self.revision + 1;
        let prev_kvs = self.delete(op, rev)?;
        self.commit_revision(rev);
        Ok(CommandResult::DeleteRange {
            revision: self.revision,
            deleted: prev_kvs.len() as i64,
            prev_kvs: if op.prev_kv { prev_kvs } else { Vec::new() },
        })
    }

    /// Compaction to `revision`: refused at or below the compacted revision and beyond the
    /// current one.
    fn apply_compact(&mut self, revision: i64) -> Result<CommandResult, MvccError> {
        if revision <= self.compact {
            return Ok(self.rejected(CommandError::Compacted {
                requested: revision,
                compact_revision: self.compact,
            }));
        }
        if revision > self.revision {
            return Ok(self.rejected(CommandError::FutureRevision {
                requested: revision,
                current: self.revision,
            }));
        }
        self.compact_to(revision);
        Ok(CommandResult::Compact {
            revision: self.revision,
        })
    }

    fn rejected(&self, error: CommandError) -> CommandResult {
        CommandResult::Rejected {
            revision: self.revision,
            error,
        }
    }

    /// Closes revision `rev` if anything was written at it.
    fn commit_revision(&mut self, rev: i64) {
        if !self.pending.is_empty() {
            self.revision = rev;
            self.events.push(RevisionEvents {
                revision: rev,
                events: std::mem::take(&mut self.pending),
            });
        }
    }

    fn txn(&mut self, txn: &TxnOp) -> Result<CommandResult, MvccError> {
        let mut ok = true;
        for c in &txn.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        let branch = if ok { &txn.success } else { &txn.failure };
        // Refuse the whole transaction before writing anything.
        for op in branch {
            match op {
                RequestOp::Put(p) if p.lease != 0 && !self.lease_exists(p.lease)? => {
                    return Ok(self.rejected(CommandError::LeaseNotFound(p.lease)));
                }
                RequestOp::Range(r) if r.revision > self.revision => {
                    return Ok(self.rejected(CommandError::FutureRevision {
                        requested: r.revision,
                        current: self.revision,
                    }));
                }
                RequestOp::Range(r) if r.revision > 0 && r.revision < self.compact => {
                    return Ok(self.rejected(CommandError::Compacted {
                        requested: r.revision,
                        compact_revision: self.compact,
                    }));
                }
                _ => {}
            }
        }
        let rev = self.revision + 1;
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r)?),
                RequestOp::Put(p) => {
                    let prev = self.put(p, rev)?;
                    ResponseOp::Put {
                        prev_kv: if p.prev_kv { prev } else { None },
                    }
                }
                RequestOp::DeleteRange(d) => {
                    let prev = self.delete(d, rev)?;
                    ResponseOp::DeleteRange {
                        deleted: prev.len() as i64,
                        prev_kvs: if d.prev_kv { prev } else { Vec::new() },
                    }
                }
            });
        }
        self.commit_revision(rev);
        Ok(CommandResult::Txn {
            revision: self.revision,
            succeeded: ok,
            responses,
        })
    }

    fn compare(&self, c: &Compare) -> Result<bool, MvccError> {
        let kvs = if c.range_end.is_empty() {
            self.get(&c.key)?.into_iter().collect()
        } else {
            self.current_range(&c.key, &c.range_end)?
        };
        if kvs.is_empty() {
            if let CompareTarget::Value(_) = c.target {
                return Ok(false);
            }
            return Ok(compare_one(&KeyValue::default(), c));
        }
        Ok(kvs.iter().all(|kv| compare_one(kv, c)))
    }

    /// A range inside a transaction: the current state including this entry's writes, or
    /// a past revision through the index.
    fn range(&self, op: &RangeOp) -> Result<RangeResult, MvccError> {
        if op.revision > 0 {
            return range_at(self.tree, self.st, op);
        }
        let kvs = if op.range_end.is_empty() {
            self.get(&op.key)?.into_iter().collect()
        } else {
            self.current_range(&op.key, &op.range_end)?
        };
        let mut out = RangeResult {
            count: kvs.len() as i64,
            ..RangeResult::default()
        };
        if op.count_only {
            return Ok(out);
        }
        for mut kv in kvs {
            if op.limit > 0 && out.kvs.len() as i64 >= op.limit {
                out.more = true;
                break;
            }
            if op.keys_only {
                kv.value.clear();
            }
            out.kvs.push(kv);
        }
        Ok(out)
    }

    /// The current value of `key`, seeing this entry's writes.
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        if let Some(v) = self.cur.get(key) {
            return Ok(v.clone());
        }
        match self.tree.get(keys::cur(key))? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every live pair in `[start, range_end)`, seeing this entry's writes, in key order.
    fn current_range(&self, start: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>, MvccError> {
        let mut found: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        let lo = keys::cur(start);
        let hi = keys::cur_end(range_end);
        if lo < hi {
            for item in self.tree.range(lo..hi) {
                let (_, v) = item?;
                let kv: KeyValue = codec::decode(&v)?;
                found.insert(kv.key.clone(), kv);
            }
        }
        for (k, v) in &self.cur {
            if in_range(k, start, range_end) {
                match v {
                    Some(kv) => found.insert(k.clone(), kv.clone()),
                    None => found.remove(k),
                };
            }
        }
        Ok(found.into_values().collect())
    }

    /// Records one event at `rev`.
    fn record(&mut self, rev: i64, event: Event) -> Result<(), MvccError> {
        let sub = self.pending.len() as u32;
        self.batch
            .insert(&keys::hist(rev, sub), codec::encode(&event)?);
        self.index_adds.push((
            event.kv.key.clone(),
            KeyRev {
                revision: rev,
                sub,
                tombstone: event.kind == EventType::Delete,
            },
        ));
        self.pending.push(event);
        Ok(())
    }

    /// Writes `op` at `rev`; returns the previous pair.
    fn put(&mut self, op: &PutOp, rev: i64) -> Result<Option<KeyValue>, MvccError> {
        let prev = self.get(&op.key)?;
        let kv = KeyValue {
            key: op.key.clone(),
            value: op.value.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease: op.lease,
        };
        if let Some(p) = &prev {
            if p.lease != 0 && p.lease != op.lease {
                self.detach(p.lease, &op.key);
            }
        }
        if op.lease != 0 {
            self.attach(op.lease, &op.key);
        }
        self.batch.insert(keys::cur(&op.key), codec::encode(&kv)?);
        self.cur.insert(op.key.clone(), Some(kv.clone()));
        self.record(
            rev,
            Event {
                kind: EventType::Put,
                kv,
                prev_kv: prev.clone(),
            },
        )?;
        Ok(prev)
    }

    /// Deletes every key of `op` at `rev`; returns the deleted pairs.
    fn delete(&mut self, op: &DeleteOp, rev: i64) -> Result<Vec<KeyValue>, MvccError> {
        let victims = if op.range_end.is_empty() {
            self.get(&op.key)?.into_iter().collect()
        } else {
            self.current_range(&op.key, &op.range_end)?
        };
        for kv in &victims {
            self.delete_key(&kv.key, rev)?;
        }
        Ok(victims)
    }

    fn delete_key(&mut self, key: &[u8], rev: i64) -> Result<(), MvccError> {
        let Some(prev) = self.get(key)? else {
            return Ok(());
        };
        if prev.lease != 0 {
            self.detach(prev.lease, key);
        }
        self.batch.remove(keys::cur(key));
        self.cur.insert(key.to_vec(), None);
        self.record(
            rev,
            Event {
                kind: EventType::Delete,
                kv: KeyValue {
                    key: key.to_vec(),
                    mod_revision: rev,
                    ..KeyValue::default()
                },
                prev_kv: Some(prev),
            },
        )
    }

    /// Drops history below `revision`, keeping for each key the change in effect at
    /// `revision` (unless it is a deletion older than `revision`) so reads at and after
    /// `revision` still answer, and everything at `revision` itself so a watch starting
    /// there sees whole revisions.
    fn compact_to(&mut self, revision: i64) {
        for (key, revs) in &self.st.index {
            let Some(keep) = at_revision(revs, revision) else {
                continue;
            };
            let kept_at = revs.partition_point(|r| r.revision <= revision) - 1;
            let drop_keep = keep.tombstone && keep.revision < revision;
            let drop = if drop_keep { kept_at + 1 } else { kept_at };
            if drop == 0 {
                continue;
            }
            for r in &revs[..drop] {
                self.batch.remove(&keys::hist(r.revision, r.sub));
            }
            self.index_prunes.push((key.clone(), drop));
        }
        self.compact = revision;
    }

    /// Finishes the entry: metadata joins the batch.
    pub fn finish(
        mut self,
        log_id: LogId,
        membership: Option<&StoredMembership>,
    ) -> Result<Output, MvccError> {
        self.batch
            .insert(keys::META_REVISION, &keys::i64_value(self.revision));
        self.batch
            .insert(keys::META_COMPACT, &keys::i64_value(self.compact));
        self.batch
            .insert(keys::META_LEASE_SEQ, &keys::i64_value(self.lease_seq));
        self.batch
            .insert(keys::META_APPLIED, codec::encode(&Some(log_id))?);
        if let Some(m) = membership {
            self.batch.insert(keys::META_MEMBERSHIP, codec::encode(m)?);
        }
        if let Some(alarms) = &self.alarms {
            self.batch.insert(keys::META_ALARMS, codec::encode(alarms)?);
        }
        Ok(Output {
            batch: self.batch,
            events: self.events,
            index_adds: self.index_adds,
            index_prunes: self.index_prunes,
            revision: self.revision,
            compact: self.compact,
            lease_seq: self.lease_seq,
            alarms: self.alarms,
        })
    }
}

fn compare_one(kv: &KeyValue, c: &Compare) -> bool {
    use std::cmp::Ordering;
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
        CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::Greater => ord == Ordering::Greater,
    }
}
