//! Fair sharing: an interactive call is not held behind another tenant's batch backlog, on a
//! limited route or an unlimited one, at the orchestrator's intake and events, or at the
//! evaluator; two backlogged tenants get equal tokens (not equal calls)
//! across three llm processes; a key cannot use a band above its own.
//!
//! Orders are read from the mock provider's arrival log and the jobs' start times, never from
//! how long anything took.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::HeaderMap;
use chorus_core::Tenant;
use chorus_core::config::{Config, Quota, RouteConfig};
use chorus_core::fair::Band;
use chorus_core::spec::{ChatMessage, Params, Role};
use chorus_core::subjects::Subjects;
use chorus_llm::tokens;
use chorus_mock_llm::{Behaviour, MockLlm};
use chorus_store::KeyLimits;
use chorus_store::entity::{jobs, steps};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use chorus_testkit::wait;
use futures::StreamExt;
use sea_orm::EntityTrait;
use serde_json::{Value, json};

use crate::helpers::*;

/// Publishes `lines` JetStream submissions of `tenant` (the batch band) on `model`, each a
/// one-message job saying `<prefix>-<i>`, with `max_tokens`.
async fn backlog(
    app: &TestApp,
    tenant: &str,
    model: &str,
    prefix: &str,
    lines: usize,
    max_tokens: u32,
) {
    submit_lines(app, tenant, prefix, lines, |text| {
        json!({
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "params": {"max_tokens": max_tokens},
        })
    })
    .await;
}

/// Publishes `lines` JetStream submissions of `tenant` (the batch band), the `i`th the job
/// `spec("<prefix>-<i>")`, and waits until JetStream holds them all.
async fn submit_lines(
    app: &TestApp,
    tenant: &str,
    prefix: &str,
    lines: usize,
    spec: impl Fn(&str) -> Value,
) {
    let subject = app
        .bus
        .subjects
        .submit(&Tenant::new(tenant).expect("tenant"));
    let mut acks = Vec::with_capacity(lines);
    for i in 0..lines {
        let text = format!("{prefix}-{i}");
        let mut headers = HeaderMap::new();
        headers.insert("Chorus-Batch", prefix);
        headers.insert("Nats-Msg-Id", text.as_str());
        let ack = app
            .bus
            .js
            .publish_with_headers(subject.clone(), headers, spec(&text).to_string().into())
            .await
            .expect("publish");
        acks.push(ack);
    }
    for ack in acks {
        ack.await.expect("JetStream stored the line");
    }
}

/// Messages `stream` holds on subjects matching `filter`.
async fn queued(app: &TestApp, stream: &str, filter: &str) -> usize {
    let stream = app
        .bus
        .js
        .get_stream_no_info(app.bus.subjects.stream(stream))
        .await
        .expect("stream");
    let mut counts = stream
        .info_with_subjects(filter)
        .await
        .expect("subject counts");
    let mut total = 0;
    while let Some(entry) = counts.next().await {
        total += entry.expect("a subject's count").1;
    }
    total
}

/// Every version of every job, by key (`<tenant>.<job>`), in the order the jobs bucket stored
/// them, from now on.
async fn job_versions(app: &TestApp) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let bucket = format!("$KV.{}.", app.bus.subjects.jobs_bucket());
    let mut versions = app
        .bus
        .client
        .subscribe(format!("{bucket}>"))
        .await
        .expect("subscribe");
    let writer = log.clone();
    tokio::spawn(async move {
        while let Some(version) = versions.next().await {
            let key = version
                .subject
                .trim_start_matches(bucket.as_str())
                .to_owned();
            writer.lock().expect("log").push(key);
        }
    });
    log
}

