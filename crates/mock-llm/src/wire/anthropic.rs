//! Anthropic's Messages API (`POST /v1/messages`): `message` bodies with content blocks, the
//! streamed message events (`message_start` … `message_stop`), its typed error bodies with a
//! `request-id`; and what it insists on — `x-api-key`, `anthropic-version`, `max_tokens`, and
//! no `system` role among the messages.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Answer, Refusal, messages, status_code, words};

pub(super) fn check(headers: &HeaderMap, body: &Value) -> Option<Refusal> {
    if !headers.contains_key("x-api-key") {
        return Some(Refusal::new(401, "x-api-key header is required"));
    }
    if !headers.contains_key("anthropic-version") {
        return Some(Refusal::new(400, "anthropic-version: header is required"));
    }
    if body.get("max_tokens").is_none_or(|t| !t.is_u64()) {
        return Some(Refusal::new(400, "max_tokens: Field required"));
    }
    let system_role = messages(body).is_some_and(|m| {
        m.iter()
            .any(|m| m.get("role").and_then(Value::as_str) == Some("system"))
    });
    if system_role {
        return Some(Refusal::new(
            400,
            "messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.",
        ));
    }
    None
}

pub(super) fn success(model: &str, answer: &Answer, filtered: bool) -> Value {
    let id = answer.id;
    let mut content: Vec<Value> = Vec::new();
    let mut stop = "end_turn";
    if filtered {
        stop = "refusal";
    } else if answer.tool_calls.is_empty() {
        content.push(json!({"type": "text", "text": answer.text}));
    } else {
        stop = "tool_use";
        content.extend(answer.tool_calls.iter().enumerate().map(|(i, c)| {
            json!({"type": "tool_use", "id": format!("toolu_mock{id}_{i}"), "name": c.name, "input": c.arguments})
        }));
    }
    json!({
        "id": format!("msg_mock{id}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": answer.completion_tokens},
    })
}

pub(super) fn stream(model: &str, answer: &Answer, filtered: bool) -> Vec<String> {
    let id = answer.id;
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut pieces = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
            "id": format!("msg_mock{id}"), "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    pieces.extend(words(answer.text(filtered)).into_iter().map(|w| {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": w}}),
        )
    }));
    let stop = if filtered { "refusal" } else { "end_turn" };
    pieces.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    pieces.push(event(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null},
        "usage": {"output_tokens": answer.completion_tokens}}),
    ));
    pieces.push(event("message_stop", json!({"type": "message_stop"})));
    pieces
}

/// Anthropic's error for `status`: its error type (`code` overrides it) and usual message, and a
/// `request-id` header beside the body's.
pub(super) fn error(
    status: u16,
    model: &str,
    code: Option<String>,
    message: Option<String>,
) -> Response {
    let (usual, kind) = match status {
        400 => (
            "Invalid request (mock).".to_owned(),
            "invalid_request_error",
        ),
        401 => ("invalid x-api-key".to_owned(), "authentication_error"),
        403 => (
            "Your API key does not have permission to use the specified resource.".to_owned(),
            "permission_error",
        ),
        404 => (format!("model: {model}"), "not_found_error"),
        413 => (
            "Request exceeds the maximum allowed number of bytes.".to_owned(),
            "request_too_large",
        ),
        429 => (
            "Number of request tokens has exceeded your per-minute rate limit (mock)".to_owned(),
            "rate_limit_error",
        ),
        529 => ("Overloaded".to_owned(), "overloaded_error"),
        s if s >= 500 => ("Internal server error".to_owned(), "api_error"),
        _ => (
            "Invalid request (mock).".to_owned(),
            "invalid_request_error",
        ),
    };
    let request_id = format!("req_mock{status}");
    let body = json!({
        "type": "error",
        "error": {"type": code.as_deref().unwrap_or(kind), "message": message.unwrap_or(usual)},
        "request_id": request_id,
    });
    let mut response = (status_code(status), Json(body)).into_response();
    // `req_mock` and digits: always a header value.
    if let Ok(value) = HeaderValue::try_from(&request_id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}
