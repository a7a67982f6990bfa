//! `--trace`: where a workload's writes spent their time. Scrapes every member's
//! `/metrics` before and after the workload and prints, per member, each stage of a write
//! (Miniku's `miniku_store_write_stage_seconds`) with its count, mean and bucket-bounded
//! p50/p99 over the run, and the fdatasyncs per log entry. For etcd it prints the matching
//! figures etcd exports (WAL fsyncs, backend commits, peer round trips per proposal).
//!
//! Reads only what the members publish; it never changes the workload.

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};

/// One scrape: series (`name{labels}`) → value.
type Scrape = HashMap<String, f64>;

/// Parses Prometheus text format (comments skipped, the value after the last space).
fn parse(text: &str) -> Scrape {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The scrapes taken before the workload.
pub struct Trace {
    http: reqwest::Client,
    endpoints: Vec<String>,
    before: Vec<Scrape>,
}

/// Miniku's stages, in the order a write meets them.
const STAGES: [(&str, &str); 8] = [
    ("queue", "waiting in the proposer's queue"),
    ("forward", "follower: batch forwarded to the leader"),
    ("client_write", "leader: client_write until applied"),
    ("log_append", "log entries written (not yet durable)"),
    ("log_flush", "fdatasync of the log"),
    ("replicate", "leader: one AppendEntries round trip"),
    ("append_serve", "follower: one AppendEntries served"),
    ("apply", "committed entries applied"),
];

impl Trace {
    pub async fn start(endpoints: &[String]) -> Result<Trace> {
        let http = reqwest::Client::new();
        let mut before = Vec::new();
        for ep in endpoints {
            before.push(scrape(&http, ep).await?);
        }
        Ok(Trace {
            http,
            endpoints: endpoints.to_vec(),
            before,
        })
    }

    /// Scrapes again and prints the breakdown.
    pub async fn finish(self) -> Result<()> {
        let mut text = String::new();
        for (ep, before) in self.endpoints.iter().zip(&self.before) {
            let after = scrape(&self.http, ep).await?;
            let d = |series: &str| {
                after.get(series).unwrap_or(&0.0) - before.get(series).unwrap_or(&0.0)
            };
            if after.keys().any(|k| k.starts_with("miniku_store_")) {
                miniku_member(&mut text, ep, &after, &d);
            } else {
                etcd_member(&mut text, ep, &d);
            }
        }
        print!("{text}");
        Ok(())
    }
}

async fn scrape(http: &reqwest::Client, endpoint: &str) -> Result<Scrape> {
    let url = format!("http://{endpoint}/metrics");
    let body = http
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("scraping {url}"))?
        .text()
        .await
        .with_context(|| format!("reading {url}"))?;
    Ok(parse(&body))
}

/// The upper bound of the bucket where the `q` quantile of the run's observations falls.
fn quantile(after: &Scrape, d: &dyn Fn(&str) -> f64, stage: &str, q: f64) -> Option<f64> {
    let prefix = format!("miniku_store_write_stage_seconds_bucket{{stage=\"{stage}\",le=\"");
    let mut buckets: Vec<(f64, f64)> = after
        .keys()
        .filter_map(|k| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, d(k)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, cumulative)| *cumulative >= q * total)
        .map(|(bound, _)| *bound)
}

fn micros(secs: f64) -> String {
    if secs.is_infinite() {
        ">30 s".into()
    } else {
        format!("{:.0} µs", secs * 1e6)
    }
}

