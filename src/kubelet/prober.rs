//! Runs the probes of one node's pods on timers it owns, and keeps what they established.
//!
//! For each pod whose main container runs, [`Prober::watch`] starts one task per probe
//! ([`ProbeSpec`]) of that container instance; the tasks live in a `JoinSet` owned by the
//! pod's entry, so a new container (a restart), [`Prober::forget`] or dropping the prober
//! (the kubelet stopping) ends them. A task sleeps until the container has run for
//! `initialDelaySeconds`, then probes every `periodSeconds`, each attempt bounded by
//! `timeoutSeconds`; liveness and readiness probes wait until the startup probe (if any)
//! has succeeded, as in Kubernetes. When an established result ([`Threshold`]) changes it
//! records it in the pod's [`ProbeReport`] and queues the pod, whose sync reads the report
//! ([`Prober::report`]) and writes the status or restarts the container. A startup or
//! liveness probe that failed ends its task: the container is restarted and gets new ones.
//!
//! Exec probes go through the engine's exec API; HTTP and TCP probes connect straight to
//! the pod's address (one connection per attempt, no keep-alive, as Kubernetes' prober).
//! On a runtime without a network (the fake one) HTTP and TCP probes succeed.
//!
//! This module writes nothing to the store and decides nothing about the pod.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ObjectReference;
use tokio::task::JoinSet;

use super::probe::{probes_of, ProbeAction, ProbeKind, ProbeReport, ProbeSpec, Threshold};
use super::runtime::{later_container_name, Container, ContainerRuntime};
use crate::api::Pod;
use crate::events::{pod_reference, Recorder};
use crate::runtime::WorkQueue;

/// Kubernetes' probe user agent.
const USER_AGENT: &str = "kube-probe/1.33";

/// What the probes of one container instance established, shared by its tasks.
#[derive(Debug, Default)]
struct Established {
    report: ProbeReport,
    /// Containers past their startup probe (or without one).
    started: BTreeSet<String>,
}

type Shared = Arc<Mutex<Established>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Established> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// One pod's probing: of which container instance, its results, and its tasks.
struct Probing {
    container_id: String,
    established: Shared,
    _tasks: JoinSet<()>,
}

struct Inner<R> {
    runtime: R,
    queue: WorkQueue,
    /// None if no HTTP client could be built (then HTTP probes fail, saying so).
    http: Option<reqwest::Client>,
    events: Recorder,
    pods: Mutex<HashMap<String, Probing>>,
}

/// The probes of one node's pods. Cloning shares them; the last clone dropped stops every
/// probe task.
#[derive(Clone)]
pub struct Prober<R> {
    inner: Arc<Inner<R>>,
}

fn http_client() -> Option<reqwest::Client> {
    miniku_store::tls::install_crypto_provider();
    let built = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        // Kubernetes' prober does not verify certificates of HTTPS probes.
        .tls_danger_accept_invalid_certs(true)
        .user_agent(USER_AGENT)
        .build();
    match built {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP probe client; HTTP probes will fail");
            None
        }
    }
}

