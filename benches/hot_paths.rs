//! Micro-benchmarks of Chorus's hot paths, so that a regression shows up as a number:
//! `cargo bench --bench hot_paths` (README.md, "Micro-benchmarks", has the figures of the
//! development machine and what each benchmark measures).
//!
//! The inputs are realistic and made by the real code: a two-persona roundtable job (a prompt
//! template, a synthesis, four assertions of which one is an LLM judge) is driven through the
//! state machine (`core::job::apply`) with answers of about 250 tokens each, and the
//! snapshots, calls and results of that run are what the benchmarks encode, decode, evaluate and
//! store.
//!
//! - `codec::encode`, `codec::decode`: an envelope to and from MessagePack
//!   (`chorus_core::codec`), for the finished job's state, the synthesis call and a fan-out step's
//!   result.
//! - `spec::validate_roundtable`: the job spec's validation as the edge runs it on each submission
//!   (routes checked, every assertion compiled).
//! - `template::render_prompt`, `template::render_synthesis`: the minijinja renders the state
//!   machine does when it builds a fan-out call and the synthesis call.
//! - `job::apply_step_result`: one transition of the orchestrator (the second fan-out answer
//!   arrives; the synthesis call is built).
//! - `eval::prose_answer`, `eval::json_answer`: an evaluator worker scoring one answer against
//!   several assertion kinds (checks compiled once, as in a worker's cache).
//! - `limiter::admit_request`: a rate-limited route's admission. The GCRA decision is a closure
//!   inside `RouteLimiter::admit_request_unless` that only runs inside the compare-and-set loop
//!   on the `<prefix>_limits` KV bucket, so it is measured as the llm role pays for it: a KV read,
//!   the decision and the compare-and-set, against a local `nats-server` (skipped, with a note,
//!   when none is found).
//! - `store::write_batch`: the persister's batch write (`Store::write_batch`) of 100 and of 512
//!   (its default `persister.batch_size`) finished-job snapshots into a temporary SQLite
//!   database.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark's set-up fails loudly: there is no caller to hand an error to"
)]

use std::collections::{HashSet, VecDeque};
use std::sync::LazyLock;
use std::time::Duration;

use chorus_core::ids::UnixMillis;
use chorus_core::job::{Effect, Input, JobState, JobStatus, apply};
use chorus_core::judge::Verdict;
use chorus_core::messages::{
    Attempt, Envelope, EvalRequest, EvalTarget, JudgeOutcome, JudgeVerdict, LlmCall, StepOutcome,
    StepOutput, StepResult, Usage,
};
use chorus_core::spec::{Evaluate, JobSpec};
use chorus_core::{JobId, Tenant};
use chorus_eval::{Evaluator, SpecValidator};
use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};
use serde_json::json;

/// The allocator the `chorus` binary ships with, so allocation-heavy paths cost what they cost
/// there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    use chorus_core::codec::{CodecError, encode};
    let s = &*SCENARIO;
    let size = |bytes: Result<bytes::Bytes, CodecError>| bytes.map_or(0, |b| b.len());
    eprintln!(
        "inputs: JobState {} B, LlmCall {} B, StepResult {} B (MessagePack); answers of {}, {} and \
         {} characters",
        size(encode(&s.finished)),
        size(encode(&s.synthesis_call)),
        size(encode(&s.fanout_result)),
        CFO_ANSWER.len(),
        SUPPORT_ANSWER.len(),
        SYNTHESIS_ANSWER.len(),
    );
    // At least a second per benchmark (a few thousand samples of the fast ones): divan's default
    // of 100 samples takes a few milliseconds there, where one busy moment of a 2-core machine
    // moves the median. `--min-time`, `--sample-count` and the rest of divan's options still
    // apply (`cargo bench --bench hot_paths -- --help`).
    divan::Divan::default()
        .min_time(Duration::from_secs(1))
        .config_with_args()
        .main();
}

// ---------------------------------------------------------------------------------------------
// The scenario: one roundtable job, run through the state machine.

const ROUTE: &str = "sim:echo";

/// Unix milliseconds at which the scenario's job is submitted (2026-01-01T00:00:00Z).
const T0: UnixMillis = 1_767_225_600_000;

