//! Container probes as data, and their threshold logic: pure, no I/O.
//!
//! - [`probes_of`] reads the `startupProbe`, `readinessProbe` and `livenessProbe` of a stored
//!   pod's containers into [`ProbeSpec`]s with Kubernetes' defaults (period 10 s, timeout
//!   1 s, success threshold 1, failure threshold 3) and named ports resolved against the
//!   container's `ports`.
//! - [`Threshold`] turns a stream of single outcomes into a result that changes only after
//!   `successThreshold` successes or `failureThreshold` failures in a row, as Kubernetes'
//!   prober worker does.
//! - [`ProbeReport`] is what the kubelet's pod sync reads: what the probes of one container
//!   instance have established so far.
//!
//! Running probes (timers, the engine, the network) is `prober`'s; deciding what a result
//! does to the pod is `sync`'s.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::kube::KubePod;

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    /// Gates the other two until it has succeeded once; failing it restarts the container.
    Startup,
    /// Decides whether the container is ready (counted in endpoints and ReplicaSets).
    Readiness,
    /// Failing it restarts the container.
    Liveness,
}

impl ProbeKind {
    /// As Kubernetes names it in messages (`Liveness probe failed: ...`).
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Liveness => "Liveness",
        }
    }
}

/// What a probe does. A port that could not be resolved is kept as an error, so that each
/// attempt fails with it (Kubernetes' behaviour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// Runs a command in the container; exit code 0 is success.
    Exec { command: Vec<String> },
    /// GETs `path` on the pod's address (or `host`); status 200–399 is success.
    HttpGet {
        https: bool,
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// Connects to the pod's address (or `host`) on `port`.
    TcpSocket { host: Option<String>, port: u16 },
    /// Cannot be run as written (a named port the container does not declare, a gRPC probe).
    Invalid { reason: String },
}

/// One probe of one container, with Kubernetes' defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    /// The container's name in the pod spec.
    pub container: String,
    /// Its position in `spec.containers` (0 is the pod's main container).
    pub container_index: usize,
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// A port of a probe: a number, or the name of one of the container's ports.
fn resolve_port(port: &IntOrString, container: &core::Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(s) => {
            if let Ok(n) = s.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| {
                    format!("port {s:?} is not a port of container {:?}", container.name)
                })
        }
    }
}

fn action_of(p: &core::Probe, container: &core::Container) -> ProbeAction {
    let port =
        |port: &IntOrString, make: &dyn Fn(u16) -> ProbeAction| match resolve_port(port, container)
        {
            Ok(n) => make(n),
            Err(reason) => ProbeAction::Invalid { reason },
        };
    if let Some(e) = &p.exec {
        return match e.command.as_ref().filter(|c| !c.is_empty()) {
            Some(command) => ProbeAction::Exec {
                command: command.clone(),
            },
            None => ProbeAction::Invalid {
                reason: "exec probe without a command".into(),
            },
        };
    }
    if let Some(h) = &p.http_get {
        let path = h
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or("/".into());
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return port(&h.port, &|n| ProbeAction::HttpGet {
            https: h
                .scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("https")),
            host: h.host.clone().filter(|h| !h.is_empty()),
            port: n,
            path: path.clone(),
            headers: headers.clone(),
        });
    }
    if let Some(t) = &p.tcp_socket {
        return port(&t.port, &|n| ProbeAction::TcpSocket {
            host: t.host.clone().filter(|h| !h.is_empty()),
            port: n,
        });
    }
    if p.grpc.is_some() {
        return ProbeAction::Invalid {
            reason: "gRPC probes are not supported".into(),
        };
    }
    ProbeAction::Invalid {
        reason: "the probe has no handler (exec, httpGet or tcpSocket)".into(),
    }
}

fn seconds(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.and_then(|s| u64::try_from(s).ok()).unwrap_or(default))
}

fn spec_of(kind: ProbeKind, index: usize, c: &core::Container, p: &core::Probe) -> ProbeSpec {
    let at_least_one = |v: Option<i32>, default: u32| {
        v.and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v >= 1)
            .unwrap_or(default)
    };
    ProbeSpec {
        kind,
        container: c.name.clone(),
        container_index: index,
        action: action_of(p, c),
        initial_delay: seconds(p.initial_delay_seconds, 0),
        period: seconds(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: seconds(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        // Kubernetes requires 1 for liveness and startup probes.
        success_threshold: match kind {
            ProbeKind::Readiness => at_least_one(p.success_threshold, 1),
            ProbeKind::Startup | ProbeKind::Liveness => 1,
        },
        failure_threshold: at_least_one(p.failure_threshold, 3),
    }
}

/// Every probe of the pod's containers, in container order.
pub fn probes_of(pod: &KubePod) -> Vec<ProbeSpec> {
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    let mut out = Vec::new();
    for (i, c) in containers.enumerate() {
        for (kind, probe) in [
            (ProbeKind::Startup, &c.startup_probe),
            (ProbeKind::Readiness, &c.readiness_probe),
            (ProbeKind::Liveness, &c.liveness_probe),
        ] {
            if let Some(p) = probe {
                out.push(spec_of(kind, i, c, p));
            }
        }
    }
    out
}

/// The containers that are not ready when they start: those with a readiness or a startup
/// probe (the others are ready as soon as they run).
pub fn unready_at_start(pod: &KubePod) -> std::collections::BTreeSet<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter(|c| c.readiness_probe.is_some() || c.startup_probe.is_some())
        .map(|c| c.name.clone())
        .collect()
}

/// A probe's established result: it flips only after `success_threshold` successes or
/// `failure_threshold` failures in a row. Starts unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Threshold {
    success_threshold: u32,
    failure_threshold: u32,
    result: Option<bool>,
    last: Option<bool>,
    run: u32,
}

