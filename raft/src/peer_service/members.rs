//! Membership changes on the leader: adding a learner, promoting a learner that is in sync
//! (the rule is [`crate::membership`]'s), removing a member; each bounded by the request
//! timeout and its refusals mapped to what a client can act on. Also the two membership
//! questions every member asks its own Raft ([`is_member`], [`is_voter`]).
//!
//! It must not route (the caller is already the leader) nor wait for other members to
//! apply a change (the client-facing side in [`crate::node`] does).

use std::collections::BTreeSet;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;

use super::LeaderService;
use crate::error::StoreError;
use crate::membership;
use crate::network::{PeerError, PeerResponse};
use crate::types::{MemberNode, NodeId, Raft};

/// Whether `id` is a voter in the current membership.
pub(crate) fn is_voter(raft: &Raft, id: NodeId) -> bool {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == id)
}

/// Whether `id` is in the current membership (voter or learner).
pub(crate) fn is_member(raft: &Raft, id: NodeId) -> bool {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&id)
        .is_some()
}

impl LeaderService {
    /// Adds `id` at `peer_addr` as a learner. Not blocking: the learner may be down, and its
    /// catching up is judged (and waited for) by whoever promotes it.
    pub(super) async fn add_learner(
        &self,
        id: NodeId,
        peer_addr: String,
    ) -> Result<PeerResponse, PeerError> {
        if id == 0 {
            return Err(StoreError::InvalidArgument("member id must be >= 1".into()).into());
        }
        if is_member(&self.raft, id) {
            return Err(StoreError::InvalidArgument(format!("member {id} already exists")).into());
        }
        let addr = peer_addr.clone();
        self.change_membership(
            &format!("adding learner {id}"),
            self.raft.add_learner(id, MemberNode { addr }, false),
        )
        .await?;
        tracing::info!(id, peer_addr, "added a learner");
        Ok(PeerResponse::Done)
    }

    /// Makes learner `id` a voter if it is in sync.
    pub(super) async fn promote(&self, id: NodeId) -> Result<PeerResponse, PeerError> {
        self.check_promotable(id)?;
        let voters = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        self.change_membership(
            &format!("promoting {id} to voter"),
            self.raft.change_membership(voters, false),
        )
        .await?;
        tracing::info!(id, "promoted a learner to voter");
        Ok(PeerResponse::Done)
    }

    /// Removes member `id`: first its vote, then the member.
    pub(super) async fn remove(&self, id: NodeId) -> Result<PeerResponse, PeerError> {
        let raft = &self.raft;
        if !is_member(raft, id) {
            return Err(StoreError::NotFound(format!("member {id} not found")).into());
        }
        let what = format!("removing {id}");
        if is_voter(raft, id) {
            let change = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
            self.change_membership(&what, raft.change_membership(change, false))
                .await?;
        }
        if is_member(raft, id) {
            let change = ChangeMembers::RemoveNodes(BTreeSet::from([id]));
            self.change_membership(&what, raft.change_membership(change, false))
                .await?;
        }
        Ok(PeerResponse::Done)
    }

    /// Why learner `id` may not become a voter yet, if it may not.
    fn check_promotable(&self, id: NodeId) -> Result<(), PeerError> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let members = m.membership_config.membership();
        if members.get_node(&id).is_none() {
            return Err(StoreError::NotFound(format!("member {id} not found")).into());
        }
        if members.voter_ids().any(|v| v == id) {
            return Err(StoreError::InvalidArgument(membership::MEMBER_NOT_LEARNER.into()).into());
        }
        let Some(replication) = &m.replication else {
            return Err(PeerError::NotLeader(None));
        };
        if !membership::learner_in_sync(
            replication,
            self.id,
            m.last_log_index,
            id,
            self.answered_lately(id),
        ) {
            return Err(StoreError::InvalidArgument(membership::LEARNER_NOT_READY.into()).into());
        }
        Ok(())
    }

    /// A membership change, bounded by the request timeout (without a quorum it would never
    /// commit), its refusals mapped to what a client can act on.
    async fn change_membership<T>(
        &self,
        what: &str,
        change: impl std::future::Future<
            Output = Result<T, RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>>,
        >,
    ) -> Result<(), PeerError> {
        let timeout = self.request_timeout;
        match tokio::time::timeout(timeout, change).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(PeerError::NotLeader(f.leader_id))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                e @ ChangeMembershipError::InProgress(_),
            )))) => Err(StoreError::Unavailable(format!(
                "{what}: {e}: another membership change is under way, try again"
            ))
            .into()),
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(StoreError::InvalidArgument(format!("{what}: {e}")).into())
            }
            Ok(Err(RaftError::Fatal(e))) => {
                Err(StoreError::Unavailable(format!("{what}: {e}")).into())
            }
            Err(_) => Err(StoreError::OutcomeUnknown(format!(
                "{what}: proposed but not committed within {timeout:?}"
            ))
            .into()),
        }
    }
}
