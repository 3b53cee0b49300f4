//! The pull loop of a role: fetches from its durable consumer, never more than the role can hold.
//!
//! Fetched messages wait in a small window, kept alive by the consumer's
//! [`Holding`](crate::delivery::Holding), and are handed on best first (the `Chorus-Priority` header, then age) each time the role has room: a permit
//! from the role's in-flight semaphore (the [`Delivery`] gives it back when settled) and, for a
//! source with a [`Gate`] (a route's shared limits), the gate's admission. So waiting for budget
//! never occupies a worker that another route could use, and a backlog serves high priority
//! first. Messages come by short one-shot pull requests; stopping asks for nothing more, reads
//! the last request to its end, then NAKs whatever was fetched but not handed on, so another pod
//! can take it at once.

use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{PullConsumer, pull};
use chorus_core::codec::headers;
use chorus_core::fair::Band;
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::delivery::{Holding, Ticket};
use crate::fair::Flows;
use crate::{Bus, BusError, BusErrorKind, Delivery};

/// Admission of a fetched message before it is handed on. `waiting` is the band of the best
/// message the source holds, kept current while the admission waits.
pub trait Gate: Send + Sync {
    fn admit(&self, waiting: Arc<WaitingBand>) -> BoxFuture<'_, Result<Ticket, BusError>>;
}

/// The band of the best message a source holds waiting for its gate, as it changes.
#[derive(Debug)]
pub struct WaitingBand(AtomicUsize);

impl WaitingBand {
    fn new(band: Band) -> Self {
        Self(AtomicUsize::new(band as usize))
    }

    pub fn band(&self) -> Band {
        let index = self.0.load(Ordering::Relaxed);
        Band::ALL.get(index).copied().unwrap_or(Band::Batch)
    }

    pub(crate) fn set(&self, band: Band) {
        self.0.store(band as usize, Ordering::Relaxed);
    }
}

/// Which consumer to pull from and how much to hold.
#[derive(Clone)]
pub struct Pull {
    pub stream: String,
    pub consumer: String,
    /// Messages requested per pull request.
    /// Messages requested per pull request; for flows, what each flow's window holds.
    pub batch: usize,
    pub gate: Option<Arc<dyn Gate>>,
    /// The consumer's work split into flows, each pulled from a consumer of its own and handed
    /// on in fair order ([`crate::fair`]); `consumer` then names the flows' template.
    pub flows: Option<Arc<Flows>>,
}

impl std::fmt::Debug for Pull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pull")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .field("gated", &self.gate.is_some())
            .field("flows", &self.flows.as_ref().map(|f| f.subjects.name()))
            .finish()
    }
}

impl Pull {
    pub fn new(stream: String, consumer: impl Into<String>, batch: usize) -> Self {
        Self {
            stream,
            consumer: consumer.into(),
            batch,
            gate: None,
            flows: None,
        }
    }
}

