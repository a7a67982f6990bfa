//! Owns listening, for every HTTP server in Miniku (the store's client and peer APIs, the
//! API server): the TCP accept loop, the optional TLS handshake (with a deadline), the
//! limit on concurrent connections, and graceful shutdown. What is served is an
//! [`axum::Router`]; routes, authentication and request limits are not its business.
//!
//! Connections over the limit are not left hanging: a small, separately bounded pool
//! answers each with one `429` (`{"error":"resource_exhausted",...}`) and closes it. TLS
//! handshakes in progress hold a connection slot, and one that does not finish within
//! [`ServeConfig::handshake_timeout`] is dropped, so stalled clients cannot keep slots.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// Default limit on concurrent connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Most requests (watch streams included) one HTTP/2 connection carries at once; HTTP/1.1
/// carries one at a time. With the connection limit, this bounds watchers per connection.
/// etcd's client libraries put every gRPC call of a client on one connection, and some
/// (the Rust `etcd-client`) open one stream per watch, so the bound is well above what one
/// client needs; the member's watcher limit bounds the total.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1000;

/// Connections over the limit that are being answered 429 at once; beyond these, excess
/// connections are closed without an answer.
const REJECTING_SLOTS: usize = 256;

/// Longest time one over-limit connection is given to receive its 429 (handshake included).
const REJECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a listener serves.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The listener's name in logs ("client API", "peer API", "API server").
    pub name: &'static str,
    /// TLS server configuration; `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Most connections served at once (TLS handshakes in progress included).
    pub max_connections: usize,
    /// Longest a TLS handshake may take before the connection is dropped.
    pub handshake_timeout: Duration,
    /// After shutdown starts, how long open connections get to finish their requests
    /// before they are closed (long-lived watch streams would otherwise hold it forever).
    pub shutdown_grace: Duration,
}

impl ServeConfig {
    /// Plain HTTP, the default limit and timeouts.
    pub fn new(name: &'static str) -> Self {
        ServeConfig {
            name,
            tls: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, asks
/// every open connection to finish (HTTP/1 closes once idle, HTTP/2 sends GOAWAY), waits
/// up to the grace period and closes what is left. Dropping (aborting) the future closes
/// every connection at once.
pub async fn serve<F>(listener: TcpListener, router: axum::Router, config: ServeConfig, shutdown: F)
where
    F: Future<Output = ()> + Send,
{
    let name = config.name;
    let acceptor = config.tls.clone().map(TlsAcceptor::from);
    let limit = config.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(limit));
    let rejecting = Arc::new(Semaphore::new(REJECTING_SLOTS));
    let rejection = rejection_body(limit);
    let (closing_tx, closing) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut last_warning: Option<Instant> = None;
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(name, e).await;
                    continue;
                }
            },
        };
        // Requests and answers are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                conns.spawn(connection(
                    stream,
                    remote,
                    acceptor.clone(),
                    router.clone(),
                    closing.clone(),
                    config.handshake_timeout,
                    slot,
                ));
            }
            Err(_) => {
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        listener = name,
                        limit,
                        "too many connections: answering new ones 429 (--max-connections)"
                    );
                }
                if let Ok(slot) = rejecting.clone().try_acquire_owned() {
                    conns.spawn(reject(stream, acceptor.clone(), rejection.clone(), slot));
                }
                // Else `stream` is dropped here: closed without an answer.
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let open = conns.len();
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            listener = name,
            open,
            still_open = conns.len(),
            "closing connections still open after the shutdown grace period"
        );
    }
    conns.shutdown().await;
}

/// One accepted connection within the limit: TLS handshake (if any), then HTTP until the
/// client closes or shutdown finishes it. Holds its slot until the end.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    router: axum::Router,
    closing: watch::Receiver<bool>,
    handshake_timeout: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let service = TowerToHyperService::new(router);
    match acceptor {
        None => http(stream, service, closing, None).await,
        Some(acceptor) => {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => http(tls, service, closing, None).await,
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
            }
        }
    }
}

/// Serves HTTP/1 or HTTP/2 (whichever the client speaks) on `io`. Finishes gracefully once
/// `closing` turns true or `done` is notified.
async fn http<I, S, B>(
    io: I,
    service: S,
    mut closing: watch::Receiver<bool>,
    done: Option<Arc<Notify>>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    if done.is_some() {
        builder.http1().keep_alive(false);
    }
    let mut conn = pin!(builder.serve_connection_with_upgrades(
        TokioIo::new(crate::h2_authority::AuthorityFix::new(io)),
        service,
    ));
    let finish = async {
        match &done {
            Some(done) => done.notified().await,
            None => {
                let _ = closing.wait_for(|c| *c).await;
            }
        }
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = finish => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

fn rejection_body(limit: usize) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "error": "resource_exhausted",
            "message": format!("too many connections (limit {limit})"),
        })
        .to_string(),
    )
}

