//! The Kubernetes API's rules for v1 Events: the fields a `fieldSelector` may name (as
//! `kubectl describe` and `kubectl get events --field-selector involvedObject.name=x` use
//! them) and Kubernetes' validation. The components write events through
//! `crate::events`; users may write them too, as in Kubernetes.

use super::{cause, check_meta, keep_identity, Cause, Served};
use crate::api::kube::KubeEvent;

impl Served for KubeEvent {
    const SELECTABLE_FIELDS: &'static [&'static str] = &[
        "metadata.name",
        "metadata.namespace",
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ];

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        // Event names are DNS subdomains (`<object>.<hex time>`).
        check_meta(&self.metadata, &mut out, false);
        let namespace = self.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(theirs) = self
            .involved_object
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
        {
            if theirs != namespace {
                out.push(cause(
                    "involvedObject.namespace",
                    "FieldValueInvalid",
                    format!("Invalid value: {theirs:?}: does not match event.namespace"),
                ));
            }
        }
        if let Some(t) = self.type_.as_deref().filter(|t| !t.is_empty()) {
            if t != "Normal" && t != "Warning" {
                out.push(cause(
                    "type",
                    "FieldValueNotSupported",
                    format!("Unsupported value: {t:?}: supported values: \"Normal\", \"Warning\""),
                ));
            }
        }
        out
    }

    fn initial_status(&mut self) {
        // Events have no generation in Kubernetes.
        self.metadata.generation = None;
    }

    fn prepare_update(&mut self, current: &Self) -> Result<(), Vec<Cause>> {
        keep_identity(&mut self.metadata, &current.metadata);
        self.metadata.generation = None;
        Ok(())
    }

    fn take_status_from(&mut self, _request: Self) {}
}
