//! Assertion checks compiled once (regexes, schema validators, JSON paths) and run on answers.
//!
//! Compiling is also how a submission is checked: everything that can be wrong with a check is
//! found here, so [`crate::check`] and the evaluator can never disagree. Schemas are compiled
//! offline — a `$ref` to a URL or file never makes the worker fetch anything.
//!
//! Running a check yields a [`Finding`]: most checks only hold or not; `similarity` and the
//! judges also measure a grade that becomes the score. `latency`, `cost` and the judges read
//! what the target carries besides its text; when that is missing (no prices, no valid
//! verdict) the finding is an error rather than a failure.

use jsonschema::Validator;
use regex::{Regex, RegexBuilder};
use serde_json::Value;
use serde_json_path::JsonPath;

use chorus_core::assertion::{Check, JudgeKind, SimilarityMethod};
use chorus_core::messages::JudgeVerdict;

use crate::answer::{NotJson, Target, json_eq};
use crate::similarity::{method_name, similarity};

/// Compiled regexes are tenant input; cap their size well below the regex crate's default.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Schema errors listed in a failing reason.
const SCHEMA_ERRORS_SHOWN: usize = 3;
/// Characters of the answer or a JSON value quoted in a reason.
const SNIPPET_CHARS: usize = 60;
/// Characters of one schema error (they quote the offending value, which may be large).
const SCHEMA_ERROR_CHARS: usize = 160;
/// Slack for float rounding when comparing a measure with its threshold.
pub(crate) const EPSILON: f64 = 1e-9;
/// Why a `cost` check cannot tell.
const NO_PRICES: &str = "the answering route has no prices configured";

/// Why a check does not compile. The message names the field and the problem.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("`{field}` must not be empty")]
    Empty { field: String },
    #[error("regex `{pattern}` does not compile: {}", regex_message(source))]
    Regex {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("JSON schema does not compile: {}", with_path(source))]
    Schema {
        #[source]
        source: Box<jsonschema::ValidationError<'static>>,
    },
    #[error("JSON path `{path}` does not parse: {}", path_message(path, source))]
    Path {
        path: String,
        #[source]
        source: serde_json_path::ParseError,
    },
    #[error("length needs `min`, `max` or both")]
    NoBounds,
    #[error("`min` {min} is greater than `max` {max}")]
    Bounds { min: usize, max: usize },
    #[error("`{field}` must be {wanted}, got {value}")]
    OutOfRange {
        field: &'static str,
        wanted: &'static str,
        value: f64,
    },
}

/// A check ready to run: the expensive parts are built, the rest is copied.
#[derive(Debug)]
pub enum Compiled {
    EqualsText(String),
    EqualsJson(Value),
    Contains(String),
    /// Holds the needle already lowercased.
    Icontains(String),
    ContainsAny(Vec<String>),
    ContainsAll(Vec<String>),
    StartsWith(String),
    Regex(Regex),
    IsJson,
    JsonSchema(Box<Validator>),
    JsonPath {
        source: String,
        path: JsonPath,
        equals: Option<Value>,
    },
    Length {
        min: Option<usize>,
        max: Option<usize>,
    },
    Similarity {
        reference: String,
        method: SimilarityMethod,
        threshold: f64,
    },
    Latency {
        max_ms: u64,
    },
    Cost {
        max_usd: f64,
    },
    /// `llm_rubric` or `factuality`; the verdict comes with the target.
    Judge {
        kind: JudgeKind,
        threshold: f64,
    },
}

/// What running a check on one target found.
#[derive(Debug, PartialEq)]
pub(crate) enum Finding {
    /// Whether the check holds, and what was seen.
    Binary { holds: bool, seen: String },
    /// A measure in 0..=1 that is the score, whether it reaches the threshold, and what was seen.
    Graded {
        measure: f64,
        holds: bool,
        seen: String,
    },
    /// A judge's score in 0..=1 and whether it reaches the threshold; its reason stands alone.
    Judged {
        score: f64,
        holds: bool,
        reason: String,
    },
    /// The answer lacks what the check reads (not JSON for a schema): the check fails.
    CannotTell(String),
    /// What the check reads besides the answer is missing: the check errored, and fails.
    Errored(String),
}

