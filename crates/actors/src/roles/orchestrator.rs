//! The orchestrator role: moves jobs through their lifecycle.
//!
//! It consumes submissions and the events that move a job on (step results, evaluations), applies
//! them to the job's state with [`chorus_core::job::apply`], writes the state back to the KV bucket
//! with compare-and-set (which is also what the persister stores), and publishes the effects. Each
//! worker caches the states it wrote with their revision, so the common case is one KV write per
//! event and no read; a conflict (another pod wrote first) reloads and re-applies (the loop is
//! [`JobStore::apply`]'s).
//!
//! Failures go through the failure policy: NATS unavailable is retried in place; a job whose
//! state or calls grew larger than the bus carries is aborted (failed with the reason, the event
//! that did it kept in the DLQ); an event without a job, or a submission that does not decode or
//! validate, is dead-lettered (a JetStream submitter also gets an error line on its results).

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use chorus_bus::backlog::{Backlogs, Load, Over};
use chorus_bus::cancels::CancelSet;
use chorus_bus::jobs::{Applied, JobStore, Start};
use chorus_bus::publish::Outgoing;
use chorus_bus::{Bus, BusError, Delivery};
use chorus_core::batch::{Endpoint, Origin};
use chorus_core::codec::{self, headers};
use chorus_core::config::{Config, QueueQuotas};
use chorus_core::ids::{JobId, Tenant, msg_id, now_millis};
use chorus_core::job::{Effect, Input, JobState};
use chorus_core::messages::{EvaluationResult, JobAbort, StepResult, Submission};
use chorus_core::spec::{FieldError, JobSpec};
use chorus_core::subjects::Stage;
use chorus_core::trace::TraceContext;
use chorus_llm::{Routes, tokens};
use lru::LruCache;
use tokio_util::sync::CancellationToken;

use crate::dlq::{Failure, dead_letter};
use crate::policy::{self, Class, Classified, GaveUp, Verdict};
use crate::stage::{Handler, Next};
use chorus_eval::SpecValidator;

pub struct Shared {
    pub bus: Bus,
    /// Cancelled when the stage drains.
    pub stop: CancellationToken,
    pub jobs: JobStore,
    pub routes: Arc<Routes>,
    /// Routes with shared limits, whose calls go to a consumer of their own.
    pub limited: HashSet<String>,
    /// Cancelled jobs and batches: a submission of one is stored cancelled, not dispatched.
    pub cancels: CancelSet,
    /// The bands tenants' JetStream submissions are served at.
    pub config: Arc<Config>,
    /// Tenants' waiting work, and how much each may have: a JetStream submission over its
    /// tenant's quota is answered with an error line instead of being queued.
    pub backlogs: Arc<Backlogs>,
    pub quotas: QueueQuotas,
}

pub struct Orchestrator {
    shared: Arc<Shared>,
    /// Only this worker's: the lock is never contended (it lets an action retried by the policy
    /// borrow the worker immutably).
    cache: Mutex<LruCache<JobId, (JobState, u64)>>,
}

