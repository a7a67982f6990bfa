//! Starting a store node: opens sled, builds the Raft log store and state machine, starts
//! Raft, the peer and client servers, the proposer, the read indexer and the lease clock,
//! initialises the cluster on the first start of a founding member, and hands out a
//! [`StoreHandle`] that the HTTP layer (and tests) use. [`StoreNode::shutdown`] stops it all.
//!
//! This module wires parts together; it decides no store semantics itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::{ClusterResponse, Member, ResponseHeader};
use crate::config::StoreConfig;
use crate::disk::DiskGuard;
use crate::error::StoreError;
use crate::leader_route::{leader_of, LeaderRoute, Safety};
use crate::lease::LeaseClock;
use crate::membership;
use crate::metrics::Metrics;
use crate::mvcc::MvccStore;
use crate::network::client::{PeerClient, PeerNetworkFactory};
use crate::network::{PeerError, PeerRequest, PeerResponse, WireLeaseStatus};
use crate::proposer::Proposer;
use crate::read_index::ReadIndexer;
use crate::serve::ServeConfig;
use crate::tls::PeerTls;
use crate::types::{Command, CommandResult, MemberNode, NodeId, Raft};
use crate::watch::WatchHub;

/// A running node's capabilities, cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    config: StoreConfig,
    raft: Raft,
    mvcc: MvccStore,
    hub: WatchHub,
    metrics: Metrics,
    proposer: Proposer,
    reads: ReadIndexer,
    leases: LeaseClock,
    peers: PeerClient,
    route: LeaderRoute,
    db: sled::Db,
    /// The client API's URL as other members and clients should dial it.
    client_url: String,
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

async fn bind(addr: &str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::Listen {
            addr: addr.to_string(),
            message: e.to_string(),
        })
}

