//! `strongbox-cli`: a terminal client for Strongbox over native gRPC.
//!
//! It talks only to the gateway, which serves `auth.v1.AuthService` and
//! `storage.v1.StorageService` on one port. The pieces, one concern each:
//!
//! - [`args`]: the command line (flags, environment variables, defaults);
//! - [`config_dir`]: where the client keeps its state, written privately and atomically;
//! - [`credentials`] and [`session`]: the stored token pair, and a logged-in session that
//!   refreshes it before it expires and once more when the server refuses it;
//! - [`client`]: the gRPC channel and the bearer-token interceptor;
//! - [`commands`]: one module per command group;
//! - [`progress`] and [`output`]: what the user sees (bars on a terminal, JSON for scripts);
//! - [`errors`]: the one error type, and the exit code each case maps to.

pub mod args;
pub mod client;
pub mod commands;
pub mod config_dir;
pub mod credentials;
pub mod errors;
pub mod output;
pub mod password;
pub mod pending_uploads;
pub mod progress;
pub mod session;

use std::process::ExitCode;

pub use args::Args;
pub use errors::CliError;

use crate::args::Command;
use crate::commands::Context;

/// Runs one command to completion and reports how it went, as an exit code. Ctrl-C
/// drops the command's future, so its guards run: an upload stream is cancelled (the
/// server keeps nothing of it), and a partial download keeps what arrived, for the next
/// `download` to continue.
pub async fn run(args: Args) -> ExitCode {
    let json = args.json;
    let outcome = tokio::select! {
        outcome = execute(args) => outcome,
        () = interrupted() => Err(CliError::Interrupted),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            err.report(json);
            ExitCode::from(err.exit_code())
        }
    }
}

async fn execute(args: Args) -> Result<(), CliError> {
    let context = Context::new(&args)?;
    match args.command {
        Command::Register { email } => commands::account::register(&context, &email).await,
        Command::Login { email } => commands::account::login(&context, &email).await,
        Command::Logout => commands::account::logout(&context).await,
        Command::Whoami => commands::account::whoami(&context).await,
        Command::Upload { paths } => commands::upload::upload(&context, &paths).await,
        Command::Ls { long } => commands::files::list(&context, long).await,
        Command::Download {
            keys,
            output,
            force,
            resume,
            restart,
        } => {
            let options = commands::download::Options {
                output,
                force,
                resume: commands::download::Resume::from_flags(resume, restart),
            };
            commands::download::download(&context, &keys, &options).await
        }
        Command::Rm { key } => commands::files::remove(&context, &key).await,
        Command::Usage => commands::usage::usage(&context).await,
    }
}

/// Resolves on Ctrl-C; never, if the signal cannot be watched (the command then simply
/// runs to its end).
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
