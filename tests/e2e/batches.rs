//! Batches: 10,000 lines through the Files and Batches APIs, the same lines published straight
//! onto JetStream by a plain NATS client, de-duplication by message id, a malformed submission,
//! cancel in the middle of a batch, and every kind of bad input refused before anything is queued.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use bytesize::ByteSize;
use chorus_core::config::RouteConfig;
use chorus_mock_llm::{Behaviour, MockLlm};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use chorus_testkit::wait;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::*;

const LINES: usize = 10_000;
/// Publish acks the plain NATS client keeps outstanding.
const ACK_WINDOW: usize = 1024;

/// Line `i` of the big batch: a chat completion; every 97th names a route that always answers 400.
fn chat_line(i: usize) -> Value {
    let model = if i.is_multiple_of(97) {
        "broken"
    } else {
        "fast"
    };
    json!({"custom_id": format!("req-{i}"), "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": model, "temperature": 0.2,
                    "messages": [{"role": "system", "content": "Answer briefly."},
                                 {"role": "user", "content": format!("Question {i}?")}]}})
}

fn jsonl(lines: impl Iterator<Item = Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

async fn upload(app: &TestApp, content: Vec<u8>) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(content).file_name("batch.jsonl"),
        );
    app.client
        .post(format!("{}/v1/files", app.base))
        .multipart(form)
        .send()
        .await
        .expect("POST /v1/files")
}

async fn create_batch(app: &TestApp, file: &str, endpoint: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/batches", app.base))
        .json(
            &json!({"input_file_id": file, "endpoint": endpoint, "completion_window": "24h",
                      "metadata": {"suite": "e2e"}}),
        )
        .send()
        .await
        .expect("POST /v1/batches")
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app
        .client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.expect("json")
}

async fn get_text(app: &TestApp, path: &str) -> String {
    let response = app
        .client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200, "GET {path}");
    response.text().await.expect("text")
}

async fn wait_batch(app: &TestApp, id: &str, timeout: Duration) -> Value {
    wait::until(timeout, &format!("batch {id} to finish"), || async {
        let batch = get_json(app, &format!("/v1/batches/{id}")).await;
        matches!(
            batch["status"].as_str(),
            Some("completed" | "failed" | "cancelled" | "expired")
        )
        .then_some(batch)
    })
    .await
}

/// `custom_id` → line, for a JSONL file's lines.
fn by_custom_id(text: &str) -> BTreeMap<String, Value> {
    let mut lines = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let value: Value = serde_json::from_str(line).expect("a JSON line");
        let id = value["custom_id"].as_str().expect("custom_id").to_owned();
        assert!(
            lines.insert(id.clone(), value).is_none(),
            "{id} appears twice"
        );
    }
    lines
}

fn config_with_broken(nats: &NatsServer, db: &TestDatabase) -> chorus_core::config::Config {
    let mut config = test_config(nats, db);
    config
        .routes
        .push(RouteConfig::new("broken", "sim", "echo?error=400"));
    config.llm.workers = 256;
    config
}

/// Reads every message on `subject` of the results stream until `count` arrived.
async fn results(bus: &chorus_bus::Bus, subject: &str, count: usize) -> Vec<Value> {
    let stream = bus
        .js
        .get_stream(bus.subjects.stream("results"))
        .await
        .expect("results stream");
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut lines = Vec::with_capacity(count);
    let read = tokio::time::timeout(Duration::from_secs(300), async {
        while lines.len() < count {
            let message = messages.next().await.expect("more").expect("message");
            lines.push(serde_json::from_slice::<Value>(&message.payload).expect("JSON line"));
        }
    })
    .await;
    assert!(read.is_ok(), "{} of {count} results arrived", lines.len());
    lines
}

