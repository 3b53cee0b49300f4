//! The job spec: what a client asks Chorus to do (DESIGN.md §4), and its structural validation.
//!
//! The spec is the public contract of `POST /v1/jobs` and of JetStream submissions, so every type
//! denies unknown fields: a typo is an error naming the field, never a silently ignored setting.
//! Checks that need more than the spec itself (known routes, compiled assertions) are done by the
//! caller through [`Validator`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::assertion::{Assertion, Check};
use crate::fair::Band;
use crate::template;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Default route (a configured route name, or `provider:model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Fan-out over several routes; each is called once per persona.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<ChatMessage>,
    /// A minijinja template rendered with `input` into a single user message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub input: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub personas: Vec<Persona>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthesis: Option<Synthesis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate: Option<Evaluate>,
    #[serde(default, skip_serializing_if = "Params::is_empty")]
    pub params: Params,
    /// With a backlog, calls of higher-priority jobs are served first (-10..=10, default 0),
    /// among the tenant's own work in the job's band.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// The class of service asked for: `interactive`, `standard` (a REST job's default) or
    /// `batch`. Served at most at the band the API key may use; batch lines always at `batch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<Band>,
    /// When the job must be done (RFC 3339). Calls not started by then are not made, and the
    /// job fails with `deadline_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The range of `priority`.
pub const PRIORITIES: std::ops::RangeInclusive<i32> = -10..=10;

/// How deeply arrays and objects may nest in a spec's free-form JSON (`metadata`, `input`,
/// `params.response_format`, `params.tools`, `params.tool_choice`, assertion values). A stored
/// spec must read back, and JSON readers (serde_json's among them) stop at 128 levels: 64 leaves
/// room for the spec and the records around these values.
pub const MAX_JSON_DEPTH: usize = 64;

fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            name: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Persona {
    pub name: String,
    pub system: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Synthesis {
    /// Template; sees `answers` (a list of `{persona, model, text}`) and `input`.
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Params>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Evaluate {
    /// The weighted score a target must reach to pass, in 0..=1. Default 1: every assertion passes.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    pub assertions: Vec<Assertion>,
}

fn default_threshold() -> f64 {
    1.0
}

/// Sampling parameters passed to the provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// OpenAI's shape: `{"type": "text" | "json_object"}` or
    /// `{"type": "json_schema", "json_schema": {"name": .., "schema": {..}}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// Tool definitions, passed through to providers that take them (OpenAI's shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
}

impl Params {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// True when the caller asked for a JSON answer.
    pub fn wants_json(&self) -> bool {
        self.response_format
            .as_ref()
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str)
            .is_some_and(|t| t == "json_object" || t == "json_schema")
    }

    /// The JSON schema of a `json_schema` response format, if any.
    pub fn response_schema(&self) -> Option<&Value> {
        self.response_format
            .as_ref()?
            .get("json_schema")?
            .get("schema")
    }
}

/// One problem with a request, naming the field it is about (`personas[1].name`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
    /// What kind of rule the value breaks.
    #[serde(default)]
    pub kind: FieldErrorKind,
}

/// What kind of rule a [`FieldError`] is about: one a JSON schema of the spec states, or one it
/// cannot (the routes of this installation, whether a template renders with its input, …). The
/// edge answers each kind with its own status and code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldErrorKind {
    /// A type, range, length, pattern or combination of fields.
    #[default]
    Invalid,
    /// A model that names no route.
    UnknownRoute,
    /// A template that does not render with the job's input.
    Template,
    /// A persona name given twice.
    DuplicatePersona,
    /// An assertion that does not compile (a regex, a JSON schema, a JSON path).
    Assertion,
    /// A deadline already past.
    DeadlinePassed,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::of(FieldErrorKind::Invalid, field, problem)
    }

    pub fn of(kind: FieldErrorKind, field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
            kind,
        }
    }
}

/// This installation's routes, as a spec's validation sees them.
pub trait RouteCheck {
    type Error: std::fmt::Display;
    /// Checks that `model` names a route; the error lists the known ones.
    fn check_route(&self, model: &str) -> Result<(), Self::Error>;
}

