//! Test harness: starts real `miniku` processes on free loopback ports with temporary data
//! directories, and kills them all when dropped. Waiting is always for a condition with a
//! deadline (a leader is known, an endpoint answers), never a fixed sleep.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_miniku");

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range (32768 and up) so that
/// no outgoing connection can take it between this check and the server's bind, and never
/// the same one twice in a test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() * 7919 % SPAN + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
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

/// Runs a check script (one that prints `ok`/`FAIL` lines and `summary: N passed, M
/// failed`), prints what it printed, and fails unless every check passed. `context` is
/// added to a failure (the components' logs, say).
pub fn run_check_script(cmd: &mut Command, what: &str, context: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running the {what} checks"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    ensure!(
        out.status.success() && text.contains("summary:") && text.contains(" 0 failed"),
        "{what} checks failed; output above\n{context}"
    );
    Ok(())
}

pub struct StoreMember {
    pub id: u64,
    pub client_port: u16,
    pub peer_port: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
    /// True when the client API serves TLS.
    pub https: bool,
}

impl StoreMember {
    /// `127.0.0.1:PORT`, or `https://127.0.0.1:PORT` for a TLS member.
    pub fn endpoint(&self) -> String {
        if self.https {
            format!("https://127.0.0.1:{}", self.client_port)
        } else {
            format!("127.0.0.1:{}", self.client_port)
        }
    }
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{}", self.client_port, path)
    }
}

/// A store cluster of real processes.
pub struct StoreCluster {
    pub members: Vec<StoreMember>,
    pub tmp: tempfile::TempDir,
    pub extra_args: Vec<String>,
    initial: String,
    /// The client token, when the members were started with one.
    pub token: Option<String>,
    /// The CA that signed the members' client certificates, when they serve TLS.
    pub ca: Option<PathBuf>,
}

impl StoreCluster {
    /// Starts `n` members and waits until they agree on a leader.
    pub async fn start(n: u64) -> Result<StoreCluster> {
        Self::start_with(n, &[]).await
    }

    pub async fn start_with(n: u64, extra: &[&str]) -> Result<StoreCluster> {
        Self::start_in(tempfile::tempdir()?, n, extra, None, None).await
    }

    /// Members whose client API serves TLS (`extra` carries the certificate flags) with a
    /// certificate that `ca` signed; `tmp` holds the files.
    pub async fn start_tls(
        tmp: tempfile::TempDir,
        n: u64,
        extra: &[&str],
        ca: PathBuf,
        token: Option<String>,
    ) -> Result<StoreCluster> {
        Self::start_in(tmp, n, extra, token, Some(ca)).await
    }

    /// Members with a client token and a peer secret (files in the cluster's directory).
    pub async fn start_secured(
        n: u64,
        client_token: &str,
        peer_token: &str,
    ) -> Result<StoreCluster> {
        let tmp = tempfile::tempdir()?;
        let client_file = tmp.path().join("client.token");
        let peer_file = tmp.path().join("peer.token");
        std::fs::write(&client_file, format!("{client_token}\n"))?;
        std::fs::write(&peer_file, peer_token)?;
        let (c, p) = (
            client_file.display().to_string(),
            peer_file.display().to_string(),
        );
        let extra = ["--token-file", c.as_str(), "--peer-token-file", p.as_str()];
        Self::start_in(tmp, n, &extra, Some(client_token.to_string()), None).await
    }

    pub async fn start_in(
        tmp: tempfile::TempDir,
        n: u64,
        extra: &[&str],
        token: Option<String>,
        ca: Option<PathBuf>,
    ) -> Result<StoreCluster> {
        miniku_store::tls::install_crypto_provider();
        let mut members = Vec::new();
        for id in 1..=n {
            members.push(StoreMember {
                id,
                client_port: free_port(),
                peer_port: free_port(),
                dir: tmp.path().join(format!("m{id}")),
                child: None,
                https: ca.is_some(),
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
            token,
            ca,
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
            .args(if extra.iter().any(|a| a == "--join") {
                vec![]
            } else {
                vec!["--initial-cluster".to_string(), initial.clone()]
            })
            .args([
                "--heartbeat-ms",
                "50",
                "--election-min-ms",
                "300",
                "--election-max-ms",
                "600",
            ])
            .args(&extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning miniku store")?;
        m.child = Some(child);
        Ok(())
    }

    /// Prepares member `id` (the next one) on fresh ports and starts it with `--join`: it
    /// waits, empty, to be added through `POST /v1/cluster/members`.
    pub fn spawn_joiner(&mut self) -> Result<u64> {
        let id = self.members.len() as u64 + 1;
        self.members.push(StoreMember {
            id,
            client_port: free_port(),
            peer_port: free_port(),
            dir: self.tmp.path().join(format!("m{id}")),
            child: None,
            https: self.ca.is_some(),
        });
        self.extra_args.push("--join".into());
        let r = self.spawn(id);
        self.extra_args.pop();
        r.map(|_| id)
    }

    /// SIGKILLs member `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.members[(id - 1) as usize].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// An HTTP client for the members' client APIs: sends the token and trusts the CA
    /// when the cluster has them.
    pub fn http(&self) -> Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = &self.token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse()?,
            );
        }
        let mut builder = reqwest::Client::builder().default_headers(headers);
        if let Some(ca) = &self.ca {
            let certs = reqwest::Certificate::from_pem_bundle(&std::fs::read(ca)?)?;
            builder = builder.tls_certs_only(certs);
        }
        Ok(builder.build()?)
    }

    /// Waits until every member in `alive` reports the same leader; returns its id.
    pub async fn wait_leader(&self, alive: &[u64]) -> Result<u64> {
        let http = self.http()?;
        let urls: Vec<String> = alive
            .iter()
            .map(|id| self.member(*id).url("/v1/cluster"))
            .collect();
        wait_until(
            Duration::from_secs(30),
            "a leader all live members agree on",
            || {
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
            },
        )
        .await
        .map_err(|e| {
            let mut report = format!("{e}\n");
            for id in alive {
                let log = self.log(*id);
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                report.push_str(&format!("===== member {id} (last lines) =====\n"));
                for line in tail.iter().rev() {
                    report.push_str(line);
                    report.push('\n');
                }
            }
            anyhow::anyhow!(report)
        })
    }

    /// Log of member `id` (for failure messages).
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.member(id).dir.with_extension("log")).unwrap_or_default()
    }
}

