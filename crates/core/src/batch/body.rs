//! A request body as a job spec, read as its endpoint says: a `/v1/jobs` body is a Chorus
//! [`JobSpec`]; a `/v1/chat/completions` body is an OpenAI chat completion request, translated by
//! [`crate::openai`]. Read for a batch line's `body` and for a JetStream submission's payload; a
//! problem names its field by its path in a batch line (`body.messages[0].role`).

use serde_json::{Map, Value};

use super::Endpoint;
use super::file::LineErrorCode;
use crate::openai::chat_spec;
use crate::spec::{FieldError, JobSpec};

/// A request body as a job spec, read as `endpoint` says: a line's `body`, or a JetStream
/// submission's whole payload. The error names the field within the body (`messages[0].role`).
pub fn spec_from_body(endpoint: Endpoint, body: Value) -> Result<JobSpec, FieldError> {
    let Value::Object(body) = body else {
        return Err(FieldError::new(
            "body",
            format!("must be a JSON object, got {}", kind(&body)),
        ));
    };
    body_spec(endpoint, body).map_err(|e| {
        let field = e.param.strip_prefix("body.").unwrap_or(&e.param);
        FieldError::new(field, e.message)
    })
}

pub(crate) fn body_spec(
    endpoint: Endpoint,
    body: Map<String, Value>,
) -> Result<JobSpec, BodyError> {
    match endpoint {
        Endpoint::Jobs => job_spec(body),
        Endpoint::ChatCompletions => match chat_spec(body)? {
            (spec, None) => Ok(spec),
            (_, Some(_)) => Err(BodyError::invalid(
                "body.stream",
                "streaming is not available in batches",
            )),
        },
    }
}

/// A problem in a body, before it knows its line.
pub(crate) struct BodyError {
    pub(crate) code: LineErrorCode,
    pub(crate) param: String,
    pub(crate) message: String,
}

impl BodyError {
    pub(crate) fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: LineErrorCode::InvalidRequest,
            param: param.into(),
            message: message.into(),
        }
    }

    pub(crate) fn missing(param: impl Into<String>) -> Self {
        Self {
            code: LineErrorCode::MissingRequiredParameter,
            param: param.into(),
            message: "required".into(),
        }
    }
}

/// The body of a `/v1/jobs` line, with the path of the field a problem is in.
fn job_spec(body: Map<String, Value>) -> Result<JobSpec, BodyError> {
    serde_path_to_error::deserialize(Value::Object(body)).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." {
            "body".to_owned()
        } else {
            format!("body.{path}")
        };
        BodyError::invalid(param, e.into_inner().to_string())
    })
}

/// "field `a`" / "fields `a`, `b`" for the keys of `map` not in `known`; empty when none.
pub(crate) fn unknown_fields(map: &Map<String, Value>, known: &[&str]) -> String {
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| format!("`{k}`"))
        .collect();
    match unknown.len() {
        0 => String::new(),
        1 => format!("field {}", unknown[0]),
        _ => format!("fields {}", unknown.join(", ")),
    }
}

/// A JSON value's type, for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
