//! Counters and histograms of one store node, rendered in Prometheus text format by
//! `GET /metrics`. Proposal and watch counters are atomics; per-endpoint request counts sit
//! behind one short mutex. Gauges that belong to other parts (term, applied index, watchers)
//! are passed in by the caller at render time.
//!
//! The [`Stage`]s of a write (queue, proposal, log append and flush, replication, apply)
//! each have a histogram, and the log's flushes and appended entries are counted, so that
//! `miniku-bench --trace` can say where a write's time goes and how many fdatasyncs each
//! committed entry costs.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
    5.0, 30.0,
];

/// One step on a write's way, each timed where it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// In the proposer's queue, until a batch takes the write.
    Queue,
    /// On the leader: `client_write` of one batch, until it is applied and answered.
    ClientWrite,
    /// On a follower: one batch forwarded to the leader and answered.
    Forward,
    /// Any member: the log entries of one append written (not yet durable).
    LogAppend,
    /// Any member: the flush (fdatasync) that makes one append durable.
    LogFlush,
    /// On the leader: one AppendEntries round trip to a follower.
    Replicate,
    /// On a follower: one AppendEntries handled, from decoded request to encoded answer.
    AppendServe,
    /// Any member: one batch of committed entries applied to the state machine.
    Apply,
}

impl Stage {
    const ALL: [Stage; 8] = [
        Stage::Queue,
        Stage::ClientWrite,
        Stage::Forward,
        Stage::LogAppend,
        Stage::LogFlush,
        Stage::Replicate,
        Stage::AppendServe,
        Stage::Apply,
    ];

    /// The `stage` label.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::ClientWrite => "client_write",
            Stage::Forward => "forward",
            Stage::LogAppend => "log_append",
            Stage::LogFlush => "log_flush",
            Stage::Replicate => "replicate",
            Stage::AppendServe => "append_serve",
            Stage::Apply => "apply",
        }
    }
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    proposals: AtomicU64,
    proposed_commands: AtomicU64,
    leader_changes: AtomicU64,
    watch_events_sent: AtomicU64,
    proposal_latency: Mutex<Histogram>,
    /// One per [`Stage`], in `Stage::ALL` order.
    stages: [Mutex<Histogram>; Stage::ALL.len()],
    log_flushes: AtomicU64,
    log_entries_appended: AtomicU64,
    /// (endpoint, status) → latency histogram.
    requests: Mutex<BTreeMap<(&'static str, u16), Histogram>>,
}

#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// Gauges owned by other parts of the node, read when rendering.
pub struct Gauges {
    pub member_id: u64,
    pub term: u64,
    pub is_leader: bool,
    pub applied_index: u64,
    pub revision: i64,
    pub compact_revision: i64,
    pub watchers: usize,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics::default()
    }

    /// One Raft entry proposed with `commands` client commands, committed after `elapsed`.
    pub fn observe_proposal(&self, commands: usize, elapsed: Duration) {
        self.inner.proposals.fetch_add(1, Ordering::Relaxed);
        self.inner
            .proposed_commands
            .fetch_add(commands as u64, Ordering::Relaxed);
        self.inner
            .proposal_latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(elapsed.as_secs_f64());
    }

    /// One pass through `stage` that took `elapsed`.
    pub fn observe_stage(&self, stage: Stage, elapsed: Duration) {
        let i = Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0);
        self.inner.stages[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(elapsed.as_secs_f64());
    }

    /// One flush of the database (an fdatasync), for the Raft log or its vote.
    pub fn log_flushed(&self) {
        self.inner.log_flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` entries written to the Raft log.
    pub fn log_appended(&self, n: usize) {
        self.inner
            .log_entries_appended
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn leader_changed(&self) {
        self.inner.leader_changes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn watch_events_sent(&self, n: usize) {
        self.inner
            .watch_events_sent
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn observe_request(&self, endpoint: &'static str, status: u16, elapsed: Duration) {
        self.inner
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((endpoint, status))
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// Everything in Prometheus text format.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "miniku_store_member_id",
            "This member's id.",
            g.member_id.to_string(),
        );
        gauge(
            &mut out,
            "miniku_store_raft_term",
            "Current Raft term.",
            g.term.to_string(),
        );
        gauge(
            &mut out,
            "miniku_store_is_leader",
            "1 if this member leads.",
            u8::from(g.is_leader).to_string(),
        );
        gauge(
            &mut out,
            "miniku_store_applied_index",
            "Last applied log index.",
            g.applied_index.to_string(),
        );
        gauge(
            &mut out,
            "miniku_store_revision",
            "Current store revision.",
            g.revision.to_string(),
        );
        gauge(
            &mut out,
            "miniku_store_compact_revision",
            "Revisions below this are compacted.",
            g.compact_revision.to_string(),
        );
        gauge(
            &mut out,
            "miniku_store_watchers",
            "Open watch streams on this member.",
            g.watchers.to_string(),
        );
        let i = &self.inner;
        counter(
            &mut out,
            "miniku_store_leader_changes_total",
            "Leader changes seen.",
            i.leader_changes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "miniku_store_proposals_total",
            "Raft entries proposed by this member.",
            i.proposals.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "miniku_store_proposed_commands_total",
            "Client commands in those entries.",
            i.proposed_commands.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "miniku_store_watch_events_sent_total",
            "Watch messages sent.",
            i.watch_events_sent.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "miniku_store_log_flushes_total",
            "Flushes (fdatasyncs) of the Raft log and vote.",
            i.log_flushes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "miniku_store_log_entries_appended_total",
            "Entries written to the Raft log.",
            i.log_entries_appended.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP miniku_store_write_stage_seconds Time in each stage of a write.\n# TYPE miniku_store_write_stage_seconds histogram");
        for (stage, h) in Stage::ALL.iter().zip(&i.stages) {
            h.lock().unwrap_or_else(|p| p.into_inner()).render(
                &mut out,
                "miniku_store_write_stage_seconds",
                &format!("stage=\"{}\"", stage.name()),
            );
        }
        let _ = writeln!(out, "# HELP miniku_store_proposal_seconds Time from proposal to commit.\n# TYPE miniku_store_proposal_seconds histogram");
        i.proposal_latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .render(&mut out, "miniku_store_proposal_seconds", "");
        let _ = writeln!(out, "# HELP miniku_store_http_request_seconds Client API requests by endpoint and status.\n# TYPE miniku_store_http_request_seconds histogram");
        for ((endpoint, status), h) in i.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            h.render(
                &mut out,
                "miniku_store_http_request_seconds",
                &format!("endpoint=\"{endpoint}\",status=\"{status}\""),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.observe_proposal(3, Duration::from_millis(3));
        m.observe_request("kv_put", 200, Duration::from_micros(700));
        m.observe_stage(Stage::LogFlush, Duration::from_micros(150));
        m.log_flushed();
        let text = m.render(&Gauges {
            member_id: 1,
            term: 2,
            is_leader: true,
            applied_index: 9,
            revision: 5,
            compact_revision: 0,
            watchers: 1,
        });
        assert!(text.contains("miniku_store_proposed_commands_total 3"));
        assert!(text.contains("miniku_store_proposal_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("endpoint=\"kv_put\",status=\"200\",le=\"0.001\"} 1"));
        assert!(text.contains("miniku_store_is_leader 1"));
        assert!(text.contains(
            "miniku_store_write_stage_seconds_bucket{stage=\"log_flush\",le=\"0.00025\"} 1"
        ));
        assert!(text.contains("miniku_store_write_stage_seconds_count{stage=\"apply\"} 0"));
        assert!(text.contains("miniku_store_log_flushes_total 1"));
    }
}