/// Starts an impostor of member 2 of the three-member `store`: its own empty data in `dir`,
/// its own ports, and `credentials` (the wrong secret, a certificate the cluster does not
/// trust). It campaigns; this waits until its log shows `refusal` (the cluster turning its
/// RPCs away), then kills it.
pub async fn impostor_is_refused(
    store: &StoreCluster,
    dir: &std::path::Path,
    credentials: &[std::ffi::OsString],
    refusal: &str,
) -> Result<()> {
    let log = dir.join("impostor.log");
    let peer = format!("127.0.0.1:{}", free_port());
    let initial = format!(
        "1=127.0.0.1:{},2={peer},3=127.0.0.1:{}",
        store.member(1).peer_port,
        store.member(3).peer_port
    );
    let f = std::fs::File::create(&log)?;
    let mut impostor = Command::new(BIN)
        .args(["store", "--id", "2", "--data-dir"])
        .arg(dir.join("impostor"))
        .args(["--client-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--peer-addr", &peer, "--initial-cluster", &initial])
        .args(credentials)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(f.try_clone()?))
        .stderr(Stdio::from(f))
        .spawn()?;
    let refused = wait_until(
        Duration::from_secs(30),
        "the impostor's refused RPCs",
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).ok()?;
                text.contains(refusal).then_some(())
            }
        },
    )
    .await;
    let _ = impostor.kill();
    let _ = impostor.wait();
    refused.with_context(|| std::fs::read_to_string(&log).unwrap_or_default())
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

/// A component process of the control plane (api server, controller manager, scheduler,
/// kubelet), killed when dropped.
pub struct Component {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Component {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-member store plus the API server, controller manager and scheduler, as real
/// processes. Tests add kubelets or write nodes and heartbeats themselves.
pub struct ControlPlane {
    pub store: StoreCluster,
    pub api_port: u16,
    pub components: Vec<Component>,
}

impl ControlPlane {
    /// Starts the store, the API server, one controller manager (with `cm_args`) and one
    /// scheduler, and waits until the API answers.
    pub async fn start(cm_args: &[&str]) -> Result<ControlPlane> {
        let store = StoreCluster::start(3).await?;
        let mut cp = ControlPlane {
            store,
            api_port: free_port(),
            components: Vec::new(),
        };
        let listen = format!("127.0.0.1:{}", cp.api_port);
        cp.spawn("apiserver", &["apiserver", "--listen", &listen])?;
        let mut args = vec!["controller-manager", "--leader-lease-secs", "3"];
        args.extend_from_slice(cm_args);
        cp.spawn("controller-manager", &args)?;
        cp.spawn("scheduler", &["scheduler", "--leader-lease-secs", "3"])?;
        let http = reqwest::Client::new();
        let url = cp.url("/health");
        wait_until(Duration::from_secs(30), "the API server to answer", || {
            let http = http.clone();
            let url = url.clone();
            async move {
                http.get(&url)
                    .send()
                    .await
                    .ok()?
                    .status()
                    .is_success()
                    .then_some(())
            }
        })
        .await?;
        Ok(cp)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.api_port, path)
    }

    pub fn store_arg(&self) -> String {
        self.store.endpoints().join(",")
    }

    /// Starts `miniku <args> --store <all members>`; returns its index in `components`.
    pub fn spawn(&mut self, name: &str, args: &[&str]) -> Result<usize> {
        let log = self
            .store
            .tmp
            .path()
            .join(format!("{name}-{}.log", self.components.len()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(BIN)
            .args(args)
            .args(["--store", &self.store_arg()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("spawning miniku {name}"))?;
        self.components.push(Component {
            name: name.to_string(),
            child: Some(child),
            log,
        });
        Ok(self.components.len() - 1)
    }

    /// Every component's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for c in &self.components {
            out.push_str(&format!("===== {} =====\n", c.name));
            out.push_str(&std::fs::read_to_string(&c.log).unwrap_or_default());
        }
        out
    }

    /// GETs `path` from the API server as JSON.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let resp = reqwest::get(self.url(path)).await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {v}");
        }
        Ok(v)
    }
}
