//! `POST /v1/chat/completions` and `GET /v1/models`: OpenAI's Chat Completions API in front of
//! the pipeline, so OpenAI SDKs work unchanged with their base URL pointed at Chorus.
//!
//! A chat completion is a one-call job: validated like any job, published, and answered once the
//! persister has committed it, so every call is stored, rate-limited, retried and dead-lettered
//! like any job step. Its `model` is a route.
//!
//! `stream: true` answers with Server-Sent Events of `chat.completion.chunk` objects, then
//! `data: [DONE]`. The llm worker sends the provider's text to the job's answer stream (core
//! NATS) as it arrives, and this edge forwards each piece. That channel is at most once and a
//! retry restarts the answer, so the stored answer has the last word: when the job is committed,
//! whatever of its text was not forwarded yet goes out as one last piece (all of it, for a
//! provider that does not stream); an answer that no longer extends what was sent (a retry that
//! answered differently) ends the stream with an error event naming the job that holds it. A call
//! that fails before any text was sent is answered with a plain error response, as OpenAI does.
//!
//! Errors use OpenAI's shape. A provider that refused the request (400, 404, 422, a content
//! policy) is the client's `400`/`404`/`422`; a provider that stayed rate-limited is `429`; a
//! timeout or an exceeded deadline `504`; any other provider failure, including its refusing our
//! own credentials, `502`.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use chorus_core::auth::Caller;
use chorus_core::batch::file::LineErrorCode;
use chorus_core::codec::headers;
use chorus_core::fair::Band;
use chorus_core::ids::{JobId, now_millis};
use chorus_core::job::{JobState, JobStatus};
use chorus_core::openai::{self, Streaming};
use chorus_eval::SpecValidator;
use chorus_store::{ChatCompletion, chat_completion};
use futures::{StreamExt, stream};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::events::sse;
use crate::extract::{JsonBody, Path};
use crate::jobs::{Queued, submit, trace_of};
use crate::openapi::{ChatCompletionChunk, ChatCompletionRequest, ErrorBody};
use crate::state::AppState;
use crate::waiter::{Waiter, subscribe};

/// The sim kinds `GET /v1/models` lists beside the configured routes (any `sim:` model works).
const SIM_MODELS: [&str; 3] = ["sim:echo", "sim:json", "sim:lorem"];

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Model {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub owned_by: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
}

/// `GET /v1/models`: the configured routes, then the simulator's kinds.
#[utoipa::path(
    get, path = "/v1/models", operation_id = "listModels", tag = "chat",
    responses((status = 200, description = "The routes", body = ModelList))
)]
pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let data = model_names(&state)
        .iter()
        .filter_map(|name| model(&state, name))
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

/// `GET /v1/models/{model}`: one route.
#[utoipa::path(
    get, path = "/v1/models/{model}", operation_id = "retrieveModel", tag = "chat",
    params(("model" = String, Path, description = "A route name; `sim:` names may contain `/`")),
    responses(
        (status = 200, description = "The route", body = Model),
        (status = 404, description = "No such route (`model_not_found`)", body = ErrorBody),
    )
)]
pub async fn model_by_id(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Model>, ApiError> {
    model(&state, &id)
        .map(Json)
        .ok_or_else(|| ApiError::ModelNotFound {
            message: format!("the model `{id}` does not exist"),
            param: Some("model".into()),
        })
}

/// The models `GET /v1/models` lists and the served OpenAPI document names: the configured
/// routes, then the simulator's kinds.
pub fn model_names(state: &AppState) -> Vec<String> {
    state
        .routes
        .names()
        .chain(SIM_MODELS)
        .map(str::to_owned)
        .collect()
}

fn model(state: &AppState, name: &str) -> Option<Model> {
    let route = state.routes.resolve(name).ok()?;
    Some(Model {
        id: route.name,
        object: "model",
        created: 0,
        owned_by: route.provider.name().to_owned(),
    })
}

/// `POST /v1/chat/completions`: a one-call job, answered once it is stored.
#[utoipa::path(
    post, path = "/v1/chat/completions", operation_id = "createChatCompletion", tag = "chat", request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The answer; with `stream: true`, `text/event-stream` of ChatCompletionChunk events, then `data: [DONE]`", content(
            (ChatCompletion = "application/json"),
            (ChatCompletionChunk = "text/event-stream"),
        )),
        (status = 400, description = "The provider refused the request", body = ErrorBody),
        (status = 404, description = "A model that names no route (`model_not_found`), or one the provider does not have", body = ErrorBody),
        (status = 409, description = "The call was cancelled", body = ErrorBody),
        (status = 429, description = "A budget of the caller's tenant or key cannot cover the call (`budget_exceeded`; a stream a budget cuts short ends with `finish_reason: \"length\"` and an error event with this code), or the key's rate or the tenant's backlog quota is used up", body = ErrorBody),
        (status = 422, description = "Does not fit: the field and the problem; or `max_tokens` and `max_completion_tokens` disagree (`conflicting_parameters`)", body = ErrorBody),
        (status = 500, description = "Chorus could not carry the call through: its answer too large for the bus (`too_large`), refused by the database (`storage_rejected`), or a message that kept crashing its workers (`max_deliveries`); the job keeps the reason", body = ErrorBody),
        (status = 502, description = "The provider failed", body = ErrorBody),
        (status = 504, description = "No answer within edge.max_wait, or past a deadline", body = ErrorBody),
    )
)]
pub async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    request_headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let (spec, streaming) = openai::chat_request(body).map_err(|e| ApiError::Invalid {
        message: e.message,
        param: e.param,
        code: match e.code {
            LineErrorCode::ConflictingParameters => "conflicting_parameters",
            _ => "invalid_value",
        },
    })?;
    let errors = spec.validate(&SpecValidator::new(&*state.routes));
    if !errors.is_empty() {
        return Err(ApiError::fields(&errors));
    }
    let tenant = caller.tenant.clone();
    let job = JobId::new();
    let created = now_millis().div_euclid(1000);
    let model = spec.model.clone().unwrap_or_default();
    // Listen before publishing, so neither the end nor the first text can come first.
    let deadline = tokio::time::Instant::now() + state.max_wait;
    let waiter = Waiter::listen(&state, &tenant, job, deadline).await?;
    let deltas = match streaming {
        Some(_) => Some(subscribe(&state, state.bus.subjects.answer_stream(&tenant, job)).await?),
        None => None,
    };
    submit(
        &state,
        &caller,
        job,
        spec,
        trace_of(&request_headers),
        streaming.is_some(),
        // A chat completion's caller waits for it; its key may cap it lower.
        Band::Interactive.capped(caller.max_band),
        Queued::ByOrchestrator,
    )
    .await?;
    match (streaming, deltas) {
        (Some(options), Some(deltas)) => {
            let chunks = Chunks {
                id: format!("chatcmpl-{}", job.as_uuid().simple()),
                created,
                model,
            };
            stream_answer(waiter, deltas, chunks, options).await
        }
        _ => {
            let finished = finished(waiter).await?;
            answer(&finished).map(|c| Json(c).into_response())
        }
    }
}

