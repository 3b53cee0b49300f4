//! What `/openapi.json` states beyond the handlers' own annotations, applied to the generated
//! document: the API's contract is the document, so it must be exactly as strict as the handlers.
//!
//! - [`shared_responses`]: the answers every operation can give besides its own, decided by what
//!   the operation takes (a key, a query string, path parameters, a JSON or multipart body), each
//!   in the error shape: one place instead of a block pasted on every handler.
//! - [`schema_rules`] and [`request_rules`]: the bounds, lengths, patterns and combinations of
//!   fields the handlers check, where a field's Rust type alone says less.
//! - [`SEMANTIC_REFUSALS`]: the codes with which a request that fits its schema can still be
//!   refused, for rules no schema states (a template must render, a cursor must name a batch…),
//!   as `x-semantic-codes` on the response that carries them. The API fuzz
//!   (`tests/python/fuzz_api.py`) allows a schema-valid request exactly these refusals.
//! - [`link_table`]: which response's id feeds which operation, for clients and the stateful fuzz.
//! - [`with_models`]: the served document names this installation's models: a `RouteName` is
//!   one of them, and an unknown one is `404 model_not_found`.
//!
//! Server-Sent Events are documented per event (`text/event-stream`'s schema describes one event:
//! its `event` name and its `data`, whose JSON has the `contentSchema` given).

use serde_json::{Value, json};

/// The name of the schema every field naming a model refers to.
pub const ROUTE_NAME: &str = "RouteName";

/// Applies the whole contract to a generated document.
pub fn complete(document: &mut Value) {
    unsigned_bounds(document);
    route_names(document);
    for (pointer, rule) in schema_rules() {
        merge_at(document, &pointer, rule);
    }
    request_rules(document);
    assertions(document);
    events(document);
    shared_responses(document);
    semantic_refusals(document);
    links(document);
}

/// utoipa writes `u32` and `u64` as `int32` and `int64` from 0, and `usize` as an integer from
/// 0: give each the maximum the handlers take (`int64` alone would cap it at `i64::MAX`).
fn unsigned_bounds(value: &mut Value) {
    match value {
        Value::Object(schema) => {
            let integer = match &schema.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(types)) => types.iter().any(|t| t == "integer"),
                _ => false,
            };
            let unsigned = schema
                .get("minimum")
                .and_then(Value::as_f64)
                .is_some_and(|m| m >= 0.0);
            if integer && unsigned && !schema.contains_key("maximum") {
                let maximum = match schema.get("format").and_then(Value::as_str) {
                    Some("int32") => json!(u32::MAX),
                    _ => json!(u64::MAX),
                };
                schema.remove("format");
                schema.insert("maximum".into(), maximum);
            }
            schema.values_mut().for_each(unsigned_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_bounds),
        _ => {}
    }
}

