//! The example workloads in `examples/` (one per workload of DESIGN.md §1) run end to end: each
//! job spec to a stored, evaluated job, and the evaluation batch through the Batch API to its
//! report.

use std::time::Duration;

use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;
use serde_json::{Value, json};

use crate::helpers::*;

const JOBS: [(&str, &str); 3] = [
    ("roundtable", include_str!("../../examples/roundtable.json")),
    ("memo-coach", include_str!("../../examples/memo-coach.json")),
    (
        "contact-extraction",
        include_str!("../../examples/contact-extraction.json"),
    ),
];
const NL2API: &str = include_str!("../../examples/nl2api-eval.jsonl");

#[tokio::test]
async fn every_example_workload_runs_to_an_evaluated_result() {
    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let app = TestApp::start(test_config(&nats, &db)).await;

    for (name, text) in JOBS {
        let spec: Value = serde_json::from_str(text).expect("an example is JSON");
        let response = app.post_job(&spec, "?wait=60").await;
        let status = response.status();
        let job: Value = response.json().await.expect("json");
        assert_eq!(status, 200, "{name}: {job:#}");
        assert_eq!(job["status"], "succeeded", "{name}: {job:#}");
        let asserted = spec["evaluate"]["assertions"]
            .as_array()
            .map_or(0, Vec::len);
        let targets = job["evaluation"]["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{name}: evaluated");
        for target in targets {
            let results = target["assertions"].as_array().expect("assertions");
            assert_eq!(results.len(), asserted, "{name}: a result per assertion");
            assert!(
                results.iter().all(|a| a["errored"] == false),
                "{name}: every assertion could be evaluated: {target:#}"
            );
        }
    }
    // The roundtable's judge ran through the llm stage as a step of its own.
    let roundtable: Value = serde_json::from_str(JOBS[0].1).expect("json");
    let job: Value = app
        .post_job(&roundtable, "?wait=60")
        .await
        .json()
        .await
        .expect("json");
    let kinds: Vec<&str> = job["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["fanout", "fanout", "fanout", "synthesis", "judge"],
        "{job:#}"
    );

    // The evaluation run: 60 cases × two models, through files and batches, to its report.
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(NL2API.as_bytes().to_vec())
                .file_name("nl2api-eval.jsonl"),
        );
    let file: Value = app
        .client
        .post(format!("{}/v1/files", app.base))
        .multipart(form)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let batch: Value = app
        .client
        .post(format!("{}/v1/batches", app.base))
        .json(&json!({"input_file_id": file["id"], "endpoint": "/v1/jobs", "completion_window": "24h"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let id = batch["id"].as_str().expect("batch id");
    let done = chorus_testkit::wait::until(Duration::from_secs(120), "the batch", || async {
        let batch: Value = app
            .client
            .get(format!("{}/v1/batches/{id}", app.base))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (batch["status"] == "completed").then_some(batch)
    })
    .await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 60, "completed": 60, "failed": 0})
    );
    let report: Value = app
        .client
        .get(format!("{}/v1/batches/{id}/report", app.base))
        .send()
        .await
        .expect("report")
        .json()
        .await
        .expect("json");
    assert_eq!(report["overall"]["jobs"], 60, "{report:#}");
    assert_eq!(report["overall"]["evaluated"], 60, "{report:#}");
    let models: Vec<(&str, u64)> = report["by_model"]
        .as_array()
        .expect("by_model")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().expect("name"),
                m["targets"].as_u64().expect("targets"),
            )
        })
        .collect();
    assert_eq!(models, [("sim:echo", 60), ("sim:json", 60)], "{report:#}");
    let metrics: Vec<&str> = report["by_metric"]
        .as_array()
        .expect("by_metric")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(metrics, ["endpoint", "params", "valid_json"], "{report:#}");
    app.shutdown().await.expect("clean shutdown");
}
