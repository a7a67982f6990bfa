//! The registry: typed create/get/list/update/delete/watch of Miniku objects over the store
//! client, and the one key layout: `/registry/<kind>/<namespace>/<name>` for namespaced kinds,
//! `/registry/<kind>/<name>` for the others; values are the objects' Kubernetes JSON.
//!
//! Objects are addressed by their *key*, the part after `/registry/<kind>/`
//! (`default/web-1a2b3c4d` for a pod, `node-a` for a node). A kind says how it is stored
//! ([`Object::to_stored`], [`Object::from_stored`]): Miniku's views convert to and from the
//! Kubernetes shape there, so the Kubernetes API and the components read the same bytes.
//!
//! Every write is conditional, so no component can clobber another's change:
//! - create: a transaction that puts only if the key does not exist (`409` otherwise);
//! - update and delete: a transaction comparing the key's `mod_revision` with the object's
//!   `resourceVersion` (a stale one is a [`RegistryError::Conflict`]); 0 means "whatever is
//!   there now, as long as it exists".
//!
//! An object's `resourceVersion` is its key's `mod_revision`, set on every read. This module
//! knows nothing of HTTP or of what the objects mean.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use miniku_store::api::{
    Bin, Compare, CompareResult, CompareTarget, ErrorCode, PutRequest, RangeRequest, RequestOp,
    ResponseOp, TxnRequest,
};
use miniku_store::client::{ClientError, GetOptions, StoreClient, WatchOptions};

pub mod backend;

pub use backend::StoreBackend;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{kube, Node, NodeLease, Pod, ReplicaSet};

/// Root of every Miniku key in the store.
pub const ROOT: &str = "/registry/";

/// A kind of object the registry stores.
pub trait Object:
    Serialize + DeserializeOwned + Clone + Send + Sync + std::fmt::Debug + 'static
{
    /// Plural, lowercase: the key segment and the URL segment.
    const KIND: &'static str;
    /// Whether objects of the kind live in namespaces.
    const NAMESPACED: bool;
    /// Where the object is below `/registry/<kind>/`: `namespace/name`, or `name` for a kind
    /// that is not namespaced.
    fn key(&self) -> String;
    fn resource_version(&self) -> i64;
    fn set_resource_version(&mut self, rv: i64);
    /// The bytes the store holds for the object.
    fn to_stored(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self).map_err(|e| e.to_string())
    }
    /// The object from the bytes the store holds (its resourceVersion is set afterwards).
    fn from_stored(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
    /// Whether objects of the kind hold [`Object::claims`] (then updates and deletes read the
    /// stored object first, to know which claims to take and release).
    const HAS_CLAIMS: bool = false;
    /// Names the object holds exclusively while it exists (a Service's node ports,
    /// `nodeports/30080`): each is a store key below [`CLAIMS`], created with the object in
    /// one create-only transaction (the write fails with [`RegistryError::Claimed`] if
    /// another object holds it) and deleted with it, so no two objects ever hold one name.
    fn claims(&self) -> Vec<String> {
        Vec::new()
    }
    /// How long objects of the kind live after they are written (Kubernetes' `--event-ttl`
    /// for Events); None: until deleted. Every create and update attaches the object to a
    /// store lease shared by the writes of one [`TTL_BATCH`], so the store holds one lease
    /// per batch instead of one per object, and an object lives between its TTL and its TTL
    /// plus a batch.
    const TTL: Option<Duration> = None;
}

/// How long writes of a kind with [`Object::TTL`] share one store lease.
pub const TTL_BATCH: Duration = Duration::from_secs(60);

/// Where [`Object::claims`] live: `/registry/claims/<claim>`, each holding its owner's key.
pub const CLAIMS: &str = "/registry/claims/";

fn claim_key(claim: &str) -> String {
    format!("{CLAIMS}{claim}")
}

