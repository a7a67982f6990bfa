//! The control plane against a real three-member store, as real processes: the seed's curl
//! flow, scaling, cascading delete, leader election without overshoot, node loss, the
//! scheduler's spreading and filtering, resumable watches and bad input.
//!
//! Nodes here are registered directly in the store with a heartbeat lease the test keeps
//! alive (the kubelet's own tests cover the kubelet side).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use common::{wait_until, ControlPlane, Process};
use futures::StreamExt;
use miniku::api::{Node, NodeLease, NodeStatus, Resources};
use miniku_store::client::{PutOptions, StoreClient};
use miniku_store::sse;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// A node written straight into the store, alive while its heartbeat task runs.
struct FakeNode {
    heartbeat: JoinHandle<()>,
}

impl FakeNode {
    /// Stops the heartbeat: the store lease expires after its TTL.
    fn stop(&self) {
        self.heartbeat.abort();
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

async fn register_node(
    client: &StoreClient,
    name: &str,
    cpu: u64,
    labels: &[(&str, &str)],
) -> Result<FakeNode> {
    let ttl = 2;
    let lease = client.lease_grant(ttl).await?.id;
    let hb = NodeLease {
        name: name.into(),
        lease_id: lease,
        ttl_seconds: ttl,
        renew_seconds: 1,
        resource_version: 0,
    };
    client
        .put(
            format!("/registry/nodeleases/{name}").as_bytes(),
            &serde_json::to_vec(&hb)?,
            PutOptions {
                lease,
                prev_kv: false,
            },
        )
        .await?;
    let node = Node {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        capacity: Resources {
            cpu,
            memory: 8 << 30,
        },
        max_pods: 110,
        status: NodeStatus::Ready,
        unschedulable: false,
        reason: String::new(),
        resource_version: 0,
        stored: None,
    };
    client
        .put(
            format!("/registry/nodes/{name}").as_bytes(),
            &miniku::registry::Object::to_stored(&node).map_err(anyhow::Error::msg)?,
            PutOptions::default(),
        )
        .await?;
    let c = client.clone();
    let heartbeat = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let _ = c.lease_keepalive(lease).await;
        }
    });
    Ok(FakeNode { heartbeat })
}

