//! `miniku-bench`: one load generator for the Miniku store (HTTP/JSON) and etcd (gRPC,
//! through etcd-client), so both are driven with the same workloads. Prints one JSON line
//! per run (and appends it to `--json FILE`); `scripts/bench.sh` runs the matrix and the
//! table. A benchmark, not a test.
//!
//! ```sh
//! miniku-bench --system miniku put --clients 64 --requests 20000
//! miniku-bench --system etcd --endpoints 127.0.0.1:2479 get --clients 16 --serializable
//! ```

mod control_plane;
mod rollout;
mod trace;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use miniku_store::sse;
use serde_json::json;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    /// The Miniku store over its HTTP API.
    Miniku,
    /// The Miniku store over etcd's gRPC API, through the same client as `etcd`.
    MinikuGrpc,
    Etcd,
}

impl System {
    /// Driven through etcd's gRPC client.
    fn grpc(self) -> bool {
        matches!(self, System::Etcd | System::MinikuGrpc)
    }

    /// The name results carry (as given on the command line).
    fn name(self) -> &'static str {
        match self {
            System::Miniku => "miniku",
            System::MinikuGrpc => "miniku-grpc",
            System::Etcd => "etcd",
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Load generator for the Miniku store and etcd")]
struct Args {
    #[arg(long, value_enum, default_value = "miniku")]
    system: System,
    /// Client endpoints HOST:PORT; clients are spread over them.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379"
    )]
    endpoints: Vec<String>,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Append the result line to this file.
    #[arg(long)]
    json: Option<String>,
    /// After the workload, print where the writes' time went, per member and stage, from
    /// the members' /metrics (Miniku's write stages; etcd's fsync figures).
    #[arg(long)]
    trace: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug, Clone)]
enum Workload {
    /// Puts of distinct keys.
    Put {
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
    },
    /// Gets of keys loaded first (linearizable unless --serializable).
    Get {
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        #[arg(long)]
        serializable: bool,
    },
    /// Compare-and-swap transactions on 10 contended keys (read mod_revision, then a txn
    /// comparing it).
    Cas {
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 5_000)]
        requests: usize,
    },
    /// Watch delivery latency: time from a put's acknowledgement to each watcher's receipt.
    Watch {
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        #[arg(long, default_value_t = 200)]
        events: usize,
    },
    /// Loads N keys (for memory and disk figures).
    Load {
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
    },
    /// Through the API server: create a ReplicaSet, follow its pods through a watch until
    /// all run, then delete it (pods per second, pod startup latency).
    ControlPlane(control_plane::PodSet),
    /// Creates a Deployment through the Kubernetes API, then times a rolling update of all
    /// its pods until the Deployment reports it complete.
    Rollout(control_plane::PodSet),
    /// Writes continuously for `--seconds`; reports the longest time without a successful
    /// write (kill the leader meanwhile).
    Failover {
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        clients: usize,
    },
}

fn key(prefix: &str, i: usize, size: usize) -> String {
    let digits = size.saturating_sub(prefix.len()).max(1);
    format!("{prefix}{i:0digits$}")
}

/// One connection-pooled client of either system.
#[derive(Clone)]
enum Kv {
    Miniku { http: reqwest::Client, base: String },
    Etcd(Box<etcd_client::Client>),
}

impl Kv {
    async fn connect(system: System, endpoint: &str, all: &[String]) -> Result<Kv> {
        Ok(match system {
            System::Miniku => Kv::Miniku {
                http: reqwest::Client::builder()
                    .tcp_nodelay(true)
                    .timeout(Duration::from_secs(5))
                    .build()?,
                base: format!("http://{endpoint}"),
            },
            System::Etcd | System::MinikuGrpc => {
                let _ = all;
                let opts = etcd_client::ConnectOptions::new()
                    .with_timeout(Duration::from_secs(5))
                    .with_connect_timeout(Duration::from_secs(1));
                Kv::Etcd(Box::new(
                    etcd_client::Client::connect([endpoint], Some(opts)).await?,
                ))
            }
        })
    }

