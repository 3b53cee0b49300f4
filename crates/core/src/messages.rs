//! Message bodies that travel between roles, one versioned type per message kind.
//!
//! Each type names its kind and version through [`Envelope`]; the codec puts `kind/version` in the
//! `Chorus-Type` header, so a consumer can reject a message it does not understand without guessing
//! from the bytes, and an old worker never misreads a newer layout.

use serde::{Deserialize, Serialize};

use crate::batch::Origin;
use crate::fair::Band;
use crate::ids::{JobId, Tenant, UnixMillis};
use crate::job::JobState;
use crate::judge::Verdict;
use crate::spec::{ChatMessage, Evaluate, JobSpec, Params};

/// A message type with a stable kind name and a layout version.
pub trait Envelope: Serialize + serde::de::DeserializeOwned {
    const KIND: &'static str;
    const VERSION: u16;
}

macro_rules! envelope {
    ($ty:ty, $kind:literal, $version:literal) => {
        impl Envelope for $ty {
            const KIND: &'static str = $kind;
            const VERSION: u16 = $version;
        }
    };
}

/// A job accepted by the edge (the tenant is the submit subject's last token).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub job_id: JobId,
    pub spec: JobSpec,
    pub submitted_at: UnixMillis,
    /// True when the edge already stored the queued state in the jobs bucket.
    #[serde(default)]
    pub state_created: bool,
    /// The batch line the job came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Stream the answer's text as it arrives (a streamed `POST /v1/chat/completions`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// The class of service the edge decided for the job (the caller's ask, capped by its key).
    #[serde(default)]
    pub band: Band,
    /// The API key that submitted it (none for a JetStream submitter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}
envelope!(Submission, "job.submit", 1);

/// One LLM call the orchestrator asks the llm stage to make.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlmCall {
    pub job_id: JobId,
    pub tenant: Tenant,
    pub step: u32,
    pub route: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub params: Params,
    /// The job's priority; a backlog serves higher first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Past this, the call is not made and the step fails with `deadline_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<UnixMillis>,
    /// The job's batch, for the check that it was not cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// A judge call: its answer must parse as a [`Verdict`], else it is asked again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub judge: bool,
    /// Stream the answer's text to `<prefix>.stream.<tenant>.<job>` as it arrives.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// The job's class of service: the flow the call waits in.
    #[serde(default)]
    pub band: Band,
    /// The API key that submitted the job: the call is charged to its budget as well as the
    /// tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}
envelope!(LlmCall, "llm.call", 1);

fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    pub fn total(&self) -> u32 {
        self.prompt_tokens + self.completion_tokens
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, rhs: Self) -> Self {
        Self {
            prompt_tokens: self.prompt_tokens + rhs.prompt_tokens,
            completion_tokens: self.completion_tokens + rhs.completion_tokens,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepOutput {
    pub text: String,
    pub usage: Usage,
    /// Provider time of the successful attempt.
    pub latency_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The route that answered (the step's own, or one of its fallbacks).
    #[serde(default)]
    pub route: String,
    /// From the answering route's prices, when it has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Tool calls the model asked for, in the provider's (OpenAI) shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// Why the answer stops short (`finish_reason: "length"`): the budget that could not cover
    /// more of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
}

/// Why a step failed, as the llm stage classified it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// A stable, machine-readable kind (`rate_limited`, `server_error`, `timeout`, …).
    pub kind: String,
    /// The provider's own message where there is one.
    pub message: String,
    pub retryable: bool,
    /// The provider's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// One provider call made for a step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    pub route: String,
    pub started_at: UnixMillis,
    pub latency_ms: u64,
    /// `ok`, or the error kind.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StepOutcome {
    Succeeded(StepOutput),
    Failed(StepError),
}

/// The llm stage's answer for one step; also a lifecycle event the persister stores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub job_id: JobId,
    pub tenant: Tenant,
    pub step: u32,
    pub route: String,
    pub outcome: StepOutcome,
    /// Provider calls made for this step across every delivery.
    pub attempts: u32,
    /// The calls of the delivery that produced this result, across fallbacks, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<Attempt>,
    /// How often the call was replayed from the DLQ; a replay's result supersedes an earlier one.
    #[serde(default)]
    pub replays: u32,
    pub started_at: UnixMillis,
    pub finished_at: UnixMillis,
}
envelope!(StepResult, "step.result", 1);

/// One answer to evaluate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalTarget {
    pub step: u32,
    pub text: String,
    /// Provider latency of the call that answered.
    #[serde(default)]
    pub latency_ms: u64,
    /// Cost of the call that answered, when its route has prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// What the judges said about this answer, one per judge assertion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub judges: Vec<JudgeOutcome>,
}

/// One judge's verdict on one answer, or why there is none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeOutcome {
    /// Index of the judge assertion in `evaluate.assertions`.
    pub assertion: u32,
    #[serde(flatten)]
    pub verdict: JudgeVerdict,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JudgeVerdict {
    Answered(Verdict),
    /// The judge call failed, or its answers never parsed.
    Errored {
        error: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRequest {
    pub job_id: JobId,
    pub tenant: Tenant,
    pub evaluate: Evaluate,
    pub targets: Vec<EvalTarget>,
}
envelope!(EvalRequest, "eval.request", 1);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssertionResult {
    pub index: u32,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    pub weight: f64,
    pub passed: bool,
    /// In 0..=1 (already inverted for `not`).
    pub score: f64,
    pub reason: String,
    /// The assertion could not be evaluated (a judge that never answered validly, a cost check
    /// on a route without prices); it counts as failed, whatever `not` says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub errored: bool,
}

/// The evaluation of one target answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetEvaluation {
    pub step: u32,
    pub score: f64,
    pub passed: bool,
    pub threshold: f64,
    pub assertions: Vec<AssertionResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluationResult {
    pub job_id: JobId,
    pub tenant: Tenant,
    pub targets: Vec<TargetEvaluation>,
    pub evaluated_at: UnixMillis,
}
envelope!(EvaluationResult, "eval.result", 1);

/// A stage could not carry a job on — its data is too large for the bus, or its message kept
/// crashing its workers — so the job fails with this reason instead of waiting forever.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAbort {
    pub job_id: JobId,
    pub tenant: Tenant,
    /// The step it happened at, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// A stable, machine-readable kind (`too_large`, `max_deliveries`, …).
    pub kind: String,
    pub message: String,
    pub at: UnixMillis,
}
envelope!(JobAbort, "job.abort", 1);

// A job's state is itself a message: the value of its key in the jobs bucket, which the
// persister consumes as the stream of the job's snapshots.
envelope!(JobState, "job.state", 1);

/// A message that could not be processed, with everything needed to inspect and replay it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub stage: crate::subjects::Stage,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub error_kind: String,
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Tenant>,
    pub deliveries: u64,
    /// Provider calls made (llm stage), across every delivery.
    #[serde(default)]
    pub attempts: u32,
    /// How often this message was replayed from the DLQ before (the `Chorus-Replays` header).
    #[serde(default)]
    pub replays: u32,
    pub stream_sequence: u64,
    pub published_at: UnixMillis,
    pub failed_at: UnixMillis,
}
envelope!(DeadLetter, "dlq.entry", 1);
