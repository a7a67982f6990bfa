//! The API server: Miniku's front door for people and curl. Stateless; every object lives in
//! the store and is reached through the [`Registry`].
//!
//! - `POST /replicasets`, `GET /replicasets`, `GET|PUT|DELETE /replicasets/{name}`
//! - `GET /pods` (filters `node=`, `selector=k=v,k2=v2`), `GET|DELETE /pods/{name}`
//! - `GET /nodes`, `GET /nodes/{name}`
//! - `GET /events`: the `default` namespace's v1 Events (what happened to each object)
//! - `?watch=true&resourceVersion=RV` on each list: Server-Sent Events, see [`watch`].
//! - `GET /health`
//!
//! Input is validated here (shapes in [`input`], rules in [`crate::api::validation`]);
//! every error is one JSON body made in [`error`]. This module does not decide what a
//! controller does.

pub mod error;
pub mod input;
pub mod kube;
pub mod watch;

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::api::validation::{validate_name, validate_replicaset, MAX_NAME_LEN};
use crate::api::{Node, Pod, ReplicaSet, DEFAULT_NAMESPACE};
use crate::registry::{Object, Registry, RegistryError};
use error::ApiError;
use input::{parse_body, ReplicaSetInput};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
}

/// The API: the seed's routes and the Kubernetes API ([`kube`]); with a `token`, every route
/// but `/health` needs `Authorization: Bearer <token>`. `kubelet_token` is what the API
/// server sends the kubelets (pods' logs).
pub fn router(
    registry: Registry,
    token: Option<miniku_store::auth::Token>,
    kubelet_token: Option<miniku_store::auth::Token>,
) -> Router {
    let kube_api =
        kube::router(registry.clone(), kubelet_token).layer(axum::middleware::from_fn_with_state(
            miniku_store::http::BodyLimit {
                max: MAX_BODY_BYTES,
                too_large: |max| kube::status::KubeError::too_large(max).into_response(),
            },
            miniku_store::http::buffer_body,
        ));
    seed_router(registry)
        .merge(kube_api)
        .layer(axum::middleware::from_fn_with_state(
            miniku_store::auth::Guard {
                token,
                open_paths: &["/health"],
            },
            miniku_store::auth::require_token,
        ))
}

fn seed_router(registry: Registry) -> Router {
    Router::new()
        .route(
            "/replicasets",
            get(list_all::<ReplicaSet>).post(create_replicaset),
        )
        .route(
            "/replicasets/{name}",
            get(get_one::<ReplicaSet>)
                .put(update_replicaset)
                .delete(delete_one::<ReplicaSet>),
        )
        .route("/pods", get(list_pods))
        .route(
            "/pods/{name}",
            get(get_one::<Pod>).delete(delete_one::<Pod>),
        )
        .route("/nodes", get(list_all::<Node>))
        .route("/nodes/{name}", get(get_one::<Node>))
        // What happened to the `default` namespace's objects, as v1 Events (read-only).
        .route("/events", get(list_all::<crate::api::kube::KubeEvent>))
        .route("/health", get(health))
        .fallback(|| async { ApiError::not_found_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(
            miniku_store::http::BodyLimit {
                max: MAX_BODY_BYTES,
                too_large: |max| ApiError::too_large(max).into_response(),
            },
            miniku_store::http::buffer_body,
        ))
        .with_state(AppState { registry })
}

/// Query parameters of the list endpoints.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub watch: Option<String>,
    #[serde(default, rename = "resourceVersion")]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub selector: Option<String>,
}

impl ListQuery {
    fn watching(&self) -> Result<bool, ApiError> {
        match self.watch.as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(other) => Err(ApiError::invalid(
                "watch",
                format!("`{other}` is not true or false"),
            )),
        }
    }

    fn resource_version(&self) -> Result<i64, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("") => Ok(0),
            // Below i64::MAX: a watch starts at the version after it.
            Some(s) => s
                .parse::<i64>()
                .ok()
                .filter(|v| (0..i64::MAX).contains(v))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "resourceVersion",
                        format!("`{s}` is not a non-negative integer"),
                    )
                }),
        }
    }

    fn selector(&self) -> Result<BTreeMap<String, String>, ApiError> {
        crate::api::validation::parse_selector("selector", self.selector.as_deref().unwrap_or(""))
            .map_err(ApiError::from)
    }
}

async fn health(State(s): State<AppState>) -> Response {
    match s.registry.store_leader().await {
        Ok(Some(leader)) => {
            Json(serde_json::json!({"health": "ok", "store_leader": leader})).into_response()
        }
        Ok(None) => ApiError::unavailable("the store has no leader").into_response(),
        Err(e) => ApiError::unavailable(e.to_string()).into_response(),
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    validate_name("name", name, MAX_NAME_LEN).map_err(ApiError::from)
}

/// The seed's routes show the `default` namespace: the namespace they list.
fn seed_namespace<T: Object>() -> Option<&'static str> {
    T::NAMESPACED.then_some(DEFAULT_NAMESPACE)
}

