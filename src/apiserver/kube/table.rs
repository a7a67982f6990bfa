//! Server-side printing: the `meta.k8s.io/v1` `Table` (and `PartialObjectMetadata`) answers
//! that `kubectl get` asks for, built the way Kubernetes' API server builds them.
//!
//! # What this module owns
//!
//! * Reading an `Accept` header ([`negotiate`]): does the client want the object itself, a
//!   `Table`, a `PartialObjectMetadata` or a `PartialObjectMetadataList` (each in
//!   `meta.k8s.io` `v1` or `v1beta1`)?
//! * The `includeObject` query parameter ([`IncludeObject::from_query`]).
//! * Per kind, the columns and the cells of one row ([`TablePrinter`], implemented here for
//!   `Pod`, `ReplicaSet`, `Node` and `Namespace`), with Kubernetes' column names, types,
//!   formats, descriptions and priorities and its rules for every cell (pod STATUS, RESTARTS
//!   "3 (5m ago)", node ROLES, label selectors, and `HumanDuration` ages).
//! * Assembling the `Table` for a list ([`list_table`]), for one object ([`object_table`])
//!   and for the objects of a watch stream ([`WatchTables`]: column definitions only in the
//!   first event's table, as Kubernetes does).
//!
//! # What it must not touch
//!
//! No HTTP, no store, no clocks: the caller passes `now`, the list metadata and the already
//! authorised, already filtered objects, and writes the answer (always as `application/json`)
//! itself. It never changes an object, and it never decides which objects a client may see.
//!
//! # Kubernetes behaviour the caller must know
//!
//! * The server always builds *wide* tables: every column, priority 1 included. `kubectl -o
//!   wide` is client-side; without it kubectl hides the priority-1 columns.
//! * `kubectl get` sends `Accept: application/json;as=Table;v=v1;g=meta.k8s.io,
//!   application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json` and adds
//!   `includeObject=Object` only for `--sort-by`. kubectl accepts only `kind: Table` with
//!   `apiVersion` `meta.k8s.io/v1` or `meta.k8s.io/v1beta1`, and decodes every `row.object`
//!   as an object with its own `kind`/`apiVersion`; it reads namespace (`-A`), labels
//!   (`--show-labels`, `-L`) from that object's `metadata`, so the default
//!   `PartialObjectMetadata` carries the whole `ObjectMeta`.
//! * `includeObject`: `Metadata` (default, also when empty), `Object`, `None` (then
//!   `"object": null`); anything else is 400 BadRequest `unrecognized includeObject value: "x"`.
//! * Watch under `as=Table`: every event's object is a `Table` with exactly one row. Only the
//!   *first* event's table carries `columnDefinitions`; Kubernetes then sets `noHeaders` and
//!   later tables have `"columnDefinitions": null`. kubectl re-uses the columns it last saw
//!   (and prints headers again only when the definitions differ from the last ones it
//!   printed), so the columns of the list answer and of the first watch event must be
//!   identical — they are, both come from [`TablePrinter::columns`]. `ERROR` events carry a
//!   `Status`, which Kubernetes sends untransformed. A `BOOKMARK` object would be printed as
//!   a (nearly empty) row too, and would use up the headers: kubectl does not ask for
//!   bookmarks, so send none to a `Table` watch.
//! * A single-object table (`kubectl get pod NAME`) takes `metadata.resourceVersion` from the
//!   object; a list table takes `resourceVersion`, `continue` and `remainingItemCount` from
//!   the list.
//! * `as=PartialObjectMetadata` on a list, or `as=PartialObjectMetadataList` on a single
//!   object, is 406 NotAcceptable in Kubernetes ([`Target::check_for`]). client-go's metadata
//!   client asks `PartialObjectMetadata` for get and watch, `PartialObjectMetadataList` for
//!   list.
//! * An `Accept` that names nothing servable (only protobuf or YAML here) is 406
//!   NotAcceptable; a missing or empty header means plain JSON.
//! * Pods: `RESTARTS` is a *string* cell (`"0"`, `"3 (5m ago)"`) and its column type is
//!   `string`, as in Kubernetes 1.33; succeeded/failed pods carry a row condition
//!   `{"type":"Completed","status":"True","reason":"Succeeded"|"Failed",...}`.
//!
//! # Adding a kind
//!
//! Implement [`TablePrinter`] for the k8s-openapi type: a `static` column list and a `cells`
//! function returning one JSON value per column, in order (strings as strings, `integer`
//! columns as numbers). Deployment's columns in Kubernetes are NAME, READY ("ready/desired"),
//! UP-TO-DATE, AVAILABLE, AGE, wide CONTAINERS, IMAGES, SELECTOR; Event's are LAST SEEN, TYPE,
//! REASON, OBJECT, SUBOBJECT(1), SOURCE(1), MESSAGE, FIRST SEEN(1), COUNT(1), NAME(1).

use std::cmp::Ordering;
use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ListMeta, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::{json, Value};

/// The group of `Table` and `PartialObjectMetadata`.
pub const META_GROUP: &str = "meta.k8s.io";

/// Errors of this module, each with the HTTP status Kubernetes answers.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The `Accept` header names nothing this server can produce, or asks for a form that
    /// does not fit the request (406 NotAcceptable).
    #[error("{0}")]
    NotAcceptable(String),
    /// A query parameter has a value Kubernetes refuses (400 BadRequest).
    #[error("{0}")]
    BadRequest(String),
    /// An object could not be turned into JSON (500; should not happen for k8s-openapi types).
    #[error("serializing an object for a table: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl TableError {
    /// The HTTP status code Kubernetes answers for this error.
    pub fn status_code(&self) -> u16 {
        match self {
            TableError::NotAcceptable(_) => 406,
            TableError::BadRequest(_) => 400,
            TableError::Serialize(_) => 500,
        }
    }

    /// The `reason` of the Kubernetes `Status` for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            TableError::NotAcceptable(_) => "NotAcceptable",
            TableError::BadRequest(_) => "BadRequest",
            TableError::Serialize(_) => "InternalError",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Accept negotiation
// ---------------------------------------------------------------------------------------

/// The version of `meta.k8s.io` a client asked its Table or metadata in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaVersion {
    V1,
    V1Beta1,
}

impl MetaVersion {
    /// `meta.k8s.io/v1` or `meta.k8s.io/v1beta1`.
    pub fn api_version(self) -> &'static str {
        match self {
            MetaVersion::V1 => "meta.k8s.io/v1",
            MetaVersion::V1Beta1 => "meta.k8s.io/v1beta1",
        }
    }

    fn parse(v: &str) -> Option<MetaVersion> {
        match v {
            "v1" => Some(MetaVersion::V1),
            "v1beta1" => Some(MetaVersion::V1Beta1),
            _ => None,
        }
    }
}

/// What the client wants back, from its `Accept` header. The body is always JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The object (or list) itself.
    Object,
    /// `as=Table`.
    Table(MetaVersion),
    /// `as=PartialObjectMetadata`: a single object's metadata (also each watch event's).
    PartialObjectMetadata(MetaVersion),
    /// `as=PartialObjectMetadataList`: a list's metadata.
    PartialObjectMetadataList(MetaVersion),
}

