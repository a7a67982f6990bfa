//! The Kubernetes REST API on the API server's port, for the real kubectl and the official
//! client libraries: discovery ([`discovery`]), OpenAPI ([`openapi`]), and for each served
//! kind (pods, nodes, namespaces, apps/v1 replicasets) get, list, watch (newline-delimited
//! JSON events), create, replace, patch ([`patch`]), delete with propagation, and the
//! `status` and `scale` subresources, and pods' `log` ([`logs`], read from the kubelets) and
//! `exec` ([`exec`], joined to the kubelets). Answers are JSON, or server-side Tables
//! ([`table`]) when kubectl asks for them; errors are Kubernetes `Status` objects
//! ([`status`]).
//!
//! Objects are stored through the [`Registry`] in the same keys the seed's routes and the
//! components use, so both APIs see one object and one resourceVersion. What each kind
//! validates and what the server owns lives in [`objects`]. This module does not reconcile
//! anything: cascading deletes are done here only as far as Kubernetes' API server and
//! garbage collector would (owner references), and pods are run by the components.

pub mod discovery;
pub mod exec;
pub mod logs;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod selectors;
pub mod status;
pub mod table;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use chrono::Utc;
use futures::{stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use serde_json::{json, Value};

use crate::api::kube::{to_time, KubeDeployment, KubeNamespace, KubePod, KubeReplicaSet};
use crate::api::DEFAULT_NAMESPACE;
use crate::registry::{Registry, RegistryError, WatchEvent};
use discovery::ResourceSpec;
use objects::Served;
use selectors::{FieldSelector, LabelSelector};
use status::KubeError;
use table::TablePrinter;

/// The longest a watch stays open without `timeoutSeconds` (Kubernetes' default
/// `--min-request-timeout` is 1800 s).
const MAX_WATCH: Duration = Duration::from_secs(1800);

/// How often a write picks again when a concurrent write took what it picked.
const ALLOCATION_TRIES: usize = 10;

#[derive(Clone)]
pub struct KubeState {
    registry: Registry,
    /// Whether the `default` namespace is known to exist.
    default_namespace: Arc<AtomicBool>,
    /// How pods' logs are read from the kubelets.
    kubelet: logs::KubeletClient,
    /// `kubectl exec` connections joined to their kubelets.
    exec_relays: exec::ExecRelays,
}

/// The Kubernetes API's routes; `kubelet_token` is the credential the kubelets' servers
/// expect (pods' logs).
pub fn router(registry: Registry, kubelet_token: Option<miniku_store::auth::Token>) -> Router {
    let state = KubeState {
        registry,
        default_namespace: Arc::new(AtomicBool::new(false)),
        kubelet: logs::KubeletClient::new(kubelet_token),
        exec_relays: exec::ExecRelays::default(),
    };
    Router::new()
        .route("/version", any(serve_discovery))
        .route("/version/", any(serve_discovery))
        .route("/api", any(serve_discovery))
        .route("/api/", any(serve_discovery))
        .route("/apis", any(serve_discovery))
        .route("/apis/", any(serve_discovery))
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/exec",
            any(exec::serve_exec),
        )
        .route("/api/{*rest}", any(serve_api))
        .route("/apis/{*rest}", any(serve_api))
        .route("/openapi/v2", any(serve_openapi_v2))
        .route("/openapi/v3", any(serve_openapi))
        .route("/openapi/v3/{*rest}", any(serve_openapi))
        .with_state(state)
}

type Params = HashMap<String, String>;

async fn serve_discovery(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET {
        return KubeError::method_not_allowed(format!("{method} is not allowed on {}", uri.path()))
            .into_response();
    }
    discovery_answer(uri.path(), &headers).unwrap_or_else(|| not_found_path().into_response())
}

fn discovery_answer(path: &str, headers: &HeaderMap) -> Option<Response> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match discovery::discovery_document(path, accept) {
        Ok(Some(doc)) => {
            let mut resp = (
                [(header::CONTENT_TYPE, doc.content_type)],
                Bytes::from_static(doc.body),
            )
                .into_response();
            if doc.vary_accept {
                resp.headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("Accept"));
            }
            Some(resp)
        }
        Ok(None) => None,
        Err(e) => Some(KubeError::new(406, "NotAcceptable", e.to_string()).into_response()),
    }
}

async fn serve_openapi(uri: Uri, Query(q): Query<Params>) -> Response {
    match openapi::lookup(uri.path(), q.get("hash").map(String::as_str)) {
        Some(openapi::Answer::Ok {
            body,
            content_type,
            cache_control,
            etag,
        }) => {
            let mut resp = (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, cache_control),
                ],
                Bytes::from_static(body),
            )
                .into_response();
            if let Some(tag) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
                resp.headers_mut().insert(header::ETAG, tag);
            }
            resp
        }
        Some(openapi::Answer::Redirect { location }) => (
            StatusCode::MOVED_PERMANENTLY,
            [(header::LOCATION, location.to_string())],
        )
            .into_response(),
        None => not_found_path().into_response(),
    }
}

async fn serve_openapi_v2(headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = openapi::openapi_v2(accept);
    (
        [(header::CONTENT_TYPE, content_type)],
        Bytes::from_static(body),
    )
        .into_response()
}

fn not_found_path() -> KubeError {
    KubeError::not_found_path()
}

impl KubeError {
    /// A path that names nothing, as kube-apiserver answers it.
    pub fn not_found_path() -> Self {
        KubeError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
}

/// What a resource path names.
struct Target {
    spec: &'static ResourceSpec,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn key(&self) -> String {
        let name = self.name.as_deref().unwrap_or_default();
        match &self.namespace {
            Some(ns) if self.spec.namespaced => format!("{ns}/{name}"),
            _ => name.to_string(),
        }
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    /// A stale resourceVersion on this object.
    fn conflict(&self) -> KubeError {
        KubeError::conflict(self.spec.group, self.spec.plural, self.name())
    }

