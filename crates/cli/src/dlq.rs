//! `chorus dlq list|show|replay|purge`: dead letters for ops, through the DLQ service
//! ([`chorus_dlq::service`], which `/v1/admin/dlq` uses too); here the arguments and the printing.
//!
//! Replays and purges that are not dry runs are written to the audit log as `--actor` (by default
//! `$USER@<hostname>`); dry runs change nothing, are not audited and need no database. The
//! database is opened and checked before anything changes. Ctrl-C stops a paced replay after the
//! message in flight, and what was done by then is audited.

use anyhow::Context as _;
use chorus_bus::dlq::Filter;
use chorus_core::config::DatabaseConfig;
use chorus_core::subjects::Stage;
use chorus_dlq::audit::AuditLog;
use chorus_dlq::report::{PurgeReport, ReplayOptions, ReplayReport, Skipped};
use chorus_dlq::select::{parse_stage, parse_time};
use chorus_dlq::service::{ChangeError, Dlq};
use chorus_dlq::view::{Detail, Summary};
use chorus_store::{AuditAction, Store, StoreError};
use clap::Subcommand;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use chorus_app::{self as app, DatabaseError};

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        select: Select,
        /// Most entries to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full: the original subject, headers and body.
    Show {
        /// The entry's sequence in the DLQ stream (the SEQ column of `list`).
        seq: u64,
        #[arg(long)]
        json: bool,
    },
    /// Republish dead letters to their original subjects (paced, within the replay cap) and
    /// remove them from the DLQ.
    Replay {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        change: Change,
        /// Replays per second [default: dlq.replay_rate].
        #[arg(long)]
        rate: Option<f64>,
        /// Refuse entries replayed this often already [default: dlq.max_replays].
        #[arg(long)]
        max_replays: Option<u32>,
    },
    /// Delete dead letters.
    Purge {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        change: Change,
    },
}

/// Which entries; every given criterion must match.
#[derive(Debug, clap::Args)]
struct Select {
    /// orchestrator, llm, evaluator or persister.
    #[arg(long, value_parser = parse_stage)]
    stage: Option<Stage>,
    /// The route of the failed call.
    #[arg(long)]
    route: Option<String>,
    /// The error kind (max_deliveries, server_error, undecodable, …).
    #[arg(long)]
    kind: Option<String>,
    /// Failed at or after: RFC 3339, or a duration ago such as `2h`.
    #[arg(long)]
    since: Option<String>,
    /// Failed at or before: RFC 3339, or a duration ago.
    #[arg(long)]
    until: Option<String>,
}

#[derive(Debug, clap::Args)]
struct Change {
    /// Only these DLQ sequences (comma-separated or repeated).
    #[arg(long = "seq", value_delimiter = ',')]
    sequences: Vec<u64>,
    /// Act on every entry (required when no other criterion is given).
    #[arg(long)]
    all: bool,
    /// Report what would happen without doing it.
    #[arg(long)]
    dry_run: bool,
    /// Who to record in the audit log [default: $USER@<hostname>].
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    json: bool,
}

impl Select {
    fn filter(&self, sequences: Vec<u64>) -> anyhow::Result<Filter> {
        let time = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| parse_time(t).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
                .transpose()
        };
        Ok(Filter {
            stage: self.stage,
            route: self.route.clone(),
            kind: self.kind.clone(),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            sequences,
        })
    }
}

impl Change {
    fn filter(&self, select: &Select) -> anyhow::Result<Filter> {
        let filter = select.filter(self.sequences.clone())?;
        if filter.is_everything() && !self.all {
            anyhow::bail!(
                "select entries (--stage, --route, --kind, --since, --until or --seq), or pass --all \
                 to act on every entry"
            );
        }
        Ok(filter)
    }

    fn actor(&self) -> String {
        self.actor.clone().unwrap_or_else(default_actor)
    }
}

/// `$USER@<hostname>`: who the audit log names for a command run here.
pub(crate) fn default_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

