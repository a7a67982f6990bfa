//! The protobuf bodies kubectl's typed client sends (`application/vnd.kubernetes.protobuf`,
//! used by `kubectl create namespace|deployment|service`): Kubernetes' envelope
//! (`k8s\0` + `runtime.Unknown`) around a message decoded with k8s-pb (Kubernetes' own
//! .proto definitions), turned into the JSON every other body is, for the same path.
//!
//! Owns only decoding. Only the fields Miniku acts on are carried over; a body that sets any
//! other field is refused with a message naming where, never silently cut short (the client
//! can send the same object as JSON). Answers are always JSON, which kubectl accepts.

use std::collections::BTreeMap;

use k8s_pb::api::apps::v1 as pb_apps;
use k8s_pb::api::core::v1 as pb_core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{json, Map, Value};

/// The content type of Kubernetes' protobuf encoding.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

/// The kinds whose protobuf bodies are understood.
const DECODABLE: &[&str] = &["Namespace", "Deployment", "Service"];

/// The JSON of a protobuf body, or why it cannot be read.
pub fn to_json(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("the protobuf body does not start with Kubernetes' k8s\\0 prefix")?;
    let unknown = Unknown::decode(rest).map_err(|e| format!("invalid protobuf envelope: {e}"))?;
    let tm = unknown.type_meta.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let decode_error = |e: prost::DecodeError| format!("invalid protobuf {kind}: {e}");
    let mut obj = match kind.as_str() {
        "Namespace" => {
            namespace(pb_core::Namespace::decode(raw.as_slice()).map_err(decode_error)?)?
        }
        "Deployment" => {
            deployment(pb_apps::Deployment::decode(raw.as_slice()).map_err(decode_error)?)?
        }
        "Service" => service(pb_core::Service::decode(raw.as_slice()).map_err(decode_error)?)?,
        _ => {
            return Err(format!(
                "Miniku reads protobuf bodies only for {DECODABLE:?}, not {kind:?}: send JSON"
            ))
        }
    };
    obj.insert("apiVersion".into(), json!(tm.api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

/// Refuses a message that still has fields set after the ones Miniku reads were taken out.
/// Go's encoder writes every non-pointer field, so a field holding its zero value (`""`, 0,
/// false, an empty message) counts as unset.
fn nothing_left<M: Message>(rest: &M, at: &str) -> Result<(), String> {
    if all_zero(&rest.encode_to_vec(), 0) {
        Ok(())
    } else {
        Err(format!(
            "the protobuf body sets fields of {at} that Miniku does not read from protobuf: send the object as JSON"
        ))
    }
}

/// Whether every field of an encoded message holds a zero value: varints and fixed numbers
/// 0, and length-delimited fields empty or themselves messages of zero values.
fn all_zero(mut bytes: &[u8], depth: usize) -> bool {
    use prost::encoding::{decode_varint, WireType};
    while !bytes.is_empty() {
        let Ok(key) = decode_varint(&mut bytes) else {
            return false;
        };
        let Ok(wire) = WireType::try_from(key & 7) else {
            return false;
        };
        let zero = match wire {
            WireType::Varint => decode_varint(&mut bytes).is_ok_and(|v| v == 0),
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire == WireType::SixtyFourBit { 8 } else { 4 };
                let Some((value, rest)) = bytes.split_at_checked(n) else {
                    return false;
                };
                bytes = rest;
                value.iter().all(|b| *b == 0)
            }
            WireType::LengthDelimited => {
                let Ok(len) = decode_varint(&mut bytes) else {
                    return false;
                };
                let Some((value, rest)) = usize::try_from(len)
                    .ok()
                    .and_then(|l| bytes.split_at_checked(l))
                else {
                    return false;
                };
                bytes = rest;
                value.is_empty() || (depth < 32 && all_zero(value, depth + 1))
            }
            WireType::StartGroup | WireType::EndGroup => false,
        };
        if !zero {
            return false;
        }
    }
    true
}

/// Inserts `value` under `key` unless it is empty (absent, an empty list or map).
fn put(out: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match &value {
        Value::Null => true,
        // Go's encoder writes unset strings as "".
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    if !empty {
        out.insert(key.into(), value);
    }
}

fn metadata(m: Option<pb_meta::ObjectMeta>, at: &str) -> Result<Value, String> {
    let mut m = m.unwrap_or_default();
    let mut out = Map::new();
    put(&mut out, "name", json!(m.name.take()));
    put(&mut out, "generateName", json!(m.generate_name.take()));
    put(&mut out, "namespace", json!(m.namespace.take()));
    put(&mut out, "labels", json!(std::mem::take(&mut m.labels)));
    put(
        &mut out,
        "annotations",
        json!(std::mem::take(&mut m.annotations)),
    );
    // The server sets it; kubectl sends it empty.
    m.creation_timestamp = None;
    nothing_left(&m, &format!("{at}.metadata"))?;
    Ok(Value::Object(out))
}

fn namespace(mut ns: pb_core::Namespace) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(ns.metadata.take(), "Namespace")?,
    );
    // A new namespace's spec and status are the server's.
    ns.spec = None;
    ns.status = None;
    nothing_left(&ns, "Namespace")?;
    Ok(out)
}

fn int_or_string(v: Option<IntOrString>) -> Value {
    match v {
        None => Value::Null,
        Some(v) if v.r#type == Some(1) => json!(v.str_val.unwrap_or_default()),
        Some(v) => json!(v.int_val.unwrap_or(0)),
    }
}

fn selector(s: Option<pb_meta::LabelSelector>, at: &str) -> Result<Value, String> {
    let mut s = s.unwrap_or_default();
    let mut out = Map::new();
    put(
        &mut out,
        "matchLabels",
        json!(std::mem::take(&mut s.match_labels)),
    );
    nothing_left(&s, at)?;
    Ok(Value::Object(out))
}

fn quantities(q: BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>) -> Value {
    Value::Object(
        q.into_iter()
            .map(|(k, v)| (k, json!(v.string.unwrap_or_default())))
            .collect(),
    )
}

fn container(mut c: pb_core::Container, at: &str) -> Result<Value, String> {
    let mut out = Map::new();
    put(&mut out, "name", json!(c.name.take()));
    put(&mut out, "image", json!(c.image.take()));
    put(&mut out, "command", json!(std::mem::take(&mut c.command)));
    put(&mut out, "args", json!(std::mem::take(&mut c.args)));
    put(&mut out, "workingDir", json!(c.working_dir.take()));
    put(
        &mut out,
        "imagePullPolicy",
        json!(c.image_pull_policy.take()),
    );
    let mut ports = Vec::new();
    for (i, mut p) in std::mem::take(&mut c.ports).into_iter().enumerate() {
        let mut port = Map::new();
        put(&mut port, "name", json!(p.name.take()));
        put(&mut port, "containerPort", json!(p.container_port.take()));
        put(&mut port, "protocol", json!(p.protocol.take()));
        nothing_left(&p, &format!("{at}.ports[{i}]"))?;
        ports.push(Value::Object(port));
    }
    put(&mut out, "ports", json!(ports));
    let mut env = Vec::new();
    for (i, mut e) in std::mem::take(&mut c.env).into_iter().enumerate() {
        let var = json!({"name": e.name.take(), "value": e.value.take().unwrap_or_default()});
        nothing_left(&e, &format!("{at}.env[{i}]"))?;
        env.push(var);
    }
    put(&mut out, "env", json!(env));
    if let Some(mut r) = c.resources.take() {
        let mut res = Map::new();
        put(
            &mut res,
            "limits",
            quantities(std::mem::take(&mut r.limits)),
        );
        put(
            &mut res,
            "requests",
            quantities(std::mem::take(&mut r.requests)),
        );
        nothing_left(&r, &format!("{at}.resources"))?;
        // kubectl sends `resources: {}`; JSON shows it the same way.
        out.insert("resources".into(), Value::Object(res));
    }
    nothing_left(&c, at)?;
    Ok(Value::Object(out))
}

fn pod_template(t: Option<pb_core::PodTemplateSpec>, at: &str) -> Result<Value, String> {
    let mut t = t.unwrap_or_default();
    let mut out = Map::new();
    out.insert("metadata".into(), metadata(t.metadata.take(), at)?);
    let mut spec = t.spec.take().unwrap_or_default();
    let mut s = Map::new();
    let mut containers = Vec::new();
    for (i, c) in std::mem::take(&mut spec.containers).into_iter().enumerate() {
        containers.push(container(c, &format!("{at}.spec.containers[{i}]"))?);
    }
    s.insert("containers".into(), json!(containers));
    put(&mut s, "restartPolicy", json!(spec.restart_policy.take()));
    put(
        &mut s,
        "nodeSelector",
        json!(std::mem::take(&mut spec.node_selector)),
    );
    put(
        &mut s,
        "terminationGracePeriodSeconds",
        json!(spec.termination_grace_period_seconds.take()),
    );
    nothing_left(&spec, &format!("{at}.spec"))?;
    out.insert("spec".into(), Value::Object(s));
    nothing_left(&t, at)?;
    Ok(Value::Object(out))
}

fn deployment(mut d: pb_apps::Deployment) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    out.insert(
        "metadata".into(),
        metadata(d.metadata.take(), "Deployment")?,
    );
    let mut spec = d.spec.take().unwrap_or_default();
    let mut s = Map::new();
    put(&mut s, "replicas", json!(spec.replicas.take()));
    s.insert(
        "selector".into(),
        selector(spec.selector.take(), "Deployment.spec.selector")?,
    );
    s.insert(
        "template".into(),
        pod_template(spec.template.take(), "Deployment.spec.template")?,
    );
    if let Some(mut strategy) = spec.strategy.take() {
        let mut st = Map::new();
        put(&mut st, "type", json!(strategy.r#type.take()));
        if let Some(mut r) = strategy.rolling_update.take() {
            let mut ru = Map::new();
            put(&mut ru, "maxSurge", int_or_string(r.max_surge.take()));
            put(
                &mut ru,
                "maxUnavailable",
                int_or_string(r.max_unavailable.take()),
            );
            nothing_left(&r, "Deployment.spec.strategy.rollingUpdate")?;
            st.insert("rollingUpdate".into(), Value::Object(ru));
        }
        nothing_left(&strategy, "Deployment.spec.strategy")?;
        s.insert("strategy".into(), Value::Object(st));
    }
    put(
        &mut s,
        "minReadySeconds",
        json!(spec.min_ready_seconds.take()),
    );
    put(
        &mut s,
        "revisionHistoryLimit",
        json!(spec.revision_history_limit.take()),
    );
    put(&mut s, "paused", json!(spec.paused.take()));
    put(
        &mut s,
        "progressDeadlineSeconds",
        json!(spec.progress_deadline_seconds.take()),
    );
    nothing_left(&spec, "Deployment.spec")?;
    out.insert("spec".into(), Value::Object(s));
    // A new Deployment's status is the server's (kubectl sends it empty).
    d.status = None;
    nothing_left(&d, "Deployment")?;
    Ok(out)
}

fn service(mut svc: pb_core::Service) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    out.insert("metadata".into(), metadata(svc.metadata.take(), "Service")?);
    let mut spec = svc.spec.take().unwrap_or_default();
    let mut s = Map::new();
    let mut ports = Vec::new();
    for (i, mut p) in std::mem::take(&mut spec.ports).into_iter().enumerate() {
        let mut port = Map::new();
        put(&mut port, "name", json!(p.name.take()));
        put(&mut port, "protocol", json!(p.protocol.take()));
        put(&mut port, "appProtocol", json!(p.app_protocol.take()));
        port.insert("port".into(), json!(p.port.take().unwrap_or(0)));
        // Not a pointer in Go: 0 (or "") is "not set".
        match int_or_string(p.target_port.take()) {
            Value::Number(n) if n.as_i64() == Some(0) => {}
            v => put(&mut port, "targetPort", v),
        }
        if let Some(n) = p.node_port.take().filter(|n| *n != 0) {
            port.insert("nodePort".into(), json!(n));
        }
        nothing_left(&p, &format!("Service.spec.ports[{i}]"))?;
        ports.push(Value::Object(port));
    }
    put(&mut s, "ports", json!(ports));
    put(
        &mut s,
        "selector",
        json!(std::mem::take(&mut spec.selector)),
    );
    put(&mut s, "clusterIP", json!(spec.cluster_ip.take()));
    put(
        &mut s,
        "clusterIPs",
        json!(std::mem::take(&mut spec.cluster_ips)),
    );
    put(&mut s, "type", json!(spec.r#type.take()));
    put(
        &mut s,
        "externalIPs",
        json!(std::mem::take(&mut spec.external_ips)),
    );
    put(
        &mut s,
        "sessionAffinity",
        json!(spec.session_affinity.take()),
    );
    put(&mut s, "externalName", json!(spec.external_name.take()));
    nothing_left(&spec, "Service.spec")?;
    out.insert("spec".into(), Value::Object(s));
    // A new Service's status is the server's.
    svc.status = None;
    nothing_left(&svc, "Service")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &str, api_version: &str, raw: Vec<u8>) -> Vec<u8> {
        let env = Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            ..Default::default()
        };
        let mut body = MAGIC.to_vec();
        body.extend(env.encode_to_vec());
        body
    }

    #[test]
    fn a_namespace_from_kubectl_create_namespace_decodes() {
        let ns = pb_core::Namespace {
            metadata: Some(pb_meta::ObjectMeta {
                name: Some("team-a".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = to_json(&envelope("Namespace", "v1", ns.encode_to_vec())).unwrap();
        assert_eq!(v["metadata"]["name"], "team-a");
        assert_eq!(v["kind"], "Namespace");
        assert!(to_json(b"nope").is_err());
    }

    fn kubectl_create_deployment() -> pb_apps::Deployment {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        pb_apps::Deployment {
            metadata: Some(pb_meta::ObjectMeta {
                name: Some("web".into()),
                labels: labels.clone(),
                ..Default::default()
            }),
            spec: Some(pb_apps::DeploymentSpec {
                replicas: Some(3),
                selector: Some(pb_meta::LabelSelector {
                    match_labels: labels.clone(),
                    ..Default::default()
                }),
                template: Some(pb_core::PodTemplateSpec {
                    metadata: Some(pb_meta::ObjectMeta {
                        labels,
                        ..Default::default()
                    }),
                    spec: Some(pb_core::PodSpec {
                        containers: vec![pb_core::Container {
                            name: Some("busybox".into()),
                            image: Some("miniku/busybox:latest".into()),
                            command: vec!["httpd".into(), "-f".into()],
                            resources: Some(Default::default()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                strategy: Some(Default::default()),
                ..Default::default()
            }),
            status: Some(Default::default()),
        }
    }

    #[test]
    fn what_kubectl_create_deployment_sends_decodes_into_its_json() {
        let body = envelope(
            "Deployment",
            "apps/v1",
            kubectl_create_deployment().encode_to_vec(),
        );
        let v = to_json(&body).unwrap();
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["spec"]["replicas"], 3);
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "miniku/busybox:latest");
        assert_eq!(c["command"], json!(["httpd", "-f"]));
        let _: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(v).unwrap();
    }

    #[test]
    fn a_service_from_kubectl_create_service_decodes_with_its_spec() {
        let svc = pb_core::Service {
            metadata: Some(pb_meta::ObjectMeta {
                name: Some("web".into()),
                namespace: Some(String::new()),
                ..Default::default()
            }),
            spec: Some(pb_core::ServiceSpec {
                ports: vec![pb_core::ServicePort {
                    name: Some("80-8080".into()),
                    protocol: Some("TCP".into()),
                    port: Some(80),
                    target_port: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(8080),
                        str_val: Some(String::new()),
                    }),
                    node_port: Some(30080),
                    ..Default::default()
                }],
                selector: [("app".to_string(), "web".to_string())].into(),
                cluster_ip: Some(String::new()),
                r#type: Some("NodePort".into()),
                session_affinity: Some(String::new()),
                publish_not_ready_addresses: Some(false),
                ..Default::default()
            }),
            status: Some(Default::default()),
        };
        let v = to_json(&envelope("Service", "v1", svc.encode_to_vec())).unwrap();
        assert_eq!(
            v["spec"],
            json!({"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80,
                              "targetPort": 8080, "nodePort": 30080}],
                   "selector": {"app": "web"}, "type": "NodePort"})
        );
        assert_eq!(v["metadata"]["name"], "web");
    }

    #[test]
    fn a_field_miniku_does_not_read_is_refused_by_name_not_dropped() {
        let mut d = kubectl_create_deployment();
        if let Some(t) = d.spec.as_mut().and_then(|s| s.template.as_mut()) {
            if let Some(s) = t.spec.as_mut() {
                s.host_network = Some(true);
            }
        }
        let body = envelope("Deployment", "apps/v1", d.encode_to_vec());
        let err = to_json(&body).unwrap_err();
        assert!(err.contains("Deployment.spec.template.spec"), "{err}");
        let err = to_json(&envelope("Pod", "v1", Vec::new())).unwrap_err();
        assert!(err.contains("send JSON"), "{err}");
    }
}
