//! The real kubectl against a real Miniku (store, API server, controller manager, scheduler
//! and a Docker kubelet), through `scripts/test-kubectl.sh`: discovery, Tables, watch, apply,
//! scale, label, errors, namespaces and cascading deletes, each checked on what kubectl prints.

mod common;

use std::process::Command;

use anyhow::{bail, Result};
use common::{docker_ready, run_check_script, ControlPlane};

#[tokio::test]
async fn kubectl_drives_miniku_as_a_kubernetes_cluster() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let mut cp = ControlPlane::start(&[]).await?;
    let node = format!("kubectl-{}", std::process::id());
    // Failed containers come back within seconds (the CrashLoopBackOff check).
    let _cleanup = cp
        .spawn_docker_kubelet(
            &node,
            &["--backoff-initial-ms", "1000", "--backoff-max-ms", "4000"],
        )
        .await?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-kubectl.sh");
    run_check_script(
        Command::new("bash").arg(script).arg(cp.url("")).arg(&node),
        "kubectl",
        &cp.logs(),
    )?;
    Ok(())
}

/// The Python interpreter of the virtualenv `scripts/test.sh` makes, with `kubernetes` in it.
fn python() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("MINIKU_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/target/pyenv/bin/python").into());
    path.exists().then_some(path)
}

/// Kubernetes' official Python client against a real Miniku (hollow kubelet): create, list,
/// watch with resource versions, the scale subresource, errors and propagation policies.
#[tokio::test]
async fn the_official_python_client_works_against_miniku() -> Result<()> {
    let Some(python) = python() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            bail!("CI=true but target/pyenv (made by scripts/test.sh) is missing");
        }
        eprintln!(
            "SKIPPED: no target/pyenv with the kubernetes package (scripts/test.sh makes it)"
        );
        return Ok(());
    };
    let mut cp = ControlPlane::start(&[]).await?;
    cp.spawn(
        "kubelet",
        &["kubelet", "--node-name", "python-node", "--runtime", "fake"],
    )?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-python-client.py");
    run_check_script(
        Command::new(python).arg(script).arg(cp.url("")),
        "Python client",
        &cp.logs(),
    )?;
    Ok(())
}
