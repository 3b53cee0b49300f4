//! The one place retries of the LLM stage are decided.
//!
//! Two levels (DESIGN.md §5): [`RetryPolicy::call`] retries retryable errors in process with
//! jittered exponential backoff, each attempt bounded by the route's timeout; once that budget is
//! spent the caller NAKs the message with [`RetryPolicy::redelivery_delay`], and JetStream's max
//! deliveries send it to the DLQ in the end. A provider's `retry-after` is a floor for both delays.
//! A `retry-after` longer than `retry_max_delay` ends the in-process attempts at once: the wait is
//! better spent as a delayed redelivery than as a worker sleeping on the message.
//!
//! Every attempt passes through an [`Admission`] (the shared rate limits of its route, the
//! budgets it is charged to) before it is sent, and reports back after, and is recorded as an
//! [`Attempt`] for the step's history. An admission may refuse an attempt (it is then not sent)
//! or [`Grant`] it fewer completion tokens than it asked for: the attempt is sent with that
//! `max_tokens`, and a streamed answer is metered as it arrives and cut there, ending with
//! `finish_reason: "length"` and the reason in [`CallOutcome::cut`].

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chorus_core::config::LlmConfig;
use chorus_core::ids::now_millis;
use chorus_core::messages::Attempt;
use futures::future::BoxFuture;
use tokio::time::Instant;
use tracing::Instrument;

use chorus_core::messages::Usage;

use crate::error::LlmError;
use crate::provider::{Completion, CompletionRequest, Delta, DeltaSink, stable_hash};
use crate::routes::Route;
use crate::tokens;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    attempts: u32,
    backoff: ExponentialBuilder,
    max_delay: Duration,
    nak_delay: Duration,
    nak_max_delay: Duration,
}

/// What [`RetryPolicy::call`] ended with.
#[derive(Clone, Debug, PartialEq)]
pub struct CallOutcome {
    pub result: Result<Completion, LlmError>,
    /// Every attempt, oldest first.
    pub calls: Vec<Attempt>,
    /// Duration of the last attempt.
    pub latency: Duration,
    /// Why the answer stops short: its attempt was granted fewer tokens than it asked for, and
    /// used them all.
    pub cut: Option<String>,
}

impl CallOutcome {
    /// Provider calls made, first try included.
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.calls.len()).unwrap_or(u32::MAX)
    }
}

/// What an admitted attempt may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The completion tokens the attempt may produce, sent as its `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Set when `max_tokens` is less than the call asked for: why. An answer that reaches it is
    /// cut there (a stream is metered as it arrives) and reports this reason.
    pub cut: Option<String>,
}

/// What a call must pass before each attempt and report to after it: the route's limits shared
/// by every process (rate, tokens, a pause after a 429), and the budgets it is charged to.
pub trait Admission: Send + Sync {
    /// Waits until `route` may be called with `request` (attempt number `attempt`, from 1);
    /// an error refuses the attempt, which is then not sent (and retried only if the error is
    /// retryable).
    fn admit<'a>(
        &'a self,
        route: &'a Route,
        request: &'a CompletionRequest,
        attempt: u32,
    ) -> BoxFuture<'a, Result<Grant, LlmError>>;

    /// Reports the attempt's result: tokens actually used, or a throttle with its `retry-after`.
    fn settled<'a>(
        &'a self,
        route: &'a Route,
        request: &'a CompletionRequest,
        result: &'a Result<Completion, LlmError>,
    ) -> BoxFuture<'a, ()>;
}

/// No limits: every attempt goes at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unlimited;

impl Admission for Unlimited {
    fn admit<'a>(
        &'a self,
        _: &'a Route,
        _: &'a CompletionRequest,
        _: u32,
    ) -> BoxFuture<'a, Result<Grant, LlmError>> {
        Box::pin(async { Ok(Grant::default()) })
    }

    fn settled<'a>(
        &'a self,
        _: &'a Route,
        _: &'a CompletionRequest,
        _: &'a Result<Completion, LlmError>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

impl RetryPolicy {
    pub fn new(config: &LlmConfig) -> Self {
        let attempts = config.retry_attempts.max(1);
        let backoff = ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(config.retry_min_delay)
            .with_max_delay(config.retry_max_delay)
            .with_max_times(usize::try_from(attempts - 1).unwrap_or(usize::MAX));
        Self {
            attempts,
            backoff,
            max_delay: config.retry_max_delay,
            nak_delay: config.nak_delay,
            nak_max_delay: config.nak_max_delay,
        }
    }

