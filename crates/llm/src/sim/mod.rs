//! `sim`: a built-in, in-process LLM simulator for demos, tests and benchmarks. Not a model.
//!
//! The model name picks the behaviour ([`SimModel`]). Two seeds keep it reproducible: the answer
//! depends only on the messages and `params` (so a retry gets the same answer), while latency and
//! failures are drawn from the request's `seed_key`, which differs per attempt (so a retry can
//! succeed where the first attempt failed). Text answers start with a `[sim]` marker; JSON answers
//! carry `"sim": true` or `[sim]` strings where the schema leaves room for them. A streaming call
//! gets its answer a word at a time, its latency spread evenly over the words.

mod model;
mod schema;

use std::time::Duration;

use chorus_core::messages::Usage;
use chorus_core::spec::{ChatMessage, Params, Role};
use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::error::{ErrorKind, LlmError};
use crate::provider::{Completion, CompletionRequest, Delta, DeltaSink, Provider, stable_hash};

pub use model::{Latency, SimError, SimKind, SimModel, SimModelError};

/// The provider name of the simulator in route configuration.
pub const PROVIDER_NAME: &str = "sim";

const LOREM: [&str; 32] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
    "enim",
    "ad",
    "minim",
    "veniam",
    "quis",
    "nostrud",
    "exercitation",
    "ullamco",
    "laboris",
    "nisi",
    "aliquip",
    "commodo",
    "consequat",
];

#[derive(Clone, Copy, Debug, Default)]
pub struct SimProvider;

impl Provider for SimProvider {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    fn complete<'a>(
        &'a self,
        request: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, LlmError>> {
        Box::pin(simulate(request))
    }
}

async fn simulate(request: &CompletionRequest) -> Result<Completion, LlmError> {
    let model =
        SimModel::parse(&request.model).map_err(|e| LlmError::from_status(404, e.to_string()))?;
    let mut rng = StdRng::seed_from_u64(request.seed_key);
    let latency = match model.latency {
        Latency::Fixed(latency) => latency,
        Latency::Uniform(min, max) => rng.random_range(min..=max),
    };
    let fails = model.error.is_some() || rng.random_bool(model.fail);
    if let (Some(sink), false) = (request.stream_to(), fails) {
        let completion = answer(&model, &request.messages, &request.params);
        stream(&completion.text, latency, sink).await;
        return Ok(completion);
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match model.error {
        Some(SimError::Timeout) => std::future::pending().await,
        Some(SimError::Malformed) => Err(LlmError::new(
            ErrorKind::Malformed,
            "response body is not valid JSON: EOF while parsing a string at line 1 column 42 \
             (simulated)",
        )),
        Some(SimError::Status(status)) => Err(status_error(status, model.retry_after)),
        None if fails => Err(LlmError::from_status(
            500,
            format!("internal server error (simulated, fail={})", model.fail),
        )),
        None => Ok(answer(&model, &request.messages, &request.params)),
    }
}

/// Streams `text` a word at a time (each with the whitespace before it), its latency spread
/// evenly over the words.
async fn stream(text: &str, latency: Duration, sink: &DeltaSink) {
    sink.send(Delta::Begin);
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() && i > start && !text[start..i].trim().is_empty() {
            pieces.push(&text[start..i]);
            start = i;
        }
    }
    pieces.push(&text[start..]);
    let gap = latency / u32::try_from(pieces.len()).unwrap_or(u32::MAX).max(1);
    for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        sink.send(Delta::Text(piece));
    }
}

fn status_error(status: u16, retry_after: Duration) -> LlmError {
    let message = match status {
        400 => "invalid request (simulated)",
        401 => "invalid API key (simulated)",
        429 => "rate limit reached (simulated)",
        502 => "bad gateway (simulated)",
        503 => "service unavailable (simulated)",
        529 => "overloaded (simulated)",
        _ => "internal server error (simulated)",
    };
    let error = LlmError::from_status(status, message);
    match status {
        429 | 529 => error.with_retry_after(retry_after),
        _ => error,
    }
}