    fn registry_error(&self, e: RegistryError) -> KubeError {
        KubeError::from_registry(e, self.spec.group, self.spec.plural, self.name())
    }
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && !s.contains(['\\', '%']) && s != "." && s != ".."
}

fn parse_target(path: &str) -> Result<Target, KubeError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found_path()),
    };
    let namespaced_path = match rest {
        ["namespaces", _, resource, ..] => {
            discovery::find_resource(group, version, resource).is_some_and(|r| r.namespaced)
        }
        _ => false,
    };
    let (namespace, rest) = if namespaced_path {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let (resource, name, subresource) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(n.to_string()), None),
        [r, n, s] => (*r, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(not_found_path()),
    };
    let spec = discovery::find_resource(group, version, resource).ok_or_else(not_found_path)?;
    if namespace
        .iter()
        .chain(name.iter())
        .any(|s| !valid_segment(s))
    {
        return Err(not_found_path());
    }
    if !spec.namespaced && namespace.is_some() {
        return Err(not_found_path());
    }
    if spec.namespaced && namespace.is_none() && name.is_some() {
        return Err(not_found_path());
    }
    if let Some(sub) = &subresource {
        if spec.subresource(sub).is_none() {
            return Err(not_found_path());
        }
    }
    Ok(Target {
        spec,
        namespace,
        name,
        subresource,
    })
}

