//! The scheduler: binds each pending pod without a node to a Ready node.
//!
//! - Filter: node Ready and schedulable; every `node_selector` label present on the node;
//!   the pod's cpu/memory requests fit in the node's capacity minus what is bound to it;
//!   fewer than `max_pods` pods.
//! - Score: least allocated (the emptier node wins, counting pods, cpu and memory); ties are
//!   broken at random.
//! - Bind: a compare-and-swap on the pod's revision that sets only `spec.node_name`; a
//!   conflict means the pod changed, and its event brings it back.
//! - Assume: the chosen binding is recorded locally at once, so a burst of pods is spread
//!   before the store echoes the bindings back.
//! - Usage per node is kept change by change from the pod watch and the assumptions
//!   ([`accounting::Accounting`]), not recounted from every pod for each binding.
//! - A pod that fits nowhere gets the reason `Unschedulable` and a message in Kubernetes'
//!   words, and is tried again when a node or a pod changes (never on a timer).
//! - Events: `Scheduled` for a binding, `FailedScheduling` (a Warning, with the message) for
//!   a pod that fits nowhere.

mod accounting;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use accounting::Accounting;

use crate::api::{namespace_or_default, Node, NodeStatus, Pod, PodPhase};
use crate::events::{pod_reference, Recorder};
use crate::registry::{Registry, RegistryError};
use crate::runtime::{Change, Controller, Informer, Next, Shutdown};

/// What a node has left, as the scheduler sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub pods: u32,
    pub cpu: u64,
    pub memory: u64,
}

/// Why a node was filtered out, for the Unschedulable message, in the words of the
/// Kubernetes filter that refuses it (a NotReady node carries the not-ready taint there).
fn filter(node: &Node, used: &Usage, pod: &Pod) -> Result<(), &'static str> {
    if node.status != NodeStatus::Ready {
        return Err("node(s) had untolerated taint {node.kubernetes.io/not-ready: }");
    }
    if node.unschedulable {
        return Err("node(s) were unschedulable");
    }
    if !pod
        .spec
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
    {
        return Err("node(s) didn't match Pod's node affinity/selector");
    }
    if used.pods >= node.max_pods {
        return Err("Too many pods");
    }
    let req = &pod.spec.resources;
    if used.cpu + req.cpu > node.capacity.cpu {
        return Err("Insufficient cpu");
    }
    if used.memory + req.memory > node.capacity.memory {
        return Err("Insufficient memory");
    }
    Ok(())
}

/// Higher is better: the mean free fraction of pods, cpu and memory after placing the pod.
fn score(node: &Node, used: &Usage, pod: &Pod) -> f64 {
    let free = |cap: f64, used: f64| if cap <= 0.0 { 1.0 } else { (cap - used) / cap };
    let req = &pod.spec.resources;
    let pods = free(node.max_pods as f64, used.pods as f64 + 1.0);
    let cpu = free(node.capacity.cpu as f64, (used.cpu + req.cpu) as f64);
    let mem = free(
        node.capacity.memory as f64,
        (used.memory + req.memory) as f64,
    );
    (pods + cpu + mem) / 3.0
}

/// Picks a node for `pod`, or explains why none fits as Kubernetes' scheduler does
/// (`0/3 nodes are available: 1 Insufficient cpu, 2 node(s) were unschedulable.`).
pub fn pick_node(
    nodes: &[Node],
    usage: &HashMap<String, Usage>,
    pod: &Pod,
) -> Result<String, String> {
    let zero = Usage::default();
    let mut best: Vec<(&Node, f64)> = Vec::new();
    let mut reasons: BTreeMap<&'static str, u32> = BTreeMap::new();
    for node in nodes {
        let used = usage.get(&node.name).unwrap_or(&zero);
        match filter(node, used, pod) {
            Ok(()) => best.push((node, score(node, used, pod))),
            Err(why) => *reasons.entry(why).or_default() += 1,
        }
    }
    let Some(top) = best.iter().map(|(_, s)| *s).reduce(f64::max) else {
        let mut detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        detail.sort();
        return Err(if nodes.is_empty() {
            "no nodes available to schedule pods".to_string()
        } else {
            format!(
                "0/{} nodes are available: {}.",
                nodes.len(),
                detail.join(", ")
            )
        });
    };
    let ties: Vec<&Node> = best
        .iter()
        .filter(|(_, s)| (top - s).abs() < 1e-9)
        .map(|(n, _)| *n)
        .collect();
    let i = rand::random_range(0..ties.len());
    Ok(ties[i].name.clone())
}