impl Bus {
    pub async fn consumer(&self, stream: &str, name: &str) -> Result<PullConsumer, BusError> {
        let what = || format!("open consumer {stream}/{name}");
        self.js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| BusError::request(what(), e))?
            .get_consumer::<pull::Config>(name)
            .await
            .map_err(|e| BusError::boxed(what(), e))
    }

    /// Pulls until `stop` is cancelled or `deliver` returns false (its receiver is gone; the
    /// delivery it was given is dropped, and so NAKed).
    ///
    /// Fetched messages wait in a window of up to `pull.batch`, kept alive while they wait;
    /// each time the role can take one (a permit, and the gate's admission), the window hands out
    /// its highest-priority message (the `Chorus-Priority` header; oldest first among equals).
    /// So under a backlog, a high-priority message fetched after low-priority ones still goes
    /// first.
    ///
    /// Messages come by pull requests of [`REQUEST_EXPIRES`], one at a time, each asking for the
    /// room the window has. A stop asks for nothing more, holds what the open request still
    /// brings (the server may be sending on it already, and a message sent to a process that has
    /// stopped listening would come back only after the consumer's AckWait) and, once that
    /// request has ended (or the connection is down, when nothing more can come), NAKs the whole
    /// window, so another pod takes it at once.
    pub async fn pull(
        &self,
        pull: &Pull,
        permits: Arc<Semaphore>,
        stop: CancellationToken,
        mut deliver: impl FnMut(Delivery) -> bool,
    ) -> Result<(), BusError> {
        if let Some(flows) = &pull.flows {
            return self.pull_flows(pull, flows, permits, stop, deliver).await;
        }
        let mut consumer = self.consumer(&pull.stream, &pull.consumer).await?;
        let ack_wait = consumer
            .info()
            .await
            .map_err(|e| BusError::request(format!("read consumer {}", pull.consumer), e))?
            .config
            .ack_wait;
        let holding = Holding::new(self.client.clone(), ack_wait);
        let capacity = pull.batch.max(1);
        let mut window = Window::default();
        let mut request: Option<pull::Batch> = None;
        let mut stopping = false;
        let mut room = Room::new(pull, permits);
        loop {
            if !stopping
                && room.ready()
                && let Some(delivery) = window.pop()
            {
                stopping = !deliver(room.fill(delivery));
                continue;
            }
            // Ask again once the window has room for half a batch, so a busy role asks for many
            // messages at a time rather than one each time a worker frees up.
            let free = capacity - window.len();
            if !stopping && request.is_none() && free * 2 >= capacity {
                let asked = consumer
                    .batch()
                    .max_messages(free)
                    .expires(REQUEST_EXPIRES)
                    .messages()
                    .await;
                match asked {
                    Ok(batch) => request = Some(batch),
                    Err(e) => {
                        tracing::warn!(consumer = %pull.consumer, error = %e, "pull request failed; retrying");
                        stopping = pause(&stop).await;
                        continue;
                    }
                }
            }
            // Stopped, and no request is open any more: what is given back now can only go to
            // another pod. (NAKed while this process still had a request open, a message could
            // be sent straight back to it, again and again, up to its max_deliver.)
            // Without a connection nothing can come on the open request: stop at once.
            if stopping && (request.is_none() || !self.is_connected()) {
                window.release().await;
                break;
            }
            let waiting = !window.is_empty();
            tokio::select! {
                _ = stop.cancelled(), if !stopping => stopping = true,
                // An async block: select! builds every branch's future on each turn, enabled or
                // not, and a timer per message would be work on the hot path for nothing.
                () = async { tokio::time::sleep(STOP_RECHECK).await }, if stopping => {}
                made = room.make(&stop), if !stopping && room.wanted(waiting) => stopping = made?,
                next = async { request.as_mut()?.next().await }, if request.is_some() => match next {
                    Some(Ok(message)) => window.push(Delivery::new(message, &holding)),
                    Some(Err(e)) => {
                        tracing::warn!(consumer = %pull.consumer, error = %e, "pull failed; retrying");
                        request = None;
                        if !stopping {
                            stopping = pause(&stop).await;
                        }
                    }
                    // The request is over: filled, or expired.
                    None => request = None,
                },
            }
        }
        Ok(())
    }
}

/// A role's room for one more message: a permit from its in-flight semaphore and, for a source
/// with a [`Gate`], the gate's admission. Made one step at a time, and only while messages wait,
/// so waiting for budget never holds a permit another source could use for nothing.
pub(crate) struct Room<'a> {
    consumer: &'a str,
    gate: Option<&'a dyn Gate>,
    permits: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    ticket: Option<Ticket>,
    admission: Option<BoxFuture<'a, Result<Ticket, BusError>>>,
    /// What the admission is for (a source without flows: the batch band's work, the lowest).
    pub(crate) waiting: Arc<WaitingBand>,
}

