//! The Kubernetes discovery documents Miniku serves, and the table they come from.
//!
//! This module owns:
//! - [`RESOURCES`], the one table of every resource the Kubernetes-style API serves (group,
//!   version, plural, kind, scope, short names, categories, verbs, subresources, and the
//!   schema of the kind). Routing, discovery and OpenAPI are all derived from it: serving a
//!   new resource starts with one entry there.
//! - `/version` ([`version_info`]).
//! - Legacy discovery: `/api` (APIVersions), `/apis` (APIGroupList), `/apis/{group}`
//!   (APIGroup), `/api/v1` and `/apis/{group}/{version}` (APIResourceList).
//! - Aggregated discovery (`apidiscovery.k8s.io` v2 and v2beta1 `APIGroupDiscoveryList`) for
//!   `/api` and `/apis`, and the `Accept` negotiation that picks between the two shapes
//!   ([`negotiate`]).
//!
//! It must not touch: storage, request routing beyond naming discovery paths, or any HTTP
//! framework. It answers with bytes and a content type ([`discovery_document`]); the caller's
//! handler writes them out. Every document is built once, on first use, from the table.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
    ListMeta, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::version::Info;
use schemars::{Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// The Kubernetes release whose API shapes Miniku speaks.
pub const KUBERNETES_MAJOR: &str = "1";
/// See [`KUBERNETES_MAJOR`]. kubectl's version dispatcher picks its bundled client by this.
pub const KUBERNETES_MINOR: &str = "33";
/// The Kubernetes patch release the API shapes come from (k8s-openapi's `v1_33`).
pub const KUBERNETES_PATCH: &str = "0";

/// Content type of every legacy discovery document and of `/version`.
pub const JSON: &str = "application/json";
/// Content type of an `apidiscovery.k8s.io/v2` aggregated discovery answer.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
/// Content type of an `apidiscovery.k8s.io/v2beta1` aggregated discovery answer.
pub const AGGREGATED_V2BETA1: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

/// Builds the (OpenAPI 3) schema of a kind into a generator and returns the reference to it.
/// `SchemaGenerator::subschema_for::<T>` is one.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// A Kubernetes API verb, as discovery spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    Create,
    Delete,
    DeleteCollection,
    Get,
    List,
    Patch,
    Update,
    Watch,
}

impl Verb {
    /// The verb's name in discovery documents (`deletecollection`, not `DeleteCollection`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Patch => "patch",
            Verb::Update => "update",
            Verb::Watch => "watch",
        }
    }
}

/// Every verb a fully served resource has, in the order Kubernetes lists them.
pub const ALL_VERBS: &[Verb] = &[
    Verb::Create,
    Verb::Delete,
    Verb::DeleteCollection,
    Verb::Get,
    Verb::List,
    Verb::Patch,
    Verb::Update,
    Verb::Watch,
];

/// The verbs of a `status` or `scale` subresource.
pub const GET_PATCH_UPDATE: &[Verb] = &[Verb::Get, Verb::Patch, Verb::Update];

/// A group, version and kind (`group` is `""` for the legacy core group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gvk {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
}

impl Gvk {
    /// `apiVersion` as objects carry it: `v1` for the core group, `apps/v1` otherwise.
    pub fn api_version(&self) -> String {
        group_version(self.group, self.version)
    }
}

/// What a subresource answers with.
#[derive(Clone, Copy, Debug)]
pub enum SubresourceKind {
    /// The parent resource's own kind (`pods/status` answers a Pod).
    Parent,
    /// Another kind (`replicasets/scale` answers an `autoscaling/v1` Scale).
    Other { gvk: Gvk, schema: SchemaFn },
}

/// One subresource of a served resource.
#[derive(Clone, Copy, Debug)]
pub struct SubresourceSpec {
    /// The name after the object's name in the path: `status`, `scale`.
    pub name: &'static str,
    pub kind: SubresourceKind,
    pub verbs: &'static [Verb],
}

/// One served resource: everything discovery, OpenAPI and routing need to know about it.
#[derive(Clone, Copy, Debug)]
pub struct ResourceSpec {
    /// API group; `""` is the legacy core group served under `/api`.
    pub group: &'static str,
    pub version: &'static str,
    /// The plural resource name used in paths: `pods`.
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub verbs: &'static [Verb],
    pub subresources: &'static [SubresourceSpec],
    /// The kind's schema (k8s-openapi's, through schemars).
    pub schema: SchemaFn,
}

impl ResourceSpec {
    /// The kind with its group and version.
    pub const fn gvk(&self) -> Gvk {
        Gvk {
            group: self.group,
            version: self.version,
            kind: self.kind,
        }
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        group_version(self.group, self.version)
    }

    /// Whether the resource itself (not a subresource) serves `verb`.
    pub fn has_verb(&self, verb: Verb) -> bool {
        self.verbs.contains(&verb)
    }