impl Target {
    /// Kubernetes refuses (406) `PartialObjectMetadata` for a list and
    /// `PartialObjectMetadataList` for a single object. `is_list` is true for list requests;
    /// a watch's events are single objects.
    pub fn check_for(self, is_list: bool) -> Result<(), TableError> {
        match (self, is_list) {
            (Target::PartialObjectMetadata(_), true) => Err(TableError::NotAcceptable(
                "you requested PartialObjectMetadata, but the requested object is a list"
                    .to_string(),
            )),
            (Target::PartialObjectMetadataList(_), false) => Err(TableError::NotAcceptable(
                "you requested PartialObjectMetadataList, but the requested object is not a list"
                    .to_string(),
            )),
            _ => Ok(()),
        }
    }
}

/// One clause of an `Accept` header, already split.
struct AcceptClause<'a> {
    media_type: String,
    params: Vec<(String, &'a str)>,
    q: f64,
}

fn parse_accept(header: &str) -> Vec<AcceptClause<'_>> {
    let mut clauses = Vec::new();
    for raw in header.split(',') {
        let mut parts = raw.split(';');
        let media_type = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if media_type.is_empty() {
            continue;
        }
        let mut params = Vec::new();
        let mut q = 1.0;
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().trim_matches('"');
            if k == "q" {
                q = v.parse::<f64>().unwrap_or(0.0);
            } else {
                params.push((k, v));
            }
        }
        clauses.push(AcceptClause {
            media_type,
            params,
            q,
        });
    }
    // Highest quality first; a stable sort keeps the client's order among equals, which is
    // what kubectl relies on (Table v1, then Table v1beta1, then plain JSON).
    clauses.sort_by(|a, b| b.q.partial_cmp(&a.q).unwrap_or(Ordering::Equal));
    clauses
}

/// Reads an `Accept` header the way Kubernetes' negotiation does, for a server that writes
/// JSON only: the first clause (by `q`, then order) whose media type is `application/json`,
/// `application/*` or `*/*` and whose `as`/`g`/`v` parameters name a form this server
/// produces wins. A clause with `as=Table` needs `g=meta.k8s.io` and `v=v1` or `v1beta1`,
/// else it is skipped. Other parameters (`pretty`, `stream`, ...) are ignored. `None` or an
/// empty header is plain JSON; no usable clause is 406 NotAcceptable.
pub fn negotiate(accept: Option<&str>) -> Result<Target, TableError> {
    let header = accept.map(str::trim).unwrap_or("");
    if header.is_empty() {
        return Ok(Target::Object);
    }
    for clause in parse_accept(header) {
        if clause.q <= 0.0 {
            continue;
        }
        if !matches!(
            clause.media_type.as_str(),
            "application/json" | "application/*" | "*/*"
        ) {
            continue;
        }
        let param = |name: &str| {
            clause
                .params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| *v)
        };
        let (kind, group, version) = (param("as"), param("g"), param("v"));
        if kind.is_none() && group.is_none() && version.is_none() {
            return Ok(Target::Object);
        }
        if group != Some(META_GROUP) {
            continue;
        }
        let Some(version) = version.and_then(MetaVersion::parse) else {
            continue;
        };
        match kind {
            Some("Table") => return Ok(Target::Table(version)),
            Some("PartialObjectMetadata") => return Ok(Target::PartialObjectMetadata(version)),
            Some("PartialObjectMetadataList") => {
                return Ok(Target::PartialObjectMetadataList(version))
            }
            _ => continue,
        }
    }
    Err(TableError::NotAcceptable(
        "only the following media types are accepted: application/json".to_string(),
    ))
}

// ---------------------------------------------------------------------------------------
// Table options
// ---------------------------------------------------------------------------------------

/// What each row's `object` holds (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// `"object": null`.
    None,
    /// A `PartialObjectMetadata` (the default).
    #[default]
    Metadata,
    /// The whole object, with its `kind` and `apiVersion`.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter: absent or empty is `Metadata`.
    pub fn from_query(value: Option<&str>) -> Result<IncludeObject, TableError> {
        match value.unwrap_or("") {
            "" | "Metadata" => Ok(IncludeObject::Metadata),
            "Object" => Ok(IncludeObject::Object),
            "None" => Ok(IncludeObject::None),
            other => Err(TableError::BadRequest(format!(
                "unrecognized includeObject value: {other:?}"
            ))),
        }
    }
}

/// How to build a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableOptions {
    /// The `meta.k8s.io` version of the answer (and of `PartialObjectMetadata` rows).
    pub version: MetaVersion,
    /// What each row's `object` holds.
    pub include_object: IncludeObject,
    /// Leave `columnDefinitions` out (`null`). Kubernetes sets this only inside a watch,
    /// after the first event; [`WatchTables`] does that for you.
    pub no_headers: bool,
}

impl TableOptions {
    /// Options for a request that negotiated `Table` in `version`.
    pub fn new(version: MetaVersion, include_object: IncludeObject) -> TableOptions {
        TableOptions {
            version,
            include_object,
            no_headers: false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The Table shape
// ---------------------------------------------------------------------------------------

/// A column as a printer declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    /// Human name; kubectl upper-cases it for the header.
    pub name: &'static str,
    /// OpenAPI type: `string`, `integer`, `number`, `boolean`.
    pub type_: &'static str,
    /// OpenAPI format; `name` marks the column holding the object's name.
    pub format: &'static str,
    pub description: &'static str,
    /// 0 always shown, 1 only with `-o wide`.
    pub priority: i32,
}

/// A column definition as sent (all five fields always present, as Kubernetes sends them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableColumnDefinition {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i32,
}

impl From<&Column> for TableColumnDefinition {
    fn from(c: &Column) -> Self {
        TableColumnDefinition {
            name: c.name.to_string(),
            type_: c.type_.to_string(),
            format: c.format.to_string(),
            description: c.description.to_string(),
            priority: c.priority,
        }
    }
}

/// A row condition (Kubernetes uses only `Completed`, for finished pods).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableRowCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One row: one cell per column, the row's conditions, and the object (or its metadata, or
/// `null`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TableRow {
    pub cells: Vec<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<TableRowCondition>,
    pub object: Option<Value>,
}

/// A `meta.k8s.io` `Table`. Serialize it to get the wire form.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Table {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub metadata: ListMeta,
    /// `None` serializes as `null`, as Kubernetes sends it for later watch events.
    pub column_definitions: Option<Vec<TableColumnDefinition>>,
    pub rows: Vec<TableRow>,
}

// ---------------------------------------------------------------------------------------
// Printers
// ---------------------------------------------------------------------------------------

/// A kind the server can print as a table.
pub trait TablePrinter: Serialize + k8s_openapi::Metadata<Ty = ObjectMeta> {
    /// The kind's columns, in cell order, wide ones included.
    fn columns() -> &'static [Column];
    /// One JSON value per column, for an object seen at `now`.
    fn cells(&self, now: Timestamp) -> Vec<Value>;
    /// The row's conditions (none by default).
    fn row_conditions(&self) -> Vec<TableRowCondition> {
        Vec::new()
    }
}

