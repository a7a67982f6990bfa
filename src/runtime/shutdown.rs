//! Shutdown, threaded through: the binary holds a [`ShutdownTrigger`] and every component a
//! [`Shutdown`] it can wait on, as in mini-redis. Firing the trigger (or dropping it) asks
//! every holder to finish what it is doing and stop.

use tokio::sync::watch;

/// Fires the shutdown of every [`Shutdown`] made with it.
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Resolves [`Shutdown::wait`] once shutdown has begun; cheap to clone.
#[derive(Clone)]
pub struct Shutdown(Option<watch::Receiver<bool>>);

/// A trigger and the shutdown it fires.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(Some(rx)))
}

impl ShutdownTrigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// A shutdown that never begins (for work that only ends when dropped).
    pub fn never() -> Shutdown {
        Shutdown(None)
    }

    /// Resolves once the trigger fired or was dropped.
    pub async fn wait(&self) {
        match &self.0 {
            Some(rx) => {
                let mut rx = rx.clone();
                let _ = rx.wait_for(|fired| *fired).await;
            }
            None => std::future::pending().await,
        }
    }

    pub fn has_begun(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|rx| *rx.borrow() || rx.has_changed().is_err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_holder_sees_the_trigger_fire() {
        let (trigger, shutdown) = shutdown_channel();
        let other = shutdown.clone();
        assert!(!shutdown.has_begun());
        trigger.fire();
        shutdown.wait().await;
        other.wait().await;
        assert!(other.has_begun());
    }

    #[tokio::test]
    async fn dropping_the_trigger_begins_the_shutdown() {
        let (trigger, shutdown) = shutdown_channel();
        drop(trigger);
        shutdown.wait().await;
        assert!(shutdown.has_begun());
    }

    #[tokio::test]
    async fn never_does_not_begin() {
        let never = Shutdown::never();
        assert!(!never.has_begun());
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), never.wait()).await;
        assert!(waited.is_err());
    }
}
