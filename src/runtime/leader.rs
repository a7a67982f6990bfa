//! Leader election through a store lease: the leader holds the key
//! `/registry/leaders/<component>`, attached to a lease it keeps alive. Others watch the key
//! and try again when it disappears (the holder stopped, or its lease expired). A leader that
//! cannot renew its lease before the TTL runs out stops leading: its work future is dropped,
//! which stops every task the work started (they are [`super::task::OwnedTask`]s), and it
//! goes back to campaigning in the same process. Its writes stay fenced throughout.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use miniku_store::api::{Bin, Compare, PutRequest, RequestOp, TxnRequest};
use miniku_store::client::{StoreClient, WatchOptions};

use crate::registry::Fence;

/// The key a component's leader holds.
pub fn leader_key(component: &str) -> String {
    format!("{}leaders/{component}", crate::registry::ROOT)
}

/// Runs `work` whenever this process holds the lock for `component`: campaigns, runs a term
/// of `work`, and when leadership is lost cancels that term and campaigns again. Returns only
/// when `work` itself ends. `work` gets the [`Fence`] of each term: its writes should go
/// through [`crate::registry::Registry::fenced`], so that none lands after the lock has
/// passed to another instance.
pub async fn run_as_leader<F, Fut>(
    client: StoreClient,
    component: &str,
    identity: &str,
    ttl_secs: i64,
    work: F,
) -> anyhow::Result<()>
where
    F: Fn(Fence) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    loop {
        match lead_one_term(&client, component, identity, ttl_secs, &work).await {
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
    client: &StoreClient,
    component: &str,
    identity: &str,
    ttl_secs: i64,
    work: &F,
) -> Term
where
    F: Fn(Fence) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let client = client.clone();
    let key = leader_key(component);
    let (lease, create_revision) = loop {
        match try_acquire(&client, &key, identity, ttl_secs).await {
            Ok(Some(won)) => break won,
            Ok(None) => {
                tracing::info!(component, "another instance leads; standing by");
                wait_for_release(&client, &key).await;
            }
            Err(e) => {
                tracing::warn!(component, error = %e, "leader election: store unavailable");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!(component, identity, lease, create_revision, "became leader");
    let renew = keep_alive(client.clone(), lease, ttl_secs);
    let fence = Fence {
        key: key.clone(),
        create_revision,
    };
    tokio::select! {
        r = work(fence) => {
            let _ = client.lease_revoke(lease).await;
            Term::WorkEnded(r)
        }
        e = renew => Term::Lost(e),
    }
}

/// Grants a lease and puts the key if nobody holds it. Some((lease, the key's
/// create_revision)) when we won.
async fn try_acquire(
    client: &StoreClient,
    key: &str,
    identity: &str,
    ttl_secs: i64,
) -> anyhow::Result<Option<(i64, i64)>> {
    let lease = client.lease_grant(ttl_secs).await?.id;
    let txn = TxnRequest {
        compare: vec![Compare {
            key: Bin::from(key),
            range_end: None,
            target: "create_revision".into(),
            result: "=".into(),
            value: serde_json::Value::from(0),
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: Bin::from(key),
            value: Bin::from(identity),
            lease,
            prev_kv: false,
        })],
        failure: vec![],
    };
    let resp = client.txn(&txn).await?;
    if resp.succeeded {
        Ok(Some((lease, resp.header.revision)))
    } else {
        let _ = client.lease_revoke(lease).await;
        Ok(None)
    }
}

/// Returns once the key is deleted (or the watch breaks, to retry).
async fn wait_for_release(client: &StoreClient, key: &str) {
    let mut w = client.watch(key.as_bytes(), WatchOptions::default());
    // A watch from "now" may miss a delete between our failed txn and its start: bound the
    // wait so that case costs one TTL at most.
    let wait = async {
        while let Some(item) = w.next().await {
            match item {
                Ok(msg)
                    if msg
                        .events
                        .iter()
                        .any(|e| e.kind == miniku_store::api::EventType::Delete) =>
                {
                    return
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(15), wait).await;
}

/// Renews the lease every sixth of its TTL; returns an error once it could not be renewed
/// for a whole TTL, counted from when the last successful renewal was *sent* (the store's
/// lease cannot expire before that). Stopping is not what keeps two leaders apart: every
/// leader write is fenced by the leader key's revision, so a leader that acts a moment too
/// long has its writes refused.
async fn keep_alive(client: StoreClient, lease: i64, ttl_secs: i64) -> String {
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
        match tokio::time::timeout(remaining, client.lease_keepalive(lease)).await {
            Ok(Ok(_)) => last_ok = sent,
            Ok(Err(e)) if e.is_not_found() => return format!("lease {lease} expired"),
            Ok(Err(e)) => {
                tracing::warn!(lease, error = %e, "could not renew the leader lease");
            }
            Err(_) => return format!("lease {lease} not renewed within {renew_deadline:?}"),
        }
    }
}
