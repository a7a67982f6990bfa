//! The ReplicaSet controller: keeps exactly `desiredCount` active pods per ReplicaSet.
//!
//! Driven by two informers (ReplicaSets and pods); a change to a ReplicaSet or to a pod it
//! owns queues the ReplicaSet's name. Reconciling one:
//! - ReplicaSet gone: delete the pods it owned (cascade, Kubernetes' Background deletion);
//!   being deleted with its `deletionTimestamp` set (Foreground or Orphan): orphan or delete
//!   its pods, then delete it (the garbage collector's part);
//! - pods whose labels no longer match the selector are released (owner cleared);
//! - terminal pods (Succeeded, or Failed with no retry pending, e.g. `NodeLost`) are deleted
//!   and so replaced;
//! - too few active pods: create `<rs>-<8 hex>` pods with create-only transactions, in
//!   slow-start batches (1, 2, 4, …);
//! - too many: delete the least valuable first (unscheduled, pending, not running, not
//!   ready, newest);
//! - `currentCount` / `readyCount` (`readyReplicas`: pods whose `Ready` condition is True)
//!   and `availableReplicas` (pods ready for at least `spec.minReadySeconds`) are written
//!   from the observed pods, with a revision precondition; when a ready pod will become
//!   available, the ReplicaSet is looked at again then;
//! - events on the ReplicaSet: `SuccessfulCreate` and `SuccessfulDelete` for each pod,
//!   `FailedCreate` when the store refuses one.
//!
//! The guard against double creation from a stale cache ("expectations"): after writing pods
//! for a ReplicaSet the controller remembers the highest revision it wrote, and does not
//! reconcile that ReplicaSet again until its pod cache has caught up to that revision (the
//! pod events it is waiting for queue the ReplicaSet again). A create whose outcome is unknown
//! (the store's answer was lost) may still have happened: the controller remembers that pod
//! and, before creating anything else for the ReplicaSet, creates it again under the same
//! name, which the create-only transaction turns into "exists" if the first one landed. So
//! a lost answer never makes it create one pod too many.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::kube::KubePod;
use crate::api::{
    namespace_or_default, random_hex, zero_time, OwnerReference, Pod, PodPhase, ReplicaSet,
};
use crate::events::{replicaset_reference, Recorder};
use crate::registry::{Registry, RegistryError};
use crate::runtime::{Change, Controller, Informer, Next, Shutdown};

/// How often every ReplicaSet is reconciled even without a change (a safety net only).
pub const RESYNC_PERIOD: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct ReplicaSetController {
    registry: Registry,
    replicasets: Informer<ReplicaSet>,
    pods: Informer<Pod>,
    /// ReplicaSet name → the pod-cache revision its last writes need.
    expectations: Arc<Mutex<HashMap<String, i64>>>,
    /// Per ReplicaSet, pods whose create had an unknown outcome.
    uncertain: Arc<Mutex<HashMap<String, Vec<Pod>>>>,
    /// SuccessfulCreate, SuccessfulDelete and FailedCreate events.
    events: Recorder,
}

/// The key (`namespace/name`) of the ReplicaSet that controls `pod`, if one does.
fn owner_of(pod: &Pod) -> Option<String> {
    pod.owner
        .as_ref()
        .filter(|o| o.kind == "ReplicaSet")
        .map(|o| format!("{}/{}", namespace_or_default(&pod.namespace), o.name))
}

/// Whether the ReplicaSet at `key` (`namespace/name`) controls `pod`: [`owner_of`] without
/// building a key for every pod looked at.
fn owned_by(pod: &Pod, key: &str) -> bool {
    let Some((namespace, name)) = key.split_once('/') else {
        return false;
    };
    pod.owner
        .as_ref()
        .is_some_and(|o| o.kind == "ReplicaSet" && o.name == name)
        && namespace_or_default(&pod.namespace) == namespace
}

/// The ReplicaSets a pod change concerns: the one that owns the pod, and the one that owned
/// it before the change.
fn pod_owners(change: &Change<Pod>) -> Vec<String> {
    let (old, new) = match change {
        Change::Upsert { old, new } => (old.as_ref(), new),
        Change::Deleted(p) => (None, p),
    };
    let mut owners: Vec<String> = old.and_then(owner_of).into_iter().collect();
    owners.extend(owner_of(new));
    owners.dedup();
    owners
}

