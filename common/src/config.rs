//! Configuration loading shared by the services.
//!
//! Each service declares its settings once, as a `clap` struct whose fields carry
//! `env = "…"`: that one declaration gives `--help`, environment variables and
//! defaults. This module adds the `.env` file and the options all services share.

use std::path::PathBuf;

use clap::Parser;

/// Parses `T` from the command line and the environment, after loading `./.env`
/// (variables already set in the environment win over the file).
pub fn load<T: Parser>() -> T {
    // A missing .env is the normal case; a malformed one is worth a warning on stderr,
    // since tracing is not initialised before the configuration is known.
    if let Err(err) = dotenvy::dotenv()
        && !err.not_found()
    {
        eprintln!("warning: ignoring .env: {err}");
    }
    T::parse()
}

/// Where the embedded defaults keep their state (SQLite file, keys, local objects).
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArgs {
    /// Directory for the embedded state: the SQLite database, the signing key, local objects.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// What a service binary can do besides serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Asks the running service (at its listen address) for its grpc.health.v1 status;
    /// exits 0 when SERVING. For container healthchecks, which have no grpcurl.
    Healthcheck,
}
