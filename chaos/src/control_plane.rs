//! The control plane under faults: a three-member store (links through proxies), the API
//! server, two controller managers and two schedulers (one leads, one stands by), hollow
//! kubelets and, when the engine is there, a Docker kubelet. A ReplicaSet is scaled up and
//! down while store members, controller managers, schedulers and kubelets are killed with
//! `kill -9` and started again. Checked throughout, from one store watch over `/registry/`
//! (so ReplicaSet and pod changes come in one revision order):
//! - a pod creation never takes a ReplicaSet's active pods above its desiredCount, or above
//!   a desiredCount it had in the last [`STALE_VIEW`] (a controller acts on its cache, which
//!   may lag a scale-down); two controllers acting at once would create twice;
//! - a terminal pod (Failed with no retry, such as `NodeLost`, or Succeeded) never becomes
//!   active again when that takes its ReplicaSet above desiredCount (a kubelet back from a
//!   partition writing its old status over the eviction would);
//! - a bound pod is never bound again elsewhere (two schedulers acting at once would);
//! - never two running containers for one pod (sampled from the engine).
//!
//! After the faults: the time until exactly desiredCount pods run, and every container
//! belongs to a pod of the store on that node and every Running Docker pod has one.
//!
//! With [`Workload::Deployment`], a Deployment is rolled to a new template again and again
//! (and scaled now and then) instead, while store members, controller managers and
//! schedulers are killed (kubelets are spared: a killed kubelet takes its pods' readiness
//! with it, which no rollout can prevent). The rollout invariants of
//! [`crate::rollout_check`] are checked at every event besides the ones above, and after
//! the faults the Deployment must complete its last rollout.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use miniku::api::{Pod, PodPhase, ReplicaSet};
use miniku_harness::docker::remove_node_containers;
use miniku_harness::{free_addr, poll_until, Process};
use miniku_store::api::EventType;
use miniku_store::client::{GetOptions, StoreClient, WatchOptions};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::json;
use tokio::process::Command;
use tokio::time::Instant;

use crate::cluster::{Cluster, ClusterOptions};
use crate::rollout_check::{Figures, RolloutInvariants, Strategy};

/// One control-plane process that the nemesis can kill and start again.
struct Component {
    name: String,
    args: Vec<String>,
    process: Option<Process>,
}

struct Processes {
    bin: PathBuf,
    dir: PathBuf,
    all: Vec<Component>,
}

impl Processes {
    fn add(&mut self, name: &str, args: Vec<String>) -> Result<()> {
        self.all.push(Component {
            name: name.to_string(),
            args,
            process: None,
        });
        self.start(name)
    }

    fn start(&mut self, name: &str) -> Result<()> {
        let (bin, dir) = (self.bin.clone(), self.dir.clone());
        let c = self
            .all
            .iter_mut()
            .find(|c| c.name == name)
            .with_context(|| format!("no component {name}"))?;
        if c.process.is_some() {
            return Ok(());
        }
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(&c.args);
        c.process = Some(Process::spawn(&mut cmd, &dir.join(format!("{name}.log")))?);
        Ok(())
    }

    /// `kill -9`.
    fn kill(&mut self, name: &str) {
        if let Some(c) = self.all.iter_mut().find(|c| c.name == name) {
            if let Some(p) = c.process.take() {
                p.kill();
            }
        }
    }

    /// Starts anything that is not running, including components that exited by
    /// themselves (a leader that lost its lease exits).
    fn restore(&mut self) -> Result<()> {
        let names: Vec<String> = self.all.iter().map(|c| c.name.clone()).collect();
        for name in names {
            if let Some(c) = self.all.iter_mut().find(|c| c.name == name) {
                if c.process.as_mut().is_some_and(Process::has_exited) {
                    c.process = None;
                }
            }
            self.start(&name)?;
        }
        Ok(())
    }
}

/// What the control plane is asked to keep running while it is faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// A ReplicaSet (the seed's API), scaled up and down.
    ReplicaSet,
    /// A Deployment (apps/v1), rolled to new templates and scaled.
    Deployment,
}

