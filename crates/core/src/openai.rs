//! OpenAI's chat completion request (`POST /v1/chat/completions`, or a batch line for that url)
//! as a one-call Chorus job spec: `developer` messages become system messages; content given as
//! text parts is joined with newlines. Also OpenAI's limits on `metadata`, which batches keep too.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::batch::body::{BodyError, kind, unknown_fields};
use crate::batch::file::LineErrorCode;
use crate::spec::{ChatMessage, FieldError, JobSpec, Params, Role};

/// How a `POST /v1/chat/completions` asked to be streamed (`stream: true`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streaming {
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
}

/// A problem with a `POST /v1/chat/completions` body: the field (a path within the body, `None`
/// for the body as a whole) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatRequestError {
    pub param: Option<String>,
    pub message: String,
    pub code: LineErrorCode,
}

/// A `POST /v1/chat/completions` body (OpenAI's chat completion request) as a one-call job spec,
/// and whether to stream the answer.
pub fn chat_request(body: Value) -> Result<(JobSpec, Option<Streaming>), ChatRequestError> {
    let Value::Object(body) = body else {
        return Err(ChatRequestError {
            param: None,
            message: format!("the body must be a JSON object, got {}", kind(&body)),
            code: LineErrorCode::InvalidRequest,
        });
    };
    chat_spec(body).map_err(|e| {
        let param = e.param.strip_prefix("body.").map(str::to_owned);
        let message = match &param {
            Some(field) => format!("{field}: {}", e.message),
            None => e.message,
        };
        ChatRequestError {
            param,
            message,
            code: e.code,
        }
    })
}

/// The fields of an OpenAI chat completion request Chorus takes. `user` is accepted and ignored;
/// `n` only as 1; `stream` (and `stream_options`) not in batches.
const CHAT_FIELDS: [&str; 16] = [
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "metadata",
    "user",
    "stream",
    "stream_options",
    "n",
];

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Option<Vec<ChatRequestMessage>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<Value>,
    seed: Option<u64>,
    response_format: Option<Value>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    metadata: Option<Map<String, Value>>,
    /// Accepted and ignored, but a string.
    #[serde(rename = "user")]
    _user: Option<String>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRequestMessage {
    role: String,
    #[serde(default)]
    content: Value,
    #[serde(default)]
    name: Option<String>,
}

/// A `/v1/chat/completions` body as a one-call job spec, and how to stream it.
pub(crate) fn chat_spec(
    body: Map<String, Value>,
) -> Result<(JobSpec, Option<Streaming>), BodyError> {
    let unknown = unknown_fields(&body, &CHAT_FIELDS);
    if !unknown.is_empty() {
        return Err(BodyError::invalid(
            "body",
            format!(
                "unknown or unsupported {unknown}; a chat completion takes {}",
                CHAT_FIELDS.join(", ")
            ),
        ));
    }
    let request: ChatRequest =
        serde_path_to_error::deserialize(Value::Object(body)).map_err(|e| {
            BodyError::invalid(format!("body.{}", e.path()), e.into_inner().to_string())
        })?;
    let streaming = match (request.stream, request.stream_options) {
        (Some(true), options) => Some(Streaming {
            include_usage: options.is_some_and(|o| o.include_usage),
        }),
        (_, Some(_)) => {
            return Err(BodyError::invalid(
                "body.stream_options",
                "only with `stream: true`",
            ));
        }
        _ => None,
    };
    if let Some(metadata) = &request.metadata {
        check_metadata(metadata)
            .map_err(|e| BodyError::invalid(format!("body.{}", e.field), e.problem))?;
    }
    if let Some(n) = request.n.filter(|n| *n != 1) {
        return Err(BodyError::invalid(
            "body.n",
            format!("must be 1 (one choice per request), got {n}"),
        ));
    }
    let model = request
        .model
        .ok_or_else(|| BodyError::missing("body.model"))?;
    let messages = request
        .messages
        .ok_or_else(|| BodyError::missing("body.messages"))?;
    if messages.is_empty() {
        return Err(BodyError::invalid("body.messages", "must not be empty"));
    }
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| chat_message(i, m))
        .collect::<Result<_, _>>()?;
    let max_tokens = match (request.max_tokens, request.max_completion_tokens) {
        (Some(a), Some(b)) if a != b => {
            return Err(BodyError {
                code: LineErrorCode::ConflictingParameters,
                param: "body.max_completion_tokens".into(),
                message: format!("differs from max_tokens ({a}); give one of them"),
            });
        }
        (a, b) => b.or(a),
    };
    // OpenAI's shapes: tools a list of objects, tool_choice a mode or an object, metadata text.
    if let Some(tools) = &request.tools
        && !tools
            .as_array()
            .is_some_and(|t| t.iter().all(Value::is_object))
    {
        return Err(BodyError::invalid(
            "body.tools",
            format!("must be an array of tool objects, got {}", kind(tools)),
        ));
    }
    if let Some(choice) = &request.tool_choice
        && !(choice.is_object()
            || choice
                .as_str()
                .is_some_and(|c| ["none", "auto", "required"].contains(&c)))
    {
        return Err(BodyError::invalid(
            "body.tool_choice",
            "must be `none`, `auto`, `required` or an object naming a tool",
        ));
    }
    if let Some((key, value)) = request
        .metadata
        .iter()
        .flatten()
        .find(|(_, value)| !value.is_string())
    {
        return Err(BodyError::invalid(
            format!("body.metadata.{key}"),
            format!("must be a string, got {}", kind(value)),
        ));
    }
    let stop = match request.stop {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s),
                other => Err(BodyError::invalid(
                    format!("body.stop[{i}]"),
                    format!("must be a string, got {}", kind(&other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(BodyError::invalid(
                "body.stop",
                format!(
                    "must be a string or an array of strings, got {}",
                    kind(&other)
                ),
            ));
        }
    };
    let spec = JobSpec {
        model: Some(model),
        messages,
        params: Params {
            temperature: request.temperature,
            top_p: request.top_p,
            max_tokens,
            stop,
            seed: request.seed,
            response_format: request.response_format,
            tools: request.tools,
            tool_choice: request.tool_choice,
        },
        metadata: request.metadata.unwrap_or_default(),
        ..JobSpec::default()
    };
    Ok((spec, streaming))
}

/// One request message: `developer` is a system message; content is a string or text parts,
/// joined with newlines.
fn chat_message(i: usize, message: ChatRequestMessage) -> Result<ChatMessage, BodyError> {
    let role = match message.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(BodyError::invalid(
                format!("body.messages[{i}].role"),
                format!("unknown role \"{other}\" (use system, developer, user or assistant)"),
            ));
        }
    };
    let field = format!("body.messages[{i}].content");
    let content = match message.content {
        Value::Null => return Err(BodyError::missing(field)),
        Value::String(s) => s,
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let part_type = part.get("type").and_then(Value::as_str);
                if part_type != Some("text") {
                    let got =
                        part_type.map_or_else(|| "no type".to_owned(), |k| format!("\"{k}\""));
                    return Err(BodyError::invalid(
                        format!("{field}[{j}].type"),
                        format!("only \"text\" parts are available in batches, got {got}"),
                    ));
                }
                match part.get("text") {
                    Some(Value::String(text)) => texts.push(text.as_str()),
                    None | Some(Value::Null) => {
                        return Err(BodyError::missing(format!("{field}[{j}].text")));
                    }
                    Some(other) => {
                        return Err(BodyError::invalid(
                            format!("{field}[{j}].text"),
                            format!("must be a string, got {}", kind(other)),
                        ));
                    }
                }
            }
            texts.join("\n")
        }
        other => {
            return Err(BodyError::invalid(
                field,
                format!(
                    "must be a string or an array of text parts, got {}",
                    kind(&other)
                ),
            ));
        }
    };
    Ok(ChatMessage {
        role,
        content,
        name: message.name,
    })
}

