//! A pulled JetStream message that must be settled exactly once, and kept alive while it is held.
//!
//! Settling consumes the [`Delivery`] (ack, NAK with a delay, term). One dropped unsettled —
//! because the actor holding it panicked, or shutdown came first — is NAKed at once, so the
//! message is redelivered now instead of after the consumer's AckWait. A delivery also holds its
//! share of the role's in-flight budget and gives it back when settled or dropped.
//!
//! Every delivery of a consumer is registered in that consumer's [`Holding`], which refreshes its
//! AckWait with in-progress acks for as long as the process means to keep it, so waiting never
//! uses up a delivery: a message waiting in the pull window is refreshed always; one handed to the
//! role's workers while the role is making progress (something was settled or worked on within an
//! AckWait); one a worker is working on while the worker says so ([`Delivery::touch`]: a retry
//! loop touches it at every attempt, a long call while it runs). A worker that hangs stops
//! touching, its message expires, and JetStream redelivers it — and past the consumer's
//! `max_deliver` the DLQ watcher files it.
//!
//! A delivery handed to a role's workers is counted ([`Delivery::counted`]): the stage's
//! in-flight gauge while it lives, and when it is settled its outcome and how long it took.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chorus_telemetry::names;

use async_nats::jetstream::message::{AckKind, Acker};
use async_nats::{Client, HeaderMap, Message, Subject};
use bytes::Bytes;
use chorus_core::ids::UnixMillis;
use tokio::sync::OwnedSemaphorePermit;

use crate::{BusError, BusErrorKind};

pub struct Delivery {
    message: Message,
    acker: Option<Acker>,
    info: Info,
    _permit: Option<OwnedSemaphorePermit>,
    ticket: Option<Ticket>,
    tally: Option<Tally>,
    held: Option<Held>,
}

/// The unsettled deliveries of one consumer, kept alive while held (see the module docs). Cheap
/// to clone; its refresh task ends when the last clone and the last delivery are gone.
#[derive(Clone)]
pub struct Holding {
    inner: Arc<HoldingInner>,
}

struct HoldingInner {
    client: Client,
    /// How often a held message is refreshed: a third of the consumer's AckWait.
    interval: Duration,
    /// How long without a sign of progress before a message is left to expire: the AckWait.
    ack_wait: Duration,
    epoch: Instant,
    /// The last time a delivery of this consumer was settled or touched, in ms since `epoch`.
    pulse: AtomicU64,
    next: AtomicU64,
    held: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// Where a held delivery is.
const FETCHED: u8 = 0;
const QUEUED: u8 = 1;
const WORKING: u8 = 2;

struct Entry {
    reply: Subject,
    phase: AtomicU8,
    /// When a worker last touched it, in ms since the holding's epoch.
    touched: AtomicU64,
    /// When it was last refreshed (or received).
    refreshed: AtomicU64,
}

/// A delivery's registration in its [`Holding`].
struct Held {
    holding: Holding,
    id: u64,
    entry: Arc<Entry>,
}

impl Holding {
    /// A holding for a consumer whose AckWait is `ack_wait`, refreshing through `client`.
    pub fn new(client: Client, ack_wait: Duration) -> Self {
        let ack_wait = if ack_wait.is_zero() {
            Duration::from_secs(30)
        } else {
            ack_wait
        };
        let inner = Arc::new(HoldingInner {
            client,
            interval: ack_wait / 3,
            ack_wait,
            epoch: Instant::now(),
            pulse: AtomicU64::new(0),
            next: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
        });
        tokio::spawn(refresh(Arc::downgrade(&inner)));
        Self { inner }
    }

