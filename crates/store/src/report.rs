//! A batch's evaluation report (DESIGN.md §6): pass rate and mean score over its jobs, per
//! metric (over assertion results), and per model and per persona (over evaluated answers).
//!
//! The unit differs on purpose: a metric is a property of assertions, so it counts assertion
//! results; a model or persona produced an answer, so it counts evaluation targets (answers) with
//! their weighted score and verdict. Each figure is one grouped query over the batch's jobs; the
//! groups are small, so they are folded here rather than in SQL.

use std::collections::BTreeMap;

use chorus_core::ids::Tenant;
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, EntityTrait, ExprTrait, FromQueryResult, PaginatorTrait, QueryFilter, QuerySelect,
};
use serde::Serialize;

use crate::entity::{batches, evaluations, jobs, steps};
use crate::lossless::StoredText;
use crate::{Store, StoreError};

/// A batch's evaluation report; every list is sorted by name.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BatchReport {
    pub batch: String,
    pub overall: OverallStats,
    /// Per assertion `metric`, or per assertion type for assertions without one.
    pub by_metric: Vec<MetricStats>,
    /// Per route of the evaluated answer.
    pub by_model: Vec<TargetStats>,
    /// Per persona of the evaluated answer (answers without one are left out).
    pub by_persona: Vec<TargetStats>,
}

/// Over the batch's jobs: how many were evaluated, and how they did.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OverallStats {
    pub jobs: u64,
    pub evaluated: u64,
    pub passed: u64,
    /// `passed / evaluated`; null when nothing was evaluated.
    pub pass_rate: Option<f64>,
    /// Mean of the evaluated jobs' scores; null when nothing was evaluated.
    pub mean_score: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MetricStats {
    pub name: String,
    pub assertions: u64,
    pub passed: u64,
    /// Assertions that could not be evaluated (counted as failed).
    pub errored: u64,
    pub pass_rate: f64,
    pub mean_score: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TargetStats {
    pub name: String,
    /// Evaluated answers.
    pub targets: u64,
    pub passed: u64,
    pub pass_rate: f64,
    pub mean_score: f64,
}

/// Jobs of one verdict (`passed` is null for jobs not evaluated).
#[derive(FromQueryResult)]
struct JobGroup {
    passed: Option<bool>,
    count: i64,
    score: Option<f64>,
}

/// Assertion results of one metric, type and outcome.
#[derive(FromQueryResult)]
struct AssertionGroup {
    metric: Option<StoredText>,
    kind: String,
    passed: bool,
    errored: bool,
    count: i64,
    score: Option<f64>,
}

/// Evaluated answers of one route, persona and verdict.
#[derive(FromQueryResult)]
struct TargetGroup {
    route: StoredText,
    persona: Option<StoredText>,
    passed: Option<bool>,
    count: i64,
    score: Option<f64>,
}

/// Counts and a score sum, folded from grouped rows.
#[derive(Clone, Copy, Debug, Default)]
struct Sum {
    count: u64,
    passed: u64,
    errored: u64,
    score: f64,
}

impl Sum {
    fn add(&mut self, count: i64, passed: bool, errored: bool, score: Option<f64>) {
        let count = u64::try_from(count).unwrap_or_default();
        self.count += count;
        if passed {
            self.passed += count;
        }
        if errored {
            self.errored += count;
        }
        self.score += score.unwrap_or_default();
    }

    fn rate(&self, of: f64) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            of / self.count as f64
        }
    }

    fn metric(&self, name: String) -> MetricStats {
        MetricStats {
            name,
            assertions: self.count,
            passed: self.passed,
            errored: self.errored,
            pass_rate: self.rate(self.passed as f64),
            mean_score: self.rate(self.score),
        }
    }

    fn target(&self, name: String) -> TargetStats {
        TargetStats {
            name,
            targets: self.count,
            passed: self.passed,
            pass_rate: self.rate(self.passed as f64),
            mean_score: self.rate(self.score),
        }
    }
}