fn needs_binding(p: &Pod) -> bool {
    p.spec.node_name.is_empty() && p.status == PodPhase::Pending
}

#[derive(Clone)]
pub struct Scheduler {
    registry: Registry,
    /// Scheduled and FailedScheduling events.
    events: Recorder,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    /// What every node has bound: the pods seen plus the bindings assumed (pods bound by
    /// us that the cache may not show yet).
    accounting: Arc<Mutex<Accounting>>,
    /// Pods that fit nowhere, waiting for a change in the cluster.
    unschedulable: Arc<Mutex<HashSet<String>>>,
}

impl Scheduler {
    /// Runs the scheduler over shared informers until `shutdown`, or until the future is
    /// dropped.
    pub async fn run(
        registry: Registry,
        pods: Informer<Pod>,
        nodes: Informer<Node>,
        workers: usize,
        shutdown: Shutdown,
    ) {
        let sched = Scheduler {
            events: Recorder::start(registry.clone(), "default-scheduler", None),
            registry,
            pods: pods.clone(),
            nodes: nodes.clone(),
            accounting: Arc::new(Mutex::new(Accounting::default())),
            unschedulable: Arc::new(Mutex::new(HashSet::new())),
        };
        let on_pod = sched.clone();
        let on_node = sched.clone();
        let cache = pods.clone();
        let seeded = sched.clone();
        Controller::new("scheduler")
            .watches(&pods, move |ch| on_pod.keys_for_pod_change(ch))
            .watches(&nodes, move |_| on_node.take_unschedulable())
            .seed(move |queue| {
                // The changes subscribed to before this read follow it; older versions
                // among them do not move the count back.
                let mut accounting = seeded.lock_accounting();
                cache.for_each(|p| {
                    accounting.observe(p);
                    if needs_binding(p) {
                        queue.add(&p.key());
                    }
                })
            })
            .run(workers, shutdown.wait(), move |name| {
                let s = sched.clone();
                async move { s.schedule(&name).await }
            })
            .await;
    }

    /// The pods to look at after a pod change: the pod if it needs a node; every pod that
    /// fit nowhere if the change freed room on a node.
    fn keys_for_pod_change(&self, ch: &Change<Pod>) -> Vec<String> {
        match ch {
            Change::Upsert { old, new } => {
                self.lock_accounting().observe(new);
                let mut keys = Vec::new();
                if needs_binding(new) {
                    keys.push(new.key());
                } else {
                    self.lock_unschedulable().remove(&new.key());
                }
                // A pod leaving a node frees room.
                let freed =
                    old.as_ref().is_some_and(|o| !o.spec.node_name.is_empty()) && new.is_terminal();
                if freed {
                    keys.extend(self.take_unschedulable());
                }
                keys
            }
            Change::Deleted(p) => {
                self.lock_accounting().forget(&p.key(), p.resource_version);
                self.lock_unschedulable().remove(&p.key());
                if p.spec.node_name.is_empty() {
                    Vec::new()
                } else {
                    self.take_unschedulable()
                }
            }
        }
    }