/// A chat completion by `client` on `model`, answered.
async fn chat(app: &TestApp, client: &reqwest::Client, model: &str, text: &str) -> Value {
    let response = client
        .post(format!("{}/v1/chat/completions", app.base))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// The user message a recorded request carried.
fn said(body: &Value) -> String {
    body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// beta's chat completion goes to the head of the queue while acme's batch backlog waits on a
/// limited route: of acme's calls, at most those already in flight (the route's concurrency)
/// and one admitted slot reach the provider after beta's call was queued and before it.
#[tokio::test]
async fn an_interactive_call_overtakes_a_batch_backlog_on_a_limited_route() {
    const CONCURRENCY: u32 = 2;
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "gpt",
        Behaviour::answer("ok").with_latency(Duration::from_millis(100)),
    );
    let mut config = test_config(&nats, &db);
    config.routes.push(RouteConfig {
        max_concurrency: Some(CONCURRENCY),
        rpm: Some(1200),
        timeout: Duration::from_secs(5),
        ..mock_route("gpt", &mock, "gpt")
    });
    let app = TestApp::start(config).await;
    let beta = client_with_key(&create_key(db.url(), "beta", "submit,read").await);
    // beta has called before: its flow is known, as a tenant's flows are once it is active.
    chat(&app, &beta, "gpt", "warm-up").await;

    backlog(&app, "acme", "gpt", "A", 200, 16).await;
    wait::until(
        Duration::from_secs(30),
        "acme's backlog flowing",
        || async { (mock.requests("gpt").len() >= 6).then_some(()) },
    )
    .await;

    let flow = app.bus.subjects.limited_llm_flows("gpt").subject(
        None,
        Band::Interactive,
        &Tenant::new("beta").expect("tenant"),
    );
    let ahead = overtakes(&app, &beta, "gpt", &flow, || {
        mock.requests("gpt").iter().map(|r| said(&r.body)).collect()
    })
    .await;
    assert!(
        ahead <= CONCURRENCY as usize + 1,
        "{ahead} of acme's calls reached the provider after beta's was queued and before it"
    );
    let left = mock.requests("gpt").len();
    assert!(
        left < 100,
        "acme's backlog was still waiting ({left} calls made)"
    );
}

/// The same on a route without limits, where the llm workers are what is shared: of acme's
/// calls, at most the workers' (in flight) and one more start after beta's was queued and
/// before it.
#[tokio::test]
async fn an_interactive_call_overtakes_a_batch_backlog_on_an_unlimited_route() {
    const WORKERS: usize = 2;
    const ROUTE: &str = "sim:echo?latency=100ms";
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    config.llm.workers = WORKERS;
    let app = TestApp::start(config).await;
    let beta = client_with_key(&create_key(db.url(), "beta", "submit,read").await);
    chat(&app, &beta, ROUTE, "warm-up").await;

    backlog(&app, "acme", ROUTE, "A", 200, 16).await;
    let conn = sea_orm::Database::connect(db.url()).await.expect("db");
    let done = "SELECT count(*) FROM jobs WHERE tenant = 'acme' AND status = 'succeeded'";
    wait::until(
        Duration::from_secs(30),
        "acme's backlog flowing",
        || async { (count(&conn, done).await >= 6).then_some(()) },
    )
    .await;

    let flow = app.bus.subjects.llm_flows().subject(
        Some(ROUTE),
        Band::Interactive,
        &Tenant::new("beta").expect("tenant"),
    );
    let mut calls = app.bus.client.subscribe(flow).await.expect("subscribe");
    let request = chat(&app, &beta, ROUTE, "C-interactive");
    tokio::pin!(request);
    let queued_at = tokio::select! {
        _ = calls.next() => chrono::Utc::now(),
        answer = &mut request => panic!("answered before it was seen queued: {answer}"),
    };
    request.await;
    // When the llm stage started each call: its step's start.
    let tenants: HashMap<_, _> = jobs::Entity::find()
        .all(&conn)
        .await
        .expect("jobs")
        .into_iter()
        .map(|job| (job.id, job.tenant))
        .collect();
    let mut starts: Vec<(chrono::DateTime<chrono::Utc>, String)> = steps::Entity::find()
        .all(&conn)
        .await
        .expect("steps")
        .into_iter()
        .filter_map(|step| Some((step.started_at?, tenants.get(&step.job_id)?.clone())))
        .collect();
    starts.sort();
    let beta_started = starts
        .iter()
        .filter(|(_, tenant)| tenant == "beta")
        .map(|(at, _)| *at)
        .max()
        .expect("beta's call started");
    let ahead = starts
        .iter()
        .filter(|(at, tenant)| tenant == "acme" && *at > queued_at && *at < beta_started)
        .count();
    println!("acme calls started between beta's queueing and its start: {ahead}");
    assert!(
        ahead <= WORKERS + 1,
        "{ahead} of acme's calls started after beta's was queued and before it"
    );
}

/// At the orchestrator's intake, where a REST batch's lines all wait at once: beta's chat
/// completion, submitted while most of tenant `default`'s batch is still waiting, is taken ahead
/// of it. The jobs bucket records each job as an orchestrator takes it (a batch line's state is
/// first written then; an edge job's second version is the orchestrator's); of the batch's lines,
/// only a few times what the orchestrator holds in flight (at most 4×) are taken after beta's
/// submission was queued and before it — those it held, and those other workers take while
/// beta's job waits in its own worker's mailbox behind what that worker held (events of the
/// batch's jobs too) — where arrival order would take thousands.
#[tokio::test]
async fn an_interactive_job_overtakes_a_batch_backlog_at_intake() {
    const LINES: usize = 4000;
    const IN_FLIGHT: usize = 16;
    const ROUTE: &str = "sim:echo";
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    config.orchestrator.max_in_flight = IN_FLIGHT;
    let app = TestApp::start(config).await;
    let beta = client_with_key(&create_key(db.url(), "beta", "submit,read").await);
    chat(&app, &beta, ROUTE, "warm-up").await;

    let taken = job_versions(&app).await;
    let seen = || taken.lock().expect("log").clone();

    let lines = (0..LINES).map(|i| {
        json!({"custom_id": format!("line-{i}"), "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": ROUTE, "messages": [{"role": "user", "content": format!("A-{i}")}]}})
    });
    let file = app
        .client
        .post(format!("{}/v1/files", app.base))
        .multipart(
            reqwest::multipart::Form::new()
                .text("purpose", "batch")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(
                        lines
                            .map(|l| format!("{l}\n"))
                            .collect::<String>()
                            .into_bytes(),
                    )
                    .file_name("batch.jsonl"),
                ),
        )
        .send()
        .await
        .expect("POST /v1/files");
    assert_eq!(file.status(), 200);
    let file: Value = file.json().await.expect("json");
    let batch = app
        .client
        .post(format!("{}/v1/batches", app.base))
        .json(
            &json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                      "completion_window": "24h"}),
        )
        .send()
        .await
        .expect("POST /v1/batches");
    assert_eq!(batch.status(), 200);
    let first_taken = |log: &[String], tenant: &str| {
        let mut keys = std::collections::HashSet::new();
        log.iter()
            .filter(|key| key.starts_with(&format!("{tenant}.")) && keys.insert(*key))
            .count()
    };
    wait::until(Duration::from_secs(30), "the batch being taken", || async {
        (first_taken(&seen(), "default") >= 50).then_some(())
    })
    .await;

    let flow = app.bus.subjects.submit_flows().subject(
        None,
        Band::Interactive,
        &Tenant::new("beta").expect("tenant"),
    );
    let mut submitted = app.bus.client.subscribe(flow).await.expect("subscribe");
    let request = chat(&app, &beta, ROUTE, "C-interactive");
    tokio::pin!(request);
    let before = tokio::select! {
        _ = submitted.next() => seen().len(),
        answer = &mut request => panic!("answered before it was seen queued: {answer}"),
    };
    request.await;
    let log = seen();
    // beta's job (its warm-up was over before the log began); taken at its second version.
    let fresh = |at: usize| !log[..at].contains(&log[at]);
    let job = log
        .iter()
        .find(|key| key.starts_with("beta."))
        .expect("beta's job stored")
        .clone();
    let admitted = log
        .iter()
        .enumerate()
        .filter(|(_, key)| **key == job)
        .map(|(at, _)| at)
        .nth(1)
        .expect("beta's job taken");
    let ahead = (before.min(admitted)..admitted)
        .filter(|&at| log[at].starts_with("default.") && fresh(at))
        .count();
    let taken_by_then = first_taken(&log[..admitted], "default");
    println!(
        "batch lines taken between beta's queueing and its job: {ahead}; taken before it in all: \
         {taken_by_then} of {LINES}"
    );
    assert!(
        ahead <= 4 * IN_FLIGHT,
        "{ahead} batch lines were taken after beta's job was queued and before it"
    );
    assert!(
        taken_by_then < LINES / 2,
        "the batch was mostly taken before beta's job ({taken_by_then} of {LINES} lines)"
    );
}

