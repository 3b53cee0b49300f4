//! One row per job: the newest snapshot of its state the persister has stored.

use sea_orm::entity::prelude::*;

use crate::lossless::{StoredJson, StoredText};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant: String,
    pub status: String,
    /// `JobState::version`; an upsert only ever raises it.
    pub version: i64,
    #[sea_orm(column_type = "JsonBinary")]
    pub spec: StoredJson,
    #[sea_orm(column_type = "JsonBinary")]
    pub metadata: StoredJson,
    pub error_kind: Option<String>,
    pub error_message: Option<StoredText>,
    pub error_step: Option<i64>,
    pub score: Option<f64>,
    pub passed: Option<bool>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
    /// Sum of the steps' costs, when their routes have prices.
    pub cost_usd: Option<f64>,
    /// The batch line the job came from: the batch, the line's `custom_id`, and its 0-based
    /// position in the input file.
    pub batch_id: Option<StoredText>,
    pub custom_id: Option<StoredText>,
    pub line: Option<i64>,
    /// For a terminal batch job: whether its result line belongs in the output file (true) or
    /// the error file (false), and the line itself (one JSON object, no newline).
    pub result_ok: Option<bool>,
    pub result_line: Option<StoredText>,
    /// The id of the API key that submitted the job (None: a JetStream submitter, or
    /// authentication off).
    pub key_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
