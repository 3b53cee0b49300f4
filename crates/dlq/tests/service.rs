//! The DLQ service on a real nats-server and a real SQLite database: listing, paced and capped
//! replays that can be stopped, purges, dry runs, and the audit row of every change.

#![allow(clippy::expect_used, clippy::panic)] // test helpers fail loudly on purpose

use std::time::Duration;

use chorus_bus::Bus;
use chorus_bus::definitions::Definitions;
use chorus_bus::dlq::Filter;
use chorus_bus::dlq::filing::dead_letter_message;
use chorus_core::ids::now_millis;
use chorus_core::messages::DeadLetter;
use chorus_core::subjects::Stage;
use chorus_dlq::report::ReplayOptions;
use chorus_dlq::service::{ChangeError, Dlq};
use chorus_dlq::view::Summary;
use chorus_store::{AuditAction, AuditRecord, Store};
use chorus_testkit::database::TestDatabase;
use chorus_testkit::nats::NatsServer;

/// A bus with the DLQ stream, a migrated database, and dead letters filed as `(kind, route,
/// replays)`, numbered from 1 in the DLQ stream.
async fn setup(letters: &[(&str, &str, u32)]) -> (NatsServer, Dlq, TestDatabase, Store) {
    let server = NatsServer::start_new().await;
    let url = server.url();
    let bus = Bus::connect(&url, "chorus", "test", Duration::from_secs(5)).await;
    let bus = bus.expect("connect");
    let streams = Definitions::builtin("chorus", 1).expect("definitions");
    streams.apply(&bus).await.expect("apply the definitions");
    for (n, (kind, route, replays)) in (1..).zip(letters) {
        let letter = DeadLetter {
            stage: Stage::Llm,
            subject: format!("chorus.work.llm.{route}"),
            headers: vec![("Nats-Msg-Id".into(), format!("job:call:{n}"))],
            payload: b"call".to_vec(),
            error_kind: (*kind).into(),
            error: "it broke".into(),
            route: Some((*route).into()),
            job_id: None,
            tenant: None,
            deliveries: 5,
            attempts: 15,
            replays: *replays,
            stream_sequence: n,
            published_at: now_millis(),
            failed_at: now_millis(),
        };
        let message = dead_letter_message(&bus.subjects, &letter).expect("encode");
        bus.publish_all(vec![message]).await.expect("publish");
    }
    let db = TestDatabase::sqlite();
    let store = Store::connect(db.url(), 1).await.expect("db");
    store.migrate().await.expect("migrate");
    (server, Dlq::new(bus), db, store)
}

