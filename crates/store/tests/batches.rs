//! Files, batches, result files and batch reports against real databases: each test runs on
//! SQLite and on Postgres (which skips loudly unless `TEST_POSTGRES_URL` is set; see
//! `chorus_testkit::database`).

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use chorus_core::assertion::Assertion;
use chorus_core::batch::Endpoint;
use chorus_core::batch::file::{BatchLine, FileErrors, parse_file};
use chorus_core::job::{Input, JobState, JobStatus, apply};
use chorus_core::messages::{
    AssertionResult, EvaluationResult, StepError, StepOutcome, StepOutput, StepResult,
    TargetEvaluation, Usage,
};
use chorus_core::spec::Validator;
use chorus_core::{JobId, Tenant};
use chorus_store::batches::result_file;
use chorus_store::{BatchObject, BatchStatus, NewBatch, NewFile, RequestCounts, Store, StoreError};
use chorus_testkit::database::{Backend, TestDatabase};
use chrono::{DateTime, Utc};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::{Value, json};

chorus_testkit::on_both_backends!(
    files_keep_their_content_apart_from_their_metadata,
    a_batch_counts_its_jobs_and_completes_once_all_are_terminal,
    a_cancelled_batch_finishes_as_cancelled_with_an_error_file_only,
    concurrent_refreshes_finalize_a_batch_once,
    a_refused_file_makes_a_failed_batch_with_its_errors,
    batches_list_newest_first_after_a_cursor,
    output_files_of_ten_thousand_lines_keep_input_order,
    job_records_show_their_batch_line_and_errored_assertions,
    the_report_aggregates_by_metric_model_and_persona,
);

const T0: i64 = 1_700_000_000_000;

async fn store(backend: Backend) -> Option<(TestDatabase, Store)> {
    let db = TestDatabase::new(backend)?;
    let store = Store::connect(db.url(), 4).await.unwrap();
    store.migrate().await.unwrap();
    Some((db, store))
}

fn tenant(name: &str) -> Tenant {
    Tenant::new(name).unwrap()
}

fn time(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap()
}

fn new_batch(total: u64, created_at: i64) -> NewBatch {
    NewBatch {
        input_file_id: "file-input".into(),
        endpoint: Endpoint::ChatCompletions,
        completion_window: "24h".into(),
        metadata: Some(json!({"run": "nightly"})),
        status: BatchStatus::InProgress,
        total,
        errors: None,
        created_at: time(created_at),
        expires_at: Some(time(created_at + 86_400_000)),
    }
}

/// Knows every route and accepts every assertion: the store takes what the edge checked.
struct Lenient;

impl Validator for Lenient {
    type RouteError = std::convert::Infallible;
    type AssertionError = std::convert::Infallible;

    fn check_route(&self, _: &str) -> Result<(), Self::RouteError> {
        Ok(())
    }

    fn check_assertion(&self, _: &Assertion) -> Result<(), Self::AssertionError> {
        Ok(())
    }
}

/// Parses a batch file of one line per body: `(custom_id, url, body)`.
fn lines(requests: &[(&str, &str, Value)]) -> Vec<BatchLine> {
    let file: Vec<String> = requests
        .iter()
        .map(|(id, url, body)| {
            json!({"custom_id": id, "method": "POST", "url": url, "body": body}).to_string()
        })
        .collect();
    parse_file(file.join("\n").as_bytes(), 100_000, &Lenient).unwrap()
}

fn chat(content: &str) -> Value {
    json!({"model": "fast", "messages": [{"role": "user", "content": content}]})
}

/// A job for `line` of `batch`, submitted (every fan-out call dispatched).
fn submitted(tenant: &Tenant, batch: &str, line: &BatchLine, at: i64) -> JobState {
    let state = JobState::new(JobId::new(), tenant.clone(), line.spec.clone(), at, None)
        .with_origin(Some(line.origin(batch)));
    apply(&state, Input::Submitted { at }).state
}

