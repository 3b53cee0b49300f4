//! Chorus's evaluation engine: scores answers against a job's assertions (DESIGN.md §6).
//!
//! Layout:
//! - [`compiled`]: each check compiled once, and what running it on an answer finds.
//! - [`evaluator`]: the [`Evaluator`] a worker owns; caches compiled checks, scores targets.
//! - `answer`: lazy views of one answer (lowercase, JSON with a wrapping code fence stripped).
//! - `cache`: the bounded LRU behind the evaluator.
//!
//! Checks that read JSON (`is_json`, `json_schema`, `json_path`, `equals` with a non-string
//! value) first strip a single Markdown code fence wrapping the whole answer, since models fence
//! JSON even when told not to.
//!
//! [`check`] is the same compilation the evaluator runs, so a spec the edge accepts always
//! compiles on the worker.

mod answer;
mod cache;
pub mod compiled;
pub mod evaluator;

use chorus_core::assertion::Assertion;

pub use compiled::{CompileError, Compiled};
pub use evaluator::Evaluator;

/// Compiles `assertion` fully and says what is wrong with it, for rejecting a submission.
pub fn check(assertion: &Assertion) -> Result<(), String> {
    Compiled::new(&assertion.check)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
