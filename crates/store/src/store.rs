//! [`Store`]: the connection pool, migrations and readiness.
//!
//! SQLite is opened in WAL mode with `synchronous=NORMAL` (durable across process crashes, may
//! lose the last commits on power loss, as WAL intends) and a busy timeout, so the persister and
//! the edge can share one file. Migrations take a lock first — a Postgres advisory lock, SQLite's
//! write lock — so pods starting together apply them exactly once. A process that does not
//! migrate checks that none is pending ([`Store::pending_migrations`]).

use std::collections::HashSet;
use std::str::FromStr;
#[cfg(feature = "faults")]
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "faults")]
use chorus_core::config::FaultConfig;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    EntityTrait, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use sea_orm_migration::{MigratorTrait, SchemaManager, seaql_migrations};

use crate::StoreError;
use crate::migration::Migrator;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection, including (re)connecting to a database that
/// is down, before getting [`StoreError::Unavailable`].
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Key of the Postgres advisory lock held while migrating ("chorus_m").
const MIGRATION_LOCK: i64 = 0x6368_6f72_7573_5f6d;

/// A handle on the database; clones share one pool.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) db: DatabaseConnection,
    /// `faults.store_reject_metadata`: [`Store::write_batch`] refuses snapshots whose metadata
    /// has this key.
    #[cfg(feature = "faults")]
    pub(crate) reject_metadata: Option<Arc<str>>,
}

impl Store {
    /// Opens a pool on `url` (`sqlite:…` or `postgres://…`). A SQLite file and its directory are
    /// created when missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let mut options = ConnectOptions::new(url);
        options
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .sqlx_logging(false);
        if url.starts_with("sqlite:") {
            create_parent_dir(url)?;
            // Memory-mapped reads and a larger page cache: without them the batch writer spends
            // much of its time in read() system calls for pages the OS already has cached.
            options.map_sqlx_sqlite_opts(|o| {
                o.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(BUSY_TIMEOUT)
                    .foreign_keys(true)
                    .pragma("mmap_size", "268435456")
                    .pragma("cache_size", "-32768")
                    .statement_cache_capacity(512)
            });
        }
        let db = Database::connect(options).await?;
        Ok(Store {
            db,
            #[cfg(feature = "faults")]
            reject_metadata: None,
        })
    }

    /// This store with the test-only faults of `faults` that concern it
    /// (`store_reject_metadata`); only in builds with the `faults` feature.
    #[cfg(feature = "faults")]
    pub fn with_faults(mut self, faults: &FaultConfig) -> Store {
        self.reject_metadata = faults.store_reject_metadata.as_deref().map(Arc::from);
        self
    }

    /// Applies pending migrations; a no-op when there are none.
    #[tracing::instrument(name = "store.migrate", skip_all)]
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let txn = self.begin_write().await?;
        if txn.get_database_backend() == DbBackend::Postgres {
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                .await?;
        }
        Migrator::up(&txn, None).await?;
        txn.commit().await?;
        Ok(())
    }

    /// The migrations of this version the database has not had, by name. Migrations the
    /// database has and this version lacks are a newer release's; they are not an error, since
    /// every migration only adds (an older version runs against a newer schema, which is what
    /// makes a rollback safe).
    pub async fn pending_migrations(&self) -> Result<Vec<String>, StoreError> {
        let table = Migrator::migration_table_name().to_string();
        let applied: HashSet<String> = match SchemaManager::new(&self.db).has_table(&table).await? {
            true => seaql_migrations::Entity::find()
                .all(&self.db)
                .await?
                .into_iter()
                .map(|m| m.version)
                .collect(),
            false => HashSet::new(),
        };
        Ok(Migrator::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .filter(|name| !applied.contains(name))
            .collect())
    }

    /// Checks that the database answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(StoreError::Unavailable)
    }

    /// The underlying connection, for tooling and tests.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A write transaction; on SQLite it takes the write lock at `BEGIN`, so it waits (up to the
    /// busy timeout) instead of failing when it would have to upgrade a read lock.
    pub(crate) async fn begin_write(&self) -> Result<DatabaseTransaction, StoreError> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        Ok(self.db.begin_with_options(options).await?)
    }
}

/// Creates the directory of a SQLite file URL (not of an in-memory database).
fn create_parent_dir(url: &str) -> Result<(), StoreError> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(());
    }
    // A URL sqlx cannot parse is reported by `Database::connect`.
    let Ok(options) = SqliteConnectOptions::from_str(url) else {
        return Ok(());
    };
    match options.get_filename().parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.display().to_string(),
                source,
            })
        }
        _ => Ok(()),
    }
}
