//! Deployments end to end, through the real kubectl, on a Docker kubelet with real busybox
//! httpd containers behind a NodePort Service and `miniku proxy`:
//! `kubectl create deployment`, `expose`, `rollout status`, a rolling update by `set image`
//! while a client requests through the Service throughout (failures counted), `rollout
//! history`, `undo` and `undo --to-revision`, `scale`, a rollout that stalls on a readiness
//! probe that never passes (old pods kept, `ProgressDeadlineExceeded`), `pause` / `resume` /
//! `restart`, Recreate, and a cascading delete. Pods are ready when their readiness probe
//! (an HTTP GET) answers.
//!
//! A watch on the Deployment's pods checks the rollout invariants at every event: never more
//! than replicas + maxSurge pods, never fewer than replicas − maxUnavailable ready ones while
//! rolling, and under Recreate never pods of two templates at once. Traffic goes only to this
//! test's own containers, in a bounded loop.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::kubectl::{http_get, Kubectl};
use common::{docker_ready, wait_until, ControlPlane};
use futures::StreamExt;
use serde_json::Value;

/// What the pods of the Deployment were after one watch event.
#[derive(Clone, Debug)]
struct Snapshot {
    /// Pods that exist (not deleted).
    pods: usize,
    /// Of them, those with Ready=True.
    ready: usize,
    /// The distinct `pod-template-hash` labels among them.
    templates: BTreeSet<String>,
}

/// Every snapshot of the Deployment's pods, one per watch event, in order.
#[derive(Clone, Default)]
struct PodHistory(Arc<Mutex<Vec<Snapshot>>>);

impl PodHistory {
    fn len(&self) -> usize {
        self.0.lock().map(|h| h.len()).unwrap_or(0)
    }

    /// Snapshots from index `from` on.
    fn since(&self, from: usize) -> Vec<Snapshot> {
        self.0
            .lock()
            .map(|h| h.get(from..).unwrap_or_default().to_vec())
            .unwrap_or_default()
    }

    /// Follows the pods of `selector` through the Kubernetes API's watch until the stream
    /// ends or the task is dropped.
    async fn follow(self, url: String) -> Result<()> {
        let resp = reqwest::get(&url).await?;
        ensure!(resp.status().is_success(), "watch: {}", resp.status());
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        let mut pods: BTreeMap<String, (bool, String)> = BTreeMap::new();
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk?);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let obj = &ev["object"];
                let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
                match ev["type"].as_str() {
                    Some("DELETED") => {
                        pods.remove(&name);
                    }
                    Some("ADDED" | "MODIFIED") => {
                        let ready = obj["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True");
                        let hash = obj["metadata"]["labels"]["pod-template-hash"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        pods.insert(name, (ready, hash));
                    }
                    _ => continue,
                }
                let snap = Snapshot {
                    pods: pods.len(),
                    ready: pods.values().filter(|(r, _)| *r).count(),
                    templates: pods.values().map(|(_, h)| h.clone()).collect(),
                };
                if let Ok(mut h) = self.0.lock() {
                    h.push(snap);
                }
            }
        }
        Ok(())
    }
}

/// A client requesting through the node port until stopped: (successes, failures).
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(addr: String) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        // Bounded: at most 20,000 requests, 5 ms apart.
        let task = tokio::spawn(async move {
            for _ in 0..20_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                match http_get(&addr).await {
                    Some(_) => o.fetch_add(1, Ordering::Relaxed),
                    None => f.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Traffic {
            stop,
            ok,
            failed,
            task,
        }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Tags the local busybox image under another name, so `set image` has a second image to
/// roll to (there is no registry here); removed when dropped.
struct SecondImage(&'static str);

impl SecondImage {
    fn tag(name: &'static str) -> Result<SecondImage> {
        let out = std::process::Command::new("docker")
            .args(["tag", "miniku/busybox:latest", name])
            .output()?;
        ensure!(out.status.success(), "docker tag: {out:?}");
        Ok(SecondImage(name))
    }
}

impl Drop for SecondImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", self.0])
            .output();
    }
}

fn image_of(k: &Kubectl) -> Result<String> {
    k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ])
}

fn rollout_status(k: &Kubectl) -> Result<String> {
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_out_behind_a_service_with_kubectl() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let mut cp = ControlPlane::start(&[]).await?;
    let node = format!("deploy-{}", std::process::id());
    let _cleanup = cp.spawn_docker_kubelet(&node, &[]).await?;
    cp.spawn("proxy", &["proxy", "--listen-address", "127.0.0.1"])?;
    let result = scenario(&cp).await;
    if result.is_err() {
        eprintln!("{}", cp.logs());
    }
    result
}