/// The Deployment's rolling-update parameters in a [`Workload::Deployment`] run.
pub const ROLLOUT_STRATEGY: Strategy = Strategy {
    max_surge: 2,
    max_unavailable: 1,
};

pub struct Options {
    pub workload: Workload,
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub seconds: u64,
    pub docker: bool,
    pub image: String,
    /// TESTING ONLY: both controller managers act without an election; the run must fail.
    pub unsafe_skip_election: bool,
}

/// How old a view of a ReplicaSet a correct controller may act on.
pub const STALE_VIEW: Duration = Duration::from_secs(10);

/// The store-event invariants of ReplicaSets and their pods (desiredCount, one binding per
/// pod), fed one event at a time in revision order; also used across hosts
/// ([`crate::hosts_control_plane`]).
#[derive(Default)]
pub struct Invariants {
    /// Current desiredCount per ReplicaSet, and earlier ones with when they were replaced.
    desired: HashMap<String, u32>,
    replaced: HashMap<String, Vec<(Instant, u32)>>,
    pods: HashMap<String, Pod>,
    violations: Vec<String>,
    events: usize,
}

impl Invariants {
    /// What was found wrong so far.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Store events applied so far.
    pub fn events(&self) -> usize {
        self.events
    }

    fn active_of(&self, rs: &str) -> u32 {
        self.pods
            .values()
            .filter(|p| p.owner.as_ref().is_some_and(|o| o.name == rs) && !p.is_terminal())
            .count() as u32
    }

    /// The highest desiredCount `rs` had now or within the last [`STALE_VIEW`].
    fn desired_recently(&self, rs: &str) -> u32 {
        let recent = self.replaced.get(rs).into_iter().flatten();
        recent
            .filter(|(at, _)| at.elapsed() < STALE_VIEW)
            .map(|(_, d)| *d)
            .chain(self.desired.get(rs).copied())
            .max()
            .unwrap_or(0)
    }

    /// Applies one store event under `/registry/` (`value` None for a delete).
    pub fn apply(&mut self, revision: i64, key: &str, value: Option<&[u8]>) {
        self.events += 1;
        if let Some(key) = key.strip_prefix("/registry/replicasets/") {
            // Owners name their ReplicaSet without its namespace (all here are `default`'s).
            let name = miniku::registry::name_of_key(key);
            let before = match value
                .and_then(|v| miniku::registry::decode::<ReplicaSet>(v, revision).ok())
            {
                Some(rs) => self.desired.insert(name.to_string(), rs.desired_count),
                None => self.desired.remove(name),
            };
            if let Some(d) = before {
                self.replaced
                    .entry(name.to_string())
                    .or_default()
                    .push((Instant::now(), d));
            }
        } else if let Some(name) = key.strip_prefix("/registry/pods/") {
            let Some(pod) = value.and_then(|v| miniku::registry::decode::<Pod>(v, revision).ok())
            else {
                self.pods.remove(name);
                return;
            };
            let old = self.pods.insert(name.to_string(), pod.clone());
            match old {
                None => {
                    if let Some(owner) = &pod.owner {
                        let active = self.active_of(&owner.name);
                        let desired = self.desired_recently(&owner.name);
                        if active > desired {
                            self.violations.push(format!(
                                "revision {revision}: creating pod {name} made {active} active pods for ReplicaSet {} (desired at most {desired} in the last {STALE_VIEW:?})",
                                owner.name
                            ));
                        }
                    }
                }
                Some(old) => {
                    if old.is_terminal() && !pod.is_terminal() {
                        if let Some(owner) = &pod.owner {
                            let active = self.active_of(&owner.name);
                            let desired = self.desired_recently(&owner.name);
                            if active > desired {
                                self.violations.push(format!(
                                    "revision {revision}: pod {name} went from {:?} ({}) back to {:?}, making {active} active pods for ReplicaSet {} (desired at most {desired} in the last {STALE_VIEW:?})",
                                    old.status, old.reason, pod.status, owner.name
                                ));
                            }
                        }
                    }
                    if !old.spec.node_name.is_empty() && old.spec.node_name != pod.spec.node_name {
                        self.violations.push(format!(
                            "revision {revision}: pod {name} bound to {} was bound again to {:?}",
                            old.spec.node_name, pod.spec.node_name
                        ));
                    }
                }
            }
        }
    }
}

