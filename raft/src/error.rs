//! The store's one error type for requests. Every layer returns [`StoreError`]; the HTTP layer
//! maps it to a status code and an [`crate::api::ErrorBody`] in exactly one place
//! (`http::error`).

use serde::{Deserialize, Serialize};

use crate::types::CommandError;

#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    /// The request itself is wrong (bad key, bad range, bad JSON, over a limit...).
    #[error("{0}")]
    InvalidArgument(String),
    /// Over a documented limit (body, key, value, ops per transaction).
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    NotFound(String),
    /// The state machine refused the command (unknown lease, compacted revision...).
    #[error(transparent)]
    Rejected(#[from] CommandError),
    /// No leader, no quorum, or the leader could not be reached: nothing was written.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request was sent to the leader but no answer came back: it may or may not have
    /// been applied.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// Too many watchers or connections.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A storage or internal fault. Never caused by input.
    #[error("internal error: {0}")]
    Internal(String),
}

/// An error and every cause under it, `: `-separated (reqwest's own message leaves out why a
/// request failed, e.g. a reset connection or the TLS alert a server sent).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
