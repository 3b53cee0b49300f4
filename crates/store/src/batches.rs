//! Batches (`/v1/batches`) in the shape of the OpenAI Batch API: creating them, their status,
//! their progress, and their output and error files.
//!
//! A batch's progress is never stored on its row: the request counts are read from its jobs
//! (`jobs.batch_id`, and `result_ok` once a job is terminal), so they cannot disagree with the
//! jobs. [`Store::refresh_batch`] finalizes a batch whose jobs are all terminal; every status
//! change is an `UPDATE … WHERE status IN (<the statuses it may follow>)`, so concurrent callers
//! finalize a batch once, and a finished batch never changes again.
//!
//! A batch's output and error files are `<batch id>-output` and `<batch id>-errors`. They exist
//! once the batch is finished and has such lines, and are assembled from the result lines its
//! jobs carry ([`crate::results`]), in input-file order. Counts and files follow the jobs even
//! after that: a job a DLQ replay reopens leaves both until it is terminal again.

use std::collections::HashMap;

use chorus_core::batch::Endpoint;
use chorus_core::batch::file::FileErrors;
use chorus_core::ids::{Tenant, UnixMillis};
use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::prelude::DateTimeUtc;
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, FromQueryResult,
    IntoActiveModel, QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::entity::{batches, jobs};
use crate::lossless::{StoredJson, StoredText};
use crate::{Store, StoreError};

/// The largest page [`Store::list_batches`] returns (OpenAI's limit).
pub const MAX_BATCH_PAGE: u64 = 100;

/// OpenAI's batch statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 8] = [
        Self::Validating,
        Self::Failed,
        Self::InProgress,
        Self::Finalizing,
        Self::Completed,
        Self::Expired,
        Self::Cancelling,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validating => "validating",
            Self::Failed => "failed",
            Self::InProgress => "in_progress",
            Self::Finalizing => "finalizing",
            Self::Completed => "completed",
            Self::Expired => "expired",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// A finished batch: its status never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Completed | Self::Expired | Self::Cancelled
        )
    }

    /// The statuses a batch may reach this one from.
    fn follows(self) -> &'static [BatchStatus] {
        use BatchStatus::*;
        match self {
            Validating => &[],
            InProgress => &[Validating],
            Finalizing => &[InProgress],
            Completed | Expired => &[InProgress, Finalizing],
            Failed | Cancelling => &[Validating, InProgress, Finalizing],
            Cancelled => &[Validating, InProgress, Finalizing, Cancelling],
        }
    }

    /// The column recording when a batch reached this status.
    fn reached_at(self) -> Option<batches::Column> {
        match self {
            Self::Validating => None,
            Self::InProgress => Some(batches::Column::InProgressAt),
            Self::Finalizing => Some(batches::Column::FinalizingAt),
            Self::Completed => Some(batches::Column::CompletedAt),
            Self::Failed => Some(batches::Column::FailedAt),
            Self::Expired => Some(batches::Column::ExpiredAt),
            Self::Cancelling => Some(batches::Column::CancellingAt),
            Self::Cancelled => Some(batches::Column::CancelledAt),
        }
    }
}

/// A batch to create.
#[derive(Clone, Debug)]
pub struct NewBatch {
    pub input_file_id: String,
    /// The endpoint the batch was created for; each line still names its own.
    pub endpoint: Endpoint,
    pub completion_window: String,
    pub metadata: Option<Value>,
    /// `in_progress` for an accepted input file, `failed` (with `errors`) for a refused one.
    pub status: BatchStatus,
    /// Requests in the input file.
    pub total: u64,
    pub errors: Option<FileErrors>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A batch as OpenAI's API shows it (timestamps in Unix seconds, null where unset).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BatchObject {
    pub id: String,
    pub object: &'static str,
    pub endpoint: String,
    /// Why the input file was refused: `{"object": "list", "data": [{"code", "message",
    /// "param", "line"}]}`.
    pub errors: Option<Value>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: BatchStatus,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    pub metadata: Option<Value>,
}

/// How far a batch got: `completed` lines are in its output file, `failed` ones in its error
/// file; `pending` (not part of the JSON) are not finished yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
    #[serde(skip)]
    pub pending: u64,
}

/// A page of batches, newest first, in OpenAI's list shape; pass `last_id` as `after` for the
/// next page.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BatchList {
    pub object: &'static str,
    pub data: Vec<BatchObject>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

const OUTPUT_SUFFIX: &str = "-output";
const ERRORS_SUFFIX: &str = "-errors";

/// The batch a result file id names, and whether it is the output file (`true`) or the error
/// file (`false`): `batch_1-output` → `("batch_1", true)`.
pub fn result_file(file_id: &str) -> Option<(&str, bool)> {
    file_id
        .strip_suffix(OUTPUT_SUFFIX)
        .map(|batch| (batch, true))
        .or_else(|| file_id.strip_suffix(ERRORS_SUFFIX).map(|b| (b, false)))
        .filter(|(batch, _)| !batch.is_empty())
}

