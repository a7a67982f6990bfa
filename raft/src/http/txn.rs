//! `POST /v1/txn`: etcd's compare / success / failure transaction, validated and turned into
//! one [`Command::Txn`].

use axum::body::Body;
use axum::extract::State;
use axum::Json;

use super::error::{invalid, too_large, HttpError};
use super::kv::{page_limit, unexpected};
use super::{check_key_within, json_body};
use crate::api::{self, Bin, TxnRequest, TxnResponse};
use crate::config::Limits;
use crate::node::StoreHandle;
use crate::types::{
    self, Command, CommandResult, Compare, DeleteOp, PutOp, RangeOp, RequestOp, ResponseOp, TxnOp,
};

/// The range end of a transaction's range or delete.
fn range_end(key: &[u8], prefix: bool, end: Option<Bin>) -> Result<Vec<u8>, HttpError> {
    types::range_end(key, prefix, end.map(|e| e.0))
        .map_err(|_| invalid("give either prefix or range_end, not both"))
}

fn compare(c: api::Compare, limits: &Limits) -> Result<Compare, HttpError> {
    check_key_within(c.key.as_bytes(), limits)?;
    Compare::try_from(c).map_err(|e| invalid(e.to_string()))
}

fn op(o: api::RequestOp, limits: &Limits) -> Result<RequestOp, HttpError> {
    Ok(match o {
        api::RequestOp::Put(p) => {
            check_key_within(p.key.as_bytes(), limits)?;
            let max = limits.max_value_bytes;
            if p.value.0.len() > max {
                return Err(too_large(format!(
                    "a value is {} bytes; the limit is {max}",
                    p.value.0.len()
                )));
            }
            if p.lease < 0 {
                return Err(invalid("lease must not be negative"));
            }
            RequestOp::Put(PutOp {
                key: p.key.0,
                value: p.value.0,
                lease: p.lease,
                prev_kv: p.prev_kv,
            })
        }
        api::RequestOp::Range(r) => {
            check_key_within(r.key.as_bytes(), limits)?;
            if r.limit < 0 || r.revision < 0 {
                return Err(invalid("limit and revision must not be negative"));
            }
            RequestOp::Range(RangeOp {
                range_end: range_end(r.key.as_bytes(), r.prefix, r.range_end)?,
                key: r.key.0,
                limit: page_limit(r.limit),
                revision: r.revision,
                keys_only: r.keys_only,
                count_only: r.count_only,
            })
        }
        api::RequestOp::Delete(d) => {
            check_key_within(d.key.as_bytes(), limits)?;
            RequestOp::DeleteRange(DeleteOp {
                range_end: range_end(d.key.as_bytes(), d.prefix, d.range_end)?,
                key: d.key.0,
                prev_kv: d.prev_kv,
            })
        }
    })
}

/// Converts and validates a request against the store's limits.
pub fn to_txn(req: TxnRequest, limits: &Limits) -> Result<TxnOp, HttpError> {
    let max = limits.max_txn_ops;
    for (name, n) in [
        ("compare", req.compare.len()),
        ("success", req.success.len()),
        ("failure", req.failure.len()),
    ] {
        if n > max {
            return Err(invalid(format!(
                "{name} has {n} entries; the limit is {max}"
            )));
        }
    }
    Ok(TxnOp {
        compare: req
            .compare
            .into_iter()
            .map(|c| compare(c, limits))
            .collect::<Result<_, _>>()?,
        success: req
            .success
            .into_iter()
            .map(|o| op(o, limits))
            .collect::<Result<_, _>>()?,
        failure: req
            .failure
            .into_iter()
            .map(|o| op(o, limits))
            .collect::<Result<_, _>>()?,
    })
}

/// A transaction step's result as the API answers it.
pub fn response_op(r: ResponseOp) -> api::ResponseOp {
    match r {
        ResponseOp::Range(r) => api::ResponseOp::Range {
            kvs: r.kvs.into_iter().map(Into::into).collect(),
            count: r.count,
            more: r.more,
        },
        ResponseOp::Put { prev_kv } => api::ResponseOp::Put {
            prev_kv: prev_kv.map(Into::into),
        },
        ResponseOp::DeleteRange { deleted, prev_kvs } => api::ResponseOp::Delete {
            deleted,
            prev_kvs: prev_kvs.into_iter().map(Into::into).collect(),
        },
    }
}

pub async fn txn(State(h): State<StoreHandle>, body: Body) -> Result<Json<TxnResponse>, HttpError> {
    let req: TxnRequest = json_body(body, &h).await?;
    let txn = to_txn(req, &h.config().limits)?;
    match h.write(Command::Txn(txn)).await? {
        CommandResult::Txn {
            revision,
            succeeded,
            responses,
        } => Ok(Json(TxnResponse {
            header: h.header(revision),
            succeeded,
            responses: responses.into_iter().map(response_op).collect(),
        })),
        other => Err(unexpected(other)),
    }
}
