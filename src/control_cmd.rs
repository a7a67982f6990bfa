//! `miniku apiserver`, `miniku controller-manager`, `miniku scheduler`, `miniku kubelet` and
//! `miniku proxy`: flags, wiring and lifetimes of the components. What they do lives in the library.

use std::time::Duration;

use anyhow::Context;
use miniku::registry::Registry;
use miniku::runtime::leader::run_as_leader;
use miniku::runtime::{shutdown_channel, spawn_owned, OwnedTask, Shutdown};

use crate::store_cmd::shutdown_signal;

/// Where the store is: every member's client address.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreEndpoints {
    /// Store client endpoints, comma-separated HOST:PORT, or https://HOST:PORT for a store
    /// serving TLS (give every member: requests move to another one when a member is down).
    #[arg(
        long = "store",
        env = "MINIKU_STORE",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379"
    )]
    pub endpoints: Vec<String>,
    /// File holding the store's client token (for a store started with --token-file).
    #[arg(long, env = "MINIKU_STORE_TOKEN_FILE")]
    pub store_token_file: Option<std::path::PathBuf>,
    /// PEM file with the CA certificate(s) that signed the store's certificate, for https://
    /// endpoints (only these are trusted then; without it, the system's roots are).
    #[arg(long, env = "MINIKU_STORE_CA_FILE")]
    pub store_ca_file: Option<std::path::PathBuf>,
}

impl StoreEndpoints {
    pub fn registry(&self) -> anyhow::Result<Registry> {
        let token =
            crate::listen_args::token_of("--store-token-file", self.store_token_file.as_deref())?;
        let client = miniku_store::client::StoreClient::new(self.endpoints.clone())
            .and_then(|c| c.with_token(token))
            .and_then(|c| c.with_ca_file(self.store_ca_file.as_deref()))
            .context("connecting to the store")?;
        Ok(Registry::new(client))
    }
}

/// Whether the component records events (`kubectl get events`).
#[derive(clap::Args, Debug)]
pub struct EventArgs {
    /// Record no events (to measure what they cost; Kubernetes' components always record).
    #[arg(long)]
    pub no_events: bool,
}

