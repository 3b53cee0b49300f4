//! The four worker roles, each assembled into a [`StageSpec`] from the configuration.
//!
//! | role | consumes | routing |
//! |---|---|---|
//! | orchestrator | `SUBMIT/orchestrator-submit` (and its flows), `EVENTS/orchestrator` | by job |
//! | llm | `WORK/llm` (and its flows) | any idle worker |
//! | evaluator | `WORK/evaluator` | any idle worker |
//! | persister | `KV_<prefix>_jobs/persister` (the jobs bucket's stream) | one batch writer |
//! | dlq watcher (beside the orchestrator) | `ADVISORIES/dlq-watcher` (MAX_DELIVERIES advisories) | any idle worker |

pub mod dlq_watcher;
pub mod evaluator;
pub mod llm;
pub mod orchestrator;
pub mod persister;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chorus_bus::backlog::Backlogs;
use chorus_bus::budgets::Budgets;
use chorus_bus::cancels::Cancels;
use chorus_bus::claims::{self, Claims};
use chorus_bus::definitions::{ConsumerDef, DefinitionError, Definitions};
use chorus_bus::delivery::Ticket;
use chorus_bus::fair::Flows;
use chorus_bus::jobs::JobStore;
use chorus_bus::limits::{Limits, RouteLimiter, RouteLimits};
use chorus_bus::publish::Outgoing;
use chorus_bus::source::{Gate, Pull, WaitingBand};
use chorus_bus::{Bus, BusError, Delivery};
use chorus_core::codec::headers;
use chorus_core::config::Config;
use chorus_core::fair::Band;
use chorus_core::ids::{msg_id, now_millis};
use chorus_core::messages::Envelope;
use chorus_core::messages::JobAbort;
use chorus_core::subjects::{EventKind, FlowSubjects, Stage};
use chorus_core::trace::TraceContext;
use chorus_core::{JobId, Tenant};
use chorus_llm::{RetryPolicy, Routes};
use chorus_store::Store;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::dlq::{Failure, dead_letter};
use crate::policy::{self, GaveUp, Verdict};
use crate::spend::Spend;
use crate::stage::{Routing, StageSpec};

/// The message publishing a result that moves a job on (a step result, an evaluation, an abort),
/// joining the trace of the delivery it answers.
fn event_message<T: Envelope>(
    bus: &Bus,
    answering: &Delivery,
    job: JobId,
    tenant: &Tenant,
    kind: EventKind,
    msg_id: &str,
    value: &T,
) -> Result<Outgoing, BusError> {
    let trace = answering
        .header(headers::TRACEPARENT)
        .and_then(TraceContext::parse);
    let band = Band::of_header(answering.header(headers::BAND));
    let subject = bus.subjects.event(band, tenant, job, kind);
    let trace = chorus_telemetry::trace::outgoing(trace.as_ref());
    let message = Outgoing::envelope(subject, msg_id, value, trace.as_ref())
        .map_err(|e| BusError::codec(format!("encode a {} event", kind.token()), e))?;
    Ok(message
        .header(headers::BAND, band.as_str())
        .for_job(job, tenant))
}

/// Rings the doorbell of the flow an event (`message`, from [`event_message`]) was published
/// on, so an orchestrator pulls it at once.
async fn ring_event(bus: &Bus, message: &Outgoing) {
    let events = bus.subjects.event_flows();
    if let Some(flow) = events.flow(&message.subject) {
        bus.ring(&events.subject(None, flow.band, &flow.tenant))
            .await;
    }
}

/// Publishes an event (see [`event_message`]) under the failure policy: retried in place while
/// NATS is unavailable (it is idempotent by its message id), given up as the policy says.
#[allow(clippy::too_many_arguments)]
async fn publish_event<T: Envelope>(
    bus: &Bus,
    stage: Stage,
    stop: &CancellationToken,
    answering: &Delivery,
    job: JobId,
    tenant: &Tenant,
    kind: EventKind,
    msg_id: &str,
    value: &T,
) -> Result<(), GaveUp<BusError>> {
    let message =
        event_message(bus, answering, job, tenant, kind, msg_id, value).map_err(|error| {
            GaveUp {
                error,
                verdict: Verdict::Fail,
            }
        })?;
    policy::persist(
        stage.as_str(),
        "publish a job event",
        &[answering],
        stop,
        || bus.publish_all(vec![message.clone()]),
    )
    .await?;
    ring_event(bus, &message).await;
    Ok(())
}

