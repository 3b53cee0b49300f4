//! Store tests against real databases: each runs on SQLite and on Postgres (which skips loudly
//! unless `TEST_POSTGRES_URL` is set; see `chorus_testkit::database`).

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use chorus_core::job::{Input, JobState, JobStatus, StepKind, StepStatus, apply};
use chorus_core::messages::{
    AssertionResult, EvaluationResult, StepError, StepOutcome, StepOutput, StepResult,
    TargetEvaluation, Usage,
};
use chorus_core::spec::JobSpec;
use chorus_core::{JobId, Tenant};
use chorus_store::entity::{evaluations, jobs, steps};
use chorus_store::{Committed, Store, StoreError, StoreErrorKind};
use chorus_testkit::database::{Backend, TestDatabase};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    Statement,
};
use serde_json::json;
use uuid::Uuid;

chorus_testkit::on_both_backends!(
    migrations_are_idempotent,
    concurrent_migrations_apply_once,
    pending_migrations_are_this_versions_unapplied_ones,
    roundtable_rows_converge_in_any_order_and_replay,
    get_job_returns_the_complete_record,
    list_jobs_pages_newest_first_with_a_status_filter,
    stale_snapshots_never_regress_a_job,
    a_cancelled_job_keeps_its_steps_as_they_were,
    committed_is_reported_for_terminal_snapshots_only,
    large_batches_are_chunked,
);

async fn store(backend: Backend) -> Option<(TestDatabase, Store)> {
    let db = TestDatabase::new(backend)?;
    let store = Store::connect(db.url(), 4).await.unwrap();
    store.migrate().await.unwrap();
    Some((db, store))
}

fn tenant(name: &str) -> Tenant {
    Tenant::new(name).unwrap()
}

fn spec() -> JobSpec {
    serde_json::from_value(json!({
        "model": "sim:echo",
        "prompt": "Review: {{ proposal }}",
        "input": {"proposal": "move support to LLM drafts"},
        "personas": [
            {"name": "cfo", "system": "You are the CFO."},
            {"name": "lead", "system": "You lead support."},
            {"name": "sec", "system": "You are security."}
        ],
        "synthesis": {"prompt": "{% for a in answers %}{{ a.text }}\n{% endfor %}"},
        "evaluate": {"threshold": 0.5, "assertions": [
            {"type": "contains", "value": "go", "metric": "decision"},
            {"type": "icontains", "value": "CFO", "weight": 2}
        ]},
        "metadata": {"team": "support"}
    }))
    .unwrap()
}

fn step_result(job: &JobState, step: u32, outcome: StepOutcome) -> StepResult {
    let at = job.created_at + 10 * i64::from(step);
    StepResult {
        job_id: job.id,
        tenant: job.tenant.clone(),
        step,
        route: "sim:echo".into(),
        outcome,
        attempts: step + 1,
        calls: Vec::new(),
        replays: 0,
        started_at: at + 1,
        finished_at: at + 5,
    }
}

fn answer(step: u32) -> StepOutcome {
    StepOutcome::Succeeded(StepOutput {
        text: format!("answer {step}: cfo says go"),
        usage: Usage {
            prompt_tokens: 10 + step,
            completion_tokens: 5,
        },
        latency_ms: 40 + u64::from(step),
        finish_reason: Some("stop".into()),
        route: "sim:echo".into(),
        cost_usd: None,
        tool_calls: None,
        cut: None,
    })
}

/// Applies `input` and appends the new snapshot when it changed the job.
fn push_transition(snapshots: &mut Vec<JobState>, input: Input) {
    let transition = apply(snapshots.last().unwrap(), input);
    assert!(transition.changed);
    assert_eq!(
        transition.state.version,
        snapshots.last().unwrap().version + 1
    );
    snapshots.push(transition.state);
}

