//! The reads behind the HTTP edge: one job in full, and pages of a tenant's jobs.
//!
//! Every read is scoped by tenant: a job of another tenant reads as absent. Pages are ordered
//! newest first by `(created_at, id)` and continue from an opaque cursor, the hex of the last
//! row's creation time in milliseconds and its id, so a page never repeats or skips a job even
//! when new jobs arrive between requests.

use chorus_core::JobId;
use chorus_core::ids::Tenant;
use chorus_core::job::{JobStatus, StepKind, StepStatus};
use chrono::{DateTime, Utc};
use sea_orm::prelude::DateTimeUtc;
use sea_orm::sea_query::Expr;
use sea_orm::{
    AccessMode, ColumnTrait, DbBackend, DerivePartialModel, EntityTrait, ExprTrait, IsolationLevel,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde_json::Value;
use uuid::Uuid;

use crate::entity::{evaluations, jobs, steps};
use crate::lossless::{StoredJson, StoredText};
use crate::view::{
    AssertionRecord, ErrorRecord, EvaluationRecord, JobPage, JobRecord, JobSummary,
    StepErrorRecord, StepRecord, TargetRecord, UsageRecord,
};
use crate::{Store, StoreError};

/// The largest page [`Store::list_jobs`] returns.
pub const MAX_PAGE: u64 = 1_000;

impl Store {
    /// A job with its steps and evaluation, if it exists for this tenant.
    pub async fn get_job(
        &self,
        tenant: &Tenant,
        id: JobId,
    ) -> Result<Option<JobRecord>, StoreError> {
        // One snapshot across the three reads (SQLite transactions always are one).
        let postgres = self.db.get_database_backend() == DbBackend::Postgres;
        let txn = self
            .db
            .begin_with_config(
                postgres.then_some(IsolationLevel::RepeatableRead),
                postgres.then_some(AccessMode::ReadOnly),
            )
            .await?;
        let job = jobs::Entity::find_by_id(id.as_uuid())
            .filter(jobs::Column::Tenant.eq(tenant.as_str()))
            .one(&txn)
            .await?;
        let Some(job) = job else {
            txn.commit().await?;
            return Ok(None);
        };
        let steps = steps::Entity::find()
            .filter(steps::Column::JobId.eq(job.id))
            .order_by_asc(steps::Column::Idx)
            .all(&txn)
            .await?;
        let assertions = evaluations::Entity::find()
            .filter(evaluations::Column::JobId.eq(job.id))
            .order_by_asc(evaluations::Column::StepIdx)
            .order_by_asc(evaluations::Column::AssertionIdx)
            .all(&txn)
            .await?;
        txn.commit().await?;
        job_record(job, steps, assertions).map(Some)
    }

    /// A page of the tenant's jobs, newest first, optionally only those in `status`. `limit` is
    /// clamped to `1..=MAX_PAGE`.
    pub async fn list_jobs(
        &self,
        tenant: &Tenant,
        status: Option<JobStatus>,
        limit: u64,
        cursor: Option<&str>,
    ) -> Result<JobPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut query = jobs::Entity::find().filter(jobs::Column::Tenant.eq(tenant.as_str()));
        if let Some(status) = status {
            query = query.filter(jobs::Column::Status.eq(status.as_str()));
        }
        if let Some(cursor) = cursor {
            let (created_at, id) = decode_cursor(cursor)?;
            query = query.filter(
                Expr::tuple([
                    Expr::col(jobs::Column::CreatedAt),
                    Expr::col(jobs::Column::Id),
                ])
                .lt(Expr::tuple([Expr::val(created_at), Expr::val(id)])),
            );
        }
        let mut rows = query
            .order_by_desc(jobs::Column::CreatedAt)
            .order_by_desc(jobs::Column::Id)
            .limit(limit + 1)
            .into_partial_model::<SummaryRow>()
            .all(&self.db)
            .await?;
        let next_cursor = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|row| encode_cursor(row.created_at, row.id))
        } else {
            None
        };
        let data = rows
            .into_iter()
            .map(job_summary)
            .collect::<Result<_, _>>()?;
        Ok(JobPage { data, next_cursor })
    }
}

