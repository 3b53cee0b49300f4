//! One row per API key (see [`crate::keys`]).

use sea_orm::entity::prelude::*;

use crate::lossless::StoredText;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    /// The key's public id: the middle part of `chorus_<id>_<secret>`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: StoredText,
    pub tenant: String,
    pub name: StoredText,
    /// `submit,read,admin`, as [`chorus_core::auth::Scopes`] writes them.
    pub scopes: String,
    /// Requests per minute this key may make at one edge process; none means the edge default.
    pub rpm: Option<i32>,
    /// The highest band its requests are served at, as [`chorus_core::fair::Band`] names it.
    pub max_band: String,
    #[sea_orm(column_type = "Blob")]
    pub secret_sha256: Vec<u8>,
    pub created_at: DateTimeUtc,
    pub revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
