//! PATCH bodies: JSON Patch (RFC 6902), JSON Merge Patch (RFC 7386) and Kubernetes'
//! strategic merge patch, applied to an object's JSON the way Kubernetes' API server
//! applies them, with the status codes it answers.
//!
//! # What this module owns
//!
//! * Telling the three content types apart ([`PatchType::from_content_type`]); anything
//!   else, server-side apply's `application/apply-patch+yaml` included, is 415.
//! * Applying a body to the current object ([`apply_patch`]) and classifying what goes
//!   wrong ([`PatchError`], with [`PatchError::status_code`] and [`PatchError::reason`]).
//! * The strategic-merge schema: per kind, which lists merge by which key, which are sets of
//!   primitives, and (by omission) which are replaced whole ([`schema_for`], [`KindSchema`]).
//!   Adding a kind or a field is a table entry, not code.
//! * The identity checks Kubernetes makes on the patched object ([`check_patched_identity`]).
//!
//! # What it must not touch
//!
//! No HTTP, no store, no validation of field values, no defaulting. It does not fill in or
//! protect server-owned fields (`status` on the main resource, `creationTimestamp`,
//! `generation`, `managedFields`): the caller's update path does that, exactly as for a PUT.
//! It never reads the clock and keeps no state.
//!
//! # Kubernetes behaviour the caller must know
//!
//! * Status codes (from Kubernetes' patch handler): an unknown `Content-Type` is 415
//!   UnsupportedMediaType; a body that does not decode (not JSON, a JSON patch that is not an
//!   array of operations, a strategic/merge patch that is not an object) or a malformed
//!   strategic directive is 400 BadRequest; more than 10 000 JSON-patch operations is 413;
//!   a JSON patch that does not apply (a `test` that fails, a path that is missing) is 422
//!   Invalid; a patched document that is no longer an object is 422 Invalid. After applying,
//!   a patched `metadata.resourceVersion` different from the current one is 409 Conflict
//!   (that is how `kubectl label --resource-version` and `annotate --resource-version`
//!   lock), a changed `metadata.name` or `namespace` is 400, a changed `metadata.uid` is 422
//!   ([`check_patched_identity`]). Once decoded into its type the patched object goes
//!   through the same validation as an update (422 on bad fields).
//! * Deliberate difference: for a few malformed strategic patches (mixed element types in a
//!   list, a list element without its merge key, a `$patch` value Kubernetes does not know,
//!   `$setElementOrder` out of step with the patch list) Kubernetes answers 500 because its
//!   error is untyped; this module answers 400 BadRequest, since the fault is the client's.
//!   Keys starting with `$` that are not a known directive are also 400 here (Kubernetes
//!   would silently drop them when decoding).
//! * What kubectl 1.33 sends, all handled here:
//!   - `kubectl apply` (client-side): a strategic merge patch computed three-way from the
//!     `kubectl.kubernetes.io/last-applied-configuration` annotation, the live object and the
//!     file. It sets the new annotation, names changed list elements by merge key with only
//!     the changed fields, deletes elements with `{"name": "X", "$patch": "delete"}`, removes
//!     map keys with `null`, removes set members with `$deleteFromPrimitiveList/<field>`, sends
//!     `$setElementOrder/<field>` for every merge list it touches, and `$retainKeys` for
//!     `retainKeys` fields (Deployment `strategy`, pod `volumes` entries).
//!   - `kubectl label` / `kubectl annotate`: a JSON merge patch of the metadata change,
//!     e.g. `{"metadata":{"labels":{"tier":null,"app":"web"}}}`, plus
//!     `"resourceVersion"` when `--resource-version` is given.
//!   - `kubectl scale`: a JSON merge patch `{"spec":{"replicas":N}}` on the `/scale`
//!     subresource (the body patches an `autoscaling/v1` `Scale`); with
//!     `--current-replicas` or `--resource-version` it does a GET and a PUT on `/scale`
//!     instead.
//!   - `kubectl patch` sends whatever `--type` says (`strategic` is its default).
//! * `$setElementOrder` is honoured, not just accepted: the merged list is ordered by it, and
//!   list elements the server has but the directive does not name keep their relative order
//!   and are interleaved by their live positions, as Kubernetes does. Without the directive
//!   the patch list's order is used for the patched elements, and an element new to the list
//!   lands *before* the server-only elements (that is Kubernetes' algorithm too; kubectl
//!   always sends the directive, so its lists come out in the file's order). In rare cases
//!   that combine deletions, additions and server-only elements in one list, Kubernetes'
//!   placement of server-only elements depends on slice aliasing in its Go code; here it
//!   depends only on the live order.
//! * Kubernetes de-duplicates `metadata.ownerReferences` by `uid` after a patch (with a
//!   warning); this module leaves that to the caller's update path.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// `application/json-patch+json`.
pub const JSON_PATCH: &str = "application/json-patch+json";
/// `application/merge-patch+json`.
pub const MERGE_PATCH: &str = "application/merge-patch+json";
/// `application/strategic-merge-patch+json`.
pub const STRATEGIC_MERGE_PATCH: &str = "application/strategic-merge-patch+json";
/// Kubernetes refuses JSON patches with more operations than this (413).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

const DIRECTIVE_PATCH: &str = "$patch";
const DIRECTIVE_RETAIN_KEYS: &str = "$retainKeys";
const PREFIX_SET_ELEMENT_ORDER: &str = "$setElementOrder";
const PREFIX_DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";

/// Why a patch was refused, each with the status Kubernetes answers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// 415: the content type is not a patch type this server applies (for this kind).
    #[error("the body of the request was in an unknown format - accepted media types include: {accepted}")]
    UnsupportedMediaType { accepted: String },
    /// 400: the body does not decode, or a strategic directive is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 413: a JSON patch with too many operations.
    #[error("{0}")]
    TooLarge(String),
    /// 422: the patch does not apply to this object, or its result is not an object.
    #[error("{0}")]
    Invalid(String),
    /// 409: the patched object names a resourceVersion other than the current one.
    #[error("{0}")]
    Conflict(String),
}

impl PatchError {
    /// The HTTP status code Kubernetes answers for this error.
    pub fn status_code(&self) -> u16 {
        match self {
            PatchError::UnsupportedMediaType { .. } => 415,
            PatchError::BadRequest(_) => 400,
            PatchError::TooLarge(_) => 413,
            PatchError::Invalid(_) => 422,
            PatchError::Conflict(_) => 409,
        }
    }

    /// The `reason` of the Kubernetes `Status` for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            PatchError::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            PatchError::BadRequest(_) => "BadRequest",
            PatchError::TooLarge(_) => "RequestEntityTooLarge",
            PatchError::Invalid(_) => "Invalid",
            PatchError::Conflict(_) => "Conflict",
        }
    }
}

fn bad(msg: impl Into<String>) -> PatchError {
    PatchError::BadRequest(msg.into())
}

fn unsupported(kind_has_strategic: bool) -> PatchError {
    let accepted = if kind_has_strategic {
        [JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH].join(", ")
    } else {
        [JSON_PATCH, MERGE_PATCH].join(", ")
    };
    PatchError::UnsupportedMediaType { accepted }
}

