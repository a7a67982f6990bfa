//! Leader election through a store lease: the leader holds the key
//! `/registry/leaders/<component>`, attached to a lease it keeps alive. Others watch the key
//! and try again when it disappears (the holder stopped, or its lease expired). A leader that
//! cannot renew its lease before the TTL runs out stops leading: its work future is dropped,
//! which stops every task the work started (they are [`super::task::OwnedTask`]s), and it
//! goes back to campaigning in the same process. Its writes stay fenced throughout.

use std::future::Future;
use std::time::Duration;

use super::shutdown::Shutdown;
use crate::registry::{Fence, Registry, RegistryError};

pub use crate::registry::leader_key;

/// Runs `work` whenever this process holds the lock for `component`: campaigns, runs a term
/// of `work`, and when leadership is lost cancels that term and campaigns again. Returns when
/// `work` itself ends (it should end once `shutdown` begins; the lock is then given up) or
/// when shutdown begins while campaigning. `work` gets the [`Fence`] of each term: its writes should go
/// through [`crate::registry::Registry::fenced`], so that none lands after the lock has
/// passed to another instance.
pub async fn run_as_leader<F, Fut>(
    registry: Registry,
    component: &str,
    identity: &str,
    ttl_secs: i64,
    shutdown: Shutdown,
    work: F,
) -> anyhow::Result<()>
where
    F: Fn(Fence) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    loop {
        match lead_one_term(&registry, component, identity, ttl_secs, &shutdown, &work).await {
            Term::WorkEnded(r) => return r,
            Term::Lost(why) => {
                tracing::warn!(component, reason = %why, "lost leadership; its work is stopped, campaigning again");
            }
        }
    }
}

/// How a term of leadership ended.
enum Term {
    WorkEnded(anyhow::Result<()>),
    Lost(String),
}

/// Wins the lock once and runs `work` until it ends or the lease cannot be renewed (then the
/// work future is dropped, stopping what it started).
async fn lead_one_term<F, Fut>(
    registry: &Registry,
    component: &str,
    identity: &str,
    ttl_secs: i64,
    shutdown: &Shutdown,
    work: &F,
) -> Term
where
    F: Fn(Fence) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    // Shutdown ends a campaign at once; a leader's work ends by itself once shutdown begins,
    // and then the lock is given up.
    let won = tokio::select! {
        won = campaign(registry, component, identity, ttl_secs) => won,
        _ = shutdown.wait() => return Term::WorkEnded(Ok(())),
    };
    let (lease, fence) = won;
    tracing::info!(
        component,
        identity,
        lease,
        create_revision = fence.create_revision,
        "became leader"
    );
    let renew = keep_alive(registry.clone(), lease, ttl_secs);
    // The store may still hold the lock under this lease: give it up (if the store answers
    // soon), so that the next election need not wait for it to expire.
    let give_up = || tokio::time::timeout(Duration::from_secs(1), registry.revoke_lease(lease));
    tokio::select! {
        r = work(fence) => {
            let _ = give_up().await;
            Term::WorkEnded(r)
        }
        e = renew => {
            let _ = give_up().await;
            Term::Lost(e)
        }
    }
}

/// Campaigns until this process holds the lock: its lease and fence.
async fn campaign(
    registry: &Registry,
    component: &str,
    identity: &str,
    ttl_secs: i64,
) -> (i64, Fence) {
    loop {
        match registry
            .acquire_leadership(component, identity, ttl_secs)
            .await
        {
            Ok(Some(won)) => return won,
            Ok(None) => {
                tracing::info!(component, "another instance leads; standing by");
                // A release between our failed attempt and the watch's start would be
                // missed: waiting at most a TTL bounds that.
                registry
                    .wait_for_leader_release(component, Duration::from_secs(15))
                    .await;
            }
            Err(e) => {
                tracing::warn!(component, error = %e, "leader election: store unavailable");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Renews the lease every sixth of its TTL; returns an error once it could not be renewed
/// for a whole TTL, counted from when the last successful renewal was *sent* (the store's
/// lease cannot expire before that). Stopping is not what keeps two leaders apart: every
/// leader write is fenced by the leader key's revision, so a leader that acts a moment too
/// long has its writes refused.
async fn keep_alive(registry: Registry, lease: i64, ttl_secs: i64) -> String {
    let ttl = Duration::from_secs(ttl_secs.max(1) as u64);
    let every = ttl / 6;
    let renew_deadline = ttl;
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let sent = tokio::time::Instant::now();
        let remaining = (last_ok + renew_deadline).saturating_duration_since(sent);
        if remaining.is_zero() {
            return format!("lease {lease} not renewed within {renew_deadline:?}");
        }
        match tokio::time::timeout(remaining, registry.renew_lease(lease)).await {
            Ok(Ok(())) => last_ok = sent,
            Ok(Err(RegistryError::NotFound { .. })) => return format!("lease {lease} expired"),
            Ok(Err(e)) => {
                tracing::warn!(lease, error = %e, "could not renew the leader lease");
            }
            Err(_) => return format!("lease {lease} not renewed within {renew_deadline:?}"),
        }
    }
}
