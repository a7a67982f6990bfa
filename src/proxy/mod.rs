//! `miniku proxy`, Miniku's kube-proxy: for every Service of type NodePort it listens on
//! the node (one address, loopback by default) on each node port and forwards every TCP
//! connection to a ready endpoint of the Service's EndpointSlice (`podIP:targetPort`),
//! choosing endpoints round robin.
//!
//! It reads Services and EndpointSlices through informers (list, then watch; never polls)
//! and recomputes what it should serve ([`desired`], a pure function) on every change:
//! listeners open and close as node ports come and go, and a listener's endpoints are
//! swapped in place, so an endpoint that leaves the slice gets no new connection from the
//! moment the change arrives (connections already open keep going, as with kube-proxy).
//!
//! Owns its listeners and connections: each listener is an [`OwnedTask`] holding its
//! connections in a `JoinSet`, so closing a listener (or stopping the proxy) ends them all.
//! It writes nothing to the store. Cluster IPs are not implemented (see docs/services.md).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::api::kube::{KubeEndpointSlice, KubeService};
use crate::api::service::{is_node_port, ports, SERVICE_NAME_LABEL};
use crate::registry::{Object, Registry};
use crate::runtime::{spawn_owned, Informer, OwnedTask, Shutdown};

/// How the proxy listens and dials.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The address node ports are opened on.
    pub listen_ip: IpAddr,
    /// The longest a connection to one endpoint may take before the next one is tried.
    pub connect_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen_ip: IpAddr::from([127, 0, 0, 1]),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// What one node port forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The Service (`namespace/name`) and its port's name, for logs.
    pub service: String,
    pub port_name: String,
    /// Ready endpoints, in the slice's order.
    pub endpoints: Vec<SocketAddr>,
}

/// Every node port the proxy should serve, from the Services and their slices: for each
/// port of a NodePort Service, the ready endpoints' addresses with the slice's port of the
/// same name.
pub fn desired(services: &[KubeService], slices: &[KubeEndpointSlice]) -> BTreeMap<u16, Route> {
    let mut by_service: HashMap<String, Vec<&KubeEndpointSlice>> = HashMap::new();
    for s in slices {
        if let Some(name) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            by_service
                .entry(format!("{ns}/{name}"))
                .or_default()
                .push(s);
        }
    }
    let mut out = BTreeMap::new();
    for svc in services.iter().filter(|s| is_node_port(s)) {
        let key = svc.key();
        let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        for p in ports(svc) {
            let Some(node_port) = p.node_port.and_then(|n| u16::try_from(n).ok()) else {
                continue;
            };
            let name = p.name.clone().unwrap_or_default();
            let mut endpoints = Vec::new();
            for slice in slices {
                let Some(target) = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|sp| sp.name.as_deref().unwrap_or("") == name)
                    .and_then(|sp| sp.port)
                    .and_then(|n| u16::try_from(n).ok())
                else {
                    continue;
                };
                for e in &slice.endpoints {
                    let ready = e.conditions.as_ref().and_then(|c| c.ready) == Some(true);
                    if !ready {
                        continue;
                    }
                    for a in &e.addresses {
                        if let Ok(ip) = a.parse::<IpAddr>() {
                            endpoints.push(SocketAddr::new(ip, target));
                        }
                    }
                }
            }
            out.insert(
                node_port,
                Route {
                    service: key.clone(),
                    port_name: name,
                    endpoints,
                },
            );
        }
    }
    out
}

/// A listener's endpoints, swapped in place on every change, and its round-robin cursor.
#[derive(Default)]
struct Backends {
    endpoints: RwLock<Vec<SocketAddr>>,
    next: AtomicUsize,
}

impl Backends {
    fn set(&self, endpoints: Vec<SocketAddr>) {
        *self.endpoints.write().unwrap_or_else(|p| p.into_inner()) = endpoints;
    }

    /// The endpoints to try for one connection, starting with the next one in turn.
    fn order(&self) -> Vec<SocketAddr> {
        let list = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        if list.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % list.len();
        list[start..]
            .iter()
            .chain(&list[..start])
            .copied()
            .collect()
    }
}

