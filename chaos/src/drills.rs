//! The drills across hosts that change the cluster while the workload runs, after the
//! nemesis's random faults: a rolling upgrade (each store host in turn stopped gracefully
//! and started from another image, same address and data) and a membership change (an
//! unreachable member added, which must stay a learner and leave the quorum as it was;
//! a fourth store host joined as a learner, promoted once caught up; an old member
//! removed). Each step's stall is the longest time no write was acknowledged while it ran.
//! The checkers judge the history afterwards as for any other fault.

use std::time::Duration;

use anyhow::Result;
use reqwest::Method;
use serde_json::json;

use crate::history::{Operation, Outcome};
use crate::hosts::{Hosts, JOINER};
use crate::nemesis::Faults;
use crate::workload::Recorder;

/// The member added at an address where nothing listens.
const UNREACHABLE: u64 = 5;

/// One step and how long writes stalled while it ran.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub what: String,
    pub seconds: f64,
    pub write_stall_ms: f64,
    pub writes_acknowledged: usize,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub steps: Vec<Step>,
    /// What went wrong (a drill that could not be carried out, a quorum widened).
    pub failures: Vec<String>,
}

/// The longest stretch of `[from, to]` (ns since the run's start) with no acknowledged
/// write, and how many writes were acknowledged in it.
pub fn write_stall(ops: &[Operation], from: u64, to: u64) -> (u64, usize) {
    let mut acks: Vec<u64> = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Written | Outcome::Swapped(true)))
        .map(|o| o.complete_ns)
        .filter(|t| (from..=to).contains(t))
        .collect();
    acks.sort_unstable();
    let mut longest = 0;
    let mut last = from;
    for t in acks.iter().copied().chain(std::iter::once(to)) {
        longest = longest.max(t - last);
        last = t;
    }
    (longest, acks.len())
}

struct Steps<'a> {
    rec: &'a Recorder,
    report: Report,
}

impl Steps<'_> {
    /// Runs `step`, and records it with its stall (or its failure).
    async fn step<T>(
        &mut self,
        what: String,
        step: impl std::future::Future<Output = Result<T>>,
    ) -> Option<T> {
        let from = self.rec.now_ns();
        let result = step.await;
        let to = self.rec.now_ns();
        let (stall, acked) = write_stall(&self.rec.operations(), from, to);
        let s = Step {
            what: what.clone(),
            seconds: (to - from) as f64 / 1e9,
            write_stall_ms: stall as f64 / 1e6,
            writes_acknowledged: acked,
        };
        println!(
            "  {what}: {:.1}s, longest write stall {:.0} ms, {acked} writes acknowledged",
            s.seconds, s.write_stall_ms
        );
        self.report.steps.push(s);
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                println!("  FAILED: {what}: {e:#}");
                self.report.failures.push(format!("{what}: {e:#}"));
                None
            }
        }
    }
}

