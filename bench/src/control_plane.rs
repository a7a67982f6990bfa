//! The control-plane workload: POST a ReplicaSet to the API server and follow its pods
//! through a watch (the way Kubernetes' pod-startup SLO is measured: from a pod's creation
//! to it being seen Running, both as observed through the watch), then delete it and wait
//! for every pod to go.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use miniku_store::sse;
use serde_json::{json, Value};

/// When each pod was first seen, bound and Running.
#[derive(Default)]
struct PodTimes {
    added: Option<Instant>,
    bound: Option<Instant>,
    running: Option<Instant>,
}

pub struct Outcome {
    /// Creation (ADDED) to Running, per pod.
    pub startup: Vec<Duration>,
    /// POST to the last pod bound.
    pub all_bound: Duration,
    /// POST to the last pod Running.
    pub all_running: Duration,
    /// First pod seen to last pod bound: the scheduler's pace.
    pub binding_window: Duration,
    /// DELETE to the last pod gone.
    pub cleanup: Duration,
}

/// The pods a control-plane workload creates through the API server.
#[derive(clap::Args, Debug, Clone)]
pub struct PodSet {
    /// The API server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// The ReplicaSet's or Deployment's name (also the pods' `app` label).
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value_t = 1000)]
    pub replicas: usize,
    #[arg(long, default_value = "miniku/busybox:latest")]
    pub image: String,
    /// The pods' node selector, k=v,k2=v2.
    #[arg(long)]
    pub node_selector: Option<String>,
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

impl PodSet {
    /// `--node-selector` as a JSON object.
    pub fn node_selector(&self) -> Result<serde_json::Map<String, Value>> {
        let mut selector = serde_json::Map::new();
        for part in self
            .node_selector
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = part
                .split_once('=')
                .context("--node-selector is k=v,k2=v2")?;
            selector.insert(k.to_string(), json!(v));
        }
        Ok(selector)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

pub async fn run(pods: &PodSet) -> Result<Outcome> {
    let (api, name, replicas, image) = (&pods.api, &pods.name, pods.replicas, &pods.image);
    let timeout = pods.timeout();
    let http = reqwest::Client::new();
    let watch = http
        .get(format!("{api}/pods?watch=true&selector=app={name}"))
        .send()
        .await
        .context("watching pods through the API server")?;
    if !watch.status().is_success() {
        bail!("watch answered {}", watch.status());
    }
    let selector = pods.node_selector()?;
    let body = json!({
        "name": name,
        "desiredCount": replicas,
        "selector": {"app": name},
        "template": {"image": image, "labels": {"app": name}, "node_selector": selector},
    });
    let posted = Instant::now();
    let resp = http
        .post(format!("{api}/replicasets"))
        .json(&body)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!(
            "creating the ReplicaSet answered {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }

    let mut pods: HashMap<String, PodTimes> = HashMap::new();
    let mut running = 0usize;
    let mut stream = watch.bytes_stream();
    let mut frames = sse::Decoder::new();
    let deadline = posted + timeout;
    let mut measured: Option<Outcome> = None;
    let mut deleting = posted;
    'read: loop {
        let chunk = match tokio::time::timeout_at(deadline.into(), stream.next()).await {
            Ok(Some(chunk)) => chunk?,
            Ok(None) => bail!("the watch ended"),
            Err(_) => bail!(
                "timed out: {} pods seen, {running} Running of {replicas}",
                pods.len()
            ),
        };
        frames.push(&chunk);
        while let Some(frame) = frames.next_frame() {
            let now = Instant::now();
            let data = &frame.data;
            let ev: Value = serde_json::from_str(data)?;
            let kind = ev["type"].as_str().unwrap_or_default();
            let pod = &ev["object"];
            let Some(pod_name) = pod["spec"]["name"].as_str() else {
                continue;
            };
            match kind {
                "ADDED" | "MODIFIED" => {
                    let t = pods.entry(pod_name.to_string()).or_default();
                    t.added.get_or_insert(now);
                    if pod["spec"]["node_name"]
                        .as_str()
                        .is_some_and(|n| !n.is_empty())
                    {
                        t.bound.get_or_insert(now);
                    }
                    if pod["status"] == "Running" && t.running.is_none() {
                        t.running = Some(now);
                        running += 1;
                    }
                }
                "DELETED" if measured.is_some() => {
                    pods.remove(pod_name);
                }
                "ERROR" => bail!("the watch failed: {data}"),
                _ => {}
            }
            if measured.is_none() && running >= replicas {
                // Everything ran: measure, then delete and wait for the pods to go.
                measured = Some(measure(&pods, posted));
                let resp = http
                    .delete(format!("{api}/replicasets/{name}"))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("deleting the ReplicaSet answered {}", resp.status());
                }
                deleting = Instant::now();
            }
            if let Some(m) = &mut measured {
                if pods.is_empty() {
                    m.cleanup = deleting.elapsed();
                    break 'read;
                }
            }
        }
    }
    measured.context("no measurement")
}

fn measure(pods: &HashMap<String, PodTimes>, posted: Instant) -> Outcome {
    let mut startup = Vec::new();
    let (mut first_seen, mut last_bound, mut last_running) = (None::<Instant>, posted, posted);
    for t in pods.values() {
        if let (Some(a), Some(r)) = (t.added, t.running) {
            startup.push(r.saturating_duration_since(a));
            first_seen = Some(first_seen.map_or(a, |f| f.min(a)));
            last_running = last_running.max(r);
        }
        if let Some(b) = t.bound {
            last_bound = last_bound.max(b);
        }
    }
    startup.sort();
    Outcome {
        startup,
        all_bound: last_bound - posted,
        all_running: last_running - posted,
        binding_window: last_bound.saturating_duration_since(first_seen.unwrap_or(posted)),
        cleanup: Duration::ZERO,
    }
}
