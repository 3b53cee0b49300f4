//! The LLM stage's detail per step: the route that answered (the step's own or a fallback), the
//! cost, every provider call, tool calls, and which DLQ replay settled it; and each job's cost.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0003_step_calls"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        let steps = [
            text_null("answered_by"),
            double_null("cost_usd"),
            json_binary_null("calls"),
            json_binary_null("tool_calls"),
            big_integer("replays").default(0).to_owned(),
        ];
        for column in steps {
            manager
                .alter_table(Table::alter().table("steps").add_column(column).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table("jobs")
                    .add_column(double_null("cost_usd"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in ["answered_by", "cost_usd", "calls", "tool_calls", "replays"] {
            manager
                .alter_table(Table::alter().table("steps").drop_column(column).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table("jobs")
                    .drop_column("cost_usd")
                    .to_owned(),
            )
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
