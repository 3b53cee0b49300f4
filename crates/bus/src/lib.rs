//! Chorus on NATS JetStream: everything that talks to the broker, and nothing else.
//!
//! Layout:
//! - [`connect`]: connecting, and the start-up checks (reachable, JetStream on, version).
//! - [`error`]: [`BusError`] and its [`BusErrorKind`], classified once from async-nats's errors.
//! - [`definitions`]: streams and consumers as data (`nats/`), applied idempotently.
//! - [`publish`]: building messages with their headers and publishing them pipelined.
//! - [`delivery`]: a pulled message that must be settled; NAKed if dropped unsettled.
//! - [`dlq`]: dead letters: filing them, and reading, replaying and deleting single entries.
//! - [`source`]: the pull loop that feeds a role within its in-flight budget.
//! - [`fair`]: the pull loop of work split into flows (band × tenant), handed on in fair order.
//! - [`jobs`]: job state in the KV bucket, with compare-and-set.
//! - [`limits`]: route limits shared by every process (rates, concurrency, pauses).
//! - [`cancels`]: cancelled jobs and batches, mirrored in every process that dispatches work.
//! - [`budgets`]: spend budgets shared by every process: reserve, settle, expire (a KV ledger).
//! - [`mirror`]: a KV bucket mirrored in a process (the cancels, the budgets).
//! - [`natsd`]: the `nats-server` processes Chorus starts itself (dev, bench, tests), and finding one.

pub mod backlog;
pub mod budgets;
pub mod cancels;
pub mod claims;
pub mod connect;
pub mod definitions;
pub mod delivery;
pub mod dlq;
pub mod error;
pub mod fair;
pub mod jobs;
pub mod limits;
pub mod mirror;
pub mod natsd;
pub mod publish;
pub mod source;
pub mod waiting;

pub use connect::Bus;
pub use delivery::Delivery;
pub use error::{BusError, BusErrorKind};
