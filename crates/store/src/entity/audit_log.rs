//! One row per audited operator action (see [`crate::audit`]).

use sea_orm::entity::prelude::*;

use crate::lossless::{StoredJson, StoredText};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub at: DateTimeUtc,
    pub actor: StoredText,
    pub action: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub detail: StoredJson,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
