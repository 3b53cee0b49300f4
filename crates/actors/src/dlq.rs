//! Dead-lettering: moving a message that cannot be processed to `<prefix>.dlq.<stage>`.
//!
//! The entry keeps the original subject, headers and body with the error, so ops can inspect and
//! replay it; then the original is acknowledged, which takes it off its work queue. Filing is
//! retried in place while NATS is unavailable (the failure policy); a draining process gives the
//! original back instead. A message is never dropped on the floor: an entry too large for the DLQ
//! stream is filed without its body (its size and the reason say why), and the original is
//! acknowledged only once an entry is stored.

use chorus_bus::dlq::filing::dead_letter_message;
use chorus_bus::{Bus, BusError, Delivery};
use chorus_core::codec::headers;
use chorus_core::ids::now_millis;
use chorus_core::messages::DeadLetter;
use chorus_core::subjects::Stage;
use chorus_core::{JobId, Tenant};
use tokio_util::sync::CancellationToken;

use crate::policy::{self, Classified, GaveUp, Verdict};

/// What went wrong, for the entry.
pub struct Failure {
    pub kind: String,
    pub error: String,
    pub route: Option<String>,
    /// Provider calls made, for llm-stage failures.
    pub attempts: u32,
}

impl Failure {
    pub fn new(kind: impl Into<String>, error: impl ToString) -> Self {
        Self {
            kind: kind.into(),
            error: error.to_string(),
            route: None,
            attempts: 0,
        }
    }

    /// A failure the policy gave up on: its kind, and the error.
    pub fn of(error: &impl Classified) -> Self {
        Self::new(error.failure_kind(), error)
    }

    /// A message whose body does not decode as what its subject and headers say it is.
    pub fn undecodable(error: impl ToString) -> Self {
        Self::new("undecodable", error)
    }

    pub fn on_route(mut self, route: Option<&str>) -> Self {
        self.route = route.map(str::to_owned);
        self
    }

    pub fn after(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }
}

/// Files `delivery` in `stage`'s DLQ with `failure`, then acknowledges it.
pub async fn dead_letter(
    bus: &Bus,
    stage: Stage,
    delivery: Delivery,
    failure: Failure,
    stop: &CancellationToken,
) {
    let info = delivery.info();
    let mut entry = DeadLetter {
        stage,
        subject: delivery.subject().to_owned(),
        headers: delivery.header_pairs(),
        payload: delivery.payload().to_vec(),
        error_kind: failure.kind,
        error: failure.error,
        route: failure.route,
        job_id: delivery
            .header(headers::JOB)
            .and_then(|j| j.parse::<JobId>().ok()),
        tenant: delivery
            .header(headers::TENANT)
            .and_then(|t| Tenant::new(t).ok()),
        deliveries: info.delivered,
        attempts: failure.attempts,
        replays: delivery
            .header(headers::REPLAYS)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
        stream_sequence: info.stream_sequence,
        published_at: info.published,
        failed_at: now_millis(),
    };
    let filed = file(bus, stage, &mut entry, &[&delivery], stop).await;
    match filed {
        Ok(()) => {
            tracing::warn!(
                stage = stage.as_str(),
                kind = entry.error_kind,
                error = entry.error,
                subject = delivery.subject(),
                "dead-lettered"
            );
            let _ = delivery.ack().await;
        }
        Err(gave_up) => {
            if let Some((delivery, error)) = gave_up.give_back(delivery).await {
                tracing::error!(stage = stage.as_str(), %error, subject = delivery.subject(),
                    "cannot file a dead letter even without its body; redelivering it until its consumer's max_deliver");
                let delay = policy::redelivery(info.delivered);
                let _ = delivery.nak(Some(delay)).await;
            }
        }
    }
}

/// Files `entry` in `stage`'s DLQ under the failure policy, touching `held` while NATS is
/// unavailable. An entry too large for the DLQ is filed without the original body; its error says
/// so and how large the body was.
pub async fn file(
    bus: &Bus,
    stage: Stage,
    entry: &mut DeadLetter,
    held: &[&Delivery],
    stop: &CancellationToken,
) -> Result<(), GaveUp<BusError>> {
    let filed = publish(bus, stage, entry, held, stop).await;
    let Err(GaveUp {
        verdict: Verdict::Fail,
        error,
    }) = &filed
    else {
        return filed;
    };
    entry.error = format!(
        "{} (the original body of {} bytes is not kept: {error})",
        entry.error,
        entry.payload.len()
    );
    entry.payload.clear();
    publish(bus, stage, entry, held, stop).await
}

async fn publish(
    bus: &Bus,
    stage: Stage,
    entry: &DeadLetter,
    held: &[&Delivery],
    stop: &CancellationToken,
) -> Result<(), GaveUp<BusError>> {
    let message = dead_letter_message(&bus.subjects, entry).map_err(|e| GaveUp {
        error: BusError::codec("encode a dead letter", e),
        verdict: Verdict::Fail,
    })?;
    policy::persist(stage.as_str(), "file a dead letter", held, stop, || {
        bus.publish_all(vec![message.clone()])
    })
    .await
}
