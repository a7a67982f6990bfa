//! The kubelet: runs the pods bound to one node as containers and reports their status.
//!
//! - Registers its [`Node`] and keeps a heartbeat ([`NodeLease`]) alive through a store
//!   lease (TTL `lease_ttl`, default 15 s, renewed every third of it); re-registers if the
//!   lease was lost.
//! - Watches pods through an informer and the engine's event stream (start, die, destroy,
//!   oom); both queue the pod's name. A slow resync (default 5 min) is only a safety net.
//! - For each pod, [`sync::decide`] says what to do; this module carries it out and writes
//!   the pod's status with its revision as precondition, so it never clobbers the
//!   scheduler's or the controller's writes.
//! - On start it adopts the containers it finds, and removes those whose pod is gone.
//! - If the engine is unreachable it says so and keeps retrying; if the store is unreachable
//!   it leaves running containers alone and catches up when the store returns.
//! - Runs the containers' startup, readiness and liveness probes ([`prober`], on timers it
//!   owns); a changed result queues the pod, whose sync writes its readiness or restarts
//!   its container ([`sync`]).
//!
//! - Serves its pods' logs to the API server on a port of its own ([`server`]), recorded in
//!   its Node's `status.daemonEndpoints` (the address is its `InternalIP`).
//! - A restart keeps the container it replaces (the runtime's `retire`), so that the
//!   previous container's output stays readable; it goes with the next restart or the pod.
//!
//! Runtimes: [`docker`] (the real engine) and [`fake`] (hollow nodes for scale tests).

pub mod docker;
pub mod exec;
pub mod fake;
pub mod host;
pub mod probe;
pub mod prober;
pub mod runtime;
pub mod server;
pub mod sync;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;

use crate::api::{Node, NodeLease, NodeStatus, Pod, Resources};
use crate::events::{pod_reference, pod_reference_by_key, Recorder};
use crate::registry::{Registry, RegistryError};
use crate::runtime::informer::Changes;
use crate::runtime::{spawn_owned, Change, Controller, Informer, Next, Shutdown, WorkQueue};
use prober::Prober;
use runtime::{Container, ContainerRuntime, RuntimeError};
use sync::{decide, failed, running, BackoffConfig, Step};

#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub node_name: String,
    pub capacity: Resources,
    pub max_pods: u32,
    pub labels: BTreeMap<String, String>,
    /// TTL of the heartbeat lease; renewed every third of it.
    pub lease_ttl: Duration,
    pub backoff: BackoffConfig,
    /// Grace period between SIGTERM and SIGKILL when a pod's container is stopped.
    pub stop_grace: Duration,
    /// Safety-net resync of every pod (not how changes are found).
    pub resync: Duration,
    /// Pods synced at once.
    pub workers: usize,
    /// The address the node is reached at (its `InternalIP`, and its pods' `hostIP`).
    pub node_ip: String,
    /// The port the kubelet's server ([`server`]) listens on, recorded in the Node's
    /// `status.daemonEndpoints.kubeletEndpoint` (None: no server).
    pub server_port: Option<u16>,
}

/// The kubelet's server: where it listens, and the credential the API server must send.
pub struct Serving {
    pub listener: tokio::net::TcpListener,
    pub token: Option<miniku_store::auth::Token>,
}

impl KubeletConfig {
    pub fn new(node_name: &str) -> Self {
        KubeletConfig {
            node_name: node_name.to_string(),
            capacity: Resources {
                cpu: 4000,
                memory: 8 << 30,
            },
            max_pods: 110,
            labels: BTreeMap::new(),
            lease_ttl: Duration::from_secs(15),
            backoff: BackoffConfig::default(),
            stop_grace: Duration::from_secs(10),
            resync: Duration::from_secs(300),
            workers: 8,
            node_ip: "127.0.0.1".into(),
            server_port: None,
        }
    }
}

#[derive(Clone)]
struct Kubelet<R> {
    registry: Registry,
    runtime: R,
    pods: Informer<Pod>,
    config: KubeletConfig,
    /// Containers being stopped in the background: each stop makes the engine report
    /// events, whose syncs must not stop the same container again.
    removing: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Those stops, owned by the kubelet: they end when it does.
    stopping: std::sync::Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    /// The running containers' probes, owned by the kubelet: they end when it does.
    prober: Prober<R>,
    /// What happens to the node's pods (Pulled, Created, Started, BackOff, Killing, ...).
    events: Recorder,
    /// The main container's name of each pod seen, so that the Killing event of a deleted
    /// pod can name it.
    container_names: std::sync::Arc<std::sync::Mutex<HashMap<String, String>>>,
}

