//! The columns and cells of Events, as Kubernetes prints them: `LAST SEEN TYPE REASON
//! OBJECT MESSAGE` (and, with `-o wide`, `SUBOBJECT SOURCE FIRST SEEN COUNT NAME`).

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{age, col, wide, Column, TablePrinter, DESC_NAME};

static EVENT_COLUMNS: [Column; 10] = [
    col("Last Seen", "string", "The time at which the most recent occurrence of this event was recorded."),
    col("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future"),
    col("Reason", "string", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
    col("Object", "string", "The object that this event is about."),
    wide("Subobject", "string", "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]."),
    wide("Source", "string", "The component reporting this event. Should be a short machine understandable string."),
    col("Message", "string", "A human-readable description of the status of this operation."),
    wide("First Seen", "string", "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
    wide("Count", "string", "The number of times this event has occurred."),
    Column {
        name: "Name",
        type_: "string",
        format: "name",
        description: DESC_NAME,
        priority: 1,
    },
];

/// `kubelet, node-a`: the source's component and host (or the reporting ones).
fn source_of(e: &Event) -> String {
    let s = e.source.clone().unwrap_or_default();
    let component = s
        .component
        .filter(|c| !c.is_empty())
        .or_else(|| e.reporting_component.clone())
        .unwrap_or_default();
    let host = s
        .host
        .filter(|h| !h.is_empty())
        .or_else(|| e.reporting_instance.clone())
        .unwrap_or_default();
    match (component.is_empty(), host.is_empty()) {
        (true, _) => String::new(),
        (false, true) => component,
        (false, false) => format!("{component}, {host}"),
    }
}

impl TablePrinter for Event {
    fn columns() -> &'static [Column] {
        &EVENT_COLUMNS
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        // MicroTime and Time hold the same timestamp.
        let event_time = self.event_time.as_ref().map(|t| Time(t.0));
        let first = age(self.first_timestamp.as_ref().or(event_time.as_ref()), now);
        let last = match &self.last_timestamp {
            Some(t) => age(Some(t), now),
            None => first.clone(),
        };
        let o = &self.involved_object;
        let kind = o.kind.as_deref().unwrap_or_default().to_lowercase();
        let target = match o.name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) => format!("{kind}/{name}"),
            None => kind,
        };
        let count = match self.count {
            Some(c) if c > 0 => i64::from(c),
            _ => 1,
        };
        vec![
            json!(last),
            json!(self.type_.as_deref().unwrap_or_default()),
            json!(self.reason.as_deref().unwrap_or_default()),
            json!(target),
            json!(o.field_path.as_deref().unwrap_or_default()),
            json!(source_of(self)),
            json!(self.message.as_deref().unwrap_or_default().trim()),
            json!(first),
            json!(count),
            json!(self.metadata.name.as_deref().unwrap_or_default()),
        ]
    }
}