/// Every snapshot of one roundtable job, as the job-state bucket holds them: queued (v1),
/// running (v2), one per settled step (v3..v6, the last also evaluating), succeeded (v7).
fn roundtable(tenant: &Tenant, created_at: i64) -> Vec<JobState> {
    let mut snapshots = vec![JobState::new(
        JobId::new(),
        tenant.clone(),
        spec(),
        created_at,
        None,
    )];
    push_transition(&mut snapshots, Input::Submitted { at: created_at });
    assert_eq!(snapshots[1].status, JobStatus::Running);
    for i in 0..4 {
        let result = step_result(snapshots.last().unwrap(), i, answer(i));
        push_transition(&mut snapshots, Input::Step(result));
    }
    assert_eq!(snapshots[5].status, JobStatus::Evaluating);
    let evaluated = EvaluationResult {
        job_id: snapshots[0].id,
        tenant: tenant.clone(),
        targets: vec![TargetEvaluation {
            step: 3,
            score: 0.5,
            passed: true,
            threshold: 0.5,
            assertions: vec![
                AssertionResult {
                    index: 0,
                    kind: "contains".into(),
                    metric: Some("decision".into()),
                    weight: 1.0,
                    passed: true,
                    score: 1.0,
                    reason: "found `go`".into(),
                    errored: false,
                },
                AssertionResult {
                    index: 1,
                    kind: "icontains".into(),
                    metric: None,
                    weight: 2.0,
                    passed: false,
                    score: 0.25,
                    reason: "`CFO` not found".into(),
                    errored: false,
                },
            ],
        }],
        evaluated_at: created_at + 100,
    };
    push_transition(&mut snapshots, Input::Evaluated(evaluated));
    assert_eq!(snapshots[6].status, JobStatus::Succeeded);
    assert_eq!(
        snapshots.iter().map(|s| s.version).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    snapshots
}

/// The same snapshots for another job id.
fn with_job_id(snapshots: &[JobState], id: JobId) -> Vec<JobState> {
    snapshots
        .iter()
        .cloned()
        .map(|mut s| {
            s.id = id;
            s
        })
        .collect()
}

/// Every row of a job, with the job id blanked so rows of different jobs compare.
#[derive(Debug, PartialEq)]
struct Rows {
    job: Option<jobs::Model>,
    steps: Vec<steps::Model>,
    evaluations: Vec<evaluations::Model>,
}

async fn rows(store: &Store, id: JobId) -> Rows {
    let db = store.connection();
    let id = id.as_uuid();
    let job = jobs::Entity::find_by_id(id).one(db).await.unwrap();
    let steps = steps::Entity::find()
        .filter(steps::Column::JobId.eq(id))
        .order_by_asc(steps::Column::Idx)
        .all(db)
        .await
        .unwrap();
    let evaluations = evaluations::Entity::find()
        .filter(evaluations::Column::JobId.eq(id))
        .order_by_asc(evaluations::Column::StepIdx)
        .order_by_asc(evaluations::Column::AssertionIdx)
        .all(db)
        .await
        .unwrap();
    Rows {
        job: job.map(|j| jobs::Model {
            id: Uuid::nil(),
            ..j
        }),
        steps: steps
            .into_iter()
            .map(|s| steps::Model {
                job_id: Uuid::nil(),
                ..s
            })
            .collect(),
        evaluations: evaluations
            .into_iter()
            .map(|e| evaluations::Model {
                job_id: Uuid::nil(),
                ..e
            })
            .collect(),
    }
}

async fn migrations_are_idempotent(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(
        jobs::Entity::find()
            .count(store.connection())
            .await
            .unwrap(),
        0
    );
}

/// A fresh database lacks every migration; a migrated one none, even when a newer release has
/// applied migrations this version does not know (a rollback runs against a newer schema).
async fn pending_migrations_are_this_versions_unapplied_ones(backend: Backend) {
    let Some(db) = TestDatabase::new(backend) else {
        return;
    };
    let store = Store::connect(db.url(), 2).await.unwrap();
    let pending = store.pending_migrations().await.unwrap();
    assert!(pending.len() >= 5, "{pending:?}");
    assert_eq!(pending[0], "m0001_initial");
    store.migrate().await.unwrap();
    assert_eq!(
        store.pending_migrations().await.unwrap(),
        Vec::<String>::new()
    );
    store
        .connection()
        .execute_unprepared(
            "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m9999_from_a_newer_release', 0)",
        )
        .await
        .unwrap();
    assert_eq!(
        store.pending_migrations().await.unwrap(),
        Vec::<String>::new()
    );
}

/// Pods starting together: each migrates through its own pool at the same time.
async fn concurrent_migrations_apply_once(backend: Backend) {
    let Some(db) = TestDatabase::new(backend) else {
        return;
    };
    let mut pods = Vec::new();
    for _ in 0..3 {
        pods.push(Store::connect(db.url(), 2).await.unwrap());
    }
    let (a, b, c) = tokio::join!(pods[0].migrate(), pods[1].migrate(), pods[2].migrate());
    a.unwrap();
    b.unwrap();
    c.unwrap();
    let applied = pods[0]
        .connection()
        .query_one_raw(Statement::from_string(
            pods[0].connection().get_database_backend(),
            "SELECT COUNT(*) AS n FROM seaql_migrations",
        ))
        .await
        .unwrap()
        .unwrap();
    let migrations =
        <chorus_store::migration::Migrator as sea_orm_migration::MigratorTrait>::migrations();
    assert_eq!(
        applied.try_get::<i64>("", "n").unwrap(),
        migrations.len() as i64
    );
}

async fn roundtable_rows_converge_in_any_order_and_replay(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let snapshots = roundtable(&tenant("acme"), 1_700_000_000_000);
    let last = snapshots.last().unwrap().clone();

    // Reference: one snapshot per batch, in the order they happened.
    for snapshot in &snapshots {
        store.write_batch(vec![snapshot.clone()]).await.unwrap();
    }
    let expected = rows(&store, last.id).await;
    assert_eq!(expected.job.as_ref().unwrap().version, 7);
    assert_eq!(expected.steps.len(), 4);
    assert_eq!(expected.evaluations.len(), 2);
    assert!(expected.steps.iter().all(|s| s.output.is_some()));
    assert!(expected.steps.iter().all(|s| s.version == 7));
    assert!(expected.evaluations.iter().all(|e| e.version == 7));

    // The terminal snapshot alone is the complete record.
    let alone = JobId::new();
    store
        .write_batch(with_job_id(&[last], alone))
        .await
        .unwrap();
    assert_eq!(rows(&store, alone).await, expected);

    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..24 {
        let id = JobId::new();
        let mut shuffled = with_job_id(&snapshots, id);
        match round {
            0 => shuffled.reverse(),
            // Everything twice, in one batch.
            1 => shuffled.extend(with_job_id(&snapshots, id)),
            _ => shuffled.shuffle(&mut rng),
        }
        let mut rest = &shuffled[..];
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at(rng.random_range(1..=rest.len()));
            store.write_batch(batch.to_vec()).await.unwrap();
            if rng.random_bool(0.3) {
                store.write_batch(batch.to_vec()).await.unwrap();
            }
            rest = tail;
        }
        // A full replay afterwards changes nothing either.
        if round % 4 == 0 {
            store
                .write_batch(with_job_id(&snapshots, id))
                .await
                .unwrap();
        }
        assert_eq!(rows(&store, id).await, expected, "round {round}");
    }
}