async fn serve_api(
    State(s): State<KubeState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<Params>,
    body: Bytes,
) -> Response {
    if let Some(resp) = (method == Method::GET)
        .then(|| discovery_answer(uri.path(), &headers))
        .flatten()
    {
        return resp;
    }
    let target = match parse_target(uri.path()) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    if let Some(e) = refused_verb(&method, &target) {
        return e.into_response();
    }
    s.ensure_default_namespace().await;
    let req = Request {
        state: s,
        method,
        target,
        headers,
        params: q,
        body,
    };
    let result = match req.target.spec.plural {
        "pods" => req.handle::<KubePod>().await,
        "replicasets" => req.handle::<KubeReplicaSet>().await,
        "deployments" => req.handle::<KubeDeployment>().await,
        "nodes" => req.handle::<crate::api::kube::KubeNode>().await,
        "namespaces" => req.handle::<KubeNamespace>().await,
        "services" => req.handle::<crate::api::kube::KubeService>().await,
        "events" => req.handle::<crate::api::kube::KubeEvent>().await,
        "endpointslices" => req.handle::<crate::api::kube::KubeEndpointSlice>().await,
        _ => Err(not_found_path()),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A write to a resource whose discovery entry does not list the verb (EndpointSlices are
/// read-only: the endpoints controller owns them).
fn refused_verb(method: &Method, target: &Target) -> Option<KubeError> {
    use discovery::Verb;
    if target.subresource.is_some() {
        return None;
    }
    let one = target.name.is_some();
    let verb = match *method {
        Method::POST if !one => Verb::Create,
        Method::PUT if one => Verb::Update,
        Method::PATCH if one => Verb::Patch,
        Method::DELETE if one => Verb::Delete,
        Method::DELETE => Verb::DeleteCollection,
        _ => return None,
    };
    (!target.spec.has_verb(verb)).then(|| {
        KubeError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))
    })
}

impl KubeState {
    /// Creates the `default` namespace if it does not exist (once per process, until it
    /// succeeds): Kubernetes always has it.
    async fn ensure_default_namespace(&self) {
        if self.default_namespace.load(Ordering::Relaxed) {
            return;
        }
        let mut ns = KubeNamespace::default();
        ns.metadata.name = Some(DEFAULT_NAMESPACE.into());
        ns.prepare_create();
        match self.registry.create(&ns).await {
            Ok(_) | Err(RegistryError::AlreadyExists { .. }) => {
                self.default_namespace.store(true, Ordering::Relaxed)
            }
            Err(e) => tracing::warn!(error = %e, "cannot create the default namespace yet"),
        }
    }
}

/// A kind the routes serve: stored, validated and printable.
pub trait Kind: Served + TablePrinter + k8s_openapi::ListableResource {}
impl<K: Served + TablePrinter + k8s_openapi::ListableResource> Kind for K {}

struct Request {
    state: KubeState,
    method: Method,
    target: Target,
    headers: HeaderMap,
    params: Params,
    body: Bytes,
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, KubeError> {
    serde_json::to_value(v).map_err(|e| KubeError::new(500, "InternalError", e.to_string()))
}

fn table_error(e: table::TableError) -> KubeError {
    KubeError::new(e.status_code(), e.reason(), e.to_string())
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `includeObject` query parameter of a Table request.
    fn include_object(&self) -> Result<table::IncludeObject, KubeError> {
        table::IncludeObject::from_query(self.param("includeObject")).map_err(table_error)
    }

    fn registry(&self) -> &Registry {
        &self.state.registry
    }

    async fn handle<K: Kind>(&self) -> Result<Response, KubeError> {
        let t = &self.target;
        let m = &self.method;
        match (t.name.is_some(), t.subresource.as_deref()) {
            (false, None) if *m == Method::GET => {
                if matches!(self.param("watch"), Some("true" | "1")) {
                    self.watch::<K>().await
                } else {
                    self.list::<K>().await
                }
            }
            (false, None) if *m == Method::POST => self.create::<K>().await,
            (false, None) if *m == Method::DELETE => self.delete_collection::<K>().await,
            (true, None) if *m == Method::GET => {
                let obj: K = self.get::<K>().await?;
                self.render_one(&obj)
            }
            (true, None) if *m == Method::PUT => self.replace::<K>(false).await,
            (true, None) if *m == Method::PATCH => self.patch::<K>(false).await,
            (true, None) if *m == Method::DELETE => self.delete::<K>().await,
            (true, Some("status")) if *m == Method::GET => {
                let obj: K = self.get::<K>().await?;
                self.render_one(&obj)
            }
            (true, Some("status")) if *m == Method::PUT => self.replace::<K>(true).await,
            (true, Some("status")) if *m == Method::PATCH => self.patch::<K>(true).await,
            (true, Some("scale")) => self.scale().await,
            (true, Some("log")) if *m == Method::GET => self.log().await,
            _ => Err(KubeError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({m})"
            ))),
        }
    }

    async fn get<K: Kind>(&self) -> Result<K, KubeError> {
        self.registry()
            .get::<K>(&self.target.key())
            .await
            .map_err(|e| self.target.registry_error(e))
    }

    /// A pod's container output, from its node's kubelet.
    async fn log(&self) -> Result<Response, KubeError> {
        let pod: KubePod = self.get::<KubePod>().await?;
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let node = if node_name.is_empty() {
            None
        } else {
            match self
                .registry()
                .get::<crate::api::kube::KubeNode>(&node_name)
                .await
            {
                Ok(n) => Some(n),
                Err(RegistryError::NotFound { .. }) => None,
                Err(e) => return Err(KubeError::from_registry(e, "", "nodes", &node_name)),
            }
        };
        logs::pod_log(&self.state.kubelet, &pod, node.as_ref(), &self.params).await
    }

    /// One object as JSON, a Table or PartialObjectMetadata, as the client asked.
    fn render_one<K: Kind>(&self, obj: &K) -> Result<Response, KubeError> {
        let accept = self.header(header::ACCEPT);
        let target = table::negotiate(accept).map_err(table_error)?;
        target.check_for(false).map_err(table_error)?;
        let body = match target {
            table::Target::Object | table::Target::PartialObjectMetadataList(_) => to_value(obj)?,
            table::Target::Table(v) => {
                let include = self.include_object()?;
                let opts = table::TableOptions::new(v, include);
                to_value(&table::object_table(obj, &opts, now()).map_err(table_error)?)?
            }
            table::Target::PartialObjectMetadata(v) => {
                table::partial_object_metadata(obj, v).map_err(table_error)?
            }
        };
        Ok(json_response(StatusCode::OK, &body))
    }

    fn selectors<K: Kind>(&self) -> Result<(LabelSelector, FieldSelector), KubeError> {
        let labels = LabelSelector::parse(self.param("labelSelector").unwrap_or(""))
            .map_err(KubeError::bad_request)?;
        let fields = FieldSelector::parse(
            self.param("fieldSelector").unwrap_or(""),
            K::SELECTABLE_FIELDS,
        )
        .map_err(KubeError::bad_request)?;
        Ok((labels, fields))
    }

    /// The objects of the target namespace (or all) that the request's label and field
    /// selectors match, each with its JSON, and the revision the list reflects.
    async fn matching<K: Kind>(&self) -> Result<(Vec<(K, Value)>, i64), KubeError> {
        let (labels, fields) = self.selectors::<K>()?;
        let (items, revision) = self
            .registry()
            .list_in::<K>(self.target.namespace.as_deref())
            .await
            .map_err(|e| self.target.registry_error(e))?;
        let mut kept = Vec::with_capacity(items.len());
        for item in items {
            let v = to_value(&item)?;
            if labels.matches_object(&v) && fields.matches_object(&v) {
                kept.push((item, v));
            }
        }
        Ok((kept, revision))
    }

    async fn list<K: Kind>(&self) -> Result<Response, KubeError> {
        let (kept, revision) = self.matching::<K>().await?;
        let meta = ListMeta {
            resource_version: Some(revision.to_string()),
            ..Default::default()
        };
        let accept = self.header(header::ACCEPT);
        let target = table::negotiate(accept).map_err(table_error)?;
        target.check_for(true).map_err(table_error)?;
        let body = match target {
            table::Target::Table(v) => {
                let include = self.include_object()?;
                let opts = table::TableOptions::new(v, include);
                let items: Vec<K> = kept.into_iter().map(|(i, _)| i).collect();
                to_value(&table::list_table(&items, &meta, &opts, now()).map_err(table_error)?)?
            }
            table::Target::PartialObjectMetadataList(v) => {
                let items: Vec<K> = kept.into_iter().map(|(i, _)| i).collect();
                table::partial_object_metadata_list(&items, &meta, v).map_err(table_error)?
            }
            _ => json!({
                "kind": K::LIST_KIND,
                "apiVersion": K::API_VERSION,
                "metadata": {"resourceVersion": revision.to_string()},
                "items": kept.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            }),
        };
        Ok(json_response(StatusCode::OK, &body))
    }

    /// A watch: newline-delimited `{"type","object"}` events, chunked, held open until
    /// `timeoutSeconds` (or [`MAX_WATCH`]).
    async fn watch<K: Kind>(&self) -> Result<Response, KubeError> {
        let (labels, fields) = self.selectors::<K>()?;
        let accept = self.header(header::ACCEPT);
        let target = table::negotiate(accept).map_err(table_error)?;
        let include = self.include_object()?;
        let bookmarks = matches!(self.param("allowWatchBookmarks"), Some("true" | "1"))
            && !matches!(target, table::Target::Table(_));
        let timeout = match self.param("timeoutSeconds") {
            None | Some("") => MAX_WATCH,
            Some(s) => s
                .parse::<u64>()
                .map(|s| Duration::from_secs(s).min(MAX_WATCH))
                .map_err(|_| KubeError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
        };
        let namespace = self.target.namespace.clone();
        let registry = self.registry().clone();
        let rv = self.param("resourceVersion").unwrap_or("");
        let (initial, from) = match rv {
            "" | "0" => {
                let (items, rev) = registry
                    .list_in::<K>(namespace.as_deref())
                    .await
                    .map_err(|e| self.target.registry_error(e))?;
                (items, rev + 1)
            }
            n => {
                let n: i64 = n
                    .parse()
                    .ok()
                    .filter(|v| (0..i64::MAX).contains(v))
                    .ok_or_else(|| {
                        KubeError::bad_request(format!("invalid resourceVersion {n:?}"))
                    })?;
                if let Some(compacted) = registry
                    .history_from::<K>(namespace.as_deref(), n)
                    .await
                    .map_err(|e| self.target.registry_error(e))?
                {
                    let status =
                        KubeError::expired(format!("too old resource version: {n} ({compacted})"));
                    let line = json!({"type": "ERROR", "object": status.to_status()});
                    return Ok(stream_response(stream::iter(vec![ndjson(&line)])));
                }
                (Vec::new(), n + 1)
            }
        };
        let mut tables = match target {
            table::Target::Table(v) => Some(table::WatchTables::new(table::TableOptions::new(
                v, include,
            ))),
            _ => None,
        };
        let partial = match target {
            table::Target::PartialObjectMetadata(v) => Some(v),
            _ => None,
        };
        let mut render = move |kind: &str, obj: &K| -> Option<Bytes> {
            let object = match (&mut tables, partial) {
                (Some(t), _) => to_value(&t.event_table(obj, now()).ok()?).ok()?,
                (None, Some(v)) => table::partial_object_metadata(obj, v).ok()?,
                (None, None) => to_value(obj).ok()?,
            };
            Some(ndjson(&json!({"type": kind, "object": object})))
        };
        // Without selectors every event is kept, without turning it into JSON an extra time.
        let select_all = labels.is_empty() && fields.is_empty();
        let keep = move |obj: &K| -> bool {
            select_all
                || to_value(obj)
                    .is_ok_and(|v| labels.matches_object(&v) && fields.matches_object(&v))
        };
        let added: Vec<(&'static str, K)> = initial
            .into_iter()
            .filter(|o| keep(o))
            .map(|o| ("ADDED", o))
            .collect();
        let changes = registry.watch_with_previous_in::<K>(namespace.as_deref(), from);
        enum Item<K> {
            Object(&'static str, K),
            /// A modification, with the object before it.
            Modified(K, Option<K>),
            Bookmark(i64),
            End(Value),
        }
        let events = stream::iter(added.into_iter().map(|(k, o)| Item::Object(k, o))).chain(
            changes.map(|ev| match ev {
                Ok((WatchEvent::Added(o), _)) => Item::Object("ADDED", o),
                Ok((WatchEvent::Modified(o), before)) => Item::Modified(o, before),
                Ok((WatchEvent::Deleted(o), _)) => Item::Object("DELETED", o),
                Ok((WatchEvent::Bookmark(r), _)) => Item::Bookmark(r),
                Err(RegistryError::Compacted(r)) => Item::End(
                    KubeError::expired(format!("too old resource version: compacted at {r}"))
                        .to_status(),
                ),
                Err(e) => Item::End(KubeError::unavailable(e.to_string()).to_status()),
            }),
        );
        // Each line with whether it ends the stream (an ERROR event does).
        let lines = events.filter_map(move |item| {
            let line = match item {
                Item::Object(kind, o) if keep(&o) => render(kind, &o).map(|l| (false, l)),
                Item::Object(..) => None,
                // Under a selector, an object that starts matching is ADDED and one that
                // stops matching is DELETED, as Kubernetes' watch cache reports them.
                Item::Modified(o, before) => {
                    let now = keep(&o);
                    let was = before.as_ref().map_or(now, &keep);
                    let kind = match (was, now) {
                        (true, true) => Some("MODIFIED"),
                        (false, true) => Some("ADDED"),
                        (true, false) => Some("DELETED"),
                        (false, false) => None,
                    };
                    kind.and_then(|k| render(k, &o)).map(|l| (false, l))
                }
                Item::Bookmark(r) if bookmarks => Some((
                    false,
                    ndjson(&json!({
                        "type": "BOOKMARK",
                        "object": {"kind": <K as k8s_openapi::Resource>::KIND, "apiVersion": K::API_VERSION,
                                   "metadata": {"resourceVersion": r.to_string()}},
                    })),
                )),
                Item::Bookmark(_) => None,
                Item::End(status) => Some((true, ndjson(&json!({"type": "ERROR", "object": status})))),
            };
            futures::future::ready(line)
        });
        let mut ended = false;
        let lines = lines
            .take_while(move |(last, _)| {
                let go_on = !ended;
                ended = *last;
                futures::future::ready(go_on)
            })
            .map(|(_, line)| line);
        let lines = lines.take_until(tokio::time::sleep(timeout));
        Ok(stream_response(lines))
    }

    /// The body as `K`, with the fields `K` does not have (for `fieldValidation`).
    fn decode_body<K: Kind>(&self, body: &[u8]) -> Result<(K, Vec<String>), KubeError> {
        let content_type = self
            .header(header::CONTENT_TYPE)
            .unwrap_or("application/json");
        let media = content_type.split(';').next().unwrap_or("").trim();
        let raw: Value = if media == protobuf::CONTENT_TYPE {
            protobuf::to_json(body).map_err(|e| KubeError::new(415, "UnsupportedMediaType", e))?
        } else if media == "application/json" || media == "*/*" || media.is_empty() {
            serde_json::from_slice(body).map_err(|e| {
                KubeError::bad_request(format!("the body of the request is not valid JSON: {e}"))
            })?
        } else {
            return Err(KubeError::unsupported_media_type(content_type));
        };
        decode_value::<K>(raw)
    }

    /// Applies `fieldValidation` (Strict, Warn — the default — or Ignore) to unknown fields.
    fn field_validation(&self, unknown: &[String]) -> Result<Option<HeaderValue>, KubeError> {
        if unknown.is_empty() {
            return Ok(None);
        }
        let listed: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match self.param("fieldValidation").unwrap_or("Warn") {
            "Strict" => Err(KubeError::bad_request(format!(
                "strict decoding error: {}",
                listed.join(", ")
            ))),
            "Ignore" => Ok(None),
            "Warn" | "" => Ok(HeaderValue::from_str(&format!(
                "299 - \"{}\"",
                listed.join(", ").replace('"', "'")
            ))
            .ok()),
            other => Err(KubeError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
            ))),
        }
    }

    fn dry_run(&self) -> Result<bool, KubeError> {
        match self.param("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(KubeError::bad_request(format!(
                "dryRun must be All, not {other:?}"
            ))),
        }
    }

    /// Checks that the namespace exists and takes new objects.
    async fn check_namespace(&self) -> Result<(), KubeError> {
        let Some(ns) = &self.target.namespace else {
            return Ok(());
        };
        match self.registry().get::<KubeNamespace>(ns).await {
            Ok(n) if n.metadata.deletion_timestamp.is_some() => Err(KubeError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ))),
            Ok(_) => Ok(()),
            Err(RegistryError::NotFound { .. }) => Err(KubeError::not_found("", "namespaces", ns)),
            Err(e) => Err(KubeError::from_registry(e, "", "namespaces", ns)),
        }
    }

    /// The object's namespace against the URL's; sets it when missing.
    fn place<K: Kind>(&self, obj: &mut K) -> Result<(), KubeError> {
        let meta = obj.metadata_mut();
        if K::NAMESPACED {
            let url = self.target.namespace.clone();
            match (&meta.namespace, &url) {
                (Some(body), Some(url)) if body != url => {
                    return Err(KubeError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => meta.namespace = url,
            }
        } else {
            meta.namespace = None;
        }
        Ok(())
    }

    fn invalid<K: Kind>(&self, name: &str, causes: Vec<status::Cause>) -> KubeError {
        KubeError::invalid(
            self.target.spec.group,
            self.target.spec.plural,
            <K as k8s_openapi::Resource>::KIND,
            name,
            causes,
        )
    }

    async fn create<K: Kind>(&self) -> Result<Response, KubeError> {
        if K::NAMESPACED && self.target.namespace.is_none() {
            return Err(KubeError::method_not_allowed(format!(
                "create {} in a namespace: POST to .../namespaces/NAMESPACE/{}",
                self.target.spec.plural, self.target.spec.plural
            )));
        }
        let (mut obj, unknown) = self.decode_body::<K>(&self.body)?;
        let warning = self.field_validation(&unknown)?;
        self.place(&mut obj)?;
        let meta = obj.metadata_mut();
        if meta.resource_version.is_some() {
            return Err(KubeError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if meta.name.as_deref().unwrap_or_default().is_empty() {
            if let Some(prefix) = meta.generate_name.clone().filter(|p| !p.is_empty()) {
                meta.name = Some(format!("{prefix}{}", crate::api::random_hex(5)));
            }
        }
        let name = meta.name.clone().unwrap_or_default();
        obj.apply_defaults();
        let causes = obj.validate();
        if !causes.is_empty() {
            return Err(self.invalid::<K>(&name, causes));
        }
        self.check_namespace().await?;
        obj.prepare_create();
        let created = if self.dry_run()? {
            obj
        } else {
            self.create_allocating(obj, &name).await?
        };
        tracing::info!(kind = <K as k8s_openapi::Resource>::KIND, key = %created.key(), "created through the Kubernetes API");
        let mut resp = json_response(StatusCode::CREATED, &to_value(&created)?);
        if let Some(w) = warning {
            resp.headers_mut().insert("warning", w);
        }
        Ok(resp)
    }

    /// The claims held below the kind's allocation prefix (none if it allocates nothing).
    async fn held_claims<K: Kind>(&self) -> Result<std::collections::HashSet<String>, KubeError> {
        match K::ALLOCATES {
            None => Ok(Default::default()),
            Some(prefix) => Ok(self
                .registry()
                .claims_held(prefix)
                .await
                .map_err(|e| self.target.registry_error(e))?
                .into_iter()
                .collect()),
        }
    }

    /// Stores a new object, first giving it what the server picks (a Service's node ports):
    /// a pick another create took meanwhile is picked again; a value the user asked for that
    /// another object holds is a 422.
    async fn create_allocating<K: Kind>(&self, obj: K, name: &str) -> Result<K, KubeError> {
        for _ in 0..ALLOCATION_TRIES {
            let mut attempt = obj.clone();
            let picked = attempt
                .allocate(&self.held_claims::<K>().await?)
                .map_err(|c| self.invalid::<K>(name, c))?;
            let causes = attempt.validate();
            if !causes.is_empty() {
                return Err(self.invalid::<K>(name, causes));
            }
            match self.registry().create(&attempt).await {
                Err(RegistryError::Claimed { claim }) if picked.contains(&claim) => continue,
                Err(RegistryError::Claimed { claim }) => {
                    return Err(self.invalid::<K>(name, attempt.claim_taken(&claim)))
                }
                other => {
                    return other.map_err(|e| {
                        KubeError::from_registry(
                            e,
                            self.target.spec.group,
                            self.target.spec.plural,
                            name,
                        )
                    })
                }
            }
        }
        Err(KubeError::unavailable(
            "could not allocate: every pick was taken by a concurrent write",
        ))
    }

    /// [`Registry::update`], first giving the object what the server picks, as
    /// [`Self::create_allocating`] does. Err: the 422 of a taken value the user asked for.
    async fn update_allocating<K: Kind>(
        &self,
        next: &K,
    ) -> Result<Result<K, RegistryError>, KubeError> {
        for _ in 0..ALLOCATION_TRIES {
            let mut attempt = next.clone();
            let picked = attempt
                .allocate(&self.held_claims::<K>().await?)
                .map_err(|c| self.invalid::<K>(self.target.name(), c))?;
            match self.registry().update(&attempt).await {
                Err(RegistryError::Claimed { claim }) if picked.contains(&claim) => continue,
                Err(RegistryError::Claimed { claim }) => {
                    return Err(self.invalid::<K>(self.target.name(), attempt.claim_taken(&claim)))
                }
                other => return Ok(other),
            }
        }
        Err(KubeError::unavailable(
            "could not allocate: every pick was taken by a concurrent write",
        ))
    }

    /// PUT: the body replaces the object (or only its status, on `/status`).
    async fn replace<K: Kind>(&self, status_only: bool) -> Result<Response, KubeError> {
        let (mut obj, unknown) = self.decode_body::<K>(&self.body)?;
        let warning = self.field_validation(&unknown)?;
        self.place(&mut obj)?;
        let body_name = obj.metadata().name.clone().unwrap_or_default();
        if body_name != self.target.name() {
            return Err(KubeError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({})",
                self.target.name()
            )));
        }
        let precondition = obj.resource_version();
        let resp = self.write(obj, precondition, status_only).await?;
        Ok(with_warning(resp, warning))
    }

    /// Writes `obj` over the current object: a stale `precondition` (non-zero) is a
    /// Conflict; without one, a concurrent write is retried.
    async fn write<K: Kind>(
        &self,
        obj: K,
        precondition: i64,
        status_only: bool,
    ) -> Result<Response, KubeError> {
        let dry_run = self.dry_run()?;
        for _ in 0..20 {
            let current: K = self.get::<K>().await?;
            if precondition != 0 && precondition != current.resource_version() {
                return Err(self.target.conflict());
            }
            let next = self.next_version(&current, obj.clone(), status_only)?;
            if next == current || dry_run {
                return Ok(json_response(StatusCode::OK, &to_value(&next)?));
            }
            match self.update_allocating(&next).await? {
                Ok(written) => return Ok(json_response(StatusCode::OK, &to_value(&written)?)),
                Err(RegistryError::Conflict { .. }) if precondition == 0 => continue,
                Err(e) => return Err(self.target.registry_error(e)),
            }
        }
        Err(self.target.conflict())
    }

    /// What `request` makes of `current`, validated.
    fn next_version<K: Kind>(
        &self,
        current: &K,
        request: K,
        status_only: bool,
    ) -> Result<K, KubeError> {
        let mut next = if status_only {
            let mut n = current.clone();
            n.take_status_from(request);
            n
        } else {
            let mut n = request;
            n.apply_defaults();
            n.prepare_update(current)
                .map_err(|c| self.invalid::<K>(self.target.name(), c))?;
            let causes = n.validate();
            if !causes.is_empty() {
                return Err(self.invalid::<K>(self.target.name(), causes));
            }
            n
        };
        next.set_resource_version(current.resource_version());
        Ok(next)
    }

    async fn patch<K: Kind>(&self, status_only: bool) -> Result<Response, KubeError> {
        let content_type = self.header(header::CONTENT_TYPE).unwrap_or("").to_string();
        let dry_run = self.dry_run()?;
        for _ in 0..20 {
            let current: K = self.get::<K>().await?;
            let before = to_value(&current)?;
            let patched = patch::apply_patch(
                <K as k8s_openapi::Resource>::KIND,
                &content_type,
                &before,
                &self.body,
            )
            .map_err(patch_error)?;
            // Name, namespace, uid and a resourceVersion precondition the patch carried.
            patch::check_patched_identity(&before, &patched).map_err(|e| match e {
                patch::PatchError::Conflict(_) => self.target.conflict(),
                other => patch_error(other),
            })?;
            let (mut obj, unknown) = decode_value::<K>(patched)?;
            let warning = self.field_validation(&unknown)?;
            self.place(&mut obj)?;
            let next = self.next_version(&current, obj, status_only)?;
            if next == current || dry_run {
                return Ok(with_warning(
                    json_response(StatusCode::OK, &to_value(&next)?),
                    warning,
                ));
            }
            match self.update_allocating(&next).await? {
                Ok(written) => {
                    return Ok(with_warning(
                        json_response(StatusCode::OK, &to_value(&written)?),
                        warning,
                    ))
                }
                Err(RegistryError::Conflict { .. }) => continue,
                Err(e) => return Err(self.target.registry_error(e)),
            }
        }
        Err(self.target.conflict())
    }

    /// The `propagationPolicy` of a delete, from the body's DeleteOptions or the query.
    fn delete_options(&self) -> Result<(String, Option<i64>), KubeError> {
        let mut policy = self.param("propagationPolicy").map(str::to_string);
        let mut precondition = None;
        if !self.body.is_empty() {
            let opts: k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions =
                serde_json::from_slice(&self.body).map_err(|e| {
                    KubeError::bad_request(format!("the body is not DeleteOptions: {e}"))
                })?;
            if let Some(p) = opts.propagation_policy {
                policy = Some(p);
            }
            if opts.orphan_dependents == Some(true) {
                policy = Some("Orphan".into());
            }
            if let Some(rv) = opts.preconditions.and_then(|p| p.resource_version) {
                precondition = Some(rv.parse().map_err(|_| {
                    KubeError::bad_request(format!("invalid preconditions.resourceVersion {rv:?}"))
                })?);
            }
        }
        let policy = policy.unwrap_or_else(|| "Background".into());
        if !matches!(policy.as_str(), "Background" | "Foreground" | "Orphan") {
            return Err(KubeError::bad_request(format!(
                "propagationPolicy must be Background, Foreground or Orphan, not {policy:?}"
            )));
        }
        Ok((policy, precondition))
    }

    async fn delete<K: Kind>(&self) -> Result<Response, KubeError> {
        let (policy, precondition) = self.delete_options()?;
        let current: K = self.get::<K>().await?;
        if let Some(rv) = precondition {
            if rv != current.resource_version() {
                return Err(self.target.conflict());
            }
        }
        if self.dry_run()? {
            return Ok(json_response(StatusCode::OK, &to_value(&current)?));
        }
        let key = self.target.key();
        match <K as k8s_openapi::Resource>::KIND {
            "Namespace" if self.target.name() == DEFAULT_NAMESPACE => {
                return Err(KubeError::forbidden(
                    "namespaces \"default\" is forbidden: this namespace may not be deleted",
                ))
            }
            "Namespace" => {
                // The namespace controller deletes what is in it, then the namespace.
                let ns = self.mark_deleting::<KubeNamespace>(&key, None).await?;
                tracing::info!(namespace = %key, "marked for deletion");
                return Ok(json_response(StatusCode::OK, &to_value(&ns)?));
            }
            // A workload's controller settles its dependents (orphans or deletes them), then
            // deletes it, as Kubernetes' garbage collector does; kubectl waits for that.
            "ReplicaSet" | "Deployment" if policy != "Background" => {
                let finalizer = if policy == "Orphan" {
                    "orphan"
                } else {
                    "foregroundDeletion"
                };
                let marked = self.mark_deleting::<K>(&key, Some(finalizer)).await?;
                tracing::info!(key = %key, policy = %policy, "marked for deletion");
                return Ok(json_response(StatusCode::OK, &to_value(&marked)?));
            }
            _ => {}
        }
        let gone: K = self
            .registry()
            .delete::<K>(&key, 0)
            .await
            .map_err(|e| self.target.registry_error(e))?;
        tracing::info!(kind = <K as k8s_openapi::Resource>::KIND, key = %key, policy = %policy, "deleted through the Kubernetes API");
        Ok(json_response(StatusCode::OK, &to_value(&gone)?))
    }

    /// Sets `deletionTimestamp` (and a finalizer naming the policy) so the controllers leave
    /// the object alone while its dependents are settled.
    async fn mark_deleting<K: Kind>(
        &self,
        key: &str,
        finalizer: Option<&str>,
    ) -> Result<K, KubeError> {
        self.registry()
            .modify::<K, _>(key, |o| {
                let m = o.metadata_mut();
                if m.deletion_timestamp.is_none() {
                    m.deletion_timestamp = Some(to_time(Utc::now()));
                }
                o.mark_terminating();
                let m = o.metadata_mut();
                if let Some(f) = finalizer {
                    let list = m.finalizers.get_or_insert_with(Vec::new);
                    if !list.iter().any(|x| x == f) {
                        list.push(f.to_string());
                    }
                }
                true
            })
            .await
            .map_err(|e| self.target.registry_error(e))
    }

    /// `DELETE` on a collection: every object the selectors match.
    async fn delete_collection<K: Kind>(&self) -> Result<Response, KubeError> {
        let (items, revision) = self.matching::<K>().await?;
        let mut gone = Vec::new();
        for (item, v) in items {
            if !self.dry_run()? {
                match self.registry().delete::<K>(&item.key(), 0).await {
                    Ok(_) | Err(RegistryError::NotFound { .. }) => {}
                    Err(e) => return Err(self.target.registry_error(e)),
                }
            }
            gone.push(v);
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": K::LIST_KIND,
                "apiVersion": K::API_VERSION,
                "metadata": {"resourceVersion": revision.to_string()},
                "items": gone,
            }),
        ))
    }

    /// `replicasets/NAME/scale`, `deployments/NAME/scale`.
    async fn scale(&self) -> Result<Response, KubeError> {
        match self.target.spec.plural {
            "replicasets" => self.scale_of::<KubeReplicaSet>().await,
            "deployments" => self.scale_of::<KubeDeployment>().await,
            _ => Err(not_found_path()),
        }
    }

    /// An autoscaling/v1 Scale over a workload's replicas.
    async fn scale_of<K: Kind + Scalable>(&self) -> Result<Response, KubeError> {
        let current: K = self.get::<K>().await?;
        if self.method == Method::GET {
            return Ok(json_response(StatusCode::OK, &scale_body(&current)));
        }
        let requested: Value = if self.method == Method::PATCH {
            let content_type = self.header(header::CONTENT_TYPE).unwrap_or("");
            patch::apply_patch("Scale", content_type, &scale_body(&current), &self.body)
                .map_err(patch_error)?
        } else if self.method == Method::PUT {
            serde_json::from_slice(&self.body).map_err(|e| {
                KubeError::bad_request(format!("the body of the request is not valid JSON: {e}"))
            })?
        } else {
            return Err(KubeError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({})",
                self.method
            )));
        };
        let replicas = match requested.pointer("/spec/replicas") {
            Some(Value::Number(n)) => n.as_i64(),
            None | Some(Value::Null) => Some(0),
            _ => None,
        };
        let replicas = replicas
            .filter(|r| (0..=i64::from(i32::MAX)).contains(r))
            .ok_or_else(|| {
                KubeError::invalid(
                    "autoscaling",
                    "scale",
                    "Scale",
                    self.target.name(),
                    vec![status::Cause {
                        field: "spec.replicas".into(),
                        message: format!(
                            "Invalid value: {}: must be greater than or equal to 0",
                            requested
                                .pointer("/spec/replicas")
                                .cloned()
                                .unwrap_or(Value::Null)
                        ),
                        reason: "FieldValueInvalid",
                    }],
                )
            })?;
        // A resourceVersion the client sent is a precondition; the one a patch carried over
        // from the current object is not (the write below retries over concurrent changes).
        let sent: Value = if self.method == Method::PATCH {
            serde_json::from_slice(&self.body).unwrap_or(Value::Null)
        } else {
            requested.clone()
        };
        let precondition: i64 = sent
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut next = current.clone();
        next.set_replicas(replicas as i32);
        let resp = self.write(next, precondition, false).await?;
        drop(resp);
        let now: K = self.get::<K>().await?;
        Ok(json_response(StatusCode::OK, &scale_body(&now)))
    }
}

