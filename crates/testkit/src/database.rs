//! Test databases: a fresh SQLite file or a fresh Postgres database per test, removed on drop.
//!
//! Postgres needs a server: `TEST_POSTGRES_URL` names one (any database on it, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`), and each [`TestDatabase::postgres`] creates
//! its own `chorus_test_<random>` there. Without the variable Postgres tests skip with a loud
//! warning, unless `TEST_REQUIRE_POSTGRES=1` (set in CI) turns the skip into a failure.
//! Creating and dropping run on a helper thread with its own runtime, so both work from sync
//! code, from inside an async test, and from `Drop`.

use sea_orm::{ConnectOptions, ConnectionTrait, Database};
use tempfile::TempDir;

/// Declares each test once per backend: `sqlite::<name>` and `postgres::<name>`, each calling
/// the async `fn <name>(backend: Backend)` of the module it is used in.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::database::Backend::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::database::Backend::Postgres).await
            })*
        }
    };
}

/// Which database a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists for the lifetime of this value.
pub struct TestDatabase {
    url: String,
    backend: Backend,
    owned: Owned,
}

enum Owned {
    /// Only held: the directory and the file go when it drops.
    Sqlite(#[allow(dead_code)] TempDir),
    Postgres {
        server_url: String,
        name: String,
    },
}

impl TestDatabase {
    /// A database of `backend`; `None` when it is Postgres and no server is configured.
    pub fn new(backend: Backend) -> Option<TestDatabase> {
        match backend {
            Backend::Sqlite => Some(Self::sqlite()),
            Backend::Postgres => Self::postgres(),
        }
    }

    /// A SQLite file in a fresh temporary directory.
    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for SQLite: {e}"));
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("chorus.db").display()
        );
        TestDatabase {
            url,
            backend: Backend::Sqlite,
            owned: Owned::Sqlite(dir),
        }
    }

    /// A fresh database on the server `TEST_POSTGRES_URL` names, or `None` (with a warning).
    pub fn postgres() -> Option<TestDatabase> {
        let Some(server_url) = std::env::var("TEST_POSTGRES_URL")
            .ok()
            .filter(|url| !url.is_empty())
        else {
            if std::env::var("TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!("TEST_REQUIRE_POSTGRES=1 but TEST_POSTGRES_URL is not set");
            }
            eprintln!(
                "\n*** SKIPPING Postgres: set TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
                 (and TEST_REQUIRE_POSTGRES=1 to make this an error) ***\n"
            );
            return None;
        };
        let name = format!("chorus_test_{}", uuid::Uuid::new_v4().simple());
        if let Err(e) = admin(&server_url, format!("CREATE DATABASE {name}")) {
            panic!("cannot create Postgres database {name} (TEST_POSTGRES_URL): {e}");
        }
        Some(TestDatabase {
            url: with_database(&server_url, &name),
            backend: Backend::Postgres,
            owned: Owned::Postgres { server_url, name },
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // The temp dir removes itself; a Postgres database is dropped even with open connections.
        if let Owned::Postgres { server_url, name } = &self.owned
            && let Err(e) = admin(
                server_url,
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
        {
            eprintln!("warning: could not drop test database {name}: {e}");
        }
    }
}

/// Why an administrative statement on the Postgres server failed.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("cannot start a runtime for it: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Database(#[from] sea_orm::DbErr),
    #[error("the database admin thread panicked")]
    Panicked,
}

/// Runs one statement on the server, on a thread with its own runtime.
fn admin(server_url: &str, sql: String) -> Result<(), AdminError> {
    let mut options = ConnectOptions::new(server_url);
    options.max_connections(1).sqlx_logging(false);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AdminError::Runtime)?;
        runtime.block_on(async {
            let db = Database::connect(options).await?;
            let result = db.execute_unprepared(&sql).await.map(drop);
            let _ = db.close().await;
            Ok(result?)
        })
    })
    .join()
    .map_err(|_| AdminError::Panicked)?
}

/// `url` with its database (path) replaced by `name`, keeping any query string.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let server = base[host_start..]
        .find('/')
        .map_or(base, |i| &base[..host_start + i]);
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_of_a_url() {
        for (url, expected) in [
            ("postgres://u@h:5432/postgres", "postgres://u@h:5432/x"),
            ("postgres://u@h:5432", "postgres://u@h:5432/x"),
            (
                "postgres://u@h/db?sslmode=disable",
                "postgres://u@h/x?sslmode=disable",
            ),
        ] {
            assert_eq!(with_database(url, "x"), expected);
        }
    }
}
