//! Logging, metrics and traces.
//!
//! - Logs: `tracing` events to stderr as text or JSON lines, filtered by `log.level` or `RUST_LOG`.
//! - Traces: [`trace`], OpenTelemetry over OTLP when the standard variables ask for it.
//! - Metrics: the `metrics` facade, recorded by every role and rendered in Prometheus's text
//!   format by [`metrics_handle`] (served on `/metrics` of the edge, or of the probe port of a
//!   process without one). Every series is named `chorus_*`, described with its unit here,
//!   and labelled with low-cardinality values only (route, outcome, stage — never ids).

use std::sync::OnceLock;

use chorus_core::config::{LogConfig, LogFormat};
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub mod trace;

/// Installs the global subscriber: logs, and spans exported over OTLP when [`trace`] set up an
/// exporter. A second call (tests) is a no-op. JSON logs carry the fields of the spans they are
/// in, among them `job` and `trace_id`.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match config.format {
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
        LogFormat::Text => logs.boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(trace::layer())
        .with(logs.with_filter(filter))
        .try_init();
}

/// The process's metrics recorder, installed on first use; `None` if another recorder was
/// installed first.
pub fn metrics_handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// Seconds, from 5 ms to 2 minutes: LLM calls and limiter waits span that range.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Metric names, one place.
pub mod names {
    pub const LLM_CALLS: &str = "chorus_llm_calls_total";
    pub const LLM_CALL_SECONDS: &str = "chorus_llm_call_duration_seconds";
    pub const LLM_TOKENS: &str = "chorus_llm_tokens_total";
    pub const LLM_COST: &str = "chorus_llm_cost_microdollars_total";
    pub const LLM_RETRIES: &str = "chorus_llm_retries_total";
    pub const LLM_FALLBACKS: &str = "chorus_llm_fallbacks_total";
    pub const LLM_LIMITER_WAIT: &str = "chorus_llm_limiter_wait_seconds";
    pub const DLQ_MESSAGES: &str = "chorus_dlq_messages";
    pub const HTTP_REQUESTS: &str = "chorus_http_requests_total";
    pub const HTTP_REQUEST_SECONDS: &str = "chorus_http_request_duration_seconds";
    pub const STAGE_MESSAGES: &str = "chorus_stage_messages_total";
    pub const STAGE_MESSAGE_SECONDS: &str = "chorus_stage_message_duration_seconds";
    pub const STAGE_IN_FLIGHT: &str = "chorus_stage_in_flight";
    pub const STAGE_FAILURES: &str = "chorus_stage_failures_total";
    pub const CONSUMER_PENDING: &str = "chorus_consumer_pending";
    pub const CONSUMER_ACK_PENDING: &str = "chorus_consumer_ack_pending";
    pub const QUEUE_WAIT: &str = "chorus_queue_wait_seconds";
    pub const QUOTA_REFUSED: &str = "chorus_quota_refused_total";
    pub const TENANT_INFLIGHT: &str = "chorus_tenant_inflight";
    pub const BUDGET_LIMIT: &str = "chorus_budget_limit_usd";
    pub const BUDGET_SPENT: &str = "chorus_budget_spent_usd";
    pub const BUDGET_RESERVED: &str = "chorus_budget_reserved_usd";
    pub const BUDGET_REMAINING: &str = "chorus_budget_remaining_usd";
    pub const BUDGET_REFUSED: &str = "chorus_budget_refused_total";
    pub const PUBLISH_RETRIES: &str = "chorus_publish_retries_total";

    /// Every series Chorus exports.
    pub const ALL: [&str; 25] = [
        LLM_CALLS,
        LLM_CALL_SECONDS,
        LLM_TOKENS,
        LLM_COST,
        LLM_RETRIES,
        LLM_FALLBACKS,
        LLM_LIMITER_WAIT,
        DLQ_MESSAGES,
        HTTP_REQUESTS,
        HTTP_REQUEST_SECONDS,
        STAGE_MESSAGES,
        STAGE_MESSAGE_SECONDS,
        STAGE_IN_FLIGHT,
        STAGE_FAILURES,
        CONSUMER_PENDING,
        CONSUMER_ACK_PENDING,
        QUEUE_WAIT,
        QUOTA_REFUSED,
        TENANT_INFLIGHT,
        BUDGET_LIMIT,
        BUDGET_SPENT,
        BUDGET_RESERVED,
        BUDGET_REMAINING,
        BUDGET_REFUSED,
        PUBLISH_RETRIES,
    ];
}

