//! Chorus on a three-node JetStream cluster with every stream and bucket at three replicas, as
//! production runs it: the loss of a node, of the leaders of the streams Chorus writes most, a
//! paused node, and a lost quorum. Clients are delayed through elections, never failed; nothing
//! acknowledged is lost or done twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use chorus_core::config::Config;
use chorus_mock_llm::{Behaviour, MockLlm};
use chorus_testkit::cluster::NatsCluster;
use chorus_testkit::database::TestDatabase;
use chorus_testkit::wait;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::helpers::*;

/// The model the mock answers as.
const MODEL: &str = "cluster-model";
/// The batch the JetStream submitter's lines belong to.
const BATCH: &str = "steady";
/// How long to wait for the whole system to settle after the faults.
const SETTLE: Duration = Duration::from_secs(180);

/// Chorus (every role, one process) on `cluster`, R3, in front of the mock on route `m`.
fn cluster_config(cluster: &NatsCluster, db: &TestDatabase, mock: &MockLlm) -> Config {
    let mut config = test_config_at(&cluster.urls(), db);
    config.nats.replicas = 3;
    config.routes = vec![mock_route("m", mock, MODEL)];
    config
}

/// What one REST client saw.
#[derive(Default)]
struct Seen {
    /// Ids of the jobs answered `202`.
    accepted: Vec<String>,
    /// Statuses other than `202`, with their bodies.
    refused: Vec<(u16, String)>,
    /// The longest any request took.
    longest: Duration,
}

