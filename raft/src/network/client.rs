//! Outbound peer traffic: openraft's [`RaftNetworkFactory`] over HTTP + bincode, and
//! [`PeerClient::call`] for the follower-to-leader requests.
//!
//! A refused or failed connection is reported to openraft as `Unreachable` so it backs off
//! instead of spinning; a request that timed out after it was sent is a `Timeout`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{PeerError, PeerRequest, PeerResponse};
use crate::auth::Token;
use crate::codec::{decode, encode};
use crate::metrics::{Metrics, Stage};
use crate::tls::{PeerTls, Trust};
use crate::types::{MemberNode, NodeId, Snapshot, TypeConfig, Vote};

/// Paths of the peer API.
pub(crate) mod paths {
    pub const APPEND: &str = "/raft/append";
    pub const VOTE: &str = "/raft/vote";
    pub const SNAPSHOT: &str = "/raft/snapshot";
    pub const CALL: &str = "/peer/call";
}

/// How a peer request failed on the way.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Could not connect: the request was not delivered.
    #[error("peer {addr} unreachable: {message}")]
    Unreachable { addr: String, message: String },
    /// Sent, but no (usable) answer came back: it may have been processed.
    #[error("peer {addr} did not answer: {message}")]
    NoAnswer { addr: String, message: String },
}

/// A pooled HTTP client for peer requests.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    /// Peer address -> address to dial instead (see `StoreConfig::peer_routes`).
    routes: Arc<HashMap<String, String>>,
    /// `https` when peer traffic uses TLS, else `http`.
    scheme: &'static str,
    /// When each peer last answered one of this member's Raft RPCs.
    answered: Arc<Mutex<HashMap<NodeId, Instant>>>,
    /// When a voter last refused this member's vote request because its own log is longer.
    outlogged: Arc<Mutex<Option<Instant>>>,
}