/// What validation needs from outside the spec: the installation's routes and its assertion
/// compiler, each with its own error (shown as the field's problem).
pub trait Validator {
    type RouteError: std::fmt::Display;
    type AssertionError: std::fmt::Display;
    /// Checks that `model` names a route; the error lists the known ones.
    fn check_route(&self, model: &str) -> Result<(), Self::RouteError>;
    /// Checks one assertion fully (compiles regexes, schemas, paths).
    fn check_assertion(&self, assertion: &Assertion) -> Result<(), Self::AssertionError>;
}

impl JobSpec {
    /// The routes the fan-out calls, in order (`models`, else `model`).
    pub fn fanout_routes(&self) -> Vec<&str> {
        if self.models.is_empty() {
            self.model.iter().map(String::as_str).collect()
        } else {
            self.models.iter().map(String::as_str).collect()
        }
    }

    /// Every problem with the spec, in field order. Empty means valid.
    pub fn validate(&self, validator: &impl Validator) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let route = |field: String, model: &str, errors: &mut Vec<FieldError>| {
            if let Err(problem) = validator.check_route(model) {
                errors.push(FieldError::of(
                    FieldErrorKind::UnknownRoute,
                    field,
                    problem.to_string(),
                ));
            }
        };
        match (&self.model, self.models.is_empty()) {
            (None, true) => errors.push(FieldError::new(
                "model",
                "required: name a route in `model` or list routes in `models`",
            )),
            (Some(model), _) => route("model".into(), model, &mut errors),
            (None, false) => {}
        }
        for (i, model) in self.models.iter().enumerate() {
            route(format!("models[{i}]"), model, &mut errors);
        }
        if let Some(dup) = first_duplicate(self.models.iter().map(String::as_str)) {
            errors.push(FieldError::new(
                "models",
                format!("`{dup}` is listed twice"),
            ));
        }

        match (&self.prompt, self.messages.is_empty()) {
            (None, true) => errors.push(FieldError::new(
                "messages",
                "required: give `messages` or a `prompt` template",
            )),
            (Some(_), false) => errors.push(FieldError::new(
                "prompt",
                "give either `messages` or `prompt`, not both",
            )),
            (Some(prompt), true) => {
                if let Err(e) = template::render(prompt, &template::Context::input(&self.input)) {
                    errors.push(FieldError::of(
                        FieldErrorKind::Template,
                        "prompt",
                        e.to_string(),
                    ));
                }
            }
            (None, false) => {
                if !self.input.is_empty() {
                    errors.push(FieldError::new(
                        "input",
                        "`input` fills the `prompt` template; it has no effect with `messages`",
                    ));
                }
                for (i, m) in self.messages.iter().enumerate() {
                    if m.content.is_empty() {
                        errors.push(FieldError::new(
                            format!("messages[{i}].content"),
                            "must not be empty",
                        ));
                    }
                }
            }
        }

        for (i, p) in self.personas.iter().enumerate() {
            if p.name.trim().is_empty() {
                errors.push(FieldError::new(
                    format!("personas[{i}].name"),
                    "must not be empty",
                ));
            }
            if p.system.trim().is_empty() {
                errors.push(FieldError::new(
                    format!("personas[{i}].system"),
                    "must not be empty",
                ));
            }
        }
        if let Some(dup) = first_duplicate(self.personas.iter().map(|p| p.name.as_str())) {
            errors.push(FieldError::of(
                FieldErrorKind::DuplicatePersona,
                "personas",
                format!("persona `{dup}` is listed twice"),
            ));
        }

        check_params("params", &self.params, &mut errors);
        for (field, map) in [("input", &self.input), ("metadata", &self.metadata)] {
            if map.values().any(|v| deeper_than(v, MAX_JSON_DEPTH - 1)) {
                errors.push(too_deep(field));
            }
        }
        if !PRIORITIES.contains(&self.priority) {
            errors.push(FieldError::new(
                "priority",
                format!(
                    "must be between {} and {}",
                    PRIORITIES.start(),
                    PRIORITIES.end()
                ),
            ));
        }

