//! The evaluator a worker owns: it compiles each request's checks through a cache and scores
//! every target answer.
//!
//! Each assertion scores 1 or 0, inverted by `not`; one that cannot be evaluated at all (the
//! answer is not JSON for a schema, a check that does not compile) scores 0 either way. A
//! target's score is the weighted mean; it passes at or above the threshold.

use std::sync::Arc;

use chorus_core::assertion::{Assertion, Check};
use chorus_core::ids::UnixMillis;
use chorus_core::messages::{AssertionResult, EvalRequest, EvaluationResult, TargetEvaluation};

use crate::answer::Answer;
use crate::cache::Lru;
use crate::compiled::Compiled;

/// Slack for float rounding when comparing a score with its threshold.
const EPSILON: f64 = 1e-9;

type Compilation = Result<Arc<Compiled>, String>;

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
            .map(|target| {
                let answer = Answer::new(&target.text);
                let assertions: Vec<AssertionResult> = evaluate
                    .assertions
                    .iter()
                    .zip(&compiled)
                    .enumerate()
                    .map(|(i, (assertion, compiled))| judge(i, assertion, compiled, &answer))
                    .collect();
                let total: f64 = assertions.iter().map(|a| a.weight).sum();
                let score = if total > 0.0 {
                    (assertions.iter().map(|a| a.weight * a.score).sum::<f64>() / total)
                        .clamp(0.0, 1.0)
                } else {
                    0.0
                };
                TargetEvaluation {
                    step: target.step,
                    score,
                    passed: score + EPSILON >= evaluate.threshold,
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
        let compiled = Arc::new(Compiled::new(check).map_err(|e| e.to_string())?);
        if let Some(key) = key {
            self.cache.insert(key, Arc::clone(&compiled));
        }
        Ok(compiled)
    }
}

fn judge(
    index: usize,
    assertion: &Assertion,
    compiled: &Compilation,
    answer: &Answer<'_>,
) -> AssertionResult {
    let not = if assertion.negate { "not " } else { "" };
    let (passed, reason) = match compiled {
        Ok(compiled) => {
            let expected = format!("expected {not}{}", compiled.expectation());
            match compiled.run(answer) {
                Ok((holds, detail)) => (holds != assertion.negate, format!("{expected}; {detail}")),
                Err(problem) => (false, format!("{expected}; cannot tell: {problem}")),
            }
        }
        Err(problem) => (false, format!("cannot evaluate: {problem}")),
    };
    // Spec validation rejects bad weights; never let one turn a score into NaN here.
    let weight = if assertion.weight.is_finite() {
        assertion.weight.max(0.0)
    } else {
        0.0
    };
    AssertionResult {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        kind: assertion.check.type_name().to_owned(),
        metric: assertion.metric.clone(),
        weight,
        passed,
        score: if passed { 1.0 } else { 0.0 },
        reason,
    }
}