/// The name part of a key (`web` of `default/web`), for messages.
pub fn name_of_key(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Implements [`Object`] for one of Miniku's views, stored as the Kubernetes object `$kube`.
macro_rules! view_object {
    ($ty:ty, $kind:literal, $namespaced:literal, $kube:ty, $into:path, $from:path) => {
        impl Object for $ty {
            const KIND: &'static str = $kind;
            const NAMESPACED: bool = $namespaced;
            fn key(&self) -> String {
                <$ty>::key(self)
            }
            fn resource_version(&self) -> i64 {
                self.resource_version
            }
            fn set_resource_version(&mut self, rv: i64) {
                self.resource_version = rv;
            }
            fn to_stored(&self) -> Result<Vec<u8>, String> {
                serde_json::to_vec(&$into(self)).map_err(|e| e.to_string())
            }
            fn from_stored(bytes: &[u8]) -> Result<Self, String> {
                let k: $kube = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
                Ok($from(k))
            }
        }
    };
}

view_object!(
    ReplicaSet,
    "replicasets",
    true,
    kube::KubeReplicaSet,
    kube::replicaset_into_kube,
    kube::replicaset_from_kube
);
view_object!(
    Pod,
    "pods",
    true,
    kube::KubePod,
    kube::pod_into_kube,
    kube::pod_from_kube
);
view_object!(
    Node,
    "nodes",
    false,
    kube::KubeNode,
    kube::node_into_kube,
    kube::node_from_kube
);

impl Node {
    /// A node's key is its name: nodes are not namespaced.
    pub fn key(&self) -> String {
        self.name.clone()
    }
}

impl Object for NodeLease {
    const KIND: &'static str = "nodeleases";
    const NAMESPACED: bool = false;
    fn key(&self) -> String {
        self.name.clone()
    }
    fn resource_version(&self) -> i64 {
        self.resource_version
    }
    fn set_resource_version(&mut self, rv: i64) {
        self.resource_version = rv;
    }
}

/// Implements [`Object`] for a Kubernetes type stored as itself (the Kubernetes API's
/// objects): key from `metadata`, resourceVersion as the string Kubernetes uses; with
/// `claims`, the keys the object holds beside its own ([`Object::claims`]).
macro_rules! kube_object {
    ($ty:ty, $kind:literal, $namespaced:literal) => {
        impl Object for $ty {
            kube_object!(@common $kind, $namespaced);
        }
    };
    ($ty:ty, $kind:literal, $namespaced:literal, ttl = $ttl:expr) => {
        impl Object for $ty {
            kube_object!(@common $kind, $namespaced);
            const TTL: Option<Duration> = Some($ttl);
        }
    };
    ($ty:ty, $kind:literal, $namespaced:literal, claims = $claims:expr) => {
        impl Object for $ty {
            kube_object!(@common $kind, $namespaced);
            const HAS_CLAIMS: bool = true;
            fn claims(&self) -> Vec<String> {
                $claims(self)
            }
        }
    };
    (@common $kind:literal, $namespaced:literal) => {
        const KIND: &'static str = $kind;
        const NAMESPACED: bool = $namespaced;
        fn key(&self) -> String {
            let name = self.metadata.name.as_deref().unwrap_or_default();
            if $namespaced {
                let ns = self.metadata.namespace.as_deref().unwrap_or_default();
                format!("{}/{name}", crate::api::namespace_or_default(ns))
            } else {
                name.to_string()
            }
        }
        fn resource_version(&self) -> i64 {
            self.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        }
        fn set_resource_version(&mut self, rv: i64) {
            self.metadata.resource_version = (rv > 0).then(|| rv.to_string());
        }
    };
}

kube_object!(kube::KubePod, "pods", true);
kube_object!(kube::KubeReplicaSet, "replicasets", true);
kube_object!(kube::KubeDeployment, "deployments", true);
kube_object!(kube::KubeNode, "nodes", false);
kube_object!(kube::KubeNamespace, "namespaces", false);
// Events expire an hour after their last write, as with Kubernetes' default `--event-ttl`.
kube_object!(
    kube::KubeEvent,
    "events",
    true,
    ttl = Duration::from_secs(3600)
);

// Services and their EndpointSlices. A Service holds a claim per node port
// (`nodeports/<port>`), so no two Services ever get one port.
kube_object!(kube::KubeEndpointSlice, "endpointslices", true);

kube_object!(
    kube::KubeService,
    "services",
    true,
    claims = |s: &kube::KubeService| {
        crate::api::service::node_ports(s)
            .map(node_port_claim)
            .collect()
    }
);

/// The claim a Service holds on node port `port`.
pub fn node_port_claim(port: i32) -> String {
    format!("{NODE_PORT_CLAIMS}{port}")
}

/// The prefix of every node port claim.
pub const NODE_PORT_CLAIMS: &str = "nodeports/";

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("{kind} `{name}` not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} `{name}` already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} `{name}` was changed by someone else (resourceVersion {expected} is stale)")]
    Conflict {
        kind: &'static str,
        name: String,
        expected: i64,
    },
    /// A watch could not resume: history before this revision is gone. List again.
    #[error("history before revision {0} was compacted")]
    Compacted(i64),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A write may or may not have been applied (the answer was lost).
    #[error("the write's outcome is unknown: {0}")]
    OutcomeUnknown(String),
    /// This process's leadership (its fence) is gone: the write was refused.
    #[error("leadership lost: {0} changed hands, the write was refused")]
    Fenced(String),
    #[error("the store's answer was not understood: {0}")]
    Decode(String),
    /// The store is out of disk space (its NOSPACE alarm is raised): creates and updates
    /// are refused, deletes still work.
    #[error("the store is out of disk space: {0}")]
    NoSpace(String),
    /// One of the object's [`Object::claims`] is held by another object.
    #[error("`{claim}` is already held by another object")]
    Claimed { claim: String },
}

impl From<ClientError> for RegistryError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Compacted { compact_revision } => {
                RegistryError::Compacted(compact_revision)
            }
            ClientError::Decode(m) => RegistryError::Decode(m),
            ClientError::OutcomeUnknown(m) => RegistryError::OutcomeUnknown(m),
            ClientError::Api { body, .. } if body.error == ErrorCode::NoSpace => {
                RegistryError::NoSpace(body.message)
            }
            other => RegistryError::Unavailable(other.to_string()),
        }
    }
}

/// A change to one object, as a watch reports it.
#[derive(Debug, Clone)]
pub enum WatchEvent<T> {
    Added(T),
    Modified(T),
    /// The object as it was last (its `resourceVersion` is the deletion's revision).
    Deleted(T),
    /// Everything up to this revision has been delivered.
    Bookmark(i64),
}

impl<T> WatchEvent<T> {
    pub fn revision(&self) -> i64
    where
        T: Object,
    {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                o.resource_version()
            }
            WatchEvent::Bookmark(r) => *r,
        }
    }
}

pub type WatchEvents<T> = BoxStream<'static, Result<WatchEvent<T>, RegistryError>>;

/// A change, with the object as it was before it (for a modification).
pub type ChangeWithPrevious<T> = (WatchEvent<T>, Option<T>);

