//! Any text is stored and read back as it was, on SQLite and on Postgres: NUL characters, the
//! escape character itself, emoji, right-to-left text, in every column a user's or a provider's
//! text reaches; stored ordinary text is unchanged and queryable; filters on escaped columns
//! escape their operands, so an id holding NUL is simply not found.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use chorus_core::batch::{Endpoint, Origin};
use chorus_core::job::{JobError, JobEvaluation, JobState, JobStatus, StepStatus};
use chorus_core::messages::{
    AssertionResult, Attempt, StepError, StepOutput, TargetEvaluation, Usage,
};
use chorus_core::spec::JobSpec;
use chorus_core::{JobId, Tenant};
use chorus_store::entity::{jobs, steps};
use chorus_store::lossless::{escape_json, escape_text};
use chorus_store::{
    AuditAction, BatchStatus, JobRecord, KeyLimits, NewBatch, NewFile, Store, StoreError,
    result_line,
};
use chorus_testkit::database::{Backend, TestDatabase};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QuerySelect, Statement,
};
use serde_json::{Value, json};

chorus_testkit::on_both_backends!(
    every_text_of_a_job_reads_back_as_it_was,
    stored_ordinary_text_is_unchanged_and_escapes_are_queryable,
    files_batches_keys_and_the_audit_log_keep_any_text,
    ids_holding_nul_are_not_found_rather_than_errors,
);

/// Texts that would break a naive store, each paired with a name for messages.
const ODD: [&str; 8] = [
    "nul here: \0 end",
    "\0",
    "escape \u{FDD0} and mark \u{FDD1} and both \u{FDD0}\u{FDD1}",
    "\u{FDD0}\u{FDD0}\0\u{FDD1}\0\u{FDD0}",
    "emoji 🎉👩‍👩‍👧 and rtl שלום עולם مرحبا \u{202E}reversed\u{202C}",
    "controls \u{1}\u{7}\u{1b}[0m\u{7f} and noncharacters \u{FFFE}\u{FFFF}\u{10FFFF}",
    "quotes \" ' \\ and \\u0000 spelled out",
    "plain text",
];

async fn store(backend: Backend) -> Option<(TestDatabase, Store)> {
    let db = TestDatabase::new(backend)?;
    let store = Store::connect(db.url(), 4).await.unwrap();
    store.migrate().await.unwrap();
    Some((db, store))
}

fn tenant() -> Tenant {
    Tenant::new("acme").unwrap()
}

/// Metadata with odd keys and values, nested.
fn odd_metadata() -> Value {
    json!({
        "nul\0key": "value\0",
        "\u{FDD0}": ["\u{FDD0}\u{FDD1}", {"deep\0": {"deeper": ODD}}],
        "emoji 🎉": "rtl שלום",
        "plain": "text",
        "numbers": [0, -1, 1.5, 1e300, u64::MAX, i64::MIN],
        "flags": [true, false, null],
    })
}