fn roundtable_spec() -> JobSpec {
    serde_json::from_value(json!({
        "model": ROUTE,
        "prompt": "Read this proposal and give your view in about two hundred words, from your \
                   role. End with a recommendation.\n\nProposal: {{ proposal }}\n\nConstraints:\n\
                   {% for c in constraints %}- {{ c }}\n{% endfor %}",
        "input": {
            "proposal": "We plan to move our customer-support triage to an LLM that drafts \
                         replies for agents. Budget: 40k EUR per year. Rollout in two phases over \
                         six months, starting with English tickets.",
            "constraints": ["no customer data leaves the EU", "agents approve every reply",
                            "payback within 18 months"]
        },
        "personas": [
            {"name": "cfo", "system": "You are the CFO of a mid-sized company. You care about \
                                        cost, payback and risk."},
            {"name": "support-lead", "system": "You lead a team of 30 support agents. You care \
                                                 about workload, quality and morale."}
        ],
        "synthesis": {
            "system": "You chair the review board. Be concise and decisive.",
            "prompt": "Summarise where the two reviewers agree and disagree, then recommend go \
                       or no-go.\n{% for a in answers %}\n[{{ a.persona }} via {{ a.model }}]\n\
                       {{ a.text }}\n{% endfor %}"
        },
        "params": {"temperature": 0.3, "max_tokens": 600},
        "evaluate": {
            "threshold": 0.75,
            "assertions": [
                {"type": "icontains", "value": "recommend", "metric": "decision"},
                {"type": "regex", "pattern": "(?i)\\b(go|no-go)\\b", "metric": "decision"},
                {"type": "length", "min": 400, "max": 4000, "metric": "substance"},
                {"type": "llm_rubric", "value": "Names at least one agreement and one \
                 disagreement, and ends with a clear go or no-go.", "weight": 2,
                 "metric": "quality"}
            ]
        },
        "metadata": {"workload": "persona-roundtable", "team": "support-ops"}
    }))
    .expect("the roundtable spec reads")
}

const CFO_ANSWER: &str = "From a financial standpoint the proposal is attractive but not yet \
proven. At 40k EUR per year the tool costs less than one additional agent, so it pays for itself \
if it saves each of our thirty agents roughly ninety minutes a week; the vendor's own case studies \
claim more, but they come from companies with simpler tickets than ours. I would therefore insist \
on measuring handle time and reopen rates for the English pilot against a control group before we \
commit to the second phase. The larger risk is not the licence but the hidden costs: integration \
work with our ticketing system, the time senior agents spend reviewing drafts in the first months, \
and a possible price increase at renewal once we depend on the tool. The contract should cap that \
increase and let us leave after the pilot without penalty. Keeping customer data in the EU is \
non-negotiable, and I want legal to confirm that the vendor's sub-processors meet it. \
Recommendation: go for phase one with a fixed three-month pilot budget, and decide on phase two \
only on measured savings, not on projections.";

const SUPPORT_ANSWER: &str = "My team is stretched, and anything that removes the blank-page \
moment on routine tickets will be welcome: password resets, delivery questions and refund \
policies make up about half of our volume, and a good draft there saves real time. What worries \
me is quality on the other half, the angry or ambiguous tickets, where a fluent but wrong draft \
is worse than no draft because a tired agent may approve it. Agents must keep the final word on \
every reply, drafts must be easy to discard, and we need a simple way to flag bad suggestions so \
the prompts improve. Morale matters too: if people read this as the first step towards \
replacing them, we will lose our best agents before the pilot ends, so I want to present it as \
a tool that takes over the dull work. Training takes about two hours per agent, and the pilot \
should start with volunteers on the English queue. Recommendation: go, provided agents approve \
every reply, we track quality and not only speed, and the team is involved in the rollout from \
the first day.";

