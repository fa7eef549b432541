//! `upload PATH...`: files and folders, one file at a time, each with its own progress
//! bar (and a total bar for several).
//!
//! Files up to [`RESUMABLE_THRESHOLD`] go in one streaming call ([`streaming`]); larger
//! ones through a resumable session ([`resumable`]), since re-sending gigabytes after a
//! dropped connection is the failure users notice. One file's failure does not stop the
//! others ([`crate::commands::batch`]).

mod local;
mod resumable;
mod streaming;

use std::path::PathBuf;

use serde::Serialize;
use strongbox_proto::storage::v1::{FileInfo, UploadResponse};

use crate::commands::Context;
use crate::commands::batch::Failures;
use crate::errors::CliError;
use crate::output::human_size;
use crate::pending_uploads::PendingUploads;
use crate::progress::Progress;
use crate::session::Session;
use local::{LocalFile, Skipped};

/// Files larger than this use a resumable session.
pub const RESUMABLE_THRESHOLD: u64 = 8 * 1024 * 1024;

/// A stored file, as the command reports it.
#[derive(Debug, Serialize)]
pub struct Uploaded {
    path: PathBuf,
    filename: String,
    key: String,
    size: u64,
    sha256: String,
    content_type: String,
    /// `stream` or `resumable`.
    method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed_from: Option<u64>,
}

impl Uploaded {
    fn streamed(file: &LocalFile, stored: UploadResponse) -> Self {
        Self {
            path: file.shown.clone(),
            filename: stored.filename,
            key: stored.key,
            size: stored.size,
            sha256: stored.sha256,
            content_type: stored.content_type,
            method: "stream",
            resumed_from: None,
        }
    }

    fn resumable(file: &LocalFile, stored: FileInfo, resumed_from: Option<u64>) -> Self {
        Self {
            path: file.shown.clone(),
            filename: stored.filename,
            key: stored.key,
            size: stored.size,
            sha256: stored.sha256,
            content_type: stored.content_type,
            method: "resumable",
            resumed_from,
        }
    }

    fn describe(&self) -> String {
        let resumed = self
            .resumed_from
            .map(|offset| format!(", resumed at {}", human_size(offset)))
            .unwrap_or_default();
        format!(
            "uploaded {} as {} ({}, sha256 {}{resumed})",
            self.path.display(),
            self.key,
            human_size(self.size),
            self.sha256
        )
    }
}

#[derive(Debug, Serialize)]
struct Failed {
    path: PathBuf,
    error: serde_json::Value,
}

/// The `--json` document.
#[derive(Debug, Default, Serialize)]
struct Report {
    uploaded: Vec<Uploaded>,
    failed: Vec<Failed>,
    skipped: Vec<Skipped>,
}

pub async fn upload(context: &Context, paths: &[PathBuf]) -> Result<(), CliError> {
    let mut session = Session::resume(context).await?;
    let found = local::find(paths.to_vec()).await?;
    for skipped in &found.skipped {
        let message = format!("skipped {}: {}", skipped.path.display(), skipped.reason);
        context.out.warn(&message);
    }
    if found.files.is_empty() {
        return Err(CliError::Refused(
            "nothing to upload: the paths hold no regular files".into(),
        ));
    }

    let pending = PendingUploads::new(context.dir.clone());
    let progress = Progress::new(context.out.shows_progress());
    let several = found.files.len() > 1;
    let total = several.then(|| {
        let bytes = found.files.iter().map(|file| file.size).sum();
        progress.total(found.files.len(), bytes)
    });
    let mut report = Report {
        skipped: found.skipped,
        ..Report::default()
    };
    let mut failures = Failures::new(found.files.len(), "uploaded");
    for file in &found.files {
        let transfer = progress.transfer(&file.name, file.size, total.as_ref());
        let outcome = if file.size > RESUMABLE_THRESHOLD {
            resumable::upload(&mut session, &pending, file, &transfer).await
        } else {
            streaming::upload(&mut session, file, &transfer).await
        };
        transfer.done();
        match outcome {
            Ok(uploaded) => {
                progress.suspend(|| context.out.progress_line(&uploaded.describe()));
                report.uploaded.push(uploaded);
            }
            Err(err) => {
                let shown = file.shown.display().to_string();
                let error = failures.note(&shown, err, &context.out, &progress);
                report.failed.push(Failed {
                    path: file.shown.clone(),
                    error,
                });
                if failures.stopped() {
                    break;
                }
            }
        }
    }
    failures.finish(total, &report, &context.out)
}