/// Builds the row of one object.
pub fn row<T: TablePrinter>(
    item: &T,
    opts: &TableOptions,
    now: Timestamp,
) -> Result<TableRow, TableError> {
    let object = match opts.include_object {
        IncludeObject::None => None,
        IncludeObject::Metadata => Some(partial_object_metadata(item, opts.version)?),
        IncludeObject::Object => Some(serde_json::to_value(item)?),
    };
    Ok(TableRow {
        cells: item.cells(now),
        conditions: item.row_conditions(),
        object,
    })
}

fn column_definitions<T: TablePrinter>(opts: &TableOptions) -> Option<Vec<TableColumnDefinition>> {
    if opts.no_headers {
        None
    } else {
        Some(
            T::columns()
                .iter()
                .map(TableColumnDefinition::from)
                .collect(),
        )
    }
}

/// The table of a list (`kubectl get pods`): one row per item, in order, and the list's
/// `resourceVersion`, `continue` and `remainingItemCount`.
pub fn list_table<T: TablePrinter>(
    items: &[T],
    list_meta: &ListMeta,
    opts: &TableOptions,
    now: Timestamp,
) -> Result<Table, TableError> {
    let rows = items
        .iter()
        .map(|item| row(item, opts, now))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Table {
        kind: "Table",
        api_version: opts.version.api_version(),
        metadata: ListMeta {
            continue_: list_meta.continue_.clone(),
            remaining_item_count: list_meta.remaining_item_count,
            resource_version: list_meta.resource_version.clone(),
            self_link: None,
        },
        column_definitions: column_definitions::<T>(opts),
        rows,
    })
}

/// The table of one object (`kubectl get pod NAME`, and each watch event): one row, and the
/// object's `resourceVersion` as the table's.
pub fn object_table<T: TablePrinter>(
    item: &T,
    opts: &TableOptions,
    now: Timestamp,
) -> Result<Table, TableError> {
    Ok(Table {
        kind: "Table",
        api_version: opts.version.api_version(),
        metadata: ListMeta {
            resource_version: item.metadata().resource_version.clone(),
            ..ListMeta::default()
        },
        column_definitions: column_definitions::<T>(opts),
        rows: vec![row(item, opts, now)?],
    })
}

/// Tables for the events of one watch stream: the first call's table has the column
/// definitions, every later one `null`, as Kubernetes' watch encoder does.
#[derive(Debug)]
pub struct WatchTables {
    opts: TableOptions,
}

impl WatchTables {
    pub fn new(opts: TableOptions) -> WatchTables {
        WatchTables { opts }
    }

    /// The table to send as the event's `object` (ADDED, MODIFIED, DELETED).
    pub fn event_table<T: TablePrinter>(
        &mut self,
        item: &T,
        now: Timestamp,
    ) -> Result<Table, TableError> {
        let table = object_table(item, &self.opts, now)?;
        self.opts.no_headers = true;
        Ok(table)
    }
}

/// `{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{...}}` for an
/// object: its whole `ObjectMeta`.
pub fn partial_object_metadata<T: k8s_openapi::Metadata<Ty = ObjectMeta>>(
    item: &T,
    version: MetaVersion,
) -> Result<Value, TableError> {
    Ok(json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": version.api_version(),
        "metadata": serde_json::to_value(item.metadata())?,
    }))
}

/// A `PartialObjectMetadataList` of a list's items, with the list's metadata.
pub fn partial_object_metadata_list<T: k8s_openapi::Metadata<Ty = ObjectMeta>>(
    items: &[T],
    list_meta: &ListMeta,
    version: MetaVersion,
) -> Result<Value, TableError> {
    let items = items
        .iter()
        .map(|i| partial_object_metadata(i, version))
        .collect::<Result<Vec<_>, _>>()?;
    let meta = ListMeta {
        continue_: list_meta.continue_.clone(),
        remaining_item_count: list_meta.remaining_item_count,
        resource_version: list_meta.resource_version.clone(),
        self_link: None,
    };
    Ok(json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": version.api_version(),
        "metadata": serde_json::to_value(meta)?,
        "items": items,
    }))
}

// ---------------------------------------------------------------------------------------
// Formatting helpers shared by the printers
// ---------------------------------------------------------------------------------------

const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// Kubernetes' `duration.HumanDuration` of a duration in nanoseconds: about two significant
/// figures ("45s", "5m3s", "15m", "3h", "7h20m", "30h", "2d5h", "300d", "3y45d", "9y").
pub fn human_duration(nanos: i64) -> String {
    let seconds = nanos / NANOS_PER_SECOND;
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = nanos / (60 * NANOS_PER_SECOND);
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = nanos / (3600 * NANOS_PER_SECOND);
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let dy = days % 365;
        return if dy == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{dy}d")
        };
    }
    format!("{years}y")
}

/// Nanoseconds from `then` to `now`, saturating like Go's `time.Sub`.
fn nanos_between(now: Timestamp, then: Timestamp) -> i64 {
    let d = now.as_nanosecond() - then.as_nanosecond();
    i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
}

/// The age of a timestamp (`<unknown>` when there is none), as Kubernetes'
/// `translateTimestampSince` renders it.
pub fn age(time: Option<&Time>, now: Timestamp) -> String {
    match time {
        Some(t) => human_duration(nanos_between(now, t.0)),
        None => "<unknown>".to_string(),
    }
}

/// A label selector as Kubernetes' `metav1.FormatLabelSelector` prints it: requirements
/// sorted by key and joined by commas (`app=web,tier in (a,b),!legacy,track`), `<none>` for
/// an empty selector, `<error>` for one that cannot be a selector (an unknown operator, `In`
/// or `NotIn` without values, `Exists`/`DoesNotExist` with values).
pub fn format_label_selector(selector: Option<&LabelSelector>) -> String {
    let Some(selector) = selector else {
        return "<none>".to_string();
    };
    let mut reqs: Vec<(String, String)> = Vec::new();
    for (k, v) in selector.match_labels.iter().flatten() {
        reqs.push((k.clone(), format!("{k}={v}")));
    }
    for e in selector.match_expressions.iter().flatten() {
        let mut values: Vec<&str> = e.values.iter().flatten().map(String::as_str).collect();
        values.sort_unstable();
        let key = &e.key;
        let text = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => return "<error>".to_string(),
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" | "DoesNotExist" if !values.is_empty() => return "<error>".to_string(),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            _ => return "<error>".to_string(),
        };
        reqs.push((key.clone(), text));
    }
    if reqs.is_empty() {
        return "<none>".to_string();
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    reqs.into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(",")
}

/// Container names and images, each comma-joined (the CONTAINERS and IMAGES columns).
pub fn container_cells(containers: &[Container]) -> (String, String) {
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = containers
        .iter()
        .map(|c| c.image.as_deref().unwrap_or(""))
        .collect();
    (names.join(","), images.join(","))
}

