//! Faults: a worker process killed with SIGKILL mid-load, a worker actor that panics, and one
//! that keeps panicking until the process gives up.

use std::path::Path;
use std::time::Duration;

use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use serde_json::Value;

use crate::helpers::*;

/// A copy of `nats/` whose llm consumer redelivers after 3 s instead of a minute, so a killed
/// worker's messages come back within the test's patience.
fn short_ack_wait_definitions(dir: &Path) {
    llm_consumer_with(dir, |text| {
        text.replace("\"ack_wait\": 60000000000", "\"ack_wait\": 3000000000")
    });
}

#[tokio::test]
async fn killing_the_llm_worker_mid_load_loses_nothing_and_stores_nothing_twice() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let definitions = tempfile::tempdir().expect("dir");
    short_ack_wait_definitions(definitions.path());
    let mut config = test_config(&nats, &db);
    config.nats.definitions = Some(definitions.path().to_owned());
    config.llm.workers = 256;
    let base = free_edge(&mut config);
    let processes = Processes::new(&config);
    assert!(processes.run(&["migrate"]).await.status.success());

    // Every role in its own process.
    let mut children: Vec<_> = ["persister", "evaluator", "orchestrator", "edge"]
        .iter()
        .map(|role| processes.spawn(&["serve", "--roles", role]))
        .collect();
    let mut llm = processes.spawn(&["serve", "--roles", "llm"]);
    let (client, _) = admin_client(db.url()).await;
    wait_ready(&client, &base).await;

    let ids = submit_roundtables(&client, &base, "sim:echo?latency=100ms..600ms", 200).await;
    let bus = chorus_bus::Bus::connect(&nats.url(), "chorus", "test", Duration::from_secs(5))
        .await
        .expect("connect");
    wait_in_flight(&bus, "work", "llm").await;
    llm.kill();
    let store = chorus_store::Store::connect(db.url(), 2).await.expect("db");
    let finished_before = count(
        store.connection(),
        "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
    )
    .await;
    assert!(
        finished_before < 200,
        "the kill happened with jobs in flight ({finished_before} done)"
    );

    let mut llm = processes.spawn(&["serve", "--roles", "llm"]);
    for id in &ids {
        let done = wait_done(&base, &client, id, Duration::from_secs(90)).await;
        assert_eq!(done["status"], "succeeded", "{done:#}");
    }
    let db = store.connection();
    assert_eq!(count(db, "SELECT COUNT(*) FROM jobs").await, 200);
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM steps").await,
        200 * 3,
        "two personas and a synthesis each"
    );
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM evaluations").await,
        200 * 2,
        "two assertions each"
    );
    let duplicates = "SELECT COUNT(*) FROM (SELECT job_id, idx FROM steps GROUP BY job_id, idx HAVING COUNT(*) > 1) d";
    assert_eq!(count(db, duplicates).await, 0);
    let redelivered = count(db, "SELECT COUNT(*) FROM steps WHERE attempts > 1").await;
    assert!(
        redelivered > 0,
        "some calls were redelivered after the kill"
    );

    for child in children.iter_mut().chain(std::iter::once(&mut llm)) {
        child.terminate();
        assert!(child.exit(Duration::from_secs(30)).await.success());
    }
}

#[tokio::test]
async fn a_panicking_worker_is_restarted_and_its_message_completes() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    config.llm.workers = 1;
    config.faults.llm_panic_route = Some("sim:echo?latency=1ms".into());
    config.faults.llm_panic_times = 1;
    let app = TestApp::start(config).await;
    let response = app
        .post_job(&single("sim:echo?latency=1ms", "boom once"), "?wait=30")
        .await;
    let job: Value = response.json().await.expect("json");
    assert_eq!(job["status"], "succeeded", "{job:#}");
    // The only worker panicked on the first delivery; its replacement handled the redelivery.
    assert_eq!(
        job["steps"][0]["attempts"], 4,
        "1 panicked delivery counted at 3 attempts, then 1"
    );
    let next: Value = app
        .post_job(&single("sim:echo", "after"), "?wait=30")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(next["status"], "succeeded");
    app.shutdown()
        .await
        .expect("the runtime survived the panic");
}

#[tokio::test]
async fn a_worker_that_keeps_crashing_stops_the_process_with_an_error() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    config.faults.llm_panic_route = Some("sim:echo?latency=2ms".into());
    config.supervision.max_restarts = 2;
    let base = free_edge(&mut config);
    let processes = Processes::new(&config);
    let mut chorus = processes.spawn(&["serve"]);
    let (client, _) = admin_client(db.url()).await;
    wait_ready(&client, &base).await;
    let response = client
        .post(format!("{base}/v1/jobs"))
        .json(&single("sim:echo?latency=2ms", "boom forever"))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), 202);
    let status = chorus.exit(Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "past the restart limit the process exits non-zero, got {status}"
    );
}
