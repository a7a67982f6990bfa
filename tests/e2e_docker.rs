//! End-to-end with the real Docker engine: a three-member store, the API server, controller
//! manager, scheduler and two Docker kubelets, with the local `miniku/busybox` image
//! (`scripts/test-image.sh`). Each test uses its own node names, so tests sharing the
//! engine never touch each other's containers, and removes its containers when it ends,
//! failed or not.
//!
//! Without a Docker engine these tests say so and pass, except under `CI=true`, where they
//! fail.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use common::{docker_ready, wait_until, ControlPlane, Process, TEST_IMAGE as IMAGE};
use serde_json::{json, Value};

/// Our containers of `nodes`: (name, id, state).
fn containers(nodes: &[String]) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for n in nodes {
        let o = Command::new("docker")
            .args(["ps", "-a", "--filter", &format!("label=miniku.node={n}")])
            .args(["--format", "{{.Names}} {{.ID}} {{.State}}"])
            .output()?;
        ensure!(
            o.status.success(),
            "docker ps: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() == 3 {
                out.push((
                    parts[0].to_string(),
                    parts[1].to_string(),
                    parts[2].to_string(),
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn running_names(nodes: &[String]) -> Result<BTreeSet<String>> {
    Ok(containers(nodes)?
        .into_iter()
        .filter(|(_, _, s)| s == "running")
        .map(|(n, _, _)| n)
        .collect())
}

/// The system under test; removes its containers when dropped.
struct Cluster {
    cp: ControlPlane,
    nodes: Vec<String>,
    kubelets: Vec<usize>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Kubelets first, so nothing recreates what we remove.
        for k in &self.kubelets {
            self.cp.components[*k].kill();
        }
        for n in &self.nodes {
            miniku_harness::docker::remove_node_containers(n);
        }
    }
}

fn kubelet_args(node: &str) -> Vec<String> {
    [
        "kubelet",
        "--node-name",
        node,
        "--runtime",
        "docker",
        "--lease-ttl-secs",
        "3",
        "--backoff-initial-ms",
        "1000",
        "--backoff-max-ms",
        "8000",
        "--stop-grace-secs",
        "1",
    ]
    .map(String::from)
    .to_vec()
}

impl Cluster {
    async fn start(tag: &str) -> Result<Cluster> {
        let cp = ControlPlane::start(&["--pod-eviction-timeout-secs", "3"]).await?;
        let suffix: String = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let nodes: Vec<String> = ["a", "b"]
            .iter()
            .map(|n| format!("{tag}-{suffix}-{n}"))
            .collect();
        let mut c = Cluster {
            cp,
            nodes,
            kubelets: Vec::new(),
        };
        for i in 0..2 {
            let node = c.nodes[i].clone();
            let k = c.spawn_kubelet(&node)?;
            c.kubelets.push(k);
        }
        for n in c.nodes.clone() {
            c.wait(&format!("node {n} Ready"), async |c| {
                let n = n.clone();
                (c.get(&format!("/nodes/{n}")).await.ok()?["status"] == "Ready").then_some(())
            })
            .await?;
        }
        Ok(c)
    }

    fn spawn_kubelet(&mut self, node: &str) -> Result<usize> {
        let args = kubelet_args(node);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cp.spawn(&format!("kubelet-{node}"), &refs)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.cp.get(path).await
    }

    async fn wait<T, F>(&self, what: &str, check: F) -> Result<T>
    where
        F: AsyncFn(&Cluster) -> Option<T>,
    {
        wait_until(Duration::from_secs(60), what, || check(self))
            .await
            .map_err(|e| {
                anyhow!(
                    "{e}\ncontainers: {:?}\n{}",
                    containers(&self.nodes).ok(),
                    self.cp.logs()
                )
            })
    }

    async fn pods(&self, app: &str) -> Result<Vec<Value>> {
        let v = self.get(&format!("/pods?selector=app={app}")).await?;
        v.as_array().cloned().context("pod list")
    }

    /// Waits until `n` pods of `app` are Running, each with a running container of its
    /// name; returns the pods.
    async fn wait_running(&self, app: &str, n: usize) -> Result<Vec<Value>> {
        self.wait(&format!("{n} running pods of {app}"), async |c| {
            let pods = c.pods(app).await.ok()?;
            let running = running_names(&c.nodes).ok()?;
            let ok = pods.len() == n
                && pods.iter().all(|p| {
                    p["status"] == "Running"
                        && p["spec"]["name"]
                            .as_str()
                            .is_some_and(|name| running.contains(name))
                })
                && running
                    .iter()
                    .filter(|r| r.starts_with(&format!("{app}-")))
                    .count()
                    == n;
            ok.then_some(pods)
        })
        .await
    }

    async fn post_rs(&self, name: &str, count: u32, command: Option<&[&str]>) -> Result<()> {
        let mut template = json!({"image": IMAGE});
        if let Some(cmd) = command {
            template["command"] = json!(cmd);
        }
        let body = json!({"name": name, "desiredCount": count, "selector": {"app": name}, "template": template});
        let resp = reqwest::Client::new()
            .post(self.cp.url("/replicasets"))
            .json(&body)
            .send()
            .await?;
        ensure!(
            resp.status() == 201,
            "POST: {} {}",
            resp.status(),
            resp.text().await?
        );
        Ok(())
    }

    async fn scale(&self, name: &str, count: u32) -> Result<()> {
        let body =
            json!({"desiredCount": count, "selector": {"app": name}, "template": {"image": IMAGE}});
        let resp = reqwest::Client::new()
            .put(self.cp.url(&format!("/replicasets/{name}")))
            .json(&body)
            .send()
            .await?;
        ensure!(
            resp.status() == 200,
            "PUT: {} {}",
            resp.status(),
            resp.text().await?
        );
        Ok(())
    }
}

fn names(pods: &[Value]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p["spec"]["name"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn replicaset_runs_restarts_scales_and_deletes_real_containers() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let c = Cluster::start("e2e1").await?;
    c.post_rs("web", 3, None).await?;
    let pods = c.wait_running("web", 3).await?;
    let used: BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p["spec"]["node_name"].as_str())
        .collect();
    ensure!(used.len() == 2, "spread over both nodes: {used:?}");
    for p in &pods {
        ensure!(
            p["container_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{p}"
        );
        ensure!(
            p["retry_count"] == 0 && p["next_retry_at"] == "0001-01-01T00:00:00Z",
            "{p}"
        );
        // Only what the pod spec says: no privileges, host mounts or host network.
        let id = p["container_id"].as_str().context("container_id")?;
        let out = Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{.HostConfig.Privileged}} {{len .HostConfig.Binds}} {{len .Mounts}} {{.HostConfig.NetworkMode}} {{.HostConfig.PidMode}}",
                id,
            ])
            .output()?;
        let host = String::from_utf8_lossy(&out.stdout).trim().to_string();
        ensure!(
            host == "false 0 0 bridge" || host == "false 0 0 default",
            "container {id} has host access: {host}"
        );
    }

    // docker kill → the kubelet restarts it after a backoff; retry_count goes up.
    let victim = pods[0]["spec"]["name"]
        .as_str()
        .context("name")?
        .to_string();
    let out = Command::new("docker").args(["kill", &victim]).output()?;
    ensure!(
        out.status.success(),
        "docker kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait("the killed pod to restart", async |c| {
        let victim = victim.clone();
        {
            let p = c.get(&format!("/pods/{victim}")).await.ok()?;
            (p["status"] == "Running" && p["retry_count"] == 1).then_some(())
        }
    })
    .await?;
    c.wait_running("web", 3).await?;

    // Scale to 5, then to 1: containers follow; the survivor is a listed pod.
    c.scale("web", 5).await?;
    c.wait_running("web", 5).await?;
    c.scale("web", 1).await?;
    let left = c.wait_running("web", 1).await?;
    let survivor = names(&left);
    ensure!(
        running_names(&c.nodes)? == survivor,
        "containers {:?} vs pods {survivor:?}",
        running_names(&c.nodes)?
    );

    // Delete the ReplicaSet: no containers left.
    let resp = reqwest::Client::new()
        .delete(c.cp.url("/replicasets/web"))
        .send()
        .await?;
    ensure!(resp.status() == 200);
    c.wait("no containers", async |c| {
        containers(&c.nodes).ok()?.is_empty().then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashing_command_backs_off_with_a_reason() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let c = Cluster::start("e2e2").await?;
    let started = std::time::Instant::now();
    c.post_rs("crash", 1, Some(&["sh", "-c", "sleep 0.2; exit 3"]))
        .await?;
    let pod = c
        .wait("three failures", async |c| {
            let pods = c.pods("crash").await.ok()?;
            let p = pods.first()?.clone();
            (p["retry_count"].as_u64()? >= 3 && p["status"] == "Failed").then_some(p)
        })
        .await?;
    // Backoff 1 s, 2 s between the first three failures: no tight loop.
    ensure!(
        started.elapsed() >= Duration::from_secs(3),
        "too fast: {:?}",
        started.elapsed()
    );
    ensure!(
        pod["reason"] == "CrashLoopBackOff" && pod["exit_code"] == 3,
        "{pod}"
    );
    ensure!(
        pod["message"]
            .as_str()
            .is_some_and(|m| m.contains("code 3")),
        "{pod}"
    );
    let next = pod["next_retry_at"].as_str().context("next_retry_at")?;
    let finished = pod["finished_at"].as_str().context("finished_at")?;
    ensure!(
        next > finished,
        "next retry {next} must be after the failure {finished}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_is_reported_and_retried_with_backoff() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let c = Cluster::start("e2e5").await?;
    let body = json!({"name": "ghost", "desiredCount": 1, "selector": {"app": "ghost"},
                      "template": {"image": "miniku/no-such-image:1"}});
    let resp = reqwest::Client::new()
        .post(c.cp.url("/replicasets"))
        .json(&body)
        .send()
        .await?;
    ensure!(resp.status() == 201);
    let pod = c
        .wait("an image pull error", async |c| {
            let p = c.pods("ghost").await.ok()?.first()?.clone();
            (p["reason"] == "ImagePullError" && p["retry_count"].as_u64()? >= 1).then_some(p)
        })
        .await?;
    ensure!(pod["status"] == "Pending", "{pod}");
    let msg = pod["message"].as_str().unwrap_or("");
    ensure!(
        msg.contains("miniku/no-such-image:1"),
        "the message names the image: {msg}"
    );
    ensure!(pod["next_retry_at"] != "0001-01-01T00:00:00Z", "{pod}");
    ensure!(containers(&c.nodes)?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn workloads_outlive_a_store_outage_and_a_missing_engine_is_reported() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let mut c = Cluster::start("e2e6").await?;
    c.post_rs("durable", 2, None).await?;
    c.wait_running("durable", 2).await?;
    let before = containers(&c.nodes)?;
    // The whole store goes away: kubelets must leave running containers alone.
    for id in 1..=3 {
        c.cp.store.kill(id);
    }
    // Nothing to await here: we check that nothing happens for a while.
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(
        containers(&c.nodes)? == before,
        "containers changed while the store was down"
    );
    for id in 1..=3 {
        c.cp.store.spawn(id)?;
    }
    c.cp.store.wait_leader(&[1, 2, 3]).await?;
    c.wait_running("durable", 2).await?;
    ensure!(
        containers(&c.nodes)? == before,
        "containers were restarted after the outage"
    );

    // A kubelet whose engine is unreachable says so and keeps trying; the rest still works.
    let log = c.cp.store.tmp.path().join("kubelet-noengine.log");
    let mut noengine = Process::spawn(
        Command::new(common::BIN)
            .args(kubelet_args("e2e6-no-engine"))
            .args(["--store", &c.cp.store_arg()])
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
        &log,
    )?;
    let seen = wait_until(
        Duration::from_secs(20),
        "the kubelet to report the engine",
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("cannot reach the Docker engine")
                .then_some(())
        },
    )
    .await;
    let still_running = !noengine.has_exited();
    noengine.kill();
    seen?;
    ensure!(still_running, "the kubelet must keep retrying, not exit");
    let resp = reqwest::get(c.cp.url("/nodes/e2e6-no-engine")).await?;
    ensure!(
        resp.status() == 404,
        "a kubelet without an engine must not register its node"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kubelet_loss_moves_pods_and_restarts_adopt_containers() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let mut c = Cluster::start("e2e3").await?;
    c.post_rs("sticky", 4, None).await?;
    let before = c.wait_running("sticky", 4).await?;
    let ids_before = containers(&c.nodes)?;

    // Restart kubelet a while its containers run: no duplicates, no restarts.
    let a = c.kubelets[0];
    c.cp.components[a].kill();
    let a2 = c.spawn_kubelet(&c.nodes[0].clone())?;
    c.kubelets[0] = a2;
    // The restarted kubelet has synced every pod once its heartbeat is back (it lists pods
    // and containers before registering); then nothing may have changed.
    let node_a = c.nodes[0].clone();
    c.wait("the restarted kubelet's node Ready", async |c| {
        let n = node_a.clone();
        (c.get(&format!("/nodes/{n}")).await.ok()?["status"] == "Ready").then_some(())
    })
    .await?;
    let after = c.wait_running("sticky", 4).await?;
    ensure!(names(&before) == names(&after));
    ensure!(
        containers(&c.nodes)? == ids_before,
        "containers changed across a kubelet restart"
    );

    // Kill kubelet b for good: its node goes NotReady and its pods move to a.
    let b = c.kubelets[1];
    c.cp.components[b].kill();
    let node_b = c.nodes[1].clone();
    let on_b: BTreeSet<String> = after
        .iter()
        .filter(|p| p["spec"]["node_name"] == node_b.as_str())
        .filter_map(|p| p["spec"]["name"].as_str().map(String::from))
        .collect();
    ensure!(!on_b.is_empty(), "some pods ran on {node_b}");
    c.wait("node b NotReady", async |c| {
        let n = node_b.clone();
        (c.get(&format!("/nodes/{n}")).await.ok()?["status"] == "NotReady").then_some(())
    })
    .await?;
    let moved = c
        .wait("4 running pods, all on node a", async |c| {
            let a = node_a.clone();
            {
                let pods = c.pods("sticky").await.ok()?;
                let ok = pods.len() == 4
                    && pods
                        .iter()
                        .all(|p| p["status"] == "Running" && p["spec"]["node_name"] == a.as_str());
                ok.then_some(pods)
            }
        })
        .await?;
    ensure!(
        names(&moved).is_disjoint(&on_b),
        "b's pods were replaced, not reused"
    );
    // b's old containers still run (nobody stops them while b is down)...
    let leftovers: BTreeSet<String> = containers(std::slice::from_ref(&node_b))?
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    ensure!(leftovers == on_b, "{leftovers:?} vs {on_b:?}");
    // ...and b removes them as orphans when it returns.
    let b2 = c.spawn_kubelet(&node_b)?;
    c.kubelets[1] = b2;
    c.wait("node b's orphans removed", async |_c| {
        let n = node_b.clone();
        containers(&[n]).ok()?.is_empty().then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_store_leader_during_a_scale_up_still_converges() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let mut c = Cluster::start("e2e4").await?;
    c.post_rs("steady", 1, None).await?;
    c.wait_running("steady", 1).await?;
    c.scale("steady", 6).await?;
    let leader = c.cp.store.wait_leader(&[1, 2, 3]).await?;
    c.cp.store.kill(leader);
    c.wait_running("steady", 6).await?;
    c.cp.store.spawn(leader)?;
    Ok(())
}
