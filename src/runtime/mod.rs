//! The machinery every controller shares, after kube-runtime and client-go:
//! - [`watcher`]: list, then watch from the list's revision, resume, relist on 410;
//! - [`cache`]: the pure rule that turns what the watcher learned into a cache and changes;
//! - [`informer`]: a watcher and a cache kept by one task, its changes fanned out to every
//!   subscriber;
//! - [`queue`]: a work queue that deduplicates keys, never hands out one key twice at once,
//!   and requeues failures with per-key exponential backoff;
//! - [`controller`]: a queue, what feeds it and the workers that reconcile its keys, owned
//!   together and stopped together;
//! - [`leader`]: a lease-based lock in the store so that only one copy of a component acts;
//! - [`shutdown`]: the signal a binary threads through its components;
//! - [`task`]: tasks owned by a handle that aborts them when dropped.
//!
//! Nothing here knows what a ReplicaSet or a pod means.

pub mod cache;
pub mod controller;
pub mod informer;
pub mod leader;
pub mod queue;
pub mod shutdown;
pub mod task;
pub mod watcher;

pub use cache::Change;
pub use controller::{Controller, Next};
pub use informer::Informer;
pub use queue::WorkQueue;
pub use shutdown::{shutdown_channel, Shutdown, ShutdownTrigger};
pub use task::{spawn_owned, OwnedTask};
