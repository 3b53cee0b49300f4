//! Failure isolation: an outage stalls work without losing or failing any of it; a paid call is
//! not made twice because its result could not be published at first.

use std::time::Duration;

use chorus_mock_llm::{Behaviour, MockLlm};
use chorus_testkit::database::{Backend, TestDatabase};
use chorus_testkit::nats::NatsServer;
use chorus_testkit::proxy::Proxy;
use chorus_testkit::wait;
use serde_json::Value;

use crate::helpers::*;

/// Submits `n` single-call jobs on `model`; the ids of those accepted (`202`) and how many
/// were refused (`503`: the edge could not serve the request).
async fn submit_many(app: &TestApp, model: &str, n: usize, label: &str) -> (Vec<String>, usize) {
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..n {
        let response = app
            .post_job(&single(model, &format!("{label} {i}")), "")
            .await;
        match response.status().as_u16() {
            202 => {
                let body: Value = response.json().await.expect("json");
                accepted.push(body["id"].as_str().expect("an id").to_owned());
            }
            503 => refused += 1,
            status => panic!(
                "unexpected status {status}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }
    (accepted, refused)
}

#[tokio::test]
async fn a_database_outage_mid_load_loses_and_fails_nothing() {
    let Some(db) = TestDatabase::new(Backend::Postgres) else {
        return;
    };
    let nats = NatsServer::start_new().await;
    let (proxy, url) = Proxy::in_front_of(db.url()).await;
    let mut config = test_config(&nats, &db);
    config.database.url = url.clone();
    let unseen = create_key(&url, "default", "submit,read").await;
    let app = TestApp::start(config).await;

    // Calls of a few seconds: the jobs' final states reach the persister during the outage.
    let slow = "sim:echo?latency=3s";
    let (mut ids, _) = submit_many(&app, slow, 200, "before").await;
    proxy.cut();
    wait::until(
        Duration::from_secs(20),
        "/ready to report the database down",
        || async {
            let ready = app
                .client
                .get(format!("{}/ready", app.base))
                .send()
                .await
                .ok()?;
            (ready.status() == 503).then_some(())
        },
    )
    .await;
    let (during, refused) = submit_many(&app, slow, 200, "during").await;
    // A key the edge never verified is not taken on trust while the database is down.
    let unseen = client_with_key(&unseen);
    let response = unseen
        .post(format!("{}/v1/jobs", app.base))
        .json(&single(slow, "a stranger"))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 503);
    ids.extend(during);
    tokio::time::sleep(Duration::from_secs(10)).await; // the outage itself is the subject
    proxy.restore();
    let (after, _) = submit_many(&app, slow, 200, "after").await;
    ids.extend(after);

    for id in &ids {
        let job = wait_done(&app.base, &app.client, id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
    }
    assert_eq!(
        (ids.len(), refused),
        (600, 0),
        "every submission was accepted, the outage's too (the key was verified before it)"
    );
    assert!(
        dead_letters(&app.bus).await.is_empty(),
        "nothing was dead-lettered"
    );
    let db_conn = sea_orm::Database::connect(db.url()).await.expect("connect");
    assert_eq!(
        count(
            &db_conn,
            "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'"
        )
        .await,
        ids.len() as i64,
        "every accepted job is stored once, succeeded"
    );
    assert_eq!(
        count(&db_conn, "SELECT COUNT(*) FROM steps").await,
        ids.len() as i64,
        "one step each, none stored twice"
    );
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_step_whose_result_publish_fails_is_not_called_again() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script("paid", Behaviour::answer("worth every cent"));
    let mut config = test_config(&nats, &db);
    config.routes.push(mock_route("paid", &mock, "paid"));
    config.faults.llm_publish_failures = 3;
    let app = TestApp::start(config).await;

    let response = app.post_job(&single("paid", "once, please"), "").await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    let id = body["id"].as_str().expect("an id");
    let job = wait_done(&app.base, &app.client, id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["steps"][0]["output"], "worth every cent");
    assert_eq!(
        mock.requests("paid").len(),
        1,
        "the provider was called once though the result's publish failed three times"
    );
    assert_eq!(job["steps"][0]["attempts"], 1);
    app.shutdown().await.expect("clean shutdown");
}

/// One job whose snapshot the database refuses (the `faults.store_reject_metadata` hook), among
/// 1,000 ordinary ones: it alone fails, with its reason and a dead letter, and a replay once the
/// cause is gone stores it in full.
async fn a_refused_snapshot_fails_its_job_alone(backend: Backend) {
    let Some(db) = TestDatabase::new(backend) else {
        return;
    };
    let nats = NatsServer::start_new().await;
    let mut config = test_config(&nats, &db);
    config.faults.store_reject_metadata = Some("poison".into());
    let app = TestApp::start(config.clone()).await;

    let (mut ids, _) = submit_many(&app, "fast", 500, "ordinary").await;
    let mut poison = single("fast", "the database will not take this one");
    poison["metadata"] = serde_json::json!({"poison": "yes"});
    let response = app.post_job(&poison, "").await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    let poisoned = body["id"].as_str().expect("an id").to_owned();
    let (more, _) = submit_many(&app, "fast", 500, "ordinary").await;
    ids.extend(more);

    for id in &ids {
        let job = wait_done(&app.base, &app.client, id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
    }
    let job = wait_done(&app.base, &app.client, &poisoned, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["kind"], "storage_rejected", "{job:#}");
    assert!(
        job["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("faults.store_reject_metadata")),
        "the reason is the database's: {job:#}"
    );
    let letters = dead_letters(&app.bus).await;
    assert_eq!(letters.len(), 1, "the refused snapshot alone: {letters:#?}");
    assert_eq!(letters[0].stage, chorus_core::subjects::Stage::Persister);
    assert_eq!(letters[0].error_kind, "storage_rejected");
    assert_eq!(
        letters[0].job_id.map(|j| j.to_string()),
        Some(poisoned.clone())
    );
    app.shutdown().await.expect("clean shutdown");

    // The cause is fixed: the replayed snapshot is stored in full.
    config.faults.store_reject_metadata = None;
    let app = TestApp::start(config).await;
    let store = chorus_store::Store::connect(db.url(), 1).await.expect("db");
    let report = chorus_dlq::service::Dlq::new(app.bus.clone())
        .replay(
            &store,
            "test",
            &chorus_bus::dlq::Filter::default(),
            chorus_dlq::report::ReplayOptions {
                max_replays: 3,
                rate: 50.0,
                dry_run: false,
            },
            std::future::pending(),
        )
        .await
        .expect("replay")
        .report;
    assert_eq!(report.replayed.len(), 1, "{report:#?}");
    let job = wait::until(
        Duration::from_secs(60),
        "the replayed job to be stored",
        || async {
            let (_, job) = app.get_job(&poisoned).await;
            (job["status"] == "succeeded").then_some(job)
        },
    )
    .await;
    assert_eq!(
        job["steps"][0]["output"],
        "[sim] the database will not take this one"
    );
    assert_eq!(job["metadata"]["poison"], "yes");
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_refused_snapshot_fails_its_job_alone_on_sqlite() {
    a_refused_snapshot_fails_its_job_alone(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_refused_snapshot_fails_its_job_alone_on_postgres() {
    a_refused_snapshot_fails_its_job_alone(Backend::Postgres).await;
}
