//! The DLQ service: list, show, replay and purge, for `chorus dlq` and `/v1/admin/dlq` alike.
//!
//! A replay or purge selects its entries, then changes them one by one and reports each
//! outcome; one that is not a dry run checks the [`AuditLog`] before anything changes and
//! records what it did after (with the detail of [`crate::audit`]). A replay is paced at a
//! fixed interval; an entry whose message was already replayed `max_replays` times is refused;
//! it stops at the first NATS failure, or when `stop` resolves (the message in flight is
//! finished, and what was done by then is audited).

use std::future::Future;
use std::time::Duration;

use chorus_bus::Bus;
use chorus_bus::dlq::{DeadLetters, DlqError, Entry, Filter};
use chorus_store::AuditAction;
use serde_json::Value;

use crate::audit::{self, AuditLog};
use crate::report::{PurgeReport, ReplayOptions, ReplayReport, Skipped};
use crate::view::{Detail, Listing, Summary};

/// Why a replay or purge did not happen, or happened unrecorded. `E` is the audit log's error.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError<E: std::error::Error + 'static> {
    /// NATS failed before anything changed (selecting the entries).
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// A replay paced at a rate that is not a positive number of replays per second.
    #[error("rate: must be a number of replays per second above 0, got {rate}")]
    BadRate { rate: f64 },
    /// The audit log is not ready: nothing was changed.
    #[error(transparent)]
    Unready(E),
    /// Done, but the row recording it could not be written: `detail` is what it would hold.
    #[error("done, but the audit log could not be written")]
    Unrecorded {
        action: AuditAction,
        detail: Value,
        #[source]
        source: E,
    },
}

/// A change's report, with the audit row that records it (none for a dry run).
#[derive(Debug)]
pub struct Audited<R> {
    pub report: R,
    pub audit_id: Option<i64>,
}

/// The dead letters of one installation, as operators work with them.
#[derive(Clone, Debug)]
pub struct Dlq {
    dead_letters: DeadLetters,
}

impl Dlq {
    pub fn new(bus: Bus) -> Self {
        Self {
            dead_letters: DeadLetters::new(bus),
        }
    }

    /// Entries matching `filter`, oldest first, at most `limit`.
    pub async fn list(&self, filter: &Filter, limit: usize) -> Result<Listing, DlqError> {
        let (entries, more) = self.dead_letters.select(filter, limit).await?;
        Ok(Listing {
            entries: entries.iter().map(Summary::from).collect(),
            more,
        })
    }

    /// The entry at `seq` in full, if there is one.
    pub async fn show(&self, seq: u64) -> Result<Option<Detail>, DlqError> {
        Ok(self.dead_letters.get(seq).await?.as_ref().map(Detail::from))
    }

    /// Replays the entries matching `filter` as `options` say, until done or until `stop`
    /// resolves; recorded in `audit` as `actor` unless a dry run.
    pub async fn replay<A: AuditLog>(
        &self,
        audit: &A,
        actor: &str,
        filter: &Filter,
        options: ReplayOptions,
        stop: impl Future<Output = ()>,
    ) -> Result<Audited<ReplayReport>, ChangeError<A::Error>> {
        let replay = self.replay_entries(filter, options, stop);
        let detail = |report: &ReplayReport| audit::replay_detail(report, filter, options);
        let action = AuditAction::DlqReplay;
        audited(audit, actor, action, options.dry_run, replay, detail).await
    }

    /// Deletes the entries matching `filter` (with `dry_run`, only reports them); recorded in
    /// `audit` as `actor` unless a dry run.
    pub async fn purge<A: AuditLog>(
        &self,
        audit: &A,
        actor: &str,
        filter: &Filter,
        dry_run: bool,
    ) -> Result<Audited<PurgeReport>, ChangeError<A::Error>> {
        let purge = async { Ok(self.purge_entries(filter, dry_run).await?) };
        let detail = |report: &PurgeReport| audit::purge_detail(report, filter);
        audited(audit, actor, AuditAction::DlqPurge, dry_run, purge, detail).await
    }

    async fn purge_entries(&self, filter: &Filter, dry_run: bool) -> Result<PurgeReport, DlqError> {
        let (entries, _) = self.dead_letters.select(filter, usize::MAX).await?;
        let mut report = PurgeReport {
            dry_run,
            matched: entries.len(),
            ..PurgeReport::default()
        };
        for entry in entries {
            if dry_run {
                report.purged.push(Summary::from(&entry));
                continue;
            }
            match self.dead_letters.delete(entry.seq).await {
                Ok(()) => report.purged.push(Summary::from(&entry)),
                Err(e) => report.failed.push(Skipped {
                    entry: Summary::from(&entry),
                    reason: e.to_string(),
                }),
            }
        }
        Ok(report)
    }

    async fn replay_entries<E: std::error::Error + 'static>(
        &self,
        filter: &Filter,
        options: ReplayOptions,
        stop: impl Future<Output = ()>,
    ) -> Result<ReplayReport, ChangeError<E>> {
        if !(options.rate.is_finite() && options.rate > 0.0) {
            return Err(ChangeError::BadRate { rate: options.rate });
        }
        let (entries, _) = self.dead_letters.select(filter, usize::MAX).await?;
        let mut report = ReplayReport {
            dry_run: options.dry_run,
            matched: entries.len(),
            ..ReplayReport::default()
        };
        let (capped, eligible): (Vec<Entry>, Vec<Entry>) = entries
            .into_iter()
            .partition(|e| e.letter.replays >= options.max_replays);
        report.refused = capped
            .iter()
            .map(|e| Skipped {
                entry: e.into(),
                reason: format!(
                    "at the replay cap: replayed {}x already, the cap is {}",
                    e.letter.replays, options.max_replays
                ),
            })
            .collect();
        if options.dry_run {
            report.replayed = eligible.iter().map(Summary::from).collect();
            return Ok(report);
        }
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rate));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        let mut eligible = eligible.into_iter();
        while let Some(entry) = eligible.next() {
            tokio::select! {
                biased;
                _ = &mut stop => {
                    report.not_attempted = 1 + eligible.len();
                    break;
                }
                _ = pace.tick() => {}
            }
            match self.dead_letters.replay(&entry).await {
                Ok(()) => report.replayed.push(Summary::from(&entry)),
                Err(failure) => {
                    report.failed.push(Skipped {
                        entry: Summary::from(&entry),
                        reason: failure.to_string(),
                    });
                    report.not_attempted = eligible.len();
                    break;
                }
            }
        }
        Ok(report)
    }
}

/// Runs `change`: unless it is a dry run, with the audit log checked first and a row written
/// after.
async fn audited<A: AuditLog, R>(
    audit: &A,
    actor: &str,
    action: AuditAction,
    dry_run: bool,
    change: impl Future<Output = Result<R, ChangeError<A::Error>>>,
    detail: impl FnOnce(&R) -> Value,
) -> Result<Audited<R>, ChangeError<A::Error>> {
    if dry_run {
        let report = change.await?;
        return Ok(Audited {
            report,
            audit_id: None,
        });
    }
    audit.ready().await.map_err(ChangeError::Unready)?;
    let report = change.await?;
    let detail = detail(&report);
    match audit.record(actor, action, detail.clone()).await {
        Ok(id) => Ok(Audited {
            report,
            audit_id: Some(id),
        }),
        Err(source) => Err(ChangeError::Unrecorded {
            action,
            detail,
            source,
        }),
    }
}