fn describe() {
    use names::*;
    describe_gauge!(
        BUDGET_LIMIT,
        Unit::Count,
        "A spend budget's limit for its period in US dollars, by scope (tenant or key) and id."
    );
    describe_gauge!(
        BUDGET_SPENT,
        Unit::Count,
        "Spent this period in US dollars (settled calls, and holds of dead processes at their \
         reserved cost), by scope and id."
    );
    describe_gauge!(
        BUDGET_RESERVED,
        Unit::Count,
        "Held for calls in flight in US dollars, by scope and id."
    );
    describe_gauge!(
        BUDGET_REMAINING,
        Unit::Count,
        "What new calls may still hold this period in US dollars, by scope and id."
    );
    describe_counter!(
        BUDGET_REFUSED,
        Unit::Count,
        "Calls not sent because a budget could not cover them, by scope (tenant or key)."
    );
    describe_counter!(
        PUBLISH_RETRIES,
        Unit::Count,
        "Publishes of submissions a client waits on that JetStream could not take at once, by \
         outcome: retried (again, under the same message id) or gave_up (nats.retry_window passed; \
         the client got 503)."
    );
    describe_counter!(
        LLM_CALLS,
        Unit::Count,
        "Provider calls, by route and outcome (ok or the error kind)."
    );
    describe_histogram!(
        LLM_CALL_SECONDS,
        Unit::Seconds,
        "Duration of provider calls, by route."
    );
    describe_counter!(
        LLM_TOKENS,
        Unit::Count,
        "Tokens reported by providers, by route and kind (prompt or completion)."
    );
    describe_counter!(
        LLM_COST,
        Unit::Count,
        "Cost of calls in millionths of a US dollar (from route prices), by route."
    );
    describe_counter!(
        LLM_RETRIES,
        Unit::Count,
        "Provider calls that were retries of an earlier attempt, by route."
    );
    describe_counter!(
        LLM_FALLBACKS,
        Unit::Count,
        "Calls answered by a fallback route, by the route that answered."
    );
    describe_histogram!(
        LLM_LIMITER_WAIT,
        Unit::Seconds,
        "Time calls waited for their route's shared limits, by route."
    );
    describe_gauge!(DLQ_MESSAGES, Unit::Count, "Dead letters kept, by stage.");
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "HTTP requests answered, by route (the matched path), method and status."
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "Time from a request's arrival to its response's head, by route and method."
    );
    describe_counter!(
        STAGE_MESSAGES,
        Unit::Count,
        "Messages a role settled, by stage and outcome (ack, nak, term, or dropped: NAKed because its holder stopped)."
    );
    describe_histogram!(
        STAGE_MESSAGE_SECONDS,
        Unit::Seconds,
        "Time from a message reaching a role's workers to its settling, by stage."
    );
    describe_gauge!(
        STAGE_IN_FLIGHT,
        Unit::Count,
        "Messages a role holds and has not settled, by stage."
    );
    describe_counter!(
        STAGE_FAILURES,
        Unit::Count,
        "Failures met handling messages, by stage and class (transient, systemic, poison, unknown)."
    );
    describe_gauge!(
        CONSUMER_PENDING,
        Unit::Count,
        "Messages of a durable consumer not yet delivered (its backlog), by stream and consumer; read at each scrape."
    );
    describe_gauge!(
        CONSUMER_ACK_PENDING,
        Unit::Count,
        "Messages a durable consumer delivered and awaits acks for, by stream and consumer; read at each scrape."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time from a unit of work's publish to the scheduler handing it to a worker, by stage, route and band."
    );
    describe_gauge!(
        TENANT_INFLIGHT,
        Unit::Count,
        "llm calls fetched by a process (waiting at a route's gate, or running), by route and tenant: the tenants named in the configuration each, every other as `other`; read at each scrape."
    );
    describe_counter!(
        QUOTA_REFUSED,
        Unit::Count,
        "Jobs refused because their tenant's backlog quota was used up, by where (edge: answered 429; jetstream: an error result line)."
    );
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn the_readme_documents_every_series_and_no_other() {
        let readme = include_str!("../../../README.md");
        let mut documented: Vec<&str> = readme
            .lines()
            .filter(|l| l.starts_with("| `chorus_"))
            .filter_map(|l| l.split('`').nth(1))
            .collect();
        documented.sort_unstable();
        let mut exported = names::ALL.to_vec();
        exported.sort_unstable();
        assert_eq!(documented, exported);
    }
}