pub async fn run(config_file: Option<&std::path::Path>, args: DlqArgs) -> anyhow::Result<()> {
    let config = app::load_config(config_file)?;
    let bus = app::connect(&config, "chorus dlq").await?;
    let dlq = Dlq::new(bus);
    let audit_log = Database::new(&config.database);
    match args.command {
        DlqCommand::List {
            select,
            limit,
            json,
        } => {
            let listing = dlq.list(&select.filter(Vec::new())?, limit).await?;
            if json {
                let body = json!({"data": listing.entries, "has_more": listing.more});
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print_table(&listing.entries);
                if listing.more {
                    println!("(more entries match; raise --limit or narrow the filter)");
                }
            }
        }
        DlqCommand::Show { seq, json } => {
            let detail = dlq
                .show(seq)
                .await?
                .with_context(|| format!("no dead letter at sequence {seq}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                print_detail(&detail);
            }
        }
        DlqCommand::Replay {
            select,
            change,
            rate,
            max_replays,
        } => {
            let filter = change.filter(&select)?;
            let options = ReplayOptions {
                max_replays: max_replays.unwrap_or(config.dlq.max_replays),
                rate: rate.unwrap_or(config.dlq.replay_rate),
                dry_run: change.dry_run,
            };
            let stop = app::shutdown_signal();
            let done = dlq
                .replay(&audit_log, &change.actor(), &filter, options, stop)
                .await
                .map_err(unrecorded)?;
            print_replay(&done.report, options, done.audit_id, change.json)?;
            if !done.report.failed.is_empty() {
                anyhow::bail!("the replay stopped at a failure");
            }
        }
        DlqCommand::Purge { select, change } => {
            let filter = change.filter(&select)?;
            let done = dlq
                .purge(&audit_log, &change.actor(), &filter, change.dry_run)
                .await
                .map_err(unrecorded)?;
            print_purge(&done.report, done.audit_id, change.json)?;
            if !done.report.failed.is_empty() {
                anyhow::bail!("some entries could not be purged");
            }
        }
    }
    Ok(())
}

/// The audit log in the configured database, opened when a change is about to be made: a dry
/// run needs no database.
struct Database<'a> {
    config: &'a DatabaseConfig,
    store: OnceCell<Store>,
}

