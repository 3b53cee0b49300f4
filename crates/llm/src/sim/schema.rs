//! A small instance of a JSON schema, for the simulator's `json_schema` answers.
//!
//! Covers what structured-output schemas use: `type` (also as a list), `properties`,
//! `required`, `items`/`prefixItems`, `enum`, `const`, `anyOf`/`oneOf` (first branch), `allOf`
//! (objects merged), local `$ref`s, string length and formats, and numeric bounds. Optional
//! properties are filled in too, so answers show the whole shape. `pattern` is not attempted.

use serde_json::{Map, Value, json};

/// Deeper than this (a recursive `$ref`, say) gives `null`.
const MAX_DEPTH: usize = 32;
const MAX_ITEMS: u64 = 1000;

pub(crate) fn instance(schema: &Value) -> Value {
    Generator { root: schema }.value(schema, "answer", 0)
}

struct Generator<'a> {
    root: &'a Value,
}

impl Generator<'_> {
    fn value(&self, schema: &Value, name: &str, depth: usize) -> Value {
        let Some(s) = schema.as_object() else {
            return json!(format!("[sim] {name}"));
        };
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        let first = |key: &str| s.get(key).and_then(Value::as_array).and_then(|a| a.first());
        if let Some(target) = s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|pointer| self.root.pointer(pointer))
        {
            return self.value(target, name, depth + 1);
        }
        if let Some(value) = s.get("const").or_else(|| first("enum")) {
            return value.clone();
        }
        if let Some(branch) = first("anyOf").or_else(|| first("oneOf")) {
            return self.value(branch, name, depth + 1);
        }
        if let Some(parts) = s.get("allOf").and_then(Value::as_array) {
            return self.all_of(s, parts, name, depth);
        }
        match type_of(s) {
            "object" => self.object(s, depth),
            "array" => self.array(s, name, depth),
            "integer" => number(s, true),
            "number" => number(s, false),
            "boolean" => Value::Bool(true),
            "null" => Value::Null,
            _ => string(s, name),
        }
    }

    fn object(&self, s: &Map<String, Value>, depth: usize) -> Value {
        let mut out = Map::new();
        for (key, sub) in s
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            out.insert(key.clone(), self.value(sub, key, depth + 1));
        }
        let required = s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for key in required.filter_map(Value::as_str) {
            out.entry(key)
                .or_insert_with(|| json!(format!("[sim] {key}")));
        }
        Value::Object(out)
    }

    fn array(&self, s: &Map<String, Value>, name: &str, depth: usize) -> Value {
        let tuple = s
            .get("prefixItems")
            .or_else(|| s.get("items").filter(|i| i.is_array()));
        if let Some(Value::Array(items)) = tuple {
            return items
                .iter()
                .map(|item| self.value(item, name, depth + 1))
                .collect();
        }
        let min = s
            .get("minItems")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1);
        let max = s
            .get("maxItems")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        let item = s.get("items").unwrap_or(&Value::Bool(true));
        (1..=min.min(max).min(MAX_ITEMS))
            .map(|i| self.value(item, &format!("{name} {i}"), depth + 1))
            .collect()
    }

    fn all_of(&self, s: &Map<String, Value>, parts: &[Value], name: &str, depth: usize) -> Value {
        let mut values = parts.iter().map(|part| self.value(part, name, depth + 1));
        let mut merged = if s.contains_key("properties") {
            self.object(s, depth)
        } else {
            values.next().unwrap_or(Value::Null)
        };
        for value in values {
            if let (Value::Object(into), Value::Object(from)) = (&mut merged, value) {
                into.extend(from);
            }
        }
        merged
    }
}

fn type_of(s: &Map<String, Value>) -> &str {
    match s.get("type") {
        Some(Value::String(t)) => t,
        Some(Value::Array(types)) => {
            let mut names = types.iter().filter_map(Value::as_str);
            names
                .clone()
                .find(|t| *t != "null")
                .or_else(|| names.next())
                .unwrap_or("null")
        }
        _ if s.contains_key("properties") || s.contains_key("required") => "object",
        _ if s.contains_key("items") || s.contains_key("prefixItems") => "array",
        _ => "string",
    }
}

