//! `/health` (the process is alive), `/ready` (it can do its work: NATS connected, JetStream
//! answering — on a cluster, a quorum — the submit stream led, its database answering) and `/metrics` (Prometheus's text format), for load
//! balancers, Kubernetes probes and scrapers. The edge serves them beside its API; a process
//! without the edge serves them alone on its probe port ([`probe_router`]).
//!
//! Gauges that describe NATS rather than this process are read at each scrape: the dead letters
//! kept per stage, and each durable consumer's backlog (`pending`) and unacknowledged deliveries
//! (`ack_pending`). Ephemeral consumers (KV watchers) are left out: their names are random.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use crate::openapi::{Health, Readiness};
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chorus_bus::Bus;
use chorus_core::Tenant;
use chorus_store::Store;
use chorus_telemetry::names;
use futures::StreamExt;

/// What the probes look at.
#[derive(Clone, Debug)]
pub struct ProbeState {
    pub bus: Bus,
    /// The database, for a process that uses one.
    pub store: Option<Store>,
    /// The tenants named in the configuration: each gets series of its own in
    /// `chorus_tenant_inflight`, every other tenant counts as `other`.
    pub named: Arc<HashSet<Tenant>>,
}

/// `/health`, `/ready` and `/metrics`, for any router whose state holds a [`ProbeState`].
pub fn probe_routes<S>() -> Router<S>
where
    ProbeState: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

/// The probe port of a process without the edge.
pub fn probe_router(state: ProbeState) -> Router {
    probe_routes()
        .fallback(|| async { crate::error::ApiError::NoSuchRoute })
        .with_state(state)
}

/// The process is alive.
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "probes", security(()), responses((status = 200, description = "Alive", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// How long a readiness check waits for NATS to answer.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The process can do its work: NATS connected; JetStream answering through the server it is
/// connected to (on a cluster, only while that server is in a quorum with a meta leader); the
/// submit stream answering (it has a leader); its database answering.
#[utoipa::path(
    get, path = "/ready", operation_id = "ready", tag = "probes", security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A check failed: it says which and why", body = Readiness),
    )
)]
pub async fn ready(State(state): State<ProbeState>) -> (StatusCode, Json<Readiness>) {
    let nats = match state.bus.client.connection_state() {
        async_nats::connection::State::Connected => None,
        other => Some(format!("{other:?}")),
    };
    let js = &state.bus.js;
    let submit = state.bus.subjects.stream("submit");
    let (jetstream, streams) = tokio::join!(
        within(async { js.query_account().await.err().map(|e| e.to_string()) }),
        within(async {
            js.get_stream(&submit)
                .await
                .err()
                .map(|e| format!("{submit}: {e}"))
        })
    );
    let mut checks = vec![
        ("nats", nats),
        ("jetstream", jetstream),
        ("streams", streams),
    ];
    if let Some(store) = &state.store {
        checks.push(("database", store.ping().await.err().map(|e| e.to_string())));
    }
    let ready = checks.iter().all(|(_, problem)| problem.is_none());
    let checks = checks
        .into_iter()
        .map(|(name, problem)| (name.to_owned(), problem.unwrap_or_else(|| "ok".into())))
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status_text = if ready { "ready" } else { "unavailable" };
    (
        status,
        Json(Readiness {
            status: status_text.into(),
            checks,
        }),
    )
}

/// A readiness check's problem (none when it passed), or that NATS did not answer in time.
async fn within(check: impl std::future::Future<Output = Option<String>>) -> Option<String> {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Some(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())))
}

/// The process's metrics, with the NATS gauges read now.
#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "probes", security(()),
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain; version=0.0.4"))
)]
pub async fn metrics(State(state): State<ProbeState>) -> (StatusCode, String) {
    let Some(handle) = chorus_telemetry::metrics_handle() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder".into(),
        );
    };
    tokio::join!(
        dead_letters(&state.bus),
        consumers(&state.bus, &state.named)
    );
    (StatusCode::OK, handle.render())
}

