//! The pipeline under failure: flaky and failing providers, poison messages, JetStream
//! submitters, and a graceful stop with work in flight.

use std::time::Duration;

use bytes::Bytes;
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use chorus_testkit::wait;
use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_provider_failing_half_its_calls_still_completes_every_job() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    let app = &app;
    let jobs = join_all((0..20).map(|i| async move {
        let body: Value = app
            .post_job(&roundtable("sim:echo?fail=0.5"), "")
            .await
            .json()
            .await
            .unwrap_or_else(|e| panic!("job {i}: {e}"));
        body["id"].as_str().expect("id").to_owned()
    }))
    .await;
    let mut retried = 0;
    for id in &jobs {
        let job = wait_done(&app.base, &app.client, id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        retried += job["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .filter(|s| s["attempts"].as_u64() > Some(1))
            .count();
    }
    assert!(
        retried > 0,
        "with fail=0.5 some steps needed more than one attempt"
    );
}

#[tokio::test]
async fn an_always_failing_provider_ends_in_the_dlq_and_fails_the_job() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    let body: Value = app
        .post_job(&single("sim:echo?error=503", "doomed"), "")
        .await
        .json()
        .await
        .expect("json");
    let id = body["id"].as_str().expect("id");
    let job = wait_done(&app.base, &app.client, id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["kind"], "server_error");
    assert_eq!(job["error"]["step"], 0);
    let step = &job["steps"][0];
    assert_eq!(step["status"], "failed");
    assert_eq!(
        step["attempts"], 15,
        "3 calls on each of the consumer's 5 deliveries"
    );

    let letters = dead_letters(&app.bus).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.stage, chorus_core::subjects::Stage::Llm);
    assert_eq!(letter.error_kind, "server_error");
    assert_eq!(
        job["error"]["message"].as_str(),
        Some(letter.error.as_str())
    );
    assert_eq!(letter.deliveries, 5);
    assert_eq!(letter.route.as_deref(), Some("sim:echo?error=503"));
    assert_eq!(letter.job_id.map(|j| j.to_string()).as_deref(), Some(id));
    assert!(letter.subject.starts_with("chorus.work.llm."));
    let (left, _) = stream_state(&app.bus, "work").await;
    assert_eq!(left, 0, "the dead letter left the work queue");
}

#[tokio::test]
async fn an_undecodable_work_message_is_dead_lettered_at_once() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    app.bus
        .js
        .publish(
            "chorus.work.llm.fast",
            Bytes::from_static(b"\x93not an envelope"),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    let letters = wait::until(Duration::from_secs(10), "a dead letter", || async {
        let letters = dead_letters(&app.bus).await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters[0].error_kind, "undecodable");
    assert_eq!(letters[0].deliveries, 1, "not redelivered");
    assert_eq!(letters[0].payload, b"\x93not an envelope");
    assert!(
        letters[0].error.contains("Chorus-Type"),
        "{}",
        letters[0].error
    );
    wait_quiet(&app.bus).await;
    assert_eq!(dead_letters(&app.bus).await.len(), 1);
    assert_eq!(stream_state(&app.bus, "work").await.0, 0);
}

#[tokio::test]
async fn jetstream_submitters_publish_plain_json_and_duplicates_are_one_job() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    let client = async_nats::connect(nats.url()).await.expect("plain client");
    let js = async_nats::jetstream::new(client);
    let spec = json!({"model": "sim:echo", "messages": [{"role": "user", "content": "from a NATS client"}]});
    for _ in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "case-7");
        headers.insert("Content-Type", "application/json");
        js.publish_with_headers("chorus.submit.default", headers, spec.to_string().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    // The job id is derived from the tenant and the submitter's message id.
    let tenant = chorus_core::Tenant::new("default").expect("tenant");
    let id = chorus_core::JobId::derived(&tenant, "case-7").to_string();
    let job = wait_done(&app.base, &app.client, &id, Duration::from_secs(20)).await;
    assert_eq!(job["status"], "succeeded");
    assert!(
        job["steps"][0]["output"]
            .as_str()
            .is_some_and(|o| o.contains("from a NATS client"))
    );
    assert_eq!(
        stream_state(&app.bus, "submit").await.1,
        1,
        "the duplicate was dropped"
    );

    // A malformed submission is dead-lettered with the field that is wrong.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    let bad = json!({"model": "sim:echo", "messages": [{"role": "user", "content": 5}]});
    js.publish_with_headers("chorus.submit.default", headers, bad.to_string().into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let letters = wait::until(Duration::from_secs(10), "a dead letter", || async {
        let letters = dead_letters(&app.bus).await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters[0].error_kind, "invalid_spec");
    assert!(
        letters[0].error.contains("messages[0].content"),
        "{}",
        letters[0].error
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_work_and_exits_cleanly() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    let base = free_edge(&mut config);
    let processes = Processes::new(&config);
    assert!(processes.run(&["migrate"]).await.status.success());
    let mut chorus = processes.spawn(&["serve"]);
    let (client, _) = admin_client(db.url()).await;
    wait_ready(&client, &base).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let response = client
            .post(format!("{base}/v1/jobs"))
            .json(&single("sim:echo?latency=500ms", &format!("in flight {i}")))
            .send()
            .await
            .expect("submit");
        let body: Value = response.json().await.expect("json");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    let bus = chorus_bus::Bus::connect(&nats.url(), "chorus", "test", Duration::from_secs(5))
        .await
        .expect("connect");
    wait_in_flight(&bus, "work", "llm").await;
    chorus.terminate();
    let status = chorus.exit(Duration::from_secs(30)).await;
    assert!(status.success(), "graceful exit, got {status}");

    // Everything accepted finishes once a process runs again.
    let _chorus = processes.spawn(&["serve"]);
    for id in &ids {
        let job = wait_done(&base, &client, id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], "succeeded");
    }
}
