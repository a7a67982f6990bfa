//! etcd's Cluster service (member list, add, remove, promote) over the store's membership
//! changes, and its Maintenance service (status, alarms, hash, defragment). What Miniku's
//! storage cannot do as etcd does (`snapshot` of a bbolt file, leadership transfer) answers
//! an error that says what to use instead.

use std::pin::Pin;
use std::time::Duration;

use etcd_client::proto::{
    PbAlarmMember, PbAlarmRequest, PbAlarmResponse, PbClusterService, PbDefragmentRequest,
    PbDefragmentResponse, PbDowngradeRequest, PbDowngradeResponse, PbHashKvRequest,
    PbHashKvResponse, PbHashRequest, PbHashResponse, PbMaintenanceService, PbMember,
    PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest, PbMemberListResponse,
    PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest, PbMemberRemoveResponse,
    PbMemberUpdateRequest, PbMemberUpdateResponse, PbMoveLeaderRequest, PbMoveLeaderResponse,
    PbSnapshotRequest, PbSnapshotResponse, PbStatusRequest, PbStatusResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::{etcd_errors, header, status, unimplemented};
use crate::error::StoreError;
use crate::mvcc::fnv1a64;
use crate::node::StoreHandle;
use crate::types::{Command, NodeId, RangeOp};

/// The etcd API version this front implements (what `etcdctl endpoint status` shows).
pub const ETCD_API_VERSION: &str = "3.4.0";

/// How long `member list` waits for each member to say its client URL.
const CLIENT_URL_TIMEOUT: Duration = Duration::from_secs(1);

// etcd's AlarmRequest actions and alarm types.
const ALARM_GET: i32 = 0;
const ALARM_ACTIVATE: i32 = 1;
const ALARM_DEACTIVATE: i32 = 2;
const ALARM_NONE: i32 = 0;
const ALARM_NOSPACE: i32 = 1;

pub struct ClusterService(pub StoreHandle);

/// The name `member list` shows: the component name `scripts/cluster.sh` uses.
fn member_name(id: NodeId) -> String {
    format!("store{id}")
}

fn peer_url(h: &StoreHandle, addr: &str) -> String {
    let scheme = if h.config().peer_tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

/// Every member as etcd lists it, client URLs asked of each member.
async fn members(h: &StoreHandle) -> Vec<PbMember> {
    let cluster = h.cluster();
    let urls = h.member_client_urls(CLIENT_URL_TIMEOUT).await;
    cluster
        .members
        .into_iter()
        .map(|m| {
            let client_url = urls.get(&m.id).cloned().flatten();
            // etcd shows a member that never started without a name (etcdctl prints it
            // "unstarted"): here, a learner that does not answer. A voter has caught up
            // once, so it started.
            let started = m.voter || client_url.is_some();
            PbMember {
                id: m.id,
                name: if started {
                    member_name(m.id)
                } else {
                    String::new()
                },
                peer_ur_ls: vec![peer_url(h, &m.peer_addr)],
                client_ur_ls: client_url.into_iter().collect(),
                is_learner: !m.voter,
            }
        })
        .collect()
}

/// `http://host:port` → `host:port`; etcd refuses anything that is not such a URL.
fn peer_addr_of(url: &str) -> Result<String, Status> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| Status::invalid_argument(etcd_errors::MEMBER_BAD_URLS))?;
    let addr = rest.trim_end_matches('/');
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(addr.to_string())
        }
        _ => Err(Status::invalid_argument(etcd_errors::MEMBER_BAD_URLS)),
    }
}