impl EventArgs {
    fn apply(&self) {
        if self.no_events {
            miniku::events::disable_in_this_process();
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ApiServerArgs {
    /// Address the API (/replicasets, /pods, /nodes) listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// File holding the bearer token clients must send (every route but /health). Without
    /// one the API server only listens on loopback.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// File holding the credential (a bearer token) the API server sends to the kubelets'
    /// servers, for pods' logs: the file each kubelet has as its --token-file.
    #[arg(long)]
    pub kubelet_token_file: Option<std::path::PathBuf>,
    /// TLS and the connection limit.
    #[command(flatten)]
    pub serving: crate::listen_args::ApiListenArgs,
    #[command(flatten)]
    pub store: StoreEndpoints,
}

pub async fn run_apiserver(args: ApiServerArgs) -> anyhow::Result<()> {
    let registry = args.store.registry()?;
    let token = crate::listen_args::token_of("--token-file", args.token_file.as_deref())?;
    miniku_store::auth::check_listen("API server", &args.listen, token.as_ref(), "--token-file")
        .map_err(|e| anyhow::anyhow!(e))?;
    let tls = args
        .serving
        .tls
        .tls()
        .map(|ck| miniku_store::tls::server_config(&ck, None))
        .transpose()
        .context("--cert-file/--key-file")?;
    let serving = miniku_store::serve::ServeConfig {
        tls,
        max_connections: args.serving.max_connections as usize,
        ..miniku_store::serve::ServeConfig::new("API server")
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        listen = %args.listen,
        tls = serving.tls.is_some(),
        store = ?args.store.endpoints,
        "api server started"
    );
    let kubelet_token =
        crate::listen_args::token_of("--kubelet-token-file", args.kubelet_token_file.as_deref())?;
    let router = miniku::apiserver::router(registry, token, kubelet_token);
    miniku_store::serve::serve(listener, router, serving, shutdown_signal()).await;
    Ok(())
}

/// Leader election flags shared by the controller manager and the scheduler.
#[derive(clap::Args, Debug, Clone)]
pub struct ElectionArgs {
    /// Seconds the leader's lock lives without renewal; a standby takes over within this
    /// long after the leader dies. Renewed every sixth of it; a leader that could not renew
    /// for a whole lease stops its work and campaigns again.
    #[arg(long, default_value_t = 10)]
    pub leader_lease_secs: i64,
    /// This instance's name in the election (default: hostname-pid).
    #[arg(long)]
    pub identity: Option<String>,
    /// TESTING ONLY, UNSAFE: act without winning the election, so two instances act at
    /// once. Lets the fault-injection harness prove its invariants catch that.
    #[arg(long, hide = true)]
    pub unsafe_skip_election: bool,
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
    pub events: EventArgs,
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
    args.events.apply();
    let registry = args.store.registry()?;
    let election = registry.clone();
    let eviction = Duration::from_secs(args.pod_eviction_timeout_secs);
    let workers = args.workers;
    let (shutdown, _signals) = shutdown_on_signal();
    // Writes are fenced by the leadership term; only the unsafe testing mode goes without.
    // One term of work: dropping it (leadership lost) stops the controllers and their tasks.
    let term_shutdown = shutdown.clone();
    let work = move |fence: Option<miniku::registry::Fence>| {
        let registry = match fence {
            Some(f) => registry.fenced(f),
            None => registry.clone(),
        };
        let shutdown = term_shutdown.clone();
        async move {
            use miniku::controllers::{
                DeploymentController, EndpointsController, NamespaceController,
                NodeLifecycleController, ReplicaSetController,
            };
            use miniku::runtime::Informer;
            // One informer per kind, shared by the controllers that read it.
            let pods = Informer::start(registry.clone());
            let replicasets = Informer::start(registry.clone());
            let nodes = Informer::start(registry.clone());
            let heartbeats = Informer::start(registry.clone());
            let namespaces = Informer::start(registry.clone());
            let deployments = Informer::start(registry.clone());
            // The endpoints controller reads pods as stored (their Ready condition).
            let endpoints = EndpointsController::new(
                registry.clone(),
                Informer::start(registry.clone()),
                Informer::start(registry.clone()),
                Informer::start(registry.clone()),
            );
            let lifecycle = NodeLifecycleController::new(
                registry.clone(),
                nodes,
                heartbeats,
                pods.clone(),
                eviction,
            );
            tokio::join!(
                DeploymentController::run(
                    registry.clone(),
                    deployments,
                    replicasets.clone(),
                    pods.clone(),
                    workers,
                    shutdown.clone()
                ),
                ReplicaSetController::run(
                    registry.clone(),
                    replicasets,
                    pods,
                    workers,
                    shutdown.clone()
                ),
                lifecycle.run(shutdown.clone()),
                NamespaceController::run(registry, namespaces, shutdown.clone()),
                endpoints.run(shutdown),
            );
            Ok(())
        }
    };
    let identity = args.election.identity();
    let elected = async {
        if args.election.unsafe_skip_election {
            tracing::warn!("--unsafe-skip-election: acting without leadership (testing only)");
            return work(None).await;
        }
        run_as_leader(
            election,
            "controller-manager",
            &identity,
            args.election.leader_lease_secs,
            shutdown.clone(),
            |fence| work(Some(fence)),
        )
        .await
    };
    run_until_stopped(elected, &shutdown).await
}

/// How long a component has to finish what it holds once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The shutdown this process's components share, begun by SIGINT or SIGTERM (while the
/// returned task lives).
fn shutdown_on_signal() -> (Shutdown, OwnedTask<()>) {
    let (trigger, shutdown) = shutdown_channel();
    let task = spawn_owned(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        trigger.fire();
    });
    (shutdown, task)
}

/// Runs `work` until it ends; once `shutdown` begins, it has [`SHUTDOWN_GRACE`] to finish.
async fn run_until_stopped<F>(work: F, shutdown: &Shutdown) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => return r,
        _ = shutdown.wait() => {}
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, work).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "did not stop in time; exiting anyway");
            Ok(())
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub store: StoreEndpoints,
    #[command(flatten)]
    pub events: EventArgs,
    #[command(flatten)]
    pub election: ElectionArgs,
    /// Concurrent bindings (each a store write in flight; Kubernetes binds asynchronously,
    /// without a bound).
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
}

pub async fn run_scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    args.events.apply();
    let registry = args.store.registry()?;
    let election = registry.clone();
    let workers = args.workers;
    let (shutdown, _signals) = shutdown_on_signal();
    let term_shutdown = shutdown.clone();
    let work = move |fence| {
        let registry = registry.fenced(fence);
        let shutdown = term_shutdown.clone();
        async move {
            let pods = miniku::runtime::Informer::start(registry.clone());
            let nodes = miniku::runtime::Informer::start(registry.clone());
            miniku::scheduler::Scheduler::run(registry, pods, nodes, workers, shutdown).await;
            Ok(())
        }
    };
    let identity = args.election.identity();
    let elected = run_as_leader(
        election,
        "scheduler",
        &identity,
        args.election.leader_lease_secs,
        shutdown.clone(),
        work,
    );
    run_until_stopped(elected, &shutdown).await
}

