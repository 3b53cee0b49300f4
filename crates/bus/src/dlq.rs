//! Dead letters on NATS: filing, listing, reading, replaying and purging the entries of the DLQ
//! stream (`<PREFIX>_DLQ`, subjects `<prefix>.dlq.<stage>`).
//!
//! An entry is named by its sequence in the DLQ stream. Listings read the stream through a
//! short-lived ephemeral consumer without acks (filtered to one stage's subject when asked), so
//! they never disturb it. Replaying republishes the original subject, headers and body with
//! `Chorus-Replays` raised by one and a fresh `Nats-Msg-Id` (`<original id>:replay:<n>`), then
//! deletes the entry; an entry whose message was already replayed `max_replays` times is refused.
//! Replays are paced at a fixed interval. Auditing is the caller's business: these functions
//! only report exactly what they did.

use std::future::Future;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DeleteMessageErrorKind, LastRawMessageErrorKind, Stream};
use base64::Engine as _;
use chorus_core::codec::{self, CodecError, headers};
use chorus_core::ids::{UnixMillis, msg_id};
use chorus_core::messages::DeadLetter;
use chorus_core::subjects::{Stage, Subjects};
use chorus_core::{JobId, Tenant};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::Classify;
use crate::publish::Outgoing;
use crate::{Bus, BusError, BusErrorKind};

/// Messages requested per fetch while reading the DLQ stream.
const FETCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// A request to NATS failed; its kind says how.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The entry at that sequence is not a dead letter (a message filed by something else).
    #[error("entry {sequence} of the DLQ stream is not a dead letter: {source}")]
    NotADeadLetter {
        sequence: u64,
        #[source]
        source: CodecError,
    },
    /// A replay paced at a rate that is not a positive number of replays per second.
    #[error("rate: must be a number of replays per second above 0, got {rate}")]
    BadRate { rate: f64 },
    /// A sequence NATS refuses to look up (0).
    #[error("sequence {seq}: {source}")]
    BadSequence {
        seq: u64,
        #[source]
        source: async_nats::jetstream::Error,
    },
}

/// What a [`DlqError`] means to a caller: nothing there, try again later, or ask differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlqErrorKind {
    NotFound,
    Unavailable,
    Invalid,
}

impl DlqError {
    fn from_nats<K: Classify>(what: &str, e: async_nats::error::Error<K>) -> Self {
        Self::Bus(BusError::request(what, e))
    }

    pub fn kind(&self) -> DlqErrorKind {
        match self {
            Self::Bus(e) if e.kind() == BusErrorKind::NotFound => DlqErrorKind::NotFound,
            Self::Bus(_) => DlqErrorKind::Unavailable,
            Self::NotADeadLetter { .. } => DlqErrorKind::NotFound,
            Self::BadRate { .. } | Self::BadSequence { .. } => DlqErrorKind::Invalid,
        }
    }
}

/// Which entries an operation applies to; every given criterion must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The error kind (`max_deliveries`, `server_error`, `undecodable`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Failed at or after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Failed at or before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Only these DLQ sequences (any when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<u64>,
}

impl Filter {
    /// True when it selects every entry.
    pub fn is_everything(&self) -> bool {
        *self == Self::default()
    }

    fn matches(&self, letter: &DeadLetter) -> bool {
        let millis = |t: &DateTime<Utc>| t.timestamp_millis();
        self.stage.is_none_or(|s| s == letter.stage)
            && self
                .route
                .as_ref()
                .is_none_or(|r| letter.route.as_ref() == Some(r))
            && self.kind.as_ref().is_none_or(|k| &letter.error_kind == k)
            && self
                .since
                .as_ref()
                .is_none_or(|t| letter.failed_at >= millis(t))
            && self
                .until
                .as_ref()
                .is_none_or(|t| letter.failed_at <= millis(t))
    }
}

/// A dead letter and its sequence in the DLQ stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub letter: DeadLetter,
}