fn answer(text: &str) -> StepOutcome {
    StepOutcome::Succeeded(StepOutput {
        text: text.into(),
        usage: Usage {
            prompt_tokens: 7,
            completion_tokens: 2,
        },
        latency_ms: 30,
        finish_reason: Some("stop".into()),
        route: "fast".into(),
        cost_usd: None,
        tool_calls: None,
        cut: None,
    })
}

fn failure(kind: &str, message: &str) -> StepOutcome {
    StepOutcome::Failed(StepError {
        kind: kind.into(),
        message: message.into(),
        retryable: false,
        status: Some(400),
    })
}

/// The job after step `step` settled with `outcome` at `at`.
fn settled(state: &JobState, step: u32, outcome: StepOutcome, at: i64) -> JobState {
    let transition = apply(
        state,
        Input::Step(StepResult {
            job_id: state.id,
            tenant: state.tenant.clone(),
            step,
            route: "fast".into(),
            outcome,
            attempts: 1,
            calls: Vec::new(),
            replays: 0,
            started_at: at - 5,
            finished_at: at,
        }),
    );
    assert!(transition.changed);
    transition.state
}

fn counts(total: u64, completed: u64, failed: u64) -> RequestCounts {
    RequestCounts {
        total,
        completed,
        failed,
        pending: total - completed - failed,
    }
}