async fn get_job_returns_the_complete_record(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    let snapshots = roundtable(&acme, 1_700_000_000_000);
    let state = snapshots.last().unwrap().clone();
    store.write_batch(snapshots).await.unwrap();

    let job = store.get_job(&acme, state.id).await.unwrap().unwrap();
    assert_eq!(job.summary.id, state.id);
    assert_eq!(job.summary.status, JobStatus::Succeeded);
    assert_eq!(job.summary.created_at.timestamp_millis(), 1_700_000_000_000);
    assert_eq!(
        job.summary.finished_at.map(|t| t.timestamp_millis()),
        state.finished_at
    );
    assert_eq!(job.summary.metadata, json!({"team": "support"}));
    assert_eq!(job.spec["evaluate"]["threshold"], json!(0.5));
    assert_eq!(job.summary.usage.prompt_tokens, 10 + 11 + 12 + 13);
    assert_eq!(job.summary.usage.total_tokens, 46 + 20);
    assert_eq!(job.summary.error, None);

    assert_eq!(job.steps.len(), 4);
    for (i, step) in job.steps.iter().enumerate() {
        assert_eq!(step.index, i as u32);
        assert_eq!(step.status, StepStatus::Succeeded);
        assert_eq!(
            step.output.as_deref(),
            Some(&*format!("answer {i}: cfo says go"))
        );
        assert_eq!(step.usage.prompt_tokens, 10 + i as u64);
        assert_eq!(step.usage.completion_tokens, 5);
        assert_eq!(step.attempts, i as u32 + 1);
        assert_eq!(step.latency_ms, 40 + i as u64);
        assert_eq!(step.finish_reason.as_deref(), Some("stop"));
        assert!(step.started_at.is_some() && step.finished_at.is_some());
    }
    assert_eq!(job.steps[0].persona.as_deref(), Some("cfo"));
    assert_eq!(job.steps[0].kind, StepKind::Fanout);
    assert_eq!(job.steps[3].kind, StepKind::Synthesis);
    assert_eq!(job.steps[3].persona, None);

    let evaluation = job.evaluation.clone().unwrap();
    assert_eq!((evaluation.score, evaluation.passed), (0.5, true));
    let [target] = &evaluation.targets[..] else {
        panic!("one target expected: {evaluation:?}")
    };
    assert_eq!((target.step, target.threshold), (3, Some(0.5)));
    assert_eq!(target.assertions.len(), 2);
    assert_eq!(target.assertions[0].metric.as_deref(), Some("decision"));
    assert_eq!(target.assertions[1].kind, "icontains");
    assert_eq!(target.assertions[1].score, 0.25);

    // The JSON the edge returns.
    let value = serde_json::to_value(&job).unwrap();
    assert_eq!(value["id"], json!(state.id.to_string()));
    assert_eq!(value["status"], json!("succeeded"));
    assert_eq!(value["usage"]["total_tokens"], json!(66));
    assert_eq!(value["steps"][0]["kind"], json!("fanout"));
    assert_eq!(value["steps"][3]["kind"], json!("synthesis"));
    assert_eq!(value["steps"][0]["error"], json!(null));
    assert_eq!(
        value["evaluation"]["targets"][0]["assertions"][1]["type"],
        json!("icontains")
    );
    assert_eq!(value["score"], json!(0.5));
    assert_eq!(value["spec"]["model"], json!("sim:echo"));
    let created = value["created_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );

    // Tenants are isolated; unknown ids are absent.
    assert_eq!(
        store.get_job(&tenant("other"), state.id).await.unwrap(),
        None
    );
    assert_eq!(store.get_job(&acme, JobId::new()).await.unwrap(), None);
}

async fn list_jobs_pages_newest_first_with_a_status_filter(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for i in 0..25_i64 {
        // Pairs share a creation time, so the id must break ties.
        let snapshots = roundtable(&acme, 1_700_000_000_000 + (i / 2) * 1_000);
        // Every third job is still running (stored up to its running snapshot).
        let done = i % 3 != 0;
        let stored = if done {
            &snapshots[..]
        } else {
            &snapshots[..2]
        };
        batch.extend_from_slice(stored);
        let state = stored.last().unwrap();
        expected.push((state.created_at, state.id, state.status));
    }
    batch.extend(roundtable(&tenant("other"), 1_700_000_000_000));
    store.write_batch(batch).await.unwrap();
    expected.sort_by_key(|&(created_at, id, _)| std::cmp::Reverse((created_at, id)));

    for (status, limit) in [
        (None, 7),
        (Some(JobStatus::Succeeded), 4),
        (Some(JobStatus::Running), 3),
    ] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list_jobs(&acme, status, limit, cursor.as_deref())
                .await
                .unwrap();
            assert!(page.data.len() as u64 <= limit);
            seen.extend(page.data.iter().map(|j| (j.id, j.status)));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let want: Vec<_> = expected
            .iter()
            .filter(|(_, _, s)| status.is_none_or(|status| status == *s))
            .map(|&(_, id, s)| (id, s))
            .collect();
        assert!(!want.is_empty());
        assert_eq!(seen, want, "status {status:?}");
    }

    let first = store
        .list_jobs(&acme, Some(JobStatus::Succeeded), 1, None)
        .await
        .unwrap();
    assert_eq!(first.data[0].usage.total_tokens, 66);
    assert_eq!(first.data[0].metadata, json!({"team": "support"}));
    assert_eq!(first.data[0].score, Some(0.5));
    let empty = store
        .list_jobs(&acme, Some(JobStatus::Cancelled), 10, None)
        .await
        .unwrap();
    assert!(empty.data.is_empty() && empty.next_cursor.is_none());
    for bad in ["nope", "0123456789abcdef0123456789abcdef0123456789abcdeZ"] {
        let err = store
            .list_jobs(&acme, None, 10, Some(bad))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::BadCursor), "{err}");
        assert_eq!(err.kind(), StoreErrorKind::Rejected);
    }
}

