//! Lossless storage end to end, on SQLite and on Postgres: jobs, chat completions and batch lines
//! whose text holds NUL characters, emoji, right-to-left text and the store's own escape
//! character, and prompts just under `edge.body_limit`, are accepted, run, and read back exactly
//! as sent — the job, the job list, the batch and its output file. Beside them, 1,000 ordinary
//! jobs all finish; their time is measured against the same 1,000 alone and printed (run with
//! `--no-capture` to see it), never asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chorus_core::JobId;
use chorus_testkit::database::{Backend, TestDatabase};
use chorus_testkit::nats::NatsServer;
use chorus_testkit::wait;
use futures::StreamExt;
use sea_orm::DatabaseConnection;
use serde_json::{Value, json};

use crate::helpers::*;

/// Texts a naive store would break on (none holds a line break: some are `custom_id`s).
const ODD: [&str; 6] = [
    "nul here: \u{0} end",
    "\u{0}",
    "emoji 🎉👩‍👩‍👧 and rtl שלום עולם مرحبا \u{202E}reversed\u{202C}",
    "the store's escape \u{FDD0} and what an escaped NUL looks like \u{FDD0}\u{FDD1}",
    "controls \u{1}\u{7}\u{1b}[0m and noncharacters \u{FFFE}\u{FFFF}",
    "quotes \" ' \\ and \\u0000 spelled out",
];

/// How many ordinary jobs are timed, alone and beside the odd ones.
const ORDINARY: usize = 1_000;
/// Rounds of the two measurements.
const ROUNDS: usize = 2;
/// Requests in flight while submitting them.
const IN_FLIGHT: usize = 32;

#[tokio::test]
async fn odd_input_is_stored_and_read_back_on_sqlite() {
    odd_input_is_stored_and_read_back(TestDatabase::sqlite()).await;
}

#[tokio::test]
async fn odd_input_is_stored_and_read_back_on_postgres() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    odd_input_is_stored_and_read_back(db).await;
}

/// Metadata made of `text`: in keys, in values, nested.
fn odd_metadata(text: &str) -> Value {
    json!({
        "text": text,
        "nul\u{0}key": "value\u{0}",
        "\u{FDD0}": [text, {"deep\u{0}": {"deeper": text}}],
        "emoji 🎉": "שלום",
        "numbers": [0, -1, 1.5, 1e300, u64::MAX],
    })
}

fn user(content: &str) -> Value {
    json!([{"role": "user", "content": content}])
}

/// A job answered by `sim:echo` with `[sim] <text>`, checked by an assertion named by `text`.
fn odd_job(text: &str) -> Value {
    json!({
        "model": "fast",
        "messages": user(text),
        "evaluate": {"assertions": [{"type": "contains", "value": text, "metric": text}]},
        "metadata": odd_metadata(text),
    })
}

/// A text making `body(text)` serialize to `limit - 64` bytes exactly: NULs, emoji and
/// right-to-left text all along, padded with `x`.
fn just_under(limit: usize, body: impl Fn(&str) -> Value) -> String {
    let target = limit - 64;
    let chunk = "words \u{0} 🎉 שלום ";
    let encoded = |s: &str| serde_json::to_string(s).expect("json").len() - 2;
    let base = serde_json::to_vec(&body("")).expect("json").len();
    let mut text = chunk.repeat((target - base) / encoded(chunk));
    text.push_str(&"x".repeat(target - base - encoded(&text)));
    assert_eq!(
        serde_json::to_vec(&body(&text)).expect("json").len(),
        target
    );
    text
}

fn jsonl(lines: &[Value]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect()
}

async fn get(app: &TestApp, path: &str) -> Value {
    let response = app
        .client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.expect("json")
}

async fn get_bytes(app: &TestApp, path: &str) -> Vec<u8> {
    let response = app
        .client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200, "GET {path}");
    response.bytes().await.expect("body").to_vec()
}

async fn post(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{}{path}", app.base))
        .json(body)
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Uploads `lines` as a batch input file, checks it reads back byte for byte, and creates a
/// batch of it; the batch's id.
async fn start_batch(app: &TestApp, endpoint: &str, lines: &[Value], metadata: &Value) -> String {
    let content = jsonl(lines);
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(content.clone()).file_name("odd 🎉 שלום.jsonl"),
        );
    let file: Value = app
        .client
        .post(format!("{}/v1/files", app.base))
        .multipart(form)
        .send()
        .await
        .expect("POST /v1/files")
        .json()
        .await
        .expect("json");
    let file_id = file["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a file id: {file}"));
    assert_eq!(
        get_bytes(app, &format!("/v1/files/{file_id}/content")).await,
        content
    );
    let (status, batch) = post(
        app,
        "/v1/batches",
        &json!({"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h",
                "metadata": metadata}),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    batch["id"].as_str().expect("batch id").to_owned()
}

