//! The one route to the leader: runs a request here when this member leads, else sends it
//! to the leader over the peer network, retrying what certainly did nothing until the
//! request's deadline.
//!
//! It owns the routing rules and nothing else: where the leader is ([`leader_of`]), what
//! to wait for when no leader is known (a new one, until the deadline) or when the leader's
//! address is not known yet (this member's membership to catch up, until the deadline),
//! which failures are retried (a refusal, an unreachable leader) and what a lost answer
//! means ([`Safety`]). What a request does on the leader is the caller's: it passes the
//! local handling in, and this module must not decide any store semantics.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::StoreError;
use crate::network::client::{PeerClient, TransportError};
use crate::network::{PeerError, PeerRequest, PeerResponse};
use crate::types::{NodeId, Raft};

/// Longest pause between two tries while the leader refuses or cannot be reached.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Whether a request whose answer was lost (sent, but no usable answer came back) may be
/// sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Safety {
    /// Reads and idempotent requests: a lost answer is asked for again.
    Retry,
    /// Writes: the request may have been carried out, so a lost answer is
    /// [`StoreError::OutcomeUnknown`].
    Once,
}

/// Where this node stands, from Raft's metrics: the leader and, if this member's membership
/// knows it, the leader's peer address.
pub(crate) fn leader_of(raft: &Raft) -> (Option<NodeId>, Option<String>) {
    let m = raft.metrics();
    let m = m.borrow();
    let leader = m.current_leader;
    let addr = leader.and_then(|id| {
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    });
    (leader, addr)
}

/// A leader is known but not its address: this member is still catching up on membership.
/// Waits briefly for any change before looking again.
async fn wait_for_membership(raft: &Raft, deadline: Instant) {
    let mut rx = raft.metrics();
    let until = deadline.min(Instant::now() + Duration::from_millis(100));
    let _ = tokio::time::timeout_at(until, rx.changed()).await;
}

/// Waits (until `deadline`) for Raft to know a leader other than `not`, or any leader when
/// `not` is None. Returns false on timeout.
pub(crate) async fn wait_for_leader(raft: &Raft, not: Option<NodeId>, deadline: Instant) -> bool {
    let mut rx = raft.metrics();
    loop {
        {
            let m = rx.borrow_and_update();
            if let Some(l) = m.current_leader {
                if Some(l) != not {
                    return true;
                }
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => return false,
        }
    }
}

/// What a request that found no leader willing before its deadline reports.
fn deadline_message(request: &PeerRequest) -> &'static str {
    match request {
        PeerRequest::Forward(_) => "no leader accepted the write before the request timeout",
        PeerRequest::ReadIndex => "could not confirm the leader's read index in time",
        _ => "no leader answered before the request timeout",
    }
}

/// This member's way to its leader.
#[derive(Clone)]
pub(crate) struct LeaderRoute {
    id: NodeId,
    raft: Raft,
    peers: PeerClient,
}

impl LeaderRoute {
    pub(crate) fn new(id: NodeId, raft: Raft, peers: PeerClient) -> Self {
        LeaderRoute { id, raft, peers }
    }

    /// Runs `request` on the leader before `deadline`: through `here` when this member
    /// leads, else sent to the leader. A refusal (`PeerError::NotLeader`, from `here` or
    /// the leader) and an unreachable leader are retried once a new leader is known or
    /// after a short pause; a lost answer is retried or reported as
    /// [`StoreError::OutcomeUnknown`] as `safety` says. `PeerError::Store` is the answer.
    ///
    /// `here` must answer `NotLeader` only when it did nothing.
    pub(crate) async fn on_leader<Here, Fut>(
        &self,
        request: &PeerRequest,
        deadline: Instant,
        safety: Safety,
        here: Here,
    ) -> Result<PeerResponse, StoreError>
    where
        Here: Fn() -> Fut,
        Fut: Future<Output = Result<PeerResponse, PeerError>>,
    {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(StoreError::Unavailable(deadline_message(request).into()));
            }
            let (leader, addr) = leader_of(&self.raft);
            let Some(leader) = leader else {
                if !wait_for_leader(&self.raft, None, deadline).await {
                    return Err(StoreError::Unavailable(
                        "no leader: the cluster has no quorum".into(),
                    ));
                }
                continue;
            };
            let answer = if leader == self.id {
                here().await
            } else if let Some(addr) = addr {
                self.send(&addr, request, remaining, safety).await?
            } else {
                wait_for_membership(&self.raft, deadline).await;
                continue;
            };
            match answer {
                Ok(response) => return Ok(response),
                Err(PeerError::Store(e)) => return Err(e),
                Err(PeerError::NotLeader(_)) => {
                    // Nothing was done: wait for a (new) leader and try again.
                    let until = deadline.min(Instant::now() + RETRY_PAUSE);
                    wait_for_leader(&self.raft, Some(leader), until).await;
                }
            }
        }
    }

    /// Sends `request` to the leader at `addr`. A request that was not delivered comes back
    /// as a refusal (to retry); one whose answer was lost too, if `safety` allows.
    async fn send(
        &self,
        addr: &str,
        request: &PeerRequest,
        remaining: Duration,
        safety: Safety,
    ) -> Result<Result<PeerResponse, PeerError>, StoreError> {
        match self.peers.call(addr, request, remaining).await {
            Ok(answer) => Ok(answer),
            Err(TransportError::Unreachable { .. }) => Ok(Err(PeerError::NotLeader(None))),
            Err(e @ TransportError::NoAnswer { .. }) => match safety {
                Safety::Once => Err(StoreError::OutcomeUnknown(e.to_string())),
                Safety::Retry => {
                    tracing::debug!(error = %e, "the leader's answer was lost; asking again");
                    Ok(Err(PeerError::NotLeader(None)))
                }
            },
        }
    }
}
