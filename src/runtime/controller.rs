//! A controller: a work queue of object keys, what feeds it, and workers that reconcile each
//! key, owned together, in the spirit of kube-runtime's `Controller`. A component says what
//! it watches and how a change maps to keys, then hands over its reconcile function:
//!
//! ```ignore
//! Controller::new("replicaset")
//!     .reconciles(&replicasets)              // every ReplicaSet, at start and on change
//!     .watches(&pods, |change| owners(change)) // a pod change concerns its owner
//!     .resync_every(RESYNC, &replicasets)
//!     .run(workers, shutdown, |key| reconcile(key))
//!     .await;
//! ```
//!
//! [`Controller::run`] waits for every watched informer's first list, seeds the queue, and
//! runs the feeds and workers until `shutdown` resolves: then the workers finish the keys
//! they hold and stop, and everything else is stopped with them. Dropping the future (a
//! leader losing its term) stops everything at once. Nothing here knows what it reconciles.

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;

use super::informer::Informer;
use super::queue::WorkQueue;
use super::task::{spawn_owned, OwnedTask};
use super::Change;
use crate::registry::Object;

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Converged; wait for the next change.
    Done,
    /// Look again after this long (a deadline the object itself carries, not polling).
    After(Duration),
}

type Feed = Box<dyn FnOnce(WorkQueue) -> BoxFuture<'static, ()> + Send>;
type Seed = Box<dyn FnOnce(&WorkQueue) + Send>;

/// A work queue, its sources and (at [`Controller::run`]) its workers.
pub struct Controller {
    name: &'static str,
    queue: WorkQueue,
    synced: Vec<BoxFuture<'static, ()>>,
    seeds: Vec<Seed>,
    feeds: Vec<Feed>,
}

impl Controller {
    pub fn new(name: &'static str) -> Self {
        Controller {
            name,
            queue: WorkQueue::default(),
            synced: Vec::new(),
            seeds: Vec::new(),
            feeds: Vec::new(),
        }
    }

    /// The queue, for a source outside this controller that routes keys to it.
    pub fn queue(&self) -> WorkQueue {
        self.queue.clone()
    }

    /// Reconciles every object of `informer`: each one at start, and each one that changes.
    pub fn reconciles<T: Object>(self, informer: &Informer<T>) -> Self {
        let cache = informer.clone();
        self.watches(informer, |change| [change.key()])
            .seed(move |queue| {
                for key in cache.keys() {
                    queue.add(&key);
                }
            })
    }

    /// Queues the keys `keys_of` names for each change of `informer` (the changes are
    /// subscribed to now, so none made after the cache is first read is missed). `run`
    /// waits for the informer's first list.
    pub fn watches<T, F, I>(mut self, informer: &Informer<T>, keys_of: F) -> Self
    where
        T: Object,
        F: Fn(&Change<T>) -> I + Send + 'static,
        I: IntoIterator<Item = String>,
    {
        let mut changes = informer.subscribe();
        let cache = informer.clone();
        self.synced
            .push(async move { cache.wait_synced().await }.boxed());
        self.feed(move |queue| async move {
            while let Some(change) = changes.recv().await {
                for key in keys_of(&change) {
                    queue.add(&key);
                }
            }
        })
    }

    /// Queues what `seed` adds once every watched informer has listed, before any worker
    /// starts.
    pub fn seed(mut self, seed: impl FnOnce(&WorkQueue) + Send + 'static) -> Self {
        self.seeds.push(Box::new(seed));
        self
    }

    /// Runs `feed` beside the workers, owned by the controller: a source of keys (an event
    /// stream, a timer) or a task the component needs while it runs (a heartbeat).
    pub fn feed<F, Fut>(mut self, feed: F) -> Self
    where
        F: FnOnce(WorkQueue) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.feeds.push(Box::new(move |queue| feed(queue).boxed()));
        self
    }

    /// Queues every object of `informer` every `period`: a safety net, not how changes are
    /// found.
    pub fn resync_every<T: Object>(self, period: Duration, informer: &Informer<T>) -> Self {
        let cache = informer.clone();
        self.feed(move |queue| async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                for key in cache.keys() {
                    queue.add(&key);
                }
            }
        })
    }

    /// Waits for the watched informers, seeds the queue and reconciles keys with `workers`
    /// concurrent workers (never one key twice at once) until `shutdown` resolves; failures
    /// are requeued with backoff. On shutdown each worker finishes its key, then everything
    /// stops.
    pub async fn run<S, R, Fut>(self, workers: usize, shutdown: S, reconcile: R)
    where
        S: Future<Output = ()>,
        R: Fn(String) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Next>> + Send + 'static,
    {
        let Controller {
            name,
            queue,
            synced,
            seeds,
            feeds,
        } = self;
        let (stop_tx, stop) = watch::channel(false);
        let work = async {
            futures::future::join_all(synced).await;
            for seed in seeds {
                seed(&queue);
            }
            let _feeds: Vec<OwnedTask<()>> = feeds
                .into_iter()
                .map(|feed| spawn_owned(feed(queue.clone())))
                .collect();
            tracing::info!(controller = name, workers, "controller running");
            let workers: Vec<OwnedTask<()>> = (0..workers.max(1))
                .map(|_| spawn_owned(worker(queue.clone(), stop.clone(), reconcile.clone())))
                .collect();
            for w in workers {
                let _ = w.await;
            }
        };
        tokio::pin!(work);
        tokio::select! {
            _ = &mut work => return,
            _ = shutdown => {}
        }
        tracing::info!(controller = name, "stopping: finishing the keys in hand");
        let _ = stop_tx.send(true);
        work.await;
        tracing::info!(controller = name, "stopped");
    }
}

/// Takes keys and reconciles them until `stop` turns true (never in the middle of a key).
async fn worker<R, Fut>(queue: WorkQueue, mut stop: watch::Receiver<bool>, reconcile: R)
where
    R: Fn(String) -> Fut,
    Fut: Future<Output = anyhow::Result<Next>>,
{
    loop {
        let key = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            key = queue.next() => key,
        };
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
}