    /// Provider calls per delivery, first try included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Calls `route` until it succeeds, fails permanently, or the attempts are spent. Attempt `n`
    /// is admitted by `admission` first and sent with a seed key derived from `request.seed_key`
    /// and `n`.
    pub async fn call(
        &self,
        route: &Route,
        request: &CompletionRequest,
        admission: &dyn Admission,
    ) -> CallOutcome {
        // Atomics and a mutex (never held across an await) keep the future `Send`.
        let attempts = AtomicU32::new(0);
        let calls = Mutex::new(Vec::new());
        let cut = Mutex::new(None);
        let attempt = || {
            let n = attempts.fetch_add(1, Relaxed) + 1;
            let mut request = CompletionRequest {
                seed_key: attempt_seed(request.seed_key, n),
                ..request.clone()
            };
            let (calls, cut) = (&calls, &cut);
            async move {
                let grant = admission.admit(route, &request, n).await?;
                if let Some(max_tokens) = grant.max_tokens {
                    request.params.max_tokens = Some(max_tokens);
                }
                let meter = match (&grant.cut, grant.max_tokens) {
                    (Some(_), Some(limit)) => Meter::wrap(&mut request, limit),
                    _ => None,
                };
                let span = call_span(route, &request, n);
                let (started, started_at) = (Instant::now(), now_millis());
                let call = tokio::time::timeout(route.timeout, route.provider.complete(&request))
                    .instrument(span.clone());
                let result = match &meter {
                    None => call.await,
                    Some(meter) => tokio::select! {
                        result = call => result,
                        () = meter.reached() => Ok(Ok(meter.completion(&request))),
                    },
                }
                .unwrap_or_else(|_| Err(LlmError::timeout(route.timeout)))
                .map(|completion| with_usage(completion, &request));
                let used_all = result
                    .as_ref()
                    .is_ok_and(|c| c.finish_reason.as_deref() == Some("length"));
                if let Ok(mut cut) = cut.lock() {
                    *cut = grant.cut.filter(|_| used_all);
                }
                let latency = started.elapsed();
                record_outcome(&span, &result);
                admission.settled(route, &request, &result).await;
                let record = record(route, started_at, latency, &result);
                if let Ok(mut calls) = calls.lock() {
                    calls.push((record, latency));
                }
                result
            }
        };
        let result = attempt
            .retry(self.backoff)
            .sleep(tokio::time::sleep)
            .when(LlmError::is_retryable)
            .adjust(|error, delay| match error.retry_after {
                Some(wait) if wait > self.max_delay => None,
                Some(wait) => delay.map(|delay| delay.max(wait)),
                None => delay,
            })
            .notify(|error, delay| {
                tracing::debug!(route = %route.name, attempt = attempts.load(Relaxed), kind = %error.kind,
                    ?delay, "retrying provider call");
            })
            .await;
        let calls = calls.into_inner().unwrap_or_default();
        CallOutcome {
            cut: cut
                .into_inner()
                .unwrap_or_default()
                .filter(|_| result.is_ok()),
            result,
            latency: calls
                .last()
                .map(|(_, latency)| *latency)
                .unwrap_or_default(),
            calls: calls.into_iter().map(|(record, _)| record).collect(),
        }
    }

    /// How long to NAK a message whose in-process attempts are spent, for its `delivered`-th
    /// delivery (from 1): `nak_delay` doubling per delivery up to `nak_max_delay`, and never
    /// shorter than the provider's `retry-after`.
    pub fn redelivery_delay(&self, delivered: u64, error: &LlmError) -> Duration {
        let doublings = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX);
        let backoff = self
            .nak_delay
            .saturating_mul(2_u32.saturating_pow(doublings))
            .min(self.nak_max_delay);
        backoff.max(error.retry_after.unwrap_or_default())
    }
}