    /// The subresource named `name` (`status`, `scale`), if served.
    pub fn subresource(&self, name: &str) -> Option<&'static SubresourceSpec> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// The kind a subresource answers with.
    pub fn subresource_gvk(&self, sub: &SubresourceSpec) -> Gvk {
        match sub.kind {
            SubresourceKind::Parent => self.gvk(),
            SubresourceKind::Other { gvk, .. } => gvk,
        }
    }

    /// The path prefix of this resource's group-version: `/api/v1` or `/apis/apps/v1`.
    pub fn group_version_path(&self) -> String {
        group_version_path(self.group, self.version)
    }
}

const STATUS: SubresourceSpec = SubresourceSpec {
    name: "status",
    kind: SubresourceKind::Parent,
    verbs: GET_PATCH_UPDATE,
};

/// `pods/log`: a container's output (text), read through the pod's kubelet.
const LOG: SubresourceSpec = SubresourceSpec {
    name: "log",
    kind: SubresourceKind::Parent,
    verbs: &[Verb::Get],
};

const SCALE: SubresourceSpec = SubresourceSpec {
    name: "scale",
    kind: SubresourceKind::Other {
        gvk: Gvk {
            group: "autoscaling",
            version: "v1",
            kind: "Scale",
        },
        schema: SchemaGenerator::subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>,
    },
    verbs: GET_PATCH_UPDATE,
};

/// Every resource the Kubernetes API serves. Discovery and OpenAPI are generated from this
/// table alone, and routing may look resources up in it ([`find_resource`]).
pub const RESOURCES: &[ResourceSpec] = &[
    ResourceSpec {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        verbs: ALL_VERBS,
        subresources: &[LOG, STATUS],
        schema: SchemaGenerator::subschema_for::<k8s_openapi::api::core::v1::Pod>,
    },
    ResourceSpec {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        verbs: ALL_VERBS,
        subresources: &[STATUS],
        schema: SchemaGenerator::subschema_for::<k8s_openapi::api::core::v1::Node>,
    },
    ResourceSpec {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        verbs: &[
            Verb::Create,
            Verb::Delete,
            Verb::Get,
            Verb::List,
            Verb::Patch,
            Verb::Update,
            Verb::Watch,
        ],
        subresources: &[STATUS],
        schema: SchemaGenerator::subschema_for::<k8s_openapi::api::core::v1::Namespace>,
    },
    ResourceSpec {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        singular: "replicaset",
        kind: "ReplicaSet",
        namespaced: true,
        short_names: &["rs"],
        categories: &["all"],
        verbs: ALL_VERBS,
        subresources: &[SCALE, STATUS],
        schema: SchemaGenerator::subschema_for::<k8s_openapi::api::apps::v1::ReplicaSet>,
    },
    ResourceSpec {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: &["all"],
        verbs: ALL_VERBS,
        subresources: &[SCALE, STATUS],
        schema: SchemaGenerator::subschema_for::<k8s_openapi::api::apps::v1::Deployment>,
    },
    // Events: what the components say happened to each object (they expire after an hour).
    ResourceSpec {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        verbs: ALL_VERBS,
        subresources: &[],
        schema: SchemaGenerator::subschema_for::<k8s_openapi::api::core::v1::Event>,
    },
    // Services, and the EndpointSlices the endpoints controller keeps for them (read-only
    // through the API).
    ResourceSpec {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        verbs: ALL_VERBS,
        subresources: &[STATUS],
        schema: SchemaGenerator::subschema_for::<k8s_openapi::api::core::v1::Service>,
    },
    ResourceSpec {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        verbs: &[Verb::Get, Verb::List, Verb::Watch],
        subresources: &[],
        schema: SchemaGenerator::subschema_for::<k8s_openapi::api::discovery::v1::EndpointSlice>,
    },
];

/// The served resource `plural` in `group`/`version`, if any.
pub fn find_resource(group: &str, version: &str, plural: &str) -> Option<&'static ResourceSpec> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// `v1` for the core group, `group/version` otherwise.
pub fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// `/api/v1` for the core group, `/apis/group/version` otherwise.
pub fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

// ---------------------------------------------------------------------------------------------
// /version

