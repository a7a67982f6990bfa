//! `kubectl logs` end to end: the real kubectl against real Docker containers, through the
//! API server's `pods/log` and the kubelet's own server, which wants the API server's
//! credential on every route.
//!
//! Checked on what kubectl prints: logs, `--tail`, `--limit-bytes`, `--timestamps`,
//! `--since`, `-f` (lines arrive as the container writes them), `-c` on a pod of two
//! containers, `--previous` after a crash and after a failed liveness probe; Kubernetes' errors (a pod waiting to start, no
//! host assigned, a missing pod or container, several containers and none named, a kubelet
//! that is down); and a stranger on the kubelet's port, refused on every route.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::kubectl::Kubectl;
use common::{docker_ready, wait_until, ControlPlane};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

const TOKEN: &str = "kubelet-credential-0123456789abcdef";

#[tokio::test]
async fn kubectl_logs_reads_containers_through_their_kubelet() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let node = format!("logs-{}", std::process::id());
    let (mut cp, _cleanup, _dir) = ControlPlane::with_kubelet_credential(
        TOKEN,
        &node,
        &["--backoff-initial-ms", "1000", "--backoff-max-ms", "2000"],
    )
    .await?;
    let k = Kubectl::new(cp.url(""))?;
    let result = scenario(&mut cp, &k, &node).await;
    if result.is_err() {
        eprintln!("{}", cp.logs());
    }
    result
}

