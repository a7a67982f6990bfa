//! The control plane across hosts while a worker host is cut off: on the cluster of
//! `scripts/hosts.sh` ([`Hosts`]), a ReplicaSet's pods run as containers on this machine's
//! engine; a worker host is isolated (`docker network disconnect`) for longer than the pod
//! eviction timeout, then healed, cycle after cycle. This module owns that flow and the
//! checks that are not the store's: the engine's containers (sampled with `docker ps`
//! throughout) and what each cycle must reach within a bound.
//!
//! Checked:
//! - never two running containers for one pod (every sample);
//! - never more active pods than desiredCount, no pod bound twice (the store-event checker
//!   of [`crate::control_plane::Invariants`], over a watch of `/registry/`);
//! - no pod of the isolated worker is evicted before the eviction timeout, and once it has
//!   passed (plus the heartbeat lease) they are replaced, running on the other worker;
//! - after healing, the isolated kubelet removes the containers of its replaced pods, and
//!   the cluster converges to exactly desiredCount Running pods with one container each and
//!   no container without its pod.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use miniku::api::{Pod, PodPhase};
use miniku_harness::poll_until;
use miniku_store::api::EventType;
use serde::Serialize;
use serde_json::json;
use tokio::process::Command;
use tokio::time::Instant;

use crate::access::Access;
use crate::control_plane::{watch_registry, Invariants};
use crate::hosts::Hosts;
use crate::nemesis::Faults;

/// The worker hosts (kubelets `worker1`, `worker2`).
pub const WORKERS: [&str; 2] = ["worker1", "worker2"];
/// The ReplicaSet's name (and its pods' `app` label).
const NAME: &str = "hostchaos";
/// How often the engine is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

pub struct Options {
    /// Isolate/heal cycles go on until this much time has passed (at least one cycle).
    pub seconds: u64,
    /// The pods' image (scripts/test-image.sh).
    pub image: String,
    pub replicas: u32,
    /// The controller manager's `--pod-eviction-timeout-secs`.
    pub eviction: Duration,
    /// The kubelets' `--lease-ttl-secs`.
    pub lease_ttl: Duration,
    /// A worker stays isolated eviction + lease + this, at least.
    pub margin: Duration,
}

/// One running container on the engine, as `docker ps` shows its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub id: String,
    pub namespace: String,
    pub pod: String,
    pub node: String,
    /// On a pod's second and later containers: its main container's id.
    pub main: String,
}

/// Parses `docker ps --format '{{.ID}}\t{{.Label "miniku.namespace"}}\t{{.Label
/// "miniku.pod"}}\t{{.Label "miniku.node"}}\t{{.Label "miniku.main"}}'`, keeping the
/// containers of our workers' pods.
pub fn parse_sample(text: &str) -> Vec<Running> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let [id, ns, pod, node, main] = f.as_slice() else {
                return None;
            };
            if pod.is_empty() || !WORKERS.contains(node) {
                return None;
            }
            Some(Running {
                id: id.to_string(),
                namespace: if ns.is_empty() { "default" } else { ns }.to_string(),
                pod: pod.to_string(),
                node: node.to_string(),
                main: main.to_string(),
            })
        })
        .collect()
}

/// Pods with more than one running main container in one sample: "ns/pod" -> their nodes.
pub fn duplicates(sample: &[Running]) -> BTreeMap<String, Vec<String>> {
    let mut by_pod: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in sample.iter().filter(|c| c.main.is_empty()) {
        by_pod
            .entry(format!("{}/{}", c.namespace, c.pod))
            .or_default()
            .push(c.node.clone());
    }
    by_pod.retain(|_, nodes| nodes.len() > 1);
    by_pod
}

/// A pod as the check needs it: name, node, Running or not (active pods only).
#[derive(Clone, Debug)]
pub struct ActivePod {
    pub name: String,
    pub node: String,
    pub running: bool,
}

