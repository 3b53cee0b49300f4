//! The OpenAPI 3.1 document, generated from the code (utoipa) and served at `/openapi.json`.
//!
//! Every route is registered through `utoipa_axum::routes!`, which takes each handler's path and
//! method from its `#[utoipa::path]`: a route cannot be served without being described, and the
//! description cannot name a path that is not served. Request and response bodies are the types
//! the handlers use; the few bodies a handler reads or writes as plain JSON (a chat completion
//! request, a streamed chunk, an uploaded file, the error shape) are described by the types
//! below, which exist only for this document.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::Json;
use axum::extract::State;

use crate::state::AppState;

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chorus",
        description = "A self-hosted engine for LLM work at scale: jobs (templates, personas × models, synthesis, evaluation), batches in the OpenAI Batch API shape, the OpenAI Chat Completions API through the pipeline, and the operator's dead letters.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerKeys),
    security(("api_key" = [])),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "chat", description = "OpenAI's Chat Completions API and models."),
        (name = "jobs", description = "Jobs: create, read, list, cancel, follow."),
        (name = "files", description = "Batch input files (OpenAI's Files API)."),
        (name = "batches", description = "Batches (OpenAI's Batch API) and their reports."),
        (name = "usage", description = "Usage: steps, tokens and cost over a time window."),
        (name = "admin", description = "The operator's routes: dead letters and usage, across tenants."),
        (name = "budgets", description = "Spend budgets the caller's work is charged to."),
        (name = "probes", description = "Liveness, readiness, metrics and this document."),
    )
)]
pub struct ApiDoc;

/// This document, naming this installation's models.
#[utoipa::path(
    get, path = "/openapi.json", operation_id = "openapi", tag = "probes", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object))
)]
pub async fn document(State(state): State<AppState>) -> Json<serde_json::Value> {
    static DOCUMENT: OnceLock<serde_json::Value> = OnceLock::new();
    let mut document = DOCUMENT.get_or_init(crate::openapi).clone();
    crate::contract::with_models(&mut document, &crate::chat::model_names(&state));
    Json(document)
}

/// `Authorization: Bearer <key>` with a Chorus API key.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("chorus_<id>_<secret>")
                    .description(Some(
                        "A Chorus API key. Scopes: `submit` for POST routes, `read` for GET \
                         routes, `admin` for /v1/admin.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every error, in OpenAI's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `not_found_error`, `permission_error`, `rate_limit_error`,
    /// `server_error`, `api_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The field the problem is about, as a path (`messages[0].role`).
    pub param: Option<String>,
    pub code: String,
    /// A refused batch file: each bad line, by number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<chorus_core::batch::file::LineError>>,
    /// A refused batch file: bad lines found but not listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub omitted: Option<u64>,
}

/// OpenAI's chat completion request, as far as Chorus takes it; any other field is a `422`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A route.
    pub model: String,
    pub messages: Vec<ChatRequestMessage>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    /// A string or a list of strings.
    #[schema(value_type = Option<Object>)]
    pub stop: Option<serde_json::Value>,
    pub seed: Option<u64>,
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<serde_json::Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<serde_json::Value>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// Accepted and ignored.
    pub user: Option<String>,
    /// Only 1.
    pub n: Option<u32>,
    /// Answer with Server-Sent Events of `chat.completion.chunk` objects.
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatRequestMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// A string, or a list of `{"type": "text", "text"}` parts.
    #[schema(value_type = Object)]
    pub content: serde_json::Value,
    pub name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StreamOptions {
    /// A last chunk with the usage (and no choices).
    pub include_usage: bool,
}

/// One event of a streamed chat completion (`data: <chunk>`; the stream ends with
/// `data: [DONE]`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    /// On the last chunk, with `stream_options.include_usage`.
    pub usage: Option<chorus_store::UsageRecord>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    /// `{"role"}` first, then `{"content"}` pieces (and `tool_calls` at the end, if any).
    #[schema(value_type = Object)]
    pub delta: serde_json::Value,
    pub finish_reason: Option<String>,
}

/// `POST /v1/files`: a multipart form.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileUpload {
    /// `batch`.
    pub purpose: String,
    /// JSONL, one request per line.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// A job accepted: it is durably queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub id: chorus_core::JobId,
    pub status: chorus_core::job::JobStatus,
    pub created_at: String,
}

/// `GET /v1/admin/dlq`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    /// `list`.
    pub object: String,
    pub data: Vec<chorus_dlq::view::Summary>,
    pub has_more: bool,
}

/// A replay's outcome, with the audit row that records it (none for a dry run).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayAnswer {
    #[serde(flatten)]
    pub report: chorus_dlq::report::ReplayReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_id: Option<i64>,
}

/// A purge's outcome, with the audit row that records it (none for a dry run).
#[derive(Debug, Serialize, ToSchema)]
pub struct PurgeAnswer {
    #[serde(flatten)]
    pub report: chorus_dlq::report::PurgeReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_id: Option<i64>,
}

/// `since` and `until` of the DLQ routes: an RFC 3339 time or a duration ago (the contract
/// states the forms).
#[derive(Debug, Serialize, ToSchema)]
pub struct PointInTime(pub String);

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: String,
    /// Each check (`nats`, `streams`, `database`): `ok`, or what failed.
    pub checks: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    /// The body of `api_router` in `lib.rs`.
    fn api_router_source() -> &'static str {
        let source = include_str!("lib.rs");
        let start = source.find("fn api_router()").unwrap_or(0);
        let end = source[start..]
            .find("\n}\n")
            .map_or(source.len(), |i| start + i);
        &source[start..end]
    }

    #[test]
    fn every_route_is_registered_with_its_description() {
        let body = api_router_source();
        assert!(body.contains(".routes(routes!("), "{body}");
        for bypass in [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            ".merge(",
        ] {
            assert!(
                !body.contains(bypass),
                "api_router adds a route with `{bypass}`, which the OpenAPI document would not describe"
            );
        }
        // Each handler a `routes!` names is one operation (several may share a path).
        let registered: usize = body
            .split("routes!(")
            .skip(1)
            .map(|call| {
                call.split(')')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .count()
            })
            .sum();
        let documented: usize = crate::openapi()["paths"]
            .as_object()
            .into_iter()
            .flat_map(|paths| paths.values())
            .filter_map(|item| item.as_object())
            .map(|item| item.len())
            .sum();
        assert_eq!(documented, registered, "operations in the document");
    }

    #[test]
    fn the_document_is_openapi_3_1_with_bearer_keys_and_error_bodies() {
        let json = crate::openapi();
        assert!(
            json["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{}",
            json["openapi"]
        );
        assert_eq!(
            json["components"]["securitySchemes"]["api_key"]["scheme"],
            "bearer"
        );
        for schema in [
            "JobSpec",
            "Check",
            "JobRecord",
            "BatchObject",
            "ErrorBody",
            "ChatCompletion",
        ] {
            assert!(
                json["components"]["schemas"].get(schema).is_some(),
                "{schema} is described"
            );
        }
        let paths = json["paths"].as_object().cloned().unwrap_or_default();
        for (path, item) in &paths {
            for (method, operation) in item.as_object().into_iter().flatten() {
                let responses = operation["responses"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                assert!(
                    responses.keys().any(|code| code.starts_with('2')),
                    "{method} {path} has a success response"
                );
                if path.starts_with("/v1/") {
                    assert!(
                        responses.contains_key("401"),
                        "{method} {path} documents its 401"
                    );
                }
            }
        }
    }
}
