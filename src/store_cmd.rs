//! `miniku store`: runs one member of the replicated key-value store until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use miniku_store::config::{parse_initial_cluster, StoreConfig};
use miniku_store::node::StoreNode;

/// Flags of a store member. Every founding member gets the same --initial-cluster.
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// This member's id: a positive integer, unique in the cluster, never reused.
    #[arg(long)]
    pub id: u64,
    /// Directory for this member's database and snapshots (created if missing). Never wipe
    /// it and restart the member with the same id: remove the member and add a new one.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Where the client HTTP API (KV, watch, lease, cluster, /health, /metrics) listens.
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub client_addr: String,
    /// Where peer (Raft) traffic listens.
    #[arg(long, default_value = "127.0.0.1:12380")]
    pub peer_addr: String,
    /// The founding members as ID=PEER_HOST:PORT,... . Used only on the first start with an
    /// empty data directory; later starts take membership from the log. A member started to
    /// be added later through POST /v1/cluster/members passes --join instead.
    #[arg(long, default_value = "")]
    pub initial_cluster: String,
    /// Start empty and wait to be added to an existing cluster (POST /v1/cluster/members).
    #[arg(long)]
    pub join: bool,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Raft election timeout range in milliseconds: MIN..MAX. A follower starts an election
    /// after MAX + a random timeout in the range of silence from the leader (openraft's
    /// leader lease is MAX), or MAX after the last message when the leader's peer port
    /// refuses connections (its process is gone).
    #[arg(long, default_value_t = 150)]
    pub election_min_ms: u64,
    #[arg(long, default_value_t = 300)]
    pub election_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) after this many log entries.
    #[arg(long, default_value_t = 5000)]
    pub snapshot_entries: u64,
    /// Most client commands batched into one Raft log entry.
    #[arg(long, default_value_t = 512)]
    pub max_batch: usize,
    /// Seconds before a request that cannot reach a leader fails.
    #[arg(long, default_value_t = 5)]
    pub request_timeout_secs: u64,
    /// Dial VIA whenever the peer at ADDR is meant: ADDR=VIA,... . For fault-injection
    /// harnesses (scripts/chaos.sh) that put a proxy on each link between two members.
    #[arg(long, default_value = "")]
    pub peer_route: String,
    /// Send every peer message as its own HTTP request instead of over long-lived peer
    /// streams (to compare the two, or beside members too old to serve streams, which are
    /// otherwise detected and sent HTTP requests anyway).
    #[arg(long)]
    pub no_peer_streams: bool,
    /// File holding the bearer token clients must send (every route but /health). Without
    /// one the client API only listens on loopback.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// File holding the cluster's shared secret, which members send to each other and
    /// require on every peer RPC (append, vote, snapshot, join, forwarding). Without one the
    /// peer API only listens on loopback.
    #[arg(long)]
    pub peer_token_file: Option<PathBuf>,
    /// Raise the cluster-wide NOSPACE alarm (refusing writes that add data) when the data
    /// directory's filesystem has less free space than this many MiB; cleared by itself at
    /// 1.5 times this.
    #[arg(long, default_value_t = 128)]
    pub min_free_disk_mb: u64,
    /// Raise the NOSPACE alarm when the database files exceed this many bytes (etcd's flag
    /// of the same name; default 8 GiB).
    #[arg(long, default_value_t = 8 * 1024 * 1024 * 1024)]
    pub quota_backend_bytes: u64,
    /// TLS and the connection limit of the client API (the limit applies to the peer
    /// listener too).
    #[command(flatten)]
    pub serving: crate::listen_args::StoreListenArgs,
    #[command(flatten)]
    pub peer_tls: crate::listen_args::PeerTlsArgs,
    /// TESTING ONLY, UNSAFE: answer linearizable reads from local state without a read
    /// index (stale reads). Lets the fault-injection harness prove its checker catches them.
    #[arg(long, hide = true)]
    pub unsafe_stale_reads: bool,
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let initial_cluster = if args.join {
        Default::default()
    } else {
        parse_initial_cluster(&args.initial_cluster)
            .map_err(|e| anyhow::anyhow!("--initial-cluster: {e}"))?
    };
    if !args.join && !initial_cluster.contains_key(&args.id) {
        anyhow::bail!(
            "--initial-cluster does not name this member (--id {}); pass --join to join an existing cluster",
            args.id
        );
    }
    if args.id == 0 {
        anyhow::bail!("--id must be >= 1");
    }
    let mut config = StoreConfig::new(
        args.id,
        args.data_dir,
        args.client_addr,
        args.peer_addr,
        initial_cluster,
    );
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_ms);
    config.election_timeout_min = Duration::from_millis(args.election_min_ms);
    config.election_timeout_max = Duration::from_millis(args.election_max_ms);
    config.snapshot_logs_since_last = args.snapshot_entries;
    config.max_batch_commands = args.max_batch;
    config.peer_streams = !args.no_peer_streams;
    config.request_timeout = Duration::from_secs(args.request_timeout_secs);
    for part in args.peer_route.split(',').filter(|p| !p.trim().is_empty()) {
        let (addr, via) = part
            .split_once('=')
            .with_context(|| format!("--peer-route: `{part}` is not ADDR=VIA"))?;
        config
            .peer_routes
            .insert(addr.trim().to_string(), via.trim().to_string());
    }
    config.client_token = crate::listen_args::token_of("--token-file", args.token_file.as_deref())?;
    config.peer_token =
        crate::listen_args::token_of("--peer-token-file", args.peer_token_file.as_deref())?;
    config.space.min_free_bytes = args.min_free_disk_mb.saturating_mul(1024 * 1024);
    config.space.quota_bytes = args.quota_backend_bytes;
    config.client_tls = args.serving.tls.tls();
    config.peer_tls = args.peer_tls.tls();
    config.limits.max_connections = args.serving.max_connections as usize;
    if args.unsafe_stale_reads {
        tracing::warn!("--unsafe-stale-reads: linearizable reads may be stale (testing only)");
        config.unsafe_stale_reads = true;
    }

    let data_dir = config.data_dir.clone();
    let min_free = config.space.min_free_bytes;
    let node = StoreNode::start(config)
        .await
        .context("starting the store node")?;
    let handle = node.handle();
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            node.shutdown().await;
            Ok(())
        }
        fault = handle.wait_storage_fault() => {
            tracing::error!(
                error = %fault,
                dir = %data_dir.display(),
                "storage failed: this member stopped taking part in Raft; it answers 503 to writes \
                 and restarts itself once the data directory is writable again"
            );
            tokio::select! {
                // Raft has already stopped: there is nothing to shut down in order (and
                // asking a stopped Raft to shut down can wait forever).
                _ = shutdown_signal() => {
                    tracing::info!("shutting down");
                    Ok(())
                }
                _ = wait_writable(&data_dir, min_free) => {
                    // No orderly shutdown: Raft already stopped on the fault, and what the
                    // database holds is recovered on start exactly as after a crash.
                    tracing::warn!("the data directory is writable again: restarting this member");
                    Err(restart_self())
                }
            }
        }
    }
}

/// Returns once `dir` has room and takes a write again.
async fn wait_writable(dir: &std::path::Path, min_free: u64) {
    let mut last = String::new();
    loop {
        match miniku_store::disk::probe_writable(dir, min_free) {
            Ok(()) => return,
            Err(e) if e != last => {
                tracing::warn!(error = %e, "data directory still not writable");
                last = e;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Replaces this process with a fresh start of the same command line: the database is
/// reopened and recovered as after a crash (everything acknowledged was fsync'd). Returns
/// only if that fails.
fn restart_self() -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return anyhow::anyhow!("cannot find this program to restart it: {e}"),
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::anyhow!("cannot restart this member: {err}")
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
