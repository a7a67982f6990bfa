//! The watch checker: judges what every watcher received against the store's own record of
//! the prefix (`truth`), for etcd's watch guarantees:
//! - ordered and no duplicates: revisions strictly increase over the whole watcher, across
//!   reconnects;
//! - atomic: a delivered revision carries exactly the truth's changes of that revision, in
//!   order (never split, never invented);
//! - no gaps, and resumption lands on the next revision: every truth revision from the
//!   watcher's first start to the last revision it received was delivered;
//! - every acknowledged write is in the truth at its revision, with its value.
//!
//! Progress notifications (batches without changes) are ignored.

use std::collections::BTreeMap;

use crate::history::{Op, Operation, Outcome, RevisionBatch, WatcherLog};

/// Anomalies reported per watcher before the rest are only counted.
const MAX_PER_WATCHER: usize = 20;

#[derive(Debug, Clone, Default)]
pub struct WatchReport {
    pub watchers: usize,
    pub events_checked: usize,
    pub anomalies: Vec<String>,
}

impl WatchReport {
    pub fn ok(&self) -> bool {
        self.anomalies.is_empty()
    }
}

/// Every acknowledged write (a put, or a swap that happened) whose revision the truth covers
/// must be in it at that revision with its value; returns those that are not.
pub fn missing_acknowledged_writes(
    truth: &[RevisionBatch],
    operations: &[Operation],
) -> Vec<String> {
    let by_rev: BTreeMap<i64, &RevisionBatch> = truth.iter().map(|b| (b.revision, b)).collect();
    let mut missing = Vec::new();
    let (Some(first), Some(last)) = (truth.first(), truth.last()) else {
        return missing;
    };
    for o in operations {
        let (key, value) = match (&o.op, &o.outcome) {
            (Op::Put { key, value }, Outcome::Written) => (key, value),
            (Op::Cas { key, new, .. }, Outcome::Swapped(true)) => (key, new),
            _ => continue,
        };
        let Some(r) = o.revision else {
            missing.push(format!(
                "acknowledged write {key}={value} (op {}) has no revision",
                o.id
            ));
            continue;
        };
        if r < first.revision || r > last.revision {
            continue;
        }
        let present = by_rev.get(&r).is_some_and(|b| {
            b.changes
                .iter()
                .any(|c| &c.key == key && c.value.as_deref() == Some(value.as_str()))
        });
        if !present {
            missing.push(format!(
                "acknowledged write {key}={value} (op {}) at revision {r} is missing from the store's history",
                o.id
            ));
        }
    }
    missing
}

