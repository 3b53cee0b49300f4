//! LLM judges (`llm_rubric`, `factuality`): the call a judge makes and how its answer is read.
//!
//! A judge is an ordinary LLM call through the llm stage. It is forced to answer JSON
//! `{"reason": string, "score": number in 0..=1}` (a strict `json_schema` response format, and the
//! same demand in the prompt for providers that ignore response formats). The llm stage checks
//! the answer with [`parse_verdict`] and asks again when it does not parse; the evaluator reads
//! the verdict with the same function, so both agree on what a valid answer is.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::assertion::JudgeKind;
use crate::spec::{ChatMessage, Params, Role};

/// A judge's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub score: f64,
    pub reason: String,
}

/// Calls a judge makes in total for one answer, when its answers do not parse.
pub const TRIES: u32 = 3;

const RUBRIC_SYSTEM: &str = "You are a strict grader. You are given a question, an answer and a \
rubric. Judge only whether the answer meets the rubric. Reply with a JSON object and nothing \
else: {\"reason\": \"<one or two sentences>\", \"score\": <number from 0 to 1>}, where 1 means \
the rubric is fully met and 0 means it is not met at all.";

const FACTUALITY_SYSTEM: &str = "You are a strict fact checker. You are given a question, an \
expert's reference answer and a submitted answer. Judge whether the submitted answer agrees with \
the reference on the facts; ignore style and wording. Reply with a JSON object and nothing \
else: {\"reason\": \"<one or two sentences>\", \"score\": <number from 0 to 1>}, where 1 means \
fully consistent with the reference and 0 means it contradicts it.";

/// The messages of a judge call. `question` is what the judged answer answered (its user prompt).
pub fn messages(
    kind: JudgeKind,
    criterion: &str,
    question: &str,
    answer: &str,
) -> Vec<ChatMessage> {
    let (system, user) = match kind {
        JudgeKind::Rubric => (
            RUBRIC_SYSTEM,
            format!(
                "<question>\n{question}\n</question>\n<answer>\n{answer}\n</answer>\n<rubric>\n{criterion}\n</rubric>"
            ),
        ),
        JudgeKind::Factuality => (
            FACTUALITY_SYSTEM,
            format!(
                "<question>\n{question}\n</question>\n<reference>\n{criterion}\n</reference>\n<answer>\n{answer}\n</answer>"
            ),
        ),
    };
    vec![
        ChatMessage::new(Role::System, system),
        ChatMessage::new(Role::User, user),
    ]
}

/// Sampling parameters of a judge call: deterministic, and a strict JSON schema for the answer.
pub fn params() -> Params {
    Params {
        temperature: Some(0.0),
        max_tokens: Some(512),
        response_format: Some(json!({
            "type": "json_schema",
            "json_schema": {
                "name": "verdict",
                "strict": true,
                "schema": {
                    "type": "object",
                    "properties": {
                        "reason": {"type": "string"},
                        "score": {"type": "number", "minimum": 0, "maximum": 1}
                    },
                    "required": ["reason", "score"],
                    "additionalProperties": false
                }
            }
        })),
        ..Params::default()
    }
}

/// Why a judge's answer is not a valid verdict. `answer` quotes the answer's start.
#[derive(Debug, thiserror::Error)]
pub enum VerdictError {
    #[error("the judge's answer is not JSON ({source}): {answer}")]
    NotJson {
        answer: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the judge's answer has no numeric `score`: {answer}")]
    NoScore { answer: String },
    #[error("the judge's score {score} is outside 0..1")]
    ScoreOutOfRange { score: f64 },
    #[error("the judge's answer has no string `reason`: {answer}")]
    NoReason { answer: String },
}

/// Reads a judge's answer: a JSON object (optionally in one Markdown code fence) with a numeric
/// `score` in 0..=1 and a string `reason`. The error says what is wrong, quoting the answer.
pub fn parse_verdict(text: &str) -> Result<Verdict, VerdictError> {
    let quoted = || {
        let snippet: String = text.chars().take(80).collect();
        if snippet.len() < text.len() {
            format!("`{snippet}…`")
        } else {
            format!("`{snippet}`")
        }
    };
    let body = strip_fence(text.trim());
    let value: Value = serde_json::from_str(body).map_err(|source| VerdictError::NotJson {
        answer: quoted(),
        source,
    })?;
    let score = value
        .get("score")
        .and_then(Value::as_f64)
        .ok_or_else(|| VerdictError::NoScore { answer: quoted() })?;
    if !(0.0..=1.0).contains(&score) {
        return Err(VerdictError::ScoreOutOfRange { score });
    }
    let reason = value
        .get("reason")
        .and_then(Value::as_str)
        .ok_or_else(|| VerdictError::NoReason { answer: quoted() })?;
    Ok(Verdict {
        score,
        reason: reason.to_owned(),
    })
}

fn strip_fence(text: &str) -> &str {
    let Some(inner) = text.strip_prefix("```").and_then(|t| t.strip_suffix("```")) else {
        return text;
    };
    // Drop an info string (```json) on the opening line.
    match inner.split_once('\n') {
        Some((info, rest)) if !info.trim_start().starts_with('{') => rest.trim(),
        _ => inner.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_parse_plain_and_fenced() {
        let plain = parse_verdict(r#"{"reason": "meets it", "score": 0.75}"#);
        assert_eq!(
            plain.ok(),
            Some(Verdict {
                score: 0.75,
                reason: "meets it".into()
            })
        );
        let fenced = parse_verdict("```json\n{\"score\": 1, \"reason\": \"ok\"}\n```");
        assert_eq!(fenced.ok().map(|v| v.score), Some(1.0));
    }

    #[test]
    fn bad_answers_say_what_is_wrong() {
        let problem = |text: &str| {
            parse_verdict(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(matches!(
            parse_verdict("Sure!"),
            Err(VerdictError::NotJson { .. })
        ));
        assert!(matches!(
            parse_verdict(r#"{"reason": "x", "score": 7}"#),
            Err(VerdictError::ScoreOutOfRange { score }) if score == 7.0
        ));
        assert!(problem("Sure! The score is 0.8").contains("not JSON"));
        assert!(problem(r#"{"reason": "x"}"#).contains("numeric `score`"));
        assert!(problem(r#"{"reason": "x", "score": "high"}"#).contains("numeric `score`"));
        assert!(problem(r#"{"reason": "x", "score": 7}"#).contains("outside 0..1"));
        assert!(problem(r#"{"score": 0.5}"#).contains("`reason`"));
    }

    #[test]
    fn judge_calls_demand_the_verdict_shape() {
        let messages = messages(JudgeKind::Factuality, "Paris", "Capital of France?", "Lyon");
        assert_eq!(messages.len(), 2);
        assert!(messages[1].content.contains("<reference>\nParis"));
        assert!(params().wants_json());
        assert!(params().response_schema().is_some());
    }
}
