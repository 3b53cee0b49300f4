//! A mock LLM provider: an HTTP server that speaks OpenAI's Chat Completions (and Azure
//! OpenAI's deployment URLs), Anthropic's Messages API and Ollama's `/api/chat` with realistic
//! bodies, scripted per model, for wire-format tests, fault tests and load tests.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /openai/deployments/{deployment}/chat/completions`
//! (the deployment is the model), `POST /v1/messages`, `POST /api/chat`; and for scripting from
//! another process `PUT /_mock/models/{model}` (a JSON [`Behaviour`]), `GET /_mock/stats` and
//! `POST /_mock/reset`.
//!
//! A model answers `[mock] <last user message>` (`{"answer": …}` when JSON was asked for), with
//! usage counted at about four characters per token, unless its [`Behaviour`] says otherwise: a
//! queue of [`Fault`]s for the next calls, then faults drawn by probability. Each fault is rendered
//! in the wire format of the endpoint called, with that provider's real error bodies. The mock
//! also checks what the real APIs insist on (Anthropic's `anthropic-version`, `x-api-key` and
//! `max_tokens`, no `system` role in its messages; Azure's `api-version` and `api-key`), so a
//! client that gets the format wrong fails here as it would there.
//!
//! Two decisions worth knowing. A connection reset ([`Fault::Reset`]) unwinds the handler with
//! [`std::panic::resume_unwind`]: the unwinding ends the connection's task, which drops the socket
//! before any byte of a response was written, and skips the panic hook, so nothing is printed.
//! Requests are recorded with all their headers, keys included, so tests can assert
//! authentication; they stay in memory and are never logged or served over HTTP.

#![allow(clippy::expect_used, clippy::unwrap_used)] // moved as it was; the next commit handles its errors

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Requests kept per model for [`MockLlm::requests`]; older ones are dropped.
const RECORDED_PER_MODEL: usize = 10_000;
/// How long a [`Fault::Hang`] holds its connection before closing it.
const HANG: Duration = Duration::from_secs(600);

/// How a model answers. The default answers every call at once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// The answer text; by default `[mock] ` and the last user message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Tool calls to answer with instead of text.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Waited before every answer, faults included (`"250ms"`).
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Waited between the pieces of a streamed answer (`"20ms"`).
    #[serde(with = "humantime_serde")]
    pub chunk_delay: Duration,
    /// Faults for the next calls, one call each, in order.
    #[serde(skip_serializing_if = "VecDeque::is_empty")]
    pub queue: VecDeque<Fault>,
    /// Once the queue is empty, each call meets at most one of these, with its probability.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub random: Vec<Chance>,
}

impl Behaviour {
    /// Answers `text` to every call.
    pub fn answer(text: impl Into<String>) -> Self {
        Self {
            answer: Some(text.into()),
            ..Self::default()
        }
    }

    /// Fails every call with `fault`.
    pub fn always(fault: Fault) -> Self {
        Self::default().with_chance(1.0, fault)
    }

    /// Fails the next `calls` calls with `fault` (after those already queued).
    pub fn fail_next(mut self, calls: usize, fault: Fault) -> Self {
        self.queue.extend(std::iter::repeat_n(fault, calls));
        self
    }

    /// Fails a call with `fault` with `probability` once the queue is empty.
    pub fn with_chance(mut self, probability: f64, fault: Fault) -> Self {
        self.random.push(Chance { probability, fault });
        self
    }

    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    pub fn with_chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    pub fn with_tool_call(mut self, name: impl Into<String>, arguments: Value) -> Self {
        self.tool_calls.push(ToolCall {
            name: name.into(),
            arguments,
        });
        self
    }

    /// The fault of the next call, if any: the queue's front, else a draw.
    fn next_fault(&mut self) -> Option<Fault> {
        if let Some(fault) = self.queue.pop_front() {
            return Some(fault);
        }
        let draw: f64 = rand::random();
        let mut upto = 0.0;
        self.random.iter().find_map(|chance| {
            upto += chance.probability;
            (draw < upto).then(|| chance.fault.clone())
        })
    }
}

/// A tool call to answer with; rendered in each provider's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chance {
    pub probability: f64,
    pub fault: Fault,
}

