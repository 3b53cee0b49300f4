//! Batches in the OpenAI Batch API shape: reading an input file into job specs, and where a job
//! came from when it is one line of a batch.
//!
//! An input file is JSONL, one request per line:
//! `{"custom_id": "…", "method": "POST", "url": "/v1/chat/completions" | "/v1/jobs", "body": {…}}`.
//! Each line's `url` decides how its body is read, so one file may mix both: a `/v1/jobs` body is
//! a Chorus [`JobSpec`]; a `/v1/chat/completions` body is an OpenAI chat completion request,
//! translated into a one-call job spec (`developer` messages become system messages; content
//! given as text parts is joined with newlines).
//!
//! Decisions a caller relies on:
//! - Blank lines (empty, or only whitespace) are skipped, but line numbers count every line of
//!   the file, so an error names the line an editor shows; a UTF-8 byte order mark is ignored.
//! - A file is checked completely, including what needs configuration (known routes, compilable
//!   templates and assertions, through a [`Validator`]): every bad line is reported (the first
//!   [`MAX_REPORTED`], then a count of the rest), by number, naming the field of its body.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::spec::{ChatMessage, FieldError, FieldErrorKind, JobSpec, Params, Role, Validator};

/// What a batch line asks for: its `url`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    /// A plain chat completion on a route; the result is a `chat.completion` object.
    #[serde(rename = "/v1/chat/completions")]
    ChatCompletions,
    /// A full Chorus job; the result is the job as `GET /v1/jobs/{id}` shows it.
    #[serde(rename = "/v1/jobs")]
    Jobs,
}

impl Endpoint {
    pub const ALL: [Endpoint; 2] = [Self::ChatCompletions, Self::Jobs];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Jobs => "/v1/jobs",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// The batch line a job came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub batch: String,
    pub custom_id: String,
    pub endpoint: Endpoint,
    /// The line's position in its input file (0-based); output files keep this order.
    #[serde(default)]
    pub line: u64,
}

/// The longest `custom_id`, in characters.
pub const MAX_CUSTOM_ID: usize = 256;
/// The longest batch id a JetStream submitter may give (`Chorus-Batch`), in characters.
pub const MAX_BATCH_ID: usize = 256;

/// Checks a batch line's `custom_id`, wherever it comes from (a line of an input file, a
/// JetStream submission's `Chorus-Custom-Id`): 1 to [`MAX_CUSTOM_ID`] characters, without line
/// breaks (the id travels in NATS headers, which cannot hold them). Any other character is
/// stored as it is.
pub fn check_custom_id(id: &str) -> Result<(), FieldError> {
    check_id("custom_id", id, MAX_CUSTOM_ID)
}

/// Checks the batch id a JetStream submission names (`Chorus-Batch`): 1 to [`MAX_BATCH_ID`]
/// characters (it is indexed, and part of the results subject), without line breaks.
pub fn check_batch_id(id: &str) -> Result<(), FieldError> {
    check_id("batch", id, MAX_BATCH_ID)
}

/// OpenAI's limits on `metadata` (of a batch, of a chat completion): at most this many pairs…
pub const MAX_METADATA_PAIRS: usize = 16;
/// …keys of at most this many characters…
pub const MAX_METADATA_KEY: usize = 64;
/// …and string values of at most this many characters.
pub const MAX_METADATA_VALUE: usize = 512;

/// Checks the `metadata` of a batch or of a chat completion request against OpenAI's limits:
/// at most [`MAX_METADATA_PAIRS`] pairs, keys of at most [`MAX_METADATA_KEY`] characters,
/// values strings of at most [`MAX_METADATA_VALUE`]. (A Chorus job's own `metadata` is any JSON
/// object; see [`crate::spec::MAX_JSON_DEPTH`].)
pub fn check_openai_metadata(metadata: &Map<String, Value>) -> Result<(), FieldError> {
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(FieldError::new(
            "metadata",
            format!(
                "{} pairs; at most {MAX_METADATA_PAIRS} are allowed",
                metadata.len()
            ),
        ));
    }
    for (key, value) in metadata {
        if key.chars().count() > MAX_METADATA_KEY {
            return Err(FieldError::new(
                "metadata",
                format!("a key is longer than {MAX_METADATA_KEY} characters"),
            ));
        }
        let problem = match value {
            Value::String(s) if s.chars().count() > MAX_METADATA_VALUE => {
                format!("longer than {MAX_METADATA_VALUE} characters")
            }
            Value::String(_) => continue,
            other => format!("must be a string, got {}", kind(other)),
        };
        return Err(FieldError::new(format!("metadata.{key}"), problem));
    }
    Ok(())
}

fn check_id(field: &str, id: &str, max: usize) -> Result<(), FieldError> {
    let problem = if id.is_empty() {
        "must not be empty".to_owned()
    } else if id.chars().count() > max {
        format!("longer than {max} characters")
    } else if id.contains(['\r', '\n']) {
        "must not contain line breaks".to_owned()
    } else {
        return Ok(());
    };
    Err(FieldError::new(field, problem))
}
/// How many errors a [`FileErrors`] lists; the rest are only counted.
pub const MAX_REPORTED: usize = 100;

/// One request of an input file.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchLine {
    /// The line's number in the file, from 1 (blank lines count).
    pub line: u64,
    pub custom_id: String,
    pub endpoint: Endpoint,
    pub spec: JobSpec,
}

impl BatchLine {
    /// Where a job made from this line comes from.
    pub fn origin(&self, batch: &str) -> Origin {
        Origin {
            batch: batch.to_owned(),
            custom_id: self.custom_id.clone(),
            endpoint: self.endpoint,
            line: self.line.saturating_sub(1),
        }
    }
}

