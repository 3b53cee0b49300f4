//! Prompt templates (Jinja syntax, rendered with minijinja).
//!
//! Undefined variables are errors, not empty strings, so a template that names a missing input
//! fails at submission with its line number instead of sending a half-empty prompt to a model.

use std::fmt;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::{Map, Value};

/// One fan-out answer as a synthesis template sees it.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    pub persona: Option<String>,
    pub model: String,
    pub text: String,
}

/// Variables a template sees: every `input` key at the top level, `input` itself, and (for a
/// synthesis prompt) `answers`.
#[derive(Serialize)]
pub struct Context<'a> {
    #[serde(flatten)]
    vars: &'a Map<String, Value>,
    input: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    answers: Option<&'a [Answer]>,
}

impl<'a> Context<'a> {
    pub fn input(input: &'a Map<String, Value>) -> Self {
        Self {
            vars: input,
            input,
            answers: None,
        }
    }

    pub fn synthesis(input: &'a Map<String, Value>, answers: &'a [Answer]) -> Self {
        Self {
            vars: input,
            input,
            answers: Some(answers),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub line: Option<usize>,
    pub problem: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "template error on line {line}: {}", self.problem),
            None => write!(f, "template error: {}", self.problem),
        }
    }
}

impl std::error::Error for TemplateError {}

impl From<minijinja::Error> for TemplateError {
    fn from(e: minijinja::Error) -> Self {
        let problem = match e.detail() {
            Some(detail) => format!("{}: {detail}", e.kind()),
            None => e.kind().to_string(),
        };
        Self {
            line: e.line(),
            problem,
        }
    }
}

pub fn render(template: &str, ctx: &Context<'_>) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    Ok(env.render_str(template, ctx)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn renders_inputs_and_answers() -> Result<(), TemplateError> {
        let vars = input(json!({"topic": "pricing"}));
        assert_eq!(
            render("On {{ topic }}.", &Context::input(&vars))?,
            "On pricing."
        );
        let answers = [Answer {
            persona: Some("cfo".into()),
            model: "sim:echo".into(),
            text: "costly".into(),
        }];
        let out = render(
            "{% for a in answers %}[{{ a.persona }}] {{ a.text }}{% endfor %} ({{ input.topic }})",
            &Context::synthesis(&vars, &answers),
        )?;
        assert_eq!(out, "[cfo] costly (pricing)");
        Ok(())
    }

    #[test]
    fn errors_carry_the_line() {
        let vars = Map::new();
        let err = render("line one\n{{ missing }}", &Context::input(&vars)).err();
        assert_eq!(err.as_ref().and_then(|e| e.line), Some(2));
        let err = render("{% for x in %}", &Context::input(&vars)).err();
        assert!(err.is_some_and(|e| e.to_string().contains("line 1")));
    }
}