/// The three patch types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
}

impl PatchType {
    /// The patch type of a `Content-Type` header; parameters such as `charset` are ignored.
    pub fn from_content_type(content_type: &str) -> Result<PatchType, PatchError> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            JSON_PATCH => Ok(PatchType::Json),
            MERGE_PATCH => Ok(PatchType::Merge),
            STRATEGIC_MERGE_PATCH => Ok(PatchType::StrategicMerge),
            _ => Err(unsupported(true)),
        }
    }

    /// The media type.
    pub fn media_type(self) -> &'static str {
        match self {
            PatchType::Json => JSON_PATCH,
            PatchType::Merge => MERGE_PATCH,
            PatchType::StrategicMerge => STRATEGIC_MERGE_PATCH,
        }
    }
}

/// Applies `patch_body` (of `content_type`) to `current`, an object of `kind` in its JSON
/// form, and returns the patched JSON. `kind` matters only for strategic merge patches,
/// which need the kind's schema ([`schema_for`]); for a kind without one they are 415, as
/// Kubernetes answers for custom resources. The result is always a JSON object; the caller
/// decodes it into its type, runs [`check_patched_identity`] and its update path.
pub fn apply_patch(
    kind: &str,
    content_type: &str,
    current: &Value,
    patch_body: &[u8],
) -> Result<Value, PatchError> {
    let patch_type = PatchType::from_content_type(content_type)?;
    let patched = match patch_type {
        PatchType::Json => apply_json_patch(current, patch_body)?,
        PatchType::Merge => {
            let patch: Value = serde_json::from_slice(patch_body)
                .map_err(|e| bad(format!("error decoding patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::merge(&mut doc, &patch);
            doc
        }
        PatchType::StrategicMerge => {
            let schema = schema_for(kind).ok_or_else(|| unsupported(false))?;
            let patch: Value = serde_json::from_slice(patch_body)
                .map_err(|e| bad(format!("error decoding patch: {e}")))?;
            strategic_merge(schema, current, patch)?
        }
    };
    if !patched.is_object() {
        return Err(PatchError::Invalid(
            "the patched document is not a JSON object".to_string(),
        ));
    }
    Ok(patched)
}

fn apply_json_patch(current: &Value, body: &[u8]) -> Result<Value, PatchError> {
    let ops: json_patch::Patch =
        serde_json::from_slice(body).map_err(|e| bad(format!("error decoding patch: {e}")))?;
    if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooLarge(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.0.len()
        )));
    }
    let mut doc = current.clone();
    // The copy is thrown away on failure, so the non-undoing variant is enough.
    json_patch::patch_unsafe(&mut doc, &ops).map_err(|e| PatchError::Invalid(e.to_string()))?;
    Ok(doc)
}

