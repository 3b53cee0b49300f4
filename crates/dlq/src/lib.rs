//! The DLQ service: what an operator does with dead letters — list, show, replay, purge — the
//! same whichever way they ask: `chorus dlq` on the command line or `/v1/admin/dlq` over HTTP.
//! Both call [`service::Dlq`], and only it.
//!
//! Layout:
//! - [`service`]: the flows. A replay or purge that is not a dry run checks the audit log before
//!   anything changes and writes a row after; a dry run changes nothing and is not audited.
//! - [`audit`]: the audit log behind a trait (the CLI opens its database only when a change is
//!   to be made), and what a row keeps of a replay or purge.
//! - [`report`]: what a replay or purge did, entry by entry.
//! - [`view`]: an entry as operators see it (a summary, or in full), with its OpenAPI schema.
//! - [`select`]: a selection's stage and times read from text (flags, query parameters).
//!
//! Why a crate of its own: the flows need NATS (`chorus-bus`, which does the broker's work on
//! single entries) and the audit log (`chorus-store`), and neither of those may depend on the
//! other; its two callers are front ends (the HTTP edge, the CLI), where logic the other needs
//! cannot live. The OpenAPI schemas come along (the edge documents these types as they are), so
//! the bus stays free of HTTP concerns.

pub mod audit;
pub mod report;
pub mod select;
pub mod service;
pub mod view;