/// Checks every watcher against the truth, and the acknowledged writes against it.
pub fn check(
    watchers: &[WatcherLog],
    truth: &[RevisionBatch],
    operations: &[Operation],
) -> WatchReport {
    let mut report = WatchReport {
        watchers: watchers.len(),
        ..Default::default()
    };
    let by_rev: BTreeMap<i64, &RevisionBatch> = truth.iter().map(|b| (b.revision, b)).collect();
    report.anomalies = missing_acknowledged_writes(truth, operations);
    for w in watchers {
        let mut found: Vec<String> = Vec::new();
        let mut last: Option<i64> = None;
        let mut first_start: Option<i64> = None;
        for (si, seg) in w.segments.iter().enumerate() {
            first_start.get_or_insert(seg.start_revision);
            if let Some(l) = last {
                if seg.start_revision > l + 1
                    && by_rev.range(l + 1..seg.start_revision).next().is_some()
                {
                    found.push(format!(
                        "{} segment {si}: resumed at revision {} but had only received up to {l}",
                        w.name, seg.start_revision
                    ));
                }
            }
            for b in seg.batches.iter().filter(|b| !b.changes.is_empty()) {
                report.events_checked += b.changes.len();
                if let Some(l) = last {
                    if b.revision == l {
                        found.push(format!(
                            "{} segment {si}: revision {} delivered twice",
                            w.name, b.revision
                        ));
                        continue;
                    }
                    if b.revision < l {
                        found.push(format!(
                            "{} segment {si}: revision {} after revision {l} (out of order)",
                            w.name, b.revision
                        ));
                        continue;
                    }
                    // Everything the store had between the two must have come.
                    for (missing, _) in by_rev.range(l + 1..b.revision) {
                        found.push(format!(
                            "{} segment {si}: revision {missing} missing (got {l}, then {})",
                            w.name, b.revision
                        ));
                    }
                } else {
                    let start = seg
                        .start_revision
                        .min(first_start.unwrap_or(seg.start_revision));
                    for (missing, _) in by_rev.range(start..b.revision) {
                        found.push(format!(
                            "{} segment {si}: revision {missing} missing before the first event ({})",
                            w.name, b.revision
                        ));
                    }
                }
                if b.revision < seg.start_revision {
                    found.push(format!(
                        "{} segment {si}: revision {} before the requested start {}",
                        w.name, b.revision, seg.start_revision
                    ));
                }
                match by_rev.get(&b.revision) {
                    None => found.push(format!(
                        "{} segment {si}: event for revision {} that the store never had",
                        w.name, b.revision
                    )),
                    Some(t) if t.changes != b.changes => found.push(format!(
                        "{} segment {si}: revision {} delivered as {} changes {:?}, the store has {} {:?}",
                        w.name,
                        b.revision,
                        b.changes.len(),
                        b.changes,
                        t.changes.len(),
                        t.changes
                    )),
                    Some(_) => {}
                }
                last = Some(b.revision);
            }
        }
        let n = found.len();
        report
            .anomalies
            .extend(found.into_iter().take(MAX_PER_WATCHER));
        if n > MAX_PER_WATCHER {
            report
                .anomalies
                .push(format!("{}: and {} more", w.name, n - MAX_PER_WATCHER));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Change, WatchSegment};

    fn batch(rev: i64, changes: &[(&str, Option<&str>)]) -> RevisionBatch {
        RevisionBatch {
            revision: rev,
            changes: changes
                .iter()
                .map(|(k, v)| Change {
                    key: k.to_string(),
                    value: v.map(str::to_string),
                })
                .collect(),
        }
    }

    /// The store's record: revisions 10, 11, 13 (12 touched another prefix), 14 with two
    /// changes.
    fn truth() -> Vec<RevisionBatch> {
        vec![
            batch(10, &[("a", Some("1"))]),
            batch(11, &[("b", Some("2"))]),
            batch(13, &[("a", None)]),
            batch(14, &[("a", Some("3")), ("b", Some("4"))]),
        ]
    }

    fn seg(start: i64, batches: Vec<RevisionBatch>) -> WatchSegment {
        WatchSegment {
            node: "n".into(),
            start_revision: start,
            batches,
        }
    }

    fn watcher(segments: Vec<WatchSegment>) -> Vec<WatcherLog> {
        vec![WatcherLog {
            name: "w".into(),
            segments,
        }]
    }

    fn good() -> Vec<WatchSegment> {
        let t = truth();
        vec![
            seg(10, vec![t[0].clone(), t[1].clone()]),
            seg(12, vec![batch(13, &[]), t[2].clone(), t[3].clone()]),
        ]
    }

    fn ok(segments: Vec<WatchSegment>) -> bool {
        let r = check(&watcher(segments), &truth(), &[]);
        println!("{:?}", r.anomalies);
        r.ok()
    }

    #[test]
    fn a_good_watcher_with_a_reconnect_and_progress_passes() {
        assert!(ok(good()));
        let r = check(&watcher(good()), &truth(), &[]);
        assert_eq!(r.events_checked, 5);
    }

    #[test]
    fn a_duplicated_event_fails() {
        let mut s = good();
        s[1].batches.insert(1, truth()[1].clone());
        assert!(!ok(s));
    }

    #[test]
    fn a_missing_revision_fails() {
        let mut s = good();
        s[1].batches.remove(1); // revision 13
        assert!(!ok(s));
    }

    #[test]
    fn out_of_order_fails() {
        let t = truth();
        assert!(!ok(vec![seg(
            10,
            vec![t[1].clone(), t[0].clone(), t[2].clone(), t[3].clone()]
        )]));
    }

    #[test]
    fn a_split_revision_fails() {
        let t = truth();
        assert!(!ok(vec![seg(
            10,
            vec![
                t[0].clone(),
                t[1].clone(),
                t[2].clone(),
                batch(14, &[("a", Some("3"))]),
                batch(14, &[("b", Some("4"))]),
            ]
        )]));
    }

    #[test]
    fn resumption_that_skips_a_revision_fails() {
        let t = truth();
        assert!(!ok(vec![
            seg(10, vec![t[0].clone()]),
            seg(13, vec![t[2].clone(), t[3].clone()]),
        ]));
    }

    #[test]
    fn resumption_that_repeats_the_last_revision_fails() {
        let t = truth();
        assert!(!ok(vec![
            seg(10, vec![t[0].clone(), t[1].clone()]),
            seg(11, vec![t[1].clone(), t[2].clone(), t[3].clone()]),
        ]));
    }

    #[test]
    fn an_invented_event_fails() {
        let mut s = good();
        s[1].batches.push(batch(15, &[("a", Some("x"))]));
        assert!(!ok(s));
    }

    #[test]
    fn an_acknowledged_write_missing_from_the_store_fails() {
        let op = |value: &str, rev| Operation {
            id: 1,
            client: 0,
            op: Op::Put {
                key: "b".into(),
                value: value.into(),
            },
            invoke_ns: 0,
            complete_ns: 1,
            outcome: Outcome::Written,
            revision: Some(rev),
        };
        assert!(check(&watcher(good()), &truth(), &[op("2", 11)]).ok());
        assert!(!check(&watcher(good()), &truth(), &[op("9", 11)]).ok());
        assert!(!check(&watcher(good()), &truth(), &[op("2", 12)]).ok());
    }
}
