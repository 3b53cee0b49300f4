use serde_json::json;

use super::*;
use crate::messages::{AssertionResult, JudgeVerdict, StepError};
use crate::spec::JobSpec;

fn roundtable() -> JobSpec {
    serde_json::from_value(json!({
        "model": "sim:echo",
        "prompt": "Review: {{ proposal }}",
        "input": {"proposal": "move support to LLM drafts"},
        "personas": [
            {"name": "cfo", "system": "You are the CFO."},
            {"name": "lead", "system": "You lead support."},
            {"name": "sec", "system": "You are security."}
        ],
        "synthesis": {"prompt": "{% for a in answers %}[{{ a.persona }}] {{ a.text }}\n{% endfor %}"},
        "evaluate": {"threshold": 0.5, "assertions": [{"type": "contains", "value": "cfo"}]}
    }))
    .unwrap_or_default()
}

fn job(spec: JobSpec) -> JobState {
    let tenant = Tenant::new("t").unwrap_or_else(|_| unreachable!());
    JobState::new(JobId::new(), tenant, spec, 1_000, None)
}

fn ok(state: &JobState, step: u32, text: &str) -> Input {
    Input::Step(StepResult {
        job_id: state.id,
        tenant: state.tenant.clone(),
        step,
        route: "sim:echo".into(),
        outcome: StepOutcome::Succeeded(StepOutput {
            text: text.into(),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
            },
            latency_ms: 1,
            finish_reason: None,
            route: "sim:echo".into(),
            cost_usd: None,
            tool_calls: None,
            cut: None,
        }),
        attempts: 1,
        calls: Vec::new(),
        replays: 0,
        started_at: 1_001,
        finished_at: 1_002,
    })
}

fn calls(effects: &[Effect]) -> Vec<&LlmCall> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Call(c) => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn plans_personas_times_models_then_synthesis() {
    let mut spec = roundtable();
    spec.model = None;
    spec.models = vec!["a".into(), "b".into()];
    let state = job(spec);
    let plan: Vec<_> = state
        .steps
        .iter()
        .map(|s| (s.kind, s.persona.as_deref(), s.route.as_str()))
        .collect();
    assert_eq!(plan.len(), 7);
    assert_eq!(plan[0], (StepKind::Fanout, Some("cfo"), "a"));
    assert_eq!(plan[1], (StepKind::Fanout, Some("cfo"), "b"));
    assert_eq!(plan[5], (StepKind::Fanout, Some("sec"), "b"));
    assert_eq!(plan[6], (StepKind::Synthesis, None, "a"));
}

#[test]
fn roundtable_runs_fanout_synthesis_evaluation_in_order() {
    let state = job(roundtable());
    let t = apply(&state, Input::Submitted { at: 1_000 });
    assert!(t.changed);
    assert_eq!(t.state.status, JobStatus::Running);
    let first = calls(&t.effects);
    assert_eq!(first.len(), 3);
    assert_eq!(first[0].messages[0].content, "You are the CFO.");
    assert_eq!(
        first[0].messages[1].content,
        "Review: move support to LLM drafts"
    );

    let mut s = t.state;
    for (i, text) in ["cfo says no", "lead says yes"].iter().enumerate() {
        let t = apply(&s, ok(&s, i as u32, text));
        assert!(t.changed && t.effects.is_empty());
        s = t.state;
    }
    let t = apply(&s, ok(&s, 2, "sec says maybe"));
    let synth = calls(&t.effects);
    assert_eq!(synth.len(), 1);
    assert_eq!(synth[0].step, 3);
    assert_eq!(
        synth[0].messages[0].content,
        "[cfo] cfo says no\n[lead] lead says yes\n[sec] sec says maybe\n"
    );
    s = t.state;

    let t = apply(&s, ok(&s, 3, "cfo and lead disagree: go"));
    assert_eq!(t.state.status, JobStatus::Evaluating);
    let request = match t.effects.as_slice() {
        [Effect::Evaluate(r)] => r.clone(),
        other => panic!("expected one evaluation, got {other:?}"),
    };
    assert_eq!(request.targets.len(), 1);
    assert_eq!(request.targets[0].step, 3);
    s = t.state;

    let evaluated = EvaluationResult {
        job_id: s.id,
        tenant: s.tenant.clone(),
        targets: vec![TargetEvaluation {
            step: 3,
            score: 1.0,
            passed: true,
            threshold: 0.5,
            assertions: vec![AssertionResult {
                index: 0,
                kind: "contains".into(),
                metric: None,
                weight: 1.0,
                passed: true,
                score: 1.0,
                reason: "found".into(),
                errored: false,
            }],
        }],
        evaluated_at: 2_000,
    };
    let t = apply(&s, Input::Evaluated(evaluated.clone()));
    assert_eq!(t.state.status, JobStatus::Succeeded);
    assert!(t.effects.is_empty());
    assert_eq!(t.state.finished_at, Some(2_000));
    assert_eq!(t.state.usage().total(), 60);
    assert!(t.state.version > s.version);

    // Redelivered after the end: nothing changes, nothing is published.
    let again = apply(&t.state, Input::Evaluated(evaluated));
    assert!(!again.changed);
    assert!(again.effects.is_empty());
}