/// `completion`, with its usage estimated if its provider reported none (some do not for a
/// stream): an answer is never counted as free.
fn with_usage(mut completion: Completion, request: &CompletionRequest) -> Completion {
    let answered = !completion.text.is_empty() || completion.tool_calls.is_some();
    if completion.usage == Usage::default() && answered {
        let calls = completion.tool_calls.as_ref().map(ToString::to_string);
        completion.usage = Usage {
            prompt_tokens: tokens::prompt(&request.messages),
            completion_tokens: tokens::count(&completion.text)
                + calls.as_deref().map_or(0, tokens::count),
        };
    }
    completion
}

/// Counts a streamed answer's tokens as they arrive, and stops it at its grant: the text that
/// would cross it is neither forwarded nor kept.
struct Meter {
    state: Arc<Mutex<Metered>>,
    reached: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct Metered {
    text: String,
    tokens: u32,
    stopped: bool,
}

impl Meter {
    /// Puts a meter between a streaming request and its sink; `None` for a call that does not
    /// stream.
    fn wrap(request: &mut CompletionRequest, limit: u32) -> Option<Self> {
        let sink = request.stream_to()?.clone();
        let state: Arc<Mutex<Metered>> = Arc::default();
        let reached = Arc::new(tokio::sync::Notify::new());
        let (metered, notify) = (Arc::clone(&state), Arc::clone(&reached));
        request.deltas = Some(DeltaSink::new(move |delta| {
            let Ok(mut state) = metered.lock() else {
                return;
            };
            match delta {
                Delta::Begin => {
                    *state = Metered::default();
                    sink.send(delta);
                }
                Delta::Text(_) if state.stopped => {}
                Delta::Text(text) => {
                    let tokens = state.tokens.saturating_add(tokens::count(text));
                    if tokens > limit {
                        state.stopped = true;
                        notify.notify_one();
                    } else {
                        state.tokens = tokens;
                        state.text.push_str(text);
                        sink.send(delta);
                    }
                }
            }
        }));
        Some(Self { state, reached })
    }

    /// Once the answer reached the grant.
    async fn reached(&self) {
        self.reached.notified().await;
    }

