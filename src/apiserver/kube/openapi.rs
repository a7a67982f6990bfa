//! The OpenAPI v3 documents Miniku serves under `/openapi/v3`.
//!
//! This module owns:
//! - the index `/openapi/v3` (`{"paths": {"api/v1": {"serverRelativeURL": ...?hash=H}}}`),
//! - one document per served group-version (`/openapi/v3/api/v1`, `/openapi/v3/apis/apps/v1`):
//!   `components.schemas` holds every served kind (k8s-openapi's schemas, named as Kubernetes
//!   names them, e.g. `io.k8s.api.core.v1.Pod`), its list kind, the kinds its subresources
//!   answer with, `DeleteOptions`, `Status` and everything they reference; each top-level kind
//!   carries `x-kubernetes-group-version-kind`. `paths` has an operation for each verb of each
//!   resource and subresource; every PATCH has a `fieldValidation` query parameter, which is
//!   what makes kubectl leave validation to the server and send `fieldValidation=Strict`.
//! - the content hash of each document (kubectl caches documents by their `?hash=` URL),
//! - an empty `/openapi/v2` ([`openapi_v2`]), which kubectl 1.27 and 1.28 insist on fetching.
//!
//! It must not touch: the resource table (that is [`super::discovery::RESOURCES`]; this
//! module only reads it), request routing, storage, or an HTTP framework. [`lookup`] turns a
//! request path and its `hash` query parameter into bytes and headers for the caller's
//! handler. Documents are built once, on first use.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ListMeta, Patch, Status};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::discovery::{self, Gvk, ResourceSpec, SubresourceKind, Verb};

/// The content type of every document here.
pub const CONTENT_TYPE: &str = "application/json";
/// `Cache-Control` for a document fetched by its current hash: it never changes.
pub const CACHE_IMMUTABLE: &str = "public, immutable, max-age=31536000";
/// `Cache-Control` for the index and for a document fetched without a hash.
pub const CACHE_REVALIDATE: &str = "no-cache";

const SCHEMA_PREFIX: &str = "#/components/schemas/";

/// One group-version's OpenAPI v3 document, serialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupVersionDocument {
    /// The key in the index and the path after `/openapi/v3/`: `api/v1`, `apis/apps/v1`.
    pub key: String,
    /// The JSON document.
    pub body: Vec<u8>,
    /// [`content_hash`] of `body`.
    pub hash: String,
    /// `/openapi/v3/{key}?hash={hash}`: the URL the index points at.
    pub server_relative_url: String,
    /// `"{hash}"`, for an `ETag` header.
    pub etag: String,
}

/// The index and every group-version document.
#[derive(Debug, Clone, Default)]
pub struct OpenApiDocuments {
    index: Vec<u8>,
    docs: BTreeMap<String, GroupVersionDocument>,
}

/// What to answer a GET under `/openapi/v3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer<'a> {
    /// 200 with this body, `Content-Type: content_type`, `Cache-Control: cache_control` and,
    /// if given, `ETag: etag`.
    Ok {
        body: &'a [u8],
        content_type: &'static str,
        cache_control: &'static str,
        etag: Option<&'a str>,
    },
    /// The request named an old hash: 301 to the document's current URL.
    Redirect { location: &'a str },
}

/// A stable 128-bit digest (FNV-1a) of `bytes`, as 32 upper-case hex digits. It only has to
/// change when a document changes (it names cache entries), so no cryptographic hash is used.
pub fn content_hash(bytes: &[u8]) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for b in bytes {
        h ^= u128::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    format!("{h:032X}")
}

/// The index key of a group-version: `api/v1` for the core group, `apis/{group}/{version}`.
pub fn document_key(group: &str, version: &str) -> String {
    discovery::group_version_path(group, version)
        .trim_start_matches('/')
        .to_owned()
}

impl OpenApiDocuments {
    /// Builds the index and one document per group-version of `resources`.
    pub fn build(resources: &[ResourceSpec]) -> Self {
        let mut gvs: Vec<(&'static str, &'static str)> = Vec::new();
        for r in resources {
            if !gvs.contains(&(r.group, r.version)) {
                gvs.push((r.group, r.version));
            }
        }
        let mut docs = BTreeMap::new();
        for (group, version) in gvs {
            let value = group_version_document(resources, group, version);
            let body = serde_json::to_vec(&value)
                .expect("a serde_json::Value with string keys serializes");
            let key = document_key(group, version);
            let hash = content_hash(&body);
            let server_relative_url = format!("/openapi/v3/{key}?hash={hash}");
            docs.insert(
                key.clone(),
                GroupVersionDocument {
                    etag: format!("\"{hash}\""),
                    key,
                    body,
                    hash,
                    server_relative_url,
                },
            );
        }
        let paths: Map<String, Value> = docs
            .values()
            .map(|d| {
                (
                    d.key.clone(),
                    json!({ "serverRelativeURL": d.server_relative_url }),
                )
            })
            .collect();
        let index = serde_json::to_vec(&json!({ "paths": paths }))
            .expect("a serde_json::Value with string keys serializes");
        OpenApiDocuments { index, docs }
    }