/// Proof of leadership that writes carry: the leader key and the revision that created it
/// when this process won the election. Every fenced write compares it, so a deposed leader's
/// late writes (a request still queued in the store when its lease ran out) are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub create_revision: i64,
}

/// Typed access to objects in the store.
#[derive(Clone)]
pub struct Registry {
    client: Arc<dyn StoreBackend>,
    fence: Option<Arc<Fence>>,
    /// The store lease the writes of kinds with [`Object::TTL`] share now, and when it was
    /// granted (one per [`TTL_BATCH`]).
    ttl_lease: Arc<tokio::sync::Mutex<Option<(i64, std::time::Instant)>>>,
}

/// The key a component's leader holds.
pub fn leader_key(component: &str) -> String {
    format!("{ROOT}leaders/{component}")
}

/// The store key of the object of kind `T` at `key` (`namespace/name` or `name`).
pub fn key_of<T: Object>(key: &str) -> String {
    format!("{ROOT}{}/{key}", T::KIND)
}

/// The prefix of every object of kind `T`, or of those in `namespace`.
pub fn prefix_of<T: Object>(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{ROOT}{}/{ns}/", T::KIND),
        None => format!("{ROOT}{}/", T::KIND),
    }
}

/// The object of kind `T` from a store value of revision `rv`.
pub fn decode<T: Object>(value: &[u8], rv: i64) -> Result<T, RegistryError> {
    let mut obj: T = T::from_stored(value)
        .map_err(|e| RegistryError::Decode(format!("{} value: {e}", T::KIND)))?;
    obj.set_resource_version(rv);
    Ok(obj)
}

fn encode<T: Object>(obj: &T) -> Result<Vec<u8>, RegistryError> {
    let mut copy = obj.clone();
    copy.set_resource_version(0);
    copy.to_stored().map_err(RegistryError::Decode)
}

fn compare(key: &str, target: CompareTarget, result: CompareResult, value: i64) -> Compare {
    Compare {
        key: Bin::from(key),
        range_end: None,
        target,
        result,
        value: serde_json::Value::from(value),
    }
}

/// A transaction that writes `value` at `key` (attached to `lease`, if not 0) only if the key
/// does not exist.
fn create_only(key: &str, value: Bin, lease: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![compare(
            key,
            CompareTarget::CreateRevision,
            CompareResult::Equal,
            0,
        )],
        success: vec![RequestOp::Put(PutRequest {
            key: Bin::from(key),
            value,
            lease,
            prev_kv: false,
        })],
        failure: vec![],
    }
}

/// How often a write of an object with claims is tried again while the object keeps
/// changing under it.
const CLAIM_RETRIES: usize = 20;

/// Objects written in one transaction by [`Registry::create_all`] and
/// [`Registry::update_all`] (the store takes at most 128 compares or operations, and the
/// fence needs one).
pub const MAX_BATCH: usize = 64;

/// A read of `key`'s metadata (for a failure branch).
fn keys_only(key: &str) -> RequestOp {
    RequestOp::Range(RangeRequest {
        key: Bin::from(key),
        keys_only: true,
        ..Default::default()
    })
}

/// Adds to `txn` the creation of each claim (holding `owner`), only if none exists, and a
/// read of each to its failure branch.
fn take_claims(txn: &mut TxnRequest, owner: &str, claims: &[String]) {
    for claim in claims {
        let k = claim_key(claim);
        txn.compare.push(compare(
            &k,
            CompareTarget::CreateRevision,
            CompareResult::Equal,
            0,
        ));
        txn.success.push(RequestOp::Put(PutRequest {
            key: Bin::from(k.as_str()),
            value: Bin::from(owner),
            lease: 0,
            prev_kv: false,
        }));
        txn.failure.push(keys_only(&k));
    }
}

/// Adds to `txn` the deletion of each claim.
fn release_claims<'a>(txn: &mut TxnRequest, claims: impl Iterator<Item = &'a String>) {
    for claim in claims {
        txn.success
            .push(RequestOp::Delete(miniku_store::api::DeleteRequest {
                key: Bin::from(claim_key(claim).as_str()),
                ..Default::default()
            }));
    }
}

/// The first of `claims` whose read (in a failed transaction's answers, from index `first`)
/// found it held.
fn taken_claim(
    resp: &miniku_store::api::TxnResponse,
    first: usize,
    claims: &[String],
) -> Option<String> {
    claims.iter().enumerate().find_map(|(i, c)| {
        matches!(resp.responses.get(first + i), Some(ResponseOp::Range { count, .. }) if *count > 0)
            .then(|| c.clone())
    })
}

impl Registry {
    pub fn new(client: StoreClient) -> Self {
        Registry::over(Arc::new(client))
    }

    /// A registry over any store backend (the store in this process, in unit tests).
    pub fn over(client: Arc<dyn StoreBackend>) -> Self {
        Registry {
            client,
            fence: None,
            ttl_lease: Arc::default(),
        }
    }

    /// A registry over a new store in this process, for unit tests; the store is returned
    /// too, to inject what a real one would do (expire a lease, lose an answer).
    #[cfg(test)]
    pub fn in_process() -> (Registry, miniku_store::local::LocalStore) {
        let store = miniku_store::local::LocalStore::new().expect("an in-process store");
        (Registry::over(Arc::new(store.clone())), store)
    }

