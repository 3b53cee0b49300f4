//! The llm role: makes the LLM call of one step and publishes its result.
//!
//! A call tries its route, then the route's fallbacks in order, each with in-process retries
//! (backoff with jitter, honouring `retry-after`) decided by the retry policy in `chorus-llm`, and
//! every attempt admitted by the route's limits shared across processes. When every route failed,
//! a retryable failure is NAKed with a growing delay (the failure policy's) and, on the consumer's
//! last delivery, dead-lettered with a failed step, so the job ends with the error; a permanent
//! one (bad request, auth) fails the step at once. While a call runs or waits its message is
//! touched, so its consumer keeps it alive. A redelivered call whose step is already settled does
//! not call the provider again.
//!
//! A paid call is never made twice because what follows it failed: the result's publish is
//! retried in place while NATS is unavailable (idempotent by its message id), and a result too
//! large for the bus fails the step with the reason instead.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_bus::BusError;

use bytes::Bytes;
use chorus_bus::cancels::CancelSet;
use chorus_bus::jobs::JobStore;
use chorus_bus::limits::RouteLimiter;
use chorus_bus::{Bus, Delivery};
use chorus_core::codec::{self, headers};
use chorus_core::config::LlmConfig;
use chorus_core::ids::{msg_id, now_millis};
use chorus_core::judge;
use chorus_core::messages::{Attempt, LlmCall, StepError, StepOutcome, StepOutput, StepResult};
use chorus_core::subjects::{EventKind, Stage};
use chorus_llm::retry::{Admission, Grant};
use chorus_llm::{
    Completion, CompletionRequest, Delta, DeltaSink, ErrorKind, LlmError, RetryPolicy, Route,
    Routes, seed_key, tokens,
};
use chorus_telemetry::names;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::dlq::{Failure, dead_letter};
use crate::policy::{self, GaveUp, Verdict};
use crate::spend::{Held, Spend};
use crate::stage::{Handler, Next};

#[cfg(feature = "faults")]
mod faults;
#[cfg(feature = "faults")]
pub use faults::Faults;

/// How often a running call touches its message, so its consumer keeps it alive.
const TOUCH_EVERY: Duration = Duration::from_secs(5);

pub struct Shared {
    pub bus: Bus,
    /// Cancelled when the stage drains.
    pub stop: CancellationToken,
    pub routes: Arc<Routes>,
    /// How one provider call is retried in process.
    pub retry: RetryPolicy,
    /// The redelivery delays of calls whose providers kept failing.
    pub config: LlmConfig,
    /// The consumer's max deliveries: the delivery that dead-letters instead of NAKing.
    pub max_deliver: u64,
    #[cfg(feature = "faults")]
    pub faults: Faults,
    /// For the check that a redelivered call's step is not already settled.
    pub jobs: JobStore,
    /// The shared limits of every limited route, by route name.
    pub limiters: HashMap<String, RouteLimiter>,
    /// Cancelled jobs and batches, checked before each call is sent.
    pub cancels: CancelSet,
    /// The spend budgets each attempt is held against.
    pub spend: Spend,
    /// The step results this process published lately.
    pub answered: Mutex<Answered>,
}

/// The step results a process published lately, by message id (the newest [`Answered::KEPT`]).
///
/// A call can come back after its result was published: its ack was lost with a consumer leader
/// (a node's crash, a lost quorum), so the new leader delivers it again — possibly before the
/// orchestrator has recorded the result in the job's state, where the check for redeliveries
/// looks. A call whose result this process published is acknowledged without calling the
/// provider again. (A redelivery that reaches another process in that moment is not caught here.)
#[derive(Default)]
pub struct Answered {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Answered {
    const KEPT: usize = 16_384;