/// OpenAI's limits on `metadata` (of a batch, of a chat completion): at most this many pairs…
pub const MAX_METADATA_PAIRS: usize = 16;
/// …keys of at most this many characters…
pub const MAX_METADATA_KEY: usize = 64;
/// …and string values of at most this many characters.
pub const MAX_METADATA_VALUE: usize = 512;

/// Checks the `metadata` of a batch or of a chat completion request against OpenAI's limits:
/// at most [`MAX_METADATA_PAIRS`] pairs, keys of at most [`MAX_METADATA_KEY`] characters,
/// values strings of at most [`MAX_METADATA_VALUE`]. (A Chorus job's own `metadata` is any JSON
/// object; see [`crate::spec::MAX_JSON_DEPTH`].)
pub fn check_metadata(metadata: &Map<String, Value>) -> Result<(), FieldError> {
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(FieldError::new(
            "metadata",
            format!(
                "{} pairs; at most {MAX_METADATA_PAIRS} are allowed",
                metadata.len()
            ),
        ));
    }
    for (key, value) in metadata {
        if key.chars().count() > MAX_METADATA_KEY {
            return Err(FieldError::new(
                "metadata",
                format!("a key is longer than {MAX_METADATA_KEY} characters"),
            ));
        }
        let problem = match value {
            Value::String(s) if s.chars().count() > MAX_METADATA_VALUE => {
                format!("longer than {MAX_METADATA_VALUE} characters")
            }
            Value::String(_) => continue,
            other => format!("must be a string, got {}", kind(other)),
        };
        return Err(FieldError::new(format!("metadata.{key}"), problem));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn openai_metadata_keeps_to_openais_limits() {
        let fits = |pairs: usize| -> Map<String, Value> {
            (0..pairs)
                .map(|i| (format!("{i:0>64}"), json!("v\0🎉".repeat(170))))
                .collect()
        };
        assert_eq!(check_metadata(&fits(16)), Ok(()));
        assert_eq!(check_metadata(&Map::new()), Ok(()));
        let refused = |metadata: Value| {
            let Value::Object(map) = metadata else {
                unreachable!()
            };
            check_metadata(&map).unwrap_err().to_string()
        };
        assert_eq!(
            refused(Value::Object(fits(17))),
            "metadata: 17 pairs; at most 16 are allowed"
        );
        assert_eq!(
            refused(json!({"k".repeat(65): "v"})),
            "metadata: a key is longer than 64 characters"
        );
        assert_eq!(
            refused(json!({"run": "x".repeat(513)})),
            "metadata.run: longer than 512 characters"
        );
        assert_eq!(
            refused(json!({"run": {"nested": true}})),
            "metadata.run: must be a string, got an object"
        );
    }
}
