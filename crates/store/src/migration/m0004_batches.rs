//! Batches in the OpenAI Batch API shape: `files` (uploaded input files, content included),
//! `batches` (one row per batch, its status and the times it changed), and on `jobs` the batch
//! line a job came from and, once it is terminal, its line of the batch's output or error file.
//! `evaluations` learn which assertions could not be evaluated (`errored`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0004_batches"
    }
}

const JOB_COLUMNS: [&str; 5] = ["batch_id", "custom_id", "line", "result_ok", "result_line"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("files")
                    .col(text("id").primary_key())
                    .col(text("tenant"))
                    .col(text("purpose"))
                    .col(text("filename"))
                    .col(big_integer("bytes"))
                    .col(big_integer("line_count"))
                    .col(blob("content"))
                    .col(timestamp_with_time_zone("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("batches")
                    .col(text("id").primary_key())
                    .col(text("tenant"))
                    .col(text("input_file_id"))
                    .col(text("endpoint"))
                    .col(text("completion_window"))
                    .col(json_binary_null("metadata"))
                    .col(text("status"))
                    .col(big_integer("total"))
                    .col(json_binary_null("errors"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone_null("in_progress_at"))
                    .col(timestamp_with_time_zone_null("expires_at"))
                    .col(timestamp_with_time_zone_null("finalizing_at"))
                    .col(timestamp_with_time_zone_null("completed_at"))
                    .col(timestamp_with_time_zone_null("failed_at"))
                    .col(timestamp_with_time_zone_null("expired_at"))
                    .col(timestamp_with_time_zone_null("cancelling_at"))
                    .col(timestamp_with_time_zone_null("cancelled_at"))
                    .to_owned(),
            )
            .await?;
        for (name, table, cols) in [
            (
                "files_tenant_created",
                "files",
                &["tenant", "created_at"][..],
            ),
            (
                "batches_tenant_created",
                "batches",
                &["tenant", "created_at", "id"],
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table(table);
            for col in cols {
                index.col(*col);
            }
            manager.create_index(index).await?;
        }

        // SQLite adds one column per ALTER TABLE.
        let jobs = [
            text_null("batch_id"),
            text_null("custom_id"),
            big_integer_null("line"),
            boolean_null("result_ok"),
            text_null("result_line"),
        ];
        for column in jobs {
            manager
                .alter_table(Table::alter().table("jobs").add_column(column).to_owned())
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("jobs_batch_line")
                    .table("jobs")
                    .col("batch_id")
                    .col("line")
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("evaluations")
                    .add_column(boolean("errored").default(false).to_owned())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("evaluations")
                    .drop_column("errored")
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("jobs_batch_line")
                    .table("jobs")
                    .to_owned(),
            )
            .await?;
        for column in JOB_COLUMNS {
            manager
                .alter_table(Table::alter().table("jobs").drop_column(column).to_owned())
                .await?;
        }
        for table in ["batches", "files"] {
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
