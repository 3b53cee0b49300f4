//! Chorus's roles as supervised ractor actors.
//!
//! Layout:
//! - [`runtime`]: the root of the supervision tree and the process lifecycle (start, drain, exit).
//! - [`http`]: an HTTP server (the edge's API, or a worker's probes) as a supervised role.
//! - [`stage`]: one role's supervisor, its consumer actors and its worker pool.
//! - [`supervision`]: the restart-intensity policy.
//! - [`roles`]: orchestrator, llm, evaluator and persister, built from the configuration.
//! - [`policy`]: the failure policy: retry here, redeliver later, or fail the job — every role asks it.
//! - [`dlq`]: moving a message that cannot be processed to the dead-letter stream.
//! - [`spend`]: the llm role's side of spend budgets: hold before each attempt, settle after.

pub mod dlq;
pub mod http;
pub mod policy;
pub mod roles;
pub mod runtime;
pub mod spend;
pub mod stage;
pub mod supervision;

pub use runtime::{Role, RoleHandle, Runtime, RuntimeError};