/// Fails `answering`'s job because `stage` cannot carry it on (`error`, at `step`): publishes a
/// [`JobAbort`] for the orchestrator, then dead-letters the message. If even the abort cannot be
/// published the message is given back or dead-lettered as the policy says.
async fn abort_job(
    bus: &Bus,
    stage: Stage,
    stop: &CancellationToken,
    answering: Delivery,
    (job, tenant, step): (JobId, &Tenant, Option<u32>),
    error: &impl policy::Classified,
) {
    let abort = JobAbort {
        job_id: job,
        tenant: tenant.clone(),
        step,
        kind: error.failure_kind().to_owned(),
        message: format!(
            "the {} stage cannot carry the job on: {error}",
            stage.as_str()
        ),
        at: now_millis(),
    };
    let id = msg_id::abort(job, stage.as_str());
    let aborted = publish_event(
        bus,
        stage,
        stop,
        &answering,
        job,
        tenant,
        EventKind::Aborted,
        &id,
        &abort,
    )
    .await;
    let answering = match aborted {
        Ok(()) => Some(answering),
        Err(gave_up) => gave_up
            .give_back(answering)
            .await
            .map(|(answering, _)| answering),
    };
    if let Some(answering) = answering {
        dead_letter(bus, stage, answering, Failure::of(error), stop).await;
    }
}

/// Why a role could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ActorsError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Definitions(#[from] DefinitionError),
    #[error("the definitions have no `{consumer}` consumer to make route consumers from")]
    NoConsumer { consumer: &'static str },
}

/// What every role is built from.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub bus: Bus,
    pub routes: Arc<Routes>,
    /// Tenants' waiting work, counted for their backlog quotas.
    pub backlogs: Arc<Backlogs>,
}

fn pull(stream: String, consumer: &str, max_in_flight: usize) -> Pull {
    Pull::new(stream, consumer, max_in_flight.clamp(1, 256))
}

pub async fn orchestrator(
    ctx: &Context,
) -> Result<StageSpec<orchestrator::Orchestrator>, ActorsError> {
    let config = &ctx.config.orchestrator;
    let stop = CancellationToken::new();
    let shared = Arc::new(orchestrator::Shared {
        bus: ctx.bus.clone(),
        stop: stop.clone(),
        jobs: JobStore::open(&ctx.bus).await?,
        routes: ctx.routes.clone(),
        limited: limited_routes(&ctx.config).into_keys().collect(),
        cancels: Cancels::open(&ctx.bus).await?.watch().await?,
        config: ctx.config.clone(),
        backlogs: ctx.backlogs.clone(),
        quotas: ctx.config.queue_quotas(),
    });
    let cache = config.cache_per_worker;
    let submit = ctx.bus.subjects.stream("submit");
    // The edge's submissions, in fair order: a flow per band and tenant.
    let flows = fair_source(
        ctx,
        submit.clone(),
        "orchestrator-submit",
        ctx.bus.subjects.submit_flows(),
        Stage::Orchestrator,
    )?;
    // Events (step results, evaluations, aborts), in fair order: a flow per band and tenant, so
    // a batch's thousands of results never hold up an interactive call's.
    let events = ctx.bus.subjects.stream("events");
    let event_flows = fair_source(
        ctx,
        events.clone(),
        "orchestrator",
        ctx.bus.subjects.event_flows(),
        Stage::Orchestrator,
    )?;
    Ok(StageSpec {
        name: "orchestrator",
        bus: ctx.bus.clone(),
        sources: vec![
            // JetStream submitters' jobs, in arrival order.
            pull(submit, "orchestrator-submit", config.max_in_flight),
            flows,
            // Events a Chorus before flows published.
            pull(events, "orchestrator", config.max_in_flight),
            event_flows,
        ],
        routing: Routing::ByJob,
        workers: config.workers,
        max_in_flight: config.max_in_flight,
        supervision: ctx.config.supervision.clone(),
        make_handler: Arc::new(move || orchestrator::Orchestrator::new(shared.clone(), cache)),
        stop,
    })
}

/// A source pulling the flows of `subjects` on `stream` in fair order, each flow's consumer made
/// from `consumer`'s definition: for a stage whose work serves every route (its
/// `chorus_queue_wait_seconds` label `route="any"`).
fn fair_source(
    ctx: &Context,
    stream: String,
    consumer: &'static str,
    subjects: FlowSubjects,
    stage: Stage,
) -> Result<Pull, ActorsError> {
    let mut source = pull(stream, consumer, ctx.config.scheduling.window);
    source.flows = Some(Arc::new(Flows {
        subjects,
        template: template(&ctx.config, consumer)?,
        policy: ctx.config.fair_policy(),
        caps: HashMap::new(),
        stage,
        label: "any".to_owned(),
    }));
    Ok(source)
}

/// The consumer definition `consumer`'s flows' consumers are made from.
fn template(config: &Config, consumer: &'static str) -> Result<ConsumerDef, ActorsError> {
    let definitions = Definitions::configured(&config.nats)?;
    let (_, template) = definitions
        .consumer(consumer)
        .ok_or(ActorsError::NoConsumer { consumer })?;
    Ok(template.clone())
}

