//! Events: the record of what happened to an object (Kubernetes' v1 Event), as `kubectl
//! describe` and `kubectl get events` show it. A component makes one [`Recorder`] and says
//! what it did ([`Recorder::normal`], [`Recorder::warning`]); the recorder's writer task
//! stores it, so recording never waits on the store and never fails the caller.
//!
//! As client-go's recorder does:
//! - a repeat of an event (same object, type, reason and message from the same source)
//!   raises the stored event's `count` and `lastTimestamp` instead of writing a new one, so
//!   a crash-looping pod does not flood the store ([`AGGREGATE_CACHE`] events remembered);
//! - the queue holds [`QUEUE`] events and drops what does not fit (events are best effort:
//!   a component under load sheds them rather than slow down).
//!
//! Events expire an hour after their last write ([`crate::registry::Object::TTL`]).
//! This module owns writing events; it must not read them (the API serves them).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::mpsc;

use crate::api::kube::{to_time, KubeEvent};
use crate::api::{namespace_or_default, random_hex, Node, Pod, ReplicaSet};
use crate::registry::{Registry, RegistryError};
use crate::runtime::{spawn_owned, OwnedTask};

/// Off: every recorder this process starts records nothing ([`disable_in_this_process`]).
static DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes every recorder started from now on in this process record nothing (a component's
/// `--no-events`, to measure what events cost).
pub fn disable_in_this_process() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// Events waiting for the writer; more are dropped.
pub const QUEUE: usize = 1000;
/// Distinct events remembered for aggregation (the oldest are forgotten first).
pub const AGGREGATE_CACHE: usize = 4096;
/// New events written in one store transaction, at most.
pub const WRITE_BATCH: usize = crate::registry::MAX_BATCH;

/// `Normal` or `Warning`, as Kubernetes types events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

struct Record {
    object: ObjectReference,
    type_: EventType,
    reason: &'static str,
    message: String,
    at: DateTime<Utc>,
}

/// Records events for one component (cheap to clone; the writer stops with the last clone).
#[derive(Clone)]
pub struct Recorder {
    /// None: a recorder that records nothing ([`Recorder::disabled`]).
    queue: Option<mpsc::Sender<Record>>,
    dropped: Arc<AtomicU64>,
    _writer: Option<Arc<OwnedTask<()>>>,
}

impl Recorder {
    /// A recorder whose events name `component` (and `host`, for a node's kubelet) as their
    /// source. Needs a tokio runtime.
    pub fn start(registry: Registry, component: &str, host: Option<&str>) -> Recorder {
        if DISABLED.load(Ordering::Relaxed) {
            return Recorder::disabled();
        }
        let (queue, receiver) = mpsc::channel(QUEUE);
        let source = EventSource {
            component: Some(component.to_string()),
            host: host.map(str::to_string),
        };
        let writer = Writer {
            registry,
            source,
            seen: HashMap::new(),
            order: VecDeque::new(),
        };
        Recorder {
            queue: Some(queue),
            dropped: Arc::default(),
            _writer: Some(Arc::new(spawn_owned(writer.run(receiver)))),
        }
    }

    /// A recorder that records nothing (for a component run with events off, and tests).
    pub fn disabled() -> Recorder {
        Recorder {
            queue: None,
            dropped: Arc::default(),
            _writer: None,
        }
    }

    pub fn normal(&self, object: ObjectReference, reason: &'static str, message: String) {
        self.record(object, EventType::Normal, reason, message);
    }

    pub fn warning(&self, object: ObjectReference, reason: &'static str, message: String) {
        self.record(object, EventType::Warning, reason, message);
    }

    fn record(
        &self,
        object: ObjectReference,
        type_: EventType,
        reason: &'static str,
        message: String,
    ) {
        let Some(queue) = &self.queue else {
            return;
        };
        let record = Record {
            object,
            type_,
            reason,
            message,
            at: Utc::now(),
        };
        if queue.try_send(record).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "event queue full: events dropped");
            }
        }
    }

    /// Events dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The reference an event about a pod holds.
pub fn pod_reference(pod: &Pod) -> ObjectReference {
    pod_reference_by_key(&pod.key(), &pod.uid)
}

/// The reference to the pod at `namespace/name` with `uid` (for a pod known only by what
/// its container says of it, once the pod itself is gone).
pub fn pod_reference_by_key(key: &str, uid: &str) -> ObjectReference {
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace_or_default(namespace).to_string()),
        name: Some(name.to_string()),
        uid: (!uid.is_empty()).then(|| uid.to_string()),
        ..Default::default()
    }
}

/// The reference an event about a ReplicaSet holds.
pub fn replicaset_reference(rs: &ReplicaSet) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some("ReplicaSet".into()),
        namespace: Some(namespace_or_default(&rs.namespace).to_string()),
        name: Some(rs.name.clone()),
        uid: (!rs.uid.is_empty()).then(|| rs.uid.clone()),
        ..Default::default()
    }
}

