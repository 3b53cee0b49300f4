//! Graceful stops as Kubernetes does them: SIGTERM to one of two llm workers under load. It must
//! stop pulling, finish what its workers hold and NAK what it fetched but had not started, flush,
//! and exit 0 within the pods' grace period, with the drain timeout of the Kubernetes config;
//! the other worker takes the rest, and every job succeeds once.

use std::time::Duration;

use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use chorus_testkit::wait;

use crate::deploy;
use crate::helpers::*;

#[tokio::test]
async fn a_terminated_llm_worker_settles_what_it_holds_and_exits_within_its_grace_period() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    // What the draining worker left unsettled would come back only after ten minutes, long after
    // this test has given up: every message must be acked or NAKed by the drain itself.
    let definitions = tempfile::tempdir().expect("dir");
    llm_consumer_with(definitions.path(), |text| {
        text.replace("\"ack_wait\": 60000000000", "\"ack_wait\": 600000000000")
    });
    let mut config = test_config(&nats, &db);
    config.nats.definitions = Some(definitions.path().to_owned());
    config.supervision.drain_timeout = deploy::kubernetes_config().supervision.drain_timeout;
    let base = free_edge(&mut config);
    let processes = Processes::new(&config);
    assert!(processes.run(&["migrate"]).await.status.success());

    let mut others: Vec<_> = ["persister", "evaluator", "orchestrator", "edge"]
        .iter()
        .map(|role| processes.spawn(&["serve", "--roles", role]))
        .collect();
    let mut leaving = processes.spawn(&["serve", "--roles", "llm"]);
    let mut staying = processes.spawn(&["serve", "--roles", "llm"]);
    let (client, _) = admin_client(db.url()).await;
    wait_ready(&client, &base).await;

    let ids = submit_roundtables(&client, &base, "sim:echo?latency=200ms..800ms", 300).await;
    let store = chorus_store::Store::connect(db.url(), 2).await.expect("db");
    wait::until(Duration::from_secs(30), "the first answers", || async {
        (count(store.connection(), "SELECT COUNT(*) FROM steps").await > 0).then_some(())
    })
    .await;

    leaving.terminate();
    let status = leaving.exit(deploy::grace_period()).await;
    assert!(status.success(), "the drained worker exited with {status}");
    let done_before = count(
        store.connection(),
        "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
    )
    .await;
    assert!(
        done_before < 300,
        "the worker was stopped with work left ({done_before} jobs done)"
    );

    for id in &ids {
        let done = wait_done(&base, &client, id, Duration::from_secs(120)).await;
        assert_eq!(done["status"], "succeeded", "{done:#}");
    }
    let db = store.connection();
    assert_eq!(count(db, "SELECT COUNT(*) FROM jobs").await, 300);
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM steps").await,
        300 * 3,
        "two personas and a synthesis each"
    );
    let duplicates = "SELECT COUNT(*) FROM (SELECT job_id, idx FROM steps GROUP BY job_id, idx HAVING COUNT(*) > 1) d";
    assert_eq!(count(db, duplicates).await, 0);

    // Nothing is left unacknowledged: the work queue is empty and the consumer holds nothing.
    let bus = chorus_bus::Bus::connect_config(&config.nats, "test")
        .await
        .expect("connect");
    let (queued, _) = stream_state(&bus, "work").await;
    assert_eq!(queued, 0, "messages left in the work queue");
    let mut consumer = bus
        .consumer(&bus.subjects.stream("work"), "llm")
        .await
        .expect("consumer");
    let info = consumer.info().await.expect("consumer info");
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "the llm consumer still has work"
    );

    for child in others.iter_mut().chain(std::iter::once(&mut staying)) {
        child.terminate();
        assert!(child.exit(deploy::grace_period()).await.success());
    }
}
