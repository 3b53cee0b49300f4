//! `Store::usage` against real databases (SQLite and Postgres): steps, tokens and cost per day,
//! key, route and tenant over a window, a tenant seeing only its own.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use chorus_core::job::{Input, JobState, apply};
use chorus_core::messages::StepResult;
use chorus_core::spec::JobSpec;
use chorus_core::{JobId, Tenant};
use chorus_store::entity::jobs;
use chorus_store::{Store, UsageGroup, UsageRow};
use chorus_testkit::database::{Backend, TestDatabase};
use chrono::{DateTime, TimeZone, Utc};
use sea_orm::EntityTrait;
use serde_json::{Value, json};

chorus_testkit::on_both_backends!(
    usage_adds_up_per_day_key_route_and_tenant,
    jobs_keep_the_key_that_submitted_them,
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

fn at(day: u32, hour: u32, minute: u32, second: u32, millis: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, day, hour, minute, second)
        .unwrap()
        + chrono::Duration::milliseconds(millis.into())
}

/// A submitted job with one step per route, by `key`.
fn job(tenant_name: &str, key: Option<&str>, routes: &[&str]) -> JobState {
    let spec: JobSpec = serde_json::from_value(json!({
        "models": routes,
        "messages": [{"role": "user", "content": "hello"}],
    }))
    .unwrap();
    let created = at(1, 0, 0, 0, 0).timestamp_millis() - 60_000;
    let queued = JobState::new(JobId::new(), tenant(tenant_name), spec, created, None)
        .by_key(key.map(str::to_owned));
    apply(&queued, Input::Submitted { at: created }).state
}

/// An answer on `answered_by` with these tokens and cost.
fn answer(answered_by: &str, prompt: u32, completion: u32, cost: Option<f64>) -> Value {
    json!({
        "outcome": "succeeded",
        "text": "ok",
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
        "latency_ms": 5,
        "route": answered_by,
        "cost_usd": cost,
    })
}

fn failure() -> Value {
    json!({"outcome": "failed", "kind": "server_error", "message": "boom", "retryable": false})
}

/// `job` with step `step` settled by `outcome` at `finished`.
fn settle(job: JobState, step: u32, outcome: Value, finished: DateTime<Utc>) -> JobState {
    let finished = finished.timestamp_millis();
    let result: StepResult = serde_json::from_value(json!({
        "job_id": job.id,
        "tenant": job.tenant,
        "step": step,
        "route": job.steps[step as usize].route,
        "outcome": outcome,
        "attempts": 1,
        "started_at": finished - 10,
        "finished_at": finished,
    }))
    .unwrap();
    let transition = apply(&job, Input::Step(result));
    assert!(transition.changed);
    transition.state
}

fn row(
    group: Option<&str>,
    (steps, failed_steps): (u64, u64),
    (prompt_tokens, completion_tokens): (u64, u64),
    cost_usd: f64,
    unpriced_steps: u64,
) -> UsageRow {
    UsageRow {
        group: group.map(str::to_owned),
        steps,
        failed_steps,
        prompt_tokens,
        completion_tokens,
        cost_usd,
        unpriced_steps,
    }
}

