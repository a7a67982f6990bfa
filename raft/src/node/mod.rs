//! A store node: [`StoreNode::start`] (in [`crate::start`]) opens the storage, starts Raft, the peer
//! and client servers, the proposer, the read indexer and the lease clock, and hands out a
//! [`StoreHandle`] that the HTTP and gRPC layers (and tests) use; [`StoreNode::shutdown`]
//! stops it all. The handle's membership calls are in `members`.
//!
//! This module wires parts together and passes requests on; it decides no store semantics
//! itself (the state machine, the proposer, the leader service and the membership rules do).

mod members;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::{ClusterResponse, Member, ResponseHeader};
use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::leader_route::{LeaderRoute, Safety};
use crate::lease::LeaseClock;
use crate::metrics::Metrics;
use crate::mvcc::MvccStore;
use crate::network::client::PeerClient;
use crate::network::{PeerRequest, PeerResponse};
use crate::peer_service::LeaderService;
use crate::proposer::Proposer;
use crate::read_index::ReadIndexer;
use crate::types::{Command, CommandResult, NodeId, Raft};
use crate::watch::WatchHub;

/// A running node's capabilities, cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    inner: Arc<NodeParts>,
}

/// The started parts a node's handle passes requests to (assembled by [`crate::start`]).
pub(crate) struct NodeParts {
    pub(crate) config: StoreConfig,
    pub(crate) raft: Raft,
    pub(crate) mvcc: MvccStore,
    pub(crate) hub: WatchHub,
    pub(crate) metrics: Metrics,
    pub(crate) proposer: Proposer,
    pub(crate) reads: ReadIndexer,
    pub(crate) leases: LeaseClock,
    pub(crate) peers: PeerClient,
    pub(crate) route: LeaderRoute,
    /// What this member does for its peers (and for itself) as the leader.
    pub(crate) leader: Arc<LeaderService>,
    pub(crate) db: sled::Db,
    /// The client API's URL as other members and clients should dial it.
    pub(crate) client_url: String,
}

/// What `lease_time_to_live` reports.
pub struct LeaseStatus {
    pub id: i64,
    pub remaining_ttl: i64,
    pub granted_ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data directory {path}: {message}")]
    DataDir { path: String, message: String },
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: String, message: String },
    #[error("{0}")]
    Config(String),
}

