//! [`StoreError`]: what went wrong, and whether trying again later can help.

use sea_orm::{DbErr, RuntimeErr, sqlx};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached, is overloaded, or a transaction lost a race
    /// (serialization failure, deadlock, SQLite busy): retry later, the request was fine.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] DbErr),
    /// The database refused the statement for a reason waiting will not fix.
    #[error("database error: {0}")]
    Database(#[source] DbErr),
    /// A list cursor the store did not issue (answer 400).
    #[error("malformed cursor")]
    BadCursor,
    /// A value that does not map between the domain types and a row: a timestamp out of range,
    /// an unknown status string (a bug, or a row written by something else).
    #[error("invalid data: {0}")]
    Invalid(String),
    /// The directory for a SQLite file could not be created.
    #[error("cannot create database directory {path}: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// True when the same call may succeed later without any change on the caller's side.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        let transient = match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
                transient_sqlx(e)
            }
            _ => false,
        };
        if transient {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

fn transient_sqlx(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                // BUSY and LOCKED, in any extended form.
                Some(_) => code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
                // Connection exceptions, shutdown in progress, too many connections,
                // serialization failure, deadlock.
                None => {
                    code.starts_with("08")
                        || code.starts_with("57P")
                        || matches!(&*code, "53300" | "40001" | "40P01")
                }
            }
        }
        _ => false,
    }
}
