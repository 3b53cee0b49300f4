//! `openai`: Chat Completions (`POST {base_url}/chat/completions`, `Authorization: Bearer`) as
//! OpenAI documents it, which vLLM, llama.cpp's server, Ollama's `/v1`, LM Studio, OpenRouter,
//! Groq and Together speak too. A route with `api_version` is Azure OpenAI: its base URL is the
//! deployment's (`https://{resource}.openai.azure.com/openai/deployments/{deployment}`),
//! `?api-version=` is added and the key goes in `api-key`.
//!
//! `response_format`, `tools` and `tool_choice` pass through untouched; the route's `max_tokens`
//! is sent when the job sets none. A streaming call asks for `stream: true` with
//! `stream_options.include_usage` and reads the chunks' `delta.content`, the last chunk's usage
//! and `data: [DONE]`. Error bodies are read leniently: OpenAI's
//! `{"error": {"message", "type", "param", "code"}}`, and the shapes compatible servers use instead
//! (`{"error": "…"}`, vLLM's top-level `message`). A content filter that withheld the answer, a
//! refusal, or an error coded `content_policy_violation` / `content_filter` is
//! [`ErrorKind::ContentPolicy`].

use chorus_core::config::RouteConfig;
use chorus_core::messages::Usage;
use chorus_core::spec::ChatMessage;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::http::{ErrorBody, Http, LineStream, decode, ended_early, endpoint, sse_data};
use super::{Credentials, ProviderError};
use crate::error::{ErrorKind, LlmError};
use crate::provider::{Completion, CompletionRequest, Delta, DeltaSink};

pub const PROVIDER_NAME: &str = "openai";
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

#[derive(Debug)]
pub struct OpenAi {
    http: Http,
    url: Url,
    azure: bool,
    max_tokens: Option<u32>,
}

impl OpenAi {
    pub fn new(config: &RouteConfig, credentials: Credentials) -> Result<Self, ProviderError> {
        let base = config.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let mut url = endpoint(base, "chat/completions")?;
        if let Some(version) = &config.api_version {
            url.query_pairs_mut().append_pair("api-version", version);
        }
        Ok(Self {
            http: Http::new(config, credentials)?,
            url,
            azure: config.api_version.is_some(),
            max_tokens: config.max_tokens,
        })
    }

    async fn call(&self, request: &CompletionRequest) -> Result<Completion, LlmError> {
        let params = &request.params;
        let body = ChatRequest {
            model: &request.model,
            messages: &request.messages,
            temperature: params.temperature,
            top_p: params.top_p,
            max_tokens: params.max_tokens.or(self.max_tokens),
            stop: &params.stop,
            seed: params.seed,
            response_format: params.response_format.as_ref(),
            tools: params.tools.as_ref(),
            tool_choice: params.tool_choice.as_ref(),
            stream: None,
            stream_options: None,
        };
        let mut headers = HeaderMap::new();
        if self.azure {
            self.http
                .auth(&mut headers, HeaderName::from_static("api-key"), "")?;
        } else {
            self.http.auth(&mut headers, AUTHORIZATION, "Bearer ")?;
        }
        if let Some(sink) = request.stream_to() {
            let body = ChatRequest {
                stream: Some(true),
                stream_options: Some(StreamOptions {
                    include_usage: true,
                }),
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
                .answer(url, headers, &body, read_error, "a chat completion")
                .await?,
        )
    }
}

super::provider!(OpenAi);

/// A streamed chat completion (Server-Sent Events of `chat.completion.chunk` objects, then
/// `data: [DONE]`), gathered into the answer as it arrives.
#[derive(Default)]
struct Stream {
    started: bool,
    done: bool,
    text: String,
    refusal: Option<String>,
    finish_reason: Option<String>,
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: ChunkDelta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Default, Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

impl LineStream for Stream {
    fn line(&mut self, line: &str, sink: &DeltaSink) -> Result<(), LlmError> {
        let Some(data) = sse_data(line) else {
            return Ok(());
        };
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        // A failure after the answer began comes as an error object in place of a chunk.
        if let Some(message) = read_error(data.as_bytes()).message {
            return Err(LlmError::new(ErrorKind::ServerError, message));
        }
        let chunk: Chunk = decode(data.as_bytes(), "a chat completion chunk")?;
        if !self.started {
            self.started = true;
            sink.send(Delta::Begin);
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        for choice in chunk.choices {
            if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                sink.send(Delta::Text(&text));
                self.text.push_str(&text);
            }
            if let Some(refusal) = choice.delta.refusal {
                self.refusal.get_or_insert_default().push_str(&refusal);
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Completion, LlmError> {
        if !self.done && self.finish_reason.is_none() {
            return Err(ended_early());
        }
        completion(ChatResponse {
            choices: vec![Choice {
                message: AssistantMessage {
                    content: Some(self.text),
                    tool_calls: None,
                    refusal: self.refusal,
                },
                finish_reason: self.finish_reason,
            }],
            usage: self.usage,
        })
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: AssistantMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct AssistantMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Value>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

fn completion(response: ChatResponse) -> Result<Completion, LlmError> {
    let choice =
        response.choices.into_iter().next().ok_or_else(|| {
            LlmError::new(ErrorKind::Malformed, "the chat completion has no choices")
        })?;
    let message = choice.message;
    let tool_calls = message
        .tool_calls
        .filter(|calls| calls.as_array().is_some_and(|a| !a.is_empty()));
    let text = message.content.unwrap_or_default();
    if text.is_empty() && tool_calls.is_none() {
        if let Some(refusal) = message.refusal {
            return Err(LlmError::new(ErrorKind::ContentPolicy, refusal));
        }
        if choice.finish_reason.as_deref() == Some("content_filter") {
            return Err(LlmError::new(
                ErrorKind::ContentPolicy,
                "the provider's content filter withheld the answer (finish_reason content_filter)",
            ));
        }
    }
    Ok(Completion {
        text,
        usage: response
            .usage
            .map(|u| Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            })
            .unwrap_or_default(),
        finish_reason: choice.finish_reason,
        tool_calls,
    })
}

fn read_error(body: &[u8]) -> ErrorBody {
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(default)]
        error: Option<Value>,
        #[serde(default)]
        message: Option<String>,
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope>(body) else {
        return ErrorBody::default();
    };
    let field =
        |error: &Value, name: &str| error.get(name).and_then(Value::as_str).map(str::to_owned);
    match envelope.error {
        Some(error @ Value::Object(_)) => {
            let policy = ["code", "type"].iter().any(|name| {
                matches!(
                    field(&error, name).as_deref(),
                    Some("content_policy_violation" | "content_filter")
                )
            });
            ErrorBody {
                kind: policy.then_some(ErrorKind::ContentPolicy),
                message: field(&error, "message"),
            }
        }
        Some(Value::String(message)) => ErrorBody {
            kind: None,
            message: Some(message),
        },
        _ => ErrorBody {
            kind: None,
            message: envelope.message,
        },
    }
}
