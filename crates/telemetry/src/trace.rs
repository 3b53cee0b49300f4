//! Traces: OpenTelemetry spans over OTLP, one trace per job across every NATS hop.
//!
//! Off unless the standard variables ask for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
//! turn it off again). The exporter itself reads the rest of them: protocol (`http/protobuf`, the
//! default, or `http/json`; gRPC is not built in), headers, timeout, and `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` for the resource; the batch processor reads `OTEL_BSP_*`.
//!
//! Spans are `tracing` spans, bridged by `tracing-opentelemetry`. A message's span takes the
//! `traceparent` of the message as its parent ([`set_parent`]), and what it publishes carries the
//! span's own context ([`outgoing`]), so the edge's request, each role's handling and each
//! provider call form one tree per job. Without an exporter the same headers are passed on, each
//! hop with a fresh span id, so a W3C-aware backend behind another exporter could still stitch
//! the hops together.
//!
//! LLM calls use the GenAI semantic conventions (`gen_ai.*`). The prompt and the answer are only
//! recorded with `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` ([`capture_content`]).

use std::sync::OnceLock;
use std::time::Duration;

use chorus_core::trace::TraceContext;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether the standard variables ask for traces to be exported.
fn wanted(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Why traces cannot be exported (the settings in the environment do not build an exporter).
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces over OTLP: {source}")]
pub struct ExporterError {
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

/// Sets up the exporter when the environment asks for one. Call it once, before the async
/// runtime starts: the exporter's HTTP client runs on a thread of its own. Returns what went
/// wrong with the settings, for the caller to report; traces are then off.
pub fn init_exporter() -> Result<bool, ExporterError> {
    if !wanted(|name| std::env::var(name).ok()) {
        return Ok(false);
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    // The exporter's own default is JSON when that is built in; OTLP/HTTP's is protobuf.
    let chosen = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some());
    if !chosen {
        exporter = exporter.with_protocol(Protocol::HttpBinary);
    }
    let exporter = exporter
        .build()
        .map_err(|source| ExporterError { source })?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("chorus");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let _ = PROVIDER.set(provider);
    Ok(true)
}

/// The layer that turns spans into OpenTelemetry spans, when an exporter is set up.
pub fn layer<S>() -> Option<impl Layer<S>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let provider = PROVIDER.get()?;
    // Chorus's own spans only: the libraries' spans (HTTP, SQL, NATS internals) are not its story.
    let ours = tracing_subscriber::filter::filter_fn(|meta| meta.target().starts_with("chorus"));
    Some(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("chorus"))
            .with_location(false)
            .with_threads(false)
            .with_filter(ours),
    )
}

/// Exports what is still buffered; call once, at exit, outside the async runtime.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
    }
}

fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// Whether LLM spans may carry the prompt and the answer.
pub fn capture_content() -> bool {
    static CAPTURE: OnceLock<bool> = OnceLock::new();
    *CAPTURE.get_or_init(|| {
        std::env::var("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
    })
}

/// Makes `span` a child of the remote context `parent` (a message's `traceparent`).
pub fn set_parent(span: &Span, parent: Option<&TraceContext>) {
    let Some(parent) = parent.filter(|_| exporting()) else {
        return;
    };
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.span_id),
        if parent.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// The context of the current span, when spans are exported.
pub fn current() -> Option<TraceContext> {
    current_of(&Span::current())
}

/// The context of `span`, when spans are exported.
pub fn current_of(span: &Span) -> Option<TraceContext> {
    if !exporting() {
        return None;
    }
    let context = span.context();
    let span = context.span();
    let span = span.span_context();
    span.is_valid().then(|| TraceContext {
        trace_id: span.trace_id().to_bytes(),
        span_id: span.span_id().to_bytes(),
        sampled: span.is_sampled(),
    })
}

/// The `traceparent` a message published now carries: the current span's context when spans
/// are exported, else a new hop of `fallback`.
pub fn outgoing(fallback: Option<&TraceContext>) -> Option<TraceContext> {
    current().or_else(|| fallback.map(TraceContext::child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exporting_is_asked_for_by_the_standard_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(!wanted(vars(&[])));
        assert!(wanted(vars(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://c:4318"
        )])));
        assert!(wanted(vars(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )])));
        assert!(!wanted(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true")
        ])));
        assert!(!wanted(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
        assert!(!wanted(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
    }

    #[test]
    fn without_an_exporter_hops_get_fresh_span_ids_in_the_same_trace() {
        let root = TraceContext::new_root();
        let next = outgoing(Some(&root)).unwrap_or(root);
        assert_eq!(next.trace_id, root.trace_id);
        assert_ne!(next.span_id, root.span_id);
        assert_eq!(outgoing(None), None);
    }
}
