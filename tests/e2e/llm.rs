//! The LLM stage against a mock provider speaking OpenAI's wire format: faults, permanent errors,
//! dead letters and their replay, fallbacks, a 429 that pauses a route on every process, and a rate
//! limit shared by three llm processes.

use std::time::{Duration, SystemTime};

use chorus_core::config::RouteConfig;
use chorus_mock_llm::{Behaviour, Fault, MockLlm, RecordedRequest, RetryAfter, most_in_window};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use chorus_testkit::wait;
use serde_json::{Value, json};

use crate::helpers::*;

async fn submit(app: &TestApp, model: &str, text: &str) -> String {
    let body: Value = app
        .post_job(&single(model, text), "")
        .await
        .json()
        .await
        .expect("json");
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {body}"))
        .to_owned()
}

#[tokio::test]
async fn with_30_percent_faults_every_job_succeeds() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "flaky",
        Behaviour::answer("fine")
            .with_chance(0.075, Fault::status(500))
            .with_chance(0.075, Fault::Hang)
            .with_chance(0.075, Fault::Reset)
            .with_chance(0.075, Fault::Malformed),
    );
    let mut config = test_config(&nats, &db);
    config.routes.push(mock_route("flaky", &mock, "flaky"));
    let app = TestApp::start(config).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(submit(&app, "flaky", &format!("case {i}")).await);
    }
    for id in &ids {
        let job = wait_done(&app.base, &app.client, id, Duration::from_secs(90)).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
    }
    let stats = mock.stats("flaky");
    let faults: u64 = stats
        .outcomes
        .iter()
        .filter(|(o, _)| o.as_str() != "ok")
        .map(|(_, n)| n)
        .sum();
    assert!(faults > 0, "the mock injected faults: {:?}", stats.outcomes);
}

#[tokio::test]
async fn a_permanent_error_fails_the_job_at_once_with_the_providers_message() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script("strict", Behaviour::always(Fault::status(400)));
    let mut config = test_config(&nats, &db);
    config.routes.push(mock_route("strict", &mock, "strict"));
    let app = TestApp::start(config).await;
    let id = submit(&app, "strict", "anything").await;
    let job = wait_done(&app.base, &app.client, &id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["kind"], "bad_request");
    let provider_says = mock.requests("strict").len();
    assert_eq!(provider_says, 1, "no retry of a permanent error");
    assert_eq!(job["steps"][0]["attempts"], 1);
    assert_eq!(job["steps"][0]["calls"][0]["status"], 400);
    let message = job["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !message.is_empty() && message == job["steps"][0]["calls"][0]["message"],
        "{job:#}"
    );
    assert!(
        dead_letters(&app.bus).await.is_empty(),
        "replaying would not help: no dead letter"
    );
}

#[tokio::test]
async fn always_503_ends_in_the_dlq_and_a_replay_after_healing_succeeds() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script("down", Behaviour::always(Fault::status(503)));
    let mut config = test_config(&nats, &db);
    config.routes.push(mock_route("down", &mock, "down"));
    let app = TestApp::start(config).await;
    let ids = [
        submit(&app, "down", "one").await,
        submit(&app, "down", "two").await,
    ];
    for id in &ids {
        let job = wait_done(&app.base, &app.client, id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "failed");
        assert_eq!(job["error"]["kind"], "server_error");
    }
    let letters = dead_letters(&app.bus).await;
    assert_eq!(letters.len(), 2);
    assert!(
        letters
            .iter()
            .all(|l| l.deliveries == 5 && l.attempts == 15)
    );

    mock.script("down", Behaviour::answer("back up"));
    let replay: Value = app
        .client
        .post(format!("{}/v1/admin/dlq/replay", app.base))
        .json(&json!({"route": "down"}))
        .send()
        .await
        .expect("replay")
        .json()
        .await
        .expect("json");
    assert_eq!(
        replay["replayed"].as_array().map(Vec::len),
        Some(2),
        "{replay:#}"
    );
    for id in &ids {
        let job = wait::until(
            Duration::from_secs(30),
            "the replayed job to succeed",
            || async {
                let (_, job) = app.get_job(id).await;
                (job["status"] == "succeeded").then_some(job)
            },
        )
        .await;
        assert_eq!(job["steps"][0]["replays"], 1);
        assert_eq!(job["error"], Value::Null);
    }
}

