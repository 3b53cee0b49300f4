//! Ollama's native `/api/chat`: one JSON body, or JSON lines when streamed (which Ollama does
//! unless told not to, so the mock wants `"stream"` set either way), and `{"error": …}` bodies.
//! Ollama has no content filter: a content-filter fault answers normally (an empty text when
//! streamed).

use std::time::SystemTime;

use axum::Json;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{Answer, Refusal, status_code, words};

pub(super) fn check(body: &Value) -> Option<Refusal> {
    // A client that forgets `"stream": false` would get lines it does not expect.
    body.get("stream")
        .and_then(Value::as_bool)
        .is_none()
        .then(|| Refusal::new(400, "the mock wants \"stream\" set, true or false"))
}

/// `format` asks for JSON, or for JSON that follows a schema.
pub(super) fn wants_json(body: &Value) -> bool {
    body.get("format").is_some_and(|f| !f.is_null())
}

pub(super) fn success(model: &str, answer: &Answer) -> Value {
    let mut message = json!({"role": "assistant", "content": answer.text});
    if !answer.tool_calls.is_empty() {
        message["content"] = json!("");
        message["tool_calls"] = answer
            .tool_calls
            .iter()
            .map(|c| json!({"function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
    }
    json!({
        "model": model,
        "created_at": timestamp(SystemTime::now()),
        "message": message,
        "done": true,
        "done_reason": "stop",
        "total_duration": 1_000_000,
        "load_duration": 100_000,
        "prompt_eval_count": answer.prompt_tokens,
        "prompt_eval_duration": 200_000,
        "eval_count": answer.completion_tokens,
        "eval_duration": 700_000,
    })
}

pub(super) fn stream(model: &str, answer: &Answer, filtered: bool) -> Vec<String> {
    let at = || timestamp(SystemTime::now());
    let mut pieces: Vec<String> = words(answer.text(filtered))
        .into_iter()
        .map(|w| {
            let line = json!({"model": model, "created_at": at(),
                "message": {"role": "assistant", "content": w}, "done": false});
            format!("{line}\n")
        })
        .collect();
    let last = json!({"model": model, "created_at": at(),
        "message": {"role": "assistant", "content": ""}, "done": true,
        "done_reason": "stop", "total_duration": 1_000_000, "load_duration": 100_000,
        "prompt_eval_count": answer.prompt_tokens, "prompt_eval_duration": 200_000,
        "eval_count": answer.completion_tokens, "eval_duration": 700_000});
    pieces.push(format!("{last}\n"));
    pieces
}

pub(super) fn error(status: u16, model: &str, message: Option<String>) -> Response {
    let usual = match status {
        404 => format!("model \"{model}\" not found, try pulling it first"),
        503 => "server busy, please try again.  maximum pending requests exceeded".to_owned(),
        s if s >= 500 => "llama runner process has terminated: exit status 2".to_owned(),
        _ => "invalid request (mock)".to_owned(),
    };
    let body = json!({"error": message.unwrap_or(usual)});
    (status_code(status), Json(body)).into_response()
}

/// Ollama's timestamps: RFC 3339 in UTC with nanoseconds.
fn timestamp(at: SystemTime) -> String {
    DateTime::<Utc>::from(at).to_rfc3339_opts(SecondsFormat::Nanos, true)
}
