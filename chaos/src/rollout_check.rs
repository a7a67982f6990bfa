//! The rolling-update invariants of one Deployment, judged from the store's events in
//! revision order (the Deployment, its ReplicaSets and their pods come through one watch):
//! - **surge**: creating a pod never takes the Deployment's pods above `replicas +
//!   maxSurge`, where `replicas` is the largest it has been in the last [`STALE_VIEW`] (a
//!   scale-down takes a moment to reach the pods);
//! - **availability**: deleting a ready pod never leaves fewer than `replicas −
//!   maxUnavailable` ready ones, with `replicas` the smallest of the last [`STALE_VIEW`].
//!   A controller may act on a view that has not yet seen a pod fall out of readiness by
//!   itself (its node went quiet, say), which is no fault of the rollout: such a deletion
//!   within [`STALE_VIEW`] of an involuntary loss is counted as excused, not as a violation.
//!
//! Only deletions of ready pods are judged: removing a pod that is not ready costs no
//! availability. Pure: time is passed in, so it can be tested with hand-made events.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use miniku::api::kube::{KubeDeployment, KubeReplicaSet};
use miniku::api::Pod;
use miniku::registry::{decode, name_of_key};

/// How old a view of the Deployment a correct controller may act on.
pub const STALE_VIEW: Duration = Duration::from_secs(10);

/// The Deployment's fixed rolling-update parameters, as numbers of pods.
#[derive(Clone, Copy, Debug)]
pub struct Strategy {
    pub max_surge: u32,
    pub max_unavailable: u32,
}

/// What the checks saw, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// Pod creations judged against the surge bound.
    pub creations: usize,
    /// The most pods the Deployment had at once.
    pub most_pods: usize,
    /// Deletions of ready pods judged against the availability bound.
    pub ready_deletions: usize,
    /// The fewest ready pods left by such a deletion.
    pub fewest_ready: Option<usize>,
    /// Deletions below the bound that followed an involuntary loss of readiness.
    pub excused: usize,
    /// Pods that fell out of readiness without being deleted.
    pub involuntary: usize,
}

pub struct RolloutInvariants {
    deployment: String,
    strategy: Strategy,
    /// `spec.replicas` now, and earlier values with when they were replaced.
    replicas: Option<u32>,
    replaced: Vec<(Instant, u32)>,
    /// ReplicaSets whose controller is the Deployment (names; all in one namespace).
    sets: HashSet<String>,
    /// The Deployment's pods by key.
    pods: HashMap<String, Pod>,
    /// When pods fell out of readiness by themselves.
    losses: Vec<Instant>,
    pub violations: Vec<String>,
    pub figures: Figures,
}

impl RolloutInvariants {
    pub fn new(deployment: &str, strategy: Strategy) -> RolloutInvariants {
        RolloutInvariants {
            deployment: deployment.to_string(),
            strategy,
            replicas: None,
            replaced: Vec::new(),
            sets: HashSet::new(),
            pods: HashMap::new(),
            losses: Vec::new(),
            violations: Vec::new(),
            figures: Figures::default(),
        }
    }