    fn insert(&mut self, id: String) {
        if self.ids.insert(id.clone()) {
            self.order.push_back(id);
        }
        while self.order.len() > Self::KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
}

pub struct LlmWorker {
    shared: Arc<Shared>,
}

impl LlmWorker {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// The limits of the routes a call may use and the budgets it is charged to, as one
/// [`Admission`] for the retry policy.
struct Limited<'a> {
    shared: &'a Shared,
    call: &'a LlmCall,
    /// The gate already admitted the first request of the call's own route.
    gate_admitted: AtomicBool,
    /// Tokens reserved for the attempt in flight.
    reserved: AtomicU32,
    /// Money held for the attempt in flight.
    held: Mutex<Option<Held>>,
}

impl Admission for Limited<'_> {
    fn admit<'a>(
        &'a self,
        route: &'a Route,
        request: &'a CompletionRequest,
        _: u32,
    ) -> BoxFuture<'a, Result<Grant, LlmError>> {
        Box::pin(async move {
            self.admit_limits(route, request).await;
            let (grant, held) = self.shared.spend.reserve(self.call, route, request).await?;
            *self.held.lock().unwrap_or_else(|p| p.into_inner()) = held;
            Ok(grant)
        })
    }

    fn settled<'a>(
        &'a self,
        route: &'a Route,
        _: &'a CompletionRequest,
        result: &'a Result<Completion, LlmError>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(held) = held {
                let usage = result.as_ref().ok().map(|c| &c.usage);
                self.shared.spend.settled(&held, usage).await;
            }
            self.settle_limits(route, result).await;
        })
    }
}

impl Limited<'_> {
    /// Waits for `route`'s shared limits: its request rate, a pause, its token budget.
    async fn admit_limits(&self, route: &Route, request: &CompletionRequest) {
        let Some(limiter) = self.shared.limiters.get(&route.name) else {
            return;
        };
        // The gate admitted the first request earlier; a pause may have begun since.
        let admitted = if self.gate_admitted.swap(false, Ordering::SeqCst) {
            limiter.wait_pause().await
        } else {
            limiter.admit_request().await
        };
        if let Err(e) = admitted {
            tracing::warn!(route = %route.name, error = %e, "limits unavailable; calling anyway");
        }
        if limiter.limits().tpm.is_some() {
            let estimate = tokens::estimate(
                request,
                route.max_tokens.unwrap_or(tokens::DEFAULT_COMPLETION),
            );
            self.reserved.store(estimate, Ordering::SeqCst);
            if let Err(e) = limiter.reserve_tokens(estimate).await {
                tracing::warn!(route = %route.name, error = %e, "token budget unavailable; calling anyway");
            }
        }
    }

    /// Reports an attempt to `route`'s shared limits: the tokens it used, or a throttle.
    async fn settle_limits(&self, route: &Route, result: &Result<Completion, LlmError>) {
        let Some(limiter) = self.shared.limiters.get(&route.name) else {
            return;
        };
        match result {
            Ok(completion) => {
                let reserved = self.reserved.swap(0, Ordering::SeqCst);
                let _ = limiter
                    .reconcile_tokens(reserved, completion.usage.total())
                    .await;
            }
            Err(error) => {
                if let Some(wait) = error.retry_after
                    && matches!(error.kind, ErrorKind::RateLimited | ErrorKind::Overloaded)
                {
                    let until = now_millis() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                    tracing::info!(route = %route.name, ?wait, "provider throttled; pausing the route everywhere");
                    let _ = limiter.pause_until(until).await;
                }
            }
        }
    }
}

impl Handler for LlmWorker {
    async fn handle(&mut self, delivery: Delivery) -> Next {
        let shared = &self.shared;
        let kind = delivery.header(headers::TYPE);
        let call: LlmCall = match codec::decode(kind, delivery.payload()) {
            Ok(call) => call,
            Err(e) => {
                let failure = Failure::undecodable(e).on_route(delivery.header(headers::ROUTE));
                dead_letter(&shared.bus, Stage::Llm, delivery, failure, &shared.stop).await;
                return Next::Done;
            }
        };
        #[cfg(feature = "faults")]
        shared.faults.strike(&call.route);
        let started_at = now_millis();
        let delivered = delivery.info().delivered.max(1);
        let replays: u32 = delivery
            .header(headers::REPLAYS)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let result_id = msg_id::step_result(call.job_id, call.step, replays);
        let answered_here = shared
            .answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&result_id);
        if answered_here {
            tracing::debug!(job = %call.job_id, step = call.step, delivered, "call delivered again after this process published its result");
            let _ = delivery.ack().await;
            return Next::Done;
        }
        if delivered > 1 && replays == 0 && self.already_settled(&call).await {
            tracing::debug!(job = %call.job_id, step = call.step, "redelivered call already has its result");
            let _ = delivery.ack().await;
            return Next::Done;
        }

        if let Some(stopped) = self.stopped(&call) {
            let failed = StepResult {
                job_id: call.job_id,
                tenant: call.tenant.clone(),
                step: call.step,
                route: call.route.clone(),
                outcome: StepOutcome::Failed(StepError::from(&stopped)),
                attempts: 0,
                calls: Vec::new(),
                replays,
                started_at,
                finished_at: now_millis(),
            };
            self.settle(delivery, &failed, None).await;
            return Next::Done;
        }