const SYNTHESIS_ANSWER: &str = "Both reviewers support a cautious start. They agree that the \
English pilot is the right first step, that agents must approve every reply, and that success \
has to be measured rather than assumed: the CFO asks for handle time and reopen rates against a \
control group, the support lead for quality as well as speed. They also agree that the tool \
should take over routine tickets such as password resets and delivery questions first. They \
disagree on what could sink the project. The CFO sees the main risk in hidden costs, integration \
work, review time and price increases at renewal, and wants an exit clause after the pilot. The \
support lead sees it in wrong drafts on difficult tickets and in morale, if agents read the \
project as a step towards replacing them. Neither objection blocks a pilot, and both can be \
written into its terms: a fixed three-month budget, a capped renewal price, volunteers first, an \
easy way to flag bad drafts, and EU data residency confirmed by legal. Recommendation: go for \
phase one under those terms, and make phase two a separate no-go unless the pilot shows measured \
savings and stable quality.";

const VERDICT: &str = "{\"reason\": \"It names the shared support for a measured pilot and the \
different risks each reviewer sees, and ends with a clear go for phase one.\", \"score\": 0.9}";

/// What the benchmarks take from the scenario's run.
struct Scenario {
    spec: JobSpec,
    /// The final snapshot: every step answered, evaluated, succeeded.
    finished: JobState,
    /// The job just before its second fan-out answer arrives, and that answer.
    before_second_answer: JobState,
    second_answer: StepResult,
    /// The first fan-out step's result.
    fanout_result: StepResult,
    /// The call of the synthesis step (its prompt quotes both fan-out answers).
    synthesis_call: LlmCall,
}

static SCENARIO: LazyLock<Scenario> = LazyLock::new(run_roundtable);

/// Drives the roundtable through `job::apply`, answering each call once (duplicate effects, which
/// idempotent transitions may repeat, are not answered again).
fn run_roundtable() -> Scenario {
    let spec = roundtable_spec();
    let tenant = Tenant::new("acme").expect("tenant");
    let id = JobId::derived(&tenant, "bench-roundtable");
    let mut state = JobState::new(id, tenant, spec.clone(), T0, None);
    let mut now = T0;
    let mut inputs = VecDeque::from([Input::Submitted { at: now }]);
    let (mut answered, mut evaluated) = (HashSet::new(), false);
    let mut evaluator = Evaluator::new(16);
    let (mut results, mut calls, mut before_second) = (Vec::new(), Vec::new(), None);
    while let Some(input) = inputs.pop_front() {
        if matches!(&input, Input::Step(r) if r.step == 1) {
            before_second = Some(state.clone());
        }
        let transition = apply(&state, input);
        state = transition.state;
        for effect in transition.effects {
            now += 1_500;
            match effect {
                Effect::Call(call) if answered.insert(call.step) => {
                    let result = answer(&call, now);
                    results.push(result.clone());
                    calls.push(call);
                    inputs.push_back(Input::Step(result));
                }
                Effect::Evaluate(request) if !evaluated => {
                    evaluated = true;
                    inputs.push_back(Input::Evaluated(evaluator.evaluate(&request, now)));
                }
                Effect::Call(_) | Effect::Evaluate(_) => {}
            }
        }
    }
    assert_eq!(state.status, JobStatus::Succeeded, "{:?}", state.error);
    assert_eq!(state.steps.len(), 4, "two personas, a synthesis, a judge");
    let step = |list: &[StepResult], n: u32| list.iter().find(|r| r.step == n).cloned();
    Scenario {
        spec,
        before_second_answer: before_second.expect("a second fan-out answer"),
        second_answer: step(&results, 1).expect("step 1"),
        fanout_result: step(&results, 0).expect("step 0"),
        synthesis_call: calls
            .into_iter()
            .find(|c| c.step == 2)
            .expect("a synthesis call"),
        finished: state,
    }
}