async fn scenario(cp: &ControlPlane) -> Result<()> {
    let _v2 = SecondImage::tag("miniku/busybox:v2")?;
    let k = Kubectl::new(cp.url(""))?;
    let history = PodHistory::default();
    let watch = tokio::spawn(
        history
            .clone()
            .follow(cp.url("/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3Dweb")),
    );

    // Create (kubectl sends protobuf), expose, and wait for the rollout.
    let out = k.ok(&[
        "create",
        "deployment",
        "web",
        "--image=miniku/busybox:latest",
        "--replicas=3",
        "--port=8080",
        "--",
        "sh",
        "-c",
        "hostname > /tmp/index.html && exec httpd -f -p 8080 -h /tmp",
    ])?;
    ensure!(out.contains("deployment.apps/web created"), "{out}");
    let out = rollout_status(&k)?;
    ensure!(
        out.contains("deployment \"web\" successfully rolled out"),
        "{out}"
    );
    let table = k.ok(&["get", "deploy", "web"])?;
    ensure!(
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
            .iter()
            .all(|c| table.contains(c))
            && table
                .lines()
                .nth(1)
                .is_some_and(|l| l.split_whitespace().take(4).eq(["web", "3/3", "3", "3"])),
        "kubectl get deploy:\n{table}"
    );
    k.expose_node_port("deployment", "web")?;
    let svc = k.json(&["get", "svc", "web"])?;
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap_or(0);
    let addr = format!("127.0.0.1:{node_port}");
    wait_until(Duration::from_secs(30), "the Service to answer", || {
        let addr = addr.clone();
        async move { http_get(&addr).await }
    })
    .await?;

    // Pods count as ready only once their readiness probe answers (a rollout of its own).
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"busybox","readinessProbe":{"httpGet":{"path":"/","port":8080},"periodSeconds":1}}]}}}}"#,
    ])?;
    rollout_status(&k)?;

    // A rolling update while a client requests throughout: 3 replicas, 25% → surge 1,
    // unavailable 0.
    let mark = history.len();
    let traffic = Traffic::start(addr.clone());
    let started = Instant::now();
    let out = k.ok(&[
        "set",
        "image",
        "deployment/web",
        "busybox=miniku/busybox:v2",
    ])?;
    ensure!(out.contains("image updated"), "{out}");
    rollout_status(&k)?;
    let rollout_ms = started.elapsed().as_millis();
    let (ok, failed) = traffic.finish().await;
    let during = history.since(mark);
    ensure!(!during.is_empty(), "the watch saw the rollout");
    let most = during.iter().map(|s| s.pods).max().unwrap_or(0);
    ensure!(most <= 4, "more than replicas + maxSurge = 4 pods: {most}");
    // Ready never below 3 once the new pods started (the snapshots before the first new
    // pod include the initial state, already 3 ready).
    let fewest_ready = during.iter().map(|s| s.ready).min().unwrap_or(0);
    ensure!(
        fewest_ready >= 3,
        "fewer than replicas - maxUnavailable = 3 ready pods: {fewest_ready} ({during:?})"
    );
    eprintln!(
        "rolling update of 3 pods: {rollout_ms} ms; requests through the Service: {ok} ok, {failed} failed; at most {most} pods, at least {fewest_ready} ready"
    );
    ensure!(ok > 0, "the client got answers during the rollout");
    // The goal is none (readiness gates new pods; the proxy skips an endpoint that refuses);
    // the bound keeps one unlucky connection from failing the suite.
    ensure!(
        failed * 100 <= ok,
        "{failed} of {} requests failed during the rollout",
        ok + failed
    );
    ensure!(image_of(&k)? == "miniku/busybox:v2", "the new image");
    let rs_table = k.ok(&["get", "rs", "-l", "app=web"])?;
    ensure!(
        rs_table.lines().count() == 4,
        "three ReplicaSets, one per template:\n{rs_table}"
    );

    // History and undo: revision 1 (created), 2 (the readiness probe), 3 (v2).
    let out = k.ok(&["rollout", "history", "deployment/web"])?;
    ensure!(
        out.contains("REVISION") && ["\n1 ", "\n2 ", "\n3 "].iter().all(|r| out.contains(r)),
        "history:\n{out}"
    );
    let out = k.ok(&["rollout", "history", "deployment/web", "--revision=3"])?;
    ensure!(out.contains("miniku/busybox:v2"), "revision 3:\n{out}");
    let out = k.ok(&["rollout", "undo", "deployment/web"])?;
    ensure!(out.contains("rolled back"), "{out}");
    rollout_status(&k)?;
    ensure!(image_of(&k)? == "miniku/busybox:latest", "undone");
    let out = k.ok(&["rollout", "history", "deployment/web"])?;
    ensure!(
        out.contains("\n3 ") && out.contains("\n4 ") && !out.contains("\n2 "),
        "revision 2 came back as 4:\n{out}"
    );
    k.ok(&["rollout", "undo", "deployment/web", "--to-revision=3"])?;
    rollout_status(&k)?;
    ensure!(image_of(&k)? == "miniku/busybox:v2", "back to revision 3");
    let (ok, text) = k.run(&["rollout", "undo", "deployment/web", "--to-revision=99"])?;
    ensure!(
        !ok && text.contains("unable to find specified revision 99"),
        "{text}"
    );

    // Scale.
    let out = k.ok(&["scale", "deployment", "web", "--replicas=5"])?;
    ensure!(out.contains("scaled"), "{out}");
    rollout_status(&k)?;
    let d = k.json(&["get", "deploy", "web"])?;
    ensure!(
        d["status"]["availableReplicas"] == 5 && d["status"]["updatedReplicas"] == 5,
        "scaled to 5: {}",
        d["status"]
    );

    // A rollout whose new pods never pass their readiness probe stalls within
    // maxUnavailable (25% of 5 = 1) and times out; the old pods keep serving.
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"progressDeadlineSeconds":8}}"#,
    ])?;
    rollout_status(&k)?;
    let mark = history.len();
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"busybox","readinessProbe":{"httpGet":null,"exec":{"command":["false"]}}}]}}}}"#,
    ])?;
    let (ok, text) = k.run(&["rollout", "status", "deployment/web", "--timeout=90s"])?;
    ensure!(
        !ok && text.contains("exceeded its progress deadline"),
        "a stalled rollout fails: {text}"
    );
    let d = k.json(&["get", "deploy", "web"])?;
    let progressing = d["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing")
        .cloned()
        .unwrap_or_default();
    ensure!(
        progressing["status"] == "False" && progressing["reason"] == "ProgressDeadlineExceeded",
        "Progressing: {progressing}"
    );
    let fewest_ready = history
        .since(mark)
        .iter()
        .map(|s| s.ready)
        .min()
        .unwrap_or(0);
    ensure!(
        fewest_ready >= 4 && d["status"]["availableReplicas"].as_i64() >= Some(4),
        "old pods kept serving: at least {fewest_ready} ready, {}",
        d["status"]
    );
    ensure!(http_get(&addr).await.is_some(), "the Service still answers");
    k.ok(&["rollout", "undo", "deployment/web"])?;
    rollout_status(&k)?;

    // Pause, restart refused while paused, resume.
    k.ok(&["rollout", "pause", "deployment/web"])?;
    let (ok, text) = k.run(&["rollout", "restart", "deployment/web"])?;
    ensure!(
        !ok && text.contains("paused"),
        "restart while paused: {text}"
    );
    k.ok(&[
        "set",
        "image",
        "deployment/web",
        "busybox=miniku/busybox:latest",
    ])?;
    let rs = k.json(&["get", "rs", "-l", "app=web"])?;
    let active = rs["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["spec"]["replicas"].as_i64() > Some(0))
        .count();
    ensure!(active == 1, "paused: no new ReplicaSet is rolled out");
    k.ok(&["rollout", "resume", "deployment/web"])?;
    rollout_status(&k)?;
    ensure!(image_of(&k)? == "miniku/busybox:latest", "resumed rollout");
    k.ok(&["rollout", "restart", "deployment/web"])?;
    rollout_status(&k)?;

    // Recreate: the old pods are all gone before a new one is made.
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}"#,
    ])?;
    rollout_status(&k)?;
    let mark = history.len();
    k.ok(&[
        "set",
        "image",
        "deployment/web",
        "busybox=miniku/busybox:v2",
    ])?;
    rollout_status(&k)?;
    let during = history.since(mark);
    let mixed = during.iter().find(|s| s.templates.len() > 1);
    ensure!(
        mixed.is_none(),
        "Recreate ran pods of two templates at once: {mixed:?}"
    );
    ensure!(
        during.iter().any(|s| s.pods == 0),
        "Recreate went through zero pods: {during:?}"
    );

    // Deleting the Deployment deletes its ReplicaSets and their pods.
    k.ok(&["delete", "deployment", "web"])?;
    wait_until(
        Duration::from_secs(60),
        "the ReplicaSets and pods to go",
        || {
            let rs = k
                .ok(&["get", "rs,pods", "-l", "app=web", "-o", "name"])
                .ok();
            async move { rs.filter(|o| o.trim().is_empty()).map(|_| ()) }
        },
    )
    .await
    .context("cascading delete")?;
    watch.abort();
    Ok(())
}