/// The served document: a `RouteName` is one of `models` (this installation's routes and the
/// simulator's kinds).
pub fn with_models(document: &mut Value, models: &[String]) {
    if let Some(schema) = document.pointer_mut(&format!("/components/schemas/{ROUTE_NAME}")) {
        schema["enum"] = json!(models);
    }
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn nullable(schema: Value) -> Value {
    json!({"oneOf": [schema, {"type": "null"}]})
}

/// Every field that names a model refers to one schema, which the served document narrows to
/// this installation's models.
fn route_names(document: &mut Value) {
    document["components"]["schemas"][ROUTE_NAME] = json!({
        "type": "string",
        "description": "A model: a route configured in this installation, or the simulator's \
            `sim:<kind>`. The document served by an installation lists its own; any other is \
            `404 model_not_found`. (`sim:<kind>?<option>=<value>&…`, the simulator's test knobs, \
            is accepted too and not listed.)",
    });
}

/// Bounds, lengths and patterns the handlers check, merged into the generated schemas (a JSON
/// pointer from `/components/schemas`, and what to merge there).
fn schema_rules() -> Vec<(String, Value)> {
    // Rust's `str::trim` and Python's `\s` disagree on U+001C–U+001F: list the whitespace
    // `trim` strips rather than say `\S`.
    const NOT_BLANK: &str = "[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
    let rules = [
        ("JobSpec/properties/model", nullable(schema_ref(ROUTE_NAME))),
        (
            "JobSpec/properties/models",
            json!({"items": schema_ref(ROUTE_NAME), "uniqueItems": true}),
        ),
        (
            "JobSpec/properties/priority",
            json!({"minimum": -10, "maximum": 10}),
        ),
        (
            "JobSpec/properties/idempotency_key",
            json!({"minLength": 1, "maxLength": 255}),
        ),
        (
            "Synthesis/properties/model",
            nullable(schema_ref(ROUTE_NAME)),
        ),
        ("ChatMessage/properties/content", json!({"minLength": 1})),
        ("Persona/properties/name", json!({"pattern": NOT_BLANK})),
        ("Persona/properties/system", json!({"pattern": NOT_BLANK})),
        (
            "Params/properties/temperature",
            json!({"minimum": 0, "maximum": 2}),
        ),
        (
            "Params/properties/top_p",
            json!({"minimum": 0, "maximum": 1}),
        ),
        (
            "Params/properties/max_tokens",
            json!({"minimum": 1, "maximum": u32::MAX}),
        ),
        ("Params/properties/seed", json!({"maximum": u64::MAX})),
        (
            "Params/properties/response_format",
            nullable(schema_ref("ResponseFormat")),
        ),
        (
            "Evaluate/properties/threshold",
            json!({"minimum": 0, "maximum": 1}),
        ),
        (
            "Evaluate/properties/assertions",
            json!({
                "minItems": 1,
                "contains": {"anyOf": [
                    {"not": {"required": ["weight"]}},
                    {"properties": {"weight": {"oneOf": [{"type": "null"}, {"exclusiveMinimum": 0}]}}},
                ]},
            }),
        ),
        (
            "CreateBatch/properties/endpoint",
            json!({"enum": ["/v1/chat/completions", "/v1/jobs"]}),
        ),
        (
            "CreateBatch/properties/completion_window",
            json!({"enum": ["24h"]}),
        ),
        ("FileUpload/properties/purpose", json!({"enum": ["batch"]})),
        (
            "Selection/properties/sequences/items",
            json!({"minimum": 1}),
        ),
        ("Selection/properties/stage", nullable(schema_ref("Stage"))),
        (
            "Selection/properties/rate",
            json!({"minimum": crate::admin::MIN_RATE, "maximum": crate::admin::MAX_RATE}),
        ),
        (
            "Selection/properties/since",
            nullable(schema_ref("PointInTime")),
        ),
        (
            "Selection/properties/until",
            nullable(schema_ref("PointInTime")),
        ),
    ];
    rules
        .into_iter()
        .map(|(path, rule)| (format!("/components/schemas/{path}"), rule))
        .collect()
}

/// Merges `rule` into the object at `pointer`; a rule holding `oneOf` or `$ref` replaces the
/// type it narrows.
fn merge_at(document: &mut Value, pointer: &str, rule: Value) {
    let Some(target) = document.pointer_mut(pointer) else {
        tracing::error!(%pointer, "the OpenAPI contract names a schema the document lacks");
        return;
    };
    let replaces = rule.get("oneOf").is_some() || rule.get("$ref").is_some();
    if let (Some(target), Value::Object(rule)) = (target.as_object_mut(), rule) {
        if replaces {
            target.retain(|key, _| key == "description");
        }
        target.extend(rule);
    }
}

/// Combinations of fields, and the request bodies the handlers read as plain JSON.
fn request_rules(document: &mut Value) {
    let schemas = &mut document["components"]["schemas"];
    // `model` or `models`; `messages` or a `prompt` template (with its `input`).
    schemas["JobSpec"]["allOf"] = json!([
        {"anyOf": [
            {"required": ["model"], "properties": {"model": {"type": "string"}}},
            {"required": ["models"], "properties": {"models": {"minItems": 1}}},
        ]},
        {"anyOf": [
            {"required": ["prompt"], "properties": {"prompt": {"type": "string"}, "messages": {"maxItems": 0}}},
            {"required": ["messages"], "properties": {
                "messages": {"minItems": 1},
                "prompt": {"type": "null"},
                "input": {"maxProperties": 0},
            }},
        ]},
    ]);
    schemas["ResponseFormat"] = json!({
        "description": "OpenAI's `response_format`.",
        "oneOf": [
            {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
            {"type": "object", "required": ["type", "json_schema"], "properties": {
                "type": {"const": "json_schema"},
                "json_schema": {"type": "object", "required": ["schema"], "properties": {"schema": {"type": "object"}}},
            }},
        ],
    });
    schemas["PointInTime"] = json!({
        "description": "An RFC 3339 time, or a duration ago: whole numbers with units \
            (`90s`, `2h`, `1h 30m`; units ns, us, ms, s, m, h, d, w and their long names).",
        "anyOf": [
            {"type": "string", "format": "date-time"},
            {"type": "string", "pattern": crate::admin::DURATION_AGO},
        ],
    });
    let text_part = json!({
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    });
    let nonempty_part = json!({
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string", "minLength": 1}},
    });
    let count = json!({"type": ["integer", "null"], "minimum": 1, "maximum": u32::MAX});
    schemas["ChatRequestMessage"] = json!({
        "type": "object",
        "required": ["role", "content"],
        "additionalProperties": false,
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant"]},
            "content": {
                "description": "A string, or a list of `{\"type\": \"text\", \"text\"}` parts \
                    (joined with newlines); not empty.",
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": nonempty_part, "minItems": 1, "maxItems": 1},
                    {"type": "array", "items": text_part, "minItems": 2},
                ],
            },
            "name": {"type": ["string", "null"]},
        },
    });
    let request = &mut schemas["ChatCompletionRequest"];
    request["additionalProperties"] = json!(false);
    let properties = &mut request["properties"];
    properties["model"] = schema_ref(ROUTE_NAME);
    properties["messages"]["minItems"] = json!(1);
    properties["temperature"] = json!({"type": ["number", "null"], "minimum": 0, "maximum": 2});
    properties["top_p"] = json!({"type": ["number", "null"], "minimum": 0, "maximum": 1});
    properties["max_tokens"] = count.clone();
    properties["max_completion_tokens"] = json!({
        "type": ["integer", "null"], "minimum": 1, "maximum": u32::MAX,
        "description": "The same as `max_tokens`; given both, they must agree \
            (`422 conflicting_parameters`).",
    });
    properties["n"] = json!({"oneOf": [{"const": 1}, {"type": "null"}], "description": "Only 1."});
    properties["seed"] = json!({"type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX});
    properties["stop"] = json!({
        "description": "A string or a list of strings.",
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}},
            {"type": "null"},
        ],
    });
    properties["response_format"] = nullable(schema_ref("ResponseFormat"));
    properties["tool_choice"] = json!({
        "description": "OpenAI's: a mode, or an object naming a tool.",
        "oneOf": [{"enum": ["none", "auto", "required"]}, {"type": "object"}, {"type": "null"}],
    });
    // `stream_options` only with `stream: true`.
    request["allOf"] = json!([{"anyOf": [
        {"not": {"required": ["stream_options"]}},
        {"properties": {"stream_options": {"type": "null"}}},
        {"required": ["stream"], "properties": {"stream": {"const": true}}},
    ]}]);
    // Metadata of a batch or a chat completion: OpenAI's limits, as `check_openai_metadata`.
    schemas["Metadata"] = json!({
        "description": "OpenAI's metadata: at most 16 pairs, keys of up to 64 characters, values \
            strings of up to 512.",
        "type": "object",
        "maxProperties": chorus_core::openai::MAX_METADATA_PAIRS,
        "propertyNames": {"maxLength": chorus_core::openai::MAX_METADATA_KEY},
        "additionalProperties": {"type": "string", "maxLength": chorus_core::openai::MAX_METADATA_VALUE},
    });
    schemas["ChatCompletionRequest"]["properties"]["metadata"] = nullable(schema_ref("Metadata"));
    schemas["CreateBatch"]["properties"]["metadata"] = nullable(schema_ref("Metadata"));
    schemas["StreamOptions"]["additionalProperties"] = json!(false);
    schemas["FileUpload"]["additionalProperties"] = json!(false);
    schemas["StreamOptions"]["required"] = json!([]);
    // A replay or purge selects entries, or says `all`.
    let criteria = ["stage", "route", "kind", "since", "until"]
        .map(|field| json!({"required": [field], "properties": {field: {"type": "string"}}}));
    let mut selects: Vec<Value> = criteria.into();
    selects.push(json!({"required": ["sequences"], "properties": {"sequences": {"minItems": 1}}}));
    selects.push(json!({"required": ["all"], "properties": {"all": {"const": true}}}));
    schemas["Selection"]["allOf"] = json!([{"anyOf": selects}]);
    // A purge is not paced.
    let mut purge = schemas["Selection"].clone();
    if let Some(properties) = purge["properties"].as_object_mut() {
        properties.remove("rate");
    }
    purge["description"] = json!("The body of `POST /v1/admin/dlq/purge`.");
    schemas["PurgeSelection"] = purge;
    schemas["Selection"]["description"] = json!("The body of `POST /v1/admin/dlq/replay`.");
    if let Some(body) = document.pointer_mut(
        "/paths/~1v1~1admin~1dlq~1purge/post/requestBody/content/application~1json/schema",
    ) {
        *body = schema_ref("PurgeSelection");
    }
}

