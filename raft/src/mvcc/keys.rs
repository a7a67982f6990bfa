//! The byte layout of the MVCC tree. Everything the state machine stores lives in one sled
//! tree so that one `sled::Batch` (atomic) carries a whole log entry's effects. Each record
//! kind has a one-byte prefix; numbers are big-endian so they sort by value.
//!
//! | prefix | key                          | value                         |
//! |--------|------------------------------|-------------------------------|
//! | `c`    | user key                     | current [`KeyValue`]          |
//! | `h`    | revision (8) + sub (4)       | the [`Event`] written there   |
//! | `l`    | lease id (8)                 | granted TTL (8)               |
//! | `k`    | lease id (8) + user key      | empty: the key uses the lease |
//! | `m`    | a name                       | metadata (revision, applied…) |
//!
//! [`KeyValue`]: crate::types::KeyValue
//! [`Event`]: crate::types::Event

use super::MvccError;

pub const CUR: u8 = b'c';
pub const HIST: u8 = b'h';
pub const LEASE: u8 = b'l';
pub const LEASE_KEY: u8 = b'k';
/// Every metadata key starts with it.
pub const META: u8 = b'm';

pub const META_REVISION: &[u8] = b"mrevision";
pub const META_COMPACT: &[u8] = b"mcompact";
pub const META_APPLIED: &[u8] = b"mapplied";
pub const META_MEMBERSHIP: &[u8] = b"mmembership";
pub const META_LEASE_SEQ: &[u8] = b"mlease_seq";
/// The members whose NOSPACE alarm is raised (a sorted list of ids).
pub const META_ALARMS: &[u8] = b"malarms";
/// The cluster's id (etcd's `cluster_id`), fixed by the first log entry ever applied.
pub const META_CLUSTER_ID: &[u8] = b"mcluster_id";

pub fn cur(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(CUR);
    k.extend_from_slice(key);
    k
}

/// The end of a user range in the `c` space. `range_end == [0]` means "to the end".
pub fn cur_end(range_end: &[u8]) -> Vec<u8> {
    if range_end == [0] {
        vec![CUR + 1]
    } else {
        cur(range_end)
    }
}

pub fn hist(revision: i64, sub: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = HIST;
    k[1..9].copy_from_slice(&(revision.max(0) as u64).to_be_bytes());
    k[9..].copy_from_slice(&sub.to_be_bytes());
    k
}

/// Revision and sub of a `h` key.
pub fn parse_hist(k: &[u8]) -> Result<(i64, u32), MvccError> {
    if k.len() != 13 || k[0] != HIST {
        return Err(MvccError::Corrupt(format!("bad history key {k:?}")));
    }
    let mut rev = [0u8; 8];
    rev.copy_from_slice(&k[1..9]);
    let mut sub = [0u8; 4];
    sub.copy_from_slice(&k[9..]);
    Ok((u64::from_be_bytes(rev) as i64, u32::from_be_bytes(sub)))
}

pub fn lease(id: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LEASE;
    k[1..].copy_from_slice(&(id as u64).to_be_bytes());
    k
}

pub fn parse_lease(k: &[u8]) -> Result<i64, MvccError> {
    if k.len() != 9 || k[0] != LEASE {
        return Err(MvccError::Corrupt(format!("bad lease key {k:?}")));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&k[1..]);
    Ok(u64::from_be_bytes(id) as i64)
}

/// Prefix of every `k` entry of one lease.
pub fn lease_keys_prefix(id: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(LEASE_KEY);
    k.extend_from_slice(&(id as u64).to_be_bytes());
    k
}

pub fn lease_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut k = lease_keys_prefix(id);
    k.extend_from_slice(key);
    k
}

pub fn i64_value(v: i64) -> [u8; 8] {
    v.to_be_bytes()
}

pub fn parse_i64(v: &[u8]) -> Result<i64, MvccError> {
    let bytes: [u8; 8] = v
        .try_into()
        .map_err(|_| MvccError::Corrupt(format!("expected 8 bytes, found {}", v.len())))?;
    Ok(i64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_sort_by_revision_then_sub() {
        assert!(hist(2, 5) < hist(3, 0));
        assert!(hist(255, 0) < hist(256, 0));
        assert!(hist(3, 1) < hist(3, 2));
        assert_eq!(parse_hist(&hist(77, 9)).ok(), Some((77, 9)));
    }

    #[test]
    fn current_range_end_covers_everything_for_zero() {
        assert!(cur(b"\xff\xff") < cur_end(&[0]));
        assert_eq!(cur_end(b"b"), b"cb".to_vec());
    }
}
