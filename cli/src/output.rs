//! What a command prints: lines for people, or exactly one JSON document on stdout for
//! scripts (`--json`). Diagnostics always go to stderr, so stdout stays parseable.

use std::io::{IsTerminal, Write};

use prost_types::Timestamp;
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Progress bars are for a person watching a terminal, not for scripts.
    pub fn shows_progress(&self) -> bool {
        !self.json && std::io::stdout().is_terminal()
    }

    /// Prints a command's result: `value` with `--json`, else the text `human` makes.
    pub fn result<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        if self.json {
            match serde_json::to_string_pretty(value) {
                Ok(text) => print_stdout(&text),
                Err(err) => self.warn(&format!("cannot encode the result as JSON: {err}")),
            }
        } else {
            print_stdout(&human());
        }
    }

    /// A line for people as work progresses (nothing with `--json`, where the final
    /// document says it all).
    pub fn progress_line(&self, text: &str) {
        if !self.json {
            print_stdout(text);
        }
    }

    pub fn warn(&self, message: &str) {
        let line = if self.json {
            json!({ "warning": message }).to_string()
        } else {
            format!("warning: {message}")
        };
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

/// Writes to stdout, ignoring a closed pipe (`strongbox-cli ls | head`): the reader has
/// what it wanted, and there is nobody to tell.
fn print_stdout(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// `1.5 MiB`: binary units, as file managers and `ls -h` show sizes.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A protobuf timestamp as RFC 3339 in UTC (`2026-11-05T14:03:09Z`); empty when absent.
pub fn rfc3339(timestamp: Option<&Timestamp>) -> String {
    let Some(timestamp) = timestamp else {
        return String::new();
    };
    let days = timestamp.seconds.div_euclid(86_400);
    let of_day = timestamp.seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm),
/// so the client needs no calendar crate for one format.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> String {
        rfc3339(Some(&Timestamp { seconds, nanos: 0 }))
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(None), "");
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(9 * 1024 * 1024 + 1), "9.0 MiB");
    }
}
