//! Tracing setup, once per process.
//!
//! `RUST_LOG` picks the filter (default `info`). Handlers never log secrets: passwords,
//! tokens and presigned URLs stay out of every field and message.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Calling it twice (tests, the all-in-one launcher)
/// is harmless: the second call keeps the first subscriber.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