    /// The `/openapi/v3` index.
    pub fn index(&self) -> &[u8] {
        &self.index
    }

    /// The document of `key` (`api/v1`, `apis/apps/v1`).
    pub fn document(&self, key: &str) -> Option<&GroupVersionDocument> {
        self.docs.get(key)
    }

    /// Every document, by key.
    pub fn documents(&self) -> impl Iterator<Item = &GroupVersionDocument> {
        self.docs.values()
    }

    /// The answer to `GET path?hash=...`: `path` is the request path (`/openapi/v3`,
    /// `/openapi/v3/apis/apps/v1`; one trailing `/` is ignored), `hash` the value of its
    /// `hash` query parameter if any. `None`: not a document here (answer 404).
    pub fn lookup(&self, path: &str, hash: Option<&str>) -> Option<Answer<'_>> {
        let rest = path.strip_prefix("/openapi/v3")?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Some(Answer::Ok {
                body: &self.index,
                content_type: CONTENT_TYPE,
                cache_control: CACHE_REVALIDATE,
                etag: None,
            });
        }
        let doc = self.docs.get(rest.strip_prefix('/')?)?;
        match hash {
            Some(h) if h == doc.hash => Some(Answer::Ok {
                body: &doc.body,
                content_type: CONTENT_TYPE,
                cache_control: CACHE_IMMUTABLE,
                etag: Some(&doc.etag),
            }),
            Some(_) => Some(Answer::Redirect {
                location: &doc.server_relative_url,
            }),
            None => Some(Answer::Ok {
                body: &doc.body,
                content_type: CONTENT_TYPE,
                cache_control: CACHE_REVALIDATE,
                etag: Some(&doc.etag),
            }),
        }
    }
}

/// The documents of [`discovery::RESOURCES`], built on first use.
pub fn documents() -> &'static OpenApiDocuments {
    static DOCS: OnceLock<OpenApiDocuments> = OnceLock::new();
    DOCS.get_or_init(|| OpenApiDocuments::build(discovery::RESOURCES))
}

/// [`OpenApiDocuments::lookup`] on [`documents`].
pub fn lookup(path: &str, hash: Option<&str>) -> Option<Answer<'static>> {
    documents().lookup(path, hash)
}

/// The `/openapi/v3` index of [`documents`].
pub fn index() -> &'static [u8] {
    documents().index()
}

/// The document of `key` (`api/v1`, `apis/apps/v1`) in [`documents`].
pub fn document(key: &str) -> Option<&'static GroupVersionDocument> {
    documents().document(key)
}

// ---------------------------------------------------------------------------------------------
// Building one document

fn generator() -> SchemaGenerator {
    SchemaSettings::openapi3()
        .with(|s| s.meta_schema = None)
        .into_generator()
}

/// The schema name a `$ref` from the generator points at.
fn ref_name(schema: &schemars::Schema) -> Option<String> {
    let r = schema.get("$ref")?.as_str()?;
    let name = r.strip_prefix(SCHEMA_PREFIX)?;
    Some(name.replace("~1", "/").replace("~0", "~"))
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("{SCHEMA_PREFIX}{name}") })
}

fn gvk_value(g: &Gvk) -> Value {
    json!({ "group": g.group, "kind": g.kind, "version": g.version })
}

/// Adds one kind's schema through `make` and returns its name in `components.schemas`.
fn add_kind(
    generator: &mut SchemaGenerator,
    inline: &mut BTreeMap<String, Value>,
    gvk: &Gvk,
    make: discovery::SchemaFn,
) -> String {
    let schema = make(generator);
    match ref_name(&schema) {
        Some(name) => name,
        None => {
            // An inlined schema has no name of its own: give it one.
            let group = if gvk.group.is_empty() {
                "core"
            } else {
                gvk.group
            };
            let name = format!("miniku.{group}.{}.{}", gvk.version, gvk.kind);
            inline.insert(name.clone(), schema.to_value());
            name
        }
    }
}

fn add_named<T: JsonSchema>(generator: &mut SchemaGenerator) -> Option<String> {
    ref_name(&generator.subschema_for::<T>())
}

/// Kubernetes does not mark `metadata` required on its kinds; k8s-openapi does (its Rust
/// field is not an `Option`). Take it out so `explain` and validation match Kubernetes.
fn unrequire_metadata(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let now_empty = match obj.get_mut("required").and_then(Value::as_array_mut) {
        Some(req) => {
            req.retain(|v| v != "metadata");
            req.is_empty()
        }
        None => false,
    };
    if now_empty {
        obj.remove("required");
    }
}

