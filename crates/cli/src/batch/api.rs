//! The answers of the REST API that `chorus batch` reads: only the fields it prints, read
//! leniently (missing fields default, unknown ones are ignored), so a newer server still works.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct FileObject {
    pub(super) id: String,
    pub(super) bytes: u64,
}

/// A batch object; only what the commands print.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Batch {
    pub(super) id: String,
    pub(super) status: String,
    pub(super) endpoint: String,
    pub(super) completion_window: String,
    pub(super) input_file_id: Option<String>,
    pub(super) output_file_id: Option<String>,
    pub(super) error_file_id: Option<String>,
    pub(super) created_at: Option<i64>,
    pub(super) in_progress_at: Option<i64>,
    pub(super) expires_at: Option<i64>,
    pub(super) finalizing_at: Option<i64>,
    pub(super) completed_at: Option<i64>,
    pub(super) failed_at: Option<i64>,
    pub(super) expired_at: Option<i64>,
    pub(super) cancelling_at: Option<i64>,
    pub(super) cancelled_at: Option<i64>,
    pub(super) request_counts: Counts,
    pub(super) metadata: Option<BTreeMap<String, Value>>,
    pub(super) errors: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Counts {
    pub(super) total: u64,
    pub(super) completed: u64,
    pub(super) failed: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct BatchList {
    pub(super) data: Vec<Batch>,
    pub(super) has_more: bool,
}

/// `GET /v1/batches/{id}/report` (`batch_id` and `jobs` are read as `batch` and `overall` too).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Report {
    #[serde(alias = "batch_id")]
    pub(super) batch: String,
    #[serde(alias = "jobs")]
    pub(super) overall: Overall,
    pub(super) by_metric: Vec<Group>,
    pub(super) by_model: Vec<Group>,
    pub(super) by_persona: Vec<Group>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Overall {
    pub(super) jobs: u64,
    pub(super) evaluated: u64,
    pub(super) passed: u64,
    pub(super) pass_rate: Option<f64>,
    pub(super) mean_score: Option<f64>,
}

/// A row of a breakdown: `n` counts assertions (per metric) or targets (per model, persona).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Group {
    pub(super) name: String,
    #[serde(alias = "assertions", alias = "targets")]
    pub(super) n: u64,
    pub(super) passed: u64,
    pub(super) pass_rate: Option<f64>,
    pub(super) mean_score: Option<f64>,
}
