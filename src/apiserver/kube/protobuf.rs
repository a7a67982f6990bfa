//! The protobuf bodies kubectl's typed client sends (`application/vnd.kubernetes.protobuf`,
//! used by `kubectl create namespace`): Kubernetes' envelope (`k8s\0` + `runtime.Unknown`)
//! and the fields of the messages Miniku reads from it, turned into JSON for the same path
//! every other body takes. Owns only decoding; answers are always JSON (kubectl accepts it).

use prost::Message;
use serde_json::{json, Map, Value};

/// The content type of Kubernetes' protobuf encoding.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

/// `runtime.Unknown`: the envelope around every object.
#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(map = "string, string", tag = "11")]
    labels: std::collections::HashMap<String, String>,
    #[prost(map = "string, string", tag = "12")]
    annotations: std::collections::HashMap<String, String>,
}

/// Any object whose first field is its metadata (Namespace, and every kind Miniku serves).
#[derive(Clone, PartialEq, Message)]
struct WithMetadata {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
}

/// The kinds whose protobuf bodies are understood: only their metadata is read, so only
/// kinds whose create carries nothing else (a Namespace) are accepted.
const DECODABLE: &[&str] = &["Namespace"];

/// The JSON of a protobuf body, or why it cannot be read.
pub fn to_json(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("the protobuf body does not start with Kubernetes' k8s\\0 prefix")?;
    let unknown = Unknown::decode(rest).map_err(|e| format!("invalid protobuf envelope: {e}"))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    if !DECODABLE.contains(&kind.as_str()) {
        return Err(format!(
            "Miniku reads protobuf bodies only for {DECODABLE:?}, not {kind:?}: send JSON"
        ));
    }
    let obj = WithMetadata::decode(unknown.raw.unwrap_or_default().as_slice())
        .map_err(|e| format!("invalid protobuf {kind}: {e}"))?;
    let m = obj.metadata.unwrap_or_default();
    let mut meta = Map::new();
    for (k, v) in [
        ("name", m.name),
        ("generateName", m.generate_name),
        ("namespace", m.namespace),
    ] {
        if let Some(v) = v {
            meta.insert(k.into(), json!(v));
        }
    }
    if !m.labels.is_empty() {
        meta.insert("labels".into(), json!(m.labels));
    }
    if !m.annotations.is_empty() {
        meta.insert("annotations".into(), json!(m.annotations));
    }
    Ok(json!({"apiVersion": tm.api_version, "kind": kind, "metadata": meta}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_from_kubectl_create_namespace_decodes() {
        let ns = WithMetadata {
            metadata: Some(ObjectMeta {
                name: Some("team-a".into()),
                ..Default::default()
            }),
        };
        let env = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("Namespace".into()),
            }),
            raw: Some(ns.encode_to_vec()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(env.encode_to_vec());
        let v = to_json(&body).unwrap();
        assert_eq!(v["metadata"]["name"], "team-a");
        assert_eq!(v["kind"], "Namespace");
        assert!(to_json(b"nope").is_err());
    }
}