/// An entry as listed: everything but the original headers and body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Summary {
    /// The entry's sequence in the DLQ stream (what `show`, `replay` and `purge` take).
    pub seq: u64,
    pub stage: Stage,
    /// The original message's subject and its sequence in its own stream.
    pub subject: String,
    pub stream_sequence: u64,
    pub error_kind: String,
    pub error: String,
    pub route: Option<String>,
    pub job_id: Option<JobId>,
    pub tenant: Option<Tenant>,
    pub deliveries: u64,
    pub attempts: u32,
    /// How often the message had been replayed from the DLQ before it landed here.
    pub replays: u32,
    pub published_at: DateTime<Utc>,
    pub failed_at: DateTime<Utc>,
}

/// An entry in full: its summary, then the original headers and body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Detail {
    #[serde(flatten)]
    pub summary: Summary,
    pub headers: Vec<Header>,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// The original body: as text when it is UTF-8, otherwise base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Body {
    /// `utf-8` or `base64`.
    pub encoding: String,
    pub data: String,
    pub bytes: usize,
}

impl Entry {
    pub fn summary(&self) -> Summary {
        let l = &self.letter;
        Summary {
            seq: self.seq,
            stage: l.stage,
            subject: l.subject.clone(),
            stream_sequence: l.stream_sequence,
            error_kind: l.error_kind.clone(),
            error: l.error.clone(),
            route: l.route.clone(),
            job_id: l.job_id,
            tenant: l.tenant.clone(),
            deliveries: l.deliveries,
            attempts: l.attempts,
            replays: l.replays,
            published_at: timestamp(l.published_at),
            failed_at: timestamp(l.failed_at),
        }
    }

    pub fn detail(&self) -> Detail {
        let payload = &self.letter.payload;
        let (encoding, data) = match std::str::from_utf8(payload) {
            Ok(text) => ("utf-8", text.to_owned()),
            Err(_) => (
                "base64",
                base64::engine::general_purpose::STANDARD.encode(payload),
            ),
        };
        Detail {
            summary: self.summary(),
            headers: self
                .letter
                .headers
                .iter()
                .map(|(name, value)| Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            body: Body {
                encoding: encoding.into(),
                data,
                bytes: payload.len(),
            },
        }
    }
}

fn timestamp(millis: UnixMillis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

/// A listing; `more` when `limit` cut it short.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub entries: Vec<Summary>,
    pub more: bool,
}

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

impl ReplayReport {
    /// What the audit log keeps of a replay: the selection, the settings, and per outcome the
    /// entries' sequences, subjects and jobs.
    pub fn audit_detail(&self, filter: &Filter, options: ReplayOptions) -> serde_json::Value {
        serde_json::json!({
            "filter": filter,
            "dry_run": self.dry_run,
            "max_replays": options.max_replays,
            "rate": options.rate,
            "matched": self.matched,
            "replayed": self.replayed.iter().map(audited).collect::<Vec<_>>(),
            "refused": self.refused.iter().map(audited_skip).collect::<Vec<_>>(),
            "failed": self.failed.iter().map(audited_skip).collect::<Vec<_>>(),
            "not_attempted": self.not_attempted,
        })
    }
}

impl PurgeReport {
    /// What the audit log keeps of a purge.
    pub fn audit_detail(&self, filter: &Filter) -> serde_json::Value {
        serde_json::json!({
            "filter": filter,
            "dry_run": self.dry_run,
            "matched": self.matched,
            "purged": self.purged.iter().map(audited).collect::<Vec<_>>(),
            "failed": self.failed.iter().map(audited_skip).collect::<Vec<_>>(),
        })
    }
}

fn audited(entry: &Summary) -> serde_json::Value {
    serde_json::json!({
        "seq": entry.seq,
        "stage": entry.stage,
        "subject": entry.subject,
        "job_id": entry.job_id,
        "error_kind": entry.error_kind,
        "replays": entry.replays,
    })
}

fn audited_skip(skipped: &Skipped) -> serde_json::Value {
    let mut value = audited(&skipped.entry);
    value["reason"] = skipped.reason.clone().into();
    value
}

/// JetStream's advisory that a message reached its consumer's `max_deliver` without being
/// acknowledged (`io.nats.jetstream.advisory.v1.max_deliver`), published on
/// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct MaxDeliveries {
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub deliveries: u64,
}