/// The `gitVersion` Miniku reports: the Kubernetes release it speaks, with Miniku's own
/// version as semver build metadata (which does not change the release it names).
pub fn git_version() -> String {
    format!(
        "v{KUBERNETES_MAJOR}.{KUBERNETES_MINOR}.{KUBERNETES_PATCH}+miniku.{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The `/version` document. `major`/`minor` are what clients (and kubectl's version
/// dispatcher) read; the free-form fields say that this is Miniku, built with Rust.
pub fn version_info() -> Info {
    Info {
        major: KUBERNETES_MAJOR.to_owned(),
        minor: KUBERNETES_MINOR.to_owned(),
        git_version: git_version(),
        git_commit: option_env!("MINIKU_GIT_COMMIT")
            .unwrap_or("unknown")
            .to_owned(),
        git_tree_state: option_env!("MINIKU_GIT_TREE_STATE")
            .unwrap_or("clean")
            .to_owned(),
        build_date: option_env!("MINIKU_BUILD_DATE")
            .unwrap_or("unknown")
            .to_owned(),
        go_version: "none (Miniku is written in Rust)".to_owned(),
        compiler: "rustc".to_owned(),
        platform: format!("{}/{}", go_os(), go_arch()),
        ..Info::default()
    }
}

/// The operating system as Go (and so Kubernetes) names it.
fn go_os() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    }
}

/// The architecture as Go names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Aggregated discovery: apidiscovery.k8s.io (k8s-openapi has no types for it)

/// `apidiscovery.k8s.io/v2` (or `v2beta1`) `APIGroupDiscoveryList`: the answer to `/api` or
/// `/apis` when a client asks for aggregated discovery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct APIGroupDiscoveryList {
    pub kind: String,
    pub api_version: String,
    pub metadata: ListMeta,
    pub items: Vec<APIGroupDiscovery>,
}

/// One group (`metadata.name`; absent for the core group) and its versions, preferred first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct APIGroupDiscovery {
    pub metadata: ObjectMeta,
    pub versions: Vec<APIVersionDiscovery>,
}

/// The resources of one version of a group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct APIVersionDiscovery {
    pub version: String,
    pub resources: Vec<APIResourceDiscovery>,
    /// `Current`, or `Stale` for an aggregated API server that could not be reached.
    pub freshness: String,
}

/// One resource of a group-version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct APIResourceDiscovery {
    pub resource: String,
    pub response_kind: GroupVersionKind,
    /// `Namespaced` or `Cluster`.
    pub scope: String,
    pub singular_resource: String,
    pub verbs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub short_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subresources: Vec<APISubresourceDiscovery>,
}

/// One subresource of a resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct APISubresourceDiscovery {
    pub subresource: String,
    pub response_kind: GroupVersionKind,
    pub verbs: Vec<String>,
}

/// `responseKind` of aggregated discovery (`group` is `""` for the core group).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionKind {
    pub group: String,
    pub version: String,
    pub kind: String,
}

impl From<Gvk> for GroupVersionKind {
    fn from(g: Gvk) -> Self {
        GroupVersionKind {
            group: g.group.to_owned(),
            version: g.version.to_owned(),
            kind: g.kind.to_owned(),
        }
    }
}

/// The `apidiscovery.k8s.io` version of an aggregated discovery answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggregatedVersion {
    V2,
    V2Beta1,
}

impl AggregatedVersion {
    /// `v2` or `v2beta1`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AggregatedVersion::V2 => "v2",
            AggregatedVersion::V2Beta1 => "v2beta1",
        }
    }

    /// The content type to answer with.
    pub const fn content_type(self) -> &'static str {
        match self {
            AggregatedVersion::V2 => AGGREGATED_V2,
            AggregatedVersion::V2Beta1 => AGGREGATED_V2BETA1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Accept negotiation

/// Which shape of discovery document a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscoveryFormat {
    /// An `APIGroupDiscoveryList` of this `apidiscovery.k8s.io` version.
    Aggregated(AggregatedVersion),
    /// The legacy per-path documents, as plain `application/json`.
    Legacy,
}

impl DiscoveryFormat {
    /// The content type to answer with.
    pub const fn content_type(self) -> &'static str {
        match self {
            DiscoveryFormat::Aggregated(v) => v.content_type(),
            DiscoveryFormat::Legacy => JSON,
        }
    }
}

/// Why a discovery request cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// Nothing in the `Accept` header is a type this server produces (answer 406).
    #[error("none of the media types in Accept ({accept}) can be served; this server serves {JSON}, {AGGREGATED_V2} and {AGGREGATED_V2BETA1}")]
    NotAcceptable { accept: String },
}

/// Picks the discovery format for a request from its `Accept` header.
///
/// `aggregated_allowed` is true for `/api` and `/apis`, the only paths aggregated discovery
/// exists for. Media ranges are tried by descending `q` (then in the order given); the first
/// one this server can produce wins. A missing or empty header means plain JSON. Protobuf and
/// other types (`as=Table`, YAML) are skipped; if nothing is left the answer is
/// [`DiscoveryError::NotAcceptable`].
pub fn negotiate(
    accept: Option<&str>,
    aggregated_allowed: bool,
) -> Result<DiscoveryFormat, DiscoveryError> {
    let Some(header) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(DiscoveryFormat::Legacy);
    };
    let mut ranges: Vec<MediaRange<'_>> = header.split(',').filter_map(MediaRange::parse).collect();
    // Stable: equal q keeps the client's order.
    ranges.sort_by(|a, b| b.q.total_cmp(&a.q));
    for range in ranges.iter().filter(|r| r.q > 0.0) {
        if let Some(format) = range.format(aggregated_allowed) {
            return Ok(format);
        }
    }
    Err(DiscoveryError::NotAcceptable {
        accept: header.to_owned(),
    })
}