impl Store {
    /// Creates a batch for `tenant` under a new id, `batch_<uuid>`; the timestamp of its
    /// initial status is its creation time. The caller checked the input file.
    #[tracing::instrument(name = "store.create_batch", skip_all, fields(total = batch.total))]
    pub async fn create_batch(
        &self,
        tenant: &Tenant,
        batch: NewBatch,
    ) -> Result<BatchObject, StoreError> {
        let created_at = batch.created_at.trunc_subsecs(3);
        let at = |status: BatchStatus| (batch.status == status).then_some(created_at);
        let row = batches::Model {
            id: format!("batch_{}", Uuid::now_v7().simple()).into(),
            tenant: tenant.to_string(),
            input_file_id: batch.input_file_id.into(),
            endpoint: batch.endpoint.as_str().to_owned(),
            completion_window: batch.completion_window,
            metadata: batch.metadata.map(StoredJson::from),
            status: batch.status.as_str().to_owned(),
            total: i64::try_from(batch.total).unwrap_or(i64::MAX),
            errors: batch.errors.as_ref().map(|e| errors_list(e).into()),
            created_at,
            in_progress_at: at(BatchStatus::InProgress),
            expires_at: batch.expires_at.map(|t| t.trunc_subsecs(3)),
            finalizing_at: at(BatchStatus::Finalizing),
            completed_at: at(BatchStatus::Completed),
            failed_at: at(BatchStatus::Failed),
            expired_at: at(BatchStatus::Expired),
            cancelling_at: at(BatchStatus::Cancelling),
            cancelled_at: at(BatchStatus::Cancelled),
        };
        let row = row.into_active_model().insert(&self.db).await?;
        batch_object(row, Tally::default())
    }