fn output(bytes: Option<Vec<u8>>) -> Vec<Value> {
    let text = String::from_utf8(bytes.unwrap()).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "{text}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn files_keep_their_content_apart_from_their_metadata(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    let content = b"{\"custom_id\": \"a\"}\n\x00\xff binary is kept as is\n".to_vec();
    let file = store
        .create_file(
            &acme,
            NewFile {
                purpose: "batch".into(),
                filename: "cases.jsonl".into(),
                content: content.clone(),
                line_count: 2,
            },
        )
        .await
        .unwrap();
    assert!(file.id.starts_with("file-"), "{}", file.id);
    assert_eq!(file.bytes, content.len() as u64);
    assert_eq!(file.line_count, 2);
    assert!((Utc::now().timestamp() - file.created_at).abs() < 60);
    assert_eq!(
        serde_json::to_string(&file).unwrap(),
        format!(
            r#"{{"id":"{}","object":"file","bytes":{},"created_at":{},"filename":"cases.jsonl","purpose":"batch"}}"#,
            file.id,
            content.len(),
            file.created_at
        )
    );
    assert_eq!(
        store.get_file(&acme, &file.id).await.unwrap(),
        Some(file.clone())
    );
    assert_eq!(
        store.file_content(&acme, &file.id).await.unwrap(),
        Some(content)
    );

    // Empty files are files too; tenants are isolated; unknown ids are absent.
    let empty = store
        .create_file(
            &acme,
            NewFile {
                purpose: "batch".into(),
                filename: "empty.jsonl".into(),
                content: Vec::new(),
                line_count: 0,
            },
        )
        .await
        .unwrap();
    assert_ne!(empty.id, file.id);
    assert_eq!(
        store.file_content(&acme, &empty.id).await.unwrap(),
        Some(Vec::new())
    );
    let other = tenant("other");
    assert_eq!(store.get_file(&other, &file.id).await.unwrap(), None);
    assert_eq!(store.file_content(&other, &file.id).await.unwrap(), None);
    assert_eq!(store.get_file(&acme, "file-nope").await.unwrap(), None);
}

async fn a_batch_counts_its_jobs_and_completes_once_all_are_terminal(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    let batch = store.create_batch(&acme, new_batch(3, T0)).await.unwrap();
    let id = batch.id.clone();
    assert!(id.starts_with("batch_"), "{id}");
    assert_eq!(batch.status, BatchStatus::InProgress);
    assert_eq!(batch.request_counts, counts(3, 0, 0));

    let lines = lines(&[
        ("q1", "/v1/chat/completions", chat("2+2?")),
        (
            "q2",
            "/v1/jobs",
            json!({"model": "fast", "prompt": "Grade it"}),
        ),
        ("q3", "/v1/chat/completions", chat("3+3?")),
    ]);
    let jobs: Vec<JobState> = lines
        .iter()
        .map(|l| submitted(&acme, &id, l, T0 + 10))
        .collect();
    let q1 = settled(&jobs[0], 0, answer("4"), T0 + 1_000);
    let q2 = settled(
        &jobs[1],
        0,
        failure("invalid_request", "bad prompt"),
        T0 + 2_000,
    );
    assert_eq!(
        (q1.status, q2.status),
        (JobStatus::Succeeded, JobStatus::Failed)
    );
    // The queued snapshot of q3 only: it is pending.
    store
        .write_batch(vec![q1.clone(), q2.clone(), jobs[2].clone()])
        .await
        .unwrap();
    assert_eq!(
        store.batch_counts(&acme, &id).await.unwrap(),
        Some(counts(3, 1, 1))
    );
    let running = store.refresh_batch(&acme, &id).await.unwrap().unwrap();
    assert_eq!(running.status, BatchStatus::InProgress);
    assert_eq!(running.request_counts.pending, 1);
    assert_eq!(
        (running.output_file_id, running.error_file_id),
        (None, None)
    );

    // q3 finishes last: the batch completes when its last job did.
    let q3 = settled(&jobs[2], 0, answer("6"), T0 + 5_500);
    store.write_batch(vec![q3.clone()]).await.unwrap();
    let done = store.refresh_batch(&acme, &id).await.unwrap().unwrap();
    assert_eq!(done.status, BatchStatus::Completed);
    assert_eq!(done.request_counts, counts(3, 2, 1));
    assert_eq!(done.completed_at, Some((T0 + 5_500) / 1000));
    assert_eq!(done.finalizing_at, done.completed_at);
    assert_eq!(
        serde_json::to_string(&done).unwrap(),
        format!(
            concat!(
                r#"{{"id":"{id}","object":"batch","endpoint":"/v1/chat/completions","errors":null,"#,
                r#""input_file_id":"file-input","completion_window":"24h","status":"completed","#,
                r#""output_file_id":"{id}-output","error_file_id":"{id}-errors","#,
                r#""created_at":1700000000,"in_progress_at":1700000000,"expires_at":1700086400,"#,
                r#""finalizing_at":1700000005,"completed_at":1700000005,"failed_at":null,"#,
                r#""expired_at":null,"cancelling_at":null,"cancelled_at":null,"#,
                r#""request_counts":{{"total":3,"completed":2,"failed":1}},"#,
                r#""metadata":{{"run":"nightly"}}}}"#
            ),
            id = id
        )
    );
    // Idempotent: refreshing again, or a late duplicate snapshot, changes nothing.
    store.write_batch(vec![q3.clone()]).await.unwrap();
    assert_eq!(
        store.refresh_batch(&acme, &id).await.unwrap(),
        Some(done.clone())
    );
    assert_eq!(
        store.get_batch(&acme, &id).await.unwrap(),
        Some(done.clone())
    );
    // A finished batch never changes status again.
    let after = store
        .set_batch_status(&acme, &id, BatchStatus::Cancelling, T0 + 60_000)
        .await
        .unwrap();
    assert_eq!(after, Some(done.clone()));

    // The output file: ok lines in input order, each exactly the job's result line.
    let (batch_of, ok) = result_file(done.output_file_id.as_deref().unwrap()).unwrap();
    assert_eq!((batch_of, ok), (id.as_str(), true));
    let out = output(store.batch_output(&acme, &id, true).await.unwrap());
    let custom_ids: Vec<_> = out.iter().map(|l| l["custom_id"].clone()).collect();
    assert_eq!(custom_ids, [json!("q1"), json!("q3")]);
    assert_eq!(
        out[0]["response"]["body"]["choices"][0]["message"]["content"],
        json!("4")
    );
    assert_eq!(
        out[0]["id"],
        json!(format!("batch_req_{}", q1.id.as_uuid().simple()))
    );
    let raw =
        String::from_utf8(store.batch_output(&acme, &id, true).await.unwrap().unwrap()).unwrap();
    assert_eq!(
        raw.lines().next().unwrap(),
        chorus_store::result_line(&q1).unwrap().json
    );
    let errors = output(store.batch_output(&acme, &id, false).await.unwrap());
    assert_eq!(
        errors,
        [json!({
            "id": format!("batch_req_{}", q2.id.as_uuid().simple()),
            "custom_id": "q2",
            "response": null,
            "error": {"code": "invalid_request", "message": "bad prompt"},
        })]
    );

    // Other tenants see nothing; unknown batches are absent.
    let other = tenant("other");
    assert_eq!(store.get_batch(&other, &id).await.unwrap(), None);
    assert_eq!(store.refresh_batch(&other, &id).await.unwrap(), None);
    assert_eq!(store.batch_counts(&other, &id).await.unwrap(), None);
    assert_eq!(store.batch_output(&other, &id, true).await.unwrap(), None);
    assert_eq!(store.get_batch(&acme, "batch_nope").await.unwrap(), None);
}

async fn a_cancelled_batch_finishes_as_cancelled_with_an_error_file_only(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    let id = store
        .create_batch(&acme, new_batch(2, T0))
        .await
        .unwrap()
        .id;
    let lines = lines(&[
        ("a", "/v1/chat/completions", chat("x")),
        ("b", "/v1/chat/completions", chat("y")),
    ]);
    let jobs: Vec<JobState> = lines
        .iter()
        .map(|l| submitted(&acme, &id, l, T0 + 10))
        .collect();
    store.write_batch(jobs.clone()).await.unwrap();

    let cancelling = store
        .set_batch_status(&acme, &id, BatchStatus::Cancelling, T0 + 3_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelling.status, BatchStatus::Cancelling);
    assert_eq!(cancelling.cancelling_at, Some(T0 / 1000 + 3));
    // Asking again keeps the first time.
    let again = store
        .set_batch_status(&acme, &id, BatchStatus::Cancelling, T0 + 9_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.cancelling_at, Some(T0 / 1000 + 3));
    // Not done while a job runs.
    let still = store.refresh_batch(&acme, &id).await.unwrap().unwrap();
    assert_eq!(still.status, BatchStatus::Cancelling);

    let cancelled: Vec<JobState> = jobs
        .iter()
        .enumerate()
        .map(|(i, job)| {
            let at = T0 + 4_000 + 1_000 * i as i64;
            apply(
                job,
                Input::Cancel {
                    at,
                    reason: "the batch was cancelled".into(),
                },
            )
            .state
        })
        .collect();
    store.write_batch(cancelled).await.unwrap();
    let done = store.refresh_batch(&acme, &id).await.unwrap().unwrap();
    assert_eq!(done.status, BatchStatus::Cancelled);
    assert_eq!(done.cancelled_at, Some(T0 / 1000 + 5));
    assert_eq!((done.completed_at, done.finalizing_at), (None, None));
    assert_eq!(done.request_counts, counts(2, 0, 2));
    assert_eq!(done.output_file_id, None);
    assert_eq!(done.error_file_id, Some(format!("{id}-errors")));
    let errors = output(store.batch_output(&acme, &id, false).await.unwrap());
    assert_eq!(
        errors
            .iter()
            .map(|l| (l["custom_id"].clone(), l["error"]["code"].clone()))
            .collect::<Vec<_>>(),
        [
            (json!("a"), json!("batch_cancelled")),
            (json!("b"), json!("batch_cancelled"))
        ]
    );
    assert!(output(store.batch_output(&acme, &id, true).await.unwrap()).is_empty());
    // Finished: no status moves it any more.
    for status in BatchStatus::ALL {
        let same = store
            .set_batch_status(&acme, &id, status, T0 + 60_000)
            .await
            .unwrap();
        assert_eq!(same.as_ref(), Some(&done), "{status:?}");
    }
}

async fn concurrent_refreshes_finalize_a_batch_once(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    let id = store
        .create_batch(&acme, new_batch(1, T0))
        .await
        .unwrap()
        .id;
    let line = &lines(&[("only", "/v1/chat/completions", chat("x"))])[0];
    let job = settled(&submitted(&acme, &id, line, T0), 0, answer("y"), T0 + 2_000);
    store.write_batch(vec![job]).await.unwrap();
    let refreshes: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let (acme, id) = (acme.clone(), id.clone());
            tokio::spawn(async move { store.refresh_batch(&acme, &id).await })
        })
        .collect();
    let mut seen = Vec::new();
    for refresh in refreshes {
        seen.push(refresh.await.unwrap().unwrap().unwrap());
    }
    assert!(seen.iter().all(|b| b == &seen[0]), "{seen:#?}");
    assert_eq!(seen[0].status, BatchStatus::Completed);
    assert_eq!(seen[0].completed_at, Some(T0 / 1000 + 2));
}

