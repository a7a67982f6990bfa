//! `/api/v1/namespaces/NS/pods/NAME/exec`: `kubectl exec`, proxied to the kubelet of the
//! pod's node as kube-apiserver does it. The request is checked here (the command, the
//! container, that the pod is bound), then sent on to the kubelet's `/exec/...` with the API
//! server's own credential and the client's WebSocket upgrade headers. Once the kubelet
//! answers `101 Switching Protocols`, the client gets that answer and the two upgraded
//! connections are joined byte for byte: the channel protocol (`v5.channel.k8s.io`) is the
//! kubelet's business ([`crate::kubelet::exec`]). Any other answer is passed on as the
//! logs route passes it ([`super::logs::kubelet_error`]).
//!
//! Each joined pair of connections is a task in [`ExecRelays`], which the API server's
//! routes own: it ends when either side closes, and all end when the routes are dropped.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

use super::logs::{kubelet_address, kubelet_error, pick_container, root_cause};
use super::status::KubeError;
use super::KubeState;
use crate::api::kube::{KubeNode, KubePod};
use crate::registry::RegistryError;

/// The upgrade headers the kubelet must see as the client sent them.
const UPGRADE_REQUEST_HEADERS: [HeaderName; 5] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
];

/// The kubelet's upgrade answer headers the client must see.
const UPGRADE_ANSWER_HEADERS: [HeaderName; 4] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_PROTOCOL,
];

/// The running relays between clients and kubelets (finished ones are reaped as new ones
/// start; dropping it ends them all).
#[derive(Clone, Default)]
pub struct ExecRelays(Arc<Mutex<JoinSet<()>>>);

impl ExecRelays {
    fn spawn(&self, relay: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while set.try_join_next().is_some() {}
        set.spawn(relay);
    }
}

/// The kubelet's query for the client's: the command's words, and which streams to attach
/// (Kubernetes' kubelet names them `input`, `output`, `error`, `tty`).
fn kubelet_query(query: &[(String, String)]) -> Result<Vec<(String, String)>, KubeError> {
    let flag = |name: &str| {
        query
            .iter()
            .any(|(k, v)| k == name && matches!(v.as_str(), "1" | "true"))
    };
    let mut out: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| ("command".to_string(), v.clone()))
        .collect();
    if out.is_empty() {
        return Err(KubeError::bad_request(
            "you must specify at least 1 command",
        ));
    }
    for (ours, theirs) in [
        ("stdin", "input"),
        ("stdout", "output"),
        ("stderr", "error"),
        ("tty", "tty"),
    ] {
        if flag(ours) {
            out.push((theirs.to_string(), "1".to_string()));
        }
    }
    if !["stdin", "stdout", "stderr"].iter().any(|f| flag(f)) {
        return Err(KubeError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    Ok(out)
}

pub async fn serve_exec(
    State(s): State<KubeState>,
    Path((namespace, name)): Path<(String, String)>,
    req: Request,
) -> Response {
    exec(s, namespace, name, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn exec(
    s: KubeState,
    namespace: String,
    name: String,
    mut req: Request,
) -> Result<Response, KubeError> {
    let Query(query) = Query::<Vec<(String, String)>>::try_from_uri(req.uri())
        .map_err(|e| KubeError::bad_request(e.body_text()))?;
    let pod: KubePod = s
        .registry
        .get(&format!("{namespace}/{name}"))
        .await
        .map_err(|e| KubeError::from_registry(e, "", "pods", &name))?;
    let asked = query
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.as_str());
    let container = pick_container(&pod, &name, asked)?;
    let kubelet_query = kubelet_query(&query)?;
    let node_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if node_name.is_empty() {
        return Err(KubeError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let node = match s.registry.get::<KubeNode>(&node_name).await {
        Ok(n) => Some(n),
        Err(RegistryError::NotFound { .. }) => None,
        Err(e) => return Err(KubeError::from_registry(e, "", "nodes", &node_name)),
    };
    let Some(address) = node.as_ref().and_then(kubelet_address) else {
        return Err(KubeError::unavailable(format!(
            "the kubelet of node {node_name:?} cannot be reached: the node has not recorded its address and port"
        )));
    };
    if req.headers().get(header::UPGRADE).is_none() {
        return Err(KubeError::bad_request(
            "exec is a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io): kubectl exec makes it",
        ));
    }
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut url = reqwest::Url::parse(&format!(
        "http://{address}/exec/{namespace}/{name}/{container}"
    ))
    .map_err(|e| KubeError::unavailable(format!("the kubelet of node {node_name:?}: {e}")))?;
    url.query_pairs_mut().extend_pairs(&kubelet_query);
    let mut forward = s.kubelet.http.get(url);
    for h in &UPGRADE_REQUEST_HEADERS {
        for v in req.headers().get_all(h) {
            forward = forward.header(h, v);
        }
    }
    if let Some(t) = &s.kubelet.token {
        forward = forward.bearer_auth(t.expose());
    }
    let resp = forward.send().await.map_err(|e| {
        KubeError::unavailable(format!(
            "the kubelet of node {node_name:?} ({address}) is not reachable: {}",
            root_cause(&e)
        ))
    })?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(kubelet_error(resp, &node_name).await);
    }
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for h in &UPGRADE_ANSWER_HEADERS {
        for v in resp.headers().get_all(h) {
            answer = answer.header(h, v);
        }
    }
    let answer = answer
        .body(axum::body::Body::empty())
        .map_err(|e| KubeError::new(500, "InternalError", e.to_string()))?;
    let pod_key = format!("{namespace}/{name}");
    s.exec_relays.spawn(async move {
        let (client, kubelet) = tokio::join!(client_upgrade, resp.upgrade());
        match (client, kubelet) {
            (Ok(client), Ok(mut kubelet)) => {
                let mut client = TokioIo::new(client);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut kubelet).await {
                    tracing::debug!(pod = %pod_key, error = %e, "exec relay ended");
                }
            }
            (Err(e), _) => {
                tracing::debug!(pod = %pod_key, error = %e, "the client's upgrade failed")
            }
            (_, Err(e)) => {
                tracing::debug!(pod = %pod_key, error = %e, "the kubelet's upgrade failed")
            }
        }
    });
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_kubelet_gets_the_command_and_the_streams_by_its_names() {
        let q = kubelet_query(&pairs(&[
            ("command", "sh"),
            ("command", "-c"),
            ("command", "exit 3"),
            ("container", "main"),
            ("stdin", "true"),
            ("stdout", "true"),
            ("stderr", "true"),
            ("tty", "false"),
        ]))
        .expect("valid");
        assert_eq!(
            q,
            pairs(&[
                ("command", "sh"),
                ("command", "-c"),
                ("command", "exit 3"),
                ("input", "1"),
                ("output", "1"),
                ("error", "1"),
            ])
        );
        assert!(kubelet_query(&pairs(&[("stdout", "true")])).is_err());
        assert!(kubelet_query(&pairs(&[("command", "ls")])).is_err());
    }
}