async fn stale_snapshots_never_regress_a_job(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    let snapshots = roundtable(&acme, 1_700_000_000_000);
    let id = snapshots[0].id;

    // Mid-run (v4: steps 0 and 1 settled): an older snapshot leaves every row as it is.
    store.write_batch(vec![snapshots[3].clone()]).await.unwrap();
    let mid = rows(&store, id).await;
    assert_eq!(mid.job.as_ref().unwrap().status, "running");
    let statuses: Vec<_> = mid.steps.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(
        statuses,
        ["succeeded", "succeeded", "dispatched", "pending"]
    );
    assert!(mid.steps.iter().all(|s| s.version == 4));
    assert!(mid.evaluations.is_empty());
    store.write_batch(snapshots[..3].to_vec()).await.unwrap();
    store.write_batch(vec![snapshots[2].clone()]).await.unwrap();
    assert_eq!(rows(&store, id).await, mid);

    // The finished snapshot, then every older one, alone and together: nothing moves back.
    let finished = snapshots[6].clone();
    store.write_batch(vec![finished.clone()]).await.unwrap();
    let expected = rows(&store, id).await;
    assert_eq!(expected.job.as_ref().unwrap().version, 7);
    for older in &snapshots[..6] {
        store.write_batch(vec![older.clone()]).await.unwrap();
    }
    store.write_batch(snapshots[..6].to_vec()).await.unwrap();
    store
        .write_batch(vec![snapshots[1].clone(), finished.clone()])
        .await
        .unwrap();
    assert_eq!(rows(&store, id).await, expected);
    let job = store.get_job(&acme, id).await.unwrap().unwrap();
    assert_eq!(job.summary.status, JobStatus::Succeeded);
    assert!(job.steps.iter().all(|s| s.status == StepStatus::Succeeded));
    assert!(job.evaluation.is_some());

    // A lower version never wins, even when it says something different; nor does a different
    // snapshot under the same version.
    let mut stale = finished.clone();
    stale.version -= 1;
    stale.status = JobStatus::Failed;
    stale.steps[0].output = None;
    stale.steps[0].status = StepStatus::Failed;
    stale.evaluation.as_mut().unwrap().targets[0].assertions[1].score = 0.75;
    store.write_batch(vec![stale.clone()]).await.unwrap();
    stale.version += 1;
    store.write_batch(vec![stale]).await.unwrap();
    assert_eq!(rows(&store, id).await, expected);
}