#[test]
fn redelivered_inputs_change_nothing_and_repeat_their_effects() {
    let state = job(roundtable());
    let started = apply(&state, Input::Submitted { at: 1_000 });
    let replay = apply(&started.state, Input::Submitted { at: 5_000 });
    assert!(!replay.changed);
    assert_eq!(calls(&replay.effects), calls(&started.effects));

    let mut s = started.state;
    for i in 0..3 {
        s = apply(&s, ok(&s, i, "x")).state;
    }
    let dup = apply(&s, ok(&s, 1, "a different text"));
    assert!(!dup.changed, "a settled step is never overwritten");
    assert_eq!(
        calls(&dup.effects).len(),
        1,
        "the synthesis call is re-issued"
    );
    assert_eq!(
        dup.state.steps[1].output.as_ref().map(|o| o.text.as_str()),
        Some("x")
    );
}

#[test]
fn a_failed_step_fails_the_job_once_every_step_settled() {
    let state = job(roundtable());
    let mut s = apply(&state, Input::Submitted { at: 1_000 }).state;
    let failed = Input::Step(StepResult {
        job_id: s.id,
        tenant: s.tenant.clone(),
        step: 0,
        route: "sim:echo".into(),
        outcome: StepOutcome::Failed(StepError {
            kind: "server_error".into(),
            message: "boom".into(),
            retryable: true,
            status: Some(500),
        }),
        attempts: 9,
        calls: Vec::new(),
        replays: 0,
        started_at: 1,
        finished_at: 2,
    });
    s = apply(&s, failed).state;
    assert_eq!(s.status, JobStatus::Running, "waits for the other steps");
    s = apply(&s, ok(&s, 1, "x")).state;
    let t = apply(&s, ok(&s, 2, "y"));
    assert_eq!(t.state.status, JobStatus::Failed);
    assert!(t.effects.is_empty());
    let error = t.state.error.as_ref();
    assert_eq!(
        error.map(|e| (e.step, e.message.as_str())),
        Some((Some(0), "boom"))
    );
}

#[test]
fn without_synthesis_every_fanout_answer_is_evaluated() {
    let mut spec = roundtable();
    spec.synthesis = None;
    spec.personas.clear();
    spec.model = None;
    spec.models = vec!["a".into(), "b".into()];
    let mut s = apply(&job(spec), Input::Submitted { at: 1 }).state;
    s = apply(&s, ok(&s, 0, "one")).state;
    let t = apply(&s, ok(&s, 1, "two"));
    match t.effects.as_slice() {
        [Effect::Evaluate(r)] => {
            assert_eq!(r.targets.iter().map(|t| t.step).collect::<Vec<_>>(), [0, 1])
        }
        other => panic!("expected one evaluation, got {other:?}"),
    }
}

