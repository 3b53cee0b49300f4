//! The audit log as the service sees it, and what its rows keep of a replay or purge.
//!
//! [`AuditLog`] is a trait so that each front end can say how the log is reached: the edge
//! holds its database open (the impl for [`Store`] here); the CLI opens its database only when
//! something is to be changed, so a dry run needs none.

use std::future::Future;

use chorus_bus::dlq::Filter;
use chorus_store::{AuditAction, Store, StoreError};
use serde_json::{Value, json};

use crate::report::{PurgeReport, ReplayOptions, ReplayReport, Skipped};
use crate::view::Summary;

/// Where the changes the service makes are recorded.
pub trait AuditLog: Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Checked before anything changes, so that an unaudited change is unlikely.
    fn ready(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Writes a row naming `actor`; its id.
    fn record(
        &self,
        actor: &str,
        action: AuditAction,
        detail: Value,
    ) -> impl Future<Output = Result<i64, Self::Error>> + Send;
}

/// The audit log of an open database, ready when the database answers.
impl AuditLog for Store {
    type Error = StoreError;

    async fn ready(&self) -> Result<(), StoreError> {
        self.ping().await
    }

    async fn record(
        &self,
        actor: &str,
        action: AuditAction,
        detail: Value,
    ) -> Result<i64, StoreError> {
        Ok(self.record_audit(actor, action, detail).await?.id)
    }
}

/// What the audit log keeps of a replay: the selection, the settings, and per outcome the
/// entries' sequences, subjects and jobs.
pub(crate) fn replay_detail(
    report: &ReplayReport,
    filter: &Filter,
    options: ReplayOptions,
) -> Value {
    json!({
        "filter": filter,
        "dry_run": report.dry_run,
        "max_replays": options.max_replays,
        "rate": options.rate,
        "matched": report.matched,
        "replayed": report.replayed.iter().map(audited).collect::<Vec<_>>(),
        "refused": report.refused.iter().map(audited_skip).collect::<Vec<_>>(),
        "failed": report.failed.iter().map(audited_skip).collect::<Vec<_>>(),
        "not_attempted": report.not_attempted,
    })
}

/// What the audit log keeps of a purge.
pub(crate) fn purge_detail(report: &PurgeReport, filter: &Filter) -> Value {
    json!({
        "filter": filter,
        "dry_run": report.dry_run,
        "matched": report.matched,
        "purged": report.purged.iter().map(audited).collect::<Vec<_>>(),
        "failed": report.failed.iter().map(audited_skip).collect::<Vec<_>>(),
    })
}

fn audited(entry: &Summary) -> Value {
    json!({
        "seq": entry.seq,
        "stage": entry.stage,
        "subject": entry.subject,
        "job_id": entry.job_id,
        "error_kind": entry.error_kind,
        "replays": entry.replays,
    })
}

fn audited_skip(skipped: &Skipped) -> Value {
    let mut value = audited(&skipped.entry);
    value["reason"] = skipped.reason.clone().into();
    value
}