/// Why a message on an advisory subject is not a max-deliveries advisory.
#[derive(Debug, thiserror::Error)]
pub enum AdvisoryError {
    #[error("not an advisory: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected a `{}` advisory, got `{found}`", MaxDeliveries::TYPE)]
    OtherType { found: String },
}

impl MaxDeliveries {
    pub const TYPE: &str = "io.nats.jetstream.advisory.v1.max_deliver";

    pub fn parse(body: &[u8]) -> Result<Self, AdvisoryError> {
        #[derive(Deserialize)]
        struct Typed {
            #[serde(rename = "type")]
            kind: String,
            #[serde(flatten)]
            advisory: MaxDeliveries,
        }
        let typed: Typed = serde_json::from_slice(body)?;
        if typed.kind != Self::TYPE {
            return Err(AdvisoryError::OtherType { found: typed.kind });
        }
        Ok(typed.advisory)
    }
}

/// The dead-letter message filing `letter` under `<prefix>.dlq.<stage>`, with the stage, error
/// kind and route in headers for filtering without decoding, under a `Nats-Msg-Id` derived from
/// the original subject and sequence (so filing the same failure twice is de-duplicated).
pub fn dead_letter_message(
    subjects: &Subjects,
    letter: &DeadLetter,
) -> Result<Outgoing, CodecError> {
    let id = msg_id::dead_letter(&letter.subject, letter.stream_sequence);
    let mut message = Outgoing::envelope(subjects.dlq(letter.stage), &id, letter, None)?
        .header(headers::STAGE, letter.stage.as_str())
        .header(headers::ERROR_KIND, &letter.error_kind);
    if let Some(route) = &letter.route {
        message = message.header(headers::ROUTE, route);
    }
    Ok(message)
}

/// Every header as `(name, value)` pairs, as dead letters keep them.
pub fn header_pairs(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_owned()))
        })
        .collect()
}

/// The message that replays `letter` for the `n`th time: its original subject, except for a job
/// snapshot the persister could not store, which goes to the persister's own work subject (a
/// replay must not rewrite the jobs bucket, where the job may have moved on).
pub fn replay_message(subjects: &Subjects, letter: &DeadLetter, n: u32) -> Outgoing {
    let mut map = HeaderMap::new();
    let mut original_id = None;
    for (name, value) in &letter.headers {
        if name.eq_ignore_ascii_case(headers::MSG_ID) {
            original_id = Some(value.as_str());
        } else if !name.eq_ignore_ascii_case(headers::REPLAYS)
            && !name.to_ascii_lowercase().starts_with("nats-expected")
        {
            map.append(name.as_str(), value.as_str());
        }
    }
    let base = match original_id {
        Some(id) => strip_replay_suffix(id).to_owned(),
        None => format!("{}:{}", letter.subject, letter.stream_sequence),
    };
    map.insert(headers::MSG_ID, format!("{base}:replay:{n}"));
    map.insert(headers::REPLAYS, n.to_string());
    let subject = match letter.stage {
        Stage::Persister => subjects.persister_work(),
        _ => letter.subject.clone(),
    };
    Outgoing {
        subject,
        headers: map,
        payload: letter.payload.clone().into(),
    }
}

/// `id` without a `:replay:<n>` suffix an earlier replay gave it.
fn strip_replay_suffix(id: &str) -> &str {
    match id.rsplit_once(":replay:") {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => id,
    }
}