/// The final state of the job `waiter` waits for; a `504` past the deadline.
async fn finished(waiter: Waiter) -> Result<JobState, ApiError> {
    let job = waiter.job();
    waiter.finished().await?.ok_or_else(|| ApiError::Upstream {
        status: StatusCode::GATEWAY_TIMEOUT,
        code: "timeout".into(),
        message: format!("the call did not finish within edge.max_wait; it goes on as job {job}"),
    })
}

/// The answer of a finished job, or its failure as OpenAI's error.
fn answer(state: &JobState) -> Result<ChatCompletion, ApiError> {
    match state.status {
        JobStatus::Succeeded => Ok(chat_completion(state)),
        _ => Err(failure(state)),
    }
}

/// Why a job did not answer, with the status a client of OpenAI's API would expect.
fn failure(state: &JobState) -> ApiError {
    let error = state.error.as_ref();
    let kind = error.map_or("server_error", |e| e.kind.as_str());
    let message = error
        .map(|e| e.message.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| format!("the call ended {}", state.status.as_str()));
    let status = match kind {
        "bad_request" | "content_policy" => StatusCode::BAD_REQUEST,
        "not_found" => StatusCode::NOT_FOUND,
        "unprocessable" => StatusCode::UNPROCESSABLE_ENTITY,
        "rate_limited" | chorus_core::job::BUDGET_EXCEEDED => StatusCode::TOO_MANY_REQUESTS,
        "timeout" | "request_timeout" | "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
        "cancelled" => StatusCode::CONFLICT,
        // Chorus's own failures (the failure policy's kinds), not the provider's.
        "too_large" | "storage_rejected" | "undecodable" | "max_deliveries" | "bus_error" => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::Upstream {
        status,
        code: kind.to_owned(),
        message: format!("{message} (job {})", state.id),
    }
}

/// What every chunk of one answer shares.
struct Chunks {
    id: String,
    created: i64,
    model: String,
}

impl Chunks {
    fn event(&self, delta: Value, finish_reason: Option<&str>) -> Event {
        self.data(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        }))
    }

    fn usage(&self, completion: &ChatCompletion) -> Event {
        self.data(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": completion.usage,
        }))
    }

    fn data(&self, value: Value) -> Event {
        Event::default().data(value.to_string())
    }
}

/// What arrives while an answer streams.
enum Arrival {
    Begin,
    Text(String),
    Finished(Result<Box<JobState>, ApiError>),
}