/// What kind of problem a [`LineError`] is; the codes of OpenAI's batch errors where one fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineErrorCode {
    /// Not UTF-8, not JSON, not an object, or a field of the wrong type or unknown.
    InvalidJsonLine,
    MissingRequiredParameter,
    InvalidCustomId,
    DuplicateCustomId,
    InvalidMethod,
    InvalidUrl,
    /// The body is well-formed but asks for something Chorus does not do, or names a field
    /// wrongly.
    InvalidRequest,
    /// A model that names no route (OpenAI's `model_not_found`).
    ModelNotFound,
    /// Two fields that must agree do not (`max_tokens` and `max_completion_tokens`).
    ConflictingParameters,
    EmptyFile,
    TooManyRequests,
}

/// One problem with an input file: `line 7: body.messages[0].role: unknown role "robot"`.
#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, utoipa::ToSchema,
)]
pub struct LineError {
    /// From 1; `None` for the file as a whole.
    pub line: Option<u64>,
    pub code: LineErrorCode,
    /// The field the problem is about, as a path (`body.messages[0].role`).
    pub param: Option<String>,
    pub message: String,
}

impl LineError {
    fn new(
        line: Option<u64>,
        code: LineErrorCode,
        param: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            line,
            code,
            param,
            message: message.into(),
        }
    }
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(param) = &self.param {
            write!(f, "{param}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a file was refused: its first [`MAX_REPORTED`] problems, and how many more there were.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct FileErrors {
    /// In line order. A problem with the whole file (no requests, too many) comes alone.
    pub errors: Vec<LineError>,
    /// Problems found but not listed.
    pub omitted: u64,
}

impl fmt::Display for FileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for error in &self.errors {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            error.fmt(f)?;
        }
        if self.omitted > 0 {
            write!(f, "; and {} more", self.omitted)?;
        }
        Ok(())
    }
}

/// Collects errors up to [`MAX_REPORTED`], counting the rest.
#[derive(Default)]
struct Collector {
    errors: Vec<LineError>,
    omitted: u64,
}

impl Collector {
    fn push(&mut self, error: LineError) {
        if self.errors.len() < MAX_REPORTED {
            self.errors.push(error);
        } else {
            self.omitted += 1;
        }
    }

    fn finish(self) -> Result<(), FileErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(FileErrors {
                errors: self.errors,
                omitted: self.omitted,
            })
        }
    }
}

/// Reads and checks a whole input file holding 1..=`max_lines` requests (blank lines are skipped
/// and not counted). Every other line must be a valid request whose spec passes `validator`
/// ([`JobSpec::validate`]: known routes, compilable templates and assertions), and no two may
/// share a `custom_id`. On failure every bad line is reported, in line order: a line that cannot
/// be read with the first problem that stops it, a line that reads with every check it fails
/// (naming the field of its body; for a chat completion, the request's own field:
/// `body.temperature`).
pub fn parse_file(
    bytes: &[u8],
    max_lines: usize,
    validator: &impl Validator,
) -> Result<Vec<BatchLine>, FileErrors> {
    let (lines, mut problems) = read_lines(bytes, max_lines)?;
    for line in &lines {
        for e in line.spec.validate(validator) {
            let code = match e.kind {
                FieldErrorKind::UnknownRoute => LineErrorCode::ModelNotFound,
                _ => LineErrorCode::InvalidRequest,
            };
            problems.push(LineError::new(
                Some(line.line),
                code,
                Some(body_param(line.endpoint, &e.field)),
                e.problem,
            ));
        }
    }
    // Stable: a line's own problems keep their order.
    problems.sort_by_key(|e| e.line);
    let mut errors = Collector::default();
    for problem in problems {
        errors.push(problem);
    }
    errors.finish().map(|()| lines)
}

/// The lines of a file that read as requests, and the problems of those that do not; `Err` for
/// a problem with the file as a whole.
fn read_lines(
    bytes: &[u8],
    max_lines: usize,
) -> Result<(Vec<BatchLine>, Vec<LineError>), FileErrors> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let requests = || {
        bytes
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, raw)| !raw.iter().all(u8::is_ascii_whitespace))
    };
    let count = requests().count();
    let file_error = |code, message: String| FileErrors {
        errors: vec![LineError::new(None, code, None, message)],
        omitted: 0,
    };
    if count == 0 {
        return Err(file_error(
            LineErrorCode::EmptyFile,
            "the file holds no requests".into(),
        ));
    }
    if count > max_lines {
        return Err(file_error(
            LineErrorCode::TooManyRequests,
            format!("the file holds {count} requests; a batch takes at most {max_lines}"),
        ));
    }
    let mut lines = Vec::with_capacity(count);
    let mut errors = Vec::new();
    let mut first_use: HashMap<String, u64> = HashMap::with_capacity(count);
    for (i, raw) in requests() {
        let number = i as u64 + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(text) => text,
            Err(e) => {
                errors.push(LineError::new(
                    Some(number),
                    LineErrorCode::InvalidJsonLine,
                    None,
                    format!("not valid UTF-8 (at byte {})", e.valid_up_to() + 1),
                ));
                continue;
            }
        };
        let (envelope, body) = match parse_envelope(number, text) {
            Ok(parsed) => parsed,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if let Some(first) = first_use.get(&envelope.custom_id) {
            errors.push(LineError::new(
                Some(number),
                LineErrorCode::DuplicateCustomId,
                Some("custom_id".into()),
                format!(
                    "\"{}\" is already used on line {first}; custom ids must be unique in a batch",
                    envelope.custom_id
                ),
            ));
            continue;
        }
        first_use.insert(envelope.custom_id.clone(), number);
        match parse_body(number, envelope, body) {
            Ok(line) => lines.push(line),
            Err(e) => errors.push(e),
        }
    }
    Ok((lines, errors))
}

