//! Snapshots the database refuses: [`Store::write_rejected`]'s stand-in rows (failed with
//! `storage_rejected`, counted in their batch, in its error file), their replacement by the
//! snapshot once it can be stored, and the `faults.store_reject_metadata` hook that provokes a
//! refusal. Each test runs on SQLite and on Postgres.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use chorus_core::batch::{Endpoint, Origin};
use chorus_core::config::FaultConfig;
use chorus_core::job::{JobState, JobStatus, STORAGE_REJECTED, StepStatus};
use chorus_core::messages::{StepOutput, Usage};
use chorus_core::spec::JobSpec;
use chorus_core::{JobId, Tenant};
use chorus_store::{
    BatchObject, BatchStatus, Committed, ErrorRecord, JobRecord, NewBatch, Store, StoreErrorKind,
    result_line,
};
use chorus_testkit::database::{Backend, TestDatabase};
use serde_json::{Value, json};

chorus_testkit::on_both_backends!(
    a_rejected_snapshot_is_stored_as_a_failed_job_its_batch_counts,
    a_replayed_snapshot_replaces_its_stand_in_and_duplicates_change_nothing,
    a_stand_in_never_replaces_a_newer_or_a_full_row,
    the_fault_hook_refuses_snapshots_with_the_metadata_key,
);

const REASON: &str = "database error: invalid byte sequence for encoding \"UTF8\": 0x00";

async fn store(backend: Backend) -> Option<(TestDatabase, Store)> {
    let db = TestDatabase::new(backend)?;
    let store = Store::connect(db.url(), 4).await.unwrap();
    store.migrate().await.unwrap();
    Some((db, store))
}

fn tenant() -> Tenant {
    Tenant::new("acme").unwrap()
}

async fn batch(store: &Store, total: u64) -> BatchObject {
    store
        .create_batch(
            &tenant(),
            NewBatch {
                input_file_id: "file-in".into(),
                endpoint: Endpoint::ChatCompletions,
                completion_window: "24h".into(),
                metadata: None,
                status: BatchStatus::InProgress,
                total,
                errors: None,
                created_at: chrono::Utc::now(),
                expires_at: None,
            },
        )
        .await
        .unwrap()
}

/// A chat job at `version`, answered with `answer` (succeeded) or still running (`None`).
fn job(id: JobId, version: u64, answer: Option<&str>, origin: Option<Origin>) -> JobState {
    let spec: JobSpec = serde_json::from_value(json!({
        "model": "fast",
        "messages": [{"role": "user", "content": "2+2?"}],
        "metadata": {"case": "poison"},
    }))
    .unwrap();
    let mut state = JobState::new(id, tenant(), spec, 1_700_000_000_000, None).with_origin(origin);
    state.version = version;
    state.updated_at = 1_700_000_000_000 + version as i64;
    state.status = JobStatus::Running;
    if let Some(text) = answer {
        let step = &mut state.steps[0];
        step.status = StepStatus::Succeeded;
        step.attempts = 1;
        step.output = Some(StepOutput {
            text: text.into(),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
            },
            latency_ms: 5,
            finish_reason: Some("stop".into()),
            route: "fast".into(),
            cost_usd: None,
            tool_calls: None,
            cut: None,
        });
        state.status = JobStatus::Succeeded;
        state.finished_at = Some(state.updated_at);
    }
    state
}

fn line(batch: &str, custom_id: &str, line: u64) -> Option<Origin> {
    Some(Origin {
        batch: batch.into(),
        custom_id: custom_id.into(),
        endpoint: Endpoint::ChatCompletions,
        line,
    })
}

async fn record(store: &Store, id: JobId) -> JobRecord {
    store.get_job(&tenant(), id).await.unwrap().unwrap()
}

