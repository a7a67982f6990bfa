//! Kubernetes label and field selectors (`?labelSelector=`, `?fieldSelector=`): parsing, and
//! matching against an object's JSON. Owns only the grammar and the matching; which fields
//! a kind lets users select on is the routes' business.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

/// A parsed `fieldSelector`: `path=value` / `path!=value` terms, all of which must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn values_in(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_top(s) {
            let req = if let Some(k) = term.strip_prefix('!') {
                LabelRequirement::DoesNotExist(k.trim().to_string())
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelRequirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                LabelRequirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                LabelRequirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once(" notin ") {
                let vals = values_in(v).ok_or_else(|| {
                    format!("unable to parse requirement: {term:?}: values must be in parentheses")
                })?;
                LabelRequirement::NotIn(k.trim().into(), vals)
            } else if let Some((k, v)) = term.split_once(" in ") {
                let vals = values_in(v).ok_or_else(|| {
                    format!("unable to parse requirement: {term:?}: values must be in parentheses")
                })?;
                LabelRequirement::In(k.trim().into(), vals)
            } else {
                LabelRequirement::Exists(term.to_string())
            };
            let key = match &req {
                LabelRequirement::Equals(k, _)
                | LabelRequirement::NotEquals(k, _)
                | LabelRequirement::In(k, _)
                | LabelRequirement::NotIn(k, _)
                | LabelRequirement::Exists(k)
                | LabelRequirement::DoesNotExist(k) => k,
            };
            if !valid_key(key) {
                return Err(format!(
                    "unable to parse requirement: {term:?}: invalid label key {key:?}"
                ));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether it selects everything (no requirement).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelRequirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// Matches an object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let labels: BTreeMap<String, String> = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches(&labels)
    }
}

impl FieldSelector {
    /// Parses `a.b=x,c!=y`; only the fields in `allowed` may be selected on, as in Kubernetes
    /// (`field label not supported: x` otherwise).
    pub fn parse(s: &str, allowed: &[&str]) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in split_top(s) {
            let (path, equal, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ));
            };
            let path = path.trim();
            if !allowed.contains(&path) {
                return Err(format!("field label not supported: {path}"));
            }
            terms.push((path.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether it selects everything (no term).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value a term on `path` requires, if one does (`metadata.name=x` → `x`).
    pub fn required(&self, path: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, eq, _)| p == path && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn matches_object(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, equal, want)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            let have = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (have == *want) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_follow_kubernetes_grammar() {
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "a".to_string()),
        ]
        .into();
        let ok = |s: &str| LabelSelector::parse(s).map(|sel| sel.matches(&labels));
        assert_eq!(ok("app=web"), Ok(true));
        assert_eq!(ok("app==web,tier=a"), Ok(true));
        assert_eq!(ok("app!=web"), Ok(false));
        assert_eq!(ok("tier in (a,b)"), Ok(true));
        assert_eq!(ok("tier notin (a)"), Ok(false));
        assert_eq!(ok("app,!gone"), Ok(true));
        assert_eq!(ok(""), Ok(true));
        assert!(LabelSelector::parse("tier in a,b").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn field_selectors_match_paths_and_refuse_unknown_fields() {
        let pod = json!({"metadata": {"name": "p1"}, "spec": {"nodeName": "node-a"}});
        let allowed = ["metadata.name", "spec.nodeName"];
        let sel = FieldSelector::parse("spec.nodeName=node-a", &allowed).unwrap();
        assert!(sel.matches_object(&pod));
        let sel = FieldSelector::parse("metadata.name!=p1", &allowed).unwrap();
        assert!(!sel.matches_object(&pod));
        assert_eq!(
            FieldSelector::parse("spec.foo=x", &allowed),
            Err("field label not supported: spec.foo".into())
        );
        let sel = FieldSelector::parse("metadata.name=p2", &allowed).unwrap();
        assert_eq!(sel.required("metadata.name"), Some("p2"));
    }
}