/// Running containers per pod on the engine for our nodes: (pod -> count), pod -> node.
async fn docker_containers(node: &str) -> Result<Vec<String>> {
    let out = Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=miniku.node={node}"),
            "--format",
            "{{.Label \"miniku.pod\"}}",
        ])
        .output()
        .await?;
    if !out.status.success() {
        bail!("docker ps: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect())
}

pub struct Report {
    pub violations: Vec<String>,
    /// What the rollout invariants saw (a [`Workload::Deployment`] run).
    pub rollout: Option<Figures>,
    pub faults: BTreeMap<String, usize>,
    pub events_checked: usize,
    pub converged_in: Option<Duration>,
}

/// A watch of every object under `/registry/` from the revision after the store's current
/// one: what the invariant checkers are fed.
pub async fn watch_registry(store: &StoreClient) -> Result<miniku_store::client::WatchStream> {
    let r0 = store
        .get(b"/registry/", GetOptions::default())
        .await
        .context("reading the store")?
        .header
        .revision;
    Ok(store.watch(
        b"/registry/",
        WatchOptions {
            prefix: true,
            start_revision: r0 + 1,
            ..Default::default()
        },
    ))
}

pub async fn run(opts: Options, rng: &mut StdRng, tag: &str) -> Result<Report> {
    let mut cluster = Cluster::start(ClusterOptions {
        bin: opts.bin.clone(),
        dir: opts.dir.clone(),
        size: 3,
        extra_args: vec![],
    })
    .await?;
    let store_eps: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.client_addr.clone())
        .collect();
    let stores = store_eps.join(",");
    let api_addr = free_addr();
    let api = format!("http://{api_addr}");
    let mut procs = Processes {
        bin: opts.bin.clone(),
        dir: opts.dir.clone(),
        all: Vec::new(),
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    procs.add(
        "apiserver",
        s(&["apiserver", "--listen", &api_addr, "--store", &stores]),
    )?;
    for i in 1..=2 {
        let mut cm = s(&[
            "controller-manager",
            "--store",
            &stores,
            "--leader-lease-secs",
            "3",
            "--pod-eviction-timeout-secs",
            "8",
        ]);
        if opts.unsafe_skip_election {
            cm.push("--unsafe-skip-election".into());
        }
        procs.add(&format!("controller-manager-{i}"), cm)?;
        procs.add(
            &format!("scheduler-{i}"),
            s(&["scheduler", "--store", &stores, "--leader-lease-secs", "3"]),
        )?;
    }
    // Every kubelet: short leases and back-offs, so faults show and heal within a run.
    let kubelet = |runtime: &str, node: &str, extra: &[&str]| {
        let mut args = s(&[
            "kubelet",
            "--runtime",
            runtime,
            "--node-name",
            node,
            "--labels",
            "chaos=1",
            "--lease-ttl-secs",
            "4",
            "--backoff-initial-ms",
            "500",
            "--backoff-max-ms",
            "2000",
            "--store",
            &stores,
        ]);
        args.extend(s(extra));
        args
    };
    let hollow = format!("{tag}-hollow");
    procs.add(
        "kubelet-hollow",
        kubelet("fake", &hollow, &["--hollow-nodes", "3"]),
    )?;
    let docker_node = format!("{tag}-docker");
    let mut kubelets = vec!["kubelet-hollow".to_string()];
    if opts.docker {
        procs.add(
            "kubelet-docker",
            kubelet("docker", &docker_node, &["--stop-grace-secs", "1"]),
        )?;
        kubelets.push("kubelet-docker".to_string());
    }
    let result = drive(
        &opts,
        rng,
        &mut cluster,
        &mut procs,
        &api,
        &store_eps,
        &kubelets,
        &docker_node,
    )
    .await;
    for name in procs.all.iter().map(|c| c.name.clone()).collect::<Vec<_>>() {
        procs.kill(&name);
    }
    if opts.docker {
        let node = docker_node.clone();
        let _ = tokio::task::spawn_blocking(move || remove_node_containers(&node)).await;
    }
    result
}

/// Both sets of invariants, fed from one watch.
struct Checks {
    replicasets: Invariants,
    rollout: Option<RolloutInvariants>,
}

/// The workload's requests, through the API server (which retries through store faults).
struct Driver<'a> {
    http: reqwest::Client,
    api: &'a str,
    image: &'a str,
    workload: Workload,
    /// The Deployment's template round (each is a new template, so a new rollout).
    round: u32,
}

