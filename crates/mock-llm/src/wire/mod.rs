//! The providers' wire formats, one module each: [`openai`] (OpenAI's Chat Completions and Azure
//! OpenAI's, which shares its bodies), [`anthropic`] (the Messages API) and [`ollama`]
//! (`/api/chat`). Each says what its real API refuses before looking at the model, and renders an
//! [`Answer`] as a body, as streamed pieces, and an error status as its error body.

mod anthropic;
mod ollama;
mod openai;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

use crate::behaviour::ToolCall;

/// The endpoint a call came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    OpenAi,
    Azure,
    Anthropic,
    Ollama,
}

/// A request the real API would refuse: the status and message it would answer.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl Api {
    /// What the real API refuses before it even looks at the model.
    pub(crate) fn check(self, uri: &Uri, headers: &HeaderMap, body: &Value) -> Option<Refusal> {
        if !body.is_object() {
            return Some(Refusal::new(400, "the request body is not a JSON object"));
        }
        let refused = match self {
            Self::OpenAi => None,
            Self::Azure => openai::check_azure(uri, headers),
            Self::Anthropic => anthropic::check(headers, body),
            Self::Ollama => ollama::check(body),
        };
        refused.or_else(|| {
            messages(body)
                .is_none()
                .then(|| Refusal::new(400, "'messages' is a required property"))
        })
    }

    /// Whether the request asks for a JSON answer.
    fn wants_json(self, body: &Value) -> bool {
        match self {
            Self::OpenAi | Self::Azure => openai::wants_json(body),
            Self::Anthropic => false,
            Self::Ollama => ollama::wants_json(body),
        }
    }

    /// The answer's body; `filtered` withholds it as the provider's content filter would.
    pub(crate) fn success(self, model: &str, answer: &Answer, filtered: bool) -> Value {
        match self {
            Self::OpenAi | Self::Azure => openai::success(model, answer, filtered),
            Self::Anthropic => anthropic::success(model, answer, filtered),
            Self::Ollama => ollama::success(model, answer),
        }
    }

    /// The answer in the provider's streaming format, one piece (a whole event or line) per
    /// item. Tool calls are not streamed: the text is.
    pub(crate) fn stream(
        self,
        model: &str,
        answer: &Answer,
        filtered: bool,
        include_usage: bool,
    ) -> Vec<String> {
        match self {
            Self::OpenAi | Self::Azure => openai::stream(model, answer, filtered, include_usage),
            Self::Anthropic => anthropic::stream(model, answer, filtered),
            Self::Ollama => ollama::stream(model, answer, filtered),
        }
    }

    /// The content type of a streamed answer.
    pub(crate) fn stream_content_type(self) -> &'static str {
        match self {
            Self::Ollama => "application/x-ndjson",
            Self::OpenAi | Self::Azure | Self::Anthropic => "text/event-stream",
        }
    }

    /// The provider's error response for `status`: its body shape, its usual message and type
    /// unless `code` or `message` say otherwise.
    pub(crate) fn error(
        self,
        status: u16,
        model: &str,
        code: Option<String>,
        message: Option<String>,
    ) -> Response {
        match self {
            Self::OpenAi => openai::error(status, model, code, message),
            Self::Azure => openai::azure_error(status, code, message),
            Self::Anthropic => anthropic::error(status, model, code, message),
            Self::Ollama => ollama::error(status, model, message),
        }
    }
}

/// A successful answer, before it is put in a provider's shape.
pub(crate) struct Answer {
    id: u64,
    text: String,
    tool_calls: Vec<ToolCall>,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl Answer {
    /// The answer to `body`: the `scripted` text, else `[mock] ` and the last user message (as
    /// `{"answer": …}` when JSON was asked for); or `tool_calls` when there are any.
    pub(crate) fn new(
        body: &Value,
        api: Api,
        id: u64,
        scripted: Option<&str>,
        tool_calls: &[ToolCall],
    ) -> Self {
        let messages = messages(body).map(Vec::as_slice).unwrap_or_default();
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(|m| text_of(m.get("content")))
            .unwrap_or_default();
        let text = match scripted {
            Some(answer) => answer.to_owned(),
            None if api.wants_json(body) => {
                json!({"answer": format!("[mock] {last_user}")}).to_string()
            }
            None => format!("[mock] {last_user}"),
        };
        let prompt_chars = messages
            .iter()
            .map(|m| text_of(m.get("content")).chars().count())
            .sum::<usize>()
            + text_of(body.get("system")).chars().count();
        let completion_chars = match tool_calls.is_empty() {
            true => text.chars().count(),
            false => tool_calls
                .iter()
                .map(|c| c.arguments.to_string().len())
                .sum(),
        };
        Self {
            id,
            text,
            tool_calls: tool_calls.to_vec(),
            prompt_tokens: tokens(prompt_chars),
            completion_tokens: tokens(completion_chars),
        }
    }

    /// The text as sent: none when the content filter withholds it.
    fn text(&self, filtered: bool) -> &str {
        if filtered { "" } else { &self.text }
    }
}

/// `status` as a status code; a number outside 100–999 is a 500.
fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn messages(body: &Value) -> Option<&Vec<Value>> {
    body.get("messages").and_then(Value::as_array)
}

/// About four characters per token, at least one.
fn tokens(chars: usize) -> u64 {
    (chars.div_ceil(4) as u64).max(1)
}

/// The text of a message's content: a string, or the text parts of a list of blocks.
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// An answer's text in the pieces a provider streams: a word at a time, each with the space
/// before it.
fn words(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == ' ' && i > start {
            pieces.push(&text[start..i]);
            start = i;
        }
    }
    pieces.push(&text[start..]);
    pieces.retain(|p| !p.is_empty());
    pieces
}
