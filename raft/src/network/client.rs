//! Outbound peer traffic: openraft's [`RaftNetworkFactory`], and [`PeerClient::call`] for
//! the follower-to-leader requests. AppendEntries go over one [`ExclusiveStream`] per
//! replication target, calls over one [`SharedStream`] per peer; votes and whole snapshots,
//! and everything to a peer that cannot open a stream, are HTTP requests.
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

use super::stream::{ExclusiveStream, Kind, SharedError, SharedStream, StreamError, PROTOCOL};
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
    pub const STREAM: &str = "/peer/stream";
}

/// How long a peer that answered a stream upgrade with an HTTP error (an older version) is
/// sent plain HTTP requests before a stream is tried again.
const HTTP_ONLY_FOR: Duration = Duration::from_secs(30);

/// Why a peer stream could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// The peer does not serve streams (it answered the upgrade with this status).
    #[error("peer streams not served (HTTP {0})")]
    Unsupported(reqwest::StatusCode),
    /// Nothing was delivered: no connection, a refused upgrade, a broken handshake.
    #[error("{0}")]
    Failed(TransportError),
}

/// Most idle append streams kept per peer for the next [`PeerConnection`] to that peer.
/// openraft opens a connection per leadership check (each linearizable read's heartbeat
/// round) besides each replication stream's own, so streams are handed on, not reopened.
const IDLE_APPEND_STREAMS: usize = 8;

/// An idle append stream older than this is closed rather than handed on.
const IDLE_APPEND_FOR: Duration = Duration::from_secs(30);

type AppendStream = ExclusiveStream<reqwest::Upgraded>;

/// Peer address -> append streams no connection uses now, with when each was left.
type IdleAppends = HashMap<String, Vec<(Instant, AppendStream)>>;