impl Compiled {
    pub fn new(check: &Check) -> Result<Self, CompileError> {
        Ok(match check {
            Check::Equals {
                value: Value::String(s),
            } => Self::EqualsText(s.clone()),
            Check::Equals { value } => Self::EqualsJson(value.clone()),
            Check::Contains { value } => Self::Contains(non_empty("value", value)?.clone()),
            Check::Icontains { value } => {
                Self::Icontains(non_empty("value", value)?.to_lowercase())
            }
            Check::StartsWith { value } => Self::StartsWith(non_empty("value", value)?.clone()),
            Check::ContainsAny { values } => Self::ContainsAny(non_empty_list(values)?),
            Check::ContainsAll { values } => Self::ContainsAll(non_empty_list(values)?),
            Check::Regex { pattern } => Self::Regex(
                RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|source| CompileError::Regex {
                        pattern: pattern.clone(),
                        source,
                    })?,
            ),
            Check::IsJson => Self::IsJson,
            Check::JsonSchema { schema } => Self::JsonSchema(Box::new(
                jsonschema::options()
                    .offline()
                    .build(schema)
                    .map_err(|source| CompileError::Schema {
                        source: Box::new(source),
                    })?,
            )),
            Check::JsonPath { path, equals } => Self::JsonPath {
                source: path.clone(),
                path: JsonPath::parse(path).map_err(|source| CompileError::Path {
                    path: path.clone(),
                    source,
                })?,
                equals: equals.clone(),
            },
            Check::Length { min, max } => match (*min, *max) {
                (None, None) => return Err(CompileError::NoBounds),
                (Some(min), Some(max)) if min > max => {
                    return Err(CompileError::Bounds { min, max });
                }
                (min, max) => Self::Length { min, max },
            },
            Check::Similarity {
                value,
                method,
                threshold,
            } => Self::Similarity {
                reference: non_empty("value", value)?.clone(),
                method: *method,
                threshold: fraction("threshold", *threshold)?,
            },
            Check::Latency { max_ms } => Self::Latency { max_ms: *max_ms },
            Check::Cost { max_usd } => {
                if !(max_usd.is_finite() && *max_usd >= 0.0) {
                    return Err(CompileError::OutOfRange {
                        field: "max_usd",
                        wanted: "a number at least 0",
                        value: *max_usd,
                    });
                }
                Self::Cost { max_usd: *max_usd }
            }
            Check::LlmRubric {
                value, threshold, ..
            } => {
                non_empty("value", value)?;
                Self::Judge {
                    kind: JudgeKind::Rubric,
                    threshold: fraction("threshold", *threshold)?,
                }
            }
            Check::Factuality {
                value, threshold, ..
            } => {
                non_empty("value", value)?;
                Self::Judge {
                    kind: JudgeKind::Factuality,
                    threshold: fraction("threshold", *threshold)?,
                }
            }
        })
    }

    /// What the check expects, phrased to follow "expected" or "expected not".
    pub fn expectation(&self) -> String {
        match self {
            Self::EqualsText(want) => format!("to equal {}", quote(want)),
            Self::EqualsJson(want) => format!("to equal the JSON {}", snippet(want)),
            Self::Contains(needle) => format!("to contain {}", quote(needle)),
            Self::Icontains(needle) => format!("to contain {} ignoring case", quote(needle)),
            Self::ContainsAny(needles) => format!("to contain any of {}", quote_all(needles)),
            Self::ContainsAll(needles) => format!("to contain all of {}", quote_all(needles)),
            Self::StartsWith(prefix) => format!("to start with {}", quote(prefix)),
            Self::Regex(re) => format!("to match /{re}/"),
            Self::IsJson => "to be JSON".into(),
            Self::JsonSchema(_) => "to match the JSON schema".into(),
            Self::JsonPath {
                source,
                equals: Some(want),
                ..
            } => {
                format!("to have `{source}` equal to {}", snippet(want))
            }
            Self::JsonPath { source, .. } => format!("to have a value at `{source}`"),
            Self::Length {
                min: Some(min),
                max: Some(max),
            } => {
                format!("to be {min} to {max} characters long")
            }
            Self::Length { min: Some(min), .. } => format!("to be at least {min} characters long"),
            Self::Length { max: Some(max), .. } => format!("to be at most {max} characters long"),
            Self::Length { .. } => "to have any length".into(),
            Self::Similarity {
                reference,
                method,
                threshold,
            } => format!(
                "to be at least {threshold} similar to {} by {}",
                quote(reference),
                method_name(*method)
            ),
            Self::Latency { max_ms } => format!("to answer within {max_ms} ms"),
            Self::Cost { max_usd } => format!("to cost at most {}", usd(*max_usd)),
            Self::Judge {
                kind: JudgeKind::Rubric,
                threshold,
            } => format!("to meet the rubric with a judge score of at least {threshold}"),
            Self::Judge {
                kind: JudgeKind::Factuality,
                threshold,
            } => format!(
                "to agree with the reference on the facts with a judge score of at least {threshold}"
            ),
        }
    }

    /// Runs the check on `target`; `index` is the assertion's place in the request, which is how
    /// a judge's verdict is found.
    pub(crate) fn run(&self, target: &Target<'_>, index: u32) -> Finding {
        self.find(target, index)
            .unwrap_or_else(|problem| Finding::CannotTell(problem.to_string()))
    }

    /// `Err` when the answer is not JSON and the check reads JSON: it cannot tell.
    fn find<'t>(&self, target: &'t Target<'_>, index: u32) -> Result<Finding, &'t NotJson> {
        let answer = &target.answer;
        let text = answer.text;
        let json = || answer.json();
        let (holds, seen) = match self {
            Self::Similarity {
                reference,
                method,
                threshold,
            } => {
                let measure = similarity(*method, text.trim(), reference);
                return Ok(Finding::Graded {
                    measure,
                    holds: reaches(measure, *threshold),
                    seen: format!(
                        "{} similarity is {measure:.3} (threshold {threshold})",
                        method_name(*method)
                    ),
                });
            }
            Self::Judge { threshold, .. } => return Ok(judged(target.verdict(index), *threshold)),
            Self::Latency { max_ms } => (
                target.latency_ms <= *max_ms,
                format!("it took {} ms", target.latency_ms),
            ),
            Self::Cost { max_usd } => match target.cost_usd {
                Some(cost) => (cost <= *max_usd, format!("it cost {}", usd(cost))),
                None => return Ok(Finding::Errored(NO_PRICES.into())),
            },
            Self::EqualsText(want) => match text.trim() {
                got if got == want => (true, "it does".into()),
                got => (false, format!("got {}", quote(got))),
            },
            Self::EqualsJson(want) => match json()? {
                got if json_eq(got, want) => (true, "it does".into()),
                got => (false, format!("got {}", snippet(got))),
            },
            Self::Contains(needle) => found(text.contains(needle.as_str())),
            Self::Icontains(needle) => found(answer.lower().contains(needle.as_str())),
            Self::ContainsAny(needles) => {
                match needles.iter().find(|n| text.contains(n.as_str())) {
                    Some(hit) => (true, format!("found {}", quote(hit))),
                    None => (false, "found none of them".into()),
                }
            }
            Self::ContainsAll(needles) => {
                let missing: Vec<_> = needles
                    .iter()
                    .filter(|n| !text.contains(n.as_str()))
                    .cloned()
                    .collect();
                match missing.as_slice() {
                    [] => (true, "found all of them".into()),
                    _ => (false, format!("missing {}", quote_all(&missing))),
                }
            }
            Self::StartsWith(prefix) => match text.trim_start() {
                start if start.starts_with(prefix.as_str()) => (true, "it does".into()),
                start => (false, format!("it starts with {}", quote(start))),
            },
            Self::Regex(re) => match re.find(text) {
                Some(m) => (true, format!("matched {}", quote(m.as_str()))),
                None => (false, "nothing matches".into()),
            },
            Self::IsJson => match answer.json() {
                Ok(_) => (true, "it is".into()),
                Err(problem) => (false, problem.to_string()),
            },
            Self::JsonSchema(validator) => {
                let errors: Vec<_> = validator.iter_errors(json()?).collect();
                let shown: Vec<String> = errors
                    .iter()
                    .take(SCHEMA_ERRORS_SHOWN)
                    .map(with_path)
                    .collect();
                let more = match errors.len() - shown.len() {
                    0 => String::new(),
                    more => format!(" and {more} more"),
                };
                match errors.len() {
                    0 => (true, "it does".into()),
                    n => (
                        false,
                        format!("{}: {}{more}", plural(n, "error"), shown.join("; ")),
                    ),
                }
            }
            Self::JsonPath { path, equals, .. } => {
                let nodes = path.query(json()?);
                match (nodes.first(), equals) {
                    (None, _) => (false, "it matched nothing".into()),
                    (Some(got), Some(want)) if json_eq(got, want) => (true, "it does".into()),
                    (Some(got), Some(_)) => (false, format!("the first match is {}", snippet(got))),
                    (Some(_), None) => {
                        (true, format!("it matched {}", plural(nodes.len(), "value")))
                    }
                }
            }
            Self::Length { min, max } => {
                let len = text.chars().count();
                match (min, max) {
                    (Some(min), _) if len < *min => {
                        (false, format!("length {len} is below the minimum {min}"))
                    }
                    (_, Some(max)) if len > *max => {
                        (false, format!("length {len} is above the maximum {max}"))
                    }
                    _ => (true, format!("length is {len}")),
                }
            }
        };
        Ok(Finding::Binary { holds, seen })
    }
}

