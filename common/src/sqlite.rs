//! Opening a service's SQLite database the same way everywhere.
//!
//! WAL lets readers run beside the single writer; the busy timeout makes a writer wait
//! for the lock instead of failing with "database is locked"; foreign keys are on so
//! `ON DELETE CASCADE` holds. Each service runs its own embedded migrations on the pool.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tonic::Status;

const BUSY_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_CONNECTIONS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("database URL {url:?} is invalid: {source}")]
    BadUrl { url: String, source: sqlx::Error },
    #[error("cannot create the database directory {dir}: {source}")]
    Directory { dir: String, source: std::io::Error },
    #[error("cannot open the database {url:?}: {source}")]
    Open { url: String, source: sqlx::Error },
}

/// Opens (creating if missing) the SQLite database at `url`.
pub async fn open(url: &str) -> Result<SqlitePool, OpenError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|source| OpenError::BadUrl {
            url: url.to_owned(),
            source,
        })?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT);
    let file = Path::new(options.get_filename());
    // Each connection to `:memory:` is its own empty database: keep to one.
    let in_memory = file == Path::new(":memory:");
    if let Some(dir) = file
        .parent()
        .filter(|dir| !in_memory && !dir.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
            dir: dir.display().to_string(),
            source,
        })?;
    }
    SqlitePoolOptions::new()
        .max_connections(if in_memory { 1 } else { MAX_CONNECTIONS })
        .acquire_timeout(BUSY_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|source| OpenError::Open {
            url: url.to_owned(),
            source,
        })
}

/// The status a client sees for a database failure: UNAVAILABLE when waiting could
/// help (busy, locked, pool exhausted), INTERNAL otherwise. The detail is logged only.
pub fn status(source: &sqlx::Error) -> Status {
    const SQLITE_BUSY: &str = "5";
    const SQLITE_LOCKED: &str = "6";
    let busy = matches!(source, sqlx::Error::PoolTimedOut)
        || source
            .as_database_error()
            .and_then(|db| db.code())
            .is_some_and(|code| code == SQLITE_BUSY || code == SQLITE_LOCKED);
    if busy {
        tracing::warn!(%source, "database busy");
        Status::unavailable("the service is busy; try again shortly")
    } else {
        tracing::error!(%source, "database error");
        Status::internal("internal error; try again later")
    }
}
