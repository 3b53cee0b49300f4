//! How a model answers: its scripted [`Behaviour`] (an answer, tool calls, latency) and the
//! [`Fault`]s it meets — a queue for the next calls, then faults drawn by probability. All of it
//! is plain JSON too, for scripting over HTTP (`PUT /_mock/models/{model}`), and refuses unknown
//! keys so a typo in a script is an error rather than a fault that never happens.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a model answers. The default answers every call at once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// The answer text; by default `[mock] ` and the last user message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Tool calls to answer with instead of text.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Waited before every answer, faults included (`"250ms"`).
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Waited between the pieces of a streamed answer (`"20ms"`).
    #[serde(with = "humantime_serde")]
    pub chunk_delay: Duration,
    /// Faults for the next calls, one call each, in order.
    #[serde(skip_serializing_if = "VecDeque::is_empty")]
    pub queue: VecDeque<Fault>,
    /// Once the queue is empty, each call meets at most one of these, with its probability.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub random: Vec<Chance>,
}

impl Behaviour {
    /// Answers `text` to every call.
    pub fn answer(text: impl Into<String>) -> Self {
        Self {
            answer: Some(text.into()),
            ..Self::default()
        }
    }

    /// Fails every call with `fault`.
    pub fn always(fault: Fault) -> Self {
        Self::default().with_chance(1.0, fault)
    }

    /// Fails the next `calls` calls with `fault` (after those already queued).
    pub fn fail_next(mut self, calls: usize, fault: Fault) -> Self {
        self.queue.extend(std::iter::repeat_n(fault, calls));
        self
    }

    /// Fails a call with `fault` with `probability` once the queue is empty.
    pub fn with_chance(mut self, probability: f64, fault: Fault) -> Self {
        self.random.push(Chance { probability, fault });
        self
    }

    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    pub fn with_chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    pub fn with_tool_call(mut self, name: impl Into<String>, arguments: Value) -> Self {
        self.tool_calls.push(ToolCall {
            name: name.into(),
            arguments,
        });
        self
    }

    /// The fault of the next call, if any: the queue's front, else a draw.
    pub(crate) fn next_fault(&mut self) -> Option<Fault> {
        if let Some(fault) = self.queue.pop_front() {
            return Some(fault);
        }
        let draw: f64 = rand::random();
        let mut upto = 0.0;
        self.random.iter().find_map(|chance| {
            upto += chance.probability;
            (draw < upto).then(|| chance.fault.clone())
        })
    }
}

/// A tool call to answer with; rendered in each provider's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chance {
    pub probability: f64,
    pub fault: Fault,
}

/// What can go wrong in one call. JSON: `{"type": "status", "status": 429, "retry_after":
/// {"seconds": 3}}`, `{"type": "slow", "delay": "2s"}`, `{"type": "hang"}`, `{"type": "reset"}`,
/// `{"type": "malformed"}`, `{"type": "truncated"}`, `{"type": "content_filter"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// An error status with the provider's error body for it.
    Status {
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<RetryAfter>,
        /// OpenAI's `error.code` (Azure's too), Anthropic's `error.type`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        /// Instead of the provider's usual message for the status.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// The normal answer, `delay` late.
    Slow {
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// No answer: the client's timeout ends the call. (After ten minutes the connection is closed,
    /// so a long load test does not pile up hanging calls.)
    Hang,
    /// The connection is closed before any response.
    Reset,
    /// A 200 whose body is not JSON.
    Malformed,
    /// A 200 that announces its full length but stops halfway and closes the connection (a
    /// streamed answer: half its pieces, then the connection closes).
    Truncated,
    /// The content filter withholds the answer (OpenAI: `finish_reason: content_filter`;
    /// Anthropic: `stop_reason: refusal`; Ollama has none and answers normally).
    ContentFilter,
}

impl Fault {
    pub fn status(status: u16) -> Self {
        Self::Status {
            status,
            retry_after: None,
            code: None,
            message: None,
        }
    }

    /// A 429 with `retry-after`.
    pub fn rate_limited(retry_after: RetryAfter) -> Self {
        Self::Status {
            status: 429,
            retry_after: Some(retry_after),
            code: None,
            message: None,
        }
    }

    pub(crate) fn label(&self) -> String {
        match self {
            Self::Status { status, .. } => status.to_string(),
            Self::Slow { .. } => "slow".into(),
            Self::Hang => "hang".into(),
            Self::Reset => "reset".into(),
            Self::Malformed => "malformed".into(),
            Self::Truncated => "truncated".into(),
            Self::ContentFilter => "content_filter".into(),
        }
    }
}

/// How `retry-after` is sent. JSON: `{"seconds": 3}`, `{"http_date": 3}`, `{"millis": 1500}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryAfter {
    /// `retry-after: 3`.
    Seconds(u64),
    /// `retry-after: <HTTP-date>` at least this many seconds ahead (rounded up to a whole second).
    HttpDate(u64),
    /// `retry-after-ms` (as OpenAI sends it), with `retry-after` rounded up to seconds beside it.
    Millis(u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn behaviours_round_trip_as_json_and_refuse_typos() {
        let behaviour = Behaviour::answer("a")
            .with_latency(Duration::from_millis(250))
            .fail_next(1, Fault::rate_limited(RetryAfter::Millis(1500)))
            .with_chance(
                0.1,
                Fault::Slow {
                    delay: Duration::from_secs(2),
                },
            )
            .with_tool_call("lookup", json!({"q": 1}));
        let text = serde_json::to_value(&behaviour).unwrap();
        assert_eq!(
            text,
            json!({
                "answer": "a",
                "tool_calls": [{"name": "lookup", "arguments": {"q": 1}}],
                "latency": "250ms",
                "chunk_delay": "0s",
                "queue": [{"type": "status", "status": 429, "retry_after": {"millis": 1500}}],
                "random": [{"probability": 0.1, "fault": {"type": "slow", "delay": "2s"}}],
            })
        );
        assert_eq!(
            serde_json::from_value::<Behaviour>(text).unwrap(),
            behaviour
        );
        assert!(serde_json::from_value::<Behaviour>(json!({"latnecy": "1s"})).is_err());
        assert!(serde_json::from_value::<Fault>(json!({"type": "status", "staus": 500})).is_err());
    }
}