/// A peer's shared call stream, or until when it gets plain HTTP instead.
#[derive(Default)]
struct CallSlot {
    stream: Option<Arc<SharedStream<reqwest::Upgraded>>>,
    http_until: Option<Instant>,
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
    /// Peer address -> its call stream (opened on first use, reopened when it breaks).
    calls: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<CallSlot>>>>>,
    /// False: every message is an HTTP request ([`PeerClient::with_streams`]).
    streams: bool,
    idle_appends: Arc<Mutex<IdleAppends>>,
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
            calls: Arc::default(),
            streams: true,
            idle_appends: Arc::default(),
        })
    }

    /// An idle append stream to `addr` that is still open, if any.
    fn take_append_stream(&self, addr: &str) -> Option<AppendStream> {
        let mut idle = self.idle_appends.lock().unwrap_or_else(|p| p.into_inner());
        let streams = idle.get_mut(addr)?;
        while let Some((left, mut stream)) = streams.pop() {
            if left.elapsed() < IDLE_APPEND_FOR && stream.is_open() {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps `stream` for the next connection to `addr` (unless enough are kept).
    fn leave_append_stream(&self, addr: &str, stream: AppendStream) {
        let mut idle = self.idle_appends.lock().unwrap_or_else(|p| p.into_inner());
        let streams = idle.entry(addr.to_string()).or_default();
        streams.retain(|(left, _)| left.elapsed() < IDLE_APPEND_FOR);
        if streams.len() < IDLE_APPEND_STREAMS {
            streams.push((Instant::now(), stream));
        }
    }

    /// With `false`, sends every peer message as its own HTTP request, never over a stream.
    pub fn with_streams(mut self, streams: bool) -> Self {
        self.streams = streams;
        self
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
        let answer = self.post_bytes(addr, path, body, timeout).await?;
        decode_answer(addr, &answer)
    }

    async fn post_bytes(
        &self,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<bytes::Bytes, TransportError> {
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
        Ok(bytes)
    }

    /// Opens a peer stream to `addr`: an HTTP upgrade on a connection of its own, carrying
    /// the cluster token (and over TLS when peers use it), within `timeout`.
    async fn open_stream(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<reqwest::Upgraded, OpenError> {
        let failed = |message: String| {
            OpenError::Failed(TransportError::Unreachable {
                addr: addr.to_string(),
                message,
            })
        };
        let dial = self.routes.get(addr).map_or(addr, String::as_str);
        let url = format!("{}://{dial}{}", self.scheme, paths::STREAM);
        let upgrade = async {
            let resp = self
                .http
                .get(&url)
                .header(reqwest::header::CONNECTION, "upgrade")
                .header(reqwest::header::UPGRADE, PROTOCOL)
                .send()
                .await
                .map_err(|e| failed(crate::error::with_causes(&e)))?;
            match resp.status() {
                reqwest::StatusCode::SWITCHING_PROTOCOLS => resp
                    .upgrade()
                    .await
                    .map_err(|e| failed(crate::error::with_causes(&e))),
                status @ (reqwest::StatusCode::NOT_FOUND
                | reqwest::StatusCode::METHOD_NOT_ALLOWED
                | reqwest::StatusCode::BAD_REQUEST) => Err(OpenError::Unsupported(status)),
                status => Err(failed(format!("stream upgrade answered HTTP {status}"))),
            }
        };
        match tokio::time::timeout(timeout, upgrade).await {
            Ok(Ok(io)) => {
                tracing::debug!(%addr, "opened a peer stream");
                Ok(io)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(failed(format!("no stream within {timeout:?}"))),
        }
    }

    /// The call stream to `addr`, opened if there is none in use; `None` while the peer
    /// gets plain HTTP.
    async fn call_stream(
        &self,
        addr: &str,
        deadline: Instant,
    ) -> Result<Option<Arc<SharedStream<reqwest::Upgraded>>>, TransportError> {
        let slot = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            calls.entry(addr.to_string()).or_default().clone()
        };
        // Another caller may be opening the stream: wait for it, but not past the deadline.
        let Ok(mut slot) = tokio::time::timeout_at(deadline.into(), slot.lock()).await else {
            return Err(TransportError::Unreachable {
                addr: addr.to_string(),
                message: "no call stream in time (another request is opening it)".into(),
            });
        };
        if let Some(stream) = slot.stream.as_ref().filter(|s| s.is_usable()) {
            return Ok(Some(stream.clone()));
        }
        slot.stream = None;
        if !self.streams || slot.http_until.is_some_and(|t| Instant::now() < t) {
            return Ok(None);
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.open_stream(addr, timeout).await {
            Ok(io) => {
                let stream = Arc::new(SharedStream::new(io));
                slot.stream = Some(stream.clone());
                slot.http_until = None;
                Ok(Some(stream))
            }
            Err(OpenError::Unsupported(status)) => {
                tracing::info!(%addr, %status, "peer serves no streams; sending it HTTP requests");
                slot.http_until = Some(Instant::now() + HTTP_ONLY_FOR);
                Ok(None)
            }
            Err(OpenError::Failed(e)) => Err(e),
        }
    }

    /// A call's encoded request and answer, over the call stream to `addr` (or HTTP).
    async fn call_bytes(
        &self,
        addr: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<bytes::Bytes, TransportError> {
        let deadline = Instant::now() + timeout;
        // A stream found closed before the request went out is replaced once.
        for attempt in 0..2 {
            let Some(stream) = self.call_stream(addr, deadline).await? else {
                let remaining = deadline.saturating_duration_since(Instant::now());
                return self.post_bytes(addr, paths::CALL, body, remaining).await;
            };
            match stream.request(Kind::Call, &body, deadline.into()).await {
                Ok(answer) => return Ok(answer),
                Err(SharedError::NotSent(e)) if attempt == 0 => {
                    tracing::debug!(%addr, error = %e, "call stream closed; opening another");
                }
                Err(SharedError::NotSent(e)) => return Err(unreachable(addr, &e)),
                Err(SharedError::Lost(e)) => return Err(no_answer(addr, &e)),
            }
        }
        Err(TransportError::Unreachable {
            addr: addr.to_string(),
            message: "no call stream".into(),
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
        let body = encode(req).map_err(|e| TransportError::Unreachable {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
        let answer = self.call_bytes(addr, body, timeout).await?;
        decode_answer(addr, &answer)
    }
}

fn decode_answer<Resp: DeserializeOwned>(addr: &str, bytes: &[u8]) -> Result<Resp, TransportError> {
    decode(bytes).map_err(|e| TransportError::NoAnswer {
        addr: addr.to_string(),
        message: e.to_string(),
    })
}

fn unreachable(addr: &str, e: &StreamError) -> TransportError {
    TransportError::Unreachable {
        addr: addr.to_string(),
        message: e.to_string(),
    }
}

fn no_answer(addr: &str, e: &StreamError) -> TransportError {
    TransportError::NoAnswer {
        addr: addr.to_string(),
        message: e.to_string(),
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
            appends: None,
            http_until: None,
        }
    }
}

pub struct PeerConnection {
    client: PeerClient,
    target: NodeId,
    addr: String,
    metrics: Metrics,
    /// The stream AppendEntries go over: an idle one taken over or a new one on first use,
    /// dropped after any failure, left for the next connection when this one is dropped.
    /// Only ever reached through `&mut self` (`get_mut`): the mutex just makes it `Sync`.
    appends: Option<Mutex<AppendStream>>,
    /// Until when the target gets AppendEntries as HTTP requests (it serves no streams).
    http_until: Option<Instant>,
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
        let answer = self.client.post(&self.addr, path, req, timeout).await;
        self.raft_answer(answer)
    }

    // The error is openraft's own type, which the `RaftNetwork` methods return as it is.
    #[allow(clippy::result_large_err)]
    fn raft_answer<Resp, E>(
        &self,
        answer: Result<Result<Resp, RaftError<NodeId, E>>, TransportError>,
    ) -> Result<Resp, RaftRpcError<E>>
    where
        E: std::error::Error,
    {
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

impl PeerConnection {
    /// An encoded AppendEntries and its answer, over this target's append stream (opened
    /// if needed) or, while the target serves no streams, as an HTTP request.
    async fn append_bytes(
        &mut self,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<bytes::Bytes, TransportError> {
        let deadline = Instant::now() + timeout;
        let http_only = !self.client.streams || self.http_until.is_some_and(|t| Instant::now() < t);
        // A stream the peer closed (it restarted, say) is not written to.
        if let Some(stream) = self.appends.as_mut() {
            if !stream
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .is_open()
            {
                self.appends = None;
            }
        }
        if self.appends.is_none() && !http_only {
            if let Some(stream) = self.client.take_append_stream(&self.addr) {
                self.appends = Some(Mutex::new(stream));
            }
        }
        if self.appends.is_none() && !http_only {
            match self.client.open_stream(&self.addr, timeout).await {
                Ok(io) => self.appends = Some(Mutex::new(ExclusiveStream::new(io))),
                Err(OpenError::Unsupported(status)) => {
                    tracing::info!(addr = %self.addr, %status, "peer serves no streams; sending it HTTP appends");
                    self.http_until = Some(Instant::now() + HTTP_ONLY_FOR);
                }
                Err(OpenError::Failed(e)) => return Err(e),
            }
        }
        let Some(stream) = self
            .appends
            .as_mut()
            .map(|s| s.get_mut().unwrap_or_else(|p| p.into_inner()))
        else {
            let remaining = deadline.saturating_duration_since(Instant::now());
            return self
                .client
                .post_bytes(&self.addr, paths::APPEND, body, remaining)
                .await;
        };
        let answer =
            tokio::time::timeout_at(deadline.into(), stream.round_trip(Kind::Append, &body)).await;
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.appends = None;
                Err(no_answer(&self.addr, &e))
            }
            Err(_) => {
                self.appends = None;
                Err(no_answer(&self.addr, &StreamError::TimedOut))
            }
        }
    }
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        if let Some(stream) = self.appends.take() {
            let stream = stream.into_inner().unwrap_or_else(|p| p.into_inner());
            self.client.leave_append_stream(&self.addr, stream);
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
        let body = encode(&rpc).map_err(|e| {
            RPCError::Unreachable(Unreachable::new(&TransportError::Unreachable {
                addr: self.addr.clone(),
                message: e.to_string(),
            }))
        })?;
        let answer = match self.append_bytes(body, option.hard_ttl()).await {
            Ok(bytes) => decode_answer(&self.addr, &bytes),
            Err(e) => Err(e),
        };
        let answer = self.raft_answer(answer);
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
    use crate::network::server::{upgrade_to_stream, Refusal};
    use crate::serve::{serve, ServeConfig};
    use axum::body::Bytes;

    /// Serves `router` on a free loopback port until the test ends.
    async fn served(router: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("bound").to_string();
        let server = tokio::spawn(serve(
            listener,
            router,
            ServeConfig::new("test"),
            std::future::pending(),
        ));
        (addr, server)
    }

    fn client_url_answer(url: &str) -> Vec<u8> {
        let answer: Result<PeerResponse, PeerError> = Ok(PeerResponse::ClientUrl(url.into()));
        encode(&answer).expect("encodable")
    }

    /// A member that answers every call with its client URL.
    #[derive(Clone)]
    struct Urls;

    impl crate::network::stream::Handler for Urls {
        async fn append(&self, _body: Bytes) -> Result<Vec<u8>, Refusal> {
            Ok(Vec::new())
        }

        async fn call(&self, _body: Bytes) -> Result<Vec<u8>, Refusal> {
            Ok(client_url_answer("http://streamed"))
        }
    }

    #[tokio::test]
    async fn calls_go_over_a_stream_behind_the_token() {
        let token = Token::new("a-token-long-enough-for-the-rules-0123456789").expect("a token");
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let router = axum::Router::new()
            .route(
                paths::STREAM,
                axum::routing::get(move |req: axum::extract::Request| {
                    let stopped = stopped.clone();
                    async move { upgrade_to_stream(Urls, stopped, req) }
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                crate::auth::Guard {
                    token: Some(token.clone()),
                    open_paths: &[],
                },
                crate::auth::require_token,
            ));
        let (addr, _server) = served(router).await;
        let timeout = Duration::from_secs(5);

        let client = PeerClient::new(HashMap::new(), Some(token), None).expect("a client");
        for _ in 0..3 {
            let answer = client.call(&addr, &PeerRequest::ClientUrl, timeout).await;
            assert!(
                matches!(&answer, Ok(Ok(PeerResponse::ClientUrl(u))) if u == "http://streamed"),
                "{answer:?}"
            );
        }
        let opened = client.calls.lock().expect("slots").len();
        assert_eq!(opened, 1, "one stream per peer");

        // Without the token no stream opens, and nothing was delivered.
        let stranger = PeerClient::new(HashMap::new(), None, None).expect("a client");
        let refused = stranger.call(&addr, &PeerRequest::ClientUrl, timeout).await;
        assert!(
            matches!(&refused, Err(TransportError::Unreachable { message, .. }) if message.contains("401")),
            "{refused:?}"
        );
    }

    fn idle_streams(client: &PeerClient, addr: &str) -> usize {
        let idle = client.idle_appends.lock().expect("idle streams");
        idle.get(addr).map_or(0, Vec::len)
    }

    #[tokio::test]
    async fn a_dropped_connection_leaves_its_append_stream_to_the_next_one() {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let router = axum::Router::new().route(
            paths::STREAM,
            axum::routing::get(move |req: axum::extract::Request| {
                let stopped = stopped.clone();
                async move { upgrade_to_stream(Urls, stopped, req) }
            }),
        );
        let (addr, _server) = served(router).await;
        let client = PeerClient::new(HashMap::new(), None, None).expect("a client");
        let mut factory = PeerNetworkFactory::new(client.clone(), Metrics::new());
        let node = MemberNode { addr: addr.clone() };
        let timeout = Duration::from_secs(5);

        let mut first = factory.new_client(2, &node).await;
        first
            .append_bytes(b"x".to_vec(), timeout)
            .await
            .expect("an answer");
        assert_eq!(idle_streams(&client, &addr), 0, "in use");
        drop(first);
        assert_eq!(
            idle_streams(&client, &addr),
            1,
            "left for the next connection"
        );

        let mut second = factory.new_client(2, &node).await;
        second
            .append_bytes(b"y".to_vec(), timeout)
            .await
            .expect("an answer");
        assert_eq!(
            idle_streams(&client, &addr),
            0,
            "taken over, not opened anew"
        );
        drop(second);

        // The peer closes its streams (it stops): a closed stream is not handed on, and the
        // next connection opens a new one.
        stop.send(true).expect("the switch");
        let mut third = factory.new_client(2, &node).await;
        let closed = tokio::time::timeout(timeout, async {
            // Handed on while open; once the peer's close arrives, discarded instead.
            while let Some(stream) = client.take_append_stream(&addr) {
                client.leave_append_stream(&addr, stream);
                tokio::task::yield_now().await;
            }
        });
        closed.await.expect("the closed stream was still handed on");
        assert_eq!(idle_streams(&client, &addr), 0);
        let _ = third.append_bytes(b"z".to_vec(), timeout).await;
    }

    #[tokio::test]
    async fn a_peer_that_serves_no_streams_gets_calls_as_http_requests() {
        // A member of an older version: no stream route, only `POST /peer/call`.
        let router = axum::Router::new().route(
            paths::CALL,
            axum::routing::post(|body: Bytes| async move {
                match decode::<PeerRequest>(&body) {
                    Ok(PeerRequest::ClientUrl) => client_url_answer("http://old"),
                    _ => Vec::new(),
                }
            }),
        );
        let (addr, _server) = served(router).await;
        let client = PeerClient::new(HashMap::new(), None, None).expect("a client");
        let timeout = Duration::from_secs(5);
        for _ in 0..2 {
            let answer = client.call(&addr, &PeerRequest::ClientUrl, timeout).await;
            assert!(
                matches!(&answer, Ok(Ok(PeerResponse::ClientUrl(u))) if u == "http://old"),
                "{answer:?}"
            );
        }
    }

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