/// The registry key of object `name` on the seed's routes.
fn seed_key<T: Object>(name: &str) -> String {
    match seed_namespace::<T>() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// `GET /<kind>/{name}`.
async fn get_one<T: Object>(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<T>, ApiError> {
    check_name(&name)?;
    Ok(Json(s.registry.get::<T>(&seed_key::<T>(&name)).await?))
}

fn parse_query<T: serde::de::DeserializeOwned + Default>(
    raw: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    match raw {
        Ok(Query(q)) => Ok(q),
        Err(e) => Err(ApiError::invalid("query", e.body_text())),
    }
}

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// Lists objects of kind `T` that `keep` accepts or, with `watch=true`, streams their
/// changes.
async fn list_or_watch<T: Object>(
    registry: Registry,
    q: &ListQuery,
    headers: &HeaderMap,
    keep: impl Fn(&T) -> bool + Send + Sync + 'static,
) -> Result<Response, ApiError> {
    if q.watching()? {
        // An EventSource that reconnects sends the last id it saw: resume after it.
        let from = match (
            q.resource_version.as_deref(),
            watch::last_event_id(headers)?,
        ) {
            (None | Some(""), Some(id)) => id,
            _ => q.resource_version()?,
        };
        return watch::serve::<T>(registry, seed_namespace::<T>(), from, keep).await;
    }
    let (mut items, _) = registry.list_in::<T>(seed_namespace::<T>()).await?;
    items.retain(|o| keep(o));
    Ok(Json(items).into_response())
}

/// `GET /replicasets` and `GET /nodes`: no filters.
async fn list_all<T: Object>(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: QueryResult<ListQuery>,
) -> Result<Response, ApiError> {
    let q = parse_query(q)?;
    if q.node.is_some() || q.selector.is_some() {
        return Err(ApiError::invalid(
            "query",
            format!("{} take no node or selector filter", T::KIND),
        ));
    }
    list_or_watch::<T>(s.registry, &q, &headers, |_| true).await
}

async fn create_replicaset(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let input: ReplicaSetInput = parse_body(&headers, body).await?;
    if input.resource_version != 0 {
        return Err(ApiError::invalid(
            "resourceVersion",
            "must not be set when creating",
        ));
    }
    let rs = input.into_replicaset(crate::api::random_hex(16))?;
    validate_replicaset(&rs)?;
    let created = s.registry.create(&rs).await?;
    tracing::info!(replicaset = %created.name, desired = created.desired_count, "created");
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Replaces `desiredCount`, `selector` and `template`; the rest is kept. With a
/// `resourceVersion` in the body, a stale one answers 409.
async fn update_replicaset(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ReplicaSet>, ApiError> {
    check_name(&name)?;
    let input: ReplicaSetInput = parse_body(&headers, body).await?;
    if !input.name.is_empty() && input.name != name {
        return Err(ApiError::invalid(
            "name",
            format!(
                "`{}` does not match the URL's `{name}` (renaming is not supported)",
                input.name
            ),
        ));
    }
    let precondition = input.resource_version;
    let key = seed_key::<ReplicaSet>(&name);
    loop {
        let current: ReplicaSet = s.registry.get(&key).await?;
        if precondition != 0 && precondition != current.resource_version {
            return Err(RegistryError::Conflict {
                kind: "replicasets",
                name,
                expected: precondition,
            }
            .into());
        }
        let mut next = input.clone().into_replicaset(current.uid.clone())?;
        next.name = name.clone();
        next.current_count = current.current_count;
        next.ready_count = current.ready_count;
        next.available_count = current.available_count;
        // Not in the seed's JSON: what a Kubernetes client set stays.
        next.min_ready_seconds = current.min_ready_seconds;
        next.resource_version = current.resource_version;
        next.namespace = current.namespace.clone();
        next.generation = current.generation;
        next.observed_generation = current.observed_generation;
        next.stored = current.stored.clone();
        validate_replicaset(&next)?;
        match s.registry.update(&next).await {
            Ok(updated) => return Ok(Json(updated)),
            // Someone else (the controller's status write) got in between: try again unless
            // the user asked for a precise version.
            Err(RegistryError::Conflict { .. }) if precondition == 0 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<i64>,
}

/// `DELETE /replicasets/{name}` (its pods follow: the controller cascades) and
/// `DELETE /pods/{name}`; `?resourceVersion=` makes it conditional.
async fn delete_one<T: Object>(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: QueryResult<DeleteQuery>,
) -> Result<Json<T>, ApiError> {
    check_name(&name)?;
    let q = parse_query(q)?;
    let deleted = s
        .registry
        .delete::<T>(
            &seed_key::<T>(&name),
            q.resource_version.unwrap_or(0).max(0),
        )
        .await?;
    tracing::info!(kind = T::KIND, name = %name, "deleted");
    Ok(Json(deleted))
}

fn pod_filter(q: &ListQuery) -> Result<impl Fn(&Pod) -> bool + Send + Sync + 'static, ApiError> {
    let node = q.node.clone();
    let selector = q.selector()?;
    Ok(move |p: &Pod| node.as_ref().is_none_or(|n| &p.spec.node_name == n) && p.matches(&selector))
}

async fn list_pods(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: QueryResult<ListQuery>,
) -> Result<Response, ApiError> {
    let q = parse_query(q)?;
    let keep = pod_filter(&q)?;
    list_or_watch::<Pod>(s.registry, &q, &headers, keep).await
}
