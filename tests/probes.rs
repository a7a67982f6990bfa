//! Probes with the real kubectl against a real Miniku (store, API server, controller manager,
//! scheduler and a Docker kubelet), through `scripts/test-probes.sh`: readiness that fails,
//! succeeds (httpGet to a named port) and goes away; `availableReplicas` after
//! `minReadySeconds`; a liveness probe whose failure restarts the container.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use common::{docker_ready, run_check_script, wait_until, ControlPlane};

/// Removes the node's containers when the test ends, however it ends.
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        miniku_harness::docker::remove_node_containers(&self.0);
    }
}

#[tokio::test]
async fn probes_decide_readiness_and_restarts_as_kubectl_shows() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let mut cp = ControlPlane::start(&[]).await?;
    let node = format!("probes-{}", std::process::id());
    let _cleanup = Containers(node.clone());
    cp.spawn(
        "kubelet",
        &[
            "kubelet",
            "--node-name",
            &node,
            "--runtime",
            "docker",
            "--stop-grace-secs",
            "1",
            // A restarted container comes back within a second.
            "--backoff-initial-ms",
            "1000",
            "--backoff-max-ms",
            "4000",
        ],
    )?;
    wait_until(Duration::from_secs(30), "the node to register", || {
        let cp = &cp;
        let node = node.clone();
        async move {
            let n = cp.get(&format!("/nodes/{node}")).await.ok()?;
            (n["status"] == "Ready").then_some(())
        }
    })
    .await?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-probes.sh");
    run_check_script(
        Command::new("bash").arg(script).arg(cp.url("")),
        "probes",
        &cp.logs(),
    )?;
    Ok(())
}
