//! What the kubelet does for one pod: a pure function from (pod, container) to a
//! [`Decision`], following the seed's "Kubelet Action" table and deciding the rows it leaves
//! open. The caller carries the decision out (runtime calls, one conditional status write).
//!
//! | Pod status            | Container        | Action                                             |
//! |-----------------------|------------------|----------------------------------------------------|
//! | Pending               | doesn't exist    | create it, mark Running (seed); if `next_retry_at` is ahead, wait for it |
//! | Pending               | running          | mark Running: adopt it (seed)                      |
//! | Running               | running          | nothing (seed); after `reset_after` healthy, `retry_count` goes back to 0 |
//! | Running or Pending    | exited           | mark Failed (seed) with exit code and reason, `retry_count + 1`, `next_retry_at = now + backoff` |
//! | Running               | doesn't exist    | (seed: "weird") mark Failed, reason `ContainerMissing`, and recreate after the backoff, as Kubernetes recreates a missing container |
//! | Failed, retry pending | exited / missing | when `next_retry_at` passes: remove the old container and start a new one, mark Running |
//! | Failed, retry pending | running          | mark Running (a restart whose status write was lost) |
//! | Failed, no retry (`NodeLost`) or Succeeded | any | remove the container; the ReplicaSet replaces the pod |
//! | deleted               | any              | stop (grace period) and remove the container       |
//! | any                   | of another pod uid | remove it, then handle the pod as if its container did not exist |
//!
//! Probes (what `prober` established for the running container, a [`ProbeReport`]): a
//! failed liveness or startup probe restarts the container as if it had exited (stop and
//! remove it, mark Failed with `Liveness probe failed: ...`, `retry_count + 1`, the same
//! backoff); readiness results change the pod's unready containers (`not_ready`), which the
//! pod's `Ready` condition follows. A container that starts has its probed containers not
//! ready.
//!
//! Backoff: `initial` doubling per consecutive failure up to `max` (Kubernetes: 10 s to
//! 300 s), reset after `reset_after` (10 min) of healthy running. From the second consecutive
//! failure on, the reason is `CrashLoopBackOff`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use std::collections::BTreeSet;