/// The name of the pod's main (first) container, as events name it.
fn main_container_name(pod: &Pod) -> String {
    pod.stored
        .as_deref()
        .and_then(|k| k.spec.as_ref())
        .and_then(|s| s.containers.first())
        .map_or_else(|| "main".to_string(), |c| c.name.clone())
}

/// Runs a kubelet until `shutdown` (then it finishes the pods it is syncing), or until the
/// future is dropped.
pub async fn run<R: ContainerRuntime>(
    registry: Registry,
    runtime: R,
    config: KubeletConfig,
    serving: Option<Serving>,
    shutdown: Shutdown,
) {
    run_nodes(registry, vec![(runtime, config)], serving, shutdown).await
}

/// Runs several kubelets in one process (hollow nodes for scale benchmarks, like kubemark's),
/// sharing one pod informer: each pod change is routed to the queue of the node(s) it is or
/// was bound to. Each node keeps its own runtime, heartbeat, queue and workers; one server
/// (`serving`) serves them all.
pub async fn run_nodes<R: ContainerRuntime>(
    registry: Registry,
    nodes: Vec<(R, KubeletConfig)>,
    serving: Option<Serving>,
    shutdown: Shutdown,
) {
    for (runtime, config) in &nodes {
        let mut wait = Duration::from_secs(1);
        while let Err(e) = runtime.ping().await {
            tracing::error!(node = %config.node_name, error = %e, retry_in = ?wait, "the container engine is not reachable; pods cannot run until it is");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }
    let pods = Informer::<Pod>::start(registry.clone());
    let changes = pods.subscribe();
    let runtimes: HashMap<String, R> = nodes
        .iter()
        .map(|(r, c)| (c.node_name.clone(), r.clone()))
        .collect();
    let mut queues = HashMap::new();
    let mut kubelets = Vec::new();
    for (runtime, config) in nodes {
        let name = config.node_name.clone();
        let (queue, kubelet) = node_kubelet(
            registry.clone(),
            runtime,
            pods.clone(),
            config,
            shutdown.clone(),
        );
        queues.insert(name, queue);
        kubelets.push(kubelet);
    }
    let _routing = spawn_owned(route_pod_changes(changes, queues));
    let serve = async {
        let Some(Serving { listener, token }) = serving else {
            return;
        };
        let router = server::router(pods.clone(), runtimes, token);
        let config = miniku_store::serve::ServeConfig::new("kubelet");
        miniku_store::serve::serve(listener, router, config, shutdown.wait()).await
    };
    pods.wait_synced().await;
    futures::future::join(futures::future::join_all(kubelets), serve).await;
}

/// Hands each pod change to the queue of the node the pod is, or was, bound to.
async fn route_pod_changes(mut changes: Changes<Pod>, queues: HashMap<String, WorkQueue>) {
    while let Some(ch) = changes.recv().await {
        let (now, before) = match &*ch {
            Change::Upsert { old, new } => (
                Some(&new.spec.node_name),
                old.as_ref().map(|o| &o.spec.node_name),
            ),
            Change::Deleted(p) => (Some(&p.spec.node_name), None),
        };
        for node in [now, before].into_iter().flatten() {
            if let Some(q) = queues.get(node.as_str()) {
                q.add(&ch.key());
            }
        }
    }
}

/// One node's kubelet over a shared pod informer: its queue (for the router) and the
/// controller to run. Its sources: the pods bound to it at start, the containers it finds
/// (adopted, or removed if their pod is gone), the engine's events, a slow resync, and its
/// heartbeat.
fn node_kubelet<R: ContainerRuntime>(
    registry: Registry,
    runtime: R,
    pods: Informer<Pod>,
    config: KubeletConfig,
    shutdown: Shutdown,
) -> (WorkQueue, impl std::future::Future<Output = ()>) {
    let node = config.node_name.clone();
    let kubelet_parts = (
        registry.clone(),
        runtime.clone(),
        pods.clone(),
        config.clone(),
    );
    let (cache, me) = (pods.clone(), node.clone());
    let (rt, every) = (runtime.clone(), config.resync);
    let (events_rt, events_node, events_cache) = (runtime.clone(), node.clone(), pods.clone());
    let heartbeat_rt = runtime.clone();
    let workers = config.workers;
    let controller = Controller::new("kubelet")
        .seed(move |queue| {
            cache.for_each(|p| {
                if p.spec.node_name == me {
                    queue.add(&p.key());
                }
            })
        })
        .feed(move |_| async move {
            tracing::info!(node = %config.node_name, "pods listed; registering the node");
            let runtime_version = heartbeat_rt
                .version()
                .await
                .unwrap_or_else(|e| format!("unknown ({e})"));
            heartbeat(registry, config, runtime_version).await
        })
        .feed(move |queue| engine_events(queue, events_rt, events_node, events_cache))
        .feed(move |queue| async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                enqueue_all(&queue, &pods, &rt, &node).await;
            }
        });
    let queue = controller.queue();
    let (registry, runtime, pods, config) = kubelet_parts;
    let events = Recorder::start(registry.clone(), "kubelet", Some(&config.node_name));
    let k = Kubelet {
        registry,
        prober: Prober::new(runtime.clone(), queue.clone(), events.clone()),
        events,
        container_names: Default::default(),
        runtime,
        pods,
        config,
        removing: Default::default(),
        stopping: Default::default(),
    };
    let run = async move {
        controller
            .run(workers, shutdown.wait(), move |name| {
                let k = k.clone();
                async move { k.sync(&name).await }
            })
            .await
    };
    (queue, run)
}

