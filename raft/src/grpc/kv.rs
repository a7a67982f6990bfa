//! etcd's KV service: Range (sorting and revision filters included), Put (with
//! `ignore_value` / `ignore_lease`), DeleteRange, Txn and Compact.

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbCompare, PbDeleteRequest, PbDeleteResponse,
    PbKvService, PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse,
    PbRangeStreamResponse, PbResponseOp, PbTargetUnion, PbTxnOpRequest, PbTxnOpResponse,
    PbTxnRequest, PbTxnResponse,
};
use tonic::{Request, Response, Status};

use super::{
    check_key, check_value, etcd_errors, header, pb_kv, status, unexpected, unimplemented,
};
use crate::error::StoreError;
use crate::node::StoreHandle;
use crate::types::{
    in_range, Command, CommandResult, Compare, CompareResult, CompareTarget, DeleteOp, PutOp,
    RangeOp, RangeResult, RequestOp, ResponseOp, TxnOp,
};

pub struct KvService(pub StoreHandle);

/// How many times a put with `ignore_value` / `ignore_lease` retries when the key changed
/// between reading it and writing it.
const IGNORE_RETRIES: usize = 16;

// etcd's enum values (rpc.proto).
const SORT_NONE: i32 = 0;
const SORT_ASCEND: i32 = 1;
const SORT_DESCEND: i32 = 2;
const TARGET_KEY: i32 = 0;
const TARGET_VERSION: i32 = 1;
const TARGET_CREATE: i32 = 2;
const TARGET_MOD: i32 = 3;
const TARGET_VALUE: i32 = 4;

/// A range read as the store runs it, plus what etcd does to the result afterwards
/// (revision filters, sorting, and the client's limit when those need every key first).
struct RangePlan {
    op: RangeOp,
    /// The client asked for keys only (values are dropped after sorting by value).
    keys_only: bool,
    limit: i64,
    order: i32,
    target: i32,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
}

impl RangePlan {
    fn new(h: &StoreHandle, r: &PbRangeRequest) -> Result<RangePlan, Status> {
        check_key(h, &r.key)?;
        if r.limit < 0 || r.revision < 0 {
            return Err(Status::invalid_argument(
                "etcdserver: limit and revision must not be negative",
            ));
        }
        if !(SORT_NONE..=SORT_DESCEND).contains(&r.sort_order)
            || !(TARGET_KEY..=TARGET_VALUE).contains(&r.sort_target)
        {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown sort order {} or sort target {}",
                r.sort_order, r.sort_target
            )));
        }
        // etcd: results come in key order, so sorting by another target defaults to
        // ascending.
        let order = if r.sort_target != TARGET_KEY && r.sort_order == SORT_NONE {
            SORT_ASCEND
        } else {
            r.sort_order
        };
        let reorders =
            !(order == SORT_NONE || (order == SORT_ASCEND && r.sort_target == TARGET_KEY));
        let filters = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        Ok(RangePlan {
            op: RangeOp {
                key: r.key.clone(),
                range_end: r.range_end.clone(),
                // Sorting and filters need every key before the limit is applied.
                limit: if reorders || filters { 0 } else { r.limit },
                revision: r.revision,
                // Sorting by value needs the values, even when only keys are answered.
                keys_only: r.keys_only && !(reorders && r.sort_target == TARGET_VALUE),
                count_only: r.count_only,
            },
            keys_only: r.keys_only,
            limit: r.limit,
            order,
            target: r.sort_target,
            min_mod: r.min_mod_revision,
            max_mod: r.max_mod_revision,
            min_create: r.min_create_revision,
            max_create: r.max_create_revision,
        })
    }

    fn finish(&self, h: &StoreHandle, r: RangeResult, revision: i64) -> PbRangeResponse {
        let mut kvs = r.kvs;
        let within = |v: i64, min: i64, max: i64| (min == 0 || v >= min) && (max == 0 || v <= max);
        kvs.retain(|kv| {
            within(kv.mod_revision, self.min_mod, self.max_mod)
                && within(kv.create_revision, self.min_create, self.max_create)
        });
        if self.order != SORT_NONE {
            kvs.sort_by(|a, b| {
                let ord = match self.target {
                    TARGET_VERSION => a.version.cmp(&b.version),
                    TARGET_CREATE => a.create_revision.cmp(&b.create_revision),
                    TARGET_MOD => a.mod_revision.cmp(&b.mod_revision),
                    TARGET_VALUE => a.value.cmp(&b.value),
                    _ => a.key.cmp(&b.key),
                };
                if self.order == SORT_DESCEND {
                    ord.reverse()
                } else {
                    ord
                }
            });
        }
        let mut more = r.more;
        if self.limit > 0 && kvs.len() as i64 > self.limit {
            kvs.truncate(self.limit as usize);
            more = true;
        }
        if self.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        PbRangeResponse {
            header: header(h, revision),
            kvs: kvs.into_iter().map(pb_kv).collect(),
            more,
            count: r.count,
        }
    }
}

