//! `kubectl exec` end to end: the real kubectl (WebSocket, `v5.channel.k8s.io`) against a
//! real Docker container, through the API server's `pods/exec` and the kubelet's own
//! server, which wants the API server's credential.
//!
//! Checked on what kubectl prints and its exit code: a command's stdout and stderr, its
//! exit code passed through, `exec -i` with stdin, `exec -it` in a terminal (through
//! `script`, which gives kubectl one); Kubernetes' errors (a pod waiting to start, a missing
//! pod or container, a kubelet that is down, a stranger without the credential).

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::kubectl::Kubectl;
use common::{docker_ready, wait_until, ControlPlane};
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "kubelet-credential-exec-0123456789";

#[tokio::test]
async fn kubectl_exec_runs_commands_in_containers_through_their_kubelet() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let node = format!("exec-{}", std::process::id());
    let (mut cp, _cleanup, _dir) = ControlPlane::with_kubelet_credential(TOKEN, &node, &[]).await?;
    let k = Kubectl::new(cp.url(""))?;
    let result = scenario(&mut cp, &k).await;
    if result.is_err() {
        eprintln!("{}", cp.logs());
    }
    result
}

/// Runs kubectl with `stdin`; (exit code, stdout, stderr).
async fn run(k: &Kubectl, args: &[&str], stdin: &[u8]) -> Result<(i32, String, String)> {
    let mut child = k
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running kubectl")?;
    let mut input = child.stdin.take().context("stdin")?;
    input.write_all(stdin).await?;
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .context("kubectl did not end")??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn scenario(cp: &mut ControlPlane, k: &Kubectl) -> Result<()> {
    let pid = std::process::id();
    let pod = format!("shell-{pid}");
    k.ok(&[
        "run",
        &pod,
        "--image=miniku/busybox:latest",
        "--",
        "sleep",
        "3600",
    ])?;
    wait_until(Duration::from_secs(60), "the pod Running", || async {
        let v = k.json(&["get", "pod", &pod]).ok()?;
        (v["status"]["phase"] == "Running").then_some(())
    })
    .await?;

    let (code, out, _) = run(k, &["exec", &pod, "--", "echo", "hello", "world"], b"").await?;
    ensure!(
        code == 0 && out == "hello world\n",
        "exec echo: {code} {out:?}"
    );

    // stdout and stderr apart, and the command's exit code is kubectl's.
    let (code, out, err) = run(
        k,
        &[
            "exec",
            &pod,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        b"",
    )
    .await?;
    ensure!(code == 3, "exit code {code} ({out:?} {err:?})");
    ensure!(out == "out\n", "stdout {out:?}");
    ensure!(
        err.contains("err\n") && err.contains("command terminated with exit code 3"),
        "stderr {err:?}"
    );

    // -i: stdin reaches the command, and its end ends the command's input.
    let (code, out, err) = run(
        k,
        &[
            "exec",
            "-i",
            &pod,
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo done",
        ],
        b"from stdin\nsecond line\n",
    )
    .await?;
    ensure!(
        code == 0 && out == "FROM STDIN\nSECOND LINE\ndone\n",
        "exec -i: {code} {out:?} {err:?}"
    );

    // -it: a terminal (`script` gives kubectl one), a shell reading what is typed.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok()
    {
        let line = format!(
            "kubectl --server {} exec -it {pod} -- sh",
            cp.url("").trim_end_matches('/')
        );
        let mut child = tokio::process::Command::new("script")
            .args(["-qfec", &line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut input = child.stdin.take().context("stdin")?;
        input
            .write_all(b"echo tty-$((6*7)); [ -t 0 ] && echo is-a-terminal\nexit 5\n")
            .await?;
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .context("kubectl exec -it did not end")??;
        drop(input);
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            text.contains("tty-42") && text.contains("is-a-terminal"),
            "exec -it printed {text:?}"
        );
        ensure!(out.status.code() == Some(5), "exec -it: {:?}", out.status);
    } else {
        ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but `script` (util-linux) is missing"
        );
        println!("no `script`: exec -it not checked");
    }

    // Kubernetes' errors.
    let (code, _, err) = run(k, &["exec", "nosuch", "--", "ls"], b"").await?;
    ensure!(
        code == 1 && err.contains("pods \"nosuch\" not found"),
        "{code} {err:?}"
    );
    let (code, _, err) = run(k, &["exec", &pod, "-c", "nope", "--", "ls"], b"").await?;
    ensure!(
        code == 1 && err.contains(&format!("container nope is not valid for pod {pod}")),
        "{code} {err:?}"
    );
    let (code, _, err) = run(k, &["exec", &pod, "--"], b"").await?;
    ensure!(code != 0 && !err.is_empty(), "no command: {code} {err:?}");
    let waiting = format!("waiting-{pid}");
    k.ok(&["run", &waiting, "--image=miniku/not-here:1"])?;
    let err = wait_until(Duration::from_secs(30), "a pull failure", || async {
        let (code, _, err) = run(k, &["exec", &waiting, "--", "ls"], b"").await.ok()?;
        (code == 1 && err.contains("is waiting to start")).then_some(err)
    })
    .await?;
    ensure!(
        err.contains(&format!(
            "container \"{waiting}\" in pod \"{waiting}\" is waiting to start"
        )),
        "{err:?}"
    );
    // A kubelet that is down: 503 naming its node.
    if let Some(kubelet) = cp.components.iter_mut().rev().find(|c| c.name == "kubelet") {
        kubelet.kill();
    }
    let node = k.ok(&["get", "pod", &pod, "-o", "jsonpath={.spec.nodeName}"])?;
    let (code, _, err) = run(k, &["exec", &pod, "--", "ls"], b"").await?;
    ensure!(
        code == 1 && err.contains("ServiceUnavailable") && err.contains(&format!("node {node:?}")),
        "{code} {err:?}"
    );
    Ok(())
}