/// Queues the pods of the containers the engine reports on: first every container that
/// exists (adopting what an earlier run left), then each event. After a break in the event
/// stream it resyncs everything, since events may have been missed.
async fn engine_events<R: ContainerRuntime>(
    queue: WorkQueue,
    runtime: R,
    node: String,
    pods: Informer<Pod>,
) {
    match runtime.list(&node).await {
        Ok(cs) => {
            tracing::info!(node = %node, containers = cs.len(), "adopting existing containers");
            for c in cs {
                queue.add(&c.pod_key);
            }
        }
        Err(e) => tracing::warn!(node = %node, error = %e, "cannot list containers"),
    }
    loop {
        let mut events = runtime.events(&node);
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) if !ev.pod_key.is_empty() => queue.add(&ev.pod_key),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "engine event stream broke; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        enqueue_all(&queue, &pods, &runtime, &node).await;
    }
}

async fn enqueue_all<R: ContainerRuntime>(q: &WorkQueue, pods: &Informer<Pod>, rt: &R, node: &str) {
    pods.for_each(|p| {
        if p.spec.node_name == node {
            q.add(&p.key());
        }
    });
    if let Ok(cs) = rt.list(node).await {
        for c in cs {
            q.add(&c.pod_key);
        }
    }
}

/// Registers the node and keeps its heartbeat alive; runs forever.
async fn heartbeat(registry: Registry, config: KubeletConfig, runtime_version: String) {
    let ttl = config.lease_ttl.as_secs().max(2) as i64;
    let renew = Duration::from_secs(ttl as u64) / 3;
    loop {
        let lease = match register(&registry, &config, ttl, &runtime_version).await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(node = %config.node_name, error = %e, "cannot register the node; retrying");
                tokio::time::sleep(renew.min(Duration::from_secs(2))).await;
                continue;
            }
        };
        tracing::info!(node = %config.node_name, lease, ttl, "node registered; heartbeat running");
        loop {
            tokio::time::sleep(renew).await;
            match registry.renew_lease(lease).await {
                Ok(()) => {}
                Err(RegistryError::NotFound { .. }) => {
                    tracing::warn!(node = %config.node_name, "heartbeat lease expired; registering again");
                    break;
                }
                Err(e) => {
                    tracing::warn!(node = %config.node_name, error = %e, "heartbeat failed; will retry")
                }
            }
        }
    }
}

