//! The LLM stage's library: providers, routes, error classification and the retry policy. The actor
//! that consumes `llm.call` messages lives elsewhere and drives this crate.
//!
//! Layout:
//! - [`error`]: [`LlmError`] and its one classification: retryable or not, stable kind names.
//! - [`provider`]: the [`Provider`] trait every backend implements; one call, nothing around it.
//! - [`providers`]: the real providers, one module per wire format (OpenAI-compatible, Anthropic,
//!   Ollama), over one shared HTTP layer that classifies failures.
//! - [`sim`]: the built-in deterministic simulator, `sim:<kind>?option=value`.
//! - [`routes`]: route names → provider, model, timeout, fallbacks and prices, checked at start-up.
//! - [`retry`]: the one place retries are decided: in-process backoff and redelivery delays.

pub mod error;
pub mod provider;
pub mod providers;
pub mod retry;
pub mod routes;
pub mod sim;
pub mod tokens;

pub use error::{ErrorKind, LlmError};
pub use provider::{Completion, CompletionRequest, Delta, DeltaSink, Provider, seed_key};
pub use retry::{CallOutcome, RetryPolicy};
pub use routes::{Route, RouteError, Routes, RoutesError, UnknownRoute};
pub use sim::{SimModel, SimModelError, SimProvider};