/// At the orchestrator's events, where a batch's results all wait at once: acme's 2,000 step
/// results are queued (its calls answered while no orchestrator ran), then beta submits a job and
/// an orchestrator starts. beta's result, published after all of acme's, is taken ahead of them:
/// of acme's jobs, only a few times what the orchestrator holds in flight (at most 4×: those it
/// held, and those other workers take while beta's result waits in its worker's mailbox) are
/// finished after beta's result was queued and before beta's job, where arrival order would
/// finish nearly all 2,000.
#[tokio::test]
async fn a_standard_jobs_result_overtakes_a_batch_backlog_of_results() {
    const LINES: usize = 2000;
    const IN_FLIGHT: usize = 16;
    const ROUTE: &str = "sim:echo";
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    config.orchestrator.max_in_flight = IN_FLIGHT;
    let edge = TestApp::start_roles(config.clone(), &[RoleName::Edge, RoleName::Persister]).await;
    let beta = client_with_key(&create_key(db.url(), "beta", "submit,read").await);
    let prefix = edge.bus.subjects.prefix().to_owned();

    // acme's calls dispatched, then answered while no orchestrator runs: its results wait.
    let orchestrator = TestApp::start_roles(config.clone(), &[RoleName::Orchestrator]).await;
    backlog(&edge, "acme", ROUTE, "A", LINES, 16).await;
    let calls = format!("{prefix}.work.llm.>");
    wait::until(Duration::from_secs(60), "acme's calls queued", || async {
        (queued(&edge, "work", &calls).await == LINES).then_some(())
    })
    .await;
    orchestrator.shutdown().await.expect("orchestrator stopped");
    let llm = TestApp::start_roles(config.clone(), &[RoleName::Llm]).await;
    let events = format!("{prefix}.events.>");
    wait::until(Duration::from_secs(60), "acme's results queued", || async {
        (queued(&edge, "events", &events).await == LINES).then_some(())
    })
    .await;

    let versions = job_versions(&edge).await;
    let seen = || versions.lock().expect("log").clone();
    let flow = edge.bus.subjects.event_flows().subject(
        None,
        Band::Standard,
        &Tenant::new("beta").expect("tenant"),
    );
    let mut results = edge
        .bus
        .client
        .subscribe(format!("{flow}.>"))
        .await
        .expect("subscribe");
    let created = beta
        .post(format!("{}/v1/jobs", edge.base))
        .json(&json!({"model": ROUTE, "messages": [{"role": "user", "content": "C"}]}))
        .send()
        .await
        .expect("POST /v1/jobs");
    assert_eq!(created.status(), 202);
    let id = created.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let orchestrator = TestApp::start_roles(config, &[RoleName::Orchestrator]).await;
    tokio::time::timeout(Duration::from_secs(30), results.next())
        .await
        .expect("beta's result published");
    let before = seen().len();
    let job = wait_done(&edge.base, &beta, &id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    let log = seen();
    let key = format!("beta.{id}");
    let finished = log
        .iter()
        .rposition(|k| *k == key)
        .expect("beta's job stored");
    let acme = |keys: &[String]| keys.iter().filter(|k| k.starts_with("acme.")).count();
    let ahead = acme(&log[before.min(finished)..finished]);
    let behind = LINES - acme(&log[..finished]);
    println!(
        "acme's jobs finished between beta's result and beta's job: {ahead}; still waiting: \
         {behind} of {LINES}"
    );
    assert!(
        ahead <= 4 * IN_FLIGHT,
        "{ahead} of acme's results were taken after beta's was queued and before it"
    );
    assert!(
        behind >= LINES / 2,
        "most of acme's results were taken before beta's ({behind} of {LINES} left)"
    );
    orchestrator.shutdown().await.expect("orchestrator stopped");
    llm.shutdown().await.expect("llm stopped");
}

/// At the evaluator, where a batch's evaluations all wait at once: acme's 1,000 evaluation
/// requests are queued while no evaluator runs, then beta's; one evaluator (one worker) starts.
/// beta's evaluation, queued last, is among the first made.
#[tokio::test]
async fn a_standard_jobs_evaluation_overtakes_a_batch_backlog_of_evaluations() {
    const LINES: usize = 1000;
    const ROUTE: &str = "sim:echo";
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    config.evaluator.workers = 1;
    let app = TestApp::start_roles(
        config.clone(),
        &[
            RoleName::Edge,
            RoleName::Orchestrator,
            RoleName::Llm,
            RoleName::Persister,
        ],
    )
    .await;
    let beta = client_with_key(&create_key(db.url(), "beta", "submit,read").await);
    let prefix = app.bus.subjects.prefix().to_owned();
    let evaluate = json!({"assertions": [{"type": "contains", "value": "-"}]});
    submit_lines(&app, "acme", "A", LINES, |text| {
        json!({"model": ROUTE, "messages": [{"role": "user", "content": text}],
               "evaluate": evaluate})
    })
    .await;
    let requests = format!("{prefix}.work.evaluator.>");
    let wait_queued = |n: usize| {
        let requests = requests.clone();
        let app = &app;
        async move {
            wait::until(Duration::from_secs(60), "evaluations queued", || async {
                (queued(app, "work", &requests).await == n).then_some(())
            })
            .await
        }
    };
    wait_queued(LINES).await;
    let created = beta
        .post(format!("{}/v1/jobs", app.base))
        .json(
            &json!({"model": ROUTE, "messages": [{"role": "user", "content": "C-1"}],
                      "evaluate": evaluate}),
        )
        .send()
        .await
        .expect("POST /v1/jobs");
    assert_eq!(created.status(), 202);
    let id = created.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    wait_queued(LINES + 1).await;

    // Every evaluation, by tenant, in the order the evaluator published them.
    let mut evaluations = app
        .bus
        .client
        .subscribe(format!("{prefix}.events.*.*.*.evaluated"))
        .await
        .expect("subscribe");
    let events = app.bus.subjects.event_flows();
    let evaluator = TestApp::start_roles(config, &[RoleName::Evaluator]).await;
    let mut order = Vec::new();
    while !order.iter().any(|tenant: &String| tenant == "beta") {
        let evaluation = tokio::time::timeout(Duration::from_secs(60), evaluations.next())
            .await
            .expect("evaluations published")
            .expect("subscription open");
        let flow = events.flow(&evaluation.subject).expect("an event's flow");
        order.push(flow.tenant.to_string());
    }
    println!(
        "beta's evaluation was made {} of {}",
        order.len(),
        LINES + 1
    );
    assert!(
        order.len() <= 8,
        "{} of acme's evaluations were made before beta's, queued after them all",
        order.len() - 1
    );
    let job = wait_done(&app.base, &beta, &id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["evaluation"]["passed"], true, "{job}");
    evaluator.shutdown().await.expect("evaluator stopped");
}

/// At the persister, which commits final states in the order the jobs bucket stored them (a
/// batch's thousands ahead of a chat completion's): a waiting client is answered once its job is
/// committed, and when the persister is behind — here, not running at all — its edge commits the
/// job itself. A chat completion and a `?wait` job are answered with no persister running, their
/// jobs stored as succeeded; a persister started later stores nothing twice.
#[tokio::test]
async fn a_waiting_client_is_answered_once_its_job_is_committed_even_with_the_persister_behind() {
    const ROUTE: &str = "sim:echo";
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let config = test_config(&nats, &db);
    let app = TestApp::start_roles(
        config.clone(),
        &[
            RoleName::Edge,
            RoleName::Orchestrator,
            RoleName::Llm,
            RoleName::Evaluator,
        ],
    )
    .await;
    let beta = client_with_key(&create_key(db.url(), "beta", "submit,read").await);
    let answer = chat(&app, &beta, ROUTE, "C-1").await;
    assert!(said_back(&answer).ends_with("C-1"), "{answer}");
    let waited = beta
        .post(format!("{}/v1/jobs?wait=30", app.base))
        .json(&json!({"model": ROUTE, "messages": [{"role": "user", "content": "C-2"}]}))
        .send()
        .await
        .expect("POST /v1/jobs?wait");
    assert_eq!(waited.status(), 200);
    let waited: Value = waited.json().await.expect("json");
    assert_eq!(waited["status"], "succeeded", "{waited}");

    let conn = sea_orm::Database::connect(db.url()).await.expect("db");
    let stored = "SELECT count(*) FROM jobs WHERE tenant = 'beta' AND status = 'succeeded'";
    assert_eq!(count(&conn, stored).await, 2, "both jobs committed");
    // The persister, started now, mirrors the same final states: nothing changes.
    let persister = TestApp::start_roles(config, &[RoleName::Persister]).await;
    wait_quiet(&app.bus).await;
    persister_caught_up(&app).await;
    assert_eq!(count(&conn, stored).await, 2);
    let all = "SELECT count(*) FROM jobs WHERE tenant = 'beta'";
    assert_eq!(count(&conn, all).await, 2);
    persister.shutdown().await.expect("persister stopped");
}

/// Waits until the persister has taken and acknowledged every version in the jobs bucket.
async fn persister_caught_up(app: &TestApp) {
    let stream = app
        .bus
        .js
        .get_stream_no_info(app.bus.subjects.jobs_stream())
        .await
        .expect("stream");
    wait::until(
        Duration::from_secs(30),
        "the persister caught up",
        || async {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("persister").await.ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await
}

/// The text a chat completion's answer says (`sim:echo` says the prompt back).
fn said_back(answer: &Value) -> String {
    answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `chorus_tenant_inflight` counts the calls processes hold per route and tenant: a tenant named
/// in the configuration has its own series, any other is counted as `other`.
#[tokio::test]
async fn tenant_inflight_counts_named_tenants_and_the_rest_as_other() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "gpt",
        Behaviour::answer("ok").with_latency(Duration::from_millis(2000)),
    );
    let mut config = test_config(&nats, &db);
    config.routes.push(RouteConfig {
        max_concurrency: Some(4),
        timeout: Duration::from_secs(10),
        ..mock_route("gpt", &mock, "gpt")
    });
    config
        .tenants
        .insert("acme".into(), chorus_core::config::TenantConfig::default());
    let app = TestApp::start(config).await;
    tokio::join!(
        backlog(&app, "acme", "gpt", "A", 20, 16),
        backlog(&app, "beta", "gpt", "B", 20, 16),
    );
    let series = |text: &str, tenant: &str| -> f64 {
        let prefix = format!("chorus_tenant_inflight{{route=\"gpt\",tenant=\"{tenant}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    };
    let text = wait::until(
        Duration::from_secs(30),
        "both tenants in flight",
        || async {
            let text = app
                .client
                .get(format!("{}/metrics", app.base))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (series(&text, "acme") >= 1.0 && series(&text, "other") >= 1.0).then_some(text)
        },
    )
    .await;
    assert!(
        !text.contains("tenant=\"beta\""),
        "an unnamed tenant got a series of its own"
    );
}

/// A waiting job says why and where, on `GET /v1/jobs/{id}` and in its first `status` event:
/// behind its own tenant's calls on a limited route, with its band, route and position.
#[tokio::test]
async fn a_waiting_job_says_why_and_where() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "gpt",
        Behaviour::answer("ok").with_latency(Duration::from_millis(1000)),
    );
    let mut config = test_config(&nats, &db);
    config.routes.push(RouteConfig {
        max_concurrency: Some(1),
        timeout: Duration::from_secs(10),
        ..mock_route("gpt", &mock, "gpt")
    });
    // Each process holds 2 calls of a flow: the rest wait on the server, for the tenant's share.
    config.scheduling.window = 2;
    let app = TestApp::start(config).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let response = app.post_job(&single("gpt", &format!("job {i}")), "").await;
        assert_eq!(response.status(), 202);
        let job: Value = response.json().await.expect("json");
        ids.push(job["id"].as_str().expect("id").to_owned());
    }
    let last = ids.last().expect("a job");
    let waiting = wait::until(Duration::from_secs(20), "the last job waiting", || async {
        let (_, job) = app.get_job(last).await;
        (job["waiting"]["reason"] == "tenant share").then(|| job["waiting"].clone())
    })
    .await;
    assert_eq!(waiting["band"], "standard", "{waiting}");
    assert_eq!(waiting["route"], "gpt", "{waiting}");
    let position = waiting["position"].as_u64().expect("a position");
    let queued = waiting["queued"].as_u64().expect("queued");
    assert!((1..8).contains(&position), "{waiting}");
    assert!(queued > 0 && queued <= 8, "{waiting}");

    let events = app
        .client
        .get(format!("{}/v1/jobs/{last}/events", app.base))
        .send()
        .await
        .expect("GET events");
    let mut body = events.bytes_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = body.next().await.expect("an event").expect("bytes");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = text
        .lines()
        .find_map(|line| line.strip_prefix("data: "))
        .expect("data");
    let event: Value = serde_json::from_str(data).expect("JSON");
    assert_eq!(event["waiting"]["band"], "standard", "{event}");
    assert_eq!(event["waiting"]["route"], "gpt", "{event}");
}

/// Submits beta's interactive call and counts acme's calls the provider saw after the call was
/// queued on `flow` and before it, from `seen` (every call's text, in arrival order).
async fn overtakes(
    app: &TestApp,
    beta: &reqwest::Client,
    model: &str,
    flow: &str,
    seen: impl Fn() -> Vec<String>,
) -> usize {
    let mut calls = app
        .bus
        .client
        .subscribe(flow.to_owned())
        .await
        .expect("subscribe");
    let request = chat(app, beta, model, "C-interactive");
    tokio::pin!(request);
    let before = tokio::select! {
        _ = calls.next() => seen().len(),
        answer = &mut request => panic!("answered before it was seen queued: {answer}"),
    };
    request.await;
    let order = seen();
    let at = order
        .iter()
        .position(|text| text == "C-interactive")
        .expect("beta's call reached the provider");
    let ahead = order[before.min(at)..at]
        .iter()
        .filter(|text| text.starts_with("A-"))
        .count();
    println!("acme calls between beta's queueing and its arrival: {ahead} (arrival {at})");
    ahead
}

/// Two tenants backlogged on one limited route served by three llm processes: each gets half the
/// tokens in every 30-second window while both wait, so acme, whose lines cost three times
/// beta's, gets about a third as many calls. The route serves about 26 calls a second (4 at a
/// time, 150 ms each), so both stay backlogged for about 45 s.
#[tokio::test]
async fn backlogged_tenants_share_tokens_equally_across_three_llm_processes() {
    const A_LINES: usize = 400;
    const B_LINES: usize = 1200;
    const WINDOW: Duration = Duration::from_secs(30);
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "shared",
        Behaviour::answer("ok").with_latency(Duration::from_millis(150)),
    );
    let mut config = test_config(&nats, &db);
    config.routes.push(RouteConfig {
        max_concurrency: Some(4),
        timeout: Duration::from_secs(5),
        ..mock_route("shared", &mock, "shared")
    });
    let config_window = config.scheduling.window;
    let (app, _pods, _processes) = three_llm_pods(config).await;
    tokio::join!(
        backlog(&app, "acme", "shared", "A", A_LINES, 300),
        backlog(&app, "beta", "shared", "B", B_LINES, 100),
    );
    wait::until(Duration::from_secs(180), "both backlogs served", || async {
        (mock.requests("shared").len() >= A_LINES + B_LINES).then_some(())
    })
    .await;
    let order: Vec<(std::time::SystemTime, String)> = mock
        .requests("shared")
        .iter()
        .map(|r| (r.received_at, said(&r.body)))
        .collect();
    // While both were backlogged: from both tenants' first calls until either has no more
    // lines left than the three processes' windows can hold (the rest waits in them, not on
    // the server, and goes as the windows empty).
    let held = 3 * config_window;
    let nth = |who: &str, n: usize| {
        order
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| t.starts_with(who))
            .nth(n)
            .map(|(i, _)| i)
            .expect("served")
    };
    let end = nth("A-", A_LINES - held).min(nth("B-", B_LINES - held));
    let both = &order[nth("A-", 0).max(nth("B-", 0))..end];
    let cost = |text: &str| {
        let max_tokens = if text.starts_with("A-") { 300 } else { 100 };
        let message = ChatMessage::new(Role::User, text);
        let params = Params {
            max_tokens: Some(max_tokens),
            ..Params::default()
        };
        f64::from(tokens::estimate_messages(&[message], &params, 1024))
    };
    let share_of_acme = |calls: &[(std::time::SystemTime, String)]| {
        let tokens = |who: &str| -> f64 {
            calls
                .iter()
                .filter(|(_, t)| t.starts_with(who))
                .map(|(_, t)| cost(t))
                .sum()
        };
        let (a, b) = (tokens("A-"), tokens("B-"));
        a / (a + b)
    };
    let (first, last) = (both[0].0, both[both.len() - 1].0);
    let span = last.duration_since(first).expect("in order");
    assert!(
        span >= WINDOW,
        "both tenants were backlogged for only {span:?}, less than one window"
    );
    // Every 30-second window, sliding by a second, that fits in the time both waited.
    let mut shares = Vec::new();
    let mut from = first;
    while from + WINDOW <= last {
        let calls: Vec<_> = both
            .iter()
            .filter(|(at, _)| *at >= from && *at < from + WINDOW)
            .cloned()
            .collect();
        shares.push(share_of_acme(&calls));
        from += Duration::from_secs(1);
    }
    let calls = |who: &str| both.iter().filter(|(_, t)| t.starts_with(who)).count();
    println!(
        "while both waited ({span:?}): {} calls, acme {}, beta {}; acme's token share {:.3} overall, \
         {:.3}..{:.3} over {} windows of 30 s",
        both.len(),
        calls("A-"),
        calls("B-"),
        share_of_acme(both),
        shares.iter().copied().fold(f64::INFINITY, f64::min),
        shares.iter().copied().fold(0.0, f64::max),
        shares.len()
    );
    for (at, share) in shares.iter().enumerate() {
        assert!(
            (0.475..=0.525).contains(share),
            "acme's token share in the window from {at} s is {share:.3}, not within 5% of its \
             weight's 0.5"
        );
    }
}

