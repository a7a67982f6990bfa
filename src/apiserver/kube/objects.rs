//! What the Kubernetes API does per kind: validation (422 causes with Kubernetes' field paths
//! and wording), what the server owns on create and update (uid, creationTimestamp,
//! generation, status), and the fields a `fieldSelector` may name. Owns only these rules;
//! routing and storage are the routes' and the registry's.

use chrono::Utc;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::status::Cause;
use crate::api::kube::{to_time, KubeNamespace, KubeNode, KubePod, KubeReplicaSet};
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

impl Served for KubeReplicaSet {
    const SELECTABLE_FIELDS: &'static [&'static str] =
        &["metadata.name", "metadata.namespace", "status.replicas"];

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        check_meta(&self.metadata, &mut out, false);
        let name = self.metadata.name.as_deref().unwrap_or_default();
        // Pods are named `<rs>-<8 hex>`.
        let max = crate::api::validation::MAX_REPLICASET_NAME_LEN;
        if name.len() > max {
            out.push(cause(
                "metadata.name",
                "FieldValueTooLong",
                format!("Too long: may not be more than {max} bytes (its pods add a 9-character suffix)"),
            ));
        }
        let Some(spec) = &self.spec else {
            out.push(required("spec"));
            return out;
        };
        match spec.replicas {
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
        let labels = spec.selector.match_labels.clone().unwrap_or_default();
        if spec
            .selector
            .match_expressions
            .as_ref()
            .is_some_and(|e| !e.is_empty())
        {
            out.push(cause(
                "spec.selector.matchExpressions",
                "FieldValueNotSupported",
                "Unsupported value: Miniku's ReplicaSets select pods by matchLabels only",
            ));
        }
        if labels.is_empty() {
            out.push(cause(
                "spec.selector",
                "FieldValueRequired",
                "Required value: empty selector is invalid for deployment",
            ));
        }
        let template = spec.template.as_ref();
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
                format!("Invalid value: {template_labels:?}: `selector` does not match template `labels`"),
            ));
        }
        check_pod_spec(
            template.and_then(|t| t.spec.as_ref()),
            "spec.template.spec",
            &mut out,
        );
        out
    }

    fn initial_status(&mut self) {
        self.status = None;
    }

    fn prepare_update(&mut self, current: &Self) -> Result<(), Vec<Cause>> {
        keep_identity(&mut self.metadata, &current.metadata);
        self.status = current.status.clone();
        let generation = current.metadata.generation.unwrap_or(1);
        self.metadata.generation = Some(if self.spec != current.spec {
            generation + 1
        } else {
            generation
        });
        if self.spec.as_ref().map(|s| &s.selector) != current.spec.as_ref().map(|s| &s.selector) {
            return Err(vec![cause(
                "spec.selector",
                "FieldValueInvalid",
                "Invalid value: field is immutable",
            )]);
        }
        Ok(())
    }

    fn take_status_from(&mut self, request: Self) {
        self.status = request.status;
    }
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
