//! The client-facing HTTP API of a store member: KV (`kv`), transactions (`txn`), leases
//! (`lease`), watches as Server-Sent Events (`watch`), cluster membership, health and
//! metrics (`cluster`). Errors become JSON in one place (`error`).
//!
//! Keys travel in the URL path (`/v1/kv/{key}`), percent-encoded, so any bytes can be a key;
//! query parameters are parsed strictly (unknown ones are refused). This module turns
//! requests into [`crate::types::Command`]s and reads; it decides no store semantics.

pub mod cluster;
pub mod error;
pub mod kv;
pub mod lease;
pub mod txn;
pub mod watch;

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use percent_encoding::percent_decode;

use crate::node::StoreHandle;
use error::{invalid, too_large, HttpError};

pub fn router(handle: StoreHandle) -> Router {
    Router::new()
        .route(
            "/v1/kv/",
            get(kv::empty_key).put(kv::empty_key).delete(kv::empty_key),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/txn", post(txn::txn))
        .route("/v1/lease", post(lease::grant))
        .route("/v1/leases", get(lease::list))
        .route(
            "/v1/lease/{id}",
            get(lease::time_to_live).delete(lease::revoke),
        )
        .route("/v1/lease/{id}/keepalive", post(lease::keepalive))
        .route("/v1/compact", post(kv::compact))
        .route("/v1/watch/{*key}", get(watch::watch))
        .route("/v1/cluster", get(cluster::cluster))
        .route("/v1/cluster/members", post(cluster::add_member))
        .route("/v1/cluster/members/{id}", delete(cluster::remove_member))
        .route(
            "/v1/cluster/members/{id}/promote",
            post(cluster::promote_member),
        )
        .route("/v1/alarms", get(cluster::alarms))
        .route("/health", get(cluster::health))
        .route("/metrics", get(cluster::metrics))
        .fallback(|| async {
            HttpError(crate::error::StoreError::NotFound(
                "no such endpoint: see /v1/kv, /v1/txn, /v1/lease, /v1/watch, /v1/cluster".into(),
            ))
        })
        .method_not_allowed_fallback(|| async {
            let mut r = invalid("this endpoint does not accept that method").into_response();
            *r.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
            r
        })
        .layer(axum::middleware::from_fn(refuse_stray_query))
        .layer(axum::middleware::from_fn_with_state(
            crate::auth::Guard {
                token: handle.config().client_token.clone(),
                open_paths: &["/health"],
            },
            crate::auth::require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(
            BodyLimit {
                max: handle.config().limits.max_request_bytes,
                too_large: |max| {
                    too_large(format!("the request body is larger than {max} bytes"))
                        .into_response()
                },
            },
            buffer_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            handle.clone(),
            observe,
        ))
        .layer(axum::middleware::from_fn_with_state(
            handle.id(),
            sign_answer,
        ))
        .with_state(handle)
}

/// The header on every answer of a store member (its id), as etcd's `X-Etcd-Cluster-Id`:
/// a client that reaches another service on a configured endpoint (a real etcd, a web
/// server) sees it missing and tries the next endpoint instead of taking that answer as
/// the store's.
pub const MEMBER_HEADER: &str = "x-miniku-member";

async fn sign_answer(State(id): State<crate::types::NodeId>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(MEMBER_HEADER, axum::http::HeaderValue::from(id));
    resp
}

/// Records every request's endpoint, status and latency.
async fn observe(State(handle): State<StoreHandle>, req: Request, next: Next) -> Response {
    let endpoint = endpoint_name(
        req.extensions().get::<MatchedPath>().map(|p| p.as_str()),
        req.method(),
    );
    let started = Instant::now();
    let resp = next.run(req).await;
    handle
        .metrics()
        .observe_request(endpoint, resp.status().as_u16(), started.elapsed());
    resp
}

fn endpoint_name(path: Option<&str>, method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match (path, method) {
        (Some("/v1/kv/{*key}"), &Method::PUT) => "kv_put",
        (Some("/v1/kv/{*key}"), &Method::GET) => "kv_range",
        (Some("/v1/kv/{*key}"), &Method::DELETE) => "kv_delete",
        (Some("/v1/txn"), _) => "txn",
        (Some("/v1/lease"), _) | (Some("/v1/lease/{id}"), _) | (Some("/v1/leases"), _) => "lease",
        (Some("/v1/lease/{id}/keepalive"), _) => "lease_keepalive",
        (Some("/v1/compact"), _) => "compact",
        (Some("/v1/watch/{*key}"), _) => "watch",
        (Some("/v1/cluster"), _)
        | (Some("/v1/cluster/members"), _)
        | (Some("/v1/cluster/members/{id}"), _)
        | (Some("/v1/cluster/members/{id}/promote"), _) => "cluster",
        (Some("/health"), _) => "health",
        (Some("/metrics"), _) => "metrics",
        _ => "other",
    }
}

/// Query parameters, percent-decoded to bytes, in order.
pub struct Params(Vec<(String, Vec<u8>)>);

impl Params {
    /// Parses `query`, refusing parameters not in `allowed`.
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Params, HttpError> {
        let mut out = Vec::new();
        for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_decode(name.as_bytes())
                .decode_utf8_lossy()
                .into_owned();
            if !allowed.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "unknown query parameter `{name}` (allowed: {})",
                    allowed.join(", ")
                )));
            }
            if out.iter().any(|(n, _)| *n == name) {
                return Err(invalid(format!("query parameter `{name}` given twice")));
            }
            out.push((name, percent_decode(value.as_bytes()).collect()));
        }
        Ok(Params(out))
    }

    fn raw(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.raw(name).map(<[u8]>::to_vec)
    }

    pub fn bool(&self, name: &str) -> Result<bool, HttpError> {
        match self.raw(name) {
            None => Ok(false),
            Some(b"") | Some(b"true") | Some(b"1") => Ok(true),
            Some(b"false") | Some(b"0") => Ok(false),
            Some(v) => Err(invalid(format!(
                "`{name}` must be true or false, not `{}`",
                String::from_utf8_lossy(v)
            ))),
        }
    }

    /// A non-negative integer, 0 when absent.
    pub fn non_negative(&self, name: &str) -> Result<i64, HttpError> {
        match self.raw(name) {
            None => Ok(0),
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    invalid(format!(
                        "`{name}` must be a non-negative integer, not `{}`",
                        String::from_utf8_lossy(v)
                    ))
                }),
        }
    }
}