/// What keeps the cluster from having converged: exactly `desired` active pods, all
/// Running, each with one running main container on its own node, and no running container
/// of our pods' (default namespace, `app` prefix `name`) that is not an active pod's on that
/// node. Empty when converged.
pub fn convergence_gaps(desired: usize, pods: &[ActivePod], sample: &[Running]) -> Vec<String> {
    let mut gaps = Vec::new();
    if pods.len() != desired {
        gaps.push(format!("{} active pods, want {desired}", pods.len()));
    }
    for p in pods {
        if !p.running {
            gaps.push(format!("pod {} is not Running", p.name));
        }
        let n = sample
            .iter()
            .filter(|c| c.main.is_empty() && c.pod == p.name && c.namespace == "default")
            .filter(|c| c.node == p.node)
            .count();
        if n != 1 {
            gaps.push(format!(
                "pod {} has {n} running containers on {}",
                p.name, p.node
            ));
        }
    }
    for c in sample.iter().filter(|c| c.main.is_empty()) {
        if !pods.iter().any(|p| p.name == c.pod && p.node == c.node) {
            gaps.push(format!(
                "container {} of pod {} runs on {} without an active pod there",
                c.id, c.pod, c.node
            ));
        }
    }
    gaps
}

/// One isolate/heal cycle's figures (seconds; None when it did not happen within bounds).
#[derive(Clone, Debug, Serialize)]
pub struct Cycle {
    pub isolated: String,
    /// Active pods on the isolated worker when it was cut off.
    pub pods_isolated: usize,
    pub isolated_secs: f64,
    /// From isolation until the first of its pods was marked lost (NodeLost).
    pub first_lost_secs: Option<f64>,
    /// From isolation until desiredCount pods ran on the other worker, each with its
    /// container.
    pub replaced_secs: Option<f64>,
    /// From heal until the isolated kubelet had removed its replaced pods' containers.
    pub cleanup_secs: Option<f64>,
    /// From heal until the cluster converged.
    pub converged_secs: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub cycles: Vec<Cycle>,
    pub samples: usize,
    /// Most running pod containers on the engine in one sample (the isolated worker's keep
    /// running until it is healed: up to twice desiredCount).
    pub most_containers: usize,
    pub events_checked: usize,
    pub violations: Vec<String>,
}

/// The API server's seed routes, over HTTPS with the hosts' CA and the API token.
struct Api {
    http: reqwest::Client,
    access: Access,
}

