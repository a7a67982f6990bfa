//! Validation of what users send: names, counts, selectors, templates. Each problem is a
//! [`FieldError`] naming the field and what is wrong with it; the API server turns them into
//! a 400 answer. This module decides what is valid, never how it is stored.

use std::collections::BTreeMap;

use super::{PodTemplate, ReplicaSet};

/// Longest name of any object (a DNS-1123 label).
pub const MAX_NAME_LEN: usize = 63;
/// Pods are named `<replicaset>-<8 hex digits>`.
pub const POD_SUFFIX_LEN: usize = 9;
/// Longest ReplicaSet name: its pods' names must still be valid.
pub const MAX_REPLICASET_NAME_LEN: usize = MAX_NAME_LEN - POD_SUFFIX_LEN;
/// Largest `desiredCount` accepted.
pub const MAX_DESIRED_COUNT: u32 = 10_000;
/// Longest image reference.
pub const MAX_IMAGE_LEN: usize = 512;
/// Most labels, env variables or command words in one object.
pub const MAX_ENTRIES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses a label map written `k=v,k2=v2` (the seed's `selector=` filter, the kubelet's
/// `--labels`); `field` names it in errors.
pub fn parse_selector(field: &str, s: &str) -> Result<BTreeMap<String, String>, FieldError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| err(field, format!("`{part}` is not key=value")))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(err(field, format!("`{part}` has an empty key")));
        }
        out.insert(k.to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// Checks a DNS-1123 label: 1–`max` characters of `a-z`, `0-9` and `-`, starting and ending
/// with a letter or digit.
pub fn validate_name(field: &str, name: &str, max: usize) -> Result<(), FieldError> {
    if name.is_empty() {
        return Err(err(field, "must not be empty"));
    }
    if name.len() > max {
        return Err(err(
            field,
            format!("`{name}` is {} characters; the limit is {max}", name.len()),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err(
            field,
            format!("`{name}` may contain only lowercase letters, digits and '-' (DNS-1123 label)"),
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(err(
            field,
            format!("`{name}` must start and end with a letter or digit"),
        ));
    }
    Ok(())
}

/// Label keys and values: 1–63 characters of letters, digits, `-`, `_`, `.` (keys may carry
/// a `prefix/`), values may be empty.
fn validate_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if labels.len() > MAX_ENTRIES {
        return Err(err(field, format!("at most {MAX_ENTRIES} labels")));
    }
    let ok = |s: &str| {
        s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    for (k, v) in labels {
        let name = k.rsplit('/').next().unwrap_or(k);
        if k.is_empty() || name.is_empty() || !ok(name) || k.len() > 253 {
            return Err(err(format!("{field}.{k}"), "invalid label key"));
        }
        if !ok(v) {
            return Err(err(
                format!("{field}.{k}"),
                format!("invalid label value `{v}`: up to 63 letters, digits, '-', '_' or '.'"),
            ));
        }
    }
    Ok(())
}

/// Checks a pod template. Its `name` must be empty (pods are named by the controller).
pub fn validate_template(t: &PodTemplate) -> Result<(), FieldError> {
    if !t.name.is_empty() {
        return Err(err(
            "template.name",
            "must be empty: pods are named after their ReplicaSet",
        ));
    }
    let image = t.image.trim();
    if image.is_empty() {
        return Err(err(
            "template.image",
            "is required (for example `nginx:latest`)",
        ));
    }
    if image.len() > MAX_IMAGE_LEN || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(
            "template.image",
            format!("`{image}` is not a valid image reference"),
        ));
    }
    if !t.node_name.is_empty() {
        return Err(err(
            "template.node_name",
            "must be empty: the scheduler binds pods",
        ));
    }
    validate_labels("template.labels", &t.labels)?;
    validate_labels("template.node_selector", &t.node_selector)?;
    if t.command.len() > MAX_ENTRIES {
        return Err(err(
            "template.command",
            format!("at most {MAX_ENTRIES} words"),
        ));
    }
    if t.env.len() > MAX_ENTRIES {
        return Err(err(
            "template.env",
            format!("at most {MAX_ENTRIES} variables"),
        ));
    }
    for k in t.env.keys() {
        let valid = !k.is_empty()
            && !k.as_bytes()[0].is_ascii_digit()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(err(
                format!("template.env.{k}"),
                "invalid environment variable name",
            ));
        }
    }
    Ok(())
}

/// Checks a ReplicaSet as a user sent it (create or update).
pub fn validate_replicaset(rs: &ReplicaSet) -> Result<(), FieldError> {
    validate_name("name", &rs.name, MAX_REPLICASET_NAME_LEN)?;
    if rs.desired_count > MAX_DESIRED_COUNT {
        return Err(err(
            "desiredCount",
            format!(
                "{} is above the limit of {MAX_DESIRED_COUNT}",
                rs.desired_count
            ),
        ));
    }
    if rs.selector.is_empty() {
        return Err(err(
            "selector",
            "must name at least one label (for example {\"app\": \"nginx\"})",
        ));
    }
    validate_labels("selector", &rs.selector)?;
    validate_template(&rs.template)?;
    // The template's labels (once the selector is merged in) must match the selector.
    for (k, v) in &rs.selector {
        if let Some(tv) = rs.template.labels.get(k) {
            if tv != v {
                return Err(err(
                    format!("template.labels.{k}"),
                    format!("is `{tv}` but the selector requires `{v}`: the pods would not match"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs() -> ReplicaSet {
        ReplicaSet {
            name: "nginx".into(),
            desired_count: 3,
            current_count: 0,
            ready_count: 0,
            selector: BTreeMap::from([("app".to_string(), "nginx".to_string())]),
            template: PodTemplate {
                image: "nginx:latest".into(),
                ..Default::default()
            },
            resource_version: 0,
            uid: String::new(),
            ..Default::default()
        }
    }

    #[test]
    fn the_seed_replicaset_is_valid() {
        assert_eq!(validate_replicaset(&rs()), Ok(()));
    }

    #[test]
    fn names_follow_dns_1123_and_leave_room_for_the_pod_suffix() {
        for bad in ["", "Nginx", "-a", "a-", "a_b", "a.b"] {
            assert!(validate_name("name", bad, 63).is_err(), "{bad}");
        }
        let mut r = rs();
        r.name = "a".repeat(MAX_REPLICASET_NAME_LEN + 1);
        assert_eq!(
            validate_replicaset(&r).map_err(|e| e.field),
            Err("name".into())
        );
        r.name = "a".repeat(MAX_REPLICASET_NAME_LEN);
        assert!(validate_replicaset(&r).is_ok());
    }

    #[test]
    fn each_problem_names_its_field() {
        type Change = fn(&mut ReplicaSet);
        let cases: Vec<(Change, &str)> = vec![
            (|r| r.template.image = String::new(), "template.image"),
            (|r| r.desired_count = MAX_DESIRED_COUNT + 1, "desiredCount"),
            (|r| r.selector.clear(), "selector"),
            (
                |r| {
                    r.template.labels.insert("app".into(), "other".into());
                },
                "template.labels.app",
            ),
            (|r| r.template.name = "x".into(), "template.name"),
            (
                |r| {
                    r.template.env.insert("1BAD".into(), "v".into());
                },
                "template.env.1BAD",
            ),
        ];
        for (change, field) in cases {
            let mut r = rs();
            change(&mut r);
            assert_eq!(
                validate_replicaset(&r).map_err(|e| e.field),
                Err(field.to_string())
            );
        }
    }
}