/// The key in a path like `/v1/kv/<key>`, percent-decoded.
pub fn key_from_path(path: &str, prefix: &str, handle: &StoreHandle) -> Result<Vec<u8>, HttpError> {
    let raw = path.strip_prefix(prefix).unwrap_or("");
    let key: Vec<u8> = percent_decode(raw.as_bytes()).collect();
    check_key(&key, handle)?;
    Ok(key)
}

pub fn check_key(key: &[u8], handle: &StoreHandle) -> Result<(), HttpError> {
    check_key_within(key, &handle.config().limits)
}

/// A key is not empty and within `limits`.
pub fn check_key_within(key: &[u8], limits: &crate::config::Limits) -> Result<(), HttpError> {
    if key.is_empty() {
        return Err(invalid("the key is empty"));
    }
    let max = limits.max_key_bytes;
    if key.len() > max {
        return Err(too_large(format!(
            "the key is {} bytes; the limit is {max}",
            key.len()
        )));
    }
    Ok(())
}

/// The range end for `key` from `prefix=true` or `range_end=...` (empty = just the key).
pub fn range_end_of(key: &[u8], params: &Params) -> Result<Vec<u8>, HttpError> {
    let prefix = params.bool("prefix")?;
    crate::types::range_end(key, prefix, params.bytes("range_end"))
        .map_err(|_| invalid("give either prefix=true or range_end, not both"))
}

/// Reads a whole body, up to the request limit.
pub async fn read_body(body: Body, handle: &StoreHandle) -> Result<bytes::Bytes, HttpError> {
    let limit = handle.config().limits.max_request_bytes;
    read_limited(body, limit).await.map_err(|_| {
        too_large(format!(
            "the request body is over the limit of {limit} bytes"
        ))
    })
}

/// Reads a body of at most `limit` bytes. A larger one is read on and thrown away (up to
/// eight times the limit) before the error, so the client gets to read the 413 answer
/// instead of a reset connection. `Err(())` also covers a body that broke off.
pub async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes, ()> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return Err(()) };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                buf.extend_from_slice(&data);
            } else if seen > limit.saturating_mul(8) {
                break;
            }
        }
    }
    if seen > limit {
        Err(())
    } else {
        Ok(buf.freeze())
    }
}

/// Middleware: only the KV and watch routes take query parameters (each checks its own);
/// anywhere else a query string is a mistake worth a 400, not something to ignore.
async fn refuse_stray_query(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let takes_query = path.starts_with("/v1/kv/") || path.starts_with("/v1/watch/");
    if !takes_query && req.uri().query().is_some_and(|q| !q.is_empty()) {
        return invalid(format!("{path} takes no query parameters")).into_response();
    }
    next.run(req).await
}

/// The body limit of a server and how it says a body is too large.
#[derive(Clone, Copy)]
pub struct BodyLimit {
    pub max: usize,
    pub too_large: fn(usize) -> Response,
}

/// Middleware: reads every request body (within the limit) before any handler runs, so no
/// answer, not even an early 400 or 404, is sent while the client is still sending, which
/// would reset its connection before it read the answer. A larger body gets the server's
/// 413 after it has been read and thrown away (see [`read_limited`]).
pub async fn buffer_body(State(limit): State<BodyLimit>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match read_limited(body, limit.max).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(()) => (limit.too_large)(limit.max),
    }
}

/// Parses a JSON body strictly.
pub async fn json_body<T: serde::de::DeserializeOwned>(
    body: Body,
    handle: &StoreHandle,
) -> Result<T, HttpError> {
    let bytes = read_body(body, handle).await?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(format!("invalid JSON body: {e}")))
}
