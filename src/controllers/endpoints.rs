//! The endpoints controller: keeps one discovery.k8s.io/v1 EndpointSlice per Service, named
//! after it and labelled `kubernetes.io/service-name`, listing the pods the Service selects
//! with their IPs, whether each is ready (the stored pod's `Ready` condition, whatever sets
//! it) and the ports the Service's `targetPort`s resolve to. Driven by informers on Services,
//! pods and EndpointSlices; it owns EndpointSlices and writes nothing else.
//!
//! What the slice should be is a pure function ([`desired_slice`]); reconcile compares it
//! with the cached slice and creates, updates or deletes. Simplification: one slice per
//! Service, with the ports the first endpoint's pod resolves; a pod whose named target ports
//! resolve differently (or not at all) is left out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::api::kube::{KubeEndpointSlice, KubePod, KubeService};
use crate::api::service::{
    pod_ready, ports, selector, selects, target_port, MANAGED_BY, MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
};
use crate::registry::{Object, Registry, RegistryError};
use crate::runtime::{Change, Controller, Informer, Next, Shutdown};

#[derive(Clone)]
pub struct EndpointsController {
    registry: Registry,
    services: Informer<KubeService>,
    pods: Informer<KubePod>,
    slices: Informer<KubeEndpointSlice>,
}

/// The Service key (`namespace/name`) a slice belongs to, from its label.
fn slice_owner(slice: &KubeEndpointSlice) -> Option<String> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
    Some(format!("{ns}/{name}"))
}

impl EndpointsController {
    pub fn new(
        registry: Registry,
        services: Informer<KubeService>,
        pods: Informer<KubePod>,
        slices: Informer<KubeEndpointSlice>,
    ) -> Self {
        EndpointsController {
            registry,
            services,
            pods,
            slices,
        }
    }

    /// Runs until `shutdown`, or until the future is dropped.
    pub async fn run(self, shutdown: Shutdown) {
        let for_pods = self.services.clone();
        Controller::new("endpoints")
            .reconciles(&self.services)
            .watches(&self.pods, move |change| services_of_pod(&for_pods, change))
            .watches(&self.slices, |change| match change {
                Change::Upsert { new, .. } => slice_owner(new).into_iter().collect::<Vec<_>>(),
                Change::Deleted(old) => slice_owner(old).into_iter().collect(),
            })
            .run(2, shutdown.wait(), move |key| {
                let ctl = self.clone();
                async move { ctl.reconcile(&key).await }
            })
            .await;
    }

