//! The pull loop of a role: fetches from its durable consumer, never more than the role can hold.
//!
//! Each message takes a permit from the role's in-flight semaphore before it is handed on, and the
//! [`Delivery`] gives the permit back when settled. A source may have a [`Gate`] (a route's shared
//! limits): a fetched message then waits in the pull loop, kept alive with in-progress acks, until
//! the gate admits it, so waiting for budget never occupies a worker that another route could
//! use. Stopping ends the pull and NAKs whatever was already fetched but not handed on, so another
//! pod can take it at once.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::message::AckKind;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::delivery::Ticket;
use crate::{Bus, BusError, Delivery};

/// Admission of a fetched message before it is handed on.
pub trait Gate: Send + Sync {
    fn admit(&self) -> BoxFuture<'_, Result<Ticket, BusError>>;
}

/// Which consumer to pull from and how much to hold.
#[derive(Clone)]
pub struct Pull {
    pub stream: String,
    pub consumer: String,
    /// Messages requested per pull request.
    pub batch: usize,
    pub gate: Option<Arc<dyn Gate>>,
    /// How often a message waiting at the gate refreshes its AckWait.
    pub keepalive: Duration,
}

impl std::fmt::Debug for Pull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pull")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .field("gated", &self.gate.is_some())
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
            keepalive: Duration::from_secs(10),
        }
    }
}

impl Bus {
    pub async fn consumer(&self, stream: &str, name: &str) -> Result<PullConsumer, BusError> {
        self.js
            .get_stream_no_info(stream)
            .await
            .map_err(BusError::nats)?
            .get_consumer::<pull::Config>(name)
            .await
            .map_err(|e| BusError::Nats(format!("consumer {stream}/{name}: {e}")))
    }

    /// Pulls until `stop` is cancelled or `deliver` returns false (its receiver is gone; the
    /// delivery it was given is dropped, and so NAKed).
    pub async fn pull(
        &self,
        pull: &Pull,
        permits: Arc<Semaphore>,
        stop: CancellationToken,
        mut deliver: impl FnMut(Delivery) -> bool,
    ) -> Result<(), BusError> {
        let consumer = self.consumer(&pull.stream, &pull.consumer).await?;
        'subscribe: while !stop.is_cancelled() {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(pull.batch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(BusError::nats)?;
            loop {
                let permit = tokio::select! {
                    _ = stop.cancelled() => break 'subscribe,
                    permit = permits.clone().acquire_owned() => permit.map_err(BusError::nats)?,
                };
                let next = tokio::select! {
                    _ = stop.cancelled() => { drain(&mut messages).await; break 'subscribe }
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        let mut delivery = Delivery::new(message, Some(permit));
                        if let Some(gate) = &pull.gate {
                            let admitted = tokio::select! {
                                _ = stop.cancelled() => { drain(&mut messages).await; break 'subscribe }
                                ticket = admit(gate.as_ref(), &delivery, pull.keepalive) => ticket,
                            };
                            match admitted {
                                Ok(ticket) => delivery = delivery.with_ticket(ticket),
                                Err(e) => {
                                    tracing::warn!(consumer = %pull.consumer, error = %e, "admission failed; redelivering");
                                    let _ = delivery.nak(Some(Duration::from_secs(1))).await;
                                    continue;
                                }
                            }
                        }
                        if !deliver(delivery) {
                            drain(&mut messages).await;
                            break 'subscribe;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(consumer = %pull.consumer, error = %e, "pull failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    None => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue 'subscribe;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Waits for `gate`, refreshing the message's AckWait meanwhile.
async fn admit(
    gate: &dyn Gate,
    delivery: &Delivery,
    keepalive: Duration,
) -> Result<Ticket, BusError> {
    let admission = gate.admit();
    tokio::pin!(admission);
    let mut ticker = tokio::time::interval(keepalive);
    ticker.tick().await;
    loop {
        tokio::select! {
            ticket = &mut admission => return ticket,
            _ = ticker.tick() => { let _ = delivery.in_progress().await; }
        }
    }
}

/// NAKs every message already fetched into the client, without waiting for more.
async fn drain(messages: &mut pull::Stream) {
    let mut nacked = 0usize;
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        let _ = message.ack_with(AckKind::Nak(None)).await;
        nacked += 1;
    }
    if nacked > 0 {
        tracing::debug!(nacked, "returned prefetched messages on stop");
    }
}
