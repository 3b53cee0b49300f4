//! Chorus's HTTP edge (axum): the REST API in front of the pipeline.
//!
//! Layout:
//! - [`jobs`]: `/v1/jobs` create, get, list, cancel.
//! - [`chat`]: `/v1/chat/completions` (streaming too) and `/v1/models`, OpenAI's API through the
//!   pipeline.
//! - [`files`] and [`batches`]: the OpenAI Batch API (`/v1/files`, `/v1/batches`) and batch reports.
//! - [`events`]: `/v1/jobs/{id}/events`, a job's lifecycle as Server-Sent Events.
//! - [`admin`]: `/v1/admin/dlq` list, show, replay, purge (audited).
//! - [`usage`]: `/v1/usage` (a tenant's own) and `/v1/admin/usage` (across tenants): steps,
//!   tokens and cost over a window, per day, key, route, model or tenant.
//! - [`budgets`]: `/v1/budgets` (the caller's) and `/v1/admin/budgets` (list, set, remove).
//! - [`probes`]: `/health`, `/ready` and `/metrics`, here and on the probe port of processes
//!   without the edge.
//! - [`auth`]: API keys, scopes and per-key request rates on every `/v1` route.
//! - [`extract`]: the JSON body extractor (size limit, field-level errors).
//! - [`error`]: errors in OpenAI's error shape.
//! - [`openapi`]: the OpenAPI document, generated from the handlers, and [`contract`]: what it
//!   states beyond the handlers' annotations (shared answers, combined rules, links, models).
//!
//! Nothing invalid reaches a queue: a request is validated completely (types, fields, routes,
//! templates, assertions) before anything is published.

pub mod admin;
pub mod auth;
pub mod batches;
pub mod budgets;
pub mod chat;
pub mod contract;
pub mod error;
pub mod events;
pub mod extract;
pub mod files;
pub mod jobs;
pub mod openapi;
pub mod probes;
pub mod quota;
pub mod state;
pub mod usage;
pub mod waiter;
pub mod waiting;

use axum::Router;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use chorus_core::codec::headers;
use chorus_core::trace::TraceContext;
use chorus_telemetry::names;
use tracing::Instrument;
use utoipa::OpenApi as _;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

pub use state::AppState;

/// Every route, each registered with its OpenAPI description (the `routes!` macro reads the path
/// and method from the handler's `#[utoipa::path]`). Only `routes!` may add routes here, so
/// nothing is served undescribed (a test checks this function's source).
fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(chat::completions))
        .routes(routes!(chat::models))
        .routes(routes!(chat::model_by_id))
        .routes(routes!(jobs::create, jobs::list))
        .routes(routes!(jobs::get))
        .routes(routes!(jobs::cancel))
        .routes(routes!(events::events))
        .routes(routes!(files::upload).layer(DefaultBodyLimit::disable()))
        .routes(routes!(files::get))
        .routes(routes!(files::content))
        .routes(routes!(batches::create, batches::list))
        .routes(routes!(batches::get))
        .routes(routes!(batches::cancel))
        .routes(routes!(batches::report))
        .routes(routes!(admin::list))
        .routes(routes!(admin::replay))
        .routes(routes!(admin::purge))
        .routes(routes!(admin::show))
        .routes(routes!(usage::own))
        .routes(routes!(usage::admin))
        .routes(routes!(budgets::own))
        .routes(routes!(budgets::list))
        .routes(routes!(budgets::get, budgets::set, budgets::remove))
        .routes(routes!(probes::health))
        .routes(routes!(probes::ready))
        .routes(routes!(probes::metrics))
        .routes(routes!(openapi::document))
}

/// The OpenAPI document as the handlers' annotations generate it.
fn generated_openapi() -> utoipa::openapi::OpenApi {
    api_router().into_openapi()
}

/// The OpenAPI document of every route, with the whole contract ([`contract`]); the served one
/// also names the installation's models ([`contract::with_models`]).
pub fn openapi() -> serde_json::Value {
    let mut document = serde_json::to_value(generated_openapi()).unwrap_or_default();
    contract::complete(&mut document);
    document
}

pub fn router(state: AppState) -> Router {
    let (routes, _) = api_router().split_for_parts();
    routes
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            error::ApiError::MethodNotAllowed {
                method: method.to_string(),
            }
        })
        .fallback(|| async { error::ApiError::NoSuchRoute })
        .layer(middleware::from_fn(record))
        .with_state(state)
}

/// Each request's span (a child of the client's `traceparent`, if it sent one), and
/// `chorus_http_requests_total` and `chorus_http_request_duration_seconds`, labelled with the
/// matched route (its pattern, never the path: ids would make the labels unbounded).
async fn record(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let parent = request
        .headers()
        .get(headers::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    chorus_telemetry::trace::set_parent(&span, parent.as_ref());
    if let Some(trace) = chorus_telemetry::trace::current_of(&span).or(parent) {
        span.record("trace_id", trace.trace_id_hex());
    }
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    let status = response.status().as_u16().to_string();
    metrics::counter!(names::HTTP_REQUESTS, "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(names::HTTP_REQUEST_SECONDS, "route" => route, "method" => method)
        .record(started.elapsed());
    response
}
