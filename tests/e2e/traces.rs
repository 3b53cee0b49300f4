//! Traces across every NATS hop: each role in a `chorus serve` process of its own, exporting over
//! OTLP (HTTP, protobuf: the default) to a receiver in this test, which decodes the requests with
//! the OpenTelemetry protocol's own message types. A roundtable job with a judge, submitted with
//! the client's `traceparent`, must come back as one trace: the edge's request span a child of
//! the client's, and every span of the orchestrator, llm, evaluator and persister a child of a
//! span of the hop that sent its message. LLM calls carry the GenAI attributes and, by default,
//! no prompt. JSON logs carry the job and trace ids.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::{NatsServer, free_port};
use chorus_testkit::wait;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{Value, json};

use crate::helpers::*;

const ROLES: [&str; 5] = ["edge", "orchestrator", "llm", "evaluator", "persister"];

/// One exported span, as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attributes: BTreeMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

async fn receive(State(spans): State<Spans>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    let mut spans = spans.lock().expect("lock");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Received {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    name: span.name,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                        .collect(),
                });
            }
        }
    }
    ""
}

#[tokio::test]
async fn one_trace_per_job_across_every_hop() {
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let nats = NatsServer::start_new().await;
    let db = TestDatabase::sqlite();
    let mut config = test_config(&nats, &db);
    config.log.format = chorus_core::config::LogFormat::Json;
    let base = free_edge(&mut config);
    let processes = Processes::new(&config);
    assert!(processes.run(&["migrate"]).await.status.success());
    let logs = tempfile::tempdir().expect("dir");
    let mut children = Vec::new();
    for role in ROLES {
        let log = std::fs::File::create(logs.path().join(role)).expect("log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
            .arg("--config")
            .arg(&processes.config_path)
            .args(["serve", "--roles", role])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector)
            .env("OTEL_SERVICE_NAME", format!("chorus-{role}"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("CHORUS_PROBES_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("RUST_LOG", "info,chorus_actors=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chorus");
        children.push(child);
    }
    let (client, _) = admin_client(db.url()).await;
    wait_ready(&client, &base).await;

    // The client's own span starts the trace.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let mut job = roundtable("sim:echo");
    job["evaluate"]["assertions"]
        .as_array_mut()
        .expect("assertions")
        .push(json!({"type": "llm_rubric", "value": "Ends with a decision."}));
    let response = client
        .post(format!("{base}/v1/jobs?wait=60"))
        .header("traceparent", format!("00-{trace}-{client_span}-01"))
        .json(&job)
        .send()
        .await
        .expect("submit");
    let stored: Value = response.json().await.expect("json");
    assert_eq!(stored["status"], "succeeded", "{stored:#}");
    let job_id = stored["id"].as_str().expect("id").to_owned();

    let ours = wait::until(
        Duration::from_secs(30),
        "spans of every role in the job's trace",
        || {
            let spans = spans.lock().expect("lock").clone();
            async move {
                let ours: Vec<Received> =
                    spans.into_iter().filter(|s| s.trace_id == trace).collect();
                let services: BTreeSet<&str> = ours.iter().map(|s| s.service.as_str()).collect();
                // Every role, and the persister's span of the final version.
                let complete = ROLES
                    .iter()
                    .all(|r| services.contains(format!("chorus-{r}").as_str()))
                    && ours
                        .iter()
                        .filter(|s| s.service == "chorus-persister")
                        .count()
                        >= 2;
                // Spans are exported when they end, each process on its own schedule: wait until
                // every parent has arrived too.
                let ids: BTreeSet<&str> = ours.iter().map(|s| s.span_id.as_str()).collect();
                let linked = ours
                    .iter()
                    .all(|s| s.parent == client_span || ids.contains(s.parent.as_str()));
                (complete && linked).then_some(ours)
            }
        },
    )
    .await;
    let by_id: BTreeMap<&str, &Received> = ours.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent_service = |span: &Received| {
        by_id
            .get(span.parent.as_str())
            .map(|p| p.service.trim_start_matches("chorus-"))
    };
    let request = ours
        .iter()
        .find(|s| s.name == "POST /v1/jobs")
        .expect("the edge's request span");
    assert_eq!(
        request.parent, client_span,
        "the request continues the client's trace"
    );
    assert_eq!(
        request.attributes.get("http.route").map(String::as_str),
        Some("/v1/jobs")
    );
    for span in &ours {
        if span.span_id == request.span_id {
            continue;
        }
        let role = span.service.trim_start_matches("chorus-");
        let parent = parent_service(span).unwrap_or_else(|| {
            panic!(
                "{} ({role}) has no parent in the trace: {span:#?}",
                span.name
            )
        });
        let allowed: &[&str] = match (role, span.name.starts_with("chat ")) {
            ("llm", true) => &["llm"],
            ("llm", false) => &["orchestrator"],
            ("orchestrator", _) => &["edge", "llm", "evaluator", "orchestrator"],
            ("evaluator", _) => &["orchestrator"],
            ("persister", _) => &["edge", "orchestrator"],
            ("edge", _) => &["edge"],
            other => panic!("a span from {other:?}"),
        };
        assert!(
            allowed.contains(&parent),
            "{} of {role} is a child of {parent}, expected one of {allowed:?}",
            span.name
        );
    }
    // Three personas, a synthesis and a judge: five provider calls, each a GenAI span.
    let calls: Vec<&Received> = ours
        .iter()
        .filter(|s| s.name.starts_with("chat "))
        .collect();
    assert_eq!(calls.len(), 5, "{calls:#?}");
    for call in &calls {
        let attribute = |key: &str| call.attributes.get(key).map(String::as_str);
        assert_eq!(attribute("gen_ai.operation.name"), Some("chat"));
        assert_eq!(attribute("gen_ai.provider.name"), Some("sim"));
        assert_eq!(attribute("gen_ai.request.model"), Some("echo"));
        assert!(
            attribute("gen_ai.usage.input_tokens").is_some(),
            "{call:#?}"
        );
        assert!(
            attribute("gen_ai.usage.output_tokens").is_some(),
            "{call:#?}"
        );
        assert_eq!(
            attribute("gen_ai.response.finish_reasons"),
            Some("[\"stop\"]")
        );
        assert_eq!(
            attribute("gen_ai.input.messages"),
            None,
            "no prompt unless enabled"
        );
        assert_eq!(attribute("gen_ai.output.messages"), None);
    }

    // The orchestrator's JSON log lines carry the job and the trace.
    let log = std::fs::read_to_string(logs.path().join("orchestrator")).expect("log");
    let carried = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .any(|line| {
            let text = line.to_string();
            text.contains(&job_id) && text.contains(trace)
        });
    assert!(
        carried,
        "no orchestrator log line names the job and its trace:\n{log}"
    );
    drop(children);
}