use super::probe::{unready_at_start, ProbeReport};
use super::runtime::{Container, ContainerState};
use crate::api::{zero_time, Pod, PodPhase};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl BackoffConfig {
    /// The wait before attempt `retry` (1 = the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(30));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// What to do with the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Create and start the pod's container (removing `replace` first, if any).
    Start {
        replace: Option<String>,
    },
    /// Stop and remove this container.
    Remove(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub step: Step,
    /// The pod with its new status, to write with its revision as precondition.
    pub write: Option<Pod>,
    /// Look at the pod again after this long (a retry deadline, not polling).
    pub requeue: Option<Duration>,
}

impl Decision {
    fn nothing() -> Self {
        Decision {
            step: Step::Nothing,
            write: None,
            requeue: None,
        }
    }
    fn step(step: Step) -> Self {
        Decision {
            step,
            write: None,
            requeue: None,
        }
    }
    fn write(pod: Pod) -> Self {
        Decision {
            step: Step::Nothing,
            write: Some(pod),
            requeue: None,
        }
    }
    /// Write the failed pod and look again when its retry is due.
    fn failure((pod, delay): (Pod, Duration)) -> Self {
        Decision {
            step: Step::Nothing,
            write: Some(pod),
            requeue: Some(delay),
        }
    }
    fn wait(d: Duration) -> Self {
        Decision {
            step: Step::Nothing,
            write: None,
            requeue: Some(d),
        }
    }
}

fn until(now: DateTime<Utc>, t: DateTime<Utc>) -> Option<Duration> {
    (t > now).then(|| (t - now).to_std().unwrap_or_default())
}

/// Marks `pod` Failed after its container stopped, scheduling the next attempt.
pub fn failed(
    pod: &Pod,
    reason: &str,
    message: String,
    exit: Option<(i64, Option<DateTime<Utc>>)>,
    now: DateTime<Utc>,
    cfg: &BackoffConfig,
) -> (Pod, Duration) {
    let mut p = pod.clone();
    p.retry_count = pod.retry_count.saturating_add(1);
    let delay = cfg.delay(p.retry_count);
    p.status = PodPhase::Failed;
    p.reason = if p.retry_count >= 2 && reason == "Error" {
        "CrashLoopBackOff".to_string()
    } else {
        reason.to_string()
    };
    p.message = format!(
        "{message}; next attempt in {}s (failure {})",
        delay.as_secs_f64().ceil() as u64,
        p.retry_count
    );
    p.next_retry_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
    // The container is gone, and its address and readiness with it.
    p.pod_ip.clear();
    p.not_ready.clear();
    if let Some((code, finished)) = exit {
        p.exit_code = Some(code);
        p.finished_at = finished.or(Some(now));
    }
    (p, delay)
}

/// Marks `pod` Running on container `id`: its containers with a readiness or startup probe
/// are not ready until the probe succeeds.
pub fn running(pod: &Pod, id: &str, started_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Pod {
    let mut p = pod.clone();
    p.status = PodPhase::Running;
    p.not_ready = pod
        .stored
        .as_deref()
        .map(unready_at_start)
        .unwrap_or_default();
    p.container_id = id.to_string();
    p.started_at = started_at.or(Some(now));
    p.next_retry_at = zero_time();
    p.reason.clear();
    p.message = if pod.retry_count > 0 {
        format!("restarted after {} failure(s)", pod.retry_count)
    } else {
        String::new()
    };
    p
}

/// The pod's unready containers once the readiness `report` established is applied
/// (containers it knows nothing about keep their readiness).
fn with_readiness(not_ready: &BTreeSet<String>, report: &ProbeReport) -> BTreeSet<String> {
    let mut out = not_ready.clone();
    for (container, ready) in &report.ready {
        if *ready {
            out.remove(container);
        } else {
            out.insert(container.clone());
        }
    }
    out
}

/// Decides what to do with `pod` (None: deleted) and its `container` (None: none exists),
/// given what the container's probes established (`probes`; ignored unless it is about this
/// container).
pub fn decide(
    pod: Option<&Pod>,
    container: Option<&Container>,
    now: DateTime<Utc>,
    cfg: &BackoffConfig,
    probes: &ProbeReport,
) -> Decision {
    let Some(pod) = pod else {
        return match container {
            Some(c) => Decision::step(Step::Remove(c.id.clone())),
            None => Decision::nothing(),
        };
    };
    if let Some(c) = container {
        if c.pod_uid != pod.uid {
            return Decision {
                step: Step::Remove(c.id.clone()),
                write: None,
                requeue: Some(Duration::ZERO),
            };
        }
    }
    if pod.is_terminal() {
        return match container {
            Some(c) => Decision::step(Step::Remove(c.id.clone())),
            None => Decision::nothing(),
        };
    }
    let state = container.map(|c| (&c.id, &c.state));
    match (pod.status, state) {
        (PodPhase::Pending, None) => match until(now, pod.next_retry_at) {
            Some(d) => Decision::wait(d),
            None => Decision::step(Step::Start { replace: None }),
        },
        (PodPhase::Pending, Some((id, ContainerState::Running { started_at })))
        | (PodPhase::Failed, Some((id, ContainerState::Running { started_at }))) => {
            let mut p = running(pod, id, *started_at, now);
            p.pod_ip = container.map(|c| c.ip.clone()).unwrap_or_default();
            if let Some(report) = probes.about(id) {
                p.not_ready = with_readiness(&p.not_ready, report);
            }
            Decision::write(p)
        }
        (
            PodPhase::Pending | PodPhase::Running,
            Some((
                _,
                ContainerState::Exited {
                    exit_code,
                    finished_at,
                    oom_killed,
                },
            )),
        ) => {
            let reason = if *oom_killed { "OOMKilled" } else { "Error" };
            Decision::failure(failed(
                pod,
                reason,
                format!("container exited with code {exit_code}"),
                Some((*exit_code, *finished_at)),
                now,
                cfg,
            ))
        }
        (PodPhase::Running, Some((id, ContainerState::Running { started_at }))) => {
            let ip = container.map(|c| c.ip.as_str()).unwrap_or_default();
            if pod.container_id != *id || pod.pod_ip != ip {
                let mut p = pod.clone();
                p.container_id = id.clone();
                p.pod_ip = ip.to_string();
                return Decision::write(p);
            }
            if let Some(report) = probes.about(id) {
                if let Some(message) = &report.failed {
                    // A liveness or startup probe failed: restart the container, through
                    // the same backoff as a container that exited.
                    let (p, delay) = failed(pod, "Error", message.clone(), None, now, cfg);
                    return Decision {
                        step: Step::Remove(id.clone()),
                        write: Some(p),
                        requeue: Some(delay),
                    };
                }
                let not_ready = with_readiness(&pod.not_ready, report);
                if not_ready != pod.not_ready {
                    let mut p = pod.clone();
                    p.not_ready = not_ready;
                    return Decision::write(p);
                }
            }
            if pod.retry_count > 0 {
                let since = started_at.or(pod.started_at).unwrap_or(now);
                let healthy_until =
                    since + chrono::Duration::from_std(cfg.reset_after).unwrap_or_default();
                return match until(now, healthy_until) {
                    Some(d) => Decision::wait(d),
                    None => {
                        let mut p = pod.clone();
                        p.retry_count = 0;
                        p.message.clear();
                        Decision::write(p)
                    }
                };
            }
            Decision::nothing()
        }
        (PodPhase::Running, None) => Decision::failure(failed(
            pod,
            "ContainerMissing",
            "the container disappeared".to_string(),
            None,
            now,
            cfg,
        )),
        (PodPhase::Failed, other) => match until(now, pod.next_retry_at) {
            Some(d) => Decision::wait(d),
            None => Decision::step(Step::Start {
                replace: other.map(|(id, _)| id.clone()),
            }),
        },
        (PodPhase::Succeeded, _) => Decision::nothing(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PodSpec, ReplicaSet};

    fn pod(status: PodPhase) -> Pod {
        let mut p = crate::controllers::replicaset::new_pod(&ReplicaSet {
            name: "web".into(),
            desired_count: 1,
            current_count: 0,
            ready_count: 0,
            selector: Default::default(),
            template: PodSpec {
                image: "img".into(),
                ..Default::default()
            },
            resource_version: 7,
            uid: "rs".into(),
            ..Default::default()
        });
        p.status = status;
        p.spec.node_name = "node-a".into();
        p
    }

    fn container(p: &Pod, state: ContainerState) -> Container {
        Container {
            id: "c1".into(),
            pod_key: p.key(),
            pod_uid: p.uid.clone(),
            state,
            ip: p.pod_ip.clone(),
        }
    }

    fn running_state() -> ContainerState {
        ContainerState::Running { started_at: None }
    }

    fn exited(code: i64) -> ContainerState {
        ContainerState::Exited {
            exit_code: code,
            finished_at: None,
            oom_killed: false,
        }
    }

    const NO_PROBES: ProbeReport = ProbeReport {
        container_id: String::new(),
        ready: std::collections::BTreeMap::new(),
        failed: None,
    };

    const CFG: BackoffConfig = BackoffConfig {
        initial: Duration::from_secs(10),
        max: Duration::from_secs(300),
        reset_after: Duration::from_secs(600),
    };

    #[test]
    fn pending_without_container_starts_one() {
        let p = pod(PodPhase::Pending);
        assert_eq!(
            decide(Some(&p), None, Utc::now(), &CFG, &NO_PROBES).step,
            Step::Start { replace: None }
        );
    }

    #[test]
    fn pending_with_a_running_container_is_adopted() {
        let p = pod(PodPhase::Pending);
        let d = decide(
            Some(&p),
            Some(&container(&p, running_state())),
            Utc::now(),
            &CFG,
            &NO_PROBES,
        );
        let w = d.write.expect("a status write");
        assert_eq!(
            (w.status, w.container_id.as_str()),
            (PodPhase::Running, "c1")
        );
        assert_eq!(d.step, Step::Nothing);
    }

    #[test]
    fn running_and_running_is_converged() {
        let mut p = pod(PodPhase::Running);
        p.container_id = "c1".into();
        let d = decide(
            Some(&p),
            Some(&container(&p, running_state())),
            Utc::now(),
            &CFG,
            &NO_PROBES,
        );
        assert_eq!(d, Decision::nothing());
    }

    #[test]
    fn a_running_containers_address_is_written_to_the_pod() {
        let mut p = pod(PodPhase::Running);
        p.container_id = "c1".into();
        let mut c = container(&p, running_state());
        c.ip = "172.17.0.7".into();
        let d = decide(Some(&p), Some(&c), Utc::now(), &CFG, &NO_PROBES);
        assert_eq!(d.write.map(|w| w.pod_ip), Some("172.17.0.7".to_string()));
        // A failure clears it: the address went with the container.
        p.pod_ip = "172.17.0.7".into();
        let (failed, _) = failed(
            &p,
            "Error",
            "exited".into(),
            Some((1, None)),
            Utc::now(),
            &CFG,
        );
        assert!(failed.pod_ip.is_empty());
    }

    #[test]
    fn running_and_exited_fails_with_backoff_then_crash_loops() {
        let now = Utc::now();
        let p = pod(PodPhase::Running);
        let d = decide(
            Some(&p),
            Some(&container(&p, exited(3))),
            now,
            &CFG,
            &NO_PROBES,
        );
        let w = d.write.expect("a status write");
        assert_eq!(w.status, PodPhase::Failed);
        assert_eq!(
            (w.retry_count, w.exit_code, w.reason.as_str()),
            (1, Some(3), "Error")
        );
        assert_eq!(w.next_retry_at, now + chrono::Duration::seconds(10));
        assert_eq!(d.requeue, Some(Duration::from_secs(10)));
        // Restarted, failed again: CrashLoopBackOff, twice the wait.
        let mut again = w.clone();
        again.status = PodPhase::Running;
        let d2 = decide(
            Some(&again),
            Some(&container(&again, exited(3))),
            now,
            &CFG,
            &NO_PROBES,
        );
        let w2 = d2.write.expect("a status write");
        assert_eq!(
            (w2.retry_count, w2.reason.as_str()),
            (2, "CrashLoopBackOff")
        );
        assert_eq!(d2.requeue, Some(Duration::from_secs(20)));
    }

    #[test]
    fn failed_waits_for_its_retry_time_then_replaces_the_container() {
        let now = Utc::now();
        let p = pod(PodPhase::Running);
        let (failed_pod, _) = failed(&p, "Error", "x".into(), Some((1, None)), now, &CFG);
        let c = container(&failed_pod, exited(1));
        let d = decide(Some(&failed_pod), Some(&c), now, &CFG, &NO_PROBES);
        assert_eq!(d.requeue, Some(Duration::from_secs(10)));
        assert_eq!(d.step, Step::Nothing);
        let later = now + chrono::Duration::seconds(11);
        let d = decide(Some(&failed_pod), Some(&c), later, &CFG, &NO_PROBES);
        assert_eq!(
            d.step,
            Step::Start {
                replace: Some("c1".into())
            }
        );
    }

    #[test]
    fn running_without_container_is_failed_and_recreated() {
        let p = pod(PodPhase::Running);
        let d = decide(Some(&p), None, Utc::now(), &CFG, &NO_PROBES);
        let w = d.write.expect("a status write");
        assert_eq!(
            (w.status, w.reason.as_str()),
            (PodPhase::Failed, "ContainerMissing")
        );
        assert!(d.requeue.is_some());
    }

    #[test]
    fn deleted_and_terminal_pods_lose_their_containers() {
        let p = pod(PodPhase::Running);
        let c = container(&p, running_state());
        assert_eq!(
            decide(None, Some(&c), Utc::now(), &CFG, &NO_PROBES).step,
            Step::Remove("c1".into())
        );
        let mut lost = p.clone();
        lost.status = PodPhase::Failed;
        lost.reason = "NodeLost".into();
        assert_eq!(
            decide(Some(&lost), Some(&c), Utc::now(), &CFG, &NO_PROBES).step,
            Step::Remove("c1".into())
        );
        assert_eq!(
            decide(None, None, Utc::now(), &CFG, &NO_PROBES),
            Decision::nothing()
        );
    }

    #[test]
    fn a_container_of_an_older_pod_with_the_same_name_is_removed() {
        let p = pod(PodPhase::Pending);
        let mut c = container(&p, running_state());
        c.pod_uid = "someone-else".into();
        assert_eq!(
            decide(Some(&p), Some(&c), Utc::now(), &CFG, &NO_PROBES).step,
            Step::Remove("c1".into())
        );
    }

    #[test]
    fn retry_count_resets_after_ten_minutes_of_health() {
        let now = Utc::now();
        let mut p = pod(PodPhase::Running);
        p.container_id = "c1".into();
        p.retry_count = 3;
        let started = now - chrono::Duration::seconds(100);
        let c = container(
            &p,
            ContainerState::Running {
                started_at: Some(started),
            },
        );
        assert_eq!(
            decide(Some(&p), Some(&c), now, &CFG, &NO_PROBES).requeue,
            Some(Duration::from_secs(500))
        );
        let d = decide(
            Some(&p),
            Some(&c),
            now + chrono::Duration::seconds(500),
            &CFG,
            &NO_PROBES,
        );
        assert_eq!(d.write.map(|w| w.retry_count), Some(0));
    }

    /// A running pod whose container `web` has a readiness probe.
    fn probed_pod() -> Pod {
        use k8s_openapi::api::core::v1 as core;
        let mut p = pod(PodPhase::Pending);
        let k = crate::api::kube::KubePod {
            spec: Some(core::PodSpec {
                containers: vec![core::Container {
                    name: "web".into(),
                    readiness_probe: Some(core::Probe {
                        exec: Some(core::ExecAction {
                            command: Some(vec!["true".into()]),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        p.stored = Some(std::sync::Arc::new(k));
        p
    }

    fn report(id: &str, ready: &[(&str, bool)], failed: Option<&str>) -> ProbeReport {
        ProbeReport {
            container_id: id.into(),
            ready: ready.iter().map(|(c, r)| (c.to_string(), *r)).collect(),
            failed: failed.map(str::to_string),
        }
    }

    #[test]
    fn a_started_container_with_a_readiness_probe_is_not_ready_yet() {
        let p = probed_pod();
        let w = running(&p, "c1", None, Utc::now());
        assert!(w.not_ready.contains("web") && !w.is_ready());
        // Without probes it is ready at once.
        assert!(running(&pod(PodPhase::Pending), "c1", None, Utc::now()).is_ready());
        // A failure forgets readiness with the container.
        let (f, _) = failed(&w, "Error", "x".into(), None, Utc::now(), &CFG);
        assert!(f.not_ready.is_empty());
    }

    #[test]
    fn readiness_results_of_the_running_container_are_written() {
        let mut p = running(&probed_pod(), "c1", None, Utc::now());
        let c = container(&p, running_state());
        let d = decide(
            Some(&p),
            Some(&c),
            Utc::now(),
            &CFG,
            &report("c1", &[("web", true)], None),
        );
        let w = d.write.expect("a status write");
        assert!(w.is_ready());
        // Nothing new: nothing to write.
        let d = decide(
            Some(&w),
            Some(&c),
            Utc::now(),
            &CFG,
            &report("c1", &[("web", true)], None),
        );
        assert_eq!(d, Decision::nothing());
        // Not ready again.
        let d = decide(
            Some(&w),
            Some(&c),
            Utc::now(),
            &CFG,
            &report("c1", &[("web", false)], None),
        );
        assert!(!d.write.expect("a status write").is_ready());
        // Results of an earlier container never apply.
        p.not_ready.clear();
        let d = decide(
            Some(&p),
            Some(&c),
            Utc::now(),
            &CFG,
            &report("c0", &[("web", false)], None),
        );
        assert_eq!(d, Decision::nothing());
    }

    #[test]
    fn a_failed_liveness_probe_restarts_the_container_with_backoff() {
        let now = Utc::now();
        let p = running(&probed_pod(), "c1", None, now);
        let c = container(&p, running_state());
        let failure = report("c1", &[], Some("Liveness probe failed: no such file"));
        let d = decide(Some(&p), Some(&c), now, &CFG, &failure);
        assert_eq!(d.step, Step::Remove("c1".into()));
        assert_eq!(d.requeue, Some(Duration::from_secs(10)));
        let w = d.write.expect("a status write");
        assert_eq!((w.status, w.retry_count), (PodPhase::Failed, 1));
        assert!(w.message.starts_with("Liveness probe failed: no such file"));
        // The second time, it crash-loops.
        let mut again = running(&w, "c2", None, now);
        again.status = PodPhase::Running;
        let c2 = Container {
            id: "c2".into(),
            ..c.clone()
        };
        let d = decide(
            Some(&again),
            Some(&c2),
            now,
            &CFG,
            &report("c2", &[], Some("Liveness probe failed: x")),
        );
        let w = d.write.expect("a status write");
        assert_eq!((w.retry_count, w.reason.as_str()), (2, "CrashLoopBackOff"));
        assert_eq!(d.requeue, Some(Duration::from_secs(20)));
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let delays: Vec<u64> = (1..=7).map(|n| CFG.delay(n).as_secs()).collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 160, 300, 300]);
    }
}
