//! What users may send, parsed strictly: the body must be JSON (`application/json`; curl's
//! default form type for `-d` is accepted too, as the seed's transcript sends it), at most
//! [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES), with no unknown fields; a type error names
//! its field.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::ApiError;
use super::MAX_BODY_BYTES;
use crate::api::validation::MAX_DESIRED_COUNT;
use crate::api::{PodTemplate, ReplicaSet};

/// A ReplicaSet as sent to `POST /replicasets` or `PUT /replicasets/{name}`. The status
/// fields a GET returns (`currentCount`, `readyCount`, `uid`) are accepted and ignored, so
/// what GET returns can be sent back.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSetInput {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "desiredCount")]
    pub desired_count: i64,
    pub selector: BTreeMap<String, String>,
    pub template: PodTemplate,
    #[serde(rename = "resourceVersion", default)]
    pub resource_version: i64,
    #[serde(rename = "currentCount", default)]
    pub _current_count: Option<serde::de::IgnoredAny>,
    #[serde(rename = "readyCount", default)]
    pub _ready_count: Option<serde::de::IgnoredAny>,
    #[serde(rename = "uid", default)]
    pub _uid: Option<serde::de::IgnoredAny>,
}

impl ReplicaSetInput {
    pub fn into_replicaset(self, uid: String) -> Result<ReplicaSet, ApiError> {
        if self.desired_count < 0 {
            return Err(ApiError::invalid(
                "desiredCount",
                format!(
                    "{} is negative; it must be 0..={MAX_DESIRED_COUNT}",
                    self.desired_count
                ),
            ));
        }
        if self.desired_count > MAX_DESIRED_COUNT as i64 {
            return Err(ApiError::invalid(
                "desiredCount",
                format!(
                    "{} is above the limit of {MAX_DESIRED_COUNT}",
                    self.desired_count
                ),
            ));
        }
        if self.resource_version < 0 {
            return Err(ApiError::invalid("resourceVersion", "must not be negative"));
        }
        Ok(ReplicaSet {
            name: self.name,
            desired_count: self.desired_count as u32,
            current_count: 0,
            ready_count: 0,
            selector: self.selector,
            template: self.template,
            resource_version: 0,
            uid,
            namespace: crate::api::DEFAULT_NAMESPACE.into(),
            ..Default::default()
        })
    }
}

/// Checks the content type, reads at most the body limit and parses JSON strictly.
pub async fn parse_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("(not text)");
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let json_like = essence == "application/json"
            || essence.ends_with("+json")
            || essence == "application/x-www-form-urlencoded";
        if !json_like {
            return Err(ApiError::unsupported_media_type(ct));
        }
    }
    let bytes = miniku_store::http::read_limited(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::too_large(MAX_BODY_BYTES))?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::invalid("body", "is empty; send a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ApiError::invalid("body", format!("malformed JSON: {inner}"))
            }
            _ => {
                let field = if path.is_empty() || path == "." {
                    "body".to_string()
                } else {
                    path
                };
                ApiError::invalid(&field, inner.to_string())
            }
        }
    })
}
