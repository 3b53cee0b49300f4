//! `/v1/batches`: OpenAI's Batch API over any route, plus a report of the batch's evaluations.
//!
//! Creating a batch checks its input file again (routes may have changed since the upload), then
//! stores the batch and publishes one submission per line onto JetStream, pipelined, each under a
//! job id derived from the batch and the line's `custom_id` (so a retried publish is the same
//! job). It answers once JetStream has acknowledged every line. Progress (`request_counts`) is
//! read from the stored jobs; the batch becomes `completed` (or `cancelled`) when every line's job
//! is final. A cancel stops every line not yet called: those end in the error file with code
//! `batch_cancelled`, so every `custom_id` appears exactly once across the output and error files.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use chorus_bus::backlog::Load;
use chorus_bus::publish::Outgoing;
use chorus_core::Tenant;
use chorus_core::auth::Caller;
use chorus_core::batch::Endpoint;
use chorus_core::batch::file::{self, BatchLine};
use chorus_core::fair::Band;
use chorus_core::ids::{JobId, msg_id, now_millis};
use chorus_core::messages::Submission;
use chorus_core::openai;
use chorus_eval::SpecValidator;
use chorus_store::{BatchList, BatchObject, BatchReport, BatchStatus, NewBatch, StoreError};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{ApiError, Missing};
use crate::extract::{JsonBody, Path, Query};
use crate::openapi::ErrorBody;
use crate::state::AppState;

/// The only completion window, as in OpenAI's API.
const COMPLETION_WINDOW: &str = "24h";
/// How long [`COMPLETION_WINDOW`] is: a batch's `expires_at` is this after its creation.
const COMPLETION_WINDOW_LENGTH: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// Submissions published per round of acks.
const PUBLISH_CHUNK: usize = 2048;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    /// A file uploaded with purpose `batch`.
    input_file_id: String,
    /// `/v1/chat/completions` or `/v1/jobs`: every line's `url`.
    endpoint: String,
    /// `24h`.
    completion_window: String,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// Create a batch over an uploaded file: one job per line, answered once JetStream holds them.
#[utoipa::path(
    post, path = "/v1/batches", operation_id = "createBatch", tag = "batches", request_body = CreateBatch,
    responses(
        (status = 200, description = "The batch", body = BatchObject),
        (status = 400, description = "A bad endpoint, window or metadata (OpenAI's limits); the file's lines no longer pass their checks (`invalid_file`, each line in `error.lines`), or ask for another endpoint (`endpoint_mismatch`)", body = ErrorBody),
        (status = 404, description = "No such file for this tenant", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<CreateBatch>,
) -> Result<Json<BatchObject>, ApiError> {
    let endpoint = Endpoint::parse(&request.endpoint).ok_or_else(|| ApiError::BadRequest {
        message: format!(
            "endpoint: `{}` is not supported; use `/v1/chat/completions` or `/v1/jobs`",
            request.endpoint
        ),
        param: Some("endpoint".into()),
        code: "invalid_value",
    })?;
    if request.completion_window != COMPLETION_WINDOW {
        return Err(ApiError::BadRequest {
            message: format!(
                "completion_window: `{}` is not supported; use `{COMPLETION_WINDOW}`",
                request.completion_window
            ),
            param: Some("completion_window".into()),
            code: "invalid_value",
        });
    }
    if let Some(metadata) = &request.metadata {
        openai::check_metadata(metadata).map_err(|e| ApiError::BadRequest {
            message: e.to_string(),
            param: Some(e.field),
            code: "invalid_value",
        })?;
    }
    let tenant = caller.tenant.clone();
    let content = state
        .store
        .file_content(&tenant, &request.input_file_id)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::NotFound {
            what: Missing::File,
            id: request.input_file_id.clone(),
        })?;
    let validator = SpecValidator::new(&*state.routes);
    let lines = file::parse_file(&content, state.batch_max_lines, &validator)
        .map_err(ApiError::refused_file)?;
    check_endpoints(&lines, endpoint)?;
    // Its lines weigh about what its file does.
    let adding = Load::new(lines.len() as u64, content.len() as u64);
    crate::quota::within_budget(&state, &caller)?;
    crate::quota::admit(&state, &caller.tenant, adding)?;

    let created_at = Utc::now();
    let now = created_at.timestamp_millis();
    let batch = state
        .store
        .create_batch(
            &tenant,
            NewBatch {
                input_file_id: request.input_file_id,
                endpoint,
                completion_window: COMPLETION_WINDOW.into(),
                metadata: request.metadata.map(Value::Object),
                status: BatchStatus::Validating,
                total: lines.len() as u64,
                errors: None,
                created_at,
                expires_at: Some(created_at + COMPLETION_WINDOW_LENGTH),
            },
        )
        .await
        .map_err(db)?;
    let flow = state
        .bus
        .subjects
        .submit_flows()
        .subject(None, Band::Batch, &tenant);
    let mut messages = Vec::with_capacity(PUBLISH_CHUNK);
    for line in lines {
        let origin = line.origin(&batch.id);
        let job = JobId::derived(&tenant, &format!("batch:{}:{}", batch.id, line.custom_id));
        let submission = Submission {
            job_id: job,
            spec: line.spec,
            submitted_at: now,
            state_created: false,
            origin: Some(origin),
            stream: false,
            band: Band::Batch,
            key: caller.key_id.clone(),
        };
        let message = Outgoing::envelope(
            flow.clone(),
            &msg_id::submit(job),
            &submission,
            // Each line's job is a trace of its own, begun by the orchestrator.
            None,
        )
        .map_err(|e| ApiError::unavailable("encoding", e))?
        .for_job(job, &tenant);
        messages.push(message);
        if messages.len() == PUBLISH_CHUNK {
            publish(&state, &tenant, &batch.id, std::mem::take(&mut messages)).await?;
            state.bus.ring(&flow).await;
        }
    }
    publish(&state, &tenant, &batch.id, messages).await?;
    state.bus.ring(&flow).await;
    // Every line is in JetStream: the batch is under way.
    state
        .store
        .set_batch_status(&tenant, &batch.id, BatchStatus::InProgress, now_millis())
        .await
        .map_err(db)?;
    let batch = state
        .store
        .refresh_batch(&tenant, &batch.id)
        .await
        .map_err(db)?
        .unwrap_or(batch);
    Ok(Json(batch))
}