    fn hold(&self, reply: Subject) -> Held {
        let now = self.inner.now();
        let entry = Arc::new(Entry {
            reply,
            phase: AtomicU8::new(FETCHED),
            touched: AtomicU64::new(now),
            refreshed: AtomicU64::new(now),
        });
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner.held().insert(id, entry.clone());
        Held {
            holding: self.clone(),
            id,
            entry,
        }
    }
}

impl HoldingInner {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn beat(&self) {
        self.pulse.store(self.now(), Ordering::Relaxed);
    }
}

impl Held {
    fn release(self) {
        self.holding.inner.held().remove(&self.id);
        self.holding.inner.beat();
    }
}

/// Refreshes the held messages that are due, every interval, until the holding is gone.
async fn refresh(holding: Weak<HoldingInner>) {
    let interval = match holding.upgrade() {
        Some(inner) => inner.interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = holding.upgrade() else {
            return;
        };
        let now = inner.now();
        let interval = u64::try_from(inner.interval.as_millis()).unwrap_or(u64::MAX);
        let ack_wait = u64::try_from(inner.ack_wait.as_millis()).unwrap_or(u64::MAX);
        let recent = |at: u64| now.saturating_sub(at) < ack_wait;
        let progressing = recent(inner.pulse.load(Ordering::Relaxed));
        let due: Vec<Subject> = inner
            .held()
            .values()
            .filter(|e| now.saturating_sub(e.refreshed.load(Ordering::Relaxed)) + 50 >= interval)
            .filter(|e| match e.phase.load(Ordering::Relaxed) {
                FETCHED => true,
                QUEUED => progressing,
                _ => recent(e.touched.load(Ordering::Relaxed)),
            })
            .map(|e| {
                e.refreshed.store(now, Ordering::Relaxed);
                e.reply.clone()
            })
            .collect();
        for reply in due {
            let progress: Bytes = AckKind::Progress.into();
            if let Err(e) = inner.client.publish(reply, progress).await {
                tracing::debug!(error = %e, "in-progress ack not sent");
            }
        }
    }
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
    /// A message pulled from a consumer, held (kept alive) in `holding` until it is settled.
    pub fn new(message: async_nats::jetstream::Message, holding: &Holding) -> Self {
        let info = message
            .info()
            .map(|i| Info {
                stream_sequence: i.stream_sequence,
                delivered: u64::try_from(i.delivered).unwrap_or(1),
                published: (i.published.unix_timestamp_nanos() / 1_000_000) as UnixMillis,
            })
            .unwrap_or_default();
        let held = message
            .message
            .reply
            .clone()
            .map(|reply| holding.hold(reply));
        let (message, acker) = message.split();
        Self {
            message,
            acker: Some(acker),
            info,
            _permit: None,
            ticket: None,
            tally: None,
            held,
        }
    }

    /// The delivery is handed to the role's workers: from now on it is kept alive while the role
    /// makes progress.
    pub fn queued(&self) {
        if let Some(held) = &self.held {
            held.entry.phase.store(QUEUED, Ordering::Relaxed);
        }
    }

    /// A worker is working on the delivery (and still is, each time it calls this again): it is
    /// kept alive for an AckWait after the last touch.
    pub fn touch(&self) {
        if let Some(held) = &self.held {
            let now = held.holding.inner.now();
            held.entry.touched.store(now, Ordering::Relaxed);
            held.entry.phase.store(WORKING, Ordering::Relaxed);
            held.holding.inner.pulse.store(now, Ordering::Relaxed);
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

    /// Its size as a stream counts it: headers and payload.
    pub fn size(&self) -> u64 {
        self.headers().map_or(0, crate::publish::header_bytes) + self.payload().len() as u64
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
            .map(crate::dlq::filing::header_pairs)
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

    async fn settle(mut self, kind: AckKind) -> Result<(), BusError> {
        if let Some(held) = self.held.take() {
            held.release();
        }
        if let Some(tally) = self.tally.take() {
            tally.settled(match kind {
                AckKind::Ack => "ack",
                AckKind::Nak(_) => "nak",
                AckKind::Term => "term",
                AckKind::Progress | AckKind::Next => "progress",
            });
        }
        match self.acker.take() {
            Some(acker) => acker
                .ack_with(kind)
                .await
                .map_err(|e| BusError::new("settle a message", BusErrorKind::Unavailable, e)),
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
        if let Some(held) = self.held.take() {
            held.release();
        }
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
