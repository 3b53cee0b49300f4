//! Schema migrations, applied by [`crate::Store::migrate`] (and `chorus migrate`).
//!
//! Migrations are frozen history: they name tables and columns with literals instead of the
//! entities, so a later change to an entity cannot rewrite what an old migration did. Each one runs
//! in a transaction on both backends (SQLite and Postgres have transactional DDL), so a failed
//! migration leaves nothing half-applied.

use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_audit_log;
mod m0003_step_calls;
mod m0004_batches;
mod m0005_api_keys;
mod m0006_key_bands;
mod m0007_job_keys;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_audit_log::Migration),
            Box::new(m0003_step_calls::Migration),
            Box::new(m0004_batches::Migration),
            Box::new(m0005_api_keys::Migration),
            Box::new(m0006_key_bands::Migration),
            Box::new(m0007_job_keys::Migration),
        ]
    }
}
