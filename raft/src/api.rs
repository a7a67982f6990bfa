//! The JSON shapes of the store's HTTP API, shared by the server (`http`) and the Rust client
//! (`client`) so the two can never disagree.
//!
//! ## Bytes in JSON
//! Keys and values are arbitrary bytes. [`Bin`] writes them as a plain JSON string when they
//! are valid UTF-8 (`"value": "hello"`) and as `{"base64": "..."}` otherwise, so the JSON is
//! lossless for any bytes and readable for text. Both forms are accepted on input.
//!
//! Conversions between these shapes and the internal [`crate::types`] live here too. This
//! module must not know about axum or reqwest.

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::types;

/// Bytes that serialize as a UTF-8 string when possible, else as `{"base64": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bin(pub Vec<u8>);

impl Bin {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// The bytes as text, replacing invalid UTF-8 (for logs and messages).
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl From<&str> for Bin {
    fn from(s: &str) -> Self {
        Bin(s.as_bytes().to_vec())
    }
}
impl From<String> for Bin {
    fn from(s: String) -> Self {
        Bin(s.into_bytes())
    }
}
impl From<Vec<u8>> for Bin {
    fn from(v: Vec<u8>) -> Self {
        Bin(v)
    }
}
impl From<&[u8]> for Bin {
    fn from(v: &[u8]) -> Self {
        Bin(v.to_vec())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Base64Form {
    base64: String,
}

impl Serialize for Bin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => Base64Form {
                base64: base64::engine::general_purpose::STANDARD.encode(&self.0),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Bin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Encoded(Base64Form),
        }
        match Form::deserialize(d) {
            Ok(Form::Text(s)) => Ok(Bin(s.into_bytes())),
            Ok(Form::Encoded(b)) => base64::engine::general_purpose::STANDARD
                .decode(b.base64.as_bytes())
                .map(Bin)
                .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}"))),
            Err(_) => Err(serde::de::Error::custom(
                "expected a string or an object {\"base64\": \"...\"}",
            )),
        }
    }
}

/// Carried by every response: the store revision the answer reflects, the Raft term, and the
/// member that answered.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ResponseHeader {
    pub revision: i64,
    pub raft_term: u64,
    pub member_id: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Bin,
    pub value: Bin,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl From<types::KeyValue> for KeyValue {
    fn from(kv: types::KeyValue) -> Self {
        KeyValue {
            key: Bin(kv.key),
            value: Bin(kv.value),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PutResponse {
    pub header: ResponseHeader,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KeyValue>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    pub header: ResponseHeader,
    pub kvs: Vec<KeyValue>,
    pub count: i64,
    pub more: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeleteResponse {
    pub header: ResponseHeader,
    pub deleted: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prev_kvs: Vec<KeyValue>,
}

/// `POST /v1/txn` body.
///
/// ```json
/// {"compare": [{"key": "a", "target": "version", "result": "=", "value": 0}],
///  "success": [{"put": {"key": "a", "value": "1"}}],
///  "failure": [{"range": {"key": "a"}}]}
/// ```
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    #[serde(default)]
    pub compare: Vec<Compare>,
    #[serde(default)]
    pub success: Vec<RequestOp>,
    #[serde(default)]
    pub failure: Vec<RequestOp>,
}

/// `target` is one of `version`, `create_revision`, `mod_revision`, `value`, `lease`;
/// `result` one of `=` (or `==`), `!=`, `<`, `>`. `value` is a number for every target but
/// `value`, where it is bytes (a string or `{"base64": ...}`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Compare {
    pub key: Bin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<Bin>,
    pub target: CompareTarget,
    pub result: CompareResult,
    pub value: serde_json::Value,
}

/// What a [`Compare`] looks at.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum CompareTarget {
    Version,
    CreateRevision,
    ModRevision,
    Value,
    Lease,
}

impl CompareTarget {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareTarget::Version => "version",
            CompareTarget::CreateRevision => "create_revision",
            CompareTarget::ModRevision => "mod_revision",
            CompareTarget::Value => "value",
            CompareTarget::Lease => "lease",
        }
    }
}

impl TryFrom<String> for CompareTarget {
    type Error = CompareError;
    fn try_from(name: String) -> Result<Self, CompareError> {
        Ok(match name.as_str() {
            "version" => CompareTarget::Version,
            "create_revision" => CompareTarget::CreateRevision,
            "mod_revision" => CompareTarget::ModRevision,
            "value" => CompareTarget::Value,
            "lease" => CompareTarget::Lease,
            _ => return Err(CompareError::UnknownTarget(name)),
        })
    }
}

/// How a [`Compare`] compares: `=` (`==` is accepted on input), `!=`, `<`, `>`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum CompareResult {
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    #[serde(rename = "<")]
    Less,
    #[serde(rename = ">")]
    Greater,
}

impl TryFrom<String> for CompareResult {
    type Error = CompareError;
    fn try_from(name: String) -> Result<Self, CompareError> {
        Ok(match name.as_str() {
            "=" | "==" => CompareResult::Equal,
            "!=" => CompareResult::NotEqual,
            "<" => CompareResult::Less,
            ">" => CompareResult::Greater,
            _ => return Err(CompareError::UnknownResult(name)),
        })
    }
}

