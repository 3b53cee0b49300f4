//! OpenAI-compatible Chat Completions and Azure OpenAI.

use std::time::Duration;

use chorus_core::messages::Usage;
use chorus_core::spec::Params;
use chorus_llm::ErrorKind;
use chorus_mock_llm::{Behaviour, Fault, RetryAfter};
use serde_json::json;

use super::{KEY, Setup, call, route};

#[tokio::test]
async fn sends_chat_completions_with_bearer_auth_and_every_parameter() {
    let setup = Setup::new().await;
    let mut config = setup.config("openai", "gpt-4o-mini");
    config.max_tokens = Some(300);
    let route = route(config);
    let tools = json!([{"type": "function", "function": {"name": "lookup", "description": "Look up",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]);
    let params = Params {
        temperature: Some(0.2),
        top_p: Some(0.9),
        stop: vec!["END".into()],
        seed: Some(7),
        tools: Some(tools.clone()),
        tool_choice: Some(json!("auto")),
        ..Params::default()
    };
    let answer = call(&route, params).await.unwrap();
    assert_eq!(answer.text, "[mock] Is the plan sound?");
    assert_eq!(answer.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        answer.usage,
        Usage {
            prompt_tokens: 8,
            completion_tokens: 7
        }
    );
    assert_eq!(answer.tool_calls, None);

    let request = setup.only_request("gpt-4o-mini");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(
        request.header("authorization"),
        Some(&*format!("Bearer {KEY}"))
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Is the plan sound?"},
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 300,
            "stop": ["END"],
            "seed": 7,
            "tools": tools,
            "tool_choice": "auto",
        })
    );
}

#[tokio::test]
async fn the_jobs_max_tokens_wins_and_a_keyless_route_sends_no_auth() {
    let setup = Setup::new().await;
    let mut config = setup.config("openai", "llama");
    config.api_key_file = None;
    config.max_tokens = Some(300);
    let params = Params {
        max_tokens: Some(20),
        ..Params::default()
    };
    call(&route(config), params).await.unwrap();
    let request = setup.only_request("llama");
    assert_eq!(request.body["max_tokens"], 20);
    assert_eq!(request.header("authorization"), None);
}

#[tokio::test]
async fn passes_json_formats_through_and_reads_json_answers() {
    let setup = Setup::new().await;
    let route = setup.route("openai", "gpt");
    for format in [
        json!({"type": "json_object"}),
        json!({"type": "json_schema", "json_schema": {"name": "r", "strict": true,
            "schema": {"type": "object", "properties": {"answer": {"type": "string"}}}}}),
    ] {
        let params = Params {
            response_format: Some(format.clone()),
            ..Params::default()
        };
        let answer = call(&route, params).await.unwrap();
        let value: serde_json::Value = serde_json::from_str(&answer.text).unwrap();
        assert_eq!(value, json!({"answer": "[mock] Is the plan sound?"}));
        let sent = setup.mock.requests("gpt").pop().unwrap();
        assert_eq!(sent.body["response_format"], format);
    }
}

#[tokio::test]
async fn reads_tool_calls() {
    let setup = Setup::new().await;
    setup.mock.script(
        "gpt",
        Behaviour::default().with_tool_call("lookup", json!({"q": "plan"})),
    );
    let answer = call(&setup.route("openai", "gpt"), Params::default())
        .await
        .unwrap();
    assert_eq!(answer.text, "");
    assert_eq!(answer.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        answer.tool_calls,
        Some(json!([{"id": "call_mock1_0", "type": "function",
            "function": {"name": "lookup", "arguments": "{\"q\":\"plan\"}"}}]))
    );
}