/// A new pod for `rs`, named `<rs>-<8 hex>`, from its template: the Kubernetes template's
/// every field, with the view's written over it.
pub fn new_pod(rs: &ReplicaSet) -> Pod {
    let template = rs
        .stored
        .as_ref()
        .and_then(|k| k.spec.as_ref())
        .and_then(|s| s.template.as_ref());
    let stored = template.map(|t| {
        Arc::new(KubePod {
            metadata: ObjectMeta {
                annotations: t.metadata.as_ref().and_then(|m| m.annotations.clone()),
                ..Default::default()
            },
            spec: t.spec.clone(),
            status: None,
        })
    });
    let mut spec = rs.template.clone();
    spec.name = format!("{}-{}", rs.name, random_hex(8));
    for (k, v) in &rs.selector {
        spec.labels.insert(k.clone(), v.clone());
    }
    spec.node_name.clear();
    Pod {
        namespace: namespace_or_default(&rs.namespace).to_string(),
        stored,
        spec,
        status: PodPhase::Pending,
        retry_count: 0,
        next_retry_at: zero_time(),
        resource_version: 0,
        uid: random_hex(16),
        owner: Some(OwnerReference {
            kind: "ReplicaSet".into(),
            name: rs.name.clone(),
            uid: rs.uid.clone(),
        }),
        reason: String::new(),
        message: String::new(),
        container_id: String::new(),
        created_at: Some(Utc::now()),
        started_at: None,
        finished_at: None,
        exit_code: None,
        pod_ip: String::new(),
        host_ip: String::new(),
        not_ready: Default::default(),
    }
}

/// Of `pods`: how many are ready, how many have been ready for `min_ready_seconds`
/// (available), and how long until the next ready one becomes available.
pub fn readiness_of(
    pods: &[Pod],
    min_ready_seconds: u32,
    now: chrono::DateTime<Utc>,
) -> (u32, u32, Option<Duration>) {
    let min_ready = chrono::Duration::seconds(i64::from(min_ready_seconds));
    let (mut ready, mut available, mut next) = (0u32, 0u32, None::<Duration>);
    for p in pods.iter().filter(|p| p.is_ready()) {
        ready += 1;
        if min_ready_seconds == 0 {
            available += 1;
            continue;
        }
        // Ready without a known transition time: counted from now.
        let since = p.ready_since().unwrap_or(now);
        match (since + min_ready - now).to_std() {
            Ok(wait) if !wait.is_zero() => {
                next = Some(next.map_or(wait, |n: Duration| n.min(wait)));
            }
            _ => available += 1,
        }
    }
    (ready, available, next)
}

/// Scale-down order: the first pods are the least valuable.
fn deletion_rank(p: &Pod) -> (bool, u8, Reverse<i64>) {
    let phase = match p.status {
        PodPhase::Pending => 0,
        PodPhase::Failed | PodPhase::Succeeded => 1,
        PodPhase::Running if !p.is_ready() => 2,
        PodPhase::Running => 3,
    };
    let created = p.created_at.map_or(0, |t| t.timestamp_micros());
    (!p.spec.node_name.is_empty(), phase, Reverse(created))
}

impl ReplicaSetController {
    /// Runs the controller over shared informers until `shutdown`, or until the future is
    /// dropped, which stops every task it started.
    pub async fn run(
        registry: Registry,
        replicasets: Informer<ReplicaSet>,
        pods: Informer<Pod>,
        workers: usize,
        shutdown: Shutdown,
    ) {
        let ctl = ReplicaSetController::new(registry, replicasets.clone(), pods.clone());
        Controller::new("replicaset")
            .reconciles(&replicasets)
            .watches(&pods, pod_owners)
            .resync_every(RESYNC_PERIOD, &replicasets)
            .run(workers, shutdown.wait(), move |key| {
                let ctl = ctl.clone();
                async move { ctl.reconcile(&key).await }
            })
            .await;
    }

