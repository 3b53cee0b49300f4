//! [`StoreError`], and [`StoreErrorKind`]: what a failure means for the caller — wait and try
//! again, give up on this data, or call an operator.
//!
//! The kind is read from the database's own error code: Postgres's SQLSTATE (by class, with a
//! few codes singled out) and SQLite's primary result code. Whatever is not known to be the
//! data's fault or a passing condition is [`StoreErrorKind::Broken`], which blames no item.

use sea_orm::{DbErr, RuntimeErr, sqlx};

/// What a store failure means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Unreachable, overloaded, or a lost race (connection errors, pool timeout, serialization
    /// failure, deadlock, SQLite BUSY/LOCKED, disk full…): the same write succeeds later.
    Unavailable,
    /// The database refused this data (a value it cannot hold, a constraint, a size limit):
    /// the same data never succeeds; other data does.
    Rejected,
    /// Refused for a reason that is not the data's (missing table/column — migrations behind —,
    /// permissions, syntax: a bug): retrying helps only once an operator acts, and no item is to
    /// blame.
    Broken,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached, is overloaded, or a transaction lost a race.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] DbErr),
    /// The database refused the statement; [`StoreError::kind`] says whether for the data's sake.
    #[error("database error: {0}")]
    Database(#[source] DbErr),
    /// A list cursor the store did not issue (answer 400).
    #[error("malformed cursor")]
    BadCursor,
    /// A number that does not fit its column or its type (a timestamp out of range, a count
    /// below zero): a bug, or a row written by something else.
    #[error("invalid data: {what} {value} is out of range")]
    OutOfRange { what: &'static str, value: i128 },
    /// A column holding a value Chorus does not know (an unknown status).
    #[error("invalid data: {what} `{value}`")]
    Unknown { what: &'static str, value: String },
    /// A value that does not convert to or from its JSON column.
    #[error("invalid data: {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A tenant in a row that Chorus would not have written.
    #[error("invalid data: {source}")]
    BadTenant {
        #[source]
        source: chorus_core::ids::InvalidTenant,
    },
    /// A key's scope list that Chorus would not have written.
    #[error("invalid data: {source}")]
    BadScopes {
        #[source]
        source: chorus_core::auth::ScopesError,
    },
    /// A key's band that Chorus would not have written.
    #[error("invalid data: unknown band `{band}`")]
    BadBand { band: String },
    /// An API key asked for with no scope.
    #[error("a key needs at least one scope")]
    NoScope,
    /// The operating system gave no randomness for a new key.
    #[error("no randomness from the OS: {source}")]
    Randomness {
        #[source]
        source: rand::rand_core::OsError,
    },
    /// Refused by `faults.store_reject_metadata`, as if the database had refused the data
    /// (only in builds with the `faults` feature).
    #[cfg(feature = "faults")]
    #[error(
        "refused by fault injection: job {job}: its metadata has `{key}` (faults.store_reject_metadata)"
    )]
    InjectedFault {
        job: chorus_core::JobId,
        key: String,
    },
    /// The directory for a SQLite file could not be created.
    #[error("cannot create database directory {path}: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// What the failure means: see [`StoreErrorKind`].
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            Self::Unavailable(_) => StoreErrorKind::Unavailable,
            Self::Database(err) => classify(err),
            Self::BadCursor
            | Self::OutOfRange { .. }
            | Self::Unknown { .. }
            | Self::Json { .. }
            | Self::BadTenant { .. }
            | Self::BadScopes { .. }
            | Self::BadBand { .. }
            | Self::NoScope => StoreErrorKind::Rejected,
            #[cfg(feature = "faults")]
            Self::InjectedFault { .. } => StoreErrorKind::Rejected,
            Self::Randomness { .. } => StoreErrorKind::Broken,
            Self::CreateDir { .. } => StoreErrorKind::Broken,
        }
    }
}

impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        match classify(&err) {
            StoreErrorKind::Unavailable => Self::Unavailable(err),
            StoreErrorKind::Rejected | StoreErrorKind::Broken => Self::Database(err),
        }
    }
}

fn classify(err: &DbErr) -> StoreErrorKind {
    match err {
        DbErr::ConnectionAcquire(_) => StoreErrorKind::Unavailable,
        // Connecting failed: unreachable, unless the server said why (no such database, role).
        DbErr::Conn(RuntimeErr::SqlxError(e)) => classify_sqlx(e),
        DbErr::Conn(_) => StoreErrorKind::Unavailable,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            classify_sqlx(e)
        }
        // A value that does not convert between Rust and the column.
        DbErr::TryIntoErr { .. } | DbErr::ConvertFromU64(_) | DbErr::Type(_) | DbErr::Json(_) => {
            StoreErrorKind::Rejected
        }
        _ => StoreErrorKind::Broken,
    }
}

