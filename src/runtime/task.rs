//! Tasks with an owner: [`spawn_owned`] returns a handle that aborts its task when dropped,
//! so a component's tasks (informers, queue feeders, workers, resyncs) end together with the
//! future that made them: when a leader loses its term its work future is dropped and nothing
//! it started keeps running.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};

/// A spawned task that is aborted when this handle is dropped. Awaiting it waits for the
/// task's output.
#[must_use = "dropping the handle aborts the task"]
#[derive(Debug)]
pub struct OwnedTask<T>(JoinHandle<T>);

/// Spawns `fut` on the current runtime, owned by the returned handle.
pub fn spawn_owned<F>(fut: F) -> OwnedTask<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    OwnedTask(tokio::spawn(fut))
}

impl<T> OwnedTask<T> {
    /// Aborts the task and waits until it has stopped, so that what it held (a listening
    /// socket, say) is released when this returns.
    pub async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl<T> Drop for OwnedTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for OwnedTask<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn dropping_the_handle_stops_the_task() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let task = spawn_owned(async move {
            loop {
                if tx.send(()).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        assert!(rx.recv().await.is_some());
        drop(task);
        // Once the task is gone its sender is dropped and the channel drains, then closes.
        while rx.recv().await.is_some() {}
    }

    #[tokio::test]
    async fn awaiting_the_handle_gives_the_output() {
        assert_eq!(spawn_owned(async { 7 }).await.ok(), Some(7));
    }
}
