//! `miniku apiserver`, `miniku controller-manager` and `miniku scheduler`: flags, wiring and
//! lifetimes of the control-plane components. What they do lives in the library.

use std::time::Duration;

use anyhow::Context;
use miniku::registry::Registry;
use miniku::runtime::leader::run_as_leader;

use crate::store_cmd::shutdown_signal;

/// Where the store is: every member's client address.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreEndpoints {
    /// Store client endpoints, comma-separated HOST:PORT (give every member: requests move to
    /// another one when a member is down).
    #[arg(
        long = "store",
        env = "MINIKU_STORE",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379"
    )]
    pub endpoints: Vec<String>,
}

impl StoreEndpoints {
    pub fn registry(&self) -> anyhow::Result<Registry> {
        Registry::connect(&self.endpoints).context("connecting to the store")
    }
}

#[derive(clap::Args, Debug)]
pub struct ApiServerArgs {
    /// Address the API (/replicasets, /pods, /nodes) listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub store: StoreEndpoints,
}

pub async fn run_apiserver(args: ApiServerArgs) -> anyhow::Result<()> {
    let registry = args.store.registry()?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, store = ?args.store.endpoints, "api server started");
    axum::serve(listener, miniku::apiserver::router(registry))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("api server")?;
    Ok(())
}

/// Leader election flags shared by the controller manager and the scheduler.
#[derive(clap::Args, Debug, Clone)]
pub struct ElectionArgs {
    /// Seconds the leader's lock lives without renewal; a standby takes over within this
    /// long after the leader dies. Renewed every third of it.
    #[arg(long, default_value_t = 10)]
    pub leader_lease_secs: i64,
    /// This instance's name in the election (default: hostname-pid).
    #[arg(long)]
    pub identity: Option<String>,
}

impl ElectionArgs {
    fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "host".into());
            format!("{}-{}", host.trim(), std::process::id())
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct ControllerManagerArgs {
    #[command(flatten)]
    pub store: StoreEndpoints,
    #[command(flatten)]
    pub election: ElectionArgs,
    /// Seconds a node may go without a heartbeat, after turning NotReady, before its pods
    /// are marked Failed (NodeLost) and replaced elsewhere (Kubernetes: 300).
    #[arg(long, default_value_t = 300)]
    pub pod_eviction_timeout_secs: u64,
    /// Concurrent ReplicaSet reconciles (never two for one ReplicaSet).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
}

pub async fn run_controller_manager(args: ControllerManagerArgs) -> anyhow::Result<()> {
    let registry = args.store.registry()?;
    let client = registry.client().clone();
    let eviction = Duration::from_secs(args.pod_eviction_timeout_secs);
    let workers = args.workers;
    let work = move || async move {
        let rs = tokio::spawn(miniku::controllers::ReplicaSetController::run(registry.clone(), workers));
        let nodes = tokio::spawn(miniku::controllers::NodeLifecycleController::run(registry, eviction));
        tokio::select! {
            r = rs => r.context("replicaset controller")?,
            r = nodes => r.context("node lifecycle controller")?,
        }
    };
    let identity = args.election.identity();
    tokio::select! {
        r = run_as_leader(client, "controller-manager", &identity, args.election.leader_lease_secs, work) => r,
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub store: StoreEndpoints,
    #[command(flatten)]
    pub election: ElectionArgs,
    /// Concurrent bindings.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
}

pub async fn run_scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let registry = args.store.registry()?;
    let client = registry.client().clone();
    let workers = args.workers;
    let work = move || miniku::scheduler::Scheduler::run(registry, workers);
    let identity = args.election.identity();
    tokio::select! {
        r = run_as_leader(client, "scheduler", &identity, args.election.leader_lease_secs, work) => r,
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}