impl<R: ContainerRuntime> Prober<R> {
    /// Probe results change → the pod's name is added to `queue`.
    pub fn new(runtime: R, queue: WorkQueue, events: Recorder) -> Self {
        // Hollow nodes have no network to probe: no client for them.
        let http = if runtime.has_network() {
            http_client()
        } else {
            None
        };
        Prober {
            inner: Arc::new(Inner {
                runtime,
                queue,
                http,
                events,
                pods: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, HashMap<String, Probing>> {
        self.inner.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Probes `pod`'s running main container `main` (from now on, unless it already is);
    /// probes of an earlier container of the pod stop. A pod without probes has none.
    pub fn watch(&self, pod: &Pod, main: &Container) {
        let key = pod.key();
        if self
            .pods()
            .get(&key)
            .is_some_and(|p| p.container_id == main.id)
        {
            return;
        }
        let specs = pod.stored.as_deref().map(probes_of).unwrap_or_default();
        if specs.is_empty() {
            self.pods().remove(&key);
            return;
        }
        let started_at = match &main.state {
            super::runtime::ContainerState::Running { started_at } => *started_at,
            super::runtime::ContainerState::Exited { .. } => None,
        }
        .unwrap_or_else(Utc::now);
        let containers: Vec<String> = pod
            .stored
            .iter()
            .flat_map(|k| k.spec.iter())
            .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
            .collect();
        let with = |kind: ProbeKind| -> BTreeSet<String> {
            specs
                .iter()
                .filter(|s| s.kind == kind)
                .map(|s| s.container.clone())
                .collect()
        };
        let (with_startup, with_readiness) = (with(ProbeKind::Startup), with(ProbeKind::Readiness));
        let established = Arc::new(Mutex::new(Established {
            report: ProbeReport {
                container_id: main.id.clone(),
                ..Default::default()
            },
            started: containers
                .iter()
                .filter(|c| !with_startup.contains(*c))
                .cloned()
                .collect(),
        }));
        let mut tasks = JoinSet::new();
        for spec in specs {
            let target = if spec.container_index == 0 {
                main.id.clone()
            } else {
                later_container_name(pod, &spec.container)
            };
            let worker = Worker {
                runtime: self.inner.runtime.clone(),
                http: self.inner.http.clone(),
                queue: self.inner.queue.clone(),
                events: self.inner.events.clone(),
                pod: pod_reference(pod),
                pod_key: key.clone(),
                engine_container: target,
                pod_ip: main.ip.clone(),
                readiness_probed: with_readiness.contains(&spec.container),
                established: established.clone(),
                started_at,
                spec,
            };
            tasks.spawn(worker.run());
        }
        tracing::debug!(pod = %key, container = %main.id, probes = tasks.len(), "probing");
        self.pods().insert(
            key,
            Probing {
                container_id: main.id.clone(),
                established,
                _tasks: tasks,
            },
        );
    }

    /// Stops probing the pod (its container stopped, or it is gone).
    pub fn forget(&self, pod_key: &str) {
        self.pods().remove(pod_key);
    }

    /// What the pod's probes established so far (empty if it is not probed).
    pub fn report(&self, pod_key: &str) -> ProbeReport {
        self.pods()
            .get(pod_key)
            .map(|p| lock(&p.established).report.clone())
            .unwrap_or_default()
    }

    /// How many pods are being probed.
    pub fn probed_pods(&self) -> usize {
        self.pods().len()
    }
}

/// One probe of one container instance.
struct Worker<R> {
    runtime: R,
    http: Option<reqwest::Client>,
    queue: WorkQueue,
    /// Unhealthy events, about `pod`.
    events: Recorder,
    pod: ObjectReference,
    pod_key: String,
    /// The engine's id or name of the container the probe is about.
    engine_container: String,
    pod_ip: String,
    /// Whether the container has a readiness probe (if not, it is ready once started).
    readiness_probed: bool,
    established: Shared,
    started_at: DateTime<Utc>,
    spec: ProbeSpec,
}

impl<R: ContainerRuntime> Worker<R> {
    async fn run(self) {
        let first = self.started_at
            + chrono::Duration::from_std(self.spec.initial_delay).unwrap_or_default();
        if let Ok(wait) = (first - Utc::now()).to_std() {
            tokio::time::sleep(wait).await;
        }
        let mut threshold =
            Threshold::new(self.spec.success_threshold, self.spec.failure_threshold);
        let mut tick = tokio::time::interval(self.spec.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let gated = self.spec.kind != ProbeKind::Startup
                && !lock(&self.established)
                    .started
                    .contains(&self.spec.container);
            if gated {
                continue;
            }
            let (success, detail) = self.attempt().await;
            if !success {
                tracing::debug!(pod = %self.pod_key, container = %self.spec.container, probe = self.spec.kind.title(), %detail, "probe failed");
                // Every failed attempt, as Kubernetes' prober records it (repeats aggregate).
                self.events.warning(
                    self.pod.clone(),
                    "Unhealthy",
                    format!("{} probe failed: {detail}", self.spec.kind.title()),
                );
            }
            let Some(result) = threshold.record(success) else {
                continue;
            };
            let finished = {
                let mut e = lock(&self.established);
                match (self.spec.kind, result) {
                    (ProbeKind::Readiness, ready) => {
                        e.report.ready.insert(self.spec.container.clone(), ready);
                        false
                    }
                    (ProbeKind::Startup, true) => {
                        e.started.insert(self.spec.container.clone());
                        if !self.readiness_probed {
                            e.report.ready.insert(self.spec.container.clone(), true);
                        }
                        true
                    }
                    // Healthy, as it was assumed to be: nothing to tell.
                    (ProbeKind::Liveness, true) => continue,
                    (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                        let message = format!("{} probe failed: {detail}", self.spec.kind.title());
                        tracing::info!(pod = %self.pod_key, container = %self.spec.container, %message, "the container will be restarted");
                        e.report.failed.get_or_insert(message);
                        true
                    }
                }
            };
            self.queue.add(&self.pod_key);
            if finished {
                return;
            }
        }
    }

    /// One attempt, bounded by the probe's timeout: success, or what went wrong.
    async fn attempt(&self) -> (bool, String) {
        let timeout = self.spec.timeout;
        let network = self.runtime.has_network();
        match &self.spec.action {
            ProbeAction::Exec { command } => {
                let run = self.runtime.exec(&self.engine_container, command);
                match tokio::time::timeout(timeout, run).await {
                    Err(_) => (
                        false,
                        format!(
                            "command {:?} timed out after {}s",
                            command.join(" "),
                            timeout.as_secs()
                        ),
                    ),
                    Ok(Err(e)) => (false, e.to_string()),
                    Ok(Ok(out)) if out.exit_code == 0 => (true, String::new()),
                    Ok(Ok(out)) if out.output.is_empty() => (
                        false,
                        format!(
                            "command {:?} exited with {}",
                            command.join(" "),
                            out.exit_code
                        ),
                    ),
                    Ok(Ok(out)) => (false, out.output),
                }
            }
            ProbeAction::Invalid { reason } => (false, reason.clone()),
            _ if !network => (true, String::new()),
            ProbeAction::HttpGet {
                https,
                host,
                port,
                path,
                headers,
            } => {
                let host = self.host(host.as_deref());
                let url = format!(
                    "{}://{}:{port}{path}",
                    if *https { "https" } else { "http" },
                    bracketed(&host)
                );
                let Some(http) = &self.http else {
                    return (false, format!("Get {url:?}: no HTTP client"));
                };
                let mut request = http.get(&url).timeout(timeout);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                match request.send().await {
                    Ok(r) if (200..400).contains(&r.status().as_u16()) => (true, String::new()),
                    Ok(r) => (
                        false,
                        format!("HTTP probe failed with statuscode: {}", r.status().as_u16()),
                    ),
                    Err(e) if e.is_timeout() => (
                        false,
                        format!("Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"),
                    ),
                    Err(e) => (false, format!("Get {url:?}: {}", error_chain(&e))),
                }
            }
            ProbeAction::TcpSocket { host, port } => {
                let host = self.host(host.as_deref());
                let address = format!("{}:{port}", bracketed(&host));
                let connect = tokio::net::TcpStream::connect(address.clone());
                match tokio::time::timeout(timeout, connect).await {
                    Ok(Ok(_)) => (true, String::new()),
                    Ok(Err(e)) => (false, format!("dial tcp {address}: {e}")),
                    Err(_) => (false, format!("dial tcp {address}: i/o timeout")),
                }
            }
        }
    }

    fn host(&self, host: Option<&str>) -> String {
        host.map(str::to_string)
            .unwrap_or_else(|| self.pod_ip.clone())
    }
}

/// An IPv6 address in brackets, for a URL or `host:port`.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// An error with its causes (reqwest's own message hides the connection error).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::fake::FakeRuntime;
    use crate::kubelet::runtime::ContainerState;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use std::time::Duration;

    /// A pod `web` whose container `main` has these probes (period 1 s).
    fn pod_with(readiness: Option<core::Probe>, liveness: Option<core::Probe>) -> Pod {
        let mut p = Pod::default();
        p.spec.name = "web".into();
        p.uid = "u1".into();
        p.stored = Some(Arc::new(crate::api::kube::KubePod {
            spec: Some(core::PodSpec {
                containers: vec![core::Container {
                    name: "main".into(),
                    readiness_probe: readiness,
                    liveness_probe: liveness,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }));
        p
    }

    fn main_container(id: &str) -> Container {
        Container {
            id: id.into(),
            pod_key: "default/web".into(),
            pod_uid: "u1".into(),
            state: ContainerState::Running {
                started_at: Some(Utc::now()),
            },
            ip: String::new(),
        }
    }

    fn every_second(p: core::Probe) -> Option<core::Probe> {
        Some(core::Probe {
            period_seconds: Some(1),
            ..p
        })
    }

    async fn until_reported(prober: &Prober<FakeRuntime>, done: impl Fn(&ProbeReport) -> bool) {
        for _ in 0..100 {
            if done(&prober.report("default/web")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no such report: {:?}", prober.report("default/web"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_succeeding_readiness_probe_makes_the_container_ready_and_queues_the_pod() {
        let queue = WorkQueue::default();
        let prober = Prober::new(FakeRuntime::new(), queue.clone(), Recorder::disabled());
        let exec = core::Probe {
            exec: Some(core::ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Default::default()
        };
        prober.watch(&pod_with(every_second(exec), None), &main_container("c1"));
        until_reported(&prober, |r| r.ready.get("main") == Some(&true)).await;
        assert_eq!(prober.report("default/web").container_id, "c1");
        assert_eq!(queue.len(), 1);
        prober.forget("default/web");
        assert_eq!(prober.probed_pods(), 0);
        assert_eq!(prober.report("default/web"), ProbeReport::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_startup_probe_gates_the_others_and_its_success_makes_the_container_ready() {
        let prober = Prober::new(
            FakeRuntime::new(),
            WorkQueue::default(),
            Recorder::disabled(),
        );
        let broken = core::Probe {
            tcp_socket: Some(core::TCPSocketAction {
                port: IntOrString::String("missing".into()),
                host: None,
            }),
            failure_threshold: Some(1),
            ..Default::default()
        };
        let exec = core::Probe {
            exec: Some(core::ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Default::default()
        };
        // Startup fails for ever: the (failing) liveness probe never runs, so the restart
        // it asks for is the startup probe's.
        let mut gated = pod_with(None, every_second(broken.clone()));
        if let Some(k) = gated.stored.as_mut().map(Arc::make_mut) {
            if let Some(c) = k.spec.as_mut().and_then(|s| s.containers.first_mut()) {
                c.startup_probe = every_second(core::Probe {
                    failure_threshold: Some(2),
                    ..broken
                });
            }
        }
        prober.watch(&gated, &main_container("c1"));
        until_reported(&prober, |r| r.failed.is_some()).await;
        let failed = prober.report("default/web").failed.unwrap_or_default();
        assert!(failed.starts_with("Startup probe failed: "), "{failed}");

        // A startup probe that succeeds, without a readiness probe: ready then.
        let mut starting = pod_with(None, None);
        if let Some(k) = starting.stored.as_mut().map(Arc::make_mut) {
            if let Some(c) = k.spec.as_mut().and_then(|s| s.containers.first_mut()) {
                c.startup_probe = every_second(exec);
            }
        }
        prober.watch(&starting, &main_container("c2"));
        until_reported(&prober, |r| r.ready.get("main") == Some(&true)).await;
        assert_eq!(prober.report("default/web").failed, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_liveness_probe_failing_its_threshold_asks_for_a_restart() {
        let prober = Prober::new(
            FakeRuntime::new(),
            WorkQueue::default(),
            Recorder::disabled(),
        );
        let broken = core::Probe {
            tcp_socket: Some(core::TCPSocketAction {
                port: IntOrString::String("missing".into()),
                host: None,
            }),
            ..Default::default()
        };
        let pod = pod_with(None, every_second(broken));
        prober.watch(&pod, &main_container("c1"));
        // Not after one or two failures: after the third (failureThreshold 3).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(prober.report("default/web").failed, None);
        until_reported(&prober, |r| r.failed.is_some()).await;
        let failed = prober.report("default/web").failed.unwrap_or_default();
        assert!(
            failed.starts_with("Liveness probe failed: port \"missing\""),
            "{failed}"
        );
        // A new container gets fresh probes.
        prober.watch(&pod, &main_container("c2"));
        let fresh = prober.report("default/web");
        assert_eq!((fresh.container_id.as_str(), fresh.failed), ("c2", None));
    }
}