/// Membership errors with etcd's codes: the store already words them as etcd does.
fn membership_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(_) => Status::not_found(etcd_errors::MEMBER_NOT_FOUND),
        StoreError::InvalidArgument(m) if m.starts_with("etcdserver:") => {
            Status::failed_precondition(m)
        }
        other => status(other),
    }
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(
        &self,
        request: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        let h = &self.0;
        let r = request.into_inner();
        let [url] = r.peer_ur_ls.as_slice() else {
            return Err(Status::invalid_argument(format!(
                "{}: give exactly one peer URL (Miniku members have one peer address)",
                etcd_errors::MEMBER_BAD_URLS
            )));
        };
        let addr = peer_addr_of(url)?;
        let cluster = h.cluster();
        if cluster.members.iter().any(|m| m.peer_addr == addr) {
            return Err(Status::failed_precondition(
                "etcdserver: Peer URLs already exists",
            ));
        }
        let id = cluster.members.iter().map(|m| m.id).max().unwrap_or(0) + 1;
        h.add_member(id, addr, r.is_learner)
            .await
            .map_err(membership_status)?;
        let members = members(h).await;
        let member = members.iter().find(|m| m.id == id).cloned();
        Ok(Response::new(PbMemberAddResponse {
            header: header(h, h.mvcc().current_revision()),
            member,
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        let h = &self.0;
        h.remove_member(request.into_inner().id)
            .await
            .map_err(membership_status)?;
        Ok(Response::new(PbMemberRemoveResponse {
            header: header(h, h.mvcc().current_revision()),
            members: members(h).await,
        }))
    }

    async fn member_update(
        &self,
        _request: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        Err(unimplemented(
            "changing a member's peer URL (remove the member and add it again)",
        ))
    }

    async fn member_list(
        &self,
        request: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        let h = &self.0;
        if request.into_inner().linearizable {
            h.read_barrier().await.map_err(status)?;
        }
        Ok(Response::new(PbMemberListResponse {
            header: header(h, h.mvcc().current_revision()),
            members: members(h).await,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        let h = &self.0;
        h.promote_member(request.into_inner().id)
            .await
            .map_err(membership_status)?;
        Ok(Response::new(PbMemberPromoteResponse {
            header: header(h, h.mvcc().current_revision()),
            members: members(h).await,
        }))
    }
}

pub struct MaintenanceService(pub StoreHandle);

/// A hash of every key-value pair as of `revision`, the same on every member that has
/// applied it (FNV-1a folded to 32 bits; etcd uses CRC-32C of its own encoding).
fn hash_kv(h: &StoreHandle, revision: i64) -> Result<u32, Status> {
    let all = h
        .mvcc()
        .range(&RangeOp {
            key: vec![0],
            range_end: vec![0],
            revision,
            ..RangeOp::default()
        })
        .map_err(|e| status(StoreError::Rejected(e)))?;
    let mut bytes = Vec::new();
    for kv in all.kvs {
        bytes.extend_from_slice(&(kv.key.len() as u64).to_be_bytes());
        bytes.extend_from_slice(&kv.key);
        bytes.extend_from_slice(&(kv.value.len() as u64).to_be_bytes());
        bytes.extend_from_slice(&kv.value);
        for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
            bytes.extend_from_slice(&n.to_be_bytes());
        }
    }
    let h64 = fnv1a64(&bytes);
    Ok((h64 ^ (h64 >> 32)) as u32)
}

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        let h = &self.0;
        let r = request.into_inner();
        let listed = |members: Vec<NodeId>| -> Vec<PbAlarmMember> {
            members
                .into_iter()
                .map(|member_id| PbAlarmMember {
                    member_id,
                    alarm: ALARM_NOSPACE,
                })
                .collect()
        };
        let alarms = match r.action {
            ALARM_GET => listed(h.mvcc().alarms()),
            ALARM_ACTIVATE | ALARM_DEACTIVATE => {
                match r.alarm {
                    ALARM_NOSPACE => {}
                    // Nothing to do for "no alarm".
                    ALARM_NONE => {
                        return Ok(Response::new(PbAlarmResponse {
                            header: header(h, h.mvcc().current_revision()),
                            alarms: Vec::new(),
                        }))
                    }
                    other => {
                        return Err(Status::invalid_argument(format!(
                            "miniku: alarm type {other} is not supported (only NOSPACE)"
                        )))
                    }
                }
                let raise = r.action == ALARM_ACTIVATE;
                let had = h.mvcc().alarms().contains(&r.member_id);
                if raise || had {
                    h.write(Command::Alarm {
                        member: r.member_id,
                        raise,
                    })
                    .await
                    .map_err(status)?;
                }
                if raise || had {
                    listed(vec![r.member_id])
                } else {
                    Vec::new()
                }
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "etcdserver: unknown alarm action {other}"
                )))
            }
        };
        Ok(Response::new(PbAlarmResponse {
            header: header(h, h.mvcc().current_revision()),
            alarms,
        }))
    }

    async fn status(
        &self,
        _request: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        let h = &self.0;
        let m = h.raft().metrics().borrow().clone();
        let is_learner = !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == h.id());
        let mut errors: Vec<String> = h
            .mvcc()
            .alarms()
            .into_iter()
            .map(|member| format!("memberID:{member} alarm:NOSPACE "))
            .collect();
        if let Some(fault) = h.storage_fault() {
            errors.push(format!("this member's storage failed: {fault}"));
        }
        let db_size = h.db_size() as i64;
        Ok(Response::new(PbStatusResponse {
            header: header(h, h.mvcc().current_revision()),
            version: ETCD_API_VERSION.into(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors,
            db_size_in_use: db_size,
            is_learner,
            storage_version: String::new(),
            db_size_quota: h.config().space.quota_bytes as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        let h = &self.0;
        h.flush().await.map_err(status)?;
        Ok(Response::new(PbDefragmentResponse {
            header: header(h, h.mvcc().current_revision()),
        }))
    }

    async fn hash(
        &self,
        _request: Request<PbHashRequest>,
    ) -> Result<Response<PbHashResponse>, Status> {
        let h = &self.0;
        let revision = h.mvcc().current_revision();
        Ok(Response::new(PbHashResponse {
            header: header(h, revision),
            hash: hash_kv(h, revision)?,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        let h = &self.0;
        let current = h.mvcc().current_revision();
        let revision = match request.into_inner().revision {
            0 => current,
            r => r,
        };
        Ok(Response::new(PbHashKvResponse {
            header: header(h, current),
            hash: hash_kv(h, revision)?,
            compact_revision: h.mvcc().compact_revision(),
            hash_revision: revision,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

    async fn snapshot(
        &self,
        _request: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented(
            "miniku: a snapshot is an etcd (bbolt) database file, which this store (sled) \
             cannot produce; back up a member by copying its --data-dir while it is stopped, \
             or export every key with `etcdctl get \"\" --from-key -w json`",
        ))
    }

    async fn move_leader(
        &self,
        _request: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        Err(unimplemented(
            "moving the leader (openraft 0.9 has no leadership transfer)",
        ))
    }

    async fn downgrade(
        &self,
        _request: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(unimplemented("Downgrade (etcd 3.5)"))
    }
}
