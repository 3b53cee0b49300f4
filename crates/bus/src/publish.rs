//! Building outgoing messages and publishing them to JetStream, pipelined.
//!
//! Every message carries a `Nats-Msg-Id` derived from ids (so a repeated publish is dropped by the
//! stream's duplicate window), its `Chorus-Type`, and a `traceparent`. [`Bus::publish_all`] sends a
//! whole set before waiting for any ack: one round trip for the lot, not one per message.
//!
//! [`Bus::publish_all_retrying`] is for a publish a client is waiting on (the edge's `202`): what
//! the cluster cannot take now — a stream between leaders, a connection moving to another
//! server, a lost quorum — is sent again, under the same `Nats-Msg-Id`, until it is acknowledged
//! or `nats.retry_window` has passed. The roles do not use it: their failure policy retries in
//! place and keeps the message they work on alive meanwhile.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use chorus_core::codec::{self, CodecError, headers};
use chorus_core::messages::Envelope;
use chorus_core::trace::TraceContext;
use chorus_core::{JobId, Tenant};
use chorus_telemetry::names;
use futures::future::{join_all, try_join_all};
use tokio::time::Instant;

use crate::{Bus, BusError, BusErrorKind};

/// A message ready to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// The bytes `headers` take in a message: what a stream's byte limits count of them.
pub fn header_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|v| AsRef::<str>::as_ref(name).len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum::<usize>() as u64
}

impl Outgoing {
    /// Its size as a stream counts it: headers and payload.
    pub fn size(&self) -> u64 {
        header_bytes(&self.headers) + self.payload.len() as u64
    }

    /// An envelope under `msg_id`, carrying `trace` as its `traceparent` (see
    /// `chorus_telemetry::trace::outgoing` for the context a hop passes on).
    pub fn envelope<T: Envelope>(
        subject: String,
        msg_id: &str,
        value: &T,
        trace: Option<&TraceContext>,
    ) -> Result<Self, CodecError> {
        let mut headers = HeaderMap::new();
        headers.insert(headers::MSG_ID, msg_id);
        headers.insert(headers::TYPE, codec::type_header::<T>().as_str());
        headers.insert(headers::CONTENT_TYPE, codec::MSGPACK);
        if let Some(trace) = trace {
            headers.insert(headers::TRACEPARENT, trace.to_string().as_str());
        }
        Ok(Self {
            subject,
            headers,
            payload: codec::encode(value)?,
        })
    }

    /// A JSON body (for consumers outside Chorus, such as results) under `msg_id`.
    pub fn json(subject: String, msg_id: &str, body: impl Into<Bytes>) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(headers::MSG_ID, msg_id);
        headers.insert(headers::CONTENT_TYPE, codec::JSON);
        Self {
            subject,
            headers,
            payload: body.into(),
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Tags the message with its job and tenant (for routing, dead letters and tools).
    pub fn for_job(self, job: JobId, tenant: &Tenant) -> Self {
        self.header(headers::JOB, &job.to_string())
            .header(headers::TENANT, tenant.as_str())
    }
}

impl Bus {
    /// Publishes one message and returns the pending ack.
    pub async fn publish(&self, message: Outgoing) -> Result<PublishAckFuture, BusError> {
        let subject = message.subject;
        self.js
            .publish_with_headers(subject.clone(), message.headers, message.payload)
            .await
            .map_err(|e| BusError::request(format!("publish to {subject}"), e))
    }

    /// Publishes one message and waits for its ack.
    async fn publish_acked(&self, message: Outgoing) -> Result<(), BusError> {
        let subject = message.subject.clone();
        self.publish(message)
            .await?
            .await
            .map(drop)
            .map_err(|e| BusError::request(format!("publish to {subject}"), e))
    }

    /// Publishes every message, then waits for all their acks.
    pub async fn publish_all(&self, messages: Vec<Outgoing>) -> Result<(), BusError> {
        try_join_all(messages.into_iter().map(|m| self.publish_acked(m)))
            .await
            .map(drop)
    }

    /// Publishes every message as [`Bus::publish_all`] does, retrying those the cluster cannot
    /// take now (an [`BusErrorKind::Unavailable`] failure) after a growing pause, for up to
    /// `nats.retry_window` (see the module docs). Any other failure, or one still there when the
    /// window closes, is returned.
    pub async fn publish_all_retrying(&self, messages: Vec<Outgoing>) -> Result<(), BusError> {
        let deadline = Instant::now() + self.retry_window;
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times()
            .build();
        let mut pending = messages;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let sent = join_all(pending.iter().map(|m| self.publish_acked(m.clone())));
            // A retry ends with the window (the first attempt has its ack timeout).
            let results = match attempt {
                1 => sent.await,
                _ => match tokio::time::timeout_at(deadline, sent).await {
                    Ok(results) => results,
                    Err(_) => {
                        metrics::counter!(names::PUBLISH_RETRIES, "outcome" => "gave_up")
                            .increment(1);
                        return Err(BusError::new(
                            format!("publish {} messages", pending.len()),
                            BusErrorKind::Unavailable,
                            "no acknowledgement within nats.retry_window",
                        ));
                    }
                },
            };
            let mut failure = None;
            pending = pending
                .into_iter()
                .zip(results)
                .filter_map(|(message, result)| {
                    let error = result.err()?;
                    if failure.as_ref().is_none_or(|f: &BusError| {
                        f.kind() == BusErrorKind::Unavailable
                            && error.kind() != BusErrorKind::Unavailable
                    }) {
                        failure = Some(error);
                    }
                    Some(message)
                })
                .collect();
            let Some(error) = failure else {
                return Ok(());
            };
            let pause = pauses.next().unwrap_or(Duration::from_secs(2));
            if error.kind() != BusErrorKind::Unavailable || Instant::now() + pause > deadline {
                if error.kind() == BusErrorKind::Unavailable {
                    metrics::counter!(names::PUBLISH_RETRIES, "outcome" => "gave_up").increment(1);
                }
                return Err(error);
            }
            metrics::counter!(names::PUBLISH_RETRIES, "outcome" => "retried").increment(1);
            tracing::warn!(%error, attempt, unacknowledged = pending.len(), ?pause,
                "JetStream cannot take the messages now (a leader election?); publishing them again");
            tokio::time::sleep(pause).await;
        }
    }
}
