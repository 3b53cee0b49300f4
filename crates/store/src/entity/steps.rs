//! One row per step (LLM call) of a job, keyed by `(job_id, idx)`: the step as the newest stored
//! snapshot of its job describes it.

use sea_orm::entity::prelude::*;

use crate::lossless::{StoredJson, StoredText};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "steps")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub job_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub idx: i64,
    pub kind: String,
    pub persona: Option<StoredText>,
    pub route: StoredText,
    pub status: String,
    /// `JobState::version` of the snapshot the row was taken from; an upsert only ever raises it.
    pub version: i64,
    pub output: Option<StoredText>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub latency_ms: i64,
    pub finish_reason: Option<StoredText>,
    pub attempts: i64,
    pub error_kind: Option<String>,
    pub error_message: Option<StoredText>,
    /// The step's evaluation, when it was an evaluation target.
    pub score: Option<f64>,
    pub passed: Option<bool>,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    /// The route that answered: the step's own or one of its fallbacks.
    pub answered_by: Option<StoredText>,
    pub cost_usd: Option<f64>,
    /// Every provider call of the delivery that settled the step (`[Attempt]`).
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub calls: Option<StoredJson>,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub tool_calls: Option<StoredJson>,
    /// The DLQ replay whose result settled the step (0: the original call).
    pub replays: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
