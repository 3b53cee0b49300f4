//! The audit log against real databases: SQLite, and Postgres when `TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used)]

use chorus_store::{AuditAction, Store};
use chorus_testkit::database::{Backend, TestDatabase};
use serde_json::json;

async fn records_and_lists_actions_newest_first(backend: Backend) {
    let Some(db) = TestDatabase::new(backend) else {
        return;
    };
    let store = Store::connect(db.url(), 2).await.unwrap();
    store.migrate().await.unwrap();
    assert!(store.audit_entries(None, 10).await.unwrap().is_empty());
    let replay = store
        .record_audit(
            "ops@host",
            AuditAction::DlqReplay,
            json!({"filter": {"stage": "llm"}, "replayed": [{"seq": 4}], "dry_run": false}),
        )
        .await
        .unwrap();
    let purge = store
        .record_audit(
            "http:127.0.0.1:5000",
            AuditAction::DlqPurge,
            json!({"purged": 2}),
        )
        .await
        .unwrap();
    assert!(purge.id > replay.id);
    let all = store.audit_entries(None, 10).await.unwrap();
    assert_eq!(all, vec![purge.clone(), replay.clone()]);
    assert_eq!(all[1].action, "dlq.replay");
    assert_eq!(all[1].actor, "ops@host");
    assert_eq!(all[1].detail["replayed"][0]["seq"], 4);
    let replays = store
        .audit_entries(Some(AuditAction::DlqReplay), 10)
        .await
        .unwrap();
    assert_eq!(replays, vec![replay]);
    assert_eq!(store.audit_entries(None, 1).await.unwrap(), vec![purge]);
}

#[tokio::test]
async fn sqlite_audit_log() {
    records_and_lists_actions_newest_first(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_audit_log() {
    records_and_lists_actions_newest_first(Backend::Postgres).await
}
