//! A stage: one role's consumers, its pool of worker actors, and the supervisor between them.
//!
//! ```text
//! StageSupervisor ──┬── ConsumerActor (one per durable consumer; pulls, within the in-flight budget)
//!                   └── WorkerActor × n (each owns a Handler; one message at a time)
//! ```
//! Consumers hand deliveries to the supervisor, which routes them: to any idle worker
//! ([`Routing::Idle`], for slow independent work such as LLM calls) or always to the same worker for
//! the same job ([`Routing::ByJob`], so one job's events never race each other inside a process).
//! The supervisor restarts a failed child within its [`Intensity`] and fails past it. A delivery held
//! by a worker that panics is NAKed as it is dropped, so it is redelivered at once. Draining
//! cancels the stage's `stop` token, which ends the failure policy's retries in place
//! ([`crate::policy::persist`]) so what a worker holds goes back at once.

use std::collections::VecDeque;
use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_bus::delivery::release;
use chorus_bus::source::Pull;
use chorus_bus::{Bus, BusError, Delivery};
use chorus_core::codec::headers;
use chorus_core::config::SupervisionConfig;
use chorus_core::trace::TraceContext;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::supervision::Intensity;

/// What a role does with each message. One instance per worker actor: it may keep state (caches,
/// buffers) without sharing it.
pub trait Handler: Send + 'static {
    /// Handles and settles one delivery.
    fn handle(&mut self, delivery: Delivery) -> impl Future<Output = Next> + Send;

    /// Writes out anything buffered; called after [`Next::FlushSoon`] once the worker's queued
    /// messages are handled, and when the worker stops.
    fn flush(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Done,
    /// The handler buffered the delivery; flush once the messages already queued are in.
    FlushSoon,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    Idle,
    ByJob,
}

pub type MakeHandler<H> = Arc<dyn Fn() -> H + Send + Sync>;

pub struct StageSpec<H> {
    pub name: &'static str,
    pub bus: Bus,
    pub sources: Vec<Pull>,
    pub routing: Routing,
    pub workers: usize,
    pub max_in_flight: usize,
    pub supervision: SupervisionConfig,
    pub make_handler: MakeHandler<H>,
    /// Cancelled when the stage drains; the handlers watch it (through what `make_handler` gives
    /// them) to stop retrying in place.
    pub stop: CancellationToken,
}

// ractor boxes every message, so a large variant costs no mailbox space; boxing it again would
// only add an allocation per delivery.
#[allow(clippy::large_enum_variant)]
pub enum StageMsg {
    Incoming(Delivery),
    Idle(usize),
    /// Stop pulling, let the workers finish what they hold, then reply.
    Drain(RpcReplyPort<()>),
}

pub struct StageSupervisor<H>(PhantomData<fn() -> H>);

impl<H> Default for StageSupervisor<H> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

pub struct StageState<H> {
    spec: StageSpec<H>,
    permits: Arc<Semaphore>,
    consumers: Vec<ActorRef<ConsumerMsg>>,
    workers: Vec<ActorRef<WorkerMsg>>,
    idle: VecDeque<usize>,
    backlog: VecDeque<Delivery>,
    intensity: Intensity,
    draining: bool,
}

impl<H: Handler> StageSupervisor<H> {
    async fn spawn_consumer(
        myself: &ActorRef<StageMsg>,
        state: &StageState<H>,
        source: usize,
    ) -> Result<ActorRef<ConsumerMsg>, ActorProcessingErr> {
        let args = ConsumerArgs {
            name: state.spec.name,
            bus: state.spec.bus.clone(),
            pull: state.spec.sources[source].clone(),
            permits: state.permits.clone(),
            stage: myself.clone(),
        };
        let (consumer, _) =
            Actor::spawn_linked(None, ConsumerActor, args, myself.get_cell()).await?;
        Ok(consumer)
    }

    async fn spawn_worker(
        myself: &ActorRef<StageMsg>,
        state: &StageState<H>,
        index: usize,
    ) -> Result<ActorRef<WorkerMsg>, ActorProcessingErr> {
        let args = WorkerArgs {
            name: state.spec.name,
            index,
            stage: myself.clone(),
            handler: (state.spec.make_handler)(),
            report_idle: state.spec.routing == Routing::Idle,
        };
        let (worker, _) =
            Actor::spawn_linked(None, WorkerActor::<H>::default(), args, myself.get_cell()).await?;
        Ok(worker)
    }