/// An assertion is one object: a check's `type` and fields, and the shared `weight`, `metric`
/// and `not`; no other field. Each check type becomes one closed alternative.
fn assertions(document: &mut Value) {
    let schemas = &mut document["components"]["schemas"];
    let shared = json!({
        "weight": {"type": ["number", "null"], "minimum": 0, "description": "Share of the weighted score; default 1."},
        "metric": {"type": ["string", "null"], "description": "The name batch reports aggregate this assertion under."},
        "not": {"type": ["boolean", "null"], "description": "Inverts the outcome; a graded score s becomes 1 - s."},
    });
    let nonempty = json!({"type": "string", "minLength": 1});
    let fraction = json!({"type": "number", "minimum": 0, "maximum": 1});
    let Some(checks) = schemas["Check"]["oneOf"].as_array().cloned() else {
        return;
    };
    let mut alternatives = Vec::new();
    for mut check in checks {
        let kind = check["properties"]["type"]["enum"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let properties = &mut check["properties"];
        match kind.as_str() {
            "contains" | "icontains" | "starts_with" | "similarity" | "llm_rubric"
            | "factuality" => properties["value"] = nonempty.clone(),
            "contains_any" | "contains_all" => {
                properties["values"] = json!({"type": "array", "items": nonempty, "minItems": 1});
            }
            "cost" => properties["max_usd"]["minimum"] = json!(0),
            "length" => {
                check["anyOf"] = json!([
                    {"required": ["min"], "properties": {"min": {"type": "integer"}}},
                    {"required": ["max"], "properties": {"max": {"type": "integer"}}},
                ]);
            }
            _ => {}
        }
        let properties = &mut check["properties"];
        if properties.get("threshold").is_some() {
            properties["threshold"] = fraction.clone();
        }
        if properties.get("model").is_some() {
            properties["model"] = nullable(schema_ref(ROUTE_NAME));
        }
        if let (Some(properties), Some(shared)) = (properties.as_object_mut(), shared.as_object()) {
            properties.extend(shared.clone());
        }
        check["additionalProperties"] = json!(false);
        alternatives.push(check);
    }
    let description = schemas["Assertion"]["description"].clone();
    schemas["Assertion"] = json!({"description": description, "oneOf": alternatives});
}

/// Each event of the two event streams: its `event` name and its `data`.
fn events(document: &mut Value) {
    fn event(name: &str, data: Value) -> Value {
        json!({
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": name},
                "data": data,
                "id": {"type": "string"},
                "retry": {"type": "integer"},
            },
        })
    }
    fn json_of(schema: &str) -> Value {
        json!({"type": "string", "contentMediaType": "application/json", "contentSchema": schema_ref(schema)})
    }
    let job_events = json!({
        "description": "`event: status` (a StatusEvent) as the job moves, then one `event: done` \
            (the stored JobRecord), and the stream ends.",
        "oneOf": [event("status", json_of("StatusEvent")), event("done", json_of("JobRecord"))],
    });
    let chunks = json!({
        "description": "Unnamed events: ChatCompletionChunk objects, then `[DONE]`; an error \
            after the stream began is an ErrorBody.",
        "oneOf": [event("message", json!({"oneOf": [
            json_of("ChatCompletionChunk"),
            json_of("ErrorBody"),
            {"const": "[DONE]"},
        ]}))],
    });
    for (path, schema) in [
        ("/paths/~1v1~1jobs~1{id}~1events/get", job_events),
        ("/paths/~1v1~1chat~1completions/post", chunks),
    ] {
        if let Some(content) =
            document.pointer_mut(&format!("{path}/responses/200/content/text~1event-stream"))
        {
            content["schema"] = schema;
        }
    }
}