fn set_gvks(schemas: &mut Map<String, Value>, name: &str, gvks: &[Gvk]) {
    if let Some(obj) = schemas.get_mut(name).and_then(Value::as_object_mut) {
        obj.insert(
            "x-kubernetes-group-version-kind".to_owned(),
            Value::Array(gvks.iter().map(gvk_value).collect()),
        );
    }
}

/// The list kind of `r` (`PodList`), which k8s-openapi has no schema type for.
fn list_schema(r: &ResourceSpec, item: &str, list_meta: &str) -> Value {
    json!({
        "description": format!("A list of {} objects.", r.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {
                "description": "The versioned schema of this representation of an object.",
                "type": "string"
            },
            "kind": {
                "description": "The REST resource this object represents, in CamelCase.",
                "type": "string"
            },
            "metadata": {
                "description": "Standard list metadata.",
                "allOf": [schema_ref(list_meta)]
            },
            "items": {
                "description": format!("The {}.", r.plural),
                "type": "array",
                "items": { "allOf": [schema_ref(item)] }
            }
        },
        "x-kubernetes-group-version-kind": [{
            "group": r.group,
            "kind": format!("{}List", r.kind),
            "version": r.version,
        }]
    })
}

/// Names of the schemas one resource's operations use.
struct KindNames {
    kind: String,
    list: String,
    /// Schema name of each subresource's answer, by subresource name.
    subresources: BTreeMap<&'static str, String>,
}

/// Every schema name the paths refer to.
struct Names {
    status: String,
    delete_options: String,
    patch: String,
}

/// The OpenAPI v3 document of one group-version.
pub fn group_version_document(resources: &[ResourceSpec], group: &str, version: &str) -> Value {
    let served: Vec<&ResourceSpec> = resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    let mut generator = generator();
    let mut inline = BTreeMap::new();
    let list_meta = add_named::<ListMeta>(&mut generator)
        .unwrap_or_else(|| "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta".to_owned());
    let names = Names {
        status: add_named::<Status>(&mut generator)
            .unwrap_or_else(|| "io.k8s.apimachinery.pkg.apis.meta.v1.Status".to_owned()),
        delete_options: add_named::<DeleteOptions>(&mut generator)
            .unwrap_or_else(|| "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions".to_owned()),
        patch: add_named::<Patch>(&mut generator)
            .unwrap_or_else(|| "io.k8s.apimachinery.pkg.apis.meta.v1.Patch".to_owned()),
    };

    // (schema name, its GVKs) of every top-level kind in this document.
    let mut kinds: Vec<(String, Vec<Gvk>)> = Vec::new();
    let mut per_resource = Vec::new();
    let mut lists = Vec::new();
    for r in &served {
        let kind = add_kind(&mut generator, &mut inline, &r.gvk(), r.schema);
        kinds.push((kind.clone(), vec![r.gvk()]));
        let list = list_schema_name(&kind);
        lists.push((list.clone(), list_schema(r, &kind, &list_meta)));
        let mut subresources = BTreeMap::new();
        for s in r.subresources {
            let name = match s.kind {
                SubresourceKind::Parent => kind.clone(),
                SubresourceKind::Other { gvk, schema } => {
                    let name = add_kind(&mut generator, &mut inline, &gvk, schema);
                    if !kinds.iter().any(|(n, _)| *n == name) {
                        kinds.push((name.clone(), vec![gvk]));
                    }
                    name
                }
            };
            subresources.insert(s.name, name);
        }
        per_resource.push((
            *r,
            KindNames {
                kind,
                list,
                subresources,
            },
        ));
    }

    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    schemas.extend(inline);
    for (name, value) in lists {
        schemas.insert(name, value);
    }
    for (name, gvks) in &kinds {
        if let Some(s) = schemas.get_mut(name) {
            unrequire_metadata(s);
        }
        set_gvks(&mut schemas, name, gvks);
    }
    set_gvks(
        &mut schemas,
        &names.status,
        &[Gvk {
            group: "",
            version: "v1",
            kind: "Status",
        }],
    );
    // DeleteOptions is accepted by every group-version.
    let mut delete_gvks: Vec<Gvk> = Vec::new();
    for r in resources {
        let g = Gvk {
            group: r.group,
            version: r.version,
            kind: "DeleteOptions",
        };
        if !delete_gvks.contains(&g) {
            delete_gvks.push(g);
        }
    }
    set_gvks(&mut schemas, &names.delete_options, &delete_gvks);

    let mut paths = Map::new();
    for (r, kn) in &per_resource {
        ResourcePaths::new(r, kn, &names).add_all(&mut paths);
    }

    json!({
        "openapi": "3.0.0",
        "info": {
            "title": "Miniku",
            "version": discovery::git_version(),
        },
        "paths": paths,
        "components": { "schemas": schemas },
    })
}

fn list_schema_name(kind_schema: &str) -> String {
    format!("{kind_schema}List")
}

// ---------------------------------------------------------------------------------------------
// Paths

