//! The watch hub: every applied revision is published here (by the state machine, right
//! after it is written to sled), and watchers subscribe to a key range from a start revision.
//!
//! A watcher is either *synced* — it gets each newly published revision that touches its
//! range through a bounded channel — or *catching up* — it reads whole revisions from the
//! MVCC history until it reaches the last published one, then switches to synced under the
//! hub's lock, so there is no gap and no duplicate. A new watcher starts catching up from its
//! start revision. A synced watcher whose channel is full (a slow reader) is switched back to
//! catching up instead of being dropped or making the publisher wait; memory per watcher is
//! bounded by the channel. If the history it needs was compacted meanwhile, its stream ends
//! with the compact revision so the client knows to re-list.
//!
//! This module knows nothing of HTTP; `http::watch` turns subscriptions into SSE streams.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::{mpsc, Notify};

use crate::error::StoreError;
use crate::mvcc::MvccStore;
use crate::types::{in_range, CommandError, RevisionEvents};

/// Receives what the state machine applied, in order. Implemented by [`WatchHub`]; tests of
/// the storage layer use their own.
pub trait ApplyListener: Send + Sync + 'static {
    /// Revisions just applied (and durable in sled), ascending, each whole.
    fn applied(&self, events: Vec<RevisionEvents>);
    /// The state machine was replaced by a snapshot; its revision is now `current_revision`.
    /// Revisions up to it are readable from the MVCC store's history.
    fn reset(&self, current_revision: i64);
}

/// Revisions a synced watcher may have queued before it is moved back to catching up.
pub const WATCHER_BUFFER: usize = 128;
/// Revisions read from history per catch-up step.
const HISTORY_BATCH: usize = 1000;

struct Slot {
    key: Vec<u8>,
    range_end: Vec<u8>,
    tx: mpsc::Sender<Arc<SharedEvents>>,
    synced: bool,
    notify: Arc<Notify>,
}

struct HubState {
    slots: HashMap<u64, Slot>,
    next_id: u64,
    /// Every revision up to this one has been offered to synced watchers.
    last_published: i64,
}

struct HubInner {
    mvcc: MvccStore,
    max_watchers: usize,
    state: Mutex<HubState>,
    watchers: AtomicUsize,
}

/// Shared handle on the hub; cheap to clone.
#[derive(Clone)]
pub struct WatchHub {
    inner: Arc<HubInner>,
}

/// Keeps only the events of `rev` inside the range; None if none are.
/// One revision's events as the hub hands them out, shared by every watcher that gets all of
/// them, with slots where the serving layer keeps its encoding of the revision, so that a
/// revision is encoded once, not once per watcher.
#[derive(Debug)]
pub struct SharedEvents {
    content: RevisionEvents,
    encoded: [OnceLock<Arc<str>>; 2],
}

impl PartialEq for SharedEvents {
    fn eq(&self, other: &Self) -> bool {
        self.content == other.content
    }
}
impl Eq for SharedEvents {}

impl std::ops::Deref for SharedEvents {
    type Target = RevisionEvents;
    fn deref(&self) -> &RevisionEvents {
        &self.content
    }
}

