//! The one place where a [`StoreError`] becomes an HTTP status and an [`ErrorBody`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::{ErrorBody, ErrorCode};
use crate::error::StoreError;
use crate::types::CommandError;

/// A failed request, as answered to the client.
#[derive(Debug)]
pub struct HttpError(pub StoreError);

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        HttpError(e)
    }
}

impl From<CommandError> for HttpError {
    fn from(e: CommandError) -> Self {
        HttpError(StoreError::Rejected(e))
    }
}

pub fn invalid(message: impl Into<String>) -> HttpError {
    HttpError(StoreError::InvalidArgument(message.into()))
}

pub fn too_large(message: impl Into<String>) -> HttpError {
    HttpError(StoreError::TooLarge(message.into()))
}

/// Status, stable code and compact revision for an error.
pub fn classify(e: &StoreError) -> (StatusCode, ErrorCode, Option<i64>) {
    match e {
        StoreError::InvalidArgument(_) => {
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument, None)
        }
        StoreError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, None),
        StoreError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound, None),
        StoreError::Rejected(c) => match c {
            CommandError::LeaseNotFound(_) => {
                (StatusCode::NOT_FOUND, ErrorCode::LeaseNotFound, None)
            }
            CommandError::LeaseExists(_) => (StatusCode::CONFLICT, ErrorCode::LeaseExists, None),
            CommandError::Compacted {
                compact_revision, ..
            } => (
                StatusCode::GONE,
                ErrorCode::Compacted,
                Some(*compact_revision),
            ),
            CommandError::FutureRevision { .. } => {
                (StatusCode::BAD_REQUEST, ErrorCode::FutureRevision, None)
            }
            CommandError::NoSpace { .. } => {
                (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::NoSpace, None)
            }
            CommandError::Storage(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, None)
            }
        },
        StoreError::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            None,
        ),
        StoreError::OutcomeUnknown(_) => {
            (StatusCode::GATEWAY_TIMEOUT, ErrorCode::OutcomeUnknown, None)
        }
        StoreError::ResourceExhausted(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ResourceExhausted,
            None,
        ),
        StoreError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, None),
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, code, compact_revision) = classify(&self.0);
        if status.is_server_error() {
            tracing::warn!(error = %self.0, status = status.as_u16(), "request failed");
        }
        let body = ErrorBody {
            error: code,
            message: self.0.to_string(),
            compact_revision,
            leader_id: None,
        };
        (status, Json(body)).into_response()
    }
}
