//! A job's state and its transitions: the orchestrator's logic as pure functions.
//!
//! `apply(state, input)` returns the next state and the effects to publish. It is deterministic
//! and idempotent: an input that was already applied leaves the state unchanged and returns the
//! same effects again, and every effect publishes under a message id derived from the job, so a
//! redelivered event after a crash between "state saved" and "effects published" repairs the gap
//! without doing anything twice.
//!
//! The state is also the job's record: every version written to the jobs bucket is a snapshot the
//! persister mirrors into the database, so the final state alone is the complete record.

use serde::{Deserialize, Serialize};

use crate::batch::Origin;
use crate::fair::Band;
use crate::ids::{JobId, Tenant, UnixMillis};
use crate::judge;
use crate::messages::{
    Attempt, EvalRequest, EvalTarget, EvaluationResult, JobAbort, JudgeOutcome, JudgeVerdict,
    LlmCall, StepError, StepOutcome, StepOutput, StepResult, TargetEvaluation, Usage,
};
use crate::spec::{ChatMessage, JobSpec, Role};
use crate::template::{self, Answer};
use crate::trace::TraceContext;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Evaluating,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::Evaluating,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Evaluating => "evaluating",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Fanout,
    Synthesis,
    /// An LLM judge's call for one judge assertion on one answer.
    Judge,
}

impl StepKind {
    pub const ALL: [StepKind; 3] = [Self::Fanout, Self::Synthesis, Self::Judge];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fanout => "fanout",
            Self::Synthesis => "synthesis",
            Self::Judge => "judge",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Dispatched,
    Succeeded,
    Failed,
}

