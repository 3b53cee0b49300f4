//! No secret reaches a log or an error body. A `chorus serve` process runs with debug logs
//! captured, a provider key from a file, a NATS password from a file, a database password from
//! a variable (Postgres where the machine has one), and API keys; it is driven through successful
//! and failing calls (a provider that echoes the key in its error, a wrong API key, a bad
//! request), and every captured log line, answer body and `chorus config check` output is
//! searched for each secret.

use std::process::Stdio;
use std::time::Duration;

use chorus_core::config::RouteConfig;
use chorus_mock_llm::{Behaviour, Fault, MockLlm};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use serde_json::{Value, json};

use crate::helpers::*;

const PROVIDER_KEY: &str = "sk-live-PROVIDERSECRET0123456789";
const NATS_PASSWORD: &str = "nats-PASSWORDSECRET-4711";
const DB_PASSWORD: &str = "db-PASSWORDSECRET-0815";
const TENANTS: &str = include_str!("../../nats/server/tenants.conf");

#[tokio::test]
async fn secrets_never_reach_logs_or_error_bodies() {
    let nats = NatsServer::start_with_config(
        TENANTS,
        &[
            ("CHORUS_NATS_PASSWORD", NATS_PASSWORD),
            ("ACME_NATS_PASSWORD", "unused-a"),
            ("BETA_NATS_PASSWORD", "unused-b"),
        ],
    )
    .await;
    // Postgres with trust auth accepts any password, so the password's path can be exercised.
    let db = TestDatabase::postgres().unwrap_or_else(TestDatabase::sqlite);
    let on_postgres = db.url().starts_with("postgres");
    let mock = MockLlm::start().await.unwrap();
    mock.script("good", Behaviour::answer("fine"));
    mock.script(
        "echoes-the-key",
        Behaviour::always(Fault::Status {
            status: 401,
            retry_after: None,
            code: Some("invalid_api_key".into()),
            message: Some(format!("Incorrect API key provided: {PROVIDER_KEY}.")),
        }),
    );
    let dir = tempfile::tempdir().expect("dir");
    let key_file = dir.path().join("provider-key");
    std::fs::write(&key_file, format!("{PROVIDER_KEY}\n")).expect("write");
    let nats_password = dir.path().join("nats-password");
    std::fs::write(&nats_password, NATS_PASSWORD).expect("write");

    let mut config = test_config(&nats, &db);
    config.nats.user = Some("chorus".into());
    config.nats.password_file = Some(nats_password);
    if on_postgres {
        config.database.password_env = Some("TEST_DB_PASSWORD_OF_CHORUS".into());
    }
    config.log.format = chorus_core::config::LogFormat::Json;
    for name in ["good", "echoes-the-key"] {
        config.routes.push(RouteConfig {
            api_key_file: Some(key_file.clone()),
            ..mock_route(name, &mock, name)
        });
    }
    let base = free_edge(&mut config);
    let processes = Processes::new(&config);
    let log_path = dir.path().join("chorus.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let env = [
        ("RUST_LOG", "debug"),
        ("TEST_DB_PASSWORD_OF_CHORUS", DB_PASSWORD),
    ];
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .arg("--config")
        .arg(&processes.config_path)
        .arg("serve")
        .envs(env)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chorus");

    let anonymous = reqwest::Client::new();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let up = anonymous.get(format!("{base}/ready")).send().await;
            if up.is_ok_and(|r| r.status() == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if ready.is_err() {
        let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = logs.lines().rev().take(20).collect();
        panic!(
            "chorus did not get ready; its last log lines:\n{}",
            tail.join("\n")
        );
    }
    let key = create_key(db.url(), "default", "submit,read,admin").await;
    let client = client_with_key(&key);
    let mut bodies = Vec::new();
    for (request, expect) in [
        (
            client
                .post(format!("{base}/v1/jobs?wait=20"))
                .json(&single("good", "hi")),
            200,
        ),
        (
            client
                .post(format!("{base}/v1/jobs?wait=20"))
                .json(&single("echoes-the-key", "hi")),
            200,
        ),
        (
            client
                .post(format!("{base}/v1/chat/completions"))
                .json(&single("echoes-the-key", "hi")),
            502,
        ),
        (
            anonymous
                .get(format!("{base}/v1/jobs"))
                .bearer_auth("chorus_0123456789abcdef_WRONGSECRETWRONGSECRETWRONGSECRETWRONG"),
            401,
        ),
        (
            client
                .post(format!("{base}/v1/jobs"))
                .json(&json!({"model": "good", "messages": "nope"})),
            422,
        ),
    ] {
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), expect);
        bodies.push(response.text().await.expect("body"));
    }
    let failed: Value = serde_json::from_str(&bodies[1]).expect("json");
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("[redacted]")),
        "the echoed key is redacted where it is kept: {failed:#}"
    );
    let check = processes.run(&["config", "check"]).await;
    // The check runs without the variable: it names what is missing, not a value.
    let check_out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    child.kill().await.expect("kill");
    child
        .wait()
        .await
        .expect("the process ended, its logs complete");
    let logs = std::fs::read_to_string(&log_path).expect("logs");
    assert!(logs.lines().count() > 50, "debug logs were captured");

    let secret_part = &key[key.len() - 43..];
    for secret in [
        PROVIDER_KEY,
        NATS_PASSWORD,
        DB_PASSWORD,
        secret_part,
        "WRONGSECRETWRONGSECRET",
    ] {
        for (what, text) in [("the logs", &logs), ("config check", &check_out)] {
            assert!(!text.contains(secret), "{what} show a secret");
        }
        for body in &bodies {
            assert!(!body.contains(secret), "an answer shows a secret: {body}");
        }
    }
    assert!(
        check_out.contains("[nats]") && check_out.contains("user = \"chorus\""),
        "{check_out}"
    );
    assert_eq!(check.status.success(), !on_postgres, "{check_out}");
    if on_postgres {
        assert!(
            check_out.contains("TEST_DB_PASSWORD_OF_CHORUS"),
            "the check names the variable it lacks: {check_out}"
        );
    }
}
