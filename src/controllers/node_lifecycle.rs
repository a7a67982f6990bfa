//! The node lifecycle controller: a node is Ready while its heartbeat object (a
//! [`NodeLease`], kept alive by the kubelet through a store lease) exists. When the store
//! deletes the heartbeat (the lease expired), the node becomes NotReady (the scheduler stops
//! binding to it); after `eviction_timeout` more without a heartbeat, its pods are marked
//! Failed with reason `NodeLost`, and the ReplicaSet controller replaces them elsewhere.
//!
//! Driven by informers on nodes, heartbeats and pods; the only timer is the eviction
//! deadline of a NotReady node. Events, as Kubernetes' node controller records them:
//! `NodeNotReady` / `NodeReady` on the node, a Warning `NodeNotReady` on each of its pods,
//! and `TaintManagerEviction` on each pod it gives up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use crate::api::{zero_time, Node, NodeLease, NodeStatus, Pod, PodPhase};
use crate::events::{node_reference, pod_reference, Recorder};
use crate::registry::{Registry, RegistryError};
use crate::runtime::{Change, Controller, Informer, Next, Shutdown};

#[derive(Clone)]
pub struct NodeLifecycleController {
    registry: Registry,
    nodes: Informer<Node>,
    heartbeats: Informer<NodeLease>,
    pods: Informer<Pod>,
    eviction_timeout: Duration,
    /// When each node was first seen without a heartbeat (by this process).
    missing_since: Arc<Mutex<HashMap<String, Instant>>>,
    /// NodeNotReady / NodeReady and eviction events.
    events: Recorder,
}

impl NodeLifecycleController {
    /// Runs the controller over shared informers until `shutdown`, or until the future is
    /// dropped.
    pub async fn run(self, shutdown: Shutdown) {
        tracing::info!(eviction_timeout = ?self.eviction_timeout, "node lifecycle controller");
        let (nodes, heartbeats, pods) = (
            self.nodes.clone(),
            self.heartbeats.clone(),
            self.pods.clone(),
        );
        Controller::new("node-lifecycle")
            .reconciles(&nodes)
            .watches(&heartbeats, |ch| [ch.key()])
            // Pods bound to a NotReady node past its deadline must be handled too.
            .watches(&pods, |ch| match ch {
                Change::Upsert { new, .. } if !new.spec.node_name.is_empty() => {
                    Some(new.spec.node_name.clone())
                }
                _ => None,
            })
            .run(2, shutdown.wait(), move |name| {
                let ctl = self.clone();
                async move { ctl.reconcile(&name).await }
            })
            .await;
    }

    pub fn new(
        registry: Registry,
        nodes: Informer<Node>,
        heartbeats: Informer<NodeLease>,
        pods: Informer<Pod>,
        eviction_timeout: Duration,
    ) -> Self {
        NodeLifecycleController {
            events: Recorder::start(registry.clone(), "node-controller", None),
            registry,
            nodes,
            heartbeats,
            pods,
            eviction_timeout,
            missing_since: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn set_missing(&self, name: &str, missing: bool) -> Instant {
        let mut m = self.missing_since.lock().unwrap_or_else(|p| p.into_inner());
        if missing {
            *m.entry(name.to_string()).or_insert_with(Instant::now)
        } else {
            m.remove(name);
            Instant::now()
        }
    }

    pub async fn reconcile(&self, name: &str) -> anyhow::Result<Next> {
        let Some(node) = self.nodes.get(name) else {
            self.set_missing(name, false);
            return Ok(Next::Done);
        };
        let alive = self.heartbeats.get(name).is_some();
        if alive {
            self.set_missing(name, false);
            if node.status != NodeStatus::Ready {
                self.set_status(&node, NodeStatus::Ready, "").await?;
                tracing::info!(node = name, "node is Ready again");
                self.events.normal(
                    node_reference(&node),
                    "NodeReady",
                    format!("Node {name} status is now: NodeReady"),
                );
            }
            return Ok(Next::Done);
        }
        let since = self.set_missing(name, true);
        if node.status == NodeStatus::Ready {
            self.set_status(&node, NodeStatus::NotReady, "NodeLeaseExpired")
                .await?;
            tracing::warn!(node = name, "node heartbeat expired; node is NotReady");
            self.events.normal(
                node_reference(&node),
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
            self.pods.for_each(|p| {
                if p.spec.node_name == name && !p.is_terminal() {
                    self.events.warning(
                        pod_reference(p),
                        "NodeNotReady",
                        "Node is not ready".into(),
                    );
                }
            });
        }
        let deadline = since + self.eviction_timeout;
        let now = Instant::now();
        if now < deadline {
            return Ok(Next::After(deadline - now));
        }
        let mut victims = Vec::new();
        self.pods.for_each(|p| {
            if p.spec.node_name == name && !(p.status == PodPhase::Failed && p.reason == "NodeLost")
            {
                victims.push(p.key());
            }
        });
        for pod in victims {
            let result = self
                .registry
                .modify::<Pod, _>(&pod, |p| {
                    if p.spec.node_name != name
                        || (p.status == PodPhase::Failed && p.reason == "NodeLost")
                    {
                        return false;
                    }
                    p.status = PodPhase::Failed;
                    p.reason = "NodeLost".into();
                    p.message = format!("node {name} stopped sending heartbeats");
                    p.next_retry_at = zero_time();
                    p.finished_at = Some(Utc::now());
                    true
                })
                .await;
            match result {
                Ok(lost) => {
                    tracing::warn!(node = name, pod = %pod, "pod lost with its node");
                    self.events.warning(
                        pod_reference(&lost),
                        "TaintManagerEviction",
                        format!("Marking for deletion Pod {pod}"),
                    );
                }
                Err(RegistryError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Next::Done)
    }

    async fn set_status(
        &self,
        node: &Node,
        status: NodeStatus,
        reason: &str,
    ) -> anyhow::Result<()> {
        let mut n = node.clone();
        n.status = status;
        n.reason = reason.to_string();
        match self.registry.update(&n).await {
            Ok(_) | Err(RegistryError::NotFound { .. }) => Ok(()),
            // Changed meanwhile (the kubelet re-registered): its event queues us again.
            Err(RegistryError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