/// A successful answer to `call` at `now`: the fan-out answers and the synthesis above, the
/// judge's verdict.
fn answer(call: &LlmCall, now: UnixMillis) -> StepResult {
    let text = match (call.judge, call.step) {
        (true, _) => VERDICT,
        (false, 0) => CFO_ANSWER,
        (false, 1) => SUPPORT_ANSWER,
        (false, _) => SYNTHESIS_ANSWER,
    };
    let prompt: usize = call.messages.iter().map(|m| m.content.len()).sum();
    // About four characters a token.
    let usage = Usage {
        prompt_tokens: (prompt / 4) as u32,
        completion_tokens: (text.len() / 4) as u32,
    };
    let latency_ms = 1_180;
    StepResult {
        job_id: call.job_id,
        tenant: call.tenant.clone(),
        step: call.step,
        route: call.route.clone(),
        outcome: StepOutcome::Succeeded(StepOutput {
            text: text.to_owned(),
            usage,
            latency_ms,
            finish_reason: Some("stop".into()),
            route: call.route.clone(),
            cost_usd: Some(0.000_42),
            tool_calls: None,
            cut: None,
        }),
        attempts: 1,
        calls: vec![Attempt {
            route: call.route.clone(),
            started_at: now - latency_ms as i64,
            latency_ms,
            outcome: "ok".into(),
            status: Some(200),
            message: None,
        }],
        replays: 0,
        started_at: now - latency_ms as i64 - 20,
        finished_at: now,
    }
}

/// A runtime like the one roles run on (multi-threaded).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

// ---------------------------------------------------------------------------------------------

/// Envelopes to and from MessagePack (`chorus_core::codec`): what every role does with every
/// message it publishes or receives. The counter is the body's size.
mod codec {
    use chorus_core::codec as wire;

    use super::*;

    pub trait Sample: Envelope {
        fn sample() -> Self;
    }

    impl Sample for JobState {
        fn sample() -> Self {
            SCENARIO.finished.clone()
        }
    }

    impl Sample for LlmCall {
        fn sample() -> Self {
            SCENARIO.synthesis_call.clone()
        }
    }

    impl Sample for StepResult {
        fn sample() -> Self {
            SCENARIO.fanout_result.clone()
        }
    }

    #[divan::bench(types = [JobState, LlmCall, StepResult])]
    fn encode<T: Sample>(bencher: Bencher) {
        let value = T::sample();
        let size = wire::encode(&value).expect("encodes").len();
        bencher
            .counter(BytesCount::new(size))
            .bench_local(|| wire::encode(black_box(&value)).expect("encodes"));
    }

    #[divan::bench(types = [JobState, LlmCall, StepResult])]
    fn decode<T: Sample>(bencher: Bencher) {
        let body = wire::encode(&T::sample()).expect("encodes");
        let header = wire::type_header::<T>();
        bencher
            .counter(BytesCount::new(body.len()))
            .bench_local(|| {
                wire::decode::<T>(Some(black_box(&header)), black_box(&body)).expect("decodes")
            });
    }
}

/// A job spec's validation, as the edge runs it on every submission: routes checked, templates
/// rendered with the input, every assertion compiled (the regex included).
mod spec {
    use super::*;

    #[divan::bench]
    fn validate_roundtable(bencher: Bencher) {
        let routes = chorus_llm::routes::Routes::new(&[]).expect("routes");
        let validator = SpecValidator::new(&routes);
        let spec = &SCENARIO.spec;
        assert_eq!(spec.validate(&validator), [], "the roundtable is valid");
        bencher.bench_local(|| black_box(spec).validate(&validator));
    }
}

/// The minijinja renders of the state machine: each fan-out call's prompt, and the synthesis
/// prompt over both answers (`core::template::render`, a fresh environment each time).
mod template {
    use chorus_core::template::{Answer, Context, render};

    use super::*;

    #[divan::bench]
    fn render_prompt(bencher: Bencher) {
        let spec = &SCENARIO.spec;
        let prompt = spec.prompt.as_deref().expect("a prompt template");
        let context = Context::input(&spec.input);
        bencher.bench_local(|| render(black_box(prompt), &context).expect("renders"));
    }

    #[divan::bench]
    fn render_synthesis(bencher: Bencher) {
        let spec = &SCENARIO.spec;
        let synthesis = spec.synthesis.as_ref().expect("a synthesis");
        let answers =
            [("cfo", CFO_ANSWER), ("support-lead", SUPPORT_ANSWER)].map(|(p, text)| Answer {
                persona: Some(p.into()),
                model: ROUTE.into(),
                text: text.into(),
            });
        let context = Context::synthesis(&spec.input, &answers);
        bencher.bench_local(|| render(black_box(&synthesis.prompt), &context).expect("renders"));
    }
}

