//! The machinery every controller shares, after kube-runtime and client-go:
//! - [`informer`]: list, then watch from the list's revision, resume, relist on 410; keeps a
//!   local cache and reports changes;
//! - [`queue`]: a work queue that deduplicates keys, never hands out one key twice at once,
//!   and requeues failures with per-key exponential backoff;
//! - [`leader`]: a lease-based lock in the store so that only one copy of a component acts;
//! - [`task`]: tasks owned by a handle that aborts them when dropped, so a component's tasks
//!   stop together.
//!
//! Nothing here knows what a ReplicaSet or a pod means.

pub mod informer;
pub mod leader;
pub mod queue;
pub mod task;

use std::future::Future;
use std::time::Duration;

pub use informer::{Change, Informer};
pub use queue::WorkQueue;
pub use task::{spawn_owned, OwnedTask};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::registry::Object;

/// Queues the keys `keys_of` names for each change, until the informer stops or the returned
/// handle is dropped.
pub fn enqueue_changes<T, F, I>(
    mut changes: UnboundedReceiver<Change<T>>,
    queue: WorkQueue,
    keys_of: F,
) -> OwnedTask<()>
where
    T: Object,
    F: Fn(&Change<T>) -> I + Send + 'static,
    I: IntoIterator<Item = String>,
{
    spawn_owned(async move {
        while let Some(ch) = changes.recv().await {
            for key in keys_of(&ch) {
                queue.add(&key);
            }
        }
    })
}

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Converged; wait for the next change.
    Done,
    /// Look again after this long (a deadline the object itself carries, not polling).
    After(Duration),
}

/// Runs `workers` loops taking keys from `queue` and reconciling them; failures are requeued
/// with backoff. Runs until the future is dropped, which stops the workers too.
pub async fn run_workers<F, Fut>(queue: WorkQueue, workers: usize, reconcile: F)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Next>> + Send + 'static,
{
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let reconcile = reconcile.clone();
        tasks.push(spawn_owned(async move {
            loop {
                let key = queue.next().await;
                match reconcile(key.clone()).await {
                    Ok(Next::Done) => queue.forget(&key),
                    Ok(Next::After(d)) => {
                        queue.forget(&key);
                        queue.add_after(&key, d);
                    }
                    Err(e) => {
                        let delay = queue.add_rate_limited(&key);
                        tracing::warn!(key = %key, error = %e, retry_in = ?delay, "reconcile failed");
                    }
                }
                queue.done(&key);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
