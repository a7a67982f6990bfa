//! The API server's one error type and the one place it becomes an HTTP answer: a status
//! code and a JSON body `{"error": code, "message": text, "field": name?}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::api::validation::FieldError;
use crate::registry::RegistryError;

#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    /// Stable code: `invalid`, `not_found`, `already_exists`, `conflict`, `gone`,
    /// `too_large`, `unsupported_media_type`, `method_not_allowed`, `unavailable`, `internal`.
    pub error: &'static str,
    pub message: String,
    /// The field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    fn new(
        status: StatusCode,
        error: &'static str,
        message: impl Into<String>,
        field: Option<String>,
    ) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error,
                message: message.into(),
                field,
            },
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("{field}: {message}"),
            Some(field.to_string()),
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is over the limit of {limit} bytes"),
            None,
        )
    }

    pub fn unsupported_media_type(got: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content type `{got}` is not accepted: send JSON (application/json)"),
            None,
        )
    }

    pub fn not_found_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint: see /replicasets, /pods, /nodes",
            None,
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not accept that method",
            None,
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            message,
            None,
        )
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::invalid(&e.field, e.message)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        match e {
            RegistryError::NotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "not_found", message, None)
            }
            RegistryError::AlreadyExists { .. } => Self::new(
                StatusCode::CONFLICT,
                "already_exists",
                message,
                Some("name".into()),
            ),
            RegistryError::Conflict { .. } => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                message,
                Some("resourceVersion".into()),
            ),
            RegistryError::Compacted(_) => Self::new(
                StatusCode::GONE,
                "gone",
                format!("{message}: list again and watch from the list's resourceVersion"),
                Some("resourceVersion".into()),
            ),
            // The API server's registry is never fenced; map it like a lost store anyway.
            RegistryError::Unavailable(_) | RegistryError::Fenced(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                message,
                None,
            ),
            // As etcd does: the write may have happened; the client should read and see.
            RegistryError::OutcomeUnknown(_) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "outcome_unknown",
                format!("{message}; read the object to see whether it took effect"),
                None,
            ),
            RegistryError::NoSpace(_) => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, "no_space", message, None)
            }
            RegistryError::Claimed { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", message, None)
            }
            RegistryError::Decode(_) => {
                tracing::error!(error = %message, "stored data could not be read");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message, None)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