/// A finished job with odd text everywhere a snapshot carries text: messages, personas,
/// metadata, outputs, finish reasons, tool calls, provider calls, errors, assertion metrics and
/// reasons, and its batch line.
fn odd_job(status: JobStatus, origin: Option<Origin>) -> JobState {
    let spec: JobSpec = serde_json::from_value(json!({
        "model": "sim:echo",
        "messages": ODD.map(|text| json!({"role": "user", "content": text, "name": "n\0me"})),
        "personas": [
            {"name": "cfo\0", "system": ODD[2]},
            {"name": "שלום 🎉", "system": ODD[4]},
        ],
        "params": {
            "stop": ["\0", "\u{FDD0}"],
            "tools": [{"type": "function", "function": {"name": "f", "description": ODD[0],
                "parameters": {"type": "object", "properties": {"a\0": {"type": "string"}}}}}],
        },
        "evaluate": {"threshold": 0.5, "assertions": [
            {"type": "contains", "value": "\0", "metric": "nul\0metric"},
            {"type": "equals", "value": ODD[3], "metric": ODD[4]},
        ]},
        "metadata": odd_metadata(),
        "idempotency_key": "key\0",
    }))
    .unwrap();
    let mut state =
        JobState::new(JobId::new(), tenant(), spec, 1_700_000_000_000, None).with_origin(origin);
    for (i, step) in state.steps.iter_mut().enumerate() {
        step.attempts = 2;
        step.started_at = Some(1_700_000_000_010);
        step.finished_at = Some(1_700_000_000_020);
        step.calls = vec![Attempt {
            route: "sim:echo".into(),
            started_at: 1_700_000_000_010,
            latency_ms: 3,
            outcome: "server_error".into(),
            status: Some(500),
            message: Some(format!("provider said {}", ODD[i])),
        }];
        if i == 0 {
            step.status = StepStatus::Succeeded;
            step.output = Some(StepOutput {
                text: ODD.concat(),
                usage: Usage {
                    prompt_tokens: 7,
                    completion_tokens: 3,
                },
                latency_ms: 3,
                finish_reason: Some("stop\0".into()),
                route: "sim:echo".into(),
                cost_usd: None,
                tool_calls: Some(json!([{"id": "call\0", "type": "function",
                    "function": {"name": "f", "arguments": "{\"a\\u0000\":\"\\u0000\"}"}}])),
                cut: None,
            });
        } else {
            step.status = StepStatus::Failed;
            step.error = Some(StepError {
                kind: "invalid_request".into(),
                message: ODD[1..].concat(),
                retryable: false,
                status: Some(400),
            });
        }
    }
    state.evaluation = Some(JobEvaluation {
        score: 0.5,
        passed: true,
        targets: vec![TargetEvaluation {
            step: 0,
            score: 0.5,
            passed: true,
            threshold: 0.5,
            assertions: vec![
                AssertionResult {
                    index: 0,
                    kind: "contains".into(),
                    metric: Some("nul\0metric".into()),
                    weight: 1.0,
                    passed: true,
                    score: 1.0,
                    reason: "found `\0`".into(),
                    errored: false,
                },
                AssertionResult {
                    index: 1,
                    kind: "equals".into(),
                    metric: Some(ODD[4].into()),
                    weight: 1.0,
                    passed: false,
                    score: 0.0,
                    reason: format!("expected {:?}", ODD[3]),
                    errored: false,
                },
            ],
        }],
    });
    if status == JobStatus::Failed {
        state.error = Some(JobError {
            step: Some(1),
            kind: "invalid_request".into(),
            message: ODD.join("\n"),
        });
    }
    state.status = status;
    state.version = 9;
    state.updated_at = 1_700_000_000_030;
    state.finished_at = Some(1_700_000_000_030);
    state
}

fn origin(batch: &str, custom_id: &str, line: u64) -> Origin {
    Origin {
        batch: batch.into(),
        custom_id: custom_id.into(),
        endpoint: Endpoint::Jobs,
        line,
    }
}