/// A connection over the limit: one 429 answer (after the TLS handshake, if any), then
/// closed; the whole exchange is bounded by [`REJECT_TIMEOUT`].
async fn reject(
    stream: TcpStream,
    acceptor: Option<TlsAcceptor>,
    body: Bytes,
    _slot: OwnedSemaphorePermit,
) {
    let done = Arc::new(Notify::new());
    let answered = done.clone();
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        answered.notify_one();
        let resp = Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::RETRY_AFTER, "1")
            .body(Full::new(body.clone()));
        let resp = resp.unwrap_or_else(|_| Response::new(Full::new(body.clone())));
        async move { Ok::<_, Infallible>(resp) }
    });
    // Never flips: the answer itself ends this connection.
    let (_never, closing) = watch::channel(false);
    let work = async move {
        match acceptor {
            None => http(stream, service, closing, Some(done)).await,
            Some(acceptor) => {
                if let Ok(tls) = acceptor.accept(stream).await {
                    http(tls, service, closing, Some(done)).await;
                }
            }
        }
    };
    let _ = tokio::time::timeout(REJECT_TIMEOUT, work).await;
}

/// An accept error: one about a single connection is ignored; any other (out of file
/// descriptors, typically) is logged and accepting pauses briefly instead of spinning.
async fn accept_failed(name: &str, e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::error!(listener = name, error = %e, "accept failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    /// Lets a test know a request is in flight, and decide when it finishes.
    #[derive(Default)]
    struct Gate {
        started: Notify,
        release: Notify,
    }

    /// A server whose `/slow` answers once the gate is released and `/never` never does;
    /// both tell the gate when they start.
    async fn start(
        config: ServeConfig,
        gate: Arc<Gate>,
    ) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let (g1, g2) = (gate.clone(), gate);
        let router = axum::Router::new()
            .route("/fast", axum::routing::get(|| async { "fast" }))
            .route(
                "/slow",
                axum::routing::get(move || async move {
                    g1.started.notify_one();
                    g1.release.notified().await;
                    "slow"
                }),
            )
            .route(
                "/never",
                axum::routing::get(move || async move {
                    g2.started.notify_one();
                    std::future::pending::<&'static str>().await
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, config, async move {
            let _ = stopped.await;
        }));
        (addr, stop, server)
    }

    async fn send(addr: SocketAddr, path: &str) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .expect("write");
        s
    }

    /// Everything the server sends until it closes the connection.
    async fn read_all(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let read = s.read_to_end(&mut out);
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the server did not close the connection")
            .expect("read");
        String::from_utf8_lossy(&out).to_string()
    }

    #[tokio::test]
    async fn shutdown_finishes_requests_in_flight_and_closes_idle_connections() {
        let gate = Arc::new(Gate::default());
        let (addr, stop, server) = start(ServeConfig::new("test"), gate.clone()).await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let mut fast = send(addr, "/fast").await;
        let mut buf = [0u8; 256];
        let n = fast.read(&mut buf).await.expect("fast answer");
        assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
        let mut slow = send(addr, "/slow").await;
        gate.started.notified().await;

        let _ = stop.send(());
        // Idle connections are closed; the one with a request in flight is not.
        assert_eq!(read_all(&mut idle).await, "");
        assert_eq!(read_all(&mut fast).await, "");
        assert!(!server.is_finished());
        gate.release.notify_one();
        let answer = read_all(&mut slow).await;
        assert!(
            answer.contains("200 OK") && answer.ends_with("slow"),
            "{answer}"
        );
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve did not return")
            .expect("serve panicked");
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }

    #[tokio::test]
    async fn shutdown_waits_no_longer_than_the_grace_period() {
        let config = ServeConfig {
            shutdown_grace: Duration::from_millis(300),
            ..ServeConfig::new("test")
        };
        let gate = Arc::new(Gate::default());
        let (addr, stop, server) = start(config, gate.clone()).await;
        let mut never = send(addr, "/never").await;
        gate.started.notified().await;
        let started = Instant::now();
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve did not return")
            .expect("serve panicked");
        assert!(started.elapsed() >= Duration::from_millis(300));
        // The stuck connection was closed without an answer.
        assert_eq!(read_all(&mut never).await, "");
    }

    #[tokio::test]
    async fn connections_over_the_limit_get_one_429_and_are_closed() {
        let config = ServeConfig {
            max_connections: 2,
            ..ServeConfig::new("test")
        };
        let (addr, _stop, _server) = start(config, Arc::new(Gate::default())).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = send(addr, "/fast").await;
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.expect("answer");
            assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
            held.push(s);
        }
        let mut extra = send(addr, "/fast").await;
        let answer = read_all(&mut extra).await;
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        assert!(
            answer.ends_with(
                r#"{"error":"resource_exhausted","message":"too many connections (limit 2)"}"#
            ),
            "{answer}"
        );
        drop(held.pop());
        // The freed slot is taken by a new connection once the server has seen the close.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = send(addr, "/fast").await;
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.expect("answer");
            if String::from_utf8_lossy(&buf[..n]).contains("200 OK") {
                break;
            }
            assert!(Instant::now() < deadline, "the slot was never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
