//! Chorus's persistence (DESIGN.md §7): sea-orm over SQLite (WAL, the embedded default) or
//! Postgres (for more than one pod), holding a queryable mirror of the job snapshots in the
//! job-state bucket.
//!
//! Layout:
//! - [`store`]: [`Store`]: connecting, migrating, readiness.
//! - [`write`](mod@write): job snapshots in, one transaction per batch, idempotent upserts out.
//! - [`read`]: the job reads behind the HTTP edge, with cursor pagination.
//! - [`view`]: the JSON shapes those reads return.
//! - [`files`]: uploaded files (`/v1/files`), content included.
//! - [`batches`]: batches (`/v1/batches`, OpenAI's shape): status, counts, output and error files.
//! - [`results`]: a finished batch job's line of its batch's output or error file.
//! - [`report`]: a batch's evaluation report, per metric, model and persona.
//! - [`keys`]: API keys per tenant: generated, stored hashed, checked in constant time.
//! - [`usage`]: steps, tokens and cost over a time window, per day, key, route or tenant.
//! - [`audit`]: the audit log of operator actions (dead-letter replays and purges).
//! - [`entity`]: one sea-orm entity per table; [`migration`]: the schema's history.
//! - [`lossless`]: the value types that store any text and any JSON as it was (NUL included).
//! - [`error`]: [`StoreError`] and its [`StoreErrorKind`]: unavailable (retry later), rejected
//!   (this data never fits), or broken (an operator must act).
//!
//! Every job write is an upsert that only replaces a row with one from a higher job version, so
//! at-least-once delivery, replays and out-of-order batches all converge on the newest snapshot.

pub mod audit;
pub mod batches;
pub mod entity;
pub mod error;
pub mod files;
pub mod keys;
pub mod lossless;
pub mod migration;
pub mod read;
pub mod report;
pub mod results;
pub mod store;
pub mod usage;
pub mod view;
pub mod write;

pub use audit::{AuditAction, AuditRecord};
pub use batches::{BatchList, BatchObject, BatchStatus, NewBatch, RequestCounts};
pub use error::{StoreError, StoreErrorKind};
pub use files::{FileObject, NewFile};
pub use keys::{KeyInfo, KeyLimits, NewKey};
pub use lossless::{StoredJson, StoredText};
pub use report::{BatchReport, MetricStats, OverallStats, TargetStats};
pub use results::{ChatCompletion, ResultLine, chat_completion, error_line, result_line};
pub use store::Store;
pub use usage::{UsageGroup, UsageRow};
pub use view::{
    AssertionRecord, ErrorRecord, EvaluationRecord, JobPage, JobRecord, JobSummary,
    StepErrorRecord, StepRecord, TargetRecord, UsageRecord,
};
pub use write::Committed;
