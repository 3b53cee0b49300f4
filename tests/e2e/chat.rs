//! `POST /v1/chat/completions` through the whole pipeline: plain answers, streamed answers (from a
//! provider that streams, from `sim`, and across a stream that broke off and was retried), errors
//! in OpenAI's shape, every call stored as a job, and `GET /v1/models`.

use std::time::Duration;

use chorus_core::config::RouteConfig;
use chorus_mock_llm::{Behaviour, Fault, MockLlm};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use serde_json::{Value, json};

use crate::helpers::*;

async fn complete(app: &TestApp, body: &Value) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .json(body)
        .send()
        .await
        .expect("POST /v1/chat/completions");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A streamed answer: its content type and the data of every event, `[DONE]` included.
async fn stream(app: &TestApp, body: &Value) -> (u16, String, Vec<String>) {
    let response = app
        .client
        .post(format!("{}/v1/chat/completions", app.base))
        .json(body)
        .send()
        .await
        .expect("POST /v1/chat/completions");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = tokio::time::timeout(Duration::from_secs(30), response.text())
        .await
        .expect("the stream ends")
        .expect("body");
    let data = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect();
    (status, content_type, data)
}

/// The chunks of a stream (its `[DONE]` checked and left out), and their text joined.
fn chunks(data: &[String]) -> (Vec<Value>, String) {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:#?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("a JSON chunk"))
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    (chunks, text)
}

fn user(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn chat_completions_answer_plain_and_streamed_and_are_stored() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "streamer",
        Behaviour::answer("Streams arrive one word after another.")
            .with_chunk_delay(Duration::from_millis(30)),
    );
    mock.script(
        "flaky",
        Behaviour::answer("Retried streams still arrive whole.")
            .with_chunk_delay(Duration::from_millis(10))
            .fail_next(1, Fault::Truncated),
    );
    mock.script("refuses", Behaviour::always(Fault::status(400)));
    mock.script("our-key-is-wrong", Behaviour::always(Fault::status(401)));
    let mut config = test_config(&nats, &db);
    for name in ["streamer", "flaky", "refuses", "our-key-is-wrong"] {
        config.routes.push(mock_route(name, &mock, name));
    }
    config
        .routes
        .push(RouteConfig::new("slow-sim", "sim", "echo?latency=300ms"));
    let app = TestApp::start(config).await;

    // Plain: a chat.completion object, stored as a job.
    let (status, body) = complete(&app, &user("fast", "What is 2+2?")).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["object"], "chat.completion");
    assert!(
        body["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-"))
    );
    assert_eq!(body["model"], "fast");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "[sim] What is 2+2?"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["total_tokens"].as_u64() > Some(0));
    let (_, jobs) = {
        let response = app
            .client
            .get(format!("{}/v1/jobs", app.base))
            .send()
            .await
            .expect("list");
        (
            response.status(),
            response.json::<Value>().await.expect("json"),
        )
    };
    let stored = &jobs["data"][0];
    assert_eq!(stored["status"], "succeeded", "{jobs:#}");
    let job_id = stored["id"].as_str().expect("id").replace('-', "");
    assert_eq!(
        body["id"],
        format!("chatcmpl-{job_id}"),
        "the answer names its job"
    );

    // Streamed from a provider that streams: several content chunks, then stop, usage, [DONE].
    let mut request = user("streamer", "Tell me.");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let (status, content_type, data) = stream(&app, &request).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let (events, text) = chunks(&data);
    assert_eq!(text, "Streams arrive one word after another.");
    let content_chunks = events
        .iter()
        .filter(|c| {
            c.pointer("/choices/0/delta/content")
                .is_some_and(|t| t != "")
        })
        .count();
    assert!(
        content_chunks >= 3,
        "token by token, not at once: {events:#?}"
    );
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        events
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let finish = events.iter().find_map(|c| {
        c.pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
    });
    assert_eq!(finish, Some("stop"));
    let usage = events.last().expect("chunks");
    assert_eq!(usage["choices"], json!([]));
    assert!(
        usage["usage"]["completion_tokens"].as_u64() > Some(0),
        "{usage:#}"
    );
    assert_eq!(
        mock.requests("streamer")[0].body["stream"],
        true,
        "the provider streamed"
    );

    // `sim` streams too; a stream that broke off and was retried still arrives whole, once.
    let mut request = user("slow-sim", "Go slowly.");
    request["stream"] = json!(true);
    let (_, _, data) = stream(&app, &request).await;
    let (events, text) = chunks(&data);
    assert_eq!(text, "[sim] Go slowly.");
    assert!(events.len() >= 4, "{events:#?}");
    assert!(
        events.iter().all(|c| c.get("usage").is_none()),
        "usage only when asked"
    );
    let mut request = user("flaky", "Again?");
    request["stream"] = json!(true);
    let (_, _, data) = stream(&app, &request).await;
    let (_, text) = chunks(&data);
    assert_eq!(text, "Retried streams still arrive whole.");
    assert_eq!(mock.stats("flaky").requests, 2);

    // Errors: OpenAI's shape, with the status a client expects, streamed or not.
    let (status, body) = complete(&app, &user("refuses", "x")).await;
    assert_eq!(status, 400, "{body:#}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Invalid request (mock).")),
        "the provider's message: {body:#}"
    );
    let mut request = user("refuses", "x");
    request["stream"] = json!(true);
    let (status, body) = complete(&app, &request).await;
    assert_eq!(
        status, 400,
        "no text yet: a plain error, not a stream: {body:#}"
    );
    let (status, body) = complete(&app, &user("our-key-is-wrong", "x")).await;
    assert_eq!(
        status, 502,
        "our provider key is not the client's problem: {body:#}"
    );
    let (status, body) = complete(&app, &user("nowhere", "x")).await;
    assert_eq!(
        status, 404,
        "an unknown model, as OpenAI answers it: {body:#}"
    );
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["param"], "model");
    let (status, body) = complete(&app, &json!({"model": "fast", "messages": [], "n": 2})).await;
    assert_eq!(status, 422, "{body:#}");
    let (status, body) = complete(
        &app,
        &json!({"model": "fast", "messages": [{"role": "user", "content": "x"}], "logit_bias": {}}),
    )
    .await;
    assert_eq!(status, 422, "{body:#}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("logit_bias"))
    );

    // Models: the routes.
    let models: Value = app
        .client
        .get(format!("{}/v1/models", app.base))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    for id in ["fast", "streamer", "slow-sim", "sim:echo"] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let one: Value = app
        .client
        .get(format!("{}/v1/models/streamer", app.base))
        .send()
        .await
        .expect("model")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (one["id"].as_str(), one["owned_by"].as_str()),
        (Some("streamer"), Some("openai"))
    );
    app.shutdown().await.expect("clean shutdown");
}