impl Threshold {
    pub fn new(success_threshold: u32, failure_threshold: u32) -> Self {
        Threshold {
            success_threshold: success_threshold.max(1),
            failure_threshold: failure_threshold.max(1),
            result: None,
            last: None,
            run: 0,
        }
    }

    /// The established result (None until a threshold was first reached).
    pub fn result(&self) -> Option<bool> {
        self.result
    }

    /// Counts one outcome; returns the new result when it changed.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let needed = if success {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < needed || self.result == Some(success) {
            return None;
        }
        self.result = Some(success);
        Some(success)
    }
}

/// What the probes of one container instance (the pod's main container `container_id`)
/// have established. Empty = nothing known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// The main container these results are about; results of an earlier one never apply.
    pub container_id: String,
    /// Readiness by container name, for the containers whose readiness is known.
    pub ready: BTreeMap<String, bool>,
    /// A liveness or startup probe failed past its threshold: the container must be
    /// restarted; the message is Kubernetes' (`Liveness probe failed: ...`).
    pub failed: Option<String>,
}

impl ProbeReport {
    /// The report, if it is about container `id`.
    pub fn about(&self, id: &str) -> Option<&ProbeReport> {
        (!self.container_id.is_empty() && self.container_id == id).then_some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(t: &mut Threshold, seq: &[bool]) -> Vec<Option<bool>> {
        seq.iter().map(|s| t.record(*s)).collect()
    }

    #[test]
    fn a_result_needs_its_threshold_in_a_row() {
        let mut t = Threshold::new(1, 3);
        assert_eq!(t.result(), None);
        // Two failures are not enough; a success in between restarts the count.
        assert_eq!(
            outcomes(&mut t, &[false, false, true]),
            [None, None, Some(true)]
        );
        assert_eq!(
            outcomes(&mut t, &[false, false, true, false, false, false]),
            [None, None, None, None, None, Some(false)]
        );
        assert_eq!(t.result(), Some(false));
        // Staying failed reports nothing new.
        assert_eq!(outcomes(&mut t, &[false, false]), [None, None]);
    }

    #[test]
    fn a_success_threshold_above_one_needs_that_many_successes() {
        let mut t = Threshold::new(2, 1);
        assert_eq!(outcomes(&mut t, &[true, false]), [None, Some(false)]);
        assert_eq!(
            outcomes(&mut t, &[true, true, true]),
            [None, Some(true), None]
        );
    }

    #[test]
    fn thresholds_of_zero_count_as_one() {
        let mut t = Threshold::new(0, 0);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(true), Some(true));
    }

    fn container_with(probe: core::Probe) -> core::Container {
        core::Container {
            name: "web".into(),
            ports: Some(vec![core::ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            readiness_probe: Some(probe.clone()),
            liveness_probe: Some(probe),
            ..Default::default()
        }
    }

    fn pod_with(c: core::Container) -> KubePod {
        KubePod {
            spec: Some(core::PodSpec {
                containers: vec![
                    core::Container {
                        name: "plain".into(),
                        ..Default::default()
                    },
                    c,
                ],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn probes_get_kubernetes_defaults_and_named_ports() {
        let c = container_with(core::Probe {
            http_get: Some(core::HTTPGetAction {
                port: IntOrString::String("http".into()),
                path: Some("healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let specs = probes_of(&pod_with(c));
        assert_eq!(specs.len(), 2);
        let r = &specs[0];
        assert_eq!(
            (r.kind, r.container.as_str(), r.container_index),
            (ProbeKind::Readiness, "web", 1)
        );
        assert_eq!(
            (r.period, r.timeout, r.initial_delay),
            (
                Duration::from_secs(10),
                Duration::from_secs(1),
                Duration::ZERO
            )
        );
        assert_eq!((r.success_threshold, r.failure_threshold), (1, 3));
        assert_eq!(
            r.action,
            ProbeAction::HttpGet {
                https: false,
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![],
            }
        );
        assert_eq!(specs[1].kind, ProbeKind::Liveness);
    }

    #[test]
    fn an_unknown_named_port_makes_every_attempt_fail() {
        let c = container_with(core::Probe {
            tcp_socket: Some(core::TCPSocketAction {
                port: IntOrString::String("grpc".into()),
                host: None,
            }),
            ..Default::default()
        });
        let specs = probes_of(&pod_with(c));
        assert!(matches!(specs[0].action, ProbeAction::Invalid { .. }));
    }

    #[test]
    fn liveness_success_threshold_is_always_one() {
        let c = container_with(core::Probe {
            exec: Some(core::ExecAction {
                command: Some(vec!["true".into()]),
            }),
            success_threshold: Some(3),
            failure_threshold: Some(5),
            period_seconds: Some(2),
            ..Default::default()
        });
        let specs = probes_of(&pod_with(c));
        let (ready, live) = (&specs[0], &specs[1]);
        assert_eq!((ready.success_threshold, ready.failure_threshold), (3, 5));
        assert_eq!((live.success_threshold, live.failure_threshold), (1, 5));
        assert_eq!(live.period, Duration::from_secs(2));
    }

    #[test]
    fn only_probed_containers_start_unready() {
        let c = container_with(core::Probe::default());
        let unready = unready_at_start(&pod_with(c));
        assert_eq!(unready.into_iter().collect::<Vec<_>>(), ["web"]);
    }

    #[test]
    fn a_report_applies_only_to_its_container() {
        let r = ProbeReport {
            container_id: "c1".into(),
            ..Default::default()
        };
        assert!(r.about("c1").is_some());
        assert!(r.about("c2").is_none());
        assert!(ProbeReport::default().about("").is_none());
    }
}
