//! One row per assertion result of a job's evaluation, keyed by `(job_id, step_idx,
//! assertion_idx)`; the target's own score and verdict sit on its step's row.

use sea_orm::entity::prelude::*;

use crate::lossless::StoredText;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "evaluations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub job_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub step_idx: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub assertion_idx: i64,
    #[sea_orm(column_name = "type")]
    pub kind: String,
    pub metric: Option<StoredText>,
    pub weight: f64,
    pub passed: bool,
    pub score: f64,
    pub reason: StoredText,
    /// The assertion could not be evaluated (it counts as failed).
    pub errored: bool,
    /// `JobState::version` of the snapshot the row was taken from; an upsert only ever raises it.
    pub version: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