/// A REST client submitting one-call jobs, one after another, until `stop`.
async fn rest_client(app_base: String, key: String, n: usize, stop: Arc<AtomicBool>) -> Seen {
    let client = client_with_key(&key);
    let mut seen = Seen::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let body = single("m", &format!("rest {n}-{i}"));
        i += 1;
        let started = Instant::now();
        let response = client
            .post(format!("{app_base}/v1/jobs"))
            .json(&body)
            .send()
            .await
            .expect("the edge answers");
        seen.longest = seen.longest.max(started.elapsed());
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            202 => seen
                .accepted
                .push(answer["id"].as_str().expect("an id").to_owned()),
            _ => seen.refused.push((status, answer.to_string())),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// A team's submitter publishing lines straight onto JetStream until `stop`, as a careful client
/// does: a line whose publish fails is published again under the same `Nats-Msg-Id` until it is
/// acknowledged. The custom ids of the acknowledged lines.
async fn jetstream_submitter(urls: String, stop: Arc<AtomicBool>) -> Vec<String> {
    let client = async_nats::ConnectOptions::new()
        .connect(chorus_bus::connect::servers(&urls).expect("servers"))
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut acknowledged = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let custom_id = format!("line-{i}");
        i += 1;
        let body =
            serde_json::to_vec(&single("m", &format!("jetstream {custom_id}"))).expect("body");
        loop {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", custom_id.as_str());
            headers.insert("Content-Type", "application/json");
            headers.insert("Chorus-Batch", BATCH);
            headers.insert("Chorus-Custom-Id", custom_id.as_str());
            let published = js
                .publish_with_headers("chorus.submit.default", headers, body.clone().into())
                .await;
            let acked = match published {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if acked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        acknowledged.push(custom_id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acknowledged
}

/// Rows of `sql`'s first two text columns.
async fn pairs(db: &sea_orm::DatabaseConnection, sql: &str) -> Vec<(String, String)> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .expect("query")
    .into_iter()
    .map(|row| {
        (
            row.try_get_by_index::<String>(0).expect("text"),
            row.try_get_by_index::<String>(1).expect("text"),
        )
    })
    .collect()
}

/// The durable consumers of `stream` (the roles' and their flows'; KV watchers are ephemeral).
async fn durable_consumers(app: &TestApp, stream: &str) -> Vec<String> {
    let stream = app.bus.js.get_stream(stream).await.expect("stream");
    let mut consumers = stream.consumers();
    let mut names = Vec::new();
    while let Some(info) = futures::StreamExt::next(&mut consumers).await {
        let info = info.expect("consumer info");
        if info.config.durable_name.is_some() {
            names.push(info.name);
        }
    }
    assert!(!names.is_empty(), "no durable consumer on the stream");
    names
}

/// The streams whose replicas a restarted node must have caught up on before the next fault.
fn all_streams(cluster_app: &TestApp) -> Vec<String> {
    let subjects = &cluster_app.bus.subjects;
    let mut streams: Vec<String> = ["submit", "work", "events", "results", "dlq"]
        .iter()
        .map(|s| subjects.stream(s))
        .collect();
    streams.push(subjects.jobs_stream());
    streams
}

#[tokio::test]
async fn losing_leaders_and_nodes_under_load_delays_clients_and_loses_nothing() {
    let mut cluster = NatsCluster::start(3).await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.expect("mock");
    mock.script(
        MODEL,
        Behaviour::default().with_latency(Duration::from_millis(20)),
    );
    let app = TestApp::start(cluster_config(&cluster, &db, &mock)).await;
    let subjects = app.bus.subjects.clone();
    let (submit, work, events) = (
        subjects.stream("submit"),
        subjects.stream("work"),
        subjects.stream("events"),
    );
    let jobs_bucket = subjects.jobs_bucket();
    let streams = all_streams(&app);
    let streams: Vec<&str> = streams.iter().map(String::as_str).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for n in 0..4 {
        clients.spawn(rest_client(
            app.base.clone(),
            app.key.clone(),
            n,
            stop.clone(),
        ));
    }
    let submitter = tokio::spawn(jetstream_submitter(cluster.urls(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Twice: the leaders of the submit and work streams, of the jobs bucket and of the roles'
    // consumers gathered on one node, which is killed, and restarted 10 s later; the next fault
    // once it has caught up.
    for victim in [0, 1] {
        cluster.move_stream_leader(&submit, victim).await;
        cluster.move_stream_leader(&work, victim).await;
        cluster.move_bucket_leader(&jobs_bucket, victim).await;
        // And the consumers the orchestrator, the llm stage and the persister pull from.
        for stream in [&submit, &work, &events] {
            for consumer in durable_consumers(&app, stream).await {
                cluster
                    .move_consumer_leader(stream, &consumer, victim)
                    .await;
            }
        }
        cluster.kill(victim).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        cluster.restart(victim).await;
        cluster
            .wait_caught_up(&streams, Duration::from_secs(90))
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // A node that stops answering without dropping its connections: the submit stream's leader.
    let paused = cluster.stream_leader(&submit).await.unwrap_or(2);
    cluster.pause(paused);
    tokio::time::sleep(Duration::from_secs(15)).await;
    cluster.resume(paused);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);

    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    let mut longest = Duration::ZERO;
    while let Some(seen) = clients.join_next().await {
        let seen = seen.expect("a client");
        accepted.extend(seen.accepted);
        refused.extend(seen.refused);
        longest = longest.max(seen.longest);
    }
    let lines = submitter.await.expect("the submitter");
    println!(
        "{} REST jobs accepted, {} JetStream lines acknowledged; the longest a client waited for \
         its 202: {longest:?}",
        accepted.len(),
        lines.len()
    );
    assert!(
        refused.is_empty(),
        "clients were refused during the elections: {:?}",
        &refused[..refused.len().min(5)]
    );
    assert!(accepted.len() > 100 && lines.len() > 100, "the load ran");

    // Every acknowledged submission reaches a final state, once.
    let store = chorus_store::Store::connect(db.url(), 2).await.expect("db");
    let sql = store.connection();
    let expected = (accepted.len() + lines.len()) as i64;
    wait::until(
        SETTLE,
        "every accepted job to be stored finished",
        || async {
            let done = count(
                sql,
                "SELECT COUNT(*) FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')",
            )
            .await;
            (done >= expected).then_some(())
        },
    )
    .await;
    for id in &accepted {
        let (status, job) = app.get_job(id).await;
        assert_eq!(
            (status, &job["status"]),
            (200, &Value::from("succeeded")),
            "REST job {id}: {job}"
        );
    }
    let stored = count(sql, "SELECT COUNT(*) FROM jobs").await as usize;
    let batch: HashMap<String, String> = pairs(
        sql,
        &format!("SELECT custom_id, status FROM jobs WHERE batch_id = '{BATCH}'"),
    )
    .await
    .into_iter()
    .collect();
    for line in &lines {
        assert_eq!(
            batch.get(line).map(String::as_str),
            Some("succeeded"),
            "JetStream line {line}"
        );
    }
    assert_eq!(
        batch.len(),
        lines.len(),
        "JetStream lines, stored and acknowledged"
    );
    assert_eq!(
        stored,
        accepted.len() + batch.len(),
        "jobs the clients were not told about"
    );
    // One step and one provider call per job: none repeated through the leader moves.
    assert_eq!(
        count(sql, "SELECT COUNT(*) FROM steps").await as usize,
        stored
    );
    let calls = mock.requests(MODEL);
    assert_eq!(
        mock.stats(MODEL).requests as usize,
        calls.len(),
        "every call recorded"
    );
    let contents: Vec<String> = calls
        .iter()
        .map(|call| call.body["messages"].to_string())
        .collect();
    let distinct: HashSet<&String> = contents.iter().collect();
    assert_eq!(
        (calls.len(), distinct.len()),
        (stored, stored),
        "provider calls (all, distinct) against jobs"
    );
    wait_quiet(&app.bus).await;
}

#[tokio::test]
async fn without_a_quorum_the_edge_answers_503_and_everything_completes_once_a_node_returns() {
    let mut cluster = NatsCluster::start(3).await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.expect("mock");
    let mut config = cluster_config(&cluster, &db, &mock);
    config.nats.retry_window = Duration::from_secs(6);
    let app = TestApp::start(config).await;
    wait_ready(&app.client, &app.base).await;

    // Work accepted before the quorum goes, some of it still running when it does.
    mock.script(
        MODEL,
        Behaviour::default().with_latency(Duration::from_millis(500)),
    );
    let mut before = Vec::new();
    for i in 0..20 {
        let response = app.post_job(&single("m", &format!("before {i}")), "").await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("json");
        before.push(body["id"].as_str().expect("id").to_owned());
    }

    cluster.kill(1).await;
    cluster.kill(2).await;
    let started = Instant::now();
    let response = app.post_job(&single("m", "during"), "").await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 503, "{:?}", response.text().await);
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| s > 0),
        "a retry-after: {retry_after:?}"
    );
    println!("without a quorum, the edge answered 503 after {waited:?}");
    let ready = wait::until(Duration::from_secs(30), "/ready to fail", || async {
        let response = app
            .client
            .get(format!("{}/ready", app.base))
            .send()
            .await
            .ok()?;
        (response.status() == 503).then_some(response.json::<Value>().await.ok()?)
    })
    .await;
    // The server left may still answer account requests from what it knew; the submit stream,
    // without a leader, does not.
    let checks = &ready["checks"];
    assert!(
        checks["jetstream"] != "ok" || checks["streams"] != "ok",
        "{ready:#}"
    );
    assert_eq!(checks["database"], "ok", "{ready:#}");

    cluster.restart(1).await;
    wait_ready(&app.client, &app.base).await;
    // As a client honouring `Retry-After` would: just after the node's return a stream can still
    // be electing its leader, past the 6 s window. Each attempt is a job of its own (a refused
    // one may still have reached the stream).
    let attempts = AtomicUsize::new(0);
    let after: Value = wait::until(
        Duration::from_secs(60),
        "the edge to take jobs again",
        || async {
            let n = attempts.fetch_add(1, Ordering::Relaxed);
            let response = app.post_job(&single("m", &format!("after {n}")), "").await;
            match response.status().as_u16() {
                202 => Some(response.json().await.expect("json")),
                503 => None,
                status => panic!("{status}: {:?}", response.text().await),
            }
        },
    )
    .await;
    for id in before
        .iter()
        .chain([&after["id"].as_str().expect("id").to_owned()])
    {
        let done = wait_done(&app.base, &app.client, id, SETTLE).await;
        assert_eq!(done["status"], "succeeded", "{done:#}");
    }
    // Whether the refused request's message reached the stream before the quorum went is not
    // known to its client; either way nothing ran twice.
    let calls = mock.requests(MODEL);
    let distinct: HashSet<String> = calls
        .iter()
        .map(|c| c.body["messages"].to_string())
        .collect();
    assert_eq!(calls.len(), distinct.len(), "a provider call was repeated");
    assert!(calls.len() >= 21);
}