impl KubeError {
    fn kind_invalid(message: String) -> Self {
        KubeError::new(422, "Invalid", message)
    }
}

fn patch_error(e: patch::PatchError) -> KubeError {
    let code = e.status_code();
    match code {
        415 => KubeError::new(415, "UnsupportedMediaType", e.to_string()),
        422 => KubeError::kind_invalid(e.to_string()),
        409 => KubeError::new(409, "Conflict", e.to_string()),
        _ => KubeError::bad_request(e.to_string()),
    }
}

fn with_warning(mut resp: Response, warning: Option<HeaderValue>) -> Response {
    if let Some(w) = warning {
        resp.headers_mut().insert("warning", w);
    }
    resp
}

/// A kind with a `scale` subresource.
trait Scalable {
    /// `spec.replicas`, 1 when unset (Kubernetes' default).
    fn replicas(&self) -> i32;
    fn set_replicas(&mut self, replicas: i32);
    fn status_replicas(&self) -> i32;
    fn match_labels(&self) -> Option<&std::collections::BTreeMap<String, String>>;
}

impl Scalable for KubeReplicaSet {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn set_replicas(&mut self, replicas: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    }
    fn status_replicas(&self) -> i32 {
        self.status.as_ref().map_or(0, |s| s.replicas)
    }
    fn match_labels(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.spec.as_ref()?.selector.match_labels.as_ref()
    }
}

