//! The `miniku` binary: one subcommand per component.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "miniku",
    version,
    about = "Miniku: a small Kubernetes over a Raft-replicated store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one member of the replicated key-value store.
    Store(store_cmd::StoreArgs),
    /// Run the API server (/replicasets, /pods, /nodes) over the store.
    Apiserver(control_cmd::ApiServerArgs),
    /// Run the ReplicaSet and node lifecycle controllers (one active instance at a time).
    ControllerManager(control_cmd::ControllerManagerArgs),
    /// Run the scheduler (one active instance at a time).
    Scheduler(control_cmd::SchedulerArgs),
    /// Run a node agent: pods bound to this node become containers.
    Kubelet(control_cmd::KubeletArgs),
    /// Run a node's proxy: NodePort Services' ports, forwarded to their ready pods.
    Proxy(control_cmd::ProxyArgs),
}

/// glibc's malloc gives each thread that contends for it an arena of its own (up to eight
/// per core) and keeps freed memory in each: after loading 100,000 keys the largest store
/// member held 103 MB with the default and 75 MB with one arena, at the same throughput
/// (per-thread caches take most allocations without the arena's lock). A `MALLOC_ARENA_MAX`
/// in the environment is glibc's own setting and is left to win.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tuning parameter of glibc's allocator, and it runs
        // before the runtime starts any thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

mod control_cmd;
mod listen_args;
mod store_cmd;

/// Exits 1 with one line on stderr when a component cannot run (`miniku store: cannot
/// listen on 127.0.0.1:2379: Address already in use`), its causes joined by `: `, so the
/// last line of a log says why (anyhow's `Debug` from `main` would print a backtrace).
fn main() {
    one_malloc_arena();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("miniku: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn run() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // rustls (behind reqwest and every TLS listener) uses ring.
    miniku_store::tls::install_crypto_provider();
    let cli = Cli::parse();
    let (name, result) = match cli.command {
        Command::Store(args) => ("store", store_cmd::run(args).await),
        Command::Apiserver(args) => ("apiserver", control_cmd::run_apiserver(args).await),
        Command::ControllerManager(args) => (
            "controller-manager",
            control_cmd::run_controller_manager(args).await,
        ),
        Command::Scheduler(args) => ("scheduler", control_cmd::run_scheduler(args).await),
        Command::Kubelet(args) => ("kubelet", control_cmd::run_kubelet(args).await),
        Command::Proxy(args) => ("proxy", control_cmd::run_proxy(args).await),
    };
    if let Err(e) = result {
        eprintln!("miniku {name}: {e:#}");
        std::process::exit(1);
    }
}