async fn a_refused_file_makes_a_failed_batch_with_its_errors(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    let mut file = vec!["oops".to_owned(); 101];
    file.push(
        json!({"custom_id": "x", "method": "GET", "url": "/v1/jobs", "body": {}}).to_string(),
    );
    let errors: FileErrors = parse_file(file.join("\n").as_bytes(), 1_000, &Lenient).unwrap_err();
    assert_eq!(errors.omitted, 2);
    let batch = store
        .create_batch(
            &acme,
            NewBatch {
                status: BatchStatus::Failed,
                total: 0,
                errors: Some(errors),
                metadata: None,
                ..new_batch(0, T0)
            },
        )
        .await
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Failed);
    assert_eq!(batch.failed_at, Some(T0 / 1000));
    assert_eq!(batch.in_progress_at, None);
    assert_eq!(batch.request_counts, counts(0, 0, 0));
    assert_eq!(
        (batch.output_file_id.clone(), batch.error_file_id.clone()),
        (None, None)
    );
    let listed = batch.errors.clone().unwrap();
    assert_eq!(listed["object"], json!("list"));
    let data = listed["data"].as_array().unwrap();
    assert_eq!(data.len(), 101);
    assert_eq!(
        data[0],
        json!({"code": "invalid_json_line", "param": null, "line": 1,
            "message": "not valid JSON: expected value (column 1)"})
    );
    assert_eq!(
        data[100],
        json!({"code": "too_many_errors", "param": null, "line": null,
            "message": "2 more problems not listed"})
    );
    let value = serde_json::to_value(&batch).unwrap();
    assert_eq!(value["metadata"], json!(null));
    assert_eq!(
        store.get_batch(&acme, &batch.id).await.unwrap(),
        Some(batch.clone())
    );
    // A failed batch is finished.
    let refreshed = store.refresh_batch(&acme, &batch.id).await.unwrap();
    assert_eq!(refreshed, Some(batch));
}

