//! The `chorus job` and `chorus batch` clients, run as the real binary against a running edge:
//! a batch submitted and followed to the end, its status, results, errors and report, then one
//! job read and watched over its event stream.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use chorus_core::config::RouteConfig;
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use serde_json::{Value, json};

use crate::helpers::*;

/// Runs `chorus <args>` against `app`'s edge with its key, without blocking the runtime the
/// edge runs on.
async fn chorus(app: &TestApp, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(args)
        .env("CHORUS_URL", &app.base)
        .env("CHORUS_API_KEY", &app.key)
        .env("RUST_LOG", "warn")
        .output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("chorus finished in time")
        .expect("run chorus")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

fn write_batch(dir: &Path, lines: usize) -> std::path::PathBuf {
    let mut content = String::new();
    for i in 0..lines {
        // Every 10th line asks a route that always answers 400: an error line.
        let model = if i.is_multiple_of(10) {
            "broken"
        } else {
            "fast"
        };
        let line = json!({"custom_id": format!("case-{i}"), "method": "POST", "url": "/v1/jobs",
            "body": {"model": model, "messages": [{"role": "user", "content": format!("case {i}")}],
                     "evaluate": {"assertions": [{"type": "contains", "value": "case", "metric": "mentions"}]}}});
        content.push_str(&line.to_string());
        content.push('\n');
    }
    let path = dir.join("cases.jsonl");
    std::fs::write(&path, content).expect("write the batch file");
    path
}

#[tokio::test]
async fn batch_and_job_commands_drive_a_running_chorus() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    config
        .routes
        .push(RouteConfig::new("broken", "sim", "echo?error=400"));
    config
        .routes
        .push(RouteConfig::new("slow", "sim", "echo?latency=200ms"));
    let app = TestApp::start(config).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = write_batch(dir.path(), 40);
    let file = file.to_str().expect("a UTF-8 path");

    // Submit and follow: stdout has the batch id first, the final status last.
    let submitted = ok(
        chorus(&app, &["batch", "submit", file, "--watch"]).await,
        "batch submit --watch",
    );
    let id = submitted.lines().next().expect("the batch id").to_owned();
    assert!(id.starts_with("batch_"), "{submitted}");
    assert!(submitted.contains("completed"), "{submitted}");

    let status = ok(
        chorus(&app, &["batch", "status", &id, "--json"]).await,
        "batch status",
    );
    let batch: Value = serde_json::from_str(&status).expect("the batch as JSON");
    assert_eq!(batch["status"], "completed");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 40, "completed": 36, "failed": 4})
    );

    let output = ok(
        chorus(&app, &["batch", "results", &id]).await,
        "batch results",
    );
    let errors = ok(
        chorus(&app, &["batch", "results", &id, "--errors"]).await,
        "batch results --errors",
    );
    let ids = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| {
                let line: Value = serde_json::from_str(l).expect("a JSON line");
                line["custom_id"].as_str().expect("custom_id").to_owned()
            })
            .collect()
    };
    let (output, errors) = (ids(&output), ids(&errors));
    assert_eq!((output.len(), errors.len()), (36, 4));
    assert!(errors.contains(&"case-0".to_owned()) && errors.contains(&"case-30".to_owned()));

    let report = ok(
        chorus(&app, &["batch", "report", &id, "--json"]).await,
        "batch report",
    );
    let report: Value = serde_json::from_str(&report).expect("the report as JSON");
    assert_eq!(report["overall"]["evaluated"], 36, "{report:#}");
    assert_eq!(report["overall"]["pass_rate"], 1.0, "{report:#}");
    let table = ok(
        chorus(&app, &["batch", "report", &id]).await,
        "batch report",
    );
    assert!(table.contains("mentions"), "{table}");

    // A bad file: every bad line is named, and nothing is created.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"custom_id\": \"a\", \"method\": \"POST\", \"url\": \"/v1/jobs\", \"body\": {\"model\": \"nowhere\"}}\nnot json\n",
    )
    .expect("write");
    let refused = chorus(
        &app,
        &[
            "batch",
            "submit",
            bad.to_str().expect("path"),
            "--endpoint",
            "/v1/jobs",
        ],
    )
    .await;
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("line 1") && said.contains("nowhere") && said.contains("line 2"),
        "{said}"
    );

    // One job: watched until it is stored, then read.
    let response = app
        .post_job(
            &json!({"model": "slow", "messages": [{"role": "user", "content": "watch me"}],
                    "personas": [{"name": "a", "system": "A."}, {"name": "b", "system": "B."}]}),
            "",
        )
        .await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.expect("json");
    let job_id = job["id"].as_str().expect("id");
    let watched = ok(chorus(&app, &["job", "watch", job_id]).await, "job watch");
    let lines: Vec<&str> = watched.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("running")),
        "a status line per change: {watched}"
    );
    assert!(watched.contains("succeeded"), "{watched}");
    let got = ok(
        chorus(&app, &["job", "get", job_id, "--json"]).await,
        "job get",
    );
    let got: Value = serde_json::from_str(&got).expect("the job as JSON");
    assert_eq!(got["status"], "succeeded");
    assert_eq!(got["steps"].as_array().map(Vec::len), Some(2));
    let missing = chorus(
        &app,
        &["job", "get", "01a2339f-5d54-75a7-b24a-323c95b0a3ed"],
    )
    .await;
    assert!(!missing.status.success());
    app.shutdown().await.expect("clean shutdown");
}
