//! Inbound peer routes: Raft's messages go straight to the local [`Raft`]; follower-to-leader
//! requests go to whatever [`PeerService`] the node passes in. Bodies are bincode; any size
//! up to [`MAX_PEER_BODY`] is accepted (log batches and whole snapshots travel here).
//!
//! The same appends and calls also arrive over peer streams ([`super::stream`]), opened
//! here by an HTTP upgrade behind the same token; both paths share the handlers below.
//!
//! This module decodes, dispatches and encodes; what a request does is the service's. It
//! also notes when the last AppendEntries or snapshot arrived and when a vote was last granted
//! ([`Inbound`]).

use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::future::BoxFuture;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use tokio::sync::watch;

use super::client::paths;
use super::{PeerError, PeerRequest, PeerResponse};
use crate::auth::Token;
use crate::codec::{decode, encode, CodecError};
use crate::metrics::{Metrics, Stage};
use crate::types::{NodeId, Raft, Snapshot, SnapshotMeta, TypeConfig, Vote};

/// What answers the follower-to-leader requests ([`PeerRequest`]) this member receives.
pub trait PeerService: Send + Sync {
    fn serve(&self, req: PeerRequest) -> BoxFuture<'_, Result<PeerResponse, PeerError>>;
}

/// Largest peer request body: a whole snapshot must fit.
pub const MAX_PEER_BODY: usize = 1 << 30;

/// What arrived lately: when this member last received an AppendEntries (a heartbeat
/// included) or a whole snapshot (on a follower, the last sign of life from its leader),
/// and when it last granted its vote to a candidate.
#[derive(Clone, Default)]
pub struct Inbound {
    append: Arc<Mutex<Option<Instant>>>,
    grant: Arc<Mutex<Option<Instant>>>,
}