/// What can go wrong in one call. JSON: `{"type": "status", "status": 429, "retry_after":
/// {"seconds": 3}}`, `{"type": "slow", "delay": "2s"}`, `{"type": "hang"}`, `{"type": "reset"}`,
/// `{"type": "malformed"}`, `{"type": "truncated"}`, `{"type": "content_filter"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// An error status with the provider's error body for it.
    Status {
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<RetryAfter>,
        /// OpenAI's `error.code` (Azure's too), Anthropic's `error.type`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        /// Instead of the provider's usual message for the status.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// The normal answer, `delay` late.
    Slow {
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// No answer: the client's timeout ends the call. (After ten minutes the connection is closed,
    /// so a long load test does not pile up hanging calls.)
    Hang,
    /// The connection is closed before any response.
    Reset,
    /// A 200 whose body is not JSON.
    Malformed,
    /// A 200 that announces its full length but stops halfway and closes the connection (a
    /// streamed answer: half its pieces, then the connection closes).
    Truncated,
    /// The content filter withholds the answer (OpenAI: `finish_reason: content_filter`;
    /// Anthropic: `stop_reason: refusal`; Ollama has none and answers normally).
    ContentFilter,
}

impl Fault {
    pub fn status(status: u16) -> Self {
        Self::Status {
            status,
            retry_after: None,
            code: None,
            message: None,
        }
    }

    /// A 429 with `retry-after`.
    pub fn rate_limited(retry_after: RetryAfter) -> Self {
        Self::Status {
            status: 429,
            retry_after: Some(retry_after),
            code: None,
            message: None,
        }
    }

    fn label(&self) -> String {
        match self {
            Self::Status { status, .. } => status.to_string(),
            Self::Slow { .. } => "slow".into(),
            Self::Hang => "hang".into(),
            Self::Reset => "reset".into(),
            Self::Malformed => "malformed".into(),
            Self::Truncated => "truncated".into(),
            Self::ContentFilter => "content_filter".into(),
        }
    }
}

/// How `retry-after` is sent. JSON: `{"seconds": 3}`, `{"http_date": 3}`, `{"millis": 1500}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryAfter {
    /// `retry-after: 3`.
    Seconds(u64),
    /// `retry-after: <HTTP-date>` at least this many seconds ahead (rounded up to a whole second).
    HttpDate(u64),
    /// `retry-after-ms` (as OpenAI sends it), with `retry-after` rounded up to seconds beside it.
    Millis(u64),
}

/// What the mock saw of one model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    pub requests: u64,
    /// Unix second → requests received in it.
    pub per_second: BTreeMap<u64, u64>,
    /// What the mock did → how often: `ok`, `slow`, a status (`429`), `hang`, `reset`,
    /// `malformed`, `truncated`, `content_filter`, or `invalid` for a request the real API refuses.
    pub outcomes: BTreeMap<String, u64>,
}

impl ModelStats {
    /// The most requests in any `seconds` consecutive wall-clock seconds.
    pub fn max_in_window(&self, seconds: u64) -> u64 {
        let seconds = seconds.max(1);
        self.per_second
            .keys()
            .map(|&start| {
                self.per_second
                    .range(start..start + seconds)
                    .map(|(_, n)| n)
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0)
    }
}

/// The most of `arrivals` that fall in any span of `window`, sliding the span over every arrival:
/// the figure a rate limit is judged by.
pub fn most_in_window(arrivals: &[SystemTime], window: Duration) -> usize {
    let mut arrivals = arrivals.to_vec();
    arrivals.sort_unstable();
    let mut most = 0;
    let mut start = 0;
    for (end, at) in arrivals.iter().enumerate() {
        while at.duration_since(arrivals[start]).unwrap_or_default() >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// One request as the mock received it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Path and query.
    pub path: String,
    /// Lower-case names; authentication headers included.
    pub headers: BTreeMap<String, String>,
    /// `null` when the body was not JSON.
    pub body: Value,
    pub received_at: SystemTime,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Default)]
struct ModelState {
    behaviour: Behaviour,
    stats: ModelStats,
    requests: VecDeque<RecordedRequest>,
    /// When every request arrived (not capped like `requests`: rate checks need them all).
    arrivals: Vec<SystemTime>,
}

#[derive(Default)]
struct Shared {
    models: Mutex<HashMap<String, ModelState>>,
    ids: AtomicU64,
}

impl Shared {
    fn with_model<T>(&self, model: &str, f: impl FnOnce(&mut ModelState) -> T) -> T {
        let mut models = self.models.lock().expect("mock state lock");
        f(models.entry(model.to_owned()).or_default())
    }

    fn script(&self, model: &str, behaviour: Behaviour) {
        self.with_model(model, |m| m.behaviour = behaviour);
    }

    fn stats(&self) -> BTreeMap<String, ModelStats> {
        let models = self.models.lock().expect("mock state lock");
        models
            .iter()
            .filter(|(_, m)| m.stats.requests > 0)
            .map(|(name, m)| (name.clone(), m.stats.clone()))
            .collect()
    }

