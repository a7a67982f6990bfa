//! The Kubernetes API's rules for v1 Services and discovery.k8s.io/v1 EndpointSlices:
//! validation with Kubernetes' field paths and messages, the defaults the server fills in,
//! and which node ports a Service is given. Choosing a free node port is pure here (from the
//! claims the caller read); taking it is the registry's create-only transaction.
//!
//! Miniku gives Services no cluster IP: `spec.clusterIP` stays empty (kubectl shows
//! `<none>`), or `None` when the user asks for a headless Service; any address is refused.
//! Clients reach a Service through its node port on a node (`miniku proxy`).

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{ServicePort, ServiceStatus};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rand::Rng;

use super::{cause, check_meta, check_name, keep_identity, required, Cause, Served};
use crate::api::kube::{KubeEndpointSlice, KubeService};
use crate::api::service::{is_node_port, NODE_PORT_MAX, NODE_PORT_MIN};
use crate::registry::{node_port_claim, NODE_PORT_CLAIMS};

const DNS1035: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// A Service's name: a DNS-1035 label (it starts with a letter).
fn check_service_name(name: &str, out: &mut Vec<Cause>) {
    let ok = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name.is_empty() && !ok {
        out.push(cause(
            "metadata.name",
            "FieldValueInvalid",
            format!("Invalid value: \"{name}\": {DNS1035}"),
        ));
    }
}

/// An IANA service name, as a named `targetPort` must be.
fn valid_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn check_port(i: usize, p: &ServicePort, node_port_type: bool, many: bool, out: &mut Vec<Cause>) {
    let at = format!("spec.ports[{i}]");
    match p.name.as_deref() {
        None | Some("") if many => out.push(required(format!("{at}.name"))),
        Some(n) if !n.is_empty() => check_name(&format!("{at}.name"), n, false, out),
        _ => {}
    }
    if !(1..=65535).contains(&p.port) {
        out.push(cause(
            format!("{at}.port"),
            "FieldValueInvalid",
            format!(
                "Invalid value: {}: must be between 1 and 65535, inclusive",
                p.port
            ),
        ));
    }
    match p.protocol.as_deref() {
        None | Some("TCP") => {}
        Some(other) => out.push(cause(
            format!("{at}.protocol"),
            "FieldValueNotSupported",
            format!("Unsupported value: \"{other}\": supported values: \"TCP\""),
        )),
    }
    match &p.target_port {
        None | Some(IntOrString::Int(0)) => {}
        Some(IntOrString::Int(n)) if !(1..=65535).contains(n) => out.push(cause(
            format!("{at}.targetPort"),
            "FieldValueInvalid",
            format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
        )),
        Some(IntOrString::String(s)) if !valid_port_name(s) => out.push(cause(
            format!("{at}.targetPort"),
            "FieldValueInvalid",
            format!("Invalid value: \"{s}\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), at most 15 characters, and at least one letter"),
        )),
        _ => {}
    }
    match p.node_port {
        None | Some(0) => {}
        Some(n) if !node_port_type => out.push(cause(
            format!("{at}.nodePort"),
            "FieldValueForbidden",
            format!("Forbidden: may not be used when `type` is 'ClusterIP' (got {n})"),
        )),
        Some(n) if !(NODE_PORT_MIN..=NODE_PORT_MAX).contains(&n) => out.push(cause(
            format!("{at}.nodePort"),
            "FieldValueInvalid",
            format!("Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {NODE_PORT_MIN}-{NODE_PORT_MAX}"),
        )),
        _ => {}
    }
}

