//! Whole-system tests: real nats-server processes, real SQLite and Postgres, the real binary.
//! Only the LLM provider is simulated (the built-in `sim` provider).

// Helpers outside `#[test]` functions fail loudly on purpose.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod helpers;

mod api;
mod auth;
mod batches;
mod bench;
mod budgets;
mod chat;
mod cli;
mod cli_budgets;
mod cluster;
mod cluster_apply;
mod deploy;
mod dlq;
mod drain;
mod examples;
mod fairness;
mod faults;
mod isolation;
mod jobs;
mod llm;
mod lossless;
mod metrics;
mod names;
mod nats_security;
mod openapi;
mod pipeline;
mod quotas;
mod sdk;
mod secrets;
mod startup;
mod stop;
mod traces;
mod usage;
