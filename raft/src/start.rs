//! [`StoreNode::start`], step by step: open the storage (sled, the MVCC store, the watch hub
//! as the state machine's apply listener, Raft's log store), build Raft, check the listening
//! security and bind the listeners, start the proposer, the read indexer and the leader
//! service, start the servers and background tasks, and initialise the cluster on a founding
//! member's first start.
//!
//! Wiring only: every decision is the started part's. This is the one module that knows
//! both the node and its servers (network, gRPC, HTTP), so that [`crate::node`] imports
//! none of them and they may import it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::StoreConfig;
use crate::crash_watch::CrashWatch;
use crate::disk::DiskGuard;
use crate::leader_route::LeaderRoute;
use crate::lease::LeaseClock;
use crate::metrics::Metrics;
use crate::mvcc::MvccStore;
use crate::network::client::{PeerClient, PeerNetworkFactory};
use crate::network::server::Inbound;
use crate::network::{PeerRequest, PeerResponse};
use crate::node::{NodeError, NodeParts, StoreHandle, StoreNode};
use crate::peer_service::LeaderService;
use crate::proposer::Proposer;
use crate::read_index::ReadIndexer;
use crate::serve::ServeConfig;
use crate::storage::{LogStore, StateMachineStore};
use crate::tls::PeerTls;
use crate::types::{MemberNode, NodeId, Raft};
use crate::watch::WatchHub;

/// The opened data directory.
struct Storage {
    shared: SharedStorage,
    log_store: LogStore,
    state_machine: StateMachineStore,
}

/// The parts of the opened data directory the rest of the node shares, and the metrics
/// that time what the storage does.
struct SharedStorage {
    db: sled::Db,
    mvcc: MvccStore,
    hub: WatchHub,
    metrics: Metrics,
}

/// The bound listeners and the TLS each serves with.
struct Listeners {
    peer: TcpListener,
    peer_addr: SocketAddr,
    peer_tls: Option<Arc<rustls::ServerConfig>>,
    client: TcpListener,
    client_addr: SocketAddr,
    client_tls: Option<Arc<rustls::ServerConfig>>,
}

impl StoreNode {
    /// Opens the data directory and starts every part of the node.
    pub async fn start(config: StoreConfig) -> Result<StoreNode, NodeError> {
        let storage = open_storage(&config)?;
        let db = storage.shared.db.clone();
        let peers = PeerClient::new(
            config.peer_routes.clone(),
            config.peer_token.clone(),
            config.peer_tls.as_ref(),
        )
        .map_err(NodeError::Config)?
        .with_streams(config.peer_streams);
        let raft = build_raft(
            &config,
            &peers,
            &storage.shared.metrics,
            storage.log_store,
            storage.state_machine,
        )
        .await?;
        let listeners = bind_listeners(&config).await?;
        let asker = peers.clone();
        let (peer_addr, client_addr) = (listeners.peer_addr, listeners.client_addr);
        let handle = assemble(&config, raft.clone(), peers, storage.shared, client_addr);
        let (stop, stopped) = watch::channel(false);
        let tasks = start_tasks(&config, &handle, listeners, db, stopped);
        initialize_cluster(&raft, &config, &asker).await?;
        tracing::info!(
            id = config.id,
            client = %client_addr,
            peer = %peer_addr,
            data = %config.data_dir.display(),
            "store node started"
        );
        Ok(StoreNode::running(
            handle,
            client_addr,
            peer_addr,
            stop,
            tasks,
        ))
    }
}

/// Opens sled in the data directory (creating it), the MVCC store over it, the watch hub
/// and Raft's log store and state machine (which tells the hub of every applied entry).
fn open_storage(config: &StoreConfig) -> Result<Storage, NodeError> {
    let data_dir_error = |message: String| NodeError::DataDir {
        path: config.data_dir.display().to_string(),
        message,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| data_dir_error(e.to_string()))?;
    // sled holds the state machine only (the Raft log has its own files). A 16 MiB page
    // cache, not 64: after 100,000 keys the largest member held 102 MB instead of 127 MB,
    // and reads of colder pages come from the kernel's page cache. Background flushes every
    // 100 ms (sled's default is 500) keep its dirty buffers small; they are off the write
    // path, which waits only for the log's fdatasync.
    let db = sled::Config::new()
        .path(config.data_dir.join("db"))
        .cache_capacity(16 * 1024 * 1024)
        .flush_every_ms(Some(100))
        .open()
        .map_err(|e| data_dir_error(format!("cannot open the database: {e}")))?;
    let mvcc = MvccStore::open(&db).map_err(|e| NodeError::Storage(e.to_string()))?;
    let hub = WatchHub::new(mvcc.clone(), config.limits.max_watchers);
    let metrics = Metrics::new();
    let (log_store, state_machine) = crate::storage::open_stores(
        db.clone(),
        &config.data_dir,
        mvcc.clone(),
        Arc::new(hub.clone()),
        metrics.clone(),
    )
    .map_err(|e| NodeError::Storage(e.to_string()))?;
    Ok(Storage {
        shared: SharedStorage {
            db,
            mvcc,
            hub,
            metrics,
        },
        log_store,
        state_machine,
    })
}

