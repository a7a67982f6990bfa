//! The leader's lease clock. Leases themselves (id, TTL, attached keys) live in the
//! replicated state machine; their deadlines do not. Only the leader keeps deadlines, in
//! memory, and expires a lease by proposing `LeaseRevoke` through the log, so every member
//! deletes the lease's keys at the same revision.
//!
//! A member that becomes leader starts with no deadlines: every lease gets its full TTL
//! again from that moment (a new leader never expires a lease early). Keep-alives go to the
//! leader (followers forward them) and reset a lease's deadline.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::StoreError;
use crate::mvcc::MvccStore;
use crate::proposer::Proposer;
use crate::types::{Command, NodeId, Raft};

/// How often the leader looks for expired leases.
const TICK: Duration = Duration::from_millis(100);

#[derive(Default)]
struct ClockState {
    /// The term in which these deadlines were set; a new term starts afresh.
    term: u64,
    deadlines: HashMap<i64, Instant>,
    revoking: HashSet<i64>,
}

/// Lease deadlines on the leader.
#[derive(Clone)]
pub struct LeaseClock {
    id: NodeId,
    raft: Raft,
    mvcc: MvccStore,
    state: Arc<Mutex<ClockState>>,
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(1) as u64)
}

impl LeaseClock {
    pub fn new(id: NodeId, raft: Raft, mvcc: MvccStore) -> Self {
        LeaseClock {
            id,
            raft,
            mvcc,
            state: Arc::new(Mutex::new(ClockState::default())),
        }
    }

    /// This member's term if it is the leader.
    fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.current_leader == Some(self.id) && m.state.is_leader()).then_some(m.current_term)
    }

    fn with_state<R>(&self, term: u64, f: impl FnOnce(&mut ClockState) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.term != term {
            *s = ClockState {
                term,
                ..ClockState::default()
            };
        }
        f(&mut s)
    }

    /// This member's term as leader and lease `id`, or why not.
    fn leader_lease(&self, id: i64) -> Result<(u64, crate::types::LeaseRecord), StoreError> {
        let term = self
            .leading_term()
            .ok_or_else(|| StoreError::Unavailable("not the leader".into()))?;
        let lease = self.mvcc.lease(id).ok_or(StoreError::Rejected(
            crate::types::CommandError::LeaseNotFound(id),
        ))?;
        Ok((term, lease))
    }

    /// Renews lease `id` (leader only; the caller has passed a read barrier). Returns its TTL.
    pub fn keepalive(&self, id: i64) -> Result<i64, StoreError> {
        let (term, lease) = self.leader_lease(id)?;
        self.with_state(term, |s| {
            s.deadlines
                .insert(id, Instant::now() + ttl_duration(lease.ttl));
        });
        Ok(lease.ttl)
    }

    /// Seconds left on lease `id` (leader only), rounded up.
    pub fn remaining(&self, id: i64) -> Result<i64, StoreError> {
        let (term, lease) = self.leader_lease(id)?;
        let now = Instant::now();
        let deadline = self.with_state(term, |s| {
            *s.deadlines
                .entry(id)
                .or_insert(now + ttl_duration(lease.ttl))
        });
        let left = deadline.saturating_duration_since(now);
        Ok(left.as_millis().div_ceil(1000) as i64)
    }

    /// Expires leases while this member leads; runs until the node shuts down (aborted).
    pub async fn run(self, proposer: Proposer) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(term) = self.leading_term() else {
                continue;
            };
            let now = Instant::now();
            let leases = self.mvcc.leases();
            let expired: Vec<i64> = self.with_state(term, |s| {
                let live: HashSet<i64> = leases.iter().map(|(id, _)| *id).collect();
                s.deadlines.retain(|id, _| live.contains(id));
                s.revoking.retain(|id| live.contains(id));
                let mut expired = Vec::new();
                for (id, ttl) in &leases {
                    let deadline = *s.deadlines.entry(*id).or_insert(now + ttl_duration(*ttl));
                    if deadline <= now && s.revoking.insert(*id) {
                        expired.push(*id);
                    }
                }
                expired
            });
            for id in expired {
                let proposer = proposer.clone();
                let clock = self.clone();
                tokio::spawn(async move {
                    match proposer.propose(Command::LeaseRevoke { id }).await {
                        Ok(_) => tracing::info!(lease = id, "lease expired and revoked"),
                        Err(StoreError::Rejected(_)) => {}
                        Err(e) => {
                            tracing::warn!(lease = id, error = %e, "could not revoke expired lease");
                            let mut s = clock.state.lock().unwrap_or_else(|p| p.into_inner());
                            s.revoking.remove(&id);
                        }
                    }
                });
            }
        }
    }
}