/// `Core`, `Apps`, `RbacAuthorization` (for `rbac.authorization.k8s.io`): the group as
/// Kubernetes spells it in operation ids.
fn group_ident(group: &str) -> String {
    if group.is_empty() {
        return "Core".to_owned();
    }
    group
        .trim_end_matches(".k8s.io")
        .split(['.', '-'])
        .map(capitalize)
        .collect()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn query(name: &str, ty: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "query",
        "description": description,
        "schema": { "type": ty, "uniqueItems": true }
    })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "path",
        "description": description,
        "required": true,
        "schema": { "type": "string", "uniqueItems": true }
    })
}

fn pretty() -> Value {
    query("pretty", "string", "If 'true', the output is indented.")
}

fn dry_run() -> Value {
    query(
        "dryRun",
        "string",
        "'All' runs every stage of the request but persists nothing.",
    )
}

fn field_manager() -> Value {
    query(
        "fieldManager",
        "string",
        "The name of the actor making the change, for field ownership.",
    )
}

fn field_validation() -> Value {
    query(
        "fieldValidation",
        "string",
        "What the server does with unknown or duplicate fields in the body: 'Ignore' drops \
         them, 'Warn' drops them and says so in a Warning header, 'Strict' fails the request.",
    )
}

fn list_params() -> Vec<Value> {
    vec![
        query(
            "allowWatchBookmarks",
            "boolean",
            "Ask for BOOKMARK events in a watch.",
        ),
        query(
            "continue",
            "string",
            "The continue token of the previous page.",
        ),
        query(
            "fieldSelector",
            "string",
            "Only objects whose fields match this selector.",
        ),
        query(
            "labelSelector",
            "string",
            "Only objects whose labels match this selector.",
        ),
        query(
            "limit",
            "integer",
            "The largest number of objects to return in one page.",
        ),
        query(
            "resourceVersion",
            "string",
            "The resource version to list at or watch from.",
        ),
        query(
            "resourceVersionMatch",
            "string",
            "How resourceVersion is applied: 'Exact' or 'NotOlderThan'.",
        ),
        query(
            "sendInitialEvents",
            "boolean",
            "Start a watch with synthetic ADDED events for the current state.",
        ),
        query(
            "timeoutSeconds",
            "integer",
            "End the list or watch after this many seconds.",
        ),
        query(
            "watch",
            "boolean",
            "Stream ADDED, MODIFIED and DELETED events instead of listing.",
        ),
    ]
}

fn delete_params() -> Vec<Value> {
    vec![
        dry_run(),
        query(
            "gracePeriodSeconds",
            "integer",
            "Seconds before the object is deleted; 0 deletes at once.",
        ),
        query(
            "orphanDependents",
            "boolean",
            "Deprecated: use propagationPolicy.",
        ),
        query(
            "propagationPolicy",
            "string",
            "What happens to dependents: 'Orphan', 'Background' or 'Foreground'.",
        ),
    ]
}

fn json_content(schema_name: &str) -> Value {
    json!({ "application/json": { "schema": schema_ref(schema_name) } })
}

fn ok_responses(codes: &[&str], schema_name: &str) -> Value {
    let mut m = Map::new();
    for code in codes {
        m.insert(
            (*code).to_owned(),
            json!({ "description": description_of(code), "content": json_content(schema_name) }),
        );
    }
    m.insert("401".to_owned(), json!({ "description": "Unauthorized" }));
    Value::Object(m)
}

fn description_of(code: &str) -> &'static str {
    match code {
        "200" => "OK",
        "201" => "Created",
        "202" => "Accepted",
        _ => "Response",
    }
}

/// One operation of a path item.
struct Op {
    method: &'static str,
    id: String,
    action: &'static str,
    gvk: Gvk,
    description: String,
    params: Vec<Value>,
    body: Option<Value>,
    responses: Value,
}

fn body_of(schema_name: &str) -> Value {
    json!({ "content": json_content(schema_name), "required": true })
}

fn patch_body(patch: &str) -> Value {
    let mut content = Map::new();
    for ty in [
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
    ] {
        content.insert(ty.to_owned(), json!({ "schema": schema_ref(patch) }));
    }
    json!({ "content": content, "required": true })
}

fn without_watch(mut params: Vec<Value>) -> Vec<Value> {
    params.retain(|p| p["name"] != "watch" && p["name"] != "allowWatchBookmarks");
    params
}

/// Builds the path items of one resource.
struct ResourcePaths<'a> {
    r: &'a ResourceSpec,
    kn: &'a KindNames,
    names: &'a Names,
    /// `CoreV1`, `AppsV1`: the operation-id infix.
    ident: String,
    /// `Namespaced` or empty: the operation-id infix of namespaced resources.
    scoped: &'static str,
    /// `core_v1`, `apps_v1`.
    tag: String,
}

