//! One target as checks see it: the answer text, the views assertions read from it (each
//! computed at most once), and what is known about the call that produced it.
//!
//! JSON views strip a single Markdown code fence wrapping the whole answer (```` ```json ````
//! or a bare ```` ``` ````) before parsing, because models fence JSON even when told not to.
//! JSON equality is numeric-normalised: `1` equals `1.0`.

use std::cell::OnceCell;

use chorus_core::messages::{EvalTarget, JudgeOutcome, JudgeVerdict};
use serde_json::Value;

/// A target answer and the facts about its call that `latency`, `cost` and judge checks read.
pub(crate) struct Target<'a> {
    pub answer: Answer<'a>,
    pub latency_ms: u64,
    /// `None` when the answering route has no prices.
    pub cost_usd: Option<f64>,
    judges: &'a [JudgeOutcome],
}

impl<'a> Target<'a> {
    pub fn new(target: &'a EvalTarget) -> Self {
        Self {
            answer: Answer::new(&target.text),
            latency_ms: target.latency_ms,
            cost_usd: target.cost_usd,
            judges: &target.judges,
        }
    }

    /// What the judge of the assertion at `index` said, if it was recorded.
    pub fn verdict(&self, index: u32) -> Option<&'a JudgeVerdict> {
        self.judges
            .iter()
            .find(|j| j.assertion == index)
            .map(|j| &j.verdict)
    }
}

pub(crate) struct Answer<'a> {
    pub text: &'a str,
    lower: OnceCell<String>,
    json: OnceCell<Result<Value, NotJson>>,
}

impl<'a> Answer<'a> {
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            lower: OnceCell::new(),
            json: OnceCell::new(),
        }
    }

    /// The answer in Unicode lowercase, for case-insensitive checks.
    pub fn lower(&self) -> &str {
        self.lower.get_or_init(|| self.text.to_lowercase())
    }

    /// The answer parsed as JSON, or why it is not JSON.
    pub fn json(&self) -> Result<&Value, &NotJson> {
        self.json
            .get_or_init(|| {
                serde_json::from_str(strip_fence(self.text)).map_err(|source| NotJson { source })
            })
            .as_ref()
    }
}

/// Why an answer is not JSON, for a check that reads JSON.
#[derive(Debug, thiserror::Error)]
#[error("the answer is not JSON ({source})")]
pub(crate) struct NotJson {
    #[source]
    source: serde_json::Error,
}

/// The body of a single code fence wrapping the whole text, else the text itself.
pub(crate) fn strip_fence(text: &str) -> &str {
    let trimmed = text.trim();
    let Some(inner) = trimmed
        .strip_prefix("```")
        .and_then(|rest| rest.strip_suffix("```"))
    else {
        return text;
    };
    let Some((info, body)) = inner.split_once('\n') else {
        return text;
    };
    let info = info.trim();
    let single = !body.contains("\n```");
    if single && (info.is_empty() || info.eq_ignore_ascii_case("json")) {
        body
    } else {
        text
    }
}

/// JSON equality where numbers compare by value, so `1 == 1.0`.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            x.as_f64() == y.as_f64()
        }
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(k, x)| ys.get(k).is_some_and(|y| json_eq(x, y)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fences_are_stripped_only_when_they_wrap_everything() {
        assert_eq!(strip_fence("```json\n{\"a\": 1}\n```"), "{\"a\": 1}\n");
        assert_eq!(strip_fence("  ```\n[1]\n```\n"), "[1]\n");
        assert_eq!(strip_fence("```JSON\n1\n```"), "1\n");
        assert_eq!(strip_fence("```python\n1\n```"), "```python\n1\n```");
        assert_eq!(
            strip_fence("Here:\n```json\n1\n```"),
            "Here:\n```json\n1\n```"
        );
        let two = "```json\n1\n```\n```json\n2\n```";
        assert_eq!(strip_fence(two), two);
        assert_eq!(
            Answer::new("```json\n{\"a\": [1, 2]}\n```").json().ok(),
            Some(&json!({"a": [1, 2]}))
        );
        assert!(
            Answer::new("nope")
                .json()
                .is_err_and(|e| e.to_string().starts_with("the answer is not JSON ("))
        );
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(&json!({"a": [1, 2.5]}), &json!({"a": [1.0, 2.5]})));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!json_eq(&json!(u64::MAX), &json!(u64::MAX - 1)));
        assert!(!json_eq(&json!("1"), &json!(1)));
    }
}
