//! API errors, answered in OpenAI's error shape so OpenAI clients parse them:
//! `{"error": {"message", "type", "param", "code"}}`, where `param` names the offending field.
//!
//! A spec's problems ([`ApiError::fields`]) are answered by kind: a model that names no route is
//! `404 model_not_found` (as OpenAI answers an unknown model), anything else `422`. The `422`'s
//! code says whether the request broke a rule its JSON schema in `/openapi.json` states
//! (`invalid_value`) or one no schema can state ([`SEMANTIC_CODES`]): a schema-valid request can
//! only ever be refused with one of those.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use chorus_bus::{BusError, BusErrorKind};
use chorus_core::Tenant;
use chorus_core::auth::{Scope, Scopes};
use chorus_core::spec::{FieldError, FieldErrorKind};
use serde_json::json;

/// The codes of a `422` for a rule of a spec that no JSON schema states: a template that does
/// not render with its input, a persona named twice, an assertion that does not compile (a
/// regex, a JSON schema, a JSON path, bounds out of order), a deadline already past, two fields
/// that must agree and do not. The document lists them on each operation that can answer them.
pub const SEMANTIC_CODES: [&str; 5] = [
    "invalid_template",
    "duplicate_persona",
    "invalid_assertion",
    "deadline_passed",
    "conflicting_parameters",
];

/// The `retry-after` of work refused for a full queue or a used-up backlog quota: queues drain
/// at the pace of the providers behind them, so sooner rarely helps.
pub const RETRY_QUEUED: Duration = Duration::from_secs(10);

/// The `retry-after` of a `503`: NATS or the database was unavailable for longer than the edge
/// retries (`nats.retry_window`), so it is out for a while — a node's restart, a lost quorum.
pub const RETRY_UNAVAILABLE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    /// A `422`; `code` is `invalid_value` or one of [`SEMANTIC_CODES`].
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    /// A model that names no route of this installation.
    #[error("{message}")]
    ModelNotFound {
        message: String,
        param: Option<String>,
    },
    /// A method the path does not serve (the router adds the `Allow` header of those it does).
    #[error("`{method}` is not served at this path; the `Allow` header lists the methods that are")]
    MethodNotAllowed { method: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The request names something this tenant does not have.
    #[error("no {what} `{id}`")]
    NotFound { what: Missing, id: String },
    /// A path no route serves.
    #[error("no such route")]
    NoSuchRoute,
    /// A batch input file with bad lines; `details` (the lines by number) joins the error body.
    #[error("{message}")]
    BadLines {
        message: String,
        details: serde_json::Value,
    },
    /// Cancelling a job or batch that has already finished.
    #[error("{what} `{id}` is already {status}; only an unfinished {what} can be cancelled")]
    Finished {
        what: Missing,
        id: String,
        status: &'static str,
    },
    /// NATS or the database could not serve the request (the cause is logged, not answered).
    #[error("{what} is unavailable; retry shortly")]
    Unavailable { what: &'static str },
    /// No API key, or one that is not a live key.
    #[error(transparent)]
    Unauthorized(#[from] Unauthorized),
    /// A live key without the scope the route needs.
    #[error("this API key lacks the `{}` scope this route needs (it has: {has})", needs.as_str())]
    Forbidden { needs: Scope, has: Scopes },
    /// The key's request rate is used up; `retry_after` whole seconds until the next request is
    /// admitted.
    #[error("too many requests for this API key; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    /// The tenant's backlog quota is used up (`over`: of jobs and calls, or of their bytes):
    /// `adding` more jobs would pass it.
    #[error(
        "tenant {tenant} has {over}: {adding} more jobs cannot be queued now; retry after \
         {retry_after} s, as its work drains"
    )]
    OverQuota {
        tenant: Tenant,
        over: chorus_bus::backlog::Over,
        adding: u64,
        retry_after: u64,
    },
    /// A budget the request is charged to (its tenant's or its key's) is spent.
    #[error(transparent)]
    BudgetExceeded(Box<chorus_core::budget::Refusal>),
    /// A work stream is at its size limit.
    #[error("the work queues are full; retry after {retry_after} s, as they drain")]
    QueuesFull { retry_after: u64 },
    /// A call the pipeline made on the client's behalf did not answer: the status and code say
    /// why (the provider refused it, stayed rate-limited, timed out, …).
    #[error("{message}")]
    Upstream {
        status: StatusCode,
        code: String,
        message: String,
    },
}

/// What kind of thing a request named that does not exist, or has finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    Job,
    File,
    Batch,
    /// A budget, named `<scope> <id>`.
    Budget,
    DeadLetter,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Job => "job",
            Self::File => "file",
            Self::Batch => "batch",
            Self::Budget => "budget of",
            Self::DeadLetter => "dead letter at sequence",
        })
    }
}

/// Why a request has no live API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unauthorized {
    #[error("no API key: send it as `Authorization: Bearer <key>`")]
    NoKey,
    #[error("the Authorization header is not text")]
    NotText,
    #[error("the Authorization header must be `Bearer <key>`")]
    NotBearer,
    #[error("the API key is not valid")]
    NotValid,
}