impl Api {
    fn new(hosts: &Hosts) -> Result<Api> {
        let access = Access {
            endpoints: vec![hosts.api_url()],
            ca_file: Some(hosts.ca_file()),
            token: Some(hosts.api_token()?),
        };
        Ok(Api {
            http: access.http(Duration::from_secs(2))?,
            access,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}/{path}", self.access.endpoints[0]);
        self.access
            .authorize(self.http.request(method, url))
            .timeout(Duration::from_secs(5))
    }

    /// GET as JSON; None on any failure (the callers poll).
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let r = self.request(reqwest::Method::GET, path).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// Our ReplicaSet's active pods, with where they are bound and whether they run.
    async fn active_pods(&self) -> Option<Vec<ActivePod>> {
        let pods: Vec<Pod> = self.get(&format!("pods?selector=app={NAME}")).await?;
        Some(
            pods.iter()
                .filter(|p| !p.is_terminal())
                .map(|p| ActivePod {
                    name: p.spec.name.clone(),
                    node: p.spec.node_name.clone(),
                    running: p.status == PodPhase::Running,
                })
                .collect(),
        )
    }

    /// Every pod of ours, by name: (node, terminal, reason).
    async fn all_pods(&self) -> Option<BTreeMap<String, (String, bool, String)>> {
        let pods: Vec<Pod> = self.get(&format!("pods?selector=app={NAME}")).await?;
        Some(
            pods.into_iter()
                .map(|p| {
                    let terminal = p.is_terminal();
                    (p.spec.name, (p.spec.node_name, terminal, p.reason))
                })
                .collect(),
        )
    }
}

/// The engine's running containers of our workers' pods.
async fn sample_engine() -> Result<Vec<Running>> {
    let out = Command::new("docker")
        .args([
            "ps",
            "--filter",
            "label=miniku.node",
            "--format",
            "{{.ID}}\t{{.Label \"miniku.namespace\"}}\t{{.Label \"miniku.pod\"}}\t{{.Label \"miniku.node\"}}\t{{.Label \"miniku.main\"}}",
        ])
        .output()
        .await
        .context("docker ps")?;
    if !out.status.success() {
        bail!("docker ps: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(parse_sample(&String::from_utf8_lossy(&out.stdout)))
}

/// What the sampler has seen: the last sample, how many, and what was wrong.
#[derive(Default)]
struct Samples {
    last: Vec<Running>,
    taken: usize,
    failed: usize,
    most: usize,
    violations: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls `f` every 200 ms until it returns `Some`, or None after `within`.
async fn poll<T, F, Fut>(within: Duration, f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_until(within, Duration::from_millis(200), "", f)
        .await
        .ok()
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}

pub async fn run(hosts: &mut Hosts, opts: &Options) -> Result<Report> {
    let api = Api::new(hosts)?;
    let started = Instant::now();
    let say = |what: String| println!("[{:7.2}s] {what}", started.elapsed().as_secs_f64());

    poll(Duration::from_secs(60), || async {
        let nodes: Vec<serde_json::Value> = api.get("nodes").await?;
        let ready = nodes
            .iter()
            .filter(|n| n["status"] == "Ready" && WORKERS.iter().any(|w| n["name"] == *w))
            .count();
        (ready == WORKERS.len()).then_some(())
    })
    .await
    .context("worker1 and worker2 were not both Ready within 60 s")?;

    // The store-event checker, from one watch of /registry/ through the founding members.
    let store = hosts
        .access()
        .client(hosts.member_endpoints())?
        .with_timeout(Duration::from_secs(10));
    let mut watch = watch_registry(&store).await?;
    let invariants = Arc::new(Mutex::new(Invariants::default()));
    let inv = invariants.clone();
    let observer = tokio::spawn(async move {
        while let Some(msg) = watch.next().await {
            let Ok(msg) = msg else { continue };
            let mut inv = lock(&inv);
            for e in &msg.events {
                let value = (e.kind == EventType::Put).then_some(e.kv.value.as_bytes());
                inv.apply(e.kv.mod_revision, &e.kv.key.to_string_lossy(), value);
            }
        }
    });

    let samples = Arc::new(Mutex::new(Samples::default()));
    let s2 = samples.clone();
    let sampler = tokio::spawn(async move {
        let begun = Instant::now();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let got = sample_engine().await;
            let mut s = lock(&s2);
            match got {
                Ok(sample) => {
                    s.taken += 1;
                    let main = sample.iter().filter(|c| c.main.is_empty()).count();
                    s.most = s.most.max(main);
                    for (pod, nodes) in duplicates(&sample) {
                        let at = begun.elapsed().as_secs_f64();
                        s.violations.push(format!(
                            "at {at:.2}s: {} running containers for pod {pod} (on {})",
                            nodes.len(),
                            nodes.join(", ")
                        ));
                    }
                    s.last = sample;
                }
                Err(_) => s.failed += 1,
            }
        }
    });

    let result = cycles(hosts, opts, &api, &samples, &say).await;
    // Let the observer see the last changes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    observer.abort();
    sampler.abort();
    let (cycles, mut violations) = result?;
    let s = lock(&samples);
    let inv = lock(&invariants);
    violations.extend(inv.violations().iter().cloned());
    violations.extend(s.violations.iter().cloned());
    if s.failed > 0 {
        say(format!("{} engine samples failed (docker ps)", s.failed));
    }
    Ok(Report {
        cycles,
        samples: s.taken,
        most_containers: s.most,
        events_checked: inv.events(),
        violations,
    })
}

async fn cycles(
    hosts: &mut Hosts,
    opts: &Options,
    api: &Api,
    samples: &Mutex<Samples>,
    say: &impl Fn(String),
) -> Result<(Vec<Cycle>, Vec<String>)> {
    let desired = opts.replicas as usize;
    let rs = json!({
        "name": NAME,
        "desiredCount": opts.replicas,
        "selector": {"app": NAME},
        "template": {
            "image": opts.image,
            "labels": {"app": NAME},
            "command": ["/bin/sleep", "100000"],
        },
    });
    let r = api
        .request(reqwest::Method::POST, "replicasets")
        .json(&rs)
        .send()
        .await
        .context("POST /replicasets")?;
    if !r.status().is_success() {
        bail!(
            "POST /replicasets: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    say(format!(
        "ReplicaSet {NAME}: {desired} pods of {}; waiting until they run",
        opts.image
    ));
    let converged = || async {
        let pods = api.active_pods().await?;
        let sample = lock(samples).last.clone();
        convergence_gaps(desired, &pods, &sample)
            .is_empty()
            .then_some(pods)
    };
    let Some(pods) = poll(Duration::from_secs(120), converged).await else {
        let pods = api.active_pods().await.unwrap_or_default();
        let gaps = convergence_gaps(desired, &pods, &lock(samples).last);
        bail!("the pods did not all run within 120 s: {}", gaps.join("; "));
    };
    let on = |pods: &[ActivePod], w: &str| pods.iter().filter(|p| p.node == w).count();
    say(format!(
        "{desired} pods running: {} on worker1, {} on worker2",
        on(&pods, "worker1"),
        on(&pods, "worker2")
    ));

    let mut violations = Vec::new();
    let mut done = Vec::new();
    let hold = opts.eviction + opts.lease_ttl + opts.margin;
    let replace_within = hold + Duration::from_secs(30);
    let run_until = Instant::now() + Duration::from_secs(opts.seconds);
    let mut pods = pods;
    loop {
        // The worker holding the most pods (worker1 first), the other takes them.
        let (victim, other) = if on(&pods, "worker2") > on(&pods, "worker1") {
            ("worker2", "worker1")
        } else {
            ("worker1", "worker2")
        };
        let lost: BTreeSet<String> = pods
            .iter()
            .filter(|p| p.node == victim)
            .map(|p| p.name.clone())
            .collect();
        hosts.isolate_host(victim).await?;
        let t0 = Instant::now();
        say(format!(
            "isolated {victim} with {} pods; holding it off {:.0}s (eviction {:.0}s + lease {:.0}s + {:.0}s)",
            lost.len(),
            hold.as_secs_f64(),
            opts.eviction.as_secs_f64(),
            opts.lease_ttl.as_secs_f64(),
            opts.margin.as_secs_f64()
        ));
        let mut cycle = Cycle {
            isolated: victim.to_string(),
            pods_isolated: lost.len(),
            isolated_secs: 0.0,
            first_lost_secs: None,
            replaced_secs: None,
            cleanup_secs: None,
            converged_secs: None,
        };
        // Until replaced (or the bound), and at least `hold`.
        while t0.elapsed() < hold
            || (cycle.replaced_secs.is_none() && t0.elapsed() < replace_within)
        {
            if let Some(all) = api.all_pods().await {
                if cycle.first_lost_secs.is_none()
                    && lost.iter().any(|n| all.get(n).is_none_or(|(_, t, _)| *t))
                {
                    let at = t0.elapsed();
                    cycle.first_lost_secs = Some(secs(at));
                    let mut how: BTreeMap<&str, usize> = BTreeMap::new();
                    for n in &lost {
                        let state = match all.get(n) {
                            None => "deleted",
                            Some((_, true, r)) if !r.is_empty() => r.as_str(),
                            Some((_, true, _)) => "terminal",
                            Some((_, false, _)) => "still active",
                        };
                        *how.entry(state).or_default() += 1;
                    }
                    say(format!(
                        "{victim}'s first pod lost after {:.1}s ({how:?})",
                        at.as_secs_f64()
                    ));
                    if at < opts.eviction {
                        violations.push(format!(
                            "a pod of {victim} was given up {:.1}s after isolation, before the eviction timeout of {:?}",
                            at.as_secs_f64(),
                            opts.eviction
                        ));
                    }
                }
            }
            if cycle.replaced_secs.is_none() {
                if let Some(active) = api.active_pods().await {
                    let sample = lock(samples).last.clone();
                    let on_other: Vec<ActivePod> =
                        active.iter().filter(|p| p.node == other).cloned().collect();
                    if active.len() == desired
                        && on_other.len() == desired
                        && active.iter().all(|p| !lost.contains(&p.name))
                        && convergence_gaps(desired, &on_other, &sample)
                            .iter()
                            // The isolated worker's containers run on until it is healed.
                            .all(|g| g.contains(&format!("runs on {victim} ")))
                    {
                        let at = t0.elapsed();
                        cycle.replaced_secs = Some(secs(at));
                        say(format!(
                            "replaced: {desired} pods running on {other}, {:.1}s after isolating {victim}",
                            at.as_secs_f64()
                        ));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if cycle.replaced_secs.is_none() {
            violations.push(format!(
                "{victim}'s pods were not replaced on {other} within {replace_within:?} of its isolation"
            ));
        }
        hosts.heal().await?;
        let t1 = Instant::now();
        cycle.isolated_secs = secs(t1 - t0);
        say(format!(
            "healed {victim} after {:.1}s; waiting for its kubelet to remove the replaced pods' containers",
            cycle.isolated_secs
        ));
        let bound = Duration::from_secs(60);
        let stale = || {
            lock(samples)
                .last
                .iter()
                .filter(|c| c.node == victim && lost.contains(&c.pod))
                .count()
        };
        let cleaned = poll(bound, || async { (stale() == 0).then(|| t1.elapsed()) }).await;
        match cleaned {
            Some(d) => {
                cycle.cleanup_secs = Some(secs(d));
                say(format!(
                    "{victim}'s stale containers removed {:.1}s after heal",
                    d.as_secs_f64()
                ));
            }
            None => violations.push(format!(
                "{} containers of {victim}'s replaced pods still run {bound:?} after heal",
                stale()
            )),
        }
        match poll(bound, converged).await {
            Some(now) => {
                let d = t1.elapsed();
                cycle.converged_secs = Some(secs(d));
                say(format!(
                    "converged {:.1}s after heal: {desired} pods Running, one container each ({} on worker1, {} on worker2)",
                    d.as_secs_f64(),
                    on(&now, "worker1"),
                    on(&now, "worker2")
                ));
                pods = now;
            }
            None => {
                let now = api.active_pods().await.unwrap_or_default();
                let gaps = convergence_gaps(desired, &now, &lock(samples).last);
                violations.push(format!(
                    "not converged {bound:?} after healing {victim}: {}",
                    gaps.join("; ")
                ));
                done.push(cycle);
                break;
            }
        }
        done.push(cycle);
        if Instant::now() >= run_until {
            break;
        }
    }
    Ok((done, violations))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, pod: &str, node: &str) -> Running {
        Running {
            id: id.into(),
            namespace: "default".into(),
            pod: pod.into(),
            node: node.into(),
            main: String::new(),
        }
    }

    fn p(name: &str, node: &str) -> ActivePod {
        ActivePod {
            name: name.into(),
            node: node.into(),
            running: true,
        }
    }

    #[test]
    fn parses_our_workers_containers_only() {
        let text = "a1\t\tweb-1\tworker1\t\nb2\tdefault\tweb-2\tworker2\t\n\
                    c3\t\tweb-3\tchaos1-docker\t\nd4\t\t\t\t\nbad line\n";
        let s = parse_sample(text);
        assert_eq!(
            s,
            vec![c("a1", "web-1", "worker1"), c("b2", "web-2", "worker2")]
        );
    }

    #[test]
    fn two_main_containers_of_one_pod_are_a_duplicate() {
        let mut side = c("s", "web-1", "worker1");
        side.main = "a".into();
        let sample = vec![
            c("a", "web-1", "worker1"),
            side,
            c("b", "web-2", "worker1"),
            c("d", "web-2", "worker2"),
        ];
        let d = duplicates(&sample);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d["default/web-2"], vec!["worker1", "worker2"]);
        // Same name, other namespace: two pods.
        let mut other = c("e", "web-3", "worker2");
        other.namespace = "prod".into();
        assert!(duplicates(&[c("f", "web-3", "worker1"), other]).is_empty());
    }

    #[test]
    fn converged_means_desired_running_pods_one_container_each() {
        let pods = vec![p("web-1", "worker1"), p("web-2", "worker2")];
        let sample = vec![c("a", "web-1", "worker1"), c("b", "web-2", "worker2")];
        assert!(convergence_gaps(2, &pods, &sample).is_empty());
        // One pod short.
        assert_eq!(convergence_gaps(3, &pods, &sample).len(), 1);
        // A container left of a replaced pod.
        let mut stale = sample.clone();
        stale.push(c("z", "web-0", "worker1"));
        let g = convergence_gaps(2, &pods, &stale);
        assert_eq!(g.len(), 1);
        assert!(g[0].contains("runs on worker1 "), "{g:?}");
        // A pod's container on the wrong node, and one not Running.
        let moved = vec![c("a", "web-1", "worker2"), c("b", "web-2", "worker2")];
        assert_eq!(convergence_gaps(2, &pods, &moved).len(), 2);
        let mut pending = pods.clone();
        pending[1].running = false;
        assert_eq!(convergence_gaps(2, &pending, &sample).len(), 1);
    }
}