    /// A batch, if it exists for this tenant, with its request counts as they are now.
    pub async fn get_batch(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Result<Option<BatchObject>, StoreError> {
        let Some(row) = find_batch(&self.db, tenant, id).await? else {
            return Ok(None);
        };
        let tally = tallies(&self.db, tenant, &[id]).await?;
        batch_object(row, tally.get(id).copied().unwrap_or_default()).map(Some)
    }

    /// A page of the tenant's batches, newest first, continuing after the batch `after`.
    /// `limit` is clamped to `1..=MAX_BATCH_PAGE`; an `after` that names no batch of the tenant
    /// is [`StoreError::BadCursor`].
    pub async fn list_batches(
        &self,
        tenant: &Tenant,
        limit: u64,
        after: Option<&str>,
    ) -> Result<BatchList, StoreError> {
        let limit = limit.clamp(1, MAX_BATCH_PAGE);
        let mut query = batches::Entity::find().filter(batches::Column::Tenant.eq(tenant.as_str()));
        if let Some(after) = after {
            let created_at = batches::Entity::find_by_id(after)
                .filter(batches::Column::Tenant.eq(tenant.as_str()))
                .select_only()
                .column(batches::Column::CreatedAt)
                .into_tuple::<DateTimeUtc>()
                .one(&self.db)
                .await?
                .ok_or(StoreError::BadCursor)?;
            query = query.filter(
                Expr::tuple([
                    Expr::col(batches::Column::CreatedAt),
                    Expr::col(batches::Column::Id),
                ])
                .lt(Expr::tuple([
                    Expr::val(created_at),
                    Expr::val(StoredText::from(after)),
                ])),
            );
        }
        let mut rows = query
            .order_by_desc(batches::Column::CreatedAt)
            .order_by_desc(batches::Column::Id)
            .limit(limit + 1)
            .all(&self.db)
            .await?;
        let has_more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let tallies = tallies(&self.db, tenant, &ids).await?;
        let data = rows
            .into_iter()
            .map(|row| {
                let tally = tallies.get(row.id.as_str()).copied().unwrap_or_default();
                batch_object(row, tally)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BatchList {
            object: "list",
            first_id: data.first().map(|b| b.id.clone()),
            last_id: data.last().map(|b| b.id.clone()),
            has_more,
            data,
        })
    }

    /// Moves a batch to `status` and records `at` as the time it got there — only from a status
    /// it may follow (`cancelling` from `in_progress`, `cancelled` from `cancelling`, …); a
    /// finished batch never changes. Returns the batch as it is afterwards, if it exists.
    #[tracing::instrument(name = "store.set_batch_status", skip_all, fields(batch = id, status = status.as_str()))]
    pub async fn set_batch_status(
        &self,
        tenant: &Tenant,
        id: &str,
        status: BatchStatus,
        at: UnixMillis,
    ) -> Result<Option<BatchObject>, StoreError> {
        let at = DateTime::from_timestamp_millis(at).ok_or(StoreError::OutOfRange {
            what: "timestamp (ms)",
            value: at.into(),
        })?;
        update_status(&self.db, tenant, id, status.follows(), status, at).await?;
        self.get_batch(tenant, id).await
    }

    /// A batch's request counts, if it exists for this tenant.
    pub async fn batch_counts(
        &self,
        tenant: &Tenant,
        batch: &str,
    ) -> Result<Option<RequestCounts>, StoreError> {
        Ok(self
            .get_batch(tenant, batch)
            .await?
            .map(|batch| batch.request_counts))
    }

    /// A batch with its counts as they are now, finalized first if every job is terminal:
    /// `in_progress` (or `finalizing`) becomes `completed`, `cancelling` becomes `cancelled`,
    /// at the time its last job finished. Idempotent, and safe to call from many pods at once.
    #[tracing::instrument(name = "store.refresh_batch", skip_all, fields(batch = id))]
    pub async fn refresh_batch(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Result<Option<BatchObject>, StoreError> {
        let Some(row) = find_batch(&self.db, tenant, id).await? else {
            return Ok(None);
        };
        let tally = tallies(&self.db, tenant, &[id])
            .await?
            .get(id)
            .copied()
            .unwrap_or_default();
        let status = status(&row.status)?;
        let finished = counts(&row, tally)?.pending == 0;
        let next = match status {
            BatchStatus::InProgress | BatchStatus::Finalizing => Some(BatchStatus::Completed),
            BatchStatus::Cancelling => Some(BatchStatus::Cancelled),
            _ => None,
        };
        let row = match next {
            Some(next) if finished => {
                let at = tally.last_finished.unwrap_or_else(Utc::now);
                update_status(&self.db, tenant, id, &[status], next, at).await?;
                find_batch(&self.db, tenant, id).await?.unwrap_or(row)
            }
            _ => row,
        };
        batch_object(row, tally).map(Some)
    }

    /// A batch's output file (`ok`) or error file: the result lines of its terminal jobs in
    /// input-file order, each ending in a newline. `None` when the batch does not exist for
    /// this tenant.
    pub async fn batch_output(
        &self,
        tenant: &Tenant,
        batch: &str,
        ok: bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if find_batch(&self.db, tenant, batch).await?.is_none() {
            return Ok(None);
        }
        let lines = jobs::Entity::find()
            .select_only()
            .column(jobs::Column::ResultLine)
            .filter(jobs::Column::Tenant.eq(tenant.as_str()))
            .filter(jobs::Column::BatchId.eq(StoredText::from(batch)))
            .filter(jobs::Column::ResultOk.eq(ok))
            .order_by_asc(jobs::Column::Line)
            .into_tuple::<Option<StoredText>>()
            .all(&self.db)
            .await?;
        let size = lines.iter().flatten().map(|l| l.as_str().len() + 1).sum();
        let mut file = Vec::with_capacity(size);
        for line in lines.iter().flatten() {
            file.extend_from_slice(line.as_str().as_bytes());
            file.push(b'\n');
        }
        Ok(Some(file))
    }
}

async fn find_batch(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    id: &str,
) -> Result<Option<batches::Model>, StoreError> {
    Ok(batches::Entity::find_by_id(id)
        .filter(batches::Column::Tenant.eq(tenant.as_str()))
        .one(db)
        .await?)
}

/// `UPDATE batches SET status = to, <to>_at = at WHERE … AND status IN (from)`; a batch that
/// completes without having been `finalizing` gets its `finalizing_at` too.
async fn update_status(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    id: &str,
    from: &[BatchStatus],
    to: BatchStatus,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    if from.is_empty() {
        return Ok(());
    }
    let at = at.trunc_subsecs(3);
    let mut update = batches::Entity::update_many()
        .col_expr(batches::Column::Status, Expr::val(to.as_str()))
        .filter(batches::Column::Id.eq(StoredText::from(id)))
        .filter(batches::Column::Tenant.eq(tenant.as_str()))
        .filter(batches::Column::Status.is_in(from.iter().map(|s| s.as_str())));
    if let Some(column) = to.reached_at() {
        update = update.col_expr(column, Expr::val(at));
    }
    if to == BatchStatus::Completed {
        update = update.col_expr(
            batches::Column::FinalizingAt,
            Func::coalesce([Expr::col(batches::Column::FinalizingAt), Expr::val(at)]).into(),
        );
    }
    update.exec(db).await?;
    Ok(())
}

/// A batch's terminal jobs: how many in each file, and when the last one finished.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    completed: u64,
    failed: u64,
    last_finished: Option<DateTime<Utc>>,
}

/// Terminal jobs of one batch with one `result_ok`.
#[derive(FromQueryResult)]
struct TallyRow {
    batch_id: Option<StoredText>,
    result_ok: Option<bool>,
    jobs: i64,
    last_finished: Option<DateTimeUtc>,
}

/// The tallies of `batches` in one grouped query over their jobs.
async fn tallies(
    db: &impl ConnectionTrait,
    tenant: &Tenant,
    batches: &[&str],
) -> Result<HashMap<String, Tally>, StoreError> {
    if batches.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = jobs::Entity::find()
        .select_only()
        .column(jobs::Column::BatchId)
        .column(jobs::Column::ResultOk)
        .column_as(Expr::col(jobs::Column::Id).count(), "jobs")
        .column_as(Expr::col(jobs::Column::FinishedAt).max(), "last_finished")
        .filter(jobs::Column::Tenant.eq(tenant.as_str()))
        .filter(jobs::Column::BatchId.is_in(batches.iter().map(|b| StoredText::from(*b))))
        .filter(jobs::Column::ResultOk.is_not_null())
        .group_by(jobs::Column::BatchId)
        .group_by(jobs::Column::ResultOk)
        .into_model::<TallyRow>()
        .all(db)
        .await?;
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    for row in rows {
        let (Some(batch), Some(ok)) = (row.batch_id, row.result_ok) else {
            continue;
        };
        let jobs = u64::try_from(row.jobs).unwrap_or_default();
        let tally = tallies.entry(batch.into_string()).or_default();
        if ok {
            tally.completed += jobs;
        } else {
            tally.failed += jobs;
        }
        tally.last_finished = Ord::max(tally.last_finished, row.last_finished);
    }
    Ok(tallies)
}

fn status(s: &str) -> Result<BatchStatus, StoreError> {
    BatchStatus::parse(s).ok_or_else(|| StoreError::Unknown {
        what: "batch status",
        value: s.to_owned(),
    })
}

fn counts(row: &batches::Model, tally: Tally) -> Result<RequestCounts, StoreError> {
    let total = u64::try_from(row.total).map_err(|_| StoreError::OutOfRange {
        what: "batch total",
        value: row.total.into(),
    })?;
    Ok(RequestCounts {
        total,
        completed: tally.completed,
        failed: tally.failed,
        pending: total.saturating_sub(tally.completed + tally.failed),
    })
}

fn batch_object(row: batches::Model, tally: Tally) -> Result<BatchObject, StoreError> {
    let status = status(&row.status)?;
    let request_counts = counts(&row, tally)?;
    let file = |lines: u64, suffix: &str| {
        (status.is_terminal() && lines > 0).then(|| format!("{}{suffix}", row.id.as_str()))
    };
    let secs = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp());
    Ok(BatchObject {
        object: "batch",
        endpoint: row.endpoint,
        errors: row.errors.map(Value::from),
        input_file_id: row.input_file_id.into(),
        completion_window: row.completion_window,
        status,
        output_file_id: file(request_counts.completed, OUTPUT_SUFFIX),
        error_file_id: file(request_counts.failed, ERRORS_SUFFIX),
        created_at: row.created_at.timestamp(),
        in_progress_at: secs(row.in_progress_at),
        expires_at: secs(row.expires_at),
        finalizing_at: secs(row.finalizing_at),
        completed_at: secs(row.completed_at),
        failed_at: secs(row.failed_at),
        expired_at: secs(row.expired_at),
        cancelling_at: secs(row.cancelling_at),
        cancelled_at: secs(row.cancelled_at),
        request_counts,
        metadata: row.metadata.map(Value::from),
        id: row.id.into(),
    })
}

/// A refused file's problems as OpenAI's `errors` list; problems not listed are summed up in a
/// last entry.
fn errors_list(errors: &FileErrors) -> Value {
    let mut data: Vec<Value> = errors
        .errors
        .iter()
        .map(|e| json!({"code": e.code, "message": e.message, "param": e.param, "line": e.line}))
        .collect();
    if errors.omitted > 0 {
        data.push(json!({
            "code": "too_many_errors",
            "message": format!("{} more problems not listed", errors.omitted),
            "param": null,
            "line": null,
        }));
    }
    json!({"object": "list", "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_file_ids_name_their_batch() {
        assert_eq!(result_file("batch_1-output"), Some(("batch_1", true)));
        assert_eq!(result_file("batch_1-errors"), Some(("batch_1", false)));
        for other in ["file-abc", "-output", "batch_1-error", ""] {
            assert_eq!(result_file(other), None, "{other}");
        }
    }

    #[test]
    fn statuses_round_trip_and_finished_ones_never_change() {
        for status in BatchStatus::ALL {
            assert_eq!(BatchStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                Value::String(status.as_str().into())
            );
            for next in BatchStatus::ALL {
                if next.follows().contains(&status) {
                    assert!(!status.is_terminal(), "{status:?} -> {next:?}");
                }
            }
        }
    }
}