/// Raft over the opened stores, talking to peers through `peers`.
async fn build_raft(
    config: &StoreConfig,
    peers: &PeerClient,
    metrics: &Metrics,
    log_store: LogStore,
    state_machine: StateMachineStore,
) -> Result<Raft, NodeError> {
    let raft_config = openraft::Config {
        cluster_name: "miniku".into(),
        heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
        election_timeout_min: config.election_timeout_min.as_millis() as u64,
        election_timeout_max: config.election_timeout_max.as_millis() as u64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: config.max_in_snapshot_log_to_keep,
        install_snapshot_timeout: 60_000,
        max_payload_entries: 256,
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    Raft::new(
        config.id,
        Arc::new(raft_config),
        PeerNetworkFactory::new(peers.clone(), metrics.clone()),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))
}

/// Refuses to listen openly (no secret, no mutual TLS) where that is unsafe, loads the
/// servers' TLS and binds both listeners.
async fn bind_listeners(config: &StoreConfig) -> Result<Listeners, NodeError> {
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
            crate::tls::server_config(&t.cert_key, t.trusted_ca.as_deref()).map_err(tls_error)?,
        ),
        None => None,
    };
    let client_tls = match &config.client_tls {
        Some(ck) => Some(crate::tls::server_config(ck, None).map_err(tls_error)?),
        None => None,
    };
    let (peer, peer_addr) = bind(&config.peer_addr).await?;
    let (client, client_addr) = bind(&config.client_addr).await?;
    Ok(Listeners {
        peer,
        peer_addr,
        peer_tls,
        client,
        client_addr,
        client_tls,
    })
}

async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), NodeError> {
    let listen_error = |e: std::io::Error| NodeError::Listen {
        addr: addr.to_string(),
        message: e.to_string(),
    };
    let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    Ok((listener, bound))
}

/// Starts the proposer, the read indexer, the lease clock and the leader service, and
/// gathers them into the node's handle.
fn assemble(
    config: &StoreConfig,
    raft: Raft,
    peers: PeerClient,
    storage: SharedStorage,
    client_addr: SocketAddr,
) -> StoreHandle {
    let SharedStorage {
        db,
        mvcc,
        hub,
        metrics,
    } = storage;
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
    let client_url = advertised_client_url(config, client_addr);
    let leader = Arc::new(LeaderService {
        id: config.id,
        raft: raft.clone(),
        proposer: proposer.clone(),
        leases: leases.clone(),
        mvcc: mvcc.clone(),
        peers: peers.clone(),
        client_url: client_url.clone(),
        request_timeout: config.request_timeout,
        election_timeout_max: config.election_timeout_max,
    });
    StoreHandle::new(NodeParts {
        config: config.clone(),
        raft,
        mvcc,
        hub,
        metrics,
        proposer,
        reads,
        leases,
        peers,
        route,
        leader,
        db,
        client_url,
    })
}

/// Serves the peer and client APIs and runs the lease clock, the disk guard, the leadership
/// counter and the crash watch, until `stopped`.
fn start_tasks(
    config: &StoreConfig,
    handle: &StoreHandle,
    listeners: Listeners,
    db: sled::Db,
    stopped: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let inner = handle.parts();
    let serving = |name, tls| ServeConfig {
        tls,
        max_connections: config.limits.max_connections,
        ..ServeConfig::new(name)
    };
    let inbound = Inbound::default();
    let peer_router = crate::network::server::router(
        inner.raft.clone(),
        inner.leader.clone(),
        config.peer_token.clone(),
        inner.metrics.clone(),
        inbound.clone(),
        stopped.clone(),
    );
    let crash_watch = CrashWatch {
        id: config.id,
        raft: inner.raft.clone(),
        peers: inner.peers.clone(),
        inbound,
        heartbeat: config.heartbeat_interval,
        lease: config.election_timeout_max,
    };
    vec![
        serve(
            listeners.peer,
            peer_router,
            serving("peer API", listeners.peer_tls),
            stopped.clone(),
        ),
        serve(
            listeners.client,
            crate::grpc::client_router(handle.clone()),
            serving("client API", listeners.client_tls),
            stopped.clone(),
        ),
        tokio::spawn(inner.leases.clone().run(inner.proposer.clone())),
        tokio::spawn(
            DiskGuard {
                id: config.id,
                data_dir: config.data_dir.clone(),
                db,
                mvcc: inner.mvcc.clone(),
                proposer: inner.proposer.clone(),
                limits: config.space.clone(),
            }
            .run(stopped.clone()),
        ),
        tokio::spawn(watch_leadership(inner.raft.clone(), inner.metrics.clone())),
        tokio::spawn(crash_watch.run(stopped.clone())),
    ]
}

