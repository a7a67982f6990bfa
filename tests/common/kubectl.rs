//! The real kubectl, as the Docker end-to-end tests drive it, and what they share around it:
//! a node's containers removed when a test ends, and one plain HTTP GET to a pod or a node
//! port.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Removes the node's containers when the test ends, however it ends.
pub struct NodeContainers(pub String);

impl Drop for NodeContainers {
    fn drop(&mut self) {
        miniku_harness::docker::remove_node_containers(&self.0);
    }
}

pub struct Kubectl {
    server: String,
    cache: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Kubectl {
    pub fn new(server: String) -> Result<Self> {
        Ok(Kubectl {
            server,
            cache: tempfile::tempdir()?,
            work: tempfile::tempdir()?,
        })
    }

    /// A kubectl command for this server, to run as the caller likes (a stream it reads).
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg("--server")
            .arg(&self.server)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args);
        cmd
    }

    /// Runs kubectl; Ok((exit success, stdout + stderr)).
    pub fn run(&self, args: &[&str]) -> Result<(bool, String)> {
        let out = Command::new("kubectl")
            .arg("--server")
            .arg(&self.server)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args)
            .output()
            .context("running kubectl")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// Runs kubectl and fails unless it succeeds; returns what it printed.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let (ok, text) = self.run(args)?;
        ensure!(ok, "kubectl {args:?} failed:\n{text}");
        Ok(text)
    }

    pub fn apply(&self, name: &str, yaml: &str) -> Result<String> {
        let path = self.work.path().join(name);
        std::fs::write(&path, yaml)?;
        self.ok(&["apply", "-f", path.to_str().unwrap_or_default()])
    }

    /// `kubectl expose KIND NAME --port 80 --target-port 8080 --type NodePort`, checked.
    pub fn expose_node_port(&self, kind: &str, name: &str) -> Result<()> {
        let out = self.ok(&[
            "expose",
            kind,
            name,
            "--port",
            "80",
            "--target-port",
            "8080",
            "--type",
            "NodePort",
        ])?;
        ensure!(out.contains(&format!("service/{name} exposed")), "{out}");
        Ok(())
    }

    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.ok(&all)?)?)
    }
}

/// One HTTP/1.0 GET on a new connection; the body, or None if the connection failed or
/// closed without an answer.
pub async fn http_get(addr: &str) -> Option<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then(|| body.trim().to_string())
        .filter(|b| !b.is_empty())
}