impl PeerClient {
    /// `token`: the cluster's secret, sent on every peer request. `tls`: dial peers over
    /// TLS, trusting its CA and presenting this member's certificate (for mutual TLS).
    pub fn new(
        routes: HashMap<String, String>,
        token: Option<Token>,
        tls: Option<&PeerTls>,
    ) -> Result<Self, String> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            headers.insert(reqwest::header::AUTHORIZATION, t.header_value()?);
        }
        let trust = match tls {
            Some(PeerTls {
                trusted_ca: Some(ca),
                ..
            }) => Trust::Ca(ca),
            Some(_) => Trust::System,
            None => Trust::PlainHttp,
        };
        let identity = tls.map(|t| &t.cert_key);
        let builder =
            crate::tls::reqwest_builder(trust, identity).map_err(|e| format!("peer TLS: {e}"))?;
        let http = builder
            .default_headers(headers)
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(PeerClient {
            http,
            routes: Arc::new(routes),
            scheme: if tls.is_some() { "https" } else { "http" },
            answered: Arc::default(),
            outlogged: Arc::default(),
        })
    }

    /// When `peer` last answered a Raft RPC (append, vote, snapshot) from this member: any
    /// answer, a refusal included, shows it is alive and reachable. `None` if it never did.
    /// Only a leader (or candidate) sends those, so on a follower this says little.
    pub fn last_answer(&self, peer: NodeId) -> Option<Instant> {
        let answered = self.answered.lock().unwrap_or_else(|p| p.into_inner());
        answered.get(&peer).copied()
    }

    /// When a voter last refused this member's vote request because the voter's log is
    /// longer: then that voter, not this member, should be the next leader.
    pub fn outlogged(&self) -> Option<Instant> {
        *self.outlogged.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note_answer(&self, peer: NodeId) {
        let mut answered = self.answered.lock().unwrap_or_else(|p| p.into_inner());
        answered.insert(peer, Instant::now());
    }

    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let body = encode(req).map_err(|e| TransportError::Unreachable {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
        let dial = self.routes.get(addr).map_or(addr, String::as_str);
        let url = format!("{}://{dial}{path}", self.scheme);
        let resp = self
            .http
            .post(&url)
            .timeout(timeout)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    TransportError::Unreachable {
                        addr: addr.to_string(),
                        message: crate::error::with_causes(&e),
                    }
                } else {
                    TransportError::NoAnswer {
                        addr: addr.to_string(),
                        message: crate::error::with_causes(&e),
                    }
                }
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| TransportError::NoAnswer {
            addr: addr.to_string(),
            message: crate::error::with_causes(&e),
        })?;
        if !status.is_success() {
            return Err(TransportError::NoAnswer {
                addr: addr.to_string(),
                message: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
            });
        }
        decode(&bytes).map_err(|e| TransportError::NoAnswer {
            addr: addr.to_string(),
            message: e.to_string(),
        })
    }

    /// Whether `addr`'s peer port refuses connections: nothing listens there (the member's
    /// process is gone). A connection that is accepted, or that neither succeeds nor fails
    /// within `timeout` (a partition, a stalled host), is not a refusal. Dials a plain TCP
    /// connection (through the route, if any) and closes it at once.
    pub async fn refuses(&self, addr: &str, timeout: Duration) -> bool {
        let dial = self.routes.get(addr).map_or(addr, String::as_str);
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(dial)).await {
            Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    /// Sends a follower-to-leader request.
    pub async fn call(
        &self,
        addr: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<Result<PeerResponse, PeerError>, TransportError> {
        self.post(addr, paths::CALL, req, timeout).await
    }
}

/// openraft's factory: one [`PeerConnection`] per target.
pub struct PeerNetworkFactory {
    client: PeerClient,
    metrics: Metrics,
}

impl PeerNetworkFactory {
    /// `metrics` times each AppendEntries round trip.
    pub fn new(client: PeerClient, metrics: Metrics) -> Self {
        PeerNetworkFactory { client, metrics }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> Self::Network {
        PeerConnection {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

pub struct PeerConnection {
    client: PeerClient,
    target: NodeId,
    addr: String,
    metrics: Metrics,
}

type RaftRpcError<E = openraft::error::Infallible> =
    RPCError<NodeId, MemberNode, RaftError<NodeId, E>>;

impl PeerConnection {
    async fn raft_rpc<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RaftRpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Result<Resp, RaftError<NodeId, E>>, TransportError> =
            self.client.post(&self.addr, path, req, timeout).await;
        if answer.is_ok() {
            self.client.note_answer(self.target);
        }
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(e @ TransportError::Unreachable { .. }) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e @ TransportError::NoAnswer { .. }) => {
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftRpcError> {
        let started = Instant::now();
        let answer = self.raft_rpc(paths::APPEND, &rpc, option.hard_ttl()).await;
        self.metrics
            .observe_stage(Stage::Replicate, started.elapsed());
        answer
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RaftRpcError<InstallSnapshotError>> {
        // Snapshots travel whole through `full_snapshot`; chunked transfer is not used.
        Err(RPCError::Network(NetworkError::new(
            &TransportError::NoAnswer {
                addr: self.addr.clone(),
                message: "chunked snapshot transfer is not supported; use full_snapshot".into(),
            },
        )))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RaftRpcError> {
        let candidate_log = rpc.last_log_id;
        let resp: VoteResponse<NodeId> =
            self.raft_rpc(paths::VOTE, &rpc, option.hard_ttl()).await?;
        if !resp.vote_granted && resp.last_log_id > candidate_log {
            *self
                .client
                .outlogged
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        Ok(resp)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, openraft::error::Fatal<NodeId>>>
    {
        let data = snapshot.snapshot.into_inner();
        let req = (vote, snapshot.meta, data);
        // A whole snapshot may be large: give it time proportional to its size.
        let timeout = Duration::from_secs(30 + (req.2.len() as u64 >> 20));
        let answer: Result<Result<SnapshotResponse<NodeId>, openraft::error::Fatal<NodeId>>, _> =
            self.client
                .post(&self.addr, paths::SNAPSHOT, &req, timeout)
                .await;
        if answer.is_ok() {
            self.client.note_answer(self.target);
        }
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(fatal)) => Err(StreamingError::RemoteError(RemoteError::new(
                self.target,
                fatal,
            ))),
            Err(e @ TransportError::Unreachable { .. }) => {
                Err(StreamingError::Unreachable(Unreachable::new(&e)))
            }
            Err(TransportError::NoAnswer { .. }) => Err(StreamingError::Timeout(Timeout {
                action: openraft::network::RPCTypes::InstallSnapshot,
                id: 0,
                target: self.target,
                timeout,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_only_where_nothing_listens() {
        let client = PeerClient::new(HashMap::new(), None, None).expect("a plain client");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("bound").to_string();
        let timeout = Duration::from_millis(500);
        assert!(!client.refuses(&addr, timeout).await, "a listening port");
        drop(listener);
        assert!(client.refuses(&addr, timeout).await, "a closed port");
        // A route is dialled instead of the address itself.
        let open = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let routes = HashMap::from([(addr.clone(), open.local_addr().expect("bound").to_string())]);
        let routed = PeerClient::new(routes, None, None).expect("a plain client");
        assert!(!routed.refuses(&addr, timeout).await, "the route listens");
    }
}
