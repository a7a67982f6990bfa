//! etcd's Watch service: one bidirectional stream carries many watches.
//!
//! The stream's task owns every watch on it: each watch is a task (in the stream's
//! `JoinSet`) that turns one [`WatchSubscription`] into `WatchResponse`s on the stream's
//! one outgoing channel. A create is answered `created: true` first; a start revision lost
//! to compaction is then answered `canceled: true` with `compact_revision`, as etcd does. A
//! `progress` request is answered once every watch on the stream has delivered everything
//! published (watch id -1, which clients hand to all their watches). With `hasleader`
//! metadata, a member that has no leader ends the stream with etcd's "no leader" error.
//! When the client goes away the outgoing channel closes and every task ends with it.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use etcd_client::proto::{
    PbEvent, PbWatchRequest, PbWatchRequestUnion, PbWatchResponse, PbWatchService,
};
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{etcd_errors, header, pb_kv, status};
use crate::error::StoreError;
use crate::node::StoreHandle;
use crate::types::{CommandError, EventType, RevisionEvents};
use crate::watch::{WatchItem, WatchSubscription};

pub struct WatchService {
    pub handle: StoreHandle,
    /// Checked per stream: a stream without the token gets each create canceled.
    pub tokens: super::auth::TokenCheck,
}

/// Responses queued for one stream before its watches wait for the client.
const STREAM_BUFFER: usize = 64;
/// The watch id of a response meant for every watch of a stream.
const ALL_WATCHES: i64 = -1;
/// How long a progress request waits for lagging watches before it is answered anyway
/// with the revision every watch has reached.
const PROGRESS_WAIT: Duration = Duration::from_secs(2);

// etcd's WatchCreateRequest.FilterType values.
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;

type Outgoing = mpsc::Sender<Result<PbWatchResponse, Status>>;

/// What a watch's task can be asked by its stream.
enum Ask {
    /// The revision up to which this watch has delivered everything (None: catching up).
    Progress(oneshot::Sender<Option<i64>>),
}