/// `actual` is `expected`, costs to within rounding.
#[track_caller]
fn assert_rows(actual: &[UsageRow], expected: &[UsageRow]) {
    let rounded = |rows: &[UsageRow]| {
        rows.iter()
            .map(|r| UsageRow {
                cost_usd: (r.cost_usd * 1e9).round() / 1e9,
                ..r.clone()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(rounded(actual), rounded(expected));
}

async fn usage_adds_up_per_day_key_route_and_tenant(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let a = tenant("acme");
    // Two steps: one late on March 1st (UTC), one at midnight after it, answered by a fallback.
    let j1 = job("acme", Some("k1"), &["priced", "cheap"]);
    let j1 = settle(
        j1,
        0,
        answer("priced", 100, 50, Some(0.25)),
        at(1, 23, 59, 59, 500),
    );
    let j1 = settle(
        j1,
        1,
        answer("backup", 10, 5, Some(0.01)),
        at(2, 0, 0, 0, 0),
    );
    // No key (a JetStream submitter), a route without a price.
    let j2 = settle(
        job("acme", None, &["sim:echo"]),
        0,
        answer("sim:echo", 7, 3, None),
        at(2, 12, 0, 0, 0),
    );
    let j3 = settle(
        job("acme", Some("k2"), &["priced"]),
        0,
        failure(),
        at(2, 13, 0, 0, 0),
    );
    // Another tenant's.
    let j4 = settle(
        job("globex", Some("k3"), &["priced"]),
        0,
        answer("priced", 1000, 1000, Some(1.0)),
        at(1, 10, 0, 0, 0),
    );
    // Before the window, after it, and not finished.
    let before = settle(
        job("acme", Some("k1"), &["priced"]),
        0,
        answer("priced", 1, 1, Some(9.0)),
        at(1, 0, 0, 0, 0) - chrono::Duration::milliseconds(1),
    );
    let after = settle(
        job("acme", Some("k1"), &["priced"]),
        0,
        answer("priced", 2, 2, Some(5.0)),
        at(3, 0, 0, 0, 0),
    );
    let running = job("acme", Some("k1"), &["priced"]);
    store
        .write_batch(vec![j1, j2, j3, j4, before, after, running])
        .await
        .unwrap();

    let (since, until) = (at(1, 0, 0, 0, 0), Some(at(3, 0, 0, 0, 0)));
    let usage = |tenant: Option<&Tenant>, group: UsageGroup| {
        let store = store.clone();
        let tenant = tenant.cloned();
        async move {
            store
                .usage(tenant.as_ref(), group, since, until)
                .await
                .unwrap()
        }
    };
    assert_rows(
        &usage(Some(&a), UsageGroup::Day).await,
        &[
            row(Some("2024-03-01"), (1, 0), (100, 50), 0.25, 0),
            row(Some("2024-03-02"), (2, 1), (17, 8), 0.01, 1),
        ],
    );
    assert_rows(
        &usage(Some(&a), UsageGroup::Key).await,
        &[
            row(None, (1, 0), (7, 3), 0.0, 1),
            row(Some("k1"), (2, 0), (110, 55), 0.26, 0),
            row(Some("k2"), (0, 1), (0, 0), 0.0, 0),
        ],
    );
    assert_rows(
        &usage(Some(&a), UsageGroup::Route).await,
        &[
            row(Some("backup"), (1, 0), (10, 5), 0.01, 0),
            row(Some("priced"), (1, 1), (100, 50), 0.25, 0),
            row(Some("sim:echo"), (1, 0), (7, 3), 0.0, 1),
        ],
    );
    assert_rows(
        &usage(None, UsageGroup::Tenant).await,
        &[
            row(Some("acme"), (3, 1), (117, 58), 0.26, 1),
            row(Some("globex"), (1, 0), (1000, 1000), 1.0, 0),
        ],
    );
    assert_rows(
        &usage(Some(&tenant("globex")), UsageGroup::Tenant).await,
        &[row(Some("globex"), (1, 0), (1000, 1000), 1.0, 0)],
    );
    assert_rows(
        &usage(None, UsageGroup::Day).await,
        &[
            row(Some("2024-03-01"), (2, 0), (1100, 1050), 1.25, 0),
            row(Some("2024-03-02"), (2, 1), (17, 8), 0.01, 1),
        ],
    );

    // Without `until`, up to now: the step of March 3rd too.
    let open = store
        .usage(Some(&a), UsageGroup::Day, since, None)
        .await
        .unwrap();
    assert_eq!(
        open.iter()
            .map(|r| (r.group.as_deref(), r.steps))
            .collect::<Vec<_>>(),
        [
            (Some("2024-03-01"), 1),
            (Some("2024-03-02"), 2),
            (Some("2024-03-03"), 1)
        ]
    );
    // A window with nothing in it, and a tenant with nothing.
    let later = store
        .usage(Some(&a), UsageGroup::Day, at(4, 0, 0, 0, 0), None)
        .await
        .unwrap();
    assert!(later.is_empty(), "{later:?}");
    assert!(
        usage(Some(&tenant("initech")), UsageGroup::Key)
            .await
            .is_empty()
    );
}

async fn jobs_keep_the_key_that_submitted_them(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let keyed = job("acme", Some("0123456789abcdef"), &["sim:echo"]);
    let unkeyed = job("acme", None, &["sim:echo"]);
    let ids = (keyed.id.as_uuid(), unkeyed.id.as_uuid());
    store.write_batch(vec![keyed, unkeyed]).await.unwrap();
    let key_of = |id| {
        let db = store.connection().clone();
        async move {
            jobs::Entity::find_by_id(id)
                .one(&db)
                .await
                .unwrap()
                .unwrap()
                .key_id
        }
    };
    assert_eq!(key_of(ids.0).await.as_deref(), Some("0123456789abcdef"));
    assert_eq!(key_of(ids.1).await, None);
}