/// One transition of the orchestrator's state machine: the second fan-out answer settles its
/// step, and the synthesis call is built (its template rendered over both answers).
mod job {
    use super::*;

    #[divan::bench]
    fn apply_step_result(bencher: Bencher) {
        let state = &SCENARIO.before_second_answer;
        let result = &SCENARIO.second_answer;
        let check = apply(state, Input::Step(result.clone()));
        assert!(
            check.changed && matches!(&check.effects[..], [Effect::Call(c)] if c.step == 2),
            "the second answer dispatches the synthesis"
        );
        bencher
            .with_inputs(|| Input::Step(result.clone()))
            .bench_local_values(|input| apply(black_box(state), input));
    }
}

/// An evaluator worker scoring one answer of a few hundred tokens. The worker's evaluator keeps
/// compiled checks in a cache, so after the first call only the checks run, as here.
mod eval {
    use super::*;

    fn request(text: &str, evaluate: serde_json::Value, judges: Vec<JudgeOutcome>) -> EvalRequest {
        let evaluate: Evaluate = serde_json::from_value(evaluate).expect("assertions read");
        EvalRequest {
            job_id: SCENARIO.finished.id,
            tenant: SCENARIO.finished.tenant.clone(),
            evaluate,
            targets: vec![EvalTarget {
                step: 2,
                text: text.to_owned(),
                latency_ms: 1_180,
                cost_usd: Some(0.000_42),
                judges,
            }],
        }
    }

    fn bench(bencher: Bencher, request: &EvalRequest) {
        let mut evaluator = Evaluator::new(1024);
        let first = evaluator.evaluate(request, T0);
        let results = &first.targets[0].assertions;
        assert!(
            results.iter().all(|a| a.passed),
            "every assertion passes: {results:#?}"
        );
        bencher.bench_local(|| evaluator.evaluate(black_box(request), T0));
    }

    /// The synthesis answer against text checks, a regex, a length, ROUGE-L similarity to a
    /// reference and a judge's verdict.
    #[divan::bench]
    fn prose_answer(bencher: Bencher) {
        let assertions = json!({"threshold": 0.75, "assertions": [
            {"type": "contains", "value": "Recommendation:"},
            {"type": "icontains", "value": "english pilot"},
            {"type": "contains_any", "values": ["go for phase one", "no-go", "postpone"]},
            {"type": "contains_all", "values": ["CFO", "support lead", "pilot"]},
            {"type": "regex", "pattern": "(?i)\\b(go|no-go)\\b"},
            {"type": "regex", "pattern": "(?m)^Both reviewers\\b.*\\bpilot\\b"},
            {"type": "length", "min": 400, "max": 4000},
            {"type": "similarity", "method": "rouge_l", "threshold": 0.1,
             "value": "The reviewers agree on an English pilot with agents approving every \
                       reply. They disagree on the main risk: hidden costs for the CFO, quality \
                       and morale for the support lead. Recommendation: go for phase one."},
            {"type": "llm_rubric", "value": "Ends with a clear go or no-go.", "weight": 2}
        ]});
        let verdict = JudgeOutcome {
            assertion: 8,
            verdict: JudgeVerdict::Answered(Verdict {
                score: 0.9,
                reason: "A clear go for phase one.".into(),
            }),
        };
        bench(
            bencher,
            &request(SYNTHESIS_ANSWER, assertions, vec![verdict]),
        );
    }