fn classify_sqlx(err: &sqlx::Error) -> StoreErrorKind {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => StoreErrorKind::Unavailable,
        // A value that cannot be sent, or a stored one that cannot be read.
        sqlx::Error::Encode(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => {
            StoreErrorKind::Rejected
        }
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                Some(_) => sqlite(&code),
                None => postgres(&code),
            }
        }
        _ => StoreErrorKind::Broken,
    }
}

/// A Postgres SQLSTATE.
fn postgres(code: &str) -> StoreErrorKind {
    match code {
        // The database was dropped under us.
        "57P04" => StoreErrorKind::Broken,
        // Lock not available, object in use; a read-only transaction (a standby, mid-failover);
        // snapshot too old.
        "55P03" | "55006" | "25006" | "72000" => StoreErrorKind::Unavailable,
        _ => match code.get(..2).unwrap_or_default() {
            // Connection exception; transaction rollback (serialization failure, deadlock);
            // insufficient resources (disk full, out of memory, too many connections); operator
            // intervention (shutdown, cancelled by statement_timeout); system (I/O) error.
            "08" | "40" | "53" | "57" | "58" => StoreErrorKind::Unavailable,
            // Data exception (a value it cannot hold: NUL, `\u0000` in jsonb, out of range);
            // integrity constraint; program limit exceeded (an index row or a value too large).
            "22" | "23" | "54" => StoreErrorKind::Rejected,
            // Syntax error or access rule violation (missing table or column, no privilege),
            // authorization, no such database or schema, feature not supported, internal error.
            _ => StoreErrorKind::Broken,
        },
    }
}

/// A SQLite result code (extended codes carry the primary one in their low byte).
fn sqlite(code: &str) -> StoreErrorKind {
    const ABORT: i32 = 4;
    const BUSY: i32 = 5;
    const LOCKED: i32 = 6;
    const NOMEM: i32 = 7;
    const INTERRUPT: i32 = 9;
    const IOERR: i32 = 10;
    const FULL: i32 = 13;
    const PROTOCOL: i32 = 15;
    const SCHEMA: i32 = 17;
    const TOOBIG: i32 = 18;
    const CONSTRAINT: i32 = 19;
    const MISMATCH: i32 = 20;
    match code.parse::<i32>().map(|c| c & 0xff) {
        // SCHEMA: the schema changed under a prepared statement; preparing it again works.
        Ok(ABORT | BUSY | LOCKED | NOMEM | INTERRUPT | IOERR | FULL | PROTOCOL | SCHEMA) => {
            StoreErrorKind::Unavailable
        }
        Ok(TOOBIG | CONSTRAINT | MISMATCH) => StoreErrorKind::Rejected,
        // ERROR (no such table or column, syntax), PERM, READONLY, CORRUPT, CANTOPEN, NOTADB,
        // MISUSE, RANGE…
        _ => StoreErrorKind::Broken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_codes_by_class_and_exception() {
        use StoreErrorKind::*;
        for (code, kind) in [
            ("08006", Unavailable),
            ("40001", Unavailable),
            ("40P01", Unavailable),
            ("53100", Unavailable),
            ("53300", Unavailable),
            ("57014", Unavailable),
            ("57P01", Unavailable),
            ("58030", Unavailable),
            ("55P03", Unavailable),
            ("25006", Unavailable),
            ("22021", Rejected),
            ("22P05", Rejected),
            ("23505", Rejected),
            ("54000", Rejected),
            ("42P01", Broken),
            ("42703", Broken),
            ("42501", Broken),
            ("28P01", Broken),
            ("3D000", Broken),
            ("57P04", Broken),
            ("XX000", Broken),
            ("", Broken),
        ] {
            assert_eq!(postgres(code), kind, "{code}");
        }
    }

    #[test]
    fn sqlite_codes_primary_and_extended() {
        use StoreErrorKind::*;
        for (code, kind) in [
            ("5", Unavailable),
            ("517", Unavailable), // BUSY_SNAPSHOT
            ("6", Unavailable),
            ("13", Unavailable),
            ("10", Unavailable),
            ("3850", Unavailable), // IOERR_LOCK
            ("18", Rejected),
            ("19", Rejected),
            ("1555", Rejected), // CONSTRAINT_PRIMARYKEY
            ("2067", Rejected), // CONSTRAINT_UNIQUE
            ("20", Rejected),
            ("1", Broken),
            ("8", Broken),
            ("11", Broken),
            ("14", Broken),
            ("not a number", Broken),
        ] {
            assert_eq!(sqlite(code), kind, "{code}");
        }
    }
}
