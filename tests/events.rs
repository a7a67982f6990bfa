//! Events end to end, through the real kubectl, on a Docker kubelet: a pod whose container
//! crashes again and again and a pod whose image cannot be pulled, then `kubectl describe
//! pod` and `kubectl get events` (a field selector, `--sort-by`, `-w`) show what the
//! scheduler, the kubelet and the ReplicaSet controller said, in Kubernetes' words. Repeats
//! are one event with a count, not a flood; every event is attached to a store lease (it
//! expires); the seed's API streams them as Server-Sent Events.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::kubectl::Kubectl;
use common::{docker_ready, read_frames, wait_until, ControlPlane};
use miniku_store::client::{GetOptions, StoreClient};
use serde_json::Value;

/// The events about object `name`, as `kubectl get events -o json` lists them.
fn events_of(k: &Kubectl, name: &str) -> Result<Vec<Value>> {
    let out = k.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "json",
    ])?;
    let v: Value = serde_json::from_str(&out).context("kubectl's JSON")?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

fn count_of(events: &[Value], reason: &str) -> i64 {
    events
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["count"].as_i64().unwrap_or(1))
        .sum()
}

#[tokio::test]
async fn kubectl_shows_what_happened_to_a_crashing_pod_and_a_missing_image() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let mut cp = ControlPlane::start(&[]).await?;
    let node = format!("events-{}", std::process::id());
    // Restarts come back within a second or two, so the crash loop shows quickly.
    let _cleanup = cp
        .spawn_docker_kubelet(
            &node,
            &["--backoff-initial-ms", "500", "--backoff-max-ms", "1000"],
        )
        .await?;
    let k = Kubectl::new(cp.url(""))?;
    let result = scenario(&cp, &k, &node).await;
    if result.is_err() {
        eprintln!("{}", cp.logs());
    }
    result
}

async fn scenario(cp: &ControlPlane, k: &Kubectl, node: &str) -> Result<()> {
    // Container names follow pod names on the one engine: names of this run's own.
    let crash = format!("crash-{}", std::process::id());
    let badimg = format!("badimg-{}", std::process::id());
    k.ok(&[
        "run",
        &crash,
        "--image=miniku/busybox:latest",
        "--",
        "sh",
        "-c",
        "echo boom; exit 3",
    ])?;
    k.ok(&["run", &badimg, "--image=nosuch/image:1"])?;

    // The crash loop: started and backed off at least three times.
    let crashes = wait_until(Duration::from_secs(90), "three crashes", || async {
        let e = events_of(k, &crash).ok()?;
        (count_of(&e, "BackOff") >= 3 && count_of(&e, "Started") >= 3).then_some(e)
    })
    .await?;
    // One event object per kind of thing said, however often it was said.
    for reason in ["Scheduled", "Pulled", "Created", "Started", "BackOff"] {
        let n = crashes.iter().filter(|e| e["reason"] == reason).count();
        ensure!(
            n == 1,
            "{n} {reason} events for the crashing pod: {crashes:#?}"
        );
    }
    let described = k.ok(&["describe", "pod", &crash])?;
    let events_section = described
        .split("Events:")
        .nth(1)
        .context("no Events section")?;
    for line in [
        format!("Successfully assigned default/{crash} to {node}"),
        "Container image \"miniku/busybox:latest\" already present on machine".to_string(),
        format!("Created container: {crash}"),
        format!("Started container {crash}"),
        format!("Back-off restarting failed container {crash} in pod {crash}_default("),
    ] {
        ensure!(
            events_section.contains(&line),
            "describe pod lacks {line:?}:\n{events_section}"
        );
    }
    ensure!(
        events_section.contains("Warning  BackOff") && events_section.contains("(x"),
        "the BackOff line is not a Warning with its repeats counted:\n{events_section}"
    );

    // The image that cannot be pulled: Pulling, Failed, BackOff.
    wait_until(Duration::from_secs(60), "a failed pull", || async {
        let e = events_of(k, &badimg).ok()?;
        (count_of(&e, "Failed") >= 1 && count_of(&e, "BackOff") >= 1).then_some(())
    })
    .await?;
    let described = k.ok(&["describe", "pod", &badimg])?;
    for line in [
        "Pulling image \"nosuch/image:1\"",
        "Failed to pull image \"nosuch/image:1\": ",
        "Back-off pulling image \"nosuch/image:1\"",
    ] {
        ensure!(
            described.contains(line),
            "describe pod badimg lacks {line:?}:\n{described}"
        );
    }

    // The table kubectl prints, sorted by time.
    let table = k.ok(&["get", "events", "--sort-by=.lastTimestamp"])?;
    ensure!(
        table.starts_with("LAST SEEN   TYPE      REASON")
            && table.contains(&format!("pod/{crash}"))
            && table.contains("Warning   BackOff"),
        "kubectl get events:\n{table}"
    );
    let sorted = k.ok(&[
        "get",
        "events",
        "--sort-by=.lastTimestamp",
        "-o",
        "jsonpath={.items[*].lastTimestamp}",
    ])?;
    let times: Vec<&str> = sorted.split_whitespace().collect();
    ensure!(
        times.len() >= 8 && times.windows(2).all(|w| w[0] <= w[1]),
        "not sorted by lastTimestamp: {times:?}"
    );

    // Every event lives on a store lease (it expires after an hour).
    let store = StoreClient::new(
        cp.store
            .endpoints()
            .iter()
            .map(|e| format!("http://{e}"))
            .collect(),
    )?;
    let kvs = store
        .get(
            b"/registry/events/",
            GetOptions {
                prefix: true,
                ..Default::default()
            },
        )
        .await?
        .kvs;
    ensure!(
        !kvs.is_empty() && kvs.iter().all(|kv| kv.lease != 0),
        "events without a lease: {:?}",
        kvs.iter()
            .filter(|kv| kv.lease == 0)
            .map(|kv| kv.key.to_string_lossy())
            .collect::<Vec<_>>()
    );

    // A watch sees the next thing that happens: deleting the pod stops its container.
    let mut watch = Command::new("kubectl")
        .args([
            "--server",
            &cp.url(""),
            "get",
            "events",
            "-w",
            "--field-selector",
            &format!("involvedObject.name={crash},reason=Killing"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("kubectl get events -w")?;
    let stdout = watch.stdout.take().context("kubectl's output")?;
    let (lines, seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    // The seed's SSE stream of events, from now on.
    let rv = cp.get("/events").await?;
    ensure!(
        rv.as_array().is_some_and(|a| !a.is_empty()),
        "GET /events: {rv}"
    );
    let sse = reqwest::get(cp.url("/events?watch=true")).await?;
    ensure!(
        sse.status().is_success(),
        "GET /events?watch=true: {}",
        sse.status()
    );
    // `-w` lists first, then watches: the Killing event shows whether it lands before or
    // after kubectl's watch begins.
    k.ok(&["delete", "pod", &crash, "--wait=false"])?;
    let killing = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match seen.recv_timeout(left) {
                Ok(line) if line.contains("Killing") => return Some(line),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await?;
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();
    let line = killing.context("kubectl get events -w printed no Killing event")?;
    ensure!(
        line.contains(&format!("pod/{crash}"))
            && line.contains(&format!("Stopping container {crash}")),
        "{line}"
    );
    let frames = read_frames(sse, 1, Duration::from_secs(30), |f| {
        f.data.contains("\"Killing\"")
    })
    .await?;
    ensure!(
        frames[0].event.as_deref() == Some("ADDED"),
        "{:?}",
        frames[0]
    );
    Ok(())
}
