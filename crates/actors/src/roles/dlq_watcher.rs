//! The DLQ watcher: dead-letters messages that crashed or stalled their workers.
//!
//! A message whose worker panics, is killed or hangs is never settled by the worker, so the
//! worker cannot dead-letter it; JetStream gives up on it after the consumer's `max_deliver` and
//! says so with a MAX_DELIVERIES advisory, which the `ADVISORIES` stream captures. For each one
//! the watcher fetches the original by its stream sequence, files a dead letter (kind
//! `max_deliveries`; job, tenant, route and replay count from the original's headers), ends the
//! original's job, deletes the original from its work stream so the stream does not grow, then
//! acknowledges the advisory.
//!
//! Ending the job: a dead-lettered llm call fails its step (kind `max_deliveries`), and a
//! dead-lettered evaluation request or orchestrator event aborts its job, so the job ends with
//! the reason instead of running forever; a replay of the dead letter can still revive a step.
//! A job snapshot the persister could not store stays in the jobs bucket (which keeps its own
//! history and allows no deletes); its dead letter is what a replay stores.
//!
//! Every step is idempotent — the entry's `Nats-Msg-Id` is derived from the original's subject
//! and sequence (as a worker's own dead letter is), so are the step result's and the abort's — and
//! an original already gone means an earlier attempt finished the job or the message was settled
//! after all. NATS failures are retried in place by the failure policy.

use async_nats::jetstream::message::StreamMessage;
use chorus_bus::dlq;
use chorus_bus::dlq::filing::{MaxDeliveries, header_pairs};
use chorus_bus::publish::Outgoing;
use chorus_bus::{Bus, Delivery};
use chorus_core::codec::{self, headers};
use chorus_core::fair::Band;
use chorus_core::ids::{msg_id, now_millis};
use chorus_core::messages::{DeadLetter, JobAbort, LlmCall, StepError, StepOutcome, StepResult};
use chorus_core::subjects::{EventKind, Stage};
use chorus_core::trace::TraceContext;
use chorus_core::{JobId, Tenant};
use tokio_util::sync::CancellationToken;

use crate::dlq::file;
use crate::policy::{self, GaveUp, Verdict};
use crate::stage::{Handler, Next};

/// The error kind of dead letters filed from the advisory.
pub const KIND: &str = "max_deliveries";

/// The stage whose durable consumer this is, if it is one of Chorus's own.
fn stage_of(consumer: &str) -> Option<Stage> {
    match consumer {
        "orchestrator" => Some(Stage::Orchestrator),
        c if c.starts_with("orchestrator-") => Some(Stage::Orchestrator),
        "llm" => Some(Stage::Llm),
        c if c.starts_with("llm-") => Some(Stage::Llm),
        "evaluator" => Some(Stage::Evaluator),
        c if c.starts_with("evaluator-") => Some(Stage::Evaluator),
        "persister" => Some(Stage::Persister),
        _ => None,
    }
}

pub struct DlqWatcher {
    bus: Bus,
    stop: CancellationToken,
}

