//! The cluster under test across hosts: `scripts/hosts.sh` runs three store hosts (with the
//! control plane on them) and two worker hosts as containers on a private Docker network,
//! every listener on its own address with TLS and tokens. This module drives the script's
//! drills as the nemesis's faults: `docker kill` of a host, the cgroup freezer, and
//! `docker network disconnect` (packets really dropped), and the drills that change the
//! cluster: a rolling upgrade to another image and a fourth store host joined as a learner.
//! It does not judge anything; the checkers do, over what the clients saw.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use miniku_harness::poll_until;
use miniku_store::api::ClusterResponse;
use miniku_store::auth::Token;
use tokio::io::AsyncWriteExt;

use crate::access::Access;
use crate::nemesis::Faults;

/// The founding store members (hosts store1..store3); store4 may join later.
const FOUNDING: u64 = 3;
/// The drills' fourth store host.
pub const JOINER: u64 = 4;

pub struct HostsOptions {
    /// `scripts/hosts.sh`.
    pub script: PathBuf,
    /// The containers' names' prefix (`MINIKU_HOSTS_PROJECT`), the Docker network and its
    /// /24 (`a.b.c.0/24`): a run has its own, so it can go on beside a user's cluster.
    pub project: String,
    pub network: String,
    pub subnet: String,
    /// Its data directory (certificates, compose file, each host's data and logs).
    pub data: PathBuf,
    /// The image every host starts from.
    pub image: String,
    /// More flags for each store member (shorter timeouts, small snapshots).
    pub store_flags: String,
    /// More flags for the controller manager.
    pub controller_flags: String,
    /// More flags for both kubelets (a short heartbeat lease, a short stop grace).
    pub kubelet_flags: String,
    /// The image of the rolling upgrade drill.
    pub upgrade_image: String,
}

pub struct Hosts {
    opts: HostsOptions,
    /// `172.30.57` of the hosts' /24.
    prefix: String,
    access: Access,
    /// Store members in the cluster now.
    members: BTreeSet<u64>,
    /// Hosts killed by the nemesis, to start again.
    killed: BTreeSet<u64>,
    log: PathBuf,
}

fn host(id: u64) -> String {
    format!("store{id}")
}

