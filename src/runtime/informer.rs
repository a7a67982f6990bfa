//! An informer: keeps a local cache of every object of one kind and reports each change.
//! It lists, then watches from the list's revision + 1; the store client resumes the watch
//! across node failures by itself; when history is compacted (410) it lists again and
//! reports the difference. Consumers read the cache and react to [`Change`]s; they never
//! poll the store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::task::{spawn_owned, OwnedTask};
use crate::registry::{Object, Registry, RegistryError, WatchEvent};

/// One change to the cache.
#[derive(Debug, Clone)]
pub enum Change<T> {
    /// Created or changed (`old` is what the cache held before, if anything).
    Upsert {
        old: Option<T>,
        new: T,
    },
    Deleted(T),
}

impl<T: Object> Change<T> {
    /// The changed object's key (`namespace/name`, or `name`).
    pub fn key(&self) -> String {
        match self {
            Change::Upsert { new, .. } => new.key(),
            Change::Deleted(o) => o.key(),
        }
    }
}

/// The cache side of an informer; cheap to clone.
pub struct Informer<T> {
    cache: Arc<RwLock<BTreeMap<String, T>>>,
    revision: Arc<AtomicI64>,
    synced: watch::Receiver<bool>,
    /// The list-and-watch task; it stops when the last clone of the informer is dropped.
    task: Arc<OwnedTask<()>>,
}

impl<T> Clone for Informer<T> {
    fn clone(&self) -> Self {
        Informer {
            cache: self.cache.clone(),
            revision: self.revision.clone(),
            synced: self.synced.clone(),
            task: self.task.clone(),
        }
    }
}

impl<T: Object> Informer<T> {
    /// Starts listing and watching; changes arrive on the returned channel.
    pub fn start(registry: Registry) -> (Informer<T>, mpsc::UnboundedReceiver<Change<T>>) {
        let cache = Arc::new(RwLock::new(BTreeMap::new()));
        let revision = Arc::new(AtomicI64::new(0));
        let (synced_tx, synced) = watch::channel(false);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = spawn_owned(run(
            registry,
            cache.clone(),
            revision.clone(),
            synced_tx,
            tx,
        ));
        (
            Informer {
                cache,
                revision,
                synced,
                task: Arc::new(task),
            },
            rx,
        )
    }

    /// The cached object at `key` (`namespace/name`, or `name`).
    pub fn get(&self, key: &str) -> Option<T> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    pub fn list(&self) -> Vec<T> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Calls `f` on every cached object without cloning them all.
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        for v in self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            f(v);
        }
    }

    /// The store revision the cache reflects.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// Resolves once the first list has filled the cache.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

async fn run<T: Object>(
    registry: Registry,
    cache: Arc<RwLock<BTreeMap<String, T>>>,
    revision: Arc<AtomicI64>,
    synced: watch::Sender<bool>,
    tx: mpsc::UnboundedSender<Change<T>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (objects, rev) = match registry.list::<T>().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(kind = T::KIND, error = %e, retry_in = ?backoff, "list failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Replace the cache and report the difference.
        let fresh: BTreeMap<String, T> = objects.into_iter().map(|o| (o.key(), o)).collect();
        let changes = {
            let mut c = cache.write().unwrap_or_else(|p| p.into_inner());
            let mut changes = Vec::new();
            for (name, old) in c.iter() {
                if !fresh.contains_key(name) {
                    changes.push(Change::Deleted(old.clone()));
                }
            }
            for (name, new) in &fresh {
                let old = c.get(name);
                if old.map(|o| o.resource_version()) != Some(new.resource_version()) {
                    changes.push(Change::Upsert {
                        old: old.cloned(),
                        new: new.clone(),
                    });
                }
            }
            *c = fresh;
            changes
        };
        revision.store(rev, Ordering::SeqCst);
        let _ = synced.send(true);
        for ch in changes {
            if tx.send(ch).is_err() {
                return;
            }
        }
        tracing::debug!(kind = T::KIND, revision = rev, "listed; watching");
        let mut events = registry.watch::<T>(rev + 1);
        while let Some(item) = events.next().await {
            let change = match item {
                Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                    let rv = o.resource_version();
                    let old = cache
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(o.key(), o.clone());
                    revision.fetch_max(rv, Ordering::SeqCst);
                    Change::Upsert { old, new: o }
                }
                Ok(WatchEvent::Deleted(o)) => {
                    let rv = o.resource_version();
                    cache
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&o.key());
                    revision.fetch_max(rv, Ordering::SeqCst);
                    Change::Deleted(o)
                }
                Ok(WatchEvent::Bookmark(r)) => {
                    revision.fetch_max(r, Ordering::SeqCst);
                    continue;
                }
                Err(RegistryError::Compacted(r)) => {
                    tracing::info!(
                        kind = T::KIND,
                        compact_revision = r,
                        "watch compacted; listing again"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(kind = T::KIND, error = %e, "watch failed; listing again");
                    tokio::time::sleep(backoff).await;
                    break;
                }
            };
            if tx.send(change).is_err() {
                return;
            }
        }
    }
}