impl Store {
    /// The evaluation report of the tenant's jobs in `batch`; `None` when the store knows no such
    /// batch (neither a batch row nor a job of it). A JetStream submitter's batch has no row
    /// but is reported all the same.
    #[tracing::instrument(name = "store.batch_report", skip_all, fields(batch))]
    pub async fn batch_report(
        &self,
        tenant: &Tenant,
        batch: &str,
    ) -> Result<Option<BatchReport>, StoreError> {
        let batch_jobs = Query::select()
            .column(jobs::Column::Id)
            .from(jobs::Entity)
            .and_where(Expr::col(jobs::Column::Tenant).eq(tenant.as_str()))
            .and_where(Expr::col(jobs::Column::BatchId).eq(StoredText::from(batch)))
            .to_owned();

        let verdicts = jobs::Entity::find()
            .select_only()
            .column(jobs::Column::Passed)
            .column_as(Expr::col(jobs::Column::Id).count(), "count")
            .column_as(Expr::col(jobs::Column::Score).sum(), "score")
            .filter(jobs::Column::Tenant.eq(tenant.as_str()))
            .filter(jobs::Column::BatchId.eq(StoredText::from(batch)))
            .group_by(jobs::Column::Passed)
            .into_model::<JobGroup>()
            .all(&self.db)
            .await?;
        let mut jobs = Sum::default();
        let mut evaluated = Sum::default();
        for group in verdicts {
            jobs.add(group.count, false, false, None);
            if let Some(passed) = group.passed {
                evaluated.add(group.count, passed, false, group.score);
            }
        }
        if jobs.count == 0
            && batches::Entity::find_by_id(batch)
                .filter(batches::Column::Tenant.eq(tenant.as_str()))
                .count(&self.db)
                .await?
                == 0
        {
            return Ok(None);
        }

        let assertions = evaluations::Entity::find()
            .select_only()
            .column(evaluations::Column::Metric)
            .column_as(evaluations::Column::Kind, "kind")
            .column(evaluations::Column::Passed)
            .column(evaluations::Column::Errored)
            .column_as(Expr::col(evaluations::Column::JobId).count(), "count")
            .column_as(Expr::col(evaluations::Column::Score).sum(), "score")
            .filter(evaluations::Column::JobId.in_subquery(batch_jobs.clone()))
            .group_by(evaluations::Column::Metric)
            .group_by(evaluations::Column::Kind)
            .group_by(evaluations::Column::Passed)
            .group_by(evaluations::Column::Errored)
            .into_model::<AssertionGroup>()
            .all(&self.db)
            .await?;
        let mut by_metric: BTreeMap<String, Sum> = BTreeMap::new();
        for group in assertions {
            by_metric
                .entry(group.metric.map_or(group.kind, String::from))
                .or_default()
                .add(group.count, group.passed, group.errored, group.score);
        }

        let targets = steps::Entity::find()
            .select_only()
            .column(steps::Column::Route)
            .column(steps::Column::Persona)
            .column(steps::Column::Passed)
            .column_as(Expr::col(steps::Column::JobId).count(), "count")
            .column_as(Expr::col(steps::Column::Score).sum(), "score")
            .filter(steps::Column::Score.is_not_null())
            .filter(steps::Column::JobId.in_subquery(batch_jobs))
            .group_by(steps::Column::Route)
            .group_by(steps::Column::Persona)
            .group_by(steps::Column::Passed)
            .into_model::<TargetGroup>()
            .all(&self.db)
            .await?;
        let mut by_model: BTreeMap<String, Sum> = BTreeMap::new();
        let mut by_persona: BTreeMap<String, Sum> = BTreeMap::new();
        for group in targets {
            let passed = group.passed.unwrap_or(false);
            by_model.entry(group.route.into_string()).or_default().add(
                group.count,
                passed,
                false,
                group.score,
            );
            if let Some(persona) = group.persona {
                by_persona.entry(persona.into_string()).or_default().add(
                    group.count,
                    passed,
                    false,
                    group.score,
                );
            }
        }

        let any = evaluated.count > 0;
        Ok(Some(BatchReport {
            batch: batch.to_owned(),
            overall: OverallStats {
                jobs: jobs.count,
                evaluated: evaluated.count,
                passed: evaluated.passed,
                pass_rate: any.then(|| evaluated.rate(evaluated.passed as f64)),
                mean_score: any.then(|| evaluated.rate(evaluated.score)),
            },
            by_metric: by_metric
                .into_iter()
                .map(|(name, sum)| sum.metric(name))
                .collect(),
            by_model: by_model
                .into_iter()
                .map(|(name, sum)| sum.target(name))
                .collect(),
            by_persona: by_persona
                .into_iter()
                .map(|(name, sum)| sum.target(name))
                .collect(),
        }))
    }
}
