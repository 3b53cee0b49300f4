//! OpenAI's Chat Completions (`POST /v1/chat/completions`) and Azure OpenAI's
//! (`POST /openai/deployments/{deployment}/chat/completions?api-version=…`), which answers in the
//! same shape: `chat.completion` bodies, `chat.completion.chunk` Server-Sent Events ending with
//! `data: [DONE]` (a usage chunk before it when `stream_options.include_usage` asks), and each
//! one's error bodies — OpenAI's typed errors (and its edge proxy's HTML 502), Azure's codes.

use std::time::SystemTime;

use axum::Json;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Answer, Refusal, status_code, words};
use crate::record::unix_secs;

/// What Azure refuses: a URL without `api-version`, a request without `api-key`.
pub(super) fn check_azure(uri: &Uri, headers: &HeaderMap) -> Option<Refusal> {
    if !uri.query().unwrap_or("").contains("api-version=") {
        return Some(Refusal::new(404, "Resource not found"));
    }
    if !headers.contains_key("api-key") {
        return Some(Refusal::new(
            401,
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
        ));
    }
    None
}

/// `response_format` asks for a JSON object, or for JSON that follows a schema.
pub(super) fn wants_json(body: &Value) -> bool {
    matches!(
        body.pointer("/response_format/type")
            .and_then(Value::as_str),
        Some("json_object" | "json_schema")
    )
}

pub(super) fn success(model: &str, answer: &Answer, filtered: bool) -> Value {
    let id = answer.id;
    let usage = (answer.prompt_tokens, answer.completion_tokens);
    let calls: Vec<Value> = answer
        .tool_calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "id": format!("call_mock{id}_{i}"),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments.to_string()},
            })
        })
        .collect();
    let (content, finish) = match (filtered, calls.is_empty()) {
        (true, _) => (Value::Null, "content_filter"),
        (false, false) => (Value::Null, "tool_calls"),
        (false, true) => (json!(answer.text), "stop"),
    };
    let mut message = json!({"role": "assistant", "content": content, "refusal": null});
    if !calls.is_empty() && !filtered {
        message["tool_calls"] = json!(calls);
    }
    json!({
        "id": format!("chatcmpl-mock{id}"),
        "object": "chat.completion",
        "created": unix_secs(SystemTime::now()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1},
        "system_fingerprint": "fp_mock",
    })
}

pub(super) fn stream(
    model: &str,
    answer: &Answer,
    filtered: bool,
    include_usage: bool,
) -> Vec<String> {
    let created = unix_secs(SystemTime::now());
    let id = answer.id;
    let (prompt, completion) = (answer.prompt_tokens, answer.completion_tokens);
    let chunk = |delta: Value, finish: Value| {
        let mut chunk = json!({
            "id": format!("chatcmpl-mock{id}"),
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        format!("data: {chunk}\n\n")
    };
    let mut pieces = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    pieces.extend(
        words(answer.text(filtered))
            .into_iter()
            .map(|w| chunk(json!({"content": w}), Value::Null)),
    );
    let finish = if filtered { "content_filter" } else { "stop" };
    pieces.push(chunk(json!({}), json!(finish)));
    if include_usage {
        let usage = json!({
            "id": format!("chatcmpl-mock{id}"),
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        });
        pieces.push(format!("data: {usage}\n\n"));
    }
    pieces.push("data: [DONE]\n\n".into());
    pieces
}

/// OpenAI's error for `status`; a 502 is what its edge proxy answers, HTML rather than JSON.
pub(super) fn error(
    status: u16,
    model: &str,
    code: Option<String>,
    message: Option<String>,
) -> Response {
    if status == 502 && message.is_none() {
        let page = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n";
        return (
            status_code(status),
            [(header::CONTENT_TYPE, "text/html")],
            page,
        )
            .into_response();
    }
    let (usual, kind, usual_code) = match status {
        400 => ("Invalid request (mock).".to_owned(), "invalid_request_error", None),
        401 => ("Incorrect API key provided: sk-mock***. You can find your API key at https://platform.openai.com/account/api-keys.".to_owned(), "invalid_request_error", Some("invalid_api_key")),
        403 => ("You are not allowed to sample from this model".to_owned(), "invalid_request_error", None),
        404 => (format!("The model `{model}` does not exist or you do not have access to it."), "invalid_request_error", Some("model_not_found")),
        429 => (format!("Rate limit reached for {model} in organization org-mock on requests per min (RPM): Limit 600, Used 600, Requested 1. Please try again in 1s. Visit https://platform.openai.com/account/rate-limits to learn more."), "requests", Some("rate_limit_exceeded")),
        503 => ("The engine is currently overloaded, please try again later".to_owned(), "server_error", None),
        s if s >= 500 => ("The server had an error while processing your request. Sorry about that!".to_owned(), "server_error", None),
        _ => ("Invalid request (mock).".to_owned(), "invalid_request_error", None),
    };
    let body = json!({"error": {
        "message": message.unwrap_or(usual),
        "type": kind,
        "param": null,
        "code": code.or(usual_code.map(str::to_owned)),
    }});
    (status_code(status), Json(body)).into_response()
}

/// Azure OpenAI's error for `status`: its code is the status unless `code` says otherwise.
pub(super) fn azure_error(status: u16, code: Option<String>, message: Option<String>) -> Response {
    let usual = match status {
        429 => {
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second."
        }
        s if s >= 500 => "The server had an error while processing your request. Sorry about that!",
        _ => "Invalid request (mock).",
    };
    let body = json!({"error": {
        "code": code.unwrap_or_else(|| status.to_string()),
        "message": message.unwrap_or_else(|| usual.to_owned()),
    }});
    (status_code(status), Json(body)).into_response()
}
