//! Usage over a time window (`/v1/usage`, `/v1/admin/usage`): steps, tokens and cost per day,
//! API key, route or tenant, in one grouped query over `steps` joined to their jobs.
//!
//! A step counts in the window it finished in. A succeeded step counts with its tokens and its
//! cost; one whose route has no price adds no cost and is counted as unpriced instead, so a
//! total is never silently short. A failed step counts as failed and adds nothing else.
//! Steps still running have not finished and are not counted yet.
//!
//! The day is the UTC date of `steps.finished_at`, computed by the database (the one expression
//! that differs between SQLite and Postgres). Groups are few, so the rows are sorted here, by
//! group, the same way on both backends. Grouping by model is the edge's: it knows which model
//! each route calls, and sums the rows of the routes that share one.

use chorus_core::ids::Tenant;
use chorus_core::job::StepStatus;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, BinOper, Expr, Func, Query};
use sea_orm::{DbBackend, ExprTrait, FromQueryResult};

use crate::entity::{jobs, steps};
use crate::lossless::StoredText;
use crate::{Store, StoreError};

/// What [`Store::usage`] groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageGroup {
    /// The UTC date the step finished, `YYYY-MM-DD`.
    Day,
    /// The id of the API key that submitted the job (none: a JetStream submitter, or
    /// authentication off).
    Key,
    /// The route that answered (a fallback, when one did), else the step's own route.
    Route,
    Tenant,
}

/// The usage of one group (or of several added up, [`UsageRow::add`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageRow {
    /// The group's day, key id, route or tenant; None for jobs submitted without a key.
    pub group: Option<String>,
    /// Succeeded steps (calls answered).
    pub steps: u64,
    pub failed_steps: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The cost of the priced steps, in US dollars.
    pub cost_usd: f64,
    /// Succeeded steps on routes without a price: their cost is not in `cost_usd`.
    pub unpriced_steps: u64,
}

impl UsageRow {
    /// Adds `other`'s figures to this row's (its group stays).
    pub fn add(&mut self, other: &UsageRow) {
        self.steps += other.steps;
        self.failed_steps += other.failed_steps;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cost_usd += other.cost_usd;
        self.unpriced_steps += other.unpriced_steps;
    }
}

/// One group as the database sums it.
#[derive(FromQueryResult)]
struct Sums {
    bucket: Option<StoredText>,
    steps: i64,
    failed_steps: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_usd: Option<f64>,
    unpriced_steps: i64,
}

impl Sums {
    fn row(self) -> Result<UsageRow, StoreError> {
        let count = |what: &'static str, value: i64| {
            u64::try_from(value).map_err(|_| StoreError::OutOfRange {
                what,
                value: value.into(),
            })
        };
        Ok(UsageRow {
            group: self.bucket.map(StoredText::into_string),
            steps: count("usage steps", self.steps)?,
            failed_steps: count("usage failed steps", self.failed_steps)?,
            prompt_tokens: count("usage prompt tokens", self.prompt_tokens)?,
            completion_tokens: count("usage completion tokens", self.completion_tokens)?,
            cost_usd: self.cost_usd.unwrap_or_default(),
            unpriced_steps: count("usage unpriced steps", self.unpriced_steps)?,
        })
    }
}

impl Store {
    /// Usage of the steps that finished at or after `since` (and before `until`, when given),
    /// of one tenant's jobs or (`None`, the operator's view) of every tenant's, per `group_by`,
    /// sorted by group (jobs without a key first). Empty when nothing finished in the window.
    #[tracing::instrument(name = "store.usage", skip_all, fields(?group_by))]
    pub async fn usage(
        &self,
        tenant: Option<&Tenant>,
        group_by: UsageGroup,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let step = |column: steps::Column| Expr::col((steps::Entity, column));
        let job = |column: jobs::Column| Expr::col((jobs::Entity, column));
        let status_is = |status: StepStatus| step(steps::Column::Status).eq(status.as_str());
        let succeeded = || status_is(StepStatus::Succeeded);
        // SUM(CASE WHEN <when> THEN <value> ELSE 0 END), as a BIGINT on both backends
        // (Postgres sums BIGINTs into NUMERIC).
        let sum_if = |when: Expr, value: Expr| {
            let case: Expr = Expr::case(when, value).finally(0i64).into();
            case.sum().cast_as("BIGINT")
        };
        let bucket = match group_by {
            UsageGroup::Day => self.utc_date(step(steps::Column::FinishedAt)),
            UsageGroup::Key => job(jobs::Column::KeyId),
            UsageGroup::Route => {
                Func::coalesce([step(steps::Column::AnsweredBy), step(steps::Column::Route)]).into()
            }
            UsageGroup::Tenant => job(jobs::Column::Tenant),
        };

        let mut query = Query::select();
        query
            .expr_as(bucket, Alias::new("bucket"))
            .expr_as(sum_if(succeeded(), Expr::val(1i64)), Alias::new("steps"))
            .expr_as(
                sum_if(status_is(StepStatus::Failed), Expr::val(1i64)),
                Alias::new("failed_steps"),
            )
            .expr_as(
                sum_if(succeeded(), step(steps::Column::PromptTokens)),
                Alias::new("prompt_tokens"),
            )
            .expr_as(
                sum_if(succeeded(), step(steps::Column::CompletionTokens)),
                Alias::new("completion_tokens"),
            )
            .expr_as(
                step(steps::Column::CostUsd)
                    .sum()
                    .cast_as("DOUBLE PRECISION"),
                Alias::new("cost_usd"),
            )
            .expr_as(
                sum_if(
                    succeeded().and(step(steps::Column::CostUsd).is_null()),
                    Expr::val(1i64),
                ),
                Alias::new("unpriced_steps"),
            )
            .from(steps::Entity)
            .inner_join(
                jobs::Entity,
                job(jobs::Column::Id).equals((steps::Entity, steps::Column::JobId)),
            )
            .and_where(
                step(steps::Column::Status)
                    .is_in([StepStatus::Succeeded.as_str(), StepStatus::Failed.as_str()]),
            )
            .and_where(step(steps::Column::FinishedAt).gte(since))
            .group_by_col(Alias::new("bucket"));
        if let Some(until) = until {
            query.and_where(step(steps::Column::FinishedAt).lt(until));
        }
        if let Some(tenant) = tenant {
            query.and_where(job(jobs::Column::Tenant).eq(tenant.as_str()));
        }
        let statement = self.db.get_database_backend().build(&query);
        let mut rows = Sums::find_by_statement(statement)
            .all(&self.db)
            .await?
            .into_iter()
            .map(Sums::row)
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(rows)
    }

    /// The UTC date of a timestamp column, `YYYY-MM-DD`.
    fn utc_date(&self, at: Expr) -> Expr {
        match self.db.get_database_backend() {
            DbBackend::Postgres => Func::cust("to_char")
                .arg(at.binary(BinOper::Custom("AT TIME ZONE"), Expr::val("UTC")))
                .arg("YYYY-MM-DD")
                .into(),
            // SQLite stores RFC 3339 text; `date` reads its offset and answers in UTC.
            _ => Func::cust("date").arg(at).into(),
        }
    }
}
