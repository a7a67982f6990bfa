//! What a Deployment means, apart from who acts on it: Kubernetes' defaults for its fields,
//! how `maxSurge` / `maxUnavailable` (a number or a percentage) resolve against a replica
//! count, the pod-template hash that names a Deployment's ReplicaSets, and the annotations
//! Kubernetes' Deployment controller and kubectl read and write.
//!
//! The API server uses it to default and validate what users send; the Deployment controller
//! uses it to name ReplicaSets and size a rollout. It keeps no state, reads no clock and does
//! not talk to the store.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::validation::MAX_REPLICASET_NAME_LEN;

/// The label (on a ReplicaSet, its selector and its pods) that tells one template's pods from
/// another's.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// A ReplicaSet's (and its Deployment's) rollout revision.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a ReplicaSet had (a rollback brings an old template back).
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when the ReplicaSet was last sized (proportional scaling).
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// replicas + maxSurge when the ReplicaSet was last sized.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// What kubectl records as the cause of a change (`rollout history` shows it).
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";
/// kubectl's client-side apply record: never copied from a Deployment to its ReplicaSets.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Annotations that belong to the Deployment or the controller and are not copied between a
/// Deployment and its ReplicaSets (kubectl's rollback skips the same ones).
pub const ANNOTATIONS_NOT_COPIED: &[&str] = &[
    LAST_APPLIED_ANNOTATION,
    REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
    DESIRED_REPLICAS_ANNOTATION,
    MAX_REPLICAS_ANNOTATION,
    "deprecated.deployment.rollback.to",
];

/// The pod-template hash is at most 10 characters (a 32-bit number's decimal digits,
/// re-encoded); with the `-` before it, a ReplicaSet name is 11 longer than its Deployment's.
pub const MAX_DEPLOYMENT_NAME_LEN: usize = MAX_REPLICASET_NAME_LEN - 11;

/// Kubernetes' default `progressDeadlineSeconds`.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
/// Kubernetes' default `revisionHistoryLimit`.
pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;
/// Kubernetes' default `maxSurge` and `maxUnavailable`.
pub const DEFAULT_ROLLING_PERCENT: &str = "25%";

/// Sets what Kubernetes' apps/v1 defaulting sets on a Deployment a client sent.
pub fn set_defaults(d: &mut apps::Deployment) {
    let Some(spec) = d.spec.as_mut() else {
        return;
    };
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit
        .get_or_insert(DEFAULT_REVISION_HISTORY_LIMIT);
    spec.progress_deadline_seconds
        .get_or_insert(DEFAULT_PROGRESS_DEADLINE_SECONDS);
    let strategy = spec.strategy.get_or_insert_with(Default::default);
    let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
    if kind == "RollingUpdate" {
        let rolling = strategy.rolling_update.get_or_insert_with(Default::default);
        let percent = || IntOrString::String(DEFAULT_ROLLING_PERCENT.into());
        rolling.max_surge.get_or_insert_with(percent);
        rolling.max_unavailable.get_or_insert_with(percent);
    }
    if let Some(pod) = spec.template.spec.as_mut() {
        pod.restart_policy.get_or_insert_with(|| "Always".into());
    }
}

/// The number of `"25%"`, if it is a whole number followed by `%`.
pub fn parse_percent(s: &str) -> Option<i64> {
    let digits = s.strip_suffix('%')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `value` against `total`: a number as it is, a percentage of `total` rounded up or down
/// (Kubernetes' `GetScaledValueFromIntOrPercent`); absent is 0, a malformed percentage None.
pub fn resolve(value: Option<&IntOrString>, total: i32, round_up: bool) -> Option<i32> {
    match value {
        None => Some(0),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(s)) => {
            let p = parse_percent(s)?;
            let scaled = i64::from(total) * p;
            let v = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            i32::try_from(v).ok()
        }
    }
}

/// `maxSurge` and `maxUnavailable` for `replicas` (Kubernetes' `ResolveFenceposts`): surge
/// rounds up, unavailability down, and if both come to 0 one pod may be unavailable, so a
/// rollout can always move. Recreate (no rolling parameters) is (0, 0).
pub fn surge_and_unavailable(d: &apps::Deployment) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let rolling = spec
        .and_then(|s| s.strategy.as_ref())
        .filter(|s| s.type_.as_deref() != Some("Recreate"))
        .and_then(|s| s.rolling_update.as_ref());
    let Some(rolling) = rolling else {
        return (0, 0);
    };
    let surge = resolve(rolling.max_surge.as_ref(), replicas, true)
        .unwrap_or(0)
        .max(0);
    let unavailable = resolve(rolling.max_unavailable.as_ref(), replicas, false)
        .unwrap_or(0)
        .max(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable.min(replicas))
    }
}