/// The checks Kubernetes makes on a patched object before it stores it: a different
/// `metadata.name` (or a different non-empty `namespace`) is 400 BadRequest, a different
/// non-empty `metadata.resourceVersion` is 409 Conflict (the optimistic lock a patch may
/// carry), a different `metadata.uid` is 422 Invalid (immutable).
pub fn check_patched_identity(current: &Value, patched: &Value) -> Result<(), PatchError> {
    let field = |v: &Value, name: &str| -> String {
        v.get("metadata")
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (name, new_name) = (field(current, "name"), field(patched, "name"));
    if name != new_name {
        return Err(bad(format!(
            "the name of the object ({new_name}) does not match the name on the URL ({name})"
        )));
    }
    let (ns, new_ns) = (field(current, "namespace"), field(patched, "namespace"));
    if !new_ns.is_empty() && ns != new_ns {
        return Err(bad(format!(
            "the namespace of the object ({new_ns}) does not match the namespace on the URL ({ns})"
        )));
    }
    let new_rv = field(patched, "resourceVersion");
    if !new_rv.is_empty() && new_rv != field(current, "resourceVersion") {
        return Err(PatchError::Conflict(
            "the object has been modified; please apply your changes to the latest version and try again"
                .to_string(),
        ));
    }
    let (uid, new_uid) = (field(current, "uid"), field(patched, "uid"));
    if uid != new_uid {
        return Err(PatchError::Invalid(format!(
            "metadata.uid: Invalid value: {new_uid:?}: field is immutable"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The strategic-merge schema: data
// ---------------------------------------------------------------------------------------

/// How a list field merges. A list field without a rule is replaced whole by the patch's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    /// A list of objects merged element by element, matched by this key.
    MergeByKey(&'static str),
    /// A list of primitives merged as a set (union; `$deleteFromPrimitiveList` removes).
    Set,
}

/// One list field: its path below a section (field names joined by `.`, list elements
/// transparent: `containers.env` is the `env` of every container).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListRule {
    pub path: &'static str,
    pub strategy: ListStrategy,
}

/// A kind's schema: rule sets, each mounted at a path of the object (`""` is the root).
#[derive(Clone, Copy, Debug)]
pub struct KindSchema {
    pub kind: &'static str,
    pub sections: &'static [(&'static str, &'static [ListRule])],
}

impl KindSchema {
    /// The strategy of the list at `path` (field names from the object's root).
    pub fn list_strategy(&self, path: &[String]) -> Option<ListStrategy> {
        let joined = path.join(".");
        self.sections.iter().find_map(|(prefix, rules)| {
            let rel = if prefix.is_empty() {
                joined.as_str()
            } else {
                joined.strip_prefix(prefix)?.strip_prefix('.')?
            };
            rules.iter().find(|r| r.path == rel).map(|r| r.strategy)
        })
    }
}

const fn key(path: &'static str, merge_key: &'static str) -> ListRule {
    ListRule {
        path,
        strategy: ListStrategy::MergeByKey(merge_key),
    }
}

const fn set(path: &'static str) -> ListRule {
    ListRule {
        path,
        strategy: ListStrategy::Set,
    }
}

/// `ObjectMeta`.
pub const OBJECT_META: &[ListRule] = &[set("finalizers"), key("ownerReferences", "uid")];

/// `PodSpec` (tolerations, readinessGates, args, command, envFrom, ... are replaced whole).
pub const POD_SPEC: &[ListRule] = &[
    key("volumes", "name"),
    key("containers", "name"),
    key("initContainers", "name"),
    key("ephemeralContainers", "name"),
    key("imagePullSecrets", "name"),
    key("hostAliases", "ip"),
    key("topologySpreadConstraints", "topologyKey"),
    key("schedulingGates", "name"),
    key("resourceClaims", "name"),
    key("containers.env", "name"),
    key("containers.ports", "containerPort"),
    key("containers.volumeMounts", "mountPath"),
    key("containers.volumeDevices", "devicePath"),
    key("initContainers.env", "name"),
    key("initContainers.ports", "containerPort"),
    key("initContainers.volumeMounts", "mountPath"),
    key("initContainers.volumeDevices", "devicePath"),
    key("ephemeralContainers.env", "name"),
    key("ephemeralContainers.ports", "containerPort"),
    key("ephemeralContainers.volumeMounts", "mountPath"),
    key("ephemeralContainers.volumeDevices", "devicePath"),
];

/// `PodStatus` (container statuses are replaced whole).
pub const POD_STATUS: &[ListRule] = &[
    key("conditions", "type"),
    key("podIPs", "ip"),
    key("hostIPs", "ip"),
    key("resourceClaimStatuses", "name"),
];

/// `NodeSpec` (taints are replaced whole).
pub const NODE_SPEC: &[ListRule] = &[set("podCIDRs")];

/// `NodeStatus`.
pub const NODE_STATUS: &[ListRule] = &[key("conditions", "type"), key("addresses", "type")];

/// A status whose only merge list is `conditions` (ReplicaSet, Deployment, Namespace).
pub const CONDITIONS_STATUS: &[ListRule] = &[key("conditions", "type")];

/// Workloads with a pod template (ReplicaSet, Deployment).
const WORKLOAD: &[(&str, &[ListRule])] = &[
    ("metadata", OBJECT_META),
    ("spec.template.metadata", OBJECT_META),
    ("spec.template.spec", POD_SPEC),
    ("status", CONDITIONS_STATUS),
];

/// Every kind strategic merge patches apply to.
pub const SCHEMAS: &[KindSchema] = &[
    KindSchema {
        kind: "Pod",
        sections: &[
            ("metadata", OBJECT_META),
            ("spec", POD_SPEC),
            ("status", POD_STATUS),
        ],
    },
    KindSchema {
        kind: "ReplicaSet",
        sections: WORKLOAD,
    },
    KindSchema {
        kind: "Deployment",
        sections: WORKLOAD,
    },
    KindSchema {
        kind: "Node",
        sections: &[
            ("metadata", OBJECT_META),
            ("spec", NODE_SPEC),
            ("status", NODE_STATUS),
        ],
    },
    KindSchema {
        kind: "Namespace",
        sections: &[("metadata", OBJECT_META), ("status", CONDITIONS_STATUS)],
    },
    KindSchema {
        kind: "Event",
        sections: &[("metadata", OBJECT_META)],
    },
    KindSchema {
        kind: "Scale",
        sections: &[("metadata", OBJECT_META)],
    },
    KindSchema {
        kind: "Service",
        sections: &[
            ("metadata", OBJECT_META),
            ("spec", SERVICE_SPEC),
            ("status", CONDITIONS_STATUS),
        ],
    },
];

/// `ServiceSpec`: ports merge by port number (as Kubernetes' `patchMergeKey: port`).
pub const SERVICE_SPEC: &[ListRule] = &[key("ports", "port")];

/// The strategic-merge schema of a kind, if it has one.
pub fn schema_for(kind: &str) -> Option<&'static KindSchema> {
    SCHEMAS.iter().find(|s| s.kind == kind)
}

// ---------------------------------------------------------------------------------------
// The strategic merge itself
// ---------------------------------------------------------------------------------------

/// Applies a strategic merge patch (already parsed) to `current` with `schema`.
pub fn strategic_merge(
    schema: &KindSchema,
    current: &Value,
    patch: Value,
) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(bad("a strategic merge patch must be a JSON object"));
    };
    let Value::Object(original) = current.clone() else {
        return Err(PatchError::Invalid(
            "the object to patch is not a JSON object".to_string(),
        ));
    };
    let mut path = Vec::new();
    let merged = merge_map(schema, &mut path, original, patch)?;
    let mut out = Value::Object(merged);
    strip_directive_keys(&mut out);
    Ok(out)
}

/// The type of a JSON value, as the merge tells list elements apart (Go's decoder gives
/// integers and other numbers different types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JsonType {
    Null,
    Bool,
    Int,
    Float,
    String,
    Array,
    Object,
}

fn json_type(v: &Value) -> JsonType {
    match v {
        Value::Null => JsonType::Null,
        Value::Bool(_) => JsonType::Bool,
        Value::Number(n) if n.is_f64() => JsonType::Float,
        Value::Number(_) => JsonType::Int,
        Value::String(_) => JsonType::String,
        Value::Array(_) => JsonType::Array,
        Value::Object(_) => JsonType::Object,
    }
}

fn is_directive_key(k: &str) -> bool {
    k == DIRECTIVE_PATCH
        || k == DIRECTIVE_RETAIN_KEYS
        || k.starts_with(PREFIX_SET_ELEMENT_ORDER)
        || k.starts_with(PREFIX_DELETE_FROM_PRIMITIVE_LIST)
}

/// The field a `$setElementOrder/<field>` or `$deleteFromPrimitiveList/<field>` key names.
fn directive_field<'a>(k: &'a str, prefix: &str) -> Result<&'a str, PatchError> {
    k.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(|| bad(format!("invalid patch: malformed directive key {k:?}")))
}

fn merge_map(
    schema: &KindSchema,
    path: &mut Vec<String>,
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(directive) = patch.get(DIRECTIVE_PATCH) {
        return match directive.as_str() {
            Some("replace") => {
                patch.remove(DIRECTIVE_PATCH);
                Ok(patch)
            }
            Some("delete") => Ok(Map::new()),
            _ => Err(bad(format!("unknown patch type: {directive} in map"))),
        };
    }
    for k in patch.keys() {
        if k.starts_with('$') && !is_directive_key(k) {
            return Err(bad(format!("invalid patch: unknown directive {k:?}")));
        }
    }

    apply_retain_keys(&mut original, &mut patch)?;
    apply_set_element_order(schema, path, &mut original, &mut patch)?;

    let entries: Vec<(String, Value)> = patch.into_iter().collect();
    for (raw_key, patch_value) in entries {
        let (field, is_delete_list) = if raw_key.starts_with(PREFIX_DELETE_FROM_PRIMITIVE_LIST) {
            (
                directive_field(&raw_key, PREFIX_DELETE_FROM_PRIMITIVE_LIST)?.to_string(),
                true,
            )
        } else {
            (raw_key, false)
        };
        if patch_value.is_null() {
            original.remove(&field);
            continue;
        }
        let Some(orig_value) = original.remove(&field) else {
            if !is_delete_list {
                insert_new(&mut original, field, patch_value);
            }
            continue;
        };
        if json_type(&orig_value) != json_type(&patch_value) {
            if is_delete_list {
                original.insert(field, orig_value);
            } else {
                insert_new(&mut original, field, patch_value);
            }
            continue;
        }
        path.push(field.clone());
        let merged = match (orig_value, patch_value) {
            (Value::Object(o), Value::Object(p)) => {
                merge_map(schema, path, o, p).map(Value::Object)
            }
            (Value::Array(o), Value::Array(p)) => {
                let strategy = schema.list_strategy(path);
                merge_list_field(schema, path, o, p, strategy, is_delete_list).map(Value::Array)
            }
            (_, p) => Ok(p),
        };
        path.pop();
        original.insert(field, merged?);
    }
    Ok(original)
}

/// A value for a field the original does not have: nulls dropped, directive-marked maps and
/// list elements dropped.
fn insert_new(original: &mut Map<String, Value>, field: String, mut value: Value) {
    discard_nulls(&mut value);
    if let Some(v) = remove_directives(value) {
        original.insert(field, v);
    }
}

fn discard_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(discard_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(discard_nulls),
        _ => {}
    }
}

