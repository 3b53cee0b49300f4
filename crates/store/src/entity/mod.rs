//! sea-orm entities, one module per table; the column layout is described in [`crate::migration`].
//!
//! Every column a user's or a provider's text can reach is a [`StoredText`] or a [`StoredJson`]
//! ([`crate::lossless`]), so any text is stored and read back as it was; plain `String`s are left
//! for what Chorus itself writes (statuses, kinds, scopes) and validated tenants.
//!
//! There are no relations (and no foreign keys in the schema): all rows of a job are written
//! together from one snapshot, in one transaction, so there is nothing for the schema to enforce;
//! and `jobs.batch_id` may name a batch with no row in `batches` (a JetStream submitter's batch).
//!
//! [`StoredText`]: crate::lossless::StoredText
//! [`StoredJson`]: crate::lossless::StoredJson

pub mod api_keys;
pub mod audit_log;
pub mod batches;
pub mod evaluations;
pub mod files;
pub mod jobs;
pub mod steps;
pub mod tenants;
