//! Trust: with tokens configured, the store's client API, its peer API and the API server
//! refuse every request that lacks the token or carries a wrong one (401, JSON body, nothing
//! changed), while the control plane, given the token, works as usual. Without a token they
//! refuse to listen anywhere but on loopback.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{
    free_port, impostor_is_refused, wait_answers, wait_until, Process, StoreCluster, BIN,
};
use reqwest::Method;
use serde_json::{json, Value};

const TOKEN: &str = "client-token-0123456789";
const PEER_TOKEN: &str = "peer-secret-0123456789";

/// (method, path, body) of every store client route, mutating or not.
fn store_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::PUT, "/v1/kv/secret", None),
        (Method::GET, "/v1/kv/secret", None),
        (Method::DELETE, "/v1/kv/secret", None),
        (
            Method::POST,
            "/v1/txn",
            Some(json!({"success": [{"put": {"key": "secret", "value": "x"}}]})),
        ),
        (Method::POST, "/v1/lease", Some(json!({"ttl": 60}))),
        (Method::GET, "/v1/leases", None),
        (Method::POST, "/v1/lease/1/keepalive", None),
        (Method::DELETE, "/v1/lease/1", None),
        (Method::POST, "/v1/compact", Some(json!({"revision": 1}))),
        (Method::GET, "/v1/watch/secret", None),
        (Method::GET, "/v1/cluster", None),
        (
            Method::POST,
            "/v1/cluster/members",
            Some(json!({"id": 9, "peer_addr": "127.0.0.1:1"})),
        ),
        (Method::DELETE, "/v1/cluster/members/2", None),
        (Method::GET, "/v1/alarms", None),
        (Method::GET, "/metrics", None),
        (Method::GET, "/no/such/route", None),
    ]
}