/// Submits `n` ordinary jobs tagged with `phase` and waits until the database holds them all as
/// succeeded; how long that took.
async fn ordinary(
    app: &TestApp,
    db: &DatabaseConnection,
    backend: Backend,
    phase: &str,
    n: usize,
) -> Duration {
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| async move {
            let body = json!({"model": "fast", "messages": user(&format!("ordinary job {i}")),
                              "metadata": {"phase": phase}});
            app.post_job(&body, "").await.status().as_u16()
        })
        .buffer_unordered(IN_FLIGHT)
        .for_each(|status| async move { assert_eq!(status, 202) })
        .await;
    let phase_of = match backend {
        Backend::Sqlite => "json_extract(metadata, '$.phase')",
        Backend::Postgres => "metadata->>'phase'",
    };
    let sql =
        format!("SELECT COUNT(*) FROM jobs WHERE status = 'succeeded' AND {phase_of} = '{phase}'");
    wait::until(
        Duration::from_secs(300),
        &format!("{n} {phase} jobs"),
        || async { (count(db, &sql).await == n as i64).then_some(()) },
    )
    .await;
    started.elapsed()
}

/// What the odd submissions were, to check once they are done.
struct Odd {
    /// `/v1/jobs`: job id → the text its message and metadata are made of.
    jobs: Vec<(String, String)>,
    /// `/v1/chat/completions`: job id → the text of its message.
    chats: Vec<(String, String)>,
    /// Batches of chat completion lines and of job lines: batch id, its metadata, and
    /// `custom_id` → the text of the line.
    batches: Vec<(String, Value, BTreeMap<String, String>)>,
}

async fn submit_odd(app: &TestApp, body_limit: usize) -> Odd {
    // The same request body, just under the limit, for a job and for a chat completion.
    let big = just_under(
        body_limit,
        |text| json!({"model": "fast", "messages": user(text)}),
    );
    let mut jobs = Vec::new();
    for text in ODD {
        let (status, job) = post(app, "/v1/jobs", &odd_job(text)).await;
        assert_eq!(status, 202, "{job}");
        jobs.push((job["id"].as_str().expect("id").to_owned(), text.to_owned()));
    }
    let (status, job) = post(
        app,
        "/v1/jobs",
        &json!({"model": "fast", "messages": user(&big)}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let big_id = job["id"].as_str().expect("id").to_owned();

    let mut chats = Vec::new();
    for text in ODD.iter().copied().chain([big.as_str()]) {
        let request = if text.len() > 1024 {
            json!({"model": "fast", "messages": user(text)})
        } else {
            json!({"model": "fast", "messages": user(text),
                   "metadata": {"text": text, "nul\u{0}": "🎉 שלום"}})
        };
        let (status, answer) = post(app, "/v1/chat/completions", &request).await;
        assert_eq!(status, 200, "{}", answer["error"]);
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            json!(format!("[sim] {text}"))
        );
        let id = answer["id"].as_str().expect("id");
        let job: JobId = id.trim_start_matches("chatcmpl-").parse().expect("job id");
        chats.push((job.to_string(), text.to_owned()));
    }

    let lines = |url: &str| -> (Vec<Value>, BTreeMap<String, String>) {
        let mut ids = BTreeMap::new();
        let lines = ODD
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let custom_id = format!("{i} {text}");
                ids.insert(custom_id.clone(), (*text).to_owned());
                let body = match url {
                    "/v1/jobs" => odd_job(text),
                    _ => {
                        json!({"model": "fast", "messages": user(text), "metadata": {"text": text}})
                    }
                };
                json!({"custom_id": custom_id, "method": "POST", "url": url, "body": body})
            })
            .collect();
        (lines, ids)
    };
    let mut batches = Vec::new();
    for url in ["/v1/chat/completions", "/v1/jobs"] {
        let (lines, ids) = lines(url);
        let metadata = json!({"nul": "a\u{0}b", "emoji 🎉": "שלום עולם", "escape": "\u{FDD0}"});
        let id = start_batch(app, url, &lines, &metadata).await;
        batches.push((id, metadata, ids));
    }
    jobs.push((big_id, big));
    Odd {
        jobs,
        chats,
        batches,
    }
}