    fn lock_accounting(&self) -> std::sync::MutexGuard<'_, Accounting> {
        self.accounting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_unschedulable(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.unschedulable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pods that fit nowhere, to be tried again (a node or a pod changed).
    fn take_unschedulable(&self) -> Vec<String> {
        self.lock_unschedulable().drain().collect()
    }

    pub async fn schedule(&self, name: &str) -> anyhow::Result<Next> {
        let Some(pod) = self.pods.get(name) else {
            return Ok(Next::Done);
        };
        if !needs_binding(&pod) || self.lock_accounting().is_assumed(name) {
            return Ok(Next::Done);
        }
        let nodes = self.nodes.list();
        // Choosing and assuming is one step: concurrent workers must each see the others'
        // choices, or a burst piles onto the same emptiest node.
        let choice = {
            let mut accounting = self.lock_accounting();
            let choice = pick_node(&nodes, accounting.usage(), &pod);
            if let Ok(node) = &choice {
                accounting.assume(&pod, node);
            }
            choice
        };
        match choice {
            Ok(node) => {
                let mut bound = pod.clone();
                bound.spec.node_name = node.clone();
                if bound.reason == "Unschedulable" {
                    bound.reason.clear();
                    bound.message.clear();
                }
                match self.registry.update(&bound).await {
                    Ok(_) => {
                        tracing::debug!(pod = name, node = %node, "bound");
                        self.events.normal(
                            pod_reference(&pod),
                            "Scheduled",
                            format!(
                                "Successfully assigned {}/{} to {node}",
                                namespace_or_default(&pod.namespace),
                                pod.spec.name
                            ),
                        );
                        Ok(Next::Done)
                    }
                    Err(e) => {
                        self.lock_accounting().unassume(name);
                        match e {
                            // Changed or gone meanwhile: its event brings it back if needed.
                            RegistryError::Conflict { .. } | RegistryError::NotFound { .. } => {
                                Ok(Next::Done)
                            }
                            other => Err(other.into()),
                        }
                    }
                }
            }
            Err(why) => {
                self.lock_unschedulable().insert(name.to_string());
                if pod.reason != "Unschedulable" || pod.message != why {
                    let mut marked = pod.clone();
                    marked.reason = "Unschedulable".into();
                    marked.message = why.clone();
                    match self.registry.update(&marked).await {
                        Ok(_)
                        | Err(RegistryError::Conflict { .. })
                        | Err(RegistryError::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                    tracing::info!(pod = name, reason = %why, "unschedulable");
                    self.events
                        .warning(pod_reference(&pod), "FailedScheduling", why.clone());
                }
                Ok(Next::Done)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Resources;

    fn node(name: &str, cpu: u64) -> Node {
        Node {
            name: name.into(),
            labels: Default::default(),
            capacity: Resources {
                cpu,
                memory: 1 << 30,
            },
            max_pods: 110,
            status: NodeStatus::Ready,
            unschedulable: false,
            reason: String::new(),
            resource_version: 0,
            ..Default::default()
        }
    }

    fn pod(cpu: u64) -> Pod {
        let mut p = crate::controllers::replicaset::new_pod(&crate::api::ReplicaSet {
            name: "r".into(),
            desired_count: 1,
            current_count: 0,
            ready_count: 0,
            selector: Default::default(),
            template: Default::default(),
            resource_version: 0,
            uid: String::new(),
            ..Default::default()
        });
        p.spec.resources.cpu = cpu;
        p
    }

    #[test]
    fn spreads_by_least_allocated() {
        let nodes = vec![node("a", 4000), node("b", 4000)];
        let usage = HashMap::from([(
            "a".to_string(),
            Usage {
                pods: 3,
                cpu: 0,
                memory: 0,
            },
        )]);
        assert_eq!(pick_node(&nodes, &usage, &pod(0)), Ok("b".to_string()));
    }

    #[test]
    fn filters_say_why_nothing_fits() {
        let mut nodes = vec![node("a", 1000), node("b", 1000)];
        nodes[1].status = NodeStatus::NotReady;
        let err = pick_node(&nodes, &HashMap::new(), &pod(2000))
            .err()
            .unwrap_or_default();
        assert_eq!(
            err,
            "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."
        );
        assert_eq!(
            pick_node(&nodes, &HashMap::new(), &pod(500)),
            Ok("a".to_string())
        );
    }

    #[test]
    fn node_selector_must_match() {
        let mut nodes = vec![node("a", 1000), node("b", 1000)];
        nodes[1].labels.insert("disk".into(), "ssd".into());
        let mut p = pod(0);
        p.spec.node_selector.insert("disk".into(), "ssd".into());
        assert_eq!(pick_node(&nodes, &HashMap::new(), &p), Ok("b".to_string()));
    }
}