        let admission = Limited {
            shared,
            call: &call,
            gate_admitted: AtomicBool::new(delivery.admitted()),
            reserved: AtomicU32::new(0),
            held: Mutex::new(None),
        };
        let attempt = {
            let attempt = self.answer(&call, delivered, &admission);
            tokio::pin!(attempt);
            let mut touch = tokio::time::interval(TOUCH_EVERY);
            loop {
                tokio::select! {
                    attempt = &mut attempt => break attempt,
                    _ = touch.tick() => delivery.touch(),
                }
            }
        };
        // Attempts of earlier deliveries are counted at the full in-process budget they spent.
        let earlier = (delivered as u32 - 1) * shared.retry.attempts();
        let attempts = earlier + u32::try_from(attempt.calls.len()).unwrap_or(u32::MAX);
        let retryable = attempt.retryable;
        let result = |outcome| StepResult {
            job_id: call.job_id,
            tenant: call.tenant.clone(),
            step: call.step,
            route: call.route.clone(),
            outcome,
            attempts,
            calls: attempt.calls.clone(),
            replays,
            started_at,
            finished_at: now_millis(),
        };
        match attempt.result {
            Ok(output) => {
                let answered = result(StepOutcome::Succeeded(output));
                self.settle(delivery, &answered, None).await;
            }
            Err(error) if retryable && delivered < shared.max_deliver => {
                let delay =
                    policy::provider_redelivery(&shared.config, delivered, error.retry_after);
                tracing::info!(route = %call.route, job = %call.job_id, step = call.step, delivered,
                    kind = %error.kind, ?delay, "call failed on every route; redelivering later");
                let _ = delivery.nak(Some(delay)).await;
            }
            Err(error) => {
                let failed = result(StepOutcome::Failed(StepError::from(&error)));
                // Out of deliveries: keep the message for ops; the step has failed.
                let kept = retryable.then(|| {
                    Failure::new(error.kind.as_str(), &error.message)
                        .on_route(Some(&call.route))
                        .after(attempts)
                });
                self.settle(delivery, &failed, kept).await;
            }
        }
        Next::Done
    }
}

/// The outcome of one delivery across the call's route and its fallbacks.
struct RoutesOutcome {
    /// The answer, or the last route's error.
    result: Result<StepOutput, LlmError>,
    /// Some route failed in a way a later delivery may not.
    retryable: bool,
    calls: Vec<Attempt>,
}

impl LlmWorker {
    /// Why the call must not be made at all: its job or batch was cancelled, or its deadline
    /// passed.
    fn stopped(&self, call: &LlmCall) -> Option<LlmError> {
        if let Some(reason) =
            self.shared
                .cancels
                .cancelled(&call.tenant, call.job_id, call.batch.as_deref())
        {
            return Some(LlmError::new(ErrorKind::Cancelled, reason));
        }
        let deadline = call.deadline.filter(|d| *d <= now_millis())?;
        let at = chrono::DateTime::from_timestamp_millis(deadline)
            .map_or_else(|| deadline.to_string(), |d| d.to_rfc3339());
        Some(LlmError::new(
            ErrorKind::DeadlineExceeded,
            format!("the job's deadline {at} passed before the call was made"),
        ))
    }

    /// The call's answer. A judge's answer must parse as a verdict: one that does not is asked
    /// for again, up to [`judge::TRIES`] times, and then fails the step (a permanent failure:
    /// the evaluation records the judge assertion as errored).
    async fn answer(
        &self,
        call: &LlmCall,
        delivered: u64,
        admission: &Limited<'_>,
    ) -> RoutesOutcome {
        let mut outcome = self.attempt_routes(call, delivered, 0, admission).await;
        if !call.judge {
            return outcome;
        }
        let mut tries = 1;
        loop {
            let problem = match &outcome.result {
                Ok(output) => match judge::parse_verdict(&output.text) {
                    Ok(_) => return outcome,
                    Err(problem) => problem,
                },
                Err(_) => return outcome,
            };
            if tries >= judge::TRIES {
                tracing::info!(job = %call.job_id, step = call.step, %problem, "judge never answered validly");
                outcome.result = Err(LlmError::new(
                    ErrorKind::InvalidJudgeAnswer,
                    format!("{problem} (asked {tries} times)"),
                ));
                outcome.retryable = false;
                return outcome;
            }
            tracing::debug!(job = %call.job_id, step = call.step, %problem, "judge answer invalid; asking again");
            let mut next = self.attempt_routes(call, delivered, tries, admission).await;
            next.calls.splice(0..0, outcome.calls);
            outcome = next;
            tries += 1;
        }
    }

