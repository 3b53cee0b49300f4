//! Batch lines and files, read end to end: envelopes, both endpoints' bodies (a chat completion
//! request through [`crate::openai`]'s translation), whole files, and the ids a line carries.

use serde_json::{Value, json};

use super::body::spec_from_body;
use super::file::{LineErrorCode, MAX_REPORTED, parse_file, parse_line};
use super::{Endpoint, Origin, check_batch_id, check_custom_id};
use crate::assertion::Assertion;
use crate::spec::{ChatMessage, FieldError, JobSpec, Params, Role, Validator};

struct Routes(&'static [&'static str]);

/// Every route is known.
const ANY: Routes = Routes(&[]);

/// A route these tests' installation does not have.
#[derive(Debug, thiserror::Error)]
#[error("unknown route `{0}`")]
struct UnknownRoute(String);

impl Validator for Routes {
    type RouteError = UnknownRoute;
    type AssertionError = std::convert::Infallible;

    fn check_route(&self, model: &str) -> Result<(), UnknownRoute> {
        if self.0.is_empty() || self.0.contains(&model) {
            Ok(())
        } else {
            Err(UnknownRoute(model.to_owned()))
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
