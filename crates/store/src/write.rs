//! Batch writes: job snapshots in, one transaction per batch.
//!
//! The persister reads the job-state bucket's stream, so every input is a complete [`JobState`]
//! with a monotonically increasing `version`. A batch is first coalesced (per job only its
//! highest-version snapshot), then mirrored as multi-row `INSERT … ON CONFLICT` upserts into
//! `jobs`, `steps` and `evaluations`. Every row carries the version of the snapshot it came from
//! and is replaced only by a row with a higher one, so replays, duplicates and any interleaving
//! of batches end in the rows of the newest snapshot seen.
//!
//! A snapshot the database refuses ([`crate::StoreErrorKind::Rejected`]) can still be recorded with
//! [`Store::write_rejected`]: a stand-in job row, failed with `storage_rejected`. The one
//! exception to "higher versions only": a stand-in is also replaced by a row of its own version,
//! so replaying the refused snapshot once its cause is fixed stores it in full, while ordinary
//! duplicates (whose stored row is no stand-in) still change nothing.
//!
//! A job from a batch also carries its batch line (`batch_id`, `custom_id`, `line`) and, once
//! terminal, its line of the batch's output or error file ([`crate::results`]), built here from
//! the same snapshot so the file always agrees with the job.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use chorus_core::job::{JobError, JobState, JobStatus, STORAGE_REJECTED, StepState};
use chorus_core::messages::TargetEvaluation;
use chorus_core::spec::JobSpec;
use chorus_core::{JobId, Tenant};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, IntoIden, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, IdenStatic, IntoActiveModel, Iterable,
    ModelTrait, PrimaryKeyToColumn, QuerySelect,
};
use uuid::Uuid;

use crate::entity::{evaluations, jobs, steps};
use crate::lossless::{StoredJson, StoredText};
use crate::results::result_line;
use crate::{Store, StoreError};

/// Stays under SQLite's limit of 32,766 bound parameters per statement (Postgres allows 65,535).
const MAX_PARAMS: usize = 32_000;

/// A job whose terminal snapshot is durably stored by this batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub tenant: Tenant,
    pub job_id: JobId,
    pub status: JobStatus,
}

impl Store {
    /// Writes a batch of snapshots in one transaction and reports the jobs whose terminal
    /// snapshot it holds (also when the database already had it: a replayed batch reports the
    /// same jobs again). A refused batch stores nothing; [`StoreError::kind`] says whether it
    /// was for its data's sake.
    #[tracing::instrument(name = "store.write_batch", skip_all, fields(snapshots = states.len()))]
    pub async fn write_batch(&self, states: Vec<JobState>) -> Result<Vec<Committed>, StoreError> {
        let latest = latest_per_job(states);
        #[cfg(feature = "faults")]
        if let Some(key) = self.reject_metadata.as_deref()
            && let Some(state) = latest.values().find(|s| s.spec.metadata.contains_key(key))
        {
            return Err(StoreError::InjectedFault {
                job: state.id,
                key: key.to_owned(),
            });
        }
        let committed = latest
            .values()
            .filter(|s| s.status.is_terminal())
            .map(|s| Committed {
                tenant: s.tenant.clone(),
                job_id: s.id,
                status: s.status,
            })
            .collect();
        if latest.is_empty() {
            return Ok(committed);
        }
        let mut rows = Rows::default();
        for state in latest.into_values() {
            rows.add(state)?;
        }
        let txn = self.begin_write().await?;
        upsert(&txn, rows.jobs, job_replaced()).await?;
        upsert(
            &txn,
            rows.steps.into_values(),
            newer(steps::Column::Version),
        )
        .await?;
        upsert(
            &txn,
            rows.evaluations.into_values(),
            newer(evaluations::Column::Version),
        )
        .await?;
        txn.commit().await?;
        Ok(committed)
    }

    /// Stores `state`'s job as failed because its snapshot was refused (kind `storage_rejected`,
    /// `reason` as the message), with only what can always be stored: ids, tenant, status,
    /// timestamps, its batch line (batch_id, custom_id, line) and, for a batch line, an error
    /// result line (so batch counts and error files add up). Returns the job as committed: a
    /// row of a newer snapshot is kept, and so is a full row of this same snapshot. A later full
    /// write of the same snapshot (an operator fixed the cause and replayed it) replaces this
    /// row. Rows of the job's steps and evaluation from earlier snapshots are left as they were.
    #[tracing::instrument(name = "store.write_rejected", skip_all, fields(job = %state.id))]
    pub async fn write_rejected(
        &self,
        state: &JobState,
        reason: &str,
    ) -> Result<Committed, StoreError> {
        let mut rows = Rows::default();
        rows.add(stand_in(state, reason))?;
        let txn = self.begin_write().await?;
        upsert(&txn, rows.jobs, job_replaced()).await?;
        let status = jobs::Entity::find_by_id(state.id.as_uuid())
            .select_only()
            .column(jobs::Column::Status)
            .into_tuple::<String>()
            .one(&txn)
            .await?
            .unwrap_or_default();
        txn.commit().await?;
        Ok(Committed {
            tenant: state.tenant.clone(),
            job_id: state.id,
            status: JobStatus::parse(&status).ok_or(StoreError::Unknown {
                what: "job status",
                value: status,
            })?,
        })
    }
}

