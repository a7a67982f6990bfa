//! The clients and watchers of a run. Clients do gets, puts of unique values and
//! compare-and-swaps on a few keys, one operation at a time, each against one member and
//! with a timeout, and record every operation with its outcome. Watchers follow the key
//! prefix and, whenever their connection dies or goes quiet, resume on the next member
//! from the revision after the last one they received.
//!
//! Both go through one of the store's two fronts: its HTTP API (Miniku's own
//! `StoreClient` and SSE watches) or etcd's gRPC API (the `etcd-client` crate), so the
//! same checkers judge each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use miniku_store::api::{
    Bin, Compare, CompareResult, CompareTarget, EventType, PutRequest, RequestOp, TxnRequest,
    WatchMessage,
};
use miniku_store::client::{ClientError, GetOptions, PutOptions, StoreClient};
use miniku_store::sse;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::access::Access;
use crate::history::{Change, Op, Operation, Outcome, RevisionBatch, WatchSegment, WatcherLog};

/// Every key of a run lives under this prefix.
pub const PREFIX: &str = "chaos/";

pub fn key(i: usize) -> String {
    format!("{PREFIX}k{i}")
}

/// Shared by every client: the run's clock and the history being recorded.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Operation>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl Recorder {
    pub fn new(start: Instant) -> Self {
        Recorder {
            start,
            ops: Arc::default(),
            next_id: Arc::default(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn record(&self, mut op: Operation) {
        op.id = self.next_id.fetch_add(1, Ordering::SeqCst);
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    pub fn operations(&self) -> Vec<Operation> {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ops.sort_by_key(|o| o.id);
        ops
    }
}

/// How a failed request is classified: a write is `Failed` only when it certainly never
/// reached a member that could propose it.
fn classify(e: &ClientError) -> Outcome {
    match e {
        ClientError::Unreachable(_) => Outcome::Failed,
        ClientError::Api { status, .. } if *status < 500 => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

/// How a failed gRPC request is classified: only answers that say the request was refused
/// before it was proposed are `Failed`; a timeout, a broken connection or an unavailable
/// member may have let it through.
fn classify_grpc(e: &etcd_client::Error) -> Outcome {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::ResourceExhausted => Outcome::Failed,
            // tonic could not open the connection: nothing was sent.
            Code::Unavailable if s.message().contains("tcp connect error") => Outcome::Failed,
            _ => Outcome::Unknown,
        },
        _ => Outcome::Unknown,
    }
}

/// A client of one member, through one of the store's fronts.
pub enum Conn {
    Http(StoreClient),
    Grpc(Box<etcd_client::Client>),
}

impl Conn {
    /// A client of `endpoint` (`http://host:port`, or `https://` with `access`'s CA and
    /// token) through the chosen front.
    pub async fn connect(
        access: &Access,
        endpoint: &str,
        grpc: bool,
        timeout: Duration,
    ) -> anyhow::Result<Conn> {
        Ok(if grpc {
            if access.ca_file.is_some() || access.token.is_some() {
                anyhow::bail!("the gRPC front is only driven on loopback (no TLS, no token)");
            }
            let opts = etcd_client::ConnectOptions::new()
                .with_timeout(timeout)
                .with_connect_timeout(Duration::from_millis(500));
            Conn::Grpc(Box::new(
                etcd_client::Client::connect([endpoint], Some(opts)).await?,
            ))
        } else {
            Conn::Http(
                access
                    .client(vec![endpoint.to_string()])?
                    .with_timeout(timeout),
            )
        })
    }
}

/// Runs one operation through `conn` and records it.
pub async fn execute(rec: &Recorder, conn: &mut Conn, client_id: u32, op: Op) -> Outcome {
    let invoke_ns = rec.now_ns();
    let (outcome, revision) = match conn {
        Conn::Http(client) => execute_http(client, &op).await,
        Conn::Grpc(client) => execute_grpc(client, &op).await,
    };
    rec.record(Operation {
        id: 0,
        client: client_id,
        op,
        invoke_ns,
        complete_ns: rec.now_ns(),
        outcome: outcome.clone(),
        revision,
    });
    outcome
}

async fn execute_grpc(client: &mut etcd_client::Client, op: &Op) -> (Outcome, Option<i64>) {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let revision = |h: Option<&etcd_client::ResponseHeader>| h.map(|h| h.revision());
    match op {
        Op::Get { key } => match client.get(key.as_str(), None).await {
            Ok(r) => {
                let v = r
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                (Outcome::Read(v), revision(r.header()))
            }
            Err(e) => (classify_grpc(&e), None),
        },
        Op::Put { key, value } => match client.put(key.as_str(), value.as_str(), None).await {
            Ok(r) => (Outcome::Written, revision(r.header())),
            Err(e) => (classify_grpc(&e), None),
        },
        Op::Cas { key, expected, new } => {
            let compare = match expected {
                Some(v) => Compare::value(key.as_str(), CompareOp::Equal, v.as_str()),
                None => Compare::version(key.as_str(), CompareOp::Equal, 0),
            };
            let txn =
                Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key.as_str(), new.as_str(), None)]);
            match client.txn(txn).await {
                Ok(r) => (Outcome::Swapped(r.succeeded()), revision(r.header())),
                Err(e) => (classify_grpc(&e), None),
            }
        }
    }
}

