//! Test support: real servers and databases for tests, started per test and cleaned up on drop.
//!
//! - [`nats`]: a `nats-server` child process with JetStream on a free port and a temp store,
//!   which can be stopped and restarted on the same port for fault tests.
//! - [`cluster`]: a JetStream cluster of such servers on loopback, with helpers to find and move
//!   the leader of a stream, consumer or KV bucket and to kill, restart or pause a node.
//! - [`database`]: a fresh SQLite file or a fresh Postgres database per test.
//! - [`proxy`]: a TCP proxy a test cuts and restores, for outages of a shared server.
//! - [`wait`]: polling a condition with a deadline instead of sleeping.
//!
//! Only tests depend on it (as a dev-dependency); the mock LLM provider, which `chorus mock-llm`
//! ships, is its own crate, `chorus-mock-llm`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test support: failing loudly is the point

pub mod cluster;
pub mod database;
pub mod nats;
pub mod proxy;
pub mod wait;