    /// A JSON answer in a Markdown code fence (as models give it) against `is_json`, a JSON
    /// schema and JSON paths.
    #[divan::bench]
    fn json_answer(bencher: Bencher) {
        let answer = format!(
            "```json\n{}\n```",
            json!({
                "scores": {"clarity": 4, "structure": 3, "evidence": 2},
                "decision": "go",
                "agreements": ["an English pilot first", "agents approve every reply",
                               "measure before phase two"],
                "disagreements": [
                    {"topic": "main risk", "cfo": "hidden costs and renewal price",
                     "support-lead": "wrong drafts on difficult tickets and morale"}
                ],
                "feedback": SYNTHESIS_ANSWER
            })
        );
        let assertions = json!({"assertions": [
            {"type": "is_json"},
            {"type": "json_schema", "schema": {
                "type": "object",
                "required": ["scores", "decision", "agreements", "feedback"],
                "properties": {
                    "scores": {"type": "object", "required": ["clarity", "structure", "evidence"],
                        "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 5}},
                    "decision": {"enum": ["go", "no-go"]},
                    "agreements": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "disagreements": {"type": "array", "items": {"type": "object",
                        "required": ["topic"]}},
                    "feedback": {"type": "string", "minLength": 200}
                }
            }},
            {"type": "json_path", "path": "$.decision", "equals": "go"},
            {"type": "json_path", "path": "$.disagreements[?@.topic == 'main risk'].cfo"},
            {"type": "equals", "value": {"never": "matches"}, "not": true}
        ]});
        bench(bencher, &request(&answer, assertions, Vec::new()));
    }
}

/// A rate-limited route's admission through the shared limits bucket (see the module docs).
mod limiter {
    use chorus_bus::Bus;
    use chorus_bus::definitions::Definitions;
    use chorus_bus::limits::{Limits, RouteLimits};
    use chorus_testkit::nats::NatsServer;

    use super::*;

    #[divan::bench(sample_count = 200)]
    fn admit_request(bencher: Bencher) {
        if let Err(e) = chorus_bus::natsd::locate() {
            eprintln!("limiter::admit_request skipped: {e}");
            return;
        }
        let rt = runtime();
        let (server, limiter) = rt.block_on(async {
            let server = NatsServer::start_new().await;
            let bus = Bus::connect(&server.url(), "chorus", "bench", Duration::from_secs(5))
                .await
                .expect("connect");
            Definitions::builtin("chorus", 1)
                .expect("definitions")
                .apply(&bus)
                .await
                .expect("apply the definitions");
            let limits = Limits::open(&bus).await.expect("the limits bucket");
            // A rate so high that GCRA's interval rounds to 0 µs: every request is admitted at
            // once, so the figure is the admission's own cost, never a wait for a slot.
            let route = RouteLimits {
                rpm: Some(u32::MAX),
                ..RouteLimits::default()
            };
            (server, limits.route(ROUTE, route))
        });
        bencher.bench_local(|| rt.block_on(limiter.admit_request()).expect("admitted"));
        rt.block_on(async move { drop(server) });
    }
}

/// The persister's batch write: `Store::write_batch`, the same call the persister makes per
/// batch, of finished-job snapshots (the roundtable's final state under distinct ids, four step
/// rows and an evaluation each) into a temporary SQLite file. Each batch carries a newer version
/// of jobs already stored, as the persister mostly sees them, so every row is replaced.
mod store {
    use chorus_store::Store;

    use super::*;

    #[divan::bench(args = [100, 512], sample_count = 50)]
    fn write_batch(bencher: Bencher, snapshots: usize) {
        let rt = runtime();
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("chorus.db").display()
        );
        // The default `database.max_connections`.
        let store = rt.block_on(async {
            let store = Store::connect(&url, 8).await.expect("connect");
            store.migrate().await.expect("migrate");
            store
        });
        let jobs: Vec<JobState> = (0..snapshots)
            .map(|i| {
                let mut state = SCENARIO.finished.clone();
                state.id = JobId::derived(&state.tenant, &format!("bench-{i}"));
                state
            })
            .collect();
        let committed = rt
            .block_on(store.write_batch(jobs.clone()))
            .expect("the first batch");
        assert_eq!(committed.len(), snapshots, "every job is finished");
        let mut version = SCENARIO.finished.version;
        bencher
            .counter(ItemsCount::new(snapshots))
            .with_inputs(|| {
                version += 1;
                jobs.iter()
                    .map(|state| JobState {
                        version,
                        ..state.clone()
                    })
                    .collect::<Vec<_>>()
            })
            .bench_local_values(|batch| rt.block_on(store.write_batch(batch)).expect("written"));
    }
}