/// What went wrong filing an advisory's message.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error("cannot fetch the original: {0}")]
    Fetch(#[source] dlq::DlqError),
    #[error("cannot delete the original: {0}")]
    Delete(#[source] dlq::DlqError),
    #[error("cannot file the dead letter: {0}")]
    File(#[source] chorus_bus::BusError),
    #[error("cannot end the original's job: {0}")]
    End(#[source] chorus_bus::BusError),
}

impl policy::Classified for Failed {
    fn class(&self) -> policy::Class {
        match self {
            Self::Fetch(e) | Self::Delete(e) => e.class(),
            Self::File(e) | Self::End(e) => e.class(),
        }
    }

    fn failure_kind(&self) -> &'static str {
        match self {
            Self::Fetch(e) | Self::Delete(e) => e.failure_kind(),
            Self::File(e) | Self::End(e) => e.failure_kind(),
        }
    }
}

impl DlqWatcher {
    pub fn new(bus: Bus, stop: CancellationToken) -> Self {
        Self { bus, stop }
    }

    /// Fetches the message the advisory names and builds its entry; `None` when there is
    /// nothing (left) to file.
    async fn letter(
        &self,
        advisory: &MaxDeliveries,
    ) -> Result<Option<(Stage, StreamMessage, DeadLetter)>, Failed> {
        let Some(stage) = stage_of(&advisory.consumer) else {
            tracing::debug!(consumer = %advisory.consumer, "max deliveries on a consumer that is not Chorus's; left alone");
            return Ok(None);
        };
        let original = dlq::fetch_message(&self.bus, &advisory.stream, advisory.stream_seq)
            .await
            .map_err(Failed::Fetch)?;
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
        Ok(Some((stage, original, letter)))
    }

    /// Ends the job of a dead-lettered message: see the module docs.
    async fn end_job(
        &self,
        stage: Stage,
        original: &StreamMessage,
        letter: &DeadLetter,
    ) -> Result<(), Failed> {
        let kind = original.headers.get(headers::TYPE).map(|v| v.as_str());
        let message = match (stage, letter.job_id, &letter.tenant) {
            (Stage::Llm, ..) => match codec::decode::<LlmCall>(kind, &original.payload) {
                Ok(call) => Some(self.fail_step(original, &call, letter)),
                Err(_) => None,
            },
            // An abort that crashed its worker is not answered with another.
            (Stage::Orchestrator | Stage::Evaluator, Some(job), Some(tenant))
                if !kind.is_some_and(|k| k.starts_with("job.abort")) =>
            {
                let abort = JobAbort {
                    job_id: job,
                    tenant: tenant.clone(),
                    step: None,
                    kind: KIND.into(),
                    message: format!(
                        "the {} stage gave up on it: {}",
                        stage.as_str(),
                        letter.error
                    ),
                    at: letter.failed_at,
                };
                let id = msg_id::abort(job, KIND);
                Some(self.event(original, job, tenant, EventKind::Aborted, &id, &abort))
            }
            _ => None,
        };
        let Some(message) = message else {
            return Ok(());
        };
        let message = message.map_err(Failed::End)?;
        self.bus
            .publish_all(vec![message.clone()])
            .await
            .map_err(Failed::End)?;
        super::ring_event(&self.bus, &message).await;
        Ok(())
    }

    /// The failed step result of an llm call that never completed.
    fn fail_step(
        &self,
        original: &StreamMessage,
        call: &LlmCall,
        letter: &DeadLetter,
    ) -> Result<Outgoing, chorus_bus::BusError> {
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
        let id = msg_id::step_result(call.job_id, call.step, letter.replays);
        self.event(
            original,
            call.job_id,
            &call.tenant,
            EventKind::Step,
            &id,
            &result,
        )
    }

    fn event<T: chorus_core::messages::Envelope>(
        &self,
        original: &StreamMessage,
        job: JobId,
        tenant: &Tenant,
        kind: EventKind,
        id: &str,
        value: &T,
    ) -> Result<Outgoing, chorus_bus::BusError> {
        let trace = original
            .headers
            .get(headers::TRACEPARENT)
            .and_then(|v| TraceContext::parse(v.as_str()));
        let band = original.headers.get(headers::BAND).map(|v| v.as_str());
        let band = Band::of_header(band);
        let subject = self.bus.subjects.event(band, tenant, job, kind);
        let trace = chorus_telemetry::trace::outgoing(trace.as_ref());
        let message = Outgoing::envelope(subject, id, value, trace.as_ref())
            .map_err(|e| chorus_bus::BusError::codec("encode an event", e))?;
        Ok(message
            .header(headers::BAND, band.as_str())
            .for_job(job, tenant))
    }

    /// Files the advisory's message and ends its job; see the module docs.
    async fn handle_advisory(
        &self,
        delivery: &Delivery,
        advisory: &MaxDeliveries,
    ) -> Result<Option<DeadLetter>, GaveUp<Failed>> {
        let what = "file a message that crashed or stalled its workers";
        let stop = &self.stop;
        let found = policy::persist("dlq-watcher", what, &[delivery], stop, || {
            self.letter(advisory)
        })
        .await?;
        let Some((stage, original, mut letter)) = found else {
            return Ok(None);
        };
        file(&self.bus, stage, &mut letter, &[delivery], stop)
            .await
            .map_err(|GaveUp { error, verdict }| GaveUp {
                error: Failed::File(error),
                verdict,
            })?;
        policy::persist("dlq-watcher", what, &[delivery], stop, || {
            self.end_job(stage, &original, &letter)
        })
        .await?;
        // The jobs bucket's stream keeps its own history and refuses deletes.
        if advisory.stream != self.bus.subjects.jobs_stream() {
            policy::persist("dlq-watcher", what, &[delivery], stop, || async {
                dlq::delete_message(&self.bus, &advisory.stream, advisory.stream_seq)
                    .await
                    .map_err(Failed::Delete)
            })
            .await?;
        }
        Ok(Some(letter))
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
        match self.handle_advisory(&delivery, &advisory).await {
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
            Err(GaveUp { error, verdict }) => {
                let delay = match verdict {
                    Verdict::Redeliver(delay) => delay,
                    _ => policy::redelivery(delivery.info().delivered),
                };
                tracing::error!(stream = %advisory.stream, seq = advisory.stream_seq, %error, ?delay, "cannot dead-letter; will retry");
                let _ = delivery.nak(Some(delay)).await;
            }
        }
        Next::Done
    }
}