/// Why a [`Compare`] is not a valid comparison (the HTTP layer answers 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompareError {
    #[error(
        "unknown compare target `{0}` (one of version, create_revision, mod_revision, value, lease)"
    )]
    UnknownTarget(String),
    #[error("unknown compare result `{0}` (one of =, !=, <, >)")]
    UnknownResult(String),
    #[error("compare on `{target}` needs an integer value, not {value}")]
    NotAnInteger {
        target: &'static str,
        value: serde_json::Value,
    },
    #[error("compare on value needs a string or {{\"base64\": ...}}: {0}")]
    NotBytes(String),
}

impl TryFrom<Compare> for types::Compare {
    type Error = CompareError;
    /// The one conversion of a wire comparison to the state machine's.
    fn try_from(c: Compare) -> Result<Self, CompareError> {
        let number = || {
            c.value.as_i64().ok_or_else(|| CompareError::NotAnInteger {
                target: c.target.as_str(),
                value: c.value.clone(),
            })
        };
        let target = match c.target {
            CompareTarget::Version => types::CompareTarget::Version(number()?),
            CompareTarget::CreateRevision => types::CompareTarget::CreateRevision(number()?),
            CompareTarget::ModRevision => types::CompareTarget::ModRevision(number()?),
            CompareTarget::Lease => types::CompareTarget::Lease(number()?),
            CompareTarget::Value => {
                let v: Bin = serde_json::from_value(c.value.clone())
                    .map_err(|e| CompareError::NotBytes(e.to_string()))?;
                types::CompareTarget::Value(v.0)
            }
        };
        let result = match c.result {
            CompareResult::Equal => types::CompareResult::Equal,
            CompareResult::NotEqual => types::CompareResult::NotEqual,
            CompareResult::Less => types::CompareResult::Less,
            CompareResult::Greater => types::CompareResult::Greater,
        };
        Ok(types::Compare {
            range_end: c.range_end.map(|b| b.0).unwrap_or_default(),
            key: c.key.0,
            target,
            result,
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RequestOp {
    Put(PutRequest),
    Range(RangeRequest),
    Delete(DeleteRequest),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct PutRequest {
    pub key: Bin,
    pub value: Bin,
    #[serde(default)]
    pub lease: i64,
    #[serde(default)]
    pub prev_kv: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct RangeRequest {
    pub key: Bin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<Bin>,
    #[serde(default)]
    pub prefix: bool,
    #[serde(default)]
    pub limit: i64,
    #[serde(default)]
    pub revision: i64,
    #[serde(default)]
    pub keys_only: bool,
    #[serde(default)]
    pub count_only: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    pub key: Bin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<Bin>,
    #[serde(default)]
    pub prefix: bool,
    #[serde(default)]
    pub prev_kv: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    pub header: ResponseHeader,
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResponseOp {
    Put {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prev_kv: Option<KeyValue>,
    },
    Range {
        kvs: Vec<KeyValue>,
        count: i64,
        more: bool,
    },
    Delete {
        deleted: i64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        prev_kvs: Vec<KeyValue>,
    },
}

/// `POST /v1/lease` body. `id` 0 or absent: the store picks one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct LeaseGrantRequest {
    pub ttl: i64,
    #[serde(default)]
    pub id: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseGrantResponse {
    pub header: ResponseHeader,
    pub id: i64,
    pub ttl: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseKeepAliveResponse {
    pub header: ResponseHeader,
    pub id: i64,
    /// The TTL the lease was renewed to, in seconds.
    pub ttl: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseRevokeResponse {
    pub header: ResponseHeader,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseTimeToLiveResponse {
    pub header: ResponseHeader,
    pub id: i64,
    /// Seconds left before expiry, as the leader sees it.
    pub ttl: i64,
    pub granted_ttl: i64,
    pub keys: Vec<Bin>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CompactRequest {
    pub revision: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CompactResponse {
    pub header: ResponseHeader,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub peer_addr: String,
    /// False for a learner (catching up, not yet voting).
    pub voter: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClusterResponse {
    pub header: ResponseHeader,
    pub member_id: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub applied_index: u64,
    pub members: Vec<Member>,
}

/// `POST /v1/cluster/members` body: the new member's id and peer address. It joins as a
/// learner and, unless `learner` is true, is promoted to voter once it has caught up.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    pub id: u64,
    pub peer_addr: String,
    /// Stay a learner (promote later with `POST /v1/cluster/members/{id}/promote`).
    #[serde(default)]
    pub learner: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Put,
    Delete,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub kv: KeyValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// Converts an internal event, keeping `prev_kv` only when the watcher asked for it.
    pub fn from_internal(e: types::Event, with_prev_kv: bool) -> Self {
        Event {
            kind: match e.kind {
                types::EventType::Put => EventType::Put,
                types::EventType::Delete => EventType::Delete,
            },
            kv: e.kv.into(),
            prev_kv: if with_prev_kv {
                e.prev_kv.map(Into::into)
            } else {
                None
            },
        }
    }
}

/// The `data:` of one watch SSE message. Three kinds:
/// - events: `events` non-empty, all of revision `header.revision` (the SSE `id:`);
/// - progress: `progress_notify: true`, no events: everything up to `header.revision` that
///   matches the watch has been delivered;
/// - cancel: `canceled: true` with a `reason` (and `compact_revision` when history below it
///   is gone); the stream ends after it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WatchMessage {
    pub header: ResponseHeader,
    #[serde(default)]
    pub events: Vec<Event>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress_notify: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub canceled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The body of every error response.
///
/// ```json
/// {"error": "compacted", "message": "revision 3 has been compacted", "compact_revision": 7}
/// ```
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `invalid_argument`, `not_found`, `compacted`,
    /// `lease_not_found`, `too_large`, `unavailable`.
    pub error: ErrorCode,
    /// What was wrong, for a person.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_id: Option<u64>,
}

/// The stable codes of [`ErrorBody::error`], decoded once. On the wire each is its snake_case
/// name (`no_space`, ...); a code this version does not know is kept as [`ErrorCode::Other`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(from = "String", into = "String")]
pub enum ErrorCode {
    InvalidArgument,
    TooLarge,
    NotFound,
    LeaseNotFound,
    LeaseExists,
    /// The requested revision was compacted ([`ErrorBody::compact_revision`] says to what).
    Compacted,
    FutureRevision,
    /// A NOSPACE alarm is raised: writes that add data are refused.
    NoSpace,
    Unavailable,
    OutcomeUnknown,
    ResourceExhausted,
    Unauthorized,
    Internal,
    /// Any other code, as sent.
    Other(String),
}

impl ErrorCode {
    /// Every code but [`ErrorCode::Other`].
    const KNOWN: [ErrorCode; 13] = [
        ErrorCode::InvalidArgument,
        ErrorCode::TooLarge,
        ErrorCode::NotFound,
        ErrorCode::LeaseNotFound,
        ErrorCode::LeaseExists,
        ErrorCode::Compacted,
        ErrorCode::FutureRevision,
        ErrorCode::NoSpace,
        ErrorCode::Unavailable,
        ErrorCode::OutcomeUnknown,
        ErrorCode::ResourceExhausted,
        ErrorCode::Unauthorized,
        ErrorCode::Internal,
    ];

    /// The code on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::LeaseNotFound => "lease_not_found",
            ErrorCode::LeaseExists => "lease_exists",
            ErrorCode::Compacted => "compacted",
            ErrorCode::FutureRevision => "future_revision",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(code) => code,
        }
    }
}

impl From<String> for ErrorCode {
    fn from(code: String) -> Self {
        ErrorCode::KNOWN
            .into_iter()
            .find(|known| known.as_str() == code)
            .unwrap_or(ErrorCode::Other(code))
    }
}

impl From<ErrorCode> for String {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::Other(code) => code,
            known => known.as_str().to_string(),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_is_text_when_utf8_and_base64_otherwise() {
        assert_eq!(
            serde_json::to_string(&Bin::from("hi")).ok(),
            Some("\"hi\"".into())
        );
        let raw = Bin(vec![0xff, 0x00, 0x01]);
        let json = serde_json::to_string(&raw).unwrap_or_default();
        assert_eq!(json, r#"{"base64":"/wAB"}"#);
        let back: Bin = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, raw);
        assert!(serde_json::from_str::<Bin>("12").is_err());
        assert!(serde_json::from_str::<Bin>(r#"{"base64":"!!"}"#).is_err());
    }

    #[test]
    fn compare_targets_and_results_keep_their_wire_names() {
        let c: Compare = serde_json::from_str(
            r#"{"key":"k","target":"create_revision","result":"==","value":0}"#,
        )
        .unwrap();
        assert_eq!(c.target, CompareTarget::CreateRevision);
        assert_eq!(c.result, CompareResult::Equal);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["target"], "create_revision");
        assert_eq!(json["result"], "=");
        for (name, result) in [
            ("!=", CompareResult::NotEqual),
            ("<", CompareResult::Less),
            (">", CompareResult::Greater),
        ] {
            assert_eq!(serde_json::to_value(result).unwrap(), name);
        }
        let err = serde_json::from_str::<Compare>(
            r#"{"key":"k","target":"colour","result":"=","value":0}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown compare target `colour`"),
            "{err}"
        );
        let err = serde_json::from_str::<Compare>(
            r#"{"key":"k","target":"version","result":"~","value":0}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown compare result `~`"),
            "{err}"
        );
    }

    #[test]
    fn error_codes_decode_once_and_keep_unknown_ones() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":"no_space","message":"m"}"#).unwrap();
        assert_eq!(body.error, ErrorCode::NoSpace);
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":"brand_new","message":"m"}"#).unwrap();
        assert_eq!(body.error, ErrorCode::Other("brand_new".into()));
        assert_eq!(serde_json::to_value(&body).unwrap()["error"], "brand_new");
        for code in ErrorCode::KNOWN {
            let wire = serde_json::to_value(&code).unwrap();
            assert_eq!(serde_json::from_value::<ErrorCode>(wire).unwrap(), code);
        }
    }
}
