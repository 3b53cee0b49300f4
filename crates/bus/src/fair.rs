//! The fair pull loop: a stage's work split into flows, one per band, tenant (and lane), each
//! flow its own durable consumer, handed on in the order of [`Scheduler`].
//!
//! JetStream serves a consumer's messages in stream order and has no notion of whose they are,
//! so one consumer per stage would serve a 50,000-line batch before a call that arrived after it.
//! Here every flow (`<base>[.<lane>].<band>.<tenant>`, see [`FlowSubjects`]) has a durable
//! consumer made from the stage's template, so every pod sees the head of every flow, not only
//! what one FIFO gives it:
//!
//! - **Finding flows.** A publisher rings the flow's doorbell (core NATS, [`Bus::ring`]) as it
//!   publishes; every pod pulling the stage hears it and starts pulling the flow at once. A pass
//!   over the stream's subject counts every [`DISCOVER_EVERY`] finds flows whose doorbell was
//!   missed (a restart, a replay from the DLQ, another version). A flow found empty for [`PARK_AFTER`] requests in a row
//!   is dropped from the loop; its consumer removes itself from the server after
//!   [`FLOW_INACTIVE`] without pulls.
//! - **Holding little.** Each flow's window holds a few messages (`Pull::batch`), kept alive by
//!   the [`Holding`]: a tenant's backlog stays on the server, where every pod sees it, instead of
//!   in one pod's memory ahead of other tenants' work.
//! - **Choosing.** Each time the stage has room (a permit, and the gate's admission for a limited
//!   route) the scheduler picks among the flows' heads: the highest band first with the lower
//!   bands' guaranteed shares, then the tenant whose virtual start is earliest by estimated
//!   tokens (the `Chorus-Cost` header) over its weight. Inside a flow, the window hands out its
//!   best message (`Chorus-Priority`, then age), so a job's priority keeps its meaning among its
//!   tenant's own work.
//! - **Caps.** A tenant's cap on work fetched at a time (held or running) is its flows'
//!   consumers' `max_ack_pending`: the server enforces it across every pod.
//!
//! Stopping is as in [`crate::source`]: ask for nothing more, read the open requests to their
//! end (unless the connection is down: then nothing can come on them), then NAK everything held
//! so another pod takes it at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use chorus_core::Tenant;
use chorus_core::codec::headers;
use chorus_core::fair::{Band, Head, Policy, Scheduler};
use chorus_core::ids::now_millis;
use chorus_core::subjects::{Flow, FlowSubjects, Stage};
use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::definitions::ConsumerDef;
use crate::delivery::Holding;
use crate::source::{Pull, REQUEST_EXPIRES, Room, STOP_RECHECK, Window};
use crate::{Bus, BusError, BusErrorKind, Delivery};

/// How often a pod looks for flows with work whose doorbell it did not hear.
pub const DISCOVER_EVERY: Duration = Duration::from_secs(2);

/// How long a flow stays in the loop without work before it is dropped from it, until its
/// doorbell rings or discovery finds it again.
pub const PARK_IDLE: Duration = Duration::from_secs(60);

/// [`PARK_IDLE`] in empty pull requests in a row (each [`REQUEST_EXPIRES`] long).
pub const PARK_AFTER: u32 = (PARK_IDLE.as_millis() / REQUEST_EXPIRES.as_millis()) as u32;

/// A flow consumer no pod pulled for this long is removed by the server.
pub const FLOW_INACTIVE: Duration = Duration::from_secs(3600);

/// How long a flow's consumer may fail to be made or read before it is deleted and made anew. A
/// consumer created while its cluster was losing its quorum can stay without a leader after the
/// quorum is back (seen on nats-server 2.15: "JetStream system temporarily unavailable" for
/// minutes, every other asset healthy); the flow's messages would wait for ever behind it. Its
/// streams keep work-queue retention, so a new consumer is delivered everything not yet
/// acknowledged, which every stage takes idempotently.
pub const STALLED_AFTER: Duration = Duration::from_secs(30);