fn answer(model: &SimModel, messages: &[ChatMessage], params: &Params) -> Completion {
    let last = |role: Role| {
        messages
            .iter()
            .rev()
            .find(|m| m.role == role)
            .map(|m| m.content.as_str())
    };
    let user = last(Role::User).unwrap_or("(no user message)");
    let (text, truncated) = if model.kind == SimKind::Json || params.wants_json() {
        let value = match params.response_schema() {
            Some(schema) => schema::instance(schema),
            None => json!({ "answer": format!("[sim] {}", excerpt(user, 200)), "sim": true }),
        };
        (value.to_string(), false)
    } else {
        let text = match (model.kind, last(Role::System)) {
            (SimKind::Lorem, _) => lorem(model.tokens, messages, params),
            (_, Some(system)) => format!("[sim] ({}) {user}", excerpt(system, 60)),
            (_, None) => format!("[sim] {user}"),
        };
        truncate(text, params.max_tokens)
    };
    let prompt_chars = messages.iter().map(|m| m.content.chars().count()).sum();
    Completion {
        usage: Usage {
            prompt_tokens: estimate_tokens(prompt_chars),
            completion_tokens: estimate_tokens(text.chars().count()),
        },
        text,
        finish_reason: Some(if truncated { "length" } else { "stop" }.to_owned()),
        tool_calls: None,
    }
}

/// Words drawn from a seed of the request's content, so equal requests get equal text.
fn lorem(words: u32, messages: &[ChatMessage], params: &Params) -> String {
    let mut parts: Vec<&[u8]> = messages.iter().map(|m| m.content.as_bytes()).collect();
    let seed = params.seed.unwrap_or(0).to_le_bytes();
    parts.push(&seed);
    let mut rng = StdRng::seed_from_u64(stable_hash(&parts));
    let mut text = String::from("[sim]");
    for _ in 0..words {
        text.push(' ');
        text.push_str(LOREM[rng.random_range(0..LOREM.len())]);
    }
    text
}

/// Cuts `text` to about `max_tokens`, as a provider stops at its limit.
fn truncate(text: String, max_tokens: Option<u32>) -> (String, bool) {
    let Some(limit) = max_tokens.and_then(|t| usize::try_from(t).ok()) else {
        return (text, false);
    };
    let max_chars = limit.saturating_mul(4).max(1);
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => (text[..end].to_owned(), true),
        None => (text, false),
    }
}