impl Hosts {
    /// `scripts/hosts.sh up`, after checking that no other hosts cluster runs on this
    /// engine.
    pub async fn up(opts: HostsOptions, log: PathBuf) -> Result<Hosts> {
        // The kubelets of any hosts cluster on this engine are worker1 and worker2, and a
        // kubelet removes the containers of its node's pods it does not know: another
        // cluster's kubelets would take this run's pods' containers (and this run's theirs).
        let others = tokio::process::Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                "label=miniku.hosts",
                "--format",
                "{{.Names}}",
            ])
            .output()
            .await
            .context("docker ps")?;
        let others = String::from_utf8_lossy(&others.stdout).trim().to_string();
        if !others.is_empty() {
            bail!(
                "another hosts cluster runs on this engine ({}): its kubelets (worker1, worker2) would remove this run's pods' containers; bring it down first",
                others.replace('\n', ", ")
            );
        }
        let prefix = opts
            .subnet
            .strip_suffix(".0/24")
            .with_context(|| format!("the hosts' subnet must end in .0/24 (got {})", opts.subnet))?
            .to_string();
        let pki = opts.data.join("pki");
        let mut hosts = Hosts {
            access: Access {
                endpoints: (1..=JOINER)
                    .map(|id| format!("https://{prefix}.1{id}:2379"))
                    .collect(),
                ca_file: Some(pki.join("ca.crt")),
                token: None,
            },
            prefix,
            opts,
            members: (1..=FOUNDING).collect(),
            killed: BTreeSet::new(),
            log,
        };
        hosts.script(&["up"]).await?;
        let token = Token::from_file(&pki.join("client.token")).map_err(anyhow::Error::msg)?;
        hosts.access.token = Some(token);
        Ok(hosts)
    }

    /// Every store member's endpoint, the joiner's included (it fails until it joins).
    pub fn access(&self) -> &Access {
        &self.access
    }

    pub fn data(&self) -> &Path {
        &self.opts.data
    }

    /// The API server's URL (on store1's address).
    pub fn api_url(&self) -> String {
        format!("https://{}:6443", self.address(1))
    }

    /// The CA that signed every host's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.opts.data.join("pki/ca.crt")
    }

    /// The API server's bearer token (made by `up`).
    pub fn api_token(&self) -> Result<Token> {
        Token::from_file(&self.opts.data.join("pki/api.token")).map_err(anyhow::Error::msg)
    }

    /// `scripts/hosts.sh isolate HOST` for any host (store1..store4, worker1, worker2).
    pub async fn isolate_host(&mut self, host: &str) -> Result<()> {
        self.script(&["isolate", host]).await.map(|_| ())
    }

    /// `scripts/hosts.sh heal`: every host reconnected, every paused one thawed.
    pub async fn heal(&mut self) -> Result<()> {
        self.script(&["heal"]).await.map(|_| ())
    }

    pub fn address(&self, id: u64) -> String {
        format!("{}.1{id}", self.prefix)
    }

    fn endpoint(&self, id: u64) -> String {
        format!("https://{}:2379", self.address(id))
    }

    /// The store members in the cluster now.
    pub fn members(&self) -> Vec<u64> {
        self.members.iter().copied().collect()
    }

    /// Runs `scripts/hosts.sh ARGS` with this run's environment; its output goes to the
    /// run's log, and a failure carries it.
    async fn script(&self, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(&self.opts.script)
            .args(args)
            .env("MINIKU_HOSTS_DATA", &self.opts.data)
            .env("MINIKU_HOSTS_PROJECT", &self.opts.project)
            .env("MINIKU_HOSTS_NETWORK", &self.opts.network)
            .env("MINIKU_HOSTS_SUBNET", &self.opts.subnet)
            .env("MINIKU_IMAGE", &self.opts.image)
            .env("MINIKU_HOSTS_STORE_FLAGS", &self.opts.store_flags)
            .env("MINIKU_HOSTS_CONTROLLER_FLAGS", &self.opts.controller_flags)
            .env("MINIKU_HOSTS_KUBELET_FLAGS", &self.opts.kubelet_flags)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", self.opts.script.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Ok(mut f) = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .await
        {
            let _ = f
                .write_all(format!("$ hosts.sh {}\n{text}", args.join(" ")).as_bytes())
                .await;
        }
        if !out.status.success() {
            bail!("hosts.sh {} failed: {}", args.join(" "), text.trim());
        }
        Ok(text)
    }

    /// `scripts/hosts.sh down` (the data directory stays).
    pub async fn down(&self) -> Result<()> {
        self.script(&["down"]).await.map(|_| ())
    }

    /// Member `id`'s own view of the cluster, if it answers within half a second.
    pub async fn cluster_of(&self, id: u64) -> Option<ClusterResponse> {
        let c = self.access.client(vec![self.endpoint(id)]).ok()?;
        c.with_timeout(Duration::from_millis(500))
            .cluster()
            .await
            .ok()
    }

    /// Waits until member `id` answers, knows a leader, and has applied at least what the
    /// leader had applied when it was asked.
    pub async fn wait_caught_up(&self, id: u64, within: Duration) -> Result<()> {
        let target = std::cell::Cell::new(None);
        let what = format!("member {id} to catch up");
        poll_until(within, Duration::from_millis(100), &what, || async {
            if target.get().is_none() {
                let l = self.leader().await?;
                target.set(self.cluster_of(l).await.map(|c| c.applied_index));
            }
            let c = self.cluster_of(id).await?;
            (c.leader_id.is_some() && c.applied_index >= target.get()?).then_some(())
        })
        .await?;
        Ok(())
    }

    /// `scripts/hosts.sh upgrade storeN IMAGE`: a graceful stop, and the same host, address
    /// and data from `image`.
    pub async fn upgrade(&mut self, id: u64, image: &str) -> Result<()> {
        self.script(&["upgrade", &host(id), image]).await?;
        // The member's own container, and no other, now runs the new image.
        let container = format!("{}-{}", self.opts.project, host(id));
        let out = tokio::process::Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.Config.Image}} {{.State.Status}}",
                &container,
            ])
            .output()
            .await
            .context("docker inspect")?;
        let seen = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if seen != format!("{image} running") {
            bail!("after the upgrade {container} is `{seen}`, not `{image} running`");
        }
        Ok(())
    }

    /// `scripts/hosts.sh join store4`: the fourth host starts empty and is added as a
    /// learner.
    pub async fn join(&mut self) -> Result<()> {
        self.script(&["join", &host(JOINER)]).await?;
        self.members.insert(JOINER);
        Ok(())
    }

    /// `scripts/hosts.sh remove storeN`: out of the cluster, its store process stopped.
    pub async fn remove(&mut self, id: u64) -> Result<()> {
        self.script(&["remove", &host(id)]).await?;
        self.members.remove(&id);
        Ok(())
    }

    /// A membership call through the first member that answers (a follower forwards it
    /// to the leader): its status and body. Only a call that reached no member is tried on
    /// the next, since a membership change must not be sent twice.
    pub async fn members_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(reqwest::StatusCode, String)> {
        let http = self.access.http(Duration::from_secs(1))?;
        let mut last = String::new();
        for id in self.members() {
            let mut req = self
                .access
                .authorize(http.request(method.clone(), format!("{}{path}", self.endpoint(id))))
                .timeout(Duration::from_secs(10));
            if let Some(b) = &body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(r) => return Ok((r.status(), r.text().await.unwrap_or_default())),
                Err(e) if e.is_connect() => last = format!("member {id}: {e}"),
                Err(e) => bail!("{method} {path} through member {id}: {e}"),
            }
        }
        bail!("{method} {path}: no member answered ({last})")
    }

    /// [`Hosts::members_call`] that must succeed, with the cluster it answers.
    pub async fn members_change(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<ClusterResponse> {
        let (status, text) = self.members_call(method.clone(), path, body).await?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }
}