async fn expect_401(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> Result<()> {
    let mut req = http
        .request(method.clone(), url)
        .timeout(Duration::from_secs(5));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.json(&b);
    } else if method == Method::PUT {
        req = req.body("stolen");
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let www = resp.headers().get("www-authenticate").cloned();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("{method} {url}: JSON body"))?;
    ensure!(
        status == 401 && body["error"] == "unauthorized" && www.is_some(),
        "{method} {url} with {auth:?}: {status} {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_refuses_requests_without_its_token_and_changes_nothing() -> Result<()> {
    let store = StoreCluster::start_secured(3, TOKEN, PEER_TOKEN).await?;
    let http = reqwest::Client::new();
    let good = format!("Bearer {TOKEN}");
    let revision = |http: reqwest::Client, url: String, auth: String| async move {
        let v: Value = http
            .get(url)
            .header("authorization", auth)
            .send()
            .await?
            .json()
            .await?;
        v["header"]["revision"]
            .as_i64()
            .context("no revision in the answer")
    };
    let m1 = store.member(1);
    let before = revision(http.clone(), m1.url("/v1/kv/secret"), good.clone()).await?;
    for m in &store.members {
        for (method, path, body) in store_routes() {
            let url = m.url(path);
            for auth in [None, Some("Bearer wrong-token-0123456789"), Some(TOKEN)] {
                expect_401(&http, method.clone(), &url, body.clone(), auth).await?;
            }
        }
        // Health checks stay open.
        let h = http.get(m.url("/health")).send().await?;
        ensure!(h.status().is_success(), "/health: {}", h.status());
    }
    // Nothing changed; with the token, everything works.
    let after = revision(http.clone(), m1.url("/v1/kv/secret"), good.clone()).await?;
    ensure!(before == after, "revision moved from {before} to {after}");
    let put = http
        .put(m1.url("/v1/kv/secret"))
        .header("authorization", &good)
        .body("ok")
        .send()
        .await?;
    ensure!(
        put.status().is_success(),
        "authorised put: {}",
        put.status()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_cannot_speak_raft_to_a_member() -> Result<()> {
    let store = StoreCluster::start_secured(3, TOKEN, PEER_TOKEN).await?;
    let leader = store.wait_leader(&[1, 2, 3]).await?;
    let http = reqwest::Client::new();
    let cluster = |id: u64| {
        let http = http.clone();
        let url = store.member(id).url("/v1/cluster");
        async move {
            let v: Value = http
                .get(url)
                .header("authorization", format!("Bearer {TOKEN}"))
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(v)
        }
    };
    let term = cluster(1).await?["term"].as_u64().context("term")?;
    for m in &store.members {
        for path in ["/raft/append", "/raft/vote", "/raft/snapshot", "/peer/call"] {
            let url = format!("http://127.0.0.1:{}{path}", m.peer_port);
            for auth in [None, Some("Bearer wrong-token-0123456789"), Some(TOKEN)] {
                let mut req = http.post(&url).body(vec![0u8; 64]);
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let status = req.send().await?.status().as_u16();
                ensure!(
                    status == 401,
                    "{path} on member {} with {auth:?}: {status}",
                    m.id
                );
            }
        }
    }
    // A peer stream (an HTTP upgrade on the peer port) opens only with the cluster's secret.
    let open_stream = |port: u16, auth: Option<&str>| {
        let mut req = http
            .get(format!("http://127.0.0.1:{port}/peer/stream"))
            .header("connection", "upgrade")
            .header("upgrade", "miniku-peer/1");
        if let Some(a) = auth {
            req = req.header("authorization", a.to_string());
        }
        async move { anyhow::Ok(req.send().await?.status().as_u16()) }
    };
    for m in &store.members {
        for auth in [None, Some("Bearer wrong-token-0123456789"), Some(TOKEN)] {
            let status = open_stream(m.peer_port, auth).await?;
            ensure!(
                status == 401,
                "/peer/stream on member {} with {auth:?}: {status}",
                m.id
            );
        }
    }
    let secret = format!("Bearer {PEER_TOKEN}");
    let status = open_stream(store.member(1).peer_port, Some(&secret)).await?;
    ensure!(status == 101, "the right secret opened no stream: {status}");
    // The same garbage with the secret gets past the guard (and is rejected as garbage):
    // the 401s above came from the missing secret, not from the body.
    let url = format!("http://127.0.0.1:{}/raft/vote", store.member(1).peer_port);
    let status = http
        .post(&url)
        .header("authorization", format!("Bearer {PEER_TOKEN}"))
        .body(vec![0u8; 64])
        .send()
        .await?
        .status()
        .as_u16();
    ensure!(status != 401, "the right secret was refused: {status}");
    // An impostor of member 2 (its own empty data, the wrong secret) campaigns: its vote
    // requests are refused and the cluster's term does not move.
    let wrong = store.tmp.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-cluster-secret-0123")?;
    let credentials = ["--peer-token-file".into(), wrong.into_os_string()];
    impostor_is_refused(
        &store,
        store.tmp.path(),
        &credentials,
        "HTTP 401 Unauthorized",
    )
    .await?;
    let v = cluster(leader).await?;
    ensure!(
        v["leader_id"].as_u64() == Some(leader) && v["term"].as_u64() == Some(term),
        "the cluster changed: {v}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_without_a_token_listen_only_on_loopback() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let run = |args: Vec<String>| {
        Command::new(BIN)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
    };
    let store = run(vec![
        "store".into(),
        "--id".into(),
        "1".into(),
        "--data-dir".into(),
        dir.path().join("s").display().to_string(),
        "--client-addr".into(),
        format!("0.0.0.0:{port}"),
        "--peer-addr".into(),
        format!("127.0.0.1:{}", free_port()),
        "--initial-cluster".into(),
        "1=127.0.0.1:1".into(),
    ])?;
    let err = String::from_utf8_lossy(&store.stderr);
    ensure!(
        !store.status.success() && err.contains("--token-file"),
        "store on 0.0.0.0 without a token: {err}"
    );
    let api = run(vec![
        "apiserver".into(),
        "--listen".into(),
        format!("0.0.0.0:{port}"),
    ])?;
    let err = String::from_utf8_lossy(&api.stderr);
    ensure!(
        !api.status.success() && err.contains("--token-file"),
        "API server on 0.0.0.0 without a token: {err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_needs_its_token_and_the_control_plane_uses_the_stores() -> Result<()> {
    let store = StoreCluster::start_secured(3, TOKEN, PEER_TOKEN).await?;
    let token_file = store.tmp.path().join("client.token");
    let api_token_file = store.tmp.path().join("api.token");
    std::fs::write(&api_token_file, "api-token-0123456789abcdef")?;
    let api_port = free_port();
    let stores = store.endpoints().join(",");
    let spawn = |args: &[&str], log: &str| {
        Process::spawn(
            Command::new(BIN)
                .args(args)
                .args(["--store", &stores, "--store-token-file"])
                .arg(&token_file),
            &store.tmp.path().join(log),
        )
    };
    let listen = format!("127.0.0.1:{api_port}");
    let api_token = api_token_file.display().to_string();
    let children = vec![
        spawn(
            &["apiserver", "--listen", &listen, "--token-file", &api_token],
            "api.log",
        )?,
        spawn(
            &["controller-manager", "--leader-lease-secs", "3"],
            "cm.log",
        )?,
    ];
    let result = async {
        let http = reqwest::Client::new();
        let url = |p: &str| format!("http://{listen}{p}");
        wait_answers(&url("/health"), "the API server").await?;
        let rs = json!({"name": "web", "desiredCount": 2, "selector": {"app": "web"},
                        "template": {"image": "nginx:latest", "labels": {"app": "web"}}});
        for (method, path) in [
            (Method::POST, "/replicasets"),
            (Method::GET, "/replicasets"),
            (Method::PUT, "/replicasets/web"),
            (Method::DELETE, "/replicasets/web"),
            (Method::GET, "/pods"),
            (Method::DELETE, "/pods/x"),
            (Method::GET, "/nodes"),
        ] {
            for auth in [None, Some("Bearer wrong-token-0123456789")] {
                expect_401(&http, method.clone(), &url(path), Some(rs.clone()), auth).await?;
            }
        }
        let bearer = "Bearer api-token-0123456789abcdef";
        let list: Value = http
            .get(url("/replicasets"))
            .header("authorization", bearer)
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            list == json!([]),
            "a refused POST created something: {list}"
        );
        let created = http
            .post(url("/replicasets"))
            .header("authorization", bearer)
            .json(&rs)
            .send()
            .await?;
        ensure!(
            created.status() == 201,
            "authorised POST: {}",
            created.status()
        );
        // The controller manager reaches the store with the store's token: pods appear.
        wait_until(Duration::from_secs(30), "2 pods", || {
            let (http, u) = (http.clone(), url("/pods"));
            async move {
                let pods: Value = http
                    .get(u)
                    .header("authorization", bearer)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (pods.as_array()?.len() == 2).then_some(())
            }
        })
        .await
    }
    .await;
    drop(children);
    result
}
