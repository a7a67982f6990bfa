//! The short fault-injection run (CI's version of `scripts/chaos.sh`): real store processes,
//! every fault type, both checkers. A second run with members that serve stale reads must
//! fail, so a passing first run means something.

use std::process::Command;

use anyhow::{Context, Result};

fn chaos(args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_miniku-chaos"))
        .args(args)
        .output()
        .context("running miniku-chaos")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    Ok((out.status.success(), text))
}

#[test]
fn no_anomaly_under_every_fault_type() -> Result<()> {
    let seed = rand::random::<u32>().to_string();
    let (ok, out) = chaos(&["--seconds", "75", "--seed", &seed])?;
    assert!(
        ok,
        "the harness found anomalies (seed {seed}); output above"
    );
    for fault in miniku_chaos::nemesis::Fault::ALL {
        assert!(
            out.contains(&format!("] {}", fault.name())),
            "fault `{}` was never injected (seed {seed})",
            fault.name()
        );
    }
    assert!(out.contains("OK: no anomaly"));
    Ok(())
}

#[test]
fn no_anomaly_through_the_etcd_grpc_front() -> Result<()> {
    let seed = rand::random::<u32>().to_string();
    let (ok, out) = chaos(&["--seconds", "45", "--seed", &seed, "--grpc"])?;
    assert!(
        ok,
        "the harness found anomalies through gRPC (seed {seed}); output above"
    );
    assert!(out.contains("OK: no anomaly"));
    Ok(())
}

#[test]
fn stale_reads_through_grpc_are_caught() -> Result<()> {
    let (ok, out) = chaos(&[
        "--seconds",
        "30",
        "--seed",
        "1",
        "--unsafe-stale-reads",
        "--grpc",
    ])?;
    assert!(
        !ok,
        "members serving stale reads over gRPC passed the checker"
    );
    assert!(
        out.contains("cannot be linearized"),
        "the failure was not a linearizability anomaly"
    );
    Ok(())
}

#[test]
fn stale_reads_are_caught() -> Result<()> {
    // Seed 1 isolates the leader early, so the old leader keeps answering reads alone.
    let (ok, out) = chaos(&["--seconds", "30", "--seed", "1", "--unsafe-stale-reads"])?;
    assert!(!ok, "members serving stale reads passed the checker");
    assert!(
        out.contains("cannot be linearized"),
        "the failure was not a linearizability anomaly"
    );
    Ok(())
}

fn docker_reachable() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A 45 s control-plane run with `extra` flags (Docker too when the engine is there; CI
/// must have it): it must pass, and every fault kind of `kinds` must have been injected.
/// Returns its output.
fn control_plane_run(extra: &[&str], kinds: &[&str]) -> Result<String> {
    let seed = rand::random::<u32>().to_string();
    let mut args = vec!["--control-plane", "--seconds", "45", "--seed", &seed];
    args.extend_from_slice(extra);
    if !docker_reachable() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the Docker engine is not reachable"
        );
        println!("no Docker engine: hollow kubelets only");
        args.push("--no-docker");
    }
    let (ok, out) = chaos(&args)?;
    assert!(ok, "invariants violated (seed {seed}); output above");
    for kind in kinds {
        assert!(
            out.contains(&format!("kill -9 {kind} ")),
            "no `kill -9 {kind}` injected (seed {seed})"
        );
    }
    assert!(out.contains("converged"));
    Ok(out)
}

#[test]
fn control_plane_keeps_its_invariants_and_converges_under_kills() -> Result<()> {
    control_plane_run(
        &[],
        &[
            "store member",
            "store leader",
            "controller manager",
            "scheduler",
            "kubelet",
        ],
    )?;
    Ok(())
}

#[test]
fn rollouts_keep_surge_and_availability_under_kills() -> Result<()> {
    let out = control_plane_run(
        &["--deployment"],
        &[
            "store member",
            "store leader",
            "controller manager",
            "scheduler",
        ],
    )?;
    assert!(!out.contains("kill -9 kubelet"), "a kubelet was killed");
    assert!(out.contains("roll out round 2"), "fewer than two rollouts");
    // Ready pods were deleted (old ones replaced) and every deletion was judged.
    let line = out
        .lines()
        .find(|l| l.starts_with("rollout invariants"))
        .context("no rollout figures")?;
    assert!(
        !line.contains(" 0 deletions of ready pods"),
        "no ready pod was replaced: {line}"
    );
    Ok(())
}

#[test]
fn two_controllers_acting_at_once_are_caught() -> Result<()> {
    let (ok, out) = chaos(&[
        "--control-plane",
        "--seconds",
        "15",
        "--seed",
        "7",
        "--no-docker",
        "--unsafe-skip-election",
    ])?;
    assert!(!ok, "two controller managers acting at once went unnoticed");
    assert!(out.contains("VIOLATION: revision"), "no overshoot reported");
    Ok(())
}
