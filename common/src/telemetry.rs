//! Tracing setup, once per process.
//!
//! `RUST_LOG` picks the filter (default `info`), `LOG_FORMAT` the shape of each line:
//! text for a person (coloured only when written to a terminal), or one JSON object per
//! line for a log shipper, carrying the fields of the call's span (method, request id,
//! user id). Handlers never log secrets: passwords, tokens and presigned URLs stay out
//! of every field and message.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, for a person reading a terminal or a file.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the call it belongs to.
    Json,
}

/// The logging setting every service binary shares.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LogArgs {
    /// How log lines are written (the filter is `RUST_LOG`, default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber, writing to stdout. Calling it twice (tests, the
/// all-in-one launcher) is harmless: the second call keeps the first subscriber.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => lines.with_ansi(std::io::stdout().is_terminal()).try_init(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
