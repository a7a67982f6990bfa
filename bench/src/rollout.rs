//! The rollout workload: create a Deployment through the Kubernetes API, wait until all its
//! pods are available, change its pod template and time the rolling update until the
//! Deployment reports it complete (every replica updated and available, no old one left:
//! what `kubectl rollout status` waits for), then delete it. Progress is followed through a
//! watch on the Deployment, never by polling.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::control_plane::PodSet;

pub struct Outcome {
    /// POST to every replica available.
    pub created: Duration,
    /// The template change to the rollout complete.
    pub rolled: Duration,
}

/// Whether the Deployment's status says every replica runs its current template.
fn complete(d: &Value, replicas: usize) -> bool {
    let s = &d["status"];
    let n = |k: &str| s[k].as_u64().unwrap_or(0) as usize;
    let generation = d["metadata"]["generation"].as_i64().unwrap_or(0);
    s["observedGeneration"].as_i64().unwrap_or(0) >= generation
        && n("replicas") == replicas
        && n("updatedReplicas") == replicas
        && n("availableReplicas") == replicas
}

pub async fn run(pods: &PodSet) -> Result<Outcome> {
    let (api, name, replicas, image) = (&pods.api, &pods.name, pods.replicas, &pods.image);
    let timeout = pods.timeout();
    let http = reqwest::Client::new();
    let base = format!("{api}/apis/apps/v1/namespaces/default/deployments");
    let selector = pods.node_selector()?;
    let watch = http
        .get(format!(
            "{base}?watch=true&fieldSelector=metadata.name%3D{name}"
        ))
        .send()
        .await
        .context("watching the Deployment")?;
    if !watch.status().is_success() {
        bail!("watch answered {}", watch.status());
    }
    let body = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"nodeSelector": selector,
                         "containers": [{"name": "main", "image": image}]},
            },
        },
    });
    let start = Instant::now();
    let resp = http.post(&base).json(&body).send().await?;
    if !resp.status().is_success() {
        bail!(
            "creating the Deployment answered {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let mut stream = watch.bytes_stream();
    let mut buf = Vec::new();
    let deadline = start + timeout;
    let mut created: Option<Duration> = None;
    let mut changed = start;
    loop {
        let chunk = match tokio::time::timeout_at(deadline.into(), stream.next()).await {
            Ok(Some(chunk)) => chunk?,
            Ok(None) => bail!("the watch ended"),
            Err(_) => bail!("timed out (created after {created:?})"),
        };
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let ev: Value = serde_json::from_slice(&line)?;
            if ev["type"] == "ERROR" {
                bail!("the watch failed: {}", ev["object"]);
            }
            let d = &ev["object"];
            if !complete(d, replicas) {
                continue;
            }
            match created {
                None => {
                    created = Some(start.elapsed());
                    // A new template: every pod is replaced.
                    changed = Instant::now();
                    let patch = json!({"spec": {"template": {"metadata": {
                        "annotations": {"bench.miniku.io/rollout": "1"}}}}});
                    let resp = http
                        .patch(format!("{base}/{name}"))
                        .header("content-type", "application/merge-patch+json")
                        .body(patch.to_string())
                        .send()
                        .await?;
                    if !resp.status().is_success() {
                        bail!("changing the template answered {}", resp.status());
                    }
                }
                Some(c) if d["metadata"]["generation"].as_i64() >= Some(2) => {
                    let rolled = changed.elapsed();
                    let resp = http.delete(format!("{base}/{name}")).send().await?;
                    if !resp.status().is_success() {
                        bail!("deleting the Deployment answered {}", resp.status());
                    }
                    return Ok(Outcome { created: c, rolled });
                }
                Some(_) => {}
            }
        }
    }
}