const DEPLOYMENTS: &str = "apis/apps/v1/namespaces/default/deployments";

impl Driver<'_> {
    fn replicaset(&self, desired: u32) -> serde_json::Value {
        json!({
            "name": "chaos",
            "desiredCount": desired,
            "selector": {"app": "chaos"},
            "template": {
                "image": self.image,
                "labels": {"app": "chaos"},
                "node_selector": {"chaos": "1"},
                "command": ["/bin/sleep", "100000"],
            },
        })
    }

    async fn create(&self) -> Result<()> {
        let resp = match self.workload {
            Workload::ReplicaSet => {
                self.http
                    .post(format!("{}/replicasets", self.api))
                    .json(&self.replicaset(6))
                    .send()
                    .await?
            }
            Workload::Deployment => {
                let d = json!({
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "chaos", "namespace": "default"},
                    "spec": {
                        "replicas": 6,
                        "selector": {"matchLabels": {"app": "chaos"}},
                        "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                            "maxSurge": ROLLOUT_STRATEGY.max_surge,
                            "maxUnavailable": ROLLOUT_STRATEGY.max_unavailable,
                        }},
                        "template": {
                            "metadata": {"labels": {"app": "chaos"},
                                         "annotations": {"chaos/round": "0"}},
                            "spec": {
                                "nodeSelector": {"chaos": "1"},
                                "containers": [{"name": "main", "image": self.image,
                                                "command": ["/bin/sleep", "100000"]}],
                            },
                        },
                    },
                });
                self.http
                    .post(format!("{}/{DEPLOYMENTS}", self.api))
                    .json(&d)
                    .send()
                    .await?
            }
        };
        if !resp.status().is_success() {
            bail!(
                "creating the {:?}: {} {}",
                self.workload,
                resp.status(),
                resp.text().await?
            );
        }
        Ok(())
    }

    /// Sets the desired count (and, for a Deployment with `roll`, a new template).
    /// Whether it succeeded.
    async fn change(&mut self, replicas: Option<u32>, roll: bool) -> bool {
        let request = match self.workload {
            Workload::ReplicaSet => {
                let Some(d) = replicas else { return true };
                self.http
                    .put(format!("{}/replicasets/chaos", self.api))
                    .json(&self.replicaset(d))
            }
            Workload::Deployment => {
                let mut spec = serde_json::Map::new();
                if let Some(r) = replicas {
                    spec.insert("replicas".into(), json!(r));
                }
                if roll {
                    self.round += 1;
                    spec.insert(
                        "template".into(),
                        json!({"metadata": {"annotations": {"chaos/round": self.round.to_string()}}}),
                    );
                }
                if spec.is_empty() {
                    return true;
                }
                self.http
                    .patch(format!("{}/{DEPLOYMENTS}/chaos", self.api))
                    .header("content-type", "application/merge-patch+json")
                    .body(json!({ "spec": spec }).to_string())
            }
        };
        request.send().await.is_ok_and(|r| r.status().is_success())
    }

    /// GET `path` (below the API's root) as JSON; None on any failure (the caller polls).
    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let r = self
            .http
            .get(format!("{}/{path}", self.api))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// For a Deployment: whether its last rollout is complete with `replicas` pods.
    async fn rollout_complete(&self, replicas: u32) -> Option<bool> {
        if self.workload != Workload::Deployment {
            return Some(true);
        }
        let d: serde_json::Value = self.get_json(&format!("{DEPLOYMENTS}/chaos")).await?;
        let status = &d["status"];
        let want = u64::from(replicas);
        Some(
            status["observedGeneration"] == d["metadata"]["generation"]
                && status["replicas"].as_u64() == Some(want)
                && status["updatedReplicas"].as_u64() == Some(want)
                && status["availableReplicas"].as_u64() == Some(want),
        )
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    opts: &Options,
    rng: &mut StdRng,
    cluster: &mut Cluster,
    procs: &mut Processes,
    api: &str,
    store_eps: &[String],
    kubelets: &[String],
    docker_node: &str,
) -> Result<Report> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let want_nodes = 3 + usize::from(opts.docker);
    wait_for(Duration::from_secs(60), "the nodes to register", || async {
        let r = http.get(format!("{api}/nodes")).send().await.ok()?;
        let nodes: Vec<serde_json::Value> = r.json().await.ok()?;
        let ready = nodes.iter().filter(|n| n["status"] == "Ready").count();
        (ready >= want_nodes).then_some(())
    })
    .await?;

    let store = StoreClient::new(store_eps.iter().map(|e| format!("http://{e}")).collect())?;
    let mut watch = watch_registry(&store).await?;
    let checks = Arc::new(Mutex::new(Checks {
        replicasets: Invariants::default(),
        rollout: (opts.workload == Workload::Deployment)
            .then(|| RolloutInvariants::new("chaos", ROLLOUT_STRATEGY)),
    }));
    let c2 = checks.clone();
    let observer = tokio::spawn(async move {
        while let Some(Ok(msg)) = watch.next().await {
            let mut checks = c2.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now().into_std();
            for e in &msg.events {
                let value = (e.kind == EventType::Put).then_some(e.kv.value.as_bytes());
                let key = e.kv.key.to_string_lossy();
                checks.replicasets.apply(e.kv.mod_revision, &key, value);
                if let Some(r) = checks.rollout.as_mut() {
                    r.apply(now, e.kv.mod_revision, &key, value);
                }
            }
        }
    });
    let docker_violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let sampler = if opts.docker {
        let node = docker_node.to_string();
        let v = docker_violations.clone();
        Some(tokio::spawn(async move {
            loop {
                if let Ok(pods) = docker_containers(&node).await {
                    let mut count: HashMap<&str, usize> = HashMap::new();
                    for p in &pods {
                        *count.entry(p.as_str()).or_default() += 1;
                    }
                    for (p, n) in count.into_iter().filter(|(_, n)| *n > 1) {
                        v.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("{n} running containers for pod {p}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }))
    } else {
        None
    };

    let mut driver = Driver {
        http: http.clone(),
        api,
        image: &opts.image,
        workload: opts.workload,
        round: 0,
    };
    driver.create().await?;

    let started = Instant::now();
    let until = started + Duration::from_secs(opts.seconds);
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    let mut kinds = 0usize;
    // Kubelets are spared in a rollout run: their pods' readiness goes with them.
    let choices: &[&str] = match opts.workload {
        Workload::ReplicaSet => &[
            "store member",
            "store leader",
            "controller manager",
            "scheduler",
            "kubelet",
        ],
        Workload::Deployment => &[
            "store member",
            "store leader",
            "controller manager",
            "scheduler",
        ],
    };
    while Instant::now() < until {
        let t = started.elapsed().as_secs_f64();
        let scale = rng.random_bool(0.5).then(|| rng.random_range(2..=10u32));
        let roll = opts.workload == Workload::Deployment && rng.random_bool(0.7);
        if scale.is_some() || roll {
            let what = match (scale, roll) {
                (Some(d), true) => format!("roll out round {} and scale to {d}", driver.round + 1),
                (None, true) => format!("roll out round {}", driver.round + 1),
                (Some(d), false) => format!("scale to {d}"),
                (None, false) => String::new(),
            };
            println!("[{t:7.2}s] {what}");
            driver.change(scale, roll).await;
        }
        // Every kind once first, then at random.
        let what = if kinds < choices.len() {
            kinds += 1;
            choices[kinds - 1]
        } else {
            choices.choose(rng).copied().unwrap_or("scheduler")
        };
        let hold = Duration::from_millis(rng.random_range(1_500..4_000));
        let victim = match what {
            "store member" | "store leader" => {
                let id = if what == "store leader" {
                    cluster.leader().await.unwrap_or(1)
                } else {
                    rng.random_range(1..=3)
                };
                cluster.kill(id).await?;
                format!("store member {id}")
            }
            "controller manager" | "scheduler" => {
                let base = if what == "scheduler" {
                    "scheduler"
                } else {
                    "controller-manager"
                };
                let name = format!("{base}-{}", rng.random_range(1..=2));
                procs.kill(&name);
                name
            }
            _ => {
                let name = kubelets.choose(rng).cloned().unwrap_or_default();
                procs.kill(&name);
                name
            }
        };
        println!(
            "[{t:7.2}s] kill -9 {victim}, restart after {:.1}s",
            hold.as_secs_f64()
        );
        *faults.entry(format!("kill -9 {what}")).or_default() += 1;
        tokio::time::sleep(hold).await;
        cluster.restore()?;
        procs.restore()?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
    }

    // Faults over: converge to the final desired count (and, for a Deployment, one more
    // rollout, which must complete).
    cluster.restore()?;
    procs.restore()?;
    let final_desired = 5;
    let roll = opts.workload == Workload::Deployment;
    let t = started.elapsed().as_secs_f64();
    println!(
        "[{t:7.2}s] faults over; {}scale to {final_desired} and wait for convergence",
        if roll { "roll out once more, " } else { "" }
    );
    let healed = Instant::now();
    // A change whose answer was lost may have been made: sending it again is harmless
    // (another rollout at worst).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !driver.change(Some(final_desired), roll).await {
        if Instant::now() > deadline {
            bail!("the last change was refused for 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let bound = Duration::from_secs(120);
    let driver = &driver;
    let converged = wait_for(bound, "convergence", || async {
        if !driver.rollout_complete(final_desired).await? {
            return None;
        }
        let pods: Vec<Pod> = driver.get_json("pods?selector=app=chaos").await?;
        let active: Vec<&Pod> = pods.iter().filter(|p| !p.is_terminal()).collect();
        let running = active
            .iter()
            .filter(|p| p.status == PodPhase::Running)
            .count();
        if active.len() != final_desired as usize || running != active.len() {
            return None;
        }
        if opts.docker {
            // Every container has its pod and every Running Docker pod its container.
            let containers = docker_containers(docker_node).await.ok()?;
            let on_docker: Vec<&str> = active
                .iter()
                .filter(|p| p.spec.node_name == docker_node)
                .map(|p| p.spec.name.as_str())
                .collect();
            let mut c = containers.clone();
            c.sort();
            let mut d: Vec<String> = on_docker.iter().map(|s| s.to_string()).collect();
            d.sort();
            if c != d {
                return None;
            }
        }
        Some(healed.elapsed())
    })
    .await;
    let converged_in = match converged {
        Ok(d) => {
            println!("converged: {final_desired} pods Running, containers match pods, {:.1}s after the faults stopped", d.as_secs_f64());
            Some(d)
        }
        Err(e) => {
            println!("NOT converged: {e}");
            None
        }
    };
    // Let the observer see the last changes, then stop it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    observer.abort();
    if let Some(s) = sampler {
        s.abort();
    }
    let (mut violations, events_checked, rollout) = {
        let checks = checks.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = checks.replicasets.violations.clone();
        if let Some(r) = &checks.rollout {
            v.extend(r.violations.iter().cloned());
        }
        (
            v,
            checks.replicasets.events,
            checks.rollout.as_ref().map(|r| r.figures.clone()),
        )
    };
    violations.extend(
        docker_violations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned(),
    );
    if converged_in.is_none() {
        violations.push(format!(
            "did not converge within {bound:?} after the faults stopped"
        ));
    }
    Ok(Report {
        violations,
        rollout,
        faults,
        events_checked,
        converged_in,
    })
}

/// Polls `f` every 200 ms until it returns `Some`, or fails after `within` with `what`.
async fn wait_for<T, F, Fut>(within: Duration, what: &str, f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    Ok(poll_until(within, Duration::from_millis(200), what, f).await?)
}