impl<'a> ResourcePaths<'a> {
    fn new(r: &'a ResourceSpec, kn: &'a KindNames, names: &'a Names) -> Self {
        ResourcePaths {
            r,
            kn,
            names,
            ident: format!("{}{}", group_ident(r.group), capitalize(r.version)),
            scoped: if r.namespaced { "Namespaced" } else { "" },
            tag: format!(
                "{}_{}",
                if r.group.is_empty() { "core" } else { r.group },
                r.version
            ),
        }
    }

    fn op_value(&self, op: Op) -> Value {
        let mut v = json!({
            "tags": [self.tag],
            "description": op.description,
            "operationId": op.id,
            "parameters": op.params,
            "responses": op.responses,
            "x-kubernetes-action": op.action,
            "x-kubernetes-group-version-kind": gvk_value(&op.gvk),
        });
        if let (Some(obj), Some(body)) = (v.as_object_mut(), op.body) {
            obj.insert("requestBody".to_owned(), body);
        }
        v
    }

    fn insert(
        &self,
        paths: &mut Map<String, Value>,
        path: String,
        common: Vec<Value>,
        ops: Vec<Op>,
    ) {
        if ops.is_empty() {
            return;
        }
        let mut item = Map::new();
        item.insert("parameters".to_owned(), Value::Array(common));
        for op in ops {
            let method = op.method;
            item.insert(method.to_owned(), self.op_value(op));
        }
        paths.insert(path, Value::Object(item));
    }

    fn add_all(&self, paths: &mut Map<String, Value>) {
        let r = self.r;
        let prefix = r.group_version_path();
        let collection = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{prefix}/{}", r.plural)
        };
        let mut common = Vec::new();
        if r.namespaced {
            common.push(path_param("namespace", "The namespace of the objects."));
        }
        common.push(pretty());
        let list_params = || {
            if r.has_verb(Verb::Watch) {
                list_params()
            } else {
                without_watch(list_params())
            }
        };

        // The collection: list, create, deletecollection.
        let mut ops = Vec::new();
        if r.has_verb(Verb::List) {
            ops.push(self.list_op(
                format!("list{}{}{}", self.ident, self.scoped, r.kind),
                format!("List or watch {}.", r.plural),
                list_params(),
            ));
        }
        if r.has_verb(Verb::Create) {
            ops.push(Op {
                method: "post",
                id: format!("create{}{}{}", self.ident, self.scoped, r.kind),
                action: "post",
                gvk: r.gvk(),
                description: format!("Create a {}.", r.kind),
                params: vec![dry_run(), field_manager(), field_validation()],
                body: Some(body_of(&self.kn.kind)),
                responses: ok_responses(&["200", "201", "202"], &self.kn.kind),
            });
        }
        if r.has_verb(Verb::DeleteCollection) {
            let mut params = delete_params();
            params.extend(without_watch(list_params()));
            ops.push(Op {
                method: "delete",
                id: format!("delete{}Collection{}{}", self.ident, self.scoped, r.kind),
                action: "deletecollection",
                gvk: r.gvk(),
                description: format!("Delete a collection of {}.", r.plural),
                params,
                body: Some(body_of(&self.names.delete_options)),
                responses: ok_responses(&["200"], &self.names.status),
            });
        }
        self.insert(paths, collection.clone(), common.clone(), ops);

        // A namespaced resource is also listed across all namespaces.
        if r.namespaced && r.has_verb(Verb::List) {
            let op = self.list_op(
                format!("list{}{}ForAllNamespaces", self.ident, r.kind),
                format!("List or watch {} in every namespace.", r.plural),
                list_params(),
            );
            self.insert(
                paths,
                format!("{prefix}/{}", r.plural),
                vec![pretty()],
                vec![op],
            );
        }

        // One object: get, update, patch, delete.
        let item = format!("{collection}/{{name}}");
        let mut item_common = vec![path_param("name", &format!("The name of the {}.", r.kind))];
        item_common.extend(common);
        let mut ops = self.object_ops(r.verbs, "", r.gvk(), &self.kn.kind);
        if r.has_verb(Verb::Delete) {
            ops.push(Op {
                method: "delete",
                id: format!("delete{}{}{}", self.ident, self.scoped, r.kind),
                action: "delete",
                gvk: r.gvk(),
                description: format!("Delete a {}.", r.kind),
                params: delete_params(),
                body: Some(body_of(&self.names.delete_options)),
                responses: ok_responses(&["200", "202"], &self.names.status),
            });
        }
        self.insert(paths, item.clone(), item_common.clone(), ops);

