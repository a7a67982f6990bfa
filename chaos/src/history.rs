//! What a run recorded: every client operation with its invoke and completion times and
//! outcome, and every watcher's received messages. Plain data, serialisable, so a failed
//! run's history can be saved and checked again.

use serde::{Deserialize, Serialize};

/// A client's request on one key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A linearizable read.
    Get { key: String },
    /// A put of a value no other operation writes.
    Put { key: String, value: String },
    /// Compare-and-swap: if the key's value is `expected` (`None`: the key is absent), set it
    /// to `new`; otherwise change nothing.
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Cas { key, .. } => key,
        }
    }
}

/// How an operation ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A get's answer: the value, or `None` for an absent key.
    Read(Option<String>),
    /// A put was acknowledged.
    Written,
    /// A compare-and-swap was answered: `true` if it swapped, `false` if the compare failed
    /// (then it changed nothing).
    Swapped(bool),
    /// Definitely did not happen (refused before it was proposed).
    Failed,
    /// May or may not have happened (timeout, connection lost after sending).
    Unknown,
}

/// One operation as a client saw it. Times are nanoseconds since the run started, on one
/// monotonic clock shared by every client.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub id: u64,
    pub client: u32,
    pub op: Op,
    pub invoke_ns: u64,
    /// When the answer came; for `Unknown` the time the client gave up (the operation may
    /// still take effect later).
    pub complete_ns: u64,
    pub outcome: Outcome,
    /// The store revision the answer carried (the write's revision for a put or a swap,
    /// the read revision for a get), when there was an answer.
    pub revision: Option<i64>,
}

/// One change to one key, as a watch delivered it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    /// The new value; `None` for a delete.
    pub value: Option<String>,
}

/// Every change of one revision, as delivered in one watch message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RevisionBatch {
    pub revision: i64,
    pub changes: Vec<Change>,
}

/// One connection of a watcher: the revision it asked to start from and the messages it
/// received, in order, until the connection ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct WatchSegment {
    pub node: String,
    pub start_revision: i64,
    pub batches: Vec<RevisionBatch>,
}

/// A watcher on the harness's key prefix that reconnected (resuming after the last revision
/// it had) whenever its node went away.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct WatcherLog {
    pub name: String,
    pub segments: Vec<WatchSegment>,
}

/// A whole run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct History {
    pub operations: Vec<Operation>,
    pub watchers: Vec<WatcherLog>,
    /// The store's own record of the prefix after the run, every revision from the run's
    /// first: what the watchers are judged against.
    pub truth: Vec<RevisionBatch>,
}