impl Faults for Hosts {
    fn size(&self) -> u64 {
        FOUNDING
    }

    async fn leader(&self) -> Option<u64> {
        for id in self.members() {
            if self.killed.contains(&id) {
                continue;
            }
            if let Some(l) = self.cluster_of(id).await.and_then(|c| c.leader_id) {
                return Some(l);
            }
        }
        None
    }

    async fn wait_leader(&self, within: Duration) -> Result<u64> {
        let what = format!("a leader (logs in {}/logs)", self.opts.data.display());
        Ok(poll_until(within, Duration::from_millis(100), &what, || self.leader()).await?)
    }

    async fn kill(&mut self, id: u64) -> Result<()> {
        self.script(&["kill", &host(id)]).await?;
        self.killed.insert(id);
        Ok(())
    }

    async fn pause(&mut self, id: u64) -> Result<()> {
        self.script(&["pause", &host(id)]).await.map(|_| ())
    }

    async fn isolate(&mut self, id: u64) -> Result<()> {
        self.script(&["isolate", &host(id)]).await.map(|_| ())
    }

    async fn restore(&mut self) -> Result<()> {
        // The engine may refuse once (a thaw racing a process in the kernel): try again.
        let mut healed = self.script(&["heal"]).await;
        for _ in 0..3 {
            if healed.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            healed = self.script(&["heal"]).await;
        }
        healed?;
        for id in std::mem::take(&mut self.killed) {
            self.script(&["start", &host(id)]).await?;
        }
        Ok(())
    }

    fn member_endpoints(&self) -> Vec<String> {
        self.members()
            .into_iter()
            .map(|id| self.endpoint(id))
            .collect()
    }

    async fn drills(&mut self, rec: &crate::workload::Recorder) -> crate::drills::Report {
        let image = self.opts.upgrade_image.clone();
        crate::drills::run(self, rec, &image).await
    }
}