/// A running store node.
pub struct StoreNode {
    handle: StoreHandle,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl StoreNode {
    /// A started node: its handle, where it listens, how to stop it and what runs for it.
    pub(crate) fn running(
        handle: StoreHandle,
        client_addr: SocketAddr,
        peer_addr: SocketAddr,
        stop: watch::Sender<bool>,
        tasks: Vec<JoinHandle<()>>,
    ) -> Self {
        StoreNode {
            handle,
            client_addr,
            peer_addr,
            stop,
            tasks,
        }
    }

    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// The address the client API actually listens on.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Stops serving, stops Raft and flushes storage.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.handle.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

impl StoreHandle {
    pub(crate) fn new(parts: NodeParts) -> Self {
        StoreHandle {
            inner: Arc::new(parts),
        }
    }

    /// The node's parts, for starting its tasks.
    pub(crate) fn parts(&self) -> &NodeParts {
        &self.inner
    }

    pub fn id(&self) -> NodeId {
        self.inner.config.id
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Reads come straight from here (after [`StoreHandle::read_barrier`] for
    /// linearizable ones).
    pub fn mvcc(&self) -> &MvccStore {
        &self.inner.mvcc
    }

    pub fn hub(&self) -> &WatchHub {
        &self.inner.hub
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// This member's client URL (what `etcdctl member list` shows).
    pub fn client_url(&self) -> &str {
        &self.inner.client_url
    }

    /// The database's size on disk in bytes (0 if it cannot be read).
    pub fn db_size(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    /// Flushes the database to disk (what `etcdctl defrag` amounts to here: sled
    /// reclaims its own space as it goes).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner
            .db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Internal(format!("flushing the database: {e}")))
    }

    /// Every member's client URL, asked of each member (`None` for one that did not
    /// answer within `timeout`).
    pub async fn member_client_urls(&self, timeout: Duration) -> BTreeMap<NodeId, Option<String>> {
        let members: Vec<(NodeId, String)> = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect()
        };
        let asks = members.into_iter().map(|(id, addr)| async move {
            if id == self.id() {
                return (id, Some(self.inner.client_url.clone()));
            }
            let url = match self
                .inner
                .peers
                .call(&addr, &PeerRequest::ClientUrl, timeout)
                .await
            {
                Ok(Ok(PeerResponse::ClientUrl(url))) => Some(url),
                _ => None,
            };
            (id, url)
        });
        futures::future::join_all(asks).await.into_iter().collect()
    }

    /// The header for a response reflecting `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            revision,
            raft_term: self.inner.raft.metrics().borrow().current_term,
            member_id: self.id(),
        }
    }

    /// Proposes a write through Raft (batched with others; forwarded when this node is not
    /// the leader) and returns its result once applied on this node. A command the state
    /// machine refused comes back as `Err(StoreError::Rejected)`.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, StoreError> {
        if let Some(fault) = self.storage_fault() {
            return Err(StoreError::Unavailable(format!(
                "this member's storage failed ({fault}); it restarts once its data directory \
                 is writable again: use another member"
            )));
        }
        let result = self.inner.proposer.propose(cmd).await?;
        // Forwarded writes are applied on the leader first: make sure this member has
        // applied them too, so a read here right after sees the write. If it cannot catch
        // up in time the write still happened: say so rather than fail it (a linearizable
        // read here waits for the apply anyway).
        let rev = result.revision();
        if self.inner.mvcc.current_revision() < rev {
            if let Err(e) = self.wait_revision(rev).await {
                tracing::warn!(error = %e, revision = rev, "acknowledging a write this member has not applied yet");
            }
        }
        Ok(result)
    }

    /// Why this member's Raft stopped, if it stopped on a fault (in practice storage: the
    /// disk filled up or the data directory became unwritable). Such a member serves no
    /// writes and no linearizable reads.
    pub fn storage_fault(&self) -> Option<String> {
        match &self.inner.raft.metrics().borrow().running_state {
            Ok(()) => None,
            Err(fatal) => Some(fatal.to_string()),
        }
    }

    /// Returns once Raft has stopped on a fault, with the reason.
    pub async fn wait_storage_fault(&self) -> String {
        let mut rx = self.inner.raft.metrics();
        loop {
            if let Err(fatal) = &rx.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if rx.changed().await.is_err() {
                return "raft stopped".into();
            }
        }
    }