/// One open node port.
struct Listener {
    route: Route,
    backends: Arc<Backends>,
    /// The accept loop and, through its `JoinSet`, every connection it accepted.
    task: OwnedTask<()>,
}

/// Runs the proxy until `shutdown`.
pub async fn run(registry: Registry, config: ProxyConfig, shutdown: Shutdown) {
    let services: Informer<KubeService> = Informer::start(registry.clone());
    let slices: Informer<KubeEndpointSlice> = Informer::start(registry);
    let mut service_changes = services.subscribe();
    let mut slice_changes = slices.subscribe();
    tokio::select! {
        _ = async { services.wait_synced().await; slices.wait_synced().await } => {}
        _ = shutdown.wait() => return,
    }
    tracing::info!(listen = %config.listen_ip, "proxy synced; serving node ports");
    let mut open: BTreeMap<u16, Listener> = BTreeMap::new();
    loop {
        let want = desired(&services.list(), &slices.list());
        let unopened = apply(&mut open, want, &config).await;
        // A node port that could not be opened (another process holds it) is tried again
        // after a while, besides at the next change.
        let retry = async {
            if unopened == 0 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(BIND_RETRY).await;
        };
        tokio::select! {
            c = service_changes.recv() => if c.is_none() { break },
            c = slice_changes.recv() => if c.is_none() { break },
            _ = retry => {}
            _ = shutdown.wait() => break,
        }
        // Take every change already waiting before recomputing once.
        while service_changes.try_recv().is_ok() || slice_changes.try_recv().is_ok() {}
    }
    let ports = open.len();
    for (_, l) in open {
        l.task.stop().await;
    }
    tracing::info!(ports, "proxy stopped; node ports closed");
}

/// How soon a node port that could not be opened is tried again.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// Opens, updates and closes listeners so that `open` serves `want`; returns how many node
/// ports could not be opened.
async fn apply(
    open: &mut BTreeMap<u16, Listener>,
    want: BTreeMap<u16, Route>,
    config: &ProxyConfig,
) -> usize {
    let mut unopened = 0;
    let gone: Vec<u16> = open
        .iter()
        .filter(|(port, l)| want.get(port).is_none_or(|r| r.service != l.route.service))
        .map(|(port, _)| *port)
        .collect();
    for port in gone {
        if let Some(l) = open.remove(&port) {
            l.task.stop().await;
            tracing::info!(node_port = port, service = %l.route.service, "node port closed");
        }
    }
    for (port, route) in want {
        if let Some(l) = open.get_mut(&port) {
            if l.route != route {
                tracing::info!(
                    node_port = port,
                    service = %route.service,
                    endpoints = ?route.endpoints,
                    "endpoints changed"
                );
                l.backends.set(route.endpoints.clone());
                l.route = route;
            }
            continue;
        }
        let addr = SocketAddr::new(config.listen_ip, port);
        let socket = match TcpListener::bind(addr).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%addr, service = %route.service, error = %e, "cannot open node port; trying again later");
                unopened += 1;
                continue;
            }
        };
        let backends = Arc::new(Backends::default());
        backends.set(route.endpoints.clone());
        tracing::info!(%addr, service = %route.service, endpoints = ?route.endpoints, "node port opened");
        let task = spawn_owned(accept_loop(
            socket,
            backends.clone(),
            route.service.clone(),
            config.connect_timeout,
        ));
        open.insert(
            port,
            Listener {
                route,
                backends,
                task,
            },
        );
    }
    unopened
}

