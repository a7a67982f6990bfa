//! Notices a crashed leader sooner than Raft's election timer does, and starts the election
//! as soon as it can succeed.
//!
//! openraft 0.9 starts an election on a follower only once the leader lease (the maximum
//! election timeout) *and* a random election timeout have passed since the leader's last
//! message, checked on ticks of 1.5 heartbeat intervals; a follower that lost an earlier
//! election to a longer log waits twice the maximum more. With the defaults of 0.9's
//! examples (500–1000 ms) that measured 1.6–2.0 s after a `kill -9` of the leader, 3.2 s
//! when the first candidate lost. A voter refuses its vote while its own lease (the maximum
//! election timeout since it last heard from the leader) runs, so no election can succeed
//! sooner than that.
//!
//! A leader whose process is gone can be told apart from a slow or cut-off one: its peer
//! port refuses connections. When the leader has sent nothing for [`SILENCE_BEATS`]
//! heartbeat intervals, this follower dials it. If the dial is refused, the follower asks
//! Raft for an election as soon as every voter's lease can have run out (the maximum
//! election timeout since the last AppendEntries, a margin and a random spread so that two
//! followers seldom ask at once), and again after a short random pause while no leader
//! emerges (a split vote), up to [`MAX_TRIES`] times. It does not ask while another
//! candidate it just voted for may be winning, nor again once a voter refused it for a
//! longer log: that voter must win, and a retry here would only raise the term to beat. A silent leader that still accepts connections (a partition, a stalled host, a
//! proxy in between) is left to Raft's own timer.
//!
//! It owns only that decision. It must not touch the log, the vote or the store: starting
//! an election is always safe in Raft, so a wrong guess costs a term, never data.

use std::time::Duration;

use openraft::ServerState;
use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::leader_route::wait_for_leader;
use crate::network::client::PeerClient;
use crate::network::server::Inbound;
use crate::types::{NodeId, Raft};

/// Silence from the leader, in heartbeat intervals, after which a follower dials it. openraft
/// sends an idle heartbeat every 1.5 intervals, so this is two missed heartbeats.
const SILENCE_BEATS: u32 = 3;
/// Waited past the voters' lease before asking for their votes: the spread between the
/// moments the voters last heard from the leader, and clock jitter.
const LEASE_MARGIN: Duration = Duration::from_millis(15);
/// Most of the random spread added to the first try, so that two followers that noticed the
/// crash together seldom ask at the same moment (and split the vote).
const FIRST_TRY_SPREAD_MS: u64 = 30;
/// The random pause (milliseconds) after a try that produced no leader.
const RETRY_PAUSE_MS: (u64, u64) = (20, 60);
/// Most elections one crash of the leader makes this member start; then Raft's timer.
const MAX_TRIES: u32 = 8;

/// The watcher of one member.
pub(crate) struct CrashWatch {
    pub id: NodeId,
    pub raft: Raft,
    pub peers: PeerClient,
    pub inbound: Inbound,
    pub heartbeat: Duration,
    /// The voters' leader lease: openraft's is the maximum election timeout.
    pub lease: Duration,
}

/// A leader that went silent and whose peer port refuses connections.
struct Crashed {
    leader: NodeId,
    addr: String,
    /// When its last AppendEntries arrived here.
    last_heard: std::time::Instant,
}

impl CrashWatch {
    /// Watches until `stopped`.
    pub(crate) async fn run(self, mut stopped: watch::Receiver<bool>) {
        let poll = (self.heartbeat / 2).max(Duration::from_millis(10));
        // The last AppendEntries of the silence last acted on: one silence, one series of
        // elections.
        let mut handled = None;
        loop {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(poll) => {}
            }
            if let Some(crashed) = self.crashed_leader(handled).await {
                handled = Some(crashed.last_heard);
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return,
                    _ = self.elect_after(crashed) => {}
                }
            }
        }
    }

    /// The leader, if this member is a voting follower, has heard nothing from it for
    /// [`SILENCE_BEATS`] heartbeats (a silence other than the one `handled`), and its peer
    /// port refuses connections.
    async fn crashed_leader(&self, handled: Option<std::time::Instant>) -> Option<Crashed> {
        let (leader, addr) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            if m.state != ServerState::Follower || !membership.voter_ids().any(|v| v == self.id) {
                return None;
            }
            let leader = m.current_leader.filter(|l| *l != self.id)?;
            (leader, membership.get_node(&leader)?.addr.clone())
        };
        // Never heard from any leader since this member started: Raft's timer decides.
        let last_heard = self.inbound.last_append()?;
        if handled == Some(last_heard) || last_heard.elapsed() < self.heartbeat * SILENCE_BEATS {
            return None;
        }
        if !self.peers.refuses(&addr, self.heartbeat).await {
            return None;
        }
        Some(Crashed {
            leader,
            addr,
            last_heard,
        })
    }

    /// Starts elections until a leader other than the crashed one is known, an AppendEntries
    /// arrives, the crashed leader's port accepts connections again, or [`MAX_TRIES`].
    async fn elect_after(&self, crashed: Crashed) {
        let spread = Duration::from_millis(rand::rng().random_range(0..=FIRST_TRY_SPREAD_MS));
        let first = crashed.last_heard + self.lease + LEASE_MARGIN + spread;
        tokio::time::sleep_until(Instant::from_std(first)).await;
        let noticed = std::time::Instant::now();
        // The other candidate's vote this member last gave time to win.
        let mut waited_for = None;
        for attempt in 1..=MAX_TRIES {
            let (state, vote) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                (m.state, m.vote)
            };
            if state == ServerState::Leader
                || self.inbound.last_append() != Some(crashed.last_heard)
                || self.peers.outlogged().is_some_and(|t| t >= noticed)
                || !self.peers.refuses(&crashed.addr, self.heartbeat).await
            {
                return;
            }
            let pause = Duration::from_millis(
                rand::rng().random_range(RETRY_PAUSE_MS.0..=RETRY_PAUSE_MS.1),
            );
            // This member holds another candidate's vote (granted, or seen in an answer) it
            // has not waited on yet, or granted one lately: let that election finish.
            let others = (!vote.is_committed() && vote.leader_id().voted_for() != Some(self.id))
                .then_some(vote)
                .filter(|v| waited_for != Some(*v));
            if others.is_some()
                || self
                    .inbound
                    .last_grant()
                    .is_some_and(|t| t.elapsed() < pause)
            {
                waited_for = others.or(waited_for);
                if wait_for_leader(&self.raft, Some(crashed.leader), Instant::now() + pause).await {
                    return;
                }
                continue;
            }
            let silent_ms = crashed.last_heard.elapsed().as_millis() as u64;
            tracing::info!(
                id = self.id,
                leader = crashed.leader,
                addr = %crashed.addr,
                silent_ms,
                attempt,
                "the leader's peer port refuses connections: starting an election"
            );
            if let Err(e) = self.raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not start an election");
                return;
            }
            if wait_for_leader(&self.raft, Some(crashed.leader), Instant::now() + pause).await {
                return;
            }
        }
        tracing::info!(
            id = self.id,
            leader = crashed.leader,
            "no leader after {MAX_TRIES} elections; leaving it to Raft's election timer"
        );
    }
}