async fn file(store: &Store, batch: &str, ok: bool) -> Vec<Value> {
    let bytes = store.batch_output(&tenant(), batch, ok).await.unwrap();
    String::from_utf8(bytes.unwrap())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn a_rejected_snapshot_is_stored_as_a_failed_job_its_batch_counts(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let batch = batch(&store, 2).await;
    let good = job(JobId::new(), 4, Some("4"), line(&batch.id, "good", 0));
    let refused = job(JobId::new(), 4, Some("4"), line(&batch.id, "refused", 1));
    store.write_batch(vec![good.clone()]).await.unwrap();

    let committed = store.write_rejected(&refused, REASON).await.unwrap();
    assert_eq!(
        committed,
        Committed {
            tenant: tenant(),
            job_id: refused.id,
            status: JobStatus::Failed,
        }
    );
    let stand_in = record(&store, refused.id).await;
    assert_eq!(stand_in.summary.status, JobStatus::Failed);
    assert_eq!(
        stand_in.summary.error,
        Some(ErrorRecord {
            kind: STORAGE_REJECTED.into(),
            message: REASON.into(),
            step: None,
        })
    );
    assert_eq!(stand_in.summary.batch_id.as_deref(), Some(&*batch.id));
    assert_eq!(stand_in.summary.custom_id.as_deref(), Some("refused"));
    assert_eq!(
        stand_in.summary.created_at.timestamp_millis(),
        refused.created_at
    );
    assert_eq!(
        stand_in.summary.finished_at.map(|t| t.timestamp_millis()),
        refused.finished_at
    );
    assert_eq!(stand_in.spec, json!({}));
    assert_eq!(stand_in.summary.metadata, json!({}));
    assert!(stand_in.steps.is_empty() && stand_in.evaluation.is_none());

    // The batch adds up: one line in each file, and it completes.
    let finished = store
        .refresh_batch(&tenant(), &batch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(finished.status, BatchStatus::Completed);
    assert_eq!(
        (
            finished.request_counts.completed,
            finished.request_counts.failed
        ),
        (1, 1)
    );
    assert_eq!(file(&store, &batch.id, true).await.len(), 1);
    assert_eq!(
        file(&store, &batch.id, false).await,
        [json!({
            "id": format!("batch_req_{}", refused.id.as_uuid().simple()),
            "custom_id": "refused",
            "response": null,
            "error": {"code": STORAGE_REJECTED, "message": REASON},
        })]
    );

    // Writing the stand-in again changes nothing; a job of no batch gets no line.
    store.write_rejected(&refused, REASON).await.unwrap();
    assert_eq!(record(&store, refused.id).await, stand_in);
    let alone = job(JobId::new(), 2, None, None);
    let committed = store.write_rejected(&alone, REASON).await.unwrap();
    assert_eq!(committed.status, JobStatus::Failed);
    let record = record(&store, alone.id).await;
    assert_eq!(record.summary.batch_id, None);
    assert_eq!(
        record.summary.finished_at.map(|t| t.timestamp_millis()),
        Some(alone.updated_at),
        "a job refused before it finished is finished when it is refused"
    );
}

async fn a_replayed_snapshot_replaces_its_stand_in_and_duplicates_change_nothing(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let batch = batch(&store, 1).await;
    let id = JobId::new();
    let first = job(id, 1, None, line(&batch.id, "case", 0));
    let last = job(id, 4, Some("4"), line(&batch.id, "case", 0));
    store.write_batch(vec![first]).await.unwrap();
    store.write_rejected(&last, REASON).await.unwrap();
    assert_eq!(file(&store, &batch.id, false).await.len(), 1);

    // The operator fixed the cause and replayed the very snapshot: it is stored in full.
    let committed = store.write_batch(vec![last.clone()]).await.unwrap();
    assert_eq!(committed.len(), 1);
    assert_eq!(record(&store, id).await, JobRecord::from_state(&last));
    assert!(file(&store, &batch.id, false).await.is_empty());
    assert_eq!(
        file(&store, &batch.id, true).await,
        [serde_json::from_str::<Value>(&result_line(&last).unwrap().json).unwrap()]
    );

    // An ordinary duplicate of a stored snapshot updates nothing: a copy of the same version
    // with another answer (which a real duplicate never has) leaves the row as it was.
    let altered = job(id, 4, Some("five"), line(&batch.id, "case", 0));
    store.write_batch(vec![altered]).await.unwrap();
    assert_eq!(record(&store, id).await, JobRecord::from_state(&last));
}

async fn a_stand_in_never_replaces_a_newer_or_a_full_row(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let id = JobId::new();
    let stored = job(id, 4, Some("4"), None);
    store.write_batch(vec![stored.clone()]).await.unwrap();

    // The same snapshot, refused later (say by a second writer): the full row stays.
    let committed = store.write_rejected(&stored, REASON).await.unwrap();
    assert_eq!(committed.status, JobStatus::Succeeded);
    assert_eq!(record(&store, id).await, JobRecord::from_state(&stored));

    // An older snapshot, refused: the newer row stays.
    let older = job(id, 2, None, None);
    let committed = store.write_rejected(&older, REASON).await.unwrap();
    assert_eq!(committed.status, JobStatus::Succeeded);
    assert_eq!(record(&store, id).await, JobRecord::from_state(&stored));

    // A newer snapshot replaces a stand-in as it replaces any row.
    let other = JobId::new();
    store
        .write_rejected(&job(other, 2, None, None), REASON)
        .await
        .unwrap();
    let newer = job(other, 3, Some("4"), None);
    store.write_batch(vec![newer.clone()]).await.unwrap();
    assert_eq!(record(&store, other).await, JobRecord::from_state(&newer));
}

async fn the_fault_hook_refuses_snapshots_with_the_metadata_key(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let faulty = store.clone().with_faults(&FaultConfig {
        store_reject_metadata: Some("case".into()),
        ..FaultConfig::default()
    });
    let poisoned = job(JobId::new(), 4, Some("4"), None);
    let mut clean = job(JobId::new(), 4, Some("4"), None);
    clean.spec.metadata.clear();

    // The whole batch is refused, as a transaction the database refused would be.
    let err = faulty
        .write_batch(vec![clean.clone(), poisoned.clone()])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Rejected, "{err}");
    assert!(err.to_string().contains(&poisoned.id.to_string()), "{err}");
    assert!(store.get_job(&tenant(), clean.id).await.unwrap().is_none());
    assert!(
        store
            .get_job(&tenant(), poisoned.id)
            .await
            .unwrap()
            .is_none()
    );

    // Without the poisoned snapshot it goes through; the stand-in is never refused; and the
    // store it was cloned from has no faults.
    assert_eq!(
        faulty.write_batch(vec![clean.clone()]).await.unwrap().len(),
        1
    );
    let committed = faulty.write_rejected(&poisoned, REASON).await.unwrap();
    assert_eq!(committed.status, JobStatus::Failed);
    store.write_batch(vec![poisoned.clone()]).await.unwrap();
    assert_eq!(
        record(&store, poisoned.id).await,
        JobRecord::from_state(&poisoned)
    );
}
