//! `/v1/jobs`: create (202 once JetStream has the submission), get, list and cancel.
//!
//! A create stores the queued state in the jobs bucket alongside the submission, so a `GET` right
//! after the 202 finds the job even before the orchestrator picks it up. Reads answer from the
//! database once a job's final state is committed there, and from the bucket's live state before
//! that; a job reads as finished only once it is committed. Lists come from the database, which
//! holds each job's first and final state.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_bus::backlog::Load;
use chorus_bus::jobs::{Start, Write};
use chorus_bus::publish::Outgoing;
use chorus_core::Tenant;
use chorus_core::auth::Caller;
use chorus_core::codec::headers;
use chorus_core::fair::Band;
use chorus_core::ids::{JobId, msg_id, now_millis};
use chorus_core::job::{Input, JobState, JobStatus};
use chorus_core::messages::Submission;
use chorus_core::spec::{FieldError, FieldErrorKind, JobSpec};
use chorus_core::trace::TraceContext;
use chorus_eval::SpecValidator;
use chorus_store::{JobRecord, StoreError};
use futures::StreamExt;
use serde::Deserialize;

use crate::error::{ApiError, Missing};
use crate::extract::{JsonBody, Path, Query};
use crate::openapi::{Accepted, ErrorBody};
use crate::state::AppState;
use crate::waiter::Waiter;

const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CreateParams {
    /// Seconds to wait for the job to finish before answering (at most `edge.max_wait` is
    /// waited).
    #[param(minimum = 0)]
    wait: Option<f64>,
}

/// Create a job. Accepted (`202`) once JetStream has stored it; with `wait`, answered with the
/// stored job (`200`) if it finishes in time.
#[utoipa::path(
    post, path = "/v1/jobs", operation_id = "createJob", tag = "jobs",
    params(CreateParams, ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "A retried create with the same key returns the same job (1-255 characters; it takes precedence over the spec's `idempotency_key`)")),
    request_body = JobSpec,
    responses(
        (status = 202, description = "Queued", body = Accepted, headers(("Location" = String, description = "/v1/jobs/{id}"))),
        (status = 200, description = "Finished within `wait`", body = JobRecord),
        (status = 400, description = "An Idempotency-Key that is empty or longer than 255 characters", body = ErrorBody),
        (status = 404, description = "A model that names no route (`model_not_found`, `param` names the first such field)", body = ErrorBody),
        (status = 422, description = "Does not fit the spec: the field and the problem; or a rule no schema states: a template that does not render with `input` (`invalid_template`), a persona named twice (`duplicate_persona`), an assertion that does not compile (`invalid_assertion`), a deadline already past (`deadline_passed`)", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<CreateParams>,
    request_headers: HeaderMap,
    JsonBody(spec): JsonBody<JobSpec>,
) -> Result<Response, ApiError> {
    let mut errors = spec.validate(&SpecValidator::new(&*state.routes));
    errors.extend(deadline_passed(&spec, now_millis()));
    if !errors.is_empty() {
        return Err(ApiError::fields(&errors));
    }
    let wait = match params.wait {
        Some(w) if !w.is_finite() || w < 0.0 => {
            return Err(ApiError::BadRequest {
                message: "wait: must be a number of seconds >= 0".into(),
                param: Some("wait".into()),
                code: "invalid_value",
            });
        }
        Some(w) => {
            Some(Duration::try_from_secs_f64(w).map_or(state.max_wait, |w| w.min(state.max_wait)))
        }
        None => None,
    };
    let key = request_headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| spec.idempotency_key.clone());
    if key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.chars().count() > 255)
    {
        return Err(ApiError::BadRequest {
            message: "Idempotency-Key: must be 1-255 characters".into(),
            param: Some("Idempotency-Key".into()),
            code: "invalid_value",
        });
    }
    let tenant = caller.tenant.clone();
    let job = match &key {
        Some(key) => JobId::derived(&tenant, key),
        None => JobId::new(),
    };

    // Listen before publishing, so a fast job cannot finish before we listen.
    let waiter = match wait {
        Some(limit) => {
            let deadline = tokio::time::Instant::now() + limit;
            Some(Waiter::listen(&state, &tenant, job, deadline).await?)
        }
        None => None,
    };

    // A caller waiting for the answer is interactive; the key caps what any caller asks.
    let asked = match wait {
        Some(_) => Band::Interactive,
        None => Band::Standard,
    };
    let band = spec.service_tier.unwrap_or(asked).capped(caller.max_band);
    let now = now_millis();
    let is_new = submit(
        &state,
        &caller,
        job,
        spec,
        trace_of(&request_headers),
        false,
        band,
        Queued::Here,
    )
    .await?;

    // A retried request may find the job already finished: the waiter looks at once.
    if let Some(waiter) = waiter
        && waiter.finished().await?.is_some()
        && let Some(record) = committed(&state, &tenant, job).await?
    {
        return Ok((StatusCode::OK, Json(record)).into_response());
    }
    let status = if is_new {
        JobStatus::Queued
    } else {
        current_status(&state, &tenant, job).await?
    };
    let body = Accepted {
        id: job,
        status,
        created_at: chrono_rfc3339(now),
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/jobs/{job}"))],
        Json(body),
    )
        .into_response())
}

