//! Streaming calls, per provider: what each asks for, that the text reaches the sink as it
//! arrives (after a `Begin`), that the whole answer and its usage come back as for a plain call,
//! and that a stream that breaks off is a retryable error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_core::spec::{Params, Role};
use chorus_llm::{Completion, Delta, DeltaSink, ErrorKind, LlmError, Route};
use chorus_mock_llm::{Behaviour, Fault};
use serde_json::json;

use super::{Setup, messages};

/// What a sink heard: `<begin>` markers and text pieces, in order.
type Heard = Arc<Mutex<Vec<String>>>;

async fn stream(route: &Route, params: Params) -> (Result<Completion, LlmError>, Vec<String>) {
    let heard: Heard = Arc::default();
    let into = heard.clone();
    let sink = DeltaSink::new(move |delta| {
        let piece = match delta {
            Delta::Begin => "<begin>".to_owned(),
            Delta::Text(text) => text.to_owned(),
        };
        into.lock().unwrap().push(piece);
    });
    let mut request = route.request(
        messages(&[
            (Role::System, "You are terse."),
            (Role::User, "Is the plan sound?"),
        ]),
        params,
        1,
    );
    request.deltas = Some(sink);
    let result = route.provider.complete(&request).await;
    let heard = heard.lock().unwrap().clone();
    (result, heard)
}

async fn streams_like_a_plain_call(provider: &str, model: &str) -> Setup {
    let setup = Setup::new().await;
    setup.mock.script(
        model,
        Behaviour::answer("The plan is sound enough.").with_chunk_delay(Duration::from_millis(5)),
    );
    let route = setup.route(provider, model);
    let (result, heard) = stream(&route, Params::default()).await;
    let answer = result.unwrap();
    assert_eq!(heard[0], "<begin>", "{heard:?}");
    assert_eq!(heard[1..], ["The", " plan", " is", " sound", " enough."]);
    assert_eq!(answer.text, "The plan is sound enough.");
    assert_eq!(answer.finish_reason.as_deref(), Some("stop"));
    assert!(answer.usage.prompt_tokens > 0 && answer.usage.completion_tokens > 0);
    let plain = super::call(&route, Params::default()).await.unwrap();
    assert_eq!(
        (answer.text, answer.usage),
        (plain.text, plain.usage),
        "a streamed answer is the answer"
    );
    setup
}

#[tokio::test]
async fn openai_streams_chunks_with_usage() {
    let setup = streams_like_a_plain_call("openai", "gpt-4o-mini").await;
    let request = &setup.mock.requests("gpt-4o-mini")[0];
    assert_eq!(request.body["stream"], true);
    assert_eq!(
        request.body["stream_options"],
        json!({"include_usage": true})
    );
}

#[tokio::test]
async fn anthropic_streams_message_events() {
    let setup = streams_like_a_plain_call("anthropic", "claude-3-5-haiku-latest").await;
    let request = &setup.mock.requests("claude-3-5-haiku-latest")[0];
    assert_eq!(request.body["stream"], true);
}

#[tokio::test]
async fn ollama_streams_json_lines() {
    let setup = streams_like_a_plain_call("ollama", "llama3.2").await;
    let request = &setup.mock.requests("llama3.2")[0];
    assert_eq!(request.body["stream"], true);
    let plain = &setup.mock.requests("llama3.2")[1];
    assert_eq!(plain.body["stream"], false);
}

#[tokio::test]
async fn a_stream_that_breaks_off_is_retryable_and_errors_come_before_it() {
    for (provider, model) in [
        ("openai", "m"),
        ("anthropic", "claude-3-5-haiku-latest"),
        ("ollama", "llama3.2"),
    ] {
        let setup = Setup::new().await;
        setup.mock.script(
            model,
            Behaviour::answer("one two three four five six")
                .fail_next(1, Fault::Truncated)
                .fail_next(1, Fault::status(503)),
        );
        let route = setup.route(provider, model);
        let (cut, heard) = stream(&route, Params::default()).await;
        let cut = cut.unwrap_err();
        assert!(cut.is_retryable(), "{provider}: {cut:?}");
        assert_eq!(cut.kind, ErrorKind::Malformed, "{provider}: {cut:?}");
        assert_eq!(heard[0], "<begin>", "{provider}: the stream had begun");
        let (refused, heard) = stream(&route, Params::default()).await;
        assert_eq!(refused.unwrap_err().status, Some(503), "{provider}");
        assert!(
            heard.is_empty(),
            "{provider}: nothing streams before an error status"
        );
    }
}

#[tokio::test]
async fn a_call_with_tools_is_not_streamed() {
    let setup = Setup::new().await;
    setup.mock.script(
        "m",
        Behaviour::default().with_tool_call("lookup", json!({"q": "x"})),
    );
    let route = setup.route("openai", "m");
    let params = Params {
        tools: Some(json!([{"type": "function", "function": {"name": "lookup"}}])),
        ..Params::default()
    };
    let (result, heard) = stream(&route, params).await;
    assert!(result.unwrap().tool_calls.is_some());
    assert!(heard.is_empty());
    assert_eq!(setup.only_request("m").body.get("stream"), None);
}
