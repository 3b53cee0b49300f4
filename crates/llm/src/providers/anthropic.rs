//! `anthropic`: the Messages API (`POST {base_url}/v1/messages`, headers `x-api-key` and
//! `anthropic-version`, default `2023-06-01`, or the route's `api_version`).
//!
//! What differs from OpenAI's shape is mapped here: system messages go to the top-level `system`
//! field (joined by a blank line); `max_tokens` is required, so the job's, else the route's, else
//! [`DEFAULT_MAX_TOKENS`] is sent; `stop` becomes `stop_sequences`; tools arrive in OpenAI's shape
//! and are sent as `{name, description, input_schema}`, `tool_choice` likewise. Answers are the
//! text blocks joined, `tool_use` blocks become tool calls in OpenAI's shape, and `stop_reason` is
//! reported in OpenAI's words. Prompt tokens count cache writes and reads too. A streaming call
//! sends `stream: true` and reads the text deltas, the usage of `message_start` and
//! `message_delta`, and an `error` event as the error it names. `seed` and
//! `response_format` have no equivalent in the Messages API and are not sent.

use chorus_core::config::RouteConfig;
use chorus_core::messages::Usage;
use chorus_core::spec::Role;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::http::{ErrorBody, Http, LineStream, decode, ended_early, endpoint, sse_data};
use super::{Credentials, ProviderError};
use crate::error::{ErrorKind, LlmError};
use crate::provider::{Completion, CompletionRequest, Delta, DeltaSink};

pub const PROVIDER_NAME: &str = "anthropic";
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_VERSION: &str = "2023-06-01";
/// `max_tokens` when neither the job nor the route sets one.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

#[derive(Debug)]
pub struct Anthropic {
    http: Http,
    url: Url,
    version: HeaderValue,
    max_tokens: u32,
}

impl Anthropic {
    pub fn new(config: &RouteConfig, credentials: Credentials) -> Result<Self, ProviderError> {
        let base = config.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let version = config.api_version.as_deref().unwrap_or(DEFAULT_VERSION);
        let http = Http::new(config, credentials)?;
        if credentials == Credentials::Load && !http.has_key() {
            return Err(ProviderError::NoKey {
                provider: PROVIDER_NAME,
            });
        }
        Ok(Self {
            http,
            url: endpoint(base, "v1/messages")?,
            version: HeaderValue::from_str(version).map_err(|source| {
                ProviderError::ApiVersion {
                    version: version.into(),
                    source,
                }
            })?,
            max_tokens: config.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        })
    }

    async fn call(&self, request: &CompletionRequest) -> Result<Completion, LlmError> {
        let params = &request.params;
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let body = MessagesRequest {
            model: &request.model,
            max_tokens: params.max_tokens.unwrap_or(self.max_tokens),
            messages: request
                .messages
                .iter()
                .filter(|m| m.role != Role::System)
                .map(|m| Message {
                    role: m.role,
                    content: &m.content,
                })
                .collect(),
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            temperature: params.temperature,
            top_p: params.top_p,
            stop_sequences: &params.stop,
            tools: params.tools.as_ref().map(tools).transpose()?,
            tool_choice: params.tool_choice.as_ref().map(tool_choice).transpose()?,
            stream: None,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            self.version.clone(),
        );
        self.http
            .auth(&mut headers, HeaderName::from_static("x-api-key"), "")?;
        if let Some(sink) = request.stream_to() {
            let body = MessagesRequest {
                stream: Some(true),
                ..body
            };
            let url = self.url.clone();
            return self
                .http
                .streamed::<Stream>(url, headers, &body, read_error, sink)
                .await;
        }
        let url = self.url.clone();
        completion(
            self.http
                .answer(url, headers, &body, read_error, "a Messages API message")
                .await?,
        )
    }
}

super::provider!(Anthropic);

/// A streamed message (Server-Sent Events: `message_start`, `content_block_delta`s,
/// `message_delta`, `message_stop`; `error` when it fails midway), gathered as it arrives.
#[derive(Default)]
struct Stream {
    stopped: bool,
    text: String,
    stop_reason: Option<String>,
    usage: Option<MessagesUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartedMessage,
    },
    ContentBlockDelta {
        delta: BlockDelta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<OutputUsage>,
    },
    MessageStop,
    Error {},
    /// `ping`, `content_block_start`, `content_block_stop`.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartedMessage {
    usage: MessagesUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    /// Tool input and thinking deltas carry no answer text.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct OutputUsage {
    #[serde(default)]
    output_tokens: u32,
}