        if let Some(synthesis) = &self.synthesis {
            if let Some(model) = &synthesis.model {
                route("synthesis.model".into(), model, &mut errors);
            }
            if let Some(params) = &synthesis.params {
                check_params("synthesis.params", params, &mut errors);
            }
            let answers: Vec<template::Answer> = self
                .fanout_plan()
                .iter()
                .map(|(persona, model)| template::Answer {
                    persona: persona.map(|p| p.name.clone()),
                    model: (*model).to_owned(),
                    text: String::new(),
                })
                .collect();
            let ctx = template::Context::synthesis(&self.input, &answers);
            if let Err(e) = template::render(&synthesis.prompt, &ctx) {
                errors.push(FieldError::of(
                    FieldErrorKind::Template,
                    "synthesis.prompt",
                    e.to_string(),
                ));
            }
        }

        if let Some(evaluate) = &self.evaluate {
            if !(0.0..=1.0).contains(&evaluate.threshold) {
                errors.push(FieldError::new(
                    "evaluate.threshold",
                    "must be between 0 and 1",
                ));
            }
            if evaluate.assertions.is_empty() {
                errors.push(FieldError::new(
                    "evaluate.assertions",
                    "must list at least one assertion",
                ));
            }
            for (i, a) in evaluate.assertions.iter().enumerate() {
                if !a.weight.is_finite() || a.weight < 0.0 {
                    errors.push(FieldError::new(
                        format!("evaluate.assertions[{i}].weight"),
                        "must be a finite number >= 0",
                    ));
                }
                let value = match &a.check {
                    Check::Equals { value } => Some(("value", value)),
                    Check::JsonSchema { schema } => Some(("schema", schema)),
                    Check::JsonPath {
                        equals: Some(equals),
                        ..
                    } => Some(("equals", equals)),
                    _ => None,
                };
                if let Some((name, value)) = value
                    && deeper_than(value, MAX_JSON_DEPTH)
                {
                    errors.push(too_deep(&format!("evaluate.assertions[{i}].{name}")));
                }
                if let Err(problem) = validator.check_assertion(a) {
                    errors.push(FieldError::of(
                        FieldErrorKind::Assertion,
                        format!("evaluate.assertions[{i}]"),
                        problem.to_string(),
                    ));
                }
                if let Some((_, _, Some(model))) = a.check.judge() {
                    route(
                        format!("evaluate.assertions[{i}].model"),
                        model,
                        &mut errors,
                    );
                }
            }
            let total: f64 = evaluate.assertions.iter().map(|a| a.weight).sum();
            if !evaluate.assertions.is_empty() && total <= 0.0 {
                errors.push(FieldError::new(
                    "evaluate.assertions",
                    "the weights must not all be zero",
                ));
            }
        }
        errors
    }

    /// `(persona, route)` for every fan-out call: personas × routes, in that order.
    pub fn fanout_plan(&self) -> Vec<(Option<&Persona>, &str)> {
        let routes = self.fanout_routes();
        if self.personas.is_empty() {
            routes.into_iter().map(|r| (None, r)).collect()
        } else {
            self.personas
                .iter()
                .flat_map(|p| routes.iter().map(move |r| (Some(p), *r)))
                .collect()
        }
    }
}

/// True when arrays and objects nest more than `limit` levels deep in `value`.
fn deeper_than(value: &Value, limit: usize) -> bool {
    match value {
        Value::Array(items) => limit == 0 || items.iter().any(|v| deeper_than(v, limit - 1)),
        Value::Object(map) => limit == 0 || map.values().any(|v| deeper_than(v, limit - 1)),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => false,
    }
}

fn too_deep(field: &str) -> FieldError {
    FieldError::new(
        field,
        format!("arrays and objects nest more than {MAX_JSON_DEPTH} levels deep"),
    )
}