    async fn wait_revision(&self, rev: i64) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        let mut rx = self.inner.raft.metrics();
        while self.inner.mvcc.current_revision() < rev {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(StoreError::Unavailable(format!(
                        "the write was applied at revision {rev} but this member has not caught up"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Returns once this node's state machine has applied everything committed when the call
    /// started, as confirmed by the leader (read index). After it, a local read is
    /// linearizable.
    pub async fn read_barrier(&self) -> Result<(), StoreError> {
        if self.inner.config.unsafe_stale_reads {
            return Ok(());
        }
        self.inner.reads.barrier().await
    }

    /// Renews a lease on the leader; returns its TTL.
    pub async fn lease_keepalive(&self, id: i64) -> Result<i64, StoreError> {
        match self.leader_call(PeerRequest::LeaseKeepAlive(id)).await? {
            PeerResponse::LeaseKeepAlive(ttl) => Ok(ttl),
            other => Err(unexpected(other)),
        }
    }

    pub async fn lease_time_to_live(&self, id: i64) -> Result<LeaseStatus, StoreError> {
        match self.leader_call(PeerRequest::LeaseTimeToLive(id)).await? {
            PeerResponse::LeaseTimeToLive(s) => Ok(LeaseStatus {
                id: s.id,
                remaining_ttl: s.remaining_ttl,
                granted_ttl: s.granted_ttl,
                keys: s.keys,
            }),
            other => Err(unexpected(other)),
        }
    }

    pub fn cluster(&self) -> ClusterResponse {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                peer_addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        ClusterResponse {
            header: ResponseHeader {
                revision: self.inner.mvcc.current_revision(),
                raft_term: m.current_term,
                member_id: self.id(),
            },
            member_id: self.id(),
            leader_id: m.current_leader,
            term: m.current_term,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members,
        }
    }

    /// Runs `req` on the leader (see [`LeaderRoute::on_leader`]) within the request timeout.
    async fn leader_call(&self, req: PeerRequest) -> Result<PeerResponse, StoreError> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        self.leader_call_until(req, deadline).await
    }

    /// [`Self::leader_call`] with its own deadline.
    async fn leader_call_until(
        &self,
        req: PeerRequest,
        deadline: Instant,
    ) -> Result<PeerResponse, StoreError> {
        let safety = leader_call_safety(&req);
        let here = || self.inner.leader.serve_request(req.clone());
        self.inner
            .route
            .on_leader(&req, deadline, safety, here)
            .await
    }

    /// Whether this member can serve: its storage works, it knows a leader, and that leader
    /// has heard from a quorum of voters within an election timeout. Returns the leader.
    ///
    /// Why the leader decides: only it knows. openraft's `millis_since_quorum_ack` (0.9) is
    /// the age of the newest moment a quorum of voters (of both halves of a joint
    /// configuration) had acknowledged it. A follower's own view cannot tell: hearing from
    /// the leader shows only that those two are connected (of five members, a leader and one
    /// follower may be cut off from the other three). So a follower asks the leader over the
    /// peer route every forwarded request takes, with a short deadline; no leader, or no
    /// answer, is unhealthy too. The limit is the election timeout: a voter that has not
    /// heard from its leader that long campaigns, so a leader no quorum acknowledged for that
    /// long is cut off from it and cannot commit (etcd's check-quorum uses the same bound).
    /// openraft 0.9 leaders do not step down when they lose their quorum: without this check a
    /// lone leader would call itself healthy forever.
    pub async fn health(&self) -> Result<NodeId, StoreError> {
        if let Some(fault) = self.storage_fault() {
            return Err(StoreError::Unavailable(format!(
                "this member's storage failed: {fault}"
            )));
        }
        let Some(leader) = self.inner.raft.metrics().borrow().current_leader else {
            return Err(StoreError::Unavailable(
                "no leader is known to this member".into(),
            ));
        };
        let wait = self.inner.config.request_timeout.min(HEALTH_CHECK_WAIT);
        match self
            .leader_call_until(PeerRequest::QuorumCheck, Instant::now() + wait)
            .await
        {
            Ok(_) => Ok(leader),
            Err(StoreError::OutcomeUnknown(why)) => Err(StoreError::Unavailable(format!(
                "the leader did not answer the quorum check: {why}"
            ))),
            Err(e) => Err(e),
        }
    }
}

/// Whether a leader call whose answer was lost may be made again: lease renewals and reads
/// may; membership changes may not (a second try would fail on the first one's effect).
/// The quorum check is not asked again either: `/health` reports the lost answer as the
/// leader's silence, which it is.
fn leader_call_safety(req: &PeerRequest) -> Safety {
    match req {
        PeerRequest::ReadIndex
        | PeerRequest::LeaseKeepAlive(_)
        | PeerRequest::LeaseTimeToLive(_)
        | PeerRequest::ClientUrl
        | PeerRequest::Membership => Safety::Retry,
        PeerRequest::Forward(_)
        | PeerRequest::AddMember { .. }
        | PeerRequest::RemoveMember(_)
        | PeerRequest::PromoteMember(_)
        | PeerRequest::QuorumCheck => Safety::Once,
    }
}

/// How long `/health` waits for the leader's answer (at most the request timeout).
const HEALTH_CHECK_WAIT: Duration = Duration::from_secs(2);

fn unexpected(resp: PeerResponse) -> StoreError {
    StoreError::Internal(format!("unexpected answer from the leader: {resp:?}"))
}
