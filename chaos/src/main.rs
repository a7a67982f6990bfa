//! `miniku-chaos`: runs a three-member Miniku store under faults (kill -9, SIGSTOP,
//! partitions through link proxies, whole-cluster restarts) while clients and watchers
//! record a history, then judges it: linearizability per key (Wing–Gong–Lowe search over a
//! register-with-CAS model), no lost writes, replicas converged, and etcd's watch
//! guarantees. Exits 1 on any anomaly. With `--hosts` the members are hosts on a private
//! Docker network (`scripts/hosts.sh`), faulted with `docker kill`, the cgroup freezer and
//! network disconnects, and a rolling upgrade and a membership change follow the faults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use miniku_chaos::access::Access;
use miniku_chaos::cluster::{Cluster, ClusterOptions};
use miniku_chaos::history::{History, Op, Outcome};
use miniku_chaos::hosts::{Hosts, HostsOptions};
use miniku_chaos::nemesis::Faults;
use miniku_chaos::workload::{self, ClientOptions, Recorder, PREFIX};
use miniku_chaos::{linearizability, nemesis, watch_check};
use miniku_store::client::{GetOptions, PutOptions};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(
    about = "Fault-injection harness for the Miniku store, with linearizability and watch checkers"
)]
struct Args {
    /// The miniku binary (default: `miniku` beside this program; not used with --hosts,
    /// whose hosts run the image's).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// How long faults are injected, in seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// How long faults are injected, in minutes (overrides --seconds).
    #[arg(long)]
    minutes: Option<u64>,
    /// Seed of the fault schedule and the workload (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 10)]
    clients: u32,
    /// Keys the clients share (few, so operations collide).
    #[arg(long, default_value_t = 5)]
    keys: usize,
    #[arg(long, default_value_t = 3)]
    watchers: usize,
    /// Per-operation timeout in milliseconds (then the outcome is unknown).
    #[arg(long, default_value_t = 2000)]
    op_timeout_ms: u64,
    /// Where data directories and member logs go (default: a fresh temporary directory,
    /// removed after a clean run).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the whole history (operations, watch logs, the store's record) as JSON here.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Write the run's figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// TESTING ONLY: start the members with --unsafe-stale-reads; the run must then fail.
    #[arg(long)]
    unsafe_stale_reads: bool,
    /// Fault the control plane instead: a ReplicaSet scaled up and down while store members,
    /// controller managers, schedulers and kubelets (hollow, and Docker when the engine is
    /// reachable) are killed and restarted; checks its invariants.
    #[arg(long)]
    control_plane: bool,
    /// With --control-plane: roll a Deployment (apps/v1) to new templates, and scale it,
    /// instead of scaling a ReplicaSet; store members, controller managers and schedulers
    /// are killed (not kubelets), and the rollout invariants (maxSurge, maxUnavailable)
    /// are checked at every event besides the others.
    #[arg(long)]
    deployment: bool,
    /// TESTING ONLY, with --control-plane: both controller managers act without an
    /// election; the run must then fail.
    #[arg(long)]
    unsafe_skip_election: bool,
    /// Clients and watchers use etcd's gRPC API (through the etcd-client crate) instead of
    /// the store's HTTP API; the checkers are the same.
    #[arg(long)]
    grpc: bool,
    /// Check a history saved with --history again, without running anything.
    #[arg(long)]
    check: Option<PathBuf>,
    /// With --control-plane: leave Docker out even if the engine is reachable.
    #[arg(long)]
    no_docker: bool,
    /// With --control-plane: the image the Docker kubelet runs (built by
    /// scripts/test-image.sh).
    #[arg(long, default_value = "miniku/busybox:latest")]
    image: String,
    /// Run the store across hosts: scripts/hosts.sh starts five hosts on a private Docker
    /// network from --hosts-image (TLS, tokens); the faults are docker kill, pause and
    /// network disconnects; a rolling upgrade to --upgrade-image and a membership change
    /// (a learner added, promoted, an old member removed) follow them.
    #[arg(long)]
    hosts: bool,
    /// With --hosts: the hosts' private network, a /24 (the run's containers are
    /// miniku-chaos-HOST on the network miniku-chaos).
    #[arg(long, default_value = "172.30.58.0/24")]
    hosts_subnet: String,
    /// With --hosts: the image the hosts start from (scripts/image.sh). With --hosts
    /// --control-plane: a ReplicaSet runs on the two worker hosts while one of them is
    /// isolated for longer than the pod eviction timeout and healed, cycle after cycle
    /// until --seconds have passed (at least once); checks that no pod runs twice, that
    /// its pods are replaced on the other worker and that it cleans up after healing.
    #[arg(long, default_value = "miniku/miniku:latest")]
    hosts_image: String,
    /// With --hosts: the image of the rolling upgrade (scripts/image.sh with MINIKU_IMAGE).
    #[arg(long, default_value = "miniku/miniku-next:latest")]
    upgrade_image: String,
}