/// A job: its state, every step, its evaluation. Live progress until its final state is stored.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", operation_id = "getJob", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = JobRecord),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    let job = job_id(&id)?;
    read(&state, &caller.tenant, job)
        .await?
        .map(Json)
        .ok_or_else(|| no_job(&id))
}

/// The job a path names; [`no_job`] when it is not a job id.
pub(crate) fn job_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| no_job(id))
}

/// `404`: no job `id` for this tenant.
pub(crate) fn no_job(id: &str) -> ApiError {
    ApiError::NotFound {
        what: Missing::Job,
        id: id.to_owned(),
    }
}

/// A job as a reader should see it: the stored record once final; before that the live state in
/// the jobs bucket, which holds the progress the database does not.
async fn read(
    state: &AppState,
    tenant: &Tenant,
    job: JobId,
) -> Result<Option<JobRecord>, ApiError> {
    let stored = state
        .store
        .get_job(tenant, job)
        .await
        .map_err(store_error)?;
    if stored
        .as_ref()
        .is_some_and(|r| r.summary.status.is_terminal())
    {
        return Ok(stored);
    }
    match state.jobs.get(tenant, job).await {
        Ok(Some((live, _))) => {
            let mut record = JobRecord::from_live_state(&live);
            record.waiting = crate::waiting::of(state, &live).await;
            Ok(Some(record))
        }
        Ok(None) => Ok(stored),
        Err(e) => match stored {
            Some(record) => {
                tracing::warn!(error = %e, %job, "job-state bucket unavailable; answering from the database");
                Ok(Some(record))
            }
            None => Err(ApiError::unavailable("the job-state bucket", e)),
        },
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only jobs of this status.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// 1-100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u64>,
    /// `next_cursor` of the page before.
    #[param(pattern = "^[0-9a-fA-F]{48}$")]
    cursor: Option<String>,
}

/// The tenant's jobs from the database, newest first.
#[utoipa::path(
    get, path = "/v1/jobs", operation_id = "listJobs", tag = "jobs", params(ListParams),
    responses(
        (status = 200, description = "A page of jobs", body = chorus_store::JobPage),
        (status = 400, description = "A cursor Chorus did not issue (`invalid_cursor`)", body = ErrorBody),
        (status = 422, description = "A bad status or limit", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<ListParams>,
) -> Result<Json<chorus_store::JobPage>, ApiError> {
    let status = match params.status.as_deref() {
        None => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "status",
                format!(
                    "unknown status `{s}`; use one of {}",
                    JobStatus::ALL.map(JobStatus::as_str).join(", ")
                ),
            )
        })?),
    };
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 100"));
    }
    let page = state
        .store
        .list_jobs(&caller.tenant, status, limit, params.cursor.as_deref())
        .await
        .map_err(store_error)?;
    Ok(Json(page))
}

/// The trace a job submitted by this request joins: the request's span when spans are exported,
/// else the request's W3C trace context, else a new trace.
pub fn trace_of(headers: &HeaderMap) -> TraceContext {
    chorus_telemetry::trace::current()
        .or_else(|| {
            headers
                .get(headers::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .and_then(TraceContext::parse)
        })
        .unwrap_or_else(TraceContext::new_root)
}

/// Where a submitted job's queued state is first stored in the jobs bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    /// By the edge, beside the submission: a read right after the answer finds the job, and a
    /// retried request for the same job is told apart.
    Here,
    /// By the orchestrator, together with its first transition, in one write: for a caller
    /// that waits for the answer and never reads the queued job (a chat completion). One
    /// jobs-bucket write, one read and one stored snapshot fewer per job.
    ByOrchestrator,
}