#[tokio::test]
async fn a_fallback_answers_when_the_route_always_fails_and_the_step_records_both() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script("primary-model", Behaviour::always(Fault::status(503)));
    mock.script("backup-model", Behaviour::answer("from the backup"));
    let mut config = test_config(&nats, &db);
    config.routes.push(RouteConfig {
        fallbacks: vec!["backup".into()],
        ..mock_route("primary", &mock, "primary-model")
    });
    config
        .routes
        .push(mock_route("backup", &mock, "backup-model"));
    let app = TestApp::start(config).await;
    let response = app.post_job(&single("primary", "hello"), "?wait=30").await;
    let job: Value = response.json().await.expect("json");
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let step = &job["steps"][0];
    assert_eq!(step["route"], "primary");
    assert_eq!(step["answered_by"], "backup");
    assert!(
        step["output"]
            .as_str()
            .is_some_and(|o| o.contains("from the backup"))
    );
    let calls: Vec<(String, String)> = step["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| {
            (
                c["route"].as_str().unwrap_or("").into(),
                c["outcome"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let primary = ("primary".to_owned(), "server_error".to_owned());
    assert_eq!(
        calls,
        [
            primary.clone(),
            primary.clone(),
            primary,
            ("backup".into(), "ok".into())
        ]
    );

    // The stage's metrics, in Prometheus' text format. (Under `cargo test` every test shares one
    // process-wide recorder; these routes are this test's own.)
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        r#"chorus_llm_calls_total{route="primary",outcome="server_error"} 3"#,
        r#"chorus_llm_calls_total{route="backup",outcome="ok"} 1"#,
        r#"chorus_llm_fallbacks_total{route="backup"} 1"#,
        r#"chorus_llm_retries_total{route="primary"} 2"#,
        "# TYPE chorus_llm_call_duration_seconds histogram",
        "# TYPE chorus_dlq_messages gauge",
    ] {
        assert!(metrics.contains(line), "no `{line}` in\n{metrics}");
    }
}

/// The mock's requests for `model`, sorted by arrival.
fn arrivals(mock: &MockLlm, model: &str) -> Vec<RecordedRequest> {
    let mut requests = mock.requests(model);
    requests.sort_by_key(|r| r.received_at);
    requests
}

fn since(at: SystemTime, origin: SystemTime) -> Duration {
    at.duration_since(origin).unwrap_or_default()
}

#[tokio::test]
async fn a_429_pauses_its_route_on_every_pod_while_another_route_flows() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "throttled",
        Behaviour::answer("ok")
            .with_latency(Duration::from_millis(20))
            .fail_next(1, Fault::rate_limited(RetryAfter::Seconds(3))),
    );
    mock.script(
        "steady",
        Behaviour::answer("ok").with_latency(Duration::from_millis(20)),
    );
    // 300 rpm spaces calls 200 ms apart: the pause reaches every process within milliseconds,
    // but a call already sent when the 429 arrives cannot be recalled.
    let mut config = test_config(&nats, &db);
    config.routes.push(RouteConfig {
        rpm: Some(300),
        ..mock_route("throttled", &mock, "throttled")
    });
    config.routes.push(RouteConfig {
        rpm: Some(300),
        ..mock_route("steady", &mock, "steady")
    });
    let (app, _pods, _processes) = three_llm_pods(config).await;
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(submit(&app, "throttled", &format!("t{i}")).await);
        ids.push(submit(&app, "steady", &format!("s{i}")).await);
    }
    for id in &ids {
        let job = wait_done(&app.base, &app.client, id, Duration::from_secs(90)).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
    }
    let throttled = arrivals(&mock, "throttled");
    let first = throttled.first().expect("a first call").received_at;
    let after = throttled.get(1).expect("calls after the 429").received_at;
    let pause = since(after, first);
    println!("after the 429 the route resumed {pause:?} later");
    assert!(
        pause >= Duration::from_millis(2900),
        "the route was called {pause:?} after a 429 with retry-after: 3"
    );
    let steady_meanwhile = arrivals(&mock, "steady")
        .iter()
        .filter(|r| r.received_at > first && r.received_at < after)
        .count();
    assert!(
        steady_meanwhile >= 10,
        "the other route kept flowing ({steady_meanwhile} calls during the pause)"
    );
}

/// Three llm processes share one route's `rpm`: no 15-second window holds more calls than the
/// limit allows, and a tenant alone gets at least 95% of it.
#[tokio::test]
async fn three_llm_pods_share_one_rate_limit() {
    const RPM: u32 = 600;
    const WINDOW: Duration = Duration::from_secs(15);
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "capped",
        Behaviour::answer("ok").with_latency(Duration::from_millis(30)),
    );
    let mut config = test_config(&nats, &db);
    config.routes.push(RouteConfig {
        rpm: Some(RPM),
        ..mock_route("capped", &mock, "capped")
    });
    let (app, _pods, _processes) = three_llm_pods(config).await;
    // A backlog larger than the window can serve.
    for i in 0..220 {
        submit(&app, "capped", &format!("c{i}")).await;
    }
    wait::until(
        WINDOW + Duration::from_secs(20),
        "a window's worth of calls",
        || async { (mock.requests("capped").len() >= 160).then_some(()) },
    )
    .await;
    let times = mock.arrivals("capped");
    let most = most_in_window(&times, WINDOW);
    // GCRA without burst: requests at least 60 s / rpm apart, so a window admits at most
    // floor(window · rpm / 60) + 1 of them.
    let ceiling = (WINDOW.as_secs() as u32 * RPM / 60 + 1) as usize;
    let span = since(times[times.len() - 1], times[0]);
    let utilisation = (times.len() - 1) as f64 / (span.as_secs_f64() * f64::from(RPM) / 60.0);
    println!(
        "most calls in any {WINDOW:?}: {most} (ceiling {ceiling}); utilisation {:.1}%",
        utilisation * 100.0
    );
    assert!(
        most <= ceiling,
        "{most} calls in a {WINDOW:?} window, above the ceiling {ceiling}"
    );
    // One tenant alone gets the route: all but a sliver of what the limit allows.
    assert!(
        utilisation >= 0.95,
        "a tenant alone got {:.1}% of the route's limit",
        utilisation * 100.0
    );
}