/// A stage's work split into flows, and how they share the stage.
#[derive(Clone, Debug)]
pub struct Flows {
    pub subjects: FlowSubjects,
    /// The consumer definition every flow's consumer is made from (name and filter replaced).
    pub template: ConsumerDef,
    pub policy: Policy,
    /// Tenants' caps on the messages of one flow fetched at a time across every pod (waiting
    /// at a gate or being worked on): the flow consumer's `max_ack_pending`.
    pub caps: HashMap<Tenant, u32>,
    /// The stage pulling the flows: the `stage` of `chorus_queue_wait_seconds`.
    pub stage: Stage,
    /// The `route` of `chorus_queue_wait_seconds` for messages without a `Chorus-Route` header.
    pub label: String,
}

impl Flows {
    /// The definition of `flow`'s consumer.
    fn consumer(&self, flow: &Flow) -> ConsumerDef {
        let mut def = self
            .template
            .derive(&self.subjects.consumer(flow), &self.subjects.filter(flow));
        def.fields.insert(
            "inactive_threshold".into(),
            Value::from(FLOW_INACTIVE.as_nanos() as u64),
        );
        if let Some(cap) = self.caps.get(&flow.tenant) {
            def.fields
                .insert("max_ack_pending".into(), Value::from(*cap));
        }
        def
    }
}

/// How often one process rings the same flow's doorbell at most. A ring only matters to a flow
/// no pod pulls, and a flow is parked only after a minute without work, so a flow rung within
/// the last second is being pulled.
pub const RING_EVERY: Duration = Duration::from_secs(1);

/// The doorbells a process rang lately, so it rings each at most once per [`RING_EVERY`].
#[derive(Debug, Default)]
pub struct Doorbells {
    rung: Mutex<HashMap<String, Instant>>,
}

impl Doorbells {
    /// Whether `subject`'s doorbell is due a ring, noting it as rung if so.
    fn due(&self, subject: &str) -> bool {
        let mut rung = self.rung.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if rung
            .get(subject)
            .is_some_and(|at| now.duration_since(*at) < RING_EVERY)
        {
            return false;
        }
        if rung.len() >= 4096 {
            rung.retain(|_, at| now.duration_since(*at) < RING_EVERY);
        }
        rung.insert(subject.to_owned(), now);
        true
    }
}

impl Bus {
    /// Rings the doorbell of the flow whose subject ([`FlowSubjects::subject`]) is `flow`, after
    /// publishing work there, at most once per [`RING_EVERY`]. Best effort (core NATS): a missed
    /// ring only delays a new flow until discovery finds it.
    pub async fn ring(&self, flow: &str) {
        if !self.doorbells.due(flow) {
            return;
        }
        let doorbell = self.subjects.doorbell(flow);
        if let Err(e) = self.client.publish(doorbell, bytes::Bytes::new()).await {
            tracing::debug!(error = %e, "doorbell not rung; discovery will find the flow");
        }
    }
}

/// One flow a pod pulls.
struct Pulling {
    consumer: PullConsumer,
    window: Window,
    requesting: bool,
    /// The open request brought something.
    fed: bool,
    /// Requests in a row that brought nothing.
    empty: u32,
}

type Arrival = (
    Flow,
    Option<Result<async_nats::jetstream::Message, BusError>>,
);

