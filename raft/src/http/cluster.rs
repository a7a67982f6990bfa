//! `GET /v1/cluster`, `POST /v1/cluster/members`, `DELETE /v1/cluster/members/{id}`,
//! `GET /health` and `GET /metrics`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{invalid, HttpError};
use super::json_body;
use crate::api::{AddMemberRequest, ClusterResponse};
use crate::error::StoreError;
use crate::metrics::Gauges;
use crate::node::StoreHandle;

pub async fn cluster(State(h): State<StoreHandle>) -> Json<ClusterResponse> {
    Json(h.cluster())
}

pub async fn add_member(
    State(h): State<StoreHandle>,
    body: Body,
) -> Result<Json<ClusterResponse>, HttpError> {
    let req: AddMemberRequest = json_body(body, &h).await?;
    if req.id == 0 {
        return Err(invalid("member id must be >= 1"));
    }
    if !req.peer_addr.contains(':') {
        return Err(invalid(format!(
            "peer_addr `{}` is not HOST:PORT",
            req.peer_addr
        )));
    }
    h.add_member(req.id, req.peer_addr).await?;
    Ok(Json(h.cluster()))
}

pub async fn remove_member(
    State(h): State<StoreHandle>,
    Path(id): Path<String>,
) -> Result<Json<ClusterResponse>, HttpError> {
    let id: u64 = id
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| invalid(format!("member id must be a positive integer, not `{id}`")))?;
    h.remove_member(id).await?;
    Ok(Json(h.cluster()))
}

pub async fn health(State(h): State<StoreHandle>) -> Result<Json<serde_json::Value>, HttpError> {
    if let Some(fault) = h.storage_fault() {
        return Err(HttpError(StoreError::Unavailable(format!(
            "this member's storage failed: {fault}"
        ))));
    }
    let leader = h.raft().metrics().borrow().current_leader;
    match leader {
        Some(l) => Ok(Json(serde_json::json!({
            "health": "true",
            "member_id": h.id(),
            "leader_id": l,
            "revision": h.mvcc().current_revision(),
            "alarms": alarm_list(&h),
        }))),
        None => Err(HttpError(StoreError::Unavailable(
            "no leader is known to this member".into(),
        ))),
    }
}

/// `GET /v1/alarms`: the raised alarms (etcd's `etcdctl alarm list`).
pub async fn alarms(State(h): State<StoreHandle>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "header": h.header(h.mvcc().current_revision()),
        "alarms": alarm_list(&h),
    }))
}

fn alarm_list(h: &StoreHandle) -> Vec<serde_json::Value> {
    h.mvcc()
        .alarms()
        .into_iter()
        .map(|member| serde_json::json!({"member_id": member, "alarm": "NOSPACE"}))
        .collect()
}

pub async fn metrics(State(h): State<StoreHandle>) -> Response {
    let (term, leader, applied) = {
        let m = h.raft().metrics();
        let m = m.borrow();
        (
            m.current_term,
            m.current_leader,
            m.last_applied.map_or(0, |l| l.index),
        )
    };
    let text = h.metrics().render(&Gauges {
        member_id: h.id(),
        term,
        is_leader: leader == Some(h.id()),
        applied_index: applied,
        revision: h.mvcc().current_revision(),
        compact_revision: h.mvcc().compact_revision(),
        watchers: h.hub().watcher_count(),
    });
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
