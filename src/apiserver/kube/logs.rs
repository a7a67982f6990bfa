//! `GET /api/v1/namespaces/NS/pods/NAME/log`: a container's output, read from the kubelet
//! of the pod's node and streamed through as it comes (so `kubectl logs -f` shows lines as
//! they are written).
//!
//! The API server checks what it can know itself, as kube-apiserver does (the options, the
//! container's name, that the pod is bound), finds the kubelet from the Node object (its
//! `InternalIP` and `status.daemonEndpoints.kubeletEndpoint.Port`) and calls it with its
//! own credential ([`KubeletClient`]). The kubelet's errors (`Status` objects) are passed on
//! unchanged; a kubelet that cannot be reached answers 503 naming the node.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use miniku_store::auth::Token;

use super::status::KubeError;
use crate::api::kube::{KubeNode, KubePod};
use crate::api::logs::LogQuery;

/// Longest wait for a kubelet to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Most bytes of a kubelet's error answer read.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// How the API server reaches kubelets: one HTTP client, and the credential they expect.
#[derive(Clone)]
pub struct KubeletClient {
    pub(super) http: reqwest::Client,
    pub(super) token: Option<Token>,
}

impl KubeletClient {
    pub fn new(token: Option<Token>) -> Self {
        // Kubelets' servers speak plain HTTP: no CA roots are needed (nor loaded, so a host
        // without the system's CA certificates, such as the miniku image, can run this).
        let configured =
            miniku_store::tls::reqwest_builder(miniku_store::tls::Trust::PlainHttp, None)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    b.connect_timeout(CONNECT_TIMEOUT)
                        .build()
                        .map_err(|e| e.to_string())
                });
        let http = configured.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot configure the kubelet client; using defaults");
            reqwest::Client::new()
        });
        KubeletClient { http, token }
    }
}

/// The container the request names, or the pod's only one; Kubernetes' words otherwise.
pub(super) fn pick_container(
    pod: &KubePod,
    name: &str,
    asked: Option<&str>,
) -> Result<String, KubeError> {
    let names: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| c.name.as_str())
        .collect();
    match (asked, names.as_slice()) {
        (Some(c), _) if names.contains(&c) => Ok(c.to_string()),
        (Some(c), _) => Err(KubeError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        (None, [only]) => Ok((*only).to_string()),
        (None, []) => Err(KubeError::bad_request(format!(
            "a container name must be specified for pod {name}"
        ))),
        (None, many) => Err(KubeError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            many.join(" ")
        ))),
    }
}

/// Where the node's kubelet listens: its InternalIP (else its first address) and the port
/// it recorded.
pub(super) fn kubelet_address(node: &KubeNode) -> Option<String> {
    let status = node.status.as_ref()?;
    let port = status
        .daemon_endpoints
        .as_ref()?
        .kubelet_endpoint
        .as_ref()?
        .port;
    let addresses = status.addresses.as_deref().unwrap_or_default();
    let ip = addresses
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .or_else(|| addresses.first())?
        .address
        .clone();
    if port <= 0 || ip.is_empty() {
        return None;
    }
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

/// The innermost cause of an error ("Connection refused"), for messages.
pub(super) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Answers a log request for `pod` (as stored), whose node is `node` (None: not
/// registered).
pub async fn pod_log(
    kubelet: &KubeletClient,
    pod: &KubePod,
    node: Option<&KubeNode>,
    params: &HashMap<String, String>,
) -> Result<Response, KubeError> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(crate::api::DEFAULT_NAMESPACE);
    let query = LogQuery::parse(params).map_err(|e| KubeError::bad_request(e.to_string()))?;
    let container = pick_container(pod, name, query.container.as_deref())?;
    let node_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default();
    if node_name.is_empty() {
        return Err(KubeError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let Some(address) = node.and_then(kubelet_address) else {
        return Err(KubeError::unavailable(format!(
            "the kubelet of node {node_name:?} cannot be reached: the node has not recorded its address and port"
        )));
    };
    let mut url = format!("http://{address}/containerLogs/{namespace}/{name}/{container}");
    let q = query.to_query();
    if !q.is_empty() {
        url.push('?');
        url.push_str(&q);
    }
    let mut req = kubelet.http.get(&url);
    if let Some(t) = &kubelet.token {
        req = req.bearer_auth(t.expose());
    }
    let resp = req.send().await.map_err(|e| {
        KubeError::unavailable(format!(
            "the kubelet of node {node_name:?} ({address}) is not reachable: {}",
            root_cause(&e)
        ))
    })?;
    let status = resp.status();
    if status.is_success() {
        let body = Body::from_stream(resp.bytes_stream());
        return Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response());
    }
    Ok(kubelet_error(resp, node_name).await)
}

/// A kubelet's answer that is not a success, for the client: its own `Status` passed on as
/// it is, a refused credential as 503 naming the node, anything else as a `Status`.
pub(super) async fn kubelet_error(resp: reqwest::Response, node_name: &str) -> Response {
    let status = resp.status();
    kubelet_error_inner(status, resp, node_name)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn kubelet_error_inner(
    status: reqwest::StatusCode,
    resp: reqwest::Response,
    node_name: &str,
) -> Result<Response, KubeError> {
    if matches!(status.as_u16(), 401 | 403) {
        return Err(KubeError::unavailable(format!(
            "the kubelet of node {node_name:?} refused the API server's credential (the API server's --kubelet-token-file must hold the kubelet's --token-file)"
        )));
    }
    // The kubelet's own Status, passed on as it is.
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = futures::StreamExt::next(&mut stream).await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    let is_status = serde_json::from_slice::<serde_json::Value>(&body)
        .is_ok_and(|v| v.get("kind").and_then(|k| k.as_str()) == Some("Status"));
    if is_status {
        return Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let text = String::from_utf8_lossy(&body).trim().to_string();
    Err(match status.as_u16() {
        400 => KubeError::bad_request(text),
        404 => KubeError::new(404, "NotFound", text),
        code => KubeError::new(code, "InternalError", text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: &[&str]) -> KubePod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"containers": containers.iter().map(|c| serde_json::json!({"name": c})).collect::<Vec<_>>()}
        }))
        .unwrap_or_default()
    }

    #[test]
    fn containers_are_picked_as_kubernetes_picks_them() {
        assert_eq!(
            pick_container(&pod(&["a"]), "web", None).ok().as_deref(),
            Some("a")
        );
        let many = pick_container(&pod(&["a", "b"]), "web", None)
            .err()
            .map(|e| e.message);
        assert_eq!(
            many.as_deref(),
            Some("a container name must be specified for pod web, choose one of: [a b]")
        );
        let wrong = pick_container(&pod(&["a"]), "web", Some("x"))
            .err()
            .map(|e| (e.code, e.message));
        assert_eq!(
            wrong,
            Some((400, "container x is not valid for pod web".to_string()))
        );
    }

    #[test]
    fn the_kubelet_is_found_from_its_node() {
        let node: KubeNode = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a"},
            "status": {
                "addresses": [{"type": "Hostname", "address": "node-a"}, {"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}
            }
        }))
        .unwrap_or_default();
        assert_eq!(kubelet_address(&node).as_deref(), Some("127.0.0.1:10250"));
        assert_eq!(kubelet_address(&KubeNode::default()), None);
    }
}