/// Reads one line of an input file; `line` is its number, for errors.
pub fn parse_line(line: u64, text: &str) -> Result<BatchLine, LineError> {
    let (envelope, body) = parse_envelope(line, text)?;
    parse_body(line, envelope, body)
}

/// Where a spec field came from in a line's body.
fn body_param(endpoint: Endpoint, field: &str) -> String {
    let field = match endpoint {
        Endpoint::Jobs => field,
        // The request's sampling fields sit at the top of its body.
        Endpoint::ChatCompletions => field.strip_prefix("params.").unwrap_or(field),
    };
    format!("body.{field}")
}

/// A line's fields other than its body.
struct Envelope {
    custom_id: String,
    endpoint: Endpoint,
}

const ENVELOPE_FIELDS: [&str; 4] = ["custom_id", "method", "url", "body"];

fn parse_envelope(line: u64, text: &str) -> Result<(Envelope, Map<String, Value>), LineError> {
    let at = Some(line);
    let value: Value = serde_json::from_str(text).map_err(|e| {
        LineError::new(
            at,
            LineErrorCode::InvalidJsonLine,
            None,
            format!("not valid JSON: {}", json_problem(&e)),
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err(LineError::new(
            at,
            LineErrorCode::InvalidJsonLine,
            None,
            "a line must be a JSON object with custom_id, method, url and body",
        ));
    };
    let unknown = unknown_fields(&map, &ENVELOPE_FIELDS);
    if !unknown.is_empty() {
        return Err(LineError::new(
            at,
            LineErrorCode::InvalidJsonLine,
            None,
            format!("unknown {unknown}; a line has only custom_id, method, url and body",),
        ));
    }
    let mut required = |field: &str| match map.remove(field) {
        None | Some(Value::Null) => Err(LineError::new(
            at,
            LineErrorCode::MissingRequiredParameter,
            Some(field.into()),
            "required",
        )),
        Some(value) => Ok(value),
    };
    let custom_id = required("custom_id")?;
    let method = required("method")?;
    let url = required("url")?;
    let body = required("body")?;

    let invalid =
        |code, field: &str, message: String| LineError::new(at, code, Some(field.into()), message);
    let custom_id = match custom_id {
        Value::String(s) => match check_custom_id(&s) {
            Ok(()) => s,
            Err(e) => return Err(invalid(LineErrorCode::InvalidCustomId, &e.field, e.problem)),
        },
        other => {
            return Err(invalid(
                LineErrorCode::InvalidCustomId,
                "custom_id",
                format!("must be a string, got {}", kind(&other)),
            ));
        }
    };
    match method {
        Value::String(m) if m == "POST" => {}
        other => {
            return Err(invalid(
                LineErrorCode::InvalidMethod,
                "method",
                format!("must be \"POST\", got {other}"),
            ));
        }
    }
    let endpoint = match &url {
        Value::String(u) => Endpoint::parse(u),
        _ => None,
    }
    .ok_or_else(|| {
        invalid(
            LineErrorCode::InvalidUrl,
            "url",
            format!("unsupported url {url}; use \"/v1/chat/completions\" or \"/v1/jobs\""),
        )
    })?;
    let Value::Object(body) = body else {
        return Err(invalid(
            LineErrorCode::InvalidJsonLine,
            "body",
            format!("must be a JSON object, got {}", kind(&body)),
        ));
    };
    Ok((
        Envelope {
            custom_id,
            endpoint,
        },
        body,
    ))
}

fn parse_body(
    line: u64,
    envelope: Envelope,
    body: Map<String, Value>,
) -> Result<BatchLine, LineError> {
    let spec = body_spec(envelope.endpoint, body)
        .map_err(|e| LineError::new(Some(line), e.code, Some(e.param), e.message))?;
    Ok(BatchLine {
        line,
        custom_id: envelope.custom_id,
        endpoint: envelope.endpoint,
        spec,
    })
}

/// A request body as a job spec, read as `endpoint` says: a line's `body`, or a JetStream
/// submission's whole payload. The error names the field within the body (`messages[0].role`).
pub fn spec_from_body(endpoint: Endpoint, body: Value) -> Result<JobSpec, FieldError> {
    let Value::Object(body) = body else {
        return Err(FieldError::new(
            "body",
            format!("must be a JSON object, got {}", kind(&body)),
        ));
    };
    body_spec(endpoint, body).map_err(|e| {
        let field = e.param.strip_prefix("body.").unwrap_or(&e.param);
        FieldError::new(field, e.message)
    })
}

fn body_spec(endpoint: Endpoint, body: Map<String, Value>) -> Result<JobSpec, BodyError> {
    match endpoint {
        Endpoint::Jobs => job_spec(body),
        Endpoint::ChatCompletions => match chat_spec(body)? {
            (spec, None) => Ok(spec),
            (_, Some(_)) => Err(BodyError::invalid(
                "body.stream",
                "streaming is not available in batches",
            )),
        },
    }
}

/// How a `POST /v1/chat/completions` asked to be streamed (`stream: true`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streaming {
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
}

/// A problem with a `POST /v1/chat/completions` body: the field (a path within the body, `None`
/// for the body as a whole) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatRequestError {
    pub param: Option<String>,
    pub message: String,
    pub code: LineErrorCode,
}