fn put_op(h: &StoreHandle, p: &PbPutRequest) -> Result<PutOp, Status> {
    check_key(h, &p.key)?;
    check_value(h, &p.value)?;
    if p.lease < 0 {
        return Err(Status::not_found(etcd_errors::LEASE_NOT_FOUND));
    }
    Ok(PutOp {
        key: p.key.clone(),
        value: p.value.clone(),
        lease: p.lease,
        prev_kv: p.prev_kv,
    })
}

fn delete_op(h: &StoreHandle, d: &PbDeleteRequest) -> Result<DeleteOp, Status> {
    check_key(h, &d.key)?;
    Ok(DeleteOp {
        key: d.key.clone(),
        range_end: d.range_end.clone(),
        prev_kv: d.prev_kv,
    })
}

fn compare(h: &StoreHandle, c: &PbCompare) -> Result<Compare, Status> {
    check_key(h, &c.key)?;
    let number = |want: fn(&PbTargetUnion) -> Option<i64>| {
        c.target_union.as_ref().and_then(want).unwrap_or(0)
    };
    let target = match c.target {
        0 => CompareTarget::Version(number(|u| match u {
            PbTargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        1 => CompareTarget::CreateRevision(number(|u| match u {
            PbTargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        2 => CompareTarget::ModRevision(number(|u| match u {
            PbTargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        3 => CompareTarget::Value(match &c.target_union {
            Some(PbTargetUnion::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
        4 => CompareTarget::Lease(number(|u| match u {
            PbTargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        other => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown compare target {other}"
            )))
        }
    };
    let result = match c.result {
        0 => CompareResult::Equal,
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        other => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown compare result {other}"
            )))
        }
    };
    Ok(Compare {
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        target,
        result,
    })
}

/// One branch of a transaction, with the range plans of its reads in order.
fn branch(
    h: &StoreHandle,
    ops: &[etcd_client::proto::PbTxnRequestOp],
) -> Result<(Vec<RequestOp>, Vec<RangePlan>), Status> {
    let mut out = Vec::with_capacity(ops.len());
    let mut plans = Vec::new();
    for op in ops {
        match &op.request {
            Some(PbTxnOpRequest::RequestRange(r)) => {
                let plan = RangePlan::new(h, r)?;
                out.push(RequestOp::Range(plan.op.clone()));
                plans.push(plan);
            }
            Some(PbTxnOpRequest::RequestPut(p)) => {
                if p.ignore_value || p.ignore_lease {
                    return Err(unimplemented(
                        "ignore_value and ignore_lease inside a transaction",
                    ));
                }
                out.push(RequestOp::Put(put_op(h, p)?));
            }
            Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                out.push(RequestOp::DeleteRange(delete_op(h, d)?))
            }
            Some(PbTxnOpRequest::RequestTxn(_)) => {
                return Err(unimplemented("a transaction nested in a transaction"))
            }
            None => return Err(Status::invalid_argument("etcdserver: empty request op")),
        }
    }
    // etcd refuses a branch that writes one key twice (two puts, or a put inside a
    // deleted range).
    let puts: Vec<&[u8]> = out
        .iter()
        .filter_map(|o| match o {
            RequestOp::Put(p) => Some(p.key.as_slice()),
            _ => None,
        })
        .collect();
    for (i, k) in puts.iter().enumerate() {
        if puts[..i].contains(k) {
            return Err(Status::invalid_argument(etcd_errors::DUPLICATE_KEY));
        }
    }
    for o in &out {
        if let RequestOp::DeleteRange(d) = o {
            if puts.iter().any(|k| in_range(k, &d.key, &d.range_end)) {
                return Err(Status::invalid_argument(etcd_errors::DUPLICATE_KEY));
            }
        }
    }
    Ok((out, plans))
}

impl KvService {
    async fn write(&self, cmd: Command) -> Result<CommandResult, Status> {
        self.0.write(cmd).await.map_err(status)
    }

    /// A put that keeps the key's current value or lease: read it, then write it back in a
    /// transaction that holds only if the key did not change in between.
    async fn put_keeping(&self, p: PbPutRequest) -> Result<PbPutResponse, Status> {
        let h = &self.0;
        check_key(h, &p.key)?;
        if p.ignore_value && !p.value.is_empty() {
            return Err(Status::invalid_argument(etcd_errors::VALUE_PROVIDED));
        }
        if p.ignore_lease && p.lease != 0 {
            return Err(Status::invalid_argument(etcd_errors::LEASE_PROVIDED));
        }
        for _ in 0..IGNORE_RETRIES {
            h.read_barrier().await.map_err(status)?;
            let current = h
                .mvcc()
                .range(&RangeOp {
                    key: p.key.clone(),
                    ..RangeOp::default()
                })
                .map_err(|e| status(StoreError::Rejected(e)))?;
            let Some(kv) = current.kvs.into_iter().next() else {
                return Err(Status::invalid_argument(etcd_errors::KEY_NOT_FOUND));
            };
            let put = PutOp {
                key: p.key.clone(),
                value: if p.ignore_value {
                    kv.value.clone()
                } else {
                    p.value.clone()
                },
                lease: if p.ignore_lease { kv.lease } else { p.lease },
                prev_kv: p.prev_kv,
            };
            check_value(h, &put.value)?;
            let txn = TxnOp {
                compare: vec![Compare {
                    key: p.key.clone(),
                    range_end: Vec::new(),
                    target: CompareTarget::ModRevision(kv.mod_revision),
                    result: CompareResult::Equal,
                }],
                success: vec![RequestOp::Put(put)],
                failure: Vec::new(),
            };
            match self.write(Command::Txn(txn)).await? {
                CommandResult::Txn {
                    revision,
                    succeeded: true,
                    responses,
                } => {
                    let prev_kv = match responses.into_iter().next() {
                        Some(ResponseOp::Put { prev_kv }) => prev_kv.map(pb_kv),
                        _ => None,
                    };
                    return Ok(PbPutResponse {
                        header: header(h, revision),
                        prev_kv,
                    });
                }
                CommandResult::Txn { .. } => continue,
                other => return Err(unexpected(other)),
            }
        }
        Err(Status::aborted(
            "etcdserver: the key kept changing while its value or lease was being kept",
        ))
    }
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        let h = &self.0;
        let r = request.into_inner();
        let plan = RangePlan::new(h, &r)?;
        if !r.serializable {
            h.read_barrier().await.map_err(status)?;
        }
        let result = h
            .mvcc()
            .range(&plan.op)
            .map_err(|e| status(StoreError::Rejected(e)))?;
        Ok(Response::new(plan.finish(
            h,
            result,
            h.mvcc().current_revision(),
        )))
    }

    type RangeStreamStream = futures::stream::Empty<Result<PbRangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        _request: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(unimplemented("RangeStream (etcd 3.6)"))
    }

    async fn put(&self, request: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let p = request.into_inner();
        if p.ignore_value || p.ignore_lease {
            return self.put_keeping(p).await.map(Response::new);
        }
        let op = put_op(&self.0, &p)?;
        match self.write(Command::Put(op)).await? {
            CommandResult::Put { revision, prev_kv } => Ok(Response::new(PbPutResponse {
                header: header(&self.0, revision),
                prev_kv: prev_kv.map(pb_kv),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        let op = delete_op(&self.0, &request.into_inner())?;
        match self.write(Command::DeleteRange(op)).await? {
            CommandResult::DeleteRange {
                revision,
                deleted,
                prev_kvs,
            } => Ok(Response::new(PbDeleteResponse {
                header: header(&self.0, revision),
                deleted,
                prev_kvs: prev_kvs.into_iter().map(pb_kv).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let h = &self.0;
        let t = request.into_inner();
        let max = h.config().limits.max_txn_ops;
        if t.compare.len() > max || t.success.len() > max || t.failure.len() > max {
            return Err(Status::invalid_argument(etcd_errors::TOO_MANY_OPS));
        }
        let compare = t
            .compare
            .iter()
            .map(|c| compare(h, c))
            .collect::<Result<Vec<_>, _>>()?;
        let (success, success_plans) = branch(h, &t.success)?;
        let (failure, failure_plans) = branch(h, &t.failure)?;
        let txn = TxnOp {
            compare,
            success,
            failure,
        };
        match self.write(Command::Txn(txn)).await? {
            CommandResult::Txn {
                revision,
                succeeded,
                responses,
            } => {
                let mut plans = if succeeded {
                    success_plans
                } else {
                    failure_plans
                }
                .into_iter();
                let responses = responses
                    .into_iter()
                    .map(|r| PbResponseOp {
                        response: Some(match r {
                            ResponseOp::Range(rr) => match plans.next() {
                                Some(plan) => {
                                    PbTxnOpResponse::ResponseRange(plan.finish(h, rr, revision))
                                }
                                None => PbTxnOpResponse::ResponseRange(PbRangeResponse {
                                    header: header(h, revision),
                                    count: rr.count,
                                    more: rr.more,
                                    kvs: rr.kvs.into_iter().map(pb_kv).collect(),
                                }),
                            },
                            ResponseOp::Put { prev_kv } => {
                                PbTxnOpResponse::ResponsePut(PbPutResponse {
                                    header: header(h, revision),
                                    prev_kv: prev_kv.map(pb_kv),
                                })
                            }
                            ResponseOp::DeleteRange { deleted, prev_kvs } => {
                                PbTxnOpResponse::ResponseDeleteRange(PbDeleteResponse {
                                    header: header(h, revision),
                                    deleted,
                                    prev_kvs: prev_kvs.into_iter().map(pb_kv).collect(),
                                })
                            }
                        }),
                    })
                    .collect();
                Ok(Response::new(PbTxnResponse {
                    header: header(h, revision),
                    succeeded,
                    responses,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        request: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        let c = request.into_inner();
        // Compaction is applied (and flushed with the entry) before the answer, so
        // `physical` needs no extra wait.
        match self
            .write(Command::Compact {
                revision: c.revision,
            })
            .await?
        {
            CommandResult::Compact { revision } => Ok(Response::new(PbCompactionResponse {
                header: header(&self.0, revision),
            })),
            other => Err(unexpected(other)),
        }
    }
}
