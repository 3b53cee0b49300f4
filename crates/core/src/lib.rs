//! Chorus's domain core: everything every role agrees on, with no I/O.
//!
//! Layout:
//! - [`ids`]: job ids, tenants, timestamps.
//! - [`budget`]: spend budgets: periods, the ledger, reserving and settling.
//! - [`fair`]: classes of service (bands) and the fair order of waiting work between tenants.
//! - [`auth`]: API key scopes and the caller a request authenticates as.
//! - [`spec`]: the job spec clients submit, and its validation.
//! - [`assertion`]: the shape of evaluation assertions.
//! - [`judge`]: the calls LLM judges make and how their answers are read.
//! - [`batch`]: batch lines (OpenAI Batch API shape) and where a job came from.
//! - [`openai`]: OpenAI's chat completion request as a job spec.
//! - [`template`]: prompt templates (minijinja).
//! - [`job`]: a job's state and its pure, idempotent transitions.
//! - [`messages`]: the versioned message bodies roles exchange.
//! - [`codec`]: MessagePack encoding and the headers every message carries.
//! - [`subjects`]: every NATS name: subjects, streams, consumers, buckets, keys.
//! - [`trace`]: W3C trace context.
//! - [`config`]: typed configuration, loaded from a TOML file and `CHORUS_…` variables.

pub mod assertion;
pub mod auth;
pub mod batch;
pub mod budget;
pub mod codec;
pub mod config;
pub mod fair;
pub mod ids;
pub mod job;
pub mod judge;
pub mod messages;
pub mod openai;
pub mod spec;
pub mod subjects;
pub mod template;
pub mod trace;

pub use ids::{JobId, Tenant};