/// One element of an `Accept` header.
struct MediaRange<'a> {
    main: &'a str,
    sub: &'a str,
    params: Vec<(&'a str, &'a str)>,
    q: f32,
}

impl<'a> MediaRange<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.split(';');
        let mime = parts.next()?.trim();
        let (main, sub) = mime.split_once('/')?;
        let mut params = Vec::new();
        let mut q = 1.0_f32;
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim().trim_matches('"'));
            if k.eq_ignore_ascii_case("q") {
                // An unreadable q is taken as 0: never chosen.
                q = v
                    .parse::<f32>()
                    .ok()
                    .filter(|q| q.is_finite())
                    .unwrap_or(0.0);
            } else {
                params.push((k, v));
            }
        }
        Some(MediaRange {
            main: main.trim(),
            sub: sub.trim(),
            params,
            q,
        })
    }

    fn param(&self, name: &str) -> Option<&'a str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    fn format(&self, aggregated_allowed: bool) -> Option<DiscoveryFormat> {
        let json_like = (self.main.eq_ignore_ascii_case("application")
            && (self.sub.eq_ignore_ascii_case("json") || self.sub == "*"))
            || (self.main == "*" && self.sub == "*");
        if !json_like {
            return None;
        }
        let (g, v, as_) = (self.param("g"), self.param("v"), self.param("as"));
        if g.is_none() && v.is_none() && as_.is_none() {
            return Some(DiscoveryFormat::Legacy);
        }
        if !aggregated_allowed
            || g != Some("apidiscovery.k8s.io")
            || as_ != Some("APIGroupDiscoveryList")
        {
            return None;
        }
        match v {
            Some("v2") => Some(DiscoveryFormat::Aggregated(AggregatedVersion::V2)),
            Some("v2beta1") => Some(DiscoveryFormat::Aggregated(AggregatedVersion::V2Beta1)),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building the documents

/// A group and its versions, preferred version first.
struct GroupVersions<'t> {
    group: &'static str,
    /// (version, resources of that version sorted by plural).
    versions: Vec<(&'static str, Vec<&'t ResourceSpec>)>,
}