    async fn put(&mut self, k: &str, v: &str) -> Result<i64> {
        match self {
            Kv::Miniku { http, base } => {
                let r = http
                    .put(format!("{base}/v1/kv/{k}"))
                    .body(v.to_string())
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("put: {}", r.status());
                }
                let j: serde_json::Value = r.json().await?;
                Ok(j["header"]["revision"].as_i64().unwrap_or(0))
            }
            Kv::Etcd(c) => Ok(c
                .put(k, v, None)
                .await?
                .header()
                .map_or(0, |h| h.revision())),
        }
    }

    /// Returns the key's mod_revision (0 if missing).
    async fn get(&mut self, k: &str, serializable: bool) -> Result<i64> {
        match self {
            Kv::Miniku { http, base } => {
                let q = if serializable {
                    "?serializable=true"
                } else {
                    ""
                };
                let r = http.get(format!("{base}/v1/kv/{k}{q}")).send().await?;
                if !r.status().is_success() {
                    bail!("get: {}", r.status());
                }
                let j: serde_json::Value = r.json().await?;
                Ok(j["kvs"][0]["mod_revision"].as_i64().unwrap_or(0))
            }
            Kv::Etcd(c) => {
                let opts = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                let r = c.get(k, opts).await?;
                Ok(r.kvs().first().map_or(0, |kv| kv.mod_revision()))
            }
        }
    }

    /// Puts `v` if `k`'s mod_revision is still `rev`; true if it did.
    async fn cas(&mut self, k: &str, rev: i64, v: &str) -> Result<bool> {
        match self {
            Kv::Miniku { http, base } => {
                let body = json!({
                    "compare": [{"key": k, "target": "mod_revision", "result": "=", "value": rev}],
                    "success": [{"put": {"key": k, "value": v}}],
                });
                let r = http
                    .post(format!("{base}/v1/txn"))
                    .json(&body)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("txn: {}", r.status());
                }
                let j: serde_json::Value = r.json().await?;
                Ok(j["succeeded"] == true)
            }
            Kv::Etcd(c) => {
                use etcd_client::{Compare, CompareOp, Txn, TxnOp};
                let txn = Txn::new()
                    .when([Compare::mod_revision(k, CompareOp::Equal, rev)])
                    .and_then([TxnOp::put(k, v, None)]);
                Ok(c.txn(txn).await?.succeeded())
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs `requests` operations over `clients` clients; returns latencies and errors.
async fn closed_loop<F, Fut>(
    args: &Args,
    clients: usize,
    requests: usize,
    op: F,
) -> Result<(Vec<Duration>, usize, Duration)>
where
    F: Fn(Kv, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Kv>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    // Every client is connected before the clock starts: a client connected while others
    // were already running would have its requests counted in a shorter time.
    let mut connected = Vec::with_capacity(clients.max(1));
    for c in 0..clients.max(1) {
        let ep = &args.endpoints[c % args.endpoints.len()];
        connected.push(Kv::connect(args.system, ep, &args.endpoints).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut kv in connected {
        let next = next.clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let t = Instant::now();
                match op(kv.clone(), i).await {
                    Ok(k) => {
                        kv = k;
                        lat.push(t.elapsed());
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed();
    all.sort();
    check_littles_law(clients.max(1), &all, elapsed)?;
    Ok((all, errors, elapsed))
}

/// Little's law: `clients` closed-loop clients keep at most `clients` requests in flight,
/// so throughput × latency cannot exceed `clients`. With the median latency (below the mean
/// for the right-skewed latencies seen here) a figure above twice that is a measuring
/// mistake (a clock started late, say), and the run fails rather than print it.
fn check_littles_law(clients: usize, lat: &[Duration], elapsed: Duration) -> Result<()> {
    let secs = elapsed.as_secs_f64();
    if lat.is_empty() || secs <= 0.0 {
        return Ok(());
    }
    let throughput = lat.len() as f64 / secs;
    let p50 = percentile(lat, 0.50) / 1000.0;
    let in_flight = throughput * p50;
    anyhow::ensure!(
        in_flight <= 2.0 * clients as f64,
        "implausible figures: {throughput:.0} ops/s at a p50 of {:.3} ms means {in_flight:.1} requests in flight, but only {clients} clients ran (a measuring mistake)",
        p50 * 1000.0
    );
    Ok(())
}

fn report(
    args: &Args,
    name: &str,
    params: serde_json::Value,
    lat: &[Duration],
    errors: usize,
    elapsed: Duration,
    extra: serde_json::Value,
) -> Result<()> {
    let mut line = json!({
        "system": args.system.name(),
        "workload": name,
        "params": params,
        "ops": lat.len(),
        "errors": errors,
        "seconds": elapsed.as_secs_f64(),
        "throughput": lat.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        "p50_ms": percentile(lat, 0.50),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": lat.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    });
    if let (Some(obj), Some(more)) = (line.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            obj.insert(k.clone(), v.clone());
        }
    }
    let text = serde_json::to_string(&line)?;
    println!("{text}");
    if let Some(path) = &args.json {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{text}")?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    // reqwest's rustls needs a crypto provider: ring (an error means one is installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let value: Arc<str> = "x".repeat(args.value_size).into();
    let ks = args.key_size;
    let trace = if args.trace {
        Some(trace::Trace::start(&args.endpoints).await?)
    } else {
        None
    };
    let ran = match args.workload.clone() {
        Workload::Put { clients, requests } => {
            let run: u32 = rand::random();
            let v = value.clone();
            let (lat, errors, elapsed) = closed_loop(&args, clients, requests, move |mut kv, i| {
                let v = v.clone();
                async move {
                    kv.put(&key(&format!("p{run:x}"), i, ks), &v).await?;
                    Ok(kv)
                }
            })
            .await?;
            report(
                &args,
                "put",
                json!({"clients": clients}),
                &lat,
                errors,
                elapsed,
                json!({}),
            )
        }
        Workload::Get {
            clients,
            requests,
            serializable,
        } => {
            let n = requests.min(1000);
            let mut loader = Kv::connect(args.system, &args.endpoints[0], &args.endpoints).await?;
            for i in 0..n {
                loader.put(&key("g", i, ks), &value).await?;
            }
            let (lat, errors, elapsed) =
                closed_loop(&args, clients, requests, move |mut kv, i| async move {
                    kv.get(&key("g", i % n, ks), serializable).await?;
                    Ok(kv)
                })
                .await?;
            let name = if serializable {
                "get_serializable"
            } else {
                "get_linearizable"
            };
            report(
                &args,
                name,
                json!({"clients": clients}),
                &lat,
                errors,
                elapsed,
                json!({}),
            )
        }
        Workload::Cas { clients, requests } => {
            let won = Arc::new(AtomicUsize::new(0));
            let w = won.clone();
            let v = value.clone();
            let (lat, errors, elapsed) = closed_loop(&args, clients, requests, move |mut kv, i| {
                let w = w.clone();
                let v = v.clone();
                async move {
                    let k = key("c", i % 10, ks);
                    let rev = kv.get(&k, false).await?;
                    if kv.cas(&k, rev, &v).await? {
                        w.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(kv)
                }
            })
            .await?;
            let ok = won.load(Ordering::Relaxed);
            report(
                &args,
                "cas_txn",
                json!({"clients": clients, "keys": 10}),
                &lat,
                errors,
                elapsed,
                json!({"succeeded": ok}),
            )
        }
        Workload::Load { keys, clients } => {
            let v = value.clone();
            let (lat, errors, elapsed) = closed_loop(&args, clients, keys, move |mut kv, i| {
                let v = v.clone();
                async move {
                    kv.put(&key("l", i, ks.max(8)), &v).await?;
                    Ok(kv)
                }
            })
            .await?;
            report(
                &args,
                "load",
                json!({"keys": keys}),
                &lat,
                errors,
                elapsed,
                json!({}),
            )
        }
        Workload::Watch { watchers, events } => watch(&args, watchers, events, &value).await,
        Workload::Failover { seconds, clients } => failover(&args, seconds, clients, &value).await,
        Workload::ControlPlane(pods) => {
            let o = control_plane::run(&pods).await?;
            let (replicas, image) = (pods.replicas, pods.image);
            let secs = |d: Duration| d.as_secs_f64();
            report(
                &args,
                "control-plane",
                json!({"replicas": replicas, "image": image}),
                &o.startup,
                0,
                o.all_running,
                json!({
                    "all_bound_s": secs(o.all_bound),
                    "all_running_s": secs(o.all_running),
                    "pods_bound_per_s": replicas as f64 / secs(o.binding_window).max(1e-3),
                    "pods_running_per_s": replicas as f64 / secs(o.all_running).max(1e-3),
                    "cleanup_s": secs(o.cleanup),
                }),
            )
        }
        Workload::Rollout(pods) => {
            let o = rollout::run(&pods).await?;
            let (replicas, image) = (pods.replicas, pods.image);
            let secs = |d: Duration| d.as_secs_f64();
            report(
                &args,
                "rollout",
                json!({"replicas": replicas, "image": image}),
                &[],
                0,
                o.rolled,
                json!({
                    "created_s": secs(o.created),
                    "rolled_s": secs(o.rolled),
                    "pods_replaced_per_s": replicas as f64 / secs(o.rolled).max(1e-3),
                }),
            )
        }
    };
    if let Some(trace) = trace {
        trace.finish().await?;
    }
    ran
}

/// Revision → when its put was acknowledged.
type Acks = Arc<Mutex<HashMap<i64, Instant>>>;

async fn watch(args: &Args, watchers: usize, events: usize, value: &str) -> Result<()> {
    let prefix = format!("w{:x}/", rand::random::<u32>());
    let receipts: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    // etcd: a few clients carry many watch streams each (gRPC multiplexes them).
    let mut etcd_clients = Vec::new();
    if args.system.grpc() {
        for ep in &args.endpoints {
            if let Kv::Etcd(c) = Kv::connect(System::Etcd, ep, &args.endpoints).await? {
                etcd_clients.push(*c);
            }
        }
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    for w in 0..watchers {
        let ep = args.endpoints[w % args.endpoints.len()].clone();
        let receipts = receipts.clone();
        let ready = ready.clone();
        let prefix = prefix.clone();
        match args.system {
            System::Miniku => {
                let http = http.clone();
                tasks.push(tokio::spawn(async move {
                    let url = format!("http://{ep}/v1/watch/{prefix}?prefix=true");
                    let resp = http.get(&url).send().await?;
                    ready.fetch_add(1, Ordering::SeqCst);
                    let mut s = resp.bytes_stream();
                    let mut frames = sse::Decoder::new();
                    let mut seen = 0;
                    while seen < events {
                        let Some(chunk) = s.next().await else { break };
                        frames.push(&chunk?);
                        while let Some(frame) = frames.next_frame() {
                            let now = Instant::now();
                            if let Some(id) = &frame.id {
                                if frame.data.contains("\"events\":[{") {
                                    let rev: i64 = id.trim().parse().unwrap_or(0);
                                    receipts
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .push((rev, now));
                                    seen += 1;
                                }
                            }
                        }
                    }
                    anyhow::Ok(())
                }));
            }
            System::Etcd | System::MinikuGrpc => {
                let mut c = etcd_clients[w % etcd_clients.len()].clone();
                tasks.push(tokio::spawn(async move {
                    let opts = etcd_client::WatchOptions::new().with_prefix();
                    let mut stream = c.watch(prefix.as_bytes(), Some(opts)).await?;
                    // Ready once the server has created the watch, so no write is missed.
                    match stream.message().await? {
                        Some(resp) if resp.created() => {}
                        _ => bail!("the watch was not created"),
                    }
                    ready.fetch_add(1, Ordering::SeqCst);
                    let mut seen = 0;
                    while seen < events {
                        let Some(resp) = stream.message().await? else {
                            break;
                        };
                        let now = Instant::now();
                        for e in resp.events() {
                            if let Some(kv) = e.kv() {
                                receipts
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push((kv.mod_revision(), now));
                                seen += 1;
                            }
                        }
                    }
                    anyhow::Ok(())
                }));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::SeqCst) < watchers {
        if Instant::now() > deadline {
            bail!("watchers did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acks: Acks = Arc::new(Mutex::new(HashMap::new()));
    let mut writer = Kv::connect(args.system, &args.endpoints[0], &args.endpoints).await?;
    let started = Instant::now();
    for i in 0..events {
        let rev = writer.put(&format!("{prefix}{i}"), value).await?;
        acks.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rev, Instant::now());
        // A steady stream, not a burst: one event every millisecond at most.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let wait_all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), wait_all).await;
    let elapsed = started.elapsed();
    let acks = acks.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let receipts = receipts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut lat: Vec<Duration> = receipts
        .iter()
        .filter_map(|(rev, at)| acks.get(rev).map(|ack| at.saturating_duration_since(*ack)))
        .collect();
    lat.sort();
    let expected = watchers * events;
    let missing = expected.saturating_sub(lat.len());
    report(
        args,
        "watch",
        json!({"watchers": watchers, "events": events}),
        &lat,
        0,
        elapsed,
        json!({"expected": expected, "missing": missing}),
    )
}

/// A failover client: through etcd's client, one client over every endpoint (as a real
/// etcd client is configured); over Miniku's HTTP API, which has no multi-endpoint client,
/// one endpoint at a time, moving to the next after a failure.
async fn failover_client(system: System, endpoints: &[String], ep: usize) -> Option<Kv> {
    if system.grpc() {
        let opts = etcd_client::ConnectOptions::new()
            .with_timeout(Duration::from_secs(5))
            .with_connect_timeout(Duration::from_secs(1));
        // Each client lists the endpoints from a different first one.
        let mut all = endpoints.to_vec();
        all.rotate_left(ep % endpoints.len().max(1));
        let c = etcd_client::Client::connect(all, Some(opts)).await.ok()?;
        return Some(Kv::Etcd(Box::new(c)));
    }
    Kv::connect(system, &endpoints[ep % endpoints.len()], endpoints)
        .await
        .ok()
}

/// Milliseconds since the Unix epoch of `t`, an `Instant` of this process.
fn unix_ms(t: Instant) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs_f64() - t.elapsed().as_secs_f64()) * 1000.0
}

async fn failover(args: &Args, seconds: u64, clients: usize, value: &str) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(seconds);
    let successes: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for c in 0..clients.max(1) {
        let successes = successes.clone();
        let endpoints = args.endpoints.clone();
        let system = args.system;
        let value = value.to_string();
        tasks.push(tokio::spawn(async move {
            let mut ep = c;
            let mut kv = failover_client(system, &endpoints, ep).await;
            let mut i = 0usize;
            while Instant::now() < until {
                i += 1;
                let ok = match kv.as_mut() {
                    Some(k) => tokio::time::timeout(
                        Duration::from_millis(500),
                        k.put(&key(&format!("f{c}-"), i, 12), &value),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok()),
                    None => false,
                };
                if ok {
                    successes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Instant::now());
                } else {
                    // A client over one endpoint moves to the next; one over all of them
                    // (etcd's) keeps its connections and lets its balancer choose.
                    if kv.is_none() || !system.grpc() {
                        ep += 1;
                        kv = failover_client(system, &endpoints, ep).await;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("failover client")?;
    }
    let mut s = successes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    s.sort();
    // The gaps between successive writes, and from the last write to the end: writes that
    // never resumed are the longest gap of all, not no gap.
    let end = Instant::now();
    let (mut from, mut to) = (start, start);
    let mut prev = start;
    for t in s.iter().chain(std::iter::once(&end)) {
        if t.saturating_duration_since(prev) > to.saturating_duration_since(from) {
            (from, to) = (prev, *t);
        }
        prev = *t;
    }
    let gap = to.saturating_duration_since(from);
    let elapsed = start.elapsed();
    report(
        args,
        "failover",
        json!({"clients": clients, "seconds": seconds}),
        &[],
        0,
        elapsed,
        json!({
            "writes": s.len(),
            "longest_gap_ms": gap.as_secs_f64() * 1000.0,
            // When the longest gap began and ended (the last write before it, the first
            // after it), to line up with the moment the leader was killed.
            "gap_from_unix_ms": unix_ms(from),
            "gap_to_unix_ms": unix_ms(to),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_that_break_littles_law_are_refused() {
        // 4 clients, 1 ms each, 1,000 requests in 0.25 s: 4,000/s × 1 ms = 4 in flight.
        let lat = vec![Duration::from_millis(1); 1000];
        assert!(check_littles_law(4, &lat, Duration::from_millis(250)).is_ok());
        // The same requests "in" 0.01 s: 100 in flight from 4 clients.
        let err = check_littles_law(4, &lat, Duration::from_millis(10))
            .expect_err("a clock started late is caught");
        assert!(err.to_string().contains("implausible"), "{err}");
    }
}
