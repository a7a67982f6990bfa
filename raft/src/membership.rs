//! Membership policy, as etcd has it: a new member joins as a learner and becomes a voter
//! only once it is in sync with the leader; and when the leader cannot reach a quorum of
//! voters. Pure functions over what the leader knows (openraft's replication metrics and when
//! each peer last answered); [`crate::node::StoreHandle`] applies them, the HTTP and gRPC
//! fronts only map the errors (the etcd texts below are what clientv3 matches on).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::types::{LogId, NodeId};

/// etcd's `ErrMemberNotLearner`: promoting a member that already votes.
pub const MEMBER_NOT_LEARNER: &str = "etcdserver: can only promote a learner member";

/// etcd's `ErrLearnerNotReady`: promoting a learner that has not caught up.
pub const LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";

/// etcd's `learnerReadyPercent`: a learner is in sync when its matched log index is at least
/// this share of the leader's.
pub const LEARNER_READY_PERCENT: u64 = 90;

/// The client route that promotes learner `id` (named in error messages).
pub fn promote_route(id: NodeId) -> String {
    format!("POST /v1/cluster/members/{id}/promote")
}

/// Whether `learner` is in sync with `leader`, from the leader's replication metrics (the
/// log id each member is known to hold; `None` for a member that never acknowledged any) and
/// whether the learner answered the leader recently.
///
/// etcd's rule: the learner's matched index is at least [`LEARNER_READY_PERCENT`] of the
/// leader's. A learner that never acknowledged an entry is not in sync, whatever the
/// leader's index. Beyond etcd, a learner must also have answered lately (`answered_lately`):
/// one that caught up and then died would otherwise pass on an idle cluster, and promoting
/// it would take a quorum member away from the living.
pub fn learner_in_sync(
    replication: &BTreeMap<NodeId, Option<LogId>>,
    leader: NodeId,
    leader_last_log_index: Option<u64>,
    learner: NodeId,
    answered_lately: bool,
) -> bool {
    let Some(Some(matched)) = replication.get(&learner) else {
        return false;
    };
    let leader_index = replication
        .get(&leader)
        .copied()
        .flatten()
        .map(|l| l.index)
        .or(leader_last_log_index)
        .unwrap_or(0);
    answered_lately
        && u128::from(matched.index) * 100
            >= u128::from(leader_index) * u128::from(LEARNER_READY_PERCENT)
}

/// The message for a learner that was added but has not caught up within `waited`.
pub fn not_caught_up(id: NodeId, waited: Duration) -> String {
    format!(
        "member {id} was added as a learner but has not caught up with the leader within \
         {:.1} s; it stays a learner and can be promoted once it has caught up: {}",
        waited.as_secs_f64(),
        promote_route(id)
    )
}

/// Why a leader has no quorum: it has not heard from a quorum of voters for `since_ack`
/// (`None`: not since it was elected), more than `limit`; `unreachable` are the voters that
/// have not answered it within `limit`.
pub fn no_quorum(
    leader: NodeId,
    since_ack: Option<Duration>,
    limit: Duration,
    unreachable: &[NodeId],
) -> String {
    let when = match since_ack {
        Some(d) => format!("for {} ms", d.as_millis()),
        None => "since it was elected".to_string(),
    };
    let who = if unreachable.is_empty() {
        "unknown".to_string()
    } else {
        unreachable
            .iter()
            .map(NodeId::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "the cluster has no quorum: the leader (member {leader}) has not heard from a quorum \
         of voters {when} (the limit is the election timeout, {} ms); unreachable voters: {who}",
        limit.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(index: u64) -> Option<LogId> {
        Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index))
    }

    #[test]
    fn a_learner_is_in_sync_at_ninety_percent_of_the_leader_and_answering() {
        let r = BTreeMap::from([(1, log(100)), (4, log(90)), (5, log(89)), (6, None)]);
        assert!(learner_in_sync(&r, 1, Some(100), 4, true));
        assert!(
            !learner_in_sync(&r, 1, Some(100), 4, false),
            "silent lately"
        );
        assert!(!learner_in_sync(&r, 1, Some(100), 5, true), "89 of 100");
        assert!(
            !learner_in_sync(&r, 1, Some(100), 6, true),
            "never answered"
        );
        assert!(
            !learner_in_sync(&r, 1, Some(100), 7, true),
            "not replicated to"
        );
    }

    #[test]
    fn the_leaders_own_index_falls_back_to_its_last_log() {
        let r = BTreeMap::from([(4, log(9))]);
        assert!(learner_in_sync(&r, 1, Some(10), 4, true));
        assert!(!learner_in_sync(&r, 1, Some(11), 4, true));
        // Index 0 (the founding membership entry) is an answer.
        let r = BTreeMap::from([(1, log(0)), (4, log(0))]);
        assert!(learner_in_sync(&r, 1, None, 4, true));
    }

    #[test]
    fn huge_indexes_do_not_overflow() {
        let r = BTreeMap::from([(1, log(u64::MAX)), (4, log(u64::MAX - 1))]);
        assert!(learner_in_sync(&r, 1, None, 4, true));
    }

    #[test]
    fn the_no_quorum_message_names_the_unreachable_voters() {
        let m = no_quorum(
            1,
            Some(Duration::from_millis(1500)),
            Duration::from_millis(600),
            &[2, 3],
        );
        assert!(m.contains("no quorum") && m.contains("for 1500 ms"), "{m}");
        assert!(m.ends_with("unreachable voters: 2, 3"), "{m}");
        let m = no_quorum(1, None, Duration::from_millis(600), &[]);
        assert!(
            m.contains("since it was elected") && m.ends_with("voters: unknown"),
            "{m}"
        );
    }

    #[test]
    fn the_not_caught_up_message_names_the_promote_route() {
        let m = not_caught_up(4, Duration::from_millis(3750));
        assert!(m.starts_with("member 4 was added as a learner"), "{m}");
        assert!(m.contains("within 3.8 s"), "{m}");
        assert!(
            m.contains("has not caught up") && m.contains("POST /v1/cluster/members/4/promote")
        );
    }
}
