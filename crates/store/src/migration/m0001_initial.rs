//! `jobs`, `steps` and `evaluations`: a mirror of the newest stored snapshot of each job, every
//! row with the `version` of the snapshot it was taken from.
//!
//! No foreign keys between them: all rows of a job are written together from one snapshot, in one
//! transaction (see [`crate::write`]).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0001_initial"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("jobs")
                    .col(uuid("id").primary_key())
                    .col(text("tenant"))
                    .col(text("status"))
                    .col(big_integer("version"))
                    .col(json_binary("spec"))
                    .col(json_binary("metadata"))
                    .col(text_null("error_kind"))
                    .col(text_null("error_message"))
                    .col(big_integer_null("error_step"))
                    .col(double_null("score"))
                    .col(boolean_null("passed"))
                    .col(big_integer("prompt_tokens"))
                    .col(big_integer("completion_tokens"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .col(timestamp_with_time_zone_null("finished_at"))
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            ("jobs_tenant_created", &["tenant", "created_at", "id"][..]),
            (
                "jobs_tenant_status_created",
                &["tenant", "status", "created_at", "id"],
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table("jobs");
            for col in cols {
                index.col(*col);
            }
            manager.create_index(index).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table("steps")
                    .col(uuid("job_id"))
                    .col(big_integer("idx"))
                    .col(text("kind"))
                    .col(text_null("persona"))
                    .col(text("route"))
                    .col(text("status"))
                    .col(big_integer("version"))
                    .col(text_null("output"))
                    .col(big_integer("prompt_tokens"))
                    .col(big_integer("completion_tokens"))
                    .col(big_integer("latency_ms"))
                    .col(text_null("finish_reason"))
                    .col(big_integer("attempts"))
                    .col(text_null("error_kind"))
                    .col(text_null("error_message"))
                    .col(double_null("score"))
                    .col(boolean_null("passed"))
                    .col(timestamp_with_time_zone_null("started_at"))
                    .col(timestamp_with_time_zone_null("finished_at"))
                    .primary_key(Index::create().col("job_id").col("idx"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("evaluations")
                    .col(uuid("job_id"))
                    .col(big_integer("step_idx"))
                    .col(big_integer("assertion_idx"))
                    .col(text("type"))
                    .col(text_null("metric"))
                    .col(double("weight"))
                    .col(boolean("passed"))
                    .col(double("score"))
                    .col(text("reason"))
                    .col(big_integer("version"))
                    .primary_key(
                        Index::create()
                            .col("job_id")
                            .col("step_idx")
                            .col("assertion_idx"),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["evaluations", "steps", "jobs"] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
