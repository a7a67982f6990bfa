//! `GET /v1/cluster`, `POST /v1/cluster/members`, `DELETE /v1/cluster/members/{id}`,
//! `POST /v1/cluster/members/{id}/promote`, `GET /health` and `GET /metrics`. Membership
//! policy (when a learner may vote, what counts as a quorum) is the store handle's: these
//! handlers parse and call it.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{invalid, HttpError};
use super::json_body;
use crate::api::{AddMemberRequest, ClusterResponse};
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
    h.add_member(req.id, req.peer_addr, req.learner).await?;
    Ok(Json(h.cluster()))
}

pub async fn remove_member(
    State(h): State<StoreHandle>,
    Path(id): Path<String>,
) -> Result<Json<ClusterResponse>, HttpError> {
    h.remove_member(member_id(&id)?).await?;
    Ok(Json(h.cluster()))
}

pub async fn promote_member(
    State(h): State<StoreHandle>,
    Path(id): Path<String>,
) -> Result<Json<ClusterResponse>, HttpError> {
    h.promote_member(member_id(&id)?).await?;
    Ok(Json(h.cluster()))
}

fn member_id(id: &str) -> Result<u64, HttpError> {
    id.parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| invalid(format!("member id must be a positive integer, not `{id}`")))
}

pub async fn health(State(h): State<StoreHandle>) -> Result<Json<serde_json::Value>, HttpError> {
    let leader = h.health().await?;
    Ok(Json(serde_json::json!({
        "header": h.header(h.mvcc().current_revision()),
        "health": "true",
        "member_id": h.id(),
        "leader_id": leader,
        "revision": h.mvcc().current_revision(),
        "alarms": alarm_list(&h),
    })))
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