fn none_if_empty(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Column descriptions (Kubernetes' API documentation for the fields behind the columns)
// ---------------------------------------------------------------------------------------

const DESC_NAME: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const DESC_AGE: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const DESC_CONTAINERS: &str = "Names of each container in the template.";
const DESC_IMAGES: &str = "Images referenced by each container in the template.";

const fn col(name: &'static str, type_: &'static str, description: &'static str) -> Column {
    Column {
        name,
        type_,
        format: "",
        description,
        priority: 0,
    }
}

const fn wide(name: &'static str, type_: &'static str, description: &'static str) -> Column {
    Column {
        name,
        type_,
        format: "",
        description,
        priority: 1,
    }
}

const NAME_COLUMN: Column = Column {
    name: "Name",
    type_: "string",
    format: "name",
    description: DESC_NAME,
    priority: 0,
};
const AGE_COLUMN: Column = col("Age", "string", DESC_AGE);

mod event;
mod service;

// ---------------------------------------------------------------------------------------
// Pod
// ---------------------------------------------------------------------------------------

static POD_COLUMNS: [Column; 9] = [
    NAME_COLUMN,
    col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
    col("Status", "string", "The aggregate status of the containers in this pod."),
    col("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
    AGE_COLUMN,
    wide("IP", "string", "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
    wide("Node", "string", "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName. Once this field is set, the kubelet for this node becomes responsible for the lifecycle of this pod. This field should not be used to express a desire for the pod to be scheduled on a specific node. https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#nodename"),
    wide("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods. This field does not guarantee that the pod will be scheduled on this node. Scheduler may decide to place the pod elsewhere if other nodes become available sooner. Scheduler may also decide to give the resources on this node to a higher priority pod that is created after preemption. As a result, this field may be different than PodSpec.nodeName when the pod is scheduled."),
    wide("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its containers are ready AND all conditions specified in the readiness gates have status equal to \"True\" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates"),
];

/// The reason Kubernetes' node controller gives pods on an unreachable node.
const NODE_UNREACHABLE_POD_REASON: &str = "NodeLost";

/// The latest `lastState.terminated.finishedAt` seen so far.
fn later_restart(latest: &mut Option<Timestamp>, status: &ContainerStatus) {
    let finished = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.finished_at.as_ref())
        .map(|t| t.0);
    if let Some(f) = finished {
        if latest.is_none_or(|l| l < f) {
            *latest = Some(f);
        }
    }
}

/// The pod's READY, STATUS and RESTARTS cells, by Kubernetes' rules (printPod).
fn pod_summary(pod: &Pod, now: Timestamp) -> (String, String, String) {
    let empty_spec = k8s_openapi::api::core::v1::PodSpec::default();
    let empty_status = k8s_openapi::api::core::v1::PodStatus::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty_spec);
    let status = pod.status.as_ref().unwrap_or(&empty_status);
    let conditions = status.conditions.as_deref().unwrap_or(&[]);
    let condition_true = |type_: &str| {
        conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    };

    let phase = status.phase.clone().unwrap_or_default();
    let mut reason = match status.reason.as_deref() {
        Some(r) if !r.is_empty() => r.to_string(),
        _ => phase.clone(),
    };
    if conditions
        .iter()
        .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("SchedulingGated"))
    {
        reason = "SchedulingGated".to_string();
    }

    let init_containers = spec.init_containers.as_deref().unwrap_or(&[]);
    let is_sidecar = |name: &str| {
        init_containers
            .iter()
            .any(|c| c.name == name && c.restart_policy.as_deref() == Some("Always"))
    };
    let total = spec.containers.len()
        + init_containers
            .iter()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"))
            .count();
    let mut ready = 0usize;
    let mut restarts: i64 = 0;
    let mut sidecar_restarts: i64 = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut sidecar_last_restart: Option<Timestamp> = None;

    let mut initializing = false;
    for (i, c) in status
        .init_container_statuses
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        restarts += i64::from(c.restart_count);
        later_restart(&mut last_restart, c);
        let sidecar = is_sidecar(&c.name);
        if sidecar {
            sidecar_restarts += i64::from(c.restart_count);
            later_restart(&mut sidecar_last_restart, c);
        }
        let state = c.state.as_ref();
        let terminated = state.and_then(|s| s.terminated.as_ref());
        let waiting = state.and_then(|s| s.waiting.as_ref());
        if terminated.is_some_and(|t| t.exit_code == 0) {
            continue;
        }
        if sidecar && c.started == Some(true) {
            if c.ready {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            reason = match t.reason.as_deref() {
                Some(r) if !r.is_empty() => format!("Init:{r}"),
                _ => match t.signal {
                    Some(sig) if sig != 0 => format!("Init:Signal:{sig}"),
                    _ => format!("Init:ExitCode:{}", t.exit_code),
                },
            };
        } else if let Some(r) = waiting
            .and_then(|w| w.reason.as_deref())
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            reason = format!("Init:{r}");
        } else {
            reason = format!("Init:{i}/{}", init_containers.len());
        }
        initializing = true;
        break;
    }

    if !initializing || condition_true("Initialized") {
        restarts = sidecar_restarts;
        last_restart = sidecar_last_restart;
        let mut has_running = false;
        for c in status
            .container_statuses
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .rev()
        {
            restarts += i64::from(c.restart_count);
            later_restart(&mut last_restart, c);
            let state = c.state.as_ref();
            let terminated = state.and_then(|s| s.terminated.as_ref());
            let waiting_reason = state
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                .filter(|r| !r.is_empty());
            if let Some(r) = waiting_reason {
                reason = r.to_string();
            } else if let Some(t) = terminated {
                reason = match t.reason.as_deref() {
                    Some(r) if !r.is_empty() => r.to_string(),
                    _ => match t.signal {
                        Some(sig) if sig != 0 => format!("Signal:{sig}"),
                        _ => format!("ExitCode:{}", t.exit_code),
                    },
                };
            } else if c.ready && state.is_some_and(|s| s.running.is_some()) {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true("Ready") {
                "Running".to_string()
            } else {
                "NotReady".to_string()
            };
        }
    }

    if pod.metadata.deletion_timestamp.is_some() {
        if status.reason.as_deref() == Some(NODE_UNREACHABLE_POD_REASON) {
            reason = "Unknown".to_string();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".to_string();
        }
    }

    let restarts_cell = match last_restart {
        Some(t) if restarts != 0 => {
            format!("{restarts} ({} ago)", human_duration(nanos_between(now, t)))
        }
        _ => restarts.to_string(),
    };
    (format!("{ready}/{total}"), reason, restarts_cell)
}

impl TablePrinter for Pod {
    fn columns() -> &'static [Column] {
        &POD_COLUMNS
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let (ready, status, restarts) = pod_summary(self, now);
        let spec = self.spec.as_ref();
        let pod_status = self.status.as_ref();
        let ip = pod_status
            .and_then(|s| s.pod_ips.as_ref())
            .and_then(|ips| ips.first())
            .map(|ip| ip.ip.as_str())
            .unwrap_or("");
        let node = spec.and_then(|s| s.node_name.as_deref()).unwrap_or("");
        let nominated = pod_status
            .and_then(|s| s.nominated_node_name.as_deref())
            .unwrap_or("");
        let gates = spec
            .and_then(|s| s.readiness_gates.as_deref())
            .unwrap_or(&[]);
        let readiness_gates = if gates.is_empty() {
            "<none>".to_string()
        } else {
            let conditions = pod_status
                .and_then(|s| s.conditions.as_deref())
                .unwrap_or(&[]);
            let true_count = gates
                .iter()
                .filter(|g| {
                    conditions
                        .iter()
                        .find(|c| c.type_ == g.condition_type)
                        .is_some_and(|c| c.status == "True")
                })
                .count();
            format!("{true_count}/{}", gates.len())
        };
        vec![
            json!(self.metadata.name.as_deref().unwrap_or("")),
            json!(ready),
            json!(status),
            json!(restarts),
            json!(age(self.metadata.creation_timestamp.as_ref(), now)),
            json!(none_if_empty(ip)),
            json!(none_if_empty(node)),
            json!(none_if_empty(nominated)),
            json!(readiness_gates),
        ]
    }

    fn row_conditions(&self) -> Vec<TableRowCondition> {
        let (reason, message) = match self.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Succeeded") => ("Succeeded", "The pod has completed successfully."),
            Some("Failed") => ("Failed", "The pod failed."),
            _ => return Vec::new(),
        };
        vec![TableRowCondition {
            type_: "Completed".to_string(),
            status: "True".to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
        }]
    }
}

