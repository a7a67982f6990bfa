//! [`StoreClient`]: the Rust client of the store's HTTP API, used by the whole control plane.
//!
//! Configured with every store endpoint; a request that meets a dead node (connection
//! refused, timeout before sending) moves on to the next endpoint, and so does one that a
//! member answers with 503 (no leader: nothing was written). Writes are never retried after
//! they may have reached a node (that would risk applying them twice): such failures surface
//! as [`ClientError::OutcomeUnknown`]. Watches resume from the last revision seen, on any
//! endpoint, without gaps or duplicates. An answer without the store's
//! [`MEMBER_HEADER`] comes from some other service listening on a configured endpoint (a
//! real etcd on 2379, say): the client moves on to the next endpoint, as for a dead one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Method;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::api::*;
use crate::error::with_causes;
use crate::http::MEMBER_HEADER;
use crate::sse;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body (4xx/5xx); `body.error` is its typed code.
    #[error("{status}: {} ({})", body.message, body.error)]
    Api { status: u16, body: ErrorBody },
    /// No endpoint could be reached.
    #[error("no store endpoint reachable: {0}")]
    Unreachable(String),
    /// A write may or may not have been applied.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The watch start revision was compacted; relist and watch from the new revision.
    #[error("compacted: history before revision {compact_revision} is gone")]
    Compacted { compact_revision: i64 },
    #[error("bad response: {0}")]
    Decode(String),
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// True for a 404 / not found answer.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, .. })
    }

    /// The store's error code, for an error the store answered.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(&body.error),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct GetOptions {
    /// Read every key with this prefix (the key given is the prefix).
    pub prefix: bool,
    /// Half-open range end (overrides `prefix`).
    pub range_end: Option<Vec<u8>>,
    pub limit: i64,
    pub revision: i64,
    pub keys_only: bool,
    pub count_only: bool,
    /// Local, possibly stale read from whichever node answers.
    pub serializable: bool,
}

#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    pub lease: i64,
    pub prev_kv: bool,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub prefix: bool,
    pub range_end: Option<Vec<u8>>,
    pub prev_kv: bool,
}

#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    pub prefix: bool,
    pub range_end: Option<Vec<u8>>,
    /// Inclusive; 0 = from now.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub progress_notify: bool,
}

/// Items of a watch stream: messages with events or progress notifications. The stream ends
/// with `Err(ClientError::Compacted)` when it cannot resume, and otherwise never ends by
/// itself: it reconnects (to any endpoint) from the last revision it delivered.
pub type WatchStream = BoxStream<'static, Result<WatchMessage, ClientError>>;