/// The table grouped: groups in order of first appearance (core first, if present), each
/// group's versions by Kubernetes' version priority.
fn grouped(resources: &[ResourceSpec]) -> Vec<GroupVersions<'_>> {
    let mut groups: Vec<GroupVersions<'_>> = Vec::new();
    for r in resources {
        let idx = match groups.iter().position(|g| g.group == r.group) {
            Some(i) => i,
            None => {
                groups.push(GroupVersions {
                    group: r.group,
                    versions: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let Some(g) = groups.get_mut(idx) else {
            continue;
        };
        match g.versions.iter_mut().find(|(v, _)| *v == r.version) {
            Some((_, list)) => list.push(r),
            None => g.versions.push((r.version, vec![r])),
        }
    }
    for g in &mut groups {
        g.versions
            .sort_by_key(|(v, _)| std::cmp::Reverse(version_priority(v)));
        for (_, list) in &mut g.versions {
            list.sort_by_key(|r| r.plural);
        }
    }
    groups.sort_by_key(|g| !g.group.is_empty());
    groups
}

/// Kubernetes' ordering of version names: GA above beta above alpha, higher numbers first;
/// names of another form come last.
fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (major, tail) = rest.split_at(digits_end);
    let Ok(major) = major.parse::<u32>() else {
        return (0, 0, 0);
    };
    if tail.is_empty() {
        return (3, major, 0);
    }
    let (level, num) = if let Some(n) = tail.strip_prefix("beta") {
        (2, n)
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n)
    } else {
        return (0, 0, 0);
    };
    match num.parse::<u32>() {
        Ok(n) => (level, major, n),
        Err(_) => (0, 0, 0),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn verb_strings(verbs: &[Verb]) -> Vec<String> {
    verbs.iter().map(|v| v.as_str().to_owned()).collect()
}

fn scope(r: &ResourceSpec) -> String {
    if r.namespaced {
        "Namespaced"
    } else {
        "Cluster"
    }
    .to_owned()
}

/// The aggregated discovery list of the core group (`core == true`, for `/api`) or of all
/// named groups (`/apis`).
pub fn aggregated_list(
    resources: &[ResourceSpec],
    core: bool,
    version: AggregatedVersion,
) -> APIGroupDiscoveryList {
    let items = grouped(resources)
        .into_iter()
        .filter(|g| g.group.is_empty() == core)
        .map(|g| APIGroupDiscovery {
            metadata: ObjectMeta {
                name: (!g.group.is_empty()).then(|| g.group.to_owned()),
                ..ObjectMeta::default()
            },
            versions: g
                .versions
                .iter()
                .map(|(v, list)| APIVersionDiscovery {
                    version: (*v).to_owned(),
                    resources: list.iter().map(|r| resource_discovery(r)).collect(),
                    freshness: "Current".to_owned(),
                })
                .collect(),
        })
        .collect();
    APIGroupDiscoveryList {
        kind: "APIGroupDiscoveryList".to_owned(),
        api_version: format!("apidiscovery.k8s.io/{}", version.as_str()),
        metadata: ListMeta::default(),
        items,
    }
}

fn resource_discovery(r: &ResourceSpec) -> APIResourceDiscovery {
    let mut subresources: Vec<APISubresourceDiscovery> = r
        .subresources
        .iter()
        .map(|s| APISubresourceDiscovery {
            subresource: s.name.to_owned(),
            response_kind: r.subresource_gvk(s).into(),
            verbs: verb_strings(s.verbs),
        })
        .collect();
    subresources.sort_by(|a, b| a.subresource.cmp(&b.subresource));
    APIResourceDiscovery {
        resource: r.plural.to_owned(),
        response_kind: r.gvk().into(),
        scope: scope(r),
        singular_resource: r.singular.to_owned(),
        verbs: verb_strings(r.verbs),
        short_names: strings(r.short_names),
        categories: strings(r.categories),
        subresources,
    }
}

/// Legacy `/api`: the core group's versions.
pub fn api_versions(resources: &[ResourceSpec]) -> APIVersions {
    let versions = grouped(resources)
        .into_iter()
        .filter(|g| g.group.is_empty())
        .flat_map(|g| g.versions.into_iter().map(|(v, _)| v.to_owned()))
        .collect();
    APIVersions {
        // Which address to reach the server at is the caller's to know; none is advertised.
        server_address_by_client_cidrs: Vec::new(),
        versions,
    }
}

fn api_group(g: &GroupVersions<'_>) -> APIGroup {
    let versions: Vec<GroupVersionForDiscovery> = g
        .versions
        .iter()
        .map(|(v, _)| GroupVersionForDiscovery {
            group_version: group_version(g.group, v),
            version: (*v).to_owned(),
        })
        .collect();
    APIGroup {
        name: g.group.to_owned(),
        preferred_version: versions.first().cloned(),
        server_address_by_client_cidrs: None,
        versions,
    }
}

/// Legacy `/apis`: every named group.
pub fn api_group_list(resources: &[ResourceSpec]) -> APIGroupList {
    APIGroupList {
        groups: grouped(resources)
            .iter()
            .filter(|g| !g.group.is_empty())
            .map(api_group)
            .collect(),
    }
}

/// Legacy `/apis/{group}`, if the group is served.
pub fn api_group_document(resources: &[ResourceSpec], group: &str) -> Option<APIGroup> {
    grouped(resources)
        .iter()
        .find(|g| !g.group.is_empty() && g.group == group)
        .map(api_group)
}

/// Legacy `/api/v1` or `/apis/{group}/{version}`: the resources of one group-version, each
/// subresource listed as `plural/sub`.
pub fn api_resource_list(
    resources: &[ResourceSpec],
    group: &str,
    version: &str,
) -> Option<APIResourceList> {
    let mut list: Vec<&ResourceSpec> = resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if list.is_empty() {
        return None;
    }
    list.sort_by_key(|r| r.plural);
    let mut out = Vec::new();
    for r in list {
        out.push(APIResource {
            name: r.plural.to_owned(),
            singular_name: r.singular.to_owned(),
            namespaced: r.namespaced,
            group: None,
            version: None,
            kind: r.kind.to_owned(),
            verbs: verb_strings(r.verbs),
            short_names: (!r.short_names.is_empty()).then(|| strings(r.short_names)),
            categories: (!r.categories.is_empty()).then(|| strings(r.categories)),
            storage_version_hash: None,
        });
        let mut subs: Vec<&SubresourceSpec> = r.subresources.iter().collect();
        subs.sort_by_key(|s| s.name);
        for s in subs {
            let gvk = r.subresource_gvk(s);
            let other = matches!(s.kind, SubresourceKind::Other { .. });
            out.push(APIResource {
                name: format!("{}/{}", r.plural, s.name),
                singular_name: String::new(),
                namespaced: r.namespaced,
                group: other.then(|| gvk.group.to_owned()),
                version: other.then(|| gvk.version.to_owned()),
                kind: gvk.kind.to_owned(),
                verbs: verb_strings(s.verbs),
                short_names: None,
                categories: None,
                storage_version_hash: None,
            });
        }
    }
    Some(APIResourceList {
        group_version: group_version(group, version),
        resources: out,
    })
}

// ---------------------------------------------------------------------------------------------
// Serving

/// A discovery answer: the bytes to send and their content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Document<'a> {
    pub content_type: &'static str,
    pub body: &'a [u8],
    /// True where the answer depends on `Accept` (`/api`, `/apis`): send `Vary: Accept`.
    pub vary_accept: bool,
}

/// Every discovery document, serialized once.
#[derive(Debug, Default)]
pub struct DiscoveryDocuments {
    version: Vec<u8>,
    api_legacy: Vec<u8>,
    api_v2: Vec<u8>,
    api_v2beta1: Vec<u8>,
    apis_legacy: Vec<u8>,
    apis_v2: Vec<u8>,
    apis_v2beta1: Vec<u8>,
    /// `/apis/{group}` and every group-version path (`/api/v1`, `/apis/apps/v1`).
    others: BTreeMap<String, Vec<u8>>,
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // These are plain structs of strings, vectors and string-keyed maps: serializing them
    // cannot fail.
    serde_json::to_vec(value).expect("discovery documents serialize to JSON")
}

impl DiscoveryDocuments {
    /// Builds every document for `resources`.
    pub fn build(resources: &[ResourceSpec]) -> Self {
        let mut others = BTreeMap::new();
        for g in grouped(resources) {
            if !g.group.is_empty() {
                others.insert(format!("/apis/{}", g.group), to_json(&api_group(&g)));
            }
            for (v, _) in &g.versions {
                if let Some(list) = api_resource_list(resources, g.group, v) {
                    others.insert(group_version_path(g.group, v), to_json(&list));
                }
            }
        }
        DiscoveryDocuments {
            version: to_json(&version_info()),
            api_legacy: to_json(&api_versions(resources)),
            api_v2: to_json(&aggregated_list(resources, true, AggregatedVersion::V2)),
            api_v2beta1: to_json(&aggregated_list(
                resources,
                true,
                AggregatedVersion::V2Beta1,
            )),
            apis_legacy: to_json(&api_group_list(resources)),
            apis_v2: to_json(&aggregated_list(resources, false, AggregatedVersion::V2)),
            apis_v2beta1: to_json(&aggregated_list(
                resources,
                false,
                AggregatedVersion::V2Beta1,
            )),
            others,
        }
    }

    /// The answer to `GET path` with this `Accept` header. `Ok(None)`: not a discovery path
    /// (let other routes, or a 404, have it). A single trailing `/` is ignored.
    pub fn get<'s>(
        &'s self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Option<Document<'s>>, DiscoveryError> {
        let path = match path.strip_suffix('/') {
            Some(p) if !p.is_empty() => p,
            _ => path,
        };
        let (legacy, v2, v2beta1) = match path {
            "/version" => {
                return Ok(Some(Document {
                    content_type: JSON,
                    body: &self.version,
                    vary_accept: false,
                }))
            }
            "/api" => (&self.api_legacy, &self.api_v2, &self.api_v2beta1),
            "/apis" => (&self.apis_legacy, &self.apis_v2, &self.apis_v2beta1),
            other => {
                let Some(body) = self.others.get(other) else {
                    return Ok(None);
                };
                negotiate(accept, false)?;
                return Ok(Some(Document {
                    content_type: JSON,
                    body,
                    vary_accept: false,
                }));
            }
        };
        let format = negotiate(accept, true)?;
        let body = match format {
            DiscoveryFormat::Legacy => legacy,
            DiscoveryFormat::Aggregated(AggregatedVersion::V2) => v2,
            DiscoveryFormat::Aggregated(AggregatedVersion::V2Beta1) => v2beta1,
        };
        Ok(Some(Document {
            content_type: format.content_type(),
            body,
            vary_accept: true,
        }))
    }

    /// Every path this set answers (for route registration).
    pub fn paths(&self) -> Vec<String> {
        let mut out = vec!["/version".to_owned(), "/api".to_owned(), "/apis".to_owned()];
        out.extend(self.others.keys().cloned());
        out
    }
}

/// The documents of [`RESOURCES`], built on first use.
pub fn documents() -> &'static DiscoveryDocuments {
    static DOCS: OnceLock<DiscoveryDocuments> = OnceLock::new();
    DOCS.get_or_init(|| DiscoveryDocuments::build(RESOURCES))
}

/// The answer to `GET path` (`/version`, `/api`, `/apis`, `/apis/apps`, `/api/v1`,
/// `/apis/apps/v1`) for a request with this `Accept` header, from [`RESOURCES`].
///
/// `Ok(None)`: not a discovery path. `Err(NotAcceptable)`: answer 406.
pub fn discovery_document(
    path: &str,
    accept: Option<&str>,
) -> Result<Option<Document<'static>>, DiscoveryError> {
    documents().get(path, accept)
}