/// On a founding member's first start, initialises the cluster with the initial members,
/// unless one of them already belongs to a cluster of other members: then this member's
/// --initial-cluster is wrong, and it is refused with the members that cluster has.
async fn initialize_cluster(
    raft: &Raft,
    config: &StoreConfig,
    peers: &PeerClient,
) -> Result<(), NodeError> {
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    if initialized || !config.initial_cluster.contains_key(&config.id) {
        return Ok(());
    }
    check_initial_cluster(config, peers).await?;
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
    Ok(())
}

/// How long a founding member waits for each other founding member's membership.
const MEMBERSHIP_ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks every other founding member which cluster it belongs to. One that answers with
/// members other than `--initial-cluster`'s refuses this start; one that does not answer
/// (not started yet, or an older version) or belongs to no cluster yet does not.
async fn check_initial_cluster(config: &StoreConfig, peers: &PeerClient) -> Result<(), NodeError> {
    let ours = &config.initial_cluster;
    let asks = ours
        .iter()
        .filter(|(id, _)| **id != config.id)
        .map(|(id, addr)| async move {
            let answer = peers
                .call(addr, &PeerRequest::Membership, MEMBERSHIP_ASK_TIMEOUT)
                .await;
            (*id, addr.clone(), answer)
        });
    for (id, addr, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(Ok(PeerResponse::Membership(theirs))) => {
                if let Some(why) = initial_cluster_mismatch(ours, id, &addr, &theirs) {
                    return Err(NodeError::Config(why));
                }
            }
            Ok(other) => {
                tracing::debug!(member = id, %addr, answer = ?other, "no membership from a founding member");
            }
            Err(e) => {
                tracing::info!(member = id, %addr, error = %e, "founding member not reachable yet");
            }
        }
    }
    Ok(())
}

/// Why `--initial-cluster` (`ours`) is wrong, given the members `theirs` that founding member
/// `id` at `addr` reports; `None` when it belongs to no cluster yet or to this one.
fn initial_cluster_mismatch(
    ours: &BTreeMap<NodeId, String>,
    id: NodeId,
    addr: &str,
    theirs: &[(NodeId, String)],
) -> Option<String> {
    if theirs.is_empty() {
        return None;
    }
    let theirs: BTreeMap<NodeId, String> = theirs.iter().cloned().collect();
    if theirs == *ours {
        return None;
    }
    let list = |m: &BTreeMap<NodeId, String>| {
        m.iter()
            .map(|(i, a)| format!("{i}={a}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    Some(format!(
        "--initial-cluster {} is wrong: member {id} at {addr} already belongs to a cluster of {}; \
         to add a member to that cluster, POST /v1/cluster/members on it and start the new one with --join",
        list(ours),
        list(&theirs)
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(m: &[(NodeId, &str)]) -> BTreeMap<NodeId, String> {
        m.iter().map(|(i, a)| (*i, a.to_string())).collect()
    }

    #[test]
    fn a_founding_member_joins_only_its_own_cluster() {
        let ours = cluster(&[(1, "a:1"), (2, "b:1"), (4, "d:1")]);
        // Not part of a cluster yet, or of this very one: no objection.
        assert_eq!(initial_cluster_mismatch(&ours, 1, "a:1", &[]), None);
        let same: Vec<_> = ours.clone().into_iter().collect();
        assert_eq!(initial_cluster_mismatch(&ours, 1, "a:1", &same), None);
        // Member 1 is in a cluster of 1, 2, 3.
        let theirs = vec![(1, "a:1".into()), (2, "b:1".into()), (3, "c:1".into())];
        let why = initial_cluster_mismatch(&ours, 1, "a:1", &theirs).unwrap_or_default();
        assert!(
            why.contains("--initial-cluster 1=a:1,2=b:1,4=d:1 is wrong"),
            "{why}"
        );
        assert!(
            why.contains("member 1 at a:1 already belongs to a cluster of 1=a:1,2=b:1,3=c:1"),
            "{why}"
        );
        // The same ids at other addresses are another cluster too.
        let moved = vec![(1, "a:1".into()), (2, "b:2".into()), (4, "d:1".into())];
        assert!(initial_cluster_mismatch(&ours, 1, "a:1", &moved).is_some());
    }
}