async fn batches_list_newest_first_after_a_cursor(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    let mut created: Vec<BatchObject> = Vec::new();
    // Two batches share a creation time: the id breaks the tie.
    for at in [T0, T0 + 1_000, T0 + 1_000, T0 + 5_000, T0 + 3_000] {
        created.push(store.create_batch(&acme, new_batch(1, at)).await.unwrap());
    }
    store
        .create_batch(&tenant("other"), new_batch(1, T0 + 9_000))
        .await
        .unwrap();
    let mut want: Vec<String> = {
        let mut sorted = created.clone();
        sorted.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        sorted.into_iter().map(|b| b.id).collect()
    };
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_batches(&acme, 2, after.as_deref())
            .await
            .unwrap();
        assert_eq!(page.object, "list");
        assert!(page.data.len() <= 2);
        assert_eq!(page.first_id, page.data.first().map(|b| b.id.clone()));
        assert_eq!(page.last_id, page.data.last().map(|b| b.id.clone()));
        seen.extend(page.data.iter().map(|b| b.id.clone()));
        if !page.has_more {
            break;
        }
        after = page.last_id;
    }
    assert_eq!(seen, want);

    let all = store.list_batches(&acme, 1_000, None).await.unwrap();
    assert!(!all.has_more);
    assert_eq!(all.data.len(), 5);
    let value = serde_json::to_value(&all).unwrap();
    assert_eq!(value["object"], json!("list"));
    assert_eq!(value["data"][0]["object"], json!("batch"));
    assert_eq!(
        value["data"][0]["request_counts"],
        json!({"total": 1, "completed": 0, "failed": 0})
    );
    let last = store
        .list_batches(&acme, 10, Some(&want.pop().unwrap()))
        .await
        .unwrap();
    assert!(last.data.is_empty() && !last.has_more);
    assert_eq!((last.first_id, last.last_id), (None, None));
    for bad in ["batch_nope", created[0].id.as_str()] {
        let err = store
            .list_batches(&tenant("other"), 10, Some(bad))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::BadCursor), "{err}");
    }
}