#[tokio::test]
async fn error_bodies_are_classified_with_the_providers_message() {
    let setup = Setup::new().await;
    let route = setup.route("openai", "gpt");
    let table = [
        (400, ErrorKind::BadRequest, false, "Invalid request (mock)."),
        (
            401,
            ErrorKind::Unauthorized,
            false,
            "Incorrect API key provided",
        ),
        (
            403,
            ErrorKind::Forbidden,
            false,
            "You are not allowed to sample",
        ),
        (
            404,
            ErrorKind::NotFound,
            false,
            "The model `gpt` does not exist",
        ),
        (
            429,
            ErrorKind::RateLimited,
            true,
            "Rate limit reached for gpt",
        ),
        (500, ErrorKind::ServerError, true, "The server had an error"),
        (
            502,
            ErrorKind::ServerError,
            true,
            "<html> <head><title>502 Bad Gateway",
        ),
        (
            503,
            ErrorKind::ServerError,
            true,
            "The engine is currently overloaded",
        ),
    ];
    for (status, kind, retryable, message) in table {
        setup.mock.script(
            "gpt",
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
        assert_eq!(error.retry_after, None);
    }
}

#[tokio::test]
async fn content_policy_is_permanent() {
    let setup = Setup::new().await;
    let route = setup.route("openai", "gpt");
    let violation = Fault::Status {
        status: 400,
        retry_after: None,
        code: Some("content_policy_violation".into()),
        message: Some("Your request was rejected as a result of our safety system.".into()),
    };
    setup.mock.script(
        "gpt",
        Behaviour::default()
            .fail_next(1, violation)
            .fail_next(1, Fault::ContentFilter),
    );
    let error = call(&route, Params::default()).await.unwrap_err();
    assert_eq!(
        (error.kind, error.status, error.is_retryable()),
        (ErrorKind::ContentPolicy, Some(400), false)
    );
    assert_eq!(
        error.message,
        "Your request was rejected as a result of our safety system."
    );
    let error = call(&route, Params::default()).await.unwrap_err();
    assert_eq!((error.kind, error.status), (ErrorKind::ContentPolicy, None));
    assert!(
        error.message.contains("content_filter"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn retry_after_is_read_as_seconds_date_or_milliseconds() {
    let setup = Setup::new().await;
    let route = setup.route("openai", "gpt");
    setup.mock.script(
        "gpt",
        Behaviour::default()
            .fail_next(1, Fault::rate_limited(RetryAfter::Seconds(3)))
            .fail_next(1, Fault::rate_limited(RetryAfter::HttpDate(5)))
            .fail_next(1, Fault::rate_limited(RetryAfter::Millis(1500))),
    );
    let wait = |e: chorus_llm::LlmError| e.retry_after.unwrap();
    assert_eq!(
        wait(call(&route, Params::default()).await.unwrap_err()),
        Duration::from_secs(3)
    );
    let date = wait(call(&route, Params::default()).await.unwrap_err());
    assert!(
        date > Duration::from_secs(4) && date <= Duration::from_secs(6),
        "{date:?}"
    );
    assert_eq!(
        wait(call(&route, Params::default()).await.unwrap_err()),
        Duration::from_millis(1500)
    );
}

#[tokio::test]
async fn azure_uses_the_deployment_url_api_version_and_api_key() {
    let setup = Setup::new().await;
    let mut config = setup.config("openai", "gpt-4o");
    config.base_url = Some(format!("{}/openai/deployments/prod-4o/", setup.mock.url()));
    config.api_version = Some("2024-10-21".into());
    let route = route(config);
    let answer = call(&route, Params::default()).await.unwrap();
    assert_eq!(answer.text, "[mock] Is the plan sound?");
    let request = setup.only_request("prod-4o");
    assert_eq!(
        request.path,
        "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(request.header("api-key"), Some(KEY));
    assert_eq!(request.header("authorization"), None);

    setup.mock.script(
        "prod-4o",
        Behaviour::default().fail_next(1, Fault::rate_limited(RetryAfter::Seconds(1))),
    );
    let error = call(&route, Params::default()).await.unwrap_err();
    assert_eq!(
        (error.kind, error.retry_after),
        (ErrorKind::RateLimited, Some(Duration::from_secs(1)))
    );
    assert!(
        error
            .message
            .starts_with("Requests to the ChatCompletions_Create Operation"),
        "{}",
        error.message
    );
}
