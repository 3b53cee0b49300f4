//! The full job model end to end: judges through the llm stage (including one that answers
//! garbage), every deterministic assertion kind in one job, priority under a backlog, deadlines,
//! cancel, and template errors caught before anything is queued.

use std::time::Duration;

use chorus_core::config::{Price, RouteConfig};
use chorus_mock_llm::{Behaviour, MockLlm};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use chorus_testkit::wait;
use serde_json::{Value, json};

use crate::helpers::*;

async fn submit(app: &TestApp, body: &Value) -> String {
    let response = app.post_job(body, "").await;
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 202, "{body:#}");
    body["id"].as_str().expect("id").to_owned()
}

fn assertion<'a>(job: &'a Value, kind: &str) -> &'a Value {
    job["evaluation"]["targets"][0]["assertions"]
        .as_array()
        .and_then(|list| list.iter().find(|a| a["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} assertion in {job:#}"))
}

#[tokio::test]
async fn judges_run_through_the_llm_stage_and_garbage_is_an_errored_assertion() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "answer",
        Behaviour::answer("Paris is the capital of France."),
    );
    mock.script(
        "judge-high",
        Behaviour::answer(r#"{"reason": "meets the rubric", "score": 0.9}"#),
    );
    mock.script(
        "judge-low",
        Behaviour::answer(
            "```json\n{\"reason\": \"contradicts the reference\", \"score\": 0.1}\n```",
        ),
    );
    mock.script("judge-garbage", Behaviour::answer("Looks great to me!"));
    let mut config = test_config(&nats, &db);
    for name in ["answer", "judge-high", "judge-low", "judge-garbage"] {
        config.routes.push(mock_route(name, &mock, name));
    }
    config.routes.push(RouteConfig {
        price: Some(Price {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
        }),
        ..mock_route("priced", &mock, "answer")
    });
    let app = TestApp::start(config).await;

    let spec = json!({
        "model": "answer",
        "prompt": "What is the capital of {{ country }}?",
        "input": {"country": "France"},
        "evaluate": {"threshold": 0.5, "assertions": [
            {"type": "llm_rubric", "value": "Names the capital city.", "model": "judge-high", "metric": "rubric"},
            {"type": "factuality", "value": "Lyon is the capital.", "model": "judge-low", "metric": "facts"},
            {"type": "llm_rubric", "value": "Is polite.", "model": "judge-garbage"},
            {"type": "llm_rubric", "value": "Is rude.", "model": "judge-high", "not": true},
            {"type": "similarity", "value": "Paris is the capital of France", "method": "rouge_l", "threshold": 0.8},
            {"type": "similarity", "value": "Berlin is in Germany", "threshold": 0.8},
            {"type": "latency", "max_ms": 60000},
            {"type": "cost", "max_usd": 1.0}
        ]}
    });
    let id = submit(&app, &spec).await;
    let job = wait_done(&app.base, &app.client, &id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");

    // One judge call per judge assertion, through the llm stage; the garbage judge asked 3 times.
    assert_eq!(mock.stats("judge-high").requests, 2);
    assert_eq!(mock.stats("judge-low").requests, 1);
    assert_eq!(mock.stats("judge-garbage").requests, 3);
    let judge_request = &mock.requests("judge-low")[0];
    let sent = judge_request.body.to_string();
    assert!(
        sent.contains("Lyon is the capital."),
        "the reference reaches the judge: {sent}"
    );
    assert!(
        sent.contains("Paris is the capital of France."),
        "the answer reaches the judge"
    );
    assert!(
        sent.contains("json_schema"),
        "the judge is forced to answer JSON: {sent}"
    );

    let judged: Vec<&Value> = job["evaluation"]["targets"][0]["assertions"]
        .as_array()
        .expect("assertions")
        .iter()
        .collect();
    assert_eq!(judged.len(), 8);
    let rubric = &judged[0];
    assert_eq!(
        (rubric["passed"].as_bool(), rubric["score"].as_f64()),
        (Some(true), Some(0.9))
    );
    assert!(
        rubric["reason"]
            .as_str()
            .is_some_and(|r| r.contains("meets the rubric"))
    );
    let facts = &judged[1];
    assert_eq!(facts["passed"], false, "{facts:#}");
    assert_eq!(facts["score"].as_f64(), Some(0.1));
    let garbage = &judged[2];
    assert_eq!(garbage["passed"], false, "{garbage:#}");
    assert_eq!(garbage["errored"], true, "{garbage:#}");
    assert!(
        garbage["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not JSON")),
        "{garbage:#}"
    );
    let negated = &judged[3];
    assert_eq!(
        negated["passed"], false,
        "`not` on a 0.9 verdict fails: {negated:#}"
    );
    assert_eq!(judged[4]["passed"], true, "{:#}", judged[4]);
    assert_eq!(judged[5]["passed"], false, "{:#}", judged[5]);
    assert_eq!(assertion(&job, "latency")["passed"], true);
    // The answering route has no prices: the cost check cannot be made.
    assert_eq!(assertion(&job, "cost")["errored"], true);

    // Judge calls are steps of the job like any other, stored with their route.
    let steps = job["steps"].as_array().expect("steps");
    let judges: Vec<&Value> = steps.iter().filter(|s| s["kind"] == "judge").collect();
    assert_eq!(judges.len(), 4, "{job:#}");
    assert!(
        judges
            .iter()
            .any(|s| s["route"] == "judge-garbage" && s["status"] == "failed")
    );

    // On a priced route, cost is measured and checked.
    let priced = json!({
        "model": "priced",
        "messages": [{"role": "user", "content": "capital?"}],
        "evaluate": {"assertions": [{"type": "cost", "max_usd": 1.0}, {"type": "cost", "max_usd": 0.0, "not": true}]}
    });
    let id = submit(&app, &priced).await;
    let job = wait_done(&app.base, &app.client, &id, Duration::from_secs(30)).await;
    let checks = job["evaluation"]["targets"][0]["assertions"]
        .as_array()
        .expect("assertions");
    assert!(
        checks
            .iter()
            .all(|a| a["passed"] == true && a["errored"] == false),
        "{job:#}"
    );
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_backlog_serves_high_priority_first() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "one-at-a-time",
        Behaviour::answer("ok").with_latency(Duration::from_millis(100)),
    );
    let mut config = test_config(&nats, &db);
    config.routes.push(RouteConfig {
        max_concurrency: Some(1),
        ..mock_route("one-at-a-time", &mock, "one-at-a-time")
    });
    let app = TestApp::start(config).await;

    let job = |priority: i32, i: usize| {
        json!({"model": "one-at-a-time", "priority": priority,
               "messages": [{"role": "user", "content": format!("p{priority} #{i}")}]})
    };
    let mut low = Vec::new();
    for i in 0..20 {
        low.push(submit(&app, &job(-5, i)).await);
    }
    let mut high = Vec::new();
    for i in 0..8 {
        high.push(submit(&app, &job(5, i)).await);
    }
    let mut finished = Vec::new();
    for id in low.iter().chain(&high) {
        let job = wait_done(&app.base, &app.client, id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        finished.push((
            job["finished_at"].as_str().expect("finished_at").to_owned(),
            id.clone(),
        ));
    }
    finished.sort();
    let order: Vec<char> = finished
        .iter()
        .map(|(_, id)| if high.contains(id) { 'H' } else { 'L' })
        .collect();
    let last_high = order.iter().rposition(|c| *c == 'H').expect("high jobs");
    let low_before = order[..last_high].iter().filter(|c| **c == 'L').count();
    eprintln!("finish order: {}", order.iter().collect::<String>());
    // The high-priority jobs arrived after all 20 low ones; only the calls already taken by the
    // time they arrived may finish ahead of them.
    assert!(
        low_before <= 6,
        "{low_before} low-priority jobs finished before the last high one: {order:?}"
    );
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn cancel_stops_dispatch_and_a_deadline_fails_calls_not_yet_made() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "slow",
        Behaviour::answer("ok").with_latency(Duration::from_millis(300)),
    );
    let mut config = test_config(&nats, &db);
    config.routes.push(RouteConfig {
        max_concurrency: Some(1),
        ..mock_route("slow", &mock, "slow")
    });
    let app = TestApp::start(config).await;

    // Eight personas, one call at a time: cancel once the first call has arrived.
    let personas: Vec<Value> = (0..8)
        .map(|i| json!({"name": format!("p{i}"), "system": format!("You are persona {i}.")}))
        .collect();
    let spec = json!({"model": "slow", "personas": personas,
                      "messages": [{"role": "user", "content": "Review."}]});
    let id = submit(&app, &spec).await;
    wait::until(Duration::from_secs(10), "the first call", || async {
        (mock.stats("slow").requests >= 1).then_some(())
    })
    .await;
    let response = app
        .client
        .post(format!("{}/v1/jobs/{id}/cancel", app.base))
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status(), 200);
    let at_ack = mock.stats("slow").requests;
    let cancelled: Value = response.json().await.expect("json");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
    wait_quiet(&app.bus).await;
    let requests = mock.stats("slow").requests;
    assert!(
        requests <= at_ack + 1,
        "calls after the cancel: {at_ack} at the ack, {requests} later"
    );
    assert!(requests < 8, "most calls were never made");
    let (_, stored) = app.get_job(&id).await;
    assert_eq!(stored["status"], "cancelled");
    assert_eq!(stored["error"]["kind"], "cancelled");
    // Cancelling again answers the same; a finished job cannot be cancelled.
    let again = app
        .client
        .post(format!("{}/v1/jobs/{id}/cancel", app.base))
        .send()
        .await
        .expect("cancel");
    assert_eq!(again.status(), 200);
    let done = submit(&app, &single("fast", "hi")).await;
    wait_done(&app.base, &app.client, &done, Duration::from_secs(20)).await;
    let refused = app
        .client
        .post(format!("{}/v1/jobs/{done}/cancel", app.base))
        .send()
        .await
        .expect("cancel");
    assert_eq!(refused.status(), 409);

    // A deadline 1 s away with 6 calls of 300 ms queued behind one another: the late ones fail.
    let deadline = chrono::Utc::now() + chrono::Duration::milliseconds(1000);
    let personas: Vec<Value> = (0..6)
        .map(|i| json!({"name": format!("d{i}"), "system": format!("You are {i}.")}))
        .collect();
    let spec = json!({"model": "slow", "personas": personas, "deadline": deadline.to_rfc3339(),
                      "messages": [{"role": "user", "content": "Quick."}]});
    let id = submit(&app, &spec).await;
    let job = wait_done(&app.base, &app.client, &id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["kind"], "deadline_exceeded", "{job:#}");
    let steps = job["steps"].as_array().expect("steps");
    assert!(
        steps.iter().any(|s| s["status"] == "succeeded"),
        "the early calls answered"
    );

    // A deadline already past is refused at the door.
    let past = json!({"model": "fast", "deadline": "2020-01-01T00:00:00Z",
                      "messages": [{"role": "user", "content": "late"}]});
    let response = app.post_job(&past, "").await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["param"], "deadline", "{body:#}");
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn template_errors_and_unknown_routes_are_refused_before_anything_is_queued() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    let cases = [
        (
            json!({"model": "fast", "prompt": "Hello\n{{ name }", "input": {"name": "x"}}),
            422,
            "invalid_template",
            "prompt",
            "line 2",
        ),
        (
            json!({"model": "fast", "prompt": "Hi {{ missing }}"}),
            422,
            "invalid_template",
            "prompt",
            "undefined",
        ),
        (
            json!({"model": "fast", "messages": [{"role": "user", "content": "x"}],
                   "personas": [{"name": "a", "system": "b"}],
                   "synthesis": {"prompt": "{% for a in answers %}{{ a.nope.deeper }}{% endfor %}"}}),
            422,
            "invalid_template",
            "synthesis.prompt",
            "line 1",
        ),
        (
            json!({"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}),
            404,
            "model_not_found",
            "model",
            "fast",
        ),
        (
            json!({"model": "fast", "messages": [{"role": "user", "content": "x"}],
                   "evaluate": {"assertions": [{"type": "llm_rubric", "value": "ok", "model": "nope"}]}}),
            404,
            "model_not_found",
            "evaluate.assertions[0].model",
            "nope",
        ),
        (
            json!({"model": "fast", "messages": [{"role": "user", "content": "x"}], "priority": 99}),
            422,
            "invalid_value",
            "priority",
            "between",
        ),
    ];
    // (body, status, code, param, what the message mentions): an unknown model is OpenAI's
    // 404, a template that does not render has a code of its own.
    for (body, expected, code, param, needle) in cases {
        let response = app.post_job(&body, "").await;
        let status = response.status();
        let error: Value = response.json().await.expect("json");
        assert_eq!(status, expected, "{body} → {error:#}");
        assert_eq!(error["error"]["code"], code, "{error:#}");
        assert_eq!(error["error"]["param"], param, "{error:#}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }
    assert_eq!(
        stream_state(&app.bus, "submit").await.1,
        0,
        "nothing was queued"
    );
    app.shutdown().await.expect("clean shutdown");
}
