//! An informer: a [`Cache`] of every object of one kind, kept by a [`watcher`], with its
//! changes fanned out to every subscriber. One informer per kind can serve several
//! controllers in a process (each [`Informer::subscribe`]s), so a process holds one copy of
//! the pods however many controllers look at them. Consumers read the cache and react to
//! [`Change`]s; they never poll the store.

use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::cache::{Cache, Change};
use super::task::{spawn_owned, OwnedTask};
use super::watcher::watcher;
use crate::registry::{Object, Registry};

/// The changes one subscriber receives, in the order the cache made them.
pub type Changes<T> = mpsc::UnboundedReceiver<Arc<Change<T>>>;

type Subscribers<T> = Arc<Mutex<Vec<mpsc::UnboundedSender<Arc<Change<T>>>>>>;

/// The cache side of an informer; cheap to clone.
pub struct Informer<T> {
    cache: Arc<RwLock<Cache<T>>>,
    subscribers: Subscribers<T>,
    synced: watch::Receiver<bool>,
    /// The list-and-watch task; it stops when the last clone of the informer is dropped.
    _task: Arc<OwnedTask<()>>,
}

impl<T> Clone for Informer<T> {
    fn clone(&self) -> Self {
        Informer {
            cache: self.cache.clone(),
            subscribers: self.subscribers.clone(),
            synced: self.synced.clone(),
            _task: self._task.clone(),
        }
    }
}

impl<T: Object> Informer<T> {
    /// Starts listing and watching. Subscribe before reading the cache, so that no change
    /// falls between what was read and what is received.
    pub fn start(registry: Registry) -> Informer<T> {
        let cache = Arc::new(RwLock::new(Cache::default()));
        let subscribers: Subscribers<T> = Arc::default();
        let (synced_tx, synced) = watch::channel(false);
        let task = spawn_owned(keep(
            registry,
            cache.clone(),
            subscribers.clone(),
            synced_tx,
        ));
        Informer {
            cache,
            subscribers,
            synced,
            _task: Arc::new(task),
        }
    }

    /// Every change from now on.
    pub fn subscribe(&self) -> Changes<T> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache<T>> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached object at `key` (`namespace/name`, or `name`).
    pub fn get(&self, key: &str) -> Option<T> {
        self.read().get(key).cloned()
    }

    pub fn list(&self) -> Vec<T> {
        self.read().values().cloned().collect()
    }

    /// Every cached object's key.
    pub fn keys(&self) -> Vec<String> {
        self.read().values().map(Object::key).collect()
    }

    /// Calls `f` on every cached object without cloning them all.
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        for v in self.read().values() {
            f(v);
        }
    }

    /// The store revision the cache reflects.
    pub fn revision(&self) -> i64 {
        self.read().revision()
    }

    /// Resolves once `done` holds for the cache (looked at after the first list and after
    /// every change).
    pub async fn wait_until(&self, done: impl Fn(&Informer<T>) -> bool) {
        let mut changes = self.subscribe();
        self.wait_synced().await;
        while !done(self) {
            if changes.recv().await.is_none() {
                return;
            }
        }
    }

    /// Resolves once the first list has filled the cache.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Applies the watcher's events to the cache and hands each change to every subscriber
/// still listening.
async fn keep<T: Object>(
    registry: Registry,
    cache: Arc<RwLock<Cache<T>>>,
    subscribers: Subscribers<T>,
    synced: watch::Sender<bool>,
) {
    let mut events = watcher::<T>(registry);
    while let Some(event) = events.next().await {
        let changes = {
            let mut c = cache.write().unwrap_or_else(|p| p.into_inner());
            let changes = c.apply(event);
            if c.is_listed() && !*synced.borrow() {
                let _ = synced.send(true);
            }
            changes
        };
        if changes.is_empty() {
            continue;
        }
        let mut subs = subscribers.lock().unwrap_or_else(|p| p.into_inner());
        for change in changes {
            let change = Arc::new(change);
            subs.retain(|tx| tx.send(change.clone()).is_ok());
        }
    }
}
