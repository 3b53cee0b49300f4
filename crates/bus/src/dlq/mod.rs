//! Dead letters on NATS: reading, replaying and deleting the entries of the DLQ stream
//! (`<PREFIX>_DLQ`, subjects `<prefix>.dlq.<stage>`); [`filing`] makes the messages.
//!
//! An entry is named by its sequence in the DLQ stream. Selections read the stream through a
//! short-lived ephemeral consumer without acks (filtered to one stage's subject when asked), so
//! they never disturb it. These are the broker's single operations; what an operator does with
//! them (replays paced and capped, purges, the audit log) is `chorus-dlq`'s.

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DeleteMessageErrorKind, LastRawMessageErrorKind, Stream};
use chorus_core::codec::{self, CodecError, headers};
use chorus_core::messages::DeadLetter;
use chorus_core::subjects::Stage;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::error::Classify;
use crate::{Bus, BusError, BusErrorKind};

pub mod filing;

use filing::replay_message;

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
            Self::BadSequence { .. } => DlqErrorKind::Invalid,
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

    /// The entries matching `filter`, oldest first, at most `limit`, and whether `limit` cut the
    /// selection short; entries that do not decode are skipped.
    pub async fn select(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool), DlqError> {
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

    /// Deletes the entry at `seq`; one already gone is fine.
    pub async fn delete(&self, seq: u64) -> Result<(), DlqError> {
        delete(&self.stream().await?, seq).await
    }

    /// Republishes `entry`'s message as its next replay ([`replay_message`]), then deletes the
    /// entry.
    pub async fn replay(&self, entry: &Entry) -> Result<(), ReplayFailure> {
        let message = replay_message(&self.bus.subjects, &entry.letter, entry.letter.replays + 1);
        self.bus
            .publish_all(vec![message])
            .await
            .map_err(ReplayFailure::Republish)?;
        tracing::info!(seq = entry.seq, subject = %entry.letter.subject, replays = entry.letter.replays + 1, "replayed a dead letter");
        self.delete(entry.seq).await.map_err(ReplayFailure::Delete)
    }
}

/// Why one entry's replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayFailure {
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

    pub(super) fn letter() -> DeadLetter {
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
}