    /// Tries the call's route, then each fallback, until one answers. A fallback is tried when the
    /// route before it failed permanently or ran out of in-process retries.
    async fn attempt_routes(
        &self,
        call: &LlmCall,
        delivered: u64,
        round: u32,
        admission: &Limited<'_>,
    ) -> RoutesOutcome {
        let shared = &self.shared;
        let mut calls = Vec::new();
        let mut names = vec![call.route.clone()];
        let mut last_error = None;
        let mut retryable = false;
        let mut index = 0;
        let deltas = call.stream.then(|| self.delta_sink(call));
        while let Some(name) = names.get(index).cloned() {
            index += 1;
            let route = match shared.routes.resolve(&name) {
                Ok(route) => route,
                Err(unknown) => {
                    last_error = Some(LlmError::from(unknown));
                    continue;
                }
            };
            if index == 1 {
                names.extend(route.fallbacks.iter().cloned());
            }
            // A fallback takes its own concurrency slot; the call's route got one at the gate.
            let _lease = match (index > 1, shared.limiters.get(&name)) {
                (true, Some(limiter)) => limiter.acquire_slot().await.unwrap_or_default(),
                _ => None,
            };
            if let Some(stopped) = self.stopped(call) {
                last_error = Some(stopped);
                retryable = false;
                break;
            }
            let mut request = route.request(
                call.messages.clone(),
                call.params.clone(),
                seed_key(call.job_id, call.step, delivered + u64::from(round) * 1000),
            );
            request.deltas = deltas.clone();
            let outcome = shared.retry.call(&route, &request, admission).await;
            record_calls(&route, &outcome.calls);
            calls.extend(outcome.calls);
            match outcome.result {
                Ok(completion) => {
                    let cost = route.cost(&completion.usage);
                    record_answer(&route, &completion, cost, index > 1);
                    let mut output =
                        completion.into_step_output(outcome.latency, &route.name, cost);
                    output.cut = outcome.cut;
                    return RoutesOutcome {
                        result: Ok(output),
                        retryable: false,
                        calls,
                    };
                }
                // A budget that cannot cover the call is not a failure a fallback can help.
                Err(error) if error.kind == ErrorKind::BudgetExceeded => {
                    last_error = Some(error);
                    retryable = false;
                    break;
                }
                Err(error) => {
                    if index < names.len() {
                        tracing::info!(route = %name, kind = %error.kind, next = %names[index],
                            "route failed; trying its fallback");
                    }
                    retryable |= error.is_retryable();
                    last_error = Some(error);
                }
            }
        }
        RoutesOutcome {
            result: Err(last_error
                .unwrap_or_else(|| LlmError::new(ErrorKind::NotFound, "no route to call"))),
            retryable,
            calls,
        }
    }

    /// Where a streamed call's text goes: core NATS messages on the job's answer stream, in
    /// order (a task forwards them, so the provider's read loop never waits on NATS). A begin is
    /// an empty message with `Chorus-Delta: begin`; text is the body. At most once: the edge
    /// streaming them reconciles with the stored answer at the end.
    fn delta_sink(&self, call: &LlmCall) -> DeltaSink {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
        let client = self.shared.bus.client.clone();
        let subject = self
            .shared
            .bus
            .subjects
            .answer_stream(&call.tenant, call.job_id);
        tokio::spawn(async move {
            while let Some(delta) = receiver.recv().await {
                let sent = match delta {
                    None => {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(headers::DELTA, "begin");
                        client
                            .publish_with_headers(subject.clone(), headers, Bytes::new())
                            .await
                    }
                    Some(text) => client.publish(subject.clone(), text.into()).await,
                };
                if sent.is_err() {
                    break;
                }
            }
        });
        DeltaSink::new(move |delta| {
            let _ = sender.send(match delta {
                Delta::Begin => None,
                Delta::Text(text) => Some(text.to_owned()),
            });
        })
    }

