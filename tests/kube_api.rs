//! The Kubernetes API at the HTTP level, against a real store and API server: each kind of
//! bad input gets the Status (reason and code) kube-apiserver answers and writes nothing;
//! watches follow Kubernetes' resourceVersion semantics, bookmarks, timeouts and the 410
//! `Expired` ERROR event; PATCH in its three content types.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::ControlPlane;
use futures::StreamExt;
use serde_json::{json, Value};

const RS: &str = "/apis/apps/v1/namespaces/default/replicasets";

fn replicaset(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "miniku/busybox:latest"}]}}}
    })
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// Sends a request; returns the status and the JSON body.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Value)> {
        let resp = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let v = serde_json::from_str(&text)
            .with_context(|| format!("{method} {path}: {status}, not JSON: {text}"))?;
        Ok((status, v))
    }

    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value)> {
        self.send(
            method,
            path,
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    }

    async fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.send(reqwest::Method::GET, path, "application/json", Vec::new())
            .await
    }

    /// The first `n` lines of a watch (or fewer if it ends within `within`).
    async fn watch_lines(&self, path: &str, n: usize, within: Duration) -> Result<Vec<Value>> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await?;
        ensure!(resp.status() == 200, "watch {path}: {}", resp.status());
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        let read = async {
            while let Some(chunk) = body.next().await {
                buf.extend_from_slice(&chunk?);
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    lines.push(serde_json::from_slice::<Value>(&line)?);
                    if lines.len() >= n {
                        return anyhow::Ok(());
                    }
                }
            }
            Ok(())
        };
        let _ = tokio::time::timeout(within, read).await;
        Ok(lines)
    }
}

/// Checks an answer is a Status with `reason` and `code`.
fn status_is(what: &str, got: &(u16, Value), code: u16, reason: &str) -> Result<()> {
    let (status, body) = got;
    ensure!(
        *status == code
            && body["kind"] == "Status"
            && body["reason"] == reason
            && body["code"] == code,
        "{what}: wanted {code} {reason}, got {status} {body}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_kubernetes_status_errors_and_writes_nothing() -> Result<()> {
    let cp = ControlPlane::start(&[]).await?;
    let api = Api {
        http: reqwest::Client::new(),
        base: cp.url(""),
    };
    use reqwest::Method;
    let created = api.json(Method::POST, RS, &replicaset("web", 0)).await?;
    ensure!(created.0 == 201, "{created:?}");

    let malformed = api
        .send(Method::POST, RS, "application/json", b"{\"kind\":".to_vec())
        .await?;
    status_is("malformed JSON", &malformed, 400, "BadRequest")?;
    let media = api
        .send(Method::POST, RS, "text/plain", b"{}".to_vec())
        .await?;
    status_is("a text/plain body", &media, 415, "UnsupportedMediaType")?;
    let big = api
        .send(Method::POST, RS, "application/json", vec![b' '; 2 << 20])
        .await?;
    status_is("a 2 MiB body", &big, 413, "RequestEntityTooLarge")?;
    let kind = api
        .json(
            Method::POST,
            RS,
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}),
        )
        .await?;
    status_is("a pod posted as a ReplicaSet", &kind, 400, "BadRequest")?;
    let invalid = api.json(Method::POST, RS, &replicaset("bad", -3)).await?;
    status_is("negative replicas", &invalid, 422, "Invalid")?;
    ensure!(
        invalid.1["details"]["causes"][0]["field"] == "spec.replicas",
        "{invalid:?}"
    );
    let unknown = api
        .json(
            Method::POST,
            &format!("{RS}?fieldValidation=Strict"),
            &json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "strict"},
                    "spec": {"bogus": 1}}),
        )
        .await?;
    status_is("an unknown field under Strict", &unknown, 400, "BadRequest")?;
    ensure!(
        unknown.1["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field \"spec.bogus\"")),
        "{unknown:?}"
    );
    let exists = api.json(Method::POST, RS, &replicaset("web", 0)).await?;
    status_is("a second create", &exists, 409, "AlreadyExists")?;
    let missing = api.get(&format!("{RS}/nope")).await?;
    status_is("a missing object", &missing, 404, "NotFound")?;
    ensure!(
        missing.1["message"] == "replicasets.apps \"nope\" not found",
        "{missing:?}"
    );
    let no_ns = api
        .json(
            Method::POST,
            "/apis/apps/v1/namespaces/nowhere/replicasets",
            &replicaset("web", 0),
        )
        .await?;
    status_is("a namespace that does not exist", &no_ns, 404, "NotFound")?;
    let path = api.get("/apis/apps/v1/namespaces/default/widgets").await?;
    status_is("an unknown resource", &path, 404, "NotFound")?;
    let method = api
        .json(Method::POST, &format!("{RS}/web"), &replicaset("web", 0))
        .await?;
    status_is("POST on an object", &method, 405, "MethodNotAllowed")?;

    // A stale resourceVersion: Conflict, and the object is unchanged.
    let mut stale = replicaset("web", 2);
    stale["metadata"]["resourceVersion"] = json!("1");
    let conflict = api.json(Method::PUT, &format!("{RS}/web"), &stale).await?;
    status_is("a stale resourceVersion", &conflict, 409, "Conflict")?;
    let bad_patch = api
        .send(
            Method::PATCH,
            &format!("{RS}/web"),
            "application/json-patch+json",
            br#"[{"op":"test","path":"/spec/replicas","value":7},{"op":"replace","path":"/spec/replicas","value":9}]"#
                .to_vec(),
        )
        .await?;
    status_is("a JSON patch whose test fails", &bad_patch, 422, "Invalid")?;
    let unsupported = api
        .send(
            Method::PATCH,
            &format!("{RS}/web"),
            "application/apply-patch+yaml",
            b"{}".to_vec(),
        )
        .await?;
    status_is(
        "server-side apply",
        &unsupported,
        415,
        "UnsupportedMediaType",
    )?;
    // (The controller's status writes may move its resourceVersion; nothing else changes.)
    let now = api.get(&format!("{RS}/web")).await?;
    ensure!(
        now.1["spec"] == created.1["spec"]
            && now.1["metadata"]["labels"] == created.1["metadata"]["labels"]
            && now.1["metadata"]["generation"] == 1
            && now.1["metadata"]["annotations"].is_null(),
        "a refused write changed the object: {now:?}"
    );
    let (_, list) = api.get(RS).await?;
    let names: Vec<&str> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    ensure!(
        names == ["web"],
        "refused creates left objects behind: {names:?}"
    );
    Ok(())
}