/// Answers every operation shares, by what it takes; a status the operation already documents
/// gets the shared reason added to its description.
fn shared_responses(document: &mut Value) {
    let Some(paths) = document["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(operations) = item.as_object_mut() else {
            continue;
        };
        for operation in operations.values_mut() {
            let takes = |location: &str| {
                operation["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["in"] == location))
            };
            let (query, path_parameters) = (takes("query"), takes("path"));
            let body = operation["requestBody"]["content"].as_object();
            let json_body = body.is_some_and(|c| c.contains_key("application/json"));
            let form_body = body.is_some_and(|c| c.contains_key("multipart/form-data"));
            let mut shared: Vec<(&str, &str, Value)> = Vec::new();
            if path.starts_with("/v1/") {
                shared.extend([
                    ("401", "No live API key (`Authorization: Bearer <key>`)", json!({"WWW-Authenticate": {"schema": {"type": "string"}}})),
                    ("403", "The key lacks the route's scope", json!({})),
                    ("429", "The key's request rate is used up", json!({"Retry-After": {"description": "Whole seconds until a request is admitted", "schema": {"type": "integer"}}})),
                    ("503", "NATS or the database is unavailable (for longer than `nats.retry_window`, for a publish); retry shortly", json!({"Retry-After": {"description": "Whole seconds to wait before retrying", "schema": {"type": "integer"}}})),
                ]);
            }
            if query {
                shared.push(("400", "A query parameter of the wrong type, or one the operation does not take (`param` names it)", json!({})));
            }
            if path_parameters {
                shared.push((
                    "400",
                    "A path parameter that is not UTF-8 once decoded (`param` names it)",
                    json!({}),
                ));
            }
            if json_body {
                shared.extend([
                    (
                        "400",
                        "Malformed JSON, or a content type other than `application/json`",
                        json!({}),
                    ),
                    ("413", "Larger than `edge.body_limit`", json!({})),
                    (
                        "422",
                        "A field of the wrong type, unknown or missing (`param` names it)",
                        json!({}),
                    ),
                ]);
            }
            if form_body {
                shared.extend([
                    (
                        "400",
                        "Not a `multipart/form-data` body with a boundary",
                        json!({}),
                    ),
                    ("413", "Larger than `edge.file_limit`", json!({})),
                ]);
            }
            let responses = &mut operation["responses"];
            for (status, reason, headers) in shared {
                add_response(responses, status, reason, headers);
            }
        }
    }
}

