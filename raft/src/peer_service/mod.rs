//! What this member does, as the leader, for the requests its peers send it
//! ([`PeerRequest`]): proposes forwarded writes, confirms the read index, renews and reports
//! leases, makes membership changes ([`members`]) and answers the quorum check behind
//! `/health`. [`LeaderService`] is the [`PeerService`] the peer API serves; the leader route
//! calls it directly when this member leads.
//!
//! Every request but `ClientUrl` and `Membership` is refused with `NotLeader` on a member that does not
//! lead, before anything is done. This module must not route requests (that is
//! [`crate::leader_route`]'s) nor apply commands itself (that goes through the proposer).

pub(crate) mod members;

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::lease::LeaseClock;
use crate::membership;
use crate::mvcc::MvccStore;
use crate::network::client::PeerClient;
use crate::network::server::PeerService;
use crate::network::{PeerError, PeerRequest, PeerResponse, WireLeaseStatus};
use crate::proposer::Proposer;
use crate::types::{CommandError, NodeId, Raft};

/// The leader's side of the peer calls.
pub(crate) struct LeaderService {
    pub id: NodeId,
    pub raft: Raft,
    pub proposer: Proposer,
    pub leases: LeaseClock,
    pub mvcc: MvccStore,
    pub peers: PeerClient,
    /// This member's client URL, what `ClientUrl` answers.
    pub client_url: String,
    /// Bounds a membership change (without a quorum it would never commit).
    pub request_timeout: Duration,
    /// How recent a quorum's acknowledgement (or a peer's answer) must be.
    pub election_timeout_max: Duration,
}

impl PeerService for LeaderService {
    fn serve(&self, req: PeerRequest) -> BoxFuture<'_, Result<PeerResponse, PeerError>> {
        self.serve_request(req).boxed()
    }
}

impl LeaderService {
    /// Serves one request (see the module doc).
    pub(crate) async fn serve_request(&self, req: PeerRequest) -> Result<PeerResponse, PeerError> {
        // Any member answers for itself.
        if let PeerRequest::ClientUrl = req {
            return Ok(PeerResponse::ClientUrl(self.client_url.clone()));
        }
        if let PeerRequest::Membership = req {
            let m = self.raft.metrics();
            let m = m.borrow();
            let members = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect();
            return Ok(PeerResponse::Membership(members));
        }
        let leader = self.raft.metrics().borrow().current_leader;
        if leader != Some(self.id) {
            return Err(PeerError::NotLeader(leader));
        }
        match req {
            PeerRequest::Forward(cmds) => Ok(PeerResponse::Forward(
                self.proposer.propose_forwarded(cmds).await,
            )),
            PeerRequest::ReadIndex => match self.raft.get_read_log_id().await {
                Ok((read, _)) => Ok(PeerResponse::ReadIndex(read.map_or(0, |l| l.index))),
                Err(_) => Err(PeerError::NotLeader(None)),
            },
            PeerRequest::LeaseKeepAlive(id) => {
                self.ensure_linearizable().await?;
                Ok(PeerResponse::LeaseKeepAlive(self.leases.keepalive(id)?))
            }
            PeerRequest::LeaseTimeToLive(id) => self.lease_time_to_live(id).await,
            PeerRequest::AddMember { id, peer_addr } => self.add_learner(id, peer_addr).await,
            PeerRequest::PromoteMember(id) => self.promote(id).await,
            PeerRequest::RemoveMember(id) => self.remove(id).await,
            PeerRequest::QuorumCheck => self.quorum_here().await.map(|()| PeerResponse::Done),
            PeerRequest::ClientUrl => Ok(PeerResponse::ClientUrl(self.client_url.clone())),
            PeerRequest::Membership => Err(PeerError::NotLeader(leader)),
        }
    }

    /// Confirms with a quorum that this member still leads.
    async fn ensure_linearizable(&self) -> Result<(), PeerError> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|_| PeerError::NotLeader(None))
    }

    async fn lease_time_to_live(&self, id: i64) -> Result<PeerResponse, PeerError> {
        self.ensure_linearizable().await?;
        let remaining = self.leases.remaining(id)?;
        let lease = self
            .mvcc
            .lease(id)
            .ok_or(StoreError::Rejected(CommandError::LeaseNotFound(id)))?;
        Ok(PeerResponse::LeaseTimeToLive(WireLeaseStatus {
            id,
            remaining_ttl: remaining,
            granted_ttl: lease.ttl,
            keys: lease.keys,
        }))
    }

    /// Whether `peer` answered this member's Raft RPCs within the election timeout (on a
    /// leader: whether it is reachable).
    fn answered_lately(&self, peer: NodeId) -> bool {
        let limit = self.election_timeout_max;
        self.peers
            .last_answer(peer)
            .is_some_and(|t| t.elapsed() <= limit)
    }

    /// On the leader: `Ok` if a quorum of voters acknowledged it within the election timeout
    /// (see [`crate::node::StoreHandle::health`]). Right after an election no
    /// acknowledgement is known yet: wait up to that timeout for one.
    async fn quorum_here(&self) -> Result<(), PeerError> {
        let limit = self.election_timeout_max;
        let deadline = Instant::now() + limit;
        let mut rx = self.raft.metrics();
        let since_ack = loop {
            let (leader, ack) = {
                let m = rx.borrow_and_update();
                (m.current_leader, m.millis_since_quorum_ack)
            };
            if leader != Some(self.id) {
                return Err(PeerError::NotLeader(leader));
            }
            match ack.map(Duration::from_millis) {
                Some(since) if since <= limit => return Ok(()),
                Some(since) => break Some(since),
                None => match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => {}
                    _ => break None,
                },
            }
        };
        let voters: Vec<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        let unreachable: Vec<NodeId> = voters
            .into_iter()
            .filter(|v| *v != self.id && !self.answered_lately(*v))
            .collect();
        Err(StoreError::Unavailable(membership::no_quorum(
            self.id,
            since_ack,
            limit,
            &unreachable,
        ))
        .into())
    }
}