#[tokio::test]
async fn a_key_cannot_use_a_band_above_its_own() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    let limits = KeyLimits {
        rpm: None,
        max_band: Band::Batch,
    };
    let capped =
        client_with_key(&create_limited_key(db.url(), "gamma", "submit,read", limits).await);
    let subjects = Subjects::new("chorus");
    let gamma = Tenant::new("gamma").expect("tenant");
    let flows = subjects.llm_flows();
    let mut seen = app
        .bus
        .client
        .subscribe(flows.all())
        .await
        .expect("subscribe");
    chat(&app, &capped, "fast", "chat, capped").await;
    let response = capped
        .post(format!("{}/v1/jobs?wait=20", app.base))
        .json(&json!({"model": "fast", "service_tier": "interactive",
                      "messages": [{"role": "user", "content": "asks for interactive"}]}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    for _ in 0..2 {
        let call = tokio::time::timeout(Duration::from_secs(10), seen.next())
            .await
            .expect("a call")
            .expect("subscription");
        let flow = flows.flow(&call.subject).expect("a flow");
        assert_eq!((flow.band, &flow.tenant), (Band::Batch, &gamma));
    }
    // The default key of the same installation may use every band.
    let default = app
        .post_job(
            &json!({"model": "fast", "service_tier": "interactive",
                    "messages": [{"role": "user", "content": "interactive"}]}),
            "",
        )
        .await;
    assert_eq!(default.status(), 202);
    let call = tokio::time::timeout(Duration::from_secs(10), seen.next())
        .await
        .expect("a call")
        .expect("subscription");
    assert_eq!(
        flows.flow(&call.subject).map(|f| f.band),
        Some(Band::Interactive)
    );
}

/// `[tenants.<name>]` reaches the scheduler: weights, caps, JetStream bands and backlog quotas
/// are read.
#[test]
fn tenants_configure_weights_caps_and_bands() {
    let config: Config = toml::from_str(
        r#"
        [scheduling]
        batch_share = 0.2
        [tenants.acme]
        weight = 2
        max_inflight = 4
        max_band = "batch"
        max_queued = 1000
        [tenants.gamma]
        max_queued_bytes = "1 MiB"
        "#,
    )
    .expect("parses");
    config.validate().expect("valid");
    let acme = Tenant::new("acme").expect("tenant");
    let beta = Tenant::new("beta").expect("tenant");
    let policy = config.fair_policy();
    assert_eq!((policy.weight(&acme), policy.weight(&beta)), (2.0, 1.0));
    assert_eq!(policy.batch_share, 0.2);
    assert_eq!(config.inflight_caps().get(&acme), Some(&4));
    assert_eq!(
        config.jetstream_band(&acme, Some(Band::Interactive)),
        Band::Batch
    );
    assert_eq!(
        config.jetstream_band(&beta, Some(Band::Interactive)),
        Band::Standard
    );
    assert_eq!(config.jetstream_band(&beta, None), Band::Batch);
    let quotas = config.queue_quotas();
    let quota = |lines, bytes| Quota { lines, bytes };
    assert_eq!(quotas.of(&acme), quota(1000, 256 * 1024 * 1024));
    assert_eq!(quotas.of(&beta), quota(200_000, 256 * 1024 * 1024));
    let gamma = Tenant::new("gamma").expect("tenant");
    assert_eq!(quotas.of(&gamma), quota(200_000, 1024 * 1024));
    let bad: Config = toml::from_str("[tenants.Acme]\nweight = 0").expect("parses");
    let problems = bad.validate().expect_err("refused").to_string();
    assert!(
        problems.contains("tenants.Acme: a tenant name"),
        "{problems}"
    );
    assert!(problems.contains("tenants.Acme.weight"), "{problems}");
}
