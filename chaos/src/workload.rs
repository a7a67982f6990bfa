//! The clients and watchers of a run. Clients do gets, puts of unique values and
//! compare-and-swaps on a few keys, one operation at a time, each against one member and
//! with a timeout, and record every operation with its outcome. Watchers follow the key
//! prefix and, whenever their connection dies or goes quiet, resume on the next member
//! from the revision after the last one they received.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use miniku_store::api::{Bin, Compare, EventType, PutRequest, RequestOp, TxnRequest, WatchMessage};
use miniku_store::client::{ClientError, GetOptions, PutOptions, StoreClient};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

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

/// Runs one operation against `client` and records it.
pub async fn execute(rec: &Recorder, client: &StoreClient, client_id: u32, op: Op) -> Outcome {
    let invoke_ns = rec.now_ns();
    let (outcome, revision) = match &op {
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
                    target: "value".into(),
                    result: "=".into(),
                    value: serde_json::Value::String(v.clone()),
                },
                None => Compare {
                    key: Bin::from(key.as_str()),
                    range_end: None,
                    target: "version".into(),
                    result: "=".into(),
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

pub struct ClientOptions {
    pub endpoints: Vec<String>,
    pub keys: usize,
    pub timeout: Duration,
    pub seed: u64,
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
    let mut member = n as usize % opts.endpoints.len();
    let mut id = n;
    let mut seq = 0u64;
    let mut last_read: Vec<Option<String>> = vec![None; opts.keys];
    let connect = |i: usize| {
        StoreClient::new(vec![opts.endpoints[i].clone()]).map(|c| c.with_timeout(opts.timeout))
    };
    let mut client = connect(member)?;
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
        match execute(&rec, &client, id, op).await {
            Outcome::Read(v) => last_read[k] = v,
            Outcome::Written | Outcome::Swapped(true) => last_read[k] = written,
            Outcome::Swapped(false) => {}
            outcome => {
                if outcome == Outcome::Unknown {
                    id += 1_000_000;
                }
                member = (member + 1) % opts.endpoints.len();
                client = connect(member)?;
                // Do not spin while a member is down.
                tokio::time::sleep(Duration::from_millis(rng.random_range(10..60))).await;
            }
        }
    }
    Ok(())
}

/// One watcher: follows [`PREFIX`] from `start_revision` until it has received revision
/// `until` (set when the run ends) or `give_up` is set.
pub async fn run_watcher(
    name: String,
    endpoints: Vec<String>,
    first: usize,
    start_revision: i64,
    until: Arc<std::sync::atomic::AtomicI64>,
    give_up: Arc<AtomicBool>,
) -> WatcherLog {
    let mut log = WatcherLog {
        name,
        segments: Vec::new(),
    };
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .build()
    {
        Ok(h) => h,
        Err(_) => return log,
    };
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
        let url = format!(
            "{}/v1/watch/{PREFIX}?prefix=true&progress_notify=true&start_revision={next}",
            endpoints[member]
        );
        if let Ok(resp) = http.get(&url).send().await {
            if resp.status().is_success() {
                let mut body = resp.bytes_stream();
                let mut buf = String::new();
                // Progress notifications come every 5 s; silence much longer means the
                // member is gone, paused or cut off.
                'conn: while let Ok(Some(Ok(chunk))) =
                    tokio::time::timeout(Duration::from_secs(8), body.next()).await
                {
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(pos) = buf.find("\n\n") {
                        let frame: String = buf.drain(..pos + 2).collect();
                        let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) else {
                            continue;
                        };
                        let Ok(msg) = serde_json::from_str::<WatchMessage>(data.trim()) else {
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

/// The store's own record of the prefix from `start` up to `end`: one watch read on one
/// member (retrying others) after the faults have stopped.
pub async fn read_truth(
    endpoints: &[String],
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
        endpoints.to_vec(),
        0,
        start,
        until,
        give_up.clone(),
    )
    .await;
    timer.abort();
    if give_up.load(Ordering::SeqCst) {
        anyhow::bail!("could not read the store's history up to revision {end}");
    }
    Ok(log.segments.into_iter().flat_map(|s| s.batches).collect())
}
