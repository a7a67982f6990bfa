//! What the Kubernetes API does per kind: validation (422 causes with Kubernetes' field paths
//! and wording), what the server owns on create and update (uid, creationTimestamp,
//! generation, status), and the fields a `fieldSelector` may name. Owns only these rules;
//! routing and storage are the routes' and the registry's.

use chrono::Utc;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::status::Cause;
use crate::api::kube::{to_time, KubeDeployment, KubeNamespace, KubeNode, KubePod, KubeReplicaSet};
use crate::api::quantity::{parse_bytes, parse_cpu_millis};
use crate::api::validation::{MAX_DESIRED_COUNT, MAX_IMAGE_LEN, MAX_NAME_LEN};
use crate::registry::Object;

/// A kind the Kubernetes API serves.
pub trait Served:
    Object
    + k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Default
    + PartialEq
{
    /// Fields a `fieldSelector` may name (Kubernetes' per-kind list).
    const SELECTABLE_FIELDS: &'static [&'static str];
    /// Problems with an object a user sent (empty: valid).
    fn validate(&self) -> Vec<Cause>;
    /// Sets what the server owns on a new object.
    fn prepare_create(&mut self) {
        let m = self.metadata_mut();
        m.uid = Some(crate::api::random_hex(32));
        m.creation_timestamp = Some(to_time(Utc::now()));
        m.resource_version = None;
        m.deletion_timestamp = None;
        m.generation = Some(1);
        self.initial_status();
    }
    /// Kubernetes' defaults for fields a client left out, set on every write before
    /// validation (as Kubernetes defaults on decoding).
    fn apply_defaults(&mut self) {}
    /// What a new object of the kind starts with besides its identity (status, ...).
    fn initial_status(&mut self) {}
    /// On an update through the main resource: keeps what this route cannot change (status,
    /// identity), raises the generation if the spec changed. Err: a forbidden change.
    fn prepare_update(&mut self, current: &Self) -> Result<(), Vec<Cause>>;
    /// On an update through `/status`: only the status comes from the request.
    fn take_status_from(&mut self, request: Self);
    /// Shows that the object is being deleted, where its kind has a status for it.
    fn mark_terminating(&mut self) {}
    /// The prefix of the claims ([`Object::claims`]) the server picks values from for the
    /// object, such as a Service's node ports (None: it picks nothing).
    const ALLOCATES: Option<&'static str> = None;
    /// Fills in what the server picks (a Service's unset node ports), choosing among values
    /// whose claims are not in `held`; returns the claims it picked, or the causes of a 422
    /// when nothing is left to pick.
    fn allocate(
        &mut self,
        _held: &std::collections::HashSet<String>,
    ) -> Result<Vec<String>, Vec<Cause>> {
        Ok(Vec::new())
    }
    /// The 422 causes for a claim the user asked for that another object holds.
    fn claim_taken(&self, claim: &str) -> Vec<Cause> {
        vec![cause(
            "metadata",
            "FieldValueInvalid",
            format!("Invalid value: {claim:?}: already held by another object"),
        )]
    }
}

mod event;
mod service;

fn cause(field: impl Into<String>, reason: &'static str, message: impl Into<String>) -> Cause {
    Cause {
        field: field.into(),
        message: message.into(),
        reason,
    }
}

fn required(field: impl Into<String>) -> Cause {
    cause(field, "FieldValueRequired", "Required value")
}

/// A DNS-1123 label (namespaces, container names) or subdomain (other names) check.
fn check_name(field: &str, name: &str, subdomain: bool, out: &mut Vec<Cause>) {
    if name.is_empty() {
        out.push(required(field));
        return;
    }
    let max = if subdomain { 253 } else { MAX_NAME_LEN };
    let ok_chars = name.bytes().all(|b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (subdomain && b == b'.')
    });
    let ok_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.len() > max || !ok_chars || !ok_ends {
        let what = if subdomain {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        } else {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        };
        out.push(cause(
            field,
            "FieldValueInvalid",
            format!("Invalid value: \"{name}\": {what} (at most {max} characters)"),
        ));
    }
}

fn check_meta(meta: &ObjectMeta, out: &mut Vec<Cause>, label_name: bool) {
    let name = meta.name.as_deref().unwrap_or_default();
    if name.is_empty() && meta.generate_name.is_none() {
        out.push(cause(
            "metadata.name",
            "FieldValueRequired",
            "Required value: name or generateName is required",
        ));
    } else if !name.is_empty() {
        check_name("metadata.name", name, !label_name, out);
    }
    for (k, v) in meta.labels.iter().flatten() {
        if k.is_empty() || k.len() > 316 || v.len() > 63 {
            out.push(cause(
                "metadata.labels",
                "FieldValueInvalid",
                format!("Invalid value: \"{k}\": a label key must be at most 316 characters and its value at most 63"),
            ));
        }
    }
}