/// Drops every map carrying `$patch` (and the list element or field holding it).
fn remove_directives(v: Value) -> Option<Value> {
    match v {
        Value::Object(m) => {
            if m.contains_key(DIRECTIVE_PATCH) {
                return None;
            }
            Some(Value::Object(
                m.into_iter()
                    .filter_map(|(k, v)| remove_directives(v).map(|v| (k, v)))
                    .collect(),
            ))
        }
        Value::Array(a) => Some(Value::Array(
            a.into_iter().filter_map(remove_directives).collect(),
        )),
        other => Some(other),
    }
}

/// Removes directive keys left in values copied verbatim (a replaced list, a new list
/// element, a `$patch: replace` map): Kubernetes drops them when it decodes the result.
fn strip_directive_keys(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !is_directive_key(k));
            m.values_mut().for_each(strip_directive_keys);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directive_keys),
        _ => {}
    }
}

/// `$retainKeys: [..]`: the original keeps only the listed keys, and the patch may set only
/// listed keys.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), PatchError> {
    let Some(retain) = patch.remove(DIRECTIVE_RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(retain) = retain else {
        return Err(bad("invalid patch: doesn't support retainKeys strategy"));
    };
    let keep: BTreeSet<&str> = retain.iter().filter_map(Value::as_str).collect();
    for (k, v) in patch.iter() {
        if v.is_null()
            || k.starts_with(PREFIX_DELETE_FROM_PRIMITIVE_LIST)
            || k.starts_with(PREFIX_SET_ELEMENT_ORDER)
        {
            continue;
        }
        if !keep.contains(k.as_str()) {
            return Err(bad(format!(
                "invalid patch: field {k:?} is set but not listed in $retainKeys"
            )));
        }
    }
    original.retain(|k, _| keep.contains(k.as_str()));
    Ok(())
}

/// Every `$setElementOrder/<field>`: merges `<field>` now (so the main loop skips it) and
/// orders the result by the directive.
fn apply_set_element_order(
    schema: &KindSchema,
    path: &mut Vec<String>,
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), PatchError> {
    let keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(PREFIX_SET_ELEMENT_ORDER))
        .cloned()
        .collect();
    for directive_key in keys {
        let field = directive_field(&directive_key, PREFIX_SET_ELEMENT_ORDER)?.to_string();
        let order = match patch.remove(&directive_key) {
            Some(Value::Array(order)) => order,
            _ => {
                return Err(bad(
                    "invalid patch: $setElementOrder must be a list of the field's elements",
                ))
            }
        };
        let orig_list = match original.get(&field) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(_) => return Err(bad(format!("invalid patch: {field:?} is not a list"))),
        };
        let patch_list = match patch.get(&field) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(_) => return Err(bad(format!("invalid patch: {field:?} is not a list"))),
        };
        path.push(field.clone());
        let strategy = schema.list_strategy(path);
        let merge_key = match strategy {
            Some(ListStrategy::MergeByKey(k)) => Some(k),
            _ => None,
        };
        let result = (|| {
            check_order_matches_patch(patch_list.as_deref().unwrap_or(&[]), &order, merge_key)?;
            let merged = match (&orig_list, &patch_list) {
                (Some(o), None) => o.clone(),
                (None, Some(p)) => match remove_directives(Value::Array(p.clone())) {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                },
                (Some(o), Some(p)) => {
                    merge_list_field(schema, path, o.clone(), p.clone(), strategy, false)?
                }
                (None, None) => return Ok(None),
            };
            let server = orig_list.as_deref().unwrap_or(&[]);
            let elements: Vec<&Value> = server
                .iter()
                .chain(patch_list.as_deref().unwrap_or(&[]))
                .collect();
            if elements.is_empty() {
                return Ok(Some(merged));
            }
            let is_object = element_type(elements.into_iter())? == JsonType::Object;
            let merge_key = match (is_object, merge_key) {
                (true, Some(k)) => Some(k),
                (true, None) => {
                    return Err(bad(format!(
                        "invalid patch: $setElementOrder on {field:?}, a list without a merge key"
                    )))
                }
                (false, _) => None,
            };
            let (in_order, server_only) = partition(merged, &order, merge_key)?;
            Ok(Some(normalize_order(
                in_order,
                server_only,
                &order,
                server,
                merge_key,
            )?))
        })();
        path.pop();
        if let Some(list) = result? {
            original.insert(field.clone(), Value::Array(list));
        }
        patch.remove(&field);
    }
    Ok(())
}

/// `$setElementOrder` must name the patch list's elements (deletions aside) in the same
/// relative order.
fn check_order_matches_patch(
    patch_list: &[Value],
    order: &[Value],
    merge_key: Option<&str>,
) -> Result<(), PatchError> {
    let relevant: Vec<&Value> = patch_list
        .iter()
        .filter(|v| {
            !v.as_object()
                .is_some_and(|m| m.contains_key(DIRECTIVE_PATCH))
        })
        .collect();
    let mut i = 0;
    for o in order {
        let Some(item) = relevant.get(i) else {
            break;
        };
        if same_element(item, o, merge_key)? {
            i += 1;
        }
    }
    if i < relevant.len() {
        return Err(bad(
            "invalid patch: the order in the patch list doesn't match the $setElementOrder list",
        ));
    }
    Ok(())
}

/// Whether two elements are the same element: by merge key for objects, by value otherwise.
fn same_element(a: &Value, b: &Value, merge_key: Option<&str>) -> Result<bool, PatchError> {
    let Some(k) = merge_key else {
        return Ok(a == b);
    };
    Ok(key_of(a, k)? == key_of(b, k)?)
}

fn key_of<'a>(v: &'a Value, merge_key: &str) -> Result<&'a Value, PatchError> {
    v.as_object().and_then(|m| m.get(merge_key)).ok_or_else(|| {
        bad(format!(
            "map: {v} does not contain declared merge key: {merge_key}"
        ))
    })
}

/// The one type all elements share; lists of lists are 422 and mixed types 400.
fn element_type<'a>(mut values: impl Iterator<Item = &'a Value>) -> Result<JsonType, PatchError> {
    let Some(first) = values.next() else {
        return Err(bad("no elements in any of the given lists"));
    };
    let t = json_type(first);
    match t {
        JsonType::Array => {
            return Err(PatchError::Invalid(
                "lists of lists are not supported".to_string(),
            ))
        }
        JsonType::Null => return Err(bad("invalid patch: a list element is null")),
        _ => {}
    }
    if values.any(|v| json_type(v) != t) {
        return Err(bad("list element types are not identical"));
    }
    Ok(t)
}

