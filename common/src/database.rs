//! Opening a service's database the same way everywhere: SQLite, the embedded default,
//! or PostgreSQL, chosen by the URL's scheme.
//!
//! Both are native sqlx pools, so every query runs on its own driver's types (sqlx's
//! `Any` driver would convert every argument and row, measured at ~20 % of a Me call).
//! A store writes its SQL once, with `$1`-style placeholders (SQLite reads them as the
//! argument's position too), and runs it on either pool through [`on_pool!`], which
//! compiles the body once per driver.
//!
//! SQLite: WAL lets readers run beside the single writer; the busy timeout makes a
//! writer wait for the lock instead of failing with "database is locked"; foreign keys
//! are on so `ON DELETE CASCADE` holds.
//!
//! Check-then-act rules (count failures then record one, find a token live then spend
//! it) run in a [`Backend::begin_write`] transaction: `BEGIN IMMEDIATE` on SQLite, which
//! takes the one write lock up front (the process's own writers queue for it first); on
//! PostgreSQL a transaction-scoped advisory lock on the rule's key, so replicas sharing
//! the database take turns exactly as SQLite's writers do, and rules on other keys run
//! side by side.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};
use tokio::sync::OwnedMutexGuard;
use tonic::Status;

const BUSY_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections per process. On PostgreSQL every replica opens its own, so N replicas of
/// both services need 16·N of the server's `max_connections` (100 by default).
const MAX_CONNECTIONS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("database URL {url:?} is invalid: {source}")]
    BadUrl { url: String, source: sqlx::Error },
    #[error(
        "database URL {url:?} names no database this service can use: it must start with \
         sqlite: or postgres://"
    )]
    UnknownScheme { url: String },
    #[error("cannot create the database directory {dir}: {source}")]
    Directory { dir: String, source: std::io::Error },
    #[error("cannot open the database {url:?}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("cannot migrate the database {url:?}: {source}")]
    Migrate { url: String, source: MigrateError },
}

/// A service's embedded migrations, one directory per database.
pub struct Migrations {
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

/// A pool on whichever database the URL named.
#[derive(Debug, Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the native pool inside a [`Pool`]: the body is
/// compiled once per driver, so the same query text runs on each with its own types.
#[macro_export]
macro_rules! on_pool {
    ($pool:expr, $name:ident => $body:expr) => {
        match $pool {
            $crate::database::Pool::Sqlite($name) => $body,
            $crate::database::Pool::Postgres($name) => $body,
        }
    };
}

impl Pool {
    /// Opens the database at `url` (`sqlite:…`, creating the file if missing, or
    /// `postgres://…`) and runs the matching embedded migrations. Several replicas may
    /// start at once: sqlx's PostgreSQL migrator holds an advisory lock while it runs.
    pub async fn open(url: &str, migrations: &Migrations) -> Result<Self, OpenError> {
        let pool = if url.starts_with("sqlite:") {
            Pool::Sqlite(open_sqlite(url).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Pool::Postgres(open_postgres(url).await?)
        } else {
            return Err(OpenError::UnknownScheme { url: redacted(url) });
        };
        let migrated = on_pool!(&pool, native => native.migrator(migrations).run(native).await);
        migrated.map_err(|source| OpenError::Migrate {
            url: redacted(url),
            source,
        })?;
        Ok(pool)
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// What differs between the two drivers beyond their types.
pub trait Backend {
    type Database: sqlx::Database;

    /// Starts a transaction that holds the write lock for `key` until it ends (see the
    /// module comment). SQLite has one lock for the whole database and ignores the key.
    fn begin_write(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<WriteTransaction<Self::Database>, sqlx::Error>> + Send;

    /// The text of a query whose SQL differs between the databases.
    fn pick(&self, sqlite: &'static str, postgres: &'static str) -> &'static str;

    /// This database's migrations.
    fn migrator<'m>(&self, migrations: &'m Migrations) -> &'m Migrator;
}

impl Backend for SqlitePool {
    type Database = Sqlite;

    async fn begin_write(&self, _key: &str) -> Result<WriteTransaction<Sqlite>, sqlx::Error> {
        // This process's writers take turns here rather than in SQLite's busy handler,
        // which sleeps a waiting writer in steps of up to 100 ms instead of waking it
        // when the lock frees. Other processes on the file still meet the busy handler.
        let queue = writer_queue(self);
        let turn = tokio::time::timeout(BUSY_TIMEOUT, queue.lock_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?;
        let tx = self.begin_with("BEGIN IMMEDIATE").await?;
        Ok(WriteTransaction {
            tx,
            _turn: Some(turn),
        })
    }

    fn pick(&self, sqlite: &'static str, _postgres: &'static str) -> &'static str {
        sqlite
    }

    fn migrator<'m>(&self, migrations: &'m Migrations) -> &'m Migrator {
        &migrations.sqlite
    }
}

impl Backend for PgPool {
    type Database = Postgres;