/// A name that is not a stage's.
#[derive(Debug, thiserror::Error)]
#[error("unknown stage `{name}`; stages are orchestrator, llm, evaluator, persister")]
pub struct UnknownStage {
    pub name: String,
}

/// A stage by its name in DLQ subjects (`llm`, `orchestrator`, …).
pub fn parse_stage(name: &str) -> Result<Stage, UnknownStage> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|_| UnknownStage {
        name: name.to_owned(),
    })
}

/// Text that is neither a time nor a duration ago.
#[derive(Debug, thiserror::Error)]
#[error("`{input}` is neither an RFC 3339 time nor a duration ago such as `2h`")]
pub struct BadTime {
    pub input: String,
}

/// An RFC 3339 time (`2025-06-01T12:00:00Z`), or a duration ago (`90s`, `2h`, `3days`).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, BadTime> {
    parse_time_at(text, Utc::now())
}

fn parse_time_at(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, BadTime> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    humantime::parse_duration(text)
        .ok()
        .and_then(|ago| chrono::Duration::from_std(ago).ok())
        .and_then(|ago| now.checked_sub_signed(ago))
        .ok_or_else(|| BadTime {
            input: text.to_owned(),
        })
}

/// The dead letters of one installation.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    bus: Bus,
}

impl DeadLetters {
    pub fn new(bus: Bus) -> Self {
        Self { bus }
    }

    async fn stream(&self) -> Result<Stream<()>, DlqError> {
        self.bus
            .js
            .get_stream_no_info(self.bus.subjects.stream("dlq"))
            .await
            .map_err(|e| DlqError::from_nats("open the DLQ stream", e))
    }

    /// The entry at `seq`, if there is one.
    pub async fn get(&self, seq: u64) -> Result<Option<Entry>, DlqError> {
        let stream = self.bus.subjects.stream("dlq");
        let Some(message) = fetch_message(&self.bus, &stream, seq).await? else {
            return Ok(None);
        };
        let kind = message.headers.get(headers::TYPE).map(|v| v.as_str());
        let letter =
            codec::decode(kind, &message.payload).map_err(|source| DlqError::NotADeadLetter {
                sequence: seq,
                source,
            })?;
        Ok(Some(Entry { seq, letter }))
    }

    /// Entries matching `filter`, oldest first, at most `limit`.
    pub async fn list(&self, filter: &Filter, limit: usize) -> Result<Listing, DlqError> {
        let (entries, more) = self.select(filter, limit).await?;
        Ok(Listing {
            entries: entries.iter().map(Entry::summary).collect(),
            more,
        })
    }