/// The containers Miniku can run: names, images and resource requests.
fn check_pod_spec(spec: Option<&core::PodSpec>, at: &str, out: &mut Vec<Cause>) {
    let Some(spec) = spec else {
        out.push(required(at));
        return;
    };
    if spec.containers.is_empty() {
        out.push(required(format!("{at}.containers")));
    }
    let mut names = std::collections::HashSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let field = format!("{at}.containers[{i}]");
        check_name(&format!("{field}.name"), &c.name, false, out);
        if !c.name.is_empty() && !names.insert(c.name.as_str()) {
            out.push(cause(
                format!("{field}.name"),
                "FieldValueDuplicate",
                format!("Duplicate value: \"{}\"", c.name),
            ));
        }
        match c.image.as_deref() {
            None | Some("") => out.push(required(format!("{field}.image"))),
            Some(img) if img.len() > MAX_IMAGE_LEN || img.chars().any(char::is_whitespace) => out
                .push(cause(
                    format!("{field}.image"),
                    "FieldValueInvalid",
                    format!("Invalid value: \"{img}\": not an image reference"),
                )),
            _ => {}
        }
        if let Some(r) = &c.resources {
            for (which, list) in [("requests", &r.requests), ("limits", &r.limits)] {
                for (k, q) in list.iter().flatten() {
                    let ok = match k.as_str() {
                        "cpu" => parse_cpu_millis(&q.0).is_ok(),
                        _ => parse_bytes(&q.0).is_ok(),
                    };
                    if !ok {
                        out.push(cause(
                            format!("{field}.resources.{which}[{k}]"),
                            "FieldValueInvalid",
                            format!("Invalid value: \"{}\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'", q.0),
                        ));
                    }
                }
            }
        }
    }
}

impl Served for KubePod {
    const SELECTABLE_FIELDS: &'static [&'static str] = &[
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ];

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        check_meta(&self.metadata, &mut out, false);
        check_pod_spec(self.spec.as_ref(), "spec", &mut out);
        out
    }

    fn initial_status(&mut self) {
        self.status = Some(core::PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
    }

    fn prepare_update(&mut self, current: &Self) -> Result<(), Vec<Cause>> {
        keep_identity(&mut self.metadata, &current.metadata);
        self.status = current.status.clone();
        // Kubernetes lets a pod's spec change only in its images; Miniku's kubelet does not
        // act on any spec change, so none is allowed.
        if self.spec != current.spec {
            return Err(vec![cause(
                "spec",
                "FieldValueForbidden",
                "Forbidden: pod updates may not change fields of the spec (Miniku runs a pod as it was created; delete and create it again)",
            )]);
        }
        Ok(())
    }

    fn take_status_from(&mut self, request: Self) {
        self.status = request.status;
    }
}

/// What ReplicaSets and Deployments do alike on create and update: no status to start
/// with, the status kept on updates of the main resource, the generation raised by a spec
/// change, an immutable selector, and the status alone from `/status`.
macro_rules! workload_lifecycle {
    () => {
        fn initial_status(&mut self) {
            self.status = None;
        }

        fn prepare_update(&mut self, current: &Self) -> Result<(), Vec<Cause>> {
            self.status = current.status.clone();
            update_workload(
                &mut self.metadata,
                &current.metadata,
                (&self.spec, &current.spec),
                (
                    self.spec.as_ref().map(|s| &s.selector),
                    current.spec.as_ref().map(|s| &s.selector),
                ),
            )
        }

        fn take_status_from(&mut self, request: Self) {
            self.status = request.status;
        }
    };
}

impl Served for KubeReplicaSet {
    const SELECTABLE_FIELDS: &'static [&'static str] =
        &["metadata.name", "metadata.namespace", "status.replicas"];

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        // Pods are named `<rs>-<8 hex>`.
        check_workload_meta(
            &self.metadata,
            crate::api::validation::MAX_REPLICASET_NAME_LEN,
            "its pods add a 9-character suffix",
            &mut out,
        );
        let Some(spec) = &self.spec else {
            out.push(required("spec"));
            return out;
        };
        check_workload(
            spec.replicas,
            &spec.selector,
            spec.template.as_ref(),
            &mut out,
        );
        out
    }

    workload_lifecycle!();
}

