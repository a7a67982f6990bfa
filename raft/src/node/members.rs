//! The client-facing side of membership changes: add, promote and remove a member through
//! the leader, then wait until this member has applied the change, so its own
//! `/v1/cluster` shows it. A removed member's NOSPACE alarm is cleared on its behalf (it can
//! no longer clear it itself).
//!
//! The changes themselves (and their rules) are the leader's
//! ([`crate::peer_service::members`]); this module only asks for them and waits.

use std::time::Duration;

use tokio::time::Instant;

use super::StoreHandle;
use crate::error::StoreError;
use crate::membership;
use crate::network::PeerRequest;
use crate::peer_service::members::{is_member, is_voter};
use crate::types::{Command, NodeId};

impl StoreHandle {
    /// Adds member `id` at `peer_addr` as a learner, through the leader. With `learner`
    /// false it then waits (up to the request timeout) until the learner is in sync with the
    /// leader and promotes it; one that does not catch up in time stays a learner, and the
    /// call fails with `Unavailable` saying so (promote it later: [`Self::promote_member`]).
    /// So a member that is not running is never made a voter. Returns once this member has
    /// applied the change, so its own `/v1/cluster` shows it.
    pub async fn add_member(
        &self,
        id: NodeId,
        peer_addr: String,
        learner: bool,
    ) -> Result<(), StoreError> {
        if id == 0 {
            return Err(StoreError::InvalidArgument("member id must be >= 1".into()));
        }
        if !peer_addr.contains(':') {
            return Err(StoreError::InvalidArgument(format!(
                "peer_addr `{peer_addr}` is not HOST:PORT"
            )));
        }
        let started = Instant::now();
        let deadline = started + self.inner.config.request_timeout;
        self.leader_call_until(PeerRequest::AddMember { id, peer_addr }, deadline)
            .await?;
        if learner {
            return self
                .wait_membership(|| is_member(&self.inner.raft, id))
                .await;
        }
        self.promote_once_in_sync(id, started, deadline).await?;
        self.wait_membership(|| is_voter(&self.inner.raft, id))
            .await
    }

    /// Promotes the new learner `id` as soon as the leader finds it in sync. The last try
    /// starts a quarter of the request timeout before `deadline`, so that a promotion (two
    /// membership entries to commit) and its answer fit before it.
    async fn promote_once_in_sync(
        &self,
        id: NodeId,
        started: Instant,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        let last_try = deadline - self.inner.config.request_timeout / 4;
        loop {
            match self
                .leader_call_until(PeerRequest::PromoteMember(id), deadline)
                .await
            {
                Ok(_) => return Ok(()),
                // Promoted meanwhile (by another call): what was asked for.
                Err(StoreError::InvalidArgument(m)) if m == membership::MEMBER_NOT_LEARNER => {
                    return Ok(())
                }
                Err(StoreError::InvalidArgument(m)) if m == membership::LEARNER_NOT_READY => {}
                Err(StoreError::Unavailable(why)) => {
                    return Err(StoreError::Unavailable(format!(
                        "{} ({why})",
                        membership::not_caught_up(id, started.elapsed())
                    )))
                }
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            if now >= last_try {
                return Err(StoreError::Unavailable(membership::not_caught_up(
                    id,
                    now - started,
                )));
            }
            tokio::time::sleep_until(last_try.min(now + Duration::from_millis(100))).await;
        }
    }

    /// Makes learner `id` a voter, through the leader, if it is in sync with the leader
    /// (etcd's `MemberPromote`). Refuses a stranger (`NotFound`), a voter
    /// ([`membership::MEMBER_NOT_LEARNER`]) and a learner not in sync
    /// ([`membership::LEARNER_NOT_READY`]), both `InvalidArgument`. Returns once this member
    /// has applied the change.
    pub async fn promote_member(&self, id: NodeId) -> Result<(), StoreError> {
        self.leader_call(PeerRequest::PromoteMember(id)).await?;
        self.wait_membership(|| is_voter(&self.inner.raft, id))
            .await
    }

    /// Removes a member through the leader; returns once this member has applied it.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), StoreError> {
        self.leader_call(PeerRequest::RemoveMember(id)).await?;
        self.wait_membership(|| !is_member(&self.inner.raft, id))
            .await?;
        // A removed member can no longer clear its own NOSPACE alarm: clear it for it.
        if self.inner.mvcc.alarms().contains(&id) {
            self.write(Command::Alarm {
                member: id,
                raise: false,
            })
            .await?;
        }
        Ok(())
    }

    async fn wait_membership(&self, done: impl Fn() -> bool) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        let mut rx = self.inner.raft.metrics();
        while !done() {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(StoreError::Unavailable(
                        "the membership change was made but this member has not applied it yet"
                            .into(),
                    ))
                }
            }
        }
        Ok(())
    }
}