impl LineStream for Stream {
    fn line(&mut self, line: &str, sink: &DeltaSink) -> Result<(), LlmError> {
        let Some(data) = sse_data(line) else {
            return Ok(());
        };
        match decode::<Event>(data.as_bytes(), "a Messages API stream event")? {
            Event::MessageStart { message } => {
                self.usage = Some(message.usage);
                sink.send(Delta::Begin);
            }
            Event::ContentBlockDelta {
                delta: BlockDelta::TextDelta { text },
            } => {
                sink.send(Delta::Text(&text));
                self.text.push_str(&text);
            }
            Event::MessageDelta { delta, usage } => {
                self.stop_reason = delta.stop_reason.or(self.stop_reason.take());
                if let (Some(total), Some(delta)) = (&mut self.usage, usage) {
                    total.output_tokens = delta.output_tokens;
                }
            }
            Event::MessageStop => self.stopped = true,
            Event::Error {} => {
                let found = read_error(data.as_bytes());
                return Err(LlmError::new(
                    found.kind.unwrap_or(ErrorKind::ServerError),
                    found
                        .message
                        .unwrap_or_else(|| "the stream reported an error".into()),
                ));
            }
            Event::ContentBlockDelta { .. } | Event::Other => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<Completion, LlmError> {
        let (true, Some(usage)) = (self.stopped, self.usage) else {
            return Err(ended_early());
        };
        completion(MessagesResponse {
            content: vec![Block::Text { text: self.text }],
            stop_reason: self.stop_reason,
            usage,
        })
    }
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: Role,
    content: &'a str,
}

fn bad_request(message: impl Into<String>) -> LlmError {
    LlmError::new(ErrorKind::BadRequest, message)
}

/// OpenAI's `{type: function, function: {name, description, parameters}}` as Anthropic's
/// `{name, description, input_schema}`; a tool already in Anthropic's shape passes as it is.
fn tools(tools: &Value) -> Result<Vec<Value>, LlmError> {
    let list = tools
        .as_array()
        .ok_or_else(|| bad_request("`tools` must be an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, tool)| {
            if tool.get("input_schema").is_some() {
                return Ok(tool.clone());
            }
            let function = tool
                .get("function")
                .filter(|_| tool.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    bad_request(format!(
                        "tools[{i}]: expected {{\"type\": \"function\", \"function\": {{…}}}}"
                    ))
                })?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_request(format!("tools[{i}].function.name is required")))?;
            let schema = function
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            let mut mapped = json!({"name": name, "input_schema": schema});
            if let Some(description) = function.get("description") {
                mapped["description"] = description.clone();
            }
            Ok(mapped)
        })
        .collect()
}

/// OpenAI's `"auto" | "required" | "none" | {type: function, function: {name}}` as Anthropic's
/// `{type: auto | any | none | tool}`.
fn tool_choice(choice: &Value) -> Result<Value, LlmError> {
    let kind = choice.get("type").and_then(Value::as_str);
    match (choice.as_str(), kind) {
        (Some("auto"), _) => Ok(json!({"type": "auto"})),
        (Some("required"), _) => Ok(json!({"type": "any"})),
        (Some("none"), _) => Ok(json!({"type": "none"})),
        (_, Some("function")) => choice
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|name| json!({"type": "tool", "name": name}))
            .ok_or_else(|| bad_request("tool_choice.function.name is required")),
        (_, Some("auto" | "any" | "none" | "tool")) => Ok(choice.clone()),
        _ => Err(bad_request(format!("unsupported tool_choice {choice}"))),
    }
}

#[derive(Deserialize)]
struct MessagesResponse {
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    usage: MessagesUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// Thinking and server-tool blocks carry no answer text.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessagesUsage {
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
    #[serde(default)]
    cache_creation_input_tokens: Option<u32>,
    #[serde(default)]
    cache_read_input_tokens: Option<u32>,
}

fn completion(response: MessagesResponse) -> Result<Completion, LlmError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in response.content {
        match block {
            Block::Text { text: part } => text.push_str(&part),
            Block::ToolUse { id, name, input } => calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": input.to_string()},
            })),
            Block::Other => {}
        }
    }
    let stop_reason = response.stop_reason;
    if stop_reason.as_deref() == Some("refusal") && text.is_empty() && calls.is_empty() {
        return Err(LlmError::new(
            ErrorKind::ContentPolicy,
            "the model declined to answer (stop_reason refusal)",
        ));
    }
    let usage = response.usage;
    let cached =
        usage.cache_creation_input_tokens.unwrap_or(0) + usage.cache_read_input_tokens.unwrap_or(0);
    Ok(Completion {
        text,
        usage: Usage {
            prompt_tokens: usage.input_tokens + cached,
            completion_tokens: usage.output_tokens,
        },
        finish_reason: stop_reason.map(|reason| {
            match reason.as_str() {
                "end_turn" | "stop_sequence" => "stop",
                "max_tokens" => "length",
                "tool_use" => "tool_calls",
                "refusal" => "content_filter",
                other => other,
            }
            .to_owned()
        }),
        tool_calls: (!calls.is_empty()).then_some(Value::Array(calls)),
    })
}

/// `{"type": "error", "error": {"type", "message"}}`; the type refines the status where it says
/// more (an `overloaded_error` is [`ErrorKind::Overloaded`] whatever its status).
fn read_error(body: &[u8]) -> ErrorBody {
    #[derive(Deserialize)]
    struct Envelope {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        message: Option<String>,
    }
    let Ok(Envelope { error }) = serde_json::from_slice(body) else {
        return ErrorBody::default();
    };
    let kind = match error.kind.as_str() {
        "overloaded_error" => Some(ErrorKind::Overloaded),
        "rate_limit_error" => Some(ErrorKind::RateLimited),
        "authentication_error" => Some(ErrorKind::Unauthorized),
        "permission_error" => Some(ErrorKind::Forbidden),
        "not_found_error" => Some(ErrorKind::NotFound),
        "request_too_large" => Some(ErrorKind::BadRequest),
        // `invalid_request_error` and `api_error`: the status says which (400/422, 5xx).
        _ => None,
    };
    ErrorBody {
        kind,
        message: error.message,
    }
}