fn default_bin() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("no directory for this program")?;
    Ok(dir.join("miniku"))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    // reqwest's rustls needs a crypto provider: ring.
    miniku_store::tls::install_crypto_provider();
    let args = Args::parse();
    if let Some(path) = &args.check {
        let history: History = serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )?;
        let report = summarize(&history, &BTreeMap::new(), &[], 0, 0);
        if report.anomalies > 0 {
            println!("FAILED: {} anomalies", report.anomalies);
            std::process::exit(1);
        }
        println!("OK: no anomaly");
        return Ok(());
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let seconds = args.minutes.map_or(args.seconds, |m| m * 60);
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => default_bin()?,
    };
    // Across hosts the image holds the binary (scripts/image.sh).
    if !args.hosts && !bin.exists() {
        bail!(
            "{} does not exist: build it (cargo build) or pass --bin",
            bin.display()
        );
    }
    let (dir, temp) = match &args.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = std::env::temp_dir().join(format!("miniku-chaos-{seed:x}"));
            (t.clone(), Some(t))
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    println!(
        "miniku-chaos: seed {seed}, {seconds}s of faults, {} clients on {} keys, {} watchers{}; logs in {}",
        args.clients,
        args.keys,
        args.watchers,
        if args.unsafe_stale_reads { ", members UNSAFE (stale reads)" } else { "" },
        dir.display()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    if args.control_plane && args.hosts {
        return hosts_control_plane(&args, dir, temp, seconds, seed).await;
    }
    if args.control_plane {
        return control_plane(&args, bin, dir, temp, seconds, &mut rng, seed).await;
    }
    if args.hosts {
        if args.grpc || args.unsafe_stale_reads {
            bail!("--hosts drives the HTTP front of members as they are: no --grpc, no --unsafe-stale-reads");
        }
        let script = std::env::current_dir()?.join("scripts/hosts.sh");
        if !script.exists() {
            bail!("{} not found: run from the checkout", script.display());
        }
        let mut hosts = Hosts::up(
            HostsOptions {
                script,
                project: "miniku-chaos".into(),
                network: "miniku-chaos".into(),
                subnet: args.hosts_subnet.clone(),
                data: dir.join("hosts"),
                image: args.hosts_image.clone(),
                // As on loopback: small snapshots, so faults also hit snapshot building and
                // installing; requests without a leader fail within the op timeout.
                store_flags: "--snapshot-entries 500 --request-timeout-secs 2".into(),
                controller_flags: String::new(),
                kubelet_flags: String::new(),
                upgrade_image: args.upgrade_image.clone(),
            },
            dir.join("hosts.log"),
        )
        .await?;
        let access = hosts.access().clone();
        let outcome = store_run(&args, &mut hosts, &access, seconds, &mut rng, seed).await;
        if let Err(e) = hosts.down().await {
            println!("hosts.sh down: {e:#}");
        }
        return finish(outcome?, &dir, temp);
    }
    let extra = if args.unsafe_stale_reads {
        vec!["--unsafe-stale-reads".to_string()]
    } else {
        vec![]
    };
    let mut cluster = Cluster::start(ClusterOptions {
        bin,
        dir: dir.clone(),
        size: 3,
        extra_args: extra,
    })
    .await?;
    let access = Access::plain(cluster.endpoints());
    let outcome = store_run(&args, &mut cluster, &access, seconds, &mut rng, seed).await;
    // Stop the members first: exit() in finish would skip their kill-on-drop.
    drop(cluster);
    finish(outcome?, &dir, temp)
}

/// The kubelets' heartbeat lease and the pod eviction timeout of a `--hosts
/// --control-plane` run.
const HOSTS_LEASE_TTL_SECS: u64 = 6;
const HOSTS_EVICTION_SECS: u64 = 10;

