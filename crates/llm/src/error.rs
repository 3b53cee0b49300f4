//! What can go wrong in a provider call, classified once.
//!
//! Every provider maps its failures to an [`LlmError`] with an [`ErrorKind`]; from then on the
//! kind alone decides whether a retry can help ([`ErrorKind::is_retryable`]) and how the failure is
//! named in results and metrics ([`ErrorKind::as_str`]). Nothing downstream matches on messages.

use std::fmt;
use std::time::Duration;

use chorus_core::messages::StepError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 429: the provider asks us to slow down, often with `retry-after`.
    RateLimited,
    /// 529: the provider is overloaded (Anthropic).
    Overloaded,
    /// Any other 5xx.
    ServerError,
    /// No answer within the route's timeout.
    Timeout,
    /// The connection failed or broke before a complete answer.
    Connection,
    /// A success status with a body that cannot be parsed or is truncated.
    Malformed,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    RequestTimeout,
    Unprocessable,
    /// The provider refused the content (moderation, safety filters).
    ContentPolicy,
    /// Not a provider error: the job or its batch was cancelled before the call was sent.
    Cancelled,
    /// Not a provider error: the job's deadline passed before the call was sent.
    DeadlineExceeded,
    /// A judge's answers never parsed as a verdict.
    InvalidJudgeAnswer,
    /// Not a provider error: a budget the call is charged to cannot cover it, so it was not sent.
    BudgetExceeded,
    /// Not a provider error: the budget ledger could not be read, so the call waits (it is not
    /// sent unchecked).
    BudgetUnavailable,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 19] = [
        Self::RateLimited,
        Self::Overloaded,
        Self::ServerError,
        Self::Timeout,
        Self::Connection,
        Self::Malformed,
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::Conflict,
        Self::RequestTimeout,
        Self::Unprocessable,
        Self::ContentPolicy,
        Self::Cancelled,
        Self::DeadlineExceeded,
        Self::InvalidJudgeAnswer,
        Self::BudgetExceeded,
        Self::BudgetUnavailable,
    ];

    /// The stable name used in step results, dead letters and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Malformed => "malformed",
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::RequestTimeout => "request_timeout",
            Self::Unprocessable => "unprocessable",
            Self::ContentPolicy => "content_policy",
            Self::Cancelled => chorus_core::job::CANCELLED,
            Self::DeadlineExceeded => chorus_core::job::DEADLINE_EXCEEDED,
            Self::InvalidJudgeAnswer => "invalid_judge_answer",
            Self::BudgetExceeded => chorus_core::job::BUDGET_EXCEEDED,
            Self::BudgetUnavailable => "budget_unavailable",
        }
    }

    /// The kind of a non-success HTTP status. Unlisted 4xx are permanent (`BadRequest`); 5xx and
    /// anything stranger are treated as a server fault (`ServerError`).
    pub fn from_status(status: u16) -> Self {
        match status {
            400 => Self::BadRequest,
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            408 => Self::RequestTimeout,
            409 => Self::Conflict,
            422 => Self::Unprocessable,
            429 => Self::RateLimited,
            529 => Self::Overloaded,
            402..=499 => Self::BadRequest,
            _ => Self::ServerError,
        }
    }

    /// True when the same request may succeed later; permanent errors fail the step at once.
    pub fn is_retryable(self) -> bool {
        match self {
            Self::RateLimited
            | Self::Overloaded
            | Self::ServerError
            | Self::Timeout
            | Self::Connection
            | Self::Malformed
            | Self::Conflict
            | Self::RequestTimeout
            | Self::BudgetUnavailable => true,
            Self::BadRequest
            | Self::Unauthorized
            | Self::Forbidden
            | Self::NotFound
            | Self::Unprocessable
            | Self::ContentPolicy
            | Self::Cancelled
            | Self::DeadlineExceeded
            | Self::InvalidJudgeAnswer
            | Self::BudgetExceeded => false,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed provider call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
pub struct LlmError {
    pub kind: ErrorKind,
    /// The provider's own message where there is one.
    pub message: String,
    pub status: Option<u16>,
    /// How long the provider asked us to wait (`retry-after`).
    pub retry_after: Option<Duration>,
}

impl LlmError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
            retry_after: None,
        }
    }

    /// An error for a non-success HTTP status, classified by [`ErrorKind::from_status`].
    pub fn from_status(status: u16, message: impl Into<String>) -> Self {
        Self {
            status: Some(status),
            ..Self::new(ErrorKind::from_status(status), message)
        }
    }

    pub fn timeout(after: Duration) -> Self {
        let after = humantime::format_duration(after);
        Self::new(ErrorKind::Timeout, format!("no answer within {after}"))
    }

    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

impl From<&LlmError> for StepError {
    fn from(error: &LlmError) -> Self {
        Self {
            kind: error.kind.as_str().to_owned(),
            message: error.message.clone(),
            retryable: error.is_retryable(),
            status: error.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_classified() {
        use ErrorKind::*;
        let table = [
            (400, BadRequest, false),
            (401, Unauthorized, false),
            (402, BadRequest, false),
            (403, Forbidden, false),
            (404, NotFound, false),
            (408, RequestTimeout, true),
            (409, Conflict, true),
            (413, BadRequest, false),
            (422, Unprocessable, false),
            (429, RateLimited, true),
            (500, ServerError, true),
            (502, ServerError, true),
            (503, ServerError, true),
            (504, ServerError, true),
            (529, Overloaded, true),
            (599, ServerError, true),
        ];
        for (status, kind, retryable) in table {
            let error = LlmError::from_status(status, "boom");
            assert_eq!(error.kind, kind, "{status}");
            assert_eq!(error.is_retryable(), retryable, "{status}");
            assert_eq!(error.status, Some(status));
        }
    }

    #[test]
    fn kinds_without_status_are_classified() {
        for kind in [
            ErrorKind::Timeout,
            ErrorKind::Connection,
            ErrorKind::Malformed,
        ] {
            assert!(kind.is_retryable(), "{kind}");
        }
        assert!(!ErrorKind::ContentPolicy.is_retryable());
    }

    #[test]
    fn names_are_stable_snake_case_and_unique() {
        let names: std::collections::HashSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        assert_eq!(ErrorKind::RateLimited.as_str(), "rate_limited");
        assert_eq!(ErrorKind::ServerError.as_str(), "server_error");
    }

    #[test]
    fn converts_to_a_step_error_with_the_providers_message() {
        let error =
            LlmError::from_status(429, "slow down").with_retry_after(Duration::from_secs(2));
        assert_eq!(error.to_string(), "rate_limited (HTTP 429): slow down");
        let step = StepError::from(&error);
        assert_eq!(step.kind, "rate_limited");
        assert_eq!(step.message, "slow down");
        assert!(step.retryable);
        let step = StepError::from(&LlmError::new(ErrorKind::ContentPolicy, "refused"));
        assert_eq!(
            (step.kind.as_str(), step.retryable),
            ("content_policy", false)
        );
    }
}
