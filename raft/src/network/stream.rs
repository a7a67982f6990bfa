//! Peer streams: one long-lived connection per purpose between two members, carrying
//! length-prefixed frames instead of one HTTP request per message. A leader's replication
//! to each follower uses its own stream for AppendEntries ([`ExclusiveStream`]: one request
//! at a time, answered in order); a member's calls to the leader (forwarded writes, read
//! index, lease requests) share one stream per leader ([`SharedStream`]: many in flight,
//! answers matched to callers by id).
//!
//! A stream starts as `GET /peer/stream` with `Upgrade: miniku-peer/1` on the peer port, so
//! the cluster token and (mutual) TLS guard it exactly as they guard the HTTP routes. Then
//! every frame is `[u32 BE length][u64 BE id][u8 tag][bincode body]`: in a request the tag
//! is the [`Kind`], in an answer the [`Status`]. The bodies are what the HTTP routes carry.
//!
//! This module owns the framing, the serving loop and the two client-side stream types. It
//! does not know what a request means: [`Handler`] answers on the serving side, and the
//! peer client decides when to open, reuse or give up a stream.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::stream::{SplitSink, StreamExt};
use futures::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::server::{Refusal, MAX_PEER_BODY};

/// The `Upgrade` protocol name that opens a peer stream.
pub const PROTOCOL: &str = "miniku-peer/1";

/// A serving side closes a stream that carried nothing for this long: its client is gone
/// (or a dead network holds it open). Clients reopen well before ([`REUSE_IDLE`]).
const SERVE_IDLE: Duration = Duration::from_secs(300);

/// A shared stream idle this long is not reused: a new one is opened, so a request never
/// races the serving side's idle close.
const REUSE_IDLE: Duration = Duration::from_secs(60);

/// Bytes before a frame's body: the id and the tag.
const HEADER: usize = 9;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// An AppendEntries (heartbeats included).
    Append = 1,
    /// A [`super::PeerRequest`].
    Call = 2,
}

/// How an answer's body is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Status {
    /// The encoded answer, as the HTTP route's 200 body.
    Answered = 0,
    /// The request was not handled; the body says why (the HTTP route's 4xx or 5xx).
    Refused = 1,
}

/// Why a stream request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("peer stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the stream")]
    Closed,
    #[error("malformed peer stream frame ({0} bytes)")]
    Malformed(usize),
    #[error("the peer refused the request: {0}")]
    Refused(String),
    #[error("no answer on the peer stream in time")]
    TimedOut,
}

/// How a [`SharedStream`] request failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The stream was closed before the request was written: nothing was delivered.
    #[error("{0}")]
    NotSent(StreamError),
    /// Written (at least in part), but no answer came: it may have been handled.
    #[error("{0}")]
    Lost(StreamError),
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_PEER_BODY + HEADER)
        .new_codec()
}

fn frame(id: u64, tag: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + body.len());
    out.put_u64(id);
    out.put_u8(tag);
    out.put_slice(body);
    out.freeze()
}

fn parse(mut frame: BytesMut) -> Result<(u64, u8, Bytes), StreamError> {
    if frame.len() < HEADER {
        return Err(StreamError::Malformed(frame.len()));
    }
    let id = frame.get_u64();
    let tag = frame.get_u8();
    Ok((id, tag, frame.freeze()))
}

fn answer_frame(id: u64, answer: Result<Vec<u8>, Refusal>) -> Bytes {
    match answer {
        Ok(body) => frame(id, Status::Answered as u8, &body),
        Err(why) => frame(id, Status::Refused as u8, why.to_string().as_bytes()),
    }
}