/// `--hosts --control-plane`: the cluster of scripts/hosts.sh with a short lease and
/// eviction, a worker host isolated and healed (miniku_chaos::hosts_control_plane).
async fn hosts_control_plane(
    args: &Args,
    dir: PathBuf,
    temp: Option<PathBuf>,
    seconds: u64,
    seed: u64,
) -> Result<()> {
    use miniku_chaos::hosts_control_plane as hcp;
    let script = std::env::current_dir()?.join("scripts/hosts.sh");
    if !script.exists() {
        bail!("{} not found: run from the checkout", script.display());
    }
    let image_there = tokio::process::Command::new("docker")
        .args(["image", "inspect", &args.image])
        .output()
        .await
        .context("docker image inspect")?
        .status
        .success();
    if !image_there {
        bail!(
            "no image {}: build it with scripts/test-image.sh",
            args.image
        );
    }
    let (project, network) = ("miniku-chaos", "miniku-chaos");
    let down_script = script.clone();
    let opts = hcp::Options {
        seconds,
        image: args.image.clone(),
        replicas: 6,
        eviction: Duration::from_secs(HOSTS_EVICTION_SECS),
        lease_ttl: Duration::from_secs(HOSTS_LEASE_TTL_SECS),
        margin: Duration::from_secs(4),
    };
    println!(
        "control plane across hosts: {} pods on worker1 and worker2; a worker isolated {}s (eviction {}s, lease {}s) and healed, until {seconds}s have passed",
        opts.replicas,
        (opts.eviction + opts.lease_ttl + opts.margin).as_secs(),
        HOSTS_EVICTION_SECS,
        HOSTS_LEASE_TTL_SECS,
    );
    let hosts = Hosts::up(
        HostsOptions {
            script,
            project: project.into(),
            network: network.into(),
            subnet: args.hosts_subnet.clone(),
            data: dir.join("hosts"),
            image: args.hosts_image.clone(),
            store_flags: String::new(),
            controller_flags: format!("--pod-eviction-timeout-secs {HOSTS_EVICTION_SECS}"),
            kubelet_flags: format!(
                "--lease-ttl-secs {HOSTS_LEASE_TTL_SECS} --stop-grace-secs 1 --backoff-initial-ms 500 --backoff-max-ms 2000"
            ),
            upgrade_image: args.upgrade_image.clone(),
        },
        dir.join("hosts.log"),
    )
    .await;
    let mut hosts = match hosts {
        Ok(h) => h,
        // Another cluster's hosts (fixed names): not ours to bring down.
        Err(e) if format!("{e:#}").contains("exist already") => return Err(e),
        Err(e) => {
            // `up` may have started some hosts before failing.
            let _ = tokio::process::Command::new(&down_script)
                .arg("down")
                .env("MINIKU_HOSTS_DATA", dir.join("hosts"))
                .env("MINIKU_HOSTS_PROJECT", project)
                .env("MINIKU_HOSTS_NETWORK", network)
                .env("MINIKU_HOSTS_SUBNET", &args.hosts_subnet)
                .output()
                .await;
            return Err(e);
        }
    };
    let outcome = hcp::run(&mut hosts, &opts).await;
    if let Err(e) = hosts.down().await {
        println!("hosts.sh down: {e:#}");
    }
    let report = outcome?;
    println!();
    for (i, c) in report.cycles.iter().enumerate() {
        let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}s"));
        println!(
            "cycle {}: isolated {} ({} pods) {:.1}s; first pod lost {}, replaced {}, stale containers removed {} and converged {} after heal",
            i + 1,
            c.isolated,
            c.pods_isolated,
            c.isolated_secs,
            f(c.first_lost_secs),
            f(c.replaced_secs),
            f(c.cleanup_secs),
            f(c.converged_secs),
        );
    }
    println!(
        "engine samples: {} (every {} ms), most pod containers at once {}",
        report.samples,
        hcp::SAMPLE_EVERY.as_millis(),
        report.most_containers
    );
    println!(
        "store events checked against the invariants: {}",
        report.events_checked
    );
    println!("violations: {}", report.violations.len());
    for v in &report.violations {
        println!("  VIOLATION: {v}");
    }
    if let Some(path) = &args.json {
        let figures = serde_json::json!({
            "mode": "hosts control-plane",
            "seed": seed,
            "fault_seconds": seconds,
            "replicas": opts.replicas,
            "eviction_seconds": HOSTS_EVICTION_SECS,
            "lease_ttl_seconds": HOSTS_LEASE_TTL_SECS,
            "cycles": report.cycles,
            "samples": report.samples,
            "sample_interval_ms": hcp::SAMPLE_EVERY.as_millis() as u64,
            "most_containers": report.most_containers,
            "events_checked": report.events_checked,
            "violations": report.violations.len(),
            "violation_messages": report.violations,
        });
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
    }
    finish_violations(report.violations.len(), &dir, temp)
}

