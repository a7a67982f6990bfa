//! Inbound peer routes: Raft's messages go straight to the local [`Raft`]; follower-to-leader
//! requests go to whatever [`PeerService`] the node passes in. Bodies are bincode; any size
//! up to [`MAX_PEER_BODY`] is accepted (log batches and whole snapshots travel here).
//!
//! This module decodes, dispatches and encodes; what a request does is the service's. It
//! also notes when the last AppendEntries or snapshot arrived and when a vote was last granted
//! ([`Inbound`]).

use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::future::BoxFuture;
use openraft::raft::{AppendEntriesRequest, VoteRequest};

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
struct PeerState {
    raft: Raft,
    service: Arc<dyn PeerService>,
    metrics: Metrics,
    inbound: Inbound,
}

/// The peer API: Raft's RPCs for `raft`, calls for `service`, all behind `token` when given;
/// `metrics` times the appends it serves; every AppendEntries and snapshot that arrives,
/// and every vote granted, is noted in `inbound`.
pub fn router(
    raft: Raft,
    service: Arc<dyn PeerService>,
    token: Option<Token>,
    metrics: Metrics,
    inbound: Inbound,
) -> Router {
    Router::new()
        .route(paths::APPEND, post(append))
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
        })
}

fn reply<T: serde::Serialize>(v: &T) -> Response {
    match encode(v) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn bad_request(e: CodecError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!("undecodable peer request: {e}"),
    )
        .into_response()
}

async fn append(State(s): State<PeerState>, body: Bytes) -> Response {
    match decode::<AppendEntriesRequest<TypeConfig>>(&body) {
        Ok(req) => {
            Inbound::note(&s.inbound.append);
            let started = std::time::Instant::now();
            let answer = reply(&s.raft.append_entries(req).await);
            s.metrics
                .observe_stage(Stage::AppendServe, started.elapsed());
            answer
        }
        Err(e) => bad_request(e),
    }
}

async fn vote(State(s): State<PeerState>, body: Bytes) -> Response {
    match decode::<VoteRequest<NodeId>>(&body) {
        Ok(req) => {
            let answer = s.raft.vote(req).await;
            if answer.as_ref().is_ok_and(|r| r.vote_granted) {
                Inbound::note(&s.inbound.grant);
            }
            reply(&answer)
        }
        Err(e) => bad_request(e),
    }
}

async fn snapshot(State(s): State<PeerState>, body: Bytes) -> Response {
    match decode::<(Vote, SnapshotMeta, Vec<u8>)>(&body) {
        Ok((vote, meta, data)) => {
            Inbound::note(&s.inbound.append);
            let snapshot = Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            };
            reply(&s.raft.install_full_snapshot(vote, snapshot).await)
        }
        Err(e) => bad_request(e),
    }
}

async fn call(State(s): State<PeerState>, body: Bytes) -> Response {
    match decode::<PeerRequest>(&body) {
        Ok(req) => reply(&s.service.serve(req).await),
        Err(e) => bad_request(e),
    }
}