/// Every odd submission finished, and reads back exactly as it was sent.
async fn check_odd(app: &TestApp, odd: &Odd) {
    let mut expected_metadata = BTreeMap::new();
    for (id, text) in &odd.jobs {
        let job = wait_done(&app.base, &app.client, id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "succeeded", "{}", job["error"]);
        assert_eq!(job["spec"]["messages"], user(text));
        assert_eq!(job["steps"][0]["output"], json!(format!("[sim] {text}")));
        if text.len() < 1024 {
            assert_eq!(job["metadata"], odd_metadata(text));
            let assertion = &job["evaluation"]["targets"][0]["assertions"][0];
            assert_eq!(assertion["metric"], json!(text));
            assert_eq!(assertion["passed"], json!(true), "{assertion}");
            expected_metadata.insert(id.clone(), odd_metadata(text));
        }
    }
    for (id, text) in &odd.chats {
        let job = wait_done(&app.base, &app.client, id, Duration::from_secs(120)).await;
        assert_eq!(job["steps"][0]["output"], json!(format!("[sim] {text}")));
        if text.len() < 1024 {
            let metadata = json!({"text": text, "nul\u{0}": "🎉 שלום"});
            assert_eq!(job["metadata"], metadata);
            expected_metadata.insert(id.clone(), metadata);
        }
    }

    // The job list shows the same metadata.
    let mut listed = BTreeMap::new();
    let mut cursor = String::new();
    while listed.len() < expected_metadata.len() {
        let page = get(app, &format!("/v1/jobs?limit=100{cursor}")).await;
        for job in page["data"].as_array().expect("data") {
            let id = job["id"].as_str().expect("id");
            if expected_metadata.contains_key(id) {
                listed.insert(id.to_owned(), job["metadata"].clone());
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(listed, expected_metadata);

    for (id, metadata, texts) in &odd.batches {
        let batch = wait::until(
            Duration::from_secs(120),
            "an odd batch to finish",
            || async {
                let batch = get(app, &format!("/v1/batches/{id}")).await;
                (batch["status"] == "completed").then_some(batch)
            },
        )
        .await;
        assert_eq!(&batch["metadata"], metadata);
        assert_eq!(
            batch["request_counts"],
            json!({"total": ODD.len(), "completed": ODD.len(), "failed": 0})
        );
        assert_eq!(batch["error_file_id"], Value::Null);
        let output = get_bytes(
            app,
            &format!(
                "/v1/files/{}/content",
                batch["output_file_id"].as_str().expect("output file")
            ),
        )
        .await;
        let mut seen = BTreeSet::new();
        for line in String::from_utf8(output).expect("UTF-8").lines() {
            let line: Value = serde_json::from_str(line).expect("a JSON line");
            let custom_id = line["custom_id"].as_str().expect("custom_id");
            let text = &texts[custom_id];
            let body = &line["response"]["body"];
            match body["object"].as_str() {
                Some("chat.completion") => assert_eq!(
                    body["choices"][0]["message"]["content"],
                    json!(format!("[sim] {text}"))
                ),
                _ => {
                    assert_eq!(body["custom_id"], json!(custom_id));
                    assert_eq!(body["metadata"], odd_metadata(text));
                    assert_eq!(body["steps"][0]["output"], json!(format!("[sim] {text}")));
                }
            }
            seen.insert(custom_id.to_owned());
        }
        assert_eq!(seen, texts.keys().cloned().collect());
    }
}

async fn odd_input_is_stored_and_read_back(db: TestDatabase) {
    let nats = NatsServer::start_new().await;
    let config = test_config(&nats, &db);
    let body_limit = usize::try_from(config.edge.body_limit.as_u64()).expect("fits");
    let app = TestApp::start(config).await;
    let conn = sea_orm::Database::connect(db.url())
        .await
        .expect("database");
    let backend = db.backend();

    ordinary(&app, &conn, backend, "warm-up", ORDINARY / 5).await;
    // Alone and beside, alternating, so a slower stretch of a shared machine weighs on both.
    let (mut alone, mut beside) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        let took = ordinary(&app, &conn, backend, &format!("alone-{round}"), ORDINARY).await;
        println!(
            "lossless ({backend:?}) round {round}: {ORDINARY} ordinary jobs alone: {:.2} s",
            took.as_secs_f64()
        );
        alone += took;
        let phase = format!("beside-{round}");
        let (took, odd) = tokio::join!(
            ordinary(&app, &conn, backend, &phase, ORDINARY),
            submit_odd(&app, body_limit),
        );
        println!(
            "lossless ({backend:?}) round {round}: {ORDINARY} ordinary jobs beside the odd ones: {:.2} s",
            took.as_secs_f64()
        );
        beside += took;
        check_odd(&app, &odd).await;
    }
    println!(
        "lossless ({backend:?}): {ORDINARY} ordinary jobs, {ROUNDS} rounds: alone {:.2} s, beside the \
         odd ones {:.2} s, ratio {:.3}",
        alone.as_secs_f64(),
        beside.as_secs_f64(),
        beside.as_secs_f64() / alone.as_secs_f64()
    );
    app.shutdown().await.expect("clean shutdown");
}