    fn reset(&self) {
        self.models.lock().expect("mock state lock").clear();
    }
}

/// A mock provider server on a free port of 127.0.0.1, stopped on drop.
pub struct MockLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl MockLlm {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the mock LLM server");
        let addr = listener.local_addr().expect("the mock's address");
        let shared = Arc::new(Shared::default());
        let app = router(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("mock LLM server");
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:<port>`; OpenAI's base URL is this plus `/v1`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces `model`'s behaviour (its queue included); its stats and requests stay.
    pub fn script(&self, model: &str, behaviour: Behaviour) {
        self.shared.script(model, behaviour);
    }

    pub fn stats(&self, model: &str) -> ModelStats {
        self.shared.with_model(model, |m| m.stats.clone())
    }

    /// The requests received for `model`, oldest first.
    pub fn requests(&self, model: &str) -> Vec<RecordedRequest> {
        self.shared
            .with_model(model, |m| m.requests.iter().cloned().collect())
    }

    /// When each request for `model` arrived, in the order recorded; every one, however many.
    pub fn arrivals(&self, model: &str) -> Vec<SystemTime> {
        self.shared.with_model(model, |m| m.arrivals.clone())
    }

    /// Forgets every behaviour, stat and request.
    pub fn reset(&self) {
        self.shared.reset();
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves a fresh mock on `listener` until `shutdown` completes (for `chorus mock-llm`). Calls in
/// flight are dropped rather than waited for: a hanging call would otherwise never let it stop.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let app = router(Arc::new(Shared::default()));
    tokio::select! {
        served = axum::serve(listener, app).into_future() => served,
        () = shutdown => Ok(()),
    }
}

fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(|s, u, h, b| call(s, Api::OpenAi, None, u, h, b)),
        )
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(|s, Path(d): Path<String>, u, h, b| call(s, Api::Azure, Some(d), u, h, b)),
        )
        .route(
            "/v1/messages",
            post(|s, u, h, b| call(s, Api::Anthropic, None, u, h, b)),
        )
        .route(
            "/api/chat",
            post(|s, u, h, b| call(s, Api::Ollama, None, u, h, b)),
        )
        .route(
            "/_mock/models/{*model}",
            // Any content type: `curl -X PUT -d '{…}'` should just work.
            put(
                |State(s): State<Arc<Shared>>, Path(model): Path<String>, body: Bytes| async move {
                    match serde_json::from_slice::<Behaviour>(&body) {
                        Ok(behaviour) => {
                            s.script(&model, behaviour);
                            StatusCode::NO_CONTENT.into_response()
                        }
                        Err(e) => (StatusCode::BAD_REQUEST, format!("bad behaviour: {e}\n"))
                            .into_response(),
                    }
                },
            ),
        )
        .route(
            "/_mock/stats",
            get(|State(s): State<Arc<Shared>>| async move { Json(s.stats()) }),
        )
        .route(
            "/_mock/reset",
            post(|State(s): State<Arc<Shared>>| async move {
                s.reset();
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(shared)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    OpenAi,
    Azure,
    Anthropic,
    Ollama,
}

/// What one call is answered with, decided under the lock.
struct Plan {
    latency: Duration,
    chunk_delay: Duration,
    fault: Option<Fault>,
    answer: Option<String>,
    tool_calls: Vec<ToolCall>,
}

async fn call(
    State(shared): State<Arc<Shared>>,
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
    let invalid = api.check(&uri, &headers, &body);
    let received_at = SystemTime::now();
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
        received_at,
    };
    let plan = shared.with_model(&model, |m| {
        m.stats.requests += 1;
        *m.stats
            .per_second
            .entry(unix_secs(received_at))
            .or_default() += 1;
        if m.requests.len() == RECORDED_PER_MODEL {
            m.requests.pop_front();
        }
        m.requests.push_back(recorded);
        m.arrivals.push(received_at);
        let fault = match invalid {
            None => m.behaviour.next_fault(),
            Some(_) => None,
        };
        let outcome = match (&invalid, &fault) {
            (Some(_), _) => "invalid".to_owned(),
            (None, Some(fault)) => fault.label(),
            (None, None) => "ok".to_owned(),
        };
        *m.stats.outcomes.entry(outcome).or_default() += 1;
        Plan {
            latency: m.behaviour.latency,
            chunk_delay: m.behaviour.chunk_delay,
            fault,
            answer: m.behaviour.answer.clone(),
            tool_calls: m.behaviour.tool_calls.clone(),
        }
    });
    if let Some((status, message)) = invalid {
        return api.error(status, &model, None, Some(message));
    }
    if !plan.latency.is_zero() {
        tokio::time::sleep(plan.latency).await;
    }
    let id = shared.ids.fetch_add(1, Ordering::Relaxed) + 1;
    let answer = || Answer::new(&body, &plan, api, id);
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
        Some(Fault::Truncated) => {
            let full = Bytes::from(api.success(&model, &answer(), false).to_string());
            let half = full.slice(..full.len() / 2);
            // The pause lets the server flush the headers and the first half before the error
            // makes it drop the connection.
            let cut = futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(std::io::Error::other("mock LLM: body truncated"))
            });
            let chunks = futures::stream::iter([Ok(half)]).chain(cut);
            let mut response = Response::new(Body::from_stream(chunks));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(full.len()));
            response
        }
    }
}

/// A streamed answer: `pieces` (whole events or lines) `delay` apart; `cut` ends the connection
/// after them instead of ending the body.
fn streaming(api: Api, pieces: Vec<String>, delay: Duration, cut: bool) -> Response {
    let content_type = match api {
        Api::Ollama => "application/x-ndjson",
        _ => "text/event-stream",
    };
    let chunks =
        futures::stream::iter(pieces.into_iter().enumerate()).then(move |(i, piece)| async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, std::io::Error>(Bytes::from(piece))
        });
    let end = futures::stream::once(async move {
        match cut {
            true => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(std::io::Error::other("mock LLM: stream cut off"))
            }
            false => Ok(Bytes::new()),
        }
    });
    let mut response = Response::new(Body::from_stream(chunks.chain(end)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An answer's text in the pieces a provider streams: a word at a time, each with the space
/// before it.
fn words(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == ' ' && i > start {
            pieces.push(&text[start..i]);
            start = i;
        }
    }
    pieces.push(&text[start..]);
    pieces.retain(|p| !p.is_empty());
    pieces
}

/// Ends the connection without a response: unwinding out of the handler ends the connection's
/// task, which drops the socket. `resume_unwind` skips the panic hook, so nothing is printed.
fn reset_connection() -> ! {
    std::panic::resume_unwind(Box::new("mock LLM: connection reset"))
}

fn add_retry_after(headers: &mut HeaderMap, retry_after: RetryAfter) {
    let value = match retry_after {
        RetryAfter::Seconds(secs) => secs.to_string(),
        RetryAfter::HttpDate(secs) => {
            let at = SystemTime::now() + Duration::from_secs(secs);
            let whole = Duration::from_secs(unix_secs(at) + 1);
            httpdate::fmt_http_date(UNIX_EPOCH + whole)
        }
        RetryAfter::Millis(ms) => {
            headers.insert("retry-after-ms", HeaderValue::from(ms));
            ms.div_ceil(1000).to_string()
        }
    };
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&value).expect("a retry-after value"),
    );
}

/// A successful answer, before it is put in a provider's shape.
struct Answer {
    id: u64,
    text: String,
    tool_calls: Vec<ToolCall>,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl Answer {
    fn new(body: &Value, plan: &Plan, api: Api, id: u64) -> Self {
        let messages = body.get("messages").and_then(Value::as_array);
        let messages = messages.map(Vec::as_slice).unwrap_or_default();
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(|m| text_of(m.get("content")))
            .unwrap_or_default();
        let wants_json = match api {
            Api::OpenAi | Api::Azure => matches!(
                body.pointer("/response_format/type")
                    .and_then(Value::as_str),
                Some("json_object" | "json_schema")
            ),
            Api::Ollama => body.get("format").is_some_and(|f| !f.is_null()),
            Api::Anthropic => false,
        };
        let text = match &plan.answer {
            Some(answer) => answer.clone(),
            None if wants_json => json!({"answer": format!("[mock] {last_user}")}).to_string(),
            None => format!("[mock] {last_user}"),
        };
        let prompt_chars = messages
            .iter()
            .map(|m| text_of(m.get("content")).chars().count())
            .sum::<usize>()
            + text_of(body.get("system")).chars().count();
        let completion_chars = match plan.tool_calls.is_empty() {
            true => text.chars().count(),
            false => plan
                .tool_calls
                .iter()
                .map(|c| c.arguments.to_string().len())
                .sum(),
        };
        Self {
            id,
            text,
            tool_calls: plan.tool_calls.clone(),
            prompt_tokens: tokens(prompt_chars),
            completion_tokens: tokens(completion_chars),
        }
    }
}

/// About four characters per token, at least one.
fn tokens(chars: usize) -> u64 {
    (chars.div_ceil(4) as u64).max(1)
}

/// The text of a message's content: a string, or the text parts of a list of blocks.
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

impl Api {
    /// What the real API refuses before it even looks at the model: `(status, message)`.
    fn check(self, uri: &Uri, headers: &HeaderMap, body: &Value) -> Option<(u16, String)> {
        let has = |name: &str| headers.contains_key(name);
        if !body.is_object() {
            return Some((400, "the request body is not a JSON object".into()));
        }
        let messages = body.get("messages").and_then(Value::as_array);
        match self {
            Self::Azure if !uri.query().unwrap_or("").contains("api-version=") => {
                Some((404, "Resource not found".into()))
            }
            Self::Azure if !has("api-key") => Some((
                401,
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.".into(),
            )),
            Self::Anthropic if !has("x-api-key") => {
                Some((401, "x-api-key header is required".into()))
            }
            Self::Anthropic if !has("anthropic-version") => {
                Some((400, "anthropic-version: header is required".into()))
            }
            Self::Anthropic if body.get("max_tokens").is_none_or(|t| !t.is_u64()) => {
                Some((400, "max_tokens: Field required".into()))
            }
            Self::Anthropic
                if messages.is_some_and(|m| {
                    m.iter().any(|m| m.get("role").and_then(Value::as_str) == Some("system"))
                }) =>
            {
                Some((400, "messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.".into()))
            }
            // Ollama streams unless told not to; a client that forgets `"stream": false` would
            // get lines it does not expect.
            Self::Ollama if body.get("stream").and_then(Value::as_bool).is_none() => Some((
                400,
                "the mock wants \"stream\" set, true or false".into(),
            )),
            _ if messages.is_none() => Some((400, "'messages' is a required property".into())),
            _ => None,
        }
    }

    fn success(self, model: &str, answer: &Answer, filtered: bool) -> Value {
        let now = SystemTime::now();
        let id = answer.id;
        let usage = (answer.prompt_tokens, answer.completion_tokens);
        match self {
            Self::OpenAi | Self::Azure => {
                let calls: Vec<Value> = answer
                    .tool_calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        json!({
                            "id": format!("call_mock{id}_{i}"),
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments.to_string()},
                        })
                    })
                    .collect();
                let (content, finish) = match (filtered, calls.is_empty()) {
                    (true, _) => (Value::Null, "content_filter"),
                    (false, false) => (Value::Null, "tool_calls"),
                    (false, true) => (json!(answer.text), "stop"),
                };
                let mut message = json!({"role": "assistant", "content": content, "refusal": null});
                if !calls.is_empty() && !filtered {
                    message["tool_calls"] = json!(calls);
                }
                json!({
                    "id": format!("chatcmpl-mock{id}"),
                    "object": "chat.completion",
                    "created": unix_secs(now),
                    "model": model,
                    "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
                    "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1},
                    "system_fingerprint": "fp_mock",
                })
            }
            Self::Anthropic => {
                let mut content: Vec<Value> = Vec::new();
                let mut stop = "end_turn";
                if filtered {
                    stop = "refusal";
                } else if answer.tool_calls.is_empty() {
                    content.push(json!({"type": "text", "text": answer.text}));
                } else {
                    stop = "tool_use";
                    content.extend(answer.tool_calls.iter().enumerate().map(|(i, c)| {
                        json!({"type": "tool_use", "id": format!("toolu_mock{id}_{i}"), "name": c.name, "input": c.arguments})
                    }));
                }
                json!({
                    "id": format!("msg_mock{id}"),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop,
                    "stop_sequence": null,
                    "usage": {"input_tokens": usage.0, "output_tokens": usage.1},
                })
            }
            Self::Ollama => {
                let mut message = json!({"role": "assistant", "content": answer.text});
                if !answer.tool_calls.is_empty() {
                    message["content"] = json!("");
                    message["tool_calls"] = answer
                        .tool_calls
                        .iter()
                        .map(|c| json!({"function": {"name": c.name, "arguments": c.arguments}}))
                        .collect();
                }
                json!({
                    "model": model,
                    "created_at": chrono::DateTime::<chrono::Utc>::from(now).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                    "message": message,
                    "done": true,
                    "done_reason": "stop",
                    "total_duration": 1_000_000,
                    "load_duration": 100_000,
                    "prompt_eval_count": usage.0,
                    "prompt_eval_duration": 200_000,
                    "eval_count": usage.1,
                    "eval_duration": 700_000,
                })
            }
        }
    }

    /// A streamed answer in the provider's format: Server-Sent Events (OpenAI's
    /// `chat.completion.chunk`s and `data: [DONE]`; Anthropic's message events) or Ollama's JSON
    /// lines. Tool calls are not streamed: the text is.
    fn stream(
        self,
        model: &str,
        answer: &Answer,
        filtered: bool,
        include_usage: bool,
    ) -> Vec<String> {
        let created = unix_secs(SystemTime::now());
        let id = answer.id;
        let (prompt, completion) = (answer.prompt_tokens, answer.completion_tokens);
        let text = if filtered { "" } else { answer.text.as_str() };
        match self {
            Self::OpenAi | Self::Azure => {
                let chunk = |delta: Value, finish: Value| {
                    let mut chunk = json!({
                        "id": format!("chatcmpl-mock{id}"),
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "system_fingerprint": "fp_mock",
                        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                    });
                    if include_usage {
                        chunk["usage"] = Value::Null;
                    }
                    format!("data: {chunk}\n\n")
                };
                let mut pieces = vec![chunk(
                    json!({"role": "assistant", "content": "", "refusal": null}),
                    Value::Null,
                )];
                pieces.extend(
                    words(text)
                        .into_iter()
                        .map(|w| chunk(json!({"content": w}), Value::Null)),
                );
                let finish = if filtered { "content_filter" } else { "stop" };
                pieces.push(chunk(json!({}), json!(finish)));
                if include_usage {
                    let usage = json!({
                        "id": format!("chatcmpl-mock{id}"),
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
                    });
                    pieces.push(format!("data: {usage}\n\n"));
                }
                pieces.push("data: [DONE]\n\n".into());
                pieces
            }
            Self::Anthropic => {
                let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
                let mut pieces = vec![
                    event(
                        "message_start",
                        json!({"type": "message_start", "message": {
                        "id": format!("msg_mock{id}"), "type": "message", "role": "assistant",
                        "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                        "usage": {"input_tokens": prompt, "output_tokens": 1}}}),
                    ),
                    event(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}),
                    ),
                    event("ping", json!({"type": "ping"})),
                ];
                pieces.extend(words(text).into_iter().map(|w| {
                    event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": w}}),
                    )
                }));
                let stop = if filtered { "refusal" } else { "end_turn" };
                pieces.push(event(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ));
                pieces.push(event(
                    "message_delta",
                    json!({"type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": null},
                    "usage": {"output_tokens": completion}}),
                ));
                pieces.push(event("message_stop", json!({"type": "message_stop"})));
                pieces
            }
            Self::Ollama => {
                let at = || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
                let mut pieces: Vec<String> = words(text)
                    .into_iter()
                    .map(|w| {
                        let line = json!({"model": model, "created_at": at(),
                            "message": {"role": "assistant", "content": w}, "done": false});
                        format!("{line}\n")
                    })
                    .collect();
                let last = json!({"model": model, "created_at": at(),
                    "message": {"role": "assistant", "content": ""}, "done": true,
                    "done_reason": "stop", "total_duration": 1_000_000, "load_duration": 100_000,
                    "prompt_eval_count": prompt, "prompt_eval_duration": 200_000,
                    "eval_count": completion, "eval_duration": 700_000});
                pieces.push(format!("{last}\n"));
                pieces
            }
        }
    }

    /// The provider's error response for `status`: its body shape, its usual message and type.
    fn error(
        self,
        status: u16,
        model: &str,
        code: Option<String>,
        message: Option<String>,
    ) -> Response {
        let status_code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match self {
            Self::OpenAi if status == 502 && message.is_none() => {
                // What OpenAI's edge proxy answers: HTML, not the API's JSON.
                let page = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n";
                return (status_code, [(header::CONTENT_TYPE, "text/html")], page).into_response();
            }
            Self::OpenAi => {
                let (usual, kind, usual_code) = match status {
                    400 => ("Invalid request (mock).".to_owned(), "invalid_request_error", None),
                    401 => ("Incorrect API key provided: sk-mock***. You can find your API key at https://platform.openai.com/account/api-keys.".to_owned(), "invalid_request_error", Some("invalid_api_key")),
                    403 => ("You are not allowed to sample from this model".to_owned(), "invalid_request_error", None),
                    404 => (format!("The model `{model}` does not exist or you do not have access to it."), "invalid_request_error", Some("model_not_found")),
                    429 => (format!("Rate limit reached for {model} in organization org-mock on requests per min (RPM): Limit 600, Used 600, Requested 1. Please try again in 1s. Visit https://platform.openai.com/account/rate-limits to learn more."), "requests", Some("rate_limit_exceeded")),
                    503 => ("The engine is currently overloaded, please try again later".to_owned(), "server_error", None),
                    s if s >= 500 => ("The server had an error while processing your request. Sorry about that!".to_owned(), "server_error", None),
                    _ => ("Invalid request (mock).".to_owned(), "invalid_request_error", None),
                };
                json!({"error": {
                    "message": message.unwrap_or(usual),
                    "type": kind,
                    "param": null,
                    "code": code.or(usual_code.map(str::to_owned)),
                }})
            }
            Self::Azure => {
                let usual = match status {
                    429 => {
                        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second."
                    }
                    s if s >= 500 => {
                        "The server had an error while processing your request. Sorry about that!"
                    }
                    _ => "Invalid request (mock).",
                };
                json!({"error": {
                    "code": code.unwrap_or_else(|| status.to_string()),
                    "message": message.unwrap_or_else(|| usual.to_owned()),
                }})
            }
            Self::Anthropic => {
                let (usual, kind) = match status {
                    400 => (
                        "Invalid request (mock).".to_owned(),
                        "invalid_request_error",
                    ),
                    401 => ("invalid x-api-key".to_owned(), "authentication_error"),
                    403 => (
                        "Your API key does not have permission to use the specified resource."
                            .to_owned(),
                        "permission_error",
                    ),
                    404 => (format!("model: {model}"), "not_found_error"),
                    413 => (
                        "Request exceeds the maximum allowed number of bytes.".to_owned(),
                        "request_too_large",
                    ),
                    429 => (
                        "Number of request tokens has exceeded your per-minute rate limit (mock)"
                            .to_owned(),
                        "rate_limit_error",
                    ),
                    529 => ("Overloaded".to_owned(), "overloaded_error"),
                    s if s >= 500 => ("Internal server error".to_owned(), "api_error"),
                    _ => (
                        "Invalid request (mock).".to_owned(),
                        "invalid_request_error",
                    ),
                };
                let request_id = format!("req_mock{status}");
                let body = json!({
                    "type": "error",
                    "error": {"type": code.as_deref().unwrap_or(kind), "message": message.unwrap_or(usual)},
                    "request_id": request_id,
                });
                let mut response = (status_code, Json(body)).into_response();
                response.headers_mut().insert(
                    "request-id",
                    HeaderValue::from_str(&request_id).expect("a request id"),
                );
                return response;
            }
            Self::Ollama => {
                let usual = match status {
                    404 => format!("model \"{model}\" not found, try pulling it first"),
                    503 => "server busy, please try again.  maximum pending requests exceeded"
                        .to_owned(),
                    s if s >= 500 => {
                        "llama runner process has terminated: exit status 2".to_owned()
                    }
                    _ => "invalid request (mock)".to_owned(),
                };
                json!({"error": message.unwrap_or(usual)})
            }
        };
        (status_code, Json(body)).into_response()
    }
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// POSTs `body` to `path` over a raw connection and returns everything the server sent.
    async fn raw_post(mock: &MockLlm, path: &str, headers: &str, body: &Value) -> String {
        let mut stream = tokio::net::TcpStream::connect(mock.addr).await.unwrap();
        let body = body.to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[test]
    fn the_busiest_window_slides_over_every_arrival() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let arrivals = [at(0), at(900), at(1_000), at(1_100), at(1_950), at(3_000)];
        // 900..1,100 and 1,000..1,950 hold three each; 900..1,950 is longer than a second.
        assert_eq!(most_in_window(&arrivals, Duration::from_secs(1)), 3);
        assert_eq!(most_in_window(&arrivals, Duration::from_millis(100)), 1);
        assert_eq!(most_in_window(&arrivals, Duration::from_secs(10)), 6);
        assert_eq!(most_in_window(&[], Duration::from_secs(1)), 0);
    }

    fn chat(model: &str, text: &str) -> Value {
        json!({"model": model, "messages": [{"role": "user", "content": text}]})
    }

    fn body_of(response: &str) -> Value {
        serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn answers_from_the_last_user_message_and_counts_tokens() {
        let mock = MockLlm::start().await;
        let response = raw_post(&mock, "/v1/chat/completions", "", &chat("m", "Hello there")).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = body_of(&response);
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "[mock] Hello there"
        );
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
        );
        let stats = mock.stats("m");
        assert_eq!((stats.requests, stats.outcomes["ok"]), (1, 1));
        assert_eq!(stats.per_second.values().sum::<u64>(), 1);
        assert_eq!(mock.requests("m")[0].path, "/v1/chat/completions");
    }

    #[tokio::test]
    async fn queued_faults_come_first_then_the_default() {
        let mock = MockLlm::start().await;
        mock.script(
            "m",
            Behaviour::answer("fine")
                .fail_next(2, Fault::status(503))
                .fail_next(1, Fault::rate_limited(RetryAfter::Seconds(3))),
        );
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let response = raw_post(&mock, "/v1/chat/completions", "", &chat("m", "x")).await;
            statuses.push(response[9..12].to_owned());
            if statuses.len() == 3 {
                assert!(response.contains("\r\nretry-after: 3\r\n"), "{response}");
            }
        }
        assert_eq!(statuses, ["503", "503", "429", "200"]);
        let outcomes = mock.stats("m").outcomes;
        assert_eq!(
            outcomes,
            BTreeMap::from([("503".into(), 2), ("429".into(), 1), ("ok".into(), 1)])
        );
    }

    #[tokio::test]
    async fn random_faults_follow_their_probability() {
        let mock = MockLlm::start().await;
        mock.script(
            "m",
            Behaviour::default().with_chance(0.3, Fault::status(500)),
        );
        for _ in 0..200 {
            raw_post(&mock, "/v1/chat/completions", "", &chat("m", "x")).await;
        }
        let failed = mock.stats("m").outcomes.get("500").copied().unwrap_or(0);
        assert!((30..=90).contains(&failed), "{failed}");
        mock.script("always", Behaviour::always(Fault::status(529)));
        let response = raw_post(
            &mock,
            "/v1/messages",
            "x-api-key: k\r\nanthropic-version: 2023-06-01\r\n",
            &json!({"model": "always", "max_tokens": 5, "messages": []}),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 529"), "{response}");
        assert_eq!(body_of(&response)["error"]["type"], "overloaded_error");
    }

    #[tokio::test]
    async fn a_reset_closes_the_connection_without_a_byte() {
        let mock = MockLlm::start().await;
        mock.script("m", Behaviour::default().fail_next(1, Fault::Reset));
        assert_eq!(
            raw_post(&mock, "/v1/chat/completions", "", &chat("m", "x")).await,
            ""
        );
        let response = raw_post(&mock, "/v1/chat/completions", "", &chat("m", "x")).await;
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "the server survives: {response}"
        );
    }

    #[tokio::test]
    async fn a_truncated_body_stops_short_of_its_length() {
        let mock = MockLlm::start().await;
        mock.script("m", Behaviour::default().fail_next(1, Fault::Truncated));
        let response = raw_post(&mock, "/v1/chat/completions", "", &chat("m", "x")).await;
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(head.starts_with("HTTP/1.1 200"));
        assert_eq!(body.len(), length / 2, "{response}");
    }

    #[tokio::test]
    async fn checks_what_the_real_apis_require() {
        let mock = MockLlm::start().await;
        let anthropic = "x-api-key: k\r\nanthropic-version: 2023-06-01\r\n";
        let no_max = json!({"model": "c", "messages": [{"role": "user", "content": "x"}]});
        let response = raw_post(&mock, "/v1/messages", anthropic, &no_max).await;
        assert!(response.starts_with("HTTP/1.1 400"));
        assert_eq!(
            body_of(&response)["error"]["message"],
            "max_tokens: Field required"
        );
        let system = json!({"model": "c", "max_tokens": 9, "messages": [{"role": "system", "content": "x"}]});
        let response = raw_post(&mock, "/v1/messages", anthropic, &system).await;
        assert!(
            body_of(&response)["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Unexpected role")
        );
        let response = raw_post(
            &mock,
            "/openai/deployments/d/chat/completions",
            "api-key: k\r\n",
            &chat("x", "y"),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        let response = raw_post(&mock, "/api/chat", "", &chat("llama", "y")).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert_eq!(mock.stats("c").outcomes["invalid"], 2);
    }

    #[tokio::test]
    async fn scripts_and_reports_over_http() {
        let mock = MockLlm::start().await;
        let behaviour = json!({"answer": "scripted", "latency": "1ms", "queue": [{"type": "status", "status": 429, "retry_after": {"http_date": 2}}], "random": [{"probability": 0.0, "fault": {"type": "hang"}}]});
        let script = format!(
            "PUT /_mock/models/org/model HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{behaviour}",
            behaviour.to_string().len()
        );
        let mut stream = tokio::net::TcpStream::connect(mock.addr).await.unwrap();
        stream.write_all(script.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");

        let limited = raw_post(&mock, "/v1/chat/completions", "", &chat("org/model", "x")).await;
        let date = limited
            .lines()
            .find_map(|l| l.strip_prefix("retry-after: "))
            .unwrap();
        let wait = httpdate::parse_http_date(date)
            .unwrap()
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(
            wait > Duration::from_secs(1) && wait <= Duration::from_secs(3),
            "{wait:?}"
        );
        let ok = raw_post(&mock, "/v1/chat/completions", "", &chat("org/model", "x")).await;
        assert_eq!(body_of(&ok)["choices"][0]["message"]["content"], "scripted");

        let mut stream = tokio::net::TcpStream::connect(mock.addr).await.unwrap();
        stream
            .write_all(b"GET /_mock/stats HTTP/1.1\r\nhost: mock\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut stats = String::new();
        stream.read_to_string(&mut stats).await.unwrap();
        let stats: BTreeMap<String, ModelStats> = serde_json::from_value(body_of(&stats)).unwrap();
        assert_eq!(stats["org/model"].requests, 2);

        raw_post(&mock, "/_mock/reset", "", &Value::Null).await;
        assert_eq!(mock.stats("org/model"), ModelStats::default());
    }

    #[test]
    fn behaviours_round_trip_as_json_and_refuse_typos() {
        let behaviour = Behaviour::answer("a")
            .with_latency(Duration::from_millis(250))
            .fail_next(1, Fault::rate_limited(RetryAfter::Millis(1500)))
            .with_chance(
                0.1,
                Fault::Slow {
                    delay: Duration::from_secs(2),
                },
            )
            .with_tool_call("lookup", json!({"q": 1}));
        let text = serde_json::to_value(&behaviour).unwrap();
        assert_eq!(
            text,
            json!({
                "answer": "a",
                "tool_calls": [{"name": "lookup", "arguments": {"q": 1}}],
                "latency": "250ms",
                "chunk_delay": "0s",
                "queue": [{"type": "status", "status": 429, "retry_after": {"millis": 1500}}],
                "random": [{"probability": 0.1, "fault": {"type": "slow", "delay": "2s"}}],
            })
        );
        assert_eq!(
            serde_json::from_value::<Behaviour>(text).unwrap(),
            behaviour
        );
        assert!(serde_json::from_value::<Behaviour>(json!({"latnecy": "1s"})).is_err());
        assert!(serde_json::from_value::<Fault>(json!({"type": "status", "staus": 500})).is_err());
    }

    #[test]
    fn windows_sum_consecutive_seconds() {
        let stats = ModelStats {
            per_second: BTreeMap::from([(10, 5), (11, 7), (13, 4), (70, 9)]),
            ..ModelStats::default()
        };
        assert_eq!(stats.max_in_window(1), 9);
        assert_eq!(stats.max_in_window(2), 12);
        assert_eq!(stats.max_in_window(4), 16);
        assert_eq!(stats.max_in_window(60), 20);
        assert_eq!(stats.max_in_window(61), 25);
        assert_eq!(ModelStats::default().max_in_window(60), 0);
    }
}