struct WatchOptions {
    id: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    fragment: bool,
    progress_every: Option<Duration>,
}

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<PbWatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let h = self.handle.clone();
        let refusal = self
            .tokens
            .check(&request.metadata().clone().into_headers())
            .err();
        let wants_leader = request
            .metadata()
            .get("hasleader")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "true");
        if wants_leader && h.raft().metrics().borrow().current_leader.is_none() {
            return Err(Status::unavailable(etcd_errors::NO_LEADER));
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let requests = request.into_inner();
        // The stream task ends when the client hangs up (the channel closes): the JoinSet
        // it owns aborts every watch with it.
        tokio::spawn(serve_stream(h, requests, tx, wants_leader, refusal));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn serve_stream(
    h: StoreHandle,
    mut requests: Streaming<PbWatchRequest>,
    tx: Outgoing,
    wants_leader: bool,
    refusal: Option<Status>,
) {
    let mut watches: BTreeMap<i64, mpsc::Sender<Ask>> = BTreeMap::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut next_id: i64 = 0;
    let mut reading = true;
    let mut leaderless = LeaderLoss::new(&h);
    loop {
        tokio::select! {
            msg = requests.message(), if reading => match msg {
                Ok(Some(req)) => {
                    let Some(union) = req.request_union else { continue };
                    match union {
                        PbWatchRequestUnion::CreateRequest(_) if refusal.is_some() => {
                            // etcd: created and canceled at once, the gRPC error as reason.
                            let reason = refusal.as_ref().map_or(String::new(), |s| {
                                format!("rpc error: code = {} desc = {}", grpc_code_name(s.code()), s.message())
                            });
                            let resp = PbWatchResponse {
                                header: header(&h, h.mvcc().current_revision()),
                                watch_id: ALL_WATCHES,
                                created: true,
                                canceled: true,
                                cancel_reason: reason,
                                ..Default::default()
                            };
                            if tx.send(Ok(resp)).await.is_err() { return; }
                        }
                        PbWatchRequestUnion::CreateRequest(c) => {
                            // Ids the stream picks only grow, as etcd's do: a canceled
                            // watch's id is never reused, so a late event cannot be taken
                            // for a newer watch's.
                            let id = if c.watch_id != 0 {
                                c.watch_id
                            } else {
                                while watches.contains_key(&next_id) {
                                    next_id += 1;
                                }
                                next_id += 1;
                                next_id - 1
                            };
                            if watches.contains_key(&id) || id < 0 {
                                let resp = PbWatchResponse {
                                    header: header(&h, h.mvcc().current_revision()),
                                    watch_id: id,
                                    created: true,
                                    canceled: true,
                                    cancel_reason: "etcdserver: duplicate watch ID provided on the WatchStream".into(),
                                    ..Default::default()
                                };
                                if tx.send(Ok(resp)).await.is_err() { return; }
                                continue;
                            }
                            let opts = WatchOptions {
                                id,
                                prev_kv: c.prev_kv,
                                no_put: c.filters.contains(&FILTER_NOPUT),
                                no_delete: c.filters.contains(&FILTER_NODELETE),
                                fragment: c.fragment,
                                progress_every: c.progress_notify.then_some(h.config().progress_notify_interval),
                            };
                            let (ask_tx, ask_rx) = mpsc::channel(4);
                            if c.start_revision <= 0 {
                                // "From now" includes every write acknowledged before the
                                // watch was asked for, even on a member still applying it
                                // (without a leader, the member's own now).
                                let _ = h.read_barrier().await;
                            }
                            let created_at = h.mvcc().current_revision();
                            let sub = h.hub().subscribe(c.key, c.range_end, c.start_revision);
                            let created = PbWatchResponse {
                                header: header(&h, created_at),
                                watch_id: id,
                                created: true,
                                ..Default::default()
                            };
                            match sub {
                                Ok(sub) => {
                                    if tx.send(Ok(created)).await.is_err() { return; }
                                    watches.insert(id, ask_tx);
                                    tasks.spawn(run_watch(h.clone(), sub, opts, tx.clone(), ask_rx));
                                }
                                Err(StoreError::Rejected(CommandError::Compacted { compact_revision, .. })) => {
                                    if tx.send(Ok(created)).await.is_err() { return; }
                                    let canceled = PbWatchResponse {
                                        header: header(&h, h.mvcc().current_revision()),
                                        watch_id: id,
                                        canceled: true,
                                        compact_revision,
                                        cancel_reason: etcd_errors::COMPACTED.into(),
                                        ..Default::default()
                                    };
                                    if tx.send(Ok(canceled)).await.is_err() { return; }
                                }
                                Err(e) => {
                                    let s = status(e);
                                    let refused = PbWatchResponse {
                                        header: header(&h, created_at),
                                        watch_id: id,
                                        created: true,
                                        canceled: true,
                                        cancel_reason: s.message().to_string(),
                                        ..Default::default()
                                    };
                                    if tx.send(Ok(refused)).await.is_err() { return; }
                                }
                            }
                        }
                        PbWatchRequestUnion::CancelRequest(c) => {
                            // Dropping the watch's ask channel ends its task.
                            if watches.remove(&c.watch_id).is_some() {
                                let resp = PbWatchResponse {
                                    header: header(&h, h.mvcc().current_revision()),
                                    watch_id: c.watch_id,
                                    canceled: true,
                                    ..Default::default()
                                };
                                if tx.send(Ok(resp)).await.is_err() { return; }
                            }
                        }
                        PbWatchRequestUnion::ProgressRequest(_) => {
                            let rev = progress(&h, &watches).await;
                            let resp = PbWatchResponse {
                                header: header(&h, rev),
                                watch_id: ALL_WATCHES,
                                ..Default::default()
                            };
                            if tx.send(Ok(resp)).await.is_err() { return; }
                        }
                    }
                }
                // The client sends no more requests; its watches go on until it hangs up.
                Ok(None) => reading = false,
                Err(_) => return,
            },
            () = leaderless.wait(), if wants_leader => {
                let _ = tx.send(Err(Status::unavailable(etcd_errors::NO_LEADER))).await;
                return;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = tx.closed() => return,
        }
        watches.retain(|_, ask| !ask.is_closed());
    }
}

/// A gRPC code as Go's grpc prints it in an error ("InvalidArgument", "Unauthenticated").
fn grpc_code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// The revision up to which every watch on the stream has delivered everything: waits
/// (bounded) for watches that are catching up.
async fn progress(h: &StoreHandle, watches: &BTreeMap<i64, mpsc::Sender<Ask>>) -> i64 {
    let deadline = tokio::time::Instant::now() + PROGRESS_WAIT;
    loop {
        let mut reached = h.hub().last_published();
        let mut lagging = false;
        for ask in watches.values() {
            let (reply, answer) = oneshot::channel();
            if ask.send(Ask::Progress(reply)).await.is_err() {
                continue;
            }
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(Some(rev))) => reached = reached.min(rev),
                Ok(Ok(None)) | Err(_) => lagging = true,
                Ok(Err(_)) => {}
            }
        }
        if !lagging || tokio::time::Instant::now() >= deadline {
            return reached;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Notices a member that has been without a working leader for longer than an election
/// takes: no leader known, or this member leads without a quorum's recent answer (openraft
/// 0.9 leaders do not step down when they lose their quorum, as etcd's do).
struct LeaderLoss {
    handle: StoreHandle,
    every: Duration,
    grace: Duration,
    /// Since when the leader has been missing.
    missing_since: Option<tokio::time::Instant>,
}

impl LeaderLoss {
    fn new(h: &StoreHandle) -> Self {
        let election = h.config().election_timeout_max;
        LeaderLoss {
            handle: h.clone(),
            every: election.max(Duration::from_millis(100)),
            grace: election * 3,
            missing_since: None,
        }
    }

    fn leaderless(&self) -> bool {
        let m = self.handle.raft().metrics();
        let m = m.borrow();
        match m.current_leader {
            None => true,
            Some(l) if l == self.handle.id() => m
                .millis_since_quorum_ack
                .is_none_or(|ms| Duration::from_millis(ms) > self.grace),
            Some(_) => false,
        }
    }

    /// Returns once the leader has been missing for the whole grace period. Its state lives
    /// in `self`, so a wait dropped for another event goes on where it was.
    async fn wait(&mut self) {
        loop {
            tokio::time::sleep(self.every).await;
            if !self.leaderless() {
                self.missing_since = None;
                continue;
            }
            let now = tokio::time::Instant::now();
            let since = *self.missing_since.get_or_insert(now);
            if now.duration_since(since) >= self.grace {
                return;
            }
        }
    }
}

enum Step {
    Item(WatchItem),
    Ask(Option<Ask>),
    Tick,
}

async fn run_watch(
    h: StoreHandle,
    mut sub: WatchSubscription,
    opts: WatchOptions,
    tx: Outgoing,
    mut asks: mpsc::Receiver<Ask>,
) {
    let mut sent_since_tick = false;
    loop {
        let tick = async {
            match opts.progress_every {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        let step = tokio::select! {
            item = sub.next() => Step::Item(item),
            ask = asks.recv() => Step::Ask(ask),
            _ = tick => Step::Tick,
        };
        match step {
            Step::Item(WatchItem::Events(re)) => {
                for resp in responses(&h, &opts, &re) {
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                    sent_since_tick = true;
                }
                h.metrics().watch_events_sent(1);
            }
            Step::Item(WatchItem::Compacted { compact_revision }) => {
                let resp = PbWatchResponse {
                    header: header(&h, h.mvcc().current_revision()),
                    watch_id: opts.id,
                    canceled: true,
                    compact_revision,
                    cancel_reason: etcd_errors::COMPACTED.into(),
                    ..Default::default()
                };
                let _ = tx.send(Ok(resp)).await;
                return;
            }
            Step::Ask(Some(Ask::Progress(reply))) => {
                let _ = reply.send(sub.progress());
            }
            // The stream cancelled this watch (or ended).
            Step::Ask(None) => return,
            Step::Tick => {
                if !sent_since_tick {
                    if let Some(rev) = sub.progress() {
                        let resp = PbWatchResponse {
                            header: header(&h, rev),
                            watch_id: opts.id,
                            ..Default::default()
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
                sent_since_tick = false;
            }
        }
    }
}

/// One revision's events as responses: one, or with `fragment` several (all but the last
/// marked `fragment: true`) when they would not fit in one request-sized message.
fn responses(h: &StoreHandle, opts: &WatchOptions, re: &RevisionEvents) -> Vec<PbWatchResponse> {
    let events: Vec<PbEvent> = re
        .events
        .iter()
        .filter(|e| match e.kind {
            EventType::Put => !opts.no_put,
            EventType::Delete => !opts.no_delete,
        })
        .map(|e| PbEvent {
            r#type: match e.kind {
                EventType::Put => 0,
                EventType::Delete => 1,
            },
            kv: Some(pb_kv(e.kv.clone())),
            prev_kv: if opts.prev_kv {
                e.prev_kv.clone().map(pb_kv)
            } else {
                None
            },
        })
        .collect();
    if events.is_empty() {
        return Vec::new();
    }
    let response = |events: Vec<PbEvent>, fragment: bool| PbWatchResponse {
        header: header(h, re.revision),
        watch_id: opts.id,
        events,
        fragment,
        ..Default::default()
    };
    let limit = h.config().limits.max_request_bytes;
    let size = |e: &PbEvent| {
        let kv = |k: &Option<etcd_client::proto::PbKeyValue>| {
            k.as_ref().map_or(0, |k| k.key.len() + k.value.len() + 48)
        };
        kv(&e.kv) + kv(&e.prev_kv) + 8
    };
    let total: usize = events.iter().map(size).sum();
    if !opts.fragment || total <= limit {
        return vec![response(events, false)];
    }
    let mut out = Vec::new();
    let mut part = Vec::new();
    let mut part_size = 0;
    for e in events {
        let s = size(&e);
        if !part.is_empty() && part_size + s > limit {
            out.push(response(std::mem::take(&mut part), true));
            part_size = 0;
        }
        part_size += s;
        part.push(e);
    }
    out.push(response(part, false));
    out
}