async fn output_files_of_ten_thousand_lines_keep_input_order(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    const LINES: usize = 10_000;
    let id = store
        .create_batch(&acme, new_batch(LINES as u64, T0))
        .await
        .unwrap()
        .id;
    let requests: Vec<(String, Value)> = (0..LINES)
        .map(|i| (format!("r{i}"), chat(&format!("case {i}"))))
        .collect();
    let requests: Vec<(&str, &str, Value)> = requests
        .iter()
        .map(|(id, body)| (id.as_str(), "/v1/chat/completions", body.clone()))
        .collect();
    let mut jobs: Vec<JobState> = lines(&requests)
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let job = submitted(&acme, &id, line, T0);
            // Every seventh line fails.
            let outcome = if i % 7 == 3 {
                failure("invalid_request", "no")
            } else {
                answer(&format!("answer {i}"))
            };
            settled(&job, 0, outcome, T0 + 1_000 + i as i64)
        })
        .collect();
    jobs.shuffle(&mut StdRng::seed_from_u64(3));
    for chunk in jobs.chunks(3_000) {
        store.write_batch(chunk.to_vec()).await.unwrap();
    }
    let done = store.refresh_batch(&acme, &id).await.unwrap().unwrap();
    let failed = (0..LINES).filter(|i| i % 7 == 3).count() as u64;
    assert_eq!(done.status, BatchStatus::Completed);
    assert_eq!(
        done.request_counts,
        counts(LINES as u64, LINES as u64 - failed, failed)
    );
    assert_eq!(
        done.completed_at,
        Some((T0 + 1_000 + LINES as i64 - 1) / 1000)
    );

    let out = output(store.batch_output(&acme, &id, true).await.unwrap());
    let want: Vec<Value> = (0..LINES)
        .filter(|i| i % 7 != 3)
        .map(|i| json!(format!("r{i}")))
        .collect();
    assert_eq!(
        out.iter()
            .map(|l| l["custom_id"].clone())
            .collect::<Vec<_>>(),
        want
    );
    let errors = output(store.batch_output(&acme, &id, false).await.unwrap());
    assert_eq!(errors.len() as u64, failed);
    assert_eq!(errors[0]["custom_id"], json!("r3"));
}

