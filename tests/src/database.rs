//! The database a test's services run on: SQLite in the test's data directory (the
//! services' default), or a database of its own on a real PostgreSQL server.
//!
//! The server is the one `scripts/test.sh` starts fresh for the run and names in
//! `STRONGBOX_TEST_POSTGRES_URL`; without it (a bare `cargo nextest run`), the first
//! test to ask starts one in `target/test-postgres` with `scripts/postgres.sh`, which
//! the rest share. There is no skipping: a machine without PostgreSQL fails the
//! PostgreSQL tests, naming the package to install.

use std::path::PathBuf;
use std::process::Command;

use sqlx::{Connection, PgConnection};
use tokio::sync::OnceCell;

/// The variable naming a PostgreSQL server's superuser URL.
pub const POSTGRES_URL_VAR: &str = "STRONGBOX_TEST_POSTGRES_URL";

#[derive(Debug, Clone)]
pub enum Database {
    /// Each service's default: a SQLite file in its data directory.
    Sqlite,
    /// A database created for this test alone.
    Postgres { url: String },
}

impl Database {
    pub fn sqlite() -> Self {
        Self::Sqlite
    }

    /// A new, empty PostgreSQL database on the test server.
    pub async fn postgres() -> Self {
        Self::Postgres {
            url: new_postgres_database().await,
        }
    }

    /// The URL to hand a service, or `None` for its default SQLite file.
    pub fn url(&self) -> Option<String> {
        match self {
            Self::Sqlite => None,
            Self::Postgres { url } => Some(url.clone()),
        }
    }
}

/// Creates a new, empty database on the test PostgreSQL server and returns its URL.
pub async fn new_postgres_database() -> String {
    let server = server_url().await;
    let name = format!("strongbox_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(server)
        .await
        .unwrap_or_else(|err| panic!("connecting to the test PostgreSQL server: {err}"));
    // A generated name, not input: nothing to escape.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|err| panic!("CREATE DATABASE {name}: {err}"));
    admin.close().await.ok();
    let mut url = url::Url::parse(server).expect("a PostgreSQL URL");
    url.set_path(&name);
    url.to_string()
}

async fn server_url() -> &'static str {
    static URL: OnceCell<String> = OnceCell::const_new();
    URL.get_or_init(|| async {
        if let Ok(url) = std::env::var(POSTGRES_URL_VAR) {
            return url;
        }
        tokio::task::spawn_blocking(start_local_server)
            .await
            .expect("starting PostgreSQL")
    })
    .await
}

fn start_local_server() -> String {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(workspace.join("scripts/postgres.sh"))
        .arg("start")
        .arg(workspace.join("target/test-postgres"))
        .output()
        .expect("running scripts/postgres.sh");
    assert!(
        output.status.success(),
        "{POSTGRES_URL_VAR} is unset and scripts/postgres.sh could not start PostgreSQL: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("a UTF-8 URL")
        .trim()
        .to_owned()
}

/// Runs each scenario `async fn NAME(db: Database)` twice, as the tests `NAME::sqlite`
/// and `NAME::postgres`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::database::Database::sqlite()).await
            }

            #[tokio::test]
            async fn postgres() {
                super::$name($crate::database::Database::postgres().await).await
            }
        }
    )+};
}