fn check_params(field: &str, params: &Params, errors: &mut Vec<FieldError>) {
    let free_form = [
        ("response_format", &params.response_format),
        ("tools", &params.tools),
        ("tool_choice", &params.tool_choice),
    ];
    for (name, value) in free_form {
        if value
            .as_ref()
            .is_some_and(|v| deeper_than(v, MAX_JSON_DEPTH))
        {
            errors.push(too_deep(&format!("{field}.{name}")));
        }
    }
    if let Some(t) = params.temperature
        && !(0.0..=2.0).contains(&t)
    {
        errors.push(FieldError::new(
            format!("{field}.temperature"),
            "must be between 0 and 2",
        ));
    }
    if let Some(p) = params.top_p
        && !(0.0..=1.0).contains(&p)
    {
        errors.push(FieldError::new(
            format!("{field}.top_p"),
            "must be between 0 and 1",
        ));
    }
    if params.max_tokens == Some(0) {
        errors.push(FieldError::new(
            format!("{field}.max_tokens"),
            "must be at least 1",
        ));
    }
    if let Some(format) = &params.response_format {
        let kind = format.get("type").and_then(Value::as_str);
        match kind {
            Some("text" | "json_object") => {}
            Some("json_schema") => {
                if !format
                    .get("json_schema")
                    .and_then(|s| s.get("schema"))
                    .is_some_and(Value::is_object)
                {
                    errors.push(FieldError::new(
                        format!("{field}.response_format.json_schema.schema"),
                        "required: an object holding the JSON schema",
                    ));
                }
            }
            _ => errors.push(FieldError::new(
                format!("{field}.response_format.type"),
                "must be one of `text`, `json_object`, `json_schema`",
            )),
        }
    }
}

fn first_duplicate<'a>(items: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = std::collections::HashSet::new();
    items.into_iter().find(|item| !seen.insert(*item))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct AnyRoute;

    impl Validator for AnyRoute {
        type RouteError = std::convert::Infallible;
        type AssertionError = std::convert::Infallible;

        fn check_route(&self, _: &str) -> Result<(), Self::RouteError> {
            Ok(())
        }

        fn check_assertion(&self, _: &Assertion) -> Result<(), Self::AssertionError> {
            Ok(())
        }
    }

    /// `depth` arrays, one inside the other, around a string.
    fn nested(depth: usize) -> Value {
        (0..depth).fold(json!("leaf"), |inner, _| json!([inner]))
    }

    fn problems(spec: Value) -> Vec<FieldError> {
        serde_json::from_value::<JobSpec>(spec)
            .unwrap()
            .validate(&AnyRoute)
    }

    #[test]
    fn free_form_json_may_nest_to_the_limit_and_no_deeper() {
        // Each field with a value `depth` levels deep, counting the field's own map for
        // `metadata` and `input`.
        let with = |field: &str, depth: usize| {
            let mut spec = json!({"model": "m", "messages": [{"role": "user", "content": "q"}]});
            match field {
                "metadata" => spec["metadata"] = json!({"k": nested(depth - 1)}),
                "input" => {
                    spec = json!({"model": "m", "prompt": "{{ k }}", "input": {"k": nested(depth - 1)}})
                }
                "params.tools" => spec["params"] = json!({"tools": nested(depth)}),
                "params.tool_choice" => spec["params"] = json!({"tool_choice": nested(depth)}),
                "params.response_format" => {
                    let schema = json!({"type": "object", "properties": nested(depth - 3)});
                    spec["params"] = json!({"response_format": {"type": "json_schema",
                        "json_schema": {"name": "s", "schema": schema}}});
                }
                "evaluate.assertions[0].value" => {
                    spec["evaluate"] =
                        json!({"assertions": [{"type": "equals", "value": nested(depth)}]})
                }
                other => unreachable!("{other}"),
            }
            spec
        };
        for field in [
            "metadata",
            "input",
            "params.tools",
            "params.tool_choice",
            "params.response_format",
            "evaluate.assertions[0].value",
        ] {
            assert_eq!(problems(with(field, MAX_JSON_DEPTH)), [], "{field}");
            assert_eq!(
                problems(with(field, MAX_JSON_DEPTH + 1)),
                [FieldError::new(
                    field,
                    "arrays and objects nest more than 64 levels deep"
                )],
                "{field}"
            );
        }
    }
}
