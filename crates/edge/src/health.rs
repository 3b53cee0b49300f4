//! `/health` (the process is alive) and `/ready` (it can do its work: NATS connected, streams
//! present, database answering), for load balancers and Kubernetes probes; `/metrics` in
//! Prometheus's text format.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let nats = match state.bus.client.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        other => Err(format!("{other:?}")),
    };
    let streams = state
        .bus
        .js
        .get_stream_no_info(state.bus.subjects.stream("submit"))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let database = state.store.ping().await.map_err(|e| e.to_string());
    let checks = [("nats", nats), ("streams", streams), ("database", database)];
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, Value> = checks
        .into_iter()
        .map(|(name, result)| {
            let value = match result {
                Ok(()) => json!("ok"),
                Err(e) => json!(e),
            };
            (name.to_owned(), value)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"status": if ready { "ready" } else { "unavailable" }, "checks": body})),
    )
}

/// The process's metrics, with the dead-letter counts per stage read from the DLQ stream.
pub async fn metrics(State(state): State<AppState>) -> (StatusCode, String) {
    let Some(handle) = chorus_telemetry::metrics_handle() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder".into(),
        );
    };
    let subjects = &state.bus.subjects;
    let dlq_subjects = format!("{}.dlq.>", subjects.prefix());
    if let Ok(stream) = state
        .bus
        .js
        .get_stream_no_info(subjects.stream("dlq"))
        .await
        && let Ok(mut info) = stream.info_with_subjects(&dlq_subjects).await
    {
        let mut counts = std::collections::HashMap::new();
        while let Some(Ok((subject, count))) = futures::StreamExt::next(&mut info).await {
            let stage = subject.rsplit('.').next().unwrap_or_default().to_owned();
            *counts.entry(stage).or_insert(0usize) += count;
        }
        for stage in ["orchestrator", "llm", "evaluator", "persister"] {
            let count = counts.get(stage).copied().unwrap_or(0);
            metrics::gauge!(chorus_telemetry::names::DLQ_MESSAGES, "stage" => stage)
                .set(count as f64);
        }
    }
    (StatusCode::OK, handle.render())
}