/// The characters Kubernetes encodes generated names with (no vowels, no look-alikes).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The hash of a pod template that names its ReplicaSet (`web-<hash>`) and labels its pods:
/// 32-bit FNV-1a over the template's JSON (without its own hash label) and the Deployment's
/// `collisionCount`, its decimal digits re-encoded in [`SAFE_ALPHABET`] as Kubernetes does.
/// Equal templates hash alike in every process; the value differs from Kubernetes' own
/// (which hashes Go's printing of the object), which nothing depends on.
pub fn pod_template_hash(template: &core::PodTemplateSpec, collision_count: Option<i32>) -> String {
    let template = without_hash_label(template);
    let mut bytes = serde_json::to_vec(&template).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_string()
        .bytes()
        .map(|d| char::from(SAFE_ALPHABET[usize::from(d - b'0') % SAFE_ALPHABET.len()]))
        .collect()
}

/// `template` without the `pod-template-hash` label (what a Deployment's template is compared
/// on: Kubernetes' `EqualIgnoreHash`).
pub fn without_hash_label(template: &core::PodTemplateSpec) -> core::PodTemplateSpec {
    let mut t = template.clone();
    if let Some(m) = t.metadata.as_mut() {
        if let Some(labels) = m.labels.as_mut() {
            labels.remove(POD_TEMPLATE_HASH_LABEL);
            if labels.is_empty() {
                m.labels = None;
            }
        }
    }
    t
}

/// Whether two templates are the same apart from the hash label.
pub fn equal_ignoring_hash(a: &core::PodTemplateSpec, b: &core::PodTemplateSpec) -> bool {
    without_hash_label(a) == without_hash_label(b)
}

/// A ReplicaSet's revision (its annotation), 0 when it has none.
pub fn revision_of(annotations: Option<&BTreeMap<String, String>>) -> i64 {
    annotations
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn template(image: &str, hash: Option<&str>) -> core::PodTemplateSpec {
        let mut labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        if let Some(h) = hash {
            labels.insert(POD_TEMPLATE_HASH_LABEL.into(), h.into());
        }
        core::PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            }),
            spec: Some(core::PodSpec {
                containers: vec![core::Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn percentages_round_as_kubernetes_rounds_them() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(resolve(Some(&pct("25%")), 10, true), Some(3));
        assert_eq!(resolve(Some(&pct("25%")), 10, false), Some(2));
        assert_eq!(resolve(Some(&pct("0%")), 10, true), Some(0));
        assert_eq!(resolve(Some(&IntOrString::Int(4)), 10, true), Some(4));
        assert_eq!(resolve(Some(&pct("x%")), 10, true), None);
        assert_eq!(resolve(Some(&pct("25")), 10, true), None);
        assert_eq!(resolve(None, 10, true), Some(0));
    }

    #[test]
    fn defaults_are_kubernetes_defaults_and_fenceposts_never_stall() {
        let mut d = apps::Deployment {
            spec: Some(apps::DeploymentSpec {
                template: template("a", None),
                ..Default::default()
            }),
            ..Default::default()
        };
        set_defaults(&mut d);
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.revision_history_limit, Some(10));
        assert_eq!(spec.progress_deadline_seconds, Some(600));
        let strategy = spec.strategy.as_ref().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        // 25% of 1: surge rounds up to 1, unavailability down to 0.
        assert_eq!(surge_and_unavailable(&d), (1, 0));
        let rolling = d
            .spec
            .as_mut()
            .and_then(|s| s.strategy.as_mut())
            .and_then(|s| s.rolling_update.as_mut())
            .unwrap();
        rolling.max_surge = Some(IntOrString::Int(0));
        rolling.max_unavailable = Some(IntOrString::String("10%".into()));
        // 10% of 1 is 0 and surge is 0: one pod may go, or the rollout could never move.
        assert_eq!(surge_and_unavailable(&d), (0, 1));
    }

    #[test]
    fn the_template_hash_ignores_its_own_label_and_follows_the_collision_count() {
        let a = pod_template_hash(&template("a", None), None);
        assert_eq!(a, pod_template_hash(&template("a", Some(&a)), None));
        assert_ne!(a, pod_template_hash(&template("b", None), None));
        assert_ne!(a, pod_template_hash(&template("a", None), Some(1)));
        assert!(a.len() <= 10 && a.bytes().all(|b| SAFE_ALPHABET.contains(&b)));
        assert!(equal_ignoring_hash(
            &template("a", Some("x")),
            &template("a", None)
        ));
    }
}
