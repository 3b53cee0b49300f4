//! API keys at the edge: 401 without a live key, 403 without the scope, 404 for another
//! tenant's jobs, batches, files and event streams, revocation that takes effect at once, the
//! per-key rate answering 429 with `retry-after`, and `--no-auth` warning at start-up.

use std::process::Stdio;
use std::time::Duration;

use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

async fn status(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn keys_scopes_and_tenants_guard_every_route() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;
    let base = &app.base;
    let acme = client_with_key(&create_key(db.url(), "acme", "submit,read").await);
    let beta = client_with_key(&create_key(db.url(), "beta", "submit,read").await);
    let read_only = client_with_key(&create_key(db.url(), "acme", "read").await);
    let submit_only = client_with_key(&create_key(db.url(), "acme", "submit").await);
    let anonymous = reqwest::Client::new();

    // acme's job, file and batch.
    let (code, job) = status(
        acme.post(format!("{base}/v1/jobs?wait=20"))
            .json(&single("fast", "mine")),
    )
    .await;
    assert_eq!(code, 200, "{job:#}");
    let job = job["id"].as_str().expect("job id").to_owned();
    let line = json!({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}});
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(format!("{line}\n").into_bytes()).file_name("b.jsonl"),
        );
    let (code, file) = status(acme.post(format!("{base}/v1/files")).multipart(form)).await;
    assert_eq!(code, 200, "{file:#}");
    let file = file["id"].as_str().expect("file id").to_owned();
    let (code, batch) = status(acme.post(format!("{base}/v1/batches")).json(
        &json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
    ))
    .await;
    assert_eq!(code, 200, "{batch:#}");
    let batch = batch["id"].as_str().expect("batch id").to_owned();

    // No key, a malformed header, a key that is not one: 401 in OpenAI's shape.
    for request in [
        anonymous.get(format!("{base}/v1/jobs/{job}")),
        anonymous
            .get(format!("{base}/v1/jobs/{job}"))
            .header("Authorization", "Basic dXNlcjpwYXNz"),
        anonymous
            .get(format!("{base}/v1/jobs/{job}"))
            .bearer_auth("chorus_0123456789abcdef_notakey"),
        anonymous
            .post(format!("{base}/v1/jobs"))
            .json(&single("fast", "x")),
    ] {
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 401);
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body:#}");
    }
    // The public routes need no key.
    for path in ["/health", "/ready", "/metrics"] {
        let response = anonymous
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 200, "{path}");
    }

    // A live key without the scope: 403, naming it.
    let (code, body) = status(
        read_only
            .post(format!("{base}/v1/jobs"))
            .json(&single("fast", "x")),
    )
    .await;
    assert_eq!(code, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`submit`"))
    );
    let (code, _) = status(submit_only.get(format!("{base}/v1/jobs/{job}"))).await;
    assert_eq!(code, 403);
    let (code, _) = status(acme.get(format!("{base}/v1/admin/dlq"))).await;
    assert_eq!(code, 403, "admin is its own scope");
    let (code, _) = status(read_only.get(format!("{base}/v1/jobs/{job}"))).await;
    assert_eq!(code, 200);

    // Another tenant sees nothing of acme's: 404, as for a job that does not exist.
    for path in [
        format!("/v1/jobs/{job}"),
        format!("/v1/jobs/{job}/events"),
        format!("/v1/files/{file}"),
        format!("/v1/files/{file}/content"),
        format!("/v1/batches/{batch}"),
        format!("/v1/batches/{batch}/report"),
    ] {
        let (code, body) = status(beta.get(format!("{base}{path}"))).await;
        assert_eq!(code, 404, "{path}: {body:#}");
        let (code, _) = status(acme.get(format!("{base}{path}"))).await;
        assert_eq!(code, 200, "{path} for its own tenant");
    }
    for path in [
        format!("/v1/jobs/{job}/cancel"),
        format!("/v1/batches/{batch}/cancel"),
    ] {
        let (code, _) = status(beta.post(format!("{base}{path}"))).await;
        assert_eq!(code, 404, "{path}");
    }
    let (code, create) = status(beta.post(format!("{base}/v1/batches")).json(
        &json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
    ))
    .await;
    assert_eq!(code, 404, "another tenant's file: {create:#}");
    let (_, listed) = status(beta.get(format!("{base}/v1/jobs"))).await;
    assert_eq!(listed["data"], json!([]), "{listed:#}");
    let (_, listed) = status(beta.get(format!("{base}/v1/batches"))).await;
    assert_eq!(listed["data"], json!([]), "{listed:#}");
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn revoked_keys_stop_at_once_and_rates_answer_429() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    let processes = Processes::new(&config);
    config.edge.key_rpm = Some(600);
    let app = TestApp::start(config).await;
    let base = &app.base;

    // Created with the CLI: the key on stdout once, its details without it.
    let output = processes
        .run(&[
            "keys", "create", "--tenant", "acme", "--name", "ci", "--json",
        ])
        .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let created: Value = serde_json::from_slice(&output.stdout).expect("json");
    let key = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["scopes"], json!(["submit", "read"]));
    let listed = processes.run(&["keys", "list", "--tenant", "acme"]).await;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains(&id) && listed.contains("submit,read"),
        "{listed}"
    );
    assert!(
        !listed.contains(&key[key.len() - 43..]),
        "the secret is never listed"
    );

    let client = client_with_key(&key);
    let (code, _) = status(client.get(format!("{base}/v1/jobs"))).await;
    assert_eq!(code, 200);
    let revoked = processes.run(&["keys", "revoke", &id]).await;
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let (code, _) = status(client.get(format!("{base}/v1/jobs"))).await;
    assert_eq!(code, 401, "revoked: the very next request is refused");
    let audit = chorus_store::Store::connect(db.url(), 1)
        .await
        .expect("db")
        .audit_entries(None, 10)
        .await
        .expect("audit");
    let actions: Vec<&str> = audit.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["key.revoke", "key.create"]);
    assert!(
        !serde_json::to_string(&audit)
            .expect("json")
            .contains(&key[key.len() - 43..])
    );

    // 6 requests a minute: a burst of one, then 429 with the seconds to wait.
    let slow = processes
        .run(&["keys", "create", "--tenant", "acme", "--rpm", "6", "--json"])
        .await;
    let slow: Value = serde_json::from_slice(&slow.stdout).expect("json");
    let slow = client_with_key(slow["key"].as_str().expect("key"));
    let (code, _) = status(slow.get(format!("{base}/v1/jobs"))).await;
    assert_eq!(code, 200);
    let response = slow
        .get(format!("{base}/v1/jobs"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after in seconds");
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // Keys without a rate of their own get edge.key_rpm (600: a burst of 100).
    for _ in 0..50 {
        let (code, _) = status(app.client.get(format!("{base}/v1/jobs"))).await;
        assert_eq!(code, 200);
    }
    app.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn serving_without_auth_takes_a_flag_and_warns() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    let base = free_edge(&mut config);
    let processes = Processes::new(&config);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .arg("--config")
        .arg(&processes.config_path)
        .args(["serve", "--no-auth"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chorus");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let warned = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            if line.contains("AUTHENTICATION IS OFF") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        warned,
        Ok(true),
        "start-up warns that authentication is off"
    );
    let client = reqwest::Client::new();
    wait_ready(&client, &base).await;
    let (code, body) = status(
        client
            .post(format!("{base}/v1/jobs?wait=20"))
            .json(&single("fast", "open")),
    )
    .await;
    assert_eq!(code, 200, "{body:#}");
    assert_eq!(body["tenant"], "default");
    child.kill().await.expect("kill");
}
