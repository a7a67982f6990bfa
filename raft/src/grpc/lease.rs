//! etcd's Lease service: grant, revoke, keep-alive streams, time-to-live and the lease list.
//! As in etcd, an unknown lease is an error for grant-style calls but a TTL of 0 on a
//! keep-alive stream and of -1 from time-to-live.

use std::pin::Pin;

use etcd_client::proto::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse,
    PbLeaseLeasesRequest, PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse,
    PbLeaseService, PbLeaseStatus, PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{etcd_errors, header, status, unexpected};
use crate::error::StoreError;
use crate::http::lease::MAX_LEASE_TTL;
use crate::node::StoreHandle;
use crate::types::{Command, CommandError, CommandResult};

pub struct LeaseService(pub StoreHandle);

fn is_lease_not_found(e: &StoreError) -> bool {
    matches!(e, StoreError::Rejected(CommandError::LeaseNotFound(_)))
}

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let h = &self.0;
        let r = request.into_inner();
        if r.ttl > MAX_LEASE_TTL {
            return Err(Status::out_of_range(etcd_errors::LEASE_TTL_TOO_LARGE));
        }
        if r.id < 0 {
            return Err(Status::invalid_argument(
                "etcdserver: lease id must not be negative (0 lets the store choose)",
            ));
        }
        // etcd raises a TTL below its minimum to the minimum instead of refusing it.
        let ttl = r.ttl.max(1);
        match h.write(Command::LeaseGrant { id: r.id, ttl }).await {
            Ok(CommandResult::LeaseGrant { revision, id, ttl }) => {
                Ok(Response::new(PbLeaseGrantResponse {
                    header: header(h, revision),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(status(e)),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let h = &self.0;
        let id = request.into_inner().id;
        match h.write(Command::LeaseRevoke { id }).await {
            Ok(CommandResult::LeaseRevoke { revision }) => {
                Ok(Response::new(PbLeaseRevokeResponse {
                    header: header(h, revision),
                }))
            }
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(status(e)),
        }
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<PbLeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let h = self.0.clone();
        let requests = request.into_inner();
        // One answer per request, in order; the stream ends when the client's does, or at
        // the first error that is not "no such lease".
        let answers = requests
            .then(move |req| {
                let h = h.clone();
                async move {
                    let id = req?.id;
                    let ttl = match h.lease_keepalive(id).await {
                        Ok(ttl) => ttl,
                        Err(e) if is_lease_not_found(&e) => 0,
                        Err(e) => return Err(status(e)),
                    };
                    Ok(PbLeaseKeepAliveResponse {
                        header: header(&h, h.mvcc().current_revision()),
                        id,
                        ttl,
                    })
                }
            })
            .scan(false, |failed, item| {
                let out = if *failed {
                    None
                } else {
                    *failed = item.is_err();
                    Some(item)
                };
                futures::future::ready(out)
            });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let h = &self.0;
        let r = request.into_inner();
        let revision = h.mvcc().current_revision();
        match h.lease_time_to_live(r.id).await {
            Ok(s) => Ok(Response::new(PbLeaseTimeToLiveResponse {
                header: header(h, revision),
                id: s.id,
                ttl: s.remaining_ttl,
                granted_ttl: s.granted_ttl,
                keys: if r.keys { s.keys } else { Vec::new() },
            })),
            Err(e) if is_lease_not_found(&e) => Ok(Response::new(PbLeaseTimeToLiveResponse {
                header: header(h, revision),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            })),
            Err(e) => Err(status(e)),
        }
    }

    async fn lease_leases(
        &self,
        _request: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        let h = &self.0;
        h.read_barrier().await.map_err(status)?;
        Ok(Response::new(PbLeaseLeasesResponse {
            header: header(h, h.mvcc().current_revision()),
            leases: h
                .mvcc()
                .leases()
                .into_iter()
                .map(|(id, _)| PbLeaseStatus { id })
                .collect(),
        }))
    }
}