#[tokio::test]
async fn patches_and_watches_follow_kubernetes() -> Result<()> {
    let cp = ControlPlane::start(&[]).await?;
    let api = Api {
        http: reqwest::Client::new(),
        base: cp.url(""),
    };
    use reqwest::Method;
    let (code, created) = api.json(Method::POST, RS, &replicaset("web", 0)).await?;
    ensure!(code == 201, "{created}");
    let first: i64 = created["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("resourceVersion")?;

    // The three patch types.
    let merge = api
        .send(
            Method::PATCH,
            &format!("{RS}/web"),
            "application/merge-patch+json",
            br#"{"metadata":{"labels":{"tier":"a"}}}"#.to_vec(),
        )
        .await?;
    ensure!(
        merge.0 == 200 && merge.1["metadata"]["labels"]["tier"] == "a",
        "{merge:?}"
    );
    let json_patch = api
        .send(
            Method::PATCH,
            &format!("{RS}/web"),
            "application/json-patch+json",
            br#"[{"op":"add","path":"/metadata/annotations","value":{"note":"x"}}]"#.to_vec(),
        )
        .await?;
    ensure!(
        json_patch.0 == 200 && json_patch.1["metadata"]["annotations"]["note"] == "x",
        "{json_patch:?}"
    );
    let strategic = api
        .send(
            Method::PATCH,
            &format!("{RS}/web"),
            "application/strategic-merge-patch+json",
            br#"{"spec":{"template":{"spec":{"containers":[{"name":"c","image":"miniku/busybox:v2"}]}}}}"#
                .to_vec(),
        )
        .await?;
    let containers = &strategic.1["spec"]["template"]["spec"]["containers"];
    ensure!(
        strategic.0 == 200
            && containers[0]["image"] == "miniku/busybox:v2"
            && containers.as_array().map(Vec::len) == Some(1),
        "{strategic:?}"
    );
    ensure!(
        strategic.1["metadata"]["generation"] == 2,
        "a spec change raises the generation: {strategic:?}"
    );

    // From a resourceVersion: the changes after it, in order, as MODIFIED.
    let lines = api
        .watch_lines(
            &format!("{RS}?watch=true&resourceVersion={first}"),
            3,
            Duration::from_secs(10),
        )
        .await?;
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["type"].as_str()).collect();
    ensure!(kinds == ["MODIFIED", "MODIFIED", "MODIFIED"], "{lines:?}");
    // resourceVersion "0" (or none): the current objects as ADDED first.
    let lines = api
        .watch_lines(
            &format!("{RS}?watch=1&resourceVersion=0"),
            1,
            Duration::from_secs(10),
        )
        .await?;
    ensure!(
        lines
            .first()
            .is_some_and(|l| l["type"] == "ADDED" && l["object"]["metadata"]["name"] == "web"),
        "{lines:?}"
    );
    // timeoutSeconds ends the stream.
    let started = tokio::time::Instant::now();
    let lines = api
        .watch_lines(
            &format!("{RS}?watch=true&resourceVersion=0&timeoutSeconds=1"),
            100,
            Duration::from_secs(20),
        )
        .await?;
    ensure!(
        lines.len() == 1 && started.elapsed() < Duration::from_secs(15),
        "timeoutSeconds=1 did not end the watch: {lines:?} after {:?}",
        started.elapsed()
    );
    // Bookmarks when asked for: the store's progress reports, with nothing else to send.
    let (_, list) = api.get(RS).await?;
    let head = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let lines = api
        .watch_lines(
            &format!("{RS}?watch=true&resourceVersion={head}&allowWatchBookmarks=true"),
            1,
            Duration::from_secs(30),
        )
        .await?;
    ensure!(
        lines.iter().any(|l| l["type"] == "BOOKMARK"
            && l["object"]["kind"] == "ReplicaSet"
            && l["object"]["metadata"]["resourceVersion"].is_string()),
        "no BOOKMARK: {lines:?}"
    );
    // A compacted resourceVersion: an ERROR event with a 410 Expired Status.
    let store = miniku_store::client::StoreClient::new(cp.store.endpoints())?;
    let head = store
        .get(b"/registry/", Default::default())
        .await?
        .header
        .revision;
    store.compact(head).await?;
    let lines = api
        .watch_lines(
            &format!("{RS}?watch=true&resourceVersion={first}"),
            1,
            Duration::from_secs(10),
        )
        .await?;
    ensure!(
        lines.first().is_some_and(|l| l["type"] == "ERROR"
            && l["object"]["reason"] == "Expired"
            && l["object"]["code"] == 410),
        "{lines:?}"
    );
    Ok(())
}