/// Everything but unreserved characters is percent-encoded in keys.
const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A watch connection that has sent nothing for this long is considered dead (the server
/// sends keep-alives every 15 s).
const WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(40);

fn encode_bytes(b: &[u8]) -> String {
    // Keys are bytes: encode each byte, valid UTF-8 or not.
    let mut out = String::with_capacity(b.len());
    for &byte in b {
        let c = [byte];
        match std::str::from_utf8(&c) {
            Ok(s) if byte.is_ascii() => out.extend(utf8_percent_encode(s, KEY_SET)),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The pooled HTTP client, trusting `ca` only when given, else the system's roots if an
/// endpoint is `https://`.
fn http_client(
    endpoints: &[String],
    ca: Option<&std::path::Path>,
) -> Result<reqwest::Client, ClientError> {
    use crate::tls::Trust;
    let trust = match ca {
        Some(ca) => Trust::Ca(ca),
        None if endpoints.iter().any(|e| e.starts_with("https://")) => Trust::System,
        None => Trust::PlainHttp,
    };
    crate::tls::reqwest_builder(trust, None)
        .map_err(|e| ClientError::Config(e.to_string()))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| ClientError::Config(e.to_string()))
}

struct Inner {
    endpoints: Vec<String>,
    preferred: AtomicUsize,
    http: reqwest::Client,
    timeout: Duration,
    /// `Authorization` header for a store started with a token.
    auth: Option<reqwest::header::HeaderValue>,
}

#[derive(Clone)]
pub struct StoreClient {
    inner: Arc<Inner>,
}

/// The range end a request sends: an explicit one, the prefix's end, or none (one key).
pub(crate) fn range_end_for(
    key: &[u8],
    prefix: bool,
    explicit: &Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    explicit
        .clone()
        .or_else(|| prefix.then(|| crate::types::prefix_end(key)))
}

/// Query string builder.
#[derive(Default)]
struct Query(Vec<String>);

impl Query {
    fn flag(mut self, name: &str, on: bool) -> Self {
        if on {
            self.0.push(format!("{name}=true"));
        }
        self
    }
    fn num(mut self, name: &str, v: i64) -> Self {
        if v != 0 {
            self.0.push(format!("{name}={v}"));
        }
        self
    }
    fn bytes(mut self, name: &str, v: Option<&[u8]>) -> Self {
        if let Some(v) = v {
            self.0.push(format!("{name}={}", encode_bytes(v)));
        }
        self
    }
    fn finish(self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            format!("?{}", self.0.join("&"))
        }
    }
}

enum Safety {
    /// May be sent again to another endpoint after any failure.
    Retry,
    /// Only retried when it certainly did not reach a server.
    Once,
}

impl StoreClient {
    /// `endpoints` are `host:port`, `http://host:port` or `https://host:port` of store
    /// client APIs (a bare `host:port` means plain HTTP).
    pub fn new(endpoints: Vec<String>) -> Result<Self, ClientError> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.starts_with("http://") || e.starts_with("https://") {
                    e
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::Config("no store endpoint given".into()));
        }
        let http = http_client(&endpoints, None)?;
        Ok(StoreClient {
            inner: Arc::new(Inner {
                endpoints,
                preferred: AtomicUsize::new(0),
                http,
                timeout: Duration::from_secs(5),
                auth: None,
            }),
        })
    }

    fn rebuilt(
        &self,
        http: reqwest::Client,
        timeout: Duration,
        auth: Option<reqwest::header::HeaderValue>,
    ) -> Self {
        StoreClient {
            inner: Arc::new(Inner {
                endpoints: self.inner.endpoints.clone(),
                preferred: AtomicUsize::new(self.inner.preferred.load(Ordering::Relaxed)),
                http,
                timeout,
                auth,
            }),
        }
    }

    /// Per-request timeout (default 5 s; watches are exempt).
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.rebuilt(self.inner.http.clone(), timeout, self.inner.auth.clone())
    }

    /// Trusts only the CA certificates in the PEM file `ca` for `https://` endpoints (for a
    /// store whose certificate a private CA signed). Without it, the system's roots are
    /// trusted.
    pub fn with_ca_file(self, ca: Option<&std::path::Path>) -> Result<Self, ClientError> {
        let http = http_client(&self.inner.endpoints, ca)?;
        Ok(self.rebuilt(http, self.inner.timeout, self.inner.auth.clone()))
    }

    /// Sends `token` as `Authorization: Bearer` on every request (for a store started with
    /// `--token-file`).
    pub fn with_token(self, token: Option<crate::auth::Token>) -> Result<Self, ClientError> {
        let auth = token
            .map(|t| t.header_value())
            .transpose()
            .map_err(ClientError::Config)?;
        Ok(self.rebuilt(self.inner.http.clone(), self.inner.timeout, auth))
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
        safety: Safety,
    ) -> Result<T, ClientError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.timeout;
        let n = inner.endpoints.len();
        let start = inner.preferred.load(Ordering::Relaxed);
        let mut attempt = 0usize;
        let mut last = String::from("no attempt made");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ClientError::Unreachable(last));
            }
            let i = (start + attempt) % n;
            attempt += 1;
            if attempt > 1 && (attempt - 1).is_multiple_of(n) {
                // Every endpoint failed once: give the cluster a moment (an election).
                let pause = Duration::from_millis(100).min(remaining);
                tokio::time::sleep(pause).await;
            }
            let url = format!("{}{path}", inner.endpoints[i]);
            let mut req = inner.http.request(method.clone(), &url).timeout(remaining);
            if let Some(a) = &inner.auth {
                req = req.header(reqwest::header::AUTHORIZATION, a.clone());
            }
            if let Some((b, content_type)) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, *content_type)
                    .body(b.clone());
            }
            match req.send().await {
                Ok(resp) if !resp.headers().contains_key(MEMBER_HEADER) => {
                    // Another service on this endpoint: nothing reached the store.
                    last = format!(
                        "{url}: answered {} without the {MEMBER_HEADER} header: not a Miniku store member",
                        resp.status().as_u16()
                    );
                    continue;
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let bytes = match resp.bytes().await {
                        Ok(b) => b,
                        Err(e) => {
                            last = format!("{url}: reading the answer: {}", with_causes(&e));
                            match safety {
                                Safety::Retry => continue,
                                Safety::Once => return Err(ClientError::OutcomeUnknown(last)),
                            }
                        }
                    };
                    if status == 503 {
                        // No leader / no quorum: nothing was written; try elsewhere.
                        last = format!("{url}: 503 {}", String::from_utf8_lossy(&bytes));
                        continue;
                    }
                    inner.preferred.store(i, Ordering::Relaxed);
                    if (200..300).contains(&status) {
                        return serde_json::from_slice(&bytes)
                            .map_err(|e| ClientError::Decode(format!("{url}: {e}")));
                    }
                    let body: ErrorBody =
                        serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
                            error: ErrorCode::Other("unknown".into()),
                            message: String::from_utf8_lossy(&bytes).into_owned(),
                            compact_revision: None,
                            leader_id: None,
                        });
                    if status == 504 {
                        return Err(ClientError::OutcomeUnknown(body.message));
                    }
                    return Err(ClientError::Api { status, body });
                }
                Err(e) => {
                    last = format!("{url}: {}", with_causes(&e));
                    if e.is_connect() {
                        continue;
                    }
                    match safety {
                        Safety::Retry => continue,
                        Safety::Once => return Err(ClientError::OutcomeUnknown(last)),
                    }
                }
            }
        }
    }

    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        opts: PutOptions,
    ) -> Result<PutResponse, ClientError> {
        let q = Query::default()
            .num("lease", opts.lease)
            .flag("prev_kv", opts.prev_kv)
            .finish();
        let path = format!("/v1/kv/{}{q}", encode_bytes(key));
        let body = Some((Bytes::copy_from_slice(value), "application/octet-stream"));
        self.call(Method::PUT, &path, body, Safety::Once).await
    }

    pub async fn get(&self, key: &[u8], opts: GetOptions) -> Result<RangeResponse, ClientError> {
        let range_end = range_end_for(key, opts.prefix, &opts.range_end);
        let q = Query::default()
            .bytes("range_end", range_end.as_deref())
            .num("limit", opts.limit)
            .num("revision", opts.revision)
            .flag("keys_only", opts.keys_only)
            .flag("count_only", opts.count_only)
            .flag("serializable", opts.serializable)
            .finish();
        self.call(
            Method::GET,
            &format!("/v1/kv/{}{q}", encode_bytes(key)),
            None,
            Safety::Retry,
        )
        .await
    }

    pub async fn delete(
        &self,
        key: &[u8],
        opts: DeleteOptions,
    ) -> Result<DeleteResponse, ClientError> {
        let range_end = range_end_for(key, opts.prefix, &opts.range_end);
        let q = Query::default()
            .bytes("range_end", range_end.as_deref())
            .flag("prev_kv", opts.prev_kv)
            .finish();
        self.call(
            Method::DELETE,
            &format!("/v1/kv/{}{q}", encode_bytes(key)),
            None,
            Safety::Once,
        )
        .await
    }

    fn json(v: &impl serde::Serialize) -> Result<(Bytes, &'static str), ClientError> {
        serde_json::to_vec(v)
            .map(|b| (Bytes::from(b), "application/json"))
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn txn(&self, txn: &TxnRequest) -> Result<TxnResponse, ClientError> {
        self.call(
            Method::POST,
            "/v1/txn",
            Some(Self::json(txn)?),
            Safety::Once,
        )
        .await
    }

    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseGrantResponse, ClientError> {
        let req = LeaseGrantRequest {
            ttl: ttl_secs,
            id: 0,
        };
        self.call(
            Method::POST,
            "/v1/lease",
            Some(Self::json(&req)?),
            Safety::Once,
        )
        .await
    }

    pub async fn lease_keepalive(&self, id: i64) -> Result<LeaseKeepAliveResponse, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/lease/{id}/keepalive"),
            None,
            Safety::Retry,
        )
        .await
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/lease/{id}"),
            None,
            Safety::Once,
        )
        .await
    }

    pub async fn lease_time_to_live(
        &self,
        id: i64,
    ) -> Result<LeaseTimeToLiveResponse, ClientError> {
        self.call(Method::GET, &format!("/v1/lease/{id}"), None, Safety::Retry)
            .await
    }

    pub async fn compact(&self, revision: i64) -> Result<CompactResponse, ClientError> {
        let req = CompactRequest { revision };
        self.call(
            Method::POST,
            "/v1/compact",
            Some(Self::json(&req)?),
            Safety::Once,
        )
        .await
    }

    pub async fn cluster(&self) -> Result<ClusterResponse, ClientError> {
        self.call(Method::GET, "/v1/cluster", None, Safety::Retry)
            .await
    }

    /// Opens a resumable watch (see [`WatchStream`]).
    pub fn watch(&self, key: &[u8], opts: WatchOptions) -> WatchStream {
        let state = WatchState {
            client: self.clone(),
            key: key.to_vec(),
            range_end: range_end_for(key, opts.prefix, &opts.range_end),
            prev_kv: opts.prev_kv,
            progress_notify: opts.progress_notify,
            next_revision: opts.start_revision,
            endpoint: self.inner.preferred.load(Ordering::Relaxed),
            conn: None,
            frames: sse::Decoder::new(),
            backoff: Duration::from_millis(50),
            done: false,
        };
        futures::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            let item = st.next_message().await;
            if matches!(
                item,
                Err(ClientError::Compacted { .. }) | Err(ClientError::Api { .. })
            ) {
                st.done = true;
            }
            Some((item, st))
        })
        .boxed()
    }
}

