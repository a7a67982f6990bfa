//! Linearizable reads: the [`ReadIndexer`] batches read-index confirmations, so every read
//! waiting when a confirmation round starts shares that one leadership check, then waits
//! for this member to apply up to the index.
//!
//! It owns the batching and the wait for the apply; the way to the leader is
//! [`crate::leader_route`]'s. It must not read or write the store itself.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::StoreError;
use crate::leader_route::{LeaderRoute, Safety};
use crate::network::{PeerError, PeerRequest, PeerResponse};
use crate::types::Raft;

type IndexReply = oneshot::Sender<Result<u64, StoreError>>;

/// Batches read-index confirmations: every read queued when a round starts shares it.
#[derive(Clone)]
pub struct ReadIndexer {
    tx: mpsc::Sender<IndexReply>,
    raft: Raft,
    timeout: Duration,
}

impl ReadIndexer {
    pub(crate) fn start(raft: Raft, route: LeaderRoute, timeout: Duration) -> Self {
        let (tx, mut rx) = mpsc::channel::<IndexReply>(16 * 1024);
        let r = raft.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                let result = obtain_read_index(&r, &route, timeout).await;
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
        });
        ReadIndexer { tx, raft, timeout }
    }

    /// Returns once a local read reflects every write committed before the call.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(reply)
            .await
            .map_err(|_| StoreError::Unavailable("the node is shutting down".into()))?;
        let index = rx
            .await
            .map_err(|_| StoreError::Unavailable("the node is shutting down".into()))??;
        self.wait_applied(index).await
    }

    async fn wait_applied(&self, index: u64) -> Result<(), StoreError> {
        let applied = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        if applied >= index {
            return Ok(());
        }
        self.raft
            .wait(Some(self.timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(format!("this member did not catch up: {e}")))
    }
}

/// The leader's read index: confirmed locally on the leader, asked of the leader elsewhere.
/// Asking is a read, so a lost answer is asked again.
async fn obtain_read_index(
    raft: &Raft,
    route: &LeaderRoute,
    timeout: Duration,
) -> Result<u64, StoreError> {
    let deadline = Instant::now() + timeout;
    let request = PeerRequest::ReadIndex;
    let here = || read_index_here(raft, deadline);
    match route
        .on_leader(&request, deadline, Safety::Retry, here)
        .await?
    {
        PeerResponse::ReadIndex(index) => Ok(index),
        other => Err(StoreError::Internal(format!(
            "the leader answered a read index request with {other:?}"
        ))),
    }
}

/// On the leader: the read index, once a quorum confirmed the leadership.
async fn read_index_here(raft: &Raft, deadline: Instant) -> Result<PeerResponse, PeerError> {
    match tokio::time::timeout_at(deadline, raft.get_read_log_id()).await {
        Ok(Ok((read, _applied))) => Ok(PeerResponse::ReadIndex(read.map_or(0, |l| l.index))),
        Ok(Err(_)) => Err(PeerError::NotLeader(None)),
        Err(_) => Err(StoreError::Unavailable(
            "leadership could not be confirmed by a quorum".into(),
        )
        .into()),
    }
}
