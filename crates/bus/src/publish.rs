//! Building outgoing messages and publishing them to JetStream, pipelined.
//!
//! Every message carries a `Nats-Msg-Id` derived from ids (so a repeated publish is dropped by the
//! stream's duplicate window), its `Chorus-Type`, and a `traceparent`. [`Bus::publish_all`] sends a
//! whole set before waiting for any ack: one round trip for the lot, not one per message.

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use chorus_core::codec::{self, CodecError, headers};
use chorus_core::messages::Envelope;
use chorus_core::trace::TraceContext;
use chorus_core::{JobId, Tenant};
use futures::future::try_join_all;

use crate::{Bus, BusError};

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

    /// Publishes every message, then waits for all their acks.
    pub async fn publish_all(&self, messages: Vec<Outgoing>) -> Result<(), BusError> {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let subject = message.subject.clone();
            pending.push((subject, self.publish(message).await?));
        }
        try_join_all(pending.into_iter().map(|(subject, ack)| async move {
            ack.await
                .map_err(|e| BusError::request(format!("publish to {subject}"), e))
        }))
        .await
        .map(|_| ())
    }
}