/// The control-plane modes' verdict; exits 1 (keeping the logs) on any violation.
fn finish_violations(
    violations: usize,
    dir: &std::path::Path,
    temp: Option<PathBuf>,
) -> Result<()> {
    if violations > 0 {
        println!("FAILED; logs kept in {}", dir.display());
        std::process::exit(1);
    }
    println!("OK: no violation");
    if let Some(t) = temp {
        let _ = std::fs::remove_dir_all(t);
    }
    Ok(())
}

/// Prints the verdict; exits 1 (keeping the logs) on any anomaly.
fn finish(anomalies: usize, dir: &std::path::Path, temp: Option<PathBuf>) -> Result<()> {
    if anomalies > 0 {
        println!(
            "FAILED: {anomalies} anomalies; logs and data kept in {}",
            dir.display()
        );
        std::process::exit(1);
    }
    println!("OK: no anomaly");
    if let Some(t) = temp {
        let _ = std::fs::remove_dir_all(t);
    }
    Ok(())
}

/// The store under faults: clients and watchers through `access`, the nemesis (then the
/// cluster's drills) on `cluster`, then the checkers. Returns the number of anomalies.
async fn store_run(
    args: &Args,
    cluster: &mut impl Faults,
    access: &Access,
    seconds: u64,
    rng: &mut StdRng,
    seed: u64,
) -> Result<usize> {
    let any = access.any(Duration::from_secs(10))?;
    let r0 = any
        .get(PREFIX.as_bytes(), GetOptions::default())
        .await
        .context("first read")?
        .header
        .revision;

    let started = Instant::now();
    let rec = Recorder::new(started);
    let stop = Arc::new(AtomicBool::new(false));
    let until = Arc::new(AtomicI64::new(0));
    let give_up = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    for w in 0..args.watchers {
        watchers.push(tokio::spawn(workload::run_watcher(
            format!("watcher{w}"),
            access.clone(),
            w,
            r0 + 1,
            until.clone(),
            give_up.clone(),
            args.grpc,
        )));
    }
    let opts = Arc::new(ClientOptions {
        access: access.clone(),
        keys: args.keys,
        timeout: Duration::from_millis(args.op_timeout_ms),
        seed,
        grpc: args.grpc,
    });
    let mut clients = Vec::new();
    for c in 0..args.clients {
        clients.push(tokio::spawn(workload::run_client(
            rec.clone(),
            c,
            opts.clone(),
            stop.clone(),
        )));
    }

    let faults = nemesis::run(
        cluster,
        rng,
        started,
        started + Duration::from_secs(seconds),
    )
    .await?;
    cluster.restore().await?;
    cluster.wait_leader(Duration::from_secs(30)).await?;
    let drills = cluster.drills(&rec).await;
    let t = started.elapsed().as_secs_f64();
    println!("[{t:7.2}s] faults over; letting clients run 3s on the healed cluster");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await??;
    }

    // Final reads (recorded: the checker sees them after every write) and a sentinel write
    // that ends the watchers' and the store's record.
    let final_client = access.any(Duration::from_secs(10))?;
    let mut final_conn = workload::Conn::Http(final_client.clone());
    let mut finals = BTreeMap::new();
    for k in 0..args.keys {
        let key = workload::key(k);
        match workload::execute(
            &rec,
            &mut final_conn,
            u32::MAX,
            Op::Get { key: key.clone() },
        )
        .await
        {
            Outcome::Read(v) => {
                finals.insert(key, v);
            }
            other => bail!("final read of {key} failed: {other:?}"),
        }
    }
    let end = final_client
        .put(
            format!("{PREFIX}~end").as_bytes(),
            b"end",
            PutOptions::default(),
        )
        .await
        .context("sentinel write")?
        .header
        .revision;
    until.store(end, Ordering::SeqCst);
    let g = give_up.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        g.store(true, Ordering::SeqCst);
    });
    let mut logs = Vec::new();
    for w in watchers {
        logs.push(w.await?);
    }
    timer.abort();
    let truth = workload::read_truth(access, r0 + 1, end).await?;

    // Every member in the cluster now converged on the same values (serializable, local
    // reads).
    let mut diverged = Vec::new();
    for ep in cluster.member_endpoints() {
        let c = access
            .client(vec![ep.clone()])?
            .with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = c
                .get(
                    PREFIX.as_bytes(),
                    GetOptions {
                        prefix: true,
                        serializable: true,
                        ..Default::default()
                    },
                )
                .await;
            match r {
                Ok(r) if r.header.revision >= end => {
                    for (key, want) in &finals {
                        let got = r
                            .kvs
                            .iter()
                            .find(|kv| kv.key.to_string_lossy() == *key)
                            .map(|kv| kv.value.to_string_lossy());
                        if got != *want {
                            diverged
                                .push(format!("{ep}: {key} = {got:?}, the cluster says {want:?}"));
                        }
                    }
                    break;
                }
                _ if Instant::now() > deadline => {
                    diverged.push(format!(
                        "{ep} did not catch up to revision {end} within 30s"
                    ));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    let history = History {
        operations: rec.operations(),
        watchers: logs,
        truth,
    };
    if let Some(path) = &args.history {
        std::fs::write(path, serde_json::to_vec(&history)?)?;
    }
    let mut report = summarize(&history, &faults.counts, &diverged, seconds, seed);
    if !faults.skipped.is_empty() {
        println!("faults that could not be injected (skipped):");
        for (f, n) in &faults.skipped {
            println!("  {:40} {n}", f.name());
        }
        report.figures["faults_skipped"] = serde_json::json!(faults
            .skipped
            .iter()
            .map(|(f, n)| (f.name().to_string(), *n))
            .collect::<BTreeMap<_, _>>());
    }
    if !drills.steps.is_empty() {
        println!(
            "drills: {} steps, {} failed",
            drills.steps.len(),
            drills.failures.len()
        );
        for f in &drills.failures {
            println!("  DRILL FAILED: {f}");
        }
        report.anomalies += drills.failures.len();
        report.figures["drills"] = serde_json::to_value(&drills)?;
        report.figures["anomalies"] = report.anomalies.into();
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.figures)?)?;
    }
    Ok(report.anomalies)
}

