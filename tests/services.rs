//! Services end to end, through the real kubectl: a ReplicaSet of two busybox httpd pods on
//! a Docker kubelet, `kubectl expose rs ... --type NodePort`, the endpoints controller's
//! EndpointSlice, and `miniku proxy` forwarding `127.0.0.1:<nodePort>` to the pods round
//! robin; a deleted pod stops receiving connections once it leaves the slice; scaling to 0
//! leaves nothing to forward to; deleting the Service closes its node port. Also
//! `kubectl create service nodeport` and `kubectl apply` of a Service, node port clashes and
//! ranges with Kubernetes' messages. Measures (printed): requests/s through the proxy against
//! straight to a pod, the proxy's RSS idle and loaded, and the time from a pod leaving the
//! slice to the proxy's last connection to it. All traffic goes to this test's own
//! containers, in bounded loops.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::kubectl::{http_get as get, Kubectl};
use common::{docker_ready, wait_until, ControlPlane};
use serde_json::Value;
use tokio::net::TcpStream;

const REPLICASET: &str = r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: httpd
        image: miniku/busybox:latest
        ports:
        - {name: http, containerPort: 8080}
        # Each pod answers with its hostname (its container's short id).
        command: ["sh", "-c", "hostname > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"]
"#;

/// `requests` GETs of `addr` from `clients` concurrent clients; (successes, seconds taken).
async fn load(addr: &str, clients: usize, requests: usize) -> (usize, f64) {
    let start = Instant::now();
    let per = requests / clients;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let addr = addr.to_string();
        tasks.spawn(async move {
            let mut ok = 0;
            for _ in 0..per {
                if get(&addr).await.is_some() {
                    ok += 1;
                }
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        ok += r.unwrap_or(0);
    }
    (ok, start.elapsed().as_secs_f64())
}

/// The process's resident memory in KiB: all of it, and the anonymous part (heap and
/// stacks, without the mapped binary).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// The pods of the ReplicaSet that run and are ready: name → (IP, hostname = short id).
fn ready_pods(k: &Kubectl) -> Result<BTreeMap<String, (String, String)>> {
    let list = k.json(&["get", "pods", "-l", "app=web"])?;
    let mut out = BTreeMap::new();
    for p in list["items"].as_array().into_iter().flatten() {
        let ready = p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let ip = p["status"]["podIP"].as_str().unwrap_or("");
        let id = p["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap_or("");
        let short: String = id
            .trim_start_matches("docker://")
            .chars()
            .take(12)
            .collect();
        if ready && !ip.is_empty() && p["metadata"]["deletionTimestamp"].is_null() {
            let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
            out.insert(name, (ip.to_string(), short));
        }
    }
    Ok(out)
}

/// The ready addresses of the Service's slice.
fn slice_addresses(k: &Kubectl, service: &str) -> Result<BTreeSet<String>> {
    let list = k.json(&[
        "get",
        "endpointslices",
        "-l",
        &format!("kubernetes.io/service-name={service}"),
    ])?;
    let mut out = BTreeSet::new();
    for s in list["items"].as_array().into_iter().flatten() {
        for e in s["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"] == true {
                for a in e["addresses"].as_array().into_iter().flatten() {
                    out.insert(a.as_str().unwrap_or("").to_string());
                }
            }
        }
    }
    Ok(out)
}

// kubectl runs as a blocking child process: a second worker keeps the background client going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_port_services_reach_their_ready_pods_through_the_proxy() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let mut cp = ControlPlane::start(&[]).await?;
    let node = format!("svc-{}", std::process::id());
    let _cleanup = cp.spawn_docker_kubelet(&node, &[]).await?;
    let proxy = cp.spawn("proxy", &["proxy", "--listen-address", "127.0.0.1"])?;
    let proxy_pid = cp.components[proxy]
        .process
        .as_ref()
        .map(|p| p.pid())
        .unwrap_or(0);
    let mut result = scenario(&cp, proxy_pid).await;
    if result.is_ok() {
        result = stops_on_sigterm(&mut cp, proxy).await;
    }
    if result.is_err() {
        eprintln!("{}", cp.logs());
    }
    result
}

/// SIGTERM: the proxy closes its node ports and exits within the components' 10 s grace.
async fn stops_on_sigterm(cp: &mut ControlPlane, proxy: usize) -> Result<()> {
    let process = cp.components[proxy]
        .process
        .as_mut()
        .context("the proxy process")?;
    process.signal("-TERM")?;
    let started = Instant::now();
    wait_until(Duration::from_secs(10), "the proxy to exit", || {
        let exited = process.has_exited();
        async move { exited.then_some(()) }
    })
    .await?;
    let log = std::fs::read_to_string(&cp.components[proxy].log)?;
    ensure!(
        log.contains("proxy stopped; node ports closed"),
        "the proxy stopped cleanly:\n{log}"
    );
    eprintln!(
        "proxy exited {} ms after SIGTERM",
        started.elapsed().as_millis()
    );
    Ok(())
}

async fn scenario(cp: &ControlPlane, proxy_pid: u32) -> Result<()> {
    let k = Kubectl::new(cp.url(""))?;
    k.apply("rs.yaml", REPLICASET)?;
    let pods = wait_until(Duration::from_secs(60), "two ready httpd pods", || {
        let pods = ready_pods(&k).ok();
        async move { pods.filter(|p| p.len() == 2) }
    })
    .await?;

    // kubectl expose reads the ReplicaSet's selector.
    k.expose_node_port("rs", "web")?;
    let table = k.ok(&["get", "svc", "web"])?;
    ensure!(
        table.starts_with("NAME")
            && ["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
                .iter()
                .all(|c| table.contains(c))
            && table.contains("NodePort")
            && table.contains("<none>"),
        "kubectl get svc:\n{table}"
    );
    let svc = k.json(&["get", "svc", "web"])?;
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap_or(0);
    ensure!(
        (30000..=32767).contains(&node_port),
        "an allocated node port: {svc}"
    );
    ensure!(
        table.contains(&format!("80:{node_port}/TCP")),
        "PORT(S) shows the node port:\n{table}"
    );
    let want: BTreeSet<String> = pods.values().map(|(ip, _)| ip.clone()).collect();
    wait_until(
        Duration::from_secs(30),
        "the slice to list both pods",
        || {
            let got = slice_addresses(&k, "web").ok();
            let want = want.clone();
            async move { (got? == want).then_some(()) }
        },
    )
    .await?;
    let described = k.ok(&["describe", "svc", "web"])?;
    eprintln!("kubectl describe svc web:\n{described}");
    ensure!(
        described.contains("NodePort:") && described.contains(&node_port.to_string()),
        "kubectl describe svc:\n{described}"
    );
    let slices = k.ok(&["get", "endpointslices"])?;
    ensure!(
        slices.contains("ADDRESSTYPE") && slices.contains("IPv4") && slices.contains("8080"),
        "kubectl get endpointslices:\n{slices}"
    );

    // Through the proxy: every request answered, both pods reached.
    let addr = format!("127.0.0.1:{node_port}");
    let hosts = wait_until(Duration::from_secs(10), "the proxy to answer", || {
        let addr = addr.clone();
        async move { get(&addr).await }
    })
    .await?;
    let mut seen = BTreeSet::from([hosts]);
    for _ in 0..10 {
        let body = get(&addr)
            .await
            .context("a request through the proxy failed")?;
        seen.insert(body);
    }
    let all_hosts: BTreeSet<String> = pods.values().map(|(_, h)| h.clone()).collect();
    ensure!(
        seen == all_hosts,
        "round robin reaches both pods: saw {seen:?}, pods {all_hosts:?}"
    );

    // Measured: the same client straight to a pod and through the proxy.
    let rss_idle = rss_kib(proxy_pid);
    let direct_addr = format!(
        "{}:8080",
        pods.values()
            .next()
            .map(|p| p.0.clone())
            .unwrap_or_default()
    );
    // Alternating rounds, so that both see the same machine (it is shared and noisy).
    let (mut direct, mut proxied) = ((0, 0.0), (0, 0.0));
    for _ in 0..4 {
        let (ok, secs) = load(&direct_addr, 4, 500).await;
        direct = (direct.0 + ok, direct.1 + secs);
        let (ok, secs) = load(&addr, 4, 500).await;
        proxied = (proxied.0 + ok, proxied.1 + secs);
    }
    let rss_loaded = rss_kib(proxy_pid);
    ensure!(
        direct.0 == 2000 && proxied.0 == 2000,
        "every request answered: direct {}, proxy {}",
        direct.0,
        proxied.0
    );
    let (direct_rps, proxy_rps) = (2000.0 / direct.1, 2000.0 / proxied.1);
    eprintln!(
        "MEASURED requests/s (4 clients, 4 alternating rounds of 500 GETs each way, a new connection each): direct {direct_rps:.0}, through the proxy {proxy_rps:.0}, ratio {:.2}",
        proxy_rps / direct_rps
    );
    eprintln!(
        "MEASURED proxy RSS (total, anonymous): idle {rss_idle:?} KiB, after the load {rss_loaded:?} KiB"
    );

    // A deleted pod leaves the slice, and then gets no new connection.
    let (gone_name, (gone_ip, gone_host)) = pods
        .iter()
        .next()
        .map(|(n, p)| (n.clone(), p.clone()))
        .context("a pod")?;
    let client_addr = addr.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_client = stop.clone();
    let gone = gone_host.clone();
    // A client requesting throughout (bounded), noting when it last reached the pod.
    let client = tokio::spawn(async move {
        let mut last_hit: Option<Instant> = None;
        let mut failures = 0;
        for _ in 0..20_000 {
            if stop_client.load(Ordering::Relaxed) {
                break;
            }
            match get(&client_addr).await {
                Some(body) if body == gone => last_hit = Some(Instant::now()),
                Some(_) => {}
                None => failures += 1,
            }
        }
        (last_hit, failures)
    });
    let deleted_at = Instant::now();
    let deleted_wall = chrono::Utc::now();
    k.ok(&["delete", "pod", &gone_name, "--wait=false"])?;
    wait_until(
        Duration::from_secs(30),
        "the deleted pod to leave the slice",
        || {
            let got = slice_addresses(&k, "web").ok();
            let gone_ip = gone_ip.clone();
            async move { got.filter(|g| !g.contains(&gone_ip)).map(|_| ()) }
        },
    )
    .await?;
    let left_slice = Instant::now();
    // A second's more traffic, then look at when the pod was last reached.
    let mut after = 0;
    for _ in 0..200 {
        if get(&addr).await.is_some_and(|b| b == gone_host) {
            after += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (last_hit, failures) = client.await?;
    ensure!(
        after == 0,
        "{after} connections reached the deleted pod after it left the slice"
    );
    let after = |t0: Instant| match last_hit {
        Some(t) if t > t0 => format!("{} ms", (t - t0).as_millis()),
        Some(_) => "none".to_string(),
        None => "never reached at all".to_string(),
    };
    eprintln!(
        "MEASURED last connection to the deleted pod after `kubectl delete pod` was issued: {}; after this test saw the slice without it: {}; failed requests meanwhile: {failures}",
        after(deleted_at),
        after(left_slice)
    );
    ensure!(
        last_hit.is_some(),
        "the client reached the pod before it was deleted"
    );
    // From the components' logs: when the controller wrote the slice without the pod, and
    // when the proxy swapped that listener's endpoints (it routes by them from then on).
    let written = first_log_after(
        cp,
        "controller-manager",
        "endpoint slice updated",
        deleted_wall,
    );
    let applied = first_log_after(cp, "proxy", "endpoints changed", deleted_wall);
    if let (Some(w), Some(a)) = (written, applied) {
        eprintln!(
            "MEASURED pod deleted -> slice written: {} ms; slice written -> proxy stops routing to it: {} ms",
            (w - deleted_wall).num_milliseconds(),
            (a - w).num_milliseconds()
        );
    }

    // Scale to 0: the slice empties and the node port answers nothing.
    k.ok(&["scale", "rs", "web", "--replicas=0"])?;
    wait_until(Duration::from_secs(30), "the slice to empty", || {
        let got = slice_addresses(&k, "web").ok();
        async move { got.filter(BTreeSet::is_empty).map(|_| ()) }
    })
    .await?;
    wait_until(
        Duration::from_secs(5),
        "the proxy to forward nowhere",
        || {
            let addr = addr.clone();
            async move { get(&addr).await.is_none().then_some(()) }
        },
    )
    .await?;

    // kubectl create service nodeport with a requested port; a clash and a bad range are
    // refused with Kubernetes' messages; kubectl apply of a Service.
    let requested = if node_port == 32000 { 32001 } else { 32000 };
    k.ok(&[
        "create",
        "service",
        "nodeport",
        "other",
        "--tcp=80:8080",
        &format!("--node-port={requested}"),
    ])?;
    let other = k.json(&["get", "svc", "other"])?;
    ensure!(
        other["spec"]["ports"][0]["nodePort"] == requested,
        "the requested node port is honoured: {other}"
    );
    let (ok, text) = k.run(&[
        "create",
        "service",
        "nodeport",
        "clash",
        "--tcp=80:8080",
        &format!("--node-port={requested}"),
    ])?;
    ensure!(
        !ok && text.contains("provided port is already allocated"),
        "a clash is refused: {text}"
    );
    let (ok, text) = k.run(&[
        "create",
        "service",
        "nodeport",
        "low",
        "--tcp=80:8080",
        "--node-port=80",
    ])?;
    ensure!(
        !ok && text.contains(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "out of range is refused: {text}"
    );
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: applied}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
"#;
    k.apply("svc.yaml", yaml)?;
    let applied = k.json(&["get", "svc", "applied"])?;
    let applied_port = applied["spec"]["ports"][0]["nodePort"].clone();
    ensure!(applied_port.is_i64(), "{applied}");
    // Applying again keeps the allocated port; UDP is refused.
    k.apply("svc.yaml", yaml)?;
    let again = k.json(&["get", "svc", "applied"])?;
    ensure!(
        again["spec"]["ports"][0]["nodePort"] == applied_port,
        "apply keeps the node port: {again}"
    );
    let (ok, text) = k.run(&[
        "patch",
        "svc",
        "applied",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/ports/0/protocol","value":"UDP"}]"#,
    ])?;
    ensure!(
        !ok && text.contains("supported values: \"TCP\""),
        "UDP is refused: {text}"
    );
    // Concurrent creates each get a node port of their own (the API server picks at random
    // and picks again when a concurrent create took its pick first); a collection delete
    // frees them all.
    let http = reqwest::Client::new();
    let url = cp.url("/api/v1/namespaces/default/services");
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (http, url) = (http.clone(), url.clone());
        creates.spawn(async move {
            let body = serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("many-{i}"), "labels": {"batch": "many"}},
                "spec": {"type": "NodePort", "ports": [{"port": 80}]},
            });
            let resp = http.post(&url).json(&body).send().await?;
            let status = resp.status();
            let v: Value = resp.json().await?;
            ensure!(status.as_u16() == 201, "{status}: {v}");
            v["spec"]["ports"][0]["nodePort"]
                .as_i64()
                .context("an allocated node port")
        });
    }
    let mut ports = BTreeSet::new();
    while let Some(r) = creates.join_next().await {
        ports.insert(r??);
    }
    ensure!(ports.len() == 20, "20 distinct node ports: {ports:?}");
    k.ok(&["delete", "svc", "-l", "batch=many"])?;
    let reused = ports.iter().next().copied().unwrap_or(0);
    k.ok(&[
        "create",
        "service",
        "nodeport",
        "reuse",
        "--tcp=80:8080",
        &format!("--node-port={reused}"),
    ])?;
    k.ok(&["delete", "svc", "reuse"])?;

    // EndpointSlices are the controller's: writes are refused.
    let (ok, text) = k.run(&["delete", "endpointslice", "web"])?;
    ensure!(!ok, "deleting a slice is refused: {text}");

    // Deleting the Service closes its node port, and frees it for another Service.
    k.ok(&["delete", "svc", "web", "other", "applied"])?;
    wait_until(Duration::from_secs(10), "the node port to close", || {
        let addr = addr.clone();
        async move { TcpStream::connect(&addr).await.is_err().then_some(()) }
    })
    .await?;
    k.ok(&[
        "create",
        "service",
        "nodeport",
        "again",
        "--tcp=80:8080",
        &format!("--node-port={requested}"),
    ])?;
    wait_until(
        Duration::from_secs(30),
        "the slices of deleted Services to go",
        || {
            let got = k.json(&["get", "endpointslices"]).ok();
            async move {
                let names: Vec<String> = got?["items"]
                    .as_array()?
                    .iter()
                    .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_string))
                    .collect();
                names.iter().all(|n| n == "again").then_some(())
            }
        },
    )
    .await?;
    k.ok(&["delete", "svc", "again"])?;
    k.ok(&["delete", "rs", "web"])?;
    if failures > 0 {
        bail_if_many(failures)?;
    }
    Ok(())
}

/// The time of the first line of `component`'s log that contains `what`, logged after
/// `after` (tracing's timestamps, colours stripped).
fn first_log_after(
    cp: &ControlPlane,
    component: &str,
    what: &str,
    after: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let c = cp.components.iter().find(|c| c.name == component)?;
    let text = std::fs::read_to_string(&c.log).ok()?;
    text.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let plain: String = strip_ansi(l);
            let ts = plain.split_whitespace().next()?;
            chrono::DateTime::parse_from_rfc3339(ts)
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc))
        })
        .find(|t| *t >= after)
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Connections that fail while a pod is deleted come from the pod's container stopping
/// before the slice drops it (Miniku deletes pods without a grace period in the API):
/// noted, not fatal, unless most failed.
fn bail_if_many(failures: usize) -> Result<()> {
    if failures > 1000 {
        bail!("{failures} requests failed while one of two pods was deleted");
    }
    Ok(())
}