/// The reference an event about a node holds (Kubernetes uses the node's name as its uid).
pub fn node_reference(node: &Node) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.name.clone()),
        uid: Some(node.name.clone()),
        ..Default::default()
    }
}

/// The reference to any Kubernetes object the API serves.
pub fn reference_to<T>(obj: &T) -> ObjectReference
where
    T: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let m = obj.metadata();
    ObjectReference {
        api_version: Some(T::API_VERSION.into()),
        kind: Some(T::KIND.into()),
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        uid: m.uid.clone(),
        ..Default::default()
    }
}

/// What makes two events the same one (client-go's aggregation key).
fn aggregate_key(r: &Record) -> String {
    let o = &r.object;
    let f = |v: &Option<String>| v.clone().unwrap_or_default();
    format!(
        "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
        f(&o.kind),
        f(&o.namespace),
        f(&o.name),
        f(&o.uid),
        r.type_.as_str(),
        r.reason,
        r.message
    )
}

struct Writer {
    registry: Registry,
    source: EventSource,
    /// Events written, by aggregation key, as last stored.
    seen: HashMap<String, KubeEvent>,
    order: VecDeque<String>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<Record>) {
        let mut batch = Vec::new();
        while receiver.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            self.write_all(std::mem::take(&mut batch)).await;
        }
    }

    /// Writes what waited in the queue, in order: new events together, in transactions of
    /// up to [`WRITE_BATCH`] (a burst of pods costs the store a few writes, not one per
    /// event); a repeat on its own, after what it repeats.
    async fn write_all(&mut self, records: Vec<Record>) {
        let mut fresh: Vec<(String, KubeEvent)> = Vec::new();
        for record in records {
            let key = aggregate_key(&record);
            let event = self.new_event(&record);
            let repeat = self.seen.contains_key(&key) || fresh.iter().any(|(k, _)| *k == key);
            let same_name = fresh
                .iter()
                .any(|(_, e)| e.metadata.name == event.metadata.name);
            if repeat || same_name {
                self.create_all(std::mem::take(&mut fresh)).await;
            }
            if repeat {
                if let Err(e) = self.write(record).await {
                    tracing::debug!(error = %e, "event not written");
                }
            } else {
                fresh.push((key, event));
            }
        }
        self.create_all(fresh).await;
    }

    /// Creates new events in one transaction; if the store refuses it (a name taken), one
    /// by one.
    async fn create_all(&mut self, fresh: Vec<(String, KubeEvent)>) {
        if fresh.is_empty() {
            return;
        }
        let events: Vec<KubeEvent> = fresh.iter().map(|(_, e)| e.clone()).collect();
        match self.registry.create_all(&events).await {
            Ok(stored) => {
                for ((key, _), event) in fresh.into_iter().zip(stored) {
                    self.remember(key, event);
                }
            }
            Err(RegistryError::AlreadyExists { .. }) if fresh.len() > 1 => {
                for (key, event) in fresh {
                    match self.registry.create(&event).await {
                        Ok(stored) => self.remember(key, stored),
                        Err(e) => tracing::debug!(error = %e, "event not written"),
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, events = fresh.len(), "events not written"),
        }
    }

    /// The stored version of the event at aggregation key `key`, for its repeats.
    fn remember(&mut self, key: String, stored: KubeEvent) {
        if self.seen.insert(key.clone(), stored).is_none() {
            self.order.push_back(key);
            if self.order.len() > AGGREGATE_CACHE {
                if let Some(oldest) = self.order.pop_front() {
                    self.seen.remove(&oldest);
                }
            }
        }
    }

    async fn write(&mut self, record: Record) -> Result<(), RegistryError> {
        let key = aggregate_key(&record);
        if let Some(previous) = self.seen.get(&key) {
            let mut next = previous.clone();
            next.count = Some(next.count.unwrap_or(1) + 1);
            next.last_timestamp = Some(to_time(record.at));
            match self.registry.update(&next).await {
                Ok(stored) => {
                    self.seen.insert(key, stored);
                    return Ok(());
                }
                // Expired or changed by someone else: a new event says it again.
                Err(RegistryError::NotFound { .. } | RegistryError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.new_event(&record);
        let stored = self.registry.create(&event).await?;
        self.remember(key, stored);
        Ok(())
    }

    fn new_event(&self, r: &Record) -> KubeEvent {
        let object_name = r.object.name.clone().unwrap_or_default();
        // Kubernetes' naming: the object's name and the time in hex nanoseconds.
        let nanos = r.at.timestamp_nanos_opt().unwrap_or_default();
        let namespace = r
            .object
            .namespace
            .clone()
            .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string());
        let at = to_time(r.at);
        KubeEvent {
            metadata: ObjectMeta {
                name: Some(format!("{object_name}.{nanos:x}")),
                namespace: Some(namespace),
                uid: Some(random_hex(32)),
                creation_timestamp: Some(at.clone()),
                ..Default::default()
            },
            involved_object: r.object.clone(),
            reason: Some(r.reason.to_string()),
            message: Some(r.message.clone()),
            type_: Some(r.type_.as_str().to_string()),
            source: Some(self.source.clone()),
            reporting_component: self.source.component.clone(),
            reporting_instance: self.source.host.clone(),
            first_timestamp: Some(at.clone()),
            last_timestamp: Some(at),
            count: Some(1),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Object, WatchEvent};

    fn pod(name: &str) -> Pod {
        let mut p = Pod::default();
        p.spec.name = name.into();
        p.uid = format!("{name}-uid");
        p
    }

    async fn events(registry: &Registry, want: usize) -> Vec<KubeEvent> {
        for _ in 0..200 {
            let (list, _) = registry.list::<KubeEvent>().await.expect("a list");
            let total: i32 = list.iter().map(|e| e.count.unwrap_or(0)).sum();
            if total as usize >= want {
                return list;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("fewer than {want} events recorded");
    }

    #[tokio::test]
    async fn a_repeat_raises_the_count_and_another_event_is_its_own() {
        let (registry, _store) = Registry::in_process();
        let recorder = Recorder::start(registry.clone(), "kubelet", Some("node-a"));
        let p = pod("web-1");
        for _ in 0..3 {
            recorder.warning(
                pod_reference(&p),
                "BackOff",
                "Back-off restarting failed container main in pod web-1_default(web-1-uid)".into(),
            );
        }
        recorder.normal(
            pod_reference(&p),
            "Started",
            "Started container main".into(),
        );
        let mut list = events(&registry, 4).await;
        list.sort_by_key(|e| e.reason.clone());
        assert_eq!(list.len(), 2, "{list:?}");
        let backoff = &list[0];
        assert_eq!(backoff.reason.as_deref(), Some("BackOff"));
        assert_eq!(backoff.count, Some(3));
        assert_eq!(backoff.type_.as_deref(), Some("Warning"));
        assert!(backoff.last_timestamp >= backoff.first_timestamp);
        assert_eq!(backoff.involved_object.name.as_deref(), Some("web-1"));
        assert_eq!(backoff.involved_object.uid.as_deref(), Some("web-1-uid"));
        let source = backoff.source.clone().unwrap_or_default();
        assert_eq!(source.component.as_deref(), Some("kubelet"));
        assert_eq!(source.host.as_deref(), Some("node-a"));
        assert!(backoff
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("web-1.")));
        assert_eq!(list[1].count, Some(1));
    }

    #[tokio::test]
    async fn a_burst_is_written_in_batches_with_every_event_and_repeat() {
        use futures::StreamExt;
        let (registry, _store) = Registry::in_process();
        let mut writes = registry.watch::<KubeEvent>(1);
        let recorder = Recorder::start(registry.clone(), "default-scheduler", None);
        // More than two batches; every pod's event is its own, and p0's is said twice.
        // Recorded before the writer first runs (nothing here awaits), so it finds them
        // all waiting.
        let n = WRITE_BATCH * 2 + 5;
        let said = |i: usize| format!("Successfully assigned default/p{i} to node-a");
        for i in 0..n {
            recorder.normal(pod_reference(&pod(&format!("p{i}"))), "Scheduled", said(i));
        }
        recorder.normal(pod_reference(&pod("p0")), "Scheduled", said(0));
        let mut created = std::collections::BTreeMap::new();
        let mut repeated = None;
        while created.len() < n || repeated.is_none() {
            let next = tokio::time::timeout(std::time::Duration::from_secs(10), writes.next());
            match next.await.expect("the events within 10 s") {
                Some(Ok(WatchEvent::Added(e))) => {
                    created.insert(e.metadata.name.clone(), e.resource_version());
                }
                Some(Ok(WatchEvent::Modified(e))) => repeated = Some(e),
                Some(Ok(_)) => {}
                other => panic!("the watch ended: {other:?}"),
            }
        }
        // Three transactions carried the new events: a batch, a batch, the rest.
        let revisions: std::collections::BTreeSet<i64> = created.values().copied().collect();
        assert_eq!(revisions.len(), 3, "{revisions:?}");
        let repeated = repeated.expect("the repeat");
        assert_eq!(repeated.involved_object.name.as_deref(), Some("p0"));
        assert_eq!(repeated.count, Some(2));
        assert_eq!(recorder.dropped(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_events_instead_of_waiting() {
        let (registry, _store) = Registry::in_process();
        let recorder = Recorder::start(registry, "scheduler", None);
        // Far more than the queue holds, faster than any store takes them.
        for i in 0..(QUEUE * 3) {
            recorder.normal(
                pod_reference(&pod(&format!("p{i}"))),
                "Scheduled",
                "x".into(),
            );
        }
        assert!(recorder.dropped() > 0);
    }
}