struct Summary {
    anomalies: usize,
    figures: serde_json::Value,
}

fn summarize(
    h: &History,
    faults: &BTreeMap<nemesis::Fault, usize>,
    diverged: &[String],
    seconds: u64,
    seed: u64,
) -> Summary {
    let mut by_kind: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for o in &h.operations {
        let kind = match o.op {
            Op::Get { .. } => "get",
            Op::Put { .. } => "put",
            Op::Cas { .. } => "cas",
        };
        let outcome = match o.outcome {
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
            Outcome::Swapped(false) => "ok (compare failed)",
            _ => "ok",
        };
        *by_kind.entry((kind, outcome)).or_insert(0) += 1;
    }
    println!();
    println!("operations: {}", h.operations.len());
    for ((kind, outcome), n) in &by_kind {
        println!("  {kind:4} {outcome:20} {n}");
    }
    println!("faults injected:");
    for (f, n) in faults {
        println!("  {:40} {n}", f.name());
    }

    let lin = linearizability::check(&h.operations);
    println!(
        "linearizability: {} operations on {} keys checked, {} anomalies, {} undecided",
        lin.operations_checked,
        lin.keys.len(),
        lin.anomalies.len(),
        lin.undecided.len()
    );
    for a in &lin.anomalies {
        println!("  ANOMALY on {}: {}", a.key, a.message);
        for o in &a.operations {
            println!("    {}", serde_json::to_string(o).unwrap_or_default());
        }
    }
    for u in &lin.undecided {
        println!("  UNDECIDED: {u}");
    }

    // No lost writes: every acknowledged write is in the store's record at its revision.
    let lost = watch_check::missing_acknowledged_writes(&h.truth, &h.operations);
    let acked = h
        .operations
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Written | Outcome::Swapped(true)))
        .count();
    println!("lost writes: {} of {acked} acknowledged", lost.len());
    for l in lost.iter().take(20) {
        println!("  LOST: {l}");
    }
    println!("replicas diverged: {}", diverged.len());
    for d in diverged {
        println!("  DIVERGED: {d}");
    }

    // The watchers (the acknowledged writes were judged above, so not again).
    let w = watch_check::check(&h.watchers, &h.truth, &[]);
    let reconnects: usize = h
        .watchers
        .iter()
        .map(|w| w.segments.len().saturating_sub(1))
        .sum();
    println!(
        "watch: {} watchers, {} events checked against {} revisions, {} reconnects, {} anomalies",
        w.watchers,
        w.events_checked,
        h.truth.len(),
        reconnects,
        w.anomalies.len()
    );
    for a in &w.anomalies {
        println!("  ANOMALY: {a}");
    }
    let anomalies =
        lin.anomalies.len() + lin.undecided.len() + lost.len() + diverged.len() + w.anomalies.len();
    let figures = serde_json::json!({
        "seed": seed,
        "fault_seconds": seconds,
        "operations": h.operations.len(),
        "operations_by_outcome": by_kind.iter().map(|((k, o), n)| (format!("{k} {o}"), *n)).collect::<BTreeMap<_, _>>(),
        "faults": faults.iter().map(|(f, n)| (f.name().to_string(), *n)).collect::<BTreeMap<_, _>>(),
        "linearizability_operations_checked": lin.operations_checked,
        "linearizability_anomalies": lin.anomalies.len() + lin.undecided.len(),
        "acknowledged_writes": acked,
        "lost_writes": lost.len(),
        "replicas_diverged": diverged.len(),
        "watch_events_checked": w.events_checked,
        "watch_reconnects": reconnects,
        "watch_anomalies": w.anomalies.len(),
        "anomalies": anomalies,
    });
    Summary { anomalies, figures }
}

