//! A work queue of object names. A key is queued at most once; while a worker holds it, new
//! adds only mark it dirty and it is queued again when the worker is done, so one object is
//! never reconciled twice at once. Failures come back after a per-key exponential backoff
//! (5 ms doubling, capped), as in client-go's rate-limited queue. Delayed keys wait inside the
//! queue itself (the workers waiting for a key also wait for the earliest delay), so the queue
//! starts no tasks of its own.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
    /// Keys to queue once their time comes, by (when, sequence number).
    delayed: BTreeMap<(Instant, u64), String>,
    sequence: u64,
}

impl State {
    /// Queues `key` unless it is already queued; marks it dirty if a worker holds it.
    /// Returns whether a waiting worker should be woken.
    fn add(&mut self, key: &str) -> bool {
        if self.processing.contains(key) {
            self.dirty.insert(key.to_string());
            return false;
        }
        if self.queued.insert(key.to_string()) {
            self.queue.push_back(key.to_string());
            return true;
        }
        false
    }

    /// Moves the delayed keys whose time has come into the queue; returns the earliest
    /// deadline still waiting.
    fn promote_due(&mut self, now: Instant) -> Option<Instant> {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                return Some(entry.key().0);
            }
            let key = entry.remove();
            self.add(&key);
        }
        None
    }
}

#[derive(Clone)]
pub struct WorkQueue {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    base_delay: Duration,
    max_delay: Duration,
}

impl Default for WorkQueue {
    fn default() -> Self {
        Self::new(Duration::from_millis(5), Duration::from_secs(30))
    }
}

impl WorkQueue {
    pub fn new(base_delay: Duration, max_delay: Duration) -> Self {
        WorkQueue {
            state: Arc::new(Mutex::new(State::default())),
            notify: Arc::new(Notify::new()),
            base_delay,
            max_delay,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` unless it is already queued; marks it dirty if a worker holds it.
    pub fn add(&self, key: &str) {
        let wake = self.lock().add(key);
        if wake {
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: &str, delay: Duration) {
        {
            let mut s = self.lock();
            s.sequence += 1;
            let at = (Instant::now() + delay, s.sequence);
            s.delayed.insert(at, key.to_string());
        }
        // A waiting worker recomputes how long to sleep.
        self.notify.notify_one();
    }

    /// Queues `key` after its backoff (which doubles with each failure); returns the delay.
    pub fn add_rate_limited(&self, key: &str) -> Duration {
        let n = {
            let mut s = self.lock();
            let n = s.failures.entry(key.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(20));
        let delay = self.base_delay.saturating_mul(factor).min(self.max_delay);
        self.add_after(key, delay);
        delay
    }

    /// Clears `key`'s failure count.
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// Waits for the next key and marks it as being processed.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.notify.notified();
            let wake_at = {
                let mut s = self.lock();
                let wake_at = s.promote_due(Instant::now());
                if let Some(key) = s.queue.pop_front() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    let more = !s.queue.is_empty();
                    drop(s);
                    if more {
                        self.notify.notify_one();
                    }
                    return key;
                }
                wake_at
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// A worker finished `key`; if it changed meanwhile it is queued again.
    pub fn done(&self, key: &str) {
        let wake = {
            let mut s = self.lock();
            s.processing.remove(key);
            s.dirty.remove(key) && s.add(key)
        };
        if wake {
            self.notify.notify_one();
        }
    }

    /// Number of keys waiting (not counting those being processed).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_queued_once_and_never_handed_out_twice_at_once() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let first = q.next().await;
        assert_eq!(first, "a");
        // Changed while being processed: not handed out again until done.
        q.add("a");
        assert_eq!(q.next().await, "b");
        assert!(q.is_empty());
        q.done("a");
        assert_eq!(q.next().await, "a");
    }

    #[tokio::test]
    async fn failures_back_off_exponentially_and_forget_resets() {
        let q = WorkQueue::new(Duration::from_millis(5), Duration::from_millis(40));
        let delays: Vec<Duration> = (0..5).map(|_| q.add_rate_limited("k")).collect();
        assert_eq!(
            delays,
            [5, 10, 20, 40, 40].map(Duration::from_millis).to_vec()
        );
        q.forget("k");
        assert_eq!(q.add_rate_limited("k"), Duration::from_millis(5));
        // The delayed add arrives.
        assert_eq!(q.next().await, "k");
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_keys_come_in_the_order_of_their_time() {
        let q = WorkQueue::default();
        q.add_after("late", Duration::from_secs(30));
        q.add_after("soon", Duration::from_secs(10));
        let started = Instant::now();
        assert_eq!(q.next().await, "soon");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        q.done("soon");
        // A key added meanwhile does not wait for the delayed one.
        q.add("now");
        assert_eq!(q.next().await, "now");
        assert_eq!(q.next().await, "late");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }
}