/// What a refused snapshot is stored as: its job, failed with `storage_rejected`, without the
/// spec, steps and evaluation the database refused.
fn stand_in(state: &JobState, reason: &str) -> JobState {
    JobState {
        id: state.id,
        tenant: state.tenant.clone(),
        spec: JobSpec::default(),
        status: JobStatus::Failed,
        version: state.version,
        steps: Vec::new(),
        evaluation: None,
        error: Some(JobError {
            step: None,
            kind: STORAGE_REJECTED.into(),
            message: reason.into(),
        }),
        created_at: state.created_at,
        updated_at: state.updated_at,
        finished_at: Some(state.finished_at.unwrap_or(state.updated_at)),
        trace: None,
        origin: state.origin.clone(),
        stream: false,
        band: state.band,
        key: state.key.clone(),
    }
}

/// Per job, the snapshot with the highest version.
fn latest_per_job(states: Vec<JobState>) -> BTreeMap<JobId, JobState> {
    let mut latest: BTreeMap<JobId, JobState> = BTreeMap::new();
    for state in states {
        match latest.entry(state.id) {
            Entry::Vacant(slot) => {
                slot.insert(state);
            }
            Entry::Occupied(mut slot) if slot.get().version < state.version => {
                slot.insert(state);
            }
            Entry::Occupied(_) => {}
        }
    }
    latest
}

/// The rows of one batch. Steps and assertions are keyed by primary key because one statement
/// must not touch a row twice (Postgres refuses), even if a snapshot repeated an index.
#[derive(Default)]
struct Rows {
    jobs: Vec<jobs::Model>,
    steps: BTreeMap<(Uuid, i64), steps::Model>,
    evaluations: BTreeMap<(Uuid, i64, i64), evaluations::Model>,
}

impl Rows {
    fn add(&mut self, state: JobState) -> Result<(), StoreError> {
        let version = int(state.version);
        let targets = state
            .evaluation
            .as_ref()
            .map_or(&[][..], |e| &e.targets[..]);
        for step in &state.steps {
            let target = targets.iter().find(|t| t.step == step.index);
            let row = step_row(state.id, version, step, target)?;
            self.steps.insert((row.job_id, row.idx), row);
        }
        for row in assertion_rows(state.id, targets, version) {
            self.evaluations
                .insert((row.job_id, row.step_idx, row.assertion_idx), row);
        }
        let usage = state.usage();
        let cost_usd = state.cost_usd();
        let result = result_line(&state);
        let origin = state.origin.as_ref();
        self.jobs.push(jobs::Model {
            id: state.id.as_uuid(),
            tenant: state.tenant.to_string(),
            status: state.status.as_str().to_owned(),
            version,
            spec: serde_json::to_value(&state.spec)
                .map_err(|source| StoreError::Json {
                    what: "job spec",
                    source,
                })?
                .into(),
            metadata: serde_json::Value::Object(state.spec.metadata).into(),
            error_kind: state.error.as_ref().map(|e| e.kind.clone()),
            error_message: state.error.as_ref().map(|e| e.message.as_str().into()),
            error_step: state.error.as_ref().and_then(|e| e.step).map(i64::from),
            score: state.evaluation.as_ref().map(|e| e.score),
            passed: state.evaluation.as_ref().map(|e| e.passed),
            prompt_tokens: usage.prompt_tokens.into(),
            completion_tokens: usage.completion_tokens.into(),
            created_at: timestamp(state.created_at)?,
            updated_at: timestamp(state.updated_at)?,
            finished_at: state.finished_at.map(timestamp).transpose()?,
            cost_usd,
            batch_id: origin.map(|o| o.batch.as_str().into()),
            custom_id: origin.map(|o| o.custom_id.as_str().into()),
            line: origin.map(|o| int(o.line)),
            result_ok: result.as_ref().map(|r| r.ok),
            result_line: result.map(|r| r.json.into()),
            key_id: state.key,
        });
        Ok(())
    }
}