/// Publishes a chunk of a batch's submissions; a failure marks the batch failed.
async fn publish(
    state: &AppState,
    tenant: &Tenant,
    batch: &str,
    messages: Vec<Outgoing>,
) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Ok(());
    }
    if let Err(e) = state.bus.publish_all_retrying(messages).await {
        let _ = state
            .store
            .set_batch_status(tenant, batch, BatchStatus::Failed, now_millis())
            .await;
        return Err(ApiError::publish(e));
    }
    Ok(())
}

/// Every line must ask for the batch's endpoint, as OpenAI requires.
fn check_endpoints(lines: &[BatchLine], endpoint: Endpoint) -> Result<(), ApiError> {
    let wrong: Vec<String> = lines
        .iter()
        .filter(|l| l.endpoint != endpoint)
        .take(file::MAX_REPORTED)
        .map(|l| format!("line {}: url `{}`", l.line, l.endpoint.as_str()))
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    Err(ApiError::BadRequest {
        message: format!(
            "every line's url must be the batch's endpoint `{}`: {}",
            endpoint.as_str(),
            wrong.join("; ")
        ),
        param: Some("endpoint".into()),
        code: "endpoint_mismatch",
    })
}

#[utoipa::path(
    get, path = "/v1/batches/{id}", operation_id = "retrieveBatch", tag = "batches",
    params(("id" = String, Path, description = "The batch's id")),
    responses(
        (status = 200, description = "The batch", body = BatchObject),
        (status = 404, description = "No such batch for this tenant", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    state
        .store
        .refresh_batch(&caller.tenant, &id)
        .await
        .map_err(db)?
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1-100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u64>,
    /// The last batch id of the page before.
    after: Option<String>,
}

/// The tenant's batches, newest first.
#[utoipa::path(
    get, path = "/v1/batches", operation_id = "listBatches", tag = "batches", params(ListParams),
    responses(
        (status = 200, description = "The batches, newest first", body = BatchList),
        (status = 400, description = "`after` names no batch of this tenant (`invalid_cursor`)", body = ErrorBody),
        (status = 422, description = "A bad limit", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<ListParams>,
) -> Result<Json<BatchList>, ApiError> {
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 100"));
    }
    let list = state
        .store
        .list_batches(&caller.tenant, limit, params.after.as_deref())
        .await
        .map_err(|e| match e {
            StoreError::BadCursor => ApiError::BadRequest {
                message: format!(
                    "after: `{}` names no batch of yours",
                    params.after.as_deref().unwrap_or_default()
                ),
                param: Some("after".into()),
                code: "invalid_cursor",
            },
            e => db(e),
        })?;
    Ok(Json(list))
}

/// `POST /v1/batches/{id}/cancel`: the batch is `cancelling` until every line's job is final.
#[utoipa::path(
    post, path = "/v1/batches/{id}/cancel", operation_id = "cancelBatch", tag = "batches",
    params(("id" = String, Path, description = "The batch's id")),
    responses(
        (status = 200, description = "Cancelling, or cancelled", body = BatchObject),
        (status = 404, description = "No such batch for this tenant", body = ErrorBody),
        (status = 409, description = "The batch already finished", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    let tenant = &caller.tenant;
    let batch = state
        .store
        .refresh_batch(tenant, &id)
        .await
        .map_err(db)?
        .ok_or_else(|| not_found(&id))?;
    match batch.status {
        BatchStatus::Cancelling | BatchStatus::Cancelled => return Ok(Json(batch)),
        BatchStatus::Completed | BatchStatus::Failed | BatchStatus::Expired => {
            return Err(ApiError::Finished {
                what: Missing::Batch,
                id: id.clone(),
                status: batch.status.as_str(),
            });
        }
        BatchStatus::Validating | BatchStatus::InProgress | BatchStatus::Finalizing => {}
    }
    state
        .cancels
        .cancel_batch(tenant, &id)
        .await
        .map_err(|e| ApiError::unavailable("the cancels bucket", e))?;
    state
        .store
        .set_batch_status(tenant, &id, BatchStatus::Cancelling, now_millis())
        .await
        .map_err(db)?;
    state
        .store
        .refresh_batch(tenant, &id)
        .await
        .map_err(db)?
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

/// `GET /v1/batches/{id}/report`: pass rate and mean score per metric, model and persona.
#[utoipa::path(
    get, path = "/v1/batches/{id}/report", operation_id = "getBatchReport", tag = "batches",
    params(("id" = String, Path, description = "The batch's id")),
    responses(
        (status = 200, description = "Pass rate and mean score per metric, model and persona", body = BatchReport),
        (status = 404, description = "No such batch for this tenant", body = ErrorBody),
    )
)]
pub async fn report(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<BatchReport>, ApiError> {
    state
        .store
        .batch_report(&caller.tenant, &id)
        .await
        .map_err(db)?
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        what: Missing::Batch,
        id: id.to_owned(),
    }
}

fn db(e: chorus_store::StoreError) -> ApiError {
    ApiError::unavailable("the database", e)
}
