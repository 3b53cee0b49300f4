//! Filing a dead letter and its replay as messages, and reading JetStream's advisory that a
//! message used up its deliveries (what makes the DLQ watcher file one).
//!
//! A dead letter goes to `<prefix>.dlq.<stage>` under a `Nats-Msg-Id` derived from the original
//! subject and sequence, so filing the same failure twice is de-duplicated. A replay republishes
//! the original subject, headers and body with `Chorus-Replays` raised by one and a fresh
//! `Nats-Msg-Id` (`<original id>:replay:<n>`).

use async_nats::HeaderMap;
use chorus_core::codec::{CodecError, headers};
use chorus_core::ids::msg_id;
use chorus_core::messages::DeadLetter;
use chorus_core::subjects::{Stage, Subjects};
use serde::Deserialize;

use crate::publish::Outgoing;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::tests::letter;

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
}
