//! Assertion definitions as they appear in a job spec (DESIGN.md §6).
//!
//! Every assertion is one JSON object: a `type`, the fields of that type, and the fields every
//! type shares (`weight`, `metric`, `not`). Those are split apart here so each type can still deny
//! unknown fields. Running assertions is the eval crate's job; this is only their shape.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
pub struct Assertion {
    pub check: Check,
    /// Share of the weighted score; default 1.
    pub weight: f64,
    /// Name under which batch reports aggregate this assertion.
    pub metric: Option<String>,
    /// Inverts the outcome (`"not": true`).
    pub negate: bool,
}

impl Assertion {
    pub fn new(check: Check) -> Self {
        Self {
            check,
            weight: 1.0,
            metric: None,
            negate: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    /// The whole answer equals `value` (a string compares as text after trimming; any other JSON
    /// value compares with the answer parsed as JSON).
    Equals {
        value: Value,
    },
    Contains {
        value: String,
    },
    Icontains {
        value: String,
    },
    ContainsAny {
        values: Vec<String>,
    },
    ContainsAll {
        values: Vec<String>,
    },
    StartsWith {
        value: String,
    },
    Regex {
        pattern: String,
    },
    IsJson,
    JsonSchema {
        schema: Value,
    },
    /// Selects from the answer parsed as JSON; passes when the path matches and, with `equals`,
    /// when the first match equals it.
    JsonPath {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        equals: Option<Value>,
    },
    /// Length of the answer in characters.
    Length {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<usize>,
    },
    /// Similarity to a reference text, in 0..=1; passes at or above `threshold`. The assertion's
    /// score is the similarity itself.
    Similarity {
        value: String,
        #[serde(default)]
        method: SimilarityMethod,
        threshold: f64,
    },
    /// The answering call's provider latency at most `max_ms`.
    Latency {
        max_ms: u64,
    },
    /// The answering call's cost (from its route's prices) at most `max_usd`.
    Cost {
        max_usd: f64,
    },
    /// An LLM judge scores the answer against a rubric (0..=1); passes at or above `threshold`.
    LlmRubric {
        /// The rubric (`rubric` is accepted too).
        #[serde(alias = "rubric")]
        value: String,
        /// The judge's route; default: the job's first route.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default = "default_judge_threshold")]
        threshold: f64,
    },
    /// An LLM judge scores how far the answer agrees with a reference answer on the facts.
    Factuality {
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default = "default_judge_threshold")]
        threshold: f64,
    },
}

fn default_judge_threshold() -> f64 {
    0.5
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SimilarityMethod {
    /// 1 − edit distance ÷ the longer length, over characters.
    #[default]
    Levenshtein,
    /// ROUGE-L F-measure over lowercased word tokens.
    RougeL,
}

/// Which judge an assertion asks for, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeKind {
    Rubric,
    Factuality,
}

impl Check {
    /// The `type` tag, for reports and storage.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Equals { .. } => "equals",
            Self::Contains { .. } => "contains",
            Self::Icontains { .. } => "icontains",
            Self::ContainsAny { .. } => "contains_any",
            Self::ContainsAll { .. } => "contains_all",
            Self::StartsWith { .. } => "starts_with",
            Self::Regex { .. } => "regex",
            Self::IsJson => "is_json",
            Self::JsonSchema { .. } => "json_schema",
            Self::JsonPath { .. } => "json_path",
            Self::Length { .. } => "length",
            Self::Similarity { .. } => "similarity",
            Self::Latency { .. } => "latency",
            Self::Cost { .. } => "cost",
            Self::LlmRubric { .. } => "llm_rubric",
            Self::Factuality { .. } => "factuality",
        }
    }

    /// For a judge assertion: its kind, the rubric or reference text, and the judge route it names.
    pub fn judge(&self) -> Option<(JudgeKind, &str, Option<&str>)> {
        match self {
            Self::LlmRubric { value, model, .. } => {
                Some((JudgeKind::Rubric, value, model.as_deref()))
            }
            Self::Factuality { value, model, .. } => {
                Some((JudgeKind::Factuality, value, model.as_deref()))
            }
            _ => None,
        }
    }
}

const SHARED: [&str; 3] = ["weight", "metric", "not"];

/// One object: a [`Check`] (its `type` and fields) and the fields every type shares.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Assertion {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Type};
        use utoipa::openapi::{Ref, RefOr};
        let shared = ObjectBuilder::new()
            .property(
                "weight",
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .description(Some("Share of the weighted score; default 1.")),
            )
            .property(
                "metric",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some(
                        "The name batch reports aggregate this assertion under.",
                    )),
            )
            .property(
                "not",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .description(Some("Inverts the outcome; a graded score s becomes 1 - s.")),
            );
        RefOr::T(
            AllOfBuilder::new()
                .item(Ref::from_schema_name("Check"))
                .item(shared)
                .description(Some(
                    "An assertion: a check (`type` and its fields) with a weight, a metric name and `not`.",
                ))
                .into(),
        )
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Assertion {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push(("Check".into(), <Check as utoipa::PartialSchema>::schema()));
        <Check as utoipa::ToSchema>::schemas(schemas);
    }
}

impl<'de> Deserialize<'de> for Assertion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut map = Map::<String, Value>::deserialize(deserializer)?;
        let weight = match map.remove("weight") {
            None | Some(Value::Null) => 1.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| D::Error::custom(format!("`weight` must be a number, got {v}")))?,
        };
        let metric = match map.remove("metric") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(v) => {
                return Err(D::Error::custom(format!(
                    "`metric` must be a string, got {v}"
                )));
            }
        };
        let negate = match map.remove("not") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(v) => {
                return Err(D::Error::custom(format!(
                    "`not` must be true or false, got {v}"
                )));
            }
        };
        let check = Check::deserialize(Value::Object(map)).map_err(D::Error::custom)?;
        Ok(Self {
            check,
            weight,
            metric,
            negate,
        })
    }
}

impl Serialize for Assertion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let mut map = match serde_json::to_value(&self.check).map_err(S::Error::custom)? {
            Value::Object(map) => map,
            _ => return Err(S::Error::custom("an assertion serializes to an object")),
        };
        debug_assert!(SHARED.iter().all(|k| !map.contains_key(*k)));
        map.insert("weight".into(), self.weight.into());
        if let Some(metric) = &self.metric {
            map.insert("metric".into(), metric.clone().into());
        }
        if self.negate {
            map.insert("not".into(), true.into());
        }
        map.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shared_fields_split_from_the_check() -> Result<(), serde_json::Error> {
        let a: Assertion = serde_json::from_value(
            json!({"type": "icontains", "value": "go", "weight": 2, "metric": "decision", "not": true}),
        )?;
        assert_eq!(a.check, Check::Icontains { value: "go".into() });
        assert_eq!(
            (a.weight, a.metric.as_deref(), a.negate),
            (2.0, Some("decision"), true)
        );
        let back: Assertion = serde_json::from_value(serde_json::to_value(&a)?)?;
        assert_eq!(back, a);
        let back: Assertion =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(&a).map_err(serde::ser::Error::custom)?)
                .map_err(serde::de::Error::custom)?;
        assert_eq!(back, a);
        Ok(())
    }

    #[test]
    fn unknown_fields_and_types_are_named() {
        let err = serde_json::from_value::<Assertion>(json!({"type": "contains", "valu": "x"}))
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("valu"), "{err}");
        let err = serde_json::from_value::<Assertion>(json!({"type": "llm_judge"}))
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("llm_judge") && err.contains("icontains"),
            "{err}"
        );
    }
}