    fn route(state: &mut StageState<H>, delivery: Delivery) {
        let index = match state.spec.routing {
            Routing::Idle => match state.idle.pop_front() {
                Some(index) => index,
                None => return state.backlog.push_back(delivery),
            },
            Routing::ByJob => {
                let mut hasher = DefaultHasher::new();
                match delivery
                    .header(headers::JOB)
                    .or(delivery.header(headers::MSG_ID))
                {
                    Some(key) => key.hash(&mut hasher),
                    None => delivery.info().stream_sequence.hash(&mut hasher),
                }
                (hasher.finish() % state.workers.len() as u64) as usize
            }
        };
        // A worker that died since it was chosen drops the delivery, which NAKs it.
        let _ = state.workers[index].cast(WorkerMsg::Work(delivery));
    }
}

impl<H: Handler> Actor for StageSupervisor<H> {
    type Msg = StageMsg;
    type State = StageState<H>;
    type Arguments = StageSpec<H>;

    async fn pre_start(
        &self,
        myself: ActorRef<StageMsg>,
        spec: StageSpec<H>,
    ) -> Result<Self::State, ActorProcessingErr> {
        crate::policy::register(spec.name);
        let mut state = StageState {
            permits: Arc::new(Semaphore::new(spec.max_in_flight)),
            intensity: Intensity::new(&spec.supervision),
            consumers: Vec::new(),
            workers: Vec::with_capacity(spec.workers),
            idle: VecDeque::with_capacity(spec.workers),
            backlog: VecDeque::new(),
            draining: false,
            spec,
        };
        for index in 0..state.spec.workers {
            let worker = Self::spawn_worker(&myself, &state, index).await?;
            state.workers.push(worker);
            state.idle.push_back(index);
        }
        for source in 0..state.spec.sources.len() {
            let consumer = Self::spawn_consumer(&myself, &state, source).await?;
            state.consumers.push(consumer);
        }
        tracing::info!(
            stage = state.spec.name,
            workers = state.spec.workers,
            "stage started"
        );
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<StageMsg>,
        message: StageMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            StageMsg::Incoming(delivery) => match state.draining {
                false => Self::route(state, delivery),
                true => release([delivery]).await,
            },
            StageMsg::Idle(index) => match state.backlog.pop_front() {
                Some(delivery) if !state.draining => {
                    let _ = state.workers[index].cast(WorkerMsg::Work(delivery));
                }
                _ => state.idle.push_back(index),
            },
            StageMsg::Drain(reply) => {
                state.draining = true;
                state.spec.stop.cancel();
                // Together: each reads its open pull request to its end (up to 5 s), and a
                // stage has several (the llm stage's flows, the orchestrator's two streams).
                let stops = state.consumers.drain(..).map(|consumer| async move {
                    let _ = consumer
                        .stop_and_wait(None, Some(Duration::from_secs(5)))
                        .await;
                });
                futures::future::join_all(stops).await;
                release(state.backlog.drain(..)).await;
                let workers = state.workers.clone();
                let timeout = state.spec.supervision.drain_timeout;
                let name = state.spec.name;
                tokio::spawn(async move {
                    let waits = workers.iter().map(|w| w.drain_and_wait(Some(timeout)));
                    let unfinished = futures::future::join_all(waits)
                        .await
                        .into_iter()
                        .filter(Result::is_err)
                        .count();
                    if unfinished > 0 {
                        tracing::warn!(
                            stage = name,
                            unfinished,
                            "workers still busy after the drain timeout"
                        );
                    }
                    let _ = reply.send(());
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<StageMsg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) if !state.draining => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        if state.draining {
            return Ok(());
        }
        let name = state.spec.name;
        let id = cell.get_id();
        tracing::error!(stage = name, actor = %id, %reason, "child failed; restarting");
        if !state.intensity.allow(Instant::now()) {
            return Err(format!(
                "{name}: more than {} restarts within {:?}; giving up (last failure: {reason})",
                state.spec.supervision.max_restarts, state.spec.supervision.window
            )
            .into());
        }
        if let Some(index) = state.workers.iter().position(|w| w.get_id() == id) {
            state.workers[index] = Self::spawn_worker(&myself, state, index).await?;
            if state.spec.routing == Routing::Idle {
                match state.backlog.pop_front() {
                    Some(delivery) => {
                        let _ = state.workers[index].cast(WorkerMsg::Work(delivery));
                    }
                    None => state.idle.push_back(index),
                }
            }
        } else if let Some(index) = state.consumers.iter().position(|c| c.get_id() == id) {
            state.consumers[index] = Self::spawn_consumer(&myself, state, index).await?;
        }
        Ok(())
    }
}

// --- consumers ---------------------------------------------------------------------------------

pub struct ConsumerActor;

pub struct ConsumerArgs {
    /// The stage's name, under which its deliveries are counted.
    name: &'static str,
    bus: Bus,
    pull: Pull,
    permits: Arc<Semaphore>,
    stage: ActorRef<StageMsg>,
}

pub struct ConsumerState {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

pub enum ConsumerMsg {
    /// The pull loop ended by itself: an error, or a stream that went away.
    Ended(PullEnded),
}

/// Why a consumer's pull loop ended without being asked to: the consumer actor fails with it.
#[derive(Debug, thiserror::Error)]
pub enum PullEnded {
    #[error("pull from {consumer} ended")]
    Ended { consumer: String },
    #[error("pull from {consumer} failed: {source}")]
    Failed {
        consumer: String,
        #[source]
        source: BusError,
    },
}

impl Actor for ConsumerActor {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConsumerMsg>,
        args: ConsumerArgs,
    ) -> Result<ConsumerState, ActorProcessingErr> {
        // Fail start-up (and so the stage) when the consumer does not exist.
        args.bus
            .consumer(&args.pull.stream, &args.pull.consumer)
            .await?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let (stage, name) = (args.stage, args.name);
            let result = args
                .bus
                .pull(&args.pull, args.permits, token.clone(), |delivery| {
                    stage
                        .cast(StageMsg::Incoming(delivery.counted(name)))
                        .is_ok()
                })
                .await;
            if !token.is_cancelled() {
                let consumer = args.pull.consumer.clone();
                let ended = match result {
                    Ok(()) => PullEnded::Ended { consumer },
                    Err(source) => PullEnded::Failed { consumer, source },
                };
                let _ = myself.cast(ConsumerMsg::Ended(ended));
            }
        });
        Ok(ConsumerState {
            stop,
            task: Some(task),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<ConsumerMsg>,
        message: ConsumerMsg,
        _: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConsumerMsg::Ended(ended) => Err(ended.into()),
        }
    }

    async fn post_stop(
        &self,
        _: ActorRef<ConsumerMsg>,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop.cancel();
        if let Some(task) = state.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        Ok(())
    }
}

// --- workers -----------------------------------------------------------------------------------

/// The span of handling one message: a child of the span that published it (its
/// `traceparent`), with the job and trace ids every log line inside carries.
fn message_span(stage: &'static str, delivery: &Delivery) -> tracing::Span {
    let parent = delivery
        .header(headers::TRACEPARENT)
        .and_then(TraceContext::parse);
    let span = tracing::info_span!(
        "message",
        otel.name = stage,
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = delivery.subject(),
        job = delivery.header(headers::JOB),
        trace_id = tracing::field::Empty,
    );
    if let Some(parent) = &parent {
        span.record("trace_id", parent.trace_id_hex());
    }
    chorus_telemetry::trace::set_parent(&span, parent.as_ref());
    span
}

pub struct WorkerActor<H>(PhantomData<fn() -> H>);

impl<H> Default for WorkerActor<H> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

pub struct WorkerArgs<H> {
    /// The stage's name, on each message's span.
    name: &'static str,
    index: usize,
    stage: ActorRef<StageMsg>,
    handler: H,
    report_idle: bool,
}

pub struct WorkerState<H> {
    args: WorkerArgs<H>,
    flush_pending: bool,
}

#[allow(clippy::large_enum_variant)] // as for `StageMsg`
pub enum WorkerMsg {
    Work(Delivery),
    Flush,
}

impl<H: Handler> Actor for WorkerActor<H> {
    type Msg = WorkerMsg;
    type State = WorkerState<H>;
    type Arguments = WorkerArgs<H>;