#[derive(clap::ValueEnum, Clone, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// The local Docker engine (DOCKER_HOST or the default socket).
    Docker,
    /// Pretend containers (hollow nodes) for benchmarks and scale tests.
    Fake,
}

#[derive(clap::Args, Debug)]
pub struct KubeletArgs {
    /// This node's name (a DNS-1123 label); several kubelets may share one engine with
    /// different names.
    #[arg(long)]
    pub node_name: String,
    #[command(flatten)]
    pub store: StoreEndpoints,
    #[command(flatten)]
    pub events: EventArgs,
    #[arg(long, value_enum, default_value = "docker")]
    pub runtime: RuntimeKind,
    /// With `--runtime docker`: the engine network the pods' containers join, and whose
    /// address is their pod IP (default: the engine's default network). Name a network the
    /// kubelet's own host is on, so that probes and `miniku proxy` reach the pods.
    #[arg(long)]
    pub pod_network: Option<String>,
    /// CPU the node offers, in millicores (default: the host's CPUs; 4000 for hollow nodes).
    #[arg(long)]
    pub cpu_millis: Option<u64>,
    /// Memory the node offers, in bytes (default: the host's memory; 8 GiB for hollow nodes).
    #[arg(long)]
    pub memory_bytes: Option<u64>,
    /// The address the node is reached at: its InternalIP (where the API server reaches the
    /// kubelet's server) and its pods' hostIP (default: the address --listen names, or when
    /// that is all addresses, the address of the interface the default route leaves by).
    #[arg(long)]
    pub node_ip: Option<std::net::IpAddr>,
    /// Address the kubelet's server (pods' logs, for the API server) listens on; its port is
    /// recorded in the Node's status.daemonEndpoints (port 0: any free one). Without
    /// --token-file it may only listen on loopback.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// File holding the credential (a bearer token) the API server must send to the
    /// kubelet's server; everyone else is refused on every route. The API server is given
    /// the same file as --kubelet-token-file.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// Most pods the node runs.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Node labels, k=v,k2=v2 (for pods' node_selector).
    #[arg(long, default_value = "")]
    pub labels: String,
    /// Seconds the heartbeat lease lives without renewal (renewed every third of it). The
    /// node turns NotReady this long after the kubelet stops.
    #[arg(long, default_value_t = 15)]
    pub lease_ttl_secs: u64,
    /// First restart delay after a container fails, in milliseconds; doubles per failure.
    #[arg(long, default_value_t = 10_000)]
    pub backoff_initial_ms: u64,
    /// Longest restart delay, in milliseconds.
    #[arg(long, default_value_t = 300_000)]
    pub backoff_max_ms: u64,
    /// Seconds of healthy running after which the failure count resets.
    #[arg(long, default_value_t = 600)]
    pub backoff_reset_secs: u64,
    /// Seconds between SIGTERM and SIGKILL when a pod's container is stopped.
    #[arg(long, default_value_t = 10)]
    pub stop_grace_secs: u64,
    /// Seconds between safety-net resyncs of every pod.
    #[arg(long, default_value_t = 300)]
    pub resync_secs: u64,
    /// With `--runtime fake`: host this many hollow nodes in this process, named
    /// `<node-name>-0` … `<node-name>-<N-1>`, sharing one pod watch (for scale benchmarks).
    #[arg(long, default_value_t = 1)]
    pub hollow_nodes: u32,
}