impl<'a> Room<'a> {
    pub(crate) fn new(pull: &'a Pull, permits: Arc<Semaphore>) -> Self {
        Self {
            consumer: &pull.consumer,
            gate: pull.gate.as_deref(),
            permits,
            permit: None,
            ticket: None,
            admission: None,
            waiting: Arc::new(WaitingBand::new(Band::Batch)),
        }
    }

    /// A message can be handed on now.
    pub(crate) fn ready(&self) -> bool {
        self.permit.is_some() && (self.gate.is_none() || self.ticket.is_some())
    }

    /// `delivery`, holding the room until it is settled, marked as handed to the workers.
    pub(crate) fn fill(&mut self, delivery: Delivery) -> Delivery {
        let mut delivery = delivery.with_permit(self.permit.take());
        if let Some(ticket) = self.ticket.take() {
            delivery = delivery.with_ticket(ticket);
        }
        delivery.queued();
        delivery
    }

    /// Whether [`Self::make`] has a step to take, given whether messages wait.
    pub(crate) fn wanted(&self, waiting: bool) -> bool {
        waiting && !self.ready()
    }

    /// Takes the next step: a permit, then the gate's admission. True if `stop` came while
    /// pausing after a failed admission.
    pub(crate) async fn make(&mut self, stop: &CancellationToken) -> Result<bool, BusError> {
        if self.permit.is_none() {
            let permit =
                self.permits.clone().acquire_owned().await.map_err(|e| {
                    BusError::new("take an in-flight permit", BusErrorKind::Refused, e)
                })?;
            self.permit = Some(permit);
            return Ok(false);
        }
        let Some(gate) = self.gate else {
            return Ok(false);
        };
        let waiting = self.waiting.clone();
        let admitted = self
            .admission
            .get_or_insert_with(|| gate.admit(waiting))
            .await;
        self.admission = None;
        match admitted {
            Ok(ticket) => {
                self.ticket = Some(ticket);
                Ok(false)
            }
            Err(e) => {
                tracing::warn!(consumer = %self.consumer, error = %e, "admission failed; retrying");
                Ok(pause(stop).await)
            }
        }
    }
}

/// How long the server keeps one pull request open: how often an idle role asks again, and the
/// longest a stop waits for its last request to end. A request cannot be called off: a message
/// the server sends on it after the client stopped listening would come back only after the
/// consumer's AckWait, so a stop reads it to its end. One second keeps an idle process's stop
/// near a second (at five, an idle `chorus serve` took 28 s to exit), for one request a second
/// per idle consumer, which costs the server nothing it notices.
pub const REQUEST_EXPIRES: Duration = Duration::from_secs(1);

/// How often a stopping pull loop that waits for its open requests to end looks whether its
/// connection is still up.
pub(crate) const STOP_RECHECK: Duration = Duration::from_millis(100);

/// Waits before retrying after a failure; true if `stop` came meanwhile.
pub(crate) async fn pause(stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(Duration::from_millis(500)) => false,
    }
}

/// Fetched messages not yet handed on, best first.
#[derive(Default)]
pub(crate) struct Window {
    heap: BinaryHeap<Held>,
}

struct Held {
    priority: i32,
    sequence: u64,
    delivery: Delivery,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    /// Higher priority first, then the older message (lower stream sequence).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.sequence.cmp(&self.sequence))
    }
}

impl Window {
    pub(crate) fn push(&mut self, delivery: Delivery) {
        let priority = delivery
            .header(headers::PRIORITY)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        self.heap.push(Held {
            priority,
            sequence: delivery.info().stream_sequence,
            delivery,
        });
    }

    /// The message [`Self::pop`] would hand out.
    pub(crate) fn peek(&self) -> Option<&Delivery> {
        self.heap.peek().map(|held| &held.delivery)
    }

    pub(crate) fn pop(&mut self) -> Option<Delivery> {
        self.heap.pop().map(|held| held.delivery)
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// NAKs every message waiting here, so another pod can take it at once.
    pub(crate) async fn release(self) {
        crate::delivery::release(self.heap.into_iter().map(|held| held.delivery)).await;
    }
}