    async fn pre_start(
        &self,
        _: ActorRef<WorkerMsg>,
        args: WorkerArgs<H>,
    ) -> Result<WorkerState<H>, ActorProcessingErr> {
        Ok(WorkerState {
            args,
            flush_pending: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        message: WorkerMsg,
        state: &mut WorkerState<H>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Work(delivery) => {
                let span = message_span(state.args.name, &delivery);
                delivery.touch();
                let handled = async {
                    let next = state.args.handler.handle(delivery).await;
                    tracing::debug!(?next, "message handled");
                    next
                };
                // On the heap, allocated per message: a handler's future is large (the llm
                // role's about 11 KiB), and inline it would make every idle worker that large
                // for as long as it waits (`llm.workers` of them; see README, "chorus bench
                // inflight").
                let handled = Box::pin(handled.instrument(span));
                if handled.await == Next::FlushSoon && !state.flush_pending {
                    state.flush_pending = true;
                    myself.cast(WorkerMsg::Flush)?;
                }
                if state.args.report_idle {
                    let _ = state.args.stage.cast(StageMsg::Idle(state.args.index));
                }
            }
            WorkerMsg::Flush => {
                state.flush_pending = false;
                state.args.handler.flush().await;
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<WorkerMsg>,
        state: &mut WorkerState<H>,
    ) -> Result<(), ActorProcessingErr> {
        state.args.handler.flush().await;
        Ok(())
    }
}