// ---------------------------------------------------------------------------------------
// ReplicaSet
// ---------------------------------------------------------------------------------------

static REPLICA_SET_COLUMNS: [Column; 8] = [
    NAME_COLUMN,
    col("Desired", "integer", "Replicas is the number of desired pods. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicaset"),
    col("Current", "integer", "Replicas is the most recently observed number of non-terminating pods. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicaset"),
    col("Ready", "integer", "The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition."),
    AGE_COLUMN,
    wide("Containers", "string", DESC_CONTAINERS),
    wide("Images", "string", DESC_IMAGES),
    wide("Selector", "string", "Selector is a label query over pods that should match the replica count. Label keys and values that must match in order to be controlled by this replica set. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors"),
];

impl TablePrinter for ReplicaSet {
    fn columns() -> &'static [Column] {
        &REPLICA_SET_COLUMNS
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.as_ref();
        // Kubernetes defaults an unset spec.replicas to 1 before anything prints it.
        let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
        let current = self.status.as_ref().map_or(0, |s| s.replicas);
        let ready = self
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        let containers = spec
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.spec.as_ref())
            .map(|p| p.containers.as_slice())
            .unwrap_or(&[]);
        let (names, images) = container_cells(containers);
        vec![
            json!(self.metadata.name.as_deref().unwrap_or("")),
            json!(i64::from(desired)),
            json!(i64::from(current)),
            json!(i64::from(ready)),
            json!(age(self.metadata.creation_timestamp.as_ref(), now)),
            json!(names),
            json!(images),
            json!(format_label_selector(spec.map(|s| &s.selector))),
        ]
    }
}

// ---------------------------------------------------------------------------------------
// Deployment
// ---------------------------------------------------------------------------------------

static DEPLOYMENT_COLUMNS: [Column; 8] = [
    NAME_COLUMN,
    col("Ready", "string", "Number of the pod with ready state"),
    col("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
    col("Available", "string", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
    AGE_COLUMN,
    wide("Containers", "string", "Names of each container in the template."),
    wide("Images", "string", "Images referenced by each container in the template."),
    wide("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
];

impl TablePrinter for Deployment {
    fn columns() -> &'static [Column] {
        &DEPLOYMENT_COLUMNS
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.as_ref();
        let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
        let status = self.status.as_ref();
        let count = |f: fn(&k8s_openapi::api::apps::v1::DeploymentStatus) -> Option<i32>| {
            status.and_then(f).unwrap_or(0)
        };
        let ready = count(|s| s.ready_replicas);
        let containers = spec
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers.as_slice())
            .unwrap_or(&[]);
        let (names, images) = container_cells(containers);
        vec![
            json!(self.metadata.name.as_deref().unwrap_or("")),
            json!(format!("{ready}/{desired}")),
            json!(i64::from(count(|s| s.updated_replicas))),
            json!(i64::from(count(|s| s.available_replicas))),
            json!(age(self.metadata.creation_timestamp.as_ref(), now)),
            json!(names),
            json!(images),
            json!(format_label_selector(spec.map(|s| &s.selector))),
        ]
    }
}

// ---------------------------------------------------------------------------------------
// Node
// ---------------------------------------------------------------------------------------

const DESC_NODE_ADDRESSES: &str = "List of addresses reachable to the node. Queried from cloud provider, if available. More info: https://kubernetes.io/docs/reference/node/node-status/#addresses Note: This field is declared as mergeable, but the merge key is not sufficiently unique, which can cause data corruption when it is merged. Callers should instead use a full-replacement patch. See https://pr.k8s.io/79391 for an example. Consumers should assume that addresses can change during the lifetime of a Node. However, there are some exceptions where this may not be possible, such as Pods that inherit a Node's address in its own status or consumers of the downward API (status.hostIP).";

static NODE_COLUMNS: [Column; 10] = [
    NAME_COLUMN,
    col("Status", "string", "The status of the node"),
    col("Roles", "string", "The roles of the node"),
    AGE_COLUMN,
    col("Version", "string", "Kubelet Version reported by the node."),
    wide("Internal-IP", "string", DESC_NODE_ADDRESSES),
    wide("External-IP", "string", DESC_NODE_ADDRESSES),
    wide("OS-Image", "string", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
    wide("Kernel-Version", "string", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
    wide("Container-Runtime", "string", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
];

const NODE_ROLE_PREFIX: &str = "node-role.kubernetes.io/";
const NODE_ROLE_LABEL: &str = "kubernetes.io/role";

/// The node's roles: `node-role.kubernetes.io/<role>` label keys and the value of a
/// `kubernetes.io/role` label, sorted, comma-joined; `<none>` without any.
pub fn node_roles(node: &Node) -> String {
    let mut roles = BTreeSet::new();
    for (k, v) in node.metadata.labels.iter().flatten() {
        if let Some(role) = k.strip_prefix(NODE_ROLE_PREFIX) {
            if !role.is_empty() {
                roles.insert(role.to_string());
            }
        } else if k == NODE_ROLE_LABEL && !v.is_empty() {
            roles.insert(v.clone());
        }
    }
    if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.into_iter().collect::<Vec<_>>().join(",")
    }
}

/// The node's STATUS: `Ready`, `NotReady` (a Ready condition not `True`), `Unknown` (no Ready
/// condition), then `,SchedulingDisabled` when cordoned.
pub fn node_status(node: &Node) -> String {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().rev().find(|c| c.type_ == "Ready"));
    let mut status = match ready {
        Some(c) if c.status == "True" => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_address(node: &Node, type_: &str) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == type_))
        .map(|a| a.address.clone())
        .unwrap_or_else(|| "<none>".to_string())
}

impl TablePrinter for Node {
    fn columns() -> &'static [Column] {
        &NODE_COLUMNS
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let info = self.status.as_ref().and_then(|s| s.node_info.as_ref());
        let unknown_if_empty = |s: Option<&str>| match s {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => "<unknown>".to_string(),
        };
        vec![
            json!(self.metadata.name.as_deref().unwrap_or("")),
            json!(node_status(self)),
            json!(node_roles(self)),
            json!(age(self.metadata.creation_timestamp.as_ref(), now)),
            json!(info.map(|i| i.kubelet_version.as_str()).unwrap_or("")),
            json!(node_address(self, "InternalIP")),
            json!(node_address(self, "ExternalIP")),
            json!(unknown_if_empty(info.map(|i| i.os_image.as_str()))),
            json!(unknown_if_empty(info.map(|i| i.kernel_version.as_str()))),
            json!(unknown_if_empty(
                info.map(|i| i.container_runtime_version.as_str())
            )),
        ]
    }
}