pub async fn run_kubelet(args: KubeletArgs) -> anyhow::Result<()> {
    args.events.apply();
    if args.hollow_nodes != 1 && args.runtime != RuntimeKind::Fake {
        anyhow::bail!("--hollow-nodes needs --runtime fake");
    }
    if args.hollow_nodes == 0 || args.hollow_nodes > 10_000 {
        anyhow::bail!("--hollow-nodes must be between 1 and 10000");
    }
    // The longest name this process will register.
    let longest = match args.hollow_nodes {
        1 => args.node_name.clone(),
        n => format!("{}-{}", args.node_name, n - 1),
    };
    miniku::api::validation::validate_name(
        "--node-name",
        &longest,
        miniku::api::validation::MAX_NAME_LEN,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let registry = args.store.registry()?;
    let mut config = miniku::kubelet::KubeletConfig::new(&args.node_name);
    // Real nodes offer what the host has, as Kubernetes' kubelet reports it; hollow nodes
    // offer a fixed, typical node.
    let hollow = args.runtime == RuntimeKind::Fake;
    config.capacity = miniku::api::Resources {
        cpu: args.cpu_millis.unwrap_or_else(|| {
            if hollow {
                4000
            } else {
                miniku::kubelet::host::cpu_millis()
            }
        }),
        memory: args.memory_bytes.unwrap_or_else(|| {
            let host = (!hollow)
                .then(miniku::kubelet::host::memory_bytes)
                .flatten();
            host.unwrap_or(8 << 30)
        }),
    };
    let token = crate::listen_args::token_of("--token-file", args.token_file.as_deref())?;
    miniku_store::auth::check_listen("kubelet", &args.listen, token.as_ref(), "--token-file")
        .map_err(|e| anyhow::anyhow!(e))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let listening = listener.local_addr().context("the kubelet's address")?;
    config.server_port = Some(listening.port());
    config.node_ip = match args.node_ip {
        Some(ip) => ip.to_string(),
        None if !listening.ip().is_unspecified() => listening.ip().to_string(),
        None => miniku::kubelet::host::primary_ip(),
    };
    if !listening.ip().is_unspecified() && listening.ip().to_string() != config.node_ip {
        tracing::warn!(listen = %listening, node_ip = %config.node_ip, "the kubelet listens on another address than the node's: the API server will not reach it");
    }
    tracing::info!(listen = %listening, authenticated = token.is_some(), "kubelet server listening");
    let serving = Some(miniku::kubelet::Serving { listener, token });
    config.max_pods = args.max_pods;
    config.labels = miniku::api::validation::parse_selector("--labels", &args.labels)
        .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
    config.lease_ttl = Duration::from_secs(args.lease_ttl_secs.max(2));
    config.backoff = miniku::kubelet::sync::BackoffConfig {
        initial: Duration::from_millis(args.backoff_initial_ms.max(1)),
        max: Duration::from_millis(args.backoff_max_ms.max(args.backoff_initial_ms)),
        reset_after: Duration::from_secs(args.backoff_reset_secs),
    };
    config.stop_grace = Duration::from_secs(args.stop_grace_secs);
    config.resync = Duration::from_secs(args.resync_secs.max(1));
    let (shutdown, _signals) = shutdown_on_signal();
    let stopping = shutdown.clone();
    let work = async move {
        match args.runtime {
            RuntimeKind::Fake if args.hollow_nodes > 1 => {
                let nodes = (0..args.hollow_nodes)
                    .map(|i| {
                        let mut c = config.clone();
                        c.node_name = format!("{}-{i}", config.node_name);
                        (miniku::kubelet::fake::FakeRuntime::new(), c)
                    })
                    .collect();
                miniku::kubelet::run_nodes(registry, nodes, serving, stopping).await
            }
            RuntimeKind::Fake => {
                let fake = miniku::kubelet::fake::FakeRuntime::new();
                miniku::kubelet::run(registry, fake, config, serving, stopping).await
            }
            RuntimeKind::Docker => {
                let mut wait = Duration::from_secs(1);
                let docker = loop {
                    let network = args.pod_network.clone();
                    match miniku::kubelet::docker::DockerRuntime::connect(network).await {
                        Ok(d) => break d,
                        Err(e) => {
                            tracing::error!(error = %e, retry_in = ?wait, "cannot reach the Docker engine (is it running? is DOCKER_HOST right?)");
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = stopping.wait() => return Ok(()),
                            }
                            wait = (wait * 2).min(Duration::from_secs(10));
                        }
                    }
                };
                // A network that does not exist will not appear by waiting.
                docker.check_network().await?;
                miniku::kubelet::run(registry, docker, config, serving, stopping).await
            }
        }
        tracing::info!("kubelet stopped; containers keep running and are adopted on restart");
        Ok(())
    };
    run_until_stopped(work, &shutdown).await
}

#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub store: StoreEndpoints,
    /// The address NodePort Services' ports are opened on. Loopback by default: a node port
    /// on another address is reachable by anyone who can reach the node, and the proxy
    /// forwards to pods without authentication, so opening one is a deliberate choice.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_address: std::net::IpAddr,
    /// Milliseconds a connection to one endpoint may take before the next one is tried.
    #[arg(long, default_value_t = 1000)]
    pub connect_timeout_ms: u64,
}

pub async fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    if !args.listen_address.is_loopback() {
        tracing::warn!(
            listen = %args.listen_address,
            "node ports open on a non-loopback address: pods behind NodePort Services are reachable by whoever reaches it"
        );
    }
    let registry = args.store.registry()?;
    let config = miniku::proxy::ProxyConfig {
        listen_ip: args.listen_address,
        connect_timeout: Duration::from_millis(args.connect_timeout_ms.max(1)),
    };
    let (shutdown, _signals) = shutdown_on_signal();
    let stopping = shutdown.clone();
    let work = async move {
        miniku::proxy::run(registry, config, stopping).await;
        Ok(())
    };
    run_until_stopped(work, &shutdown).await
}