/// Streams one answer: waits for its first text (or its end), then answers with the event stream.
async fn stream_answer(
    waiter: Waiter,
    deltas: async_nats::Subscriber,
    chunks: Chunks,
    options: Streaming,
) -> Result<Response, ApiError> {
    let deltas = deltas.map(|message| {
        let begin = message
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::DELTA))
            .is_some();
        match begin {
            true => Arrival::Begin,
            false => Arrival::Text(String::from_utf8_lossy(&message.payload).into_owned()),
        }
    });
    let finished =
        stream::once(finished(waiter)).map(|state| Arrival::Finished(state.map(Box::new)));
    let mut arrivals = Box::pin(stream::select(deltas, finished));
    // Before the first text the answer can still be a plain error response.
    let mut pending = Vec::new();
    loop {
        match arrivals.next().await {
            Some(Arrival::Begin) => continue,
            Some(Arrival::Text(text)) => {
                pending.push(text);
                break;
            }
            Some(Arrival::Finished(Ok(state))) if state.status != JobStatus::Succeeded => {
                return Err(failure(&state));
            }
            Some(Arrival::Finished(Err(e))) => return Err(e),
            Some(finished @ Arrival::Finished(Ok(_))) => {
                let events = Forward::new(chunks, options).finish_with(finished);
                return Ok(sse(stream::iter(events)));
            }
            None => return Err(ApiError::unavailable("NATS", "the subscriptions ended")),
        }
    }
    let mut forward = Forward::new(chunks, options);
    let mut first: Vec<Event> = vec![forward.opening()];
    first.extend(pending.into_iter().flat_map(|t| forward.text(t)));
    let rest = stream::unfold(
        (arrivals, Some(forward)),
        |(mut arrivals, forward)| async move {
            let mut forward = forward?;
            loop {
                match arrivals.next().await {
                    Some(Arrival::Begin) => forward.restarted = true,
                    Some(Arrival::Text(text)) => {
                        let events = forward.text(text);
                        if !events.is_empty() {
                            return Some((events, (arrivals, Some(forward))));
                        }
                    }
                    Some(end @ Arrival::Finished(_)) => {
                        return Some((forward.finish_with(end), (arrivals, None)));
                    }
                    None => {
                        let error = ApiError::unavailable("NATS", "the subscriptions ended");
                        return Some((vec![error_event(&error)], (arrivals, None)));
                    }
                }
            }
        },
    );
    Ok(sse(stream::iter([first])
        .chain(rest)
        .flat_map(stream::iter)))
}

/// The events of one streamed answer, and what was sent of its text.
struct Forward {
    chunks: Chunks,
    options: Streaming,
    sent: String,
    opened: bool,
    /// A later attempt began after text was sent: its text waits for the stored answer.
    restarted: bool,
}

impl Forward {
    fn new(chunks: Chunks, options: Streaming) -> Self {
        Self {
            chunks,
            options,
            sent: String::new(),
            opened: false,
            restarted: false,
        }
    }

    /// The first chunk: the assistant's role.
    fn opening(&mut self) -> Event {
        self.opened = true;
        self.chunks
            .event(json!({"role": "assistant", "content": ""}), None)
    }

    fn text(&mut self, text: String) -> Vec<Event> {
        if self.restarted || text.is_empty() {
            return Vec::new();
        }
        self.sent.push_str(&text);
        vec![self.chunks.event(json!({"content": text}), None)]
    }

    /// The last events: what the stored answer adds to what was sent, the finish reason, the
    /// usage if asked for, and `[DONE]`; or the error.
    fn finish_with(mut self, end: Arrival) -> Vec<Event> {
        let mut events = Vec::new();
        if !self.opened {
            events.push(self.opening());
        }
        let state = match end {
            Arrival::Finished(Ok(state)) => state,
            Arrival::Finished(Err(e)) => {
                events.push(error_event(&e));
                return events;
            }
            Arrival::Begin | Arrival::Text(_) => return events,
        };
        let completion = match answer(&state) {
            Ok(completion) => completion,
            Err(e) => {
                events.push(error_event(&e));
                return events;
            }
        };
        let [choice] = &completion.choices;
        let text = choice.message.content.clone().unwrap_or_default();
        let Some(rest) = text.strip_prefix(self.sent.as_str()) else {
            let error = ApiError::Upstream {
                status: StatusCode::BAD_GATEWAY,
                code: "stream_diverged".into(),
                message: format!(
                    "the call was retried and answered differently; the answer is job {}",
                    state.id
                ),
            };
            events.push(error_event(&error));
            return events;
        };
        let mut delta = json!({});
        if !rest.is_empty() {
            delta["content"] = json!(rest);
        }
        if let Some(calls) = choice.message.tool_calls.as_ref().and_then(Value::as_array) {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    call["index"] = json!(i);
                    call
                })
                .collect();
            delta["tool_calls"] = json!(calls);
        }
        if delta.as_object().is_some_and(|d| !d.is_empty()) {
            events.push(self.chunks.event(delta, None));
        }
        events.push(self.chunks.event(json!({}), Some(&choice.finish_reason)));
        if self.options.include_usage {
            events.push(self.chunks.usage(&completion));
        }
        // An answer a budget cut short ends with an error naming the budget.
        if let Some(cut) = state
            .steps
            .first()
            .and_then(|s| s.output.as_ref()?.cut.clone())
        {
            let error = ApiError::Upstream {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: chorus_core::job::BUDGET_EXCEEDED.into(),
                message: format!("the answer was cut short: {cut} (job {})", state.id),
            };
            events.push(error_event(&error));
        }
        events.push(Event::default().data("[DONE]"));
        events
    }
}

/// An error after the stream began, as OpenAI sends one: a data event with an `error` object.
fn error_event(error: &ApiError) -> Event {
    Event::default().data(error.body().to_string())
}