async fn post(cp: &ControlPlane, path: &str, body: &Value) -> Result<(u16, Value)> {
    let resp = reqwest::Client::new()
        .post(cp.url(path))
        .json(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

async fn put(cp: &ControlPlane, path: &str, body: &Value) -> Result<(u16, Value)> {
    let resp = reqwest::Client::new()
        .put(cp.url(path))
        .json(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

fn rs_body(name: &str, count: i64) -> Value {
    json!({"name": name, "desiredCount": count, "selector": {"app": name}, "template": {"image": "nginx:latest"}})
}

async fn pods_of(cp: &ControlPlane, app: &str) -> Result<Vec<Value>> {
    let v = cp.get(&format!("/pods?selector=app={app}")).await?;
    v.as_array()
        .cloned()
        .ok_or_else(|| anyhow!("not a list: {v}"))
}

/// Waits until `check` holds on the pods of `app`.
async fn wait_pods(
    cp: &ControlPlane,
    app: &str,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>> {
    let r = wait_until(Duration::from_secs(40), what, || async {
        let pods = pods_of(cp, app).await.ok()?;
        check(&pods).then_some(pods)
    })
    .await;
    r.map_err(|e| anyhow!("{e}\n{}", cp.logs()))
}

fn client(cp: &ControlPlane) -> Result<StoreClient> {
    Ok(StoreClient::new(cp.store.endpoints())?)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_transcript_works_with_its_json_shapes() -> Result<()> {
    let cp = ControlPlane::start(&[]).await?;
    let out = std::process::Command::new("curl")
        .args(["-s", "-X", "POST", &cp.url("/replicasets"), "-d"])
        .arg(r#"{"name":"nginx","desiredCount":3,"selector":{"app":"nginx"},"template":{"image":"nginx:latest"}}"#)
        .output()
        .context("running curl")?;
    let created: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).to_string())?;
    // The seed's fields, exactly.
    ensure!(created["name"] == "nginx", "{created}");
    ensure!(
        created["desiredCount"] == 3 && created["currentCount"] == 0,
        "{created}"
    );
    ensure!(created["selector"] == json!({"app": "nginx"}), "{created}");
    ensure!(
        created["template"]["name"] == "" && created["template"]["image"] == "nginx:latest",
        "{created}"
    );
    ensure!(
        created["resourceVersion"].as_i64().is_some_and(|v| v > 0),
        "{created}"
    );

    wait_until(
        Duration::from_secs(30),
        "currentCount to reach 3",
        || async {
            let list = cp.get("/replicasets").await.ok()?;
            (list[0]["currentCount"] == 3).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow!("{e}\n{}", cp.logs()))?;
    let list = cp.get("/replicasets").await?;
    ensure!(list.as_array().map(Vec::len) == Some(1), "{list}");
    ensure!(
        list[0]["name"] == "nginx" && list[0]["desiredCount"] == 3,
        "{list}"
    );

    let pods = cp.get("/pods").await?;
    let pods = pods.as_array().context("pods list")?;
    ensure!(pods.len() == 3, "{pods:?}");
    for p in pods {
        let name = p["spec"]["name"].as_str().context("pod name")?;
        ensure!(
            name.len() == "nginx-".len() + 8 && name.starts_with("nginx-"),
            "{name}"
        );
        ensure!(
            name["nginx-".len()..]
                .chars()
                .all(|c| c.is_ascii_hexdigit()),
            "{name}"
        );
        ensure!(
            p["spec"]["image"] == "nginx:latest" && p["spec"]["labels"] == json!({"app": "nginx"}),
            "{p}"
        );
        ensure!(p["status"] == "Pending", "{p}");
        ensure!(
            p["retry_count"] == 0 && p["next_retry_at"] == "0001-01-01T00:00:00Z",
            "{p}"
        );
        ensure!(
            p["owner"]["name"] == "nginx" && p["resourceVersion"].is_i64(),
            "{p}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_up_down_and_cascading_delete() -> Result<()> {
    let cp = ControlPlane::start(&[]).await?;
    let c = client(&cp)?;
    let _a = register_node(&c, "node-a", 4000, &[]).await?;
    let (status, _) = post(&cp, "/replicasets", &rs_body("web", 2)).await?;
    ensure!(status == 201);
    wait_pods(&cp, "web", "2 bound pods", |p| {
        p.len() == 2 && p.iter().all(|p| p["spec"]["node_name"] == "node-a")
    })
    .await?;
    let (status, v) = put(&cp, "/replicasets/web", &rs_body("web", 5)).await?;
    ensure!(status == 200 && v["desiredCount"] == 5, "{status} {v}");
    wait_pods(&cp, "web", "5 pods", |p| p.len() == 5).await?;
    // A stale resourceVersion is refused.
    let mut stale = rs_body("web", 1);
    stale["resourceVersion"] = json!(1);
    let (status, v) = put(&cp, "/replicasets/web", &stale).await?;
    ensure!(status == 409 && v["error"] == "conflict", "{status} {v}");
    let (status, _) = put(&cp, "/replicasets/web", &rs_body("web", 1)).await?;
    ensure!(status == 200);
    wait_pods(&cp, "web", "1 pod", |p| p.len() == 1).await?;
    // A deleted pod is replaced.
    let pods = pods_of(&cp, "web").await?;
    let victim = pods[0]["spec"]["name"]
        .as_str()
        .context("name")?
        .to_string();
    let resp = reqwest::Client::new()
        .delete(cp.url(&format!("/pods/{victim}")))
        .send()
        .await?;
    ensure!(resp.status() == 200);
    wait_pods(&cp, "web", "a replacement pod", |p| {
        p.len() == 1 && p[0]["spec"]["name"] != victim.as_str()
    })
    .await?;
    // Deleting the ReplicaSet deletes its pods.
    let resp = reqwest::Client::new()
        .delete(cp.url("/replicasets/web"))
        .send()
        .await?;
    ensure!(resp.status() == 200);
    wait_pods(&cp, "web", "no pods", |p| p.is_empty()).await?;
    let resp = reqwest::get(cp.url("/replicasets/web")).await?;
    ensure!(resp.status() == 404);
    Ok(())
}

/// A controller manager that loses its lease (the store lost its quorum for longer than the
/// lease) stops its work and campaigns again in the same process: afterwards it still acts.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_loses_its_lease_campaigns_again_and_acts() -> Result<()> {
    let mut cp = ControlPlane::start(&[]).await?;
    let c = client(&cp)?;
    let _node = register_node(&c, "node-a", 4000, &[]).await?;
    let (status, _) = post(&cp, "/replicasets", &rs_body("before", 1)).await?;
    ensure!(status == 201);
    wait_pods(&cp, "before", "1 pod", |p| p.len() == 1).await?;
    // Two of three members gone: no quorum, no lease renewals.
    cp.store.kill(2);
    cp.store.kill(3);
    wait_until(
        Duration::from_secs(30),
        "the controller manager to notice it lost its lease",
        || async { cp.logs().contains("lost leadership").then_some(()) },
    )
    .await?;
    cp.store.spawn(2)?;
    cp.store.spawn(3)?;
    cp.store.wait_leader(&[1, 2, 3]).await?;
    let (status, _) = post(&cp, "/replicasets", &rs_body("after", 2)).await?;
    ensure!(status == 201, "{status}");
    wait_pods(
        &cp,
        "after",
        "2 pods made by the re-elected controller manager",
        |p| p.len() == 2,
    )
    .await?;
    let cm = cp
        .components
        .iter_mut()
        .find(|c| c.name == "controller-manager")
        .ok_or_else(|| anyhow!("no controller manager"))?;
    ensure!(
        cm.process.as_mut().is_some_and(|p| !p.has_exited()),
        "the controller manager exited"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_controller_managers_never_overshoot() -> Result<()> {
    let mut cp = ControlPlane::start(&[]).await?;
    let second = cp.spawn(
        "controller-manager-2",
        &["controller-manager", "--leader-lease-secs", "3"],
    )?;
    let c = client(&cp)?;
    // Count pods of the ReplicaSet at every event, from before it exists.
    let start = c
        .get(b"/registry/", Default::default())
        .await?
        .header
        .revision
        + 1;
    let mut watch = c.watch(
        b"/registry/pods/",
        miniku_store::client::WatchOptions {
            prefix: true,
            start_revision: start,
            ..Default::default()
        },
    );
    let (status, _) = post(&cp, "/replicasets", &rs_body("ha", 10)).await?;
    ensure!(status == 201);
    let mut live: BTreeMap<String, ()> = BTreeMap::new();
    let mut max_seen = 0;
    let mut deletions = 0;
    let mut killed_leader = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while deletions < 6 {
        let msg = tokio::time::timeout_at(deadline, watch.next())
            .await
            .map_err(|_| {
                anyhow!(
                    "timed out after {deletions} deletions, {} live\n{}",
                    live.len(),
                    cp.logs()
                )
            })?
            .context("watch ended")??;
        for e in msg.events {
            let key = e.kv.key.to_string_lossy();
            match e.kind {
                miniku_store::api::EventType::Put => {
                    live.insert(key, ());
                }
                miniku_store::api::EventType::Delete => {
                    live.remove(&key);
                }
            }
        }
        max_seen = max_seen.max(live.len());
        ensure!(
            live.len() <= 10,
            "overshoot: {} pods at revision {}",
            live.len(),
            msg.header.revision
        );
        if live.len() == 10 {
            // Converged: disturb it. Kill the leading controller manager once, midway.
            if deletions == 3 && !killed_leader {
                let holder = c
                    .get(b"/registry/leaders/controller-manager", Default::default())
                    .await?;
                let who = holder
                    .kvs
                    .first()
                    .context("a controller manager must hold the lock")?
                    .value
                    .to_string_lossy();
                let pid: u32 = who
                    .rsplit('-')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .context("identity ends with the pid")?;
                let leader = cp
                    .components
                    .iter()
                    .position(|c| c.process.as_ref().map(Process::pid) == Some(pid))
                    .context("the lock holder is one of ours")?;
                ensure!(cp.components[leader].name.starts_with("controller-manager"));
                cp.components[leader].kill();
                killed_leader = true;
            }
            let victim = live.keys().next().cloned().context("a pod")?;
            c.delete(victim.as_bytes(), Default::default()).await?;
            deletions += 1;
        }
    }
    ensure!(max_seen == 10);
    // The standby took over: the set is whole again.
    wait_pods(&cp, "ha", "10 pods after the leader died", |p| {
        p.len() == 10
    })
    .await?;
    ensure!(second > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_of_a_lost_node_are_replaced_on_another() -> Result<()> {
    let cp = ControlPlane::start(&["--pod-eviction-timeout-secs", "2"]).await?;
    let c = client(&cp)?;
    let a = register_node(&c, "node-a", 4000, &[]).await?;
    let (status, _) = post(&cp, "/replicasets", &rs_body("lost", 3)).await?;
    ensure!(status == 201);
    wait_pods(&cp, "lost", "3 pods on node-a", |p| {
        p.len() == 3 && p.iter().all(|p| p["spec"]["node_name"] == "node-a")
    })
    .await?;
    let _b = register_node(&c, "node-b", 4000, &[]).await?;
    a.stop();
    wait_until(
        Duration::from_secs(20),
        "node-a to become NotReady",
        || async {
            let n = cp.get("/nodes/node-a").await.ok()?;
            (n["status"] == "NotReady").then_some(())
        },
    )
    .await?;
    wait_pods(&cp, "lost", "3 pods on node-b", |p| {
        p.len() == 3 && p.iter().all(|p| p["spec"]["node_name"] == "node-b")
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduler_spreads_evenly_and_waits_for_room() -> Result<()> {
    let cp = ControlPlane::start(&[]).await?;
    let c = client(&cp)?;
    let mut nodes = Vec::new();
    for i in 0..5 {
        nodes.push(register_node(&c, &format!("n{i}"), 64_000, &[]).await?);
    }
    let (status, _) = post(&cp, "/replicasets", &rs_body("spread", 100)).await?;
    ensure!(status == 201);
    let pods = wait_pods(&cp, "spread", "100 bound pods", |p| {
        p.len() == 100 && p.iter().all(|p| p["spec"]["node_name"] != "")
    })
    .await?;
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for p in &pods {
        *per_node
            .entry(p["spec"]["node_name"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    let (lo, hi) = (
        per_node.values().min().copied(),
        per_node.values().max().copied(),
    );
    ensure!(
        per_node.len() == 5 && hi.zip(lo).is_some_and(|(h, l)| h - l <= 1),
        "uneven: {per_node:?}"
    );

    // A pod asking for more cpu than any node has waits with a reason...
    let mut big = rs_body("big", 1);
    big["template"]["resources"] = json!({"cpu": 100_000});
    let (status, v) = post(&cp, "/replicasets", &big).await?;
    ensure!(status == 201, "{v}");
    let pods = wait_pods(&cp, "big", "an Unschedulable reason", |p| {
        p.len() == 1 && p[0]["reason"] == "Unschedulable"
    })
    .await?;
    ensure!(
        pods[0]["spec"]["node_name"] == ""
            && pods[0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Insufficient cpu")),
        "{:?}",
        pods[0]
    );
    // ...and is bound as soon as a big enough node appears.
    let _huge = register_node(&c, "huge", 200_000, &[]).await?;
    wait_pods(&cp, "big", "the big pod bound to the big node", |p| {
        p.len() == 1 && p[0]["spec"]["node_name"] == "huge"
    })
    .await?;
    Ok(())
}

/// Reads SSE messages until `n` non-bookmark events arrived.
async fn read_frames(resp: reqwest::Response, n: usize) -> Result<Vec<sse::Frame>> {
    common::read_frames(resp, n, Duration::from_secs(20), |f| {
        f.event.as_deref() != Some("BOOKMARK")
    })
    .await
}

/// Reads SSE messages `(event, data)` until `n` non-bookmark events arrived.
async fn read_events(resp: reqwest::Response, n: usize) -> Result<Vec<(String, Value)>> {
    read_frames(resp, n)
        .await?
        .into_iter()
        .map(|f| Ok((f.event.unwrap_or_default(), serde_json::from_str(&f.data)?)))
        .collect()
}

/// The initial ADDED events carry the list's revision as their id, so an EventSource that
/// reconnects with the last id it saw (`Last-Event-ID`) gets exactly the changes after the
/// list: none twice, none lost.
#[tokio::test(flavor = "multi_thread")]
async fn an_api_watch_resumes_from_last_event_id_after_the_initial_list() -> Result<()> {
    let cp = ControlPlane::start(&[]).await?;
    for name in ["a", "b", "c"] {
        let (status, _) = post(&cp, "/replicasets", &rs_body(name, 0)).await?;
        ensure!(status == 201);
    }
    // `a` changed last: its own resourceVersion is the highest, though it is listed first.
    let (status, _) = put(&cp, "/replicasets/a", &rs_body("a", 0)).await?;
    ensure!(status == 200);
    // The first watch: three ADDED events; remember the last id.
    let resp = reqwest::get(cp.url("/replicasets?watch=true")).await?;
    let initial = read_frames(resp, 3).await?;
    ensure!(
        initial.iter().all(|f| f.event.as_deref() == Some("ADDED")),
        "{initial:?}"
    );
    let ids: Vec<i64> = initial
        .iter()
        .filter_map(|f| f.id.as_deref()?.parse().ok())
        .collect();
    ensure!(
        ids.len() >= 3 && ids.windows(2).all(|w| w[0] <= w[1]),
        "ids of the initial events go backwards: {ids:?}"
    );
    let last = *ids.last().context("an id")?;
    // A change while disconnected, then a reconnect with Last-Event-ID.
    let (status, changed) = put(&cp, "/replicasets/b", &rs_body("b", 0)).await?;
    ensure!(status == 200);
    let resp = reqwest::Client::new()
        .get(cp.url("/replicasets?watch=true"))
        .header("Last-Event-ID", last.to_string())
        .send()
        .await?;
    ensure!(resp.status() == 200);
    let events = read_events(resp, 1).await?;
    ensure!(
        events[0].0 == "MODIFIED"
            && events[0].1["object"]["name"] == "b"
            && events[0].1["object"]["resourceVersion"] == changed["resourceVersion"],
        "{events:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_resumed_from_a_resource_version_sees_every_change_once() -> Result<()> {
    let cp = ControlPlane::start(&[]).await?;
    let (_, created) = post(&cp, "/replicasets", &rs_body("w", 0)).await?;
    let rv = created["resourceVersion"].as_i64().context("rv")?;
    for n in 1..=3 {
        let (status, _) = put(&cp, "/replicasets/w", &rs_body("w", n)).await?;
        ensure!(status == 200);
        // Scaling creates pods; wait for the controller to settle so counts stay simple.
        wait_pods(&cp, "w", "pods", |p| p.len() == n as usize).await?;
    }
    let resp =
        reqwest::get(cp.url(&format!("/replicasets?watch=true&resourceVersion={rv}"))).await?;
    ensure!(resp.status() == 200);
    let events = read_events(resp, 3).await?;
    // Every change after rv, in order: the three scalings (and the controller's status
    // writes, which change currentCount) — each resourceVersion once, increasing.
    let rvs: Vec<i64> = events
        .iter()
        .filter_map(|(_, d)| d["object"]["resourceVersion"].as_i64())
        .collect();
    ensure!(
        rvs.windows(2).all(|w| w[0] < w[1]) && rvs[0] > rv,
        "{events:?}"
    );
    ensure!(
        events
            .iter()
            .all(|(e, d)| e == "MODIFIED" && d["type"] == "MODIFIED"),
        "{events:?}"
    );
    // A compacted resourceVersion answers 410.
    let c = client(&cp)?;
    let now = c
        .get(b"/registry/", Default::default())
        .await?
        .header
        .revision;
    c.compact(now).await?;
    let resp =
        reqwest::get(cp.url(&format!("/replicasets?watch=true&resourceVersion={rv}"))).await?;
    ensure!(resp.status() == 410, "{}", resp.status());
    let body: Value = resp.json().await?;
    ensure!(body["error"] == "gone", "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_4xx_and_writes_nothing() -> Result<()> {
    let cp = ControlPlane::start(&[]).await?;
    let http = reqwest::Client::new();
    let (status, _) = post(&cp, "/replicasets", &rs_body("taken", 0)).await?;
    ensure!(status == 201);
    let url = cp.url("/replicasets");
    let long = "a".repeat(55);
    let cases: Vec<(reqwest::RequestBuilder, u16, Option<&str>)> = vec![
        (http.post(&url).header("content-type", "application/json").body("{\"name\":"), 400, Some("body")),
        (http.post(&url).json(&json!({"name": "x", "desiredCount": 1, "selector": {"app": "x"}, "template": {"image": "i"}, "colour": 1})), 400, None),
        (http.post(&url).json(&json!({"name": "x", "desiredCount": "three", "selector": {"app": "x"}, "template": {"image": "i"}})), 400, Some("desiredCount")),
        (http.post(&url).json(&json!({"name": "x", "desiredCount": 1, "selector": {"app": "x"}, "template": {}})), 400, Some("template.image")),
        (http.post(&url).json(&json!({"name": "Bad_Name", "desiredCount": 1, "selector": {"app": "x"}, "template": {"image": "i"}})), 400, Some("name")),
        (http.post(&url).json(&rs_body(&long, 1)), 400, Some("name")),
        (http.post(&url).json(&rs_body("neg", -1)), 400, Some("desiredCount")),
        (http.post(&url).json(&rs_body("huge", 1_000_000)), 400, Some("desiredCount")),
        (http.post(&url).json(&json!({"name": "x", "desiredCount": 1, "selector": {"app": "x"}, "template": {"image": "i", "labels": {"app": "y"}}})), 400, Some("template.labels.app")),
        (http.post(&url).json(&json!({"name": "x", "desiredCount": 1, "selector": {}, "template": {"image": "i"}})), 400, Some("selector")),
        (http.post(&url).header("content-type", "application/json").body(format!("{{\"name\":\"{}\"}}", "x".repeat(2 << 20))), 413, None),
        (http.post(&url).header("content-type", "text/xml").body("<rs/>"), 415, None),
        (http.post(&url).json(&rs_body("taken", 1)), 409, Some("name")),
        (http.get(cp.url("/replicasets/missing")), 404, None),
        (http.put(cp.url("/replicasets/missing")).json(&rs_body("missing", 1)), 404, None),
        (http.delete(cp.url("/pods/missing")), 404, None),
        (http.get(cp.url("/nodes/missing")), 404, None),
        (http.get(cp.url("/pods?selector=novalue")), 400, Some("selector")),
        (http.get(cp.url("/pods?watch=maybe")), 400, Some("watch")),
        (http.get(cp.url("/nothing")), 404, None),
        (http.patch(cp.url("/replicasets")), 405, None),
    ];
    for (i, (req, want, field)) in cases.into_iter().enumerate() {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body: Value =
            serde_json::from_str(&text).with_context(|| format!("case {i}: not JSON: {text}"))?;
        ensure!(
            status == want,
            "case {i}: expected {want}, got {status}: {body}"
        );
        ensure!(
            body["error"].is_string() && body["message"].is_string(),
            "case {i}: {body}"
        );
        if let Some(f) = field {
            ensure!(body["field"] == f, "case {i}: expected field {f}: {body}");
        }
    }
    // Nothing was half-written: only the first ReplicaSet exists.
    let list = cp.get("/replicasets").await?;
    ensure!(list.as_array().map(Vec::len) == Some(1), "{list}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn hollow_kubelets_run_pods_and_report_running() -> Result<()> {
    let mut cp = ControlPlane::start(&[]).await?;
    for n in ["hollow-a", "hollow-b"] {
        cp.spawn(
            n,
            &[
                "kubelet",
                "--node-name",
                n,
                "--runtime",
                "fake",
                "--lease-ttl-secs",
                "3",
            ],
        )?;
    }
    let (status, _) = post(&cp, "/replicasets", &rs_body("hollow", 6)).await?;
    ensure!(status == 201);
    let pods = wait_pods(&cp, "hollow", "6 Running pods", |p| {
        p.len() == 6
            && p.iter().all(|p| {
                p["status"] == "Running"
                    && p["container_id"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("fake"))
            })
    })
    .await?;
    let nodes: std::collections::BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p["spec"]["node_name"].as_str())
        .collect();
    ensure!(nodes.len() == 2, "{nodes:?}");
    let list = wait_until(
        Duration::from_secs(20),
        "currentCount and readyCount 6",
        || async {
            let rs = cp.get("/replicasets/hollow").await.ok()?;
            (rs["currentCount"] == 6 && rs["readyCount"] == 6).then_some(rs)
        },
    )
    .await?;
    ensure!(list["desiredCount"] == 6);
    let nodes = cp.get("/nodes").await?;
    ensure!(
        nodes
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|n| n["status"] == "Ready")),
        "{nodes}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_registry_refuses_writes_once_leadership_moves() -> Result<()> {
    use miniku::registry::{Fence, Registry, RegistryError};
    let store = common::StoreCluster::start(3).await?;
    store.wait_leader(&[1, 2, 3]).await?;
    let c = StoreClient::new(store.endpoints())?;
    let key = "/registry/leaders/test-fence";
    let won = c.put(key.as_bytes(), b"me", PutOptions::default()).await?;
    let registry = Registry::new(c.clone());
    let fenced = registry.fenced(Fence {
        key: key.into(),
        create_revision: won.header.revision,
    });
    let node = |name: &str| Node {
        name: name.into(),
        labels: BTreeMap::new(),
        capacity: Resources {
            cpu: 1000,
            memory: 1 << 30,
        },
        max_pods: 10,
        status: NodeStatus::Ready,
        unschedulable: false,
        reason: String::new(),
        resource_version: 0,
        stored: None,
    };
    let mut created = fenced.create(&node("fenced-a")).await?;
    created.unschedulable = true;
    let created = fenced.update(&created).await?;
    // A failed precondition is still told apart from a lost fence.
    let stale = Node {
        resource_version: 1,
        ..created.clone()
    };
    assert!(matches!(
        fenced.update(&stale).await,
        Err(RegistryError::Conflict { .. })
    ));
    // Another instance takes over: the key is deleted and created again.
    c.delete(key.as_bytes(), Default::default()).await?;
    c.put(key.as_bytes(), b"other", PutOptions::default())
        .await?;
    let refused = fenced.create(&node("fenced-b")).await;
    assert!(
        matches!(refused, Err(RegistryError::Fenced(_))),
        "{refused:?}"
    );
    assert!(matches!(
        fenced.update(&created).await,
        Err(RegistryError::Fenced(_))
    ));
    assert!(matches!(
        fenced.delete::<Node>("fenced-a", 0).await,
        Err(RegistryError::Fenced(_))
    ));
    // Nothing was written by the refused calls; an unfenced registry still writes.
    assert!(registry.get::<Node>("fenced-b").await.is_err());
    assert!(registry.get::<Node>("fenced-a").await?.unschedulable);
    registry.delete::<Node>("fenced-a", 0).await?;
    Ok(())
}