fn string(s: &Map<String, Value>, name: &str) -> Value {
    let mut text = match s.get("format").and_then(Value::as_str) {
        Some("date-time") => "2024-01-01T00:00:00Z".to_owned(),
        Some("date") => "2024-01-01".to_owned(),
        Some("time") => "00:00:00Z".to_owned(),
        Some("email") => "sim@example.com".to_owned(),
        Some("uri" | "url") => "https://example.com/sim".to_owned(),
        Some("uuid") => "00000000-0000-4000-8000-000000000000".to_owned(),
        _ => format!("[sim] {name}"),
    };
    let len = text.chars().count();
    let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0);
    let min = usize::try_from(min).unwrap_or(usize::MAX);
    if len < min {
        text.extend(std::iter::repeat_n('.', min - len));
    }
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
        text = text
            .chars()
            .take(usize::try_from(max).unwrap_or(usize::MAX))
            .collect();
    }
    json!(text)
}

/// Zero, moved inside the bounds (the midpoint when a number has both).
fn number(s: &Map<String, Value>, integer: bool) -> Value {
    let num = |key: &str| s.get(key).and_then(Value::as_f64);
    let draft4 = |key: &str| s.get(key).and_then(Value::as_bool).unwrap_or(false);
    // (bound, exclusive), from a draft-6 numeric bound or a draft-4 boolean flag.
    let low = num("exclusiveMinimum")
        .map(|b| (b, true))
        .or_else(|| num("minimum").map(|b| (b, draft4("exclusiveMinimum"))));
    let high = num("exclusiveMaximum")
        .map(|b| (b, true))
        .or_else(|| num("maximum").map(|b| (b, draft4("exclusiveMaximum"))));
    let mut v = 0.0_f64;
    match (low, high) {
        (Some((lo, _)), Some((hi, _))) if !integer => v = (lo + hi) / 2.0,
        _ => {
            if let Some((lo, exclusive)) = low {
                let least = match (integer, exclusive) {
                    (true, true) => lo.floor() + 1.0,
                    (true, false) => lo.ceil(),
                    (false, true) => lo + 1.0,
                    (false, false) => lo,
                };
                v = v.max(least);
            }
            if let Some((hi, exclusive)) = high {
                let most = match (integer, exclusive) {
                    (true, true) => hi.ceil() - 1.0,
                    (true, false) => hi.floor(),
                    (false, true) => hi - 1.0,
                    (false, false) => hi,
                };
                v = v.min(most);
            }
        }
    }
    if let Some(step) = num("multipleOf").filter(|m| *m > 0.0) {
        v = (v / step).ceil() * step;
    }
    if integer { json!(v as i64) } else { json!(v) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_an_object_with_required_typed_fields() {
        let schema = json!({
            "type": "object",
            "required": ["score", "verdict", "tags", "extra"],
            "properties": {
                "score": {"type": "integer", "minimum": 1, "maximum": 5},
                "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "verdict": {"type": "string", "enum": ["pass", "fail"]},
                "summary": {"type": ["string", "null"], "minLength": 20, "maxLength": 30},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "when": {"type": "string", "format": "date"},
                "ok": {"type": "boolean"},
                "nested": {"$ref": "#/$defs/inner"}
            },
            "$defs": {"inner": {"properties": {"n": {"type": "integer", "exclusiveMinimum": 3}}}}
        });
        let value = instance(&schema);
        assert_eq!(value["score"], json!(1));
        assert_eq!(value["ratio"], json!(0.5));
        assert_eq!(value["verdict"], json!("pass"));
        let summary = value["summary"].as_str().unwrap();
        assert!((20..=30).contains(&summary.chars().count()), "{summary}");
        assert_eq!(value["tags"], json!(["[sim] tags 1", "[sim] tags 2"]));
        assert_eq!(value["when"], json!("2024-01-01"));
        assert_eq!(value["ok"], json!(true));
        assert_eq!(value["nested"], json!({"n": 4}));
        assert_eq!(value["extra"], json!("[sim] extra"));
    }

    #[test]
    fn handles_combinators_and_recursion() {
        let schema = json!({"anyOf": [{"type": "integer", "maximum": -3}, {"type": "string"}]});
        assert_eq!(instance(&schema), json!(-3));
        let schema = json!({"allOf": [
            {"properties": {"a": {"const": 1}}},
            {"properties": {"b": {"type": "null"}}}
        ]});
        assert_eq!(instance(&schema), json!({"a": 1, "b": null}));
        let schema = json!({"$defs": {"node": {"properties": {"next": {"$ref": "#/$defs/node"}}}}, "$ref": "#/$defs/node"});
        assert!(instance(&schema).is_object());
        assert_eq!(
            instance(&json!({"type": "number", "minimum": 2.5, "multipleOf": 0.5})),
            json!(2.5)
        );
    }
}