impl Inbound {
    /// When the last AppendEntries or snapshot arrived; `None` if none did since this
    /// member started.
    pub fn last_append(&self) -> Option<Instant> {
        *self.append.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When this member last granted its vote; `None` if it did not since it started.
    pub fn last_grant(&self) -> Option<Instant> {
        *self.grant.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(at: &Mutex<Option<Instant>>) {
        *at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

#[derive(Clone)]
pub(crate) struct PeerState {
    raft: Raft,
    service: Arc<dyn PeerService>,
    metrics: Metrics,
    inbound: Inbound,
    /// Turns true when this member stops: open peer streams end then.
    stopped: watch::Receiver<bool>,
}

/// The peer API: Raft's RPCs for `raft`, calls for `service`, all behind `token` when given;
/// `metrics` times the appends it serves; every AppendEntries and snapshot that arrives,
/// and every vote granted, is noted in `inbound`. Peer streams opened on it end once
/// `stopped` turns true.
pub fn router(
    raft: Raft,
    service: Arc<dyn PeerService>,
    token: Option<Token>,
    metrics: Metrics,
    inbound: Inbound,
    stopped: watch::Receiver<bool>,
) -> Router {
    Router::new()
        .route(paths::APPEND, post(append))
        .route(paths::STREAM, get(stream))
        .route(paths::VOTE, post(vote))
        .route(paths::SNAPSHOT, post(snapshot))
        .route(paths::CALL, post(call))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        // Without the cluster's secret nothing here runs: no append, vote, snapshot or call.
        .layer(axum::middleware::from_fn_with_state(
            crate::auth::Guard {
                token,
                open_paths: &[],
            },
            crate::auth::require_token,
        ))
        .with_state(PeerState {
            raft,
            service,
            metrics,
            inbound,
            stopped,
        })
}

/// Why a peer request got no answer from its handler: the HTTP routes say 400 and 500,
/// a stream says [`super::stream::Status`].
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("undecodable peer request: {0}")]
    Undecodable(CodecError),
    #[error("unencodable peer answer: {0}")]
    Unencodable(CodecError),
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Refusal> {
    encode(v).map_err(Refusal::Unencodable)
}

fn respond(answer: Result<Vec<u8>, Refusal>) -> Response {
    match answer {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e @ Refusal::Undecodable(_)) => {
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        Err(e @ Refusal::Unencodable(_)) => {
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

/// An AppendEntries (bincode) and its encoded answer; the HTTP route and streams share it.
pub(crate) async fn answer_append(s: &PeerState, body: &[u8]) -> Result<Vec<u8>, Refusal> {
    let req = decode::<AppendEntriesRequest<TypeConfig>>(body).map_err(Refusal::Undecodable)?;
    Inbound::note(&s.inbound.append);
    let started = Instant::now();
    let answer = reply(&s.raft.append_entries(req).await);
    s.metrics
        .observe_stage(Stage::AppendServe, started.elapsed());
    answer
}

/// A [`PeerRequest`] (bincode) and the service's encoded answer.
pub(crate) async fn answer_call(s: &PeerState, body: &[u8]) -> Result<Vec<u8>, Refusal> {
    let req = decode::<PeerRequest>(body).map_err(Refusal::Undecodable)?;
    reply(&s.service.serve(req).await)
}

async fn append(State(s): State<PeerState>, body: Bytes) -> Response {
    respond(answer_append(&s, &body).await)
}

async fn vote(State(s): State<PeerState>, body: Bytes) -> Response {
    let answer = async {
        let req = decode::<VoteRequest<NodeId>>(&body).map_err(Refusal::Undecodable)?;
        let answer = s.raft.vote(req).await;
        if answer.as_ref().is_ok_and(|r| r.vote_granted) {
            Inbound::note(&s.inbound.grant);
        }
        reply(&answer)
    };
    respond(answer.await)
}

async fn snapshot(State(s): State<PeerState>, body: Bytes) -> Response {
    let answer = async {
        let (vote, meta, data) =
            decode::<(Vote, SnapshotMeta, Vec<u8>)>(&body).map_err(Refusal::Undecodable)?;
        Inbound::note(&s.inbound.append);
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        };
        reply(&s.raft.install_full_snapshot(vote, snapshot).await)
    };
    respond(answer.await)
}

async fn call(State(s): State<PeerState>, body: Bytes) -> Response {
    respond(answer_call(&s, &body).await)
}

impl super::stream::Handler for PeerState {
    async fn append(&self, body: Bytes) -> Result<Vec<u8>, Refusal> {
        answer_append(self, &body).await
    }

    async fn call(&self, body: Bytes) -> Result<Vec<u8>, Refusal> {
        answer_call(self, &body).await
    }
}

/// `GET /peer/stream` with `Upgrade: miniku-peer/1`: switches the connection to a framed
/// stream ([`super::stream`]) served until the client closes it or this member stops.
async fn stream(State(s): State<PeerState>, req: Request) -> Response {
    let stopped = s.stopped.clone();
    upgrade_to_stream(s, stopped, req)
}

/// Answers an upgrade request `101 Switching Protocols` and serves the stream that follows
/// with `handler` (until `stopped`); anything else asked of the route gets a 400.
pub(crate) fn upgrade_to_stream<H: super::stream::Handler>(
    handler: H,
    stopped: watch::Receiver<bool>,
    mut req: Request,
) -> Response {
    let asked = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(super::stream::PROTOCOL));
    if !asked {
        return (
            StatusCode::BAD_REQUEST,
            format!("expected Upgrade: {}", super::stream::PROTOCOL),
        )
            .into_response();
    }
    let upgrade = hyper::upgrade::on(&mut req);
    // Owned by `stopped`: the stream ends when this member stops (or its client goes).
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                super::stream::serve(hyper_util::rt::TokioIo::new(upgraded), handler, stopped)
                    .await;
            }
            Err(e) => tracing::debug!(error = %e, "peer stream upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, super::stream::PROTOCOL)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
