//! Kubernetes `Status` errors: the one error type of the Kubernetes API's routes, with the
//! reasons, codes and messages kube-apiserver answers, so kubectl and the client libraries
//! print what they print against a real cluster. Owns only the mapping; the routes decide
//! which error applies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::registry::RegistryError;

/// One field's problem, for `Invalid` (422) answers.
#[derive(Debug, Clone)]
pub struct Cause {
    pub field: String,
    pub message: String,
    /// Kubernetes' cause type: `FieldValueRequired`, `FieldValueInvalid`, ...
    pub reason: &'static str,
}

#[derive(Debug, Clone)]
pub struct KubeError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    details: Box<Details>,
}

/// `details` of a Status.
#[derive(Debug, Clone, Default)]
struct Details {
    /// `details.name`, `details.kind` (the resource, plural), `details.group`.
    name: Option<String>,
    kind: Option<String>,
    group: Option<String>,
    causes: Vec<Cause>,
    /// `details.retryAfterSeconds`.
    retry_after: Option<u64>,
}

impl KubeError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        KubeError {
            code,
            reason,
            message: message.into(),
            details: Box::default(),
        }
    }

    fn about(mut self, group: &str, resource: &str, name: &str) -> Self {
        self.details.group = (!group.is_empty()).then(|| group.to_string());
        self.details.kind = Some(resource.to_string());
        self.details.name = (!name.is_empty()).then(|| name.to_string());
        self
    }

    /// `pods "x" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, resource)),
        )
        .about(group, resource, name)
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, resource)),
        )
        .about(group, resource, name)
    }

    /// A stale resourceVersion.
    pub fn conflict(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(group, resource)
            ),
        )
        .about(group, resource, name)
    }

    /// 422 with the causes; the message is Kubernetes': `Kind "name" is invalid: field: msg`.
    pub fn invalid(
        group: &str,
        resource: &str,
        kind: &str,
        name: &str,
        causes: Vec<Cause>,
    ) -> Self {
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let shown = match list.len() {
            1 => list[0].clone(),
            _ => format!("[{}]", list.join(", ")),
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {shown}"),
        )
        .about(group, resource, name);
        e.details.kind = Some(kind.to_string());
        e.details.causes = causes;
        e
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/merge-patch+json, application/json-patch+json, application/strategic-merge-patch+json (got {content_type:?})"),
        )
    }

    pub fn too_large(max: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {max} bytes"),
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(503, "ServiceUnavailable", message);
        e.details.retry_after = Some(1);
        e
    }

    /// The request was answered but its outcome is not known (Kubernetes' `Timeout`, 504).
    pub fn timeout(message: impl Into<String>) -> Self {
        let mut e = Self::new(504, "Timeout", message);
        e.details.retry_after = Some(1);
        e
    }

    /// The Status object itself.
    pub fn to_status(&self) -> Value {
        let d = &self.details;
        let mut details = serde_json::Map::new();
        if let Some(n) = &d.name {
            details.insert("name".into(), json!(n));
        }
        if let Some(g) = &d.group {
            details.insert("group".into(), json!(g));
        }
        if let Some(k) = &d.kind {
            details.insert("kind".into(), json!(k));
        }
        if !d.causes.is_empty() {
            let causes: Vec<Value> = d
                .causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect();
            details.insert("causes".into(), json!(causes));
        }
        if let Some(s) = d.retry_after {
            details.insert("retryAfterSeconds".into(), json!(s));
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }

    /// From a registry error about object `name` of `resource`.
    pub fn from_registry(e: RegistryError, group: &str, resource: &str, name: &str) -> Self {
        match e {
            RegistryError::NotFound { .. } => Self::not_found(group, resource, name),
            RegistryError::AlreadyExists { .. } => Self::already_exists(group, resource, name),
            RegistryError::Conflict { .. } => Self::conflict(group, resource, name),
            RegistryError::Compacted(r) => Self::expired(format!(
                "too old resource version: history before {r} was compacted"
            )),
            RegistryError::OutcomeUnknown(m) => Self::timeout(format!(
                "the store did not answer in time; the write may or may not have happened: {m}"
            )),
            RegistryError::NoSpace(m) => Self::new(
                507,
                "InsufficientStorage",
                format!("the store is out of space: {m}"),
            ),
            other => Self::unavailable(other.to_string()),
        }
    }
}

/// `pods` or `replicasets.apps`, as Kubernetes names a resource in messages.
pub fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl IntoResponse for KubeError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.to_status().to_string(),
        )
            .into_response();
        if let Some(s) = self.details.retry_after {
            if let Ok(v) = s.to_string().parse() {
                resp.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_reads_as_kubernetes_writes_it() {
        let s = KubeError::not_found("apps", "replicasets", "web").to_status();
        assert_eq!(s["message"], "replicasets.apps \"web\" not found");
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["kind"], "replicasets");
    }

    #[test]
    fn invalid_names_each_field() {
        let e = KubeError::invalid(
            "apps",
            "replicasets",
            "ReplicaSet",
            "web",
            vec![Cause {
                field: "spec.replicas".into(),
                message: "Invalid value: -1: must be greater than or equal to 0".into(),
                reason: "FieldValueInvalid",
            }],
        );
        let s = e.to_status();
        assert_eq!(
            s["message"],
            "ReplicaSet \"web\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(s["details"]["causes"][0]["field"], "spec.replicas");
        assert_eq!(s["code"], 422);
    }
}