    pub async fn reconcile(&self, key: &str) -> anyhow::Result<Next> {
        let (ns, name) = key.split_once('/').unwrap_or(("default", key));
        let current = self.slices.get(&format!("{ns}/{name}"));
        let desired = self.services.get(key).and_then(|svc| {
            let mut pods = Vec::new();
            let sel = selector(&svc);
            self.pods.for_each(|p| {
                if p.metadata.namespace.as_deref() == Some(ns) && selects(&sel, p) {
                    pods.push(p.clone());
                }
            });
            desired_slice(&svc, &pods)
        });
        match (current, desired) {
            (None, None) => {}
            (Some(cur), None) => {
                if slice_owner(&cur).as_deref() == Some(key) && managed(&cur) {
                    match self
                        .registry
                        .delete::<KubeEndpointSlice>(&cur.key(), cur.resource_version())
                        .await
                    {
                        Ok(_) | Err(RegistryError::NotFound { .. }) => {
                            tracing::info!(service = key, "endpoint slice deleted")
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            (None, Some(mut want)) => {
                want.metadata.uid = Some(crate::api::random_hex(32));
                want.metadata.creation_timestamp =
                    Some(crate::api::kube::to_time(chrono::Utc::now()));
                match self.registry.create(&want).await {
                    Ok(_) => tracing::info!(
                        service = key,
                        endpoints = want.endpoints.len(),
                        "endpoint slice created"
                    ),
                    Err(e) => return Err(e.into()),
                }
            }
            (Some(cur), Some(mut want)) => {
                if same_content(&cur, &want) {
                    return Ok(Next::Done);
                }
                want.metadata.uid = cur.metadata.uid.clone();
                want.metadata.creation_timestamp = cur.metadata.creation_timestamp.clone();
                want.set_resource_version(cur.resource_version());
                self.registry.update(&want).await?;
                tracing::info!(
                    service = key,
                    endpoints = want.endpoints.len(),
                    ready = want
                        .endpoints
                        .iter()
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                        .count(),
                    "endpoint slice updated"
                );
            }
        }
        Ok(Next::Done)
    }
}

fn managed(slice: &KubeEndpointSlice) -> bool {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY)
}

/// Whether two slices say the same (labels, ports, endpoints).
fn same_content(a: &KubeEndpointSlice, b: &KubeEndpointSlice) -> bool {
    a.metadata.labels == b.metadata.labels
        && a.metadata.owner_references == b.metadata.owner_references
        && a.address_type == b.address_type
        && a.ports == b.ports
        && a.endpoints == b.endpoints
}

/// The Services (keys) a pod change concerns: those selecting it before or after.
fn services_of_pod(services: &Informer<KubeService>, change: &Change<KubePod>) -> Vec<String> {
    let pods: Vec<&KubePod> = match change {
        Change::Upsert { old, new } => old.iter().chain(std::iter::once(new)).collect(),
        Change::Deleted(p) => vec![p],
    };
    let mut keys = Vec::new();
    services.for_each(|svc| {
        let sel = selector(svc);
        if pods
            .iter()
            .any(|p| p.metadata.namespace == svc.metadata.namespace && selects(&sel, p))
        {
            keys.push(svc.key());
        }
    });
    keys
}

/// The EndpointSlice a Service should have, given the pods it selects (None: it should have
/// none, as a Service without a selector, whose endpoints Kubernetes leaves to the user).
/// Pods without an IP, and finished ones, are left out; pods being deleted are listed as not
/// ready and terminating. Endpoints are sorted by pod name.
pub fn desired_slice(svc: &KubeService, pods: &[KubePod]) -> Option<KubeEndpointSlice> {
    let name = svc.metadata.name.clone()?;
    let ns = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    if selector(svc).is_empty() {
        return None;
    }
    let mut candidates: Vec<&KubePod> = pods
        .iter()
        .filter(|p| {
            let st = p.status.as_ref();
            let phase = st.and_then(|s| s.phase.as_deref());
            let ip = st.and_then(|s| s.pod_ip.as_deref()).unwrap_or("");
            !ip.is_empty() && !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .collect();
    candidates.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let resolve = |p: &KubePod| -> Vec<Option<i32>> {
        ports(svc).iter().map(|sp| target_port(sp, p)).collect()
    };
    let resolved = candidates.first().map(|p| resolve(p));
    let endpoint_ports: Vec<EndpointPort> = ports(svc)
        .iter()
        .zip(resolved.clone().unwrap_or_default())
        .filter_map(|(sp, target)| {
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(target?),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect();
    let endpoints = candidates
        .into_iter()
        .filter(|p| Some(resolve(p)) == resolved)
        .map(|p| {
            let terminating = p.metadata.deletion_timestamp.is_some();
            let ready = pod_ready(p) && !terminating;
            Endpoint {
                addresses: vec![p
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_default()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(pod_ready(p)),
                    terminating: Some(terminating),
                }),
                node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: p.metadata.name.clone(),
                    namespace: Some(ns.clone()),
                    uid: p.metadata.uid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    let mut slice = KubeEndpointSlice {
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(endpoint_ports),
        ..Default::default()
    };
    slice.metadata.name = Some(name.clone());
    slice.metadata.namespace = Some(ns);
    slice.metadata.labels = Some(BTreeMap::from([
        (SERVICE_NAME_LABEL.to_string(), name.clone()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ]));
    slice.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name,
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    Some(slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn service(target: IntOrString) -> KubeService {
        let mut s = KubeService::default();
        s.metadata.name = Some("web".into());
        s.metadata.namespace = Some("default".into());
        s.metadata.uid = Some("svc-uid".into());
        s.spec = Some(ServiceSpec {
            selector: Some([("app".to_string(), "web".to_string())].into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(target),
                ..Default::default()
            }]),
            ..Default::default()
        });
        s
    }

    fn pod(name: &str, ip: &str, ready: bool) -> KubePod {
        let mut p = KubePod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p.spec = Some(PodSpec {
            node_name: Some("node-a".into()),
            containers: vec![Container {
                name: "c".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("web".into()),
                    container_port: 8080,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: (!ip.is_empty()).then(|| ip.to_string()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    #[test]
    fn the_slice_lists_pods_with_ips_and_their_readiness_sorted_by_name() {
        let svc = service(IntOrString::Int(8080));
        let pods = vec![
            pod("web-b", "172.17.0.3", false),
            pod("web-a", "172.17.0.2", true),
            pod("web-c", "", true),
        ];
        let s = desired_slice(&svc, &pods).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("web"));
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL],
            "web"
        );
        let got: Vec<(String, bool)> = s
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses[0].clone(),
                    e.conditions.as_ref().unwrap().ready.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("172.17.0.2".to_string(), true),
                ("172.17.0.3".to_string(), false)
            ],
            "the pod without an IP is left out"
        );
        let port = &s.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port),
            (Some("http"), Some(8080))
        );
    }

    #[test]
    fn named_target_ports_resolve_against_the_containers() {
        let svc = service(IntOrString::String("web".into()));
        let s = desired_slice(&svc, &[pod("web-a", "172.17.0.2", true)]).unwrap();
        assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
        // A name no container has: no port, so nothing to route to.
        let svc = service(IntOrString::String("nope".into()));
        let s = desired_slice(&svc, &[pod("web-a", "172.17.0.2", true)]).unwrap();
        assert!(s.ports.as_ref().unwrap().is_empty());
    }

    async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(10), f)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// The controller over the store in this process: the slice follows pods and Services
    /// through watches.
    #[tokio::test]
    async fn the_slice_follows_pods_and_services_through_watches() {
        use crate::runtime::{spawn_owned, Shutdown};
        let (registry, _store) = Registry::in_process();
        let slices: Informer<KubeEndpointSlice> = Informer::start(registry.clone());
        let ctl = EndpointsController::new(
            registry.clone(),
            Informer::start(registry.clone()),
            Informer::start(registry.clone()),
            slices.clone(),
        );
        let _run = spawn_owned(ctl.run(Shutdown::never()));
        let ready_ips = |i: &Informer<KubeEndpointSlice>| -> Option<Vec<String>> {
            let s = i.get("default/web")?;
            Some(
                s.endpoints
                    .iter()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .flat_map(|e| e.addresses.clone())
                    .collect(),
            )
        };
        registry
            .create(&service(IntOrString::Int(8080)))
            .await
            .unwrap();
        let a = registry
            .create(&pod("web-a", "10.0.0.1", true))
            .await
            .unwrap();
        registry
            .create(&pod("web-b", "10.0.0.2", true))
            .await
            .unwrap();
        let mut other = pod("db-a", "10.0.0.9", true);
        other.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        registry.create(&other).await.unwrap();
        within(
            "both pods in the slice",
            slices.wait_until(|i| ready_ips(i) == Some(vec!["10.0.0.1".into(), "10.0.0.2".into()])),
        )
        .await;
        // web-a turns not ready: still listed, not ready.
        let mut unready = a.clone();
        unready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        registry.update(&unready).await.unwrap();
        within(
            "web-a not ready",
            slices.wait_until(|i| {
                ready_ips(i) == Some(vec!["10.0.0.2".into()])
                    && i.get("default/web").is_some_and(|s| s.endpoints.len() == 2)
            }),
        )
        .await;
        registry
            .delete::<KubePod>("default/web-b", 0)
            .await
            .unwrap();
        within(
            "web-b gone",
            slices.wait_until(|i| i.get("default/web").is_some_and(|s| s.endpoints.len() == 1)),
        )
        .await;
        registry
            .delete::<KubeService>("default/web", 0)
            .await
            .unwrap();
        within(
            "the slice deleted with its Service",
            slices.wait_until(|i| i.get("default/web").is_none()),
        )
        .await;
    }

    #[test]
    fn terminating_and_finished_pods_are_not_ready_or_gone() {
        let svc = service(IntOrString::Int(8080));
        let mut going = pod("web-a", "172.17.0.2", true);
        going.metadata.deletion_timestamp = Some(crate::api::kube::to_time(chrono::Utc::now()));
        let mut done = pod("web-b", "172.17.0.3", true);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let s = desired_slice(&svc, &[going, done]).unwrap();
        assert_eq!(s.endpoints.len(), 1);
        let c = s.endpoints[0].conditions.as_ref().unwrap();
        assert_eq!((c.ready, c.terminating), (Some(false), Some(true)));
        // No selector: no slice.
        let mut bare = svc.clone();
        bare.spec.as_mut().unwrap().selector = None;
        assert!(desired_slice(&bare, &[]).is_none());
    }
}
