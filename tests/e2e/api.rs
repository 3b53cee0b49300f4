//! The HTTP API: a roundtable end to end on both databases, idempotency, waiting, listing, and
//! every kind of bad request answered with a field-level 4xx while nothing reaches a queue.

use std::time::Duration;

use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use serde_json::{Value, json};

use crate::helpers::*;

async fn roundtable_is_stored_completely(db: TestDatabase) {
    let nats = NatsServer::start_new().await;
    let app = TestApp::start(test_config(&nats, &db)).await;

    let response = app.post_job(&roundtable("sim:echo"), "?wait=30").await;
    assert_eq!(response.status(), 200, "wait returns the finished job");
    let job: Value = response.json().await.expect("json");
    assert_eq!(job["status"], "succeeded", "{job:#}");

    // The stored record, read back: every step with output, usage and attempts; the evaluation.
    let (status, stored) = app.get_job(job["id"].as_str().expect("id")).await;
    assert_eq!(status, 200);
    assert_eq!(stored, job);
    let steps = stored["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 4, "three personas and the synthesis");
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step["index"], i);
        assert_eq!(step["status"], "succeeded");
        assert!(
            step["output"].as_str().is_some_and(|o| !o.is_empty()),
            "{step:#}"
        );
        assert!(step["usage"]["total_tokens"].as_u64() > Some(0));
        assert_eq!(step["attempts"], 1);
    }
    let personas: Vec<&str> = steps.iter().filter_map(|s| s["persona"].as_str()).collect();
    assert_eq!(personas, ["cfo", "support-lead", "security-officer"]);
    assert_eq!(steps[3]["kind"], "synthesis");
    // The synthesis saw every answer.
    assert!(
        steps[3]["output"]
            .as_str()
            .is_some_and(|o| o.contains("support-lead"))
    );
    let usage: u64 = steps
        .iter()
        .map(|s| s["usage"]["total_tokens"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(stored["usage"]["total_tokens"], usage);

    let evaluation = &stored["evaluation"];
    assert_eq!(evaluation["passed"], true, "{evaluation:#}");
    let targets = evaluation["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0]["step"], 3);
    let assertions = targets[0]["assertions"].as_array().expect("assertions");
    assert_eq!(assertions.len(), 2);
    assert_eq!(assertions[0]["type"], "length");
    assert_eq!(assertions[1]["metric"], "coverage");
    assert!(
        assertions
            .iter()
            .all(|a| a["passed"] == true && a["reason"].is_string())
    );
    assert_eq!(stored["metadata"]["workload"], "persona-roundtable");

    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn roundtable_is_stored_completely_on_sqlite() {
    roundtable_is_stored_completely(TestDatabase::sqlite()).await;
}

#[tokio::test]
async fn roundtable_is_stored_completely_on_postgres() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    roundtable_is_stored_completely(db).await;
}

#[tokio::test]
async fn the_same_idempotency_key_creates_one_job() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    let create = || {
        app.client
            .post(format!("{}/v1/jobs", app.base))
            .header("Idempotency-Key", "order-42")
            .json(&single("sim:echo", "hello"))
            .send()
    };
    let first: Value = create().await.expect("first").json().await.expect("json");
    let job = first["id"].as_str().expect("id").to_owned();
    wait_done(&app.base, &app.client, &job, Duration::from_secs(20)).await;
    let second = create().await.expect("second");
    assert_eq!(second.status(), 202);
    let second: Value = second.json().await.expect("json");
    assert_eq!(second["id"], job.as_str());
    assert_eq!(
        second["status"], "succeeded",
        "the retry reports the existing job"
    );

    let list: Value = app
        .client
        .get(format!("{}/v1/jobs", app.base))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list:#}");
    let (_, last_sequence) = stream_state(&app.bus, "submit").await;
    assert_eq!(last_sequence, 1, "the retried publish was de-duplicated");
}

#[tokio::test]
async fn wait_zero_answers_202_and_get_sees_the_job_at_once() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    let response = app
        .post_job(&single("sim:echo?latency=300ms", "slow"), "")
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "queued");
    assert_eq!(
        location,
        format!("/v1/jobs/{}", body["id"].as_str().expect("id"))
    );
    let (status, live) = app.get_job(body["id"].as_str().expect("id")).await;
    assert_eq!(status, 200, "an accepted job is never 404");
    assert!(
        matches!(live["status"].as_str(), Some("queued" | "running")),
        "{live:#}"
    );
    let done = wait_done(
        &app.base,
        &app.client,
        body["id"].as_str().expect("id"),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(done["status"], "succeeded");
}

