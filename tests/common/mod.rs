//! Test harness: starts real `miniku` processes on free loopback ports with temporary data
//! directories, and kills them all when dropped. Waiting is always for a condition with a
//! deadline (a leader is known, an endpoint answers), never a fixed sleep.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_miniku");

/// A free TCP port on 127.0.0.1 (bound and released: good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct StoreMember {
    pub id: u64,
    pub client_port: u16,
    pub peer_port: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

impl StoreMember {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.client_port, path)
    }
}

/// A store cluster of real processes.
pub struct StoreCluster {
    pub members: Vec<StoreMember>,
    pub tmp: tempfile::TempDir,
    pub extra_args: Vec<String>,
    initial: String,
}

impl StoreCluster {
    /// Starts `n` members and waits until they agree on a leader.
    pub async fn start(n: u64) -> Result<StoreCluster> {
        Self::start_with(n, &[]).await
    }

    pub async fn start_with(n: u64, extra: &[&str]) -> Result<StoreCluster> {
        let tmp = tempfile::tempdir()?;
        let mut members = Vec::new();
        for id in 1..=n {
            members.push(StoreMember {
                id,
                client_port: free_port(),
                peer_port: free_port(),
                dir: tmp.path().join(format!("m{id}")),
                child: None,
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}=127.0.0.1:{}", m.id, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = StoreCluster {
            members,
            tmp,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            initial,
        };
        for id in 1..=n {
            c.spawn(id)?;
        }
        c.wait_leader(&(1..=n).collect::<Vec<_>>()).await?;
        Ok(c)
    }

    pub fn member(&self, id: u64) -> &StoreMember {
        &self.members[(id - 1) as usize]
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint()).collect()
    }

    /// Starts (or restarts) member `id` with its existing data directory.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        let initial = self.initial.clone();
        let extra = self.extra_args.clone();
        let m = &mut self.members[(id - 1) as usize];
        std::fs::create_dir_all(&m.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.with_extension("log"))?;
        let child = Command::new(BIN)
            .arg("store")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--client-addr", &format!("127.0.0.1:{}", m.client_port)])
            .args(["--peer-addr", &format!("127.0.0.1:{}", m.peer_port)])
            .args(["--initial-cluster", &initial])
            .args(["--heartbeat-ms", "50", "--election-min-ms", "300", "--election-max-ms", "600"])
            .args(&extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning miniku store")?;
        m.child = Some(child);
        Ok(())
    }

    /// SIGKILLs member `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.members[(id - 1) as usize].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until every member in `alive` reports the same leader; returns its id.
    pub async fn wait_leader(&self, alive: &[u64]) -> Result<u64> {
        let http = reqwest::Client::new();
        let urls: Vec<String> = alive.iter().map(|id| self.member(*id).url("/v1/cluster")).collect();
        wait_until(Duration::from_secs(30), "a leader all live members agree on", || {
            let http = http.clone();
            let urls = urls.clone();
            async move {
                let mut seen = None;
                for u in &urls {
                    let v: Value = http.get(u).send().await.ok()?.json().await.ok()?;
                    let l = v.get("leader_id")?.as_u64()?;
                    if seen.is_some() && seen != Some(l) {
                        return None;
                    }
                    seen = Some(l);
                }
                seen.filter(|l| alive.contains(l))
            }
        })
        .await
    }

    /// Log of member `id` (for failure messages).
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.member(id).dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for StoreCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
