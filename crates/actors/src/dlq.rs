//! Dead-lettering: moving a message that cannot be processed to `<prefix>.dlq.<stage>`.
//!
//! The entry keeps the original subject, headers and body with the error, so ops can inspect and
//! replay it; then the original is acknowledged, which takes it off its work queue. If the DLQ
//! publish fails the original is NAKed instead: a message is never dropped on the floor.

use std::time::Duration;

use chorus_bus::dlq::dead_letter_message;
use chorus_bus::{Bus, Delivery};
use chorus_core::codec::headers;
use chorus_core::ids::now_millis;
use chorus_core::messages::DeadLetter;
use chorus_core::subjects::Stage;
use chorus_core::{JobId, Tenant};

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

pub async fn dead_letter(bus: &Bus, stage: Stage, delivery: Delivery, failure: Failure) {
    let info = delivery.info();
    let entry = DeadLetter {
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
    let published = match dead_letter_message(&bus.subjects, &entry) {
        Ok(message) => bus
            .publish_all(vec![message])
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match published {
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
        Err(e) => {
            tracing::error!(stage = stage.as_str(), error = %e, "cannot dead-letter; will retry");
            let _ = delivery.nak(Some(Duration::from_secs(5))).await;
        }
    }
}