impl StoreNode {
    /// Opens the data directory and starts every part of the node.
    pub async fn start(config: StoreConfig) -> Result<StoreNode, NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| NodeError::DataDir {
            path: config.data_dir.display().to_string(),
            message: e.to_string(),
        })?;
        let db = sled::Config::new()
            .path(config.data_dir.join("db"))
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|e| NodeError::DataDir {
                path: config.data_dir.display().to_string(),
                message: format!("cannot open the database: {e}"),
            })?;

        let metrics = Metrics::new();
        let mvcc = MvccStore::open(&db).map_err(|e| NodeError::Storage(e.to_string()))?;
        let hub = WatchHub::new(mvcc.clone(), config.limits.max_watchers);
        let (log_store, state_machine) = crate::storage::open_stores(
            db.clone(),
            &config.data_dir,
            mvcc.clone(),
            Arc::new(hub.clone()),
        )
        .map_err(|e| NodeError::Storage(e.to_string()))?;

        let raft_config = openraft::Config {
            cluster_name: "miniku".into(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: config.election_timeout_min.as_millis() as u64,
            election_timeout_max: config.election_timeout_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                config.snapshot_logs_since_last,
            ),
            max_in_snapshot_log_to_keep: config.max_in_snapshot_log_to_keep,
            install_snapshot_timeout: 60_000,
            max_payload_entries: 256,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;

        let peers = PeerClient::new(
            config.peer_routes.clone(),
            config.peer_token.clone(),
            config.peer_tls.as_ref(),
        )
        .map_err(NodeError::Config)?;
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            PeerNetworkFactory::new(peers.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;

        let route = LeaderRoute::new(config.id, raft.clone(), peers.clone());
        let proposer = Proposer::start(
            config.id,
            raft.clone(),
            route.clone(),
            metrics.clone(),
            config.request_timeout,
            config.max_batch_commands,
        );
        let reads = ReadIndexer::start(raft.clone(), route.clone(), config.request_timeout);
        let leases = LeaseClock::new(config.id, raft.clone(), mvcc.clone());

        // A verified client certificate authenticates a peer as well as the secret does.
        let peer_mtls = config.peer_tls.as_ref().is_some_and(PeerTls::is_mutual);
        if !peer_mtls {
            crate::auth::check_listen(
                "peer API",
                &config.peer_addr,
                config.peer_token.as_ref(),
                "--peer-token-file (or mutual TLS: --peer-cert-file, --peer-key-file and \
                 --peer-trusted-ca-file)",
            )
            .map_err(NodeError::Config)?;
        }
        crate::auth::check_listen(
            "client API",
            &config.client_addr,
            config.client_token.as_ref(),
            "--token-file",
        )
        .map_err(NodeError::Config)?;
        let tls_error = |e: crate::tls::TlsError| NodeError::Config(e.to_string());
        let peer_tls = match &config.peer_tls {
            Some(t) => Some(
                crate::tls::server_config(&t.cert_key, t.trusted_ca.as_deref())
                    .map_err(tls_error)?,
            ),
            None => None,
        };
        let client_tls = match &config.client_tls {
            Some(ck) => Some(crate::tls::server_config(ck, None).map_err(tls_error)?),
            None => None,
        };
        let peer_listener = bind(&config.peer_addr).await?;
        let client_listener = bind(&config.client_addr).await?;
        let peer_addr = peer_listener.local_addr().map_err(|e| NodeError::Listen {
            addr: config.peer_addr.clone(),
            message: e.to_string(),
        })?;
        let client_addr = client_listener
            .local_addr()
            .map_err(|e| NodeError::Listen {
                addr: config.client_addr.clone(),
                message: e.to_string(),
            })?;

        let handle = StoreHandle {
            inner: Arc::new(NodeInner {
                config: config.clone(),
                raft: raft.clone(),
                mvcc,
                hub,
                metrics,
                proposer: proposer.clone(),
                reads,
                leases: leases.clone(),
                peers,
                route,
                db: db.clone(),
                client_url: advertised_client_url(&config, client_addr),
            }),
        };

        let (stop, stopped) = watch::channel(false);
        let serving = |name, tls| ServeConfig {
            tls,
            max_connections: config.limits.max_connections,
            ..ServeConfig::new(name)
        };
        let tasks = vec![
            serve(
                peer_listener,
                crate::network::server::router(raft.clone(), handle.clone()),
                serving("peer API", peer_tls),
                stopped.clone(),
            ),
            serve(
                client_listener,
                crate::grpc::client_router(handle.clone()),
                serving("client API", client_tls),
                stopped.clone(),
            ),
            tokio::spawn(leases.run(proposer.clone())),
            tokio::spawn(
                DiskGuard {
                    id: config.id,
                    data_dir: config.data_dir.clone(),
                    db,
                    mvcc: handle.mvcc().clone(),
                    proposer,
                    limits: config.space.clone(),
                }
                .run(stopped.clone()),
            ),
            tokio::spawn(watch_leadership(raft.clone(), handle.metrics().clone())),
        ];

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if !initialized && config.initial_cluster.contains_key(&config.id) {
            let members: BTreeMap<NodeId, MemberNode> = config
                .initial_cluster
                .iter()
                .map(|(id, addr)| (*id, MemberNode { addr: addr.clone() }))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(id = config.id, "initialised a new cluster"),
                Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(_),
                )) => tracing::info!(id = config.id, "cluster already initialised"),
                Err(e) => return Err(NodeError::Raft(e.to_string())),
            }
        }
        tracing::info!(
            id = config.id,
            client = %client_addr,
            peer = %peer_addr,
            data = %config.data_dir.display(),
            "store node started"
        );
        Ok(StoreNode {
            handle,
            client_addr,
            peer_addr,
            stop,
            tasks,
        })
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

fn serve(
    listener: TcpListener,
    router: axum::Router,
    config: ServeConfig,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tokio::spawn(crate::serve::serve(listener, router, config, shutdown))
}

