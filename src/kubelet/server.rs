//! The kubelet's own HTTP server, as Kubernetes' kubelet serves on port 10250: the API
//! server reads a container's output through it.
//!
//! - `GET /exec/{namespace}/{pod}/{container}?command=...`: `kubectl exec`, a WebSocket
//!   bridged to an engine exec session ([`super::exec`]).
//! - `GET /containerLogs/{namespace}/{pod}/{container}` with Kubernetes' `PodLogOptions`
//!   ([`LogQuery`]: `follow`, `tailLines`, `sinceSeconds`, `sinceTime`, `timestamps`,
//!   `previous`, `limitBytes`): the engine's stream, passed on as it comes.
//! - With a credential ([`Token`]), every route, unknown ones included, answers 401 with a
//!   Kubernetes `Status` to a request that does not carry it. Without one the kubelet may
//!   only listen on loopback (its caller applies that rule, as the store's does).
//! - It serves only the pods bound to its node(s): any other answers 404, as a pod that
//!   does not exist does.
//!
//! Errors are Kubernetes' words (`container "x" in pod "y" is waiting to start: ...`), as a
//! `Status` the API server passes on to kubectl unchanged.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use futures::StreamExt;
use miniku_store::auth::Token;

use super::runtime::{ContainerRuntime, LogStream, RuntimeError};
use crate::api::logs::LogQuery;
use crate::api::Pod;
use crate::apiserver::kube::status::KubeError;
use crate::runtime::Informer;

/// What the server reads: the pods (shared with the kubelet's sync) and each node's runtime.
pub(super) struct ServerState<R> {
    pub(super) pods: Informer<Pod>,
    pub(super) runtimes: HashMap<String, R>,
}

/// The kubelet's routes for the nodes in `runtimes` (one, or a process's hollow nodes);
/// with `token`, every route needs `Authorization: Bearer <token>`.
pub fn router<R: ContainerRuntime>(
    pods: Informer<Pod>,
    runtimes: HashMap<String, R>,
    token: Option<Token>,
) -> Router {
    let state = Arc::new(ServerState { pods, runtimes });
    Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs::<R>),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(super::exec::exec::<R>).post(super::exec::exec::<R>),
        )
        .fallback(|| async { KubeError::not_found_path() })
        .method_not_allowed_fallback(|| async {
            KubeError::method_not_allowed("the kubelet serves GET (and POST for exec) only")
        })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            token,
            require_credential,
        ))
}

