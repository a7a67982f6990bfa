//! Test harness: starts real `miniku` processes (a store cluster, a control plane) on free
//! loopback ports with temporary data directories, and kills them all when dropped. Ports,
//! processes and waiting come from `miniku_harness`, which the chaos harness shares.
//! Waiting is always for a condition with a deadline (a leader is known, an endpoint
//! answers), never a fixed sleep.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::StreamExt;
use miniku_store::sse;
use serde_json::Value;

pub mod kubectl;

pub use miniku_harness::{free_port, Process};

pub const BIN: &str = env!("CARGO_BIN_EXE_miniku");

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    Ok(miniku_harness::wait_until(timeout, what, check).await?)
}

/// Waits until a GET of `url` answers 2xx: a server started and is up.
pub async fn wait_answers(url: &str, what: &str) -> Result<()> {
    let http = reqwest::Client::new();
    miniku_harness::wait_for_success(&http, url, Duration::from_secs(30), what).await?;
    Ok(())
}

/// Reads the SSE frames of `resp` until `keep` has taken `n` of them; fails when that takes
/// longer than `timeout` or the stream ends first.
pub async fn read_frames(
    resp: reqwest::Response,
    n: usize,
    timeout: Duration,
    mut keep: impl FnMut(&sse::Frame) -> bool,
) -> Result<Vec<sse::Frame>> {
    let mut out = Vec::new();
    let mut frames = sse::Decoder::new();
    let mut stream = resp.bytes_stream();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| anyhow!("timed out with {} of {n} messages: {out:?}", out.len()))?
            .ok_or_else(|| anyhow!("stream ended after {} messages", out.len()))??;
        frames.push(&chunk);
        while let Some(f) = frames.next_frame() {
            if keep(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// The image the Docker tests run (`scripts/test-image.sh` builds it).
pub const TEST_IMAGE: &str = "miniku/busybox:latest";

/// Checks the Docker engine and [`TEST_IMAGE`]; Ok(false) means "skip" (said on stderr),
/// which only happens outside CI: under `CI=true` a missing engine fails.
pub fn docker_ready() -> Result<bool> {
    let up = Command::new("docker")
        .args(["info"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !up {
        if std::env::var("CI").as_deref() == Ok("true") {
            bail!("CI=true but the Docker engine is not reachable: the Docker tests cannot run");
        }
        eprintln!("SKIPPED: the Docker engine is not reachable");
        return Ok(false);
    }
    let image = Command::new("docker")
        .args(["image", "inspect", TEST_IMAGE])
        .output()?;
    ensure!(
        image.status.success(),
        "image {TEST_IMAGE} is missing: run scripts/test-image.sh"
    );
    Ok(true)
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
    pub process: Option<Process>,
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
                process: None,
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
        let mut cmd = Command::new(BIN);
        cmd.arg("store")
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
            .args(&extra);
        let process = Process::spawn(&mut cmd, &m.dir.with_extension("log"))
            .context("spawning miniku store")?;
        m.process = Some(process);
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
            process: None,
            https: self.ca.is_some(),
        });
        self.extra_args.push("--join".into());
        let r = self.spawn(id);
        self.extra_args.pop();
        r.map(|_| id)
    }

    /// SIGKILLs member `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(p) = self.members[(id - 1) as usize].process.take() {
            p.kill();
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
    let impostor = Process::spawn(
        Command::new(BIN)
            .args(["store", "--id", "2", "--data-dir"])
            .arg(dir.join("impostor"))
            .args(["--client-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--peer-addr", &peer, "--initial-cluster", &initial])
            .args(credentials),
        &log,
    )?;
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
    impostor.kill();
    refused.with_context(|| std::fs::read_to_string(&log).unwrap_or_default())
}

/// A component process of the control plane (api server, controller manager, scheduler,
/// kubelet), killed when dropped.
pub struct Component {
    pub name: String,
    pub process: Option<Process>,
    pub log: PathBuf,
}

impl Component {
    pub fn kill(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill();
        }
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
        Self::start_with(cm_args, &[]).await
    }

    /// As [`ControlPlane::start`], with `api_args` added to the API server's flags.
    pub async fn start_with(cm_args: &[&str], api_args: &[&str]) -> Result<ControlPlane> {
        let store = StoreCluster::start(3).await?;
        let mut cp = ControlPlane {
            store,
            api_port: free_port(),
            components: Vec::new(),
        };
        let listen = format!("127.0.0.1:{}", cp.api_port);
        let mut api = vec!["apiserver", "--listen", &listen];
        api.extend_from_slice(api_args);
        cp.spawn("apiserver", &api)?;
        let mut args = vec!["controller-manager", "--leader-lease-secs", "3"];
        args.extend_from_slice(cm_args);
        cp.spawn("controller-manager", &args)?;
        cp.spawn("scheduler", &["scheduler", "--leader-lease-secs", "3"])?;
        wait_answers(&cp.url("/health"), "the API server to answer").await?;
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
        let process = Process::spawn(
            Command::new(BIN)
                .args(args)
                .args(["--store", &self.store_arg()]),
            &log,
        )
        .with_context(|| format!("spawning miniku {name}"))?;
        self.components.push(Component {
            name: name.to_string(),
            process: Some(process),
            log,
        });
        Ok(self.components.len() - 1)
    }

    /// Starts a Docker kubelet for `node` (1 s stop grace, then `extra` flags) and waits for
    /// the node to be Ready. The returned guard removes the node's containers when dropped.
    pub async fn spawn_docker_kubelet(
        &mut self,
        node: &str,
        extra: &[&str],
    ) -> Result<kubectl::NodeContainers> {
        let cleanup = kubectl::NodeContainers(node.to_string());
        let mut args = vec![
            "kubelet",
            "--node-name",
            node,
            "--runtime",
            "docker",
            "--stop-grace-secs",
            "1",
        ];
        args.extend_from_slice(extra);
        self.spawn("kubelet", &args)?;
        wait_until(Duration::from_secs(30), "the node to register", || async {
            let n = self.get(&format!("/nodes/{node}")).await.ok()?;
            (n["status"] == "Ready").then_some(())
        })
        .await?;
        Ok(cleanup)
    }

    /// A control plane whose API server reaches kubelets with the credential `token`, and
    /// one Docker kubelet `node` that wants it (`kubelet_extra`: more kubelet flags). The
    /// directory holds the token file; keep it, and the node's containers guard, alive.
    pub async fn with_kubelet_credential(
        token: &str,
        node: &str,
        kubelet_extra: &[&str],
    ) -> Result<(ControlPlane, kubectl::NodeContainers, tempfile::TempDir)> {
        let dir = tempfile::tempdir()?;
        let token_file = dir.path().join("kubelet.token");
        std::fs::write(&token_file, format!("{token}\n"))?;
        let token_arg = token_file.display().to_string();
        let mut cp = ControlPlane::start_with(&[], &["--kubelet-token-file", &token_arg]).await?;
        let mut args = vec!["--token-file", token_arg.as_str()];
        args.extend_from_slice(kubelet_extra);
        let cleanup = cp.spawn_docker_kubelet(node, &args).await?;
        Ok((cp, cleanup, dir))
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