/// The node object as stored (`stored`, or a new one) with this host's facts: its address,
/// name and `nodeInfo`.
fn host_facts(
    stored: Option<&crate::api::kube::KubeNode>,
    config: &KubeletConfig,
    runtime_version: &str,
) -> crate::api::kube::KubeNode {
    use k8s_openapi::api::core::v1::NodeAddress;
    let mut k = stored.cloned().unwrap_or_default();
    let status = k.status.get_or_insert_with(Default::default);
    status.addresses = Some(vec![
        NodeAddress {
            type_: "InternalIP".into(),
            address: config.node_ip.clone(),
        },
        NodeAddress {
            type_: "Hostname".into(),
            address: config.node_name.clone(),
        },
    ]);
    status.node_info = Some(host::node_info(runtime_version));
    status.daemon_endpoints =
        config
            .server_port
            .map(|port| k8s_openapi::api::core::v1::NodeDaemonEndpoints {
                kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint {
                    port: i32::from(port),
                }),
            });
    k
}

async fn register(
    registry: &Registry,
    config: &KubeletConfig,
    ttl: i64,
    runtime_version: &str,
) -> anyhow::Result<i64> {
    let lease = registry.grant_lease(ttl).await?;
    let hb = NodeLease {
        name: config.node_name.clone(),
        lease_id: lease,
        ttl_seconds: ttl,
        renew_seconds: (ttl / 3).max(1),
        resource_version: 0,
    };
    registry.put_with_lease(&hb, lease).await?;
    let node = Node {
        name: config.node_name.clone(),
        labels: config.labels.clone(),
        capacity: config.capacity.clone(),
        max_pods: config.max_pods,
        status: NodeStatus::Ready,
        unschedulable: false,
        reason: String::new(),
        resource_version: 0,
        stored: Some(std::sync::Arc::new(host_facts(
            None,
            config,
            runtime_version,
        ))),
    };
    match registry.create(&node).await {
        Ok(_) => {}
        Err(RegistryError::AlreadyExists { .. }) => {
            registry
                .modify::<Node, _>(&config.node_name, |n| {
                    let want = Node {
                        resource_version: n.resource_version,
                        unschedulable: n.unschedulable,
                        stored: Some(std::sync::Arc::new(host_facts(
                            n.stored.as_deref(),
                            config,
                            runtime_version,
                        ))),
                        ..node.clone()
                    };
                    if *n == want {
                        return false;
                    }
                    *n = want;
                    true
                })
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(lease)
}

impl<R: ContainerRuntime> Kubelet<R> {
    fn node(&self) -> &str {
        &self.config.node_name
    }

    /// Picks the pod's container; extra ones (which should not exist) are removed.
    async fn container_of(
        &self,
        name: &str,
        pod: Option<&Pod>,
    ) -> Result<Option<Container>, RuntimeError> {
        let mut found = self.runtime.find(self.node(), name).await?;
        if found.len() <= 1 {
            return Ok(found.pop());
        }
        // Keep a running one of the right pod, remove the rest.
        let keep = found
            .iter()
            .position(|c| {
                pod.is_some_and(|p| p.uid == c.pod_uid)
                    && matches!(c.state, runtime::ContainerState::Running { .. })
            })
            .unwrap_or(0);
        let kept = found.swap_remove(keep);
        for c in found {
            tracing::warn!(pod = name, container = %c.id, "removing a duplicate container");
            self.runtime.remove(&c.id, self.config.stop_grace).await?;
        }
        Ok(Some(kept))
    }

    async fn sync(&self, name: &str) -> anyhow::Result<Next> {
        let pod = self
            .pods
            .get(name)
            .filter(|p| p.spec.node_name == self.node());
        let container = self.container_of(name, pod.as_ref()).await?;
        let now = Utc::now();
        let probes = self.prober.report(name);
        let d = decide(
            pod.as_ref(),
            container.as_ref(),
            now,
            &self.config.backoff,
            &probes,
        );
        // Probe the pod's container while it runs (and is not being stopped).
        match (&pod, &container) {
            (Some(p), Some(c))
                if c.pod_uid == p.uid
                    && !p.is_terminal()
                    && matches!(c.state, runtime::ContainerState::Running { .. })
                    && !matches!(d.step, Step::Remove(_)) =>
            {
                self.prober.watch(p, c)
            }
            _ => self.prober.forget(name),
        }
        match d.step {
            Step::Nothing
                if container.is_none() && pod.as_ref().is_none_or(|p| p.is_terminal()) =>
            {
                // Gone or done: its previous containers, if any, go too.
                if let Err(e) = self.runtime.remove_retired(self.node(), name).await {
                    tracing::warn!(pod = name, error = %e, "cannot remove the previous containers");
                }
            }
            Step::Nothing => {}
            Step::Remove(id) => {
                let done_with_pod = pod.as_ref().is_none_or(|p| p.is_terminal());
                let first = self
                    .removing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone());
                if done_with_pod && !first {
                    // Already being stopped in the background.
                    return Ok(Next::Done);
                }
                tracing::info!(pod = name, container = %id, "stopping and removing the container");
                self.record_stop(name, pod.as_ref(), container.as_ref(), &probes);
                if done_with_pod {
                    // The grace period can take seconds: don't hold a worker for it. A later
                    // sync of the same name finds the container (still stopping) and asks
                    // again, which is harmless.
                    let rt = self.runtime.clone();
                    let grace = self.config.stop_grace;
                    let name = name.to_string();
                    let removing = self.removing.clone();
                    let mut stopping = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
                    while stopping.try_join_next().is_some() {}
                    stopping.spawn(async move {
                        if let Err(e) = rt.remove(&id, grace).await {
                            tracing::warn!(pod = %name, container = %id, error = %e, "could not remove the container");
                        }
                        removing
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&id);
                    });
                } else {
                    // The pod's own container is restarted (a failed probe): stopped and
                    // kept, so that the restart keeps it as the previous one. Any other
                    // (another pod's of the same name) goes.
                    let own = match (&pod, &container) {
                        (Some(p), Some(c)) => c.id == id && c.pod_uid == p.uid,
                        _ => false,
                    };
                    let result = if own {
                        self.runtime.stop(&id, self.config.stop_grace).await
                    } else {
                        self.runtime.remove(&id, self.config.stop_grace).await
                    };
                    self.removing
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    result?;
                }
            }
            Step::Start { replace } => {
                let Some(pod) = pod.as_ref() else {
                    return Ok(Next::Done);
                };
                if let Some(old) = replace {
                    // Kept as the previous container, for its output.
                    self.runtime.retire(&old).await?;
                }
                return self.start(pod).await;
            }
        }
        if let Some(p) = d.write {
            if self.write(&p).await? {
                self.record_failure(pod.as_ref(), &p);
            }
        }
        Ok(match d.requeue {
            Some(after) => Next::After(after),
            None => Next::Done,
        })
    }

    async fn start(&self, pod: &Pod) -> anyhow::Result<Next> {
        let name = pod.spec.name.as_str();
        let mut images: Vec<String> = crate::api::kube::pod_into_kube(pod)
            .spec
            .into_iter()
            .flat_map(|s| s.containers)
            .filter_map(|c| c.image)
            .collect();
        images.dedup();
        let mut pulled = Ok(());
        for image in &images {
            pulled = self.pull(pod, image).await;
            if pulled.is_err() {
                break;
            }
        }
        let started = match pulled {
            Ok(()) => self.runtime.start(pod, self.node()).await,
            Err(e) => Err(e),
        };
        let main = main_container_name(pod);
        match started {
            Ok(id) => {
                tracing::info!(pod = name, container = %id, "container started");
                self.container_names
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(pod.key(), main.clone());
                self.events.normal(
                    pod_reference(pod),
                    "Created",
                    format!("Created container: {main}"),
                );
                self.events.normal(
                    pod_reference(pod),
                    "Started",
                    format!("Started container {main}"),
                );
                self.write(&running(pod, &id, None, Utc::now())).await?;
                Ok(Next::Done)
            }
            Err(RuntimeError::EngineUnreachable(e)) => Err(anyhow::anyhow!(
                "the container engine is not reachable: {e}"
            )),
            Err(e) => {
                let reason = match e {
                    RuntimeError::ImagePull { .. } => "ImagePullError",
                    _ => "StartError",
                };
                let (mut p, delay) = failed(
                    pod,
                    reason,
                    e.to_string(),
                    None,
                    Utc::now(),
                    &self.config.backoff,
                );
                if pod.status == crate::api::PodPhase::Pending {
                    // Never ran: it stays Pending, waiting for the retry (Kubernetes'
                    // ImagePullBackOff).
                    p.status = crate::api::PodPhase::Pending;
                }
                tracing::warn!(pod = name, error = %e, retry_in = ?delay, "cannot start the container");
                match &e {
                    RuntimeError::ImagePull { image, .. } => self.events.normal(
                        pod_reference(pod),
                        "BackOff",
                        format!("Back-off pulling image {image:?}"),
                    ),
                    other => {
                        self.events
                            .warning(pod_reference(pod), "Failed", format!("Error: {other}"))
                    }
                }
                self.write(&p).await?;
                Ok(Next::After(delay))
            }
        }
    }

    /// Makes `image` available for `pod`, saying so as Kubernetes' kubelet does: Pulled
    /// (`already present on machine`), or Pulling then Pulled or Failed.
    async fn pull(&self, pod: &Pod, image: &str) -> Result<(), RuntimeError> {
        if self.runtime.has_image(image).await? {
            self.events.normal(
                pod_reference(pod),
                "Pulled",
                format!("Container image {image:?} already present on machine"),
            );
            return Ok(());
        }
        self.events.normal(
            pod_reference(pod),
            "Pulling",
            format!("Pulling image {image:?}"),
        );
        let started = std::time::Instant::now();
        match self.runtime.ensure_image(image).await {
            Ok(()) => {
                self.events.normal(
                    pod_reference(pod),
                    "Pulled",
                    format!(
                        "Successfully pulled image {image:?} in {:.3}s",
                        started.elapsed().as_secs_f64()
                    ),
                );
                Ok(())
            }
            Err(e) => {
                let why = match &e {
                    RuntimeError::ImagePull { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                self.events.warning(
                    pod_reference(pod),
                    "Failed",
                    format!("Failed to pull image {image:?}: {why}"),
                );
                Err(e)
            }
        }
    }

    /// Killing, when a container is stopped: for a liveness failure, or because its pod is
    /// done or gone.
    fn record_stop(
        &self,
        name: &str,
        pod: Option<&Pod>,
        container: Option<&Container>,
        probes: &probe::ProbeReport,
    ) {
        let reference = match (pod, container) {
            (Some(p), _) => pod_reference(p),
            // Deleted: the container still names its pod.
            (None, Some(c)) => pod_reference_by_key(name, &c.pod_uid),
            (None, None) => return,
        };
        let main = {
            let mut names = self
                .container_names
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match pod {
                Some(p) => main_container_name(p),
                // Gone: its name as last seen (or, after a restart of the kubelet, the
                // pod's name, which `kubectl run` gives its container).
                None => names
                    .remove(name)
                    .unwrap_or_else(|| reference.name.clone().unwrap_or_default()),
            }
        };
        let live = pod.is_some_and(|p| !p.is_terminal());
        match (&probes.failed, live) {
            (Some(failure), true) => {
                let kind = failure
                    .split(' ')
                    .next()
                    .unwrap_or("Liveness")
                    .to_lowercase();
                self.events.normal(
                    reference,
                    "Killing",
                    format!("Container {main} failed {kind} probe, will be restarted"),
                );
            }
            _ => self
                .events
                .normal(reference, "Killing", format!("Stopping container {main}")),
        }
    }

    /// BackOff, when a container that ran has failed and waits for its restart.
    fn record_failure(&self, before: Option<&Pod>, after: &Pod) {
        let retry_pending = after.status == crate::api::PodPhase::Failed
            && after.next_retry_at != crate::api::zero_time();
        let newly = before.is_none_or(|b| {
            b.status != crate::api::PodPhase::Failed || b.retry_count != after.retry_count
        });
        if retry_pending && newly {
            self.events.warning(
                pod_reference(after),
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {}_{}({})",
                    main_container_name(after),
                    after.spec.name,
                    crate::api::namespace_or_default(&after.namespace),
                    after.uid
                ),
            );
        }
    }

    /// Writes a pod status with its revision as precondition. A conflict means the pod
    /// changed; its event brings it back to us. Whether it was written.
    async fn write(&self, pod: &Pod) -> anyhow::Result<bool> {
        let mut pod = pod.clone();
        pod.host_ip = self.config.node_ip.clone();
        match self.registry.update(&pod).await {
            Ok(_) => Ok(true),
            Err(RegistryError::Conflict { .. }) | Err(RegistryError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
