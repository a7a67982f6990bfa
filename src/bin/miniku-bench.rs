//! `miniku-bench`: a load generator for the store's HTTP API. Prints throughput and latency
//! percentiles; it is a benchmark, not a test.
//!
//! ```sh
//! miniku-bench put --clients 64 --requests 20000
//! miniku-bench get --clients 16 --requests 20000 [--serializable]
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    /// PUT of distinct keys.
    Put,
    /// GET of keys written first (linearizable unless --serializable).
    Get,
}

#[derive(Parser, Debug)]
#[command(about = "Load generator for the Miniku store's HTTP API")]
struct Args {
    #[arg(value_enum)]
    workload: Workload,
    /// Store client endpoints; clients are spread over them.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379"
    )]
    endpoints: Vec<String>,
    /// Concurrent clients (each with its own keep-alive connection).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total requests.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Key size in bytes (keys are zero-padded numbers).
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Serializable (local) reads for `get`.
    #[arg(long)]
    serializable: bool,
}

fn key(i: usize, size: usize) -> String {
    format!("{i:0size$}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let value = "x".repeat(args.value_size);
    let urls: Vec<String> = args
        .endpoints
        .iter()
        .map(|e| {
            if e.starts_with("http") {
                e.clone()
            } else {
                format!("http://{e}")
            }
        })
        .collect();
    if args.workload == Workload::Get {
        // Load the keys first.
        let http = reqwest::Client::new();
        for i in 0..args.requests.min(10_000) {
            http.put(format!("{}/v1/kv/{}", urls[0], key(i, args.key_size)))
                .body(value.clone())
                .send()
                .await?
                .error_for_status()?;
        }
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
        let base = urls[c % urls.len()].clone();
        let next = next.clone();
        let value = value.clone();
        let (workload, total, key_size, serializable) = (
            args.workload,
            args.requests,
            args.key_size,
            args.serializable,
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                let req = match workload {
                    Workload::Put => http
                        .put(format!("{base}/v1/kv/{}", key(i, key_size)))
                        .body(value.clone()),
                    Workload::Get => {
                        let q = if serializable {
                            "?serializable=true"
                        } else {
                            ""
                        };
                        http.get(format!("{base}/v1/kv/{}{q}", key(i % 10_000, key_size)))
                    }
                };
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all: Vec<Duration> = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{:?} clients={} requests={} errors={} throughput={:.0}/s p50={:.2}ms p99={:.2}ms max={:.2}ms",
        args.workload,
        args.clients,
        all.len(),
        errors,
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        all.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    );
    Ok(())
}