async fn execute_http(client: &StoreClient, op: &Op) -> (Outcome, Option<i64>) {
    match op {
        Op::Get { key } => match client.get(key.as_bytes(), GetOptions::default()).await {
            Ok(r) => {
                let v = r
                    .kvs
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value.as_bytes()).into_owned());
                (Outcome::Read(v), Some(r.header.revision))
            }
            Err(e) => (classify(&e), None),
        },
        Op::Put { key, value } => {
            match client
                .put(key.as_bytes(), value.as_bytes(), PutOptions::default())
                .await
            {
                Ok(r) => (Outcome::Written, Some(r.header.revision)),
                Err(e) => (classify(&e), None),
            }
        }
        Op::Cas { key, expected, new } => {
            let compare = match expected {
                Some(v) => Compare {
                    key: Bin::from(key.as_str()),
                    range_end: None,
                    target: CompareTarget::Value,
                    result: CompareResult::Equal,
                    value: serde_json::Value::String(v.clone()),
                },
                None => Compare {
                    key: Bin::from(key.as_str()),
                    range_end: None,
                    target: CompareTarget::Version,
                    result: CompareResult::Equal,
                    value: serde_json::json!(0),
                },
            };
            let txn = TxnRequest {
                compare: vec![compare],
                success: vec![RequestOp::Put(PutRequest {
                    key: Bin::from(key.as_str()),
                    value: Bin::from(new.as_str()),
                    lease: 0,
                    prev_kv: false,
                })],
                failure: vec![],
            };
            match client.txn(&txn).await {
                Ok(r) => (Outcome::Swapped(r.succeeded), Some(r.header.revision)),
                Err(e) => (classify(&e), None),
            }
        }
    }
}

pub struct ClientOptions {
    pub access: Access,
    pub keys: usize,
    pub timeout: Duration,
    pub seed: u64,
    /// Through etcd's gRPC API instead of the HTTP API.
    pub grpc: bool,
}

/// One client: sequential operations until `stop`. After an operation with an unknown
/// outcome it continues as a new client id (the old one may still have that operation
/// pending, as in Jepsen), and after any failure it moves to the next member.
pub async fn run_client(
    rec: Recorder,
    n: u32,
    opts: Arc<ClientOptions>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(opts.seed ^ (u64::from(n) << 32));
    let endpoints = &opts.access.endpoints;
    let mut member = n as usize % endpoints.len();
    let mut id = n;
    let mut seq = 0u64;
    let mut last_read: Vec<Option<String>> = vec![None; opts.keys];
    let connect = |i: usize| Conn::connect(&opts.access, &endpoints[i], opts.grpc, opts.timeout);
    let mut client = connect(member).await?;
    while !stop.load(Ordering::SeqCst) {
        let k = rng.random_range(0..opts.keys);
        let key = key(k);
        seq += 1;
        let value = format!("c{n}-{seq}");
        let op = match rng.random_range(0..10) {
            0..=3 => Op::Get { key },
            4..=6 => Op::Put { key, value },
            _ => Op::Cas {
                key,
                expected: last_read[k].clone(),
                new: value,
            },
        };
        let written = match &op {
            Op::Put { value, .. } | Op::Cas { new: value, .. } => Some(value.clone()),
            Op::Get { .. } => None,
        };
        match execute(&rec, &mut client, id, op).await {
            Outcome::Read(v) => last_read[k] = v,
            Outcome::Written | Outcome::Swapped(true) => last_read[k] = written,
            Outcome::Swapped(false) => {}
            outcome => {
                if outcome == Outcome::Unknown {
                    id += 1_000_000;
                }
                member = (member + 1) % endpoints.len();
                client = connect(member).await?;
                // Do not spin while a member is down.
                tokio::time::sleep(Duration::from_millis(rng.random_range(10..60))).await;
            }
        }
    }
    Ok(())
}

