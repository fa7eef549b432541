//! How a command over several files (`upload`, `download`) takes their failures.
//!
//! One file's failure does not stop the others, unless it is one every later file would
//! hit too (the session expired, the server is down). Failures are listed as they
//! happen; the command's own error is the lone failure, the one that stopped the batch,
//! or a count of them, with the first one's exit code, so a single kind of failure
//! keeps its code.

use std::io::Write;

use indicatif::ProgressBar;
use serde::Serialize;

use crate::errors::CliError;
use crate::output::Output;
use crate::progress::Progress;

pub struct Failures {
    total: usize,
    /// What could not be done to the files, for the summary: `uploaded`, `downloaded`.
    verb: &'static str,
    count: usize,
    first: Option<CliError>,
    stopped: bool,
}

impl Failures {
    pub fn new(total: usize, verb: &'static str) -> Self {
        Self {
            total,
            verb,
            count: 0,
            first: None,
            stopped: false,
        }
    }

    /// Takes the failure of the file `subject` names, and returns it as the JSON the
    /// command's report lists.
    pub fn note(
        &mut self,
        subject: &str,
        err: CliError,
        out: &Output,
        progress: &Progress,
    ) -> serde_json::Value {
        let error = err.to_json();
        self.count += 1;
        self.stopped = err.stops_everything();
        // A lone failure, or one that ends the batch, is reported once, as the command's
        // error; others are listed as they happen.
        if self.total > 1 && !self.stopped && !out.is_json() {
            progress.suspend(|| {
                let _ = writeln!(std::io::stderr().lock(), "error: {subject}: {err}");
            });
        }
        self.first.get_or_insert(err);
        error
    }

    /// True once a failure every later file would hit too has happened.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Ends the command: clears the batch's total bar, prints the JSON report (a person
    /// saw each file as it went), and returns how the command ends.
    pub fn finish(
        self,
        total: Option<ProgressBar>,
        report: &impl Serialize,
        out: &Output,
    ) -> Result<(), CliError> {
        if let Some(total) = total {
            total.finish_and_clear();
        }
        if out.is_json() {
            out.result(report, String::new);
        }
        self.into_result()
    }

    /// How the command ends.
    pub fn into_result(self) -> Result<(), CliError> {
        match self.first {
            None => Ok(()),
            Some(err) if self.total <= 1 || err.stops_everything() => Err(err),
            Some(err) => Err(CliError::SomeFailed {
                failed: self.count,
                total: self.total,
                verb: self.verb,
                exit_code: err.exit_code(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Status;

    use super::*;
    use crate::errors::exit;

    fn note(failures: &mut Failures, err: CliError) {
        failures.note("file", err, &Output::new(true), &Progress::new(false));
    }

    #[test]
    fn a_lone_failure_is_the_commands_error() {
        let mut failures = Failures::new(1, "downloaded");
        note(&mut failures, Status::not_found("no such file").into());
        assert!(!failures.stopped());
        let err = failures.into_result().unwrap_err();
        assert_eq!(err.exit_code(), exit::NOT_FOUND);
        assert_eq!(err.to_string(), "no such file");
    }

    #[test]
    fn several_failures_are_counted_with_the_first_ones_code() {
        let mut failures = Failures::new(3, "downloaded");
        note(&mut failures, Status::not_found("gone").into());
        note(&mut failures, CliError::Refused("exists".into()));
        let err = failures.into_result().unwrap_err();
        assert_eq!(err.to_string(), "2 of 3 files could not be downloaded");
        assert_eq!(err.exit_code(), exit::NOT_FOUND);
    }

    #[test]
    fn a_failure_every_file_would_hit_stops_the_batch() {
        let mut failures = Failures::new(3, "uploaded");
        note(&mut failures, CliError::SessionExpired);
        assert!(failures.stopped());
        let err = failures.into_result().unwrap_err();
        assert_eq!(err.exit_code(), exit::NOT_LOGGED_IN);
    }
}
