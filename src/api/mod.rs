//! Miniku's objects — ReplicaSet, Pod, Node — in the JSON shapes of the seed transcript
//! (`../shared/seed-miniku.md`), plus the fields real users need beside them.
//!
//! Field names follow the seed exactly: ReplicaSets are camelCase (`desiredCount`), pods are
//! snake_case (`retry_count`, `next_retry_at`). `resourceVersion` (the store's mod_revision)
//! is camelCase on every kind, as in Kubernetes. Validation of user input lives in
//! [`validation`]; this module owns only the shapes.
//!
//! The store holds every object in its Kubernetes shape (k8s-openapi's types); these structs
//! are Miniku's views of them, which the controllers, the scheduler, the kubelet and the
//! seed's routes work with. [`kube`] converts between the two in one place, and each view
//! keeps the object it was read from (`stored`), so a component's write changes only the
//! fields the view has and keeps every other field a Kubernetes client wrote.

pub mod deployment;
pub mod kube;
pub mod logs;
pub mod quantity;
pub mod service;
pub mod validation;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `0001-01-01T00:00:00Z`, Go's zero time, which the seed shows for "never".
pub fn zero_time() -> DateTime<Utc> {
    chrono::NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Serializes times as RFC 3339 with a `Z` and whole seconds unless sub-second precision is
/// present (the seed's `0001-01-01T00:00:00Z`).
pub mod time_format {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("invalid time `{s}`: {e}")))
    }
}

/// Optional times, same format.
pub mod opt_time_format {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::time_format::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(None),
            Some(s) => chrono::DateTime::parse_from_rfc3339(&s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|e| serde::de::Error::custom(format!("invalid time `{s}`: {e}"))),
        }
    }
}

impl ReplicaSet {
    /// `namespace/name`: where the ReplicaSet is, below `/registry/replicasets/`.
    pub fn key(&self) -> String {
        format!("{}/{}", namespace_or_default(&self.namespace), self.name)
    }
}

/// Random lowercase hex of `n` digits (uids, pod name suffixes).
pub fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rand::random_range(0..16u32), 16).unwrap_or('0'))
        .collect()
}

/// An object's namespace, `default` when none is set.
pub fn namespace_or_default(ns: &str) -> &str {
    if ns.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        ns
    }
}

/// Resource amounts: `cpu` in millicores, `memory` in bytes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cpu: u64,
    #[serde(default)]
    pub memory: u64,
}

/// What a pod runs. The seed shows `name`, `image`, `labels`; the rest is Miniku's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    #[serde(default)]
    pub name: String,
    /// Required; `#[serde(default)]` only so that validation can say so by field name.
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The node the scheduler bound the pod to; empty until then.
    #[serde(default)]
    pub node_name: String,
    /// The container's entrypoint (Kubernetes' `command`); empty = the image's default.
    #[serde(default)]
    pub command: Vec<String>,
    /// Arguments to the entrypoint (Kubernetes' `args`); empty = the image's default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Only nodes with all these labels may run the pod.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// What the pod needs from its node (scheduler filtering).
    #[serde(default)]
    pub resources: Resources,
}

/// A ReplicaSet's pod template: the seed shows `{"name":"","image":"nginx:latest"}`.
pub type PodTemplate = PodSpec;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl std::fmt::Display for PodPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PodPhase::Pending => "Pending",
            PodPhase::Running => "Running",
            PodPhase::Succeeded => "Succeeded",
            PodPhase::Failed => "Failed",
        })
    }
}

/// The namespace objects of the seed's routes live in, and the one that always exists.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Who owns a pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Pod {
    /// The pod's namespace (not in the seed's JSON: its routes show `default` only).
    #[serde(skip)]
    pub namespace: String,
    pub spec: PodSpec,
    /// The seed's `status`: Pending, Running, Succeeded or Failed.
    pub status: PodPhase,
    /// How many times the kubelet has (re)started the container after a failure.
    pub retry_count: u32,
    /// When the kubelet will try again; Go's zero time when no retry is pending.
    #[serde(with = "time_format")]
    pub next_retry_at: DateTime<Utc>,
    /// The store's mod_revision of this object (set on every read).
    #[serde(rename = "resourceVersion", default)]
    pub resource_version: i64,
    #[serde(default)]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerReference>,
    /// Machine-readable cause of the status (e.g. `CrashLoopBackOff`, `ImagePullError`,
    /// `NodeLost`, `Unschedulable`).
    #[serde(default)]
    pub reason: String,
    /// What happened, for a person.
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub container_id: String,
    #[serde(
        default,
        with = "opt_time_format",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        with = "opt_time_format",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        with = "opt_time_format",
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The running container's address (Kubernetes' `status.podIP`); empty otherwise.
    #[serde(skip)]
    pub pod_ip: String,
    /// The address of the node the pod runs on (`status.hostIP`).
    #[serde(skip)]
    pub host_ip: String,
    /// The containers (by name) of a Running pod that are not ready: their readiness (or
    /// startup) probe has not succeeded. Empty unless the pod is Running. A Running pod is
    /// ready when it is empty (Kubernetes' `Ready` and `ContainersReady` conditions).
    #[serde(skip)]
    pub not_ready: BTreeSet<String>,
    /// The Kubernetes object this view was read from (None for a new pod).
    #[serde(skip)]
    pub stored: Option<Arc<kube::KubePod>>,
}