struct WatchState {
    client: StoreClient,
    key: Vec<u8>,
    range_end: Option<Vec<u8>>,
    prev_kv: bool,
    progress_notify: bool,
    /// The next revision to deliver (0 until known).
    next_revision: i64,
    endpoint: usize,
    conn: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    frames: sse::Decoder,
    backoff: Duration,
    done: bool,
}

impl WatchState {
    fn url(&self) -> String {
        let q = Query::default()
            .bytes("range_end", self.range_end.as_deref())
            .num("start_revision", self.next_revision)
            .flag("prev_kv", self.prev_kv)
            .flag("progress_notify", self.progress_notify)
            .finish();
        let n = self.client.inner.endpoints.len();
        format!(
            "{}/v1/watch/{}{q}",
            self.client.inner.endpoints[self.endpoint % n],
            encode_bytes(&self.key)
        )
    }

    /// Drops the connection and waits before the next endpoint.
    async fn reconnect_later(&mut self, why: &str) {
        tracing::debug!(
            reason = why,
            next_revision = self.next_revision,
            "watch reconnecting"
        );
        self.conn = None;
        self.frames = sse::Decoder::new();
        self.endpoint += 1;
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
    }

    async fn connect(&mut self) -> Result<(), ClientError> {
        if self.next_revision == 0 {
            // "From now" must mean the same thing after a reconnect: pin it.
            let r = self
                .client
                .get(
                    &self.key,
                    GetOptions {
                        count_only: true,
                        ..Default::default()
                    },
                )
                .await?;
            self.next_revision = r.header.revision + 1;
        }
        let url = self.url();
        let mut req = self.client.inner.http.get(&url);
        if let Some(a) = &self.client.inner.auth {
            req = req.header(reqwest::header::AUTHORIZATION, a.clone());
        }
        let resp = req.send().await;
        match resp {
            Ok(resp) if !resp.headers().contains_key(MEMBER_HEADER) => {
                let why = format!("{url}: answered {} without the {MEMBER_HEADER} header: not a Miniku store member", resp.status().as_u16());
                self.reconnect_later(&why).await;
                Ok(())
            }
            Ok(resp) if resp.status().is_success() => {
                self.conn = Some(resp.bytes_stream().boxed());
                Ok(())
            }
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body: Option<ErrorBody> = resp.json().await.ok();
                match (status, body) {
                    (410, Some(b)) => Err(ClientError::Compacted {
                        compact_revision: b.compact_revision.unwrap_or(0),
                    }),
                    (400..=499, Some(b)) if status != 429 => {
                        Err(ClientError::Api { status, body: b })
                    }
                    _ => {
                        self.reconnect_later(&format!("{url}: {status}")).await;
                        Ok(())
                    }
                }
            }
            Err(e) => {
                self.reconnect_later(&format!("{url}: {e}")).await;
                Ok(())
            }
        }
    }

    async fn next_message(&mut self) -> Result<WatchMessage, ClientError> {
        loop {
            // A whole SSE message in the buffer?
            while let Some(frame) = self.frames.next_frame() {
                let msg = parse_message(&frame)?;
                if msg.canceled {
                    if let Some(r) = msg.compact_revision {
                        return Err(ClientError::Compacted {
                            compact_revision: r,
                        });
                    }
                    self.reconnect_later("canceled by the server").await;
                    break;
                }
                let rev = msg.header.revision;
                if !msg.events.is_empty() {
                    if rev < self.next_revision {
                        continue; // already delivered before a reconnect
                    }
                    self.next_revision = rev + 1;
                } else {
                    self.next_revision = self.next_revision.max(rev + 1);
                }
                self.backoff = Duration::from_millis(50);
                return Ok(msg);
            }
            if self.conn.is_none() {
                self.connect().await?;
                continue;
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            match tokio::time::timeout(WATCH_IDLE_TIMEOUT, conn.next()).await {
                Ok(Some(Ok(chunk))) => self.frames.push(&chunk),
                Ok(Some(Err(e))) => self.reconnect_later(&e.to_string()).await,
                Ok(None) => self.reconnect_later("stream ended").await,
                Err(_) => self.reconnect_later("no data for too long").await,
            }
        }
    }
}

/// The watch message an SSE frame carries.
fn parse_message(frame: &sse::Frame) -> Result<WatchMessage, ClientError> {
    serde_json::from_str(&frame.data)
        .map_err(|e| ClientError::Decode(format!("watch message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_byte_by_byte() {
        assert_eq!(
            encode_bytes(b"/registry/pods/a-1"),
            "%2Fregistry%2Fpods%2Fa-1"
        );
        assert_eq!(encode_bytes(&[0xff, 0x00, b'a']), "%FF%00a");
    }

    #[test]
    fn sse_frames_parse_and_comments_are_skipped() {
        let mut d = sse::Decoder::new();
        d.push(b":\n\nid: 7\ndata: {\"header\":{\"revision\":7,\"raft_term\":1,\"member_id\":1},\"events\":[]}\n\ndata: {oops\n\n");
        let msg = d
            .next_frame()
            .map(|f| parse_message(&f).map(|m| m.header.revision));
        assert!(matches!(msg, Some(Ok(7))));
        assert!(d.next_frame().is_some_and(|f| parse_message(&f).is_err()));
    }
}
