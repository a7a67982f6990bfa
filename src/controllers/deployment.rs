//! The Deployment controller: rolls a Deployment's pods from one template to the next
//! through ReplicaSets it owns, named `<deployment>-<pod-template-hash>`, as Kubernetes'
//! Deployment controller does.
//!
//! Driven by informers on Deployments, ReplicaSets and pods; a change to a Deployment, to a
//! ReplicaSet it owns or to a pod of one queues the Deployment. Reconciling one:
//! - gone: its ReplicaSets are deleted (Background cascade; the ReplicaSet controller then
//!   deletes their pods); being deleted with a finalizer (Foreground or Orphan): its
//!   ReplicaSets are deleted or released, then it is deleted;
//! - ReplicaSets that its selector matches and that no controller owns are adopted;
//! - paused: only scaling (the Deployment's replicas changed) and status;
//! - a scaling event (an active ReplicaSet was sized for other replicas): replicas are
//!   spread over the active ReplicaSets in proportion ([`proportional_sizes`]);
//! - otherwise a rollout step: RollingUpdate ([`new_rs_target`], [`old_rs_scale_downs`])
//!   within `maxSurge` / `maxUnavailable`, or Recreate (old ones to 0, and once their pods
//!   are gone the new one to full size);
//! - once complete, old ReplicaSets beyond `revisionHistoryLimit` are deleted;
//! - status (replicas, updated, ready, available, unavailable, observedGeneration) and the
//!   `Available` and `Progressing` conditions (with `ProgressDeadlineExceeded`) are written.
//!
//! One step writes what it decided and returns; its writes come back as events and the next
//! step continues from them. After a write the Deployment is not reconciled again until the
//! ReplicaSet cache has caught up with it, so a step never sizes from its own stale view.
//! The arithmetic is pure functions over [`RsCounts`], tested without a store. Pods are the
//! ReplicaSet controller's; this controller never creates or deletes one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::api::deployment::{
    equal_ignoring_hash, pod_template_hash, revision_of, surge_and_unavailable,
    ANNOTATIONS_NOT_COPIED, DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION,
    POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION, REVISION_HISTORY_ANNOTATION,
};
use crate::api::kube::{from_time, to_time, KubeDeployment, KubeReplicaSet};
use crate::api::{namespace_or_default, Pod, ReplicaSet};
use crate::events::{reference_to, Recorder};
use crate::registry::{Object, Registry, RegistryError};
use crate::runtime::{Change, Controller, Informer, Next, Shutdown};

/// How often every Deployment is reconciled even without a change (a safety net only).
pub const RESYNC_PERIOD: Duration = Duration::from_secs(300);
/// Longest a step waits for the ReplicaSet cache to show the previous step's writes.
const CATCH_UP: Duration = Duration::from_secs(5);

