//! Watches as Server-Sent Events, like Kubernetes' watch: each change is one SSE message
//! `event: ADDED|MODIFIED|DELETED|BOOKMARK`, `id: <resourceVersion>`,
//! `data: {"type": ..., "object": ...}`. With `resourceVersion=RV` (or a `Last-Event-ID`
//! header, as an EventSource sends when it reconnects) the stream starts with the changes
//! after RV; without one it first sends every current object as ADDED, each with the list's
//! revision as its id. A BOOKMARK
//! (`object` holds only `resourceVersion`) comes whenever the store reports progress, at
//! least every few seconds. An RV older than the store's history answers 410 before the
//! stream starts; if history runs out mid-stream an `ERROR` event with code 410 ends it.
//! Either way the client lists again.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{stream, StreamExt};
use serde_json::json;

use super::error::ApiError;
use crate::registry::{Object, Registry, RegistryError, WatchEvent};

fn sse(kind: &str, rv: i64, object: serde_json::Value) -> Result<Event, Infallible> {
    let data = json!({"type": kind, "object": object}).to_string();
    Ok(Event::default().event(kind).id(rv.to_string()).data(data))
}

/// The `Last-Event-ID` header (the id of the last event an EventSource saw), if sent.
pub fn last_event_id(headers: &axum::http::HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|n| (0..i64::MAX).contains(n))
        .map(Some)
        .ok_or_else(|| ApiError::invalid("Last-Event-ID", "must be a non-negative integer"))
}

pub async fn serve<T: Object>(
    registry: Registry,
    namespace: Option<&str>,
    resource_version: i64,
    keep: impl Fn(&T) -> bool + Send + Sync + 'static,
) -> Result<Response, ApiError> {
    let (initial, from) = if resource_version == 0 {
        let (items, rev) = registry.list_in::<T>(namespace).await?;
        (items, rev + 1)
    } else {
        // Is history from RV+1 still there?
        if let Some(compacted) = registry
            .history_from::<T>(namespace, resource_version)
            .await?
        {
            return Err(RegistryError::Compacted(compacted).into());
        }
        (Vec::new(), resource_version + 1)
    };
    // The initial objects carry the list's revision as their id (their own versions are
    // out of order): a client that reconnects with it as Last-Event-ID misses nothing.
    let listed_at = from - 1;
    let added = stream::iter(
        initial
            .into_iter()
            .filter(|o| keep(o))
            .map(|o| sse("ADDED", listed_at, json!(o)))
            .collect::<Vec<_>>(),
    );
    // Each item: (ends the stream?, event).
    let changes = registry.watch_in::<T>(namespace, from).filter_map(move |item| {
        let out = match item {
            Ok(WatchEvent::Added(o)) if keep(&o) => Some((false, sse("ADDED", o.resource_version(), json!(o)))),
            Ok(WatchEvent::Modified(o)) if keep(&o) => Some((false, sse("MODIFIED", o.resource_version(), json!(o)))),
            Ok(WatchEvent::Deleted(o)) if keep(&o) => Some((false, sse("DELETED", o.resource_version(), json!(o)))),
            Ok(WatchEvent::Bookmark(r)) => Some((false, sse("BOOKMARK", r, json!({"resourceVersion": r})))),
            Ok(_) => None,
            Err(RegistryError::Compacted(r)) => Some((
                true,
                sse(
                    "ERROR",
                    r,
                    json!({"code": 410, "error": "gone", "message": format!("history before revision {r} was compacted: list again")}),
                ),
            )),
            Err(e) => Some((
                true,
                sse("ERROR", 0, json!({"code": 503, "error": "unavailable", "message": e.to_string()})),
            )),
        };
        futures::future::ready(out)
    });
    // The stream ends right after an ERROR event.
    let mut ended = false;
    let changes = changes
        .take_while(move |(last, _)| {
            let go_on = !ended;
            ended = *last;
            futures::future::ready(go_on)
        })
        .map(|(_, e)| e);
    Ok(Sse::new(added.chain(changes))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