impl Bus {
    /// Pulls `flows` until `stop` is cancelled or `deliver` returns false; like [`Bus::pull`],
    /// with the order of [`Scheduler`] between flows (see the module's documentation).
    pub(crate) async fn pull_flows(
        &self,
        pull: &Pull,
        flows: &Flows,
        permits: Arc<Semaphore>,
        stop: CancellationToken,
        mut deliver: impl FnMut(Delivery) -> bool,
    ) -> Result<(), BusError> {
        let ack_wait = flows
            .template
            .fields
            .get("ack_wait")
            .and_then(Value::as_u64)
            .map_or(Duration::from_secs(30), Duration::from_nanos);
        let holding = Holding::new(self.client.clone(), ack_wait);
        let capacity = pull.batch.max(1);
        let mut scheduler = Scheduler::new(flows.policy.clone());
        let mut pulling: HashMap<Flow, Pulling> = HashMap::new();
        let mut stalled = Stalled::default();
        let mut requests: SelectAll<BoxStream<'static, Arrival>> = SelectAll::new();
        let doorbells = self.subjects.doorbell(&flows.subjects.heads());
        let mut doorbell = self
            .client
            .subscribe(doorbells.clone())
            .await
            .map_err(|e| {
                BusError::new(
                    format!("subscribe to {doorbells}"),
                    BusErrorKind::Unavailable,
                    e,
                )
            })?;
        let mut discover = tokio::time::interval(DISCOVER_EVERY);
        let mut stopping = false;
        let mut room = Room::new(pull, permits);
        loop {
            if !stopping
                && room.ready()
                && let Some((band, delivery)) = next(&mut scheduler, &mut pulling)
            {
                let waited = now_millis().saturating_sub(delivery.info().published);
                let route = delivery.header(headers::ROUTE).unwrap_or(&flows.label);
                metrics::histogram!(
                    chorus_telemetry::names::QUEUE_WAIT,
                    "stage" => flows.stage.as_str(),
                    "route" => route.to_owned(),
                    "band" => band.as_str(),
                )
                .record(waited as f64 / 1000.0);
                stopping = !deliver(room.fill(delivery));
                continue;
            }
            if !stopping {
                for (flow, state) in pulling.iter_mut() {
                    // Refilled once a quarter is free, so a backlogged flow's window is rarely
                    // empty when the scheduler looks (an empty one cannot be chosen).
                    let room = capacity - state.window.len();
                    if state.requesting || room * 4 < capacity {
                        continue;
                    }
                    match state
                        .consumer
                        .batch()
                        .max_messages(room)
                        .expires(REQUEST_EXPIRES)
                        .messages()
                        .await
                    {
                        Ok(batch) => {
                            state.requesting = true;
                            state.fed = false;
                            requests.push(arrivals(flow.clone(), batch));
                        }
                        Err(e) => {
                            tracing::warn!(consumer = %flows.subjects.consumer(flow), error = %e, "pull request failed; retrying");
                        }
                    }
                }
            }
            // Without a connection nothing can come on the open requests: stop at once.
            if stopping && (requests.is_empty() || !self.is_connected()) {
                for (_, state) in pulling.drain() {
                    state.window.release().await;
                }
                break;
            }
            let best = pulling
                .iter()
                .filter(|(_, state)| !state.window.is_empty())
                .map(|(flow, _)| flow.band)
                .min();
            if let Some(band) = best {
                room.waiting.set(band);
            }
            let waiting = best.is_some();
            tokio::select! {
                _ = stop.cancelled(), if !stopping => stopping = true,
                // An async block: select! builds every branch's future on each turn, enabled or
                // not, and a timer per message would be work on the hot path for nothing.
                () = async { tokio::time::sleep(STOP_RECHECK).await }, if stopping => {}
                made = room.make(&stop), if !stopping && room.wanted(waiting) => stopping = made?,
                // `None`: the last request's stream ended, and the set is empty now.
                arrival = requests.next(), if !requests.is_empty() => {
                    if let Some((flow, arrival)) = arrival {
                        arrived(flows, &holding, &mut pulling, flow, arrival);
                    }
                }
                // Requests to the server, each given up at a stop: one it does not answer (gone,
                // or electing a leader) must not hold up the stop for its timeout.
                Some(rung) = doorbell.next(), if !stopping => {
                    if let Some(flow) = flows.subjects.flow_of_head(&self.subject_of_doorbell(&rung.subject)) {
                        let started = self.start_pulling(&pull.stream, flows, flow, &mut pulling, &mut stalled);
                        stopping = stop.run_until_cancelled(started).await.is_none();
                    }
                }
                _ = discover.tick(), if !stopping => {
                    let found = self.flows_with_work(&pull.stream, flows);
                    for flow in stop.run_until_cancelled(found).await.unwrap_or_default() {
                        let started = self.start_pulling(&pull.stream, flows, flow, &mut pulling, &mut stalled);
                        if stop.run_until_cancelled(started).await.is_none() {
                            stopping = true;
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The flow subject a doorbell subject rings for.
    fn subject_of_doorbell(&self, doorbell: &str) -> String {
        let rest = doorbell
            .strip_prefix(self.subjects.prefix())
            .and_then(|rest| rest.strip_prefix(".doorbell."))
            .unwrap_or(doorbell);
        format!("{}.{rest}", self.subjects.prefix())
    }

    /// Flows with messages on the server (waiting, or delivered and not yet acknowledged).
    async fn flows_with_work(&self, stream: &str, flows: &Flows) -> Vec<Flow> {
        let found = async {
            let stream = self
                .js
                .get_stream_no_info(stream)
                .await
                .map_err(|e| BusError::request("find the stream of flows", e))?;
            let mut counts = stream
                .info_with_subjects(flows.subjects.all())
                .await
                .map_err(|e| BusError::request("count the flows' messages", e))?;
            let mut found = Vec::new();
            while let Some(entry) = counts.next().await {
                let (subject, count) =
                    entry.map_err(|e| BusError::request("count the flows' messages", e))?;
                if count > 0
                    && let Some(flow) = flows.subjects.flow(&subject)
                {
                    found.push(flow);
                }
            }
            Ok::<_, BusError>(found)
        };
        found.await.unwrap_or_else(|e| {
            tracing::warn!(flows = %flows.subjects.name(), error = %e, "flow discovery failed; retrying");
            Vec::new()
        })
    }

    /// Makes sure `flow`'s consumer exists and pulls it, if not already; deletes a consumer that
    /// has failed for [`STALLED_AFTER`] so the next attempt makes it anew.
    async fn start_pulling(
        &self,
        stream: &str,
        flows: &Flows,
        flow: Flow,
        pulling: &mut HashMap<Flow, Pulling>,
        stalled: &mut Stalled,
    ) {
        if let Some(state) = pulling.get_mut(&flow) {
            state.empty = 0;
            return;
        }
        let def = flows.consumer(&flow);
        let started = async {
            def.apply(self, stream).await.map_err(|e| {
                BusError::new("make a flow's consumer", BusErrorKind::Unavailable, e)
            })?;
            self.consumer(stream, def.name()).await
        };
        match started.await {
            Ok(consumer) => {
                stalled.recovered(&flow);
                tracing::debug!(consumer = %def.name(), "pulling a new flow");
                pulling.insert(
                    flow,
                    Pulling {
                        consumer,
                        window: Window::default(),
                        requesting: false,
                        fed: false,
                        empty: 0,
                    },
                );
            }
            Err(e) if stalled.failed(&flow) >= STALLED_AFTER => {
                tracing::warn!(consumer = %def.name(), error = %e, "a flow's consumer has failed for {STALLED_AFTER:?}; deleting it to make it anew (what it held unacknowledged is delivered again)");
                let deleted = async {
                    let what = "delete a stalled flow consumer";
                    let stream = self
                        .js
                        .get_stream_no_info(stream)
                        .await
                        .map_err(|e| BusError::new(what, BusErrorKind::Unavailable, e))?;
                    stream
                        .delete_consumer(def.name())
                        .await
                        .map_err(|e| BusError::new(what, BusErrorKind::Unavailable, e))?;
                    Ok::<_, BusError>(())
                };
                match deleted.await {
                    Ok(()) => stalled.recovered(&flow),
                    Err(e) => {
                        tracing::warn!(consumer = %def.name(), error = %e, "cannot delete a stalled flow consumer yet; discovery retries")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(consumer = %def.name(), error = %e, "cannot pull a flow yet; discovery retries")
            }
        }
    }
}

/// Flows whose consumer could not be made or read lately: since when they have failed.
#[derive(Default)]
struct Stalled(HashMap<Flow, (Instant, Instant)>);

impl Stalled {
    /// Notes a failure of `flow`'s consumer now; how long it has failed.
    fn failed(&mut self, flow: &Flow) -> Duration {
        self.failed_at(flow, Instant::now())
    }

    /// Failures further apart than half of [`STALLED_AFTER`] are not one stall (a failing attempt
    /// can itself take a request timeout, and discovery comes every [`DISCOVER_EVERY`]).
    fn failed_at(&mut self, flow: &Flow, now: Instant) -> Duration {
        let apart = STALLED_AFTER / 2;
        self.0
            .retain(|_, (_, last)| now.saturating_duration_since(*last) <= apart);
        let (since, last) = self.0.entry(flow.clone()).or_insert((now, now));
        *last = now;
        now.saturating_duration_since(*since)
    }

    fn recovered(&mut self, flow: &Flow) {
        self.0.remove(flow);
    }
}

/// The next message the scheduler chooses among the flows' heads, with its band.
fn next(
    scheduler: &mut Scheduler,
    pulling: &mut HashMap<Flow, Pulling>,
) -> Option<(Band, Delivery)> {
    let mut flows = Vec::new();
    let mut heads = Vec::new();
    for (flow, state) in pulling.iter() {
        if let Some(head) = state.window.peek() {
            heads.push(Head {
                band: flow.band,
                tenant: &flow.tenant,
                cost: cost(head),
            });
            flows.push(flow);
        }
    }
    let chosen = scheduler.pick(&heads)?;
    let flow = flows[chosen].clone();
    let delivery = pulling.get_mut(&flow)?.window.pop()?;
    Some((flow.band, delivery))
}

/// Takes what a flow's pull request brought: a message into its window, or the request's end
/// (after which a flow that stayed empty for [`PARK_AFTER`] requests is dropped from the loop).
fn arrived(
    flows: &Flows,
    holding: &Holding,
    pulling: &mut HashMap<Flow, Pulling>,
    flow: Flow,
    arrival: Option<Result<async_nats::jetstream::Message, BusError>>,
) {
    let Some(state) = pulling.get_mut(&flow) else {
        return;
    };
    match arrival {
        Some(Ok(message)) => {
            state.fed = true;
            state.empty = 0;
            state.window.push(Delivery::new(message, holding));
        }
        Some(Err(e)) => {
            tracing::warn!(consumer = %flows.subjects.consumer(&flow), error = %e, "pull failed; retrying");
        }
        None => {
            state.requesting = false;
            if !state.fed {
                state.empty += 1;
            }
            if state.empty >= PARK_AFTER && state.window.is_empty() {
                pulling.remove(&flow);
            }
        }
    }
}

/// A message's estimated tokens, from its `Chorus-Cost` header (1 without one).
fn cost(delivery: &Delivery) -> u32 {
    delivery
        .header(headers::COST)
        .and_then(|cost| cost.parse().ok())
        .unwrap_or(1)
}

/// A pull request's messages tagged with their flow, then `None` when the request is over.
fn arrivals(
    flow: Flow,
    batch: async_nats::jetstream::consumer::pull::Batch,
) -> BoxStream<'static, Arrival> {
    let end = flow.clone();
    batch
        .map(move |message| {
            let message = message.map_err(|e| BusError::boxed("pull a flow", e));
            (flow.clone(), Some(message))
        })
        .chain(futures::stream::once(async move { (end, None) }))
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(tenant: &str) -> Flow {
        Flow {
            lane: None,
            band: Band::Standard,
            tenant: Tenant::new(tenant).expect("tenant"),
        }
    }

    #[test]
    fn a_stall_is_failures_close_together_until_the_consumer_is_back() {
        let (a, b) = (flow("a"), flow("b"));
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut stalled = Stalled::default();
        // Failing every 10 s (attempts that time out): one stall, as long as it lasts.
        for secs in [0, 10, 20] {
            assert_eq!(stalled.failed_at(&a, at(secs)), Duration::from_secs(secs));
        }
        assert!(stalled.failed_at(&a, at(30)) >= STALLED_AFTER);
        // Back: a later failure starts a new stall.
        stalled.recovered(&a);
        assert_eq!(stalled.failed_at(&a, at(31)), Duration::ZERO);
        // Failures further apart than half the bound are not one stall; each flow its own.
        assert_eq!(stalled.failed_at(&b, at(31)), Duration::ZERO);
        assert_eq!(stalled.failed_at(&a, at(50)), Duration::ZERO);
        assert_eq!(stalled.failed_at(&b, at(55)), Duration::ZERO);
    }
}
