//! Tenants and their API keys (see [`crate::keys`]): `tenants` (one row per tenant a key was
//! ever made for) and `api_keys` (the key's id, tenant, name, scopes and own request rate, the
//! SHA-256 of its secret, never the secret, and when it was revoked).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0005_api_keys"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("tenants")
                    .col(text("id").primary_key())
                    .col(timestamp_with_time_zone("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("api_keys")
                    .col(text("id").primary_key())
                    .col(text("tenant"))
                    .col(text("name"))
                    .col(text("scopes"))
                    .col(integer_null("rpm"))
                    .col(blob("secret_sha256"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone_null("revoked_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("api_keys_tenant")
                    .table("api_keys")
                    .col("tenant")
                    .col("created_at")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("api_keys").to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table("tenants").to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
