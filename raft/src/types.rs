//! The store's internal vocabulary: the Raft type configuration, the commands a log entry
//! carries, what applying them returns, and the key-value records and events the MVCC layer
//! produces.
//!
//! These types cross the Raft wire and the disk, so they are encoded with bincode: no
//! `skip_serializing_if`, `flatten`, `untagged` or `serde_json::Value` here. The JSON shapes
//! users see live in [`crate::api`]; this module must not know about HTTP.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A member's id in the Raft group.
pub type NodeId = u64;

/// A member's address book entry: `addr` is its peer (Raft) address, `host:port`.
pub type MemberNode = openraft::BasicNode;

openraft::declare_raft_types!(
    /// openraft type configuration for the Miniku store.
    pub TypeConfig:
        D = WriteBatch,
        R = BatchResult,
        NodeId = NodeId,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, MemberNode>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MemberNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;

/// The payload of one Raft log entry: many client commands proposed together (the proposer
/// batches concurrent writes so one fsync serves many clients). Commands apply in order; each
/// writing command takes its own revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct WriteBatch {
    pub commands: Vec<Command>,
}

/// What applying a [`WriteBatch`] returned: one result per command, in order. Blank and
/// membership entries get an empty result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct BatchResult {
    pub results: Vec<CommandResult>,
}

impl std::fmt::Display for WriteBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteBatch({} commands)", self.commands.len())
    }
}

/// One state-changing request. Everything that changes the store goes through the log as one
/// of these, including lease expiry (the leader proposes `LeaseRevoke`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put(PutOp),
    DeleteRange(DeleteOp),
    Txn(TxnOp),
    /// Grant a lease. `id == 0` lets the state machine pick the next free id.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revoke a lease (by a client or by the leader's expiry): deletes its keys at one revision.
    LeaseRevoke {
        id: i64,
    },
    /// Drop history below `revision`.
    Compact {
        revision: i64,
    },
    /// Raise (`raise: true`) or clear `member`'s NOSPACE alarm. While any member's alarm is
    /// raised, commands that add data (puts, transactions with puts, lease grants) are
    /// refused on every member; reads, deletes, lease revokes and compaction still work.
    /// Writes no revision.
    Alarm {
        member: NodeId,
        raise: bool,
    },
}

impl Command {
    /// Roughly how many bytes the command adds to a log entry (its keys and values).
    pub fn payload_bytes(&self) -> usize {
        let ops = |ops: &[RequestOp]| -> usize {
            ops.iter()
                .map(|op| match op {
                    RequestOp::Put(p) => p.key.len() + p.value.len(),
                    RequestOp::Range(r) => r.key.len() + r.range_end.len(),
                    RequestOp::DeleteRange(d) => d.key.len() + d.range_end.len(),
                })
                .sum()
        };
        match self {
            Command::Put(p) => p.key.len() + p.value.len(),
            Command::DeleteRange(d) => d.key.len() + d.range_end.len(),
            Command::Txn(t) => {
                let compares: usize = t
                    .compare
                    .iter()
                    .map(|c| {
                        let value = match &c.target {
                            CompareTarget::Value(v) => v.len(),
                            _ => 0,
                        };
                        c.key.len() + c.range_end.len() + value
                    })
                    .sum();
                compares + ops(&t.success) + ops(&t.failure)
            }
            Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::Compact { .. }
            | Command::Alarm { .. } => 0,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct PutOp {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// 0 = no lease.
    pub lease: i64,
    pub prev_kv: bool,
}

/// A read of one key (`range_end` empty) or of the half-open range `[key, range_end)`.
/// `range_end == [0]` means "every key >= key" (etcd's convention).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RangeOp {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// 0 = no limit.
    pub limit: i64,
    /// 0 = the current revision; otherwise a historical read at that revision.
    pub revision: i64,
    pub keys_only: bool,
    pub count_only: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct DeleteOp {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

/// etcd's transaction: if every compare holds, run `success`, else `failure`. The whole
/// transaction takes exactly one revision if it writes anything.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct TxnOp {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    Range(RangeOp),
    Put(PutOp),
    DeleteRange(DeleteOp),
}

/// A comparison against the current state of `key` (or every key in `[key, range_end)`).
/// A missing key compares as version 0, create/mod revision 0, lease 0 and an empty value
/// for `Value` (etcd: a value compare on a missing key fails).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    pub target: CompareTarget,
    pub result: CompareResult,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Lease(i64),
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// One stored key-value pair as etcd describes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// 1 on create, +1 per change; a deleted key has no version.
    pub version: i64,
    pub lease: i64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Put,
    Delete,
}

/// One change to one key. For a delete, `kv` holds the key and `mod_revision` = the delete's
/// revision, everything else zero. `prev_kv` is the key's state just before the change (absent
/// for a create).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventType,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

/// Every event of one revision, in the order they happened. A revision is never split across
/// two of these.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RevisionEvents {
    pub revision: i64,
    pub events: Vec<Event>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range (before `limit`).
    pub count: i64,
    /// True when `limit` cut the result short.
    pub more: bool,
}

/// The outcome of one op inside a transaction.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    Range(RangeResult),
    Put {
        prev_kv: Option<KeyValue>,
    },
    DeleteRange {
        deleted: i64,
        prev_kvs: Vec<KeyValue>,
    },
}

