//! The [`Provider`] trait every backend implements, and what goes in and out of it.
//!
//! A provider makes exactly one call: no retries, no timeout, no rate limiting. Those are decided
//! around it ([`crate::retry`], and shared limits later), so every backend behaves alike. The trait
//! returns a boxed future to stay object safe: routes hold providers as `Arc<dyn Provider>`.
//!
//! Streaming is a side channel, not a second API: a request with a [`DeltaSink`] asks the
//! provider to stream, and one that can sends the text to the sink as it arrives, then returns the
//! whole [`Completion`] as always. So retries, fallbacks, limits and what is stored stay the same;
//! a provider that cannot stream (or a call with tools, whose calls are not streamed) just
//! answers whole, and the sink hears nothing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chorus_core::JobId;
use chorus_core::messages::{StepOutput, Usage};
use chorus_core::spec::{ChatMessage, Params};
use futures::future::BoxFuture;

use crate::error::LlmError;

/// One call to a provider.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub params: Params,
    /// Deterministic per call and attempt; the simulator draws latency and failures from it.
    pub seed_key: u64,
    /// Where to stream the answer's text as it arrives, if anywhere.
    pub deltas: Option<DeltaSink>,
}

impl CompletionRequest {
    /// The sink, when this call should stream: it asks to, and has no tools (tool calls are not
    /// streamed).
    pub fn stream_to(&self) -> Option<&DeltaSink> {
        self.deltas.as_ref().filter(|_| self.params.tools.is_none())
    }
}

/// What a streaming call reports as its answer arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delta<'a> {
    /// The provider accepted the call and its answer starts: text reported before this, by an
    /// earlier attempt, is void.
    Begin,
    /// The next piece of the answer's text.
    Text(&'a str),
}

/// Where a streaming call sends its [`Delta`]s, in order, from the calling task.
#[derive(Clone)]
pub struct DeltaSink(Arc<dyn Fn(Delta<'_>) + Send + Sync>);

impl DeltaSink {
    pub fn new(sink: impl Fn(Delta<'_>) + Send + Sync + 'static) -> Self {
        Self(Arc::new(sink))
    }

    pub fn send(&self, delta: Delta<'_>) {
        (self.0)(delta)
    }
}

impl fmt::Debug for DeltaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeltaSink")
    }
}

impl PartialEq for DeltaSink {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub text: String,
    pub usage: Usage,
    pub finish_reason: Option<String>,
    /// Tool calls the model asked for (OpenAI's shape).
    pub tool_calls: Option<serde_json::Value>,
}

impl Completion {
    /// The step's output from the route that answered.
    pub fn into_step_output(
        self,
        latency: Duration,
        route: &str,
        cost_usd: Option<f64>,
    ) -> StepOutput {
        StepOutput {
            text: self.text,
            usage: self.usage,
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            finish_reason: self.finish_reason,
            route: route.to_owned(),
            cost_usd,
            tool_calls: self.tool_calls,
            cut: None,
        }
    }
}

pub trait Provider: Send + Sync {
    /// A short, low-cardinality name for logs and metrics (`sim`, `openai`, …).
    fn name(&self) -> &str;

    fn complete<'a>(
        &'a self,
        request: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, LlmError>>;
}

/// The base seed key of one delivery of a step. Include the delivery so that a redelivered
/// message draws fresh simulated failures instead of replaying the ones that exhausted it.
pub fn seed_key(job_id: JobId, step: u32, delivery: u64) -> u64 {
    stable_hash(&[
        job_id.as_uuid().as_bytes(),
        &step.to_le_bytes(),
        &delivery.to_le_bytes(),
    ])
}

/// FNV-1a over length-prefixed parts, then a SplitMix64 finish: stable across builds and
/// platforms, unlike `std`'s hasher.
pub(crate) fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in (part.len() as u64).to_le_bytes().iter().chain(*part) {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    mix(hash)
}

/// SplitMix64's finalizer.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