/// Routes whose calls pass shared limits, by name: those with `rpm`, `tpm` or
/// `max_concurrency`, and every route to a real provider (a provider's 429 pauses the route for
/// every process even when Chorus sets no limit of its own).
pub fn limited_routes(config: &Config) -> HashMap<String, RouteLimits> {
    config
        .routes
        .iter()
        .map(|r| {
            let limits = RouteLimits {
                rpm: r.rpm,
                tpm: r.tpm,
                max_concurrency: r.max_concurrency,
            };
            (r, limits)
        })
        .filter(|(r, l)| *l != RouteLimits::default() || r.provider != "sim")
        .map(|(r, l)| (r.name.clone(), l))
        .collect()
}

/// Admits a limited route's next call: a concurrency slot, then a request slot — holding back
/// while another process claims the route for a higher band, and claiming it while this
/// process's best waiting call is above the batch band ([`Claims`]).
struct RouteGate {
    route: String,
    limiter: RouteLimiter,
    claims: Arc<Claims>,
}

impl RouteGate {
    /// Claims the route for `waiting`'s band every [`claims::REFRESH`] until dropped; notes in
    /// `claimed` whether it did.
    async fn claim(&self, waiting: &WaitingBand, claimed: &AtomicBool) {
        loop {
            if self.claims.claim(waiting.band()).await {
                claimed.store(true, Ordering::Relaxed);
            }
            tokio::time::sleep(claims::REFRESH).await;
        }
    }
}

impl Gate for RouteGate {
    fn admit(&self, waiting: Arc<WaitingBand>) -> BoxFuture<'_, Result<Ticket, BusError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let defers = self.claims.defers(waiting.band());
            let defer = || defers && self.claims.outranked(waiting.band());
            let admitted = async {
                let lease = self.limiter.acquire_slot_unless(&defer).await?;
                self.limiter.admit_request_unless(&defer).await?;
                Ok::<_, BusError>(lease)
            };
            // Claims order processes contending for slots; without slots there is nothing to
            // order, and a claim would only be messages.
            let lease = if self.limiter.limits().has_slots() {
                let claimed = AtomicBool::new(false);
                let lease = tokio::select! {
                    lease = admitted => lease?,
                    () = self.claim(&waiting, &claimed) => unreachable!("a claim lasts until admitted"),
                };
                if claimed.load(Ordering::Relaxed) {
                    self.claims.release().await;
                }
                lease
            } else {
                admitted.await?
            };
            metrics::histogram!(chorus_telemetry::names::LLM_LIMITER_WAIT, "route" => self.route.clone())
                .record(started.elapsed().as_secs_f64());
            Ok(Ticket(Box::new(lease)))
        })
    }
}

pub async fn llm(ctx: &Context) -> Result<StageSpec<llm::LlmWorker>, ActorsError> {
    let config = &ctx.config.llm;
    let subjects = &ctx.bus.subjects;
    let work = subjects.stream("work");
    // The `llm` consumer: the template of every flow's consumer, and the drain of calls a Chorus
    // before flows published (so a rolling upgrade loses none).
    let legacy = pull(work.clone(), "llm", config.workers);
    // The consumer's own limits decide when a message is on its last delivery, and how often a
    // running call must say it is alive.
    let info = ctx
        .bus
        .consumer(&legacy.stream, &legacy.consumer)
        .await?
        .cached_info()
        .config
        .clone();
    let max_deliver = u64::try_from(info.max_deliver).unwrap_or(u64::MAX);

    let template = template(&ctx.config, "llm")?;
    let flows = |subjects: FlowSubjects, label: &str| {
        Arc::new(Flows {
            subjects,
            template: template.clone(),
            policy: ctx.config.fair_policy(),
            caps: ctx.config.inflight_caps(),
            stage: Stage::Llm,
            label: label.to_owned(),
        })
    };
    let window = ctx.config.scheduling.window;
    let stop = CancellationToken::new();
    // Routes without limits share one set of flows, laned by route.
    let mut unlimited = pull(work.clone(), "llm", window);
    unlimited.flows = Some(flows(subjects.llm_flows(), "llm"));
    let mut sources = vec![legacy, unlimited];
    // Each limited route has flows of its own behind its gate.
    let limits = Limits::open(&ctx.bus).await?;
    let mut limiters = HashMap::new();
    for (name, route_limits) in limited_routes(&ctx.config) {
        let limiter = limits.route(&name, route_limits);
        let gate: Arc<dyn Gate> = Arc::new(RouteGate {
            route: name.clone(),
            limiter: limiter.clone(),
            claims: Claims::open(&ctx.bus, &name, ctx.config.fair_policy(), stop.clone()).await?,
        });
        let mut limited = pull(work.clone(), "llm", window);
        limited.flows = Some(flows(subjects.limited_llm_flows(&name), &name));
        limited.gate = Some(gate.clone());
        sources.push(limited);
        // A route's consumer from before flows, if this installation has one: drained through
        // the same gate.
        let before = subjects.limited_llm_consumer(&name);
        if ctx.bus.consumer(&work, &before).await.is_ok() {
            let mut drain = pull(work.clone(), &before, window);
            drain.gate = Some(gate);
            sources.push(drain);
        }
        limiters.insert(name, limiter);
    }
    let budgets = Budgets::open(&ctx.bus).await?;
    let spend = Spend::new(
        budgets.clone(),
        budgets.watch().await?,
        ctx.config.budgets.clone(),
    );
    tokio::spawn(spend.clone().sweep(stop.clone()));
    let shared = Arc::new(llm::Shared {
        bus: ctx.bus.clone(),
        stop: stop.clone(),
        routes: ctx.routes.clone(),
        retry: RetryPolicy::new(config),
        config: config.clone(),
        max_deliver,
        #[cfg(feature = "faults")]
        faults: llm::Faults::new(&ctx.config.faults),
        jobs: JobStore::open(&ctx.bus).await?,
        limiters,
        cancels: Cancels::open(&ctx.bus).await?.watch().await?,
        spend,
        answered: Default::default(),
    });
    Ok(StageSpec {
        name: "llm",
        bus: ctx.bus.clone(),
        sources,
        routing: Routing::Idle,
        workers: config.workers,
        max_in_flight: config.workers,
        supervision: ctx.config.supervision.clone(),
        make_handler: Arc::new(move || llm::LlmWorker::new(shared.clone())),
        stop,
    })
}