fn miniku_member(out: &mut String, ep: &str, after: &Scrape, d: &dyn Fn(&str) -> f64) {
    let leader = after.get("miniku_store_is_leader").copied().unwrap_or(0.0) > 0.0;
    let _ = writeln!(
        out,
        "member {ep}{}:",
        if leader { " (leader at the end)" } else { "" }
    );
    let _ = writeln!(
        out,
        "  {:<13} {:>8} {:>10} {:>10} {:>10} {:>7}  what",
        "stage", "count", "mean", "p50 ≤", "p99 ≤", ">50 ms"
    );
    for (stage, what) in STAGES {
        let count = d(&format!(
            "miniku_store_write_stage_seconds_count{{stage=\"{stage}\"}}"
        ));
        if count <= 0.0 {
            continue;
        }
        let sum = d(&format!(
            "miniku_store_write_stage_seconds_sum{{stage=\"{stage}\"}}"
        ));
        let q = |q| quantile(after, d, stage, q).map_or("-".into(), micros);
        let slow = count
            - d(&format!(
                "miniku_store_write_stage_seconds_bucket{{stage=\"{stage}\",le=\"0.05\"}}"
            ));
        let _ = writeln!(
            out,
            "  {stage:<13} {count:>8.0} {:>10} {:>10} {:>10} {slow:>7.0}  {what}",
            micros(sum / count),
            q(0.5),
            q(0.99)
        );
    }
    let flushes = d("miniku_store_log_flushes_total");
    let entries = d("miniku_store_log_entries_appended_total");
    let proposals = d("miniku_store_proposals_total");
    let commands = d("miniku_store_proposed_commands_total");
    let _ = writeln!(
        out,
        "  log: {entries:.0} entries appended, {flushes:.0} flushes ({:.2} per entry)",
        flushes / entries.max(1.0)
    );
    if proposals > 0.0 {
        let _ = writeln!(
            out,
            "  proposals: {proposals:.0} batches of {:.1} commands on average",
            commands / proposals
        );
    }
}

fn etcd_member(out: &mut String, ep: &str, d: &dyn Fn(&str) -> f64) {
    let _ = writeln!(out, "member {ep} (etcd):");
    let mean = |name: &str| {
        let n = d(&format!("{name}_count"));
        (
            n,
            if n > 0.0 {
                d(&format!("{name}_sum")) / n
            } else {
                0.0
            },
        )
    };
    let committed = d("etcd_server_proposals_committed_total");
    let (fsyncs, fsync_mean) = mean("etcd_disk_wal_fsync_duration_seconds");
    let (commits, commit_mean) = mean("etcd_disk_backend_commit_duration_seconds");
    let _ = writeln!(
        out,
        "  WAL fsyncs: {fsyncs:.0}, mean {} ({:.2} per committed proposal of {committed:.0})",
        micros(fsync_mean),
        fsyncs / committed.max(1.0)
    );
    let _ = writeln!(
        out,
        "  backend commits: {commits:.0}, mean {}",
        micros(commit_mean)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_bucket_deltas() {
        let before = parse(
            "miniku_store_write_stage_seconds_bucket{stage=\"apply\",le=\"0.0001\"} 5\n\
             miniku_store_write_stage_seconds_bucket{stage=\"apply\",le=\"0.001\"} 5\n\
             miniku_store_write_stage_seconds_bucket{stage=\"apply\",le=\"+Inf\"} 5\n",
        );
        let after = parse(
            "# TYPE x histogram\n\
             miniku_store_write_stage_seconds_bucket{stage=\"apply\",le=\"0.0001\"} 6\n\
             miniku_store_write_stage_seconds_bucket{stage=\"apply\",le=\"0.001\"} 14\n\
             miniku_store_write_stage_seconds_bucket{stage=\"apply\",le=\"+Inf\"} 15\n",
        );
        let d = |s: &str| after.get(s).unwrap_or(&0.0) - before.get(s).unwrap_or(&0.0);
        // 10 new observations: 1 under 0.1 ms, 8 more under 1 ms, 1 above.
        assert_eq!(quantile(&after, &d, "apply", 0.5), Some(0.001));
        assert_eq!(quantile(&after, &d, "apply", 0.1), Some(0.0001));
        assert_eq!(quantile(&after, &d, "apply", 0.99), Some(f64::INFINITY));
        assert_eq!(quantile(&after, &d, "queue", 0.5), None);
    }
}
