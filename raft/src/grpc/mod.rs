//! etcd's v3 gRPC API on the client port: KV (`kv`), Watch (`watch`), Lease (`lease`),
//! Cluster and Maintenance (`cluster`), and Auth's `Authenticate` (`auth`), so `etcdctl`
//! and etcd's client libraries work against a store member unchanged.
//!
//! The types and tonic server traits come from the `etcd-client` crate (`build-server`).
//! Requests are turned into the same [`crate::types::Command`]s and reads the HTTP API
//! makes, through the same [`StoreHandle`]; this module decides no store semantics. Its own
//! job is etcd's wire contract: field rules, defaults, and error texts, which clientv3
//! classifies by their message, so [`status`] maps every [`StoreError`] in one place.
//!
//! [`client_router`] serves gRPC and HTTP on one listener: a request whose content type is
//! `application/grpc…` goes to the gRPC services, everything else to `http::router`.

mod auth;
mod cluster;
mod kv;
mod lease;
mod watch;

use std::convert::Infallible;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Router;
use etcd_client::proto::{PbKeyValue, PbResponseHeader};
use tonic::Status;
use tower::ServiceExt;

use crate::error::StoreError;
use crate::node::StoreHandle;
use crate::types::{CommandError, KeyValue};
use auth::Guarded;

/// etcd's error texts that clients match on (etcd's `rpctypes`).
pub mod etcd_errors {
    pub const KEY_NOT_PROVIDED: &str = "etcdserver: key is not provided";
    pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
    pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
    pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
    pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
    pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
    pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
    pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
    pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
    pub const LEASE_EXIST: &str = "etcdserver: lease already exists";
    pub const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
    pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
    pub const MEMBER_BAD_URLS: &str = "etcdserver: given member URLs are invalid";
    pub const NO_LEADER: &str = "etcdserver: no leader";
    pub const TIMEOUT: &str = "etcdserver: request timed out";
    pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
    pub const USER_EMPTY: &str = "etcdserver: user name is empty";
    pub const INVALID_AUTH_TOKEN: &str = "etcdserver: invalid auth token";
    pub const AUTH_FAILED: &str = "etcdserver: authentication failed, invalid user ID or password";
    pub const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";
}

/// Room a gRPC message may take beyond the request limit (etcd allows 512 KiB of framing
/// and field overhead beyond `--max-request-bytes`, then answers "request is too large").
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// One listener, two APIs: gRPC by content type, the HTTP API for everything else.
pub fn client_router(handle: StoreHandle) -> Router {
    let http = crate::http::router(handle.clone());
    let grpc = grpc_router(handle);
    Router::new().fallback_service(tower::service_fn(move |req: Request| {
        let (http, grpc) = (http.clone(), grpc.clone());
        async move {
            let is_grpc = req
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            let resp = if is_grpc {
                grpc.oneshot(req).await
            } else {
                http.oneshot(req).await
            };
            Ok::<_, Infallible>(resp.into_response())
        }
    }))
}

fn grpc_router(h: StoreHandle) -> Router {
    use etcd_client::proto::{
        PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbWatchServer,
    };
    let max = h.config().limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let guard = auth::TokenCheck::new(h.config().client_token.clone());
    let kv = PbKvServer::new(kv::KvService(h.clone())).max_decoding_message_size(max);
    let watch = PbWatchServer::new(watch::WatchService {
        handle: h.clone(),
        tokens: guard.clone(),
    })
    .max_decoding_message_size(max);
    let lease = PbLeaseServer::new(lease::LeaseService(h.clone())).max_decoding_message_size(max);
    let cluster =
        PbClusterServer::new(cluster::ClusterService(h.clone())).max_decoding_message_size(max);
    let maintenance = PbMaintenanceServer::new(cluster::MaintenanceService(h.clone()))
        .max_decoding_message_size(max);
    tonic::service::Routes::new(Guarded::new(kv, guard.clone()))
        .add_service(watch)
        .add_service(Guarded::new(lease, guard.clone()))
        .add_service(Guarded::new(cluster, guard.clone()))
        .add_service(Guarded::new(maintenance, guard))
        .add_service(auth::AuthService::new(h))
        .into_axum_router()
}

/// The header etcd puts on every answer.
pub(crate) fn header(h: &StoreHandle, revision: i64) -> Option<PbResponseHeader> {
    Some(PbResponseHeader {
        cluster_id: h.mvcc().cluster_id(),
        member_id: h.id(),
        revision,
        raft_term: h.raft().metrics().borrow().current_term,
    })
}

pub(crate) fn pb_kv(kv: KeyValue) -> PbKeyValue {
    PbKeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A store error as etcd's gRPC status: the code and text etcd uses for the same case.
pub(crate) fn status(e: StoreError) -> Status {
    use etcd_errors::*;
    match e {
        StoreError::InvalidArgument(m) => Status::invalid_argument(m),
        StoreError::TooLarge(_) => Status::invalid_argument(REQUEST_TOO_LARGE),
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::Rejected(r) => match r {
            CommandError::LeaseNotFound(_) => Status::not_found(LEASE_NOT_FOUND),
            CommandError::LeaseExists(_) => Status::failed_precondition(LEASE_EXIST),
            CommandError::Compacted { .. } => Status::out_of_range(COMPACTED),
            CommandError::FutureRevision { .. } => Status::out_of_range(FUTURE_REV),
            CommandError::NoSpace { .. } => Status::resource_exhausted(NO_SPACE),
            CommandError::Storage(m) => Status::internal(format!("etcdserver: storage: {m}")),
        },
        StoreError::Unavailable(m) if m.contains("no leader") => {
            Status::unavailable(format!("{NO_LEADER} ({m})"))
        }
        StoreError::Unavailable(m) => Status::unavailable(format!("{TIMEOUT} ({m})")),
        StoreError::OutcomeUnknown(m) => Status::unavailable(format!("{TIMEOUT} ({m})")),
        StoreError::ResourceExhausted(m) => Status::resource_exhausted(m),
        StoreError::Internal(m) => Status::internal(m),
    }
}

/// A key etcd accepts: not empty, within the key limit.
pub(crate) fn check_key(h: &StoreHandle, key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument(etcd_errors::KEY_NOT_PROVIDED));
    }
    if key.len() > h.config().limits.max_key_bytes {
        return Err(Status::invalid_argument(etcd_errors::REQUEST_TOO_LARGE));
    }
    Ok(())
}

/// A value within the value limit.
pub(crate) fn check_value(h: &StoreHandle, value: &[u8]) -> Result<(), Status> {
    if value.len() > h.config().limits.max_value_bytes {
        return Err(Status::invalid_argument(etcd_errors::REQUEST_TOO_LARGE));
    }
    Ok(())
}

/// A command result of the wrong kind (a bug, never caused by input).
pub(crate) fn unexpected(r: crate::types::CommandResult) -> Status {
    Status::internal(format!("unexpected result {r:?}"))
}

/// An answer for a method of a newer etcd version than Miniku serves.
pub(crate) fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("miniku: {what} is not supported by this store"))
}