/// Merges a list field: with a strategy (or as a deletion list) element-wise, otherwise the
/// patch's list replaces the original.
fn merge_list_field(
    schema: &KindSchema,
    path: &mut Vec<String>,
    original: Vec<Value>,
    patch: Vec<Value>,
    strategy: Option<ListStrategy>,
    is_delete_list: bool,
) -> Result<Vec<Value>, PatchError> {
    if strategy.is_none() && !is_delete_list {
        return Ok(patch);
    }
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let merge_key = match strategy {
        Some(ListStrategy::MergeByKey(k)) => Some(k),
        _ => None,
    };
    if element_type(original.iter().chain(patch.iter()))? != JsonType::Object {
        if is_delete_list {
            return Ok(original
                .into_iter()
                .filter(|v| !patch.contains(v))
                .collect());
        }
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for v in original.iter().chain(patch.iter()) {
            if !merged.contains(v) {
                merged.push(v.clone());
            }
        }
        let (in_patch, server_only) = partition(merged, &patch, None)?;
        return normalize_order(in_patch, server_only, &patch, &original, None);
    }
    let Some(merge_key) = merge_key else {
        return Err(bad(format!(
            "cannot merge lists without merge key for {}",
            path.join(".")
        )));
    };

    // `$patch` elements first: deletions by key, or `replace` (the rest is the new list).
    let mut server = original;
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let directive = item.get(DIRECTIVE_PATCH).cloned();
        match directive {
            None => plain.push(item),
            Some(d) => match d.as_str() {
                Some("delete") => {
                    let k = key_of(&item, merge_key)?.clone();
                    server.retain(|e| e.get(merge_key) != Some(&k));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(bad("merging lists cannot yet be specified in the patch"))
                }
                _ => return Err(bad(format!("unknown patch type: {d} in map"))),
            },
        }
    }
    if replace {
        server = plain;
        plain = Vec::new();
    }

    let mut merged = server.clone();
    for item in &plain {
        let k = key_of(item, merge_key)?;
        let found = merged
            .iter()
            .position(|e| e.as_object().and_then(|m| m.get(merge_key)) == Some(k));
        match (found, item) {
            (Some(i), Value::Object(p)) => {
                let Value::Object(o) = std::mem::take(&mut merged[i]) else {
                    return Err(bad("list element types are not identical"));
                };
                merged[i] = Value::Object(merge_map(schema, path, o, p.clone())?);
            }
            _ => merged.push(item.clone()),
        }
    }
    let (in_patch, server_only) = partition(merged, &plain, Some(merge_key))?;
    normalize_order(in_patch, server_only, &plain, &server, Some(merge_key))
}

/// Splits `list` into the elements `by` names and the others, keeping order.
fn partition(
    list: Vec<Value>,
    by: &[Value],
    merge_key: Option<&str>,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut named = Vec::new();
    let mut others = Vec::new();
    for v in list {
        let mut present = false;
        for b in by {
            if same_element(&v, b, merge_key)? {
                present = true;
                break;
            }
        }
        if present {
            named.push(v);
        } else {
            others.push(v);
        }
    }
    Ok((named, others))
}

fn position(list: &[Value], item: &Value, merge_key: Option<&str>) -> Option<usize> {
    list.iter().position(|e| match merge_key {
        Some(k) => e.get(k).is_some() && e.get(k) == item.get(k),
        None => e == item,
    })
}