fn answer_body(tag: u8, body: Bytes) -> Result<Bytes, StreamError> {
    if tag == Status::Answered as u8 {
        Ok(body)
    } else {
        Err(StreamError::Refused(
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }
}

/// What answers the requests arriving on a stream (the member's peer routes).
pub trait Handler: Clone + Send + Sync + 'static {
    fn append(&self, body: Bytes) -> impl Future<Output = Result<Vec<u8>, Refusal>> + Send;
    fn call(&self, body: Bytes) -> impl Future<Output = Result<Vec<u8>, Refusal>> + Send;
}

/// Serves one stream until the client closes it, it breaks, it idles for [`SERVE_IDLE`], or
/// `stopped` turns true. Appends are answered one after another, in order; calls run
/// concurrently and are answered as they finish.
pub async fn serve<I, H>(io: I, handler: H, mut stopped: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Handler,
{
    let mut framed = Framed::new(io, codec());
    let (answers_tx, mut answers) = mpsc::channel::<Bytes>(1024);
    let mut calls = JoinSet::new();
    let stop = async move {
        if stopped.wait_for(|s| *s).await.is_err() {
            // Nobody can stop this member any more: serve until the stream ends.
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(answer) = answers.recv() => {
                if framed.feed(answer).await.is_err() {
                    break;
                }
                // Everything else already answered goes out with it, in one write.
                while let Ok(more) = answers.try_recv() {
                    if framed.feed(more).await.is_err() {
                        break;
                    }
                }
                if SinkExt::<Bytes>::flush(&mut framed).await.is_err() {
                    break;
                }
            }
            Some(_) = calls.join_next(), if !calls.is_empty() => {}
            next = tokio::time::timeout(SERVE_IDLE, framed.next()) => {
                let request = match next {
                    Ok(Some(Ok(frame))) => frame,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(error = %e, "peer stream broke");
                        break;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        tracing::debug!("closing an idle peer stream");
                        break;
                    }
                };
                let (id, tag, body) = match parse(request) {
                    Ok(parts) => parts,
                    Err(e) => {
                        tracing::debug!(error = %e, "closing a peer stream");
                        break;
                    }
                };
                if tag == Kind::Append as u8 {
                    let answer = handler.append(body).await;
                    if framed.send(answer_frame(id, answer)).await.is_err() {
                        break;
                    }
                } else if tag == Kind::Call as u8 {
                    let (handler, answers_tx) = (handler.clone(), answers_tx.clone());
                    calls.spawn(async move {
                        let answer = handler.call(body).await;
                        let _ = answers_tx.send(answer_frame(id, answer)).await;
                    });
                } else {
                    let why = format!("unknown peer stream request kind {tag}");
                    let answer = frame(id, Status::Refused as u8, why.as_bytes());
                    if framed.send(answer).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    calls.shutdown().await;
}

/// A stream one caller uses at a time: a request, then its answer. After any error (or a
/// deadline the caller put around [`ExclusiveStream::round_trip`]) it must be dropped.
pub struct ExclusiveStream<I> {
    framed: Framed<I, LengthDelimitedCodec>,
    next_id: u64,
}

impl<I: AsyncRead + AsyncWrite + Unpin> ExclusiveStream<I> {
    pub fn new(io: I) -> Self {
        ExclusiveStream {
            framed: Framed::new(io, codec()),
            next_id: 0,
        }
    }

    /// Whether the stream can still carry a request: the peer has not closed it and sent
    /// nothing unasked. Never waits.
    pub fn is_open(&mut self) -> bool {
        use futures::FutureExt;
        self.framed.next().now_or_never().is_none()
    }

    pub async fn round_trip(&mut self, kind: Kind, body: &[u8]) -> Result<Bytes, StreamError> {
        self.next_id += 1;
        let id = self.next_id;
        self.framed.send(frame(id, kind as u8, body)).await?;
        loop {
            let (answered, tag, body) = match self.framed.next().await {
                Some(frame) => parse(frame?)?,
                None => return Err(StreamError::Closed),
            };
            // An earlier id is the late answer to a request given up on: skip it.
            if answered == id {
                return answer_body(tag, body);
            }
        }
    }
}

type Waiter = oneshot::Sender<Result<Bytes, StreamError>>;

/// The answers a shared stream waits for.
struct Waiting {
    /// Set once the reading side ended: nobody may wait any more.
    closed: bool,
    waiters: HashMap<u64, Waiter>,
    /// When the last frame arrived (or the stream opened).
    last_frame: Instant,
}

/// A stream many callers share: each request gets an id, and a reading task hands every
/// answer to the caller with that id. When the stream breaks every caller still waiting
/// learns it at once. Dropping the stream stops its reading task.
pub struct SharedStream<I> {
    writer: tokio::sync::Mutex<SplitSink<Framed<I, LengthDelimitedCodec>, Bytes>>,
    waiting: Arc<Mutex<Waiting>>,
    next_id: AtomicU64,
    last_used: Mutex<Instant>,
    reader: tokio::task::JoinHandle<()>,
}

impl<I> Drop for SharedStream<I> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl<I: AsyncRead + AsyncWrite + Send + 'static> SharedStream<I> {
    pub fn new(io: I) -> Self {
        let (writer, mut reader) = Framed::new(io, codec()).split();
        let waiting = Arc::new(Mutex::new(Waiting {
            closed: false,
            waiters: HashMap::new(),
            last_frame: Instant::now(),
        }));
        let answers = waiting.clone();
        let reader = tokio::spawn(async move {
            let why = loop {
                let (id, tag, body) = match reader.next().await {
                    Some(Ok(frame)) => match parse(frame) {
                        Ok(parts) => parts,
                        Err(e) => break e,
                    },
                    Some(Err(e)) => break StreamError::Io(e),
                    None => break StreamError::Closed,
                };
                let waiter = {
                    let mut w = lock(&answers);
                    w.last_frame = Instant::now();
                    w.waiters.remove(&id)
                };
                if let Some(waiter) = waiter {
                    let _ = waiter.send(answer_body(tag, body));
                }
            };
            tracing::debug!(error = %why, "a shared peer stream ended");
            let mut w = lock(&answers);
            w.closed = true;
            // Dropping the senders tells every waiting caller.
            w.waiters.clear();
        });
        SharedStream {
            writer: tokio::sync::Mutex::new(writer),
            waiting,
            next_id: AtomicU64::new(0),
            last_used: Mutex::new(Instant::now()),
            reader,
        }
    }

    /// Whether a new request should go here: the stream is open and was used lately.
    pub fn is_usable(&self) -> bool {
        !lock(&self.waiting).closed && lock(&self.last_used).elapsed() < REUSE_IDLE
    }

    fn close(&self) {
        let mut w = lock(&self.waiting);
        w.closed = true;
        w.waiters.clear();
        self.reader.abort();
    }

    /// Sends a request and waits for its answer until `deadline`. A request that times out
    /// while nothing at all arrived since it was sent closes the stream: it is stalled (a
    /// dead network that still holds the connection), and the next request opens another.
    pub async fn request(
        &self,
        kind: Kind,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Bytes, SharedError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, answer) = oneshot::channel();
        {
            let mut w = lock(&self.waiting);
            if w.closed {
                return Err(SharedError::NotSent(StreamError::Closed));
            }
            w.waiters.insert(id, tx);
        }
        *lock(&self.last_used) = Instant::now();
        let sent_at = Instant::now();
        let send = async {
            let mut writer = self.writer.lock().await;
            writer.send(frame(id, kind as u8, body)).await
        };
        match tokio::time::timeout_at(deadline, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.close();
                return Err(SharedError::Lost(StreamError::Io(e)));
            }
            Err(_) => {
                self.close();
                return Err(SharedError::Lost(StreamError::TimedOut));
            }
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answer)) => answer.map_err(SharedError::Lost),
            Ok(Err(_)) => Err(SharedError::Lost(StreamError::Closed)),
            Err(_) => {
                let stalled = {
                    let mut w = lock(&self.waiting);
                    w.waiters.remove(&id);
                    w.last_frame < sent_at
                };
                if stalled {
                    self.close();
                }
                Err(SharedError::Lost(StreamError::TimedOut))
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::CodecError;

    /// Answers an append with its body; a call whose body is `[n]` after `n` × 10 ms with
    /// `[n]`, `[255]` never (telling `started` it began), and `[254]` with a refusal.
    #[derive(Clone, Default)]
    struct Echo {
        started: Arc<tokio::sync::Notify>,
    }

    impl Handler for Echo {
        async fn append(&self, body: Bytes) -> Result<Vec<u8>, Refusal> {
            Ok(body.to_vec())
        }

        async fn call(&self, body: Bytes) -> Result<Vec<u8>, Refusal> {
            match body.first().copied() {
                Some(255) => {
                    self.started.notify_one();
                    std::future::pending().await
                }
                Some(254) => Err(Refusal::Undecodable(CodecError::Decode("nonsense".into()))),
                Some(n) => {
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(n))).await;
                    Ok(vec![n])
                }
                None => Ok(Vec::new()),
            }
        }
    }

    /// A served stream's client end, its serving task and the switch that stops it.
    fn served() -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<()>,
        watch::Sender<bool>,
    ) {
        let (io, server, stop, _) = served_by(Echo::default());
        (io, server, stop)
    }

    fn served_by(
        echo: Echo,
    ) -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<()>,
        watch::Sender<bool>,
        Echo,
    ) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(server, echo.clone(), stopped));
        (client, server, stop, echo)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[tokio::test]
    async fn answers_come_back_to_their_callers_whatever_their_order() {
        let (io, _server, _stop) = served();
        let stream = SharedStream::new(io);
        // The slowest is sent first; each caller gets its own answer.
        let (a, b, c) = tokio::join!(
            stream.request(Kind::Call, &[5], soon()),
            stream.request(Kind::Call, &[1], soon()),
            stream.request(Kind::Call, &[3], soon()),
        );
        assert_eq!(a.expect("a")[..], [5]);
        assert_eq!(b.expect("b")[..], [1]);
        assert_eq!(c.expect("c")[..], [3]);
        let refused = stream.request(Kind::Call, &[254], soon()).await;
        assert!(
            matches!(&refused, Err(SharedError::Lost(StreamError::Refused(why))) if why.contains("nonsense")),
            "{refused:?}"
        );
        assert!(stream.is_usable(), "a refusal leaves the stream open");
    }

    #[tokio::test]
    async fn a_broken_stream_fails_its_waiting_callers_at_once() {
        let (io, server, _stop, echo) = served_by(Echo::default());
        let stream = Arc::new(SharedStream::new(io));
        let waiting = tokio::spawn({
            let stream = stream.clone();
            async move { stream.request(Kind::Call, &[255], soon()).await }
        });
        // The serving side goes away while the call waits (as when the leader is killed).
        echo.started.notified().await;
        server.abort();
        let started = Instant::now();
        let answer = waiting.await.expect("the caller");
        assert!(
            matches!(answer, Err(SharedError::Lost(StreamError::Closed))),
            "{answer:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited out the deadline"
        );
        // Nothing can be sent any more, and the caller is told nothing was delivered.
        let after = stream.request(Kind::Call, &[1], soon()).await;
        assert!(
            matches!(after, Err(SharedError::NotSent(StreamError::Closed))),
            "{after:?}"
        );
        assert!(!stream.is_usable());
    }

    #[tokio::test]
    async fn a_stalled_stream_is_given_up_after_its_deadline() {
        let (io, _server, _stop) = served();
        let stream = SharedStream::new(io);
        let deadline = Instant::now() + Duration::from_millis(200);
        let answer = stream.request(Kind::Call, &[255], deadline).await;
        assert!(
            matches!(answer, Err(SharedError::Lost(StreamError::TimedOut))),
            "{answer:?}"
        );
        assert!(
            !stream.is_usable(),
            "nothing arrived: the stream is stalled"
        );
    }

    #[tokio::test]
    async fn a_slow_answer_does_not_close_a_stream_that_answers_others() {
        let (io, _server, _stop) = served();
        let stream = SharedStream::new(io);
        let deadline = Instant::now() + Duration::from_millis(300);
        let (slow, quick) = tokio::join!(
            stream.request(Kind::Call, &[255], deadline),
            stream.request(Kind::Call, &[0], soon()),
        );
        assert!(matches!(
            slow,
            Err(SharedError::Lost(StreamError::TimedOut))
        ));
        assert_eq!(quick.expect("quick")[..], [0]);
        assert!(
            stream.is_usable(),
            "answers arrived after the slow request was sent"
        );
    }

    #[tokio::test]
    async fn appends_are_answered_in_order_on_an_exclusive_stream() {
        let (io, _server, _stop) = served();
        let mut stream = ExclusiveStream::new(io);
        for body in [&b"one"[..], b"two", b""] {
            let answer = stream.round_trip(Kind::Append, body).await.expect("answer");
            assert_eq!(&answer[..], body);
        }
        let unknown = stream.round_trip_tagged(7, b"x").await;
        assert!(
            matches!(&unknown, Err(StreamError::Refused(why)) if why.contains("unknown")),
            "{unknown:?}"
        );
    }

    #[tokio::test]
    async fn serving_ends_when_the_member_stops_or_the_frame_is_malformed() {
        let (io, server, stop) = served();
        let mut stream = ExclusiveStream::new(io);
        stream.round_trip(Kind::Append, b"x").await.expect("answer");
        assert!(stream.is_open());
        stop.send(true).expect("the switch");
        server.await.expect("the serving task");
        assert!(!stream.is_open(), "the served side is gone");
        let after = stream.round_trip(Kind::Append, b"y").await;
        assert!(after.is_err(), "{after:?}");

        let (io, server, _stop) = served();
        let mut raw = Framed::new(io, codec());
        raw.send(Bytes::from_static(b"short")).await.expect("send");
        server.await.expect("the serving task");
        assert!(raw.next().await.is_none(), "answered a malformed frame");
    }

    impl<I: AsyncRead + AsyncWrite + Unpin> ExclusiveStream<I> {
        async fn round_trip_tagged(&mut self, tag: u8, body: &[u8]) -> Result<Bytes, StreamError> {
            self.next_id += 1;
            self.framed.send(frame(self.next_id, tag, body)).await?;
            match self.framed.next().await {
                Some(f) => {
                    let (_, tag, body) = parse(f?)?;
                    answer_body(tag, body)
                }
                None => Err(StreamError::Closed),
            }
        }
    }
}