    /// Every entry matching `filter`, oldest first; entries that do not decode are skipped.
    async fn select(&self, filter: &Filter, limit: usize) -> Result<(Vec<Entry>, bool), DlqError> {
        let mut entries = Vec::new();
        if !filter.sequences.is_empty() {
            let mut sequences = filter.sequences.clone();
            sequences.sort_unstable();
            sequences.dedup();
            for seq in sequences {
                if let Some(entry) = self.get(seq).await?
                    && filter.matches(&entry.letter)
                {
                    if entries.len() == limit {
                        return Ok((entries, true));
                    }
                    entries.push(entry);
                }
            }
            return Ok((entries, false));
        }
        let stream = self.stream().await?;
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: filter
                    .stage
                    .map(|s| self.bus.subjects.dlq(s))
                    .unwrap_or_default(),
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| DlqError::from_nats("read the DLQ stream", e))?;
        let name = consumer.cached_info().name.clone();
        let mut pending = consumer.cached_info().num_pending;
        let mut more = false;
        'fetch: while pending > 0 {
            let mut batch = consumer
                .fetch()
                .max_messages(FETCH)
                .messages()
                .await
                .map_err(|e| DlqError::from_nats("read the DLQ stream", e))?;
            let mut fetched = 0;
            while let Some(message) = batch.next().await {
                let message = message
                    .map_err(|e| DlqError::Bus(BusError::boxed("read the DLQ stream", e)))?;
                fetched += 1;
                let info = message
                    .info()
                    .map_err(|e| DlqError::Bus(BusError::boxed("read the DLQ stream", e)))?;
                let seq = info.stream_sequence;
                pending = info.pending;
                let kind = message.headers.as_ref().and_then(|h| h.get(headers::TYPE));
                match codec::decode::<DeadLetter>(kind.map(|v| v.as_str()), &message.payload) {
                    Ok(letter) if filter.matches(&letter) => {
                        if entries.len() == limit {
                            more = true;
                            break 'fetch;
                        }
                        entries.push(Entry { seq, letter });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(seq, error = %e, "skipping a DLQ message that is not a dead letter")
                    }
                }
            }
            if fetched == 0 {
                break;
            }
        }
        // It would expire by itself; deleting it is only tidier.
        let _ = stream.delete_consumer(&name).await;
        Ok((entries, more))
    }

    /// Deletes the entries matching `filter` (with `dry_run`, only reports them).
    pub async fn purge(&self, filter: &Filter, dry_run: bool) -> Result<PurgeReport, DlqError> {
        let (entries, _) = self.select(filter, usize::MAX).await?;
        let mut report = PurgeReport {
            dry_run,
            matched: entries.len(),
            ..PurgeReport::default()
        };
        let stream = self.stream().await?;
        for entry in entries {
            if dry_run {
                report.purged.push(entry.summary());
                continue;
            }
            match delete(&stream, entry.seq).await {
                Ok(()) => report.purged.push(entry.summary()),
                Err(e) => report.failed.push(Skipped {
                    entry: entry.summary(),
                    reason: e.to_string(),
                }),
            }
        }
        Ok(report)
    }

    /// Replays the entries matching `filter`, paced at `options.rate`, until done or until
    /// `stop` resolves (the message in flight is finished; the rest are reported not attempted).
    pub async fn replay(
        &self,
        filter: &Filter,
        options: ReplayOptions,
        stop: impl Future<Output = ()>,
    ) -> Result<ReplayReport, DlqError> {
        if !(options.rate.is_finite() && options.rate > 0.0) {
            return Err(DlqError::BadRate { rate: options.rate });
        }
        let (entries, _) = self.select(filter, usize::MAX).await?;
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
                entry: e.summary(),
                reason: format!(
                    "at the replay cap: replayed {}x already, the cap is {}",
                    e.letter.replays, options.max_replays
                ),
            })
            .collect();
        if options.dry_run {
            report.replayed = eligible.iter().map(Entry::summary).collect();
            return Ok(report);
        }
        let stream = self.stream().await?;
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
            match self.replay_one(&stream, &entry).await {
                Ok(()) => report.replayed.push(entry.summary()),
                Err(failure) => {
                    report.failed.push(Skipped {
                        entry: entry.summary(),
                        reason: failure.to_string(),
                    });
                    report.not_attempted = eligible.len();
                    break;
                }
            }
        }
        Ok(report)
    }

    async fn replay_one(&self, stream: &Stream<()>, entry: &Entry) -> Result<(), ReplayFailure> {
        let message = replay_message(&self.bus.subjects, &entry.letter, entry.letter.replays + 1);
        self.bus
            .publish_all(vec![message])
            .await
            .map_err(ReplayFailure::Republish)?;
        tracing::info!(seq = entry.seq, subject = %entry.letter.subject, replays = entry.letter.replays + 1, "replayed a dead letter");
        delete(stream, entry.seq)
            .await
            .map_err(ReplayFailure::Delete)
    }
}