        // Subresources: get, update, patch of `{name}/{sub}`; a pod's `log` is text.
        for s in r.subresources {
            let schema = self.kn.subresources.get(s.name).unwrap_or(&self.kn.kind);
            let ops = if s.name == "log" {
                vec![self.log_op()]
            } else {
                self.object_ops(s.verbs, s.name, r.subresource_gvk(s), schema)
            };
            self.insert(
                paths,
                format!("{item}/{}", s.name),
                item_common.clone(),
                ops,
            );
        }
    }

    fn list_op(&self, id: String, description: String, params: Vec<Value>) -> Op {
        Op {
            method: "get",
            id,
            action: "list",
            gvk: self.r.gvk(),
            description,
            params,
            body: None,
            responses: ok_responses(&["200"], &self.kn.list),
        }
    }

    /// `GET .../pods/{name}/log`: a container's output as text, with Kubernetes'
    /// `PodLogOptions` as query parameters.
    fn log_op(&self) -> Op {
        let kind = self.r.kind;
        let mut responses = Map::new();
        responses.insert(
            "200".to_owned(),
            json!({ "description": "OK", "content": { "text/plain": { "schema": { "type": "string" } } } }),
        );
        responses.insert("401".to_owned(), json!({ "description": "Unauthorized" }));
        Op {
            method: "get",
            id: format!("read{}{}{kind}Log", self.ident, self.scoped),
            action: "get",
            gvk: self.r.gvk(),
            description: format!("Read the log of the specified {kind}."),
            params: vec![
                query("container", "string", "The container for which to stream logs. Defaults to only container if there is one container in the pod."),
                query("follow", "boolean", "Follow the log stream of the pod. Defaults to false."),
                query("limitBytes", "integer", "If set, the number of bytes to read from the server before terminating the log output."),
                query("previous", "boolean", "Return previous terminated container logs. Defaults to false."),
                query("sinceSeconds", "integer", "A relative time in seconds before the current time from which to show logs."),
                query("tailLines", "integer", "If set, the number of lines from the end of the logs to show."),
                query("timestamps", "boolean", "If true, add an RFC3339 or RFC3339Nano timestamp at the beginning of every line of log output. Defaults to false."),
            ],
            body: None,
            responses: Value::Object(responses),
        }
    }

    /// get / update / patch of the object itself (`sub` empty) or of a subresource.
    fn object_ops(&self, verbs: &[Verb], sub: &str, gvk: Gvk, schema: &str) -> Vec<Op> {
        let kind = self.r.kind;
        let suffix = capitalize(sub);
        let id = |verb: &str| format!("{verb}{}{}{kind}{suffix}", self.ident, self.scoped);
        let what = if sub.is_empty() {
            format!("a {kind}")
        } else {
            format!("the {sub} of a {kind}")
        };
        let mut ops = Vec::new();
        if verbs.contains(&Verb::Get) {
            ops.push(Op {
                method: "get",
                id: id("read"),
                action: "get",
                gvk,
                description: format!("Read {what}."),
                params: Vec::new(),
                body: None,
                responses: ok_responses(&["200"], schema),
            });
        }
        if verbs.contains(&Verb::Update) {
            ops.push(Op {
                method: "put",
                id: id("replace"),
                action: "put",
                gvk,
                description: format!("Replace {what}."),
                params: vec![dry_run(), field_manager(), field_validation()],
                body: Some(body_of(schema)),
                responses: ok_responses(&["200", "201"], schema),
            });
        }
        if verbs.contains(&Verb::Patch) {
            ops.push(Op {
                method: "patch",
                id: id("patch"),
                action: "patch",
                gvk,
                description: format!("Partially update {what}."),
                params: vec![
                    dry_run(),
                    field_manager(),
                    // kubectl leaves validation to the server only when this is here.
                    field_validation(),
                    query(
                        "force",
                        "boolean",
                        "Take over fields other managers own (apply patches only).",
                    ),
                ],
                body: Some(patch_body(&self.names.patch)),
                responses: ok_responses(&["200", "201"], schema),
            });
        }
        ops
    }
}

// ---------------------------------------------------------------------------------------------
// /openapi/v2

/// The content type of a protobuf OpenAPI v2 answer. (Kubernetes' own spelling: the `@` form
/// clients put in `Accept` is not a valid MIME type, and Go's parser rejects it.)
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `/openapi/v2`: an empty OpenAPI v2 document, as protobuf (what kubectl asks for) or JSON.
///
/// Miniku describes its API in v3 only. kubectl 1.27 and 1.28 still fetch v2 before `explain`
/// and before validating a `create`/`apply`, and give up if it is missing; given an empty
/// one they go on to the v3 documents (checked with the bundled clients). An empty protobuf
/// message is the encoding of a document with no fields set. kubectl 1.29 and later never
/// ask for v2 while the v3 documents carry `fieldValidation`.
pub fn openapi_v2(accept: Option<&str>) -> (&'static str, &'static [u8]) {
    static JSON_DOC: OnceLock<Vec<u8>> = OnceLock::new();
    let accept = accept.unwrap_or("");
    if accept.contains("protobuf") && !accept.contains("json") {
        return (V2_PROTOBUF, &[]);
    }
    let body = JSON_DOC.get_or_init(|| {
        serde_json::to_vec(&json!({
            "swagger": "2.0",
            "info": { "title": "Miniku", "version": discovery::git_version() },
            "paths": {},
        }))
        .expect("a serde_json::Value with string keys serializes")
    });
    (CONTENT_TYPE, body)
}

