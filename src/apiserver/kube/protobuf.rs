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

/// The kinds whose protobuf bodies are understood: a Namespace (only its metadata is read)
/// and a Service (`kubectl create service`: metadata and spec).
const DECODABLE: &[&str] = &["Namespace", "Service"];

// A v1 Service's spec, as `kubectl create service` sends it (fields of core/v1's
// generated.proto; status is not read).

#[derive(Clone, PartialEq, Message)]
struct IntOrString {
    /// 0: intVal, 1: strVal.
    #[prost(int64, optional, tag = "1")]
    type_: Option<i64>,
    #[prost(int32, optional, tag = "2")]
    int_val: Option<i32>,
    #[prost(string, optional, tag = "3")]
    str_val: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ServicePort {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    protocol: Option<String>,
    #[prost(int32, optional, tag = "3")]
    port: Option<i32>,
    #[prost(message, optional, tag = "4")]
    target_port: Option<IntOrString>,
    #[prost(int32, optional, tag = "5")]
    node_port: Option<i32>,
    #[prost(string, optional, tag = "6")]
    app_protocol: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceSpec {
    #[prost(message, repeated, tag = "1")]
    ports: Vec<ServicePort>,
    #[prost(map = "string, string", tag = "2")]
    selector: std::collections::HashMap<String, String>,
    #[prost(string, optional, tag = "3")]
    cluster_ip: Option<String>,
    #[prost(string, optional, tag = "4")]
    type_: Option<String>,
    #[prost(string, repeated, tag = "5")]
    external_ips: Vec<String>,
    #[prost(string, optional, tag = "7")]
    session_affinity: Option<String>,
    #[prost(string, optional, tag = "10")]
    external_name: Option<String>,
    #[prost(string, repeated, tag = "18")]
    cluster_ips: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Service {
    #[prost(message, optional, tag = "2")]
    spec: Option<ServiceSpec>,
}

/// Inserts `v` under `k` unless it is empty (Go's protobuf writes empty strings and zeros
/// that its JSON would have left out).
fn put_str(m: &mut Map<String, Value>, k: &str, v: Option<String>) {
    if let Some(v) = v.filter(|v| !v.is_empty()) {
        m.insert(k.into(), json!(v));
    }
}

fn service_spec_json(spec: ServiceSpec) -> Value {
    let mut out = Map::new();
    let ports: Vec<Value> = spec
        .ports
        .into_iter()
        .map(|p| {
            let mut m = Map::new();
            put_str(&mut m, "name", p.name);
            put_str(&mut m, "protocol", p.protocol);
            put_str(&mut m, "appProtocol", p.app_protocol);
            m.insert("port".into(), json!(p.port.unwrap_or(0)));
            match p.target_port {
                Some(t) if t.type_ == Some(1) => put_str(&mut m, "targetPort", t.str_val),
                Some(t) if t.int_val.unwrap_or(0) != 0 => {
                    m.insert("targetPort".into(), json!(t.int_val));
                }
                _ => {}
            }
            if let Some(n) = p.node_port.filter(|n| *n != 0) {
                m.insert("nodePort".into(), json!(n));
            }
            Value::Object(m)
        })
        .collect();
    if !ports.is_empty() {
        out.insert("ports".into(), json!(ports));
    }
    if !spec.selector.is_empty() {
        out.insert("selector".into(), json!(spec.selector));
    }
    put_str(&mut out, "clusterIP", spec.cluster_ip);
    put_str(&mut out, "type", spec.type_);
    put_str(&mut out, "sessionAffinity", spec.session_affinity);
    put_str(&mut out, "externalName", spec.external_name);
    if !spec.external_ips.is_empty() {
        out.insert("externalIPs".into(), json!(spec.external_ips));
    }
    if !spec.cluster_ips.is_empty() {
        out.insert("clusterIPs".into(), json!(spec.cluster_ips));
    }
    Value::Object(out)
}

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
    let raw = unknown.raw.unwrap_or_default();
    let obj = WithMetadata::decode(raw.as_slice())
        .map_err(|e| format!("invalid protobuf {kind}: {e}"))?;
    let spec = match kind.as_str() {
        "Service" => Service::decode(raw.as_slice())
            .map_err(|e| format!("invalid protobuf {kind}: {e}"))?
            .spec
            .map(service_spec_json),
        _ => None,
    };
    let m = obj.metadata.unwrap_or_default();
    let mut meta = Map::new();
    for (k, v) in [
        ("name", m.name),
        ("generateName", m.generate_name),
        ("namespace", m.namespace),
    ] {
        // Go's protobuf writes an unset string as "" (a Service's namespace, say).
        put_str(&mut meta, k, v);
    }
    if !m.labels.is_empty() {
        meta.insert("labels".into(), json!(m.labels));
    }
    if !m.annotations.is_empty() {
        meta.insert("annotations".into(), json!(m.annotations));
    }
    let mut out = json!({"apiVersion": tm.api_version, "kind": kind, "metadata": meta});
    if let Some(spec) = spec {
        out["spec"] = spec;
    }
    Ok(out)
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

    #[test]
    fn a_service_from_kubectl_create_service_decodes_with_its_spec() {
        #[derive(Clone, PartialEq, Message)]
        struct Whole {
            #[prost(message, optional, tag = "1")]
            metadata: Option<ObjectMeta>,
            #[prost(message, optional, tag = "2")]
            spec: Option<ServiceSpec>,
        }
        let svc = Whole {
            metadata: Some(ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            }),
            spec: Some(ServiceSpec {
                ports: vec![ServicePort {
                    name: Some("80-8080".into()),
                    protocol: Some("TCP".into()),
                    port: Some(80),
                    target_port: Some(IntOrString {
                        type_: Some(0),
                        int_val: Some(8080),
                        str_val: Some(String::new()),
                    }),
                    node_port: Some(30080),
                    app_protocol: None,
                }],
                selector: [("app".to_string(), "web".to_string())].into(),
                cluster_ip: Some(String::new()),
                type_: Some("NodePort".into()),
                session_affinity: Some(String::new()),
                ..Default::default()
            }),
        };
        let env = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
            }),
            raw: Some(svc.encode_to_vec()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(env.encode_to_vec());
        let v = to_json(&body).unwrap();
        assert_eq!(
            v["spec"],
            json!({"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80,
                              "targetPort": 8080, "nodePort": 30080}],
                   "selector": {"app": "web"}, "type": "NodePort"})
        );
        assert_eq!(v["metadata"]["name"], "web");
    }
}
