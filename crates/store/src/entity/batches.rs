//! One row per batch: what it runs, its status and when each status was reached (see
//! [`crate::batches`]). Its jobs point at it through `jobs.batch_id`.

use sea_orm::entity::prelude::*;

use crate::lossless::{StoredJson, StoredText};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "batches")]
pub struct Model {
    /// `batch_<uuid>`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: StoredText,
    pub tenant: String,
    pub input_file_id: StoredText,
    /// The endpoint the batch was created for (its lines may name either).
    pub endpoint: String,
    pub completion_window: String,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub metadata: Option<StoredJson>,
    /// OpenAI's batch status (`in_progress`, `completed`, …).
    pub status: String,
    /// Requests in the input file.
    pub total: i64,
    /// Why the input file was refused: OpenAI's `{"object": "list", "data": [...]}`.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub errors: Option<StoredJson>,
    pub created_at: DateTimeUtc,
    pub in_progress_at: Option<DateTimeUtc>,
    pub expires_at: Option<DateTimeUtc>,
    pub finalizing_at: Option<DateTimeUtc>,
    pub completed_at: Option<DateTimeUtc>,
    pub failed_at: Option<DateTimeUtc>,
    pub expired_at: Option<DateTimeUtc>,
    pub cancelling_at: Option<DateTimeUtc>,
    pub cancelled_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
