//! A dead letter as operators see it: a [`Summary`] in listings and reports, a [`Detail`] with
//! the original headers and body. These are the shapes `chorus dlq --json` prints and
//! `/v1/admin/dlq` answers; their OpenAPI schemas are the edge's document.

use base64::Engine as _;
use chorus_bus::dlq::Entry;
use chorus_core::ids::UnixMillis;
use chorus_core::subjects::Stage;
use chorus_core::{JobId, Tenant};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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

/// A listing; `more` when `limit` cut it short.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub entries: Vec<Summary>,
    pub more: bool,
}

impl From<&Entry> for Summary {
    fn from(entry: &Entry) -> Self {
        let l = &entry.letter;
        Summary {
            seq: entry.seq,
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
}

impl From<&Entry> for Detail {
    fn from(entry: &Entry) -> Self {
        let payload = &entry.letter.payload;
        let (encoding, data) = match std::str::from_utf8(payload) {
            Ok(text) => ("utf-8", text.to_owned()),
            Err(_) => (
                "base64",
                base64::engine::general_purpose::STANDARD.encode(payload),
            ),
        };
        Detail {
            summary: entry.into(),
            headers: entry
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

#[cfg(test)]
mod tests {
    use chorus_core::messages::DeadLetter;

    use super::*;

    #[test]
    fn bodies_show_as_text_or_base64() {
        let mut entry = Entry {
            seq: 7,
            letter: DeadLetter {
                stage: Stage::Evaluator,
                subject: "chorus.work.evaluator".into(),
                headers: vec![("Chorus-Type".into(), "eval.request/1".into())],
                payload: b"{\"a\":1}".to_vec(),
                error_kind: "undecodable".into(),
                error: "bad".into(),
                route: None,
                job_id: None,
                tenant: None,
                deliveries: 1,
                attempts: 1,
                replays: 0,
                stream_sequence: 9,
                published_at: 1_000,
                failed_at: 2_000,
            },
        };
        let detail = Detail::from(&entry);
        assert_eq!(
            (detail.body.encoding.as_str(), detail.body.data.as_str()),
            ("utf-8", "{\"a\":1}")
        );
        assert_eq!(detail.headers[0].value, "eval.request/1");
        entry.letter.payload = vec![0xc1, 0xff];
        let body = Detail::from(&entry).body;
        assert_eq!(
            (body.encoding.as_str(), body.data.as_str()),
            ("base64", "wf8=")
        );
        assert_eq!(Summary::from(&entry).failed_at.timestamp_millis(), 2_000);
    }
}
