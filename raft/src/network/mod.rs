//! Peer RPCs between store nodes: Raft's own messages (append entries, vote, full snapshot)
//! and the few requests a follower sends its leader (forwarded writes, read index, lease
//! keep-alive and TTL, membership changes, the quorum check behind `/health`).
//!
//! Everything on this path is bincode; JSON stays at the client edge. AppendEntries and the
//! follower-to-leader calls travel over long-lived framed streams ([`stream`]), votes and
//! whole snapshots as HTTP/1.1 requests on pooled keep-alive connections (so does everything
//! when a peer cannot open a stream). [`client`] is the outbound side (openraft's
//! `RaftNetworkFactory`), [`server`] the inbound routes. This module does not decide anything
//! about the store: it only carries messages.

pub mod client;
pub mod server;
pub mod stream;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::types::{Command, CommandResult, NodeId};

/// Requests a member sends to the leader on behalf of its clients.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum PeerRequest {
    /// Propose these commands (the leader batches them with its own traffic).
    Forward(Vec<Command>),
    /// Confirm leadership and return the log index a linearizable read must wait for.
    ReadIndex,
    LeaseKeepAlive(i64),
    LeaseTimeToLive(i64),
    /// Add a learner (it votes only once promoted).
    AddMember {
        id: NodeId,
        peer_addr: String,
    },
    RemoveMember(NodeId),
    /// Make a learner that is in sync with the leader a voter.
    PromoteMember(NodeId),
    /// Answer `Done` if the leader has heard from a quorum of voters lately.
    QuorumCheck,
    /// The receiver's client URL (any member answers, leader or not).
    ClientUrl,
    /// The members (id, peer address) of the cluster the receiver belongs to, as it knows
    /// them; none while it is not part of one yet (any member answers). A founding member
    /// asks before it initialises a cluster.
    Membership,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum PeerResponse {
    Forward(Vec<Result<CommandResult, StoreError>>),
    ReadIndex(u64),
    LeaseKeepAlive(i64),
    LeaseTimeToLive(WireLeaseStatus),
    Done,
    ClientUrl(String),
    Membership(Vec<(NodeId, String)>),
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WireLeaseStatus {
    pub id: i64,
    pub remaining_ttl: i64,
    pub granted_ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

/// Why a peer request failed.
#[derive(Serialize, Deserialize, Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The receiver is not the leader (nothing was done); try the hinted leader.
    #[error("not the leader (leader hint: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error(transparent)]
    Store(#[from] StoreError),
}
