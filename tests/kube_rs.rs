//! Rust's `kube` client and kube-runtime's `watcher` against a real Miniku (store, control
//! plane, a hollow kubelet): create, the watcher's list-then-watch until the pods run, the
//! scale subresource, a reflector's cache, and a foreground delete.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::ControlPlane;
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::json;

fn replicaset(name: &str, replicas: i32) -> Result<ReplicaSet> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "miniku/busybox:latest"}]}}}
    }))?)
}

/// Waits (on kube-runtime's watcher) until `n` pods labelled `app=name` are Running.
async fn running_pods(pods: Api<Pod>, name: &str, n: usize) -> Result<()> {
    let (reader, writer) = reflector::store::<Pod>();
    let cfg = watcher::Config::default().labels(&format!("app={name}"));
    let stream = reflector(writer, watcher(pods, cfg)).applied_objects();
    let mut stream = std::pin::pin!(stream);
    let wait = async {
        while let Some(_pod) = stream.try_next().await? {
            let running = reader
                .state()
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            if running == n {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("the watcher ended")
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .with_context(|| format!("{n} running pods of {name}"))?
}

#[tokio::test]
async fn the_kube_crate_and_its_watcher_work_against_miniku() -> Result<()> {
    let mut cp = ControlPlane::start(&[]).await?;
    cp.spawn(
        "kubelet",
        &[
            "kubelet",
            "--node-name",
            "kube-rs-node",
            "--runtime",
            "fake",
        ],
    )?;
    let config = kube::Config::new(cp.url("").parse()?);
    let client = kube::Client::try_from(config)?;
    let version = client.apiserver_version().await?;
    ensure!(version.minor == "33", "{version:?}");

    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created = sets
        .create(&PostParams::default(), &replicaset("web", 2)?)
        .await?;
    ensure!(created.metadata.uid.is_some(), "{created:?}");
    running_pods(pods.clone(), "web", 2).await?;

    let scale = sets
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await?;
    ensure!(scale.spec.and_then(|s| s.replicas) == Some(3));
    running_pods(pods.clone(), "web", 3).await?;

    let listed = pods.list(&ListParams::default().labels("app=web")).await?;
    ensure!(listed.items.len() == 3, "{} pods", listed.items.len());

    match sets.get("nope").await {
        Err(kube::Error::Api(e)) if e.code == 404 && e.reason == "NotFound" => {}
        other => anyhow::bail!("a missing ReplicaSet: {other:?}"),
    }

    let uid = created.metadata.uid.clone().unwrap_or_default();
    sets.delete("web", &DeleteParams::foreground()).await?;
    // The foreground delete finishes once its pods are gone: await the ReplicaSet's end.
    let deleted = kube::runtime::wait::await_condition(
        sets.clone(),
        "web",
        kube::runtime::wait::conditions::is_deleted(&uid),
    );
    tokio::time::timeout(Duration::from_secs(60), deleted)
        .await
        .context("the ReplicaSet's deletion")??;
    let left = pods.list(&ListParams::default().labels("app=web")).await?;
    ensure!(left.items.is_empty(), "{} pods left", left.items.len());
    Ok(())
}