impl SharedEvents {
    pub fn new(content: RevisionEvents) -> Self {
        SharedEvents {
            content,
            encoded: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// The encoding in slot `variant` (0 or 1, e.g. without and with previous values),
    /// made by `encode` the first time it is asked for.
    pub fn encoded(
        &self,
        variant: bool,
        encode: impl FnOnce(&RevisionEvents) -> String,
    ) -> Arc<str> {
        self.encoded[usize::from(variant)]
            .get_or_init(|| encode(&self.content).into())
            .clone()
    }
}

/// A revision's events in a watcher's range. When every event is in range (the usual
/// case), the revision itself is shared, not copied: ten thousand watchers of one prefix
/// hold ten thousand pointers to one revision, not ten thousand copies of its values.
fn filter(rev: &Arc<SharedEvents>, key: &[u8], range_end: &[u8]) -> Option<Arc<SharedEvents>> {
    let inside = rev
        .events
        .iter()
        .filter(|e| in_range(&e.kv.key, key, range_end))
        .count();
    if inside == rev.events.len() {
        return (inside > 0).then(|| rev.clone());
    }
    let events: Vec<_> = rev
        .events
        .iter()
        .filter(|e| in_range(&e.kv.key, key, range_end))
        .cloned()
        .collect();
    (!events.is_empty()).then(|| {
        Arc::new(SharedEvents::new(RevisionEvents {
            revision: rev.revision,
            events,
        }))
    })
}

impl WatchHub {
    pub fn new(mvcc: MvccStore, max_watchers: usize) -> Self {
        let last = mvcc.current_revision();
        WatchHub {
            inner: Arc::new(HubInner {
                mvcc,
                max_watchers,
                state: Mutex::new(HubState {
                    slots: HashMap::new(),
                    next_id: 1,
                    last_published: last,
                }),
                watchers: AtomicUsize::new(0),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open watchers on this member.
    pub fn watcher_count(&self) -> usize {
        self.inner.watchers.load(Ordering::Relaxed)
    }

    /// The last revision offered to watchers.
    pub fn last_published(&self) -> i64 {
        self.lock().last_published
    }

    /// Watches `[key, range_end)` (etcd conventions) from `start_revision` (inclusive; 0 =
    /// from the next revision).
    pub fn subscribe(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start_revision: i64,
    ) -> Result<WatchSubscription, StoreError> {
        let compact = self.inner.mvcc.compact_revision();
        if start_revision > 0 && start_revision < compact {
            return Err(StoreError::Rejected(CommandError::Compacted {
                requested: start_revision,
                compact_revision: compact,
            }));
        }
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        let notify = Arc::new(Notify::new());
        let mut st = self.lock();
        if st.slots.len() >= self.inner.max_watchers {
            return Err(StoreError::ResourceExhausted(format!(
                "this member already serves {} watchers (the limit)",
                self.inner.max_watchers
            )));
        }
        let start = if start_revision <= 0 {
            st.last_published + 1
        } else {
            start_revision
        };
        let id = st.next_id;
        st.next_id += 1;
        st.slots.insert(
            id,
            Slot {
                key: key.clone(),
                range_end: range_end.clone(),
                tx,
                synced: false,
                notify: notify.clone(),
            },
        );
        drop(st);
        self.inner.watchers.fetch_add(1, Ordering::Relaxed);
        Ok(WatchSubscription {
            hub: self.clone(),
            id,
            key,
            range_end,
            rx,
            notify,
            next_revision: start,
            history_reached: 0,
            backlog: VecDeque::new(),
        })
    }

    fn unsubscribe(&self, id: u64) {
        if self.lock().slots.remove(&id).is_some() {
            self.inner.watchers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Offers newly applied revisions to synced watchers.
    pub fn publish(&self, events: Vec<RevisionEvents>) {
        let mut st = self.lock();
        for rev in events.into_iter().map(|r| Arc::new(SharedEvents::new(r))) {
            if rev.revision <= st.last_published {
                continue;
            }
            for slot in st.slots.values_mut().filter(|s| s.synced) {
                let Some(mine) = filter(&rev, &slot.key, &slot.range_end) else {
                    continue;
                };
                if slot.tx.try_send(mine).is_err() {
                    // Too slow (or gone): back to catching up from history.
                    slot.synced = false;
                    slot.notify.notify_one();
                }
            }
            st.last_published = rev.revision;
        }
    }
}

impl ApplyListener for WatchHub {
    fn applied(&self, events: Vec<RevisionEvents>) {
        self.publish(events);
    }

    fn reset(&self, current_revision: i64) {
        // The revisions a snapshot brought in were never published: everyone catches up.
        let mut st = self.lock();
        for slot in st.slots.values_mut() {
            slot.synced = false;
            slot.notify.notify_one();
        }
        st.last_published = st.last_published.max(current_revision);
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// One revision's events inside the watched range.
    Events(Arc<SharedEvents>),
    /// History this watcher needs is gone; the watch is over.
    Compacted { compact_revision: i64 },
}

/// One watcher. Dropping it unsubscribes.
pub struct WatchSubscription {
    hub: WatchHub,
    id: u64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    rx: mpsc::Receiver<Arc<SharedEvents>>,
    notify: Arc<Notify>,
    /// Every matching revision below this one has been handed out.
    next_revision: i64,
    /// History has been read up to here (inclusive).
    history_reached: i64,
    backlog: VecDeque<Arc<SharedEvents>>,
}

impl WatchSubscription {
    /// The next revision with events in range, in order. Waits for one.
    pub async fn next(&mut self) -> WatchItem {
        loop {
            if let Some(ev) = self.backlog.pop_front() {
                self.next_revision = ev.revision + 1;
                if self.backlog.is_empty() {
                    self.next_revision = self.next_revision.max(self.history_reached + 1);
                }
                return WatchItem::Events(ev);
            }
            if let Ok(ev) = self.rx.try_recv() {
                if ev.revision >= self.next_revision {
                    self.next_revision = ev.revision + 1;
                    return WatchItem::Events(ev);
                }
                continue;
            }
            let notified = self.notify.notified();
            let (synced, upto) = {
                let st = self.hub.lock();
                let synced = st.slots.get(&self.id).is_some_and(|s| s.synced);
                (synced, st.last_published)
            };
            if synced {
                tokio::select! {
                    got = self.rx.recv() => {
                        if let Some(ev) = got {
                            if ev.revision >= self.next_revision {
                                self.next_revision = ev.revision + 1;
                                return WatchItem::Events(ev);
                            }
                        }
                    }
                    _ = notified => {}
                }
                continue;
            }
            // Catching up.
            if self.next_revision > upto {
                // Caught up: become synced, unless something was published meanwhile.
                let mut st = self.hub.lock();
                if self.next_revision > st.last_published && self.rx.is_empty() {
                    if let Some(slot) = st.slots.get_mut(&self.id) {
                        slot.synced = true;
                    }
                }
                continue;
            }
            match self
                .hub
                .inner
                .mvcc
                .events_between(self.next_revision, upto, HISTORY_BATCH)
            {
                Ok(revs) => {
                    let last = revs.last().map_or(upto, |r| r.revision);
                    let reached = if revs.len() < HISTORY_BATCH {
                        upto
                    } else {
                        last
                    };
                    for r in revs.into_iter().map(|r| Arc::new(SharedEvents::new(r))) {
                        if let Some(mine) = filter(&r, &self.key, &self.range_end) {
                            self.backlog.push_back(mine);
                        }
                    }
                    // Revisions up to `reached` without matching events have nothing for us.
                    self.history_reached = reached;
                    if self.backlog.is_empty() {
                        self.next_revision = reached + 1;
                    }
                }
                Err(CommandError::Compacted {
                    compact_revision, ..
                }) => return WatchItem::Compacted { compact_revision },
                Err(e) => {
                    tracing::error!(error = %e, "watch history read failed");
                    return WatchItem::Compacted {
                        compact_revision: self.hub.inner.mvcc.compact_revision(),
                    };
                }
            }
        }
    }

    /// If everything published so far has been handed out, the revision up to which the
    /// watcher is complete (for progress notifications).
    pub fn progress(&self) -> Option<i64> {
        if !self.backlog.is_empty() {
            return None;
        }
        let st = self.hub.lock();
        let synced = st.slots.get(&self.id).is_some_and(|s| s.synced);
        (synced && self.rx.is_empty()).then_some(st.last_published)
    }
}

impl Drop for WatchSubscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}