/// Orders `named` by `named_order` and `others` by `server_order`, then interleaves them:
/// an element of `others` goes before the next of `named` only when both are in the live
/// list and it comes first there.
fn normalize_order(
    mut named: Vec<Value>,
    mut others: Vec<Value>,
    named_order: &[Value],
    server_order: &[Value],
    merge_key: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    if let Some(k) = merge_key {
        for v in named
            .iter()
            .chain(others.iter())
            .chain(named_order.iter())
            .chain(server_order.iter())
        {
            key_of(v, k)?;
        }
    }
    let rank = |order: &[Value], v: &Value| position(order, v, merge_key).unwrap_or(usize::MAX);
    named.sort_by_key(|v| rank(named_order, v));
    others.sort_by_key(|v| rank(server_order, v));

    let mut out = Vec::with_capacity(named.len() + others.len());
    let mut named = named.into_iter().peekable();
    let mut others = others.into_iter().peekable();
    loop {
        let take_other = match (others.peek(), named.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(o), Some(n)) => matches!(
                (position(server_order, o, merge_key), position(server_order, n, merge_key)),
                (Some(a), Some(b)) if a < b
            ),
        };
        let next = if take_other {
            others.next()
        } else {
            named.next()
        };
        out.extend(next);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn smp(kind: &str, current: &Value, patch: Value) -> Result<Value, PatchError> {
        apply_patch(
            kind,
            STRATEGIC_MERGE_PATCH,
            current,
            patch.to_string().as_bytes(),
        )
    }

    fn two_container_pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "uid": "u-pod", "resourceVersion": "10",
                          "labels": {"app": "web", "tier": "front"},
                          "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"old\":true}\n"}},
            "spec": {
                "containers": [
                    {"name": "app", "image": "nginx:1.26", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}]},
                    {"name": "sidecar", "image": "busybox:1.36", "command": ["sleep", "3600"]}
                ],
                "tolerations": [{"key": "a", "operator": "Exists"}]
            },
            "status": {"phase": "Running"}
        })
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/json-patch+json").unwrap(),
            PatchType::Json
        );
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8").unwrap(),
            PatchType::Merge
        );
        assert_eq!(
            PatchType::from_content_type("Application/Strategic-Merge-Patch+JSON").unwrap(),
            PatchType::StrategicMerge
        );
        for ct in [
            "application/apply-patch+yaml",
            "application/json",
            "",
            "text/plain",
        ] {
            let e = PatchType::from_content_type(ct).unwrap_err();
            assert_eq!(e.status_code(), 415, "{ct}");
            assert_eq!(e.reason(), "UnsupportedMediaType");
        }
        let e = apply_patch(
            "Pod",
            "application/apply-patch+yaml",
            &two_container_pod(),
            b"{}",
        )
        .unwrap_err();
        assert!(e
            .to_string()
            .contains("application/strategic-merge-patch+json"));
    }

    #[test]
    fn kubectl_apply_changes_one_image_of_two() {
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"new\":true}\n"}},
            "spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                "containers": [{"image": "busybox:1.37", "name": "sidecar"}]
            }
        });
        let out = smp("Pod", &two_container_pod(), patch).unwrap();
        let containers = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0], two_container_pod()["spec"]["containers"][0]);
        assert_eq!(containers[1]["name"], "sidecar");
        assert_eq!(containers[1]["image"], "busybox:1.37");
        assert_eq!(containers[1]["command"], json!(["sleep", "3600"]));
        assert_eq!(
            out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
            "{\"new\":true}\n"
        );
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "web", "tier": "front"})
        );
        assert_eq!(out["status"], json!({"phase": "Running"}));
        assert!(check_patched_identity(&two_container_pod(), &out).is_ok());
    }

    #[test]
    fn kubectl_apply_removes_an_env_var() {
        let patch = json!({
            "spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                "containers": [{
                    "$setElementOrder/env": [{"name": "A"}, {"name": "C"}],
                    "env": [{"$patch": "delete", "name": "B"}],
                    "name": "app"
                }]
            }
        });
        let out = smp("Pod", &two_container_pod(), patch).unwrap();
        assert_eq!(
            out["spec"]["containers"][0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "C", "value": "3"}])
        );
        assert_eq!(out["spec"]["containers"][0]["image"], "nginx:1.26");
        assert_eq!(out["spec"]["containers"][1]["name"], "sidecar");
        // No directive survives into the object.
        assert!(!out.to_string().contains('$'));
    }

    #[test]
    fn kubectl_apply_reorders_adds_and_changes_env() {
        let patch = json!({
            "spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                "containers": [{
                    "$setElementOrder/env": [{"name": "C"}, {"name": "D"}, {"name": "A"}, {"name": "B"}],
                    "env": [{"name": "D", "value": "4"}, {"name": "A", "value": "one"}],
                    "name": "app"
                }]
            }
        });
        let out = smp("Pod", &two_container_pod(), patch).unwrap();
        assert_eq!(
            out["spec"]["containers"][0]["env"],
            json!([
                {"name": "C", "value": "3"},
                {"name": "D", "value": "4"},
                {"name": "A", "value": "one"},
                {"name": "B", "value": "2"}
            ])
        );
    }

    #[test]
    fn kubectl_apply_adds_env_to_a_container_without_any() {
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
            "containers": [{
                "$setElementOrder/env": [{"name": "MODE"}],
                "env": [{"name": "MODE", "value": "debug"}],
                "name": "sidecar"
            }]
        }});
        let out = smp("Pod", &two_container_pod(), patch).unwrap();
        assert_eq!(
            out["spec"]["containers"][1]["env"],
            json!([{"name": "MODE", "value": "debug"}])
        );
        assert!(!out.to_string().contains('$'));
    }

    #[test]
    fn kubectl_apply_adds_and_deletes_containers() {
        let add = json!({"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}, {"name": "log"}],
            "containers": [{"name": "log", "image": "fluent-bit:3"}]
        }});
        let out = smp("Pod", &two_container_pod(), add).unwrap();
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["app", "sidecar", "log"]);

        let delete = json!({"spec": {
            "$setElementOrder/containers": [{"name": "app"}],
            "containers": [{"$patch": "delete", "name": "sidecar"}]
        }});
        let out = smp("Pod", &two_container_pod(), delete).unwrap();
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 1);
        assert_eq!(out["spec"]["containers"][0]["name"], "app");
    }

    #[test]
    fn merge_without_set_element_order_places_new_elements_first() {
        // Kubernetes' own ordering: patched elements by patch order, a new element before
        // server-only ones.
        let out = smp(
            "Pod",
            &two_container_pod(),
            json!({"spec": {"containers": [{"name": "log", "image": "x"}]}}),
        )
        .unwrap();
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["log", "app", "sidecar"]);
        // Live [B, C, A], patch [A', B', D]: C (server-only, before A live) comes first.
        let cur = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "B"}, {"name": "C"}, {"name": "A"}]}});
        let out = smp(
            "Pod",
            &cur,
            json!({"spec": {"containers": [
            {"name": "A", "image": "a2"}, {"name": "B", "image": "b2"}, {"name": "D"}]}}),
        )
        .unwrap();
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["C", "A", "B", "D"]);
        assert_eq!(out["spec"]["containers"][1]["image"], "a2");
    }

    #[test]
    fn set_element_order_interleaves_server_only_elements_by_live_position() {
        let cur = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "C"}, {"name": "B"}, {"name": "D"}, {"name": "A"}, {"name": "E"}]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "A"}, {"name": "B"}],
            "containers": [{"name": "A", "image": "a"}, {"name": "B", "image": "b"}]
        }});
        let out = smp("Pod", &cur, patch).unwrap();
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["C", "D", "A", "B", "E"]);

        // The directive alone reorders without changing contents.
        let cur = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "B"}, {"name": "A"}]}});
        let out = smp(
            "Pod",
            &cur,
            json!({"spec": {"$setElementOrder/containers": [{"name": "A"}, {"name": "B"}]}}),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "A"}, {"name": "B"}])
        );
    }

    #[test]
    fn set_element_order_must_agree_with_patch_list() {
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
            "containers": [{"name": "app", "image": "x"}, {"name": "sidecar", "image": "y"}]
        }});
        assert_eq!(
            smp("Pod", &two_container_pod(), patch)
                .unwrap_err()
                .status_code(),
            400
        );
        let patch = json!({"spec": {"$setElementOrder/containers": {"name": "app"}}});
        assert_eq!(
            smp("Pod", &two_container_pod(), patch)
                .unwrap_err()
                .status_code(),
            400
        );
    }

    #[test]
    fn null_removes_a_label_in_both_merge_kinds() {
        let patch = json!({"metadata": {"labels": {"tier": null, "track": "stable"}}});
        for ct in [STRATEGIC_MERGE_PATCH, MERGE_PATCH] {
            let out = apply_patch(
                "Pod",
                ct,
                &two_container_pod(),
                patch.to_string().as_bytes(),
            )
            .unwrap();
            assert_eq!(
                out["metadata"]["labels"],
                json!({"app": "web", "track": "stable"}),
                "{ct}"
            );
        }
    }

    #[test]
    fn owner_references_merge_by_uid() {
        let mut cur = two_container_pod();
        cur["metadata"]["ownerReferences"] = json!([
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "old", "uid": "u1", "controller": true}
        ]);
        let patch = json!({"metadata": {
            "$setElementOrder/ownerReferences": [{"uid": "u1"}, {"uid": "u2"}],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "cfg", "uid": "u2"}]
        }});
        let out = smp("Pod", &cur, patch).unwrap();
        let refs = out["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0]["uid"], "u1");
        assert_eq!(refs[0]["controller"], true);
        assert_eq!(refs[1]["uid"], "u2");

        // Same uid: merged, not duplicated.
        let patch =
            json!({"metadata": {"ownerReferences": [{"uid": "u1", "blockOwnerDeletion": true}]}});
        let out = smp("Pod", &cur, patch).unwrap();
        assert_eq!(
            out["metadata"]["ownerReferences"].as_array().unwrap().len(),
            1
        );
        assert_eq!(
            out["metadata"]["ownerReferences"][0]["blockOwnerDeletion"],
            true
        );
        assert_eq!(out["metadata"]["ownerReferences"][0]["name"], "old");

        // Onto an object without owners: the list is taken as is.
        let patch = json!({"metadata": {"ownerReferences": [{"uid": "u9", "kind": "ReplicaSet", "name": "rs", "apiVersion": "apps/v1"}]}});
        let out = smp("Pod", &two_container_pod(), patch).unwrap();
        assert_eq!(out["metadata"]["ownerReferences"][0]["uid"], "u9");
    }

    #[test]
    fn finalizers_are_a_set() {
        let mut cur = two_container_pod();
        cur["metadata"]["finalizers"] = json!(["a", "b"]);
        let out = smp("Pod", &cur, json!({"metadata": {"finalizers": ["b", "c"]}})).unwrap();
        let f: BTreeSet<&str> = out["metadata"]["finalizers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(f, BTreeSet::from(["a", "b", "c"]));
        assert_eq!(out["metadata"]["finalizers"].as_array().unwrap().len(), 3);

        let patch = json!({"metadata": {
            "$setElementOrder/finalizers": ["a", "c"],
            "$deleteFromPrimitiveList/finalizers": ["b"],
            "finalizers": ["c"]
        }});
        let out = smp("Pod", &cur, patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "c"]));

        // Deleting from a list the object does not have is a no-op.
        let out = smp(
            "Pod",
            &two_container_pod(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
        )
        .unwrap();
        assert!(out["metadata"].get("finalizers").is_none());
    }

    #[test]
    fn lists_without_merge_key_are_replaced() {
        let patch = json!({"spec": {"tolerations": [{"key": "b", "operator": "Exists"}],
            "containers": [{"name": "sidecar", "command": ["true"]}]}});
        let out = smp("Pod", &two_container_pod(), patch).unwrap();
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "b", "operator": "Exists"}])
        );
        assert_eq!(out["spec"]["containers"][1]["command"], json!(["true"]));
    }

    #[test]
    fn patch_replace_directives() {
        // A whole list.
        let patch = json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "x"}]}});
        let out = smp("Pod", &two_container_pod(), patch).unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "only", "image": "x"}])
        );
        // A whole map.
        let patch = json!({"metadata": {"labels": {"$patch": "replace", "new": "1"}}});
        let out = smp("Pod", &two_container_pod(), patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"new": "1"}));
        // `$patch: delete` on a map leaves it empty.
        let out = smp(
            "Pod",
            &two_container_pod(),
            json!({"metadata": {"labels": {"$patch": "delete"}}}),
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({}));
    }

    #[test]
    fn retain_keys_clears_unlisted_fields() {
        let rs = json!({"metadata": {"name": "d"}, "spec": {"strategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
        let out = smp("Deployment", &rs, patch).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 1}}}});
        assert_eq!(
            smp("Deployment", &rs, patch).unwrap_err().status_code(),
            400
        );
        let patch = json!({"spec": {"strategy": {"$retainKeys": "type"}}});
        assert_eq!(
            smp("Deployment", &rs, patch).unwrap_err().status_code(),
            400
        );
    }

    #[test]
    fn replica_set_template_containers_and_ports() {
        let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
              "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                {"name": "app", "image": "a:1", "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443, "name": "https"}],
                 "volumeMounts": [{"mountPath": "/data", "name": "d"}]}]}}}});
        let patch = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "app",
            "$setElementOrder/ports": [{"containerPort": 80}, {"containerPort": 443}],
            "ports": [{"containerPort": 443, "name": "tls"}],
            "volumeMounts": [{"mountPath": "/data", "readOnly": true}]}]}}}});
        let out = smp("ReplicaSet", &rs, patch).unwrap();
        let c = &out["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["ports"],
            json!([{"containerPort": 80, "name": "http"}, {"containerPort": 443, "name": "tls"}])
        );
        assert_eq!(
            c["volumeMounts"],
            json!([{"mountPath": "/data", "name": "d", "readOnly": true}])
        );
        assert_eq!(out["spec"]["replicas"], 3);
    }

    #[test]
    fn kubelet_node_status_patch() {
        let node = json!({"metadata": {"name": "n1"}, "status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2025-06-01T11:00:00Z"},
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2025-06-01T11:00:00Z", "reason": "KubeletReady"}
            ],
            "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}, {"type": "Hostname", "address": "n1"}]
        }});
        let patch = json!({"status": {
            "$setElementOrder/conditions": [{"type": "MemoryPressure"}, {"type": "Ready"}],
            "conditions": [{"lastHeartbeatTime": "2025-06-01T11:01:00Z", "type": "Ready"}],
            "addresses": [{"type": "InternalIP", "address": "192.0.2.2"}]
        }});
        let out = smp("Node", &node, patch).unwrap();
        let conds = out["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds[0]["lastHeartbeatTime"], "2025-06-01T11:00:00Z");
        assert_eq!(conds[1]["lastHeartbeatTime"], "2025-06-01T11:01:00Z");
        assert_eq!(conds[1]["reason"], "KubeletReady");
        assert_eq!(
            out["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "192.0.2.2"}, {"type": "Hostname", "address": "n1"}])
        );
    }

    #[test]
    fn new_fields_drop_nulls_and_directive_elements() {
        let patch = json!({"spec": {"nodeSelector": {"disk": "ssd", "gone": null},
            "imagePullSecrets": [{"name": "reg"}, {"name": "x", "$patch": "delete"}]}});
        let out = smp("Pod", &two_container_pod(), patch).unwrap();
        assert_eq!(out["spec"]["nodeSelector"], json!({"disk": "ssd"}));
        assert_eq!(out["spec"]["imagePullSecrets"], json!([{"name": "reg"}]));
    }

    #[test]
    fn malformed_strategic_patches() {
        let pod = two_container_pod();
        let cases = [
            json!({"$patch": "merge"}),
            json!({"metadata": {"labels": {"$patch": "frobnicate"}}}),
            json!({"spec": {"containers": [{"$patch": "merge", "name": "app"}]}}),
            json!({"spec": {"containers": [{"$patch": "delete"}]}}),
            json!({"spec": {"containers": [{"image": "no-name"}]}}),
            json!({"spec": {"containers": ["app"]}}),
            json!({"metadata": {"$frobnicate": 1}}),
            json!({"metadata": {"$setElementOrder": []}}),
            json!({"metadata": {"$deleteFromPrimitiveListfinalizers": []}}),
        ];
        for patch in cases {
            let e = smp("Pod", &pod, patch.clone()).unwrap_err();
            assert_eq!(e.status_code(), 400, "{patch}: {e}");
            assert_eq!(e.reason(), "BadRequest");
        }
        for body in [&b"not json"[..], b"[1,2]", b"", b"\"x\""] {
            let e = apply_patch("Pod", STRATEGIC_MERGE_PATCH, &pod, body).unwrap_err();
            assert_eq!(e.status_code(), 400);
        }
        let mut cur = pod.clone();
        // A list of lists is 422 (Kubernetes' ErrNoListOfLists); mixed element types are 400.
        cur["metadata"]["finalizers"] = json!([]);
        let e = smp(
            "Pod",
            &cur,
            json!({"metadata": {"finalizers": [["nested"]]}}),
        )
        .unwrap_err();
        assert_eq!(e.status_code(), 422);
        cur["metadata"]["finalizers"] = json!(["a"]);
        let e = smp(
            "Pod",
            &cur,
            json!({"metadata": {"finalizers": [["nested"]]}}),
        )
        .unwrap_err();
        assert_eq!(e.status_code(), 400);
    }

    #[test]
    fn strategic_merge_needs_a_known_kind() {
        let e = smp("Widget", &json!({"metadata": {"name": "w"}}), json!({})).unwrap_err();
        assert_eq!(e.status_code(), 415);
        assert!(!e.to_string().contains("strategic"));
        // The other two work for any kind.
        let out = apply_patch("Widget", MERGE_PATCH, &json!({"a": 1}), br#"{"b":2}"#).unwrap();
        assert_eq!(out, json!({"a": 1, "b": 2}));
    }

    #[test]
    fn json_patch_semantics_and_errors() {
        let pod = two_container_pod();
        let body = json!([
            {"op": "test", "path": "/metadata/labels/app", "value": "web"},
            {"op": "replace", "path": "/spec/containers/0/image", "value": "nginx:1.27"},
            {"op": "add", "path": "/metadata/labels/new", "value": "1"},
            {"op": "remove", "path": "/spec/tolerations"}
        ]);
        let out = apply_patch("Pod", JSON_PATCH, &pod, body.to_string().as_bytes()).unwrap();
        assert_eq!(out["spec"]["containers"][0]["image"], "nginx:1.27");
        assert_eq!(out["metadata"]["labels"]["new"], "1");
        assert!(out["spec"].get("tolerations").is_none());

        let failing_test = json!([{"op": "test", "path": "/metadata/labels/app", "value": "api"}]);
        let e =
            apply_patch("Pod", JSON_PATCH, &pod, failing_test.to_string().as_bytes()).unwrap_err();
        assert_eq!((e.status_code(), e.reason()), (422, "Invalid"));
        let missing = json!([{"op": "remove", "path": "/spec/nope"}]);
        assert_eq!(
            apply_patch("Pod", JSON_PATCH, &pod, missing.to_string().as_bytes())
                .unwrap_err()
                .status_code(),
            422
        );
        let replace_root = json!([{"op": "replace", "path": "", "value": [1]}]);
        assert_eq!(
            apply_patch("Pod", JSON_PATCH, &pod, replace_root.to_string().as_bytes())
                .unwrap_err()
                .status_code(),
            422
        );

        for body in [
            &br#"{"op":"add"}"#[..],
            br#"[{"op":"jump","path":"/a"}]"#,
            b"nope",
        ] {
            assert_eq!(
                apply_patch("Pod", JSON_PATCH, &pod, body)
                    .unwrap_err()
                    .status_code(),
                400
            );
        }
        let many: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "/kind", "value": "Pod"}))
            .collect();
        let e = apply_patch(
            "Pod",
            JSON_PATCH,
            &pod,
            Value::Array(many).to_string().as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            (e.status_code(), e.reason()),
            (413, "RequestEntityTooLarge")
        );
    }

    #[test]
    fn merge_patch_semantics_and_errors() {
        let pod = two_container_pod();
        // Lists are replaced whole by a merge patch, whatever the kind.
        let out = apply_patch(
            "Pod",
            MERGE_PATCH,
            &pod,
            br#"{"spec":{"containers":[{"name":"x"}]}}"#,
        )
        .unwrap();
        assert_eq!(out["spec"]["containers"], json!([{"name": "x"}]));
        assert_eq!(
            apply_patch("Pod", MERGE_PATCH, &pod, b"{oops")
                .unwrap_err()
                .status_code(),
            400
        );
        assert_eq!(
            apply_patch("Pod", MERGE_PATCH, &pod, b"[1]")
                .unwrap_err()
                .status_code(),
            422
        );
    }

    #[test]
    fn kubectl_label_and_annotate_merge_patches() {
        let pod = two_container_pod();
        let label = br#"{"metadata":{"labels":{"env":"prod"}}}"#;
        let out = apply_patch("Pod", MERGE_PATCH, &pod, label).unwrap();
        assert_eq!(out["metadata"]["labels"]["env"], "prod");
        assert!(check_patched_identity(&pod, &out).is_ok());

        let annotate = br#"{"metadata":{"annotations":{"note":"hi","kubectl.kubernetes.io/last-applied-configuration":null}}}"#;
        let out = apply_patch("Pod", MERGE_PATCH, &pod, annotate).unwrap();
        assert_eq!(out["metadata"]["annotations"], json!({"note": "hi"}));

        // `--resource-version`: a stale version is a conflict, the current one passes.
        let stale = br#"{"metadata":{"labels":{"env":"prod"},"resourceVersion":"9"}}"#;
        let out = apply_patch("Pod", MERGE_PATCH, &pod, stale).unwrap();
        let e = check_patched_identity(&pod, &out).unwrap_err();
        assert_eq!((e.status_code(), e.reason()), (409, "Conflict"));
        let fresh = br#"{"metadata":{"labels":{"env":"prod"},"resourceVersion":"10"}}"#;
        let out = apply_patch("Pod", MERGE_PATCH, &pod, fresh).unwrap();
        assert!(check_patched_identity(&pod, &out).is_ok());
    }

    #[test]
    fn identity_checks() {
        let pod = two_container_pod();
        let renamed = apply_patch(
            "Pod",
            MERGE_PATCH,
            &pod,
            br#"{"metadata":{"name":"other"}}"#,
        )
        .unwrap();
        assert_eq!(
            check_patched_identity(&pod, &renamed)
                .unwrap_err()
                .status_code(),
            400
        );
        let moved = apply_patch(
            "Pod",
            MERGE_PATCH,
            &pod,
            br#"{"metadata":{"namespace":"kube-system"}}"#,
        )
        .unwrap();
        assert_eq!(
            check_patched_identity(&pod, &moved)
                .unwrap_err()
                .status_code(),
            400
        );
        let new_uid =
            apply_patch("Pod", MERGE_PATCH, &pod, br#"{"metadata":{"uid":"x"}}"#).unwrap();
        assert_eq!(
            check_patched_identity(&pod, &new_uid)
                .unwrap_err()
                .status_code(),
            422
        );
        let no_rv = apply_patch(
            "Pod",
            MERGE_PATCH,
            &pod,
            br#"{"metadata":{"resourceVersion":null}}"#,
        )
        .unwrap();
        assert!(check_patched_identity(&pod, &no_rv).is_ok());
    }

    #[test]
    fn kubectl_scale_patch_on_scale_subresource() {
        let scale = json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "5", "uid": "u"},
            "spec": {"replicas": 2}, "status": {"replicas": 2, "selector": "app=web"}});
        let out = apply_patch("Scale", MERGE_PATCH, &scale, br#"{"spec":{"replicas":5}}"#).unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
        assert_eq!(out["status"]["replicas"], 2);
        let out = apply_patch(
            "Scale",
            STRATEGIC_MERGE_PATCH,
            &scale,
            br#"{"spec":{"replicas":0}}"#,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 0);
    }

    #[test]
    fn schema_lookup_is_data() {
        let rs = schema_for("ReplicaSet").unwrap();
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            rs.list_strategy(&p("spec.template.spec.containers")),
            Some(ListStrategy::MergeByKey("name"))
        );
        assert_eq!(
            rs.list_strategy(&p("spec.template.spec.containers.env")),
            Some(ListStrategy::MergeByKey("name"))
        );
        assert_eq!(
            rs.list_strategy(&p("spec.template.metadata.finalizers")),
            Some(ListStrategy::Set)
        );
        assert_eq!(
            rs.list_strategy(&p("status.conditions")),
            Some(ListStrategy::MergeByKey("type"))
        );
        assert_eq!(rs.list_strategy(&p("spec.template.spec.tolerations")), None);
        assert_eq!(rs.list_strategy(&p("spec.containers")), None);
        let pod = schema_for("Pod").unwrap();
        assert_eq!(
            pod.list_strategy(&p("spec.containers.ports")),
            Some(ListStrategy::MergeByKey("containerPort"))
        );
        assert_eq!(
            pod.list_strategy(&p("metadata.ownerReferences")),
            Some(ListStrategy::MergeByKey("uid"))
        );
        assert_eq!(pod.list_strategy(&p("specs.containers")), None);
        assert!(schema_for("Widget").is_none());
    }
}
