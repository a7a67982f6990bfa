//! Leases: `POST /v1/lease` (grant), `POST /v1/lease/{id}/keepalive`, `GET /v1/lease/{id}`
//! (time to live and keys), `DELETE /v1/lease/{id}` (revoke), `GET /v1/leases`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::Json;

use super::error::{invalid, HttpError};
use super::json_body;
use super::kv::unexpected;
use crate::api::{
    Bin, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseRevokeResponse,
    LeaseTimeToLiveResponse,
};
use crate::node::StoreHandle;
use crate::types::{Command, CommandResult};

/// Longest lease TTL accepted (seconds): one year.
pub const MAX_LEASE_TTL: i64 = 365 * 24 * 3600;

fn lease_id(raw: &str) -> Result<i64, HttpError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| invalid(format!("lease id must be a positive integer, not `{raw}`")))
}

pub async fn grant(
    State(h): State<StoreHandle>,
    body: Body,
) -> Result<Json<LeaseGrantResponse>, HttpError> {
    let req: LeaseGrantRequest = json_body(body, &h).await?;
    if req.ttl < 1 || req.ttl > MAX_LEASE_TTL {
        return Err(invalid(format!(
            "ttl must be 1..={MAX_LEASE_TTL} seconds, not {}",
            req.ttl
        )));
    }
    if req.id < 0 {
        return Err(invalid("id must not be negative (0 lets the store choose)"));
    }
    match h
        .write(Command::LeaseGrant {
            id: req.id,
            ttl: req.ttl,
        })
        .await?
    {
        CommandResult::LeaseGrant { revision, id, ttl } => Ok(Json(LeaseGrantResponse {
            header: h.header(revision),
            id,
            ttl,
        })),
        other => Err(unexpected(other)),
    }
}

pub async fn keepalive(
    State(h): State<StoreHandle>,
    Path(id): Path<String>,
) -> Result<Json<LeaseKeepAliveResponse>, HttpError> {
    let id = lease_id(&id)?;
    let ttl = h.lease_keepalive(id).await?;
    Ok(Json(LeaseKeepAliveResponse {
        header: h.header(h.mvcc().current_revision()),
        id,
        ttl,
    }))
}

pub async fn time_to_live(
    State(h): State<StoreHandle>,
    Path(id): Path<String>,
) -> Result<Json<LeaseTimeToLiveResponse>, HttpError> {
    let id = lease_id(&id)?;
    let s = h.lease_time_to_live(id).await?;
    Ok(Json(LeaseTimeToLiveResponse {
        header: h.header(h.mvcc().current_revision()),
        id: s.id,
        ttl: s.remaining_ttl,
        granted_ttl: s.granted_ttl,
        keys: s.keys.into_iter().map(Bin).collect(),
    }))
}

pub async fn revoke(
    State(h): State<StoreHandle>,
    Path(id): Path<String>,
) -> Result<Json<LeaseRevokeResponse>, HttpError> {
    let id = lease_id(&id)?;
    match h.write(Command::LeaseRevoke { id }).await? {
        CommandResult::LeaseRevoke { revision } => Ok(Json(LeaseRevokeResponse {
            header: h.header(revision),
        })),
        other => Err(unexpected(other)),
    }
}

pub async fn list(State(h): State<StoreHandle>) -> Result<Json<serde_json::Value>, HttpError> {
    h.read_barrier().await?;
    let leases: Vec<serde_json::Value> = h
        .mvcc()
        .leases()
        .into_iter()
        .map(|(id, ttl)| serde_json::json!({"id": id, "ttl": ttl}))
        .collect();
    Ok(Json(serde_json::json!({
        "header": h.header(h.mvcc().current_revision()),
        "leases": leases,
    })))
}