impl ApiError {
    /// A `422` with `invalid_value` about one parameter.
    pub fn invalid(param: &str, problem: impl std::fmt::Display) -> Self {
        Self::Invalid {
            message: format!("{param}: {problem}"),
            param: Some(param.into()),
            code: "invalid_value",
        }
    }

    /// The answer to a spec's problems; the message lists them all. An unknown model makes it
    /// `404 model_not_found` naming the first such field; else a `422` naming the first problem
    /// a schema states (`invalid_value`), or, when every problem is of a kind no schema states,
    /// the first one with its own code.
    pub fn fields(errors: &[FieldError]) -> Self {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let first = |kind: fn(FieldErrorKind) -> bool| {
            errors
                .iter()
                .find(|e| kind(e.kind))
                .map(|e| e.field.clone())
        };
        if let Some(param) = first(|k| k == FieldErrorKind::UnknownRoute) {
            return Self::ModelNotFound {
                message,
                param: Some(param),
            };
        }
        if let Some(param) = first(|k| k == FieldErrorKind::Invalid) {
            return Self::Invalid {
                message,
                param: Some(param),
                code: "invalid_value",
            };
        }
        let code = match errors.first().map(|e| e.kind) {
            Some(FieldErrorKind::Template) => "invalid_template",
            Some(FieldErrorKind::DuplicatePersona) => "duplicate_persona",
            Some(FieldErrorKind::Assertion) => "invalid_assertion",
            Some(FieldErrorKind::DeadlinePassed) => "deadline_passed",
            _ => "invalid_value",
        };
        Self::Invalid {
            message,
            param: errors.first().map(|e| e.field.clone()),
            code,
        }
    }

    /// A refused batch input file: the message lists the bad lines, `lines` holds them.
    pub fn refused_file(errors: chorus_core::batch::file::FileErrors) -> Self {
        Self::BadLines {
            message: format!("the file was refused: {errors}"),
            details: json!({"lines": errors.errors, "omitted": errors.omitted}),
        }
    }

    /// Publishing accepted work failed: a full work stream is a `429` to retry later, anything
    /// else unavailable.
    pub fn publish(error: BusError) -> Self {
        match error.kind() {
            BusErrorKind::Full => {
                tracing::warn!(%error, "a work stream is full");
                Self::QueuesFull {
                    retry_after: RETRY_QUEUED.as_secs(),
                }
            }
            _ => Self::unavailable("JetStream", error),
        }
    }

    pub fn unavailable(what: &'static str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "{what} failed");
        Self::Unavailable { what }
    }

    /// The JSON error body, `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        let (_, kind, param, code) = self.parts();
        let mut body = json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}});
        if let (Self::BadLines { details, .. }, Some(error)) = (self, body["error"].as_object_mut())
            && let Some(details) = details.as_object()
        {
            error.extend(details.clone());
        }
        body
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<&str>, &str) {
        match self {
            Self::BadRequest { param, code, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                param.as_deref(),
                code,
            ),
            Self::Invalid { param, code, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                param.as_deref(),
                code,
            ),
            Self::ModelNotFound { param, .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                param.as_deref(),
                "model_not_found",
            ),
            Self::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                None,
                "method_not_allowed",
            ),
            Self::TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                None,
                "body_too_large",
            ),
            Self::NotFound { .. } | Self::NoSuchRoute => {
                (StatusCode::NOT_FOUND, "not_found_error", None, "not_found")
            }
            Self::BadLines { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("file"),
                "invalid_file",
            ),
            Self::Finished { .. } => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                None,
                "conflict",
            ),
            Self::Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                "unavailable",
            ),
            Self::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                None,
                "invalid_api_key",
            ),
            Self::Forbidden { .. } => (
                StatusCode::FORBIDDEN,
                "permission_error",
                None,
                "insufficient_scope",
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                None,
                "rate_limit_exceeded",
            ),
            Self::OverQuota { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                None,
                "queue_quota_exceeded",
            ),
            Self::QueuesFull { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                None,
                "queues_full",
            ),
            Self::BudgetExceeded(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                None,
                chorus_core::job::BUDGET_EXCEEDED,
            ),
            Self::Upstream { status, code, .. } => {
                let kind = match status.as_u16() {
                    // A budget's refusal reads as OpenAI's quota error, as at the edge.
                    429 if code == chorus_core::job::BUDGET_EXCEEDED => "insufficient_quota",
                    429 => "rate_limit_error",
                    400..=499 => "invalid_request_error",
                    _ => "api_error",
                };
                (*status, kind, None, code.as_str())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, ..) = self.parts();
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::RateLimited { retry_after }
            | Self::OverQuota { retry_after, .. }
            | Self::QueuesFull { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Self::Unavailable { .. } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(RETRY_UNAVAILABLE.as_secs()),
                );
            }

            _ => {}
        }
        response
    }
}