/// Why one entry's replay failed.
#[derive(Debug, thiserror::Error)]
enum ReplayFailure {
    #[error("cannot republish: {0}")]
    Republish(#[source] BusError),
    #[error("republished, but the entry could not be deleted: {0}")]
    Delete(#[source] DlqError),
}

/// The message at `seq` of the stream named `stream`, if it is still there.
pub async fn fetch_message(
    bus: &Bus,
    stream: &str,
    seq: u64,
) -> Result<Option<StreamMessage>, DlqError> {
    let stream = bus
        .js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| DlqError::from_nats("open a stream", e))?;
    match stream.get_raw_message(seq).await {
        Ok(message) => Ok(Some(message)),
        Err(e) => match e.kind() {
            LastRawMessageErrorKind::NoMessageFound => Ok(None),
            LastRawMessageErrorKind::JetStream(j)
                if j.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
            {
                Ok(None)
            }
            // NATS refuses the request itself (sequence 0): no waiting makes it work.
            LastRawMessageErrorKind::JetStream(source)
                if source.error_code() == ErrorCode::BAD_REQUEST =>
            {
                Err(DlqError::BadSequence { seq, source })
            }
            _ => Err(DlqError::from_nats("read a message", e)),
        },
    }
}

/// Deletes the message at `seq` of the stream named `stream`; one already gone is fine.
pub async fn delete_message(bus: &Bus, stream: &str, seq: u64) -> Result<(), DlqError> {
    let stream = bus
        .js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| DlqError::from_nats("open a stream", e))?;
    delete(&stream, seq).await
}