/// The outcome of applying one [`Command`]. `revision` is always the store's revision right
/// after the command (unchanged when it wrote nothing).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CommandResult {
    Put {
        revision: i64,
        prev_kv: Option<KeyValue>,
    },
    DeleteRange {
        revision: i64,
        deleted: i64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn {
        revision: i64,
        succeeded: bool,
        responses: Vec<ResponseOp>,
    },
    LeaseGrant {
        revision: i64,
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        revision: i64,
    },
    Compact {
        revision: i64,
    },
    Alarm {
        revision: i64,
    },
    /// The command was rejected deterministically by the state machine; nothing changed.
    Rejected {
        revision: i64,
        error: CommandError,
    },
}

impl CommandResult {
    /// The store revision right after this command.
    pub fn revision(&self) -> i64 {
        match self {
            CommandResult::Put { revision, .. }
            | CommandResult::DeleteRange { revision, .. }
            | CommandResult::Txn { revision, .. }
            | CommandResult::LeaseGrant { revision, .. }
            | CommandResult::LeaseRevoke { revision }
            | CommandResult::Compact { revision }
            | CommandResult::Alarm { revision }
            | CommandResult::Rejected { revision, .. } => *revision,
        }
    }
}

/// Why the state machine refused a command. Deterministic: every member refuses the same way.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("lease {0} not found")]
    LeaseNotFound(i64),
    #[error("lease {0} already exists")]
    LeaseExists(i64),
    #[error("revision {requested} has been compacted (compact revision {compact_revision})")]
    Compacted {
        requested: i64,
        compact_revision: i64,
    },
    #[error("revision {requested} is in the future (current revision {current})")]
    FutureRevision { requested: i64, current: i64 },
    /// A member is out of disk space (its NOSPACE alarm is raised): commands that add data
    /// are refused cluster-wide until it has space again.
    #[error("no space: the NOSPACE alarm is raised by member(s) {members:?}, so writes that add data are refused (reads, deletes, lease revokes and compaction still work); free disk space on those members and the alarm clears by itself")]
    NoSpace { members: Vec<NodeId> },
    /// A local read failed in storage (never produced by applying a command).
    #[error("storage: {0}")]
    Storage(String),
}

/// A lease as the state machine keeps it. Expiry deadlines are not replicated: only the
/// leader tracks them (see `lease`), and a new leader restarts every lease's full TTL.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: i64,
    pub ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

/// Returns the end of the prefix range for `prefix`: the prefix with its last byte
/// incremented (dropping trailing 0xff bytes). An empty or all-0xff prefix gives `[0]`,
/// meaning "to the end of the key space".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Both a prefix and an explicit range end were given: they say different things.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("give either a prefix or a range end, not both")]
pub struct PrefixAndRangeEnd;

/// The range end of a request for `key` given as a prefix or as an explicit end, in etcd's
/// conventions: the prefix's end ([`prefix_end`]), the explicit end, or empty (just `key`).
pub fn range_end(
    key: &[u8],
    prefix: bool,
    explicit: Option<Vec<u8>>,
) -> Result<Vec<u8>, PrefixAndRangeEnd> {
    match (prefix, explicit) {
        (true, Some(_)) => Err(PrefixAndRangeEnd),
        (true, None) => Ok(prefix_end(key)),
        (false, Some(end)) => Ok(end),
        (false, None) => Ok(Vec::new()),
    }
}

/// Whether `key` lies in the range described by `(start, range_end)` with etcd's conventions:
/// empty `range_end` = exactly `start`; `[0]` = every key >= start.
pub fn in_range(key: &[u8], start: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        key == start
    } else if range_end == [0] {
        key >= start
    } else {
        key >= start && key < range_end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PutOp` as it was declared before its byte fields were marked `serde_bytes`.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct PlainPutOp {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
        prev_kv: bool,
    }

    #[test]
    fn byte_fields_encode_as_before_so_old_logs_and_snapshots_still_decode() {
        let cfg = bincode::config::standard();
        let value: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let old = PlainPutOp {
            key: b"k\xff".to_vec(),
            value: value.clone(),
            lease: 7,
            prev_kv: true,
        };
        let new = PutOp {
            key: b"k\xff".to_vec(),
            value,
            lease: 7,
            prev_kv: true,
        };
        let old_bytes = bincode::serde::encode_to_vec(&old, cfg).expect("encode");
        let new_bytes = bincode::serde::encode_to_vec(&new, cfg).expect("encode");
        assert_eq!(old_bytes, new_bytes);
        let (back, _): (PutOp, usize) =
            bincode::serde::decode_from_slice(&old_bytes, cfg).expect("decode");
        assert_eq!(back, new);
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn range_membership_follows_etcd_conventions() {
        assert!(in_range(b"a", b"a", b""));
        assert!(!in_range(b"ab", b"a", b""));
        assert!(in_range(b"ab", b"a", &prefix_end(b"a")));
        assert!(!in_range(b"b", b"a", &prefix_end(b"a")));
        assert!(in_range(b"zzz", b"a", &[0]));
    }
}