/// Writes `batches` to a fresh job id in several orders (each batch as one write) and checks that
/// all orders leave the same rows; returns them.
async fn same_rows_in_every_order(store: &Store, batches: &[Vec<JobState>]) -> Rows {
    let mut orders = vec![(0..batches.len()).collect::<Vec<_>>()];
    orders.push(orders[0].iter().rev().copied().collect());
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..6 {
        let mut order = orders[0].clone();
        order.shuffle(&mut rng);
        orders.push(order);
    }
    let mut first = None;
    for order in orders {
        let id = JobId::new();
        for i in &order {
            store
                .write_batch(with_job_id(&batches[*i], id))
                .await
                .unwrap();
        }
        let rows = rows(store, id).await;
        match &first {
            None => first = Some(rows),
            Some(first) => assert_eq!(&rows, first, "order {order:?}"),
        }
    }
    first.unwrap()
}

async fn a_cancelled_job_keeps_its_steps_as_they_were(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    let snapshots = roundtable(&acme, 1_700_000_000_000);

    // Cancelled right after step 0 settled (v3): the cancelled snapshot (v4) is the record.
    let mut cancelled = snapshots[2].clone();
    cancelled.status = JobStatus::Cancelled;
    cancelled.version += 1;
    cancelled.updated_at += 1;
    cancelled.finished_at = Some(cancelled.updated_at);
    let batches: Vec<Vec<JobState>> = snapshots[..3]
        .iter()
        .chain([&cancelled])
        .map(|s| vec![s.clone()])
        .collect();
    let rows = same_rows_in_every_order(&store, &batches).await;
    let job = rows.job.unwrap();
    assert_eq!((job.status.as_str(), job.version), ("cancelled", 4));
    assert!(job.finished_at.is_some());
    let steps: Vec<_> = rows
        .steps
        .iter()
        .map(|s| (s.kind.as_str(), s.persona.as_deref(), s.status.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("fanout", Some("cfo"), "succeeded"),
            ("fanout", Some("lead"), "dispatched"),
            ("fanout", Some("sec"), "dispatched"),
            ("synthesis", None, "pending"),
        ]
    );
    assert!(rows.steps.iter().all(|s| s.version == 4));
    assert_eq!(rows.steps[0].attempts, 1);
    assert!(rows.evaluations.is_empty());
}