impl Orchestrator {
    pub fn new(shared: Arc<Shared>, cache_size: usize) -> Self {
        let size = NonZeroUsize::new(cache_size).unwrap_or(NonZeroUsize::MIN);
        Self {
            shared,
            cache: Mutex::new(LruCache::new(size)),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<JobId, (JobState, u64)>> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A decoded message, with what is needed to apply it.
struct Event {
    tenant: Tenant,
    job: JobId,
    input: Input,
    /// Present for submissions: the state to create when the job is new.
    new_state: Option<Box<JobState>>,
    /// The edge stored the queued state already: read it rather than trying to create it.
    state_created: bool,
}

/// Why a submission never becomes a job.
#[derive(Debug, thiserror::Error)]
enum Rejected {
    #[error(transparent)]
    Undecodable(#[from] codec::CodecError),
    #[error("the orchestrator does not handle {kind} messages")]
    Unhandled { kind: String },
    #[error("invalid job spec: MessagePack body does not decode as {what}: {source}")]
    NotMessagePack {
        what: &'static str,
        #[source]
        source: rmp_serde::decode::Error,
    },
    #[error("invalid job spec: the body is not JSON ({what} expected): {source}")]
    NotJson {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid job spec: {}", join(problems))]
    Invalid { problems: Vec<FieldError> },
    #[error(
        "tenant {tenant} has {over}: this line was not queued; submit it again as the backlog \
         drains"
    )]
    OverQuota { tenant: Tenant, over: Over },
}

fn join(problems: &[FieldError]) -> String {
    let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
    messages.join("; ")
}

impl Rejected {
    fn kind(&self) -> &'static str {
        match self {
            Self::Undecodable(_) | Self::Unhandled { .. } => "undecodable",
            Self::NotMessagePack { .. } | Self::NotJson { .. } | Self::Invalid { .. } => {
                "invalid_spec"
            }
            Self::OverQuota { .. } => "queue_quota_exceeded",
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("no state for job {0}: its events arrived without a submission")]
    Orphan(JobId),
}

impl Classified for Failed {
    fn class(&self) -> Class {
        match self {
            Self::Bus(e) => e.class(),
            Self::Orphan(_) => Class::Poison,
        }
    }

    fn failure_kind(&self) -> &'static str {
        match self {
            Self::Bus(e) => e.failure_kind(),
            Self::Orphan(_) => "orphan_event",
        }
    }
}

impl Handler for Orchestrator {
    async fn handle(&mut self, delivery: Delivery) -> Next {
        let (bus, stop) = (&self.shared.bus, &self.shared.stop);
        let event = match self.decode(&delivery) {
            Ok(event) => event,
            Err(rejected) => {
                // A JetStream submitter hears of it on its results subject, as a batch error line.
                if let Some(origin) = self.external_origin(&delivery) {
                    self.publish_rejection(&delivery, &origin, &rejected).await;
                }
                // Refused, as the edge answers 429: the submitter's to send again, not ops'.
                if let Rejected::OverQuota { .. } = rejected {
                    metrics::counter!(chorus_telemetry::names::QUOTA_REFUSED, "via" => "jetstream")
                        .increment(1);
                    let _ = delivery.ack().await;
                    return Next::Done;
                }
                let failure = Failure::new(rejected.kind(), &rejected);
                dead_letter(bus, Stage::Orchestrator, delivery, failure, stop).await;
                return Next::Done;
            }
        };
        let what = "apply an event to its job";
        let applied = policy::persist("orchestrator", what, &[&delivery], stop, || {
            self.process(&event)
        })
        .await;
        let (delivery, error) = match applied {
            Ok(()) => {
                let _ = delivery.ack().await;
                return Next::Done;
            }
            Err(gave_up) => match gave_up.give_back(delivery).await {
                Some(failed) => failed,
                None => return Next::Done,
            },
        };
        // The event can never be applied. An orphan has no job to fail; anything else (a state
        // or a call too large for the bus) fails its job, and the event is kept in the DLQ.
        if let Failed::Bus(cause) = &error
            && !matches!(event.input, Input::Abort(_))
        {
            let step = match &event.input {
                Input::Step(result) => Some(result.step),
                _ => None,
            };
            let abort = Event {
                input: Input::Abort(JobAbort {
                    job_id: event.job,
                    tenant: event.tenant.clone(),
                    step,
                    kind: cause.failure_kind().to_owned(),
                    message: format!("the job cannot be carried on: {cause}"),
                    at: now_millis(),
                }),
                new_state: None,
                state_created: false,
                ..event
            };
            let aborted =
                policy::persist("orchestrator", "abort a job", &[&delivery], stop, || {
                    self.process(&abort)
                })
                .await;
            if let Err(GaveUp {
                verdict: Verdict::Redeliver(delay),
                ..
            }) = aborted
            {
                let _ = delivery.nak(Some(delay)).await;
                return Next::Done;
            }
        }
        // An abort for a job that does not exist (yet) has nothing to fail.
        if matches!((&error, &event.input), (Failed::Orphan(_), Input::Abort(_))) {
            let _ = delivery.ack().await;
            return Next::Done;
        }
        dead_letter(
            bus,
            Stage::Orchestrator,
            delivery,
            Failure::of(&error),
            stop,
        )
        .await;
        Next::Done
    }
}

impl Orchestrator {
    fn decode(&self, delivery: &Delivery) -> Result<Event, Rejected> {
        let subjects = &self.shared.bus.subjects;
        let kind = delivery.header(headers::TYPE);
        if let Some(tenant) = subjects.tenant_of_submit(delivery.subject()) {
            let now = now_millis();
            // The job's trace: the submitter's, else the one this span began.
            let trace = delivery
                .header(headers::TRACEPARENT)
                .and_then(TraceContext::parse)
                .or_else(chorus_telemetry::trace::current)
                .or_else(|| Some(TraceContext::new_root()));
            let (job, spec, state_created, origin, stream, band, key) = match kind {
                Some(_) => {
                    let submission: Submission =
                        codec::decode(kind, delivery.payload()).map_err(Rejected::Undecodable)?;
                    let Submission {
                        job_id,
                        spec,
                        state_created,
                        origin,
                        stream,
                        band,
                        key,
                        ..
                    } = submission;
                    (job_id, spec, state_created, origin, stream, band, key)
                }
                // A JetStream submitter's own message: a bare spec (or chat completion request)
                // in JSON or MessagePack, its batch and line ids in headers.
                None => {
                    let origin = self.external_origin(delivery);
                    if let Some(origin) = &origin {
                        chorus_core::batch::check_custom_id(&origin.custom_id)
                            .and_then(|()| chorus_core::batch::check_batch_id(&origin.batch))
                            .map_err(|e| Rejected::Invalid { problems: vec![e] })?;
                    }
                    let endpoint = origin.as_ref().map_or(Endpoint::Jobs, |o| o.endpoint);
                    let spec = parse_external(delivery, endpoint)?;
                    let band = self
                        .shared
                        .config
                        .jetstream_band(&tenant, spec.service_tier);
                    self.within_quota(&tenant, delivery.size())?;
                    (
                        external_job_id(&tenant, delivery),
                        spec,
                        false,
                        origin,
                        false,
                        band,
                        None,
                    )
                }
            };
            let errors = spec.validate(&SpecValidator::new(&*self.shared.routes));
            if !errors.is_empty() {
                return Err(Rejected::Invalid { problems: errors });
            }
            let batch = origin.as_ref().map(|o| o.batch.as_str());
            let input = match self.shared.cancels.cancelled(&tenant, job, batch) {
                Some(reason) => Input::Cancel { at: now, reason },
                None => Input::Submitted { at: now },
            };
            let state = JobState::new(job, tenant.clone(), spec, now, trace)
                .with_origin(origin)
                .streamed(stream)
                .in_band(band)
                .by_key(key);
            // Its call waits at the llm stage from now: counted there before the next count.
            self.shared.backlogs.taken(&tenant, delivery.size());
            return Ok(Event {
                tenant,
                job,
                input,
                new_state: Some(Box::new(state)),
                state_created,
            });
        }
        let (tenant, job, input) = match kind.and_then(|k| k.split('/').next()) {
            Some("step.result") => {
                let result: StepResult =
                    codec::decode(kind, delivery.payload()).map_err(Rejected::Undecodable)?;
                (result.tenant.clone(), result.job_id, Input::Step(result))
            }
            Some("eval.result") => {
                let result: EvaluationResult =
                    codec::decode(kind, delivery.payload()).map_err(Rejected::Undecodable)?;
                (
                    result.tenant.clone(),
                    result.job_id,
                    Input::Evaluated(result),
                )
            }
            Some("job.abort") => {
                let abort: JobAbort =
                    codec::decode(kind, delivery.payload()).map_err(Rejected::Undecodable)?;
                (abort.tenant.clone(), abort.job_id, Input::Abort(abort))
            }
            _ => {
                return Err(Rejected::Unhandled {
                    kind: kind.unwrap_or("untyped").into(),
                });
            }
        };
        Ok(Event {
            tenant,
            job,
            input,
            new_state: None,
            state_created: false,
        })
    }

    async fn process(&self, event: &Event) -> Result<(), Failed> {
        let start = Start {
            cached: self.cache().pop(&event.job),
            new: event.new_state.as_deref(),
            // A new job from a JetStream submitter is created without reading first.
            assume_new: event.new_state.is_some() && !event.state_created,
        };
        let Applied {
            transition,
            revision,
        } = self
            .shared
            .jobs
            .apply(&event.tenant, event.job, start, &event.input)
            .await?
            .ok_or(Failed::Orphan(event.job))?;
        self.publish(&transition.state, transition.effects).await?;
        if transition.state.status.is_terminal() {
            // For a client waiting on the job: it is over (best effort, core NATS).
            let subject = self.shared.bus.subjects.finished(&event.tenant, event.job);
            let _ = self
                .shared
                .bus
                .client
                .publish(subject, bytes::Bytes::new())
                .await;
        } else {
            self.cache().put(event.job, (transition.state, revision));
        }
        Ok(())
    }

    async fn publish(&self, state: &JobState, effects: Vec<Effect>) -> Result<(), BusError> {
        if effects.is_empty() {
            return Ok(());
        }
        let subjects = &self.shared.bus.subjects;
        let trace = chorus_telemetry::trace::outgoing(state.trace.as_ref());
        let trace = trace.as_ref();
        let mut messages = Vec::with_capacity(effects.len());
        let mut flows = Vec::new();
        let nats = |e| BusError::codec(format!("encode a message of job {}", state.id), e);
        for effect in effects {
            let message = match effect {
                Effect::Call(call) => {
                    // Each call waits in its tenant's flow at its band, charged its estimated
                    // tokens (the same estimate a `tpm` limit reserves).
                    let subject = if self.shared.limited.contains(&call.route) {
                        subjects.limited_llm_flows(&call.route).subject(
                            None,
                            call.band,
                            &call.tenant,
                        )
                    } else {
                        subjects
                            .llm_flows()
                            .subject(Some(&call.route), call.band, &call.tenant)
                    };
                    let cost = tokens::estimate_messages(
                        &call.messages,
                        &call.params,
                        self.shared.routes.completion_allowance(&call.route),
                    );
                    if !flows.contains(&subject) {
                        flows.push(subject.clone());
                    }
                    Outgoing::envelope(subject, &msg_id::call(state.id, call.step), &call, trace)
                        .map_err(nats)?
                        .header(headers::ROUTE, &call.route)
                        .header(headers::PRIORITY, &call.priority.to_string())
                        .header(headers::COST, &cost.to_string())
                }
                Effect::Evaluate(request) => {
                    // Evaluations wait in their tenant's flow at the job's band too.
                    let subject =
                        subjects
                            .evaluator_flows()
                            .subject(None, state.band, &state.tenant);
                    if !flows.contains(&subject) {
                        flows.push(subject.clone());
                    }
                    Outgoing::envelope(
                        subject,
                        &msg_id::evaluation_request(state.id),
                        &request,
                        trace,
                    )
                    .map_err(nats)?
                }
            };
            // What answers it (a step result, an evaluation) is queued at the same band.
            let message = message
                .header(headers::BAND, state.band.as_str())
                .for_job(state.id, &state.tenant);
            messages.push(message);
        }
        self.shared.bus.publish_all(messages).await?;
        for flow in flows {
            self.shared.bus.ring(&flow).await;
        }
        Ok(())
    }
}

impl Orchestrator {
    /// For a JetStream submitter's own message: the batch line it is. The batch is the
    /// `Chorus-Batch` header (`default` without one); the line's id is `Chorus-Custom-Id`, else
    /// the message id, else the stream sequence.
    fn external_origin(&self, delivery: &Delivery) -> Option<Origin> {
        self.shared
            .bus
            .subjects
            .tenant_of_submit(delivery.subject())?;
        if delivery.header(headers::TYPE).is_some() {
            return None;
        }
        let sequence = delivery.info().stream_sequence;
        let custom_id = delivery
            .header(headers::CUSTOM_ID)
            .or_else(|| delivery.header(headers::MSG_ID).map(original_id))
            .map_or_else(|| format!("seq-{sequence}"), str::to_owned);
        let endpoint = delivery
            .header(headers::ENDPOINT)
            .and_then(Endpoint::parse)
            .unwrap_or(Endpoint::Jobs);
        Some(Origin {
            batch: delivery
                .header(headers::BATCH)
                .unwrap_or(DEFAULT_BATCH)
                .to_owned(),
            custom_id,
            endpoint,
            line: sequence,
        })
    }

    /// Takes a JetStream submission of `tenant`'s if its calls waiting at the llm stage are
    /// within its backlog quota (its submissions waiting here are in arrival order: those past
    /// the quota are the ones refused).
    fn within_quota(&self, tenant: &Tenant, bytes: u64) -> Result<(), Rejected> {
        let quota = self.shared.quotas.of(tenant);
        let queued = self.shared.backlogs.of(tenant).llm;
        match queued.over(Load::new(1, bytes), quota) {
            Some(over) => Err(Rejected::OverQuota {
                tenant: tenant.clone(),
                over,
            }),
            None => Ok(()),
        }
    }

    /// Publishes the error line of a submission that never became a job.
    async fn publish_rejection(&self, delivery: &Delivery, origin: &Origin, rejected: &Rejected) {
        let Some(tenant) = self
            .shared
            .bus
            .subjects
            .tenant_of_submit(delivery.subject())
        else {
            return;
        };
        let line = chorus_store::results::error_line(
            &origin.custom_id,
            rejected.kind(),
            &rejected.to_string(),
        );
        let message = Outgoing::json(
            self.shared.bus.subjects.results(&tenant, &origin.batch),
            &format!("rejected:{tenant}:{}", delivery.info().stream_sequence),
            line.into_bytes(),
        )
        .header(headers::CUSTOM_ID, &origin.custom_id);
        let (bus, stop) = (&self.shared.bus, &self.shared.stop);
        let what = "publish the error line of a rejected submission";
        // Given up (the process is draining, or the line cannot be published): the submission
        // is in the DLQ either way, where ops see it.
        let _ = policy::persist("orchestrator", what, &[delivery], stop, || {
            bus.publish_all(vec![message.clone()])
        })
        .await;
    }
}

/// The batch of a JetStream submission without a `Chorus-Batch` header.
const DEFAULT_BATCH: &str = "default";

/// A message id without the `:replay:<n>` a DLQ replay adds: a replay is still the same job.
fn original_id(id: &str) -> &str {
    id.split(":replay:").next().unwrap_or(id)
}

/// A JetStream submission's job id, derived from what identifies the message, so a redelivery or
/// a re-publish with the same `Nats-Msg-Id` (or the same batch and custom id) is the same job.
fn external_job_id(tenant: &Tenant, delivery: &Delivery) -> JobId {
    let key = match (
        delivery.header(headers::MSG_ID),
        delivery.header(headers::BATCH),
        delivery.header(headers::CUSTOM_ID),
    ) {
        (Some(id), ..) => original_id(id).to_owned(),
        (None, batch, Some(custom_id)) => {
            format!("batch:{}:{custom_id}", batch.unwrap_or(DEFAULT_BATCH))
        }
        (None, ..) => format!("seq:{}", delivery.info().stream_sequence),
    };
    JobId::derived(tenant, &key)
}

/// A JetStream submitter's body: JSON or MessagePack by `Content-Type`; a job spec, or a chat
/// completion request for `Chorus-Endpoint: /v1/chat/completions`.
fn parse_external(delivery: &Delivery, endpoint: Endpoint) -> Result<JobSpec, Rejected> {
    let content_type = delivery
        .header(headers::CONTENT_TYPE)
        .unwrap_or(codec::JSON);
    let what = match endpoint {
        Endpoint::Jobs => "a job spec",
        Endpoint::ChatCompletions => "a chat completion request",
    };
    let body: serde_json::Value = if content_type.starts_with(codec::MSGPACK) {
        rmp_serde::from_slice(delivery.payload())
            .map_err(|source| Rejected::NotMessagePack { what, source })?
    } else {
        serde_json::from_slice(delivery.payload())
            .map_err(|source| Rejected::NotJson { what, source })?
    };
    chorus_core::batch::body::spec_from_body(endpoint, body)
        .map_err(|e| Rejected::Invalid { problems: vec![e] })
}