/// On an update of a workload: identity kept, the generation raised by a change of the
/// spec, and the selector immutable.
fn update_workload<S: PartialEq>(
    meta: &mut ObjectMeta,
    current: &ObjectMeta,
    (spec, current_spec): (&S, &S),
    (selector, current_selector): (Option<&LabelSelector>, Option<&LabelSelector>),
) -> Result<(), Vec<Cause>> {
    keep_identity(meta, current);
    let generation = current.generation.unwrap_or(1);
    meta.generation = Some(if spec != current_spec {
        generation + 1
    } else {
        generation
    });
    if selector != current_selector {
        return Err(vec![cause(
            "spec.selector",
            "FieldValueInvalid",
            "Invalid value: field is immutable",
        )]);
    }
    Ok(())
}

/// A workload's metadata: a valid name short enough for the names made from it.
fn check_workload_meta(meta: &ObjectMeta, max: usize, why: &str, out: &mut Vec<Cause>) {
    check_meta(meta, out, false);
    let name = meta.name.as_deref().unwrap_or_default();
    if name.len() > max {
        out.push(cause(
            "metadata.name",
            "FieldValueTooLong",
            format!("Too long: may not be more than {max} bytes ({why})"),
        ));
    }
}

/// What ReplicaSets and Deployments share: replicas, a matchLabels selector that the
/// template's labels satisfy, and a pod template Miniku can run.
fn check_workload(
    replicas: Option<i32>,
    selector: &LabelSelector,
    template: Option<&core::PodTemplateSpec>,
    out: &mut Vec<Cause>,
) {
    match replicas {
        Some(r) if r < 0 => out.push(cause(
            "spec.replicas",
            "FieldValueInvalid",
            format!("Invalid value: {r}: must be greater than or equal to 0"),
        )),
        Some(r) if r as u32 > MAX_DESIRED_COUNT => out.push(cause(
            "spec.replicas",
            "FieldValueInvalid",
            format!("Invalid value: {r}: must be at most {MAX_DESIRED_COUNT}"),
        )),
        _ => {}
    }
    let labels = selector.match_labels.clone().unwrap_or_default();
    if selector
        .match_expressions
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        out.push(cause(
            "spec.selector.matchExpressions",
            "FieldValueNotSupported",
            "Unsupported value: Miniku's workloads select pods by matchLabels only",
        ));
    }
    if labels.is_empty() {
        out.push(cause(
            "spec.selector",
            "FieldValueRequired",
            "Required value: empty selector is invalid for deployment",
        ));
    }
    let template_labels = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if !labels
        .iter()
        .all(|(k, v)| template_labels.get(k) == Some(v))
    {
        out.push(cause(
            "spec.template.metadata.labels",
            "FieldValueInvalid",
            format!(
                "Invalid value: {template_labels:?}: `selector` does not match template `labels`"
            ),
        ));
    }
    check_pod_spec(
        template.and_then(|t| t.spec.as_ref()),
        "spec.template.spec",
        out,
    );
}

/// Kubernetes' check of a `maxSurge` / `maxUnavailable` value: a non-negative number, or a
/// percentage (at most 100% where `at_most_100`).
fn check_int_or_percent(
    field: &str,
    value: Option<&IntOrString>,
    at_most_100: bool,
    out: &mut Vec<Cause>,
) {
    match value {
        None => {}
        Some(IntOrString::Int(n)) if *n < 0 => out.push(cause(
            field,
            "FieldValueInvalid",
            format!("Invalid value: {n}: must be greater than or equal to 0"),
        )),
        Some(IntOrString::Int(_)) => {}
        Some(IntOrString::String(s)) => match crate::api::deployment::parse_percent(s) {
            None => out.push(cause(
                field,
                "FieldValueInvalid",
                format!("Invalid value: \"{s}\": a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"),
            )),
            Some(p) if at_most_100 && p > 100 => out.push(cause(
                field,
                "FieldValueInvalid",
                format!("Invalid value: \"{s}\": must not be greater than 100%"),
            )),
            Some(_) => {}
        },
    }
}

