//! Chorus's evaluation engine: scores answers against a job's assertions (DESIGN.md §6).
//!
//! Layout:
//! - [`compiled`]: each check compiled once, and what running it on a target finds.
//! - [`evaluator`]: the [`Evaluator`] a worker owns; caches compiled checks, scores targets.
//! - `answer`: a target as checks see it, with lazy views of its answer (lowercase, JSON with a
//!   wrapping code fence stripped) and its call's latency, cost and judge verdicts.
//! - `similarity`: Levenshtein and ROUGE-L similarity for `similarity` assertions.
//! - `cache`: the bounded LRU behind the evaluator.
//!
//! Checks that read JSON (`is_json`, `json_schema`, `json_path`, `equals` with a non-string
//! value) first strip a single Markdown code fence wrapping the whole answer, since models fence
//! JSON even when told not to. `similarity`, like `equals` with a string, trims the answer's
//! surrounding whitespace first.
//!
//! Scores: pass/fail checks score 1 or 0; `similarity`, `llm_rubric` and `factuality` score the
//! similarity or the judge's score itself (see [`evaluator`]). The judges' LLM calls are made
//! before evaluation, by the llm stage: the evaluator only reads their verdicts from the target,
//! and an assertion whose verdict is missing or failed (or a `cost` on a route without prices)
//! is marked errored and fails.
//!
//! [`check`] is the same compilation the evaluator runs, so a spec the edge accepts always
//! compiles on the worker; [`SpecValidator`] is a spec's whole validation against an
//! installation: its routes, and this compilation.

mod answer;
mod cache;
pub mod compiled;
pub mod evaluator;
mod similarity;

use chorus_core::assertion::Assertion;
use chorus_core::spec::{RouteCheck, Validator};

pub use compiled::{CompileError, Compiled};
pub use evaluator::Evaluator;

/// Compiles `assertion` fully and says what is wrong with it, for rejecting a submission.
pub fn check(assertion: &Assertion) -> Result<(), CompileError> {
    Compiled::new(&assertion.check).map(drop)
}

/// Validates specs against an installation's `routes` and the assertion compiler the
/// evaluator runs.
pub struct SpecValidator<'a, R> {
    routes: &'a R,
}

impl<'a, R: RouteCheck> SpecValidator<'a, R> {
    pub fn new(routes: &'a R) -> Self {
        Self { routes }
    }
}

impl<R: RouteCheck> Validator for SpecValidator<'_, R> {
    type RouteError = R::Error;
    type AssertionError = CompileError;

    fn check_route(&self, model: &str) -> Result<(), R::Error> {
        self.routes.check_route(model)
    }

    fn check_assertion(&self, assertion: &Assertion) -> Result<(), CompileError> {
        check(assertion)
    }
}

#[cfg(test)]
mod tests;
