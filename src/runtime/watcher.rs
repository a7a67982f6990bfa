//! The watcher: the stream of what the store says about one kind, as kube-runtime's
//! `watcher` is. It lists, then watches from the list's revision + 1; the store client resumes
//! the watch across member failures by itself; when history is compacted (410) or the watch
//! fails it lists again, after a backoff. It keeps no state beyond where to resume: what the
//! events mean for a cache is [`super::cache`]'s business.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;

use crate::registry::{Object, Registry, RegistryError, WatchEvent, WatchEvents};

/// One thing the watcher learned.
#[derive(Debug, Clone)]
pub enum WatcherEvent<T> {
    /// A full list at `revision`: everything that exists now (a cache replaces itself).
    Listed { objects: Vec<T>, revision: i64 },
    /// One change after the last list.
    Changed(WatchEvent<T>),
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

enum Phase<T> {
    List { backoff: Duration },
    Watch(WatchEvents<T>),
}

/// Lists and watches objects of kind `T` forever; the stream never ends.
pub fn watcher<T: Object>(registry: Registry) -> BoxStream<'static, WatcherEvent<T>> {
    let start = Phase::List {
        backoff: FIRST_BACKOFF,
    };
    futures::stream::unfold((registry, start), |(registry, mut phase)| async move {
        loop {
            phase = match phase {
                Phase::List { backoff } => match registry.list::<T>().await {
                    Ok((objects, revision)) => {
                        tracing::debug!(kind = T::KIND, revision, "listed; watching");
                        let events = registry.watch::<T>(revision + 1);
                        let listed = WatcherEvent::Listed { objects, revision };
                        return Some((listed, (registry, Phase::Watch(events))));
                    }
                    Err(e) => {
                        tracing::warn!(kind = T::KIND, error = %e, retry_in = ?backoff, "list failed");
                        tokio::time::sleep(backoff).await;
                        Phase::List {
                            backoff: (backoff * 2).min(MAX_BACKOFF),
                        }
                    }
                },
                Phase::Watch(mut events) => match events.next().await {
                    Some(Ok(event)) => {
                        return Some((
                            WatcherEvent::Changed(event),
                            (registry, Phase::Watch(events)),
                        ))
                    }
                    Some(Err(RegistryError::Compacted(r))) => {
                        tracing::info!(
                            kind = T::KIND,
                            compact_revision = r,
                            "watch compacted; listing again"
                        );
                        Phase::List {
                            backoff: FIRST_BACKOFF,
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(kind = T::KIND, error = %e, "watch failed; listing again");
                        tokio::time::sleep(FIRST_BACKOFF).await;
                        Phase::List {
                            backoff: FIRST_BACKOFF,
                        }
                    }
                    None => {
                        tokio::time::sleep(FIRST_BACKOFF).await;
                        Phase::List {
                            backoff: FIRST_BACKOFF,
                        }
                    }
                },
            };
        }
    })
    .boxed()
}
