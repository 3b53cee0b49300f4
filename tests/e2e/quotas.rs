//! Backlog quotas, of jobs and calls and of their bytes: a tenant over its quota is refused —
//! `429` with `retry-after` in OpenAI's error shape at the edge, an error result line for a
//! JetStream submission — while another tenant's work is accepted and runs, and every job that
//! was accepted finishes.

use std::time::Duration;

use async_nats::HeaderMap;
use chorus_core::config::{RouteConfig, TenantConfig};
use chorus_mock_llm::{Behaviour, MockLlm};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::*;

const QUOTA: u64 = 20;

async fn post_job(client: &reqwest::Client, base: &str, text: &str) -> reqwest::Response {
    client
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"model": "slow", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .expect("POST /v1/jobs")
}

#[tokio::test]
async fn a_tenant_over_its_backlog_quota_is_refused_while_another_runs_and_nothing_accepted_is_lost()
 {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "slow",
        Behaviour::answer("ok").with_latency(Duration::from_millis(250)),
    );
    let mut config = test_config(&nats, &db);
    config.routes.push(RouteConfig {
        max_concurrency: Some(1),
        timeout: Duration::from_secs(5),
        ..mock_route("slow", &mock, "slow")
    });
    config.tenants.insert(
        "acme".into(),
        TenantConfig {
            max_queued: Some(QUOTA),
            ..TenantConfig::default()
        },
    );
    let app = TestApp::start(config).await;
    let acme = client_with_key(&create_key(db.url(), "acme", "submit,read").await);
    let beta = client_with_key(&create_key(db.url(), "beta", "submit,read").await);

    // acme floods the route: accepted up to its quota, then refused.
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..2 * QUOTA {
        let response = post_job(&acme, &app.base, &format!("A-{i}")).await;
        match response.status().as_u16() {
            202 => {
                let job: Value = response.json().await.expect("json");
                accepted.push(job["id"].as_str().expect("id").to_owned());
            }
            429 => {
                refused = Some(response);
                break;
            }
            other => panic!("acme's job {i}: {other}"),
        }
    }
    let refused = refused.expect("acme was refused once over its quota");
    assert!(
        accepted.len() as u64 >= QUOTA,
        "refused after {} jobs, under the quota of {QUOTA}",
        accepted.len()
    );
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .expect("retry-after")
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "queue_quota_exceeded");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("tenant acme"), "{message}");

    // A batch while over quota is refused the same way; one larger than the quota, always.
    let upload = |lines: usize| {
        let content: String = (0..lines)
            .map(|i| {
                json!({"custom_id": format!("b-{i}"), "method": "POST", "url": "/v1/jobs",
                       "body": {"model": "slow", "messages": [{"role": "user", "content": "x"}]}})
                .to_string()
                    + "\n"
            })
            .collect();
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part(
                "file",
                reqwest::multipart::Part::bytes(content.into_bytes()).file_name("b.jsonl"),
            );
        acme.post(format!("{}/v1/files", app.base))
            .multipart(form)
            .send()
    };
    for (lines, status, code) in [
        (5, 429, "queue_quota_exceeded"),
        (QUOTA as usize + 1, 400, "over_quota"),
    ] {
        let file: Value = upload(lines)
            .await
            .expect("upload")
            .json()
            .await
            .expect("json");
        let response = acme
            .post(format!("{}/v1/batches", app.base))
            .json(&json!({"input_file_id": file["id"], "endpoint": "/v1/jobs",
                          "completion_window": "24h"}))
            .send()
            .await
            .expect("POST /v1/batches");
        assert_eq!(response.status(), status, "a batch of {lines} lines");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], code, "{body}");
    }

    // beta is not held to acme's quota: its jobs are accepted and run meanwhile.
    let mut betas = Vec::new();
    for i in 0..5 {
        let response = post_job(&beta, &app.base, &format!("B-{i}")).await;
        assert_eq!(response.status(), 202, "beta's job {i}");
        let job: Value = response.json().await.expect("json");
        betas.push(job["id"].as_str().expect("id").to_owned());
    }
    for id in &betas {
        let job = wait_done(&app.base, &beta, id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    // Every job acme had accepted finishes: refusing more lost none of them.
    for id in &accepted {
        let job = wait_done(&app.base, &acme, id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    // Once its backlog drained, acme is accepted again.
    let again = post_job(&acme, &app.base, "A-again").await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.expect("json");
    let again = wait_done(
        &app.base,
        &acme,
        again["id"].as_str().expect("id"),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(again["status"], "succeeded");

    // JetStream submissions over the quota are answered with error lines; the rest run. Each
    // line gets exactly one result line.
    const LINES: usize = 2 * QUOTA as usize;
    let results = "chorus.results.acme.flood";
    let mut lines = app.bus.client.subscribe(results).await.expect("subscribe");
    for i in 0..LINES {
        let mut headers = HeaderMap::new();
        headers.insert("Chorus-Batch", "flood");
        headers.insert("Chorus-Custom-Id", format!("js-{i}").as_str());
        let spec = json!({"model": "slow", "messages": [{"role": "user", "content": "js"}]});
        app.bus
            .js
            .publish_with_headers("chorus.submit.acme", headers, spec.to_string().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < LINES {
        let message = tokio::time::timeout(Duration::from_secs(60), lines.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {LINES} result lines", answered.len()))
            .expect("subscription");
        let line: Value = serde_json::from_slice(&message.payload).expect("JSON line");
        let id = line["custom_id"].as_str().expect("custom_id").to_owned();
        assert!(answered.insert(id, line).is_none(), "a line answered twice");
    }
    let refusals: Vec<&Value> = answered
        .values()
        .filter(|line| !line["error"].is_null())
        .collect();
    assert!(!refusals.is_empty(), "no JetStream line was refused");
    for line in &refusals {
        assert_eq!(line["error"]["code"], "queue_quota_exceeded", "{line}");
    }
    println!(
        "JetStream lines: {} ran, {} refused",
        LINES - refusals.len(),
        refusals.len()
    );
    // Its backlog drained, so some run (not necessarily the whole quota: the count the
    // orchestrator holds may be up to a second old).
    assert!(refusals.len() < LINES, "every JetStream line was refused");
}

/// The same quota in bytes: a tenant whose jobs are large is refused once their bytes waiting
/// pass its `max_queued_bytes`, long before its count of jobs would be, and a batch file larger
/// than the quota is refused outright; another tenant runs meanwhile, and every job accepted
/// finishes.
#[tokio::test]
async fn a_tenant_over_its_backlog_quota_in_bytes_is_refused_and_nothing_accepted_is_lost() {
    const QUOTA_BYTES: u64 = 64 * 1024;
    const PROMPT: usize = 8 * 1024;
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mock = MockLlm::start().await.unwrap();
    mock.script(
        "slow",
        Behaviour::answer("ok").with_latency(Duration::from_millis(250)),
    );
    let mut config = test_config(&nats, &db);
    config.routes.push(RouteConfig {
        max_concurrency: Some(1),
        timeout: Duration::from_secs(5),
        ..mock_route("slow", &mock, "slow")
    });
    config.tenants.insert(
        "acme".into(),
        TenantConfig {
            max_queued_bytes: Some(bytesize::ByteSize::b(QUOTA_BYTES)),
            ..TenantConfig::default()
        },
    );
    let app = TestApp::start(config).await;
    let acme = client_with_key(&create_key(db.url(), "acme", "submit,read").await);
    let beta = client_with_key(&create_key(db.url(), "beta", "submit,read").await);
    let large = |i: usize| format!("A-{i}-{}", "x".repeat(PROMPT));

    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..40 {
        let response = post_job(&acme, &app.base, &large(i)).await;
        match response.status().as_u16() {
            202 => {
                let job: Value = response.json().await.expect("json");
                accepted.push(job["id"].as_str().expect("id").to_owned());
            }
            429 => {
                refused = Some(response);
                break;
            }
            other => panic!("acme's job {i}: {other}"),
        }
    }
    let refused = refused.expect("acme was refused once over its quota in bytes");
    println!("acme's jobs of {PROMPT} bytes accepted: {}", accepted.len());
    // Each job weighs a little more than its prompt: at most the quota's worth were taken.
    assert!(
        (1..=QUOTA_BYTES as usize / PROMPT).contains(&accepted.len()),
        "refused after {} jobs of {PROMPT} bytes, with a quota of {QUOTA_BYTES} bytes",
        accepted.len()
    );
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "queue_quota_exceeded", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("tenant acme") && message.contains("bytes"),
        "{message}"
    );

    // A batch whose file alone is larger than the quota can never be queued.
    let content: String = (0..10)
        .map(|i| {
            json!({"custom_id": format!("b-{i}"), "method": "POST", "url": "/v1/jobs",
                   "body": {"model": "slow", "messages": [{"role": "user", "content": large(i)}]}})
            .to_string()
                + "\n"
        })
        .collect();
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(content.into_bytes()).file_name("b.jsonl"),
        );
    let file: Value = acme
        .post(format!("{}/v1/files", app.base))
        .multipart(form)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let response = acme
        .post(format!("{}/v1/batches", app.base))
        .json(&json!({"input_file_id": file["id"], "endpoint": "/v1/jobs",
                      "completion_window": "24h"}))
        .send()
        .await
        .expect("POST /v1/batches");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "over_quota", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("bytes"), "{message}");

    // beta is not held to acme's quota.
    let response = post_job(&beta, &app.base, &large(0)).await;
    assert_eq!(response.status(), 202, "beta's job");
    let job: Value = response.json().await.expect("json");
    let job = wait_done(
        &app.base,
        &beta,
        job["id"].as_str().expect("id"),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    // Every job acme had accepted finishes.
    for id in &accepted {
        let job = wait_done(&app.base, &acme, id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
}
