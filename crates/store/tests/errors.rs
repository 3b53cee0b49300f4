//! [`StoreErrorKind`] from real failures of real databases: each error here is provoked on
//! SQLite or Postgres (which skips loudly unless `TEST_POSTGRES_URL` is set), not built by hand.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_store::{Store, StoreError, StoreErrorKind};
use chorus_testkit::database::TestDatabase;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement, TransactionTrait,
};

use StoreErrorKind::{Broken, Rejected, Unavailable};

async fn migrated(db: &TestDatabase) -> Store {
    let store = Store::connect(db.url(), 2).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// The kind of the error `sql` fails with.
async fn kind_of(db: &DatabaseConnection, sql: &str) -> StoreErrorKind {
    let err = db.execute_unprepared(sql).await.unwrap_err();
    StoreError::from(err).kind()
}

/// The kind of the error `sql` with `values` bound fails with.
async fn kind_with(
    db: &DatabaseConnection,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> StoreErrorKind {
    let statement = Statement::from_sql_and_values(db.get_database_backend(), sql, values);
    StoreError::from(db.execute_raw(statement).await.unwrap_err()).kind()
}

#[tokio::test]
async fn postgres_refuses_data_it_cannot_hold_as_rejected() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    let store = migrated(&db).await;
    let conn = store.connection();
    // NUL in text, and `\u0000` in jsonb: what the store's escape exists for.
    assert_eq!(
        kind_with(conn, "SELECT $1::text", vec!["a\0b".into()]).await,
        Rejected
    );
    assert_eq!(kind_of(conn, r#"SELECT '"\u0000"'::jsonb"#).await, Rejected);
    // A number out of range, a duplicate key.
    assert_eq!(kind_of(conn, "SELECT 2147483648::int4").await, Rejected);
    conn.execute_unprepared("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    conn.execute_unprepared("INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    assert_eq!(
        kind_of(conn, "INSERT INTO t VALUES (1, 'b')").await,
        Rejected
    );
    // An index row larger than a btree page allows (a custom_id of many kilobytes would be).
    conn.execute_unprepared("CREATE INDEX t_v ON t (v)")
        .await
        .unwrap();
    assert_eq!(
        kind_of(
            conn,
            "INSERT INTO t SELECT 2, string_agg(md5(i::text), '') FROM generate_series(1, 1000) i"
        )
        .await,
        Rejected
    );
    // Too many arguments (54023).
    let args = vec!["'x'"; 101].join(",");
    assert_eq!(
        kind_of(conn, &format!("SELECT concat({args})")).await,
        Rejected
    );
}

#[tokio::test]
async fn postgres_faults_not_of_the_data_are_broken_or_unavailable() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    let store = migrated(&db).await;
    let conn = store.connection();
    // Migrations behind, or a bug: no such table or column, bad syntax.
    assert_eq!(kind_of(conn, "SELECT * FROM no_such_table").await, Broken);
    assert_eq!(
        kind_of(conn, "SELECT no_such_column FROM jobs").await,
        Broken
    );
    assert_eq!(kind_of(conn, "SELEC 1").await, Broken);

    // A statement cancelled by statement_timeout: try again later.
    let txn = conn.begin().await.unwrap();
    txn.execute_unprepared("SET LOCAL statement_timeout = 20")
        .await
        .unwrap();
    let err = txn
        .execute_unprepared("SELECT pg_sleep(5)")
        .await
        .unwrap_err();
    assert_eq!(StoreError::from(err).kind(), Unavailable);
    drop(txn);

    // The server ends the session (as a restart or failover does).
    let own = Database::connect(ConnectOptions::new(db.url()).max_connections(1).to_owned())
        .await
        .unwrap();
    assert_eq!(
        kind_of(&own, "SELECT pg_terminate_backend(pg_backend_pid())").await,
        Unavailable
    );

    // Every class the policy names, as the server reports it.
    for (code, kind) in [
        ("40001", Unavailable), // serialization failure
        ("40P01", Unavailable), // deadlock
        ("08006", Unavailable), // connection failure
        ("53100", Unavailable), // disk full
        ("53300", Unavailable), // too many connections
        ("57P01", Unavailable), // admin shutdown
        ("22021", Rejected),
        ("23505", Rejected),
        ("54000", Rejected),
        ("42501", Broken), // insufficient privilege
        ("28000", Broken),
        ("3D000", Broken),
        ("XX000", Broken),
    ] {
        let sql =
            format!("DO $$ BEGIN RAISE EXCEPTION 'provoked' USING ERRCODE = '{code}'; END $$");
        assert_eq!(kind_of(conn, &sql).await, kind, "{code}");
    }
}

#[tokio::test]
async fn postgres_connections_refused_by_the_server_are_broken() {
    let Some(db) = TestDatabase::postgres() else {
        return;
    };
    let (scheme, rest) = db.url().split_once("://").unwrap();
    let (server, _database) = rest.rsplit_once('/').unwrap();
    let host = server.split_once('@').map_or(server, |(_, host)| host);

    let missing = format!("{scheme}://{server}/chorus_no_such_database");
    let err = Store::connect(&missing, 1).await.unwrap_err();
    assert_eq!(err.kind(), Broken, "{err}");

    let nobody = format!("{scheme}://chorus_no_such_role@{host}/postgres");
    let err = Store::connect(&nobody, 1).await.unwrap_err();
    assert_eq!(err.kind(), Broken, "{err}");
    // (An unreachable server is Unavailable: tests/store.rs.)
}

#[tokio::test]
async fn sqlite_result_codes_map_to_kinds() {
    let db = TestDatabase::sqlite();
    let store = migrated(&db).await;
    let conn = store.connection();
    conn.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    conn.execute_unprepared("INSERT INTO t VALUES (1, 'a')")
        .await
        .unwrap();
    // CONSTRAINT, MISMATCH, TOOBIG.
    assert_eq!(
        kind_of(conn, "INSERT INTO t VALUES (1, 'b')").await,
        Rejected
    );
    assert_eq!(
        kind_of(conn, "INSERT INTO t VALUES ('x', 'b')").await,
        Rejected
    );
    assert_eq!(kind_of(conn, "SELECT zeroblob(2000000000)").await, Rejected);
    // ERROR: no such table or column, bad syntax.
    assert_eq!(kind_of(conn, "SELECT * FROM no_such_table").await, Broken);
    assert_eq!(
        kind_of(conn, "SELECT no_such_column FROM jobs").await,
        Broken
    );
    assert_eq!(kind_of(conn, "SELEC 1").await, Broken);

    // READONLY.
    let read_only = Database::connect(db.url().replace("mode=rwc", "mode=ro"))
        .await
        .unwrap();
    assert_eq!(
        kind_of(&read_only, "INSERT INTO t VALUES (2, 'c')").await,
        Broken
    );

    // BUSY: another connection holds the write lock past the busy timeout.
    let mut options = ConnectOptions::new(db.url());
    options
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(200))
        .map_sqlx_sqlite_opts(|o| o.busy_timeout(Duration::from_millis(20)));
    let impatient = Database::connect(options).await.unwrap();
    let holder = conn
        .begin_with_options(sea_orm::TransactionOptions {
            sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        kind_of(&impatient, "INSERT INTO t VALUES (3, 'd')").await,
        Unavailable
    );
    holder.rollback().await.unwrap();

    // The pool has no connection to give within its acquire timeout.
    let busy = impatient.begin().await.unwrap();
    assert_eq!(kind_of(&impatient, "SELECT 1").await, Unavailable);
    busy.rollback().await.unwrap();
}

#[tokio::test]
async fn sqlite_files_that_cannot_be_opened_are_broken() {
    let dir = tempfile::tempdir().unwrap();
    let under_a_file = dir.path().join("file");
    std::fs::write(&under_a_file, b"").unwrap();
    let url = format!("sqlite://{}/chorus.db?mode=rwc", under_a_file.display());
    let err = Store::connect(&url, 1).await.unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err}");
    assert_eq!(err.kind(), Broken);

    let missing = format!(
        "sqlite://{}/missing/chorus.db?mode=rw",
        dir.path().display()
    );
    let err = Database::connect(missing).await.unwrap_err();
    assert_eq!(StoreError::from(err).kind(), Broken);
}

#[tokio::test]
async fn errors_of_the_store_itself_have_kinds() {
    let db = TestDatabase::sqlite();
    let store = migrated(&db).await;
    let tenant = chorus_core::Tenant::new("acme").unwrap();
    let err = store
        .list_jobs(&tenant, None, 10, Some("not a cursor"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Rejected);
    let bad_row = StoreError::Unknown {
        what: "job status",
        value: "exploded".into(),
    };
    assert_eq!(bad_row.kind(), Rejected);
}