    async fn begin_write(&self, key: &str) -> Result<WriteTransaction<Postgres>, sqlx::Error> {
        let mut tx = self.begin().await?;
        // `hashtext` is the server's own: every replica maps a key to the same lock.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        Ok(WriteTransaction { tx, _turn: None })
    }

    fn pick(&self, _sqlite: &'static str, postgres: &'static str) -> &'static str {
        postgres
    }

    fn migrator<'m>(&self, migrations: &'m Migrations) -> &'m Migrator {
        &migrations.postgres
    }
}

/// A transaction begun by [`Backend::begin_write`]. It derefs to its connection, as
/// sqlx's `Transaction` does, and rolls back if dropped before [`Self::commit`].
pub struct WriteTransaction<DB: sqlx::Database> {
    tx: Transaction<'static, DB>,
    /// SQLite: this process's turn at the database's write lock, held to the end.
    _turn: Option<OwnedMutexGuard<()>>,
}

impl<DB: sqlx::Database> WriteTransaction<DB> {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl<DB: sqlx::Database> Deref for WriteTransaction<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.tx
    }
}

impl<DB: sqlx::Database> DerefMut for WriteTransaction<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }
}

/// The queue this process's writers to one SQLite file wait in: one per file, so every
/// pool on it (a service has one; tests may open several) shares it.
fn writer_queue(pool: &SqlitePool) -> Arc<tokio::sync::Mutex<()>> {
    static QUEUES: LazyLock<StdMutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let file = pool.connect_options().get_filename().to_owned();
    QUEUES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(file)
        .or_default()
        .clone()
}

/// Opens (creating if missing) the SQLite database at `url`.
pub async fn open_sqlite(url: &str) -> Result<SqlitePool, OpenError> {
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

async fn open_postgres(url: &str) -> Result<PgPool, OpenError> {
    let options = PgConnectOptions::from_str(url).map_err(|source| OpenError::BadUrl {
        url: redacted(url),
        source,
    })?;
    PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(BUSY_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|source| OpenError::Open {
            url: redacted(url),
            source,
        })
}

/// `url` with its password replaced, for errors and logs.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Only fails for URLs that cannot have a password, which this one has.
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "(a URL that does not parse)".to_owned(),
    }
}

/// The status a client sees for a database failure: UNAVAILABLE when waiting could
/// help (busy, locked, pool exhausted, the server unreachable or restarting, a
/// serialization failure or deadlock), INTERNAL otherwise. The detail is logged only.
pub fn status(source: &sqlx::Error) -> Status {
    if is_transient(source) {
        tracing::warn!(%source, "database busy or unreachable");
        Status::unavailable("the service is busy; try again shortly")
    } else {
        tracing::error!(%source, "database error");
        Status::internal("internal error; try again later")
    }
}

fn is_transient(source: &sqlx::Error) -> bool {
    // SQLite: SQLITE_BUSY, SQLITE_LOCKED. PostgreSQL (SQLSTATE): serialization failure,
    // deadlock, lock not available, too many connections, cannot connect now (starting
    // up or shutting down), admin shutdown, and the whole connection-exception class.
    const TRANSIENT: [&str; 8] = [
        "5", "6", "40001", "40P01", "55P03", "53300", "57P03", "57P01",
    ];
    match source {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| TRANSIENT.contains(&code.as_ref()) || code.starts_with("08")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_an_error_message() {
        let url = "postgres://strongbox:s3cret@db.internal:5432/auth";
        let shown = redacted(url);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("db.internal:5432/auth"), "{shown}");
        assert_eq!(redacted("sqlite://data/auth.db"), "sqlite://data/auth.db");
    }

    #[tokio::test]
    async fn an_unknown_scheme_is_refused_by_name() {
        let migrations = Migrations {
            sqlite: Migrator::DEFAULT,
            postgres: Migrator::DEFAULT,
        };
        let err = Pool::open("mysql://u:pw@host/db", &migrations)
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("sqlite: or postgres://"), "{message}");
        assert!(!message.contains("pw@"), "{message}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named_without_its_password() {
        let migrations = Migrations {
            sqlite: Migrator::DEFAULT,
            postgres: Migrator::DEFAULT,
        };
        // Port 1 on loopback: nothing listens there.
        let err = Pool::open("postgres://u:s3cret@127.0.0.1:1/db", &migrations)
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("127.0.0.1:1/db"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
}