impl StepStatus {
    pub const ALL: [StepStatus; 4] = [
        Self::Pending,
        Self::Dispatched,
        Self::Succeeded,
        Self::Failed,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Dispatched => "dispatched",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn is_settled(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub index: u32,
    pub kind: StepKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persona: Option<String>,
    pub route: String,
    /// For a judge step: the answer it judges and the assertion it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judges: Option<JudgeRef>,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<StepOutput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
    pub attempts: u32,
    /// Every provider call of the delivery that settled the step (fallbacks included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<Attempt>,
    /// The DLQ replay whose result settled the step (0: the original call).
    #[serde(default)]
    pub replays: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<UnixMillis>,
}

/// What a judge step judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeRef {
    /// Index of the step whose answer is judged.
    pub target: u32,
    /// Index of the judge assertion in `evaluate.assertions`.
    pub assertion: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvaluation {
    /// Mean of the target scores.
    pub score: f64,
    /// True when every target passed.
    pub passed: bool,
    pub targets: Vec<TargetEvaluation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    pub kind: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub id: JobId,
    pub tenant: Tenant,
    pub spec: JobSpec,
    pub status: JobStatus,
    /// Bumped by every transition; storage keeps the highest it has seen.
    pub version: u64,
    pub steps: Vec<StepState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<JobEvaluation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<UnixMillis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
    /// The batch line the job came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Its answer is streamed to a waiting client as it arrives (the fan-out call only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// The class of service its calls are queued in.
    #[serde(default)]
    pub band: Band,
    /// The API key that submitted it, whose budget its calls are also charged to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The error kind of a step not made, or a job stopped, because it was cancelled.
pub const CANCELLED: &str = "cancelled";
/// The error kind of a call not made because the job's deadline had passed.
pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
/// The error kind of a call not made because a budget it is charged to could not cover it.
pub const BUDGET_EXCEEDED: &str = "budget_exceeded";
/// The error kind of a job stored as failed because the database refused its snapshot.
pub const STORAGE_REJECTED: &str = "storage_rejected";

/// What the orchestrator feeds the machine.
#[derive(Clone, Debug)]
pub enum Input {
    /// The job's submission (possibly redelivered).
    Submitted {
        at: UnixMillis,
    },
    Step(StepResult),
    Evaluated(EvaluationResult),
    /// A client cancelled the job (or its batch): nothing new is dispatched.
    Cancel {
        at: UnixMillis,
        reason: String,
    },
    /// A stage cannot carry the job on (see [`JobAbort`]): it fails with this error, and the step
    /// named, if still open, fails with it.
    Abort(JobAbort),
}

/// What a transition asks the orchestrator to publish.
#[derive(Clone, Debug, PartialEq)]
// Effects are short-lived and few per transition; boxing the larger one would only add an
// allocation per call.
#[allow(clippy::large_enum_variant)]
pub enum Effect {
    Call(LlmCall),
    Evaluate(EvalRequest),
}

#[derive(Clone, Debug)]
pub struct Transition {
    pub state: JobState,
    pub changed: bool,
    pub effects: Vec<Effect>,
}

impl JobState {
    /// A queued job with its steps planned: personas × routes, then the synthesis step, then one
    /// judge step per judge assertion and judged answer.
    pub fn new(
        id: JobId,
        tenant: Tenant,
        spec: JobSpec,
        now: UnixMillis,
        trace: Option<TraceContext>,
    ) -> Self {
        let first_route = spec.fanout_routes().first().copied().unwrap_or_default();
        let mut plan: Vec<(StepKind, Option<String>, String, Option<JudgeRef>)> = spec
            .fanout_plan()
            .into_iter()
            .map(|(persona, route)| {
                let persona = persona.map(|p| p.name.clone());
                (StepKind::Fanout, persona, route.to_owned(), None)
            })
            .collect();
        if let Some(synthesis) = &spec.synthesis {
            let route = synthesis.model.as_deref().unwrap_or(first_route);
            plan.push((StepKind::Synthesis, None, route.to_owned(), None));
        }
        // The judged answers: the synthesis when there is one, else every fan-out answer.
        let targets: Vec<(u32, Option<String>)> = match plan.last() {
            Some((StepKind::Synthesis, ..)) => vec![(plan.len() as u32 - 1, None)],
            _ => plan
                .iter()
                .enumerate()
                .map(|(i, (_, persona, ..))| (i as u32, persona.clone()))
                .collect(),
        };
        let assertions = spec
            .evaluate
            .as_ref()
            .map_or(&[][..], |e| &e.assertions[..]);
        for (target, persona) in &targets {
            for (a, assertion) in assertions.iter().enumerate() {
                if let Some((_, _, model)) = assertion.check.judge() {
                    let judges = JudgeRef {
                        target: *target,
                        assertion: a as u32,
                    };
                    let route = model.unwrap_or(first_route).to_owned();
                    plan.push((StepKind::Judge, persona.clone(), route, Some(judges)));
                }
            }
        }
        let steps = plan
            .into_iter()
            .enumerate()
            .map(|(index, (kind, persona, route, judges))| StepState {
                index: index as u32,
                kind,
                persona,
                route,
                judges,
                status: StepStatus::Pending,
                output: None,
                error: None,
                attempts: 0,
                calls: Vec::new(),
                replays: 0,
                started_at: None,
                finished_at: None,
            })
            .collect();
        Self {
            id,
            tenant,
            spec,
            status: JobStatus::Queued,
            version: 1,
            steps,
            evaluation: None,
            error: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
            trace,
            origin: None,
            stream: false,
            band: Band::default(),
            key: None,
        }
    }

    pub fn with_origin(mut self, origin: Option<Origin>) -> Self {
        self.origin = origin;
        self
    }

    pub fn streamed(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    pub fn in_band(mut self, band: Band) -> Self {
        self.band = band;
        self
    }

    /// Submitted with the API key `key`.
    pub fn by_key(mut self, key: Option<String>) -> Self {
        self.key = key;
        self
    }

    /// The steps' cost, when any answering route has prices.
    pub fn cost_usd(&self) -> Option<f64> {
        self.steps
            .iter()
            .filter_map(|s| s.output.as_ref()?.cost_usd)
            .reduce(|a, b| a + b)
    }

    pub fn usage(&self) -> Usage {
        self.steps
            .iter()
            .filter_map(|s| s.output.as_ref().map(|o| o.usage))
            .fold(Usage::default(), |a, b| a + b)
    }

    fn fanout(&self) -> impl Iterator<Item = &StepState> {
        self.steps.iter().filter(|s| s.kind == StepKind::Fanout)
    }

    fn synthesis_index(&self) -> Option<usize> {
        self.steps
            .iter()
            .position(|s| s.kind == StepKind::Synthesis)
    }

    /// The call for a step, built from the spec, the fan-out answers (synthesis) or the judged
    /// answer (judge).
    fn call(&self, index: usize) -> LlmCall {
        let step = &self.steps[index];
        let (messages, params) = match step.kind {
            StepKind::Fanout => (self.fanout_messages(step), self.spec.params.clone()),
            StepKind::Synthesis => {
                let synthesis = self.spec.synthesis.as_ref();
                let answers: Vec<Answer> = self
                    .fanout()
                    .map(|s| Answer {
                        persona: s.persona.clone(),
                        model: s.route.clone(),
                        text: answer_text(s).to_owned(),
                    })
                    .collect();
                let mut messages = Vec::with_capacity(2);
                if let Some(system) = synthesis.and_then(|s| s.system.clone()) {
                    messages.push(ChatMessage::new(Role::System, system));
                }
                let prompt = synthesis.map(|s| s.prompt.as_str()).unwrap_or_default();
                messages.push(ChatMessage::new(
                    Role::User,
                    template::render(
                        prompt,
                        &template::Context::synthesis(&self.spec.input, &answers),
                    )
                    .unwrap_or_else(|e| e.to_string()),
                ));
                let params = synthesis
                    .and_then(|s| s.params.clone())
                    .unwrap_or_else(|| self.spec.params.clone());
                (messages, params)
            }
            StepKind::Judge => (self.judge_messages(step), judge::params()),
        };
        LlmCall {
            job_id: self.id,
            tenant: self.tenant.clone(),
            step: step.index,
            route: step.route.clone(),
            messages,
            params,
            priority: self.spec.priority,
            deadline: self.spec.deadline.map(|d| d.timestamp_millis()),
            batch: self.origin.as_ref().map(|o| o.batch.clone()),
            judge: step.kind == StepKind::Judge,
            stream: self.stream && step.kind == StepKind::Fanout,
            band: self.band,
            key: self.key.clone(),
        }
    }

    fn fanout_messages(&self, step: &StepState) -> Vec<ChatMessage> {
        let mut messages = Vec::with_capacity(self.spec.messages.len() + 2);
        if let Some(persona) = step
            .persona
            .as_ref()
            .and_then(|name| self.spec.personas.iter().find(|p| &p.name == name))
        {
            messages.push(ChatMessage::new(Role::System, persona.system.clone()));
        }
        match &self.spec.prompt {
            // Validated at submission; a failure here means the spec changed under us.
            Some(prompt) => messages.push(ChatMessage::new(
                Role::User,
                template::render(prompt, &template::Context::input(&self.spec.input))
                    .unwrap_or_else(|e| e.to_string()),
            )),
            None => messages.extend(self.spec.messages.iter().cloned()),
        }
        messages
    }

    /// A judge's messages: the judged answer, the question it answered (its last user message)
    /// and the rubric or reference.
    fn judge_messages(&self, step: &StepState) -> Vec<ChatMessage> {
        let Some(judges) = step.judges else {
            return Vec::new();
        };
        let target_index = judges.target as usize;
        let question = self
            .steps
            .get(target_index)
            .map(|target| {
                self.call(target_index)
                    .messages
                    .iter()
                    .rev()
                    .find(|m| m.role == Role::User)
                    .map(|m| m.content.clone())
                    .unwrap_or_else(|| answer_text(target).to_owned())
            })
            .unwrap_or_default();
        let answer = self
            .steps
            .get(target_index)
            .map(answer_text)
            .unwrap_or_default();
        let judge = self
            .spec
            .evaluate
            .as_ref()
            .and_then(|e| e.assertions.get(judges.assertion as usize))
            .and_then(|a| a.check.judge());
        match judge {
            Some((kind, criterion, _)) => judge::messages(kind, criterion, &question, answer),
            None => Vec::new(),
        }
    }

    fn eval_request(&self) -> Option<EvalRequest> {
        let evaluate = self.spec.evaluate.clone()?;
        let targets = match self.synthesis_index() {
            Some(i) => vec![&self.steps[i]],
            None => self.fanout().collect(),
        };
        let targets = targets
            .into_iter()
            .map(|s| EvalTarget {
                step: s.index,
                text: answer_text(s).to_owned(),
                latency_ms: s.output.as_ref().map_or(0, |o| o.latency_ms),
                cost_usd: s.output.as_ref().and_then(|o| o.cost_usd),
                judges: self
                    .judge_steps()
                    .filter_map(|j| Some((j, j.judges?)))
                    .filter(|(_, r)| r.target == s.index)
                    .map(|(j, r)| JudgeOutcome {
                        assertion: r.assertion,
                        verdict: judge_verdict(j),
                    })
                    .collect(),
            })
            .collect();
        Some(EvalRequest {
            job_id: self.id,
            tenant: self.tenant.clone(),
            evaluate,
            targets,
        })
    }

    fn judge_steps(&self) -> impl Iterator<Item = &StepState> {
        self.steps.iter().filter(|s| s.kind == StepKind::Judge)
    }

    fn finish(&mut self, status: JobStatus, error: Option<JobError>, now: UnixMillis) {
        self.status = status;
        self.error = error;
        self.finished_at = Some(now);
    }
}

fn answer_text(step: &StepState) -> &str {
    step.output.as_ref().map_or("", |o| o.text.as_str())
}

/// A settled judge step as the evaluator sees it. The llm stage only returns answers that parse.
fn judge_verdict(step: &StepState) -> JudgeVerdict {
    match (&step.output, &step.error) {
        (Some(output), _) if step.status == StepStatus::Succeeded => {
            match judge::parse_verdict(&output.text) {
                Ok(verdict) => JudgeVerdict::Answered(verdict),
                Err(error) => JudgeVerdict::Errored {
                    error: error.to_string(),
                },
            }
        }
        (_, Some(error)) => JudgeVerdict::Errored {
            error: format!("the judge call failed ({}): {}", error.kind, error.message),
        },
        _ => JudgeVerdict::Errored {
            error: "the judge call did not finish".into(),
        },
    }
}

/// Applies one input. See the module docs for the idempotency contract.
pub fn apply(state: &JobState, input: Input) -> Transition {
    let mut next = state.clone();
    let mut effects = Vec::new();
    let now = match &input {
        Input::Submitted { at } => *at,
        Input::Step(r) => r.finished_at,
        Input::Evaluated(r) => r.evaluated_at,
        Input::Cancel { at, .. } => *at,
        Input::Abort(abort) => abort.at,
    };
    match input {
        Input::Submitted { .. } => {
            if next.status == JobStatus::Queued {
                next.status = JobStatus::Running;
                for step in next.steps.iter_mut().filter(|s| s.kind == StepKind::Fanout) {
                    step.status = StepStatus::Dispatched;
                }
            }
            // Re-issue every call still outstanding (a no-op under de-duplication).
            if !next.status.is_terminal() {
                effects.extend(
                    (0..next.steps.len())
                        .filter(|&i| next.steps[i].status == StepStatus::Dispatched)
                        .map(|i| Effect::Call(next.call(i))),
                );
            }
            advance(&mut next, now, &mut effects, false);
        }
        Input::Step(result) => {
            let mut repair = false;
            if let Some(step) = next.steps.get_mut(result.step as usize) {
                // A replayed call (from the DLQ) supersedes the result it replays, and reopens a
                // job that failed on it; anything else settles a step once.
                let replay = result.replays > step.replays;
                let applies = if replay {
                    matches!(state.status, JobStatus::Running | JobStatus::Failed)
                } else {
                    !step.status.is_settled() && !state.status.is_terminal()
                };
                if applies {
                    step.attempts = result.attempts;
                    step.calls = result.calls;
                    step.replays = result.replays;
                    step.started_at = Some(result.started_at);
                    step.finished_at = Some(result.finished_at);
                    match result.outcome {
                        StepOutcome::Succeeded(output) => {
                            step.status = StepStatus::Succeeded;
                            step.output = Some(output);
                            step.error = None;
                        }
                        StepOutcome::Failed(error) => {
                            step.status = StepStatus::Failed;
                            step.error = Some(error);
                        }
                    }
                    let cancelled = step.error.as_ref().is_some_and(|e| e.kind == CANCELLED)
                        && step.status == StepStatus::Failed;
                    if cancelled {
                        let message = step.error.as_ref().map(|e| e.message.clone());
                        next.finish(
                            JobStatus::Cancelled,
                            Some(JobError {
                                step: Some(result.step),
                                kind: CANCELLED.into(),
                                message: message.unwrap_or_default(),
                            }),
                            now,
                        );
                    } else if next.status == JobStatus::Failed {
                        next.status = JobStatus::Running;
                        next.error = None;
                        next.finished_at = None;
                    }
                }
                repair = !applies;
            }
            advance(&mut next, now, &mut effects, repair);
        }
        Input::Evaluated(result) => {
            if next.status == JobStatus::Evaluating {
                let score = if result.targets.is_empty() {
                    0.0
                } else {
                    result.targets.iter().map(|t| t.score).sum::<f64>()
                        / result.targets.len() as f64
                };
                let passed = result.targets.iter().all(|t| t.passed);
                next.evaluation = Some(JobEvaluation {
                    score,
                    passed,
                    targets: result.targets,
                });
                next.finish(JobStatus::Succeeded, None, now);
            }
            advance(&mut next, now, &mut effects, false);
        }
        Input::Cancel { reason, .. } => {
            if !next.status.is_terminal() {
                let error = JobError {
                    step: None,
                    kind: CANCELLED.into(),
                    message: reason,
                };
                next.finish(JobStatus::Cancelled, Some(error), now);
            }
        }
        Input::Abort(abort) => {
            if !next.status.is_terminal() {
                let step = abort.step.and_then(|i| next.steps.get_mut(i as usize));
                if let Some(step) = step.filter(|s| !s.status.is_settled()) {
                    step.status = StepStatus::Failed;
                    step.error = Some(StepError {
                        kind: abort.kind.clone(),
                        message: abort.message.clone(),
                        retryable: false,
                        status: None,
                    });
                    step.finished_at = Some(now);
                }
                let error = JobError {
                    step: abort.step,
                    kind: abort.kind,
                    message: abort.message,
                };
                next.finish(JobStatus::Failed, Some(error), now);
            }
        }
    }
    let changed = &next != state;
    if changed {
        next.version = state.version + 1;
        next.updated_at = now.max(state.updated_at);
    }
    Transition {
        state: next,
        changed,
        effects,
    }
}

/// Moves a running job to its next phase once the current one has settled, and (re-)emits the
/// effect that phase needs. `repair` is set for an input that changed nothing (a redelivery):
/// every call still outstanding is then emitted again.
fn advance(job: &mut JobState, now: UnixMillis, effects: &mut Vec<Effect>, repair: bool) {
    if job.status == JobStatus::Queued {
        return;
    }
    if job.status == JobStatus::Running {
        if !job.fanout().all(|s| s.status.is_settled()) {
            return;
        }
        let failed = job
            .steps
            .iter()
            .find(|s| s.kind != StepKind::Judge && s.status == StepStatus::Failed);
        if let Some(failed) = failed {
            let error = JobError {
                step: Some(failed.index),
                kind: failed
                    .error
                    .as_ref()
                    .map(|e| e.kind.clone())
                    .unwrap_or_default(),
                message: failed
                    .error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            };
            job.finish(JobStatus::Failed, Some(error), now);
        } else if let Some(i) = job.synthesis_index()
            && !job.steps[i].status.is_settled()
        {
            job.steps[i].status = StepStatus::Dispatched;
            effects.push(Effect::Call(job.call(i)));
            return;
        } else if job.judge_steps().any(|s| !s.status.is_settled()) {
            // Judges run once the answers they judge are in; a failed judge is an errored
            // assertion, not a failed job. Several are outstanding at once, so one judge's
            // result does not re-send the others (past the work stream's duplicate window that
            // would call them again); only an input that was already applied, the redelivery
            // after a crash between "state saved" and "effects published", re-sends them all.
            for i in 0..job.steps.len() {
                let send = job.steps[i].kind == StepKind::Judge
                    && match job.steps[i].status {
                        StepStatus::Pending => true,
                        StepStatus::Dispatched => repair,
                        StepStatus::Succeeded | StepStatus::Failed => false,
                    };
                if send {
                    job.steps[i].status = StepStatus::Dispatched;
                    effects.push(Effect::Call(job.call(i)));
                }
            }
            return;
        } else if let Some(request) = job.eval_request() {
            job.status = JobStatus::Evaluating;
            effects.push(Effect::Evaluate(request));
            return;
        } else {
            job.finish(JobStatus::Succeeded, None, now);
        }
    }
    if job.status == JobStatus::Evaluating {
        effects.extend(job.eval_request().map(Effect::Evaluate));
    }
}

#[cfg(test)]
mod tests;
