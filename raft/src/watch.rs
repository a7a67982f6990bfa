//! The watch hub: every applied revision is published here (by the state machine, after the
//! write is durable in sled), and watchers subscribe to a key range from a start revision.
//! A watcher gets history from the MVCC store first, then live events, with no gap and no
//! duplicate; a watcher that falls behind is moved back to history catch-up, never dropped
//! silently, and never makes the publisher wait or memory grow without bound.

use crate::types::RevisionEvents;

/// Receives what the state machine applied, in order. Implemented by [`WatchHub`]; tests of
/// the storage layer use their own.
pub trait ApplyListener: Send + Sync + 'static {
    /// Revisions just applied (and durable in sled), ascending, each whole.
    fn applied(&self, events: Vec<RevisionEvents>);
    /// The state machine was replaced by a snapshot; its revision is now `current_revision`.
    /// Revisions up to it are readable from the MVCC store's history.
    fn reset(&self, current_revision: i64);
}

#[derive(Clone)]
pub struct WatchHub {}

impl WatchHub {
    pub fn new(_mvcc: crate::mvcc::MvccStore, _max_watchers: usize) -> Self {
        WatchHub {}
    }
}

impl ApplyListener for WatchHub {
    fn applied(&self, _events: Vec<RevisionEvents>) {}
    fn reset(&self, _current_revision: i64) {}
}