    /// The answer as far as it went: what was forwarded, its tokens as counted.
    fn completion(&self, request: &CompletionRequest) -> Completion {
        let state = self.state.lock().map(|s| (s.text.clone(), s.tokens));
        let (text, completion_tokens) = state.unwrap_or_default();
        Completion {
            text,
            usage: Usage {
                prompt_tokens: tokens::prompt(&request.messages),
                completion_tokens,
            },
            finish_reason: Some("length".into()),
            tool_calls: None,
        }
    }
}

impl From<&LlmConfig> for RetryPolicy {
    fn from(config: &LlmConfig) -> Self {
        Self::new(config)
    }
}

fn record(
    route: &Route,
    started_at: i64,
    latency: Duration,
    result: &Result<Completion, LlmError>,
) -> Attempt {
    let (outcome, status, message) = match result {
        Ok(_) => ("ok".to_owned(), None, None),
        Err(e) => (
            e.kind.as_str().to_owned(),
            e.status,
            Some(e.message.clone()),
        ),
    };
    Attempt {
        route: route.name.clone(),
        started_at,
        latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        outcome,
        status,
        message,
    }
}

/// The span of one provider call, in the OpenTelemetry GenAI conventions. The prompt goes on
/// it only where capturing content is switched on.
fn call_span(route: &Route, request: &CompletionRequest, attempt: u32) -> tracing::Span {
    let provider = route.provider.name();
    let span = tracing::info_span!(
        "gen_ai",
        otel.name = format!("chat {}", route.model),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.system = provider,
        gen_ai.request.model = %route.model,
        gen_ai.request.temperature = request.params.temperature,
        gen_ai.request.top_p = request.params.top_p,
        gen_ai.request.max_tokens = request.params.max_tokens,
        gen_ai.request.seed = request.params.seed,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.response.finish_reasons = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        gen_ai.input.messages = tracing::field::Empty,
        gen_ai.output.messages = tracing::field::Empty,
        error.type = tracing::field::Empty,
        chorus.route = %route.name,
        chorus.attempt = attempt,
    );
    if chorus_telemetry::trace::capture_content() {
        let messages = serde_json::to_string(&request.messages).unwrap_or_default();
        span.record("gen_ai.input.messages", messages);
    }
    span
}

/// The call's outcome on its span: usage and finish reason, or the error's kind.
fn record_outcome(span: &tracing::Span, result: &Result<Completion, LlmError>) {
    match result {
        Ok(completion) => {
            span.record("gen_ai.usage.input_tokens", completion.usage.prompt_tokens);
            span.record(
                "gen_ai.usage.output_tokens",
                completion.usage.completion_tokens,
            );
            if let Some(reason) = &completion.finish_reason {
                span.record("gen_ai.response.finish_reasons", format!("[\"{reason}\"]"));
            }
            if chorus_telemetry::trace::capture_content() {
                let output = serde_json::json!([{"role": "assistant", "content": completion.text}]);
                span.record("gen_ai.output.messages", output.to_string());
            }
        }
        Err(error) => {
            span.record("error.type", error.kind.as_str());
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// The seed key of attempt `n`: distinct per attempt, the same on every run.
fn attempt_seed(base: u64, n: u32) -> u64 {
    stable_hash(&[&base.to_le_bytes(), &n.to_le_bytes()])
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::error::ErrorKind;
    use crate::provider::Provider;
    use crate::routes::Routes;
    use chorus_core::messages::Usage;

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy::new(&LlmConfig {
            retry_attempts: attempts,
            retry_min_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(10),
            ..LlmConfig::default()
        })
    }

    fn sim(model: &str, timeout: Duration) -> Route {
        let routes = Routes::new(&[]).unwrap().with_adhoc_timeout(timeout);
        routes.resolve(&format!("sim:{model}")).unwrap()
    }

    async fn call(policy: &RetryPolicy, route: &Route) -> (CallOutcome, Vec<u32>) {
        fn assert_send<T: Send>(future: T) -> T {
            future
        }
        let admission = Counting::default();
        let request = route.request(Vec::new(), Default::default(), 42);
        let outcome = assert_send(policy.call(route, &request, &admission)).await;
        let seen = admission.admitted.lock().unwrap().clone();
        assert_eq!(
            *admission.settled.lock().unwrap(),
            seen.len(),
            "every attempt reports back"
        );
        (outcome, seen)
    }

    /// Records which attempts were admitted and how many reported back.
    #[derive(Default)]
    struct Counting {
        admitted: Mutex<Vec<u32>>,
        settled: Mutex<usize>,
    }

    impl Admission for Counting {
        fn admit<'a>(
            &'a self,
            _: &'a Route,
            _: &'a CompletionRequest,
            attempt: u32,
        ) -> BoxFuture<'a, Result<Grant, LlmError>> {
            self.admitted.lock().unwrap().push(attempt);
            Box::pin(async { Ok(Grant::default()) })
        }

        fn settled<'a>(
            &'a self,
            _: &'a Route,
            _: &'a CompletionRequest,
            _: &'a Result<Completion, LlmError>,
        ) -> BoxFuture<'a, ()> {
            *self.settled.lock().unwrap() += 1;
            Box::pin(async {})
        }
    }

    /// Answers from a script and records the seed key of every attempt.
    struct Scripted {
        script: Mutex<VecDeque<Result<Completion, LlmError>>>,
        seeds: Mutex<Vec<u64>>,
    }

    impl Provider for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }

        fn complete<'a>(
            &'a self,
            request: &'a CompletionRequest,
        ) -> BoxFuture<'a, Result<Completion, LlmError>> {
            self.seeds.lock().unwrap().push(request.seed_key);
            let next = self.script.lock().unwrap().pop_front().unwrap();
            Box::pin(async move { next })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_errors_until_the_budget_is_spent() {
        let (outcome, seen) =
            call(&policy(3), &sim("echo?error=503", Duration::from_secs(5))).await;
        assert_eq!(
            outcome.result.as_ref().unwrap_err().kind,
            ErrorKind::ServerError
        );
        assert_eq!((outcome.attempts(), seen), (3, vec![1, 2, 3]));
        let (outcome, _) = call(
            &policy(1),
            &sim("echo?error=malformed", Duration::from_secs(5)),
        )
        .await;
        assert_eq!(outcome.attempts(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        for model in ["echo?error=400", "echo?error=401"] {
            let (outcome, seen) = call(&policy(5), &sim(model, Duration::from_secs(5))).await;
            assert!(!outcome.result.as_ref().unwrap_err().is_retryable());
            assert_eq!((outcome.attempts(), seen), (1, vec![1]));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn succeeds_after_failures_with_a_fresh_seed_per_attempt() {
        let answer = Completion {
            text: "ok".into(),
            usage: Usage::default(),
            finish_reason: None,
            tool_calls: None,
        };
        let provider = Arc::new(Scripted {
            script: Mutex::new(VecDeque::from([
                Err(LlmError::from_status(500, "down")),
                Err(LlmError::new(ErrorKind::Connection, "reset")),
                Ok(answer.clone()),
            ])),
            seeds: Mutex::default(),
        });
        let route = Route::new("scripted", provider.clone(), "m", Duration::from_secs(5));
        let (outcome, _) = call(&policy(3), &route).await;
        let outcomes: Vec<&str> = outcome.calls.iter().map(|c| c.outcome.as_str()).collect();
        assert_eq!(outcomes, ["server_error", "connection", "ok"]);
        assert_eq!(outcome.calls[0].status, Some(500));
        assert!(outcome.calls.iter().all(|c| c.route == "scripted"));
        // The script reports no usage: it is estimated, never free.
        let estimated = Completion {
            usage: Usage {
                prompt_tokens: 0,
                completion_tokens: 1,
            },
            ..answer
        };
        assert_eq!((outcome.attempts(), outcome.result), (3, Ok(estimated)));
        let seeds = provider.seeds.lock().unwrap().clone();
        assert_eq!(
            seeds,
            (1..=3).map(|n| attempt_seed(42, n)).collect::<Vec<_>>()
        );
        assert!(seeds[0] != seeds[1] && seeds[1] != seeds[2] && seeds[0] != seeds[2]);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_at_least_retry_after() {
        let route = sim("echo?error=429&retry_after=3s", Duration::from_secs(5));
        let started = Instant::now();
        let (outcome, _) = call(&policy(2), &route).await;
        let elapsed = started.elapsed();
        assert_eq!(outcome.attempts(), 2);
        assert!(
            elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(4),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_beyond_the_max_delay_is_left_to_redelivery() {
        let route = sim("echo?error=529&retry_after=30s", Duration::from_secs(5));
        let started = Instant::now();
        let (outcome, _) = call(&policy(3), &route).await;
        assert_eq!(outcome.attempts(), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
        let error = outcome.result.as_ref().unwrap_err();
        assert_eq!(
            policy(3).redelivery_delay(1, error),
            Duration::from_secs(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_attempt_is_cut_by_the_route_timeout() {
        let started = Instant::now();
        let (outcome, _) = call(
            &policy(2),
            &sim("echo?error=timeout", Duration::from_millis(250)),
        )
        .await;
        assert_eq!(
            outcome.result.as_ref().unwrap_err().kind,
            ErrorKind::Timeout
        );
        assert_eq!(
            (outcome.attempts(), outcome.latency),
            (2, Duration::from_millis(250))
        );
        // Two timeouts and one backoff of 100ms plus up to 100% jitter.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(600) && elapsed <= Duration::from_millis(700),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reports_the_latency_of_the_last_attempt() {
        let (outcome, _) = call(
            &policy(3),
            &sim("lorem?latency=80ms", Duration::from_secs(5)),
        )
        .await;
        assert!(outcome.result.is_ok());
        assert_eq!(
            (outcome.attempts(), outcome.latency),
            (1, Duration::from_millis(80))
        );
    }

    #[test]
    fn redelivery_delay_doubles_up_to_the_cap_and_respects_retry_after() {
        let policy = RetryPolicy::new(&LlmConfig {
            nak_delay: Duration::from_secs(1),
            nak_max_delay: Duration::from_secs(60),
            ..LlmConfig::default()
        });
        let error = LlmError::from_status(500, "down");
        let delays: Vec<u64> = [0, 1, 2, 3, 4, 6, 7, 100, u64::MAX]
            .into_iter()
            .map(|d| policy.redelivery_delay(d, &error).as_secs())
            .collect();
        assert_eq!(delays, [1, 1, 2, 4, 8, 32, 60, 60, 60]);
        let throttled =
            LlmError::from_status(429, "slow").with_retry_after(Duration::from_secs(90));
        assert_eq!(
            policy.redelivery_delay(1, &throttled),
            Duration::from_secs(90)
        );
        let short = LlmError::from_status(429, "slow").with_retry_after(Duration::from_millis(500));
        assert_eq!(policy.redelivery_delay(3, &short), Duration::from_secs(4));
    }
}