    /// The same registry whose writes (create, update, delete) succeed only while `fence`
    /// holds.
    pub fn fenced(&self, fence: Fence) -> Registry {
        Registry {
            client: self.client.clone(),
            fence: Some(Arc::new(fence)),
            ttl_lease: self.ttl_lease.clone(),
        }
    }

    /// Adds the fence's compare to a write, and to its failure branch a read of the fence
    /// key, so that a refusal can be told apart from a failed precondition.
    fn fence_txn(&self, txn: &mut TxnRequest) {
        if let Some(f) = &self.fence {
            txn.compare.push(compare(
                &f.key,
                CompareTarget::CreateRevision,
                CompareResult::Equal,
                f.create_revision,
            ));
            txn.failure.push(RequestOp::Range(RangeRequest {
                key: Bin::from(f.key.as_str()),
                keys_only: true,
                ..Default::default()
            }));
        }
    }

    /// After a failed fenced write: Err(Fenced) if the fence no longer holds.
    fn check_fence(&self, resp: &miniku_store::api::TxnResponse) -> Result<(), RegistryError> {
        let Some(f) = &self.fence else { return Ok(()) };
        let holds = matches!(
            resp.responses.last(),
            Some(ResponseOp::Range { kvs, .. })
                if kvs.first().is_some_and(|kv| kv.create_revision == f.create_revision)
        );
        if holds {
            Ok(())
        } else {
            Err(RegistryError::Fenced(f.key.clone()))
        }
    }

    /// Connects to the store endpoints (`host:port`, comma-separated or several).
    pub fn connect(endpoints: &[String]) -> Result<Self, RegistryError> {
        let client = StoreClient::new(endpoints.to_vec())
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        Ok(Registry::new(client))
    }

    /// Takes the leader lock of `component` (`/registry/leaders/<component>`) for
    /// `identity` if nobody holds it, attached to a new lease of `ttl` seconds: Some((lease,
    /// the key's create_revision, this term's fence)) when won.
    pub async fn acquire_leadership(
        &self,
        component: &str,
        identity: &str,
        ttl: i64,
    ) -> Result<Option<(i64, Fence)>, RegistryError> {
        let key = leader_key(component);
        let lease = self.grant_lease(ttl).await?;
        let txn = create_only(&key, Bin::from(identity), lease);
        let resp = self.client.txn(&txn).await?;
        if resp.succeeded {
            Ok(Some((
                lease,
                Fence {
                    key,
                    create_revision: resp.header.revision,
                },
            )))
        } else {
            let _ = self.client.lease_revoke(lease).await;
            Ok(None)
        }
    }