fn add_response(responses: &mut Value, status: &str, reason: &str, headers: Value) {
    match responses.get_mut(status) {
        Some(response) => {
            let description = response["description"].as_str().unwrap_or_default();
            if !description.contains(reason) {
                response["description"] = json!(format!("{description}; or: {reason}"));
            }
        }
        None => {
            let mut response = json!({
                "description": reason,
                "content": {"application/json": {"schema": schema_ref("ErrorBody")}},
            });
            if headers.as_object().is_some_and(|h| !h.is_empty()) {
                response["headers"] = headers;
            }
            responses[status] = response;
        }
    }
}

/// `(operationId, status, codes)`: the refusals a request that fits its schema can still get,
/// for rules no schema states.
pub const SEMANTIC_REFUSALS: &[(&str, &str, &[&str])] = &[
    (
        "createJob",
        "422",
        &[
            "invalid_template",
            "duplicate_persona",
            "invalid_assertion",
            "deadline_passed",
        ],
    ),
    ("createChatCompletion", "422", &["conflicting_parameters"]),
    // A cursor that decodes but points outside the dates the database holds.
    ("listJobs", "400", &["invalid_cursor"]),
    // `after` names no batch of the tenant.
    ("listBatches", "400", &["invalid_cursor"]),
    // A file's lines are checked as requests: no schema of a binary part says what they hold.
    ("createFile", "400", &["invalid_file"]),
    // The file's lines no longer pass their checks (the routes changed), or ask for another
    // endpoint than the batch's.
    ("createBatch", "400", &["invalid_file", "endpoint_mismatch"]),
];

fn semantic_refusals(document: &mut Value) {
    for (operation_id, status, codes) in SEMANTIC_REFUSALS {
        if let Some(response) = operation_mut(document, operation_id)
            .and_then(|operation| operation["responses"].get_mut(*status))
        {
            response["x-semantic-codes"] = json!(codes);
        }
    }
}

fn operation_mut<'a>(document: &'a mut Value, operation_id: &str) -> Option<&'a mut Value> {
    document["paths"]
        .as_object_mut()?
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .find(|operation| operation["operationId"] == operation_id)
}

/// `(operationId, status, link name, target operationId, parameters, request body)`.
type Link = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Value,
    Value,
);

