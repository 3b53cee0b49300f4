//! Reading an input file: JSONL, one request per line,
//! `{"custom_id": "…", "method": "POST", "url": "/v1/chat/completions" | "/v1/jobs", "body": {…}}`.
//! Each line's `url` decides how its body is read ([`super::body`]), so one file may mix both.
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

use super::body::{body_spec, kind, unknown_fields};
use super::{Endpoint, Origin, check_custom_id};
use crate::spec::{FieldErrorKind, JobSpec, Validator};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// A JSON syntax error with its column but without serde_json's "at line 1" (the file's line is
/// named separately).
fn json_problem(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let problem = text.rfind(" at line ").map_or(&text[..], |i| &text[..i]);
    format!("{problem} (column {})", e.column())
}