async fn control_plane(
    args: &Args,
    bin: PathBuf,
    dir: PathBuf,
    temp: Option<PathBuf>,
    seconds: u64,
    rng: &mut StdRng,
    seed: u64,
) -> Result<()> {
    let docker = !args.no_docker
        && tokio::process::Command::new("docker")
            .arg("info")
            .output()
            .await
            .is_ok_and(|o| o.status.success());
    println!(
        "control plane under faults: 3 store members, 2 controller managers, 2 schedulers, 3 hollow nodes{}; {}",
        if docker { ", 1 Docker kubelet" } else { " (no Docker engine)" },
        if args.deployment {
            "a Deployment rolled out again and again"
        } else {
            "a ReplicaSet scaled up and down"
        }
    );
    let report = miniku_chaos::control_plane::run(
        miniku_chaos::control_plane::Options {
            workload: if args.deployment {
                miniku_chaos::control_plane::Workload::Deployment
            } else {
                miniku_chaos::control_plane::Workload::ReplicaSet
            },
            bin,
            dir: dir.clone(),
            seconds,
            docker,
            image: args.image.clone(),
            unsafe_skip_election: args.unsafe_skip_election,
        },
        rng,
        &format!("chaos{:x}", seed & 0xffff_ffff),
    )
    .await?;
    println!();
    println!("faults injected:");
    for (f, n) in &report.faults {
        println!("  {f:40} {n}");
    }
    println!(
        "store events checked against the invariants: {}",
        report.events_checked
    );
    if let Some(r) = &report.rollout {
        let s = miniku_chaos::control_plane::ROLLOUT_STRATEGY;
        println!(
            "rollout invariants (maxSurge {}, maxUnavailable {}): {} pod creations checked (most pods at once {}), {} deletions of ready pods checked (fewest ready left {}), {} excused after {} involuntary losses of readiness",
            s.max_surge,
            s.max_unavailable,
            r.creations,
            r.most_pods,
            r.ready_deletions,
            r.fewest_ready.map_or("-".to_string(), |f| f.to_string()),
            r.excused,
            r.involuntary,
        );
    }
    if let Some(d) = report.converged_in {
        println!("converged {:.1}s after the faults stopped", d.as_secs_f64());
    }
    println!("violations: {}", report.violations.len());
    for v in &report.violations {
        println!("  VIOLATION: {v}");
    }
    if let Some(path) = &args.json {
        let figures = serde_json::json!({
            "seed": seed,
            "fault_seconds": seconds,
            "docker": docker,
            "faults": report.faults,
            "events_checked": report.events_checked,
            "converged_seconds": report.converged_in.map(|d| d.as_secs_f64()),
            "violations": report.violations.len(),
            "rollout": report.rollout.as_ref().map(|r| serde_json::json!({
                "pod_creations_checked": r.creations,
                "most_pods": r.most_pods,
                "ready_deletions_checked": r.ready_deletions,
                "fewest_ready": r.fewest_ready,
                "excused": r.excused,
                "involuntary_losses": r.involuntary,
            })),
        });
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
    }
    finish_violations(report.violations.len(), &dir, temp)
}