async fn every_text_of_a_job_reads_back_as_it_was(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant();
    let batch = store
        .create_batch(
            &acme,
            NewBatch {
                input_file_id: "file-in".into(),
                endpoint: Endpoint::Jobs,
                completion_window: "24h".into(),
                metadata: None,
                status: BatchStatus::InProgress,
                total: 2,
                errors: None,
                created_at: chrono::Utc::now(),
                expires_at: None,
            },
        )
        .await
        .unwrap();
    let succeeded = odd_job(
        JobStatus::Succeeded,
        Some(origin(&batch.id, "custom\0id \u{FDD0} 🎉", 0)),
    );
    let failed = odd_job(JobStatus::Failed, Some(origin(&batch.id, "\0", 1)));
    let alone = odd_job(JobStatus::Succeeded, None);
    store
        .write_batch(vec![succeeded.clone(), failed.clone(), alone.clone()])
        .await
        .unwrap();

    for state in [&succeeded, &failed, &alone] {
        let record = store.get_job(&acme, state.id).await.unwrap().unwrap();
        assert_eq!(record, JobRecord::from_state(state), "{:?}", state.status);
    }
    let page = store.list_jobs(&acme, None, 10, None).await.unwrap();
    assert_eq!(page.data.len(), 3);
    for summary in &page.data {
        assert_eq!(summary.metadata, odd_metadata());
    }
    let listed = |id: JobId| page.data.iter().find(|s| s.id == id).unwrap();
    assert_eq!(
        listed(succeeded.id).custom_id.as_deref(),
        Some("custom\0id \u{FDD0} 🎉")
    );
    assert_eq!(
        listed(failed.id).error.as_ref().unwrap().message,
        ODD.join("\n")
    );

    // The batch's files hold exactly the lines the snapshots make.
    let output = store.batch_output(&acme, &batch.id, true).await.unwrap();
    let errors = store.batch_output(&acme, &batch.id, false).await.unwrap();
    let line = |state: &JobState| format!("{}\n", result_line(state).unwrap().json);
    assert_eq!(
        String::from_utf8(output.unwrap()).unwrap(),
        line(&succeeded)
    );
    assert_eq!(String::from_utf8(errors.unwrap()).unwrap(), line(&failed));
    let counts = store.batch_counts(&acme, &batch.id).await.unwrap().unwrap();
    assert_eq!((counts.completed, counts.failed), (1, 1));

    // The report groups by the texts themselves.
    let report = store.batch_report(&acme, &batch.id).await.unwrap().unwrap();
    let metrics: Vec<&str> = report.by_metric.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(metrics, [ODD[4], "nul\0metric"], "sorted by name");
    let personas: Vec<&str> = report.by_persona.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(personas, ["cfo\0"]);

    // A JetStream submitter's batch id may hold anything too.
    let external = odd_job(JobStatus::Succeeded, Some(origin("batch\0x", "c", 0)));
    store.write_batch(vec![external.clone()]).await.unwrap();
    let report = store
        .batch_report(&acme, "batch\0x")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.overall.jobs, 1);
    assert_eq!(report.batch, "batch\0x");
    let record = store.get_job(&acme, external.id).await.unwrap().unwrap();
    assert_eq!(record.summary.batch_id.as_deref(), Some("batch\0x"));
}

async fn stored_ordinary_text_is_unchanged_and_escapes_are_queryable(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let state = odd_job(JobStatus::Succeeded, None);
    store.write_batch(vec![state.clone()]).await.unwrap();
    let db = store.connection();

    // Read past the value types: what the database itself holds.
    let raw = |column: steps::Column| {
        steps::Entity::find()
            .select_only()
            .column(column)
            .filter(steps::Column::JobId.eq(state.id.as_uuid()))
            .filter(steps::Column::Idx.eq(0))
            .into_tuple::<Option<String>>()
            .one(db)
    };
    let output = raw(steps::Column::Output).await.unwrap().flatten().unwrap();
    assert!(!output.contains('\0'));
    assert_eq!(output, escape_text(&ODD.concat()));
    assert!(output.contains("plain text") && output.contains("🎉👩‍👩‍👧"));
    let route = raw(steps::Column::Route).await.unwrap().flatten().unwrap();
    assert_eq!(route, "sim:echo", "ordinary text is stored as it is");

    // JSON stays JSON: its operators work, on the escaped key for an escaped one.
    let key = escape_text("nul\0key").into_owned();
    let mut contained = json!({"nul\0key": "value\0", "plain": "text"});
    escape_json(&mut contained);
    let (sql, values): (&str, Vec<sea_orm::Value>) = match db.get_database_backend() {
        DbBackend::Postgres => (
            "SELECT COUNT(*) FROM jobs WHERE metadata->>'plain' = 'text' \
             AND metadata->>$1 = $2 AND metadata @> $3::jsonb",
            vec![
                key.clone().into(),
                escape_text("value\0").into_owned().into(),
                contained.to_string().into(),
            ],
        ),
        _ => (
            "SELECT COUNT(*) FROM jobs WHERE json_extract(metadata, '$.plain') = 'text' \
             AND json_extract(metadata, '$.\"' || ? || '\"') = ?",
            vec![
                key.clone().into(),
                escape_text("value\0").into_owned().into(),
            ],
        ),
    };
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            values,
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get_by_index::<i64>(0).unwrap(), 1);

    // Filters through the entity escape their operand.
    let found = jobs::Entity::find()
        .filter(jobs::Column::ErrorMessage.is_null())
        .filter(jobs::Column::CustomId.is_null())
        .all(db)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    let by_output = steps::Entity::find()
        .filter(steps::Column::Output.eq(chorus_store::StoredText::from(ODD.concat())))
        .all(db)
        .await
        .unwrap();
    assert_eq!(by_output.len(), 1);
    assert_eq!(by_output[0].output.as_deref(), Some(&*ODD.concat()));
    let by_prefix = steps::Entity::find()
        .filter(steps::Column::Output.starts_with(escape_text(&ODD[..3].concat())))
        .all(db)
        .await
        .unwrap();
    assert_eq!(by_prefix.len(), 1);
}

