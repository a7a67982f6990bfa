//! The cluster under test: three `miniku store` processes on loopback, each link between two
//! members through its own [`LinkProxy`], and the faults the nemesis applies to them:
//! `kill -9`, SIGSTOP/SIGCONT, cutting links, restarting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use miniku_harness::{free_addr, Process};
use miniku_store::client::StoreClient;

use crate::nemesis::Faults;
use crate::proxy::LinkProxy;

pub struct Member {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    process: Option<Process>,
    paused: bool,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client_addr)
    }
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }
}

pub struct ClusterOptions {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub size: u64,
    /// Extra flags for every member (e.g. `--unsafe-stale-reads`).
    pub extra_args: Vec<String>,
}

pub struct Cluster {
    opts: ClusterOptions,
    pub members: Vec<Member>,
    /// (from, to) -> the proxy `from` dials to reach `to`.
    links: BTreeMap<(u64, u64), LinkProxy>,
}

impl Cluster {
    /// Starts every member and waits for a leader.
    pub async fn start(opts: ClusterOptions) -> Result<Cluster> {
        let mut members = Vec::new();
        for id in 1..=opts.size {
            members.push(Member {
                id,
                client_addr: free_addr(),
                peer_addr: free_addr(),
                process: None,
                paused: false,
            });
        }
        let mut links = BTreeMap::new();
        for from in &members {
            for to in &members {
                if from.id != to.id {
                    let proxy = LinkProxy::start(to.peer_addr.clone()).await?;
                    links.insert((from.id, to.id), proxy);
                }
            }
        }
        let mut cluster = Cluster {
            opts,
            members,
            links,
        };
        for id in 1..=cluster.opts.size {
            cluster.start_member(id)?;
        }
        cluster.wait_leader(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    fn member(&self, id: u64) -> Result<&Member> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .with_context(|| format!("no member {id}"))
    }

    fn member_mut(&mut self, id: u64) -> Result<&mut Member> {
        self.members
            .iter_mut()
            .find(|m| m.id == id)
            .with_context(|| format!("no member {id}"))
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Starts member `id` (again), with its data directory as it was.
    pub fn start_member(&mut self, id: u64) -> Result<()> {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.id, m.peer_addr))
            .collect();
        let routes: Vec<String> = self
            .links
            .iter()
            .filter(|((from, _), _)| *from == id)
            .map(|((_, to), proxy)| {
                let to = self.members.iter().find(|m| m.id == *to);
                format!(
                    "{}={}",
                    to.map(|m| m.peer_addr.as_str()).unwrap_or(""),
                    proxy.listen_addr
                )
            })
            .collect();
        let dir = self.opts.dir.clone();
        let bin = self.opts.bin.clone();
        let extra = self.opts.extra_args.clone();
        let m = self.member_mut(id)?;
        if m.process.is_some() {
            return Ok(());
        }
        let mut cmd = Command::new(&bin);
        cmd.arg("store")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(dir.join(format!("store{id}")))
            .args(["--client-addr", &m.client_addr])
            .args(["--peer-addr", &m.peer_addr])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--peer-route", &routes.join(",")])
            // Small snapshots, so faults also hit snapshot building and installing.
            .args(["--snapshot-entries", "500"])
            .args(["--request-timeout-secs", "2"])
            .args(&extra);
        let process = Process::spawn(&mut cmd, &dir.join(format!("store{id}.log")))?;
        m.process = Some(process);
        m.paused = false;
        Ok(())
    }

    /// `kill -9`.
    pub async fn kill(&mut self, id: u64) -> Result<()> {
        let m = self.member_mut(id)?;
        if let Some(p) = m.process.take() {
            p.kill();
        }
        m.paused = false;
        Ok(())
    }

    fn signal(&self, id: u64, sig: &str) -> Result<()> {
        let Some(p) = &self.member(id)?.process else {
            bail!("member {id} is not running");
        };
        Ok(p.signal(sig)?)
    }

    /// SIGSTOP: the process stays, frozen, with its sockets open.
    pub fn pause(&mut self, id: u64) -> Result<()> {
        self.signal(id, "-STOP")?;
        self.member_mut(id)?.paused = true;
        Ok(())
    }

    pub fn resume(&mut self, id: u64) -> Result<()> {
        if self.member(id)?.paused {
            self.signal(id, "-CONT")?;
            self.member_mut(id)?.paused = false;
        }
        Ok(())
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: u64) {
        for ((from, to), proxy) in &self.links {
            if *from == id || *to == id {
                proxy.cut();
            }
        }
    }

    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.heal();
        }
    }

    /// Undoes every fault: heals links, resumes paused members, starts stopped ones.
    pub fn restore(&mut self) -> Result<()> {
        self.heal();
        let ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
        for id in ids {
            self.resume(id)?;
            self.start_member(id)?;
        }
        Ok(())
    }

    /// The leader as some running, unpaused member reports it.
    pub async fn leader(&self) -> Option<u64> {
        for m in self.members.iter().filter(|m| m.is_running() && !m.paused) {
            let Ok(c) = StoreClient::new(vec![m.endpoint()]) else {
                continue;
            };
            let c = c.with_timeout(Duration::from_millis(500));
            if let Ok(cl) = c.cluster().await {
                if let Some(l) = cl.leader_id {
                    return Some(l);
                }
            }
        }
        None
    }

    pub async fn wait_leader(&self, within: Duration) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "no leader within {within:?}; logs in {}",
                    self.opts.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Faults for Cluster {
    fn size(&self) -> u64 {
        self.members.len() as u64
    }
    async fn leader(&self) -> Option<u64> {
        Cluster::leader(self).await
    }
    async fn wait_leader(&self, within: Duration) -> Result<u64> {
        Cluster::wait_leader(self, within).await
    }
    async fn kill(&mut self, id: u64) -> Result<()> {
        Cluster::kill(self, id).await
    }
    async fn pause(&mut self, id: u64) -> Result<()> {
        Cluster::pause(self, id)
    }
    async fn isolate(&mut self, id: u64) -> Result<()> {
        Cluster::isolate(self, id);
        Ok(())
    }
    async fn restore(&mut self) -> Result<()> {
        Cluster::restore(self)
    }
    fn member_endpoints(&self) -> Vec<String> {
        self.endpoints()
    }
}