/// A `POST /v1/chat/completions` body (OpenAI's chat completion request) as a one-call job spec,
/// and whether to stream the answer.
pub fn chat_request(body: Value) -> Result<(JobSpec, Option<Streaming>), ChatRequestError> {
    let Value::Object(body) = body else {
        return Err(ChatRequestError {
            param: None,
            message: format!("the body must be a JSON object, got {}", kind(&body)),
            code: LineErrorCode::InvalidRequest,
        });
    };
    chat_spec(body).map_err(|e| {
        let param = e.param.strip_prefix("body.").map(str::to_owned);
        let message = match &param {
            Some(field) => format!("{field}: {}", e.message),
            None => e.message,
        };
        ChatRequestError {
            param,
            message,
            code: e.code,
        }
    })
}

/// A problem in a body, before it knows its line.
struct BodyError {
    code: LineErrorCode,
    param: String,
    message: String,
}

impl BodyError {
    fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: LineErrorCode::InvalidRequest,
            param: param.into(),
            message: message.into(),
        }
    }

    fn missing(param: impl Into<String>) -> Self {
        Self {
            code: LineErrorCode::MissingRequiredParameter,
            param: param.into(),
            message: "required".into(),
        }
    }
}

/// The body of a `/v1/jobs` line, with the path of the field a problem is in.
fn job_spec(body: Map<String, Value>) -> Result<JobSpec, BodyError> {
    serde_path_to_error::deserialize(Value::Object(body)).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." {
            "body".to_owned()
        } else {
            format!("body.{path}")
        };
        BodyError::invalid(param, e.into_inner().to_string())
    })
}

/// The fields of an OpenAI chat completion request Chorus takes. `user` is accepted and ignored;
/// `n` only as 1; `stream` (and `stream_options`) not in batches.
const CHAT_FIELDS: [&str; 16] = [
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "metadata",
    "user",
    "stream",
    "stream_options",
    "n",
];

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Option<Vec<ChatRequestMessage>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<Value>,
    seed: Option<u64>,
    response_format: Option<Value>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    metadata: Option<Map<String, Value>>,
    /// Accepted and ignored, but a string.
    #[serde(rename = "user")]
    _user: Option<String>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRequestMessage {
    role: String,
    #[serde(default)]
    content: Value,
    #[serde(default)]
    name: Option<String>,
}

/// A `/v1/chat/completions` body as a one-call job spec, and how to stream it.
fn chat_spec(body: Map<String, Value>) -> Result<(JobSpec, Option<Streaming>), BodyError> {
    let unknown = unknown_fields(&body, &CHAT_FIELDS);
    if !unknown.is_empty() {
        return Err(BodyError::invalid(
            "body",
            format!(
                "unknown or unsupported {unknown}; a chat completion takes {}",
                CHAT_FIELDS.join(", ")
            ),
        ));
    }
    let request: ChatRequest =
        serde_path_to_error::deserialize(Value::Object(body)).map_err(|e| {
            BodyError::invalid(format!("body.{}", e.path()), e.into_inner().to_string())
        })?;
    let streaming = match (request.stream, request.stream_options) {
        (Some(true), options) => Some(Streaming {
            include_usage: options.is_some_and(|o| o.include_usage),
        }),
        (_, Some(_)) => {
            return Err(BodyError::invalid(
                "body.stream_options",
                "only with `stream: true`",
            ));
        }
        _ => None,
    };
    if let Some(metadata) = &request.metadata {
        check_openai_metadata(metadata)
            .map_err(|e| BodyError::invalid(format!("body.{}", e.field), e.problem))?;
    }
    if let Some(n) = request.n.filter(|n| *n != 1) {
        return Err(BodyError::invalid(
            "body.n",
            format!("must be 1 (one choice per request), got {n}"),
        ));
    }
    let model = request
        .model
        .ok_or_else(|| BodyError::missing("body.model"))?;
    let messages = request
        .messages
        .ok_or_else(|| BodyError::missing("body.messages"))?;
    if messages.is_empty() {
        return Err(BodyError::invalid("body.messages", "must not be empty"));
    }
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| chat_message(i, m))
        .collect::<Result<_, _>>()?;
    let max_tokens = match (request.max_tokens, request.max_completion_tokens) {
        (Some(a), Some(b)) if a != b => {
            return Err(BodyError {
                code: LineErrorCode::ConflictingParameters,
                param: "body.max_completion_tokens".into(),
                message: format!("differs from max_tokens ({a}); give one of them"),
            });
        }
        (a, b) => b.or(a),
    };
    // OpenAI's shapes: tools a list of objects, tool_choice a mode or an object, metadata text.
    if let Some(tools) = &request.tools
        && !tools
            .as_array()
            .is_some_and(|t| t.iter().all(Value::is_object))
    {
        return Err(BodyError::invalid(
            "body.tools",
            format!("must be an array of tool objects, got {}", kind(tools)),
        ));
    }
    if let Some(choice) = &request.tool_choice
        && !(choice.is_object()
            || choice
                .as_str()
                .is_some_and(|c| ["none", "auto", "required"].contains(&c)))
    {
        return Err(BodyError::invalid(
            "body.tool_choice",
            "must be `none`, `auto`, `required` or an object naming a tool",
        ));
    }
    if let Some((key, value)) = request
        .metadata
        .iter()
        .flatten()
        .find(|(_, value)| !value.is_string())
    {
        return Err(BodyError::invalid(
            format!("body.metadata.{key}"),
            format!("must be a string, got {}", kind(value)),
        ));
    }
    let stop = match request.stop {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s),
                other => Err(BodyError::invalid(
                    format!("body.stop[{i}]"),
                    format!("must be a string, got {}", kind(&other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(BodyError::invalid(
                "body.stop",
                format!(
                    "must be a string or an array of strings, got {}",
                    kind(&other)
                ),
            ));
        }
    };
    let spec = JobSpec {
        model: Some(model),
        messages,
        params: Params {
            temperature: request.temperature,
            top_p: request.top_p,
            max_tokens,
            stop,
            seed: request.seed,
            response_format: request.response_format,
            tools: request.tools,
            tool_choice: request.tool_choice,
        },
        metadata: request.metadata.unwrap_or_default(),
        ..JobSpec::default()
    };
    Ok((spec, streaming))
}

/// One request message: `developer` is a system message; content is a string or text parts,
/// joined with newlines.
fn chat_message(i: usize, message: ChatRequestMessage) -> Result<ChatMessage, BodyError> {
    let role = match message.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(BodyError::invalid(
                format!("body.messages[{i}].role"),
                format!("unknown role \"{other}\" (use system, developer, user or assistant)"),
            ));
        }
    };
    let field = format!("body.messages[{i}].content");
    let content = match message.content {
        Value::Null => return Err(BodyError::missing(field)),
        Value::String(s) => s,
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let part_type = part.get("type").and_then(Value::as_str);
                if part_type != Some("text") {
                    let got =
                        part_type.map_or_else(|| "no type".to_owned(), |k| format!("\"{k}\""));
                    return Err(BodyError::invalid(
                        format!("{field}[{j}].type"),
                        format!("only \"text\" parts are available in batches, got {got}"),
                    ));
                }
                match part.get("text") {
                    Some(Value::String(text)) => texts.push(text.as_str()),
                    None | Some(Value::Null) => {
                        return Err(BodyError::missing(format!("{field}[{j}].text")));
                    }
                    Some(other) => {
                        return Err(BodyError::invalid(
                            format!("{field}[{j}].text"),
                            format!("must be a string, got {}", kind(other)),
                        ));
                    }
                }
            }
            texts.join("\n")
        }
        other => {
            return Err(BodyError::invalid(
                field,
                format!(
                    "must be a string or an array of text parts, got {}",
                    kind(&other)
                ),
            ));
        }
    };
    Ok(ChatMessage {
        role,
        content,
        name: message.name,
    })
}