async fn job_records_show_their_batch_line_and_errored_assertions(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    let line = &lines(&[(
        "memo-1",
        "/v1/jobs",
        json!({"model": "fast", "prompt": "Grade it", "evaluate": {"assertions": [
            {"type": "cost", "max_usd": 0.01, "metric": "budget"}
        ]}}),
    )])[0];
    let job = submitted(&acme, "batch_x", line, T0);
    let job = settled(&job, 0, answer("B+"), T0 + 1_000);
    assert_eq!(job.status, JobStatus::Evaluating);
    let evaluated = evaluated(&job, &[(0, 0.0, false, &[(false, 0.0, true)])], T0 + 2_000);
    let plain = JobState::new(
        JobId::new(),
        acme.clone(),
        line.spec.clone(),
        T0 - 1_000,
        None,
    );
    store
        .write_batch(vec![evaluated.clone(), plain.clone()])
        .await
        .unwrap();

    let record = store.get_job(&acme, job.id).await.unwrap().unwrap();
    assert_eq!(record.summary.batch_id.as_deref(), Some("batch_x"));
    assert_eq!(record.summary.custom_id.as_deref(), Some("memo-1"));
    let assertion = &record.evaluation.as_ref().unwrap().targets[0].assertions[0];
    assert!(assertion.errored && !assertion.passed);
    let value = serde_json::to_value(&record).unwrap();
    assert_eq!(value["batch_id"], json!("batch_x"));
    assert_eq!(value["custom_id"], json!("memo-1"));
    assert_eq!(
        value["evaluation"]["targets"][0]["assertions"][0]["errored"],
        json!(true)
    );
    // The stored record reads like the result line's body, which was built from the snapshot.
    let line = chorus_store::result_line(&evaluated).unwrap();
    let body: Value = serde_json::from_str(&line.json).unwrap();
    assert_eq!(body["response"]["body"], value);

    let page = store.list_jobs(&acme, None, 10, None).await.unwrap();
    assert_eq!(page.data[0].custom_id.as_deref(), Some("memo-1"));
    // A job from no batch has no batch fields at all.
    let plain = store.get_job(&acme, plain.id).await.unwrap().unwrap();
    let value = serde_json::to_value(&plain).unwrap();
    assert!(value.get("batch_id").is_none() && value.get("custom_id").is_none());
    assert_eq!(page.data[1].batch_id, None);
}

/// An assertion's result: `(passed, score, errored)`.
type Outcome = (bool, f64, bool);
/// A target's evaluation: `(step, score, passed, outcomes)`, one outcome per spec assertion.
type Target<'a> = (u32, f64, bool, &'a [Outcome]);

