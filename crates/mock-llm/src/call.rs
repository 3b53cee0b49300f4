//! One provider call: the request is checked as the real API would check it, recorded, and
//! answered — at once, late, streamed, or with the fault its model's behaviour has for it.
//!
//! A connection reset ([`Fault::Reset`]) unwinds the handler with
//! [`std::panic::resume_unwind`]: the unwinding ends the connection's task, which drops the socket
//! before any byte of a response was written, and skips the panic hook, so nothing is printed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::behaviour::{Fault, RetryAfter, ToolCall};
use crate::record::{ModelState, Models, RecordedRequest, unix_secs};
use crate::wire::{Answer, Api};

/// How long a [`Fault::Hang`] holds its connection before closing it.
const HANG: Duration = Duration::from_secs(600);
/// How long a cut-off body waits after its last bytes before the connection drops, so that the
/// server flushes them first.
const CUT_AFTER: Duration = Duration::from_millis(20);

/// What one call is answered with, decided under the lock.
struct Plan {
    latency: Duration,
    chunk_delay: Duration,
    fault: Option<Fault>,
    answer: Option<String>,
    tool_calls: Vec<ToolCall>,
}

/// A call [`ModelState::record`] counted in flight, until this is dropped: when its handler
/// returns the response, or is itself dropped (a closed connection, a reset).
struct InFlight {
    models: Arc<Models>,
    model: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.models.with_model(&self.model, ModelState::finished);
    }
}

/// Answers one call to `api`'s endpoint; `deployment` is Azure's, which names the model.
pub(crate) async fn call(
    State(models): State<Arc<Models>>,
    api: Api,
    deployment: Option<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = deployment
        .or_else(|| body.get("model")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    let refused = api.check(&uri, &headers, &body);
    let recorded = RecordedRequest {
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), ToString::to_string),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
        received_at: SystemTime::now(),
    };
    let plan = models.with_model(&model, |m| Plan {
        fault: m.record(recorded, refused.is_some()),
        latency: m.behaviour.latency,
        chunk_delay: m.behaviour.chunk_delay,
        answer: m.behaviour.answer.clone(),
        tool_calls: m.behaviour.tool_calls.clone(),
    });
    let _in_flight = InFlight {
        models: models.clone(),
        model: model.clone(),
    };
    if let Some(refusal) = refused {
        return api.error(refusal.status, &model, None, Some(refusal.message));
    }
    if !plan.latency.is_zero() {
        tokio::time::sleep(plan.latency).await;
    }
    let id = models.next_id();
    let answer = || Answer::new(&body, api, id, plan.answer.as_deref(), &plan.tool_calls);
    if body.get("stream") == Some(&Value::Bool(true)) {
        let include_usage = body.pointer("/stream_options/include_usage") == Some(&json!(true));
        let streamed = |filtered: bool| api.stream(&model, &answer(), filtered, include_usage);
        let pieces = match &plan.fault {
            None => streamed(false),
            Some(Fault::Slow { delay }) => {
                tokio::time::sleep(*delay).await;
                streamed(false)
            }
            Some(Fault::ContentFilter) => streamed(true),
            Some(Fault::Truncated) => {
                let mut pieces = streamed(false);
                pieces.truncate(pieces.len() / 2);
                return streaming(api, pieces, plan.chunk_delay, true);
            }
            Some(_) => Vec::new(),
        };
        if !pieces.is_empty() {
            return streaming(api, pieces, plan.chunk_delay, false);
        }
    }
    match plan.fault {
        None => Json(api.success(&model, &answer(), false)).into_response(),
        Some(Fault::Slow { delay }) => {
            tokio::time::sleep(delay).await;
            Json(api.success(&model, &answer(), false)).into_response()
        }
        Some(Fault::ContentFilter) => Json(api.success(&model, &answer(), true)).into_response(),
        Some(Fault::Status {
            status,
            retry_after,
            code,
            message,
        }) => {
            let mut response = api.error(status, &model, code, message);
            if let Some(retry_after) = retry_after {
                add_retry_after(response.headers_mut(), retry_after);
            }
            response
        }
        Some(Fault::Hang) => {
            tokio::time::sleep(HANG).await;
            reset_connection()
        }
        Some(Fault::Reset) => reset_connection(),
        Some(Fault::Malformed) => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"id": "mock", "choices": [{"message": oops"#,
        )
            .into_response(),
        Some(Fault::Truncated) => truncated(api.success(&model, &answer(), false)),
    }
}

/// `body` announced in full by `content-length`, but only its first half sent before the
/// connection drops.
fn truncated(body: Value) -> Response {
    let full = Bytes::from(body.to_string());
    let half = full.slice(..full.len() / 2);
    let chunks = futures::stream::iter([Ok(half)]).chain(cut_off("body truncated"));
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(full.len()));
    response
}

/// A streamed answer: `pieces` (whole events or lines) `delay` apart; `cut` ends the connection
/// after them instead of ending the body.
fn streaming(api: Api, pieces: Vec<String>, delay: Duration, cut: bool) -> Response {
    let chunks =
        futures::stream::iter(pieces.into_iter().enumerate()).then(move |(i, piece)| async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, std::io::Error>(Bytes::from(piece))
        });
    let body = match cut {
        true => Body::from_stream(chunks.chain(cut_off("stream cut off"))),
        false => Body::from_stream(chunks),
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(api.stream_content_type()),
    );
    response
}

/// The end of a body that breaks off: after a pause that lets the server flush what came before,
/// an error that makes it drop the connection.
fn cut_off(what: &'static str) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    futures::stream::once(async move {
        tokio::time::sleep(CUT_AFTER).await;
        Err(std::io::Error::other(format!("mock LLM: {what}")))
    })
}

/// Ends the connection without a response: unwinding out of the handler ends the connection's
/// task, which drops the socket. `resume_unwind` skips the panic hook, so nothing is printed.
fn reset_connection() -> ! {
    std::panic::resume_unwind(Box::new("mock LLM: connection reset"))
}

fn add_retry_after(headers: &mut HeaderMap, retry_after: RetryAfter) {
    let value = match retry_after {
        RetryAfter::Seconds(secs) => HeaderValue::from(secs),
        RetryAfter::HttpDate(secs) => {
            let at = SystemTime::now() + Duration::from_secs(secs);
            let whole = Duration::from_secs(unix_secs(at) + 1);
            // An HTTP-date is plain ASCII, so always a header value; seconds otherwise.
            HeaderValue::try_from(httpdate::fmt_http_date(UNIX_EPOCH + whole))
                .unwrap_or_else(|_| HeaderValue::from(secs))
        }
        RetryAfter::Millis(ms) => {
            headers.insert("retry-after-ms", HeaderValue::from(ms));
            HeaderValue::from(ms.div_ceil(1000))
        }
    };
    headers.insert(header::RETRY_AFTER, value);
}