// ---------------------------------------------------------------------------------------
// Namespace
// ---------------------------------------------------------------------------------------

static NAMESPACE_COLUMNS: [Column; 3] = [
    NAME_COLUMN,
    col("Status", "string", "The status of the namespace"),
    AGE_COLUMN,
];

impl TablePrinter for Namespace {
    fn columns() -> &'static [Column] {
        &NAMESPACE_COLUMNS
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let phase = self
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("");
        vec![
            json!(self.metadata.name.as_deref().unwrap_or("")),
            json!(phase),
            json!(age(self.metadata.creation_timestamp.as_ref(), now)),
        ]
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use serde_json::from_value;

    const SEC: i64 = NANOS_PER_SECOND;
    const MIN: i64 = 60 * SEC;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn now() -> Timestamp {
        ts("2025-06-01T12:00:00Z")
    }

    #[test]
    fn human_duration_follows_kubernetes_rules() {
        let cases: &[(i64, &str)] = &[
            (-3 * SEC, "<invalid>"),
            (-2 * SEC, "<invalid>"),
            (-SEC - SEC / 2, "0s"),
            (-SEC / 2, "0s"),
            (0, "0s"),
            (SEC / 2, "0s"),
            (45 * SEC, "45s"),
            (119 * SEC, "119s"),
            (2 * MIN, "2m"),
            (5 * MIN + 3 * SEC, "5m3s"),
            (9 * MIN + 59 * SEC, "9m59s"),
            (10 * MIN + 30 * SEC, "10m"),
            (179 * MIN, "179m"),
            (3 * HOUR, "3h"),
            (3 * HOUR + 5 * MIN + 30 * SEC, "3h5m"),
            (7 * HOUR + 59 * MIN, "7h59m"),
            (8 * HOUR + 30 * MIN, "8h"),
            (47 * HOUR, "47h"),
            (2 * DAY, "2d"),
            (2 * DAY + 5 * HOUR, "2d5h"),
            (7 * DAY + 23 * HOUR, "7d23h"),
            (8 * DAY, "8d"),
            (729 * DAY, "729d"),
            (730 * DAY, "2y"),
            (3 * 365 * DAY, "3y"),
            (3 * 365 * DAY + 45 * DAY, "3y45d"),
            (8 * 365 * DAY + 100 * DAY, "8y"),
            (20 * 365 * DAY, "20y"),
        ];
        for (d, want) in cases {
            assert_eq!(human_duration(*d), *want, "duration {d}ns");
        }
    }

    #[test]
    fn age_of_missing_timestamp_is_unknown() {
        assert_eq!(age(None, now()), "<unknown>");
        let t = Time(ts("2025-06-01T11:54:57Z"));
        assert_eq!(age(Some(&t), now()), "5m3s");
    }

    fn pod(v: Value) -> Pod {
        from_value(v).unwrap()
    }

