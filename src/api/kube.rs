//! The Kubernetes shape of Miniku's objects, and the one conversion between it and Miniku's
//! views ([`Pod`], [`ReplicaSet`], [`Node`]).
//!
//! The store holds k8s-openapi's `Pod`, `apps/v1` `ReplicaSet`, `Node` and `Namespace` as JSON.
//! `*_from_kube` makes a view of one and keeps the object in the view's `stored`;
//! `*_into_kube` writes the view's fields back over that object (or over a new one), so that
//! every field the view does not have, such as a second container, annotations or tolerations,
//! survives a component's write. A view converted to Kubernetes and back is the same view
//! (the tests check it).
//!
//! What Miniku keeps that Kubernetes has no field for lives in annotations under
//! `miniku.io/`: the kubelet's next retry time. This module does not talk to the store and
//! does not validate user input.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, OwnerReference as KubeOwnerReference, Time,
};

use super::quantity::{format_bytes, format_cpu_millis, parse_bytes, parse_cpu_millis};
use super::{
    namespace_or_default, zero_time, Node, NodeStatus, OwnerReference, Pod, PodPhase, PodSpec,
    ReplicaSet, Resources,
};

pub type KubePod = core::Pod;
pub type KubeReplicaSet = apps::ReplicaSet;
pub type KubeDeployment = apps::Deployment;
pub type KubeNode = core::Node;
pub type KubeNamespace = core::Namespace;
/// A v1 Service (stored as itself; the endpoints controller and `miniku proxy` read it).
pub type KubeService = core::Service;
/// A discovery.k8s.io/v1 EndpointSlice (written only by the endpoints controller).
pub type KubeEndpointSlice = k8s_openapi::api::discovery::v1::EndpointSlice;
/// A v1 Event: what happened to an object (written by the components, see `crate::events`).
pub type KubeEvent = core::Event;

/// When the kubelet next tries a failed pod's container (RFC 3339); absent = no retry pending.
pub const NEXT_RETRY_ANNOTATION: &str = "miniku.io/next-retry-at";
/// When a pod that never had an exit code (its node was lost) stopped.
pub const FINISHED_AT_ANNOTATION: &str = "miniku.io/finished-at";
/// The name of a pod's container when nothing names it (a seed ReplicaSet names it after
/// itself).
pub const DEFAULT_CONTAINER_NAME: &str = "main";

