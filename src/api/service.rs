//! What a v1 Service means, as pure functions every component shares: its node ports and the
//! range they come from, its type, and how a port's `targetPort` resolves against a pod's
//! containers. No I/O; validation of user input is the API server's (`objects/service.rs`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::kube::KubeService;

/// The lowest node port (Kubernetes' default `--service-node-port-range`).
pub const NODE_PORT_MIN: i32 = 30000;
/// The highest node port.
pub const NODE_PORT_MAX: i32 = 32767;

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Its value for Miniku's endpoints controller.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// `ClusterIP` (the default) or `NodePort`.
pub fn service_type(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .filter(|t| !t.is_empty())
        .unwrap_or("ClusterIP")
}

/// Whether the Service is of type NodePort.
pub fn is_node_port(svc: &Service) -> bool {
    service_type(svc) == "NodePort"
}

/// The Service's ports (none without a spec).
pub fn ports(svc: &Service) -> &[ServicePort] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[])
}

/// The node ports the Service holds (set and non-zero).
pub fn node_ports(svc: &KubeService) -> impl Iterator<Item = i32> + '_ {
    ports(svc)
        .iter()
        .filter_map(|p| p.node_port)
        .filter(|p| *p != 0)
}

/// The Service's selector (empty: it selects no pods; Kubernetes then leaves its endpoints to
/// the user).
pub fn selector(svc: &Service) -> BTreeMap<String, String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
}

/// Whether `pod`'s labels carry every pair of a non-empty `selector`.
pub fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    if selector.is_empty() {
        return false;
    }
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The port a Service port sends to: `targetPort` as a number, or as the name of a port of
/// one of `pod`'s containers (None when the pod has no such port). Unset means `port`.
pub fn target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(0)) => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => match name.parse::<i32>() {
            Ok(n) => Some(n),
            Err(_) => pod
                .spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port),
        },
    }
}

/// Whether the pod's `Ready` condition is True (what the kubelet reports).
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};

    fn pod_with_port(name: &str, port: i32) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some(name.into()),
                        container_port: port,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn target_ports_resolve_by_number_or_container_port_name() {
        let pod = pod_with_port("http", 8080);
        let mut p = ServicePort {
            port: 80,
            ..Default::default()
        };
        assert_eq!(target_port(&p, &pod), Some(80), "unset means port");
        p.target_port = Some(IntOrString::Int(9090));
        assert_eq!(target_port(&p, &pod), Some(9090));
        p.target_port = Some(IntOrString::String("http".into()));
        assert_eq!(target_port(&p, &pod), Some(8080));
        p.target_port = Some(IntOrString::String("metrics".into()));
        assert_eq!(
            target_port(&p, &pod),
            None,
            "no container port of that name"
        );
    }

    #[test]
    fn an_empty_selector_selects_nothing() {
        let mut pod = Pod::default();
        pod.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        assert!(!selects(&BTreeMap::new(), &pod));
        assert!(selects(&[("app".into(), "web".into())].into(), &pod));
        assert!(!selects(&[("app".into(), "db".into())].into(), &pod));
    }
}