fn encode_cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    format!("{:016x}{}", created_at.timestamp_millis(), id.simple())
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), StoreError> {
    if cursor.len() != 48 || !cursor.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::BadCursor);
    }
    let (millis, id) = cursor.split_at(16);
    let millis = u64::from_str_radix(millis, 16).map_err(|_| StoreError::BadCursor)?;
    let created_at = DateTime::from_timestamp_millis(millis as i64).ok_or(StoreError::BadCursor)?;
    let id = Uuid::try_parse(id).map_err(|_| StoreError::BadCursor)?;
    Ok((created_at, id))
}

/// The columns a list shows: all but the spec and the result line, which may be large.
#[derive(DerivePartialModel)]
#[sea_orm(entity = "jobs::Entity")]
struct SummaryRow {
    id: Uuid,
    tenant: String,
    status: String,
    metadata: StoredJson,
    error_kind: Option<String>,
    error_message: Option<StoredText>,
    error_step: Option<i64>,
    score: Option<f64>,
    passed: Option<bool>,
    prompt_tokens: i64,
    completion_tokens: i64,
    created_at: DateTimeUtc,
    updated_at: DateTimeUtc,
    finished_at: Option<DateTimeUtc>,
    cost_usd: Option<f64>,
    batch_id: Option<StoredText>,
    custom_id: Option<StoredText>,
}

fn job_summary(row: SummaryRow) -> Result<JobSummary, StoreError> {
    let error = match (row.error_kind, row.error_message) {
        (None, None) => None,
        (kind, message) => Some(ErrorRecord {
            kind: kind.unwrap_or_default(),
            message: message.map(String::from).unwrap_or_default(),
            step: row
                .error_step
                .map(|s| number(s, "error step"))
                .transpose()?,
        }),
    };
    Ok(JobSummary {
        id: row.id.into(),
        tenant: Tenant::new(row.tenant).map_err(|source| StoreError::BadTenant { source })?,
        status: JobStatus::parse(&row.status).ok_or_else(|| StoreError::Unknown {
            what: "job status",
            value: row.status.clone(),
        })?,
        created_at: row.created_at,
        updated_at: row.updated_at,
        finished_at: row.finished_at,
        usage: usage(row.prompt_tokens, row.completion_tokens)?,
        cost_usd: row.cost_usd,
        score: row.score,
        passed: row.passed,
        error,
        metadata: row.metadata.into(),
        batch_id: row.batch_id.map(String::from),
        custom_id: row.custom_id.map(String::from),
    })
}

fn job_record(
    row: jobs::Model,
    steps: Vec<steps::Model>,
    assertions: Vec<evaluations::Model>,
) -> Result<JobRecord, StoreError> {
    let evaluation = match (row.score, row.passed) {
        (Some(score), Some(passed)) => Some(evaluation(
            row.spec.as_value(),
            &steps,
            &assertions,
            score,
            passed,
        )?),
        _ => None,
    };
    let summary = job_summary(SummaryRow {
        id: row.id,
        tenant: row.tenant,
        status: row.status,
        metadata: row.metadata,
        error_kind: row.error_kind,
        error_message: row.error_message,
        error_step: row.error_step,
        score: row.score,
        passed: row.passed,
        prompt_tokens: row.prompt_tokens,
        completion_tokens: row.completion_tokens,
        created_at: row.created_at,
        updated_at: row.updated_at,
        finished_at: row.finished_at,
        cost_usd: row.cost_usd,
        batch_id: row.batch_id,
        custom_id: row.custom_id,
    })?;
    Ok(JobRecord {
        summary,
        spec: row.spec.into(),
        steps: steps
            .into_iter()
            .map(step_record)
            .collect::<Result<_, _>>()?,
        evaluation,
        waiting: None,
    })
}