    fn running_pod() -> Pod {
        pod(json!({
            "metadata": {"name": "web-1", "namespace": "default", "creationTimestamp": "2025-06-01T11:55:00Z",
                          "resourceVersion": "42", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "redis"}]},
            "status": {
                "phase": "Running",
                "podIPs": [{"ip": "10.0.0.7"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {"name": "a", "ready": true, "restartCount": 0, "image": "nginx", "imageID": "",
                     "state": {"running": {"startedAt": "2025-06-01T11:55:02Z"}}},
                    {"name": "b", "ready": true, "restartCount": 3, "image": "redis", "imageID": "",
                     "state": {"running": {"startedAt": "2025-06-01T11:56:00Z"}},
                     "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2025-06-01T11:55:00Z"}}}
                ]
            }
        }))
    }

    #[test]
    fn pod_cells_running_with_restarts() {
        let cells = running_pod().cells(now());
        assert_eq!(
            cells,
            vec![
                json!("web-1"),
                json!("2/2"),
                json!("Running"),
                json!("3 (5m ago)"),
                json!("5m"),
                json!("10.0.0.7"),
                json!("n1"),
                json!("<none>"),
                json!("<none>"),
            ]
        );
        assert_eq!(cells.len(), Pod::columns().len());
    }

    fn pod_with_container_state(state: Value, phase: &str) -> Pod {
        pod(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": phase, "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 0, "image": "", "imageID": "", "state": state}
            ]}
        }))
    }

    fn status_of(p: &Pod) -> Value {
        p.cells(now())[2].clone()
    }

    #[test]
    fn pod_status_from_container_states() {
        let cases = [
            (
                json!({"waiting": {"reason": "CrashLoopBackOff"}}),
                "Running",
                "CrashLoopBackOff",
            ),
            (
                json!({"waiting": {"reason": "ErrImagePull"}}),
                "Pending",
                "ErrImagePull",
            ),
            (json!({"waiting": {}}), "Pending", "Pending"),
            (
                json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                "Succeeded",
                "Completed",
            ),
            (
                json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
                "Failed",
                "Error",
            ),
            (
                json!({"terminated": {"exitCode": 137, "signal": 9}}),
                "Failed",
                "Signal:9",
            ),
            (
                json!({"terminated": {"exitCode": 2}}),
                "Failed",
                "ExitCode:2",
            ),
        ];
        for (state, phase, want) in cases {
            let p = pod_with_container_state(state.clone(), phase);
            assert_eq!(status_of(&p), json!(want), "state {state}");
        }
    }

    #[test]
    fn pod_status_reason_overrides_phase_and_terminating_wins() {
        let mut p = pod(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Failed", "reason": "Evicted"}
        }));
        assert_eq!(status_of(&p), json!("Evicted"));

        p.status.as_mut().unwrap().phase = Some("Running".to_string());
        p.status.as_mut().unwrap().reason = None;
        p.metadata.deletion_timestamp = Some(Time(now()));
        assert_eq!(status_of(&p), json!("Terminating"));

        // A finished pod being deleted keeps its phase.
        p.status.as_mut().unwrap().phase = Some("Succeeded".to_string());
        assert_eq!(status_of(&p), json!("Succeeded"));

        // Deleted on a lost node: Unknown.
        p.status.as_mut().unwrap().reason = Some("NodeLost".to_string());
        assert_eq!(status_of(&p), json!("Unknown"));
    }

    #[test]
    fn pod_completed_container_with_running_sibling() {
        let p = pod(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
              "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "image": "", "imageID": "", "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 0, "image": "", "imageID": "", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
            ]}
        }));
        let cells = p.cells(now());
        assert_eq!(cells[1], json!("1/2"));
        assert_eq!(cells[2], json!("NotReady"));
    }

    #[test]
    fn pod_init_containers() {
        let p = pod(json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i1", "ready": false, "restartCount": 0, "image": "", "imageID": "", "state": {"terminated": {"exitCode": 0}}},
                {"name": "i2", "ready": false, "restartCount": 2, "image": "", "imageID": "", "state": {"running": {}}}
            ], "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 0, "image": "", "imageID": "", "state": {"waiting": {"reason": "PodInitializing"}}}
            ]}
        }));
        let cells = p.cells(now());
        assert_eq!(cells[1], json!("0/1"));
        assert_eq!(cells[2], json!("Init:1/2"));
        // Restarts of init containers count while the pod initializes.
        assert_eq!(cells[3], json!("2"));

        let crashing = pod(json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "i1"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i1", "ready": false, "restartCount": 1, "image": "", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        }));
        assert_eq!(status_of(&crashing), json!("Init:CrashLoopBackOff"));
    }

    #[test]
    fn pod_sidecar_counts_in_ready_and_total() {
        let p = pod(json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "proxy", "restartPolicy": "Always"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Initialized", "status": "True"}],
              "initContainerStatuses": [
                {"name": "proxy", "ready": true, "started": true, "restartCount": 1, "image": "", "imageID": "", "state": {"running": {}}}
            ], "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "image": "", "imageID": "", "state": {"running": {}}}
            ]}
        }));
        let cells = p.cells(now());
        assert_eq!(cells[1], json!("2/2"));
        assert_eq!(cells[2], json!("Running"));
        assert_eq!(cells[3], json!("1"));
    }

    #[test]
    fn pod_scheduling_gated_and_readiness_gates() {
        let p = pod(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}], "readinessGates": [{"conditionType": "x/ok"}, {"conditionType": "y/ok"}]},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"},
                {"type": "x/ok", "status": "True"}
            ]}
        }));
        let cells = p.cells(now());
        assert_eq!(cells[2], json!("SchedulingGated"));
        assert_eq!(cells[8], json!("1/2"));
    }

    #[test]
    fn pod_row_conditions_for_finished_pods() {
        let p = pod_with_container_state(
            json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
            "Succeeded",
        );
        let c = p.row_conditions();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].type_, "Completed");
        assert_eq!(c[0].reason, "Succeeded");
        assert!(running_pod().row_conditions().is_empty());
    }

    #[test]
    fn label_selector_formatting() {
        let sel: LabelSelector = from_value(json!({
            "matchLabels": {"tier": "front", "app": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "canary"]},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "track", "operator": "Exists"},
                {"key": "zone", "operator": "NotIn", "values": ["b"]}
            ]
        }))
        .unwrap();
        assert_eq!(
            format_label_selector(Some(&sel)),
            "app=web,env in (canary,prod),!legacy,tier=front,track,zone notin (b)"
        );
        assert_eq!(
            format_label_selector(Some(&LabelSelector::default())),
            "<none>"
        );
        assert_eq!(format_label_selector(None), "<none>");
        let bad: LabelSelector =
            from_value(json!({"matchExpressions": [{"key": "a", "operator": "In"}]})).unwrap();
        assert_eq!(format_label_selector(Some(&bad)), "<error>");
        let bad: LabelSelector =
            from_value(json!({"matchExpressions": [{"key": "a", "operator": "Near"}]})).unwrap();
        assert_eq!(format_label_selector(Some(&bad)), "<error>");
    }

    fn replica_set() -> ReplicaSet {
        from_value(json!({
            "metadata": {"name": "web-5d4f", "namespace": "default", "creationTimestamp": "2025-05-30T07:00:00Z"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}]},
                "template": {"metadata": {"labels": {"app": "web", "tier": "a"}},
                             "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}, {"name": "log", "image": "busybox"}]}}
            },
            "status": {"replicas": 3, "readyReplicas": 2}
        }))
        .unwrap()
    }

    #[test]
    fn replica_set_cells() {
        let cells = replica_set().cells(now());
        assert_eq!(
            cells,
            vec![
                json!("web-5d4f"),
                json!(3),
                json!(3),
                json!(2),
                json!("2d5h"),
                json!("nginx,log"),
                json!("nginx:1.27,busybox"),
                json!("app=web,tier in (a,b)"),
            ]
        );
        let mut rs = replica_set();
        rs.spec = Some(ReplicaSetSpec::default());
        rs.status = None;
        let cells = rs.cells(now());
        assert_eq!(cells[1], json!(1));
        assert_eq!(cells[2], json!(0));
        assert_eq!(cells[7], json!("<none>"));
    }

    fn node(v: Value) -> Node {
        from_value(v).unwrap()
    }

    #[test]
    fn node_cells() {
        let n = node(json!({
            "metadata": {"name": "n1", "creationTimestamp": "2025-06-01T09:00:00Z",
                          "labels": {"node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "edge"}},
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "192.0.2.10"}],
                "nodeInfo": {"kubeletVersion": "v1.33.0-miniku", "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0",
                             "containerRuntimeVersion": "docker://27.0.0", "architecture": "amd64", "bootID": "", "kubeProxyVersion": "",
                             "machineID": "", "operatingSystem": "linux", "systemUUID": ""}
            }
        }));
        assert_eq!(
            n.cells(now()),
            vec![
                json!("n1"),
                json!("Ready,SchedulingDisabled"),
                json!("control-plane,edge,worker"),
                json!("3h"),
                json!("v1.33.0-miniku"),
                json!("192.0.2.10"),
                json!("<none>"),
                json!("Debian GNU/Linux 12 (bookworm)"),
                json!("6.1.0"),
                json!("docker://27.0.0"),
            ]
        );
        let bare = node(json!({"metadata": {"name": "n2"}}));
        let cells = bare.cells(now());
        assert_eq!(cells[1], json!("Unknown"));
        assert_eq!(cells[2], json!("<none>"));
        assert_eq!(cells[3], json!("<unknown>"));
        assert_eq!(cells[7], json!("<unknown>"));
        let not_ready = node(json!({"metadata": {"name": "n3"},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}));
        assert_eq!(not_ready.cells(now())[1], json!("NotReady"));
    }

    #[test]
    fn namespace_cells() {
        let ns: Namespace = from_value(json!({
            "metadata": {"name": "default", "creationTimestamp": "2022-01-01T00:00:00Z"},
            "status": {"phase": "Active"}
        }))
        .unwrap();
        assert_eq!(
            ns.cells(now()),
            vec![json!("default"), json!("Active"), json!("3y152d")]
        );
    }

    #[test]
    fn every_printer_has_one_cell_per_column_and_a_name_column() {
        fn check<T: TablePrinter>(item: T) {
            assert_eq!(item.cells(now()).len(), T::columns().len());
            assert_eq!(T::columns()[0].format, "name");
            assert!(T::columns().iter().all(|c| !c.description.is_empty()));
        }
        check(Pod::default());
        check(ReplicaSet::default());
        check(Node::default());
        check(Namespace::default());
    }

    #[test]
    fn list_table_wire_form() {
        let list_meta = ListMeta {
            resource_version: Some("77".to_string()),
            continue_: Some("tok".to_string()),
            ..ListMeta::default()
        };
        let opts = TableOptions::new(MetaVersion::V1, IncludeObject::Metadata);
        let table = list_table(&[running_pod()], &list_meta, &opts, now()).unwrap();
        let v = serde_json::to_value(&table).unwrap();
        assert_eq!(v["kind"], "Table");
        assert_eq!(v["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(
            v["metadata"],
            json!({"resourceVersion": "77", "continue": "tok"})
        );
        let cols = v["columnDefinitions"].as_array().unwrap();
        assert_eq!(cols.len(), 9);
        assert_eq!(
            cols[0],
            json!({"name": "Name", "type": "string", "format": "name", "description": DESC_NAME, "priority": 0})
        );
        assert_eq!(cols[5]["name"], "IP");
        assert_eq!(cols[5]["priority"], 1);
        assert_eq!(cols[5]["format"], "");
        let row = &v["rows"][0];
        assert_eq!(row["cells"][0], "web-1");
        assert!(row.get("conditions").is_none());
        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(row["object"]["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(row["object"]["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(row["object"]["metadata"]["namespace"], "default");
        assert!(row["object"].get("spec").is_none());
    }

    #[test]
    fn include_object_modes() {
        let opts = TableOptions::new(MetaVersion::V1Beta1, IncludeObject::Object);
        let v = serde_json::to_value(object_table(&running_pod(), &opts, now()).unwrap()).unwrap();
        assert_eq!(v["apiVersion"], "meta.k8s.io/v1beta1");
        assert_eq!(v["metadata"], json!({"resourceVersion": "42"}));
        assert_eq!(v["rows"][0]["object"]["kind"], "Pod");
        assert_eq!(v["rows"][0]["object"]["apiVersion"], "v1");
        assert_eq!(v["rows"][0]["object"]["spec"]["nodeName"], "n1");

        let opts = TableOptions::new(MetaVersion::V1, IncludeObject::None);
        let v = serde_json::to_value(object_table(&running_pod(), &opts, now()).unwrap()).unwrap();
        assert_eq!(v["rows"][0]["object"], Value::Null);
        assert!(v["rows"][0].as_object().unwrap().contains_key("object"));

        assert_eq!(
            IncludeObject::from_query(None).unwrap(),
            IncludeObject::Metadata
        );
        assert_eq!(
            IncludeObject::from_query(Some("")).unwrap(),
            IncludeObject::Metadata
        );
        assert_eq!(
            IncludeObject::from_query(Some("Object")).unwrap(),
            IncludeObject::Object
        );
        assert_eq!(
            IncludeObject::from_query(Some("None")).unwrap(),
            IncludeObject::None
        );
        let err = IncludeObject::from_query(Some("object")).unwrap_err();
        assert_eq!(err.status_code(), 400);
        assert_eq!(
            err.to_string(),
            "unrecognized includeObject value: \"object\""
        );
    }

    #[test]
    fn watch_tables_send_columns_once() {
        let mut w = WatchTables::new(TableOptions::new(MetaVersion::V1, IncludeObject::Metadata));
        let first = serde_json::to_value(w.event_table(&running_pod(), now()).unwrap()).unwrap();
        let second = serde_json::to_value(w.event_table(&running_pod(), now()).unwrap()).unwrap();
        assert_eq!(first["columnDefinitions"].as_array().unwrap().len(), 9);
        assert_eq!(second["columnDefinitions"], Value::Null);
        assert!(second
            .as_object()
            .unwrap()
            .contains_key("columnDefinitions"));
        assert_eq!(second["rows"].as_array().unwrap().len(), 1);
        assert_eq!(second["metadata"]["resourceVersion"], "42");
        // The watch's first columns are the list's columns, exactly.
        let list = serde_json::to_value(
            list_table::<Pod>(
                &[],
                &ListMeta::default(),
                &TableOptions::new(MetaVersion::V1, IncludeObject::Metadata),
                now(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(list["columnDefinitions"], first["columnDefinitions"]);
        assert_eq!(list["rows"], json!([]));
    }

    #[test]
    fn partial_object_metadata_forms() {
        let v = partial_object_metadata(&running_pod(), MetaVersion::V1).unwrap();
        assert_eq!(v["kind"], "PartialObjectMetadata");
        assert_eq!(v["metadata"]["name"], "web-1");
        let list = partial_object_metadata_list(
            &[running_pod(), running_pod()],
            &ListMeta {
                resource_version: Some("9".into()),
                ..ListMeta::default()
            },
            MetaVersion::V1,
        )
        .unwrap();
        assert_eq!(list["kind"], "PartialObjectMetadataList");
        assert_eq!(list["metadata"]["resourceVersion"], "9");
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        assert_eq!(list["items"][1]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn accept_negotiation() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(Some(kubectl)).unwrap(),
            Target::Table(MetaVersion::V1)
        );
        assert_eq!(
            negotiate(Some(
                "application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json"
            ))
            .unwrap(),
            Target::Table(MetaVersion::V1Beta1)
        );
        assert_eq!(negotiate(None).unwrap(), Target::Object);
        assert_eq!(negotiate(Some("")).unwrap(), Target::Object);
        assert_eq!(negotiate(Some("application/json")).unwrap(), Target::Object);
        assert_eq!(negotiate(Some("*/*")).unwrap(), Target::Object);
        // Protobuf first (client-go's metadata client): skipped, the JSON clause wins.
        let meta = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
        assert_eq!(
            negotiate(Some(meta)).unwrap(),
            Target::PartialObjectMetadataList(MetaVersion::V1)
        );
        assert_eq!(
            negotiate(Some(
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
            ))
            .unwrap(),
            Target::PartialObjectMetadata(MetaVersion::V1)
        );
        // Parameter order and spacing do not matter; unknown parameters are ignored.
        assert_eq!(
            negotiate(Some(
                "application/json; g=meta.k8s.io; v=v1; as=Table; pretty=1"
            ))
            .unwrap(),
            Target::Table(MetaVersion::V1)
        );
        // A Table in another group, or of an unknown version, is skipped.
        assert_eq!(
            negotiate(Some(
                "application/json;as=Table;v=v2;g=meta.k8s.io,application/json"
            ))
            .unwrap(),
            Target::Object
        );
        let err = negotiate(Some("application/json;as=Table;v=v1;g=example.com")).unwrap_err();
        assert_eq!(err.status_code(), 406);
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf"))
                .unwrap_err()
                .status_code(),
            406
        );
        // q-values order the clauses.
        assert_eq!(
            negotiate(Some(
                "application/json;q=0.5,application/json;as=Table;v=v1;g=meta.k8s.io"
            ))
            .unwrap(),
            Target::Table(MetaVersion::V1)
        );
        assert_eq!(
            negotiate(Some(
                "application/json;as=Table;v=v1;g=meta.k8s.io;q=0,application/json"
            ))
            .unwrap(),
            Target::Object
        );
    }

    #[test]
    fn target_fits_request() {
        let v1 = MetaVersion::V1;
        assert_eq!(
            Target::PartialObjectMetadata(v1)
                .check_for(true)
                .unwrap_err()
                .status_code(),
            406
        );
        assert!(Target::PartialObjectMetadata(v1).check_for(false).is_ok());
        assert_eq!(
            Target::PartialObjectMetadataList(v1)
                .check_for(false)
                .unwrap_err()
                .status_code(),
            406
        );
        assert!(Target::PartialObjectMetadataList(v1)
            .check_for(true)
            .is_ok());
        assert!(Target::Table(v1).check_for(true).is_ok());
        assert!(Target::Table(v1).check_for(false).is_ok());
    }
}