/// Why the audit log could not be used.
#[derive(Debug, thiserror::Error)]
enum AuditLogError {
    #[error(transparent)]
    Open(#[from] DatabaseError),
    #[error("the audit log is not readable (has `chorus migrate` run?); nothing was changed")]
    Unreadable(#[source] StoreError),
    #[error(transparent)]
    Write(StoreError),
}

impl<'a> Database<'a> {
    fn new(config: &'a DatabaseConfig) -> Self {
        Self {
            config,
            store: OnceCell::new(),
        }
    }

    async fn store(&self) -> Result<&Store, DatabaseError> {
        self.store
            .get_or_try_init(|| app::open_store(self.config, false))
            .await
    }
}

impl AuditLog for Database<'_> {
    type Error = AuditLogError;

    async fn ready(&self) -> Result<(), AuditLogError> {
        let store = self.store().await?;
        store
            .audit_entries(None, 1)
            .await
            .map_err(AuditLogError::Unreadable)?;
        Ok(())
    }

    async fn record(
        &self,
        actor: &str,
        action: AuditAction,
        detail: Value,
    ) -> Result<i64, AuditLogError> {
        let store = self.store().await?;
        store
            .record(actor, action, detail)
            .await
            .map_err(AuditLogError::Write)
    }
}

/// A change's error for printing; one done but not audited prints the row it would have been.
fn unrecorded(error: ChangeError<AuditLogError>) -> anyhow::Error {
    if let ChangeError::Unrecorded { detail, .. } = &error {
        eprintln!("the audit row that could not be written: {detail}");
    }
    error.into()
}

fn print_table(entries: &[Summary]) {
    if entries.is_empty() {
        println!("no dead letters match");
        return;
    }
    let rows: Vec<[String; 9]> = entries
        .iter()
        .map(|e| {
            [
                e.seq.to_string(),
                e.failed_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                e.stage.as_str().to_owned(),
                e.error_kind.clone(),
                e.route.clone().unwrap_or_else(|| "-".into()),
                e.job_id.map_or_else(|| "-".into(), |j| j.to_string()),
                e.deliveries.to_string(),
                e.replays.to_string(),
                truncate(&e.error, 72),
            ]
        })
        .collect();
    let header = [
        "SEQ",
        "FAILED AT",
        "STAGE",
        "KIND",
        "ROUTE",
        "JOB",
        "DELIV",
        "REPLAYS",
        "ERROR",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn truncate(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', " ");
    match one_line.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &one_line[..end]),
        None => one_line,
    }
}

fn print_detail(detail: &Detail) {
    let s = &detail.summary;
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for (name, value) in [
        ("seq", s.seq.to_string()),
        ("stage", s.stage.as_str().to_owned()),
        (
            "subject",
            format!("{} (sequence {})", s.subject, s.stream_sequence),
        ),
        ("error kind", s.error_kind.clone()),
        ("error", s.error.clone()),
        ("route", or_dash(s.route.clone())),
        ("job", or_dash(s.job_id.map(|j| j.to_string()))),
        (
            "tenant",
            or_dash(s.tenant.as_ref().map(ToString::to_string)),
        ),
        ("deliveries", s.deliveries.to_string()),
        ("attempts", s.attempts.to_string()),
        ("replays", s.replays.to_string()),
        ("published at", s.published_at.to_rfc3339()),
        ("failed at", s.failed_at.to_rfc3339()),
    ] {
        println!("{name:>13}: {value}");
    }
    println!("\nheaders:");
    for header in &detail.headers {
        println!("  {}: {}", header.name, header.value);
    }
    println!(
        "\nbody ({} bytes, {}):\n{}",
        detail.body.bytes, detail.body.encoding, detail.body.data
    );
}

fn entry_line(verb: &str, e: &Summary) -> String {
    let job = e.job_id.map_or_else(|| "-".into(), |j| j.to_string());
    format!(
        "  {verb:<9} seq {:<6} {:<12} {:<15} job {job:<36}  {}",
        e.seq,
        e.stage.as_str(),
        e.error_kind,
        e.subject
    )
}

fn skipped_line(verb: &str, s: &Skipped) -> String {
    format!("{} ({})", entry_line(verb, &s.entry), s.reason)
}

fn audit_note(audit_id: Option<i64>) -> String {
    audit_id.map_or_else(
        || "dry run: nothing changed, nothing audited".into(),
        |id| format!("audit log entry {id}"),
    )
}

/// A report as JSON, with the audit row that records it (`null` for a dry run).
fn print_json(report: &impl serde::Serialize, audit_id: Option<i64>) -> anyhow::Result<()> {
    let mut body = serde_json::to_value(report)?;
    body["audit_id"] = json!(audit_id);
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

fn print_replay(
    report: &ReplayReport,
    options: ReplayOptions,
    audit_id: Option<i64>,
    as_json: bool,
) -> anyhow::Result<()> {
    if as_json {
        return print_json(report, audit_id);
    }
    let verb = if report.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{verb} {} of {} matching entries; {} refused at the replay cap of {}{}{}",
        report.replayed.len(),
        report.matched,
        report.refused.len(),
        options.max_replays,
        match report.failed.len() {
            0 => String::new(),
            n => format!("; {n} failed"),
        },
        match report.not_attempted {
            0 => String::new(),
            n => format!("; {n} not attempted"),
        },
    );
    for e in &report.replayed {
        println!(
            "{}",
            entry_line(if report.dry_run { "would" } else { "replayed" }, e)
        );
    }
    for s in &report.refused {
        println!("{}", skipped_line("refused", s));
    }
    for s in &report.failed {
        println!("{}", skipped_line("failed", s));
    }
    println!("{}", audit_note(audit_id));
    Ok(())
}

fn print_purge(report: &PurgeReport, audit_id: Option<i64>, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return print_json(report, audit_id);
    }
    let verb = if report.dry_run {
        "would purge"
    } else {
        "purged"
    };
    println!(
        "{verb} {} of {} matching entries",
        report.purged.len(),
        report.matched
    );
    for e in &report.purged {
        println!(
            "{}",
            entry_line(if report.dry_run { "would" } else { "purged" }, e)
        );
    }
    for s in &report.failed {
        println!("{}", skipped_line("failed", s));
    }
    println!("{}", audit_note(audit_id));
    Ok(())
}

#[cfg(test)]
mod tests {
    use chorus_testkit::database::TestDatabase;

    use super::*;

    #[tokio::test]
    async fn the_audit_log_opens_only_when_asked_and_refuses_a_database_behind() {
        let db = TestDatabase::sqlite();
        let config = DatabaseConfig {
            url: db.url().into(),
            ..DatabaseConfig::default()
        };
        let behind = Database::new(&config);
        assert!(behind.store.get().is_none(), "nothing is opened up front");
        let error = behind.ready().await.unwrap_err();
        assert!(
            matches!(
                error,
                AuditLogError::Open(DatabaseError::NotMigrated { .. })
            ),
            "{error}"
        );

        Store::connect(db.url(), 1)
            .await
            .unwrap()
            .migrate()
            .await
            .unwrap();
        let log = Database::new(&config);
        log.ready().await.unwrap();
        let id = log
            .record("ops@test", AuditAction::DlqPurge, json!({"matched": 0}))
            .await
            .unwrap();
        let rows = log
            .store()
            .await
            .unwrap()
            .audit_entries(None, 10)
            .await
            .unwrap();
        assert_eq!(
            rows.iter()
                .map(|r| (r.id, r.actor.as_str()))
                .collect::<Vec<_>>(),
            [(id, "ops@test")]
        );
    }
}
