//! End-to-end tests: assertions as a spec writes them, scored through the evaluator.

use chorus_core::assertion::Assertion;
use chorus_core::judge::{Verdict, parse_verdict};
use chorus_core::messages::{
    AssertionResult, EvalRequest, EvalTarget, JudgeOutcome, JudgeVerdict, TargetEvaluation,
};
use chorus_core::spec::Evaluate;
use chorus_core::{JobId, Tenant};
use serde_json::{Value, json};

use crate::{CompileError, Evaluator, check};

fn assertion(json: Value) -> Assertion {
    serde_json::from_value(json).unwrap()
}

/// A target answered in 0 ms, on a route without prices, with no judge verdicts.
fn target(text: &str) -> EvalTarget {
    EvalTarget {
        step: 0,
        text: text.to_owned(),
        latency_ms: 0,
        cost_usd: None,
        judges: Vec::new(),
    }
}

fn request_for(threshold: f64, assertions: Vec<Value>, targets: Vec<EvalTarget>) -> EvalRequest {
    EvalRequest {
        job_id: JobId::new(),
        tenant: Tenant::new("acme").unwrap(),
        evaluate: Evaluate {
            threshold,
            assertions: assertions.into_iter().map(assertion).collect(),
        },
        targets,
    }
}

fn request(threshold: f64, assertions: Vec<Value>, answers: &[&str]) -> EvalRequest {
    let targets = (0..)
        .zip(answers)
        .map(|(step, text)| EvalTarget {
            step,
            ..target(text)
        })
        .collect();
    request_for(threshold, assertions, targets)
}

fn evaluate_target(assertions: Vec<Value>, target: EvalTarget) -> TargetEvaluation {
    let result = Evaluator::new(16).evaluate(&request_for(1.0, assertions, vec![target]), 7);
    assert_eq!(result.evaluated_at, 7);
    result.targets.into_iter().next().unwrap()
}

fn evaluate(assertions: Vec<Value>, answer: &str) -> TargetEvaluation {
    evaluate_target(assertions, target(answer))
}

