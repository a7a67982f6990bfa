//! The columns and cells of Services and EndpointSlices, as Kubernetes prints them:
//! `NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE [SELECTOR]` and
//! `NAME ADDRESSTYPE PORTS ENDPOINTS AGE`.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::{age, col, wide, Column, TablePrinter, AGE_COLUMN, NAME_COLUMN};

static SERVICE_COLUMNS: [Column; 7] = [
    NAME_COLUMN,
    col("Type", "string", "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are ExternalName, ClusterIP, NodePort, and LoadBalancer."),
    col("Cluster-IP", "string", "clusterIP is the IP address of the service and is usually assigned randomly."),
    col("External-IP", "string", "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
    col("Port(s)", "string", "The list of ports that are exposed by this service. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies"),
    AGE_COLUMN,
    wide("Selector", "string", "Route service traffic to pods with label keys and values matching this selector. If empty or not present, the service is assumed to have an external process managing its endpoints, which Kubernetes will not modify."),
];

/// `80:30080/TCP,443/TCP`, or `<none>`.
pub fn service_ports(svc: &Service) -> String {
    let ports = crate::api::service::ports(svc);
    if ports.is_empty() {
        return "<none>".into();
    }
    ports
        .iter()
        .map(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port.filter(|n| *n != 0) {
                Some(n) => format!("{}:{n}/{proto}", p.port),
                None => format!("{}/{proto}", p.port),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl TablePrinter for Service {
    fn columns() -> &'static [Column] {
        &SERVICE_COLUMNS
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.as_ref();
        let cluster_ip = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .filter(|ip| !ip.is_empty())
            .unwrap_or("<none>");
        let external = spec
            .and_then(|s| s.external_ips.as_ref())
            .filter(|ips| !ips.is_empty())
            .map_or_else(|| "<none>".to_string(), |ips| ips.join(","));
        let selector = crate::api::service::selector(self);
        let selector = if selector.is_empty() {
            "<none>".to_string()
        } else {
            selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        vec![
            json!(self.metadata.name.as_deref().unwrap_or("")),
            json!(crate::api::service::service_type(self)),
            json!(cluster_ip),
            json!(external),
            json!(service_ports(self)),
            json!(age(self.metadata.creation_timestamp.as_ref(), now)),
            json!(selector),
        ]
    }
}

static ENDPOINT_SLICE_COLUMNS: [Column; 5] = [
    NAME_COLUMN,
    col("AddressType", "string", "addressType specifies the type of address carried by this EndpointSlice. All addresses in this slice must be the same type. This field is immutable after creation."),
    col("Ports", "string", "ports specifies the list of network ports exposed by each endpoint in this slice."),
    col("Endpoints", "string", "endpoints is a list of unique endpoints in this slice."),
    AGE_COLUMN,
];

/// At most three items, then `+ N more...`, as Kubernetes shortens these cells; `<unset>`
/// when there are none.
fn first_three(items: Vec<String>) -> String {
    match items.len() {
        0 => "<unset>".into(),
        n if n > 3 => format!("{} + {} more...", items[..3].join(","), n - 3),
        _ => items.join(","),
    }
}

impl TablePrinter for EndpointSlice {
    fn columns() -> &'static [Column] {
        &ENDPOINT_SLICE_COLUMNS
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let ports = self
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.map_or_else(|| "<unset>".into(), |n| n.to_string()))
            .collect();
        let addresses = self
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter().cloned())
            .collect();
        vec![
            json!(self.metadata.name.as_deref().unwrap_or("")),
            json!(self.address_type),
            json!(first_three(ports)),
            json!(first_three(addresses)),
            json!(age(self.metadata.creation_timestamp.as_ref(), now)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    #[test]
    fn a_node_port_service_prints_as_kubectl_shows_it() {
        let mut s = Service::default();
        s.metadata.name = Some("web".into());
        s.spec = Some(ServiceSpec {
            type_: Some("NodePort".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                node_port: Some(30080),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            selector: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        });
        let cells = s.cells(Timestamp::now());
        assert_eq!(cells.len(), Service::columns().len());
        assert_eq!(
            &cells[1..5],
            &[
                json!("NodePort"),
                json!("<none>"),
                json!("<none>"),
                json!("80:30080/TCP")
            ]
        );
        assert_eq!(cells[6], json!("app=web"));
    }

    #[test]
    fn endpoint_slice_cells_shorten_long_lists() {
        assert_eq!(first_three(vec![]), "<unset>");
        let four: Vec<String> = (1..=4).map(|i| format!("10.0.0.{i}")).collect();
        assert_eq!(first_three(four), "10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...");
    }
}