fn excerpt(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// About four characters per token, at least one.
fn estimate_tokens(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn request(model: &str, seed_key: u64) -> CompletionRequest {
        CompletionRequest {
            model: model.into(),
            messages: vec![
                ChatMessage::new(Role::System, "You are a careful reviewer."),
                ChatMessage::new(Role::User, "Is the plan sound?"),
            ],
            params: Params::default(),
            seed_key,
            deltas: None,
        }
    }

    async fn complete(request: &CompletionRequest) -> Result<Completion, LlmError> {
        SimProvider.complete(request).await
    }

    #[tokio::test]
    async fn echo_is_deterministic_and_labelled() {
        let first = complete(&request("echo", 1)).await.unwrap();
        assert_eq!(
            first.text,
            "[sim] (You are a careful reviewer.) Is the plan sound?"
        );
        assert_eq!(first, complete(&request("echo", 2)).await.unwrap());
        // 45 prompt characters, 54 completion characters.
        assert_eq!(
            first.usage,
            Usage {
                prompt_tokens: 12,
                completion_tokens: 14
            }
        );
        assert_eq!(first.finish_reason.as_deref(), Some("stop"));
    }

    /// A sink that records what it hears.
    fn recorder() -> (DeltaSink, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = heard.clone();
        let sink = DeltaSink::new(move |delta| {
            let mut heard = into.lock().unwrap();
            match delta {
                Delta::Begin => heard.push("<begin>".to_owned()),
                Delta::Text(text) => heard.push(text.to_owned()),
            }
        });
        (sink, heard)
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_call_gets_its_answer_a_word_at_a_time() {
        let (sink, heard) = recorder();
        let mut req = request("echo?latency=300ms", 1);
        req.deltas = Some(sink);
        let started = Instant::now();
        let whole = complete(&req).await.unwrap();
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(300),
            "the latency, spread"
        );
        let heard = heard.lock().unwrap().clone();
        assert_eq!(heard[0], "<begin>");
        assert_eq!(
            heard[1..].concat(),
            whole.text,
            "the pieces make the answer"
        );
        assert_eq!(heard[1..4], ["[sim]", " (You", " are"]);
        assert_eq!(whole, complete(&request("echo", 1)).await.unwrap());

        // A failing call streams nothing; a call with tools is answered whole.
        let (sink, heard) = recorder();
        let mut failing = request("echo?error=503", 1);
        failing.deltas = Some(sink.clone());
        assert!(complete(&failing).await.is_err());
        let mut tools = request("echo", 1);
        tools.deltas = Some(sink);
        tools.params.tools = Some(json!([]));
        assert!(complete(&tools).await.is_ok());
        assert!(heard.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn lorem_gives_n_deterministic_words_that_follow_the_content() {
        let a = complete(&request("lorem?tokens=10", 1)).await.unwrap();
        assert_eq!(a.text.split(' ').count(), 11);
        assert!(a.text.starts_with("[sim] "));
        assert_eq!(a, complete(&request("lorem?tokens=10", 9)).await.unwrap());
        let mut other = request("lorem?tokens=10", 1);
        other.params.seed = Some(7);
        assert_ne!(a.text, complete(&other).await.unwrap().text);
        assert_eq!(
            complete(&request("lorem", 1))
                .await
                .unwrap()
                .text
                .split(' ')
                .count(),
            65
        );
    }

    #[tokio::test]
    async fn max_tokens_cuts_the_answer() {
        let mut req = request("lorem?tokens=500", 1);
        req.params.max_tokens = Some(10);
        let answer = complete(&req).await.unwrap();
        assert_eq!(answer.text.chars().count(), 40);
        assert_eq!(answer.usage.completion_tokens, 10);
        assert_eq!(answer.finish_reason.as_deref(), Some("length"));
    }

    #[tokio::test]
    async fn json_follows_the_requested_schema() {
        let mut req = request("json", 1);
        req.params.response_format = Some(
            json!({"type": "json_schema", "json_schema": {"name": "review", "schema": {
                "type": "object",
                "required": ["score", "verdict", "reasons"],
                "properties": {
                    "score": {"type": "integer", "minimum": 1, "maximum": 10},
                    "verdict": {"enum": ["approve", "reject"]},
                    "reasons": {"type": "array", "items": {"type": "string", "minLength": 3}}
                },
                "additionalProperties": false
            }}}),
        );
        let value: serde_json::Value =
            serde_json::from_str(&complete(&req).await.unwrap().text).unwrap();
        assert_eq!(
            value,
            json!({"score": 1, "verdict": "approve", "reasons": ["[sim] reasons 1"]})
        );
    }

    #[tokio::test]
    async fn json_kind_and_json_requests_answer_json() {
        let text = complete(&request("json", 1)).await.unwrap().text;
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({"answer": "[sim] Is the plan sound?", "sim": true})
        );
        let mut req = request("echo", 1);
        req.params.response_format = Some(json!({"type": "json_object"}));
        assert_eq!(complete(&req).await.unwrap().text, text);
    }

    #[tokio::test]
    async fn fail_fails_about_that_share_of_calls_with_a_retryable_500() {
        let mut failures = 0;
        for seed in 0..1000 {
            if let Err(e) = complete(&request("echo?fail=0.5", seed)).await {
                assert_eq!((e.kind, e.status), (ErrorKind::ServerError, Some(500)));
                failures += 1;
            }
        }
        assert!((430..=570).contains(&failures), "{failures}");
        assert!(complete(&request("echo?fail=0", 3)).await.is_ok());
        assert!(complete(&request("echo?fail=1", 3)).await.is_err());
    }

    #[tokio::test]
    async fn errors_behave_like_a_provider() {
        let e = complete(&request("echo?error=429", 1)).await.unwrap_err();
        assert_eq!(
            (e.kind, e.retry_after),
            (ErrorKind::RateLimited, Some(Duration::from_secs(1)))
        );
        let e = complete(&request("echo?error=529&retry_after=2s", 1))
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.retry_after),
            (ErrorKind::Overloaded, Some(Duration::from_secs(2)))
        );
        let e = complete(&request("echo?error=401", 1)).await.unwrap_err();
        assert_eq!(
            (e.kind, e.retry_after, e.is_retryable()),
            (ErrorKind::Unauthorized, None, false)
        );
        let e = complete(&request("echo?error=malformed", 1))
            .await
            .unwrap_err();
        assert_eq!((e.kind, e.is_retryable()), (ErrorKind::Malformed, true));
        let e = complete(&request("gpt-4o", 1)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_never_answers() {
        let req = request("echo?error=timeout", 1);
        let started = Instant::now();
        let cut = tokio::time::timeout(Duration::from_secs(30), complete(&req)).await;
        assert!(cut.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_drawn_from_the_seed_key() {
        let mut latencies = Vec::new();
        for seed in 0..20 {
            let started = Instant::now();
            complete(&request("echo?latency=10ms..200ms", seed))
                .await
                .unwrap();
            latencies.push(started.elapsed());
        }
        let range = Duration::from_millis(10)..=Duration::from_millis(200);
        assert!(latencies.iter().all(|l| range.contains(l)), "{latencies:?}");
        assert!(latencies.iter().any(|l| *l != latencies[0]));
        let started = Instant::now();
        complete(&request("echo?latency=10ms..200ms", 0))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), latencies[0]);
    }
}