/// Whether `measure` reaches `threshold`, allowing for float rounding.
pub(crate) fn reaches(measure: f64, threshold: f64) -> bool {
    measure + EPSILON >= threshold
}

/// Reads a judge's verdict; no verdict, or one that is not a score in 0..=1, is an error.
fn judged(verdict: Option<&JudgeVerdict>, threshold: f64) -> Finding {
    match verdict {
        Some(JudgeVerdict::Answered(v)) if (0.0..=1.0).contains(&v.score) => Finding::Judged {
            score: v.score,
            holds: reaches(v.score, threshold),
            reason: format!(
                "judge: {} (score {:.3}, threshold {threshold})",
                v.reason, v.score
            ),
        },
        Some(JudgeVerdict::Answered(v)) => {
            Finding::Errored(format!("the judge's score {} is outside 0..1", v.score))
        }
        Some(JudgeVerdict::Errored { error }) => Finding::Errored(error.clone()),
        None => Finding::Errored("no judge verdict was recorded for this answer".into()),
    }
}

fn found(holds: bool) -> (bool, String) {
    (
        holds,
        if holds { "found it" } else { "it is missing" }.into(),
    )
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn non_empty<'a>(field: &str, value: &'a String) -> Result<&'a String, CompileError> {
    if value.is_empty() {
        return Err(CompileError::Empty {
            field: field.into(),
        });
    }
    Ok(value)
}

