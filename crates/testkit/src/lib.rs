//! Test support: real servers and databases for tests, started per test and cleaned up on drop.
//!
//! - [`nats`]: a `nats-server` child process with JetStream on a free port and a temp store,
//!   which can be stopped and restarted on the same port for fault tests.
//! - [`database`]: a fresh SQLite file or a fresh Postgres database per test.
//! - [`mock_llm`]: a mock LLM provider server (OpenAI, Azure OpenAI, Anthropic and Ollama wire
//!   formats), scripted per model with faults, counting requests per second; also `chorus mock-llm`.
//! - [`proxy`]: a TCP proxy a test cuts and restores, for outages of a shared server.
//! - [`wait`]: polling a condition with a deadline instead of sleeping.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test support: failing loudly is the point

pub mod database;
pub mod mock_llm;
pub mod nats;
pub mod proxy;
pub mod wait;
