//! Leases in an entry: granting (allocating an id when none is given: the lowest free one
//! above the highest ever granted), revoking (deleting every attached key at one revision),
//! and the lease table as this entry sees it (what exists, which keys are attached).
//!
//! Deterministic like the rest of the apply; it does not keep time (expiry is the leader's
//! lease clock, carried out through the log as revocations).

use std::collections::BTreeSet;

use super::ApplyCtx;
use crate::mvcc::{keys, MvccError};
use crate::types::{CommandError, CommandResult};

impl ApplyCtx<'_> {
    /// Grants lease `id` (0: a new id) with `ttl` seconds; refused if `id` exists.
    pub(super) fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<CommandResult, MvccError> {
        let id = if id == 0 {
            self.free_lease_id()?
        } else if self.lease_exists(id)? {
            return Ok(self.rejected(CommandError::LeaseExists(id)));
        } else {
            id
        };
        self.lease_seq = self.lease_seq.max(id);
        self.leases.insert(id, Some(ttl));
        self.batch.insert(&keys::lease(id), &keys::i64_value(ttl));
        Ok(CommandResult::LeaseGrant {
            revision: self.revision,
            id,
            ttl,
        })
    }

    /// The lowest id above every one granted so far that no lease holds.
    fn free_lease_id(&self) -> Result<i64, MvccError> {
        let mut next = self.lease_seq + 1;
        while self.lease_exists(next)? {
            next += 1;
        }
        Ok(next)
    }

    /// Revokes lease `id`, deleting its keys at the next revision; refused if it does not
    /// exist.
    pub(super) fn lease_revoke(&mut self, id: i64) -> Result<CommandResult, MvccError> {
        if !self.lease_exists(id)? {
            return Ok(self.rejected(CommandError::LeaseNotFound(id)));
        }
        let rev = self.revision + 1;
        for key in self.lease_keys_of(id)? {
            if self.get(&key)?.is_some() {
                self.delete_key(&key, rev)?;
            }
        }
        self.commit_revision(rev);
        self.leases.insert(id, None);
        self.batch.remove(&keys::lease(id));
        Ok(CommandResult::LeaseRevoke {
            revision: self.revision,
        })
    }

    pub(super) fn lease_exists(&self, id: i64) -> Result<bool, MvccError> {
        if let Some(v) = self.leases.get(&id) {
            return Ok(v.is_some());
        }
        Ok(self.tree.contains_key(keys::lease(id))?)
    }

    pub(super) fn lease_keys_of(&self, id: i64) -> Result<Vec<Vec<u8>>, MvccError> {
        let prefix = keys::lease_keys_prefix(id);
        let mut found = BTreeSet::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, _) = item?;
            found.insert(k[prefix.len()..].to_vec());
        }
        for ((lid, key), attached) in &self.lease_keys {
            if *lid == id {
                if *attached {
                    found.insert(key.clone());
                } else {
                    found.remove(key);
                }
            }
        }
        Ok(found.into_iter().collect())
    }

    pub(super) fn attach(&mut self, lease: i64, key: &[u8]) {
        self.batch.insert(keys::lease_key(lease, key), &[] as &[u8]);
        self.lease_keys.insert((lease, key.to_vec()), true);
    }

    pub(super) fn detach(&mut self, lease: i64, key: &[u8]) {
        self.batch.remove(keys::lease_key(lease, key));
        self.lease_keys.insert((lease, key.to_vec()), false);
    }
}
