//! The evaluator a worker owns: it compiles each request's checks through a cache and scores
//! every target answer.
//!
//! Most assertions score 1 or 0, inverted by `not`. `similarity` and the judges are graded: the
//! score is the measured similarity or the judge's score (1 minus it with `not`), and they pass
//! when it reaches their own threshold (below it with `not`). An assertion that cannot be
//! evaluated (the answer is not JSON for a schema, a check that does not compile) fails and
//! scores 0 either way; one whose input besides the answer is missing (a judge without a valid
//! verdict, a cost on a route without prices) does too, and is also marked `errored`. A target's
//! score is the weighted mean; it passes at or above the threshold.

use std::sync::Arc;

use chorus_core::assertion::{Assertion, Check};
use chorus_core::ids::UnixMillis;
use chorus_core::messages::{AssertionResult, EvalRequest, EvaluationResult, TargetEvaluation};

use crate::answer::Target;
use crate::cache::Lru;
use crate::compiled::{CompileError, Compiled, Finding, reaches};

type Compilation = Result<Arc<Compiled>, CompileError>;

pub struct Evaluator {
    cache: Lru<Arc<Compiled>>,
    compilations: u64,
}

impl Evaluator {
    /// An evaluator keeping up to `cache_capacity` compiled checks (0 disables the cache).
    pub fn new(cache_capacity: usize) -> Self {
        Self {
            cache: Lru::new(cache_capacity),
            compilations: 0,
        }
    }

    /// Compiled checks currently cached.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Checks compiled so far (cache misses), for metrics.
    pub fn compilations(&self) -> u64 {
        self.compilations
    }

    pub fn evaluate(&mut self, request: &EvalRequest, now: UnixMillis) -> EvaluationResult {
        let evaluate = &request.evaluate;
        let compiled: Vec<Compilation> = evaluate
            .assertions
            .iter()
            .map(|a| self.compile(&a.check))
            .collect();
        let targets = request
            .targets
            .iter()
            .map(|target_message| {
                let target = Target::new(target_message);
                let assertions: Vec<AssertionResult> = (0..)
                    .zip(evaluate.assertions.iter().zip(&compiled))
                    .map(|(i, (assertion, compiled))| assess(i, assertion, compiled, &target))
                    .collect();
                let total: f64 = assertions.iter().map(|a| a.weight).sum();
                let score = if total > 0.0 {
                    (assertions.iter().map(|a| a.weight * a.score).sum::<f64>() / total)
                        .clamp(0.0, 1.0)
                } else {
                    0.0
                };
                TargetEvaluation {
                    step: target_message.step,
                    score,
                    passed: reaches(score, evaluate.threshold),
                    threshold: evaluate.threshold,
                    assertions,
                }
            })
            .collect();
        EvaluationResult {
            job_id: request.job_id,
            tenant: request.tenant.clone(),
            targets,
            evaluated_at: now,
        }
    }

    fn compile(&mut self, check: &Check) -> Compilation {
        // Equal checks serialize equally (object keys come out sorted), so the JSON is the key.
        let key = serde_json::to_string(check).ok();
        if let Some(hit) = key.as_deref().and_then(|k| self.cache.get(k)) {
            return Ok(hit);
        }
        self.compilations += 1;
        let compiled = Arc::new(Compiled::new(check)?);
        if let Some(key) = key {
            self.cache.insert(key, Arc::clone(&compiled));
        }
        Ok(compiled)
    }
}

fn assess(
    index: u32,
    assertion: &Assertion,
    compiled: &Compilation,
    target: &Target<'_>,
) -> AssertionResult {
    let negate = assertion.negate;
    let binary = |passed: bool| if passed { 1.0 } else { 0.0 };
    // A graded score is the measure itself, or how far it falls short of 1 with `not`.
    let graded = |measure: f64| if negate { 1.0 - measure } else { measure };
    let (passed, score, reason, errored) = match compiled {
        Ok(compiled) => {
            let not = if negate { "not " } else { "" };
            let expected = || format!("expected {not}{}", compiled.expectation());
            match compiled.run(target, index) {
                Finding::Binary { holds, seen } => {
                    let passed = holds != negate;
                    (
                        passed,
                        binary(passed),
                        format!("{}; {seen}", expected()),
                        false,
                    )
                }
                Finding::Graded {
                    measure,
                    holds,
                    seen,
                } => (
                    holds != negate,
                    graded(measure),
                    format!("{}; {seen}", expected()),
                    false,
                ),
                Finding::Judged {
                    score,
                    holds,
                    reason,
                } => (holds != negate, graded(score), reason, false),
                Finding::CannotTell(problem) => (
                    false,
                    0.0,
                    format!("{}; cannot tell: {problem}", expected()),
                    false,
                ),
                Finding::Errored(problem) => (false, 0.0, problem, true),
            }
        }
        Err(problem) => (false, 0.0, format!("cannot evaluate: {problem}"), false),
    };
    // Spec validation rejects bad weights; never let one turn a score into NaN here.
    let weight = if assertion.weight.is_finite() {
        assertion.weight.max(0.0)
    } else {
        0.0
    };
    AssertionResult {
        index,
        kind: assertion.check.type_name().to_owned(),
        metric: assertion.metric.clone(),
        weight,
        passed,
        score: score.clamp(0.0, 1.0),
        reason,
        errored,
    }
}