#[test]
fn a_replayed_call_reopens_the_job_it_failed() {
    let state = job(roundtable());
    let mut s = apply(&state, Input::Submitted { at: 1_000 }).state;
    let failure = |replays| {
        Input::Step(StepResult {
            job_id: s.id,
            tenant: s.tenant.clone(),
            step: 0,
            route: "sim:echo".into(),
            outcome: StepOutcome::Failed(StepError {
                kind: "server_error".into(),
                message: "down".into(),
                retryable: true,
                status: Some(503),
            }),
            attempts: 15,
            calls: Vec::new(),
            replays,
            started_at: 1,
            finished_at: 2,
        })
    };
    s = apply(&s, failure(0)).state;
    s = apply(&s, ok(&s, 1, "x")).state;
    s = apply(&s, ok(&s, 2, "y")).state;
    assert_eq!(s.status, JobStatus::Failed);

    // The original call's result again (a redelivery) changes nothing.
    let mut success = ok(&s, 0, "after the replay");
    assert!(!apply(&s, success.clone()).changed);

    // The replay's result supersedes the failure and the job goes on to its synthesis.
    if let Input::Step(result) = &mut success {
        result.replays = 1;
    }
    let t = apply(&s, success.clone());
    assert_eq!(t.state.status, JobStatus::Running);
    assert_eq!((t.state.error.clone(), t.state.finished_at), (None, None));
    assert_eq!(t.state.steps[0].status, StepStatus::Succeeded);
    assert_eq!(calls(&t.effects).len(), 1, "the synthesis is dispatched");
    assert!(
        !apply(&t.state, success).changed,
        "the same replay twice changes nothing"
    );
}

fn failed(state: &JobState, step: u32, kind: &str) -> Input {
    Input::Step(StepResult {
        job_id: state.id,
        tenant: state.tenant.clone(),
        step,
        route: "sim:echo".into(),
        outcome: StepOutcome::Failed(StepError {
            kind: kind.into(),
            message: format!("{kind} happened"),
            retryable: false,
            status: None,
        }),
        attempts: 1,
        calls: Vec::new(),
        replays: 0,
        started_at: 1,
        finished_at: 2,
    })
}

fn judged() -> JobSpec {
    serde_json::from_value(json!({
        "models": ["a", "b"],
        "messages": [{"role": "user", "content": "Capital of France?"}],
        "evaluate": {"assertions": [
            {"type": "contains", "value": "Paris"},
            {"type": "llm_rubric", "value": "Names a city.", "model": "judge"},
            {"type": "factuality", "value": "Paris"}
        ]}
    }))
    .unwrap_or_default()
}

