//! Probes with the real kubectl against a real Miniku (store, API server, controller manager,
//! scheduler and a Docker kubelet), through `scripts/test-probes.sh`: readiness that fails,
//! succeeds (httpGet to a named port) and goes away; `availableReplicas` after
//! `minReadySeconds`; a liveness probe whose failure restarts the container, and a hung
//! server (httpd frozen by SIGSTOP) whose HTTP liveness probe times out and restarts it.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use common::{docker_ready, run_check_script, wait_until, ControlPlane};

#[tokio::test]
async fn probes_decide_readiness_and_restarts_as_kubectl_shows() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let mut cp = ControlPlane::start(&[]).await?;
    let node = format!("probes-{}", std::process::id());
    // A restarted container comes back within a second.
    let _cleanup = cp
        .spawn_docker_kubelet(
            &node,
            &["--backoff-initial-ms", "1000", "--backoff-max-ms", "4000"],
        )
        .await?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-probes.sh");
    run_check_script(
        Command::new("bash").arg(script).arg(cp.url("")),
        "probes",
        &cp.logs(),
    )?;
    Ok(())
}

/// CPU time (user + system) of process `pid` so far, and its resident memory, from /proc.
fn cpu_and_rss(pid: u32) -> Result<(Duration, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, here 11 and 12 (0-based after the name).
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Ok((Duration::from_millis(ticks * 10), rss_kib * 1024))
}

/// The kubelet's CPU with `MINIKU_PROBE_PODS` (default 50) pods of one Docker node: without
/// probes, with an exec readiness probe (period `MINIKU_PROBE_EXEC_PERIOD`, default 10 s)
/// and with an httpGet readiness probe (period `MINIKU_PROBE_HTTP_PERIOD`, default 1 s),
/// over `MINIKU_PROBE_SECS` (default 60) seconds per case. A measurement, not a
/// check: run by hand with `--ignored --nocapture` (docs/how-it-works.md has the figures).
#[tokio::test]
#[ignore]
async fn measure_probe_cpu() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (pods, secs) = (env("MINIKU_PROBE_PODS", 50), env("MINIKU_PROBE_SECS", 60));
    let exec_period = env("MINIKU_PROBE_EXEC_PERIOD", 10);
    let http_period = env("MINIKU_PROBE_HTTP_PERIOD", 1);
    let mut cp = ControlPlane::start(&[]).await?;
    let node = format!("probe-cpu-{}", std::process::id());
    let _cleanup = common::kubectl::NodeContainers(node.clone());
    let kubelet = cp.spawn(
        "kubelet",
        &["kubelet", "--node-name", &node, "--runtime", "docker"],
    )?;
    let pid = cp.components[kubelet]
        .process
        .as_ref()
        .map(|p| p.pid())
        .ok_or_else(|| anyhow::anyhow!("no kubelet process"))?;
    let cache = tempfile::tempdir()?;
    let kubectl = |args: &[&str], stdin: Option<String>| -> Result<String> {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .args(["--server", &cp.url(""), "--cache-dir"])
            .arg(cache.path())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            input.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let cases = [
        ("none", 0, String::new()),
        (
            "exec",
            exec_period,
            format!("        readinessProbe: {{exec: {{command: [\"true\"]}}, periodSeconds: {exec_period}}}"),
        ),
        (
            "httpGet",
            http_period,
            format!("        readinessProbe: {{httpGet: {{port: 8080, path: /}}, periodSeconds: {http_period}}}"),
        ),
    ];
    for (name, period, probe) in cases {
        let rs = format!(
            "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: cpu}}\nspec:\n  replicas: {pods}\n  selector: {{matchLabels: {{app: cpu}}}}\n  template:\n    metadata: {{labels: {{app: cpu}}}}\n    spec:\n      containers:\n      - name: main\n        image: {}\n        command: [sh, -c, \"echo ok > /tmp/index.html; exec httpd -f -p 8080 -h /tmp\"]\n{probe}\n",
            common::TEST_IMAGE
        );
        kubectl(&["apply", "-f", "-"], Some(rs))?;
        kubectl(
            &[
                "wait",
                "rs/cpu",
                &format!("--for=jsonpath={{.status.readyReplicas}}={pods}"),
                "--timeout=600s",
            ],
            None,
        )?;
        // Let the starts settle before measuring.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (cpu0, _) = cpu_and_rss(pid)?;
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (cpu1, rss) = cpu_and_rss(pid)?;
        let used = (cpu1 - cpu0).as_secs_f64() / secs as f64;
        println!(
            "probes={name} pods={pods} period={period}s: kubelet cpu {:.2}% of a core ({:.2}% per 100 pods), rss {} MiB",
            used * 100.0,
            used * 100.0 * 100.0 / pods as f64,
            rss >> 20
        );
        kubectl(
            &["delete", "rs", "cpu", "--wait=true", "--timeout=600s"],
            None,
        )?;
        wait_until(Duration::from_secs(600), "the pods to go", || {
            let cp = &cp;
            async move {
                let list = cp.get("/pods").await.ok()?;
                list.as_array().is_some_and(|a| a.is_empty()).then_some(())
            }
        })
        .await?;
    }
    Ok(())
}
