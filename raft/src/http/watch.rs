//! `GET /v1/watch/{key}`: a watch as Server-Sent Events. One message per revision,
//! `id:` = the revision, `data:` = a [`WatchMessage`] with every event of that revision in
//! range. With `progress_notify=true`, an idle watcher gets a progress message (no events,
//! `progress_notify: true`) every `progress_notify_interval`, meaning "everything up to
//! this revision has been sent". `Last-Event-ID: R` resumes at R+1. A start revision below
//! the compacted history answers 410 before the stream starts; history lost mid-stream ends
//! it with a `canceled` message carrying `compact_revision`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::error::{invalid, HttpError};
use super::{key_from_path, range_end_of, Params};
use crate::api::{self, WatchMessage};
use crate::node::StoreHandle;
use crate::watch::{WatchItem, WatchSubscription};

fn message(rev: i64, msg: &WatchMessage) -> Result<Event, Infallible> {
    let data = serde_json::to_string(msg).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    Ok(Event::default().id(rev.to_string()).data(data))
}

struct Stream {
    sub: WatchSubscription,
    handle: StoreHandle,
    prev_kv: bool,
    progress: Option<Duration>,
}

pub async fn watch(
    State(h): State<StoreHandle>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let params = Params::parse(
        uri.query(),
        &[
            "prefix",
            "range_end",
            "start_revision",
            "prev_kv",
            "progress_notify",
        ],
    )?;
    let key = key_from_path(uri.path(), "/v1/watch/", &h)?;
    let range_end = range_end_of(&key, &params)?;
    let mut start = params.non_negative("start_revision")?;
    if let Some(last) = headers.get("last-event-id") {
        let last: i64 = last
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|v: &i64| *v >= 0)
            .and_then(|v: i64| v.checked_add(1))
            .ok_or_else(|| invalid("Last-Event-ID must be a revision number"))?;
        start = last;
    }
    if start == 0 {
        // "From now" includes every write acknowledged before the watch was asked for, even
        // on a member still applying it (without a leader, the member's own now).
        let _ = h.read_barrier().await;
    }
    let sub = h.hub().subscribe(key, range_end, start)?;
    let state = Stream {
        sub,
        prev_kv: params.bool("prev_kv")?,
        progress: params
            .bool("progress_notify")?
            .then_some(h.config().progress_notify_interval),
        handle: h,
    };
    let stream = futures::stream::unfold(Some(state), |st| async move {
        let mut st = st?;
        loop {
            let item = match st.progress {
                Some(every) => tokio::time::timeout(every, st.sub.next()).await.ok(),
                None => Some(st.sub.next().await),
            };
            match item {
                None => {
                    if let Some(rev) = st.sub.progress() {
                        let msg = WatchMessage {
                            header: st.handle.header(rev),
                            events: Vec::new(),
                            progress_notify: true,
                            canceled: false,
                            compact_revision: None,
                            reason: None,
                        };
                        let ev = message(rev, &msg);
                        return Some((ev, Some(st)));
                    }
                }
                Some(WatchItem::Events(re)) => {
                    // Encoded once per revision (and prev_kv setting) for every watcher
                    // that shares it.
                    let data = re.encoded(st.prev_kv, |events| {
                        let msg = WatchMessage {
                            header: st.handle.header(events.revision),
                            events: events
                                .events
                                .iter()
                                .map(|e| api::Event::from_internal(e.clone(), st.prev_kv))
                                .collect(),
                            progress_notify: false,
                            canceled: false,
                            compact_revision: None,
                            reason: None,
                        };
                        serde_json::to_string(&msg)
                            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
                    });
                    st.handle.metrics().watch_events_sent(1);
                    let ev = Ok(Event::default().id(re.revision.to_string()).data(&*data));
                    return Some((ev, Some(st)));
                }
                Some(WatchItem::Compacted { compact_revision }) => {
                    let msg = WatchMessage {
                        header: st.handle.header(st.handle.mvcc().current_revision()),
                        events: Vec::new(),
                        progress_notify: false,
                        canceled: true,
                        compact_revision: Some(compact_revision),
                        reason: Some(format!(
                            "history before revision {compact_revision} was compacted; read again and watch from a newer revision"
                        )),
                    };
                    return Some((message(compact_revision, &msg), None));
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