/// Every discovery path of [`RESOURCES`].
pub fn discovery_paths() -> Vec<String> {
    documents().paths()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn json(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    }

    fn doc(path: &str, accept: Option<&str>) -> Document<'static> {
        match discovery_document(path, accept) {
            Ok(Some(d)) => d,
            other => panic!("{path} with {accept:?}: {other:?}"),
        }
    }

    const KUBECTL_ACCEPT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";

    #[test]
    fn negotiation_picks_aggregated_v2_then_v2beta1_then_legacy() {
        assert_eq!(
            negotiate(Some(KUBECTL_ACCEPT), true),
            Ok(DiscoveryFormat::Aggregated(AggregatedVersion::V2))
        );
        assert_eq!(
            negotiate(
                Some("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"),
                true
            ),
            Ok(DiscoveryFormat::Aggregated(AggregatedVersion::V2Beta1))
        );
        // Only /api and /apis have an aggregated shape.
        assert_eq!(
            negotiate(Some(KUBECTL_ACCEPT), false),
            Ok(DiscoveryFormat::Legacy)
        );
        assert_eq!(negotiate(None, true), Ok(DiscoveryFormat::Legacy));
        assert_eq!(negotiate(Some("*/*"), true), Ok(DiscoveryFormat::Legacy));
        // q wins over order.
        assert_eq!(
            negotiate(
                Some("application/json;q=0.5,application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"),
                true
            ),
            Ok(DiscoveryFormat::Aggregated(AggregatedVersion::V2))
        );
        // Protobuf only, an unknown discovery version, or q=0: nothing to serve.
        for accept in [
            "application/vnd.kubernetes.protobuf",
            "application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList",
            "application/json;q=0",
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        ] {
            assert!(
                matches!(
                    negotiate(Some(accept), true),
                    Err(DiscoveryError::NotAcceptable { .. })
                ),
                "{accept}"
            );
        }
    }

    #[test]
    fn aggregated_api_lists_pods_with_short_name_category_and_status() {
        let d = doc("/api", Some(KUBECTL_ACCEPT));
        assert_eq!(d.content_type, AGGREGATED_V2);
        assert!(d.vary_accept);
        let v = json(d.body);
        assert_eq!(v["kind"], "APIGroupDiscoveryList");
        assert_eq!(v["apiVersion"], "apidiscovery.k8s.io/v2");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        assert_eq!(items.len(), 1, "only the core group under /api");
        assert!(items[0]["metadata"].get("name").is_none());
        let version = &items[0]["versions"][0];
        assert_eq!(version["version"], "v1");
        assert_eq!(version["freshness"], "Current");
        let resources = version["resources"].as_array().cloned().unwrap_or_default();
        let pods = resources
            .iter()
            .find(|r| r["resource"] == "pods")
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(pods["shortNames"], serde_json::json!(["po"]));
        assert_eq!(pods["categories"], serde_json::json!(["all"]));
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["singularResource"], "pod");
        assert_eq!(
            pods["responseKind"],
            serde_json::json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        assert_eq!(pods["subresources"][0]["subresource"], "log");
        assert_eq!(pods["subresources"][0]["verbs"], serde_json::json!(["get"]));
        assert_eq!(pods["subresources"][1]["subresource"], "status");
        assert_eq!(
            pods["subresources"][1]["verbs"],
            serde_json::json!(["get", "patch", "update"])
        );
        let ns = resources
            .iter()
            .find(|r| r["resource"] == "namespaces")
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(ns["scope"], "Cluster");
        assert!(ns.get("categories").is_none(), "empty lists are left out");
        assert!(!ns["verbs"]
            .as_array()
            .is_some_and(|v| v.contains(&"deletecollection".into())));
    }

    #[test]
    fn aggregated_apis_has_apps_with_scale_from_autoscaling() {
        let v = json(doc("/apis", Some(AGGREGATED_V2BETA1)).body);
        assert_eq!(v["apiVersion"], "apidiscovery.k8s.io/v2beta1");
        let apps = &v["items"][0];
        assert_eq!(apps["metadata"]["name"], "apps");
        let rs = apps["versions"][0]["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["resource"] == "replicasets"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(rs["resource"], "replicasets");
        assert_eq!(rs["shortNames"], serde_json::json!(["rs"]));
        let scale = &rs["subresources"][0];
        assert_eq!(scale["subresource"], "scale");
        assert_eq!(
            scale["responseKind"],
            serde_json::json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
    }

    #[test]
    fn legacy_documents() {
        let d = doc("/api", Some("application/json"));
        assert_eq!(d.content_type, JSON);
        let v = json(d.body);
        assert_eq!(v["kind"], "APIVersions");
        assert_eq!(v["versions"], serde_json::json!(["v1"]));

        let v = json(doc("/apis", None).body);
        assert_eq!(v["kind"], "APIGroupList");
        assert_eq!(v["groups"][0]["name"], "apps");
        assert_eq!(
            v["groups"][0]["preferredVersion"]["groupVersion"],
            "apps/v1"
        );

        let v = json(doc("/apis/apps/", None).body);
        assert_eq!(v["kind"], "APIGroup");
        assert_eq!(v["versions"][0]["version"], "v1");

        let v = json(doc("/api/v1", Some(KUBECTL_ACCEPT)).body);
        assert_eq!(v["kind"], "APIResourceList");
        assert_eq!(v["groupVersion"], "v1");
        let names: Vec<&str> = v["resources"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            names,
            [
                "events",
                "namespaces",
                "namespaces/status",
                "nodes",
                "nodes/status",
                "pods",
                "pods/log",
                "pods/status",
                "services",
                "services/status"
            ]
        );
        assert_eq!(v["resources"][5]["shortNames"], serde_json::json!(["po"]));
        assert_eq!(v["resources"][3]["namespaced"], false);

        let v = json(doc("/apis/apps/v1", None).body);
        let scale = v["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == "replicasets/scale"))
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["version"], "v1");
        assert_eq!(scale["kind"], "Scale");
    }

    #[test]
    fn unknown_paths_and_unacceptable_types() {
        assert_eq!(discovery_document("/apis/batch/v1", None), Ok(None));
        assert_eq!(discovery_document("/api/v1/pods", None), Ok(None));
        assert!(discovery_document("/api", Some("application/vnd.kubernetes.protobuf")).is_err());
    }

    #[test]
    fn version_says_1_33_and_miniku() {
        let v = json(doc("/version", None).body);
        assert_eq!(v["major"], "1");
        assert_eq!(v["minor"], "33");
        let git = v["gitVersion"].as_str().unwrap_or_default();
        assert!(git.starts_with("v1.33.0+miniku."), "{git}");
        assert!(v["platform"].as_str().is_some_and(|p| p.contains('/')));
    }

    #[test]
    fn a_new_table_entry_shows_up_everywhere() {
        let mut table = RESOURCES.to_vec();
        table.push(ResourceSpec {
            group: "apps",
            version: "v1",
            plural: "deployments",
            singular: "deployment",
            kind: "Deployment",
            namespaced: true,
            short_names: &["deploy"],
            categories: &["all"],
            verbs: ALL_VERBS,
            subresources: &[SCALE, STATUS],
            schema: SchemaGenerator::subschema_for::<k8s_openapi::api::apps::v1::Deployment>,
        });
        table.push(ResourceSpec {
            group: "batch",
            version: "v1beta1",
            plural: "jobs",
            singular: "job",
            kind: "Job",
            namespaced: true,
            short_names: &[],
            categories: &[],
            verbs: ALL_VERBS,
            subresources: &[],
            schema: SchemaGenerator::subschema_for::<k8s_openapi::api::batch::v1::Job>,
        });
        table.push(ResourceSpec {
            version: "v1",
            ..table[table.len() - 1]
        });
        let docs = DiscoveryDocuments::build(&table);
        let apps = docs.get("/apis/apps/v1", None);
        let body = match apps {
            Ok(Some(d)) => json(d.body),
            other => panic!("{other:?}"),
        };
        assert_eq!(body["resources"][0]["name"], "deployments");
        let groups = api_group_list(&table);
        let batch = groups
            .groups
            .iter()
            .find(|g| g.name == "batch")
            .expect("the batch group");
        assert_eq!(batch.name, "batch");
        assert_eq!(
            batch.preferred_version.as_ref().map(|p| p.version.as_str()),
            Some("v1"),
            "GA is preferred over beta"
        );
        assert!(docs
            .get("/apis/batch/v1beta1", None)
            .is_ok_and(|d| d.is_some()));
    }

    #[test]
    fn version_priority_orders_like_kubernetes() {
        let mut vs = ["v1alpha1", "v1", "v2beta1", "v1beta2", "v2", "foo", "v10"];
        vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(
            vs,
            ["v10", "v2", "v1", "v2beta1", "v1beta2", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn table_lookup() {
        let rs = find_resource("apps", "v1", "replicasets");
        assert!(rs.is_some_and(|r| r.kind == "ReplicaSet" && r.has_verb(Verb::Patch)));
        let scale = rs.and_then(|r| r.subresource("scale").map(|s| r.subresource_gvk(s)));
        assert_eq!(
            scale.map(|g| g.api_version()),
            Some("autoscaling/v1".to_owned())
        );
        assert!(find_resource("", "v1", "replicasets").is_none());
        assert_eq!(
            find_resource("", "v1", "pods").map(|r| r.group_version_path()),
            Some("/api/v1".to_owned())
        );
    }
}