/// `chorus_dlq_messages{stage}`, from the DLQ stream's subjects.
async fn dead_letters(bus: &Bus) {
    let subjects = &bus.subjects;
    let dlq_subjects = format!("{}.dlq.>", subjects.prefix());
    let Ok(stream) = bus.js.get_stream_no_info(subjects.stream("dlq")).await else {
        return;
    };
    let Ok(mut info) = stream.info_with_subjects(&dlq_subjects).await else {
        return;
    };
    let mut counts = HashMap::new();
    while let Some(Ok((subject, count))) = info.next().await {
        let stage = subject.rsplit('.').next().unwrap_or_default().to_owned();
        *counts.entry(stage).or_insert(0usize) += count;
    }
    for stage in ["orchestrator", "llm", "evaluator", "persister"] {
        let count = counts.get(stage).copied().unwrap_or(0);
        metrics::gauge!(names::DLQ_MESSAGES, "stage" => stage).set(count as f64);
    }
}

/// `chorus_consumer_pending` and `chorus_consumer_ack_pending` of every durable consumer on
/// Chorus's streams (those named with its prefix, and its KV buckets'). The consumers of flows
/// (one per band and tenant) are summed under the name of their flow set (`llm`,
/// `llm-<route>`), so the series stay as few as the stages and routes.
async fn consumers(bus: &Bus, named: &HashSet<Tenant>) {
    let mut listed = bus.js.stream_names();
    let mut streams = Vec::new();
    while let Some(Ok(name)) = listed.next().await {
        if bus.subjects.owns_stream(&name) {
            streams.push(name);
        }
    }
    let mut totals: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut inflight: BTreeMap<(String, String), u64> = BTreeMap::new();
    for name in streams {
        let Ok(stream) = bus.js.get_stream_no_info(&name).await else {
            continue;
        };
        let mut infos = stream.consumers();
        while let Some(Ok(info)) = infos.next().await {
            if info.config.durable_name.is_none() {
                continue;
            }
            let filter = &info.config.filter_subject;
            if let Some((route, flow)) = bus.subjects.llm_flow(filter) {
                let tenant = match named.contains(&flow.tenant) {
                    true => flow.tenant.to_string(),
                    false => OTHER_TENANTS.to_owned(),
                };
                *inflight.entry((route, tenant)).or_default() += info.num_ack_pending as u64;
            }
            let consumer = bus.subjects.flow_set_of(filter).unwrap_or(info.name);
            let total = totals.entry((name.clone(), consumer)).or_default();
            total.0 += info.num_pending;
            total.1 += info.num_ack_pending as u64;
        }
    }
    for ((stream, consumer), (pending, ack_pending)) in totals {
        let labels = [("stream", stream), ("consumer", consumer)];
        metrics::gauge!(names::CONSUMER_PENDING, &labels).set(pending as f64);
        metrics::gauge!(names::CONSUMER_ACK_PENDING, &labels).set(ack_pending as f64);
    }
    // A series whose flows are gone reads 0, not its last value.
    static REPORTED: OnceLock<Mutex<HashSet<(String, String)>>> = OnceLock::new();
    let mut reported = REPORTED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for gone in reported.iter().filter(|key| !inflight.contains_key(*key)) {
        let labels = [("route", gone.0.clone()), ("tenant", gone.1.clone())];
        metrics::gauge!(names::TENANT_INFLIGHT, &labels).set(0.0);
    }
    for ((route, tenant), calls) in inflight {
        let labels = [("route", route.clone()), ("tenant", tenant.clone())];
        metrics::gauge!(names::TENANT_INFLIGHT, &labels).set(calls as f64);
        reported.insert((route, tenant));
    }
}

/// The `tenant` of `chorus_tenant_inflight` for every tenant the configuration does not name.
pub const OTHER_TENANTS: &str = "other";
