//! The client's one error type, and the single place that turns each case into a
//! message and an exit code.
//!
//! Server errors keep the server's message: the services write it for people ("email or
//! password is incorrect", "the file is larger than …"). Exit codes let scripts tell
//! the cases that need different reactions apart: log in again, check the key, retry
//! later.

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;
use tonic::{Code, Status};

/// Exit codes; clap itself exits with [`USAGE`] on a bad command line.
pub mod exit {
    pub const GENERAL: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_LOGGED_IN: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const UNAVAILABLE: u8 = 5;
    /// Downloaded bytes that do not hash to the SHA-256 the server recorded at upload.
    pub const CORRUPTED: u8 = 6;
    /// The shell convention for "stopped by SIGINT" (128 + 2).
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("not logged in; run `strongbox-cli login EMAIL` first")]
    NotLoggedIn,

    #[error(
        "logged in to {logged_in}, not {requested}; run `strongbox-cli --server {requested} login EMAIL`"
    )]
    LoggedInElsewhere {
        logged_in: String,
        requested: String,
    },

    #[error("your session has expired; log in again with `strongbox-cli login EMAIL`")]
    SessionExpired,

    #[error("cannot reach the server at {server}: {detail}")]
    Unreachable { server: String, detail: String },

    /// A call the server answered with an error.
    #[error("{}", server_message(.0))]
    Server(Status),

    #[error("{}: {source}", .path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{} is damaged ({detail}); delete it{advice}", .path.display())]
    DamagedState {
        path: PathBuf,
        detail: String,
        advice: &'static str,
    },

    #[error(
        "the downloaded bytes of {key} have SHA-256 {actual}, not {expected}; nothing was saved \
         and the partial download was deleted, so running the command again starts afresh"
    )]
    ChecksumMismatch {
        key: String,
        expected: String,
        actual: String,
    },

    /// A download whose stream ended cleanly before the file's last byte; what arrived
    /// is kept, so the next run continues it.
    #[error(
        "the download of {key} stopped at {received} of {size} bytes; run the same command \
         again to continue it"
    )]
    Incomplete {
        key: String,
        received: u64,
        size: u64,
    },

    #[error("cannot read the password: {0}")]
    Password(String),

    /// Something the user asked for that cannot be done as asked (nothing to upload, a
    /// destination that exists).
    #[error("{0}")]
    Refused(String),

    #[error("{failed} of {total} files could not be {verb}")]
    SomeFailed {
        failed: usize,
        total: usize,
        /// What could not be done to them: `uploaded`, `downloaded`.
        verb: &'static str,
        /// The exit code of the first failure, so a single kind of failure keeps its code.
        exit_code: u8,
    },

    /// A broken promise of the client itself (a background task that panicked): a bug.
    #[error("internal error: {0}")]
    Internal(String),

    #[error("interrupted")]
    Interrupted,
}

impl CliError {
    pub fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::File {
            path: path.into(),
            source,
        }
    }

    /// The gRPC code, when the server answered with an error.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Server(status) => Some(status.code()),
            _ => None,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotLoggedIn | Self::LoggedInElsewhere { .. } | Self::SessionExpired => {
                exit::NOT_LOGGED_IN
            }
            Self::Unreachable { .. } | Self::Incomplete { .. } => exit::UNAVAILABLE,
            Self::Server(status) => match status.code() {
                Code::Unauthenticated => exit::NOT_LOGGED_IN,
                Code::NotFound => exit::NOT_FOUND,
                Code::Unavailable => exit::UNAVAILABLE,
                _ => exit::GENERAL,
            },
            Self::SomeFailed { exit_code, .. } => *exit_code,
            Self::Interrupted => exit::INTERRUPTED,
            Self::ChecksumMismatch { .. } => exit::CORRUPTED,
            Self::File { .. }
            | Self::DamagedState { .. }
            | Self::Password(_)
            | Self::Refused(_)
            | Self::Internal(_) => exit::GENERAL,
        }
    }

    /// True for failures that would fail every later call too, so a batch should stop.
    pub fn stops_everything(&self) -> bool {
        matches!(
            self.exit_code(),
            exit::NOT_LOGGED_IN | exit::UNAVAILABLE | exit::INTERRUPTED
        )
    }

    /// This error as the JSON object `--json` prints.
    pub fn to_json(&self) -> serde_json::Value {
        let mut error = json!({
            "message": self.to_string(),
            "exit_code": self.exit_code(),
        });
        if let Some(code) = self.code() {
            error["grpc_code"] = json!(format!("{code:?}"));
        }
        error
    }

    /// Writes the error to stderr: `error: …`, or `{"error": {…}}` with `--json`.
    pub fn report(&self, json: bool) {
        let line = if json {
            json!({ "error": self.to_json() }).to_string()
        } else {
            format!("error: {self}")
        };
        // If stderr itself is gone there is nobody left to tell.
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

impl From<Status> for CliError {
    fn from(status: Status) -> Self {
        Self::Server(status)
    }
}

fn server_message(status: &Status) -> String {
    let message = status.message().trim();
    match (status.code(), message.is_empty()) {
        (_, true) => format!("the server answered {:?}", status.code()),
        // tonic's own messages for a dropped connection are terse ("transport error").
        (Code::Unavailable, false) if !message.contains("unavailable") => {
            format!("the server is unavailable: {message}")
        }
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_map_to_exit_codes() {
        let cases = [
            (Status::not_found("no such file"), exit::NOT_FOUND),
            (
                Status::unavailable("storage-service is unavailable"),
                exit::UNAVAILABLE,
            ),
            (Status::unauthenticated("expired"), exit::NOT_LOGGED_IN),
            (Status::invalid_argument("bad name"), exit::GENERAL),
        ];
        for (status, code) in cases {
            assert_eq!(CliError::from(status).exit_code(), code);
        }
    }

    #[test]
    fn the_servers_message_is_the_users_message() {
        let err = CliError::from(Status::already_exists("an account with this email exists"));
        assert_eq!(err.to_string(), "an account with this email exists");
        assert_eq!(err.to_json()["grpc_code"], "AlreadyExists");
    }
}
