//! `PUT|GET|DELETE /v1/kv/{key}` and `POST /v1/compact`.

use axum::body::Body;
use axum::extract::State;
use axum::http::Uri;
use axum::Json;

use super::error::{invalid, too_large, HttpError};
use super::{json_body, key_from_path, range_end_of, read_body, Params};
use crate::api::{CompactRequest, CompactResponse, DeleteResponse, PutResponse, RangeResponse};
use crate::error::StoreError;
use crate::node::StoreHandle;
use crate::types::{Command, CommandResult, DeleteOp, PutOp, RangeOp};

/// Most pairs one range answer carries; beyond it `more` is true and the client pages on.
pub const MAX_RANGE_PAGE: i64 = 10_000;

const PREFIX: &str = "/v1/kv/";

pub fn unexpected(r: CommandResult) -> HttpError {
    HttpError(StoreError::Internal(format!("unexpected result {r:?}")))
}

pub async fn empty_key() -> HttpError {
    invalid("the key is empty: use /v1/kv/{key}")
}

pub async fn put(
    State(h): State<StoreHandle>,
    uri: Uri,
    body: Body,
) -> Result<Json<PutResponse>, HttpError> {
    let params = Params::parse(uri.query(), &["lease", "prev_kv"])?;
    let key = key_from_path(uri.path(), PREFIX, &h)?;
    let lease = params.non_negative("lease")?;
    let prev_kv = params.bool("prev_kv")?;
    let value = read_body(body, &h).await?;
    let max = h.config().limits.max_value_bytes;
    if value.len() > max {
        return Err(too_large(format!(
            "the value is {} bytes; the limit is {max}",
            value.len()
        )));
    }
    let op = PutOp {
        key,
        value: value.to_vec(),
        lease,
        prev_kv,
    };
    match h.write(Command::Put(op)).await? {
        CommandResult::Put { revision, prev_kv } => Ok(Json(PutResponse {
            header: h.header(revision),
            prev_kv: prev_kv.map(Into::into),
        })),
        other => Err(unexpected(other)),
    }
}

/// Caps a client's limit at one page.
pub fn page_limit(limit: i64) -> i64 {
    if limit == 0 || limit > MAX_RANGE_PAGE {
        MAX_RANGE_PAGE
    } else {
        limit
    }
}

pub async fn get(State(h): State<StoreHandle>, uri: Uri) -> Result<Json<RangeResponse>, HttpError> {
    let params = Params::parse(
        uri.query(),
        &[
            "prefix",
            "range_end",
            "limit",
            "revision",
            "keys_only",
            "count_only",
            "serializable",
        ],
    )?;
    let key = key_from_path(uri.path(), PREFIX, &h)?;
    let op = RangeOp {
        range_end: range_end_of(&key, &params)?,
        key,
        limit: page_limit(params.non_negative("limit")?),
        revision: params.non_negative("revision")?,
        keys_only: params.bool("keys_only")?,
        count_only: params.bool("count_only")?,
    };
    if !params.bool("serializable")? {
        h.read_barrier().await?;
    }
    let r = h.mvcc().range(&op)?;
    Ok(Json(RangeResponse {
        header: h.header(h.mvcc().current_revision()),
        kvs: r.kvs.into_iter().map(Into::into).collect(),
        count: r.count,
        more: r.more,
    }))
}

pub async fn delete(
    State(h): State<StoreHandle>,
    uri: Uri,
) -> Result<Json<DeleteResponse>, HttpError> {
    let params = Params::parse(uri.query(), &["prefix", "range_end", "prev_kv"])?;
    let key = key_from_path(uri.path(), PREFIX, &h)?;
    let op = DeleteOp {
        range_end: range_end_of(&key, &params)?,
        key,
        prev_kv: params.bool("prev_kv")?,
    };
    match h.write(Command::DeleteRange(op)).await? {
        CommandResult::DeleteRange {
            revision,
            deleted,
            prev_kvs,
        } => Ok(Json(DeleteResponse {
            header: h.header(revision),
            deleted,
            prev_kvs: prev_kvs.into_iter().map(Into::into).collect(),
        })),
        other => Err(unexpected(other)),
    }
}

pub async fn compact(
    State(h): State<StoreHandle>,
    body: Body,
) -> Result<Json<CompactResponse>, HttpError> {
    let req: CompactRequest = json_body(body, &h).await?;
    if req.revision <= 0 {
        return Err(invalid(format!(
            "revision must be >= 1, not {}",
            req.revision
        )));
    }
    match h
        .write(Command::Compact {
            revision: req.revision,
        })
        .await?
    {
        CommandResult::Compact { revision } => Ok(Json(CompactResponse {
            header: h.header(revision),
        })),
        other => Err(unexpected(other)),
    }
}