pub fn evaluator(ctx: &Context) -> Result<StageSpec<evaluator::EvalWorker>, ActorsError> {
    let workers = ctx.config.evaluator.workers;
    let bus = ctx.bus.clone();
    let stop = CancellationToken::new();
    let handler_stop = stop.clone();
    let work = ctx.bus.subjects.stream("work");
    // Evaluation requests in fair order, a flow per band and tenant.
    let flows = fair_source(
        ctx,
        work.clone(),
        "evaluator",
        ctx.bus.subjects.evaluator_flows(),
        Stage::Evaluator,
    )?;
    Ok(StageSpec {
        name: "evaluator",
        bus: ctx.bus.clone(),
        sources: vec![
            // Requests a Chorus before flows published.
            pull(work, "evaluator", workers),
            flows,
        ],
        routing: Routing::Idle,
        workers,
        max_in_flight: workers,
        supervision: ctx.config.supervision.clone(),
        make_handler: Arc::new(move || {
            evaluator::EvalWorker::new(bus.clone(), handler_stop.clone())
        }),
        stop,
    })
}

pub fn persister(ctx: &Context, store: Store) -> StageSpec<persister::Persister> {
    let batch = ctx.config.persister.batch_size;
    let bus = ctx.bus.clone();
    // Two batches in flight: one being written while the next fills.
    let max_in_flight = batch * 2;
    let stop = CancellationToken::new();
    let handler_stop = stop.clone();
    StageSpec {
        name: "persister",
        bus: ctx.bus.clone(),
        sources: vec![
            pull(ctx.bus.subjects.jobs_stream(), "persister", max_in_flight),
            // Snapshots replayed from the DLQ.
            pull(ctx.bus.subjects.stream("work"), "persister", max_in_flight),
        ],
        routing: Routing::ByJob,
        workers: 1,
        max_in_flight,
        supervision: ctx.config.supervision.clone(),
        make_handler: Arc::new(move || {
            persister::Persister::new(bus.clone(), store.clone(), batch, handler_stop.clone())
        }),
        stop,
    }
}

/// The DLQ watcher, run by processes that run the orchestrator.
pub fn dlq_watcher(ctx: &Context) -> StageSpec<dlq_watcher::DlqWatcher> {
    const WORKERS: usize = 2;
    let bus = ctx.bus.clone();
    let stop = CancellationToken::new();
    let handler_stop = stop.clone();
    StageSpec {
        name: "dlq-watcher",
        bus: ctx.bus.clone(),
        sources: vec![pull(
            ctx.bus.subjects.stream("advisories"),
            "dlq-watcher",
            16,
        )],
        routing: Routing::Idle,
        workers: WORKERS,
        max_in_flight: 16,
        supervision: ctx.config.supervision.clone(),
        make_handler: Arc::new(move || {
            dlq_watcher::DlqWatcher::new(bus.clone(), handler_stop.clone())
        }),
        stop,
    }
}