/// "field `a`" / "fields `a`, `b`" for the keys of `map` not in `known`; empty when none.
fn unknown_fields(map: &Map<String, Value>, known: &[&str]) -> String {
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| format!("`{k}`"))
        .collect();
    match unknown.len() {
        0 => String::new(),
        1 => format!("field {}", unknown[0]),
        _ => format!("fields {}", unknown.join(", ")),
    }
}

/// A JSON value's type, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON syntax error with its column but without serde_json's "at line 1" (the file's line is
/// named separately).
fn json_problem(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let problem = text.rfind(" at line ").map_or(&text[..], |i| &text[..i]);
    format!("{problem} (column {})", e.column())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assertion::Assertion;
    use serde_json::json;

    struct Routes(&'static [&'static str]);

    /// Every route is known.
    const ANY: Routes = Routes(&[]);

    impl Validator for Routes {
        type RouteError = String;
        type AssertionError = std::convert::Infallible;

        fn check_route(&self, model: &str) -> Result<(), String> {
            if self.0.is_empty() || self.0.contains(&model) {
                Ok(())
            } else {
                Err(format!("unknown route `{model}`"))
            }
        }

        fn check_assertion(&self, _: &Assertion) -> Result<(), Self::AssertionError> {
            Ok(())
        }
    }

    fn line(custom_id: &str, url: &str, body: Value) -> String {
        json!({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).to_string()
    }

    fn chat(body: Value) -> String {
        line("c1", "/v1/chat/completions", body)
    }

    /// The one error of a one-line file, as displayed.
    fn error_of(text: &str) -> String {
        parse_line(7, text).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn a_jobs_line_is_a_job_spec() {
        let body = json!({
            "model": "fast",
            "prompt": "Grade: {{ memo }}",
            "input": {"memo": "ship it"},
            "priority": 3,
            "evaluate": {"assertions": [{"type": "contains", "value": "A"}]}
        });
        let parsed = parse_line(1, &line("memo-1", "/v1/jobs", body.clone())).unwrap();
        assert_eq!(parsed.custom_id, "memo-1");
        assert_eq!(parsed.endpoint, Endpoint::Jobs);
        assert_eq!(
            parsed.spec,
            serde_json::from_value::<JobSpec>(body).unwrap()
        );
        assert_eq!(
            parsed.origin("batch_1"),
            Origin {
                batch: "batch_1".into(),
                custom_id: "memo-1".into(),
                endpoint: Endpoint::Jobs,
                line: 0,
            }
        );
    }

    #[test]
    fn jobs_errors_name_the_field_path() {
        let body = json!({"model": "m", "messages": [{"role": "robot", "content": "hi"}]});
        let err = error_of(&line("a", "/v1/jobs", body));
        assert!(
            err.starts_with("line 7: body.messages[0].role: unknown variant `robot`"),
            "{err}"
        );
        let err = error_of(&line("a", "/v1/jobs", json!({"model": "m", "modle": "x"})));
        assert!(
            err.starts_with("line 7: body.modle: unknown field `modle`"),
            "{err}"
        );
        let err = error_of(&line(
            "a",
            "/v1/jobs",
            json!({"model": "m", "priority": "high"}),
        ));
        assert!(
            err.starts_with("line 7: body.priority: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn a_chat_completion_becomes_a_one_call_spec() {
        let body = json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Hello"},
                    {"type": "text", "text": "world"}
                ], "name": "ann"},
                {"role": "assistant", "content": "Hi."},
                {"role": "system", "content": "Again."}
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_completion_tokens": 64,
            "stop": "END",
            "seed": 42,
            "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "auto",
            "metadata": {"case": "7"},
            "user": "someone",
            "stream": false,
            "n": 1
        });
        let parsed = parse_line(1, &chat(body)).unwrap();
        assert_eq!(parsed.endpoint, Endpoint::ChatCompletions);
        let spec = parsed.spec;
        assert_eq!(spec.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(
            spec.messages,
            vec![
                ChatMessage::new(Role::System, "Be brief."),
                ChatMessage {
                    name: Some("ann".into()),
                    ..ChatMessage::new(Role::User, "Hello\nworld")
                },
                ChatMessage::new(Role::Assistant, "Hi."),
                ChatMessage::new(Role::System, "Again."),
            ]
        );
        assert_eq!(
            spec.params,
            Params {
                temperature: Some(0.2),
                top_p: Some(0.9),
                max_tokens: Some(64),
                stop: vec!["END".into()],
                seed: Some(42),
                response_format: Some(json!({"type": "json_object"})),
                tools: Some(json!([{"type": "function", "function": {"name": "f"}}])),
                tool_choice: Some(json!("auto")),
            }
        );
        assert_eq!(
            spec.metadata,
            json!({"case": "7"}).as_object().cloned().unwrap()
        );
        assert!(spec.validate(&Routes(&["gpt-4o-mini"])).is_empty());

        // `max_tokens` works as well, and `stop` takes a list.
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "q"}],
            "max_tokens": 5, "stop": ["a", "b"]});
        let spec = parse_line(1, &chat(body)).unwrap().spec;
        assert_eq!(spec.params.max_tokens, Some(5));
        assert_eq!(spec.params.stop, ["a", "b"]);
    }

    #[test]
    fn chat_completion_problems_are_named() {
        let user = json!([{"role": "user", "content": "q"}]);
        for (body, want) in [
            (
                json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
                "line 7: body.messages[0].role: unknown role \"robot\"",
            ),
            (
                json!({"model": "m", "messages": user, "stream": true}),
                "line 7: body.stream: streaming is not available in batches",
            ),
            (
                json!({"model": "m", "messages": user, "n": 3}),
                "line 7: body.n: must be 1",
            ),
            (
                json!({"model": "m", "messages": user, "logit_bias": {}, "frequency_penalty": 1}),
                "line 7: body: unknown or unsupported fields `frequency_penalty`, `logit_bias`",
            ),
            (json!({"messages": user}), "line 7: body.model: required"),
            (json!({"model": "m"}), "line 7: body.messages: required"),
            (
                json!({"model": "m", "messages": []}),
                "line 7: body.messages: must not be empty",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "https://x"}}
                ]}]}),
                "line 7: body.messages[0].content[1].type: only \"text\" parts are available \
                 in batches, got \"image_url\"",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}),
                "line 7: body.messages[0].content[0].text: required",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "content": null}]}),
                "line 7: body.messages[0].content: required",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": 3}]}),
                "line 7: body.messages[0].content: must be a string or an array of text parts",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "q", "tool_call_id": "x"}]}),
                "line 7: body.messages[0].tool_call_id: unknown field `tool_call_id`",
            ),
            (
                json!({"model": "m", "messages": user, "temperature": "hot"}),
                "line 7: body.temperature: invalid type: string \"hot\"",
            ),
            (
                json!({"model": "m", "messages": user, "stop": 5}),
                "line 7: body.stop: must be a string or an array of strings",
            ),
            (
                json!({"model": "m", "messages": user, "stop": ["a", 5]}),
                "line 7: body.stop[1]: must be a string, got a number",
            ),
            (
                json!({"model": "m", "messages": user, "metadata": {"run": 7}}),
                "line 7: body.metadata.run: must be a string, got a number",
            ),
            (
                json!({"model": "m", "messages": user, "max_tokens": 5, "max_completion_tokens": 6}),
                "line 7: body.max_completion_tokens: differs from max_tokens (5)",
            ),
        ] {
            let err = error_of(&chat(body.clone()));
            assert!(err.starts_with(want), "{body}\n  got: {err}\n want: {want}");
        }
    }

    #[test]
    fn ids_take_any_character_but_line_breaks() {
        for id in ["a", "nul \0 here", "🎉 שלום", "\u{FDD0}", &"é".repeat(256)] {
            assert_eq!(check_custom_id(id), Ok(()), "{id:?}");
            assert_eq!(check_batch_id(id), Ok(()), "{id:?}");
        }
        for (id, problem) in [
            ("", "must not be empty"),
            ("a\nb", "must not contain line breaks"),
            ("a\r", "must not contain line breaks"),
            (&"x".repeat(257), "longer than 256 characters"),
        ] {
            assert_eq!(
                check_custom_id(id),
                Err(FieldError::new("custom_id", problem))
            );
            assert_eq!(check_batch_id(id), Err(FieldError::new("batch", problem)));
        }
    }

    #[test]
    fn openai_metadata_keeps_to_openais_limits() {
        let fits = |pairs: usize| -> Map<String, Value> {
            (0..pairs)
                .map(|i| (format!("{i:0>64}"), json!("v\0🎉".repeat(170))))
                .collect()
        };
        assert_eq!(check_openai_metadata(&fits(16)), Ok(()));
        assert_eq!(check_openai_metadata(&Map::new()), Ok(()));
        let refused = |metadata: Value| {
            let Value::Object(map) = metadata else {
                unreachable!()
            };
            check_openai_metadata(&map).unwrap_err().to_string()
        };
        assert_eq!(
            refused(Value::Object(fits(17))),
            "metadata: 17 pairs; at most 16 are allowed"
        );
        assert_eq!(
            refused(json!({"k".repeat(65): "v"})),
            "metadata: a key is longer than 64 characters"
        );
        assert_eq!(
            refused(json!({"run": "x".repeat(513)})),
            "metadata.run: longer than 512 characters"
        );
        assert_eq!(
            refused(json!({"run": {"nested": true}})),
            "metadata.run: must be a string, got an object"
        );
    }

    #[test]
    fn envelope_problems_are_named() {
        let ok = |custom_id: Value| json!({"custom_id": custom_id, "method": "POST", "url": "/v1/jobs", "body": {}});
        let mut extra = ok(json!("a"));
        extra["headers"] = json!({});
        let mut get = ok(json!("a"));
        get["method"] = json!("GET");
        let mut url = ok(json!("a"));
        url["url"] = json!("/v1/embeddings");
        let mut no_body = ok(json!("a"));
        no_body.as_object_mut().unwrap().remove("body");
        let mut body = ok(json!("a"));
        body["body"] = json!("text");
        for (text, code, want) in [
            (
                "{\"custom_id\": ".to_owned(),
                LineErrorCode::InvalidJsonLine,
                "line 7: not valid JSON: EOF while parsing a value (column 14)",
            ),
            (
                "[1]".to_owned(),
                LineErrorCode::InvalidJsonLine,
                "line 7: a line must be a JSON object",
            ),
            (
                extra.to_string(),
                LineErrorCode::InvalidJsonLine,
                "line 7: unknown field `headers`; a line has only custom_id, method, url and body",
            ),
            (
                ok(json!("")).to_string(),
                LineErrorCode::InvalidCustomId,
                "line 7: custom_id: must not be empty",
            ),
            (
                ok(json!("é".repeat(257))).to_string(),
                LineErrorCode::InvalidCustomId,
                "line 7: custom_id: longer than 256 characters",
            ),
            (
                ok(json!("a\r\nb")).to_string(),
                LineErrorCode::InvalidCustomId,
                "line 7: custom_id: must not contain line breaks",
            ),
            (
                ok(json!(12)).to_string(),
                LineErrorCode::InvalidCustomId,
                "line 7: custom_id: must be a string, got a number",
            ),
            (
                ok(Value::Null).to_string(),
                LineErrorCode::MissingRequiredParameter,
                "line 7: custom_id: required",
            ),
            (
                get.to_string(),
                LineErrorCode::InvalidMethod,
                "line 7: method: must be \"POST\", got \"GET\"",
            ),
            (
                url.to_string(),
                LineErrorCode::InvalidUrl,
                "line 7: url: unsupported url \"/v1/embeddings\"; use \"/v1/chat/completions\" or \"/v1/jobs\"",
            ),
            (
                no_body.to_string(),
                LineErrorCode::MissingRequiredParameter,
                "line 7: body: required",
            ),
            (
                body.to_string(),
                LineErrorCode::InvalidJsonLine,
                "line 7: body: must be a JSON object, got a string",
            ),
        ] {
            let err = parse_line(7, &text).map(|_| ()).unwrap_err();
            assert_eq!(err.code, code, "{text}");
            assert!(
                err.to_string().starts_with(want),
                "{text}\n  got: {err}\n want: {want}"
            );
        }
        assert!(parse_line(7, &ok(json!("é".repeat(256))).to_string()).is_ok());
    }

    #[test]
    fn a_file_mixes_endpoints_and_skips_blank_lines() {
        let file = format!(
            "\u{feff}{}\r\n\n   \n{}\n\n",
            chat(json!({"model": "m", "messages": [{"role": "user", "content": "q"}]})),
            line("j1", "/v1/jobs", json!({"model": "m", "prompt": "hi"})),
        );
        let lines = parse_file(file.as_bytes(), 2, &ANY).unwrap();
        let summary: Vec<_> = lines
            .iter()
            .map(|l| (l.line, l.custom_id.as_str(), l.endpoint))
            .collect();
        assert_eq!(
            summary,
            [
                (1, "c1", Endpoint::ChatCompletions),
                (4, "j1", Endpoint::Jobs)
            ]
        );
        assert_eq!(lines[1].origin("b").line, 3);
    }

    #[test]
    fn a_file_reports_every_bad_line() {
        let good = |id: &str| line(id, "/v1/jobs", json!({"model": "m", "prompt": "hi"}));
        let mut file = vec![
            good("a"),
            "not json".to_owned(),
            good("b"),
            good("a"),
            chat(json!({"model": "m", "messages": [], "stream": true})),
        ];
        file.extend([String::new(), String::new()]);
        let mut bytes = file.join("\n").into_bytes();
        bytes.extend(b"\xff\xfe{}\n");
        let err = parse_file(&bytes, 100, &ANY).unwrap_err();
        let found: Vec<_> = err.errors.iter().map(|e| (e.line, e.code)).collect();
        assert_eq!(
            found,
            [
                (Some(2), LineErrorCode::InvalidJsonLine),
                (Some(4), LineErrorCode::DuplicateCustomId),
                (Some(5), LineErrorCode::InvalidRequest),
                (Some(7), LineErrorCode::InvalidJsonLine),
            ]
        );
        assert_eq!(
            err.errors[1].to_string(),
            "line 4: custom_id: \"a\" is already used on line 1; custom ids must be unique in a batch"
        );
        assert_eq!(
            err.errors[3].to_string(),
            "line 7: not valid UTF-8 (at byte 1)"
        );
        assert_eq!(err.omitted, 0);
        assert!(
            err.to_string().starts_with("line 2: not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn a_file_caps_the_errors_it_lists() {
        let file = "oops\n".repeat(MAX_REPORTED + 25);
        let err = parse_file(file.as_bytes(), 1_000, &ANY).unwrap_err();
        assert_eq!(err.errors.len(), MAX_REPORTED);
        assert_eq!(err.omitted, 25);
        assert_eq!(err.errors.last().unwrap().line, Some(MAX_REPORTED as u64));
        assert!(err.to_string().ends_with("; and 25 more"), "{err}");
    }

    #[test]
    fn empty_and_oversized_files_are_refused() {
        for empty in [&b""[..], b"\n\n  \r\n", b"\xEF\xBB\xBF"] {
            let err = parse_file(empty, 10, &ANY).unwrap_err();
            assert_eq!(err.errors.len(), 1);
            assert_eq!(err.errors[0].code, LineErrorCode::EmptyFile);
            assert_eq!(err.errors[0].to_string(), "the file holds no requests");
        }
        let good = |i: usize| {
            line(
                &format!("r{i}"),
                "/v1/jobs",
                json!({"model": "m", "prompt": "hi"}),
            )
        };
        let file: Vec<String> = (0..4).map(good).collect();
        assert_eq!(
            parse_file(file.join("\n").as_bytes(), 4, &ANY)
                .unwrap()
                .len(),
            4
        );
        let err = parse_file(file.join("\n").as_bytes(), 3, &ANY).unwrap_err();
        assert_eq!(err.errors.len(), 1);
        assert_eq!(err.errors[0].code, LineErrorCode::TooManyRequests);
        assert_eq!(
            err.errors[0].to_string(),
            "the file holds 4 requests; a batch takes at most 3"
        );
    }

    #[test]
    fn validation_errors_name_the_line_and_the_body_field() {
        let file = [
            chat(
                json!({"model": "nope", "messages": [{"role": "user", "content": "q"}],
                "temperature": 3}),
            ),
            String::new(),
            line(
                "j1",
                "/v1/jobs",
                json!({"models": ["fast", "slow"], "prompt": "hi",
                "personas": [{"name": "", "system": "s"}]}),
            ),
            line("j2", "/v1/jobs", json!({"model": "fast", "prompt": "hi"})),
        ]
        .join("\n");
        let err = parse_file(file.as_bytes(), 10, &Routes(&["fast"])).unwrap_err();
        let shown: Vec<String> = err.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "line 1: body.model: unknown route `nope`",
                "line 1: body.temperature: must be between 0 and 2",
                "line 3: body.models[1]: unknown route `slow`",
                "line 3: body.personas[0].name: must not be empty",
            ]
        );
        let codes: Vec<LineErrorCode> = err.errors.iter().map(|e| e.code).collect();
        assert_eq!(
            codes,
            [
                LineErrorCode::ModelNotFound,
                LineErrorCode::InvalidRequest,
                LineErrorCode::ModelNotFound,
                LineErrorCode::InvalidRequest,
            ],
            "an unknown route is OpenAI's `model_not_found`"
        );
        let fine = parse_file(file.as_bytes(), 10, &Routes(&["fast", "nope", "slow"]));
        assert_eq!(
            fine.unwrap_err().errors.len(),
            2,
            "line 1's temperature, line 3's persona"
        );
        let good = line("j2", "/v1/jobs", json!({"model": "fast", "prompt": "hi"}));
        let parsed = parse_file(good.as_bytes(), 10, &Routes(&["fast"]));
        assert_eq!(parsed.map(|lines| lines.len()), Ok(1));
    }

    #[test]
    fn lines_that_do_not_read_and_lines_that_do_not_validate_are_reported_together() {
        let file = [
            line(
                "a",
                "/v1/jobs",
                json!({"model": "fast", "prompt": "{{ oops"}),
            ),
            "not json".to_owned(),
            chat(json!({"model": "nowhere", "messages": [{"role": "user", "content": "q"}]})),
            line("a", "/v1/jobs", json!({"model": "fast", "prompt": "hi"})),
        ]
        .join("\n");
        let err = parse_file(file.as_bytes(), 10, &Routes(&["fast"])).unwrap_err();
        let numbers: Vec<Option<u64>> = err.errors.iter().map(|e| e.line).collect();
        assert_eq!(numbers, [Some(1), Some(2), Some(3), Some(4)], "{err}");
        assert_eq!(err.errors[1].code, LineErrorCode::InvalidJsonLine);
        assert_eq!(err.errors[2].param.as_deref(), Some("body.model"));
        assert_eq!(err.errors[3].code, LineErrorCode::DuplicateCustomId);
    }

    #[test]
    fn a_body_alone_names_fields_within_it() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "q"}]});
        let from_body = spec_from_body(Endpoint::ChatCompletions, body.clone()).unwrap();
        assert_eq!(from_body, parse_line(1, &chat(body.clone())).unwrap().spec);
        let job = spec_from_body(Endpoint::Jobs, body.clone()).unwrap();
        assert_eq!(job, serde_json::from_value::<JobSpec>(body).unwrap());
        for (endpoint, body, want) in [
            (
                Endpoint::ChatCompletions,
                json!({"model": "m", "messages": [{"role": "robot", "content": "q"}]}),
                "messages[0].role: unknown role \"robot\"",
            ),
            (
                Endpoint::ChatCompletions,
                json!({"model": "m", "messages": [], "seed": 1, "echo": true}),
                "unknown or unsupported field `echo`",
            ),
            (
                Endpoint::Jobs,
                json!({"model": "m", "priority": "high"}),
                "priority: invalid type",
            ),
            (
                Endpoint::Jobs,
                json!([1]),
                "body: must be a JSON object, got an array",
            ),
        ] {
            let err = spec_from_body(endpoint, body.clone())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{body}\n  got: {err}\n want: {want}");
        }
    }

    #[test]
    fn errors_serialize_for_the_batch_object() {
        let err = parse_file(b"nope", 1, &ANY).unwrap_err();
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"errors": [{"line": 1, "code": "invalid_json_line", "param": null,
                "message": "not valid JSON: expected ident (column 2)"}], "omitted": 0})
        );
    }
}
