//! A pulled JetStream message that must be settled exactly once.
//!
//! Settling consumes the [`Delivery`] (ack, NAK with a delay, term). One dropped unsettled —
//! because the actor holding it panicked, or shutdown came first — is NAKed at once, so the
//! message is redelivered now instead of after the consumer's AckWait. A delivery also holds its
//! share of the role's in-flight budget and gives it back when settled or dropped.
//!
//! A delivery handed to a role's workers is counted ([`Delivery::counted`]): the stage's
//! in-flight gauge while it lives, and when it is settled its outcome and how long it took.

use std::time::{Duration, Instant};

use chorus_telemetry::names;

use async_nats::jetstream::message::{AckKind, Acker};
use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use chorus_core::ids::UnixMillis;
use tokio::sync::OwnedSemaphorePermit;

use crate::BusError;

pub struct Delivery {
    message: Message,
    acker: Option<Acker>,
    info: Info,
    _permit: Option<OwnedSemaphorePermit>,
    ticket: Option<Ticket>,
    tally: Option<Tally>,
}

/// A counted delivery's stage and when it reached it.
struct Tally {
    stage: &'static str,
    since: Instant,
}

impl Tally {
    fn new(stage: &'static str) -> Self {
        metrics::gauge!(names::STAGE_IN_FLIGHT, "stage" => stage).increment(1.0);
        Self {
            stage,
            since: Instant::now(),
        }
    }

    fn settled(self, outcome: &'static str) {
        let stage = self.stage;
        metrics::gauge!(names::STAGE_IN_FLIGHT, "stage" => stage).decrement(1.0);
        metrics::counter!(names::STAGE_MESSAGES, "stage" => stage, "outcome" => outcome)
            .increment(1);
        metrics::histogram!(names::STAGE_MESSAGE_SECONDS, "stage" => stage)
            .record(self.since.elapsed());
    }
}

/// What a [`crate::source::Gate`] granted a delivery (say, a concurrency lease): held as long as
/// the delivery lives, released when it is settled or dropped.
pub struct Ticket(pub Box<dyn Send + Sync>);

/// Where the message sits in its stream and how often it was delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Info {
    pub stream_sequence: u64,
    /// 1 on first delivery.
    pub delivered: u64,
    pub published: UnixMillis,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.message.subject)
            .field("info", &self.info)
            .finish()
    }
}

impl Delivery {
    pub fn new(
        message: async_nats::jetstream::Message,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        let info = message
            .info()
            .map(|i| Info {
                stream_sequence: i.stream_sequence,
                delivered: u64::try_from(i.delivered).unwrap_or(1),
                published: (i.published.unix_timestamp_nanos() / 1_000_000) as UnixMillis,
            })
            .unwrap_or_default();
        let (message, acker) = message.split();
        Self {
            message,
            acker: Some(acker),
            info,
            _permit: permit,
            ticket: None,
            tally: None,
        }
    }

    /// The delivery counted in `stage`'s metrics from now until it is settled.
    pub fn counted(mut self, stage: &'static str) -> Self {
        self.tally = Some(Tally::new(stage));
        self
    }

    /// The delivery holding its share of the role's in-flight budget until it is settled.
    pub fn with_permit(mut self, permit: Option<OwnedSemaphorePermit>) -> Self {
        self._permit = permit;
        self
    }

    /// The delivery holding `ticket` until it is settled.
    pub fn with_ticket(mut self, ticket: Ticket) -> Self {
        self.ticket = Some(ticket);
        self
    }

    /// Whether a gate admitted this delivery (its first call needs no further admission).
    pub fn admitted(&self) -> bool {
        self.ticket.is_some()
    }

    pub fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    pub fn headers(&self) -> Option<&HeaderMap> {
        self.message.headers.as_ref()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()?.get(name).map(|v| v.as_str())
    }

    pub fn info(&self) -> Info {
        self.info
    }

    /// Every header as `(name, value)` pairs, for dead letters.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        self.headers()
            .map(crate::dlq::header_pairs)
            .unwrap_or_default()
    }

    pub async fn ack(self) -> Result<(), BusError> {
        self.settle(AckKind::Ack).await
    }

    /// Asks for redelivery after `delay` (at once with `None`).
    pub async fn nak(self, delay: Option<Duration>) -> Result<(), BusError> {
        self.settle(AckKind::Nak(delay)).await
    }

    /// Stops redelivery without success (the message was dead-lettered or is poison).
    pub async fn term(self) -> Result<(), BusError> {
        self.settle(AckKind::Term).await
    }

    /// Resets the AckWait timer while work on the message goes on.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        match &self.acker {
            Some(acker) => acker
                .ack_with(AckKind::Progress)
                .await
                .map_err(BusError::nats),
            None => Ok(()),
        }
    }

    async fn settle(mut self, kind: AckKind) -> Result<(), BusError> {
        if let Some(tally) = self.tally.take() {
            tally.settled(match kind {
                AckKind::Ack => "ack",
                AckKind::Nak(_) => "nak",
                AckKind::Term => "term",
                AckKind::Progress | AckKind::Next => "progress",
            });
        }
        match self.acker.take() {
            Some(acker) => acker.ack_with(kind).await.map_err(BusError::nats),
            None => Ok(()),
        }
    }
}

/// NAKs `deliveries` for redelivery at once, waiting for each NAK to be sent: what a draining
/// role holds but will not work on goes back to the consumer for another pod.
pub async fn release(deliveries: impl IntoIterator<Item = Delivery>) {
    let naks = deliveries.into_iter().map(|delivery| delivery.nak(None));
    for result in futures::future::join_all(naks).await {
        if let Err(e) = result {
            tracing::warn!(error = %e, "NAK of a held message failed; it returns after AckWait");
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(tally) = self.tally.take() {
            tally.settled("dropped");
        }
        if let Some(acker) = self.acker.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            tracing::debug!(subject = %self.message.subject, "unsettled delivery dropped; NAK for redelivery");
            runtime.spawn(async move {
                let _ = acker.ack_with(AckKind::Nak(None)).await;
            });
        }
    }
}