impl Served for KubeService {
    const SELECTABLE_FIELDS: &'static [&'static str] = &[
        "metadata.name",
        "metadata.namespace",
        "spec.clusterIP",
        "spec.type",
    ];

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        check_meta(&self.metadata, &mut out, true);
        if out.is_empty() {
            check_service_name(self.metadata.name.as_deref().unwrap_or_default(), &mut out);
        }
        let Some(spec) = &self.spec else {
            out.push(required("spec"));
            return out;
        };
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !matches!(type_, "ClusterIP" | "NodePort" | "") {
            out.push(cause(
                "spec.type",
                "FieldValueNotSupported",
                format!(
                    "Unsupported value: \"{type_}\": supported values: \"ClusterIP\", \"NodePort\""
                ),
            ));
        }
        for (field, ip) in std::iter::once(("spec.clusterIP", spec.cluster_ip.as_deref())).chain(
            spec.cluster_ips
                .iter()
                .flatten()
                .map(|ip| ("spec.clusterIPs", Some(ip.as_str()))),
        ) {
            match ip {
                None | Some("") | Some("None") => {}
                Some(ip) => out.push(cause(
                    field,
                    "FieldValueInvalid",
                    format!("Invalid value: \"{ip}\": Miniku does not allocate cluster IPs; leave it unset and reach the Service through a NodePort"),
                )),
            }
        }
        if let Some(a) = spec.session_affinity.as_deref().filter(|a| *a != "None") {
            out.push(cause(
                "spec.sessionAffinity",
                "FieldValueNotSupported",
                format!("Unsupported value: \"{a}\": supported values: \"None\""),
            ));
        }
        let ports = spec.ports.as_deref().unwrap_or(&[]);
        if ports.is_empty() {
            out.push(required("spec.ports"));
        }
        let node_port_type = type_ == "NodePort";
        let mut names = HashSet::new();
        let mut node_ports = HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            check_port(i, p, node_port_type, ports.len() > 1, &mut out);
            if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                if !names.insert(n) {
                    out.push(cause(
                        format!("spec.ports[{i}].name"),
                        "FieldValueDuplicate",
                        format!("Duplicate value: \"{n}\""),
                    ));
                }
            }
            if let Some(n) = p.node_port.filter(|n| *n != 0) {
                if !node_ports.insert(n) {
                    out.push(cause(
                        format!("spec.ports[{i}].nodePort"),
                        "FieldValueDuplicate",
                        format!("Duplicate value: {n}"),
                    ));
                }
            }
        }
        out
    }

    fn initial_status(&mut self) {
        // Services carry no generation in Kubernetes.
        self.metadata.generation = None;
        default_spec(self);
        self.status = Some(ServiceStatus {
            load_balancer: Some(Default::default()),
            ..Default::default()
        });
    }

    fn prepare_update(&mut self, current: &Self) -> Result<(), Vec<Cause>> {
        keep_identity(&mut self.metadata, &current.metadata);
        self.status = current.status.clone();
        default_spec(self);
        // As Kubernetes does, an update that leaves a port's nodePort unset keeps the one
        // the port had (matched by port number and protocol).
        if is_node_port(self) {
            let before = crate::api::service::ports(current).to_vec();
            if let Some(ports) = self.spec.as_mut().and_then(|s| s.ports.as_mut()) {
                for p in ports.iter_mut().filter(|p| p.node_port.unwrap_or(0) == 0) {
                    p.node_port = before
                        .iter()
                        .find(|b| b.port == p.port && b.protocol == p.protocol)
                        .and_then(|b| b.node_port);
                }
            }
        }
        Ok(())
    }

    fn take_status_from(&mut self, request: Self) {
        self.status = request.status;
    }

    const ALLOCATES: Option<&'static str> = Some(NODE_PORT_CLAIMS);

    fn allocate(&mut self, held: &HashSet<String>) -> Result<Vec<String>, Vec<Cause>> {
        if !is_node_port(self) {
            return Ok(Vec::new());
        }
        let mut taken: HashSet<i32> = crate::api::service::node_ports(self).collect();
        let mut picked = Vec::new();
        let Some(ports) = self.spec.as_mut().and_then(|s| s.ports.as_mut()) else {
            return Ok(picked);
        };
        for (i, p) in ports.iter_mut().enumerate() {
            if p.node_port.unwrap_or(0) != 0 {
                continue;
            }
            let Some(n) = pick_node_port(held, &taken) else {
                return Err(vec![cause(
                    format!("spec.ports[{i}].nodePort"),
                    "FieldValueInvalid",
                    format!("Invalid value: 0: failed to allocate a nodePort: range {NODE_PORT_MIN}-{NODE_PORT_MAX} is full"),
                )]);
            };
            taken.insert(n);
            p.node_port = Some(n);
            picked.push(node_port_claim(n));
        }
        Ok(picked)
    }

    fn claim_taken(&self, claim: &str) -> Vec<Cause> {
        let port = claim
            .strip_prefix(NODE_PORT_CLAIMS)
            .and_then(|p| p.parse::<i32>().ok());
        let index = crate::api::service::ports(self)
            .iter()
            .position(|p| p.node_port.is_some() && p.node_port == port);
        vec![cause(
            format!("spec.ports[{}].nodePort", index.unwrap_or(0)),
            "FieldValueInvalid",
            format!(
                "Invalid value: {}: provided port is already allocated",
                port.unwrap_or(0)
            ),
        )]
    }
}

/// The defaults Kubernetes fills into a Service's spec.
fn default_spec(svc: &mut KubeService) {
    let spec = svc.spec.get_or_insert_with(Default::default);
    if spec.type_.as_deref().is_none_or(str::is_empty) {
        spec.type_ = Some("ClusterIP".into());
    }
    if spec.session_affinity.is_none() {
        spec.session_affinity = Some("None".into());
    }
    if spec.internal_traffic_policy.is_none() {
        spec.internal_traffic_policy = Some("Cluster".into());
    }
    let node_port = spec.type_.as_deref() == Some("NodePort");
    if node_port && spec.external_traffic_policy.is_none() {
        spec.external_traffic_policy = Some("Cluster".into());
    }
    if !node_port {
        spec.external_traffic_policy = None;
    }
    for p in spec.ports.iter_mut().flatten() {
        if p.protocol.is_none() {
            p.protocol = Some("TCP".into());
        }
        if matches!(p.target_port, None | Some(IntOrString::Int(0))) {
            p.target_port = Some(IntOrString::Int(p.port));
        }
        if !node_port {
            p.node_port = None;
        }
    }
}