    /// Replicas over the last [`STALE_VIEW`]: (smallest, largest).
    fn recent_replicas(&self, now: Instant) -> Option<(u32, u32)> {
        let recent = self
            .replaced
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) < STALE_VIEW)
            .map(|(_, r)| *r)
            .chain(self.replicas);
        let (mut low, mut high) = (None::<u32>, None::<u32>);
        for r in recent {
            low = Some(low.map_or(r, |l| l.min(r)));
            high = Some(high.map_or(r, |h| h.max(r)));
        }
        Some((low?, high?))
    }

    fn active(&self) -> usize {
        self.pods.values().filter(|p| !p.is_terminal()).count()
    }

    fn ready(&self) -> usize {
        self.pods.values().filter(|p| p.is_ready()).count()
    }

    /// One store event: `value` is `None` for a deletion.
    pub fn apply(&mut self, now: Instant, revision: i64, key: &str, value: Option<&[u8]>) {
        if let Some(rest) = key.strip_prefix("/registry/deployments/") {
            if name_of_key(rest) != self.deployment {
                return;
            }
            let replicas = value
                .and_then(|v| decode::<KubeDeployment>(v, revision).ok())
                .map(|d| d.spec.and_then(|s| s.replicas).unwrap_or(1).max(0) as u32);
            if let Some(before) = self.replicas {
                if replicas != Some(before) {
                    self.replaced.push((now, before));
                }
            }
            self.replicas = replicas;
        } else if let Some(rest) = key.strip_prefix("/registry/replicasets/") {
            let Some(rs) = value.and_then(|v| decode::<KubeReplicaSet>(v, revision).ok()) else {
                return;
            };
            let ours = rs.metadata.owner_references.iter().flatten().any(|o| {
                o.controller == Some(true) && o.kind == "Deployment" && o.name == self.deployment
            });
            if ours {
                self.sets.insert(name_of_key(rest).to_string());
            }
        } else if key.starts_with("/registry/pods/") {
            self.apply_pod(now, revision, key, value);
        }
    }

    fn apply_pod(&mut self, now: Instant, revision: i64, key: &str, value: Option<&[u8]>) {
        let pod = value.and_then(|v| decode::<Pod>(v, revision).ok());
        let ours = |p: &Pod| {
            p.owner
                .as_ref()
                .is_some_and(|o| self.sets.contains(&o.name))
        };
        match pod {
            Some(pod) if ours(&pod) => {
                let created = !pod.is_terminal() && !self.pods.contains_key(key);
                let was_ready = self.pods.get(key).is_some_and(Pod::is_ready);
                let is_ready = pod.is_ready();
                self.pods.insert(key.to_string(), pod);
                if was_ready && !is_ready {
                    self.figures.involuntary += 1;
                    self.losses.push(now);
                }
                if created {
                    self.check_surge(now, revision, key);
                }
            }
            // Deleted, or no longer the Deployment's (orphaned): gone from its count.
            _ => {
                let Some(old) = self.pods.remove(key) else {
                    return;
                };
                if old.is_ready() {
                    self.check_availability(now, revision, key);
                }
            }
        }
    }

    fn check_surge(&mut self, now: Instant, revision: i64, key: &str) {
        self.figures.creations += 1;
        let active = self.active();
        self.figures.most_pods = self.figures.most_pods.max(active);
        let Some((_, high)) = self.recent_replicas(now) else {
            return;
        };
        let bound = (high + self.strategy.max_surge) as usize;
        if active > bound {
            self.violations.push(format!(
                "revision {revision}: creating pod {key} made {active} pods for Deployment {} (at most replicas {high} + maxSurge {} = {bound})",
                self.deployment, self.strategy.max_surge
            ));
        }
    }

    fn check_availability(&mut self, now: Instant, revision: i64, key: &str) {
        self.figures.ready_deletions += 1;
        let ready = self.ready();
        self.figures.fewest_ready = Some(self.figures.fewest_ready.map_or(ready, |f| f.min(ready)));
        let Some((low, _)) = self.recent_replicas(now) else {
            return;
        };
        let floor = low.saturating_sub(self.strategy.max_unavailable) as usize;
        if ready >= floor {
            return;
        }
        let lost_lately = self
            .losses
            .iter()
            .any(|at| now.saturating_duration_since(*at) < STALE_VIEW);
        if lost_lately {
            self.figures.excused += 1;
            return;
        }
        self.violations.push(format!(
            "revision {revision}: deleting ready pod {key} left {ready} ready pods for Deployment {} (at least replicas {low} - maxUnavailable {} = {floor})",
            self.deployment, self.strategy.max_unavailable
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const STRATEGY: Strategy = Strategy {
        max_surge: 1,
        max_unavailable: 1,
    };

    fn deployment(replicas: u32) -> Vec<u8> {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "i"}]}}},
        })
        .to_string()
        .into_bytes()
    }

    fn replicaset(name: &str, owner: &str) -> Vec<u8> {
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": owner, "uid": "d", "controller": true}]},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "i"}]}}},
        })
        .to_string()
        .into_bytes()
    }

    fn pod(rs: &str, ready: bool) -> Vec<u8> {
        let mut p = Pod::default();
        p.spec.image = "i".into();
        p.owner = Some(miniku::api::OwnerReference {
            kind: "ReplicaSet".into(),
            name: rs.into(),
            uid: format!("{rs}-uid"),
        });
        if ready {
            p.status = miniku::api::PodPhase::Running;
        }
        miniku::registry::Object::to_stored(&p).expect("a pod encodes")
    }

    /// A Deployment of 3 with ReplicaSet `old` holding 3 ready pods.
    fn settled(now: Instant) -> RolloutInvariants {
        let mut inv = RolloutInvariants::new("web", STRATEGY);
        let mut rev = 1;
        let mut put = |inv: &mut RolloutInvariants, key: &str, v: Vec<u8>| {
            rev += 1;
            inv.apply(now, rev, key, Some(&v));
        };
        put(&mut inv, "/registry/deployments/default/web", deployment(3));
        put(
            &mut inv,
            "/registry/replicasets/default/old",
            replicaset("old", "web"),
        );
        for i in 0..3 {
            put(
                &mut inv,
                &format!("/registry/pods/default/old-{i}"),
                pod("old", true),
            );
        }
        inv
    }

    #[test]
    fn a_rollout_within_its_bounds_passes() {
        let now = Instant::now();
        let mut inv = settled(now);
        let rs = replicaset("new", "web");
        inv.apply(now, 10, "/registry/replicasets/default/new", Some(&rs));
        // Surge one, then replace each old pod once the new one is ready.
        for i in 0..3 {
            let key = format!("/registry/pods/default/new-{i}");
            inv.apply(now, 11, &key, Some(&pod("new", false)));
            inv.apply(now, 12, &key, Some(&pod("new", true)));
            inv.apply(now, 13, &format!("/registry/pods/default/old-{i}"), None);
        }
        assert_eq!(inv.violations, Vec::<String>::new());
        assert_eq!(inv.figures.creations, 6);
        assert_eq!(inv.figures.most_pods, 4);
        assert_eq!(inv.figures.fewest_ready, Some(3));
    }

    #[test]
    fn a_second_surge_pod_is_caught() {
        let now = Instant::now();
        let mut inv = settled(now);
        let rs = replicaset("new", "web");
        inv.apply(now, 10, "/registry/replicasets/default/new", Some(&rs));
        inv.apply(
            now,
            11,
            "/registry/pods/default/new-0",
            Some(&pod("new", false)),
        );
        inv.apply(
            now,
            12,
            "/registry/pods/default/new-1",
            Some(&pod("new", false)),
        );
        assert_eq!(inv.violations.len(), 1, "{:?}", inv.violations);
        assert!(inv.violations[0].contains("made 5 pods"));
    }

    #[test]
    fn deleting_two_ready_pods_before_replacements_are_ready_is_caught() {
        let now = Instant::now();
        let mut inv = settled(now);
        inv.apply(now, 10, "/registry/pods/default/old-0", None);
        assert!(
            inv.violations.is_empty(),
            "2 of 3 ready is within maxUnavailable 1"
        );
        inv.apply(now, 11, "/registry/pods/default/old-1", None);
        assert_eq!(inv.violations.len(), 1, "{:?}", inv.violations);
        assert!(inv.violations[0].contains("left 1 ready pods"));
    }

    #[test]
    fn a_scale_down_is_judged_by_the_replicas_of_the_last_moments() {
        let now = Instant::now();
        let mut inv = settled(now);
        // 3 → 1: two ready pods may go; a pod created just before the scale-down was
        // judged by the larger count.
        inv.apply(
            now,
            10,
            "/registry/deployments/default/web",
            Some(&deployment(1)),
        );
        inv.apply(now, 11, "/registry/pods/default/old-0", None);
        inv.apply(now, 12, "/registry/pods/default/old-1", None);
        assert_eq!(inv.violations, Vec::<String>::new());
        // Long after, the small count alone is the bound: a second pod beyond 1 + 1 is not.
        let later = now + STALE_VIEW + Duration::from_secs(1);
        let rs = replicaset("new", "web");
        inv.apply(later, 13, "/registry/replicasets/default/new", Some(&rs));
        inv.apply(
            later,
            14,
            "/registry/pods/default/new-0",
            Some(&pod("new", false)),
        );
        inv.apply(
            later,
            15,
            "/registry/pods/default/new-1",
            Some(&pod("new", false)),
        );
        assert_eq!(inv.violations.len(), 1, "{:?}", inv.violations);
    }

    #[test]
    fn a_deletion_after_an_involuntary_loss_is_excused_and_counted() {
        let now = Instant::now();
        let mut inv = settled(now);
        inv.apply(
            now,
            10,
            "/registry/pods/default/old-2",
            Some(&pod("old", false)),
        );
        inv.apply(now, 11, "/registry/pods/default/old-0", None);
        assert!(inv.violations.is_empty());
        assert_eq!(inv.figures.excused, 1);
        assert_eq!(inv.figures.involuntary, 1);
    }

    #[test]
    fn pods_of_other_owners_are_not_counted() {
        let now = Instant::now();
        let mut inv = settled(now);
        let rs = replicaset("other", "not-web");
        inv.apply(now, 10, "/registry/replicasets/default/other", Some(&rs));
        for i in 0..5 {
            let key = format!("/registry/pods/default/other-{i}");
            inv.apply(now, 11, &key, Some(&pod("other", false)));
        }
        assert!(inv.violations.is_empty());
        assert_eq!(inv.figures.creations, 3);
    }
}