/// 401 (a Kubernetes `Status`) unless the request carries the kubelet's credential.
async fn require_credential(
    State(token): State<Option<Token>>,
    req: Request,
    next: Next,
) -> Response {
    match &token {
        Some(t) if !t.accepts(req.headers().get(header::AUTHORIZATION)) => {
            let mut resp = KubeError::new(401, "Unauthorized", "Unauthorized").into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
        _ => next.run(req).await,
    }
}

/// The names of the pod's containers, in order.
pub(super) fn container_names(pod: &Pod) -> Vec<String> {
    crate::api::kube::pod_into_kube(pod)
        .spec
        .map(|s| s.containers.into_iter().map(|c| c.name).collect())
        .unwrap_or_default()
}

/// Why the pod's container has no output yet, in Kubernetes' words.
pub(super) fn waiting_message(pod: &Pod, container: &str) -> String {
    let name = &pod.spec.name;
    let reason = crate::api::kube::pod_into_kube(pod)
        .status
        .and_then(|s| s.container_statuses)
        .into_iter()
        .flatten()
        .find(|s| s.name == container)
        .and_then(|s| s.state)
        .and_then(|s| s.waiting)
        .and_then(|w| w.reason);
    let reason = match reason.as_deref() {
        // Miniku's pull failures keep the pod Pending with this reason.
        _ if pod.reason == "ImagePullError" => "trying and failing to pull image".to_string(),
        Some("ErrImagePull") => "image can't be pulled".to_string(),
        Some("ImagePullBackOff") => "trying and failing to pull image".to_string(),
        Some(r) => r.to_string(),
        None if pod.status == crate::api::PodPhase::Pending => "ContainerCreating".to_string(),
        None => {
            return format!(
                "container {container:?} in pod {name:?} is waiting to start - no logs yet"
            )
        }
    };
    format!("container {container:?} in pod {name:?} is waiting to start: {reason}")
}

async fn container_logs<R: ContainerRuntime>(
    State(s): State<Arc<ServerState<R>>>,
    Path((namespace, name, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, KubeError> {
    let key = format!("{namespace}/{name}");
    let not_found = || KubeError::not_found("", "pods", &name);
    let pod = s.pods.get(&key).ok_or_else(not_found)?;
    // Only the pods bound to this kubelet's node(s).
    let runtime = s.runtimes.get(&pod.spec.node_name).ok_or_else(not_found)?;
    if !container_names(&pod).contains(&container) {
        return Err(KubeError::new(
            404,
            "NotFound",
            format!("container {container:?} is not valid for pod {name:?}"),
        ));
    }
    let query = LogQuery::parse(&q).map_err(|e| KubeError::bad_request(e.to_string()))?;
    let options = query.engine_options(Utc::now());
    let stream = runtime
        .logs(&pod.spec.node_name, &pod, &container, &options)
        .await
        .map_err(|e| match e {
            RuntimeError::EngineUnreachable(_) => KubeError::unavailable(e.to_string()),
            other => KubeError::new(500, "InternalError", other.to_string()),
        })?;
    let Some(stream) = stream else {
        return Err(KubeError::bad_request(if options.previous {
            format!("previous terminated container {container:?} in pod {name:?} not found")
        } else {
            waiting_message(&pod, &container)
        }));
    };
    tracing::debug!(pod = %key, container, follow = options.follow, "serving logs");
    let body = Body::from_stream(limited(stream, query.limit_bytes));
    Ok(([(header::CONTENT_TYPE, "text/plain")], body).into_response())
}

/// The stream cut after `limit` bytes (Kubernetes' `limitBytes`: the last line may be cut).
fn limited(stream: LogStream, limit: Option<u64>) -> LogStream {
    let Some(limit) = limit else {
        return stream;
    };
    futures::stream::unfold((stream, limit), |(mut stream, left)| async move {
        if left == 0 {
            return None;
        }
        match stream.next().await? {
            Ok(mut chunk) => {
                if chunk.len() as u64 > left {
                    chunk.truncate(left as usize);
                }
                let left = left - chunk.len() as u64;
                Some((Ok(chunk), (stream, left)))
            }
            Err(e) => Some((Err(e), (stream, 0))),
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::fake::FakeRuntime;
    use crate::registry::Registry;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    const TOKEN: &str = "kubelet-test-credential-0123";

    async fn call(
        router: &Router,
        method: &str,
        path: &str,
        auth: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let Ok(req) = req.body(Body::empty()) else {
            return (StatusCode::BAD_REQUEST, String::new());
        };
        let Ok(resp) = router.clone().oneshot(req).await;
        let code = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        (code, String::from_utf8_lossy(&body).to_string())
    }

    fn pod(name: &str, node: &str) -> Pod {
        let mut p = Pod::default();
        p.spec.name = name.into();
        p.spec.image = "busybox".into();
        p.spec.node_name = node.into();
        p
    }

    #[tokio::test]
    async fn serves_its_own_pods_to_the_credential_only() {
        let (registry, _store) = Registry::in_process();
        for p in [pod("mine", "n1"), pod("theirs", "n2"), pod("waiting", "n1")] {
            registry.create(&p).await.expect("created");
        }
        let pods = Informer::<Pod>::start(registry.clone());
        pods.wait_synced().await;
        let fake = FakeRuntime::new();
        let mine = pods.get("default/mine").expect("listed");
        fake.start(&mine, "n1").await.expect("started");
        let token = Token::new(TOKEN).ok();
        let router = router(pods, HashMap::from([("n1".to_string(), fake)]), token);
        let bearer = format!("Bearer {TOKEN}");
        let ok = Some(bearer.as_str());

        for (method, path) in [
            ("GET", "/containerLogs/default/mine/main"),
            ("GET", "/"),
            ("GET", "/exec/default/mine/main"),
            ("POST", "/containerLogs/default/mine/main"),
        ] {
            for auth in [None, Some("Bearer wrong-credential-xxxxxxxx")] {
                let (code, body) = call(&router, method, path, auth).await;
                assert_eq!(code, StatusCode::UNAUTHORIZED, "{method} {path} {auth:?}");
                assert!(body.contains("\"kind\":\"Status\""), "{body}");
            }
        }
        let (code, body) = call(&router, "GET", "/containerLogs/default/mine/main", ok).await;
        assert_eq!(code, StatusCode::OK);
        assert!(
            body.contains("hollow container main of pod default/mine started"),
            "{body}"
        );
        let (_, cut) = call(
            &router,
            "GET",
            "/containerLogs/default/mine/main?limitBytes=7",
            ok,
        )
        .await;
        assert_eq!(cut, "hollow ");
        let (code, body) = call(&router, "GET", "/containerLogs/default/theirs/main", ok).await;
        assert_eq!(
            (code, body.contains("pods \\\"theirs\\\" not found")),
            (StatusCode::NOT_FOUND, true),
            "{body}"
        );
        let (code, _) = call(&router, "GET", "/containerLogs/default/mine/nope", ok).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        let (code, body) = call(&router, "GET", "/containerLogs/default/waiting/main", ok).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(
            body.contains("is waiting to start: ContainerCreating"),
            "{body}"
        );
        let (code, body) = call(
            &router,
            "GET",
            "/containerLogs/default/mine/main?previous=true",
            ok,
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("previous terminated container"), "{body}");
        let (code, _) = call(
            &router,
            "GET",
            "/containerLogs/default/mine/main?tailLines=-1",
            ok,
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (code, _) = call(&router, "GET", "/nothing-here", ok).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn limit_bytes_cuts_the_stream() {
        let chunks: Vec<Result<bytes::Bytes, RuntimeError>> = vec![
            Ok("hello\n".into()),
            Ok("world\n".into()),
            Ok("again\n".into()),
        ];
        let out: Vec<u8> = limited(futures::stream::iter(chunks).boxed(), Some(8))
            .filter_map(|c| async move { c.ok() })
            .flat_map(|b| futures::stream::iter(b.to_vec()))
            .collect()
            .await;
        assert_eq!(out, b"hello\nwo");
    }

    #[test]
    fn waiting_reads_as_kubernetes_writes_it() {
        let mut pod = Pod::default();
        pod.spec.name = "web".into();
        pod.spec.node_name = "node-a".into();
        assert_eq!(
            waiting_message(&pod, "main"),
            "container \"main\" in pod \"web\" is waiting to start: ContainerCreating"
        );
        pod.reason = "ImagePullError".into();
        assert_eq!(
            waiting_message(&pod, "main"),
            "container \"main\" in pod \"web\" is waiting to start: trying and failing to pull image"
        );
    }
}