    /// Returns once `component`'s leader lock is released (deleted), or after `at_most`
    /// (a watch started after the release would never see it), or when the watch breaks.
    pub async fn wait_for_leader_release(&self, component: &str, at_most: Duration) {
        let key = leader_key(component);
        let mut w = self.client.watch(key.as_bytes(), WatchOptions::default());
        let wait = async {
            while let Some(item) = w.next().await {
                match item {
                    Ok(msg)
                        if msg
                            .events
                            .iter()
                            .any(|e| e.kind == miniku_store::api::EventType::Delete) =>
                    {
                        return
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(at_most, wait).await;
    }

    /// Ends lease `id` now (what is attached to it is deleted).
    pub async fn revoke_lease(&self, id: i64) -> Result<(), RegistryError> {
        self.client.lease_revoke(id).await?;
        Ok(())
    }

    /// Whether a watch of kind `T` (in `namespace`) can start after revision `rv`: Ok(None)
    /// if the store still has that history (or `rv` is in the future, to be waited for),
    /// Ok(Some(compact_revision)) if it was compacted away.
    pub async fn history_from<T: Object>(
        &self,
        namespace: Option<&str>,
        rv: i64,
    ) -> Result<Option<i64>, RegistryError> {
        let probe = self
            .client
            .get(
                prefix_of::<T>(namespace).as_bytes(),
                GetOptions {
                    prefix: true,
                    count_only: true,
                    revision: rv,
                    ..Default::default()
                },
            )
            .await;
        match probe {
            Err(ClientError::Api { status: 410, body }) => {
                Ok(Some(body.compact_revision.unwrap_or(0)))
            }
            Ok(_) | Err(ClientError::Api { status: 400, .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Grants a store lease of `ttl` seconds (for objects that live only while their owner
    /// renews it, like node heartbeats); returns its id.
    pub async fn grant_lease(&self, ttl: i64) -> Result<i64, RegistryError> {
        Ok(self.client.lease_grant(ttl).await?)
    }

    /// Renews lease `id`; `NotFound` once it expired.
    pub async fn renew_lease(&self, id: i64) -> Result<(), RegistryError> {
        match self.client.lease_keepalive(id).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Err(RegistryError::NotFound {
                kind: "leases",
                name: id.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The lease a write of a `T` attaches to: 0 for a kind without [`Object::TTL`], else
    /// the batch's lease, granted anew once the batch is [`TTL_BATCH`] old.
    async fn lease_for<T: Object>(&self) -> Result<i64, RegistryError> {
        let Some(ttl) = T::TTL else {
            return Ok(0);
        };
        let mut current = self.ttl_lease.lock().await;
        if let Some((id, granted)) = *current {
            if granted.elapsed() < TTL_BATCH {
                return Ok(id);
            }
        }
        let secs = (ttl + TTL_BATCH).as_secs() as i64;
        let id = self.grant_lease(secs).await?;
        *current = Some((id, std::time::Instant::now()));
        Ok(id)
    }

    /// The store's leader, if it has one.
    pub async fn store_leader(&self) -> Result<Option<u64>, RegistryError> {
        Ok(self.client.leader_id().await?)
    }

    /// Stores a new object; fails with `AlreadyExists` if the name is taken.
    pub async fn create<T: Object>(&self, obj: &T) -> Result<T, RegistryError> {
        let key = key_of::<T>(&obj.key());
        let lease = self.lease_for::<T>().await?;
        let mut txn = create_only(&key, Bin(encode(obj)?), lease);
        let claims = obj.claims();
        if !claims.is_empty() {
            txn.failure.push(keys_only(&key));
            take_claims(&mut txn, &key, &claims);
        }
        self.fence_txn(&mut txn);
        let resp = self.client.txn(&txn).await?;
        if !resp.succeeded {
            self.check_fence(&resp)?;
            let exists = matches!(resp.responses.first(), Some(ResponseOp::Range { count, .. }) if *count > 0);
            if let Some(claim) = taken_claim(&resp, 1, &claims).filter(|_| !exists) {
                return Err(RegistryError::Claimed { claim });
            }
            return Err(RegistryError::AlreadyExists {
                kind: T::KIND,
                name: name_of_key(&obj.key()).to_string(),
            });
        }
        let mut out = obj.clone();
        out.set_resource_version(resp.header.revision);
        Ok(out)
    }

    /// Stores several new objects of a kind, [`MAX_BATCH`] to a transaction, each
    /// transaction all or none: if a name in it is taken, none of it is written and the
    /// error names the first taken one (the transactions before it stand). A kind with
    /// claims is created one by one.
    pub async fn create_all<T: Object>(&self, objs: &[T]) -> Result<Vec<T>, RegistryError> {
        let mut out = Vec::with_capacity(objs.len());
        if T::HAS_CLAIMS {
            for obj in objs {
                out.push(self.create(obj).await?);
            }
            return Ok(out);
        }
        for chunk in objs.chunks(MAX_BATCH) {
            if let [one] = chunk {
                out.push(self.create(one).await?);
                continue;
            }
            let lease = self.lease_for::<T>().await?;
            let mut txn = TxnRequest::default();
            for obj in chunk {
                let key = key_of::<T>(&obj.key());
                let one = create_only(&key, Bin(encode(obj)?), lease);
                txn.compare.extend(one.compare);
                txn.success.extend(one.success);
                txn.failure.push(keys_only(&key));
            }
            self.fence_txn(&mut txn);
            let resp = self.client.txn(&txn).await?;
            if !resp.succeeded {
                self.check_fence(&resp)?;
                let taken = chunk.iter().enumerate().find(|(i, _)| {
                    matches!(resp.responses.get(*i), Some(ResponseOp::Range { count, .. }) if *count > 0)
                });
                return Err(RegistryError::AlreadyExists {
                    kind: T::KIND,
                    name: taken
                        .map_or_else(String::new, |(_, o)| name_of_key(&o.key()).to_string()),
                });
            }
            out.extend(chunk.iter().map(|o| {
                let mut stored = o.clone();
                stored.set_resource_version(resp.header.revision);
                stored
            }));
        }
        Ok(out)
    }

    /// Writes an object unconditionally, attached to store lease `lease` (it disappears when
    /// the lease expires). For objects only their owner writes, like node heartbeats.
    pub async fn put_with_lease<T: Object>(&self, obj: &T, lease: i64) -> Result<T, RegistryError> {
        let put = RequestOp::Put(PutRequest {
            key: Bin::from(key_of::<T>(&obj.key()).as_str()),
            value: Bin(encode(obj)?),
            lease,
            prev_kv: false,
        });
        let txn = TxnRequest {
            success: vec![put],
            ..Default::default()
        };
        let resp = self.client.txn(&txn).await?;
        let mut out = obj.clone();
        out.set_resource_version(resp.header.revision);
        Ok(out)
    }

    /// The object at `key` (`namespace/name`, or `name` for a kind without namespaces).
    pub async fn get<T: Object>(&self, key: &str) -> Result<T, RegistryError> {
        let resp = self
            .client
            .get(key_of::<T>(key).as_bytes(), GetOptions::default())
            .await?;
        match resp.kvs.first() {
            Some(kv) => decode(kv.value.as_bytes(), kv.mod_revision),
            None => Err(RegistryError::NotFound {
                kind: T::KIND,
                name: name_of_key(key).to_string(),
            }),
        }
    }

    /// Every object of kind `T`, and the store revision the list reflects (watch from the
    /// next one to miss nothing).
    pub async fn list<T: Object>(&self) -> Result<(Vec<T>, i64), RegistryError> {
        self.list_in::<T>(None).await
    }

    /// Every object of kind `T` in `namespace` (None: in all of them), and the revision.
    pub async fn list_in<T: Object>(
        &self,
        namespace: Option<&str>,
    ) -> Result<(Vec<T>, i64), RegistryError> {
        let prefix = prefix_of::<T>(namespace);
        let mut out = Vec::new();
        let mut start = prefix.clone().into_bytes();
        let end = miniku_store::types::prefix_end(prefix.as_bytes());
        let mut revision = 0;
        // Paged, all pages at the first page's revision, so the list is one consistent cut.
        loop {
            let resp = self
                .client
                .get(
                    &start,
                    GetOptions {
                        range_end: Some(end.clone()),
                        limit: 1000,
                        revision,
                        ..Default::default()
                    },
                )
                .await?;
            if revision == 0 {
                revision = resp.header.revision;
            }
            for kv in &resp.kvs {
                out.push(decode(kv.value.as_bytes(), kv.mod_revision)?);
            }
            match (resp.more, resp.kvs.last()) {
                (true, Some(last)) => {
                    start = last.key.as_bytes().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok((out, revision))
    }

    /// Runs `success` on object `name` if its key's `mod_revision` is `rv` (0: if it exists
    /// at all). A failed precondition becomes `Conflict` or `NotFound`.
    async fn conditional<T: Object>(
        &self,
        object_key: &str,
        rv: i64,
        success: Vec<RequestOp>,
    ) -> Result<miniku_store::api::TxnResponse, RegistryError> {
        let name = name_of_key(object_key);
        let key = key_of::<T>(object_key);
        let cmp = if rv > 0 {
            compare(&key, CompareTarget::ModRevision, CompareResult::Equal, rv)
        } else {
            compare(&key, CompareTarget::Version, CompareResult::Greater, 0)
        };
        let mut txn = TxnRequest {
            compare: vec![cmp],
            success,
            failure: vec![RequestOp::Range(RangeRequest {
                key: Bin::from(key.as_str()),
                keys_only: true,
                ..Default::default()
            })],
        };
        self.fence_txn(&mut txn);
        let resp = self.client.txn(&txn).await?;
        if resp.succeeded {
            return Ok(resp);
        }
        self.check_fence(&resp)?;
        let exists =
            matches!(resp.responses.first(), Some(ResponseOp::Range { count, .. }) if *count > 0);
        Err(if exists {
            RegistryError::Conflict {
                kind: T::KIND,
                name: name.to_string(),
                expected: rv,
            }
        } else {
            RegistryError::NotFound {
                kind: T::KIND,
                name: name.to_string(),
            }
        })
    }

    /// Replaces an object if its `resourceVersion` still matches (0: if it exists at all).
    pub async fn update<T: Object>(&self, obj: &T) -> Result<T, RegistryError> {
        if T::HAS_CLAIMS {
            return self.update_claimed(obj).await;
        }
        let put = RequestOp::Put(PutRequest {
            key: Bin::from(key_of::<T>(&obj.key()).as_str()),
            value: Bin(encode(obj)?),
            lease: self.lease_for::<T>().await?,
            ..Default::default()
        });
        let resp = self
            .conditional::<T>(&obj.key(), obj.resource_version(), vec![put])
            .await?;
        let mut out = obj.clone();
        out.set_resource_version(resp.header.revision);
        Ok(out)
    }

    /// [`Self::update`] of a kind with claims: the claims the new version adds are taken and
    /// those it drops released, in the transaction that writes it (retried while the object
    /// changes under a write without precondition).
    async fn update_claimed<T: Object>(&self, obj: &T) -> Result<T, RegistryError> {
        let object_key = obj.key();
        let key = key_of::<T>(&object_key);
        let wanted = obj.resource_version();
        let new: std::collections::BTreeSet<String> = obj.claims().into_iter().collect();
        for _ in 0..CLAIM_RETRIES {
            let current: T = self.get(&object_key).await?;
            let rv = current.resource_version();
            if wanted > 0 && wanted != rv {
                return Err(self.conflict::<T>(&object_key, wanted));
            }
            let old: std::collections::BTreeSet<String> = current.claims().into_iter().collect();
            let added: Vec<String> = new.difference(&old).cloned().collect();
            let mut txn = TxnRequest {
                compare: vec![compare(
                    &key,
                    CompareTarget::ModRevision,
                    CompareResult::Equal,
                    rv,
                )],
                success: vec![RequestOp::Put(PutRequest {
                    key: Bin::from(key.as_str()),
                    value: Bin(encode(obj)?),
                    ..Default::default()
                })],
                failure: vec![keys_only(&key)],
            };
            take_claims(&mut txn, &key, &added);
            release_claims(&mut txn, old.difference(&new));
            self.fence_txn(&mut txn);
            let resp = self.client.txn(&txn).await?;
            if resp.succeeded {
                let mut out = obj.clone();
                out.set_resource_version(resp.header.revision);
                return Ok(out);
            }
            self.check_fence(&resp)?;
            match resp.responses.first() {
                Some(ResponseOp::Range { kvs, .. }) if kvs.is_empty() => {
                    return Err(RegistryError::NotFound {
                        kind: T::KIND,
                        name: name_of_key(&object_key).to_string(),
                    })
                }
                Some(ResponseOp::Range { kvs, .. }) if kvs[0].mod_revision == rv => {
                    if let Some(claim) = taken_claim(&resp, 1, &added) {
                        return Err(RegistryError::Claimed { claim });
                    }
                }
                _ if wanted > 0 => return Err(self.conflict::<T>(&object_key, wanted)),
                _ => {}
            }
        }
        Err(self.conflict::<T>(&object_key, wanted))
    }

    fn conflict<T: Object>(&self, object_key: &str, expected: i64) -> RegistryError {
        RegistryError::Conflict {
            kind: T::KIND,
            name: name_of_key(object_key).to_string(),
            expected,
        }
    }

    /// [`Self::delete`] of a kind with claims: its claims are released in the transaction
    /// that deletes it.
    async fn delete_claimed<T: Object>(
        &self,
        object_key: &str,
        wanted: i64,
    ) -> Result<T, RegistryError> {
        let key = key_of::<T>(object_key);
        for _ in 0..CLAIM_RETRIES {
            let current: T = self.get(object_key).await?;
            let rv = current.resource_version();
            if wanted > 0 && wanted != rv {
                return Err(self.conflict::<T>(object_key, wanted));
            }
            let mut ops = vec![RequestOp::Delete(miniku_store::api::DeleteRequest {
                key: Bin::from(key.as_str()),
                ..Default::default()
            })];
            let claims = current.claims();
            let mut txn = TxnRequest::default();
            release_claims(&mut txn, claims.iter());
            ops.append(&mut txn.success);
            match self.conditional::<T>(object_key, rv, ops).await {
                Ok(resp) => {
                    let mut gone = current;
                    gone.set_resource_version(resp.header.revision);
                    return Ok(gone);
                }
                Err(RegistryError::Conflict { .. }) if wanted == 0 => continue,
                Err(e) => return Err(e),
            }
        }
        Err(self.conflict::<T>(object_key, wanted))
    }

    /// The claims held below `prefix` (`nodeports/`), as [`Object::claims`] names them.
    pub async fn claims_held(&self, prefix: &str) -> Result<Vec<String>, RegistryError> {
        let resp = self
            .client
            .get(
                claim_key(prefix).as_bytes(),
                GetOptions {
                    prefix: true,
                    keys_only: true,
                    ..Default::default()
                },
            )
            .await?;
        Ok(resp
            .kvs
            .iter()
            .filter_map(|kv| {
                std::str::from_utf8(kv.key.as_bytes())
                    .ok()
                    .and_then(|k| k.strip_prefix(CLAIMS))
                    .map(str::to_string)
            })
            .collect())
    }

    /// Deletes an object if its `resourceVersion` matches `rv` (0: unconditionally). Returns
    /// the object as it was.
    pub async fn delete<T: Object>(&self, object_key: &str, rv: i64) -> Result<T, RegistryError> {
        if T::HAS_CLAIMS {
            return self.delete_claimed(object_key, rv).await;
        }
        let key = Bin::from(key_of::<T>(object_key).as_str());
        let ops = vec![
            RequestOp::Range(RangeRequest {
                key: key.clone(),
                ..Default::default()
            }),
            RequestOp::Delete(miniku_store::api::DeleteRequest {
                key,
                ..Default::default()
            }),
        ];
        let resp = self.conditional::<T>(object_key, rv, ops).await?;
        match resp.responses.first() {
            Some(ResponseOp::Range { kvs, .. }) if !kvs.is_empty() => {
                let mut obj: T = decode(kvs[0].value.as_bytes(), kvs[0].mod_revision)?;
                obj.set_resource_version(resp.header.revision);
                Ok(obj)
            }
            _ => Err(RegistryError::NotFound {
                kind: T::KIND,
                name: name_of_key(object_key).to_string(),
            }),
        }
    }

    /// Reads, changes and writes back an object, retrying on conflicts. `change` returns
    /// `Ok(false)` to leave the object as it is.
    pub async fn modify<T, F>(&self, key: &str, mut change: F) -> Result<T, RegistryError>
    where
        T: Object,
        F: FnMut(&mut T) -> bool,
    {
        let mut backoff = Duration::from_millis(5);
        loop {
            let mut obj: T = self.get(key).await?;
            if !change(&mut obj) {
                return Ok(obj);
            }
            match self.update(&obj).await {
                Err(RegistryError::Conflict { .. }) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// Every change to objects of kind `T` from revision `from` (inclusive). The stream
    /// resumes by itself across store failures; it ends with `Err(Compacted)` when it cannot.
    pub fn watch<T: Object>(&self, from: i64) -> WatchEvents<T> {
        self.watch_in::<T>(None, from)
    }

    /// Every change to objects of kind `T` in `namespace` (None: in all) from `from`.
    pub fn watch_in<T: Object>(&self, namespace: Option<&str>, from: i64) -> WatchEvents<T> {
        self.watch_with_previous_in::<T>(namespace, from)
            .map(|item| item.map(|(event, _)| event))
            .boxed()
    }

    /// [`Self::watch_in`], each change with the object as it was before it (for a
    /// modification; None otherwise), as a watch filtered by labels needs to tell an object
    /// that stopped matching from one that never did.
    pub fn watch_with_previous_in<T: Object>(
        &self,
        namespace: Option<&str>,
        from: i64,
    ) -> BoxStream<'static, Result<ChangeWithPrevious<T>, RegistryError>> {
        let prefix = prefix_of::<T>(namespace);
        let stream = self.client.watch(
            prefix.as_bytes(),
            WatchOptions {
                prefix: true,
                start_revision: from,
                prev_kv: true,
                progress_notify: true,
                ..Default::default()
            },
        );
        stream
            .flat_map(|item| {
                let out: Vec<Result<ChangeWithPrevious<T>, RegistryError>> = match item {
                    Err(e) => vec![Err(e.into())],
                    Ok(msg) if msg.events.is_empty() => {
                        if msg.canceled {
                            vec![Err(match msg.compact_revision {
                                Some(r) => RegistryError::Compacted(r),
                                None => RegistryError::Unavailable(
                                    msg.reason.unwrap_or_else(|| "watch canceled".into()),
                                ),
                            })]
                        } else {
                            vec![Ok((WatchEvent::Bookmark(msg.header.revision), None))]
                        }
                    }
                    Ok(msg) => msg.events.into_iter().map(to_watch_event).collect(),
                };
                futures::stream::iter(out)
            })
            .boxed()
    }
}

fn to_watch_event<T: Object>(
    e: miniku_store::api::Event,
) -> Result<ChangeWithPrevious<T>, RegistryError> {
    use miniku_store::api::EventType;
    match e.kind {
        EventType::Put => {
            let obj = decode(e.kv.value.as_bytes(), e.kv.mod_revision)?;
            Ok(if e.kv.version == 1 {
                (WatchEvent::Added(obj), None)
            } else {
                let before = e
                    .prev_kv
                    .and_then(|p| decode(p.value.as_bytes(), p.mod_revision).ok());
                (WatchEvent::Modified(obj), before)
            })
        }
        EventType::Delete => {
            let prev = e
                .prev_kv
                .ok_or_else(|| RegistryError::Decode("delete event without prev_kv".into()))?;
            let obj = decode(prev.value.as_bytes(), e.kv.mod_revision)?;
            Ok((WatchEvent::Deleted(obj), None))
        }
    }
}

#[cfg(test)]
mod claims_tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    fn service(name: &str, node_ports: &[i32]) -> kube::KubeService {
        let mut s = kube::KubeService::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("default".into());
        s.spec = Some(ServiceSpec {
            type_: Some("NodePort".into()),
            ports: Some(
                node_ports
                    .iter()
                    .enumerate()
                    .map(|(i, n)| ServicePort {
                        name: Some(format!("p{i}")),
                        port: 80 + i as i32,
                        node_port: Some(*n),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        s
    }

    fn named_pod(name: &str) -> crate::api::Pod {
        let mut p = crate::api::Pod {
            namespace: "default".into(),
            ..Default::default()
        };
        p.spec.name = name.into();
        p
    }

    #[tokio::test]
    async fn create_all_writes_a_batch_whole_or_not_at_all() {
        let (reg, _store) = Registry::in_process();
        // More than one transaction holds.
        let pods: Vec<_> = (0..MAX_BATCH + 3)
            .map(|i| named_pod(&format!("p{i}")))
            .collect();
        let stored = reg.create_all(&pods).await.unwrap();
        assert_eq!(stored.len(), pods.len());
        assert!(stored.iter().all(|p| p.resource_version > 0));
        assert_eq!(stored[0].resource_version, stored[1].resource_version);
        let again = vec![named_pod("q0"), named_pod("p1"), named_pod("q1")];
        match reg.create_all(&again).await {
            Err(RegistryError::AlreadyExists { name, .. }) => assert_eq!(name, "p1"),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        // Neither of the batch's new names was written.
        let (list, _) = reg.list::<crate::api::Pod>().await.unwrap();
        assert_eq!(list.len(), pods.len());
        assert!(reg.get::<crate::api::Pod>("default/q0").await.is_err());
    }

    #[tokio::test]
    async fn concurrent_creates_never_share_a_node_port() {
        let (reg, _store) = Registry::in_process();
        let mut tries = Vec::new();
        for i in 0..16 {
            let reg = reg.clone();
            tries.push(tokio::spawn(async move {
                reg.create(&service(&format!("s{i}"), &[30080])).await
            }));
        }
        let mut won = 0;
        for t in tries {
            match t.await.unwrap() {
                Ok(_) => won += 1,
                Err(RegistryError::Claimed { claim }) => assert_eq!(claim, "nodeports/30080"),
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(won, 1, "exactly one Service holds the port");
        assert_eq!(
            reg.claims_held("nodeports/").await.unwrap(),
            ["nodeports/30080"]
        );
        // The loser's name is free: nothing of it was written.
        let (list, _) = reg.list::<kube::KubeService>().await.unwrap();
        assert_eq!(list.len(), 1);
    }

    #[tokio::test]
    async fn updates_take_and_release_claims_and_deletes_release_them() {
        let (reg, _store) = Registry::in_process();
        let a = reg.create(&service("a", &[30001, 30002])).await.unwrap();
        // Same name again: AlreadyExists, not Claimed, though its ports are held.
        assert!(matches!(
            reg.create(&service("a", &[30001])).await,
            Err(RegistryError::AlreadyExists { .. })
        ));
        reg.create(&service("b", &[30003])).await.unwrap();
        // a moves 30002 to 30004: 30002 is free afterwards.
        let mut moved = service("a", &[30001, 30004]);
        moved.set_resource_version(a.resource_version());
        let a = reg.update(&moved).await.unwrap();
        let held = reg.claims_held("nodeports/").await.unwrap();
        assert_eq!(
            held,
            ["nodeports/30001", "nodeports/30003", "nodeports/30004"]
        );
        // Taking b's port fails and changes nothing.
        let mut clash = service("a", &[30003]);
        clash.set_resource_version(a.resource_version());
        assert!(matches!(
            reg.update(&clash).await,
            Err(RegistryError::Claimed { claim }) if claim == "nodeports/30003"
        ));
        // A stale resourceVersion is a conflict.
        let mut stale = service("a", &[30009]);
        stale.set_resource_version(a.resource_version() - 1);
        assert!(matches!(
            reg.update(&stale).await,
            Err(RegistryError::Conflict { .. })
        ));
        reg.delete::<kube::KubeService>("default/a", 0)
            .await
            .unwrap();
        assert_eq!(
            reg.claims_held("nodeports/").await.unwrap(),
            ["nodeports/30003"]
        );
        // The freed port can be taken again.
        reg.create(&service("c", &[30001])).await.unwrap();
    }
}