async fn files_batches_keys_and_the_audit_log_keep_any_text(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant();
    let content = b"{\"custom_id\": \"a\\u0000\"}\n\0raw nul byte\n".to_vec();
    let file = store
        .create_file(
            &acme,
            NewFile {
                purpose: "batch".into(),
                filename: "in\0put 🎉.jsonl".into(),
                content: content.clone(),
                line_count: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(file.filename, "in\0put 🎉.jsonl");
    let read = store.get_file(&acme, &file.id).await.unwrap().unwrap();
    assert_eq!(read, file);
    assert_eq!(
        store.file_content(&acme, &file.id).await.unwrap(),
        Some(content)
    );

    let metadata = odd_metadata();
    let batch = store
        .create_batch(
            &acme,
            NewBatch {
                input_file_id: "file\0odd".into(),
                endpoint: Endpoint::ChatCompletions,
                completion_window: "24h".into(),
                metadata: Some(metadata.clone()),
                status: BatchStatus::Failed,
                total: 1,
                errors: Some(chorus_core::batch::file::FileErrors {
                    errors: vec![chorus_core::batch::file::LineError {
                        line: Some(1),
                        code: chorus_core::batch::file::LineErrorCode::DuplicateCustomId,
                        param: Some("custom_id".into()),
                        message: "\"a\0\" is already used".into(),
                    }],
                    omitted: 0,
                }),
                created_at: chrono::Utc::now(),
                expires_at: None,
            },
        )
        .await
        .unwrap();
    let read = store.get_batch(&acme, &batch.id).await.unwrap().unwrap();
    assert_eq!(read, batch);
    assert_eq!(read.metadata, Some(metadata));
    assert_eq!(read.input_file_id, "file\0odd");
    assert_eq!(
        read.errors.unwrap()["data"][0]["message"],
        json!("\"a\0\" is already used")
    );

    let scopes = chorus_core::auth::Scopes::parse("read").unwrap();
    let key = store
        .create_key(&acme, ODD[2], scopes, KeyLimits::default())
        .await
        .unwrap();
    assert_eq!(key.info.name, ODD[2]);
    let keys = store.list_keys(Some(&acme)).await.unwrap();
    assert_eq!(keys, vec![key.info]);

    let detail = json!({"filter": {"route": "a\0", "kind": ODD}, "entries": [{"error": ODD[3]}]});
    let row = store
        .record_audit("ops\0@host", AuditAction::DlqPurge, detail.clone())
        .await
        .unwrap();
    assert_eq!((row.actor.as_str(), &row.detail), ("ops\0@host", &detail));
    let entries = store.audit_entries(None, 10).await.unwrap();
    assert_eq!(entries, vec![row]);
}

async fn ids_holding_nul_are_not_found_rather_than_errors(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant();
    let odd = "batch_\0";
    assert_eq!(store.get_batch(&acme, odd).await.unwrap(), None);
    assert_eq!(store.refresh_batch(&acme, odd).await.unwrap(), None);
    assert_eq!(store.batch_counts(&acme, odd).await.unwrap(), None);
    assert_eq!(store.batch_output(&acme, odd, true).await.unwrap(), None);
    assert_eq!(store.batch_report(&acme, odd).await.unwrap(), None);
    assert_eq!(
        store
            .set_batch_status(&acme, odd, BatchStatus::Cancelling, 1_700_000_000_000)
            .await
            .unwrap(),
        None
    );
    let err = store.list_batches(&acme, 10, Some(odd)).await.unwrap_err();
    assert!(matches!(err, StoreError::BadCursor), "{err}");
    assert_eq!(store.get_file(&acme, "file-\0").await.unwrap(), None);
    assert_eq!(store.file_content(&acme, "file-\0").await.unwrap(), None);
    assert_eq!(store.revoke_key("\0").await.unwrap(), None);
}