/// Which answer's id feeds which operation.
fn link_table() -> Vec<Link> {
    let id = || json!({"id": "$response.body#/id"});
    let none = || Value::Null;
    let mut links = Vec::new();
    for status in ["202", "200"] {
        links.extend([
            ("createJob", status, "GetJob", "getJob", id(), none()),
            ("createJob", status, "CancelJob", "cancelJob", id(), none()),
            (
                "createJob",
                status,
                "StreamJobEvents",
                "streamJobEvents",
                id(),
                none(),
            ),
        ]);
    }
    links.extend([
        ("cancelJob", "200", "GetJob", "getJob", id(), none()),
        (
            "createFile",
            "200",
            "RetrieveFile",
            "retrieveFile",
            id(),
            none(),
        ),
        (
            "createFile",
            "200",
            "DownloadFile",
            "downloadFile",
            id(),
            none(),
        ),
        (
            "createFile",
            "200",
            "CreateBatch",
            "createBatch",
            json!({}),
            json!({"input_file_id": "$response.body#/id"}),
        ),
        (
            "createBatch",
            "200",
            "RetrieveBatch",
            "retrieveBatch",
            id(),
            none(),
        ),
        (
            "createBatch",
            "200",
            "CancelBatch",
            "cancelBatch",
            id(),
            none(),
        ),
        (
            "createBatch",
            "200",
            "GetBatchReport",
            "getBatchReport",
            id(),
            none(),
        ),
        (
            "createBatch",
            "200",
            "ListBatchesAfter",
            "listBatches",
            json!({"after": "$response.body#/id"}),
            none(),
        ),
        (
            "cancelBatch",
            "200",
            "RetrieveBatch",
            "retrieveBatch",
            id(),
            none(),
        ),
        (
            "listModels",
            "200",
            "RetrieveModel",
            "retrieveModel",
            json!({"model": "$response.body#/data/0/id"}),
            none(),
        ),
        (
            "listDeadLetters",
            "200",
            "GetDeadLetter",
            "getDeadLetter",
            json!({"seq": "$response.body#/data/0/seq"}),
            none(),
        ),
        (
            "listJobs",
            "200",
            "GetJob",
            "getJob",
            json!({"id": "$response.body#/data/0/id"}),
            none(),
        ),
        (
            "listJobs",
            "200",
            "NextPage",
            "listJobs",
            json!({"cursor": "$response.body#/next_cursor"}),
            none(),
        ),
    ]);
    links
}

fn links(document: &mut Value) {
    for (source, status, name, target, parameters, body) in link_table() {
        let Some(response) = operation_mut(document, source)
            .and_then(|operation| operation["responses"].get_mut(status))
        else {
            tracing::error!(%source, %status, "the OpenAPI contract links from a response the document lacks");
            continue;
        };
        let mut link = json!({"operationId": target});
        if parameters.as_object().is_some_and(|p| !p.is_empty()) {
            link["parameters"] = parameters;
        }
        if !body.is_null() {
            link["requestBody"] = body;
        }
        response["links"][name] = link;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Value {
        crate::openapi()
    }

    #[test]
    fn every_rule_names_a_schema_the_document_has() {
        let generated = serde_json::to_value(crate::generated_openapi()).unwrap_or_default();
        for (pointer, _) in schema_rules() {
            assert!(generated.pointer(&pointer).is_some(), "{pointer}");
        }
    }

    #[test]
    fn every_link_and_refusal_names_an_operation_and_a_documented_status() {
        let mut document = document();
        for (source, status, _, target, ..) in link_table() {
            assert!(
                operation_mut(&mut document, source)
                    .is_some_and(|o| o["responses"].get(status).is_some()),
                "{source} {status}"
            );
            assert!(operation_mut(&mut document, target).is_some(), "{target}");
        }
        for (operation, status, _) in SEMANTIC_REFUSALS {
            assert!(
                operation_mut(&mut document, operation)
                    .is_some_and(|o| o["responses"][*status]["x-semantic-codes"].is_array()),
                "{operation} {status}"
            );
        }
    }

    #[test]
    fn every_v1_operation_documents_the_answers_it_shares() {
        let document = document();
        for (path, item) in document["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                let responses = &operation["responses"];
                assert!(responses.get("default").is_none(), "{method} {path}");
                if path.starts_with("/v1/") {
                    for status in ["401", "403", "429", "503"] {
                        assert!(responses.get(status).is_some(), "{method} {path} {status}");
                    }
                }
                if operation["requestBody"]["content"]
                    .get("application/json")
                    .is_some()
                {
                    for status in ["400", "413", "422"] {
                        assert!(responses.get(status).is_some(), "{method} {path} {status}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_served_document_lists_the_models() {
        let mut document = document();
        with_models(&mut document, &["fast".into(), "sim:echo".into()]);
        assert_eq!(
            document["components"]["schemas"][ROUTE_NAME]["enum"],
            json!(["fast", "sim:echo"])
        );
    }
}