    pub fn new(registry: Registry, replicasets: Informer<ReplicaSet>, pods: Informer<Pod>) -> Self {
        ReplicaSetController {
            events: Recorder::start(registry.clone(), "replicaset-controller", None),
            registry,
            replicasets,
            pods,
            expectations: Arc::new(Mutex::new(HashMap::new())),
            uncertain: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Remembers pods of `rs` whose create had an unknown outcome, to be settled before
    /// anything else is created for it.
    fn remember_uncertain(&self, rs: &str, pods: impl IntoIterator<Item = Pod>) {
        let mut pods = pods.into_iter().peekable();
        if pods.peek().is_none() {
            return;
        }
        self.uncertain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(rs.to_string())
            .or_default()
            .extend(pods);
    }

    fn expect_revision(&self, name: &str, revision: i64) {
        let mut e = self.expectations.lock().unwrap_or_else(|p| p.into_inner());
        let v = e.entry(name.to_string()).or_insert(0);
        *v = (*v).max(revision);
    }

    fn satisfied(&self, name: &str) -> bool {
        let e = self.expectations.lock().unwrap_or_else(|p| p.into_inner());
        e.get(name).is_none_or(|r| self.pods.revision() >= *r)
    }

    fn owned_pods(&self, name: &str) -> Vec<Pod> {
        let mut out = Vec::new();
        self.pods.for_each(|p| {
            if owned_by(p, name) {
                out.push(p.clone());
            }
        });
        out
    }

    /// Deletes a pod if it is unchanged; a pod already gone counts as deleted.
    async fn delete_pod(&self, rs: &str, pod: &Pod) -> anyhow::Result<()> {
        match self
            .registry
            .delete::<Pod>(&pod.key(), pod.resource_version)
            .await
        {
            Ok(gone) => {
                self.expect_revision(rs, gone.resource_version);
                if let Some(set) = self.replicasets.get(rs) {
                    self.events.normal(
                        replicaset_reference(&set),
                        "SuccessfulDelete",
                        format!("Deleted pod: {}", pod.spec.name),
                    );
                }
                Ok(())
            }
            Err(RegistryError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Settles creates with an unknown outcome by creating the same pods again: afterwards
    /// each exists exactly once. Returns true if any was settled (then the caller waits for
    /// them to reach the cache).
    async fn settle_uncertain(&self, rs: &str) -> anyhow::Result<bool> {
        let mut pending = self
            .uncertain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(rs)
            .unwrap_or_default();
        // Only for the ReplicaSet as it is now; a deleted one's pods are cleaned up anyway.
        let uid = self.replicasets.get(rs).map(|r| r.uid);
        pending.retain(|p| p.owner.as_ref().map(|o| &o.uid) == uid.as_ref());
        let settled = !pending.is_empty();
        let mut still = Vec::new();
        let mut failure = None;
        for pod in pending {
            match self.registry.create(&pod).await {
                Ok(p) => self.expect_revision(rs, p.resource_version),
                Err(RegistryError::AlreadyExists { .. }) => {
                    // The first create landed: wait until the cache has it.
                    match self.registry.get::<Pod>(&pod.key()).await {
                        Ok(p) => self.expect_revision(rs, p.resource_version),
                        Err(RegistryError::NotFound { .. }) => {} // Deleted since.
                        Err(e) => {
                            still.push(pod);
                            failure = Some(e);
                        }
                    }
                }
                Err(e) => {
                    still.push(pod);
                    failure = Some(e);
                }
            }
        }
        self.remember_uncertain(rs, still);
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(settled),
        }
    }

    pub async fn reconcile(&self, name: &str) -> anyhow::Result<Next> {
        if self.settle_uncertain(name).await? {
            return Ok(Next::Done);
        }
        if !self.satisfied(name) {
            // Our own writes have not come back through the watch yet; their events will
            // queue this ReplicaSet again.
            return Ok(Next::Done);
        }
        let Some(rs) = self.replicasets.get(name) else {
            for pod in self.owned_pods(name) {
                self.delete_pod(name, &pod).await?;
            }
            self.expectations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
            return Ok(Next::Done);
        };
        if rs.deleting {
            return self.finish_deletion(name, &rs).await;
        }
        let mut active = Vec::new();
        for pod in self.owned_pods(name) {
            let same_owner = pod.owner.as_ref().is_some_and(|o| o.uid == rs.uid);
            if !same_owner {
                // Left over from an earlier ReplicaSet of the same name.
                self.delete_pod(name, &pod).await?;
            } else if !pod.matches(&rs.selector) {
                tracing::info!(replicaset = name, pod = %pod.spec.name, "labels no longer match; releasing the pod");
                let mut released = pod.clone();
                released.owner = None;
                match self.registry.update(&released).await {
                    Ok(p) => self.expect_revision(name, p.resource_version),
                    Err(RegistryError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            } else if pod.is_terminal() {
                tracing::info!(replicaset = name, pod = %pod.spec.name, reason = %pod.reason, "replacing a terminated pod");
                self.delete_pod(name, &pod).await?;
            } else {
                active.push(pod);
            }
        }
        let observed = active.len() as u32;
        let (ready, available, becomes_available) =
            readiness_of(&active, rs.min_ready_seconds, Utc::now());
        let desired = rs.desired_count;
        if observed < desired {
            let mut missing = (desired - observed) as usize;
            let mut batch = 1usize;
            while missing > 0 {
                let n = batch.min(missing);
                let creates = (0..n).map(|_| self.create_pod(name, &rs));
                let results = futures::future::join_all(creates).await;
                let mut failed = None;
                for r in results {
                    match r {
                        Ok(rev) => self.expect_revision(name, rev),
                        Err(e) => failed = Some(e),
                    }
                }
                if let Some(e) = failed {
                    return Err(e);
                }
                missing -= n;
                batch *= 2;
            }
            tracing::info!(
                replicaset = name,
                created = desired - observed,
                "created pods"
            );
        } else if observed > desired {
            active.sort_by_key(deletion_rank);
            let excess = (observed - desired) as usize;
            for pod in active.iter().take(excess) {
                self.delete_pod(name, pod).await?;
            }
            tracing::info!(replicaset = name, deleted = excess, "deleted surplus pods");
        }
        if rs.current_count != observed
            || rs.ready_count != ready
            || rs.available_count != available
            || rs.observed_generation != rs.generation
        {
            let mut updated = rs.clone();
            updated.current_count = observed;
            updated.ready_count = ready;
            updated.available_count = available;
            updated.observed_generation = rs.generation;
            match self.registry.update(&updated).await {
                Ok(_) | Err(RegistryError::NotFound { .. }) => {}
                Err(RegistryError::Conflict { .. }) => {
                    // The user changed it meanwhile: that change queues us again.
                }
                Err(e) => return Err(e.into()),
            }
        }
        // A ready pod becomes available without an event: look again then.
        Ok(match becomes_available {
            Some(after) => Next::After(after),
            None => Next::Done,
        })
    }

    /// A ReplicaSet being deleted (`deletionTimestamp` set by a Foreground or Orphan delete),
    /// as Kubernetes' garbage collector settles it: with the `orphan` finalizer its pods lose
    /// their owner reference, with `foregroundDeletion` they are deleted; once none is left
    /// that it owns, the ReplicaSet itself is deleted.
    async fn finish_deletion(&self, name: &str, rs: &ReplicaSet) -> anyhow::Result<Next> {
        let orphan = rs
            .stored
            .as_ref()
            .and_then(|k| k.metadata.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|f| f == "orphan"));
        let owned: Vec<Pod> = self
            .owned_pods(name)
            .into_iter()
            .filter(|p| p.owner.as_ref().is_some_and(|o| o.uid == rs.uid))
            .collect();
        for pod in &owned {
            if orphan {
                let mut released = pod.clone();
                released.owner = None;
                match self.registry.update(&released).await {
                    Ok(p) => self.expect_revision(name, p.resource_version),
                    Err(RegistryError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            } else {
                self.delete_pod(name, pod).await?;
            }
        }
        if !owned.is_empty() {
            // Their events bring us back; then none is owned any more.
            return Ok(Next::Done);
        }
        match self
            .registry
            .delete::<ReplicaSet>(&rs.key(), rs.resource_version)
            .await
        {
            Ok(_) | Err(RegistryError::NotFound { .. }) => {
                tracing::info!(replicaset = name, orphan, "dependents settled; deleted");
                Ok(Next::Done)
            }
            // Changed meanwhile: its event queues it again.
            Err(RegistryError::Conflict { .. }) => Ok(Next::Done),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates one pod; returns the revision of the write. A create with an unknown outcome
    /// is remembered for [`Self::settle_uncertain`].
    async fn create_pod(&self, name: &str, rs: &ReplicaSet) -> anyhow::Result<i64> {
        for _ in 0..5 {
            let pod = new_pod(rs);
            match self.registry.create(&pod).await {
                Ok(p) => {
                    self.events.normal(
                        replicaset_reference(rs),
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.spec.name),
                    );
                    return Ok(p.resource_version);
                }
                Err(RegistryError::AlreadyExists { .. }) => continue,
                Err(e @ RegistryError::OutcomeUnknown(_)) => {
                    self.remember_uncertain(name, [pod]);
                    return Err(e.into());
                }
                Err(e) => {
                    self.events.warning(
                        replicaset_reference(rs),
                        "FailedCreate",
                        format!("Error creating: {e}"),
                    );
                    return Err(e.into());
                }
            }
        }
        anyhow::bail!("could not find a free pod name for {}", rs.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_by_agrees_with_owner_of() {
        let mut p = new_pod(&ReplicaSet {
            name: "web".into(),
            namespace: "team".into(),
            ..Default::default()
        });
        p.namespace = "team".into();
        for key in ["team/web", "default/web", "team/we", "web", "team/web/x"] {
            assert_eq!(
                owned_by(&p, key),
                owner_of(&p).as_deref() == Some(key),
                "{key}"
            );
        }
        assert!(owned_by(&p, "team/web"));
        p.namespace = String::new();
        assert!(owned_by(&p, "default/web"));
        if let Some(o) = p.owner.as_mut() {
            o.kind = "Deployment".into();
        }
        assert!(!owned_by(&p, "default/web"));
    }

    #[test]
    fn new_pods_carry_the_selector_labels_and_an_owner() {
        let rs = ReplicaSet {
            name: "nginx".into(),
            desired_count: 1,
            current_count: 0,
            ready_count: 0,
            selector: [("app".to_string(), "nginx".to_string())].into(),
            template: crate::api::PodSpec {
                image: "nginx:latest".into(),
                ..Default::default()
            },
            resource_version: 0,
            uid: "u1".into(),
            ..Default::default()
        };
        let p = new_pod(&rs);
        assert!(p.spec.name.starts_with("nginx-") && p.spec.name.len() == "nginx-".len() + 8);
        assert!(p.matches(&rs.selector));
        assert_eq!(p.owner.as_ref().map(|o| o.uid.as_str()), Some("u1"));
        assert_eq!(p.status, PodPhase::Pending);
        assert_eq!(p.next_retry_at, zero_time());
    }

    #[test]
    fn available_pods_have_been_ready_for_min_ready_seconds() {
        use k8s_openapi::api::core::v1 as core;
        let now = Utc::now();
        let ready_pod = |ready_for: i64| {
            let mut p = new_pod(&ReplicaSet::default());
            p.status = PodPhase::Running;
            p.stored = Some(Arc::new(KubePod {
                status: Some(core::PodStatus {
                    conditions: Some(vec![core::PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(crate::api::kube::to_time(
                            now - chrono::Duration::seconds(ready_for),
                        )),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }));
            p
        };
        let mut unready = ready_pod(100);
        unready.not_ready.insert("web".into());
        let pods = [ready_pod(100), ready_pod(3), unready];
        assert_eq!(readiness_of(&pods, 0, now), (2, 2, None));
        let (ready, available, next) = readiness_of(&pods, 10, now);
        assert_eq!((ready, available), (2, 1));
        assert_eq!(next, Some(Duration::from_secs(7)));
        assert_eq!(readiness_of(&pods, 200, now).1, 0);
    }

    #[test]
    fn scale_down_removes_unscheduled_then_pending_then_newest() {
        let rs_pod = |name: &str, node: &str, phase: PodPhase, age: i64| {
            let mut p = new_pod(&ReplicaSet {
                name: "r".into(),
                desired_count: 0,
                current_count: 0,
                ready_count: 0,
                selector: Default::default(),
                template: Default::default(),
                resource_version: 0,
                uid: String::new(),
                ..Default::default()
            });
            p.spec.name = name.into();
            p.spec.node_name = node.into();
            p.status = phase;
            p.created_at = Some(Utc::now() - chrono::Duration::seconds(age));
            p
        };
        let mut pods = [
            rs_pod("old-running", "a", PodPhase::Running, 100),
            rs_pod("new-running", "a", PodPhase::Running, 10),
            rs_pod("bound-pending", "a", PodPhase::Pending, 50),
            rs_pod("unscheduled", "", PodPhase::Pending, 200),
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<&str> = pods.iter().map(|p| p.spec.name.as_str()).collect();
        assert_eq!(
            order,
            ["unscheduled", "bound-pending", "new-running", "old-running"]
        );
    }
}