impl Scalable for KubeDeployment {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn set_replicas(&mut self, replicas: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    }
    fn status_replicas(&self) -> i32 {
        self.status.as_ref().and_then(|s| s.replicas).unwrap_or(0)
    }
    fn match_labels(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.spec.as_ref()?.selector.match_labels.as_ref()
    }
}

/// The Scale of a workload.
fn scale_body<K: Kind + Scalable>(obj: &K) -> Value {
    let m = obj.metadata();
    let selector = obj
        .match_labels()
        .map(|l| {
            l.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.name, "namespace": m.namespace, "uid": m.uid,
            "resourceVersion": m.resource_version, "creationTimestamp": m.creation_timestamp,
        },
        "spec": {"replicas": obj.replicas()},
        "status": {
            "replicas": obj.status_replicas(),
            "selector": selector,
        },
    })
}

/// Decodes `raw` as `K`, and lists the fields of `raw` that `K` does not have.
fn decode_value<K: Kind>(raw: Value) -> Result<(K, Vec<String>), KubeError> {
    if !raw.is_object() {
        return Err(KubeError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    let obj: K = serde_path_to_error::deserialize(&raw).map_err(|e| {
        KubeError::bad_request(format!(
            "the object could not be decoded as {} {}: {} (at {})",
            K::API_VERSION,
            <K as k8s_openapi::Resource>::KIND,
            e.inner(),
            e.path()
        ))
    })?;
    let known = to_value(&obj)?;
    let mut unknown = Vec::new();
    unknown_fields(&raw, &known, "", &mut unknown);
    Ok((obj, unknown))
}

/// Paths in `given` that `known` (the typed object, serialized again) lacks.
fn unknown_fields(given: &Value, known: &Value, at: &str, out: &mut Vec<String>) {
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, value) in g {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match k.get(key) {
                    Some(kv) => unknown_fields(value, kv, &path, out),
                    None if value.is_null() => {}
                    // Empty lists and maps may be dropped when serialized again.
                    None if value.as_array().is_some_and(Vec::is_empty)
                        || value.as_object().is_some_and(|m| m.is_empty()) => {}
                    None => out.push(path),
                }
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (i, (gv, kv)) in g.iter().zip(k).enumerate() {
                unknown_fields(gv, kv, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn ndjson(v: &Value) -> Bytes {
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

fn stream_response(lines: impl futures::Stream<Item = Bytes> + Send + 'static) -> Response {
    let body = Body::from_stream(lines.map(Ok::<_, std::convert::Infallible>));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        body,
    )
        .into_response()
}

fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_resources_as_kubernetes_lays_them_out() {
        let t = parse_target("/api/v1/namespaces/default/pods/web-1").unwrap();
        assert_eq!(
            (t.spec.plural, t.key()),
            ("pods", "default/web-1".to_string())
        );
        let t = parse_target("/api/v1/namespaces/team-a").unwrap();
        assert_eq!((t.spec.plural, t.name()), ("namespaces", "team-a"));
        let t = parse_target("/apis/apps/v1/namespaces/default/replicasets/web/scale").unwrap();
        assert_eq!(t.subresource.as_deref(), Some("scale"));
        let t = parse_target("/api/v1/pods").unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
        assert!(
            parse_target("/api/v1/pods/web").is_err(),
            "a pod needs its namespace"
        );
        assert!(parse_target("/api/v1/namespaces/default/nodes/a").is_err());
        assert!(parse_target("/api/v1/namespaces/default/pods/a/exec/x").is_err());
        assert!(parse_target("/apis/apps/v1/namespaces/default/replicasets/web/bogus").is_err());
        assert!(parse_target("/api/v2/pods").is_err());
    }

    #[test]
    fn unknown_fields_are_found_at_their_paths() {
        let raw = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}], "nope": true}});
        let (_, unknown) = decode_value::<KubePod>(raw).unwrap();
        assert_eq!(unknown, vec!["spec.containers[0].bogus", "spec.nope"]);
    }
}