/// What the rollout arithmetic needs to know of one ReplicaSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RsCounts {
    pub key: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.replicas`: the pods it has, which lag `replicas` while it grows or shrinks.
    pub pods: i32,
    /// `status.availableReplicas`.
    pub available: i32,
    /// Creation time, for "oldest first" (microseconds).
    pub created: i64,
    /// The `max-replicas` annotation: replicas + maxSurge when it was last sized.
    pub annotated_max: Option<i32>,
    /// Whether the ReplicaSet controller has acted on the current spec
    /// (`status.observedGeneration` ≥ `metadata.generation`): until then `pods` may miss a
    /// pod it is still creating for an earlier, larger size.
    pub settled: bool,
}

/// RollingUpdate: what the new ReplicaSet may grow to (Kubernetes' `NewRSNewReplicas`):
/// never beyond `replicas + surge` pods over all ReplicaSets, nor beyond `replicas`.
/// A ReplicaSet counts as the larger of its size and the pods it still has: Kubernetes
/// counts sizes only, so the pods of a shrunk old ReplicaSet that are not gone yet can
/// take it past `replicas + surge` pods for a moment; here the new one waits for them, and
/// for every ReplicaSet's controller to have acted on its latest size (a pod it creates for
/// a size it has just lost is not in `pods` yet).
pub fn new_rs_target(replicas: i32, surge: i32, all: &[RsCounts], new: &RsCounts) -> i32 {
    if new.replicas >= replicas {
        return replicas;
    }
    if all.iter().any(|r| !r.settled) {
        return new.replicas;
    }
    let current: i32 = all.iter().map(|r| r.replicas.max(r.pods)).sum();
    let max_total = replicas + surge;
    if current >= max_total {
        return new.replicas;
    }
    let grow = (max_total - current).min(replicas - new.replicas);
    new.replicas + grow
}

/// RollingUpdate: how far old ReplicaSets may shrink now (Kubernetes'
/// `reconcileOldReplicaSets`): unavailable old pods go first, then available ones, as long as
/// `replicas - unavailable` pods stay available. `olds` are scaled oldest first. Returns the
/// old ReplicaSets to resize, with their new size.
pub fn old_rs_scale_downs(
    replicas: i32,
    unavailable: i32,
    new: Option<&RsCounts>,
    olds: &[RsCounts],
) -> Vec<(String, i32)> {
    let old_pods: i32 = olds.iter().map(|r| r.replicas).sum();
    if old_pods == 0 {
        return Vec::new();
    }
    let mut olds: Vec<RsCounts> = olds.to_vec();
    olds.sort_by_key(|r| (r.created, r.key.clone()));
    let new_replicas = new.map_or(0, |n| n.replicas);
    let new_unavailable = new.map_or(0, |n| (n.replicas - n.available).max(0));
    let all_pods = old_pods + new_replicas;
    let min_available = replicas - unavailable;
    let mut budget = all_pods - min_available - new_unavailable;
    let mut sizes: BTreeMap<String, i32> = BTreeMap::new();
    // Unhealthy first: pods that are not available cost no availability to remove.
    for rs in &mut olds {
        if budget <= 0 {
            break;
        }
        let unhealthy = (rs.replicas - rs.available).max(0);
        let cut = unhealthy.min(budget);
        if cut > 0 {
            rs.replicas -= cut;
            budget -= cut;
            sizes.insert(rs.key.clone(), rs.replicas);
        }
    }
    // Then available ones, down to the minimum availability.
    let available: i32 = olds
        .iter()
        .map(|r| r.available.min(r.replicas))
        .sum::<i32>()
        + new.map_or(0, |n| n.available);
    let mut cut_left = available - min_available;
    for rs in &mut olds {
        if cut_left <= 0 {
            break;
        }
        if rs.replicas == 0 {
            continue;
        }
        let cut = rs.replicas.min(cut_left);
        rs.replicas -= cut;
        cut_left -= cut;
        sizes.insert(rs.key.clone(), rs.replicas);
    }
    sizes.into_iter().collect()
}

/// A scaling event with several active ReplicaSets: the Deployment's new `replicas` (plus
/// surge) spread over them in proportion to their sizes (Kubernetes' proportional scaling),
/// the rounding left over going to the largest (newest among equals when growing, oldest
/// when shrinking). `active` are the ReplicaSets with replicas; `status_replicas` is the
/// Deployment's `status.replicas` (used where a ReplicaSet has no `max-replicas`).
pub fn proportional_sizes(
    replicas: i32,
    surge: i32,
    status_replicas: i32,
    active: &[RsCounts],
) -> Vec<(String, i32)> {
    let total: i32 = active.iter().map(|r| r.replicas).sum();
    let allowed = if replicas > 0 { replicas + surge } else { 0 };
    let to_add = allowed - total;
    let mut order: Vec<&RsCounts> = active.iter().collect();
    if to_add > 0 {
        order.sort_by_key(|r| (std::cmp::Reverse(r.replicas), std::cmp::Reverse(r.created)));
    } else {
        order.sort_by_key(|r| (std::cmp::Reverse(r.replicas), r.created));
    }
    let mut added = 0;
    let mut sizes: Vec<(String, i32)> = Vec::with_capacity(order.len());
    for rs in &order {
        let mut part = 0;
        if rs.replicas != 0 && to_add != 0 && to_add != added {
            let fraction = if replicas == 0 {
                -rs.replicas
            } else {
                let annotated = rs.annotated_max.unwrap_or(status_replicas).max(1);
                let size =
                    f64::from(rs.replicas) * f64::from(replicas + surge) / f64::from(annotated);
                size.round() as i32 - rs.replicas
            };
            let left = to_add - added;
            part = if to_add > 0 {
                fraction.min(left)
            } else {
                fraction.max(left)
            };
        }
        added += part;
        sizes.push((rs.key.clone(), rs.replicas + part));
    }
    if let Some(first) = sizes.first_mut() {
        first.1 = (first.1 + to_add - added).max(0);
    }
    sizes
}

/// The Deployment's status counts from its ReplicaSets (Kubernetes' `calculateStatus`,
/// without the conditions).
fn counts_of(
    d: &KubeDeployment,
    new: Option<&KubeReplicaSet>,
    all: &[KubeReplicaSet],
) -> apps::DeploymentStatus {
    let of = |rs: &KubeReplicaSet, f: fn(&apps::ReplicaSetStatus) -> i32| {
        rs.status.as_ref().map_or(0, f)
    };
    let sum = |f: fn(&apps::ReplicaSetStatus) -> i32| all.iter().map(|r| of(r, f)).sum::<i32>();
    let replicas = sum(|s| s.replicas);
    let ready = sum(|s| s.ready_replicas.unwrap_or(0));
    let available = sum(|s| s.available_replicas.unwrap_or(0));
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let previous = d.status.clone().unwrap_or_default();
    apps::DeploymentStatus {
        replicas: Some(replicas),
        updated_replicas: Some(new.map_or(0, |n| of(n, |s| s.replicas))),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((desired - available).max(0)),
        observed_generation: d.metadata.generation,
        collision_count: previous.collision_count,
        conditions: previous.conditions,
        terminating_replicas: None,
    }
}

/// Whether the rollout is done: every pod updated and available, and no old pod left.
fn is_complete(d: &KubeDeployment, s: &apps::DeploymentStatus) -> bool {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    s.updated_replicas == Some(desired)
        && s.replicas == Some(desired)
        && s.available_replicas == Some(desired)
        && s.observed_generation >= d.metadata.generation
}

/// Whether the rollout moved since `before` (Kubernetes' `DeploymentProgressing`).
fn has_progressed(before: &apps::DeploymentStatus, now: &apps::DeploymentStatus) -> bool {
    let old =
        |s: &apps::DeploymentStatus| s.replicas.unwrap_or(0) - s.updated_replicas.unwrap_or(0);
    now.updated_replicas > before.updated_replicas
        || old(now) < old(before)
        || now.ready_replicas > before.ready_replicas
        || now.available_replicas > before.available_replicas
}

fn condition<'a>(
    s: &'a apps::DeploymentStatus,
    kind: &str,
) -> Option<&'a apps::DeploymentCondition> {
    s.conditions.iter().flatten().find(|c| c.type_ == kind)
}

/// Sets a condition; its `lastTransitionTime` changes only when its status does, and its
/// `lastUpdateTime` when anything about it does.
fn set_condition(
    s: &mut apps::DeploymentStatus,
    kind: &str,
    status: &str,
    reason: &str,
    message: String,
    now: DateTime<Utc>,
) {
    let list = s.conditions.get_or_insert_with(Vec::new);
    let existing = list.iter_mut().find(|c| c.type_ == kind);
    match existing {
        Some(c)
            if c.status == status
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message.as_str()) => {}
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(to_time(now));
            }
            c.status = status.into();
            c.reason = Some(reason.into());
            c.message = Some(message);
            c.last_update_time = Some(to_time(now));
        }
        None => list.push(apps::DeploymentCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_update_time: Some(to_time(now)),
            last_transition_time: Some(to_time(now)),
        }),
    }
}

/// `Available` and `Progressing` for the step's outcome; returns when to look again for the
/// progress deadline (None: nothing to wait for).
fn update_conditions(
    d: &KubeDeployment,
    new: Option<&KubeReplicaSet>,
    before: &apps::DeploymentStatus,
    s: &mut apps::DeploymentStatus,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let spec = d.spec.as_ref();
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
    let (_, unavailable) = surge_and_unavailable(d);
    if s.available_replicas.unwrap_or(0) >= desired - unavailable {
        set_condition(
            s,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            now,
        );
    } else {
        set_condition(
            s,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            now,
        );
    }
    let new_name = new
        .and_then(|n| n.metadata.name.clone())
        .unwrap_or_default();
    if spec.is_some_and(|s| s.paused == Some(true)) {
        set_condition(
            s,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            now,
        );
        return None;
    }
    let deadline = spec.and_then(|s| s.progress_deadline_seconds);
    if is_complete(d, s) {
        set_condition(
            s,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            now,
        );
        return None;
    }
    let resumed = condition(s, "Progressing")
        .is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused"));
    if has_progressed(before, s) || resumed || condition(s, "Progressing").is_none() {
        set_condition(
            s,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
            now,
        );
    }
    let timed_out = condition(s, "Progressing")
        .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
    if timed_out {
        return None;
    }
    let deadline = Duration::from_secs(u64::try_from(deadline?).ok()?);
    let since = condition(s, "Progressing")
        .and_then(|c| c.last_update_time.as_ref())
        .map(from_time)
        .unwrap_or(now);
    let elapsed = (now - since).to_std().unwrap_or_default();
    if elapsed >= deadline {
        set_condition(
            s,
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{new_name}\" has timed out progressing."),
            now,
        );
        None
    } else {
        Some(deadline - elapsed + Duration::from_millis(100))
    }
}

/// The Deployment (by key) whose controller reference `rs` carries.
fn controlling_deployment(rs: &ReplicaSet) -> Option<String> {
    let k = rs.stored.as_deref()?;
    let owner = controller_ref(k)?;
    (owner.kind == "Deployment")
        .then(|| format!("{}/{}", namespace_or_default(&rs.namespace), owner.name))
}

fn controller_ref(rs: &KubeReplicaSet) -> Option<&OwnerReference> {
    rs.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// The Deployments a ReplicaSet change concerns: its controller before and after.
fn replicaset_owners(change: &Change<ReplicaSet>) -> Vec<String> {
    let (old, new) = match change {
        Change::Upsert { old, new } => (old.as_ref(), new),
        Change::Deleted(r) => (None, r),
    };
    let mut keys: Vec<String> = old.and_then(controlling_deployment).into_iter().collect();
    keys.extend(controlling_deployment(new));
    keys.dedup();
    keys
}

/// A ReplicaSet's Kubernetes object, with the revision it was read at.
fn kube_of(rs: &ReplicaSet) -> Option<KubeReplicaSet> {
    let mut k = rs.stored.as_deref()?.clone();
    k.set_resource_version(rs.resource_version);
    Some(k)
}

fn replicas_of(rs: &KubeReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn counts(rs: &KubeReplicaSet) -> RsCounts {
    let annotation = |k: &str| {
        rs.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .and_then(|v| v.parse().ok())
    };
    RsCounts {
        key: rs.key(),
        replicas: replicas_of(rs),
        pods: rs.status.as_ref().map_or(0, |s| s.replicas),
        available: rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
        created: rs
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| from_time(t).timestamp_micros()),
        annotated_max: annotation(MAX_REPLICAS_ANNOTATION),
        settled: rs.status.as_ref().and_then(|s| s.observed_generation)
            >= Some(rs.metadata.generation.unwrap_or(1)),
    }
}

/// The annotations a Deployment hands its ReplicaSets: its own (but the controller's and
/// kubectl's apply record), with the rollout's revision and sizes.
fn replicaset_annotations(
    d: &KubeDeployment,
    current: Option<&BTreeMap<String, String>>,
    revision: i64,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = current.cloned().unwrap_or_default();
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if !ANNOTATIONS_NOT_COPIED.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    let old = revision_of(current);
    if old != 0 && old != revision {
        let mut history: Vec<String> = out
            .get(REVISION_HISTORY_ANNOTATION)
            .map(|h| h.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        history.push(old.to_string());
        out.insert(REVISION_HISTORY_ANNOTATION.into(), history.join(","));
    }
    out.insert(REVISION_ANNOTATION.into(), revision.to_string());
    let (surge, _) = surge_and_unavailable(d);
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    out.insert(DESIRED_REPLICAS_ANNOTATION.into(), replicas.to_string());
    out.insert(
        MAX_REPLICAS_ANNOTATION.into(),
        (replicas + surge).to_string(),
    );
    out
}

/// A new ReplicaSet for the Deployment's current template.
fn new_replicaset(d: &KubeDeployment, hash: &str, replicas: i32, revision: i64) -> KubeReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or_default());
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    let labels = meta.labels.clone();
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    let mut rs = KubeReplicaSet::default();
    rs.metadata.name = Some(name);
    rs.metadata.namespace = d.metadata.namespace.clone();
    rs.metadata.labels = labels;
    rs.metadata.uid = Some(crate::api::random_hex(32));
    rs.metadata.creation_timestamp = Some(to_time(Utc::now()));
    rs.metadata.generation = Some(1);
    rs.metadata.annotations = Some(replicaset_annotations(d, None, revision));
    rs.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: d.metadata.name.clone().unwrap_or_default(),
        uid: d.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    rs.spec = Some(apps::ReplicaSetSpec {
        replicas: Some(replicas),
        min_ready_seconds: spec.min_ready_seconds,
        selector,
        template: Some(template),
    });
    rs
}

#[derive(Clone)]
pub struct DeploymentController {
    registry: Registry,
    deployments: Informer<KubeDeployment>,
    replicasets: Informer<ReplicaSet>,
    pods: Informer<Pod>,
    /// Deployment key → the ReplicaSet-cache revision its last writes need.
    written: Arc<Mutex<HashMap<String, i64>>>,
    /// ScalingReplicaSet events.
    events: Recorder,
}

/// What a step did to the ReplicaSets (the caller writes the status afterwards).
struct Step {
    /// The ReplicaSets as they are after the step's writes.
    all: Vec<KubeReplicaSet>,
    new_key: Option<String>,
}

impl DeploymentController {
    /// Runs the controller over shared informers until `shutdown`, or until the future is
    /// dropped, which stops every task it started.
    pub async fn run(
        registry: Registry,
        deployments: Informer<KubeDeployment>,
        replicasets: Informer<ReplicaSet>,
        pods: Informer<Pod>,
        workers: usize,
        shutdown: Shutdown,
    ) {
        let ctl = DeploymentController::new(
            registry,
            deployments.clone(),
            replicasets.clone(),
            pods.clone(),
        );
        let owners = replicasets.clone();
        let rs_cache = replicasets.clone();
        Controller::new("deployment")
            .reconciles(&deployments)
            .watches(&replicasets, replicaset_owners)
            // A pod that goes concerns the Deployment of its ReplicaSet (Recreate waits for
            // old pods to be gone).
            .watches(&pods, move |change| {
                let Change::Deleted(p) = change else {
                    return None;
                };
                let owner = p.owner.as_ref().filter(|o| o.kind == "ReplicaSet")?;
                let rs = owners.get(&format!(
                    "{}/{}",
                    namespace_or_default(&p.namespace),
                    owner.name
                ))?;
                controlling_deployment(&rs)
            })
            // ReplicaSets whose Deployment went while this controller was not running.
            .seed(move |queue| {
                rs_cache.for_each(|rs| {
                    if let Some(d) = controlling_deployment(rs) {
                        queue.add(&d);
                    }
                })
            })
            .resync_every(RESYNC_PERIOD, &deployments)
            .run(workers, shutdown.wait(), move |key| {
                let ctl = ctl.clone();
                async move { ctl.reconcile(&key).await }
            })
            .await;
    }

    pub fn new(
        registry: Registry,
        deployments: Informer<KubeDeployment>,
        replicasets: Informer<ReplicaSet>,
        pods: Informer<Pod>,
    ) -> Self {
        DeploymentController {
            events: Recorder::start(registry.clone(), "deployment-controller", None),
            registry,
            deployments,
            replicasets,
            pods,
            written: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn remember_write(&self, key: &str, revision: i64) {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let v = w.entry(key.to_string()).or_insert(0);
        *v = (*v).max(revision);
    }

    /// Waits (bounded) until the ReplicaSet cache shows this Deployment's last writes.
    async fn catch_up(&self, key: &str) {
        let needed = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied();
        if let Some(rev) = needed {
            let _ = tokio::time::timeout(
                CATCH_UP,
                self.replicasets.wait_until(|c| c.revision() >= rev),
            )
            .await;
        }
    }

    /// Every ReplicaSet in `namespace` that `keep` accepts, as Kubernetes objects.
    fn replicasets_where(
        &self,
        namespace: &str,
        keep: impl Fn(&KubeReplicaSet) -> bool,
    ) -> Vec<KubeReplicaSet> {
        let mut out = Vec::new();
        self.replicasets.for_each(|rs| {
            if namespace_or_default(&rs.namespace) == namespace {
                if let Some(k) = kube_of(rs).filter(&keep) {
                    out.push(k);
                }
            }
        });
        out
    }

    /// Writes `next` over `before` (the cached ReplicaSet), raising `metadata.generation` when
    /// the spec changes, as Kubernetes' API server does: the ReplicaSet controller's
    /// `observedGeneration` then tells when it has acted on the new size.
    async fn update_rs(
        &self,
        key: &str,
        before: &KubeReplicaSet,
        mut next: KubeReplicaSet,
    ) -> Result<KubeReplicaSet, RegistryError> {
        if next.spec != before.spec {
            next.metadata.generation = Some(before.metadata.generation.unwrap_or(1) + 1);
        }
        let written = self.registry.update(&next).await?;
        self.remember_write(key, written.resource_version());
        Ok(written)
    }

    pub async fn reconcile(&self, key: &str) -> anyhow::Result<Next> {
        self.catch_up(key).await;
        let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
        let Some(d) = self.deployments.get(key) else {
            return self.delete_dependents(key, namespace, name, None).await;
        };
        let uid = d.metadata.uid.clone().unwrap_or_default();
        if d.metadata.deletion_timestamp.is_some() {
            return self.finish_deletion(key, &d).await;
        }
        let Some(spec) = d.spec.as_ref() else {
            return Ok(Next::Done);
        };
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        // Owned, and orphans the selector matches (adopted).
        let mut all = Vec::new();
        for rs in self.replicasets_where(namespace, |rs| match controller_ref(rs) {
            Some(o) => o.uid == uid,
            None => {
                let labels = rs.metadata.labels.clone().unwrap_or_default();
                !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            }
        }) {
            if controller_ref(&rs).is_none() {
                let mut adopted = rs.clone();
                adopted
                    .metadata
                    .owner_references
                    .get_or_insert_with(Vec::new)
                    .push(OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "Deployment".into(),
                        name: name.to_string(),
                        uid: uid.clone(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    });
                let adopted = self.update_rs(key, &rs, adopted).await?;
                tracing::info!(deployment = key, replicaset = %adopted.key(), "adopted");
                all.push(adopted);
            } else {
                all.push(rs);
            }
        }
        let before = d.status.clone().unwrap_or_default();
        let step = self.step(key, &d, all).await?;
        let new = step
            .new_key
            .as_ref()
            .and_then(|k| step.all.iter().find(|r| &r.key() == k));
        let mut status = counts_of(&d, new, &step.all);
        let recheck = update_conditions(&d, new, &before, &mut status, Utc::now());
        if is_complete(&d, &status) {
            self.clean_up_history(key, &d, &step).await?;
        }
        self.write_status(key, &d, new, status).await?;
        Ok(recheck.map_or(Next::Done, Next::After))
    }

    /// One step of sizing the ReplicaSets; returns them as they are afterwards.
    async fn step(
        &self,
        key: &str,
        d: &KubeDeployment,
        mut all: Vec<KubeReplicaSet>,
    ) -> anyhow::Result<Step> {
        let spec = d.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1);
        let (surge, unavailable) = surge_and_unavailable(d);
        let paused = spec.paused == Some(true);
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let mut new_key = all
            .iter()
            .filter(|r| {
                r.spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignoring_hash(t, &spec.template))
            })
            .max_by_key(|r| {
                (
                    revision_of(r.metadata.annotations.as_ref()),
                    r.metadata.creation_timestamp.as_ref().map(from_time),
                )
            })
            .map(Object::key);
        let max_old_revision = all
            .iter()
            .filter(|r| Some(r.key()) != new_key)
            .map(|r| revision_of(r.metadata.annotations.as_ref()))
            .max()
            .unwrap_or(0);
        // The new ReplicaSet carries the newest revision and the Deployment's annotations.
        if let Some(i) = new_key
            .as_ref()
            .and_then(|k| all.iter().position(|r| &r.key() == k))
        {
            let rs = &all[i];
            let current = revision_of(rs.metadata.annotations.as_ref());
            let revision = if current > max_old_revision {
                current
            } else {
                max_old_revision + 1
            };
            let annotations = replicaset_annotations(d, rs.metadata.annotations.as_ref(), revision);
            let min_ready = spec.min_ready_seconds;
            let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let annotations_change = rs.metadata.annotations.as_ref() != Some(&annotations);
            // Sizes are annotated when the ReplicaSet is sized, not here.
            let only_sizes = {
                let mut a = annotations.clone();
                let mut b = rs.metadata.annotations.clone().unwrap_or_default();
                for k in [DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION] {
                    a.remove(k);
                    b.remove(k);
                }
                a == b
            };
            if (annotations_change && !only_sizes) || rs_min_ready != min_ready {
                let mut next = rs.clone();
                let mut a = annotations;
                for k in [DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION] {
                    match rs.metadata.annotations.as_ref().and_then(|x| x.get(k)) {
                        Some(v) => a.insert(k.to_string(), v.clone()),
                        None => a.remove(k),
                    };
                }
                next.metadata.annotations = Some(a);
                next.spec
                    .get_or_insert_with(Default::default)
                    .min_ready_seconds = min_ready;
                let before = rs.clone();
                all[i] = self.update_rs(key, &before, next).await?;
            }
        }
        let active: Vec<RsCounts> = all
            .iter()
            .filter(|r| replicas_of(r) > 0)
            .map(counts)
            .collect();
        let desired_of = |r: &KubeReplicaSet| {
            r.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DESIRED_REPLICAS_ANNOTATION))
                .and_then(|v| v.parse::<i32>().ok())
        };
        let scaling_event = all
            .iter()
            .filter(|r| replicas_of(r) > 0)
            .any(|r| desired_of(r).is_some_and(|v| v != replicas));
        let sizes: Vec<(String, i32)> = if scaling_event || paused {
            self.scaling(d, replicas, surge, &all, new_key.as_deref(), &active)
        } else if recreate {
            let olds: Vec<&KubeReplicaSet> =
                all.iter().filter(|r| Some(r.key()) != new_key).collect();
            let shrink: Vec<(String, i32)> = olds
                .iter()
                .filter(|r| replicas_of(r) > 0)
                .map(|r| (r.key(), 0))
                .collect();
            if !shrink.is_empty() {
                shrink
            } else if self.old_pods_remain(&olds) {
                Vec::new()
            } else {
                match new_key.as_ref() {
                    Some(k) => vec![(k.clone(), replicas)],
                    None => {
                        let created = self
                            .create_new_rs(key, d, replicas, max_old_revision + 1)
                            .await?;
                        new_key = Some(created.key());
                        all.push(created);
                        Vec::new()
                    }
                }
            }
        } else {
            let new_counts = new_key
                .as_ref()
                .and_then(|k| all.iter().find(|r| &r.key() == k))
                .map(counts);
            let mut sizes = Vec::new();
            let new_counts = match new_counts {
                Some(n) => {
                    let all_counts: Vec<RsCounts> = all.iter().map(counts).collect();
                    let target = new_rs_target(replicas, surge, &all_counts, &n);
                    if target != n.replicas {
                        sizes.push((n.key.clone(), target));
                    }
                    RsCounts {
                        replicas: target,
                        ..n
                    }
                }
                None => {
                    let all_counts: Vec<RsCounts> = all.iter().map(counts).collect();
                    let blank = RsCounts {
                        key: String::new(),
                        replicas: 0,
                        pods: 0,
                        available: 0,
                        created: 0,
                        annotated_max: None,
                        settled: true,
                    };
                    let target = new_rs_target(replicas, surge, &all_counts, &blank);
                    let created = self
                        .create_new_rs(key, d, target, max_old_revision + 1)
                        .await?;
                    new_key = Some(created.key());
                    let c = counts(&created);
                    all.push(created);
                    c
                }
            };
            let olds: Vec<RsCounts> = all
                .iter()
                .filter(|r| Some(r.key()) != new_key)
                .map(counts)
                .collect();
            sizes.extend(old_rs_scale_downs(
                replicas,
                unavailable,
                Some(&new_counts),
                &olds,
            ));
            sizes
        };
        for (rs_key, size) in sizes {
            let Some(i) = all.iter().position(|r| r.key() == rs_key) else {
                continue;
            };
            let rs = &all[i];
            let is_new = Some(&rs_key) == new_key.as_ref();
            let mut next = rs.clone();
            next.spec.get_or_insert_with(Default::default).replicas = Some(size);
            let a = next.metadata.annotations.get_or_insert_with(BTreeMap::new);
            // Sized for these replicas (proportional scaling reads it back); an old
            // ReplicaSet scaled to 0 keeps what it had.
            if is_new || size > 0 {
                a.insert(DESIRED_REPLICAS_ANNOTATION.into(), replicas.to_string());
                a.insert(
                    MAX_REPLICAS_ANNOTATION.into(),
                    (replicas + surge).to_string(),
                );
            }
            if next == *rs {
                continue;
            }
            let from = replicas_of(rs);
            let before = rs.clone();
            all[i] = self.update_rs(key, &before, next).await?;
            tracing::info!(deployment = key, replicaset = %rs_key, from, to = size, "scaled");
            let direction = if size > from { "up" } else { "down" };
            self.events.normal(
                reference_to(d),
                "ScalingReplicaSet",
                format!(
                    "Scaled {direction} replica set {} from {from} to {size}",
                    crate::registry::name_of_key(&rs_key)
                ),
            );
        }
        Ok(Step { all, new_key })
    }

    /// Sizes for a scaling event (or a paused Deployment): one active ReplicaSet (or none)
    /// takes all replicas; several share them in proportion.
    fn scaling(
        &self,
        d: &KubeDeployment,
        replicas: i32,
        surge: i32,
        all: &[KubeReplicaSet],
        new_key: Option<&str>,
        active: &[RsCounts],
    ) -> Vec<(String, i32)> {
        let latest = || {
            all.iter()
                .max_by_key(|r| {
                    (
                        revision_of(r.metadata.annotations.as_ref()),
                        r.metadata.creation_timestamp.as_ref().map(from_time),
                    )
                })
                .map(Object::key)
        };
        match active {
            [] => new_key
                .map(str::to_string)
                .or_else(latest)
                .map(|k| vec![(k, replicas)])
                .unwrap_or_default(),
            [one] => vec![(one.key.clone(), replicas)],
            // Growing while a ReplicaSet's controller has not acted on its last size yet
            // could add pods beside one it is still creating: wait for it (its status write
            // queues the Deployment again).
            many if replicas + surge > many.iter().map(|r| r.replicas).sum::<i32>()
                && many.iter().any(|r| !r.settled) =>
            {
                Vec::new()
            }
            many => {
                let status_replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                proportional_sizes(replicas, surge, status_replicas, many)
            }
        }
    }

    /// Whether any pod of `olds` is still there (Recreate waits for them to go).
    fn old_pods_remain(&self, olds: &[&KubeReplicaSet]) -> bool {
        let uids: Vec<&str> = olds
            .iter()
            .filter_map(|r| r.metadata.uid.as_deref())
            .collect();
        let mut found = false;
        self.pods.for_each(|p| {
            if p.owner
                .as_ref()
                .is_some_and(|o| o.kind == "ReplicaSet" && uids.contains(&o.uid.as_str()))
            {
                found = true;
            }
        });
        found
    }

    /// Creates the ReplicaSet of the Deployment's template. A name taken by a ReplicaSet with
    /// another template (a hash collision) raises the Deployment's `collisionCount`, which
    /// changes the next hash.
    async fn create_new_rs(
        &self,
        key: &str,
        d: &KubeDeployment,
        replicas: i32,
        revision: i64,
    ) -> anyhow::Result<KubeReplicaSet> {
        let spec = d.spec.clone().unwrap_or_default();
        let collisions = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = pod_template_hash(&spec.template, collisions);
        let rs = new_replicaset(d, &hash, replicas, revision);
        match self.registry.create(&rs).await {
            Ok(created) => {
                self.remember_write(key, created.resource_version());
                tracing::info!(deployment = key, replicaset = %created.key(), replicas, revision, "created a new ReplicaSet");
                if replicas > 0 {
                    self.events.normal(
                        reference_to(d),
                        "ScalingReplicaSet",
                        format!(
                            "Scaled up replica set {} from 0 to {replicas}",
                            crate::registry::name_of_key(&created.key())
                        ),
                    );
                }
                Ok(created)
            }
            Err(RegistryError::AlreadyExists { .. }) => {
                let existing: KubeReplicaSet = self.registry.get(&rs.key()).await?;
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignoring_hash(t, &spec.template));
                let ours = controller_ref(&existing)
                    .is_some_and(|o| Some(&o.uid) == d.metadata.uid.as_ref());
                if same && ours {
                    self.remember_write(key, existing.resource_version());
                    return Ok(existing);
                }
                let mut next = d.clone();
                let status = next.status.get_or_insert_with(Default::default);
                status.collision_count = Some(collisions.unwrap_or(0) + 1);
                self.registry.update(&next).await?;
                anyhow::bail!(
                    "ReplicaSet {} exists with another template: collisionCount raised",
                    rs.key()
                )
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes old ReplicaSets with no pods beyond `revisionHistoryLimit`, oldest first.
    async fn clean_up_history(
        &self,
        key: &str,
        d: &KubeDeployment,
        step: &Step,
    ) -> anyhow::Result<()> {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let mut empty_olds: Vec<&KubeReplicaSet> = step
            .all
            .iter()
            .filter(|r| Some(r.key()) != step.new_key)
            .filter(|r| replicas_of(r) == 0 && r.status.as_ref().is_none_or(|s| s.replicas == 0))
            .collect();
        let olds_total = step
            .all
            .iter()
            .filter(|r| Some(r.key()) != step.new_key)
            .count();
        if olds_total <= limit {
            return Ok(());
        }
        empty_olds.sort_by_key(|r| revision_of(r.metadata.annotations.as_ref()));
        for rs in empty_olds.into_iter().take(olds_total - limit) {
            match self
                .registry
                .delete::<KubeReplicaSet>(&rs.key(), rs.resource_version())
                .await
            {
                Ok(gone) => {
                    self.remember_write(key, gone.resource_version());
                    tracing::info!(deployment = key, replicaset = %rs.key(), "deleted beyond revisionHistoryLimit");
                }
                Err(RegistryError::NotFound { .. } | RegistryError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Writes the status (and the Deployment's revision annotation) if they changed.
    async fn write_status(
        &self,
        key: &str,
        d: &KubeDeployment,
        new: Option<&KubeReplicaSet>,
        status: apps::DeploymentStatus,
    ) -> anyhow::Result<()> {
        let mut next = d.clone();
        next.status = Some(status);
        if let Some(new) = new {
            let revision = revision_of(new.metadata.annotations.as_ref());
            if revision > 0 {
                next.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(REVISION_ANNOTATION.into(), revision.to_string());
            }
        }
        if next == *d {
            return Ok(());
        }
        match self.registry.update(&next).await {
            // A newer Deployment's event queues it again.
            Ok(_) | Err(RegistryError::Conflict { .. } | RegistryError::NotFound { .. }) => Ok(()),
            Err(e) => {
                tracing::debug!(deployment = key, error = %e, "status not written");
                Err(e.into())
            }
        }
    }

    /// A Deployment being deleted with a finalizer: its ReplicaSets released (Orphan) or
    /// deleted (Foreground), then the Deployment itself.
    async fn finish_deletion(&self, key: &str, d: &KubeDeployment) -> anyhow::Result<Next> {
        let finalizers = d.metadata.finalizers.clone().unwrap_or_default();
        let orphan = finalizers.iter().any(|f| f == "orphan");
        let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
        let next = self
            .delete_dependents(key, namespace, name, Some((d, orphan)))
            .await?;
        if next != Next::Done {
            return Ok(next);
        }
        match self
            .registry
            .delete::<KubeDeployment>(key, d.resource_version())
            .await
        {
            Ok(_) | Err(RegistryError::NotFound { .. }) => {
                tracing::info!(
                    deployment = key,
                    orphan,
                    "deleted after its ReplicaSets were settled"
                );
                Ok(Next::Done)
            }
            Err(RegistryError::Conflict { .. }) => Ok(Next::Done),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes (or with `orphan`, releases) the ReplicaSets that the Deployment `name`
    /// controls. Without `deployment` (it is gone), those whose controller is a Deployment of
    /// that name that no longer exists. `Next::After` while some are still there.
    async fn delete_dependents(
        &self,
        key: &str,
        namespace: &str,
        name: &str,
        deployment: Option<(&KubeDeployment, bool)>,
    ) -> anyhow::Result<Next> {
        let uid = deployment.and_then(|(d, _)| d.metadata.uid.clone());
        let current_uid = self.deployments.get(key).and_then(|d| d.metadata.uid);
        let owned = self.replicasets_where(namespace, |rs| {
            controller_ref(rs).is_some_and(|o| {
                o.kind == "Deployment"
                    && o.name == name
                    && match &uid {
                        Some(u) => &o.uid == u,
                        None => current_uid.as_ref() != Some(&o.uid),
                    }
            })
        });
        if owned.is_empty() {
            return Ok(Next::Done);
        }
        let orphan = deployment.is_some_and(|(_, o)| o);
        for rs in &owned {
            let result = if orphan {
                let mut released = rs.clone();
                if let Some(refs) = released.metadata.owner_references.as_mut() {
                    refs.retain(|o| o.controller != Some(true));
                    if refs.is_empty() {
                        released.metadata.owner_references = None;
                    }
                }
                self.update_rs(key, rs, released).await.map(|_| ())
            } else {
                self.registry
                    .delete::<KubeReplicaSet>(&rs.key(), 0)
                    .await
                    .map(|gone| self.remember_write(key, gone.resource_version()))
            };
            match result {
                Ok(()) | Err(RegistryError::NotFound { .. }) => {
                    tracing::info!(deployment = key, replicaset = %rs.key(), orphan, "dependent settled");
                }
                Err(RegistryError::Conflict { .. }) => {
                    return Ok(Next::After(Duration::from_millis(200)))
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Their events queue the Deployment again; look once more in case they do not.
        Ok(Next::After(Duration::from_secs(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(key: &str, replicas: i32, available: i32, created: i64) -> RsCounts {
        RsCounts {
            key: key.into(),
            replicas,
            pods: replicas,
            available,
            created,
            annotated_max: None,
            settled: true,
        }
    }

    #[test]
    fn the_new_replicaset_grows_within_the_surge() {
        // 10 replicas, surge 3: 10 old pods, the new one may have 3.
        let old = rs("old", 10, 10, 1);
        let new = rs("new", 0, 0, 2);
        assert_eq!(new_rs_target(10, 3, &[old.clone(), new.clone()], &new), 3);
        // Already at replicas + surge: no growth.
        let new3 = rs("new", 3, 0, 2);
        assert_eq!(new_rs_target(10, 3, &[old.clone(), new3.clone()], &new3), 3);
        // Never beyond replicas.
        let old0 = rs("old", 0, 0, 1);
        assert_eq!(
            new_rs_target(10, 3, &[old0, rs("new", 9, 9, 2)], &rs("new", 9, 9, 2)),
            10
        );
        // An old ReplicaSet shrunk to 8 whose 10 pods are not gone yet: with the new one's
        // 2 that is 12 pods, so the new one grows by 1 (by sizes alone it would grow by 3).
        let shrinking = RsCounts {
            pods: 10,
            ..rs("old", 8, 8, 1)
        };
        let new2 = rs("new", 2, 0, 2);
        assert_eq!(new_rs_target(10, 3, &[shrinking, new2.clone()], &new2), 3);
        // An old ReplicaSet just shrunk from 8 to 7 whose controller has not acted on it yet
        // (it may still be creating its 8th pod): the new one waits.
        let unsettled = RsCounts {
            settled: false,
            ..rs("old", 7, 7, 1)
        };
        assert_eq!(new_rs_target(10, 3, &[unsettled, new2.clone()], &new2), 2);
        // Above replicas (scaled down meanwhile): back to replicas.
        assert_eq!(
            new_rs_target(5, 3, &[old, rs("new", 7, 7, 2)], &rs("new", 7, 7, 2)),
            5
        );
    }

    #[test]
    fn old_replicasets_shrink_only_as_far_as_availability_allows() {
        // 10 replicas, maxUnavailable 2, surge 3 already used: new has 3 unavailable pods.
        let new = rs("new", 3, 0, 2);
        let olds = [rs("old", 10, 10, 1)];
        // all 13, min available 8, new unavailable 3: budget 2; old available 10 → may cut 2.
        assert_eq!(
            old_rs_scale_downs(10, 2, Some(&new), &olds),
            vec![("old".into(), 8)]
        );
        // New pods available: old may go down to keep 8 available overall.
        let new = rs("new", 3, 3, 2);
        assert_eq!(
            old_rs_scale_downs(10, 2, Some(&new), &olds),
            vec![("old".into(), 5)]
        );
        // Unavailable old pods go first, and cost nothing.
        let olds = [rs("a", 5, 0, 1), rs("b", 5, 5, 2)];
        let new = rs("new", 0, 0, 3);
        // all 10, min 8, budget 2: a loses 2 unhealthy; then available 5 < 8: nothing more.
        assert_eq!(
            old_rs_scale_downs(10, 2, Some(&new), &olds),
            vec![("a".into(), 3)]
        );
        // Nothing old: nothing to do.
        assert!(old_rs_scale_downs(10, 2, Some(&new), &[]).is_empty());
    }

    #[test]
    fn proportional_scaling_spreads_new_replicas_by_size() {
        // Mid-rollout 10 → 20 with surge 3: sized for max 13, old 8 and new 5.
        let mut a = rs("old", 8, 8, 1);
        let mut b = rs("new", 5, 0, 2);
        a.annotated_max = Some(13);
        b.annotated_max = Some(13);
        let sizes: BTreeMap<String, i32> =
            proportional_sizes(20, 3, 13, &[a, b]).into_iter().collect();
        assert_eq!(sizes.values().sum::<i32>(), 23);
        assert_eq!(sizes["old"], 14);
        assert_eq!(sizes["new"], 9);
        // Down to 0: everything goes.
        let sizes = proportional_sizes(0, 0, 13, &[rs("old", 8, 8, 1), rs("new", 5, 0, 2)]);
        assert!(sizes.iter().all(|(_, n)| *n == 0));
    }
}