/// Publishes a validated job and, with [`Queued::Here`], stores its queued state beside it, so
/// a read right after finds it; answers once JetStream has the submission. `Ok(false)` when the
/// job already existed (a retried request with the same idempotency key). `stream`: the answer's
/// text goes to the job's answer stream as it arrives. `band`: the class of service its calls
/// wait in.
#[allow(clippy::too_many_arguments)]
pub async fn submit(
    state: &AppState,
    caller: &Caller,
    job: JobId,
    spec: JobSpec,
    trace: TraceContext,
    stream: bool,
    band: Band,
    queued: Queued,
) -> Result<bool, ApiError> {
    let tenant = &caller.tenant;
    let now = now_millis();
    let initial = (queued == Queued::Here).then(|| {
        JobState::new(job, tenant.clone(), spec.clone(), now, Some(trace))
            .streamed(stream)
            .in_band(band)
            .by_key(caller.key_id.clone())
    });
    let submission = Submission {
        job_id: job,
        spec,
        submitted_at: now,
        state_created: queued == Queued::Here,
        origin: None,
        stream,
        band,
        key: caller.key_id.clone(),
    };
    let flow = state
        .bus
        .subjects
        .submit_flows()
        .subject(None, band, tenant);
    let message = Outgoing::envelope(
        flow.clone(),
        &msg_id::submit(job),
        &submission,
        Some(&trace),
    )
    .map_err(|e| ApiError::unavailable("encoding", e))?
    .for_job(job, tenant);
    crate::quota::within_budget(state, caller)?;
    crate::quota::admit(state, tenant, Load::new(1, message.size()))?;
    let publish = state.bus.publish_all_retrying(vec![message]);
    let (published, created) = match &initial {
        Some(initial) => {
            let (published, created) = tokio::join!(publish, state.jobs.create(initial));
            (published, Some(created))
        }
        None => (publish.await, None),
    };
    published.map_err(ApiError::publish)?;
    state.bus.ring(&flow).await;
    Ok(match created {
        None | Some(Ok(Write::Stored(_))) => true,
        Some(Ok(Write::Conflict)) => false,
        // The submission is durable; the orchestrator creates the state when the bucket is back.
        Some(Err(e)) => {
            tracing::warn!(error = %e, %job, "could not store the queued state");
            true
        }
    })
}

/// A deadline already past when the job is submitted: the job could never run.
pub fn deadline_passed(spec: &JobSpec, now: i64) -> Option<FieldError> {
    spec.deadline
        .filter(|d| d.timestamp_millis() <= now)
        .map(|d| {
            FieldError::of(
                FieldErrorKind::DeadlinePassed,
                "deadline",
                format!("{} is in the past", d.to_rfc3339()),
            )
        })
}

/// `POST /v1/jobs/{id}/cancel`. Once this answers, nothing new is dispatched for the job: the
/// cancel is in the cancels bucket every dispatcher checks, and the job's state is `cancelled`
/// (calls already sent finish, and their results are not applied). Answers the job; `409` when
/// it had already finished otherwise.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", operation_id = "cancelJob", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "Cancelled (or already)", body = JobRecord),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 409, description = "The job already finished otherwise", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    let job = job_id(&id)?;
    let tenant = caller.tenant.clone();
    let record = read(&state, &caller.tenant, job)
        .await?
        .ok_or_else(|| no_job(&id))?;
    match record.summary.status {
        JobStatus::Cancelled => return Ok(Json(record)),
        status if status.is_terminal() => {
            return Err(ApiError::Finished {
                what: Missing::Job,
                id: id.clone(),
                status: status.as_str(),
            });
        }
        _ => {}
    }
    let mut committed_signal = state
        .bus
        .client
        .subscribe(state.bus.subjects.notify(&tenant, job))
        .await
        .map_err(|e| ApiError::unavailable("NATS", e))?;
    state
        .cancels
        .cancel_job(&tenant, job)
        .await
        .map_err(|e| ApiError::unavailable("the cancels bucket", e))?;
    let input = Input::Cancel {
        at: now_millis(),
        reason: "cancelled by request".into(),
    };
    let applied = state
        .jobs
        .apply(&tenant, job, Start::default(), &input)
        .await
        .map_err(|e| ApiError::unavailable("the job-state bucket", e))?;
    // Only in the database: the state has expired from the bucket, so it is final.
    let Some(applied) = applied else {
        return Ok(Json(record));
    };
    let live = applied.transition.state;
    // Answer with the stored record when the persister commits it promptly.
    let stored = tokio::time::timeout(CANCEL_COMMIT_WAIT, committed_signal.next()).await;
    if stored.is_ok()
        && let Some(record) = committed(&state, &tenant, job).await?
    {
        return Ok(Json(record));
    }
    Ok(Json(JobRecord::from_live_state(&live)))
}

/// How long a cancel waits for the persister to store the cancelled state before answering
/// with the live one.
const CANCEL_COMMIT_WAIT: Duration = Duration::from_secs(5);

/// The job's record once its final state is committed.
async fn committed(
    state: &AppState,
    tenant: &Tenant,
    job: JobId,
) -> Result<Option<JobRecord>, ApiError> {
    let record = state
        .store
        .get_job(tenant, job)
        .await
        .map_err(store_error)?;
    Ok(record.filter(|r| r.summary.status.is_terminal()))
}

async fn current_status(
    state: &AppState,
    tenant: &Tenant,
    job: JobId,
) -> Result<JobStatus, ApiError> {
    Ok(read(state, tenant, job)
        .await?
        .map_or(JobStatus::Queued, |r| r.summary.status))
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::BadCursor => ApiError::BadRequest {
            message: "cursor: not a cursor this server issued".into(),
            param: Some("cursor".into()),
            code: "invalid_cursor",
        },
        e => ApiError::unavailable("the database", e),
    }
}

fn chrono_rfc3339(millis: i64) -> String {
    chorus_store::view::rfc3339(millis)
}