#[tokio::test]
async fn lists_by_status_with_cursor_pagination() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let model = if i == 4 {
            "sim:echo?error=400"
        } else {
            "sim:echo"
        };
        let body: Value = app
            .post_job(&single(model, &format!("job {i}")), "?wait=20")
            .await
            .json()
            .await
            .expect("json");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    let page = |query: String| {
        let client = app.client.clone();
        let url = format!("{}/v1/jobs{query}", app.base);
        async move {
            client
                .get(url)
                .send()
                .await
                .expect("list")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let first = page("?status=succeeded&limit=3".into()).await;
    let data = first["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    assert!(data.iter().all(|j| j["status"] == "succeeded"));
    assert_eq!(data[0]["id"], ids[3].as_str(), "newest first");
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = page(format!("?status=succeeded&limit=3&cursor={cursor}")).await;
    assert_eq!(second["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["data"][0]["id"], ids[0].as_str());
    let failed = page("?status=failed".into()).await;
    assert_eq!(failed["data"][0]["id"], ids[4].as_str());
    assert_eq!(failed["data"][0]["error"]["kind"], "bad_request");

    let bad = app
        .client
        .get(format!("{}/v1/jobs?status=done", app.base))
        .send()
        .await
        .expect("list");
    assert_eq!(bad.status(), 422);
    let bad = app
        .client
        .get(format!("{}/v1/jobs?cursor=nonsense", app.base))
        .send()
        .await
        .expect("list");
    assert_eq!(bad.status(), 400);
    let (status, _) = app.get_job("0190f5c2-0000-7000-8000-000000000001").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn bad_requests_name_the_problem_and_publish_nothing() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    config.edge.body_limit = bytesize::ByteSize::kib(4);
    let app = TestApp::start(config).await;

    let send_raw = |body: String| {
        app.client
            .post(format!("{}/v1/jobs", app.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let error_of = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("a JSON error body");
        (
            status,
            body["error"]["param"].clone(),
            body["error"]["message"].as_str().unwrap_or("").to_owned(),
            body["error"]["code"].as_str().unwrap_or("").to_owned(),
        )
    };

    let (status, _, message, _) =
        error_of(send_raw("{\"model\": ".into()).await.expect("send")).await;
    assert_eq!(status, 400);
    assert!(message.contains("malformed JSON"), "{message}");

    // (body, status, code, param, what the message mentions)
    let cases: Vec<(Value, u16, &str, &str, &str)> = vec![
        (
            json!({"model": "sim:echo", "messages": "hi"}),
            422,
            "invalid_value",
            "messages",
            "invalid type",
        ),
        (
            json!({"model": "sim:echo", "messages": [{"role": "user", "content": "x"}], "temprature": 1}),
            422,
            "invalid_value",
            "temprature",
            "unknown field",
        ),
        (
            json!({"model": "sim:echo", "messages": [{"role": "robot", "content": "x"}]}),
            422,
            "invalid_value",
            "messages[0].role",
            "robot",
        ),
        (
            json!({"model": "gpt-nine", "messages": [{"role": "user", "content": "x"}]}),
            404,
            "model_not_found",
            "model",
            "fast",
        ),
        (
            json!({"model": "sim:echo?fail=lots", "messages": [{"role": "user", "content": "x"}]}),
            404,
            "model_not_found",
            "model",
            "fail",
        ),
        (
            json!({"model": "sim:echo", "prompt": "a\n{{ missing }}"}),
            422,
            "invalid_template",
            "prompt",
            "line 2",
        ),
        (
            json!({"model": "sim:echo", "messages": [{"role": "user", "content": "x"}],
                "personas": [{"name": "a", "system": "s"}, {"name": "a", "system": "t"}]}),
            422,
            "duplicate_persona",
            "personas",
            "twice",
        ),
        (
            json!({"model": "sim:echo", "messages": [{"role": "user", "content": "x"}],
                "evaluate": {"assertions": [{"type": "regex", "pattern": "a("}]}}),
            422,
            "invalid_assertion",
            "evaluate.assertions[0]",
            "regex",
        ),
        (
            json!({"model": "sim:echo", "messages": [{"role": "user", "content": "x"}],
                "evaluate": {"assertions": [{"type": "contains", "valu": "x"}]}}),
            422,
            "invalid_value",
            "evaluate.assertions[0]",
            "valu",
        ),
    ];
    for (body, expected, code, param, needle) in cases {
        let (status, got_param, message, got_code) = error_of(app.post_job(&body, "").await).await;
        assert_eq!(
            (status, got_code.as_str()),
            (expected, code),
            "{body}: {message}"
        );
        assert_eq!(got_param, param, "{body}: {message}");
        assert!(
            message.contains(needle),
            "{body}: `{message}` should mention `{needle}`"
        );
    }

    let big =
        json!({"model": "sim:echo", "messages": [{"role": "user", "content": "x".repeat(8192)}]});
    let (status, _, message, _) = error_of(app.post_job(&big, "").await).await;
    assert_eq!(status, 413);
    assert!(message.contains("4096"), "{message}");

    let (status, _, _, _) = error_of(
        app.client
            .post(format!("{}/v1/jobs", app.base))
            .body("{}")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 400, "a body without the JSON content type");

    let (messages, last_sequence) = stream_state(&app.bus, "submit").await;
    assert_eq!(
        (messages, last_sequence),
        (0, 0),
        "nothing invalid was ever published"
    );
}