/// The client URL other members and clients dial: the bound address, with the peer
/// address's host when the client API listens on every interface.
fn advertised_client_url(config: &StoreConfig, bound: SocketAddr) -> String {
    let scheme = if config.client_tls.is_some() {
        "https"
    } else {
        "http"
    };
    if bound.ip().is_unspecified() {
        if let Some((host, _)) = config.peer_addr.rsplit_once(':') {
            return format!("{scheme}://{host}:{}", bound.port());
        }
    }
    format!("{scheme}://{bound}")
}

/// Counts leader changes for the metrics.
async fn watch_leadership(raft: Raft, metrics: Metrics) {
    let mut rx = raft.metrics();
    let mut leader = rx.borrow().current_leader;
    while rx.changed().await.is_ok() {
        let now = rx.borrow().current_leader;
        if now != leader {
            tracing::info!(from = ?leader, to = ?now, "leader changed");
            metrics.leader_changed();
            leader = now;
        }
    }
}

impl StoreHandle {
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
        let here = || self.serve_peer(req.clone());
        self.inner
            .route
            .on_leader(&req, deadline, safety, here)
            .await
    }

    /// Serves a request another member sent to us as the leader.
    pub async fn serve_peer(&self, req: PeerRequest) -> Result<PeerResponse, PeerError> {
        // Any member answers for itself.
        if let PeerRequest::ClientUrl = req {
            return Ok(PeerResponse::ClientUrl(self.inner.client_url.clone()));
        }
        let (leader, _) = leader_of(&self.inner.raft);
        if leader != Some(self.id()) {
            return Err(PeerError::NotLeader(leader));
        }
        let raft = &self.inner.raft;
        match req {
            PeerRequest::Forward(cmds) => Ok(PeerResponse::Forward(
                self.inner.proposer.propose_forwarded(cmds).await,
            )),
            PeerRequest::ReadIndex => match raft.get_read_log_id().await {
                Ok((read, _)) => Ok(PeerResponse::ReadIndex(read.map_or(0, |l| l.index))),
                Err(_) => Err(PeerError::NotLeader(None)),
            },
            PeerRequest::LeaseKeepAlive(id) => {
                raft.ensure_linearizable()
                    .await
                    .map_err(|_| PeerError::NotLeader(None))?;
                Ok(PeerResponse::LeaseKeepAlive(
                    self.inner.leases.keepalive(id)?,
                ))
            }
            PeerRequest::LeaseTimeToLive(id) => {
                raft.ensure_linearizable()
                    .await
                    .map_err(|_| PeerError::NotLeader(None))?;
                let remaining = self.inner.leases.remaining(id)?;
                let lease = self.inner.mvcc.lease(id).ok_or(StoreError::Rejected(
                    crate::types::CommandError::LeaseNotFound(id),
                ))?;
                Ok(PeerResponse::LeaseTimeToLive(WireLeaseStatus {
                    id,
                    remaining_ttl: remaining,
                    granted_ttl: lease.ttl,
                    keys: lease.keys,
                }))
            }
            PeerRequest::AddMember { id, peer_addr } => {
                if id == 0 {
                    return Err(StoreError::InvalidArgument("member id must be >= 1".into()).into());
                }
                if is_member(raft, id) {
                    return Err(
                        StoreError::InvalidArgument(format!("member {id} already exists")).into(),
                    );
                }
                // Not blocking: the learner may be down, and its catching up is judged
                // (and waited for) by whoever promotes it.
                let addr = peer_addr.clone();
                self.change_membership(
                    &format!("adding learner {id}"),
                    raft.add_learner(id, MemberNode { addr }, false),
                )
                .await?;
                tracing::info!(id, peer_addr, "added a learner");
                Ok(PeerResponse::Done)
            }
            PeerRequest::PromoteMember(id) => {
                self.check_promotable(id)?;
                self.change_membership(
                    &format!("promoting {id} to voter"),
                    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false),
                )
                .await?;
                tracing::info!(id, "promoted a learner to voter");
                Ok(PeerResponse::Done)
            }
            PeerRequest::ClientUrl => Ok(PeerResponse::ClientUrl(self.inner.client_url.clone())),
            PeerRequest::RemoveMember(id) => {
                if !is_member(raft, id) {
                    return Err(StoreError::NotFound(format!("member {id} not found")).into());
                }
                let what = format!("removing {id}");
                if is_voter(raft, id) {
                    self.change_membership(
                        &what,
                        raft.change_membership(
                            ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                            false,
                        ),
                    )
                    .await?;
                }
                if is_member(raft, id) {
                    self.change_membership(
                        &what,
                        raft.change_membership(
                            ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                            false,
                        ),
                    )
                    .await?;
                }
                Ok(PeerResponse::Done)
            }
            PeerRequest::QuorumCheck => self.quorum_here().await.map(|()| PeerResponse::Done),
        }
    }

    /// On the leader: why learner `id` may not become a voter yet, if it may not.
    fn check_promotable(&self, id: NodeId) -> Result<(), PeerError> {
        let m = self.inner.raft.metrics();
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
            self.id(),
            m.last_log_index,
            id,
            self.answered_lately(id),
        ) {
            return Err(StoreError::InvalidArgument(membership::LEARNER_NOT_READY.into()).into());
        }
        Ok(())
    }

    /// Whether `peer` answered this member's Raft RPCs within the election timeout (on a
    /// leader: whether it is reachable).
    fn answered_lately(&self, peer: NodeId) -> bool {
        let limit = self.inner.config.election_timeout_max;
        self.inner
            .peers
            .last_answer(peer)
            .is_some_and(|t| t.elapsed() <= limit)
    }

    /// On the leader: a membership change, bounded by the request timeout (without a quorum
    /// it would never commit), its refusals mapped to what a client can act on.
    async fn change_membership<T>(
        &self,
        what: &str,
        change: impl std::future::Future<
            Output = Result<T, RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>>,
        >,
    ) -> Result<(), PeerError> {
        let timeout = self.inner.config.request_timeout;
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

    /// On the leader: `Ok` if a quorum of voters acknowledged it within the election timeout
    /// (see [`Self::health`]). Right after an election no acknowledgement is known yet: wait
    /// up to that timeout for one.
    async fn quorum_here(&self) -> Result<(), PeerError> {
        let limit = self.inner.config.election_timeout_max;
        let deadline = Instant::now() + limit;
        let mut rx = self.inner.raft.metrics();
        let since_ack = loop {
            let (leader, ack) = {
                let m = rx.borrow_and_update();
                (m.current_leader, m.millis_since_quorum_ack)
            };
            if leader != Some(self.id()) {
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
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        let unreachable: Vec<NodeId> = voters
            .into_iter()
            .filter(|v| *v != self.id() && !self.answered_lately(*v))
            .collect();
        Err(StoreError::Unavailable(membership::no_quorum(
            self.id(),
            since_ack,
            limit,
            &unreachable,
        ))
        .into())
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
        | PeerRequest::ClientUrl => Safety::Retry,
        PeerRequest::Forward(_)
        | PeerRequest::AddMember { .. }
        | PeerRequest::RemoveMember(_)
        | PeerRequest::PromoteMember(_)
        | PeerRequest::QuorumCheck => Safety::Once,
    }
}

/// How long `/health` waits for the leader's answer (at most the request timeout).
const HEALTH_CHECK_WAIT: Duration = Duration::from_secs(2);

/// Whether `id` is a voter in the current membership.
fn is_voter(raft: &Raft, id: NodeId) -> bool {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == id)
}

/// Whether `id` is in the current membership (voter or learner).
fn is_member(raft: &Raft, id: NodeId) -> bool {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&id)
        .is_some()
}

fn unexpected(resp: PeerResponse) -> StoreError {
    StoreError::Internal(format!("unexpected answer from the leader: {resp:?}"))
}