/// A threshold or similar fraction: finite and in 0..=1.
fn fraction(field: &'static str, value: f64) -> Result<f64, CompileError> {
    if !(0.0..=1.0).contains(&value) {
        return Err(CompileError::OutOfRange {
            field,
            wanted: "a number from 0 to 1",
            value,
        });
    }
    Ok(value)
}

fn non_empty_list(values: &[String]) -> Result<Vec<String>, CompileError> {
    if values.is_empty() {
        return Err(CompileError::Empty {
            field: "values".into(),
        });
    }
    for (i, v) in values.iter().enumerate() {
        non_empty(&format!("values[{i}]"), v)?;
    }
    Ok(values.to_vec())
}

/// The regex crate's syntax errors draw a caret diagram over several lines; keep the last line.
fn regex_message(e: &regex::Error) -> String {
    let text = e.to_string();
    match text.lines().rev().find_map(|l| l.strip_prefix("error: ")) {
        Some(message) => message.to_owned(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// The path parser only says where it gave up; show the rest of the path from there.
fn path_message(path: &str, e: &serde_json_path::ParseError) -> String {
    if !path.starts_with('$') {
        return "it must start with `$`".into();
    }
    match path.get(e.position()..).filter(|rest| !rest.is_empty()) {
        Some(rest) => format!("{} at `{rest}`", e.message()),
        None => format!("{} at the end", e.message()),
    }
}

/// A schema error prefixed with where it is (in the instance, or in the schema when compiling).
fn with_path(e: &jsonschema::ValidationError<'_>) -> String {
    let at = match e.instance_path().as_str() {
        "" => "the root",
        path => path,
    };
    format!("at {at}: {}", cut(&e.to_string(), SCHEMA_ERROR_CHARS))
}

fn quote(text: &str) -> String {
    format!("{:?}", cut(text, SNIPPET_CHARS))
}

fn quote_all(values: &[String]) -> String {
    values
        .iter()
        .map(|v| quote(v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `text` cut to `max` characters, marked with an ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    let head: String = text.chars().take(max).collect();
    if head.len() < text.len() {
        format!("{head}…")
    } else {
        head
    }
}

/// A dollar amount for a reason: up to 8 decimals (a single call can cost a millionth of a
/// dollar), without trailing zeros.
fn usd(amount: f64) -> String {
    let fixed = format!("{amount:.8}");
    let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
    format!("${trimmed}")
}

/// A JSON value for a reason, cut short when long.
fn snippet(json: &Value) -> String {
    cut(&json.to_string(), SNIPPET_CHARS)
}