fn step_row(
    job: JobId,
    version: i64,
    step: &StepState,
    target: Option<&TargetEvaluation>,
) -> Result<steps::Model, StoreError> {
    let output = step.output.as_ref();
    Ok(steps::Model {
        job_id: job.as_uuid(),
        idx: step.index.into(),
        kind: step.kind.as_str().to_owned(),
        persona: step.persona.as_deref().map(StoredText::from),
        route: step.route.as_str().into(),
        status: step.status.as_str().to_owned(),
        version,
        output: output.map(|o| o.text.as_str().into()),
        prompt_tokens: output.map_or(0, |o| o.usage.prompt_tokens.into()),
        completion_tokens: output.map_or(0, |o| o.usage.completion_tokens.into()),
        latency_ms: output.map_or(0, |o| int(o.latency_ms)),
        finish_reason: output.and_then(|o| o.finish_reason.as_deref().map(StoredText::from)),
        attempts: step.attempts.into(),
        error_kind: step.error.as_ref().map(|e| e.kind.clone()),
        error_message: step.error.as_ref().map(|e| e.message.as_str().into()),
        score: target.map(|t| t.score),
        passed: target.map(|t| t.passed),
        started_at: step.started_at.map(timestamp).transpose()?,
        finished_at: step.finished_at.map(timestamp).transpose()?,
        answered_by: output
            .map(|o| o.route.as_str())
            .filter(|r| !r.is_empty())
            .map(StoredText::from),
        cost_usd: output.and_then(|o| o.cost_usd),
        calls: match step.calls.as_slice() {
            [] => None,
            calls => Some(
                serde_json::to_value(calls)
                    .map_err(|source| StoreError::Json {
                        what: "step calls",
                        source,
                    })?
                    .into(),
            ),
        },
        tool_calls: output
            .and_then(|o| o.tool_calls.clone())
            .map(StoredJson::from),
        replays: step.replays.into(),
    })
}

fn assertion_rows(
    job: JobId,
    targets: &[TargetEvaluation],
    version: i64,
) -> impl Iterator<Item = evaluations::Model> + '_ {
    targets.iter().flat_map(move |t| {
        t.assertions.iter().map(move |a| evaluations::Model {
            job_id: job.as_uuid(),
            step_idx: t.step.into(),
            assertion_idx: a.index.into(),
            kind: a.kind.clone(),
            metric: a.metric.as_deref().map(StoredText::from),
            weight: a.weight,
            passed: a.passed,
            score: a.score,
            reason: a.reason.as_str().into(),
            errored: a.errored,
            version,
        })
    })
}

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn timestamp(millis: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis).ok_or(StoreError::OutOfRange {
        what: "timestamp (ms)",
        value: millis.into(),
    })
}

/// `<table>.version < excluded.version`: the proposed row is from a newer snapshot.
fn newer<C>(version: C) -> Expr
where
    C: ColumnTrait,
    C::EntityName: EntityTrait<Column = C>,
{
    Expr::col((C::EntityName::default(), version)).lt(excluded(version))
}

/// When a job row is replaced: by a newer snapshot's row, or by its own snapshot's when the
/// stored row is a `storage_rejected` stand-in ([`Store::write_rejected`]).
fn job_replaced() -> Expr {
    let stored = |column: jobs::Column| Expr::col((jobs::Entity, column));
    newer(jobs::Column::Version).or(stored(jobs::Column::Version)
        .eq(excluded(jobs::Column::Version))
        .and(stored(jobs::Column::ErrorKind).eq(STORAGE_REJECTED)))
}

/// Multi-row upserts of `rows`, chunked to stay under the bind-parameter limit. A stored row is
/// replaced (every column but the key) only when `replace_when` holds:
/// `ON CONFLICT (<key>) DO UPDATE SET … WHERE <replace_when>`.
async fn upsert<M>(
    db: &impl ConnectionTrait,
    rows: impl IntoIterator<Item = M>,
    replace_when: Expr,
) -> Result<(), StoreError>
where
    M: ModelTrait + IntoActiveModel<<M::Entity as EntityTrait>::ActiveModel>,
{
    type Column<M> = <<M as ModelTrait>::Entity as EntityTrait>::Column;
    let key: Vec<Column<M>> = <M::Entity as EntityTrait>::PrimaryKey::iter()
        .map(|k| k.into_column())
        .collect();
    let is_key = |c: &Column<M>| key.iter().any(|k| k.as_str() == c.as_str());
    let mut on_conflict = OnConflict::columns(key.clone());
    on_conflict
        .update_columns(Column::<M>::iter().filter(|c| !is_key(c)))
        .action_and_where(replace_when);

    let per_statement = MAX_PARAMS / Column::<M>::iter().count();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        M::Entity::insert_many(
            rows.by_ref()
                .take(per_statement)
                .map(|r| r.into_active_model()),
        )
        .on_conflict(on_conflict.clone())
        .exec_without_returning(db)
        .await?;
    }
    Ok(())
}

/// `excluded.<col>`: the value the conflicting insert proposed.
fn excluded(col: impl IntoIden) -> Expr {
    Expr::col((Alias::new("excluded"), col))
}
