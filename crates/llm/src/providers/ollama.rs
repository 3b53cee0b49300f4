//! `ollama`: Ollama's native chat endpoint (`POST {base_url}/api/chat`, no key): one answer per
//! request (`"stream": false`), or, for a streaming call, `"stream": true` and a JSON object per
//! line until the one with `"done": true`, which carries the usage.
//!
//! Sampling parameters go in `options` (`temperature`, `top_p`, `num_predict` from `max_tokens`
//! or the route's, `stop`, `seed`); a JSON `response_format` becomes `"format": "json"`, or the
//! schema itself for `json_schema`. Tools pass through; tool calls come back with their arguments
//! as objects and are reported in OpenAI's shape (arguments as a JSON string). Usage is
//! `prompt_eval_count` and `eval_count` (Ollama leaves the first out when the prompt was cached).
//! Errors are `{"error": "…"}`. A route may carry a key (for a proxy in front of Ollama); it is
//! sent as `Authorization: Bearer`.

use chorus_core::config::RouteConfig;
use chorus_core::messages::Usage;
use chorus_core::spec::{ChatMessage, Role};
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::http::{ErrorBody, Http, LineStream, decode, ended_early, endpoint};
use super::{Credentials, ProviderError};
use crate::error::{ErrorKind, LlmError};
use crate::provider::{Completion, CompletionRequest, Delta, DeltaSink};

pub const PROVIDER_NAME: &str = "ollama";
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:11434";

#[derive(Debug)]
pub struct Ollama {
    http: Http,
    url: Url,
    max_tokens: Option<u32>,
}

impl Ollama {
    pub fn new(config: &RouteConfig, credentials: Credentials) -> Result<Self, ProviderError> {
        let base = config.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        Ok(Self {
            http: Http::new(config, credentials)?,
            url: endpoint(base, "api/chat")?,
            max_tokens: config.max_tokens,
        })
    }

    async fn call(&self, request: &CompletionRequest) -> Result<Completion, LlmError> {
        let params = &request.params;
        let format = match params.response_schema() {
            Some(schema) => Some(schema.clone()),
            None => params.wants_json().then(|| json!("json")),
        };
        let sink = request.stream_to();
        let body = ChatRequest {
            model: &request.model,
            messages: request.messages.iter().map(Message::from).collect(),
            stream: sink.is_some(),
            format,
            options: Options {
                temperature: params.temperature,
                top_p: params.top_p,
                num_predict: params.max_tokens.or(self.max_tokens),
                stop: &params.stop,
                seed: params.seed,
            },
            tools: params.tools.as_ref(),
        };
        let mut headers = HeaderMap::new();
        self.http.auth(&mut headers, AUTHORIZATION, "Bearer ")?;
        let url = self.url.clone();
        if let Some(sink) = sink {
            return self
                .http
                .streamed::<Stream>(url, headers, &body, read_error, sink)
                .await;
        }
        Ok(completion(
            self.http
                .answer(url, headers, &body, read_error, "an Ollama chat response")
                .await?,
        ))
    }
}

super::provider!(Ollama);

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<Value>,
    #[serde(skip_serializing_if = "Options::is_empty")]
    options: Options<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a Value>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: Role,
    content: &'a str,
}

impl<'a> From<&'a ChatMessage> for Message<'a> {
    fn from(message: &'a ChatMessage) -> Self {
        Self {
            role: message.role,
            content: &message.content,
        }
    }
}

#[derive(Serialize)]
struct Options<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_predict: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
}

impl Options<'_> {
    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.num_predict.is_none()
            && self.stop.is_empty()
            && self.seed.is_none()
    }
}

/// A streamed answer (a JSON object per line), gathered as it arrives.
#[derive(Default)]
struct Stream {
    started: bool,
    text: String,
    last: Option<ChatResponse>,
}

#[derive(Deserialize)]
struct StreamLine {
    #[serde(flatten)]
    response: ChatResponse,
    #[serde(default)]
    done: bool,
}

impl LineStream for Stream {
    fn line(&mut self, line: &str, sink: &DeltaSink) -> Result<(), LlmError> {
        if line.trim().is_empty() {
            return Ok(());
        }
        // A failure midway is a line of its own: `{"error": "…"}`.
        if let Some(message) = read_error(line.as_bytes()).message {
            return Err(LlmError::new(ErrorKind::ServerError, message));
        }
        let line: StreamLine = decode(line.as_bytes(), "a line of an Ollama chat stream")?;
        if !self.started {
            self.started = true;
            sink.send(Delta::Begin);
        }
        let text = &line.response.message.content;
        if !text.is_empty() {
            sink.send(Delta::Text(text));
            self.text.push_str(text);
        }
        if line.done {
            self.last = Some(line.response);
        }
        Ok(())
    }

    fn finish(self) -> Result<Completion, LlmError> {
        let mut last = self.last.ok_or_else(ended_early)?;
        last.message.content = self.text;
        Ok(completion(last))
    }
}

#[derive(Deserialize)]
struct ChatResponse {
    message: ResponseMessage,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: u32,
    #[serde(default)]
    eval_count: u32,
}

#[derive(Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tool_calls: Vec<ToolCall>,
}

#[derive(Deserialize)]
struct ToolCall {
    function: Function,
}

#[derive(Deserialize)]
struct Function {
    name: String,
    #[serde(default)]
    arguments: Value,
}

fn completion(response: ChatResponse) -> Completion {
    let calls: Vec<Value> = response
        .message
        .tool_calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| {
            json!({
                "id": format!("call_{i}"),
                "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments.to_string()},
            })
        })
        .collect();
    let finish_reason = match calls.is_empty() {
        true => response.done_reason,
        false => Some("tool_calls".to_owned()),
    };
    Completion {
        text: response.message.content,
        usage: Usage {
            prompt_tokens: response.prompt_eval_count,
            completion_tokens: response.eval_count,
        },
        finish_reason,
        tool_calls: (!calls.is_empty()).then_some(Value::Array(calls)),
    }
}

fn read_error(body: &[u8]) -> ErrorBody {
    #[derive(Deserialize)]
    struct Envelope {
        error: String,
    }
    ErrorBody {
        kind: None,
        message: serde_json::from_slice::<Envelope>(body)
            .ok()
            .map(|e| e.error),
    }
}
