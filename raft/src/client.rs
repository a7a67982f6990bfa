//! [`StoreClient`]: the Rust client of the store's HTTP API, used by the whole control plane.
//!
//! Configured with every store endpoint; a request that meets a dead node (connection
//! refused, timeout before sending) moves on to the next endpoint. Writes are never retried
//! after they may have reached a node (that would risk applying them twice): such failures
//! surface as [`ClientError::OutcomeUnknown`]. Watches resume from the last revision seen, on
//! any endpoint, without gaps or duplicates.

use std::time::Duration;

use futures::stream::BoxStream;

use crate::api::*;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body (4xx/5xx).
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

#[derive(Clone)]
pub struct StoreClient {}

impl StoreClient {
    /// `endpoints` are `host:port` or `http://host:port` of store client APIs.
    pub fn new(_endpoints: Vec<String>) -> Result<Self, ClientError> {
        todo!()
    }

    /// Per-request timeout (default 5 s; watches are exempt).
    pub fn with_timeout(self, _timeout: Duration) -> Self {
        todo!()
    }

    pub async fn put(
        &self,
        _key: &[u8],
        _value: &[u8],
        _opts: PutOptions,
    ) -> Result<PutResponse, ClientError> {
        todo!()
    }

    pub async fn get(&self, _key: &[u8], _opts: GetOptions) -> Result<RangeResponse, ClientError> {
        todo!()
    }

    pub async fn delete(
        &self,
        _key: &[u8],
        _opts: DeleteOptions,
    ) -> Result<DeleteResponse, ClientError> {
        todo!()
    }

    pub async fn txn(&self, _txn: &TxnRequest) -> Result<TxnResponse, ClientError> {
        todo!()
    }

    pub async fn lease_grant(&self, _ttl_secs: i64) -> Result<LeaseGrantResponse, ClientError> {
        todo!()
    }

    pub async fn lease_keepalive(&self, _id: i64) -> Result<LeaseKeepAliveResponse, ClientError> {
        todo!()
    }

    pub async fn lease_revoke(&self, _id: i64) -> Result<LeaseRevokeResponse, ClientError> {
        todo!()
    }

    pub async fn lease_time_to_live(
        &self,
        _id: i64,
    ) -> Result<LeaseTimeToLiveResponse, ClientError> {
        todo!()
    }

    pub async fn compact(&self, _revision: i64) -> Result<CompactResponse, ClientError> {
        todo!()
    }

    pub async fn cluster(&self) -> Result<ClusterResponse, ClientError> {
        todo!()
    }

    /// Opens a resumable watch (see [`WatchStream`]).
    pub fn watch(&self, _key: &[u8], _opts: WatchOptions) -> WatchStream {
        todo!()
    }
}
