//! The DLQ watcher: dead-letters messages that crashed or stalled their workers.
//!
//! A message whose worker panics, is killed or hangs is never settled by the worker, so the
//! worker cannot dead-letter it; JetStream gives up on it after the consumer's `max_deliver` and
//! says so with a MAX_DELIVERIES advisory, which the `ADVISORIES` stream captures. For each one
//! the watcher fetches the original by its stream sequence, files a dead letter (kind
//! `max_deliveries`; job, tenant, route and replay count from the original's headers), deletes
//! the original from its work stream so the stream does not grow, then acknowledges the
//! advisory. A dead-lettered llm call also fails its step (kind `max_deliveries`), so its job
//! ends with the reason instead of running forever. Every step is idempotent: the entry's `Nats-Msg-Id` is derived from the original's
//! subject and sequence (as a worker's own dead letter is), and an original already gone means
//! an earlier attempt finished the job or the message was settled after all.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use chorus_bus::dlq::{self, MaxDeliveries, dead_letter_message, header_pairs};
use chorus_bus::publish::Outgoing;
use chorus_bus::{Bus, Delivery};
use chorus_core::codec::{self, headers};
use chorus_core::ids::{msg_id, now_millis};
use chorus_core::messages::{DeadLetter, LlmCall, StepError, StepOutcome, StepResult};
use chorus_core::subjects::{EventKind, Stage};
use chorus_core::trace::TraceContext;
use chorus_core::{JobId, Tenant};

use crate::stage::{Handler, Next};

/// The error kind of dead letters filed from the advisory.
pub const KIND: &str = "max_deliveries";

/// How long a failed attempt waits before the advisory is redelivered.
const RETRY: Duration = Duration::from_secs(5);

/// The stage whose durable consumer this is, if it is one of Chorus's own.
fn stage_of(consumer: &str) -> Option<Stage> {
    match consumer {
        "orchestrator" | "orchestrator-submit" => Some(Stage::Orchestrator),
        "llm" => Some(Stage::Llm),
        "evaluator" => Some(Stage::Evaluator),
        "persister" => Some(Stage::Persister),
        _ => None,
    }
}

pub struct DlqWatcher {
    bus: Bus,
}

impl DlqWatcher {
    pub fn new(bus: Bus) -> Self {
        Self { bus }
    }

    /// Files the message the advisory names; `Ok(None)` when there is nothing (left) to file.
    async fn file(&self, advisory: &MaxDeliveries) -> Result<Option<DeadLetter>, String> {
        let Some(stage) = stage_of(&advisory.consumer) else {
            tracing::debug!(consumer = %advisory.consumer, "max deliveries on a consumer that is not Chorus's; left alone");
            return Ok(None);
        };
        let original = dlq::fetch_message(&self.bus, &advisory.stream, advisory.stream_seq)
            .await
            .map_err(|e| format!("cannot fetch the original: {e}"))?;
        let Some(original) = original else {
            return Ok(None);
        };
        let header = |name: &str| original.headers.get(name).map(|v| v.as_str());
        let letter = DeadLetter {
            stage,
            subject: original.subject.to_string(),
            headers: header_pairs(&original.headers),
            payload: original.payload.to_vec(),
            error_kind: KIND.into(),
            error: format!(
                "delivered {} times to the `{}` consumer without being acknowledged (its max_deliver): \
                 the worker crashed or stalled on it every time",
                advisory.deliveries, advisory.consumer
            ),
            route: header(headers::ROUTE).map(str::to_owned),
            job_id: header(headers::JOB).and_then(|j| j.parse::<JobId>().ok()),
            tenant: header(headers::TENANT).and_then(|t| Tenant::new(t).ok()),
            deliveries: advisory.deliveries,
            attempts: 0,
            replays: header(headers::REPLAYS)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            stream_sequence: advisory.stream_seq,
            published_at: (original.time.unix_timestamp_nanos() / 1_000_000) as i64,
            failed_at: now_millis(),
        };
        let message =
            dead_letter_message(&self.bus.subjects, &letter).map_err(|e| e.to_string())?;
        self.bus
            .publish_all(vec![message])
            .await
            .map_err(|e| format!("cannot publish the dead letter: {e}"))?;
        if stage == Stage::Llm {
            self.fail_step(&original, &letter).await?;
        }
        dlq::delete_message(&self.bus, &advisory.stream, advisory.stream_seq)
            .await
            .map_err(|e| format!("cannot delete the original: {e}"))?;
        Ok(Some(letter))
    }

    /// An llm call that never completed still ends its step, so the job fails with the reason
    /// instead of running forever; a replay of the dead letter can still revive it.
    async fn fail_step(&self, original: &StreamMessage, letter: &DeadLetter) -> Result<(), String> {
        let kind = original.headers.get(headers::TYPE).map(|v| v.as_str());
        let Ok(call) = codec::decode::<LlmCall>(kind, &original.payload) else {
            return Ok(());
        };
        let result = StepResult {
            job_id: call.job_id,
            tenant: call.tenant.clone(),
            step: call.step,
            route: call.route.clone(),
            outcome: StepOutcome::Failed(StepError {
                kind: KIND.into(),
                message: letter.error.clone(),
                retryable: true,
                status: None,
            }),
            attempts: 0,
            calls: Vec::new(),
            replays: letter.replays,
            started_at: letter.published_at,
            finished_at: letter.failed_at,
        };
        let trace = original
            .headers
            .get(headers::TRACEPARENT)
            .and_then(|v| TraceContext::parse(v.as_str()));
        let subject = self
            .bus
            .subjects
            .event(&call.tenant, call.job_id, EventKind::Step);
        let id = msg_id::step_result(call.job_id, call.step, letter.replays);
        let trace = chorus_telemetry::trace::outgoing(trace.as_ref());
        let message = Outgoing::envelope(subject, &id, &result, trace.as_ref())
            .map_err(|e| e.to_string())?
            .for_job(call.job_id, &call.tenant);
        self.bus
            .publish_all(vec![message])
            .await
            .map_err(|e| format!("cannot fail the step: {e}"))
    }
}

impl Handler for DlqWatcher {
    async fn handle(&mut self, delivery: Delivery) -> Next {
        let advisory = match MaxDeliveries::parse(delivery.payload()) {
            Ok(advisory) => advisory,
            Err(e) => {
                tracing::warn!(subject = delivery.subject(), error = %e, "not a max-deliveries advisory; dropped");
                let _ = delivery.term().await;
                return Next::Done;
            }
        };
        match self.file(&advisory).await {
            Ok(Some(letter)) => {
                tracing::warn!(
                    stage = letter.stage.as_str(),
                    kind = KIND,
                    stream = %advisory.stream,
                    seq = advisory.stream_seq,
                    deliveries = advisory.deliveries,
                    subject = %letter.subject,
                    "dead-lettered a message that crashed or stalled its workers"
                );
                let _ = delivery.ack().await;
            }
            Ok(None) => {
                let _ = delivery.ack().await;
            }
            Err(e) => {
                tracing::error!(stream = %advisory.stream, seq = advisory.stream_seq, error = %e, "cannot dead-letter; will retry");
                let _ = delivery.nak(Some(RETRY)).await;
            }
        }
        Next::Done
    }
}