#[test]
fn judges_run_after_the_answers_they_judge_and_feed_the_evaluation() {
    let state = job(judged());
    let plan: Vec<_> = state
        .steps
        .iter()
        .map(|s| {
            (
                s.kind,
                s.route.as_str(),
                s.judges.map(|j| (j.target, j.assertion)),
            )
        })
        .collect();
    assert_eq!(
        plan,
        [
            (StepKind::Fanout, "a", None),
            (StepKind::Fanout, "b", None),
            (StepKind::Judge, "judge", Some((0, 1))),
            (StepKind::Judge, "a", Some((0, 2))),
            (StepKind::Judge, "judge", Some((1, 1))),
            (StepKind::Judge, "a", Some((1, 2))),
        ],
        "one judge per judge assertion and answer; without `model`, the job's first route"
    );
    let t = apply(&state, Input::Submitted { at: 1 });
    assert_eq!(
        calls(&t.effects).len(),
        2,
        "only the answers are called first"
    );
    let mut s = apply(&t.state, ok(&t.state, 0, "Paris.")).state;
    let t = apply(&s, ok(&s, 1, "Lyon."));
    let judges = calls(&t.effects);
    assert_eq!(judges.len(), 4);
    assert!(judges.iter().all(|c| c.judge && c.params.wants_json()));
    assert!(judges[0].messages[1].content.contains("<answer>\nParis."));
    assert!(judges[0].messages[1].content.contains("Capital of France?"));
    assert!(judges[2].messages[1].content.contains("<answer>\nLyon."));
    s = t.state;
    let t = apply(&s, ok(&s, 2, r#"{"reason": "a city", "score": 1}"#));
    assert!(
        calls(&t.effects).is_empty(),
        "one judge's verdict does not send the other judges again"
    );
    s = t.state;
    let again = apply(&s, ok(&s, 2, r#"{"reason": "a city", "score": 1}"#));
    assert!(!again.changed);
    assert_eq!(
        calls(&again.effects)
            .iter()
            .map(|c| c.step)
            .collect::<Vec<_>>(),
        [3, 4, 5],
        "a redelivered verdict re-sends the judges still outstanding"
    );
    s = apply(&s, ok(&s, 3, r#"{"reason": "right", "score": 0.9}"#)).state;
    s = apply(&s, ok(&s, 4, r#"{"reason": "a city", "score": 1}"#)).state;
    // A judge that never answered validly is an errored verdict, not a failed job.
    let t = apply(&s, failed(&s, 5, "invalid_judge_answer"));
    assert_eq!(t.state.status, JobStatus::Evaluating);
    let request = match t.effects.as_slice() {
        [Effect::Evaluate(r)] => r.clone(),
        other => panic!("expected one evaluation, got {other:?}"),
    };
    assert_eq!(
        request.targets.len(),
        2,
        "the judges are not targets themselves"
    );
    let second = &request.targets[1].judges;
    assert_eq!(second.len(), 2);
    assert_eq!(second[0].assertion, 1);
    assert!(matches!(&second[0].verdict, JudgeVerdict::Answered(v) if v.score == 1.0));
    assert!(
        matches!(&second[1].verdict, JudgeVerdict::Errored { error } if error.contains("invalid_judge_answer"))
    );
}

#[test]
fn a_cancel_ends_the_job_and_later_results_change_nothing() {
    let state = job(roundtable());
    let s = apply(&state, Input::Submitted { at: 1 }).state;
    let t = apply(
        &s,
        Input::Cancel {
            at: 5,
            reason: "by request".into(),
        },
    );
    assert!(t.changed && t.effects.is_empty());
    assert_eq!(t.state.status, JobStatus::Cancelled);
    assert_eq!(
        t.state.error.as_ref().map(|e| e.kind.as_str()),
        Some(CANCELLED)
    );
    let late = apply(&t.state, ok(&t.state, 0, "too late"));
    assert!(!late.changed && late.effects.is_empty());
    let resubmitted = apply(&t.state, Input::Submitted { at: 9 });
    assert!(
        resubmitted.effects.is_empty(),
        "a cancelled job dispatches nothing"
    );

    // A call the llm stage refused because the batch was cancelled cancels the job too.
    let s = apply(&job(roundtable()), Input::Submitted { at: 1 }).state;
    let t = apply(&s, failed(&s, 1, CANCELLED));
    assert_eq!(t.state.status, JobStatus::Cancelled);
}

#[test]
fn calls_carry_priority_deadline_and_batch() {
    let mut spec = roundtable();
    spec.priority = 7;
    spec.deadline = chrono::DateTime::from_timestamp_millis(10_000);
    let origin = crate::batch::Origin {
        batch: "batch_1".into(),
        custom_id: "c1".into(),
        endpoint: crate::batch::Endpoint::Jobs,
        line: 0,
    };
    let state = job(spec).with_origin(Some(origin));
    let t = apply(&state, Input::Submitted { at: 1 });
    let first = calls(&t.effects)[0];
    assert_eq!(
        (first.priority, first.deadline, first.batch.as_deref()),
        (7, Some(10_000), Some("batch_1"))
    );
}

#[test]
fn an_abort_fails_the_job_and_its_open_step_once() {
    let state = job(roundtable());
    let s = apply(&state, Input::Submitted { at: 1 }).state;
    let s = apply(&s, ok(&s, 0, "first")).state;
    let abort = |step| {
        Input::Abort(JobAbort {
            job_id: s.id,
            tenant: s.tenant.clone(),
            step: Some(step),
            kind: "too_large".into(),
            message: "step 1's answer is larger than the bus carries".into(),
            at: 7,
        })
    };
    let t = apply(&s, abort(1));
    assert!(t.changed && t.effects.is_empty());
    assert_eq!(t.state.status, JobStatus::Failed);
    let error = t.state.error.as_ref().map(|e| (e.step, e.kind.as_str()));
    assert_eq!(error, Some((Some(1), "too_large")));
    assert_eq!(t.state.steps[1].status, StepStatus::Failed);
    assert_eq!(
        t.state.steps[0].status,
        StepStatus::Succeeded,
        "a settled step keeps its answer"
    );
    let again = apply(&t.state, abort(1));
    assert!(!again.changed, "an abort applies once");
    let late = apply(&t.state, ok(&t.state, 1, "too late"));
    assert!(!late.changed && late.effects.is_empty());
}
