//! [`LocalStore`]: the store's state machine and watch hub in this process, without Raft,
//! peers or HTTP, answering the same requests as [`crate::client::StoreClient`] with the same
//! API types and errors. Writes are applied one at a time, in order, each into sled as one
//! revision, and published to the hub as a member does once an entry is committed. For unit
//! tests of what runs on the store (the control plane's controllers), in milliseconds.
//!
//! It owns nothing of the store's semantics: MVCC is [`MvccStore`]'s, watches are
//! [`WatchHub`]'s, request validation is the HTTP layer's. Leases do not expire by
//! themselves (there is no lease clock): [`LocalStore::expire_lease`] ends one, as the
//! leader would when its TTL ran out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use crate::api::{
    self, ErrorBody, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseRevokeResponse,
    RangeResponse, ResponseHeader, TxnRequest, TxnResponse, WatchMessage,
};
use crate::client::{range_end_for, ClientError, GetOptions, WatchOptions, WatchStream};
use crate::config::Limits;
use crate::error::StoreError;
use crate::http::error::{classify, HttpError};
use crate::http::kv::page_limit;
use crate::http::txn::{response_op, to_txn};
use crate::mvcc::MvccStore;
use crate::types::{Command, CommandResult, RangeOp};
use crate::watch::{WatchHub, WatchItem};

/// The member id this store answers as.
pub const LOCAL_MEMBER: u64 = 1;

/// A store in this process, over a sled database of its own (in a temporary directory).
#[derive(Clone)]
pub struct LocalStore {
    mvcc: MvccStore,
    hub: WatchHub,
    limits: Limits,
    /// The next log index; held while a write is applied and published, so writes are
    /// applied and seen in order.
    log_index: Arc<Mutex<u64>>,
    /// Writes still to be applied but answered `OutcomeUnknown`, as when a member's answer
    /// is lost on the way back.
    lost_answers: Arc<AtomicUsize>,
    /// While Some, applied revisions wait here instead of reaching watchers, as when a
    /// watcher's stream lags behind the store.
    held_events: Arc<Mutex<Option<Vec<crate::types::RevisionEvents>>>>,
    /// How many writes were asked for so far.
    writes: Arc<tokio::sync::watch::Sender<u64>>,
    _dir: Arc<tempfile::TempDir>,
}

fn client_error(e: StoreError) -> ClientError {
    let (status, code, compact_revision) = classify(&e);
    ClientError::Api {
        status: status.as_u16(),
        body: ErrorBody {
            error: code,
            message: e.to_string(),
            compact_revision,
            leader_id: None,
        },
    }
}

fn http_error(e: HttpError) -> ClientError {
    client_error(e.0)
}

impl LocalStore {
    /// An empty store in a new temporary directory.
    pub fn new() -> Result<LocalStore, StoreError> {
        let internal = |e: &dyn std::fmt::Display| StoreError::Internal(e.to_string());
        let dir = tempfile::tempdir().map_err(|e| internal(&e))?;
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .map_err(|e| internal(&e))?;
        let mvcc = MvccStore::open(&db).map_err(|e| internal(&e))?;
        let limits = Limits::default();
        let hub = WatchHub::new(mvcc.clone(), limits.max_watchers);
        Ok(LocalStore {
            mvcc,
            hub,
            limits,
            log_index: Arc::new(Mutex::new(0)),
            lost_answers: Arc::new(AtomicUsize::new(0)),
            held_events: Arc::new(Mutex::new(None)),
            writes: Arc::new(tokio::sync::watch::Sender::new(0)),
            _dir: Arc::new(dir),
        })
    }

    fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            revision,
            raft_term: 1,
            member_id: LOCAL_MEMBER,
        }
    }

    /// Applies one command as one log entry and publishes its events.
    fn write(&self, cmd: Command) -> Result<CommandResult, ClientError> {
        let mut index = self.log_index.lock().unwrap_or_else(|p| p.into_inner());
        *index += 1;
        let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), *index);
        let applied = self
            .mvcc
            .apply_batch(log_id, &[cmd], None)
            .map_err(|e| client_error(StoreError::Internal(e.to_string())))?;
        {
            let mut held = self.held_events.lock().unwrap_or_else(|p| p.into_inner());
            match held.as_mut() {
                Some(waiting) => waiting.extend(applied.events),
                None => self.hub.publish(applied.events),
            }
        }
        self.writes.send_modify(|n| *n += 1);
        let lose = self
            .lost_answers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lose {
            return Err(ClientError::OutcomeUnknown(
                "the write was applied but its answer was lost".into(),
            ));
        }
        match applied.results.into_iter().next() {
            Some(CommandResult::Rejected { error, .. }) => {
                Err(client_error(StoreError::Rejected(error)))
            }
            Some(result) => Ok(result),
            None => Err(client_error(StoreError::Internal(
                "an applied entry gave no result".into(),
            ))),
        }
    }

    fn unexpected(result: CommandResult) -> ClientError {
        client_error(StoreError::Internal(format!(
            "unexpected result {result:?}"
        )))
    }

    pub async fn txn(&self, txn: &TxnRequest) -> Result<TxnResponse, ClientError> {
        let op = to_txn(txn.clone(), &self.limits).map_err(http_error)?;
        match self.write(Command::Txn(op))? {
            CommandResult::Txn {
                revision,
                succeeded,
                responses,
            } => Ok(TxnResponse {
                header: self.header(revision),
                succeeded,
                responses: responses.into_iter().map(response_op).collect(),
            }),
            other => Err(Self::unexpected(other)),
        }
    }

    pub async fn get(&self, key: &[u8], opts: GetOptions) -> Result<RangeResponse, ClientError> {
        let range_end = range_end_for(key, opts.prefix, &opts.range_end).unwrap_or_default();
        let op = RangeOp {
            key: key.to_vec(),
            range_end,
            limit: page_limit(opts.limit),
            revision: opts.revision,
            keys_only: opts.keys_only,
            count_only: opts.count_only,
        };
        let r = self
            .mvcc
            .range(&op)
            .map_err(|e| client_error(StoreError::Rejected(e)))?;
        Ok(RangeResponse {
            header: self.header(self.mvcc.current_revision()),
            kvs: r.kvs.into_iter().map(Into::into).collect(),
            count: r.count,
            more: r.more,
        })
    }

    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseGrantResponse, ClientError> {
        match self.write(Command::LeaseGrant {
            id: 0,
            ttl: ttl_secs,
        })? {
            CommandResult::LeaseGrant { revision, id, ttl } => Ok(LeaseGrantResponse {
                header: self.header(revision),
                id,
                ttl,
            }),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Renews nothing (leases here do not run down); answers whether the lease exists.
    pub async fn lease_keepalive(&self, id: i64) -> Result<LeaseKeepAliveResponse, ClientError> {
        let lease = self.mvcc.lease(id).ok_or_else(|| {
            client_error(StoreError::Rejected(
                crate::types::CommandError::LeaseNotFound(id),
            ))
        })?;
        Ok(LeaseKeepAliveResponse {
            header: self.header(self.mvcc.current_revision()),
            id,
            ttl: lease.ttl,
        })
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, ClientError> {
        match self.write(Command::LeaseRevoke { id })? {
            CommandResult::LeaseRevoke { revision } => Ok(LeaseRevokeResponse {
                header: self.header(revision),
            }),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Applies the next `n` writes but answers each with `OutcomeUnknown`, as a client sees
    /// it when the connection breaks after the store applied its write.
    pub fn lose_next_answers(&self, n: usize) {
        self.lost_answers.store(n, Ordering::SeqCst);
    }

    /// Holds back what is written from watchers until [`Self::release_events`]: watchers
    /// (and the caches they keep) fall behind the store.
    pub fn hold_events(&self) {
        let mut held = self.held_events.lock().unwrap_or_else(|p| p.into_inner());
        held.get_or_insert_with(Vec::new);
    }

    /// Hands watchers everything held back, in order, and stops holding.
    pub fn release_events(&self) {
        let waiting = self
            .held_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(events) = waiting {
            self.hub.publish(events);
        }
    }

    /// Resolves once `n` writes (applied, refused or failed preconditions alike) were asked
    /// of this store.
    pub async fn wait_for_writes(&self, n: u64) {
        let mut rx = self.writes.subscribe();
        let _ = rx.wait_for(|w| *w >= n).await;
    }

    /// Ends lease `id` as its expiry would: what is attached to it is deleted.
    pub async fn expire_lease(&self, id: i64) -> Result<(), ClientError> {
        self.lease_revoke(id).await.map(|_| ())
    }

    /// This store's leader: itself.
    pub fn leader_id(&self) -> Option<u64> {
        Some(LOCAL_MEMBER)
    }

    /// Every change in range from `opts.start_revision` (0: from the next one), one message
    /// per revision; ends with `Err(Compacted)` if that history is gone.
    pub fn watch(&self, key: &[u8], opts: WatchOptions) -> WatchStream {
        let range_end = range_end_for(key, opts.prefix, &opts.range_end).unwrap_or_default();
        let sub = match self
            .hub
            .subscribe(key.to_vec(), range_end, opts.start_revision)
        {
            Ok(sub) => sub,
            Err(e) => {
                let e = match e {
                    StoreError::Rejected(crate::types::CommandError::Compacted {
                        compact_revision,
                        ..
                    }) => ClientError::Compacted { compact_revision },
                    other => client_error(other),
                };
                return futures::stream::iter([Err(e)]).boxed();
            }
        };
        let prev_kv = opts.prev_kv;
        futures::stream::unfold(Some(sub), move |sub| async move {
            let mut sub = sub?;
            match sub.next().await {
                WatchItem::Events(re) => {
                    let msg = WatchMessage {
                        header: ResponseHeader {
                            revision: re.revision,
                            raft_term: 1,
                            member_id: LOCAL_MEMBER,
                        },
                        events: re
                            .events
                            .iter()
                            .map(|e| api::Event::from_internal(e.clone(), prev_kv))
                            .collect(),
                        progress_notify: false,
                        canceled: false,
                        compact_revision: None,
                        reason: None,
                    };
                    Some((Ok(msg), Some(sub)))
                }
                WatchItem::Compacted { compact_revision } => {
                    Some((Err(ClientError::Compacted { compact_revision }), None))
                }
            }
        })
        .boxed()
    }
}