    /// Whether the job's state already records this step as settled (a redelivery after the
    /// result was published).
    async fn already_settled(&self, call: &LlmCall) -> bool {
        match self.shared.jobs.get(&call.tenant, call.job_id).await {
            Ok(Some((state, _))) => state
                .steps
                .get(call.step as usize)
                .is_some_and(|s| s.status.is_settled()),
            _ => false,
        }
    }

    /// Publishes the step's result, then acknowledges the call, or files it in the DLQ with
    /// `dead_letter`. The publish is retried in place while NATS is unavailable, so the provider
    /// is not called again; a result too large for the bus fails the step with the reason (and
    /// the call goes to the DLQ). A draining process gives the call back.
    async fn settle(&self, delivery: Delivery, result: &StepResult, keep: Option<Failure>) {
        let (bus, stop) = (&self.shared.bus, &self.shared.stop);
        let published = self.publish(&delivery, result).await;
        let (delivery, kept) = match published {
            Ok(()) => {
                let id = msg_id::step_result(result.job_id, result.step, result.replays);
                self.shared
                    .answered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id);
                (delivery, keep)
            }
            Err(gave_up) => {
                let Some((delivery, error)) = gave_up.give_back(delivery).await else {
                    return;
                };
                let failed = StepResult {
                    outcome: StepOutcome::Failed(StepError {
                        kind: policy::Classified::failure_kind(&error).to_owned(),
                        message: format!("the step's result cannot be carried on: {error}"),
                        retryable: false,
                        status: None,
                    }),
                    ..result.clone()
                };
                if let Err(GaveUp { verdict, .. }) = self.publish(&delivery, &failed).await {
                    let delay = match verdict {
                        Verdict::Redeliver(delay) => delay,
                        _ => policy::redelivery(delivery.info().delivered),
                    };
                    let _ = delivery.nak(Some(delay)).await;
                    return;
                }
                let failure = Failure::of(&error).on_route(Some(&result.route));
                (delivery, Some(failure))
            }
        };
        match kept {
            Some(failure) => dead_letter(bus, Stage::Llm, delivery, failure, stop).await,
            None => {
                let _ = delivery.ack().await;
            }
        }
    }

    /// Publishes a step result under the failure policy.
    async fn publish(
        &self,
        delivery: &Delivery,
        result: &StepResult,
    ) -> Result<(), GaveUp<BusError>> {
        let shared = &self.shared;
        let id = msg_id::step_result(result.job_id, result.step, result.replays);
        let message = super::event_message(
            &shared.bus,
            delivery,
            result.job_id,
            &result.tenant,
            EventKind::Step,
            &id,
            result,
        )
        .map_err(|error| GaveUp {
            error,
            verdict: Verdict::Fail,
        })?;
        let what = "publish a step result";
        policy::persist("llm", what, &[delivery], &shared.stop, || {
            let message = message.clone();
            async move {
                #[cfg(feature = "faults")]
                shared.faults.publish()?;
                shared.bus.publish_all(vec![message]).await
            }
        })
        .await?;
        super::ring_event(&shared.bus, &message).await;
        Ok(())
    }
}

fn record_calls(route: &Route, calls: &[Attempt]) {
    let label = route.label().to_owned();
    for call in calls {
        metrics::counter!(names::LLM_CALLS, "route" => label.clone(), "outcome" => call.outcome.clone()).increment(1);
        metrics::histogram!(names::LLM_CALL_SECONDS, "route" => label.clone())
            .record(call.latency_ms as f64 / 1000.0);
    }
    if calls.len() > 1 {
        metrics::counter!(names::LLM_RETRIES, "route" => label).increment(calls.len() as u64 - 1);
    }
}

fn record_answer(route: &Route, completion: &Completion, cost: Option<f64>, fallback: bool) {
    let label = route.label().to_owned();
    let usage = completion.usage;
    metrics::counter!(names::LLM_TOKENS, "route" => label.clone(), "kind" => "prompt")
        .increment(usage.prompt_tokens.into());
    metrics::counter!(names::LLM_TOKENS, "route" => label.clone(), "kind" => "completion")
        .increment(usage.completion_tokens.into());
    if let Some(cost) = cost {
        // Counters are integers, so cost counts millionths of a dollar.
        metrics::counter!(names::LLM_COST, "route" => label.clone())
            .increment((cost * 1e6).round() as u64);
    }
    if fallback {
        metrics::counter!(names::LLM_FALLBACKS, "route" => label).increment(1);
    }
}
