//! One row per uploaded file, its content included (see [`crate::files`]).

use sea_orm::entity::prelude::*;

use crate::lossless::StoredText;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "files")]
pub struct Model {
    /// `file-<uuid>`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: StoredText,
    pub tenant: String,
    pub purpose: String,
    pub filename: StoredText,
    /// The content's size.
    pub bytes: i64,
    /// Requests in the file, as the uploader counted them.
    pub line_count: i64,
    #[sea_orm(column_type = "Blob")]
    pub content: Vec<u8>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