/// The rolling upgrade, then the membership change.
pub async fn run(hosts: &mut Hosts, rec: &Recorder, image: &str) -> Report {
    let mut steps = Steps {
        rec,
        report: Report::default(),
    };
    let catch_up = Duration::from_secs(60);

    // Rolling upgrade: the followers first, the leader last, each caught up before the next.
    let leader = hosts.leader().await;
    let mut order = hosts.members();
    order.sort_by_key(|id| Some(*id) == leader);
    println!("rolling upgrade to {image}, members in the order {order:?}:");
    for id in order {
        let what = format!(
            "upgrade member {id}{}",
            if Some(id) == leader {
                " (the leader)"
            } else {
                ""
            }
        );
        steps
            .step(what, async {
                hosts.upgrade(id, image).await?;
                hosts.wait_caught_up(id, catch_up).await
            })
            .await;
    }

    println!("membership:");
    let unreachable = format!("{}:2380", hosts.address(UNREACHABLE));
    let added = steps
        .step(
            format!("add member {UNREACHABLE} at {unreachable}, where nothing listens"),
            async {
                // Asked to become a voter, it is added as a learner and never promoted: the
                // answer is 503 (not caught up), or 200 while it is still a learner.
                let (status, text) = hosts
                    .members_call(
                        Method::POST,
                        "/v1/cluster/members",
                        Some(json!({"id": UNREACHABLE, "peer_addr": unreachable})),
                    )
                    .await?;
                println!("    answered {status}: {text}");
                if !status.is_success() && status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    anyhow::bail!("POST /v1/cluster/members answered {status}: {text}");
                }
                // Writes must go on, on the old quorum, while it cannot catch up.
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(())
            },
        )
        .await;
    if added.is_some() {
        let last = steps
            .report
            .steps
            .last()
            .map_or(0, |s| s.writes_acknowledged);
        if last == 0 {
            steps.report.failures.push(format!(
                "no write was acknowledged while unreachable member {UNREACHABLE} was in the cluster"
            ));
        }
        match hosts.leader().await {
            Some(l) => match hosts.cluster_of(l).await {
                Some(c) => match c.members.iter().find(|m| m.id == UNREACHABLE) {
                    Some(m) if m.voter => steps.report.failures.push(format!(
                        "unreachable member {UNREACHABLE} became a voter (the quorum widened)"
                    )),
                    Some(_) => {
                        println!("    member {UNREACHABLE} is a learner: the quorum is as it was")
                    }
                    None => steps.report.failures.push(format!(
                        "member {UNREACHABLE} is not in the cluster after it was added"
                    )),
                },
                None => steps
                    .report
                    .failures
                    .push("the leader did not answer".into()),
            },
            None => steps
                .report
                .failures
                .push("no leader after adding a member".into()),
        }
        steps
            .step(format!("remove member {UNREACHABLE}"), async {
                hosts
                    .members_change(
                        Method::DELETE,
                        &format!("/v1/cluster/members/{UNREACHABLE}"),
                        None,
                    )
                    .await
            })
            .await;
    }

    let joined = steps
        .step(
            format!("join store{JOINER} as a learner, caught up"),
            async {
                hosts.join().await?;
                hosts.wait_caught_up(JOINER, catch_up).await
            },
        )
        .await;
    if joined.is_some() {
        let promoted = steps
            .step(format!("promote member {JOINER}"), async {
                let c = hosts
                    .members_change(
                        Method::POST,
                        &format!("/v1/cluster/members/{JOINER}/promote"),
                        None,
                    )
                    .await?;
                if !c.members.iter().any(|m| m.id == JOINER && m.voter) {
                    anyhow::bail!(
                        "member {JOINER} is not a voter after promotion: {:?}",
                        c.members
                    );
                }
                Ok(())
            })
            .await;
        if promoted.is_some() {
            // An old follower leaves (the leader stays, so this step is the change alone).
            let leader = hosts.leader().await;
            let old = [3, 2, 1]
                .into_iter()
                .find(|id| Some(*id) != leader && hosts.members().contains(id));
            if let Some(old) = old {
                steps
                    .step(format!("remove old member {old}"), async {
                        hosts.remove(old).await?;
                        hosts.wait_leader(catch_up).await.map(|_| ())
                    })
                    .await;
            }
        }
    }
    steps.report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;

    fn op(complete_ns: u64, outcome: Outcome) -> Operation {
        Operation {
            id: 0,
            client: 0,
            op: Op::Get { key: "k".into() },
            invoke_ns: 0,
            complete_ns,
            outcome,
            revision: None,
        }
    }

    #[test]
    fn stall_is_the_longest_gap_between_acknowledged_writes() {
        let ops = vec![
            op(10, Outcome::Written),
            op(30, Outcome::Swapped(true)),
            op(35, Outcome::Read(None)),
            op(80, Outcome::Written),
            op(90, Outcome::Unknown),
            op(500, Outcome::Written),
        ];
        // Window 0..=100: gaps 10, 20, 50, and 20 to the end; the read does not count.
        assert_eq!(write_stall(&ops, 0, 100), (50, 3));
        // No write at all: the whole window.
        assert_eq!(write_stall(&ops, 100, 200), (100, 0));
    }
}