pub fn to_time(t: DateTime<Utc>) -> Time {
    Time(
        jiff::Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}

pub fn from_time(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn map_or_none(m: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then(|| m.clone())
}

fn set_annotation(
    annotations: &mut Option<BTreeMap<String, String>>,
    key: &str,
    value: Option<String>,
) {
    let mut a = annotations.take().unwrap_or_default();
    match value {
        Some(v) => {
            a.insert(key.to_string(), v);
        }
        None => {
            a.remove(key);
        }
    }
    *annotations = (!a.is_empty()).then_some(a);
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The API version of an owner's kind.
fn owner_api_version(kind: &str) -> &'static str {
    match kind {
        "ReplicaSet" | "Deployment" => "apps/v1",
        _ => "v1",
    }
}

fn env_of(c: &core::Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .filter(|e| e.value_from.is_none())
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

fn requests_of(c: &core::Container) -> Resources {
    let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    let get = |k: &str, parse: fn(&str) -> Result<u64, _>| {
        req.and_then(|r| r.get(k))
            .and_then(|q| parse(&q.0).ok())
            .unwrap_or(0)
    };
    Resources {
        cpu: get("cpu", parse_cpu_millis),
        memory: get("memory", parse_bytes),
    }
}

/// The view's container fields (everything in [`PodSpec`] but name and labels), from a
/// Kubernetes pod spec: its first container.
fn spec_from_kube(spec: Option<&core::PodSpec>) -> PodSpec {
    let mut out = PodSpec::default();
    let Some(spec) = spec else { return out };
    if let Some(c) = spec.containers.first() {
        out.image = c.image.clone().unwrap_or_default();
        out.command = c.command.clone().unwrap_or_default();
        out.args = c.args.clone().unwrap_or_default();
        out.env = env_of(c);
        out.resources = requests_of(c);
    }
    out.node_name = spec.node_name.clone().unwrap_or_default();
    out.node_selector = spec.node_selector.clone().unwrap_or_default();
    out
}

/// Writes the view's container fields over `spec`, changing only what differs.
fn spec_into_kube(v: &PodSpec, default_container: &str, spec: &mut core::PodSpec) {
    // A view that says what the object already says changes nothing in it, so a component's
    // write never rewrites a spec it did not change (an empty map stays an empty map).
    let mut current = spec_from_kube(Some(spec));
    current.name.clone_from(&v.name);
    current.labels.clone_from(&v.labels);
    if current == *v && !spec.containers.is_empty() {
        return;
    }
    if spec.containers.is_empty() {
        spec.containers.push(core::Container {
            name: default_container.to_string(),
            ..Default::default()
        });
    }
    let c = &mut spec.containers[0];
    if c.name.is_empty() {
        c.name = default_container.to_string();
    }
    c.image = non_empty(&v.image);
    c.command = (!v.command.is_empty()).then(|| v.command.clone());
    c.args = (!v.args.is_empty()).then(|| v.args.clone());
    if env_of(c) != v.env {
        let from_refs: Vec<core::EnvVar> = c
            .env
            .iter()
            .flatten()
            .filter(|e| e.value_from.is_some())
            .cloned()
            .collect();
        let env: Vec<core::EnvVar> = v
            .env
            .iter()
            .map(|(k, val)| core::EnvVar {
                name: k.clone(),
                value: Some(val.clone()),
                value_from: None,
            })
            .chain(from_refs)
            .collect();
        c.env = (!env.is_empty()).then_some(env);
    }
    let have = requests_of(c);
    if have != v.resources {
        let resources = c.resources.get_or_insert_with(Default::default);
        let mut req = resources.requests.take().unwrap_or_default();
        let mut set = |k: &str, value: Option<String>| match value {
            Some(q) => {
                req.insert(k.to_string(), Quantity(q));
            }
            None => {
                req.remove(k);
            }
        };
        set(
            "cpu",
            (v.resources.cpu != 0).then(|| format_cpu_millis(v.resources.cpu)),
        );
        set(
            "memory",
            (v.resources.memory != 0).then(|| format_bytes(v.resources.memory)),
        );
        resources.requests = (!req.is_empty()).then_some(req);
    }
    spec.node_name = non_empty(&v.node_name);
    spec.node_selector = map_or_none(&v.node_selector);
}

fn owner_from_kube(refs: Option<&Vec<KubeOwnerReference>>) -> Option<OwnerReference> {
    refs.into_iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| OwnerReference {
            kind: r.kind.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        })
}

fn owner_into_kube(owner: Option<&OwnerReference>, refs: &mut Option<Vec<KubeOwnerReference>>) {
    let mut all = refs.take().unwrap_or_default();
    let keep = |r: &KubeOwnerReference| {
        owner.is_some_and(|o| o.uid == r.uid && o.kind == r.kind && o.name == r.name)
    };
    if let Some(pos) = all.iter().position(|r| r.controller == Some(true)) {
        if !keep(&all[pos]) {
            all.remove(pos);
        }
    }
    if let Some(o) = owner {
        if !all.iter().any(keep) {
            all.insert(
                0,
                KubeOwnerReference {
                    api_version: owner_api_version(&o.kind).to_string(),
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                    uid: o.uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                },
            );
        }
    }
    *refs = (!all.is_empty()).then_some(all);
}

fn parse_phase(s: Option<&str>) -> PodPhase {
    match s {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        _ => PodPhase::Pending,
    }
}

/// A condition of `type_` with `status`, keeping the transition time of the one before when
/// its status is unchanged.
fn condition(
    before: &[core::PodCondition],
    type_: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<&str>,
) -> core::PodCondition {
    let status = if status { "True" } else { "False" }.to_string();
    let since = before
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| to_time(Utc::now()));
    core::PodCondition {
        type_: type_.to_string(),
        status,
        reason: reason.map(str::to_string),
        message: message.map(str::to_string),
        last_transition_time: Some(since),
        ..Default::default()
    }
}

/// The view of a stored pod.
pub fn pod_from_kube(k: KubePod) -> Pod {
    let m = &k.metadata;
    let annotations = m.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let mut spec = spec_from_kube(k.spec.as_ref());
    spec.name = m.name.clone().unwrap_or_default();
    spec.labels = m.labels.clone().unwrap_or_default();
    let status = k.status.as_ref();
    let cs = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first());
    let terminated = cs.and_then(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .or(c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))
    });
    let finished_at = terminated
        .and_then(|t| t.finished_at.as_ref())
        .map(from_time)
        .or_else(|| annotation(FINISHED_AT_ANNOTATION).and_then(parse_rfc3339));
    let pod = Pod {
        namespace: namespace_or_default(m.namespace.as_deref().unwrap_or_default()).to_string(),
        spec,
        status: parse_phase(status.and_then(|s| s.phase.as_deref())),
        retry_count: cs.map_or(0, |c| c.restart_count.max(0) as u32),
        next_retry_at: annotation(NEXT_RETRY_ANNOTATION)
            .and_then(parse_rfc3339)
            .unwrap_or_else(zero_time),
        resource_version: 0,
        uid: m.uid.clone().unwrap_or_default(),
        owner: owner_from_kube(m.owner_references.as_ref()),
        reason: status.and_then(|s| s.reason.clone()).unwrap_or_default(),
        message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
        container_id: cs
            .and_then(|c| c.container_id.as_deref())
            .map(|id| id.strip_prefix("docker://").unwrap_or(id).to_string())
            .unwrap_or_default(),
        created_at: m.creation_timestamp.as_ref().map(from_time),
        started_at: status.and_then(|s| s.start_time.as_ref()).map(from_time),
        finished_at,
        exit_code: terminated.map(|t| i64::from(t.exit_code)),
        pod_ip: status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        host_ip: status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        not_ready: BTreeSet::new(),
        stored: None,
    };
    let not_ready = if pod.status == PodPhase::Running {
        status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| !c.ready)
            .map(|c| c.name.clone())
            .collect()
    } else {
        BTreeSet::new()
    };
    Pod {
        stored: Some(Arc::new(k)),
        not_ready,
        ..pod
    }
}