#[tokio::test]
async fn ten_thousand_lines_over_rest_and_over_jetstream_give_the_same_results() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(config_with_broken(&nats, &db)).await;

    let file: Value = upload(&app, jsonl((0..LINES).map(chat_line)))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(file["object"], "file", "{file:#}");
    assert_eq!(file["purpose"], "batch");
    let file_id = file["id"].as_str().expect("file id");
    let created = create_batch(&app, file_id, "/v1/chat/completions").await;
    assert_eq!(created.status(), 200);
    let batch: Value = created.json().await.expect("json");
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["request_counts"]["total"], LINES);
    let id = batch["id"].as_str().expect("batch id").to_owned();

    let done = wait_batch(&app, &id, Duration::from_secs(600)).await;
    let failed = (0..LINES).filter(|i| i % 97 == 0).count();
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(
        done["request_counts"],
        json!({"total": LINES, "completed": LINES - failed, "failed": failed})
    );
    assert_eq!(done["metadata"], json!({"suite": "e2e"}));
    let output = by_custom_id(
        &get_text(
            &app,
            &format!(
                "/v1/files/{}/content",
                done["output_file_id"].as_str().expect("output")
            ),
        )
        .await,
    );
    let errors = by_custom_id(
        &get_text(
            &app,
            &format!(
                "/v1/files/{}/content",
                done["error_file_id"].as_str().expect("errors")
            ),
        )
        .await,
    );
    assert_eq!((output.len(), errors.len()), (LINES - failed, failed));
    for i in 0..LINES {
        let key = format!("req-{i}");
        assert!(
            output.contains_key(&key) != errors.contains_key(&key),
            "{key} must be in exactly one file"
        );
    }
    let first = &output["req-1"];
    assert_eq!(first["response"]["status_code"], 200, "{first:#}");
    let body = &first["response"]["body"];
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("Question 1?"))
    );
    assert!(body["usage"]["total_tokens"].as_u64() > Some(0));
    assert!(first["error"].is_null());
    let broken = &errors["req-97"];
    assert!(
        broken["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{broken:#}"
    );

    // The same lines from a plain NATS client: the body, with the batch and line in headers.
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    // Pipelined as a real client would: a window of acks outstanding (async-nats allows 5,000).
    let mut acks = Vec::with_capacity(ACK_WINDOW);
    for i in 0..LINES {
        let line = chat_line(i);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("js-{i}").as_str());
        headers.insert("Content-Type", "application/json");
        headers.insert("Chorus-Batch", "nightly-7");
        headers.insert("Chorus-Custom-Id", format!("req-{i}").as_str());
        headers.insert("Chorus-Endpoint", "/v1/chat/completions");
        let body = serde_json::to_vec(&line["body"]).expect("body");
        acks.push(
            js.publish_with_headers("chorus.submit.default", headers, body.into())
                .await
                .expect("publish"),
        );
        if acks.len() == ACK_WINDOW {
            for ack in acks.drain(..) {
                ack.await.expect("acked");
            }
        }
    }
    for ack in acks {
        ack.await.expect("acked");
    }
    let lines = results(&app.bus, "chorus.results.default.nightly-7", LINES).await;
    let mut seen: HashMap<String, Value> = HashMap::new();
    for line in lines {
        let key = line["custom_id"].as_str().expect("custom_id").to_owned();
        assert!(
            seen.insert(key.clone(), line).is_none(),
            "{key} twice on the results subject"
        );
    }
    for i in 0..LINES {
        let key = format!("req-{i}");
        let over_nats = &seen[&key];
        match output.get(&key) {
            Some(over_rest) => assert_eq!(
                over_nats["response"]["body"]["choices"], over_rest["response"]["body"]["choices"],
                "{key}"
            ),
            None => assert_eq!(
                over_nats["error"]["code"], errors[&key]["error"]["code"],
                "{key}"
            ),
        }
    }
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn jetstream_submissions_are_deduplicated_and_malformed_ones_answered() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let publish =
        |msg_id: &'static str, custom_id: String, body: Vec<u8>, content_type: &'static str| {
            let js = js.clone();
            async move {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", msg_id);
                headers.insert("Content-Type", content_type);
                headers.insert("Chorus-Batch", "dedupe");
                headers.insert("Chorus-Custom-Id", custom_id.as_str());
                js.publish_with_headers("chorus.submit.default", headers, body.into())
                    .await
                    .expect("publish")
                    .await
                    .expect("ack")
            }
        };
    let spec = serde_json::to_vec(&single("fast", "once")).expect("spec");
    let first = publish("same-id", "once".into(), spec.clone(), "application/json").await;
    let second = publish("same-id", "once".into(), spec.clone(), "application/json").await;
    assert!(
        second.duplicate,
        "JetStream saw the second publish as a duplicate"
    );
    assert_eq!(first.sequence, second.sequence);
    // MessagePack works the same; a malformed body is answered, not dropped.
    let packed = rmp_serde::to_vec_named(&single("fast", "packed")).expect("msgpack");
    publish("packed-id", "packed".into(), packed, "application/msgpack").await;
    // A custom_id longer than a batch line's may be is refused as the line's error.
    let long = "L".repeat(300);
    publish("long-id", long.clone(), spec, "application/json").await;
    publish(
        "bad-id",
        "bad".into(),
        b"{\"model\": \"fast\", \"mesages\": []}".to_vec(),
        "application/json",
    )
    .await;

    let lines = results(&app.bus, "chorus.results.default.dedupe", 4).await;
    let by_id: HashMap<&str, &Value> = lines
        .iter()
        .map(|l| (l["custom_id"].as_str().expect("custom_id"), l))
        .collect();
    assert_eq!(by_id.len(), 4, "one result per line: {lines:#?}");
    assert_eq!(by_id["once"]["response"]["status_code"], 200);
    assert_eq!(by_id["packed"]["response"]["status_code"], 200);
    let bad = by_id["bad"];
    assert!(bad["response"].is_null());
    assert!(
        bad["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("mesages")),
        "the error names the field: {bad:#}"
    );
    let too_long = by_id[long.as_str()];
    assert!(
        too_long["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("custom_id")),
        "the error names the field: {too_long:#}"
    );
    let letters = dead_letters(&app.bus).await;
    assert_eq!(letters.len(), 2, "the refused messages are kept in the DLQ");
    assert!(letters.iter().all(|l| l.error_kind == "invalid_spec"));
    // Nothing more arrives: the duplicate made no second job.
    wait_quiet(&app.bus).await;
    let (_, last) = stream_state(&app.bus, "results").await;
    assert_eq!(last, 4);
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn cancelling_a_batch_stops_its_calls_and_the_counts_add_up() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "slow",
        Behaviour::answer("ok").with_latency(Duration::from_millis(100)),
    );
    let mut config = test_config(&nats, &db);
    config.routes.push(RouteConfig {
        max_concurrency: Some(2),
        ..mock_route("slow", &mock, "slow")
    });
    let app = TestApp::start(config).await;
    const TOTAL: usize = 200;
    let content = jsonl((0..TOTAL).map(|i| {
        json!({"custom_id": format!("c-{i}"), "method": "POST", "url": "/v1/jobs",
               "body": {"model": "slow", "messages": [{"role": "user", "content": format!("#{i}")}]}})
    }));
    let file: Value = upload(&app, content).await.json().await.expect("json");
    let batch: Value = create_batch(&app, file["id"].as_str().expect("id"), "/v1/jobs")
        .await
        .json()
        .await
        .expect("json");
    let id = batch["id"].as_str().expect("id").to_owned();
    wait::until(Duration::from_secs(30), "some calls", || async {
        (mock.stats("slow").requests >= 10).then_some(())
    })
    .await;
    let response = app
        .client
        .post(format!("{}/v1/batches/{id}/cancel", app.base))
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status(), 200);
    let at_ack = mock.stats("slow").requests;
    let cancelling: Value = response.json().await.expect("json");
    assert!(
        matches!(
            cancelling["status"].as_str(),
            Some("cancelling" | "cancelled")
        ),
        "{cancelling:#}"
    );
    let done = wait_batch(&app, &id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "cancelled", "{done:#}");
    wait_quiet(&app.bus).await;
    let after = mock.stats("slow").requests;
    // At most the calls already admitted (two at a time) went out after the ack.
    assert!(
        after <= at_ack + 2,
        "{at_ack} calls at the ack, {after} in the end"
    );
    assert!((after as usize) < TOTAL / 2, "most lines were never called");

    let counts = &done["request_counts"];
    let (completed, failed) = (
        counts["completed"].as_u64().expect("completed"),
        counts["failed"].as_u64().expect("failed"),
    );
    assert_eq!(completed + failed, TOTAL as u64, "{counts}");
    assert_eq!(completed, after, "every call made completed its line");
    let output = match done["output_file_id"].as_str() {
        Some(file) => by_custom_id(&get_text(&app, &format!("/v1/files/{file}/content")).await),
        None => BTreeMap::new(),
    };
    let errors = by_custom_id(
        &get_text(
            &app,
            &format!(
                "/v1/files/{}/content",
                done["error_file_id"].as_str().expect("errors")
            ),
        )
        .await,
    );
    assert_eq!(output.len() as u64, completed);
    assert_eq!(errors.len() as u64, failed);
    assert!(
        errors
            .values()
            .all(|e| e["error"]["code"] == "batch_cancelled")
    );
    for i in 0..TOTAL {
        let key = format!("c-{i}");
        assert!(
            output.contains_key(&key) != errors.contains_key(&key),
            "{key}"
        );
    }
    // A job line's result is the job itself.
    if let Some(line) = output.values().next() {
        assert_eq!(line["response"]["body"]["status"], "succeeded", "{line:#}");
    }
    let again = app
        .client
        .post(format!("{}/v1/batches/{id}/cancel", app.base))
        .send()
        .await
        .expect("cancel");
    assert_eq!(
        again.status(),
        200,
        "cancelling a cancelled batch answers it"
    );
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn bad_files_and_batches_are_refused_before_anything_is_queued() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    config.edge.file_limit = ByteSize::kib(4);
    let app = TestApp::start(config).await;

    // Too large.
    let big = jsonl((0..100).map(chat_line));
    let response = upload(&app, big).await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("4096")),
        "{body:#}"
    );

    // Bad lines, reported by number.
    let content = [
        chat_line(1).to_string(),
        "not json".into(),
        json!({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": "nowhere", "messages": [{"role": "user", "content": "hi"}]}})
        .to_string(),
        json!({"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}})
        .to_string(),
        json!({"custom_id": "y", "method": "POST", "url": "/v1/jobs",
               "body": {"model": "fast", "prompt": "{{ oops", "input": {}}})
        .to_string(),
    ]
    .join("\n");
    let response = upload(&app, content.into_bytes()).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    let lines: Vec<u64> = body["error"]["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l["line"].as_u64())
        .collect();
    assert_eq!(lines, [2, 3, 4, 5], "{body:#}");
    let message = body["error"]["message"].as_str().expect("message");
    for needle in ["line 2", "line 3", "nowhere", "line 4", "req-1", "line 5"] {
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }

    // A good file, but a batch that asks for something else.
    let file: Value = upload(&app, jsonl((1..3).map(chat_line)))
        .await
        .json()
        .await
        .expect("json");
    let file_id = file["id"].as_str().expect("id");
    for (body, param) in [
        (
            json!({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}),
            "endpoint",
        ),
        (
            json!({"input_file_id": file_id, "endpoint": "/v1/jobs", "completion_window": "24h"}),
            "endpoint",
        ),
        (
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "1h"}),
            "completion_window",
        ),
    ] {
        let response = app
            .client
            .post(format!("{}/v1/batches", app.base))
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["param"], param, "{error:#}");
    }
    let missing = create_batch(&app, "file-missing", "/v1/chat/completions").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        stream_state(&app.bus, "submit").await.1,
        0,
        "nothing was queued"
    );
    app.shutdown().await.expect("clean shutdown");
}
