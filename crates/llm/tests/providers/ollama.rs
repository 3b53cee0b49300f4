//! Ollama's native `/api/chat`.

use chorus_core::messages::Usage;
use chorus_core::spec::Params;
use chorus_llm::ErrorKind;
use chorus_mock_llm::{Behaviour, Fault};
use serde_json::json;

use super::{Setup, call, route};

#[tokio::test]
async fn sends_one_non_streaming_chat_with_options() {
    let setup = Setup::new().await;
    let mut config = setup.config("ollama", "llama3.2");
    config.api_key_file = None;
    config.max_tokens = Some(128);
    let params = Params {
        temperature: Some(0.1),
        top_p: Some(0.5),
        stop: vec!["\n\n".into()],
        seed: Some(42),
        ..Params::default()
    };
    let answer = call(&route(config), params).await.unwrap();
    assert_eq!(answer.text, "[mock] Is the plan sound?");
    assert_eq!(answer.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        answer.usage,
        Usage {
            prompt_tokens: 8,
            completion_tokens: 7
        }
    );
    let sent = setup.only_request("llama3.2");
    assert_eq!(sent.path, "/api/chat");
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(
        sent.body,
        json!({
            "model": "llama3.2",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Is the plan sound?"},
            ],
            "stream": false,
            "options": {"temperature": 0.1, "top_p": 0.5, "num_predict": 128, "stop": ["\n\n"], "seed": 42},
        })
    );
}

#[tokio::test]
async fn json_formats_become_format_json_or_the_schema() {
    let setup = Setup::new().await;
    let route = setup.route("ollama", "llama3.2");
    let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}}});
    let formats = [
        (json!({"type": "json_object"}), json!("json")),
        (
            json!({"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}),
            schema.clone(),
        ),
    ];
    for (response_format, expected) in formats {
        let params = Params {
            response_format: Some(response_format),
            ..Params::default()
        };
        let answer = call(&route, params).await.unwrap();
        let value: serde_json::Value = serde_json::from_str(&answer.text).unwrap();
        assert_eq!(value["answer"], "[mock] Is the plan sound?");
        let sent = setup.mock.requests("llama3.2").pop().unwrap();
        assert_eq!(sent.body["format"], expected);
        assert!(sent.body.get("options").is_none());
    }
}

#[tokio::test]
async fn tool_calls_come_back_in_openai_shape() {
    let setup = Setup::new().await;
    setup.mock.script(
        "llama3.2",
        Behaviour::default().with_tool_call("lookup", json!({"q": "plan"})),
    );
    let params = Params {
        tools: Some(json!([{"type": "function", "function": {"name": "lookup"}}])),
        ..Params::default()
    };
    let answer = call(&setup.route("ollama", "llama3.2"), params)
        .await
        .unwrap();
    assert_eq!(answer.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        answer.tool_calls,
        Some(json!([{"id": "call_0", "type": "function",
            "function": {"name": "lookup", "arguments": "{\"q\":\"plan\"}"}}]))
    );
    let sent = setup.only_request("llama3.2");
    assert_eq!(sent.body["tools"][0]["function"]["name"], "lookup");
}

#[tokio::test]
async fn error_strings_are_kept() {
    let setup = Setup::new().await;
    let route = setup.route("ollama", "llama3.2");
    let table = [
        (
            404,
            ErrorKind::NotFound,
            "model \"llama3.2\" not found, try pulling it first",
        ),
        (
            500,
            ErrorKind::ServerError,
            "llama runner process has terminated: exit status 2",
        ),
        (
            503,
            ErrorKind::ServerError,
            "server busy, please try again.  maximum pending requests exceeded",
        ),
    ];
    for (status, kind, message) in table {
        setup.mock.script(
            "llama3.2",
            Behaviour::default().fail_next(1, Fault::status(status)),
        );
        let error = call(&route, Params::default()).await.unwrap_err();
        assert_eq!((error.kind, error.status), (kind, Some(status)));
        assert_eq!(error.message, message);
    }
}