async fn delete(stream: &Stream<()>, seq: u64) -> Result<(), DlqError> {
    match stream.delete_message(seq).await {
        Ok(_) => Ok(()),
        // 10057 wraps the store's error: "no message found", or "stream store EOF" past the end.
        Err(e)
            if matches!(e.kind(), DeleteMessageErrorKind::JetStream(j)
            if j.error_code() == ErrorCode::SEQUENCE_NOT_FOUND
                || (j.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                    && ["no message found", "stream store EOF"]
                        .iter()
                        .any(|gone| j.to_string().contains(gone)))) =>
        {
            Ok(())
        }
        Err(e) => Err(DlqError::from_nats("delete a message", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter() -> DeadLetter {
        DeadLetter {
            stage: Stage::Llm,
            subject: "chorus.work.llm.fast".into(),
            headers: vec![
                ("Nats-Msg-Id".into(), "j:call:0".into()),
                ("Chorus-Type".into(), "llm.call/1".into()),
                ("Chorus-Replays".into(), "1".into()),
                ("Nats-Expected-Stream".into(), "X".into()),
            ],
            payload: vec![1, 2, 3],
            error_kind: "server_error".into(),
            error: "503".into(),
            route: Some("fast".into()),
            job_id: None,
            tenant: None,
            deliveries: 5,
            attempts: 15,
            replays: 1,
            stream_sequence: 42,
            published_at: 1_000,
            failed_at: 2_000,
        }
    }

    #[test]
    fn a_replay_gets_a_fresh_id_and_a_raised_counter() {
        let subjects = Subjects::new("chorus");
        let message = replay_message(&subjects, &letter(), 2);
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header("Nats-Msg-Id").as_deref(), Some("j:call:0:replay:2"));
        assert_eq!(header("Chorus-Replays").as_deref(), Some("2"));
        assert_eq!(header("Chorus-Type").as_deref(), Some("llm.call/1"));
        assert_eq!(header("Nats-Expected-Stream"), None);
        assert_eq!(message.subject, "chorus.work.llm.fast");
        assert_eq!(&message.payload[..], &[1, 2, 3]);

        let mut again = letter();
        again.headers[0].1 = "j:call:0:replay:2".into();
        let message = replay_message(&subjects, &again, 3);
        assert_eq!(
            message.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some("j:call:0:replay:3")
        );
        let mut anonymous = letter();
        anonymous.headers.remove(0);
        let message = replay_message(&subjects, &anonymous, 1);
        assert_eq!(
            message.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some("chorus.work.llm.fast:42:replay:1")
        );

        // A job snapshot goes to the persister, never back into the jobs bucket.
        let mut snapshot = letter();
        snapshot.stage = Stage::Persister;
        snapshot.subject = "$KV.chorus_jobs.acme.j".into();
        snapshot.headers = vec![("Nats-Expected-Last-Subject-Sequence".into(), "7".into())];
        let message = replay_message(&subjects, &snapshot, 1);
        assert_eq!(message.subject, "chorus.work.persister");
        assert_eq!(
            message.headers.get("Nats-Expected-Last-Subject-Sequence"),
            None
        );
    }

    #[test]
    fn filters_match_every_given_criterion() {
        let l = letter();
        let at = |millis| DateTime::from_timestamp_millis(millis);
        assert!(Filter::default().matches(&l));
        assert!(Filter::default().is_everything());
        let f = Filter {
            stage: Some(Stage::Llm),
            route: Some("fast".into()),
            kind: Some("server_error".into()),
            since: at(2_000),
            until: at(2_000),
            ..Filter::default()
        };
        assert!(f.matches(&l));
        for other in [
            Filter {
                stage: Some(Stage::Evaluator),
                ..f.clone()
            },
            Filter {
                route: Some("slow".into()),
                ..f.clone()
            },
            Filter {
                kind: Some("timeout".into()),
                ..f.clone()
            },
            Filter {
                since: at(2_001),
                ..f.clone()
            },
            Filter {
                until: at(1_999),
                ..f.clone()
            },
        ] {
            assert!(!other.matches(&l), "{other:?}");
        }
    }

    #[test]
    fn parses_stages_and_times() {
        assert_eq!(parse_stage("llm").ok(), Some(Stage::Llm));
        assert!(parse_stage("nope").is_err_and(|e| e.to_string().contains("orchestrator")));
        let now = DateTime::parse_from_rfc3339("2025-06-01T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        assert_eq!(
            parse_time_at("2h", now).ok().map(|t| t.to_rfc3339()),
            Some("2025-06-01T10:00:00+00:00".into())
        );
        assert_eq!(
            parse_time_at("2025-05-31T00:00:00+02:00", now)
                .ok()
                .map(|t| t.to_rfc3339()),
            Some("2025-05-30T22:00:00+00:00".into())
        );
        assert!(parse_time_at("yesterday-ish", now).is_err());
    }

    #[test]
    fn reads_the_max_deliveries_advisory() {
        let body = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2025-06-01T12:00:00Z","stream":"CHORUS_WORK","consumer":"llm","stream_seq":12,"deliveries":5}"#;
        assert_eq!(
            MaxDeliveries::parse(body).ok(),
            Some(MaxDeliveries {
                stream: "CHORUS_WORK".into(),
                consumer: "llm".into(),
                stream_seq: 12,
                deliveries: 5,
            })
        );
        let nak = br#"{"type":"io.nats.jetstream.advisory.v1.nak","stream":"S","consumer":"c","stream_seq":1,"deliveries":1}"#;
        assert!(MaxDeliveries::parse(nak).is_err());
        assert!(MaxDeliveries::parse(b"garbage").is_err());
    }

    #[test]
    fn bodies_show_as_text_or_base64() {
        let mut entry = Entry {
            seq: 7,
            letter: letter(),
        };
        entry.letter.payload = b"{\"a\":1}".to_vec();
        assert_eq!(entry.detail().body.encoding, "utf-8");
        assert_eq!(entry.detail().body.data, "{\"a\":1}");
        entry.letter.payload = vec![0xc1, 0xff];
        let body = entry.detail().body;
        assert_eq!(
            (body.encoding.as_str(), body.data.as_str()),
            ("base64", "wf8=")
        );
        assert_eq!(entry.summary().failed_at.timestamp_millis(), 2_000);
    }
}