impl Default for Pod {
    fn default() -> Self {
        Pod {
            namespace: DEFAULT_NAMESPACE.into(),
            spec: PodSpec::default(),
            status: PodPhase::Pending,
            retry_count: 0,
            next_retry_at: zero_time(),
            resource_version: 0,
            uid: String::new(),
            owner: None,
            reason: String::new(),
            message: String::new(),
            container_id: String::new(),
            created_at: None,
            started_at: None,
            finished_at: None,
            exit_code: None,
            pod_ip: String::new(),
            host_ip: String::new(),
            not_ready: BTreeSet::new(),
            stored: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ReplicaSet {
    /// Not in the seed's JSON: its routes show `default` only.
    #[serde(skip)]
    pub namespace: String,
    pub name: String,
    #[serde(rename = "desiredCount")]
    pub desired_count: u32,
    /// Active (not Failed/Succeeded) pods the controller observes.
    #[serde(rename = "currentCount", default)]
    pub current_count: u32,
    /// Pods ready (Kubernetes' `readyReplicas`).
    #[serde(rename = "readyCount", default)]
    pub ready_count: u32,
    /// Pods ready for at least `min_ready_seconds` (Kubernetes' `availableReplicas`).
    #[serde(skip)]
    pub available_count: u32,
    /// Kubernetes' `spec.minReadySeconds`: how long a pod must have been ready to count as
    /// available.
    #[serde(skip)]
    pub min_ready_seconds: u32,
    pub selector: BTreeMap<String, String>,
    pub template: PodTemplate,
    #[serde(rename = "resourceVersion", default)]
    pub resource_version: i64,
    #[serde(default)]
    pub uid: String,
    /// Kubernetes' `metadata.generation`: raised by every change of the spec.
    #[serde(skip)]
    pub generation: i64,
    /// The generation the controller's last status write saw.
    #[serde(skip)]
    pub observed_generation: i64,
    /// Being deleted (Kubernetes' `deletionTimestamp` is set): the API server is settling its
    /// pods (orphaning or deleting them), so the controller leaves it alone.
    #[serde(skip)]
    pub deleting: bool,
    #[serde(skip)]
    pub stored: Option<Arc<kube::KubeReplicaSet>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NodeStatus {
    #[default]
    Ready,
    NotReady,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Node {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// cpu (millicores), memory (bytes) the node offers.
    pub capacity: Resources,
    /// Most pods the node runs.
    pub max_pods: u32,
    pub status: NodeStatus,
    /// No new pods are bound while true.
    #[serde(default)]
    pub unschedulable: bool,
    #[serde(default)]
    pub reason: String,
    #[serde(rename = "resourceVersion", default)]
    pub resource_version: i64,
    #[serde(skip)]
    pub stored: Option<Arc<kube::KubeNode>>,
}

/// A node's heartbeat: the kubelet keeps this object alive through a store lease of
/// `ttl_seconds`, renewed every `renew_seconds`. When the kubelet stops renewing, the store
/// deletes it, and the node lifecycle controller marks the node NotReady.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeLease {
    pub name: String,
    /// The store lease the object is attached to.
    pub lease_id: i64,
    pub ttl_seconds: i64,
    pub renew_seconds: i64,
    #[serde(rename = "resourceVersion", default)]
    pub resource_version: i64,
}

impl Pod {
    /// `namespace/name`: where the pod is, below `/registry/pods/`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            namespace_or_default(&self.namespace),
            self.spec.name
        )
    }

    /// A Failed pod that no kubelet will retry (no retry pending): its ReplicaSet replaces it.
    pub fn is_terminal(&self) -> bool {
        match self.status {
            PodPhase::Succeeded => true,
            PodPhase::Failed => self.next_retry_at == zero_time(),
            _ => false,
        }
    }

    /// Running with every container ready (Kubernetes' `Ready` condition is True).
    pub fn is_ready(&self) -> bool {
        self.status == PodPhase::Running && self.not_ready.is_empty()
    }

    /// Since when the pod has been ready (its `Ready` condition's last transition), if it is.
    pub fn ready_since(&self) -> Option<DateTime<Utc>> {
        if !self.is_ready() {
            return None;
        }
        self.stored
            .as_ref()?
            .status
            .as_ref()?
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready" && c.status == "True")?
            .last_transition_time
            .as_ref()
            .map(kube::from_time)
    }

    /// Whether every `selector` label is on the pod with the same value.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.spec.labels.get(k) == Some(v))
    }
}