/// The job's evaluation: one target per step that carries a score, with its assertion rows.
fn evaluation(
    spec: &Value,
    steps: &[steps::Model],
    assertions: &[evaluations::Model],
    score: f64,
    passed: bool,
) -> Result<EvaluationRecord, StoreError> {
    let threshold = spec.pointer("/evaluate/threshold").and_then(Value::as_f64);
    let targets = steps
        .iter()
        .filter_map(|s| Some((s, s.score?, s.passed?)))
        .map(|(step, score, passed)| {
            let assertions = assertions
                .iter()
                .filter(|a| a.step_idx == step.idx)
                .map(|a| {
                    Ok(AssertionRecord {
                        index: number(a.assertion_idx, "assertion index")?,
                        kind: a.kind.clone(),
                        metric: a.metric.clone().map(String::from),
                        weight: a.weight,
                        passed: a.passed,
                        score: a.score,
                        reason: a.reason.clone().into(),
                        errored: a.errored,
                    })
                })
                .collect::<Result<_, StoreError>>()?;
            Ok(TargetRecord {
                step: number(step.idx, "step index")?,
                score,
                passed,
                threshold,
                assertions,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(EvaluationRecord {
        score,
        passed,
        targets,
    })
}

fn step_record(row: steps::Model) -> Result<StepRecord, StoreError> {
    let error = match (row.error_kind, row.error_message) {
        (None, None) => None,
        (kind, message) => Some(StepErrorRecord {
            kind: kind.unwrap_or_default(),
            message: message.map(String::from).unwrap_or_default(),
        }),
    };
    Ok(StepRecord {
        index: number(row.idx, "step index")?,
        kind: step_kind(&row.kind)?,
        persona: row.persona.map(String::from),
        route: row.route.into(),
        status: step_status(&row.status)?,
        output: row.output.map(String::from),
        usage: usage(row.prompt_tokens, row.completion_tokens)?,
        latency_ms: number(row.latency_ms, "latency")?,
        attempts: number(row.attempts, "attempts")?,
        finish_reason: row.finish_reason.map(String::from),
        error,
        started_at: row.started_at,
        finished_at: row.finished_at,
        answered_by: row.answered_by.map(String::from),
        cost_usd: row.cost_usd,
        calls: row
            .calls
            .map(|calls| serde_json::from_value(calls.into()))
            .transpose()
            .map_err(|source| StoreError::Json {
                what: "step calls",
                source,
            })?
            .unwrap_or_default(),
        tool_calls: row.tool_calls.map(Value::from),
        replays: number(row.replays, "replays")?,
    })
}

fn usage(prompt_tokens: i64, completion_tokens: i64) -> Result<UsageRecord, StoreError> {
    Ok(UsageRecord::new(
        number(prompt_tokens, "prompt tokens")?,
        number(completion_tokens, "completion tokens")?,
    ))
}

fn number<T: TryFrom<i64>>(value: i64, what: &'static str) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| StoreError::OutOfRange {
        what,
        value: value.into(),
    })
}

fn step_status(s: &str) -> Result<StepStatus, StoreError> {
    StepStatus::parse(s).ok_or_else(|| StoreError::Unknown {
        what: "step status",
        value: s.to_owned(),
    })
}

fn step_kind(s: &str) -> Result<StepKind, StoreError> {
    StepKind::parse(s).ok_or_else(|| StoreError::Unknown {
        what: "step kind",
        value: s.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let at = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let id = Uuid::now_v7();
        let cursor = encode_cursor(at, id);
        assert_eq!(decode_cursor(&cursor).unwrap(), (at, id));
        let long = format!("{cursor}0");
        let signed = format!("-{}", &cursor[1..]);
        for bad in ["", "zz", &cursor[..47], &long, &signed, &"é".repeat(24)] {
            assert!(
                matches!(decode_cursor(bad), Err(StoreError::BadCursor)),
                "{bad:?}"
            );
        }
    }
}
