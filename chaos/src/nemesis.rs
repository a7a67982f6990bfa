//! The nemesis: injects one fault at a time on a schedule drawn from the run's seed, holds
//! it for a few seconds, undoes it, and lets the cluster settle before the next. Every fault
//! type comes once per round, in a shuffled order, so a short run still covers them all.
//! It drives any [`Faults`]: members on loopback behind link proxies ([`crate::cluster`])
//! or hosts on a private Docker network ([`crate::hosts`]).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::time::Instant;

/// What the nemesis needs of a cluster: its members are `1..=size()`, and every fault is
/// undone by [`Faults::restore`].
#[allow(async_fn_in_trait)] // driven on the run's own task, never spawned
pub trait Faults {
    fn size(&self) -> u64;
    /// The leader as some reachable member reports it.
    async fn leader(&self) -> Option<u64>;
    async fn wait_leader(&self, within: Duration) -> Result<u64>;
    /// `kill -9` (of the member's process, or of its whole host).
    async fn kill(&mut self, id: u64) -> Result<()>;
    /// Frozen with its sockets open (SIGSTOP, or the cgroup freezer).
    async fn pause(&mut self, id: u64) -> Result<()>;
    /// Cut off from every other member (and, across hosts, from everyone).
    async fn isolate(&mut self, id: u64) -> Result<()>;
    /// Every member running, unfrozen and connected again.
    async fn restore(&mut self) -> Result<()>;
    /// The client endpoints of the members in the cluster now (that must have converged).
    fn member_endpoints(&self) -> Vec<String>;
    /// The drills that change the cluster, run after the faults while the workload goes on
    /// (none on loopback).
    async fn drills(&mut self, _rec: &crate::workload::Recorder) -> crate::drills::Report {
        crate::drills::Report::default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillLeader,
    KillRandom,
    PauseRandom,
    IsolateRandom,
    IsolateLeader,
    RestartAll,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::KillLeader,
        Fault::KillRandom,
        Fault::PauseRandom,
        Fault::IsolateRandom,
        Fault::IsolateLeader,
        Fault::RestartAll,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill -9 leader",
            Fault::KillRandom => "kill -9 random member",
            Fault::PauseRandom => "SIGSTOP random member",
            Fault::IsolateRandom => "partition: isolate random member",
            Fault::IsolateLeader => "partition: isolate leader",
            Fault::RestartAll => "kill -9 and restart whole cluster",
        }
    }
}

/// What the nemesis did: how many of each fault it injected, and how many it could not.
#[derive(Debug, Default)]
pub struct Injected {
    pub counts: BTreeMap<Fault, usize>,
    pub skipped: BTreeMap<Fault, usize>,
}

/// Runs faults until `until`.
pub async fn run(
    cluster: &mut impl Faults,
    rng: &mut StdRng,
    started: Instant,
    until: Instant,
) -> Result<Injected> {
    let mut counts = BTreeMap::new();
    let mut skipped = BTreeMap::new();
    let mut round: Vec<Fault> = Vec::new();
    let size = cluster.size();
    // Let the workload get going before the first fault.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while Instant::now() < until {
        if round.is_empty() {
            round = Fault::ALL.to_vec();
            round.shuffle(rng);
        }
        let Some(fault) = round.pop() else { continue };
        let leader = cluster.leader().await;
        let random = rng.random_range(1..=size);
        let target = match fault {
            Fault::KillLeader | Fault::IsolateLeader => leader.unwrap_or(random),
            _ => random,
        };
        let hold = Duration::from_millis(rng.random_range(2_000..5_000));
        let t = started.elapsed().as_secs_f64();
        match fault {
            Fault::RestartAll => println!("[{t:7.2}s] {}", fault.name()),
            _ => println!(
                "[{t:7.2}s] {} (member {target}{}), for {:.1}s",
                fault.name(),
                if Some(target) == leader {
                    ", the leader"
                } else {
                    ""
                },
                hold.as_secs_f64()
            ),
        }
        let injected = match fault {
            Fault::KillLeader | Fault::KillRandom => cluster.kill(target).await,
            Fault::PauseRandom => cluster.pause(target).await,
            Fault::IsolateRandom | Fault::IsolateLeader => cluster.isolate(target).await,
            Fault::RestartAll => {
                let mut r = Ok(());
                for id in 1..=size {
                    r = r.and(cluster.kill(id).await);
                }
                r
            }
        };
        // A fault the machine would not inject (the cgroup freezer can fail to freeze a
        // process stuck in the kernel) is said and not counted; the run goes on, and
        // restore below undoes whatever part of it took.
        match injected {
            Ok(()) => *counts.entry(fault).or_insert(0) += 1,
            Err(e) => {
                let t = started.elapsed().as_secs_f64();
                println!("[{t:7.2}s] could not inject it, skipped: {e:#}");
                *skipped.entry(fault).or_insert(0) += 1;
            }
        }
        let hold = if fault == Fault::RestartAll {
            Duration::from_millis(500)
        } else {
            hold
        };
        tokio::time::sleep(hold).await;
        cluster.restore().await?;
        let t = started.elapsed().as_secs_f64();
        println!("[{t:7.2}s] healed: every member running and connected");
        // Settle: a leader, then a little quiet.
        let _ = cluster.wait_leader(Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
    }
    Ok(Injected { counts, skipped })
}