async fn committed_is_reported_for_terminal_snapshots_only(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = tenant("acme");
    let snapshots = roundtable(&acme, 1_700_000_000_000);
    let state = snapshots.last().unwrap().clone();
    let (last, rest) = snapshots.split_last().unwrap();
    assert_eq!(store.write_batch(rest.to_vec()).await.unwrap(), vec![]);
    let committed = Committed {
        tenant: acme.clone(),
        job_id: state.id,
        status: JobStatus::Succeeded,
    };
    assert_eq!(
        store.write_batch(vec![last.clone()]).await.unwrap(),
        vec![committed.clone()]
    );
    // A replay is committed again (the persister re-acknowledges it) …
    assert_eq!(
        store.write_batch(snapshots.clone()).await.unwrap(),
        vec![committed.clone()]
    );
    // … but a batch holding only older snapshots of a finished job commits nothing.
    assert_eq!(store.write_batch(rest.to_vec()).await.unwrap(), vec![]);
    assert_eq!(store.write_batch(vec![]).await.unwrap(), vec![]);

    // A failed job: committed as failed, with the step's error on the job and the step.
    let mut failed = vec![JobState::new(
        JobId::new(),
        acme.clone(),
        spec(),
        1_700_000_100_000,
        None,
    )];
    push_transition(
        &mut failed,
        Input::Submitted {
            at: 1_700_000_100_000,
        },
    );
    for i in 0..3 {
        let outcome = if i == 1 {
            StepOutcome::Failed(StepError {
                kind: "rate_limited".into(),
                message: "slow down".into(),
                retryable: true,
                status: Some(429),
            })
        } else {
            answer(i)
        };
        let result = step_result(failed.last().unwrap(), i, outcome);
        push_transition(&mut failed, Input::Step(result));
    }
    let failed_state = failed.last().unwrap().clone();
    assert_eq!(failed_state.status, JobStatus::Failed);

    // Both jobs in one batch, the failed one's snapshots shuffled: one entry per terminal job.
    let mut batch = failed.clone();
    batch.reverse();
    batch.push(last.clone());
    let mut reported = store.write_batch(batch).await.unwrap();
    reported.sort_by_key(|c| c.job_id);
    let mut want = vec![
        committed,
        Committed {
            tenant: acme.clone(),
            job_id: failed_state.id,
            status: JobStatus::Failed,
        },
    ];
    want.sort_by_key(|c| c.job_id);
    assert_eq!(reported, want);

    let record = store
        .get_job(&acme, failed_state.id)
        .await
        .unwrap()
        .unwrap();
    let error = record.summary.error.unwrap();
    assert_eq!((error.kind.as_str(), error.step), ("rate_limited", Some(1)));
    assert_eq!(record.steps[1].status, StepStatus::Failed);
    assert_eq!(
        record.steps[1].error.as_ref().map(|e| &*e.message),
        Some("slow down")
    );
    assert_eq!(record.steps[1].output, None);
    assert_eq!(record.steps[2].status, StepStatus::Succeeded);
    assert_eq!(record.steps[3].status, StepStatus::Pending);
    assert_eq!(record.evaluation, None);
}

async fn large_batches_are_chunked(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    // 2,500 finished jobs: 2,500 job rows, 10,000 steps and 5,000 assertions, each table taking
    // more than one statement under the bind-parameter limit.
    let finished = roundtable(&tenant("acme"), 1_700_000_000_000)
        .pop()
        .unwrap();
    let batch: Vec<JobState> = (0..2_500)
        .map(|i| {
            let mut state = finished.clone();
            state.id = JobId::new();
            state.created_at += i;
            state
        })
        .collect();
    for _ in 0..2 {
        assert_eq!(store.write_batch(batch.clone()).await.unwrap().len(), 2_500);
        let db = store.connection();
        assert_eq!(jobs::Entity::find().count(db).await.unwrap(), 2_500);
        assert_eq!(steps::Entity::find().count(db).await.unwrap(), 10_000);
        assert_eq!(evaluations::Entity::find().count(db).await.unwrap(), 5_000);
    }
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode_and_creates_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/chorus.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()), 2)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    assert!(path.exists());
    for (pragma, expected) in [
        ("journal_mode", "wal"),
        ("synchronous", "1"),
        ("busy_timeout", "5000"),
        ("foreign_keys", "1"),
    ] {
        let sql = format!("PRAGMA {pragma}");
        let row = store
            .connection()
            .query_one_raw(Statement::from_string(DbBackend::Sqlite, sql))
            .await
            .unwrap()
            .unwrap();
        let value = row
            .try_get_by_index::<String>(0)
            .or_else(|_| row.try_get_by_index::<i64>(0).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(value, expected, "{pragma}");
    }
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable() {
    let err = Store::connect("postgres://nobody@127.0.0.1:1/none", 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err:?}");
}