/// One watcher: follows [`PREFIX`] from `start_revision` until it has received revision
/// `until` (set when the run ends) or `give_up` is set.
#[allow(clippy::too_many_arguments)]
pub async fn run_watcher(
    name: String,
    access: Access,
    first: usize,
    start_revision: i64,
    until: Arc<std::sync::atomic::AtomicI64>,
    give_up: Arc<AtomicBool>,
    grpc: bool,
) -> WatcherLog {
    let mut log = WatcherLog {
        name,
        segments: Vec::new(),
    };
    let Ok(http) = access.http(Duration::from_millis(500)) else {
        return log;
    };
    let endpoints = &access.endpoints;
    let mut member = first % endpoints.len();
    let mut next = start_revision;
    loop {
        let done = |next: i64| {
            let u = until.load(Ordering::SeqCst);
            (u > 0 && next > u) || give_up.load(Ordering::SeqCst)
        };
        if done(next) {
            return log;
        }
        let mut seg = WatchSegment {
            node: endpoints[member].clone(),
            start_revision: next,
            batches: Vec::new(),
        };
        if grpc {
            watch_grpc(&endpoints[member], &mut seg, &mut next, &done, &give_up).await;
        } else if let Ok(resp) = access
            .authorize(http.get(format!(
                "{}/v1/watch/{PREFIX}?prefix=true&progress_notify=true&start_revision={next}",
                endpoints[member]
            )))
            .send()
            .await
        {
            if resp.status().is_success() {
                let mut body = resp.bytes_stream();
                let mut frames = sse::Decoder::new();
                // Progress notifications come every 5 s; silence much longer means the
                // member is gone, paused or cut off.
                'conn: while let Ok(Some(Ok(chunk))) =
                    tokio::time::timeout(Duration::from_secs(8), body.next()).await
                {
                    frames.push(&chunk);
                    while let Some(frame) = frames.next_frame() {
                        let Ok(msg) = serde_json::from_str::<WatchMessage>(&frame.data) else {
                            break 'conn;
                        };
                        if msg.canceled {
                            break 'conn;
                        }
                        if msg.events.is_empty() {
                            continue;
                        }
                        let revision = msg.events[0].kv.mod_revision;
                        let changes = msg
                            .events
                            .iter()
                            .map(|e| Change {
                                key: e.kv.key.to_string_lossy(),
                                value: match e.kind {
                                    EventType::Put => Some(e.kv.value.to_string_lossy()),
                                    EventType::Delete => None,
                                },
                            })
                            .collect();
                        seg.batches.push(RevisionBatch { revision, changes });
                        next = revision + 1;
                        if done(next) {
                            break 'conn;
                        }
                    }
                    if give_up.load(Ordering::SeqCst) {
                        break;
                    }
                }
            }
        }
        if !seg.batches.is_empty() || log.segments.is_empty() {
            log.segments.push(seg);
        }
        member = (member + 1) % endpoints.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One gRPC watch of [`PREFIX`] on `endpoint` from `*next`, recording into `seg` until the
/// stream fails, goes quiet (progress notifications come every 5 s) or `done`.
async fn watch_grpc(
    endpoint: &str,
    seg: &mut WatchSegment,
    next: &mut i64,
    done: &impl Fn(i64) -> bool,
    give_up: &AtomicBool,
) {
    let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
    let Ok(mut client) = etcd_client::Client::connect([endpoint], Some(opts)).await else {
        return;
    };
    let watch = etcd_client::WatchOptions::new()
        .with_prefix()
        .with_progress_notify()
        .with_start_revision(*next);
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(2), client.watch(PREFIX, Some(watch))).await
    else {
        return;
    };
    while let Ok(Ok(Some(resp))) =
        tokio::time::timeout(Duration::from_secs(8), stream.message()).await
    {
        if resp.canceled() {
            return;
        }
        // A response may carry several revisions; each becomes one batch.
        for e in resp.events() {
            let Some(kv) = e.kv() else { continue };
            let change = Change {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: match e.event_type() {
                    etcd_client::EventType::Put => {
                        Some(String::from_utf8_lossy(kv.value()).into_owned())
                    }
                    etcd_client::EventType::Delete => None,
                },
            };
            let revision = kv.mod_revision();
            match seg.batches.last_mut() {
                Some(b) if b.revision == revision => b.changes.push(change),
                _ => seg.batches.push(RevisionBatch {
                    revision,
                    changes: vec![change],
                }),
            }
            *next = revision + 1;
        }
        if done(*next) || give_up.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// The store's own record of the prefix from `start` up to `end`: one watch read on one
/// member (retrying others) after the faults have stopped.
pub async fn read_truth(
    access: &Access,
    start: i64,
    end: i64,
) -> anyhow::Result<Vec<RevisionBatch>> {
    let until = Arc::new(std::sync::atomic::AtomicI64::new(end));
    let give_up = Arc::new(AtomicBool::new(false));
    let g = give_up.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        g.store(true, Ordering::SeqCst);
    });
    let log = run_watcher(
        "truth".into(),
        access.clone(),
        0,
        start,
        until,
        give_up.clone(),
        false,
    )
    .await;
    timer.abort();
    if give_up.load(Ordering::SeqCst) {
        anyhow::bail!("could not read the store's history up to revision {end}");
    }
    Ok(log.segments.into_iter().flat_map(|s| s.batches).collect())
}
