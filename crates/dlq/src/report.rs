//! What a replay or a purge did, entry by entry, and how a replay is to be done.

use serde::{Deserialize, Serialize};

use crate::view::Summary;

/// How to replay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplayOptions {
    /// Entries whose message was replayed this often already are refused.
    pub max_replays: u32,
    /// Replays per second.
    pub rate: f64,
    pub dry_run: bool,
}

/// An entry that was not replayed or purged, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Skipped {
    #[serde(flatten)]
    pub entry: Summary,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplayReport {
    pub dry_run: bool,
    /// Entries the filter selected.
    pub matched: usize,
    /// Replayed (with `dry_run`: would be), in the order they were published.
    pub replayed: Vec<Summary>,
    /// At the replay cap.
    pub refused: Vec<Skipped>,
    /// A NATS failure; the replay stops at the first one.
    pub failed: Vec<Skipped>,
    /// Stopped before the end (cancelled, or after a failure): these were not attempted.
    pub not_attempted: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PurgeReport {
    pub dry_run: bool,
    pub matched: usize,
    /// Deleted (with `dry_run`: would be).
    pub purged: Vec<Summary>,
    pub failed: Vec<Skipped>,
}