impl Served for KubeDeployment {
    const SELECTABLE_FIELDS: &'static [&'static str] = &["metadata.name", "metadata.namespace"];

    fn apply_defaults(&mut self) {
        crate::api::deployment::set_defaults(self);
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        // ReplicaSets are named `<deployment>-<pod-template-hash>` (up to 10 characters).
        check_workload_meta(
            &self.metadata,
            crate::api::deployment::MAX_DEPLOYMENT_NAME_LEN,
            "its ReplicaSets add an 11-character suffix and their pods 9 more",
            &mut out,
        );
        let Some(spec) = &self.spec else {
            out.push(required("spec"));
            return out;
        };
        check_workload(
            spec.replicas,
            &spec.selector,
            Some(&spec.template),
            &mut out,
        );
        let restart = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref());
        if let Some(p) = restart.filter(|p| *p != "Always") {
            out.push(cause(
                "spec.template.spec.restartPolicy",
                "FieldValueNotSupported",
                format!("Unsupported value: \"{p}\": supported values: \"Always\""),
            ));
        }
        let strategy = spec.strategy.as_ref();
        let kind = strategy
            .and_then(|s| s.type_.as_deref())
            .unwrap_or("RollingUpdate");
        let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
        match kind {
            "Recreate" if rolling.is_some() => out.push(cause(
                "spec.strategy.rollingUpdate",
                "FieldValueForbidden",
                "Forbidden: may not be specified when strategy `type` is 'Recreate'",
            )),
            "Recreate" => {}
            "RollingUpdate" => {
                let surge = rolling.and_then(|r| r.max_surge.as_ref());
                let unavailable = rolling.and_then(|r| r.max_unavailable.as_ref());
                check_int_or_percent(
                    "spec.strategy.rollingUpdate.maxSurge",
                    surge,
                    false,
                    &mut out,
                );
                check_int_or_percent(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    unavailable,
                    true,
                    &mut out,
                );
                let is_zero = |v: Option<&IntOrString>| {
                    crate::api::deployment::resolve(v, 100, false) == Some(0)
                };
                if is_zero(surge) && is_zero(unavailable) {
                    let shown = match unavailable {
                        Some(IntOrString::String(s)) => format!("\"{s}\""),
                        Some(IntOrString::Int(n)) => n.to_string(),
                        None => "0".into(),
                    };
                    out.push(cause(
                        "spec.strategy.rollingUpdate.maxUnavailable",
                        "FieldValueInvalid",
                        format!("Invalid value: {shown}: may not be 0 when `maxSurge` is 0"),
                    ));
                }
            }
            other => out.push(cause(
                "spec.strategy.type",
                "FieldValueNotSupported",
                format!("Unsupported value: \"{other}\": supported values: \"Recreate\", \"RollingUpdate\""),
            )),
        }
        for (field, value) in [
            ("spec.minReadySeconds", spec.min_ready_seconds),
            ("spec.revisionHistoryLimit", spec.revision_history_limit),
            (
                "spec.progressDeadlineSeconds",
                spec.progress_deadline_seconds,
            ),
        ] {
            if let Some(v) = value.filter(|v| *v < 0) {
                out.push(cause(
                    field,
                    "FieldValueInvalid",
                    format!("Invalid value: {v}: must be greater than or equal to 0"),
                ));
            }
        }
        if let (Some(deadline), Some(min_ready)) =
            (spec.progress_deadline_seconds, spec.min_ready_seconds)
        {
            if deadline <= min_ready {
                out.push(cause(
                    "spec.progressDeadlineSeconds",
                    "FieldValueInvalid",
                    format!("Invalid value: {deadline}: must be greater than minReadySeconds"),
                ));
            }
        }
        out
    }

    workload_lifecycle!();
}

impl Served for KubeNode {
    const SELECTABLE_FIELDS: &'static [&'static str] = &["metadata.name", "spec.unschedulable"];

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        check_meta(&self.metadata, &mut out, false);
        out
    }

    fn prepare_update(&mut self, current: &Self) -> Result<(), Vec<Cause>> {
        keep_identity(&mut self.metadata, &current.metadata);
        self.status = current.status.clone();
        Ok(())
    }

    fn take_status_from(&mut self, request: Self) {
        self.status = request.status;
    }
}

impl Served for KubeNamespace {
    fn mark_terminating(&mut self) {
        // kubectl shows it as STATUS Terminating.
        self.status.get_or_insert_with(Default::default).phase = Some("Terminating".into());
    }

    const SELECTABLE_FIELDS: &'static [&'static str] = &["metadata.name", "status.phase"];

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        check_meta(&self.metadata, &mut out, true);
        out
    }

    fn initial_status(&mut self) {
        // Namespaces have no generation in Kubernetes.
        self.metadata.generation = None;
        self.spec = Some(core::NamespaceSpec {
            finalizers: Some(vec!["kubernetes".into()]),
        });
        self.status = Some(core::NamespaceStatus {
            phase: Some("Active".into()),
            ..Default::default()
        });
    }

    fn prepare_update(&mut self, current: &Self) -> Result<(), Vec<Cause>> {
        keep_identity(&mut self.metadata, &current.metadata);
        self.status = current.status.clone();
        self.spec = current.spec.clone();
        Ok(())
    }

    fn take_status_from(&mut self, request: Self) {
        self.status = request.status;
    }
}

/// What an update never changes: uid, creation time, deletion state.
fn keep_identity(new: &mut ObjectMeta, current: &ObjectMeta) {
    new.uid = current.uid.clone();
    new.creation_timestamp = current.creation_timestamp.clone();
    new.deletion_timestamp = current.deletion_timestamp.clone();
    new.generation = current.generation;
    new.namespace = current.namespace.clone();
}
