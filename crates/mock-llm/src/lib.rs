//! A mock LLM provider: an HTTP server that speaks OpenAI's Chat Completions (and Azure
//! OpenAI's deployment URLs), Anthropic's Messages API and Ollama's `/api/chat` with realistic
//! bodies, scripted per model, for wire-format tests, fault tests and load tests. The tests start
//! one per test ([`MockLlm`]); `chorus mock-llm` serves one on a given address ([`serve`]).
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /openai/deployments/{deployment}/chat/completions`
//! (the deployment is the model), `POST /v1/messages`, `POST /api/chat`; and for scripting from
//! another process `PUT /_mock/models/{model}` (a JSON [`Behaviour`]), `GET /_mock/stats` and
//! `POST /_mock/reset`.
//!
//! A model answers `[mock] <last user message>` (`{"answer": …}` when JSON was asked for), with
//! usage counted at about four characters per token, unless its [`Behaviour`] says otherwise: a
//! queue of [`Fault`]s for the next calls, then faults drawn by probability. Each fault is rendered
//! in the wire format of the endpoint called, with that provider's real error bodies. The mock
//! also checks what the real APIs insist on (Anthropic's `anthropic-version`, `x-api-key` and
//! `max_tokens`, no `system` role in its messages; Azure's `api-version` and `api-key`), so a
//! client that gets the format wrong fails here as it would there.
//!
//! Layout:
//! - `behaviour`: how a model answers — its scripted [`Behaviour`] and the [`Fault`]s it meets.
//! - `server`: [`MockLlm`] and [`serve`], the router and its `/_mock` scripting endpoints.
//! - `call`: one provider call, from the request to its answer or its fault on the wire.
//! - `wire`: each provider's wire format — OpenAI and Azure chat completions, Anthropic
//!   Messages, Ollama — what it checks, and its answers, streams and error bodies.
//! - `record`: what the mock remembers of each model — its [`RecordedRequest`]s and
//!   [`ModelStats`] — and [`most_in_window`], the figure a rate limit is judged by.
//!
//! Requests are recorded with all their headers, keys included, so tests can assert
//! authentication; they stay in memory and are never logged or served over HTTP.

mod behaviour;
mod call;
mod record;
mod server;
mod wire;

pub use behaviour::{Behaviour, Chance, Fault, RetryAfter, ToolCall};
pub use record::{ModelStats, RecordedRequest, most_in_window};
pub use server::{MockLlm, serve};

#[cfg(test)]
mod tests;