#[cfg(test)]
mod tests {
    use super::discovery::RESOURCES;
    use super::*;

    fn doc(key: &str) -> Value {
        let d = document(key).map(|d| d.body.as_slice()).unwrap_or_default();
        serde_json::from_slice(d).unwrap_or(Value::Null)
    }

    fn params(op: &Value) -> Vec<String> {
        op["parameters"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn index_points_at_each_group_version_with_its_hash() {
        let index: Value = serde_json::from_slice(index()).unwrap_or(Value::Null);
        let paths = index["paths"].as_object().cloned().unwrap_or_default();
        assert_eq!(
            paths.keys().collect::<Vec<_>>(),
            ["api/v1", "apis/apps/v1", "apis/discovery.k8s.io/v1"]
        );
        for (key, entry) in paths {
            let d = document(&key);
            let url = d.map(|d| d.server_relative_url.clone()).unwrap_or_default();
            assert_eq!(entry["serverRelativeURL"], url.as_str());
            let hash = d.map(|d| d.hash.clone()).unwrap_or_default();
            assert_eq!(url, format!("/openapi/v3/{key}?hash={hash}"));
            assert_eq!(hash.len(), 32);
            assert_eq!(Some(hash), d.map(|d| content_hash(&d.body)));
        }
    }

    #[test]
    fn apps_v1_patch_on_replicasets_has_field_validation_and_gvk() {
        let v = doc("apis/apps/v1");
        let item = &v["paths"]["/apis/apps/v1/namespaces/{namespace}/replicasets/{name}"];
        let patch = &item["patch"];
        assert!(params(patch).contains(&"fieldValidation".to_owned()));
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "apps", "kind": "ReplicaSet", "version": "v1"})
        );
        assert_eq!(patch["x-kubernetes-action"], "patch");
        assert_eq!(patch["operationId"], "patchAppsV1NamespacedReplicaSet");
        assert!(patch["requestBody"]["content"]
            .get("application/strategic-merge-patch+json")
            .is_some());
        // kubectl takes the first PATCH it meets for the kind: every one must have it.
        for (path, item) in v["paths"].as_object().cloned().unwrap_or_default() {
            if let Some(op) = item.get("patch") {
                assert!(params(op).contains(&"fieldValidation".to_owned()), "{path}");
            }
        }
        let scale = &v["paths"]["/apis/apps/v1/namespaces/{namespace}/replicasets/{name}/scale"];
        assert_eq!(
            scale["patch"]["x-kubernetes-group-version-kind"],
            json!({"group": "autoscaling", "kind": "Scale", "version": "v1"})
        );
        assert_eq!(
            scale["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/io.k8s.api.autoscaling.v1.Scale"
        );
    }

