//! Anthropic's Messages API.

use std::time::Duration;

use chorus_core::messages::Usage;
use chorus_core::spec::{Params, Role};
use chorus_llm::ErrorKind;
use chorus_mock_llm::{Behaviour, Fault, RetryAfter};
use serde_json::json;

use super::{KEY, Setup, call, messages, route};

#[tokio::test]
async fn maps_system_messages_tools_and_the_required_max_tokens() {
    let setup = Setup::new().await;
    let route = setup.route("anthropic", "claude");
    let params = Params {
        temperature: Some(0.5),
        top_p: Some(0.8),
        stop: vec!["END".into()],
        seed: Some(3),
        tools: Some(json!([
            {"type": "function", "function": {"name": "lookup", "description": "Look up",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "now"}},
        ])),
        tool_choice: Some(json!({"type": "function", "function": {"name": "lookup"}})),
        ..Params::default()
    };
    let request = route.request(
        messages(&[
            (Role::System, "You are terse."),
            (Role::System, "Answer in English."),
            (Role::User, "Is the plan sound?"),
            (Role::Assistant, "Mostly."),
            (Role::User, "Why?"),
        ]),
        params,
        1,
    );
    let answer = route.provider.complete(&request).await.unwrap();
    assert_eq!(answer.text, "[mock] Why?");
    assert_eq!(answer.finish_reason.as_deref(), Some("stop"));
    // 18 + 7 + 4 message characters and 34 of system prompt.
    assert_eq!(
        answer.usage,
        Usage {
            prompt_tokens: 16,
            completion_tokens: 3
        }
    );

    let sent = setup.only_request("claude");
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(
        sent.body,
        json!({
            "model": "claude",
            "max_tokens": 1024,
            "system": "You are terse.\n\nAnswer in English.",
            "messages": [
                {"role": "user", "content": "Is the plan sound?"},
                {"role": "assistant", "content": "Mostly."},
                {"role": "user", "content": "Why?"},
            ],
            "temperature": 0.5,
            "top_p": 0.8,
            "stop_sequences": ["END"],
            "tools": [
                {"name": "lookup", "description": "Look up",
                    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}},
                {"name": "now", "input_schema": {"type": "object", "properties": {}}},
            ],
            "tool_choice": {"type": "tool", "name": "lookup"},
        })
    );
}

#[tokio::test]
async fn max_tokens_comes_from_the_job_then_the_route_and_the_version_is_configurable() {
    let setup = Setup::new().await;
    let mut config = setup.config("anthropic", "claude");
    config.max_tokens = Some(2048);
    config.api_version = Some("2024-01-01".into());
    let route = route(config);
    call(&route, Params::default()).await.unwrap();
    let job = Params {
        max_tokens: Some(50),
        tool_choice: Some(json!("required")),
        ..Params::default()
    };
    call(&route, job).await.unwrap();
    let sent = setup.mock.requests("claude");
    assert_eq!(sent[0].header("anthropic-version"), Some("2024-01-01"));
    assert_eq!(
        (&sent[0].body["max_tokens"], &sent[1].body["max_tokens"]),
        (&json!(2048), &json!(50))
    );
    assert_eq!(sent[1].body["tool_choice"], json!({"type": "any"}));
    assert!(sent[0].body.get("system").is_some() && sent[0].body.get("seed").is_none());
}

#[tokio::test]
async fn tool_use_blocks_become_openai_tool_calls() {
    let setup = Setup::new().await;
    setup.mock.script(
        "claude",
        Behaviour::default().with_tool_call("lookup", json!({"q": "plan"})),
    );
    let answer = call(&setup.route("anthropic", "claude"), Params::default())
        .await
        .unwrap();
    assert_eq!(answer.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        answer.tool_calls,
        Some(json!([{"id": "toolu_mock1_0", "type": "function",
            "function": {"name": "lookup", "arguments": "{\"q\":\"plan\"}"}}]))
    );
}

#[tokio::test]
async fn anthropic_error_types_are_classified() {
    let setup = Setup::new().await;
    let route = setup.route("anthropic", "claude");
    let table = [
        (400, ErrorKind::BadRequest, false, "Invalid request (mock)."),
        (401, ErrorKind::Unauthorized, false, "invalid x-api-key"),
        (
            403,
            ErrorKind::Forbidden,
            false,
            "Your API key does not have permission",
        ),
        (404, ErrorKind::NotFound, false, "model: claude"),
        (
            413,
            ErrorKind::BadRequest,
            false,
            "Request exceeds the maximum",
        ),
        (
            429,
            ErrorKind::RateLimited,
            true,
            "Number of request tokens",
        ),
        (500, ErrorKind::ServerError, true, "Internal server error"),
        (529, ErrorKind::Overloaded, true, "Overloaded"),
    ];
    for (status, kind, retryable, message) in table {
        setup.mock.script(
            "claude",
            Behaviour::default().fail_next(1, Fault::status(status)),
        );
        let error = call(&route, Params::default()).await.unwrap_err();
        assert_eq!(
            (error.kind, error.status, error.is_retryable()),
            (kind, Some(status), retryable),
            "{status}"
        );
        assert!(
            error.message.starts_with(message),
            "{status}: {}",
            error.message
        );
    }
}

#[tokio::test]
async fn overloaded_with_retry_after_and_the_error_type_over_the_status() {
    let setup = Setup::new().await;
    let route = setup.route("anthropic", "claude");
    let overloaded_500 = Fault::Status {
        status: 500,
        retry_after: Some(RetryAfter::Seconds(2)),
        code: Some("overloaded_error".into()),
        message: None,
    };
    setup.mock.script(
        "claude",
        Behaviour::default()
            .fail_next(1, Fault::rate_limited(RetryAfter::HttpDate(3)))
            .fail_next(1, overloaded_500),
    );
    let error = call(&route, Params::default()).await.unwrap_err();
    let wait = error.retry_after.unwrap();
    assert_eq!(error.kind, ErrorKind::RateLimited);
    assert!(
        wait > Duration::from_secs(2) && wait <= Duration::from_secs(4),
        "{wait:?}"
    );
    let error = call(&route, Params::default()).await.unwrap_err();
    assert_eq!(
        (error.kind, error.status, error.retry_after),
        (
            ErrorKind::Overloaded,
            Some(500),
            Some(Duration::from_secs(2))
        )
    );
}

#[tokio::test]
async fn a_refusal_is_a_content_policy_error() {
    let setup = Setup::new().await;
    setup.mock.script(
        "claude",
        Behaviour::default().fail_next(1, Fault::ContentFilter),
    );
    let error = call(&setup.route("anthropic", "claude"), Params::default())
        .await
        .unwrap_err();
    assert_eq!(
        (error.kind, error.is_retryable()),
        (ErrorKind::ContentPolicy, false)
    );
}