/// The phase and restart count of pod `name`.
fn pod_state(k: &Kubectl, name: &str) -> Option<(String, i64)> {
    let v = k.json(&["get", "pod", name]).ok()?;
    let phase = v["status"]["phase"].as_str()?.to_string();
    let restarts = v["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(0);
    Some((phase, restarts))
}

async fn wait_running(k: &Kubectl, name: &str) -> Result<()> {
    wait_until(
        Duration::from_secs(60),
        &format!("pod {name} Running"),
        || async { (pod_state(k, name)?.0 == "Running").then_some(()) },
    )
    .await
}

/// Runs kubectl; Ok(what it printed) when it failed, as expected.
fn fails(k: &Kubectl, args: &[&str]) -> Result<String> {
    let (ok, out) = k.run(args)?;
    ensure!(!ok, "kubectl {args:?} succeeded:\n{out}");
    Ok(out)
}

async fn scenario(cp: &mut ControlPlane, k: &Kubectl, node: &str) -> Result<()> {
    let pid = std::process::id();
    // The node records where its kubelet listens.
    let n = cp.get(&format!("/api/v1/nodes/{node}")).await?;
    let port = n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .context("no kubelet port in the Node")?;
    ensure!(
        n["status"]["addresses"][0]
            == serde_json::json!({"type": "InternalIP", "address": "127.0.0.1"}),
        "{n}"
    );
    let kubelet = format!("http://127.0.0.1:{port}");
    let discovery = k.ok(&["get", "--raw", "/api/v1"])?;
    ensure!(discovery.contains("\"pods/log\""), "{discovery}");

    // A container that says three things, then ticks every second.
    let talker = format!("talker-{pid}");
    k.ok(&[
        "run",
        &talker,
        "--image=miniku/busybox:latest",
        "--",
        "sh",
        "-c",
        "echo one; echo two; echo three; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done",
    ])?;
    wait_running(k, &talker).await?;
    let all = wait_until(Duration::from_secs(10), "the first ticks", || async {
        let out = k.ok(&["logs", &talker]).ok()?;
        out.contains("tick 2").then_some(out)
    })
    .await?;
    ensure!(all.starts_with("one\ntwo\nthree\ntick 1\n"), "{all}");
    let tail = k.ok(&["logs", &talker, "--tail=2"])?;
    ensure!(
        tail.lines().count() == 2 && tail.lines().all(|l| l.starts_with("tick ")),
        "--tail=2:\n{tail}"
    );
    let limited = k.ok(&["logs", &talker, "--limit-bytes=6"])?;
    ensure!(limited == "one\ntw", "--limit-bytes=6: {limited:?}");
    let stamped = k.ok(&["logs", &talker, "--timestamps", "--tail=1"])?;
    let (stamp, line) = stamped.trim_end().split_once(' ').context("no timestamp")?;
    ensure!(
        chrono::DateTime::parse_from_rfc3339(stamp).is_ok() && line.starts_with("tick "),
        "--timestamps: {stamped:?}"
    );
    let since = k.ok(&["logs", &talker, "--since=1h"])?;
    ensure!(since.starts_with("one\n"), "--since=1h:\n{since}");

    // -f: lines arrive as the container writes them.
    let seen: u64 = k
        .ok(&["logs", &talker, "--tail=1"])?
        .trim()
        .strip_prefix("tick ")
        .and_then(|n| n.parse().ok())
        .context("a tick")?;
    let mut follow = k
        .command(&["logs", "-f", &talker])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = follow.stdout.take().context("kubectl's stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let later = format!("tick {}", seen + 3);
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(l) = lines.next_line().await? {
            if l == later {
                return Ok(());
            }
        }
        anyhow::bail!("kubectl logs -f ended before {later:?}")
    })
    .await
    .with_context(|| format!("kubectl logs -f did not show {later:?} within 20 s"))??;
    follow.kill().await?;

    // A pod of two containers: -c picks one; without it the API answers Kubernetes' 400.
    let two = format!("two-{pid}");
    k.apply(
        "two.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {two}}}
spec:
  containers:
  - {{name: a, image: miniku/busybox:latest, command: [sh, -c, "echo I am a; sleep 3600"]}}
  - {{name: b, image: miniku/busybox:latest, command: [sh, -c, "echo I am b; sleep 3600"]}}
"#
        ),
    )?;
    wait_running(k, &two).await?;
    let b = wait_until(Duration::from_secs(10), "b's line", || async {
        let out = k.ok(&["logs", &two, "-c", "b"]).ok()?;
        out.contains("I am b").then_some(out)
    })
    .await?;
    ensure!(b == "I am b\n", "logs -c b: {b:?}");
    let a = k.ok(&["logs", &two])?;
    ensure!(a.contains("I am a") && !a.contains("I am b"), "{a}");
    let resp = reqwest::get(cp.url(&format!("/api/v1/namespaces/default/pods/{two}/log"))).await?;
    ensure!(resp.status() == 400, "{}", resp.status());
    let status: Value = resp.json().await?;
    ensure!(
        status["kind"] == "Status"
            && status["reason"] == "BadRequest"
            && status["message"]
                == format!(
                    "a container name must be specified for pod {two}, choose one of: [a b]"
                ),
        "{status}"
    );

    // --previous after a crash: the container that ran before the restart.
    let crash = format!("crash-{pid}");
    k.ok(&[
        "run",
        &crash,
        "--image=miniku/busybox:latest",
        "--",
        "sh",
        "-c",
        "echo ran as $HOSTNAME; sleep 4; exit 3",
    ])?;
    let out = fails(k, &["logs", &talker, "--previous"])?;
    ensure!(
        out.contains(&format!(
            "previous terminated container \"{talker}\" in pod \"{talker}\" not found"
        )),
        "{out}"
    );
    let (previous, current) = wait_until(
        Duration::from_secs(60),
        "a restarted container and its previous one",
        || async {
            let (phase, restarts) = pod_state(k, &crash)?;
            if phase != "Running" || restarts < 1 {
                return None;
            }
            let previous = k.ok(&["logs", &crash, "--previous"]).ok()?;
            let current = k.ok(&["logs", &crash]).ok()?;
            (previous.starts_with("ran as ")
                && current.starts_with("ran as ")
                && previous != current)
                .then_some((previous, current))
        },
    )
    .await?;
    println!("previous: {previous}current: {current}");

    // A container restarted by its liveness probe is kept as the previous one too.
    let unwell = format!("unwell-{pid}");
    k.apply(
        "unwell.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {unwell}}}
spec:
  containers:
  - name: c
    image: miniku/busybox:latest
    command: [sh, -c, "echo ran as $HOSTNAME; sleep 3600"]
    livenessProbe:
      exec: {{command: ["false"]}}
      initialDelaySeconds: 4
      periodSeconds: 1
      failureThreshold: 1
"#
        ),
    )?;
    wait_until(
        Duration::from_secs(60),
        "a container restarted by its liveness probe, and its previous one",
        || async {
            let (phase, restarts) = pod_state(k, &unwell)?;
            if phase != "Running" || restarts < 1 {
                return None;
            }
            let previous = k.ok(&["logs", &unwell, "--previous"]).ok()?;
            let current = k.ok(&["logs", &unwell]).ok()?;
            (previous.starts_with("ran as ")
                && current.starts_with("ran as ")
                && previous != current)
                .then_some(())
        },
    )
    .await?;

    // Kubernetes' errors.
    let badimg = format!("badimg-{pid}");
    k.ok(&["run", &badimg, "--image=nosuch/image:1"])?;
    let waiting = wait_until(Duration::from_secs(30), "a failed pull", || async {
        let (ok, out) = k.run(&["logs", &badimg]).ok()?;
        (!ok && out.contains("is waiting to start")).then_some(out)
    })
    .await?;
    ensure!(
        waiting.contains(&format!(
            "Error from server (BadRequest): container \"{badimg}\" in pod \"{badimg}\" is waiting to start: "
        )),
        "{waiting}"
    );
    let nowhere = format!("nowhere-{pid}");
    k.apply(
        "nowhere.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {nowhere}}}
spec:
  nodeSelector: {{no-such-label: "x"}}
  containers: [{{name: c, image: miniku/busybox:latest}}]
"#
        ),
    )?;
    let out = fails(k, &["logs", &nowhere])?;
    ensure!(
        out.contains(&format!(
            "Error from server (BadRequest): pod {nowhere} does not have a host assigned"
        )),
        "{out}"
    );
    // kubectl reads the pod first, and says so in its own words.
    let out = fails(k, &["logs", "no-such-pod"])?;
    ensure!(
        out.contains("(NotFound): pods \"no-such-pod\" not found"),
        "{out}"
    );
    let resp = reqwest::get(cp.url("/api/v1/namespaces/default/pods/no-such-pod/log")).await?;
    ensure!(resp.status() == 404, "{}", resp.status());
    let status: Value = resp.json().await?;
    ensure!(status["reason"] == "NotFound", "{status}");
    // kubectl checks the name itself too; the API answers Kubernetes' 400.
    let out = fails(k, &["logs", &talker, "-c", "nope"])?;
    ensure!(
        out.contains(&format!("container nope is not valid for pod {talker}")),
        "{out}"
    );
    let resp = reqwest::get(cp.url(&format!(
        "/api/v1/namespaces/default/pods/{talker}/log?container=nope"
    )))
    .await?;
    ensure!(resp.status() == 400, "{}", resp.status());
    let status: Value = resp.json().await?;
    ensure!(
        status["reason"] == "BadRequest"
            && status["message"] == format!("container nope is not valid for pod {talker}"),
        "{status}"
    );

    // A stranger on the kubelet's port is refused on every route, known or not.
    let http = reqwest::Client::new();
    let logs_path = format!("/containerLogs/default/{talker}/{talker}");
    for (method, path) in [
        ("GET", logs_path.as_str()),
        ("GET", "/"),
        ("GET", "/pods"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("POST", "/exec/default/x/y"),
        ("GET", "/containerLogs/default/x/y?follow=true"),
        ("DELETE", logs_path.as_str()),
    ] {
        let url = format!("{kubelet}{path}");
        let method: reqwest::Method = method.parse()?;
        for auth in [None, Some("Bearer not-the-credential-at-all")] {
            let mut req = http.request(method.clone(), &url);
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let resp = req.send().await?;
            let code = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or_default();
            ensure!(
                code == 401 && body["kind"] == "Status" && body["reason"] == "Unauthorized",
                "{method} {path} with {auth:?}: {code} {body}"
            );
        }
    }
    let with_credential = |path: String| {
        http.get(format!("{kubelet}{path}"))
            .bearer_auth(TOKEN)
            .send()
    };
    let resp = with_credential(logs_path.clone()).await?;
    ensure!(resp.status() == 200, "{}", resp.status());
    ensure!(resp.text().await?.starts_with("one\n"));
    // Only the pods bound to its node: another node's pod is not found there.
    let elsewhere = format!("elsewhere-{pid}");
    k.apply(
        "elsewhere.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {elsewhere}}}
spec:
  nodeName: another-node-{pid}
  containers: [{{name: c, image: miniku/busybox:latest}}]
"#
        ),
    )?;
    wait_until(
        Duration::from_secs(10),
        "the kubelet to refuse another node's pod",
        || async {
            let resp = with_credential(format!("/containerLogs/default/{elsewhere}/c"))
                .await
                .ok()?;
            let code = resp.status().as_u16();
            let body: Value = resp.json().await.ok()?;
            (code == 404 && body["message"] == format!("pods \"{elsewhere}\" not found"))
                .then_some(())
        },
    )
    .await?;

    // A kubelet that is down: 503, naming its node.
    if let Some(kubelet) = cp.components.iter_mut().rev().find(|c| c.name == "kubelet") {
        kubelet.kill();
    }
    let out = fails(k, &["logs", &talker])?;
    ensure!(
        out.contains(&format!(
            "Error from server (ServiceUnavailable): the kubelet of node \"{node}\""
        )) && out.contains("is not reachable"),
        "{out}"
    );
    Ok(())
}
