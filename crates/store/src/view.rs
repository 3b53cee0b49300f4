//! What the reads return: the JSON the edge answers with, so the field names are a public
//! contract — snake_case, always present (null when unknown), timestamps in RFC 3339. The one
//! exception: `batch_id` and `custom_id` appear only on jobs that came from a batch.

use chorus_core::JobId;
use chorus_core::ids::Tenant;
use chorus_core::job::{JobState, JobStatus, StepKind, StepStatus};
use chorus_core::messages::Attempt;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A job as listed: everything but its spec, steps and per-assertion results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSummary {
    pub id: JobId,
    pub tenant: Tenant,
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub usage: UsageRecord,
    /// What the job's calls cost, when their routes have prices.
    pub cost_usd: Option<f64>,
    /// The job's evaluation score and verdict, once evaluated.
    pub score: Option<f64>,
    pub passed: Option<bool>,
    pub error: Option<ErrorRecord>,
    pub metadata: Value,
    /// The batch the job is a line of, and that line's `custom_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_id: Option<String>,
}

/// A job in full: its summary's fields, then the spec, the steps and the evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobRecord {
    #[serde(flatten)]
    pub summary: JobSummary,
    #[schema(value_type = chorus_core::spec::JobSpec)]
    pub spec: Value,
    /// Ordered by index.
    pub steps: Vec<StepRecord>,
    pub evaluation: Option<EvaluationRecord>,
    /// Why and where an unfinished job waits, when it does (live reads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<chorus_core::fair::Waiting>,
}

/// One page of [`JobSummary`]s, newest first; pass `next_cursor` back for the next page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobPage {
    pub data: Vec<JobSummary>,
    pub next_cursor: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageRecord {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl UsageRecord {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// Why a job failed: the first failed step's error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorRecord {
    pub kind: String,
    pub message: String,
    pub step: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepErrorRecord {
    pub kind: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepRecord {
    pub index: u32,
    pub kind: StepKind,
    pub persona: Option<String>,
    pub route: String,
    pub status: StepStatus,
    pub output: Option<String>,
    pub usage: UsageRecord,
    pub latency_ms: u64,
    pub attempts: u32,
    pub finish_reason: Option<String>,
    pub error: Option<StepErrorRecord>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The route that answered: the step's own, or one of its fallbacks.
    pub answered_by: Option<String>,
    /// From the answering route's prices, when it has them.
    pub cost_usd: Option<f64>,
    /// Every provider call of the delivery that settled the step, fallbacks included.
    pub calls: Vec<Attempt>,
    pub tool_calls: Option<Value>,
    /// The DLQ replay whose result settled the step (0: the original call).
    pub replays: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvaluationRecord {
    /// Mean of the target scores.
    pub score: f64,
    /// True when every target passed.
    pub passed: bool,
    pub targets: Vec<TargetRecord>,
}

/// The evaluation of one step's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetRecord {
    pub step: u32,
    pub score: f64,
    pub passed: bool,
    /// The spec's `evaluate.threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    pub assertions: Vec<AssertionRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssertionRecord {
    pub index: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub metric: Option<String>,
    pub weight: f64,
    pub passed: bool,
    pub score: f64,
    pub reason: String,
    /// The assertion could not be evaluated (it counts as failed).
    pub errored: bool,
}

impl JobRecord {
    /// The record of a job not yet stored, from its live state in the jobs bucket. The live state
    /// may already be final; it reads as `running` until the persister has committed it.
    pub fn from_live_state(state: &JobState) -> Self {
        let mut record = Self::from_state(state);
        if state.status.is_terminal() {
            let summary = &mut record.summary;
            summary.status = JobStatus::Running;
            summary.finished_at = None;
            summary.score = None;
            summary.passed = None;
            summary.error = None;
            record.evaluation = None;
        }
        record
    }

    /// The record of a job exactly as `state` describes it, as it reads once stored.
    pub fn from_state(state: &JobState) -> Self {
        let usage = state.usage();
        let steps = state
            .steps
            .iter()
            .map(|s| {
                let usage = s.output.as_ref().map(|o| o.usage).unwrap_or_default();
                StepRecord {
                    index: s.index,
                    kind: s.kind,
                    persona: s.persona.clone(),
                    route: s.route.clone(),
                    status: s.status,
                    output: s.output.as_ref().map(|o| o.text.clone()),
                    usage: UsageRecord::new(
                        usage.prompt_tokens.into(),
                        usage.completion_tokens.into(),
                    ),
                    latency_ms: s.output.as_ref().map_or(0, |o| o.latency_ms),
                    attempts: s.attempts,
                    finish_reason: s.output.as_ref().and_then(|o| o.finish_reason.clone()),
                    error: s.error.as_ref().map(|e| StepErrorRecord {
                        kind: e.kind.clone(),
                        message: e.message.clone(),
                    }),
                    started_at: s.started_at.map(at),
                    finished_at: s.finished_at.map(at),
                    answered_by: s
                        .output
                        .as_ref()
                        .map(|o| o.route.clone())
                        .filter(|r| !r.is_empty()),
                    cost_usd: s.output.as_ref().and_then(|o| o.cost_usd),
                    calls: s.calls.clone(),
                    tool_calls: s.output.as_ref().and_then(|o| o.tool_calls.clone()),
                    replays: s.replays,
                }
            })
            .collect();
        let evaluation = state.evaluation.as_ref().map(|e| EvaluationRecord {
            score: e.score,
            passed: e.passed,
            targets: e
                .targets
                .iter()
                .map(|t| TargetRecord {
                    step: t.step,
                    score: t.score,
                    passed: t.passed,
                    threshold: Some(t.threshold),
                    assertions: t
                        .assertions
                        .iter()
                        .map(|a| AssertionRecord {
                            index: a.index,
                            kind: a.kind.clone(),
                            metric: a.metric.clone(),
                            weight: a.weight,
                            passed: a.passed,
                            score: a.score,
                            reason: a.reason.clone(),
                            errored: a.errored,
                        })
                        .collect(),
                })
                .collect(),
        });
        JobRecord {
            summary: JobSummary {
                id: state.id,
                tenant: state.tenant.clone(),
                status: state.status,
                created_at: at(state.created_at),
                updated_at: at(state.updated_at),
                finished_at: state.finished_at.map(at),
                usage: UsageRecord::new(usage.prompt_tokens.into(), usage.completion_tokens.into()),
                cost_usd: state.cost_usd(),
                score: state.evaluation.as_ref().map(|e| e.score),
                passed: state.evaluation.as_ref().map(|e| e.passed),
                error: state.error.as_ref().map(|e| ErrorRecord {
                    kind: e.kind.clone(),
                    message: e.message.clone(),
                    step: e.step,
                }),
                metadata: Value::Object(state.spec.metadata.clone()),
                batch_id: state.origin.as_ref().map(|o| o.batch.clone()),
                custom_id: state.origin.as_ref().map(|o| o.custom_id.clone()),
            },
            spec: serde_json::to_value(&state.spec).unwrap_or_default(),
            steps,
            evaluation,
            waiting: None,
        }
    }
}

fn at(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

/// RFC 3339 (milliseconds, UTC) for a Unix-milliseconds timestamp, as the views print them.
pub fn rfc3339(millis: i64) -> String {
    DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