/// The stored object for a pod view: its `stored` object with the view's fields written over.
pub fn pod_into_kube(p: &Pod) -> KubePod {
    let mut k = p.stored.as_deref().cloned().unwrap_or_default();
    let m = &mut k.metadata;
    m.name = Some(p.spec.name.clone());
    m.namespace = Some(namespace_or_default(&p.namespace).to_string());
    m.labels = map_or_none(&p.spec.labels);
    m.uid = non_empty(&p.uid);
    m.resource_version = None;
    m.creation_timestamp = p.created_at.map(to_time);
    set_annotation(
        &mut m.annotations,
        NEXT_RETRY_ANNOTATION,
        (p.next_retry_at != zero_time()).then(|| rfc3339(p.next_retry_at)),
    );
    set_annotation(
        &mut m.annotations,
        FINISHED_AT_ANNOTATION,
        p.finished_at.filter(|_| p.exit_code.is_none()).map(rfc3339),
    );
    owner_into_kube(p.owner.as_ref(), &mut m.owner_references);

    let spec = k.spec.get_or_insert_with(Default::default);
    spec_into_kube(&p.spec, DEFAULT_CONTAINER_NAME, spec);
    // The pod's containers start, run and stop together: each has the pod's state.
    let containers: Vec<(String, Option<String>)> = spec
        .containers
        .iter()
        .map(|c| (c.name.clone(), c.image.clone()))
        .collect();

    let status = k.status.get_or_insert_with(Default::default);
    status.phase = Some(p.status.to_string());
    status.reason = non_empty(&p.reason);
    status.message = non_empty(&p.message);
    status.start_time = p.started_at.map(to_time);
    status.pod_ip = non_empty(&p.pod_ip);
    status.pod_ips = non_empty(&p.pod_ip).map(|ip| vec![core::PodIP { ip }]);
    status.host_ip = non_empty(&p.host_ip);
    status.host_ips = non_empty(&p.host_ip).map(|ip| vec![core::HostIP { ip }]);
    let container_id = non_empty(&p.container_id).map(|id| format!("docker://{id}"));
    let terminated = p.exit_code.map(|code| core::ContainerState {
        terminated: Some(core::ContainerStateTerminated {
            exit_code: code.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
            reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
            finished_at: p.finished_at.map(to_time),
            container_id: container_id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let waiting = |reason: &str, message: Option<String>| core::ContainerState {
        waiting: Some(core::ContainerStateWaiting {
            reason: non_empty(reason),
            message,
        }),
        ..Default::default()
    };
    let retry_pending = p.next_retry_at != zero_time();
    let (state, last_state) = match p.status {
        PodPhase::Running => (
            core::ContainerState {
                running: Some(core::ContainerStateRunning {
                    started_at: p.started_at.map(to_time),
                }),
                ..Default::default()
            },
            terminated,
        ),
        PodPhase::Pending => (waiting("ContainerCreating", None), terminated),
        PodPhase::Failed | PodPhase::Succeeded if retry_pending => {
            (waiting(&p.reason, non_empty(&p.message)), terminated)
        }
        PodPhase::Failed | PodPhase::Succeeded => match terminated {
            Some(t) => (t, None),
            None => (waiting(&p.reason, non_empty(&p.message)), None),
        },
    };
    let bound = !p.spec.node_name.is_empty();
    status.container_statuses = (bound || p.retry_count > 0).then(|| {
        containers
            .into_iter()
            .enumerate()
            .map(|(i, (name, image))| core::ContainerStatus {
                ready: p.status == PodPhase::Running && !p.not_ready.contains(&name),
                name,
                image: image.unwrap_or_default(),
                image_id: String::new(),
                // Only the main container's engine id is known here.
                container_id: if i == 0 { container_id.clone() } else { None },
                started: Some(p.status == PodPhase::Running),
                restart_count: p.retry_count.min(i32::MAX as u32) as i32,
                state: Some(state.clone()),
                last_state: last_state.clone(),
                ..Default::default()
            })
            .collect()
    });
    let before = status.conditions.take().unwrap_or_default();
    let ready = p.is_ready();
    let not_ready = (!ready).then_some("ContainersNotReady");
    // Kubernetes' wording: `containers with unready status: [web]`.
    let unready_message = (p.status == PodPhase::Running && !p.not_ready.is_empty()).then(|| {
        let names: Vec<&str> = p.not_ready.iter().map(String::as_str).collect();
        format!("containers with unready status: [{}]", names.join(" "))
    });
    status.conditions = if bound {
        Some(vec![
            condition(&before, "PodScheduled", true, None, None),
            condition(&before, "Initialized", true, None, None),
            condition(
                &before,
                "ContainersReady",
                ready,
                not_ready,
                unready_message.as_deref(),
            ),
            condition(
                &before,
                "Ready",
                ready,
                not_ready,
                unready_message.as_deref(),
            ),
        ])
    } else if p.reason == "Unschedulable" {
        Some(vec![condition(
            &before,
            "PodScheduled",
            false,
            Some("Unschedulable"),
            non_empty(&p.message).as_deref(),
        )])
    } else {
        None
    };
    k
}

/// The view of a stored ReplicaSet.
pub fn replicaset_from_kube(k: KubeReplicaSet) -> ReplicaSet {
    let m = &k.metadata;
    let spec = k.spec.as_ref();
    let template = spec.and_then(|s| s.template.as_ref());
    let mut t = spec_from_kube(template.and_then(|t| t.spec.as_ref()));
    t.labels = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let status = k.status.as_ref();
    let rs = ReplicaSet {
        namespace: namespace_or_default(m.namespace.as_deref().unwrap_or_default()).to_string(),
        name: m.name.clone().unwrap_or_default(),
        desired_count: spec
            .and_then(|s| s.replicas)
            .unwrap_or(1)
            .clamp(0, i32::MAX) as u32,
        current_count: status.map_or(0, |s| s.replicas.max(0) as u32),
        ready_count: status.and_then(|s| s.ready_replicas).unwrap_or(0).max(0) as u32,
        available_count: status
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
            .max(0) as u32,
        min_ready_seconds: spec.and_then(|s| s.min_ready_seconds).unwrap_or(0).max(0) as u32,
        selector: spec
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default(),
        template: t,
        resource_version: 0,
        uid: m.uid.clone().unwrap_or_default(),
        generation: m.generation.unwrap_or(0),
        observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
        deleting: m.deletion_timestamp.is_some(),
        stored: None,
    };
    ReplicaSet {
        stored: Some(Arc::new(k)),
        ..rs
    }
}

/// The stored object for a ReplicaSet view.
pub fn replicaset_into_kube(r: &ReplicaSet) -> KubeReplicaSet {
    let mut k = r.stored.as_deref().cloned().unwrap_or_default();
    let spec_before = k.spec.clone();
    let m = &mut k.metadata;
    m.name = Some(r.name.clone());
    m.namespace = Some(namespace_or_default(&r.namespace).to_string());
    m.uid = non_empty(&r.uid);
    m.resource_version = None;
    if m.creation_timestamp.is_none() {
        m.creation_timestamp = Some(to_time(Utc::now()));
    }
    let spec = k.spec.get_or_insert_with(Default::default);
    spec.replicas = Some(r.desired_count.min(i32::MAX as u32) as i32);
    // Written only when it changes, so that an unset field stays unset.
    if spec.min_ready_seconds.unwrap_or(0).max(0) as u32 != r.min_ready_seconds {
        spec.min_ready_seconds = Some(r.min_ready_seconds.min(i32::MAX as u32) as i32);
    }
    spec.selector = LabelSelector {
        match_labels: map_or_none(&r.selector),
        match_expressions: spec.selector.match_expressions.take(),
    };
    let template = spec.template.get_or_insert_with(Default::default);
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels = map_or_none(&r.template.labels);
    spec_into_kube(
        &r.template,
        &r.name,
        template.spec.get_or_insert_with(Default::default),
    );
    // Kubernetes raises the generation with every change of the spec.
    let stored_generation = r.stored.as_ref().and_then(|s| s.metadata.generation);
    k.metadata.generation = Some(match stored_generation {
        Some(g) if spec_before != k.spec => g + 1,
        Some(g) => g,
        None => r.generation.max(1),
    });
    let status = k.status.get_or_insert_with(Default::default);
    status.replicas = r.current_count.min(i32::MAX as u32) as i32;
    status.fully_labeled_replicas = Some(status.replicas);
    let ready = r.ready_count.min(i32::MAX as u32) as i32;
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(r.available_count.min(i32::MAX as u32) as i32);
    status.observed_generation = (r.observed_generation != 0).then_some(r.observed_generation);
    k
}

/// The view of a stored node.
pub fn node_from_kube(k: KubeNode) -> Node {
    let m = &k.metadata;
    let status = k.status.as_ref();
    let capacity = status.and_then(|s| s.capacity.as_ref());
    let quantity = |key: &str, parse: fn(&str) -> Result<u64, _>| {
        capacity
            .and_then(|c| c.get(key))
            .and_then(|q| parse(&q.0).ok())
            .unwrap_or(0)
    };
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let is_ready = ready.is_some_and(|c| c.status == "True");
    let node = Node {
        name: m.name.clone().unwrap_or_default(),
        labels: m.labels.clone().unwrap_or_default(),
        capacity: Resources {
            cpu: quantity("cpu", parse_cpu_millis),
            memory: quantity("memory", parse_bytes),
        },
        max_pods: quantity("pods", parse_bytes).min(u64::from(u32::MAX)) as u32,
        status: if is_ready {
            NodeStatus::Ready
        } else {
            NodeStatus::NotReady
        },
        unschedulable: k
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        reason: if is_ready {
            String::new()
        } else {
            ready.and_then(|c| c.reason.clone()).unwrap_or_default()
        },
        resource_version: 0,
        stored: None,
    };
    Node {
        stored: Some(Arc::new(k)),
        ..node
    }
}

/// The stored object for a node view.
pub fn node_into_kube(n: &Node) -> KubeNode {
    let mut k = n.stored.as_deref().cloned().unwrap_or_default();
    let m = &mut k.metadata;
    m.name = Some(n.name.clone());
    m.labels = map_or_none(&n.labels);
    m.resource_version = None;
    if m.creation_timestamp.is_none() {
        m.creation_timestamp = Some(to_time(Utc::now()));
    }
    k.spec.get_or_insert_with(Default::default).unschedulable = n.unschedulable.then_some(true);
    let status = k.status.get_or_insert_with(Default::default);
    let amounts: BTreeMap<String, Quantity> = [
        ("cpu", format_cpu_millis(n.capacity.cpu)),
        ("memory", format_bytes(n.capacity.memory)),
        ("pods", n.max_pods.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    status.capacity = Some(amounts.clone());
    status.allocatable = Some(amounts);
    let mut conditions = status.conditions.take().unwrap_or_default();
    let ready = n.status == NodeStatus::Ready;
    let (state, reason, message) = if ready {
        ("True", "KubeletReady", "kubelet is posting ready status")
    } else {
        let reason = if n.reason.is_empty() {
            "NodeStatusUnknown"
        } else {
            n.reason.as_str()
        };
        ("Unknown", reason, "Kubelet stopped posting node status.")
    };
    let now = to_time(Utc::now());
    let since = conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == state)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    conditions.retain(|c| c.type_ != "Ready");
    conditions.push(core::NodeCondition {
        type_: "Ready".into(),
        status: state.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now),
        last_transition_time: Some(since),
    });
    status.conditions = Some(conditions);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed_pod() -> Pod {
        let mut p = Pod {
            namespace: "default".into(),
            ..Default::default()
        };
        p.spec.name = "web-1a2b3c4d".into();
        p.spec.image = "miniku/busybox:latest".into();
        p.spec.command = vec!["httpd".into(), "-f".into()];
        p.spec.labels.insert("app".into(), "web".into());
        p.spec.env.insert("A".into(), "1".into());
        p.spec.resources = Resources {
            cpu: 250,
            memory: 64 << 20,
        };
        p.uid = "u1".into();
        p.owner = Some(OwnerReference {
            kind: "ReplicaSet".into(),
            name: "web".into(),
            uid: "rs1".into(),
        });
        p.created_at = whole(Some(Utc::now()));
        p
    }

    /// Whole seconds: Kubernetes' `Time` has no fraction.
    fn whole(t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        t.and_then(|t| DateTime::from_timestamp(t.timestamp(), 0))
    }

    fn round_trip(p: &Pod) -> Pod {
        pod_from_kube(
            serde_json::from_value(serde_json::to_value(pod_into_kube(p)).unwrap()).unwrap(),
        )
    }

    fn same(a: &Pod, b: &Pod) {
        let b = Pod {
            stored: None,
            ..b.clone()
        };
        assert_eq!(a, &b);
    }

    #[test]
    fn a_pod_view_survives_the_kubernetes_shape_in_every_state() {
        let now = whole(Some(Utc::now())).unwrap_or_default();
        let pending = seed_pod();
        same(&pending, &round_trip(&pending));

        let mut running = pending.clone();
        running.spec.node_name = "node-a".into();
        running.status = PodPhase::Running;
        running.container_id = "abc".into();
        running.started_at = Some(now);
        running.pod_ip = "172.17.0.3".into();
        running.host_ip = "192.168.1.10".into();
        same(&running, &round_trip(&running));

        let mut crashing = running.clone();
        crashing.status = PodPhase::Failed;
        crashing.retry_count = 3;
        crashing.reason = "CrashLoopBackOff".into();
        crashing.message = "container exited with code 1".into();
        crashing.exit_code = Some(1);
        crashing.finished_at = Some(now);
        crashing.next_retry_at = now + chrono::Duration::seconds(20);
        same(&crashing, &round_trip(&crashing));

        let mut lost = running.clone();
        lost.status = PodPhase::Failed;
        lost.reason = "NodeLost".into();
        lost.finished_at = Some(now);
        same(&lost, &round_trip(&lost));

        let mut unschedulable = pending.clone();
        unschedulable.reason = "Unschedulable".into();
        unschedulable.message = "0/1 nodes are available".into();
        same(&unschedulable, &round_trip(&unschedulable));
    }

    #[test]
    fn a_crash_looping_pod_looks_as_kubernetes_shows_it() {
        let mut p = seed_pod();
        p.spec.node_name = "node-a".into();
        p.status = PodPhase::Failed;
        p.retry_count = 2;
        p.reason = "CrashLoopBackOff".into();
        p.exit_code = Some(1);
        p.next_retry_at = Utc::now();
        let k = pod_into_kube(&p);
        let cs = &k
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0];
        assert_eq!(cs.restart_count, 2);
        let waiting = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(last.exit_code, 1);
        let c = &k.spec.as_ref().unwrap().containers[0];
        let req = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(req["cpu"].0, "250m");
        assert_eq!(req["memory"].0, "64Mi");
        assert_eq!(
            k.metadata.owner_references.as_ref().unwrap()[0].api_version,
            "apps/v1"
        );
    }

    #[test]
    fn fields_the_view_lacks_survive_a_write_through_it() {
        let mut k = pod_into_kube(&seed_pod());
        let spec = k.spec.as_mut().unwrap();
        spec.containers.push(core::Container {
            name: "sidecar".into(),
            image: Some("miniku/busybox:latest".into()),
            ..Default::default()
        });
        spec.restart_policy = Some("Always".into());
        k.metadata.annotations = Some([("team".to_string(), "a".to_string())].into());
        let mut view = pod_from_kube(k);
        view.status = PodPhase::Running;
        view.spec.node_name = "node-b".into();
        let back = pod_into_kube(&view);
        let spec = back.spec.as_ref().unwrap();
        assert_eq!(spec.containers.len(), 2);
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.node_name.as_deref(), Some("node-b"));
        assert_eq!(back.metadata.annotations.as_ref().unwrap()["team"], "a");
    }

    #[test]
    fn readiness_is_carried_and_its_condition_moves_only_on_transitions() {
        let mut p = seed_pod();
        p.spec.node_name = "node-a".into();
        p.status = PodPhase::Running;
        p.not_ready.insert(DEFAULT_CONTAINER_NAME.into());
        let k = pod_into_kube(&p);
        let status = k.status.as_ref().unwrap();
        assert!(!status.container_statuses.as_ref().unwrap()[0].ready);
        let cond = |k: &KubePod, t: &str| {
            k.status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == t)
                .cloned()
                .unwrap()
        };
        assert_eq!(cond(&k, "Ready").status, "False");
        assert_eq!(
            cond(&k, "ContainersReady").message.as_deref(),
            Some("containers with unready status: [main]")
        );
        let view = round_trip(&p);
        same(&p, &view);
        // An unrelated write keeps the transition time; becoming ready moves it.
        let mut k2 = k.clone();
        let old = to_time(Utc::now() - chrono::Duration::seconds(60));
        for c in k2.status.as_mut().unwrap().conditions.as_mut().unwrap() {
            c.last_transition_time = Some(old.clone());
        }
        let mut v = pod_from_kube(k2);
        v.message = "something".into();
        assert_eq!(
            cond(&pod_into_kube(&v), "Ready").last_transition_time,
            Some(old.clone())
        );
        v.not_ready.clear();
        let ready = pod_into_kube(&v);
        assert_eq!(cond(&ready, "Ready").status, "True");
        assert_ne!(cond(&ready, "Ready").last_transition_time, Some(old));
        assert!(pod_from_kube(ready).is_ready());
    }

    #[test]
    fn available_replicas_and_min_ready_seconds_are_their_own() {
        let rs = ReplicaSet {
            name: "web".into(),
            desired_count: 3,
            ready_count: 3,
            available_count: 1,
            min_ready_seconds: 30,
            ..Default::default()
        };
        let k = replicaset_into_kube(&rs);
        let status = k.status.as_ref().unwrap();
        assert_eq!(
            (status.ready_replicas, status.available_replicas),
            (Some(3), Some(1))
        );
        assert_eq!(k.spec.as_ref().unwrap().min_ready_seconds, Some(30));
        let back = replicaset_from_kube(k);
        assert_eq!((back.available_count, back.min_ready_seconds), (1, 30));
        // Unset stays unset.
        let plain = replicaset_into_kube(&ReplicaSet::default());
        assert_eq!(plain.spec.as_ref().unwrap().min_ready_seconds, None);
    }

    #[test]
    fn replicaset_and_node_views_survive_the_kubernetes_shape() {
        let mut rs = ReplicaSet {
            namespace: "default".into(),
            name: "web".into(),
            desired_count: 3,
            current_count: 2,
            ready_count: 1,
            uid: "u".into(),
            generation: 1,
            observed_generation: 1,
            ..Default::default()
        };
        rs.selector.insert("app".into(), "web".into());
        rs.template.image = "nginx:latest".into();
        rs.template.labels.insert("app".into(), "web".into());
        let k = replicaset_into_kube(&rs);
        assert_eq!(
            k.spec
                .as_ref()
                .unwrap()
                .template
                .as_ref()
                .unwrap()
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .name,
            "web"
        );
        let back = replicaset_from_kube(k);
        assert_eq!(
            ReplicaSet {
                stored: None,
                ..back
            },
            rs
        );

        let node = Node {
            name: "node-a".into(),
            capacity: Resources {
                cpu: 2000,
                memory: 8 << 30,
            },
            max_pods: 110,
            status: NodeStatus::NotReady,
            reason: "NodeLeaseExpired".into(),
            ..Default::default()
        };
        let back = node_from_kube(node_into_kube(&node));
        assert_eq!(
            Node {
                stored: None,
                ..back
            },
            node
        );
    }

    #[test]
    fn a_status_write_through_the_view_leaves_the_template_and_generation_alone() {
        let rs: KubeReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "default", "generation": 1},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"nodeSelector": {}, "containers": [{"name": "main", "image": "x"}]},
                },
            },
        }))
        .unwrap();
        let mut view = replicaset_from_kube(rs.clone());
        view.ready_count = 2;
        let written = replicaset_into_kube(&view);
        assert_eq!(written.spec, rs.spec);
        assert_eq!(written.metadata.generation, Some(1));
    }
}