/// A node port neither held by another Service nor used by this one, picked at random
/// (so that concurrent creates rarely pick the same one); None if every one is taken.
fn pick_node_port(held: &HashSet<String>, taken: &HashSet<i32>) -> Option<i32> {
    let free = |n: i32| !taken.contains(&n) && !held.contains(&node_port_claim(n));
    let start = rand::rng().random_range(NODE_PORT_MIN..=NODE_PORT_MAX);
    (start..=NODE_PORT_MAX)
        .chain(NODE_PORT_MIN..start)
        .find(|n| free(*n))
}

impl Served for KubeEndpointSlice {
    const SELECTABLE_FIELDS: &'static [&'static str] =
        &["metadata.name", "metadata.namespace", "addressType"];

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        check_meta(&self.metadata, &mut out, false);
        out
    }

    fn prepare_update(&mut self, current: &Self) -> Result<(), Vec<Cause>> {
        keep_identity(&mut self.metadata, &current.metadata);
        Ok(())
    }

    fn take_status_from(&mut self, _request: Self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;

    fn service(type_: &str, ports: Vec<ServicePort>) -> KubeService {
        let mut s = KubeService::default();
        s.metadata.name = Some("web".into());
        s.spec = Some(ServiceSpec {
            type_: Some(type_.into()),
            ports: Some(ports),
            ..Default::default()
        });
        s
    }

    fn port(port: i32, node_port: Option<i32>) -> ServicePort {
        ServicePort {
            port,
            node_port,
            target_port: Some(IntOrString::Int(8080)),
            ..Default::default()
        }
    }

    fn messages(s: &KubeService) -> Vec<String> {
        s.validate()
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn node_ports_out_of_range_and_other_protocols_are_refused_as_kubernetes_words_it() {
        let s = service("NodePort", vec![port(80, Some(1))]);
        assert_eq!(
            messages(&s),
            vec!["spec.ports[0].nodePort: Invalid value: 1: provided port is not in the valid range. The range of valid ports is 30000-32767"]
        );
        let mut udp = port(53, None);
        udp.protocol = Some("UDP".into());
        let s = service("ClusterIP", vec![udp]);
        assert_eq!(
            messages(&s),
            vec!["spec.ports[0].protocol: Unsupported value: \"UDP\": supported values: \"TCP\""]
        );
        let s = service("LoadBalancer", vec![port(80, None)]);
        assert!(messages(&s)[0].starts_with("spec.type: Unsupported value"));
        let s = service(
            "NodePort",
            vec![port(80, Some(30080)), port(81, Some(30080))],
        );
        assert!(messages(&s).contains(&"spec.ports[1].nodePort: Duplicate value: 30080".into()));
        assert!(messages(&s).contains(&"spec.ports[0].name: Required value".into()));
        assert!(service("NodePort", vec![port(80, Some(30080))])
            .validate()
            .is_empty());
    }

    #[test]
    fn allocation_fills_only_unset_node_ports_with_free_ones() {
        let mut s = service("NodePort", vec![port(80, None), port(81, Some(30001))]);
        // Every port but 30000 and 30001 is held by someone else; 30001 is this Service's.
        let held: HashSet<String> = (30002..=NODE_PORT_MAX).map(node_port_claim).collect();
        let picked = s.allocate(&held).unwrap();
        assert_eq!(picked, vec!["nodeports/30000".to_string()]);
        assert_eq!(
            crate::api::service::node_ports(&s).collect::<Vec<_>>(),
            vec![30000, 30001]
        );
        // Nothing left: a 422 naming the port.
        let mut full = service("NodePort", vec![port(80, None)]);
        let all: HashSet<String> = (NODE_PORT_MIN..=NODE_PORT_MAX)
            .map(node_port_claim)
            .collect();
        let causes = full.allocate(&all).unwrap_err();
        assert_eq!(causes[0].field, "spec.ports[0].nodePort");
        assert!(causes[0].message.contains("is full"));
        // A ClusterIP Service gets none.
        let mut c = service("ClusterIP", vec![port(80, None)]);
        assert!(c.allocate(&HashSet::new()).unwrap().is_empty());
        let claim = c.claim_taken("nodeports/30000");
        assert_eq!(claim[0].field, "spec.ports[0].nodePort");
    }

    #[test]
    fn an_update_keeps_allocated_node_ports_and_defaults_fill_in() {
        let mut current = service("NodePort", vec![port(80, Some(31000))]);
        current.prepare_create();
        let mut next = service("NodePort", vec![port(80, None)]);
        next.prepare_update(&current).unwrap();
        assert_eq!(
            crate::api::service::node_ports(&next).collect::<Vec<_>>(),
            vec![31000]
        );
        let p = &crate::api::service::ports(&next)[0];
        assert_eq!(p.protocol.as_deref(), Some("TCP"));
        // Switching to ClusterIP drops node ports (and so releases their claims).
        let mut cluster = service("ClusterIP", vec![port(80, Some(31000))]);
        cluster.prepare_update(&current).unwrap();
        assert_eq!(crate::api::service::node_ports(&cluster).count(), 0);
    }
}