/// The result of one assertion on `target`, checked for its type and a score in 0..=1.
fn outcome(assertion: Value, target: EvalTarget) -> AssertionResult {
    let mut evaluation = evaluate_target(vec![assertion.clone()], target);
    let result = evaluation.assertions.remove(0);
    assert_eq!(Some(result.kind.as_str()), assertion["type"].as_str());
    assert!((0.0..=1.0).contains(&result.score), "{result:?}");
    result
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// A target whose judge answered for the assertion at `index`.
fn judged(text: &str, index: u32, score: f64, reason: &str) -> EvalTarget {
    EvalTarget {
        judges: vec![JudgeOutcome {
            assertion: index,
            verdict: JudgeVerdict::Answered(Verdict {
                score,
                reason: reason.into(),
            }),
        }],
        ..target(text)
    }
}

/// Runs one assertion on `answer`, asserts the outcome, and returns the reason.
fn run(assertion: Value, answer: &str, passed: bool) -> String {
    let target = evaluate(vec![assertion.clone()], answer);
    let result: &AssertionResult = &target.assertions[0];
    assert_eq!(
        result.passed, passed,
        "{assertion} on {answer:?}: {}",
        result.reason
    );
    assert_eq!(result.score, if passed { 1.0 } else { 0.0 });
    assert_eq!(result.kind, assertion["type"].as_str().unwrap());
    result.reason.clone()
}

#[test]
fn equals_text_trims_and_json_compares_numbers_by_value() {
    run(json!({"type": "equals", "value": "yes"}), "  yes\n", true);
    let reason = run(json!({"type": "equals", "value": "yes"}), "yes!", false);
    assert_eq!(reason, r#"expected to equal "yes"; got "yes!""#);
    run(
        json!({"type": "equals", "value": {"n": 1, "tags": ["a"]}}),
        r#"{"tags": ["a"], "n": 1.0}"#,
        true,
    );
    run(json!({"type": "equals", "value": 42}), "42.0", true);
    assert_eq!(
        run(json!({"type": "equals", "value": 42}), "41", false),
        "expected to equal the JSON 42; got 41"
    );
}

#[test]
fn substring_checks() {
    assert_eq!(
        run(json!({"type": "contains", "value": "go"}), "let's go", true),
        r#"expected to contain "go"; found it"#
    );
    run(
        json!({"type": "contains", "value": "Go"}),
        "let's go",
        false,
    );
    run(
        json!({"type": "icontains", "value": "ÉTÉ"}),
        "un été chaud",
        true,
    );
    run(
        json!({"type": "icontains", "value": "hiver"}),
        "un été chaud",
        false,
    );
    run(
        json!({"type": "starts_with", "value": "Yes"}),
        "\n  Yes, indeed",
        true,
    );
    let reason = run(
        json!({"type": "starts_with", "value": "Yes"}),
        "No, never",
        false,
    );
    assert_eq!(
        reason,
        r#"expected to start with "Yes"; it starts with "No, never""#
    );
    let reason = run(
        json!({"type": "contains_any", "values": ["cat", "dog"]}),
        "hot dog",
        true,
    );
    assert!(reason.ends_with(r#"found "dog""#), "{reason}");
    run(
        json!({"type": "contains_any", "values": ["cat", "dog"]}),
        "a bird",
        false,
    );
    run(
        json!({"type": "contains_all", "values": ["a", "b"]}),
        "a b",
        true,
    );
    let reason = run(
        json!({"type": "contains_all", "values": ["red", "green", "blue"]}),
        "green",
        false,
    );
    assert!(reason.ends_with(r#"missing "red", "blue""#), "{reason}");
}

#[test]
fn regex_matches_anywhere() {
    let reason = run(
        json!({"type": "regex", "pattern": r"\d{3}-\d{4}"}),
        "call 555-1234 now",
        true,
    );
    assert_eq!(
        reason,
        r#"expected to match /\d{3}-\d{4}/; matched "555-1234""#
    );
    run(json!({"type": "regex", "pattern": r"^\d+$"}), "12a", false);
}

#[test]
fn json_checks_parse_the_answer_and_strip_a_code_fence() {
    run(
        json!({"type": "is_json"}),
        "```json\n{\"ok\": true}\n```",
        true,
    );
    run(json!({"type": "is_json"}), "``` \n[1, 2]\n```\n", true);
    let reason = run(json!({"type": "is_json"}), "sure! {\"ok\": true}", false);
    assert!(
        reason.starts_with("expected to be JSON; the answer is not JSON ("),
        "{reason}"
    );
    let path = json!({"type": "json_path", "path": "$.items[*].price", "equals": 10});
    run(
        path.clone(),
        "```json\n{\"items\": [{\"price\": 10.0}, {\"price\": 3}]}\n```",
        true,
    );
    let reason = run(path.clone(), r#"{"items": [{"price": 9}]}"#, false);
    assert_eq!(
        reason,
        "expected to have `$.items[*].price` equal to 10; the first match is 9"
    );
    let reason = run(
        json!({"type": "json_path", "path": "$.a"}),
        r#"{"b": 1}"#,
        false,
    );
    assert!(reason.ends_with("it matched nothing"), "{reason}");
    run(
        json!({"type": "json_path", "path": "$.a"}),
        r#"{"a": null}"#,
        true,
    );
    let reason = run(path, "no JSON here", false);
    assert!(
        reason.contains("cannot tell: the answer is not JSON"),
        "{reason}"
    );
}

#[test]
fn json_schema_reasons_list_errors_with_their_paths() {
    let schema = json!({
        "type": "object",
        "required": ["name", "age"],
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}
    });
    run(
        json!({"type": "json_schema", "schema": schema}),
        r#"{"name": "Ada", "age": 36}"#,
        true,
    );
    let reason = run(
        json!({"type": "json_schema", "schema": schema}),
        r#"{"name": 7, "age": -1}"#,
        false,
    );
    assert!(
        reason.starts_with("expected to match the JSON schema; 2 errors: "),
        "{reason}"
    );
    assert!(
        reason.contains("at /name: 7 is not of type \"string\""),
        "{reason}"
    );
    assert!(
        reason.contains("at /age: -1 is less than the minimum of 0"),
        "{reason}"
    );
    let reason = run(
        json!({"type": "json_schema", "schema": schema}),
        "{}",
        false,
    );
    assert!(
        reason.contains("at the root: \"name\" is a required property"),
        "{reason}"
    );
}

#[test]
fn length_counts_characters() {
    run(json!({"type": "length", "min": 3, "max": 5}), "héllo", true);
    let reason = run(json!({"type": "length", "min": 40}), "twelve chars", false);
    assert_eq!(
        reason,
        "expected to be at least 40 characters long; length 12 is below the minimum 40"
    );
    let reason = run(json!({"type": "length", "max": 2}), "abc", false);
    assert!(
        reason.ends_with("length 3 is above the maximum 2"),
        "{reason}"
    );
}

#[test]
fn not_inverts_passing_and_score_but_never_rescues_an_unevaluable_check() {
    let reason = run(
        json!({"type": "contains", "value": "sorry", "not": true}),
        "Sure, here it is",
        true,
    );
    assert_eq!(reason, r#"expected not to contain "sorry"; it is missing"#);
    run(
        json!({"type": "contains", "value": "sorry", "not": true}),
        "sorry, no",
        false,
    );
    run(json!({"type": "is_json", "not": true}), "plain prose", true);
    run(
        json!({"type": "json_path", "path": "$.a", "not": true}),
        "plain prose",
        false,
    );
}

#[test]
fn target_score_is_the_weighted_mean_against_the_threshold() {
    let assertions = vec![
        json!({"type": "contains", "value": "a", "weight": 2, "metric": "has_a"}),
        json!({"type": "contains", "value": "b", "weight": 1}),
        json!({"type": "contains", "value": "c", "weight": 1}),
    ];
    let result = Evaluator::new(8).evaluate(&request(0.75, assertions, &["a b", "a c", "b c"]), 1);
    let scores: Vec<_> = result
        .targets
        .iter()
        .map(|t| (t.step, t.score, t.passed))
        .collect();
    assert_eq!(scores, [(0, 0.75, true), (1, 0.75, true), (2, 0.5, false)]);
    let first = &result.targets[0];
    assert_eq!(first.threshold, 0.75);
    let indices: Vec<_> = first
        .assertions
        .iter()
        .map(|a| (a.index, a.weight, a.passed))
        .collect();
    assert_eq!(indices, [(0, 2.0, true), (1, 1.0, true), (2, 1.0, false)]);
    assert_eq!(first.assertions[0].metric.as_deref(), Some("has_a"));

    // 2 of 3 equal weights is 0.666…; a threshold written as 2/3 must still pass.
    let thirds = vec![
        json!({"type": "is_json"}),
        json!({"type": "contains", "value": "1"}),
        json!({"type": "contains", "value": "x"}),
    ];
    let result = Evaluator::new(8).evaluate(&request(2.0 / 3.0, thirds, &["[1]"]), 1);
    assert!(result.targets[0].passed);

    let zero = evaluate(vec![json!({"type": "is_json", "weight": 0})], "[]");
    assert_eq!((zero.score, zero.passed), (0.0, false));
}

#[test]
fn check_names_what_does_not_compile() {
    let problem = |json: Value| check(&assertion(json)).unwrap_err().to_string();
    assert!(matches!(
        check(&assertion(json!({"type": "regex", "pattern": "a("}))),
        Err(CompileError::Regex { .. })
    ));
    let regex = problem(json!({"type": "regex", "pattern": "a("}));
    assert_eq!(regex, "regex `a(` does not compile: unclosed group");
    let schema = problem(json!({"type": "json_schema", "schema": {"type": "strnig"}}));
    assert!(
        schema.starts_with("JSON schema does not compile: at /type: "),
        "{schema}"
    );
    let remote =
        problem(json!({"type": "json_schema", "schema": {"$ref": "https://example.com/s.json"}}));
    assert!(
        remote.starts_with("JSON schema does not compile"),
        "{remote}"
    );
    let path = problem(json!({"type": "json_path", "path": "$.a["}));
    assert_eq!(path, "JSON path `$.a[` does not parse: parser error at `[`");
    let path = problem(json!({"type": "json_path", "path": "a.b"}));
    assert_eq!(
        path,
        "JSON path `a.b` does not parse: it must start with `$`"
    );
    assert_eq!(
        problem(json!({"type": "length", "min": 5, "max": 2})),
        "`min` 5 is greater than `max` 2"
    );
    assert_eq!(
        problem(json!({"type": "length"})),
        "length needs `min`, `max` or both"
    );
    assert_eq!(
        problem(json!({"type": "contains_any", "values": []})),
        "`values` must not be empty"
    );
    assert_eq!(
        problem(json!({"type": "contains_all", "values": ["a", ""]})),
        "`values[1]` must not be empty"
    );
    assert_eq!(
        problem(json!({"type": "contains", "value": ""})),
        "`value` must not be empty"
    );
    for ok in [
        json!({"type": "regex", "pattern": "(?i)^yes"}),
        json!({"type": "json_schema", "schema": {"type": "object"}}),
        json!({"type": "json_path", "path": "$..price"}),
        json!({"type": "length", "min": 2, "max": 2}),
        json!({"type": "equals", "value": [1, 2]}),
    ] {
        assert!(check(&assertion(ok.clone())).is_ok(), "{ok}");
    }
}

#[test]
fn a_check_that_does_not_compile_fails_with_the_problem() {
    let target = evaluate(
        vec![json!({"type": "regex", "pattern": "a(", "not": true})],
        "abc",
    );
    let result = &target.assertions[0];
    assert!(!result.passed);
    assert_eq!(
        result.reason,
        "cannot evaluate: regex `a(` does not compile: unclosed group"
    );
}

#[test]
fn compiled_checks_are_cached_by_content() {
    let mut evaluator = Evaluator::new(2);
    let assertions = || {
        vec![
            json!({"type": "regex", "pattern": "x+"}),
            json!({"type": "json_schema", "schema": {"type": "array"}, "weight": 3}),
        ]
    };
    evaluator.evaluate(&request(1.0, assertions(), &["xx", "[]"]), 1);
    assert_eq!((evaluator.compilations(), evaluator.cache_len()), (2, 2));
    // Same checks with other weights and targets: no recompilation.
    evaluator.evaluate(&request(0.5, assertions(), &["y"]), 2);
    assert_eq!(evaluator.compilations(), 2);
    // A third check evicts the least recently used one; the cache stays bounded.
    evaluator.evaluate(
        &request(1.0, vec![json!({"type": "regex", "pattern": "y"})], &["y"]),
        3,
    );
    assert_eq!((evaluator.compilations(), evaluator.cache_len()), (3, 2));

    let mut uncached = Evaluator::new(0);
    uncached.evaluate(&request(1.0, assertions(), &["x"]), 1);
    uncached.evaluate(&request(1.0, assertions(), &["x"]), 1);
    assert_eq!((uncached.compilations(), uncached.cache_len()), (4, 0));
}

#[test]
fn an_evaluator_can_be_actor_state() {
    fn send<T: Send + 'static>() {}
    send::<Evaluator>();
}

#[test]
fn similarity_scores_the_measured_similarity() {
    let kitten = || json!({"type": "similarity", "value": "sitting", "threshold": 0.5});
    let result = outcome(kitten(), target("kitten\n"));
    assert!(result.passed && !result.errored, "{result:?}");
    assert!(close(result.score, 1.0 - 3.0 / 7.0), "{result:?}");
    assert_eq!(
        result.reason,
        r#"expected to be at least 0.5 similar to "sitting" by levenshtein; levenshtein similarity is 0.571 (threshold 0.5)"#
    );
    let mut strict = kitten();
    strict["threshold"] = json!(0.6);
    let result = outcome(strict, target("kitten"));
    assert!(!result.passed && !result.errored, "{result:?}");
    assert!(close(result.score, 4.0 / 7.0), "{result:?}");
    assert!(
        result
            .reason
            .ends_with("similarity is 0.571 (threshold 0.6)"),
        "{result:?}"
    );
    let exact = json!({"type": "similarity", "value": "same", "threshold": 1});
    assert_eq!(outcome(exact, target("same")).score, 1.0);
}

#[test]
fn similarity_by_rouge_l_compares_words() {
    let rouge = |threshold: f64| json!({"type": "similarity", "value": "The cat lay on the mat.", "method": "rouge_l", "threshold": threshold});
    let result = outcome(rouge(0.8), target("the cat sat on the mat"));
    assert!(result.passed, "{result:?}");
    assert!(close(result.score, 10.0 / 12.0), "{result:?}");
    assert!(
        result
            .reason
            .ends_with("rouge_l similarity is 0.833 (threshold 0.8)"),
        "{result:?}"
    );
    let result = outcome(rouge(0.9), target("the cat sat on the mat"));
    assert!(!result.passed, "{result:?}");
    assert!(close(result.score, 10.0 / 12.0), "{result:?}");
}

#[test]
fn not_on_similarity_inverts_passing_and_scores_the_dissimilarity() {
    let not = |threshold: f64| json!({"type": "similarity", "value": "sitting", "threshold": threshold, "not": true});
    let result = outcome(not(0.6), target("kitten"));
    assert!(result.passed, "{result:?}");
    assert!(close(result.score, 3.0 / 7.0), "{result:?}");
    assert!(
        result
            .reason
            .starts_with(r#"expected not to be at least 0.6 similar to "sitting""#),
        "{result:?}"
    );
    let result = outcome(not(0.5), target("kitten"));
    assert!(!result.passed, "{result:?}");
    assert!(close(result.score, 3.0 / 7.0), "{result:?}");
}

#[test]
fn latency_passes_within_the_maximum() {
    let took = |ms: u64| EvalTarget {
        latency_ms: ms,
        ..target("ok")
    };
    let within = json!({"type": "latency", "max_ms": 200});
    let result = outcome(within.clone(), took(120));
    assert_eq!((result.passed, result.score), (true, 1.0));
    assert_eq!(
        result.reason,
        "expected to answer within 200 ms; it took 120 ms"
    );
    assert!(outcome(within.clone(), took(200)).passed);
    let result = outcome(within, took(250));
    assert_eq!((result.passed, result.score), (false, 0.0));
    assert_eq!(
        result.reason,
        "expected to answer within 200 ms; it took 250 ms"
    );
    let slow = outcome(
        json!({"type": "latency", "max_ms": 200, "not": true}),
        took(250),
    );
    assert_eq!((slow.passed, slow.score, slow.errored), (true, 1.0, false));
}

#[test]
fn cost_passes_within_the_budget_and_errors_without_prices() {
    let cost = |usd: f64| EvalTarget {
        cost_usd: Some(usd),
        ..target("ok")
    };
    let result = outcome(json!({"type": "cost", "max_usd": 0.01}), cost(0.0042));
    assert_eq!((result.passed, result.score), (true, 1.0));
    assert_eq!(
        result.reason,
        "expected to cost at most $0.01; it cost $0.0042"
    );
    let result = outcome(json!({"type": "cost", "max_usd": 0.001}), cost(0.0042));
    assert_eq!(
        (result.passed, result.score, result.errored),
        (false, 0.0, false)
    );
    assert!(result.reason.ends_with("it cost $0.0042"), "{result:?}");

    for budget in [
        json!({"type": "cost", "max_usd": 0.01}),
        json!({"type": "cost", "max_usd": 0.01, "not": true}),
    ] {
        let result = outcome(budget.clone(), target("no prices"));
        assert_eq!(
            (result.passed, result.score, result.errored),
            (false, 0.0, true),
            "{budget}"
        );
        assert_eq!(
            result.reason,
            "the answering route has no prices configured"
        );
    }
}

#[test]
fn llm_rubric_scores_the_judges_verdict() {
    let rubric = || json!({"type": "llm_rubric", "value": "is polite"});
    let result = outcome(rubric(), judged("Hello!", 0, 0.8, "polite and on topic"));
    assert!(result.passed && !result.errored, "{result:?}");
    assert_eq!(result.score, 0.8);
    assert_eq!(
        result.reason,
        "judge: polite and on topic (score 0.800, threshold 0.5)"
    );
    let result = outcome(rubric(), judged("Go away.", 0, 0.3, "rude"));
    assert!(!result.passed && !result.errored, "{result:?}");
    assert_eq!(result.score, 0.3);
    assert_eq!(result.reason, "judge: rude (score 0.300, threshold 0.5)");
}

#[test]
fn factuality_scores_the_judges_verdict_against_its_threshold() {
    let facts =
        || json!({"type": "factuality", "value": "Paris", "model": "judge", "threshold": 0.9});
    let result = outcome(facts(), judged("It is Paris.", 0, 0.95, "agrees"));
    assert_eq!((result.passed, result.score), (true, 0.95));
    let result = outcome(facts(), judged("Lyon, I think.", 0, 0.6, "contradicts"));
    assert_eq!((result.passed, result.score), (false, 0.6));
    assert_eq!(
        result.reason,
        "judge: contradicts (score 0.600, threshold 0.9)"
    );
}

#[test]
fn not_on_a_judge_inverts_passing_and_scores_one_minus_the_verdict() {
    let not = || json!({"type": "llm_rubric", "value": "mentions prices", "not": true});
    let result = outcome(not(), judged("$5", 0, 0.8, "it does"));
    assert!(!result.passed, "{result:?}");
    assert!(close(result.score, 0.2), "{result:?}");
    let result = outcome(not(), judged("Hi", 0, 0.3, "barely"));
    assert!(result.passed, "{result:?}");
    assert!(close(result.score, 0.7), "{result:?}");
}

#[test]
fn an_errored_judge_fails_whatever_not_says() {
    // What the llm stage records when the judge's answers never parse.
    let verdict = match parse_verdict("Sure! The answer is very polite.") {
        Ok(verdict) => JudgeVerdict::Answered(verdict),
        Err(error) => JudgeVerdict::Errored {
            error: error.to_string(),
        },
    };
    for rubric in [
        json!({"type": "llm_rubric", "value": "is polite"}),
        json!({"type": "llm_rubric", "value": "is polite", "not": true}),
    ] {
        let garbage = EvalTarget {
            judges: vec![JudgeOutcome {
                assertion: 0,
                verdict: verdict.clone(),
            }],
            ..target("Hello!")
        };
        let result = outcome(rubric.clone(), garbage);
        assert_eq!(
            (result.passed, result.score, result.errored),
            (false, 0.0, true),
            "{rubric}"
        );
        assert!(
            result.reason.starts_with("the judge's answer is not JSON"),
            "{result:?}"
        );
    }
}

#[test]
fn a_missing_or_invalid_verdict_is_an_error() {
    let facts = json!({"type": "factuality", "value": "Paris", "not": true});
    // The only verdict recorded is for another assertion.
    let result = outcome(facts.clone(), judged("Paris", 1, 1.0, "agrees"));
    assert_eq!(
        (result.passed, result.score, result.errored),
        (false, 0.0, true)
    );
    assert_eq!(
        result.reason,
        "no judge verdict was recorded for this answer"
    );
    let result = outcome(facts, judged("Paris", 0, 1.5, "very much"));
    assert_eq!((result.passed, result.errored), (false, true), "{result:?}");
    assert_eq!(result.reason, "the judge's score 1.5 is outside 0..1");
}

#[test]
fn each_judge_assertion_reads_its_own_verdict() {
    let assertions = vec![
        json!({"type": "contains", "value": "Paris"}),
        json!({"type": "llm_rubric", "value": "is brief"}),
        json!({"type": "factuality", "value": "Paris"}),
    ];
    let verdict = |assertion: u32, score: f64| JudgeOutcome {
        assertion,
        verdict: JudgeVerdict::Answered(Verdict {
            score,
            reason: format!("verdict {assertion}"),
        }),
    };
    let answer = EvalTarget {
        judges: vec![verdict(2, 0.9), verdict(1, 0.2)],
        ..target("Paris")
    };
    let evaluation = evaluate_target(assertions, answer);
    let seen: Vec<_> = evaluation
        .assertions
        .iter()
        .map(|a| (a.index, a.passed, a.score))
        .collect();
    assert_eq!(seen, [(0, true, 1.0), (1, false, 0.2), (2, true, 0.9)]);
    assert!(
        evaluation.assertions[2]
            .reason
            .starts_with("judge: verdict 2")
    );
}

#[test]
fn graded_and_errored_assertions_weigh_into_the_target_score() {
    let assertions = vec![
        json!({"type": "similarity", "value": "sitting", "threshold": 0.5}),
        json!({"type": "llm_rubric", "value": "is polite", "weight": 2}),
        json!({"type": "cost", "max_usd": 1}),
    ];
    let answer = judged("kitten", 1, 0.8, "polite");
    let result = Evaluator::new(8).evaluate(&request_for(0.5, assertions, vec![answer]), 1);
    let target = &result.targets[0];
    let want = (1.0 - 3.0 / 7.0 + 2.0 * 0.8 + 0.0) / 4.0;
    assert!(close(target.score, want), "{target:?}");
    assert!(target.passed, "{target:?}");
    let errored: Vec<_> = target.assertions.iter().map(|a| a.errored).collect();
    assert_eq!(errored, [false, false, true]);
}

#[test]
fn check_names_the_bad_field_of_new_assertions() {
    use chorus_core::assertion::{Check, SimilarityMethod};

    let problem = |json: Value| {
        check(&assertion(json))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        problem(json!({"type": "similarity", "value": "a", "threshold": 1.5})),
        "`threshold` must be a number from 0 to 1, got 1.5"
    );
    assert_eq!(
        problem(
            json!({"type": "similarity", "value": "a", "method": "rouge_l", "threshold": -0.1})
        ),
        "`threshold` must be a number from 0 to 1, got -0.1"
    );
    assert_eq!(
        problem(json!({"type": "similarity", "value": "", "threshold": 0.5})),
        "`value` must not be empty"
    );
    assert_eq!(
        problem(json!({"type": "llm_rubric", "value": ""})),
        "`value` must not be empty"
    );
    assert_eq!(
        problem(json!({"type": "llm_rubric", "value": "is polite", "threshold": 2})),
        "`threshold` must be a number from 0 to 1, got 2"
    );
    assert_eq!(
        problem(json!({"type": "factuality", "value": "", "threshold": 0.5})),
        "`value` must not be empty"
    );
    assert_eq!(
        problem(json!({"type": "factuality", "value": "Paris", "threshold": -1})),
        "`threshold` must be a number from 0 to 1, got -1"
    );
    assert_eq!(
        problem(json!({"type": "cost", "max_usd": -0.5})),
        "`max_usd` must be a number at least 0, got -0.5"
    );
    // Not from JSON, but MessagePack can carry them.
    let cost = check(&Assertion::new(Check::Cost { max_usd: f64::NAN }));
    assert_eq!(
        cost.map_err(|e| e.to_string()),
        Err("`max_usd` must be a number at least 0, got NaN".into())
    );
    let similarity = check(&Assertion::new(Check::Similarity {
        value: "a".into(),
        method: SimilarityMethod::Levenshtein,
        threshold: f64::INFINITY,
    }));
    assert_eq!(
        similarity.map_err(|e| e.to_string()),
        Err("`threshold` must be a number from 0 to 1, got inf".into())
    );
    for ok in [
        json!({"type": "similarity", "value": "a", "threshold": 0}),
        json!({"type": "similarity", "value": "a", "method": "rouge_l", "threshold": 1}),
        json!({"type": "latency", "max_ms": 0}),
        json!({"type": "cost", "max_usd": 0}),
        json!({"type": "llm_rubric", "value": "is polite", "model": "judge"}),
        json!({"type": "factuality", "value": "Paris", "threshold": 1}),
    ] {
        assert!(check(&assertion(ok.clone())).is_ok(), "{ok}");
    }
}

#[test]
fn new_checks_are_cached_too() {
    let mut evaluator = Evaluator::new(8);
    let assertions = || {
        vec![
            json!({"type": "similarity", "value": "a", "threshold": 0.5}),
            json!({"type": "llm_rubric", "value": "is polite"}),
            json!({"type": "latency", "max_ms": 10}),
        ]
    };
    evaluator.evaluate(&request(1.0, assertions(), &["a"]), 1);
    evaluator.evaluate(&request(1.0, assertions(), &["b"]), 2);
    assert_eq!((evaluator.compilations(), evaluator.cache_len()), (3, 3));
}