/// The job after its evaluation.
fn evaluated(job: &JobState, targets: &[Target<'_>], at: i64) -> JobState {
    let evaluate = job.spec.evaluate.as_ref().unwrap();
    let transition = apply(
        job,
        Input::Evaluated(EvaluationResult {
            job_id: job.id,
            tenant: job.tenant.clone(),
            targets: targets
                .iter()
                .map(|(step, score, passed, results)| TargetEvaluation {
                    step: *step,
                    score: *score,
                    passed: *passed,
                    threshold: evaluate.threshold,
                    assertions: results
                        .iter()
                        .zip(&evaluate.assertions)
                        .enumerate()
                        .map(|(i, ((passed, score, errored), a))| AssertionResult {
                            index: i as u32,
                            kind: a.check.type_name().into(),
                            metric: a.metric.clone(),
                            weight: a.weight,
                            passed: *passed,
                            score: *score,
                            reason: String::new(),
                            errored: *errored,
                        })
                        .collect(),
                })
                .collect(),
            evaluated_at: at,
        }),
    );
    assert_eq!(transition.state.status, JobStatus::Succeeded);
    transition.state
}

async fn the_report_aggregates_by_metric_model_and_persona(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    let evaluate = json!({"threshold": 0.5, "assertions": [
        {"type": "contains", "value": "go", "metric": "decision"},
        {"type": "icontains", "value": "cfo"}
    ]});
    let lines = lines(&[
        (
            "roundtable",
            "/v1/jobs",
            json!({"models": ["m1", "m2"], "prompt": "Review",
                "personas": [{"name": "a", "system": "A"}, {"name": "b", "system": "B"}],
                "evaluate": evaluate}),
        ),
        (
            "single",
            "/v1/jobs",
            json!({"model": "m1", "prompt": "Review", "evaluate": evaluate}),
        ),
        (
            "broken",
            "/v1/jobs",
            json!({"model": "m1", "prompt": "Review", "evaluate": evaluate}),
        ),
        (
            "late",
            "/v1/jobs",
            json!({"model": "m1", "prompt": "Review", "evaluate": evaluate}),
        ),
    ]);
    let answer_all = |line: &BatchLine, tenant: &Tenant| {
        let mut job = submitted(tenant, "batch_r", line, T0);
        for step in 0..job.steps.len() as u32 {
            job = settled(&job, step, answer("go, cfo"), T0 + 100);
        }
        job
    };
    // Steps of the roundtable: (a, m1), (a, m2), (b, m1), (b, m2).
    let roundtable = evaluated(
        &answer_all(&lines[0], &acme),
        &[
            (0, 1.0, true, &[(true, 1.0, false), (true, 1.0, false)]),
            (1, 0.5, false, &[(true, 1.0, false), (false, 0.0, false)]),
            (2, 1.0, true, &[(true, 1.0, false), (true, 1.0, false)]),
            (3, 0.0, false, &[(false, 0.0, true), (false, 0.0, false)]),
        ],
        T0 + 200,
    );
    let single = evaluated(
        &answer_all(&lines[1], &acme),
        &[(0, 1.0, true, &[(true, 1.0, false), (true, 1.0, false)])],
        T0 + 200,
    );
    let broken = settled(
        &submitted(&acme, "batch_r", &lines[2], T0),
        0,
        failure("server_error", "boom"),
        T0 + 100,
    );
    let late = submitted(&acme, "batch_r", &lines[3], T0);
    // Another tenant's job with the same batch id does not count.
    let foreign = evaluated(
        &answer_all(&lines[1], &tenant("other")),
        &[(0, 0.0, false, &[(false, 0.0, false), (false, 0.0, false)])],
        T0 + 200,
    );
    store
        .write_batch(vec![roundtable, single, broken, late, foreign])
        .await
        .unwrap();

    let report = store.batch_report(&acme, "batch_r").await.unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(&report).unwrap(),
        json!({
            "batch": "batch_r",
            "overall": {"jobs": 4, "evaluated": 2, "passed": 1, "pass_rate": 0.5,
                "mean_score": 0.8125},
            "by_metric": [
                {"name": "decision", "assertions": 5, "passed": 4, "errored": 1,
                    "pass_rate": 0.8, "mean_score": 0.8},
                {"name": "icontains", "assertions": 5, "passed": 3, "errored": 0,
                    "pass_rate": 0.6, "mean_score": 0.6},
            ],
            "by_model": [
                {"name": "m1", "targets": 3, "passed": 3, "pass_rate": 1.0, "mean_score": 1.0},
                {"name": "m2", "targets": 2, "passed": 0, "pass_rate": 0.0, "mean_score": 0.25},
            ],
            "by_persona": [
                {"name": "a", "targets": 2, "passed": 1, "pass_rate": 0.5, "mean_score": 0.75},
                {"name": "b", "targets": 2, "passed": 1, "pass_rate": 0.5, "mean_score": 0.5},
            ],
        })
    );

    // Unknown batches, and other tenants' batches, are absent; a batch without jobs is empty.
    assert_eq!(store.batch_report(&acme, "batch_none").await.unwrap(), None);
    let other = store
        .create_batch(&tenant("other"), new_batch(1, T0))
        .await
        .unwrap();
    assert_eq!(store.batch_report(&acme, &other.id).await.unwrap(), None);
    let empty = store
        .batch_report(&tenant("other"), &other.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::to_value(&empty).unwrap(),
        json!({
            "batch": other.id,
            "overall": {"jobs": 0, "evaluated": 0, "passed": 0, "pass_rate": null,
                "mean_score": null},
            "by_metric": [], "by_model": [], "by_persona": [],
        })
    );
}
