//! API errors, answered in OpenAI's error shape so OpenAI clients parse them:
//! `{"error": {"message", "type", "param", "code"}}`, where `param` names the offending field.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chorus_core::spec::FieldError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<String>,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// A 422 for a list of field problems; the first names `param`, the message lists them all.
    pub fn fields(errors: &[FieldError]) -> Self {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Self::Invalid {
            message,
            param: errors.first().map(|e| e.field.clone()),
        }
    }

    pub fn unavailable(what: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "{what} failed");
        Self::Unavailable(format!("{what} is unavailable; retry shortly"))
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<&str>, &'static str) {
        match self {
            Self::BadRequest { param, code, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                param.as_deref(),
                code,
            ),
            Self::Invalid { param, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                param.as_deref(),
                "invalid_value",
            ),
            Self::TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                None,
                "body_too_large",
            ),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found_error", None, "not_found"),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                "unavailable",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, param, code) = self.parts();
        let body = json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}});
        (status, Json(body)).into_response()
    }
}