async fn accept_loop(
    socket: TcpListener,
    backends: Arc<Backends>,
    service: String,
    connect_timeout: Duration,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((client, peer)) => {
                    let order = backends.order();
                    let service = service.clone();
                    connections.spawn(async move {
                        forward(client, peer, order, &service, connect_timeout).await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(service = %service, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Connects to the first endpoint of `order` that answers and copies bytes both ways until
/// either side closes. Without any endpoint the client's connection is closed at once.
async fn forward(
    mut client: TcpStream,
    peer: SocketAddr,
    order: Vec<SocketAddr>,
    service: &str,
    connect_timeout: Duration,
) {
    if order.is_empty() {
        tracing::debug!(%peer, service, "no ready endpoint; connection closed");
        return;
    }
    for endpoint in order {
        match tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(mut upstream)) => {
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(%peer, %endpoint, error = %e, "connection ended with an error");
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%endpoint, service, error = %e, "endpoint refused; trying the next")
            }
            Err(_) => {
                tracing::debug!(%endpoint, service, "endpoint did not answer; trying the next")
            }
        }
    }
    tracing::debug!(%peer, service, "no endpoint answered; connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn service(type_: &str, node_port: Option<i32>) -> KubeService {
        let mut s = KubeService::default();
        s.metadata.name = Some("web".into());
        s.metadata.namespace = Some("default".into());
        s.spec = Some(ServiceSpec {
            type_: Some(type_.into()),
            ports: Some(vec![ServicePort {
                port: 80,
                node_port,
                ..Default::default()
            }]),
            ..Default::default()
        });
        s
    }

    fn slice(endpoints: &[(&str, bool)]) -> KubeEndpointSlice {
        let mut s = KubeEndpointSlice {
            address_type: "IPv4".into(),
            ports: Some(vec![EndpointPort {
                name: Some(String::new()),
                port: Some(8080),
                ..Default::default()
            }]),
            endpoints: endpoints
                .iter()
                .map(|(ip, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        s.metadata.name = Some("web".into());
        s.metadata.namespace = Some("default".into());
        s.metadata.labels = Some([(SERVICE_NAME_LABEL.to_string(), "web".to_string())].into());
        s
    }

    #[test]
    fn node_port_services_route_to_their_ready_endpoints_only() {
        let want = desired(
            &[service("NodePort", Some(30080)), {
                let mut c = service("ClusterIP", None);
                c.metadata.name = Some("internal".into());
                c
            }],
            &[slice(&[("172.17.0.2", true), ("172.17.0.3", false)])],
        );
        assert_eq!(want.len(), 1, "only the NodePort Service: {want:?}");
        let route = &want[&30080];
        assert_eq!(route.service, "default/web");
        assert_eq!(route.endpoints, vec!["172.17.0.2:8080".parse().unwrap()]);
        // No slice yet: the port is open, with nothing behind it.
        let want = desired(&[service("NodePort", Some(30080))], &[]);
        assert!(want[&30080].endpoints.is_empty());
    }

    #[test]
    fn connections_take_endpoints_in_turn() {
        let b = Backends::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let c: SocketAddr = "10.0.0.2:80".parse().unwrap();
        b.set(vec![a, c]);
        let firsts: Vec<SocketAddr> = (0..4).map(|_| b.order()[0]).collect();
        assert_eq!(firsts, vec![a, c, a, c]);
        assert_eq!(
            b.order().len(),
            2,
            "the others follow, to try if the first fails"
        );
        b.set(vec![c]);
        assert!((0..3).all(|_| b.order() == vec![c]));
        b.set(vec![]);
        assert!(b.order().is_empty());
    }

    #[tokio::test]
    async fn a_listener_forwards_and_follows_endpoint_changes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Two upstreams that answer with their own name and close.
        async fn upstream(name: &'static str) -> (SocketAddr, OwnedTask<()>) {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let task = spawn_owned(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    let _ = s.write_all(name.as_bytes()).await;
                }
            });
            (addr, task)
        }
        let (a, _ta) = upstream("a").await;
        let (b, _tb) = upstream("b").await;
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = ProxyConfig::default();
        let mut open = BTreeMap::new();
        let route = |endpoints: Vec<SocketAddr>| {
            BTreeMap::from([(
                port,
                Route {
                    service: "default/web".into(),
                    port_name: String::new(),
                    endpoints,
                },
            )])
        };
        apply(&mut open, route(vec![a, b]), &config).await;
        let get = || async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            out
        };
        let mut seen = vec![get().await, get().await];
        seen.sort();
        assert_eq!(seen, vec!["a", "b"], "round robin over both");
        apply(&mut open, route(vec![b]), &config).await;
        for _ in 0..3 {
            assert_eq!(get().await, "b", "a left: no new connection goes to it");
        }
        apply(&mut open, BTreeMap::new(), &config).await;
        assert!(open.is_empty());
        assert!(
            TcpStream::connect(("127.0.0.1", port)).await.is_err(),
            "the node port is closed"
        );
    }
}