    #[test]
    fn schemas_are_named_like_kubernetes_and_carry_their_gvk() {
        let v = doc("apis/apps/v1");
        let schemas = &v["components"]["schemas"];
        let rs = &schemas["io.k8s.api.apps.v1.ReplicaSet"];
        assert_eq!(
            rs["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "kind": "ReplicaSet", "version": "v1"}])
        );
        assert!(rs.get("required").is_none(), "metadata is not required");
        assert_eq!(
            rs["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.ReplicaSetSpec"
        );
        assert!(schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());
        assert!(schemas["io.k8s.api.core.v1.PodSpec"].is_object());
        assert_eq!(
            schemas["io.k8s.api.autoscaling.v1.Scale"]["x-kubernetes-group-version-kind"],
            json!([{"group": "autoscaling", "kind": "Scale", "version": "v1"}])
        );
        assert_eq!(
            schemas["io.k8s.api.apps.v1.ReplicaSetList"]["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "kind": "ReplicaSetList", "version": "v1"}])
        );
        assert_eq!(
            schemas["io.k8s.apimachinery.pkg.apis.meta.v1.Status"]
                ["x-kubernetes-group-version-kind"],
            json!([{"group": "", "kind": "Status", "version": "v1"}])
        );
        let delete = &schemas["io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"]
            ["x-kubernetes-group-version-kind"];
        assert!(delete.as_array().is_some_and(
            |a| a.contains(&json!({"group": "apps", "kind": "DeleteOptions", "version": "v1"}))
        ));
        // Every $ref resolves inside the document.
        let text = serde_json::to_string(&v).unwrap_or_default();
        for piece in text.split("\"$ref\":\"").skip(1) {
            let target = piece.split('"').next().unwrap_or_default();
            let name = target.strip_prefix(SCHEMA_PREFIX).unwrap_or(target);
            assert!(schemas.get(name).is_some(), "dangling {target}");
        }
    }

    #[test]
    fn core_v1_has_pods_nodes_namespaces() {
        let v = doc("api/v1");
        let paths = &v["paths"];
        assert_eq!(
            paths["/api/v1/namespaces/{namespace}/pods"]["get"]["operationId"],
            "listCoreV1NamespacedPod"
        );
        assert!(
            paths["/api/v1/pods"]["get"].is_object(),
            "all-namespaces list"
        );
        assert_eq!(
            paths["/api/v1/nodes/{name}"]["patch"]["operationId"],
            "patchCoreV1Node"
        );
        assert!(params(&paths["/api/v1/nodes/{name}/status"]["patch"])
            .contains(&"fieldValidation".to_owned()));
        // A pod's log is text, read with Kubernetes' PodLogOptions.
        let log = &paths["/api/v1/namespaces/{namespace}/pods/{name}/log"]["get"];
        assert_eq!(log["operationId"], "readCoreV1NamespacedPodLog");
        assert_eq!(
            log["responses"]["200"]["content"]["text/plain"]["schema"]["type"],
            "string"
        );
        assert!(params(log).contains(&"tailLines".to_owned()));
        // namespaces have no deletecollection.
        assert!(paths["/api/v1/namespaces"].get("delete").is_none());
        assert!(paths["/api/v1/namespaces"].get("post").is_some());
        let schemas = &v["components"]["schemas"];
        for kind in ["Pod", "Node", "Namespace"] {
            assert_eq!(
                schemas[format!("io.k8s.api.core.v1.{kind}")]["x-kubernetes-group-version-kind"][0]
                    ["kind"],
                kind
            );
        }
        assert!(schemas.get("io.k8s.api.apps.v1.ReplicaSet").is_none());
    }

    #[test]
    fn hash_changes_when_the_document_changes() {
        assert_ne!(content_hash(b"{}"), content_hash(b"{ }"));
        assert_eq!(content_hash(b"abc"), content_hash(b"abc"));
        // The served table, and the same without Deployments.
        let fewer: Vec<ResourceSpec> = RESOURCES
            .iter()
            .filter(|r| r.plural != "deployments")
            .copied()
            .collect();
        let base = OpenApiDocuments::build(&fewer);
        let again = OpenApiDocuments::build(&fewer);
        let hash = |d: &OpenApiDocuments, k: &str| d.document(k).map(|d| d.hash.clone());
        assert_eq!(
            hash(&base, "apis/apps/v1"),
            hash(&again, "apis/apps/v1"),
            "stable"
        );
        let table = RESOURCES.to_vec();
        let more = OpenApiDocuments::build(&table);
        assert_ne!(hash(&base, "apis/apps/v1"), hash(&more, "apis/apps/v1"));
        assert_eq!(hash(&base, "api/v1"), hash(&more, "api/v1"));
        let deploy = more
            .document("apis/apps/v1")
            .and_then(|d| serde_json::from_slice::<Value>(&d.body).ok())
            .unwrap_or(Value::Null);
        assert!(deploy["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
    }

    #[test]
    fn lookup_answers_index_documents_and_redirects() {
        let Some(d) = document("apis/apps/v1") else {
            panic!("no apps/v1 document");
        };
        assert!(matches!(
            lookup("/openapi/v3", None),
            Some(Answer::Ok {
                cache_control: CACHE_REVALIDATE,
                ..
            })
        ));
        assert!(matches!(
            lookup("/openapi/v3/apis/apps/v1", Some(&d.hash)),
            Some(Answer::Ok { cache_control: CACHE_IMMUTABLE, body, .. }) if body == d.body.as_slice()
        ));
        assert_eq!(
            lookup("/openapi/v3/apis/apps/v1", Some("0000")),
            Some(Answer::Redirect {
                location: &d.server_relative_url
            })
        );
        assert!(matches!(
            lookup("/openapi/v3/apis/apps/v1/", None),
            Some(Answer::Ok {
                cache_control: CACHE_REVALIDATE,
                ..
            })
        ));
        assert_eq!(lookup("/openapi/v3/apis/batch/v1", None), None);
        assert_eq!(lookup("/openapi/v3apis", None), None);
        assert_eq!(lookup("/openapi/v2", None), None);
    }

    #[test]
    fn v2_is_empty_protobuf_or_json() {
        let (ct, body) = openapi_v2(Some(
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        ));
        assert_eq!((ct, body.len()), (V2_PROTOBUF, 0));
        let (ct, body) = openapi_v2(Some("application/json"));
        assert_eq!(ct, CONTENT_TYPE);
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        assert_eq!(v["swagger"], "2.0");
    }

    #[test]
    fn operation_ids_name_the_group_like_kubernetes() {
        assert_eq!(group_ident(""), "Core");
        assert_eq!(group_ident("apps"), "Apps");
        assert_eq!(
            group_ident("rbac.authorization.k8s.io"),
            "RbacAuthorization"
        );
    }
}
