//! End-to-end tests: assertions as a spec writes them, scored through the evaluator.

use chorus_core::assertion::Assertion;
use chorus_core::messages::{AssertionResult, EvalRequest, EvalTarget, TargetEvaluation};
use chorus_core::spec::Evaluate;
use chorus_core::{JobId, Tenant};
use serde_json::{Value, json};

use crate::{Evaluator, check};

fn assertion(json: Value) -> Assertion {
    serde_json::from_value(json).unwrap()
}

fn request(threshold: f64, assertions: Vec<Value>, answers: &[&str]) -> EvalRequest {
    EvalRequest {
        job_id: JobId::new(),
        tenant: Tenant::new("acme").unwrap(),
        evaluate: Evaluate {
            threshold,
            assertions: assertions.into_iter().map(assertion).collect(),
        },
        targets: (0..)
            .zip(answers)
            .map(|(step, text)| EvalTarget {
                step,
                text: (*text).to_owned(),
            })
            .collect(),
    }
}

fn evaluate(assertions: Vec<Value>, answer: &str) -> TargetEvaluation {
    let result = Evaluator::new(16).evaluate(&request(1.0, assertions, &[answer]), 7);
    assert_eq!(result.evaluated_at, 7);
    result.targets.into_iter().next().unwrap()
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
    let problem = |json: Value| check(&assertion(json)).unwrap_err();
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
        assert_eq!(check(&assertion(ok.clone())), Ok(()), "{ok}");
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