fn seqs(entries: &[Summary]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

async fn listed(dlq: &Dlq) -> Vec<u64> {
    seqs(
        &dlq.list(&Filter::default(), 10)
            .await
            .expect("list")
            .entries,
    )
}

async fn audit_rows(store: &Store) -> Vec<AuditRecord> {
    store.audit_entries(None, 100).await.expect("audit log")
}

/// The sequences a row's `detail` lists under `outcome`.
fn audited(row: &AuditRecord, outcome: &str) -> Vec<u64> {
    row.detail[outcome]
        .as_array()
        .expect(outcome)
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect()
}

#[tokio::test]
async fn lists_and_purges_with_a_dry_run_first_and_an_audit_row() {
    let (_server, dlq, _db, store) = setup(&[
        ("server_error", "a", 0),
        ("timeout", "b", 0),
        ("server_error", "b", 1),
    ])
    .await;
    let listing = dlq.list(&Filter::default(), 2).await.expect("list");
    assert_eq!((seqs(&listing.entries), listing.more), (vec![1, 2], true));
    let detail = dlq.show(2).await.expect("show").expect("entry 2");
    assert_eq!(detail.summary.error_kind, "timeout");
    assert_eq!(detail.body.data, "call");
    assert!(dlq.show(99).await.expect("show").is_none());

    let kind = Filter {
        kind: Some("server_error".into()),
        ..Filter::default()
    };
    let dry = dlq
        .purge(&store, "ops@test", &kind, true)
        .await
        .expect("dry purge");
    assert_eq!(
        (
            seqs(&dry.report.purged),
            dry.report.matched,
            dry.report.dry_run
        ),
        (vec![1, 3], 2, true)
    );
    assert_eq!(dry.audit_id, None);
    assert_eq!(listed(&dlq).await, [1, 2, 3]);
    assert!(
        audit_rows(&store).await.is_empty(),
        "dry runs are not audited"
    );

    let purged = dlq
        .purge(&store, "ops@test", &kind, false)
        .await
        .expect("purge");
    assert_eq!(seqs(&purged.report.purged), [1, 3]);
    assert!(purged.report.failed.is_empty());
    assert_eq!(listed(&dlq).await, [2]);
    let rows = audit_rows(&store).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(Some(rows[0].id), purged.audit_id);
    assert_eq!(
        (rows[0].actor.as_str(), rows[0].action.as_str()),
        ("ops@test", AuditAction::DlqPurge.as_str())
    );
    assert_eq!(audited(&rows[0], "purged"), [1, 3]);
    assert_eq!(rows[0].detail["filter"]["kind"], "server_error");
}

#[tokio::test]
async fn replays_within_the_cap_can_be_stopped_and_are_audited() {
    let (_server, dlq, _db, store) = setup(&[
        ("server_error", "a", 0),
        ("server_error", "b", 2),
        ("server_error", "c", 0),
    ])
    .await;
    let everything = Filter::default();
    let options = ReplayOptions {
        max_replays: 2,
        rate: 1_000.0,
        dry_run: false,
    };

    // Stopped before the first: nothing happens, and the report (and the audit row) says so.
    let stopped = dlq
        .replay(&store, "ops@test", &everything, options, async {})
        .await
        .expect("replay");
    assert!(stopped.report.replayed.is_empty());
    let refused: Vec<Summary> = stopped
        .report
        .refused
        .iter()
        .map(|s| s.entry.clone())
        .collect();
    assert_eq!(seqs(&refused), [2]);
    assert_eq!(stopped.report.not_attempted, 2);
    assert_eq!(listed(&dlq).await, [1, 2, 3]);
    let rows = audit_rows(&store).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].detail["not_attempted"], 2);

    let bad_rate = ReplayOptions {
        rate: 0.0,
        ..options
    };
    assert!(matches!(
        dlq.replay(
            &store,
            "ops@test",
            &everything,
            bad_rate,
            std::future::pending()
        )
        .await,
        Err(ChangeError::BadRate { .. })
    ));
    assert_eq!(
        audit_rows(&store).await.len(),
        1,
        "nothing done, nothing audited"
    );

    let dry = dlq
        .replay(
            &store,
            "ops@test",
            &everything,
            ReplayOptions {
                dry_run: true,
                ..options
            },
            std::future::pending(),
        )
        .await
        .expect("dry replay");
    assert_eq!(
        (seqs(&dry.report.replayed), dry.audit_id),
        (vec![1, 3], None)
    );
    assert_eq!(listed(&dlq).await, [1, 2, 3]);

    let done = dlq
        .replay(
            &store,
            "ops@test",
            &everything,
            options,
            std::future::pending(),
        )
        .await
        .expect("replay");
    assert_eq!(
        (seqs(&done.report.replayed), done.report.matched),
        (vec![1, 3], 3)
    );
    assert_eq!(done.report.refused.len(), 1);
    assert!(done.report.refused[0].reason.contains("cap is 2"));
    assert_eq!(listed(&dlq).await, [2]);
    let rows = audit_rows(&store).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(Some(rows[0].id), done.audit_id);
    assert_eq!(rows[0].action, AuditAction::DlqReplay.as_str());
    assert_eq!(audited(&rows[0], "replayed"), [1, 3]);
    assert_eq!(audited(&rows[0], "refused"), [2]);
    assert_eq!(
        (&rows[0].detail["max_replays"], &rows[0].detail["rate"]),
        (&serde_json::json!(2), &serde_json::json!(1_000.0))
    );
}

#[tokio::test]
async fn a_change_the_audit_log_cannot_record_says_what_it_did() {
    let (_server, dlq, _db, _) = setup(&[("server_error", "a", 0)]).await;
    // A database without the audit table: it answers, but cannot take the row.
    let unmigrated = TestDatabase::sqlite();
    let store = Store::connect(unmigrated.url(), 1).await.expect("db");
    let result = dlq
        .purge(&store, "ops@test", &Filter::default(), false)
        .await;
    let Err(ChangeError::Unrecorded { action, detail, .. }) = result else {
        panic!("expected an unrecorded purge, got {result:?}");
    };
    assert_eq!(action, AuditAction::DlqPurge);
    assert_eq!(detail["purged"][0]["seq"], 1);
    assert!(listed(&dlq).await.is_empty(), "the purge itself was done");
}
