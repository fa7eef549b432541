//! `download KEY...`: streams each file into a partial file next to its destination,
//! checks the whole file's SHA-256 against the one the server recorded at upload, and
//! only then renames it into place. A half-written or corrupted file never carries the
//! real name.
//!
//! Downloads resume: an interrupted one keeps what arrived ([`partial`]), and the same
//! command later asks for the rest only (Download's `offset`), as long as the server
//! still describes the file as it did. Each file is looked up first (StatFile): its
//! original name decides where it goes ([`destination`]), and with that which partial
//! to continue; the sizes give the bars their length.

mod destination;
mod partial;

use std::path::PathBuf;

use futures::StreamExt;
use serde::Serialize;
use strongbox_proto::storage::v1::{
    DownloadRequest, DownloadResponse, FileInfo, StatFileRequest, download_response,
};
use tonic::Streaming;

use crate::commands::Context;
use crate::commands::batch::Failures;
use crate::errors::CliError;
use crate::output::human_size;
use crate::progress::{Progress, Transfer};
use crate::session::Session;
use destination::Target;
use partial::{Found, Origin, Partial, Writer};

/// What to do with a partial download an earlier run left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Continue it if it can be trusted; otherwise start over, and say so.
    Auto,
    /// Continue it, or fail: for a script that must not fetch a large file twice.
    Only,
    /// Start over whatever is there.
    Never,
}

impl Resume {
    /// From `--resume` and `--restart` (which the command line keeps apart).
    pub fn from_flags(resume: bool, restart: bool) -> Self {
        match (resume, restart) {
            (_, true) => Self::Never,
            (true, false) => Self::Only,
            (false, false) => Self::Auto,
        }
    }
}

pub struct Options {
    /// `-o`: a file or folder for one key, a folder for several.
    pub output: Option<PathBuf>,
    /// Replace destinations that exist.
    pub force: bool,
    pub resume: Resume,
}

/// A saved file, as the command reports it.
#[derive(Debug, Serialize)]
struct Downloaded {
    key: String,
    filename: String,
    path: PathBuf,
    size: u64,
    sha256: String,
    /// How many bytes an earlier run had downloaded, when this one continued it.
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed_from: Option<u64>,
}

impl Downloaded {
    fn describe(&self) -> String {
        let resumed = self
            .resumed_from
            .map(|offset| format!(", resumed at {}", human_size(offset)))
            .unwrap_or_default();
        format!(
            "saved {} to {} ({}, sha256 {}{resumed})",
            self.key,
            self.path.display(),
            human_size(self.size),
            self.sha256
        )
    }
}

#[derive(Debug, Serialize)]
struct Failed {
    key: String,
    error: serde_json::Value,
}

/// The `--json` document for several keys (one key prints its [`Downloaded`] alone).
#[derive(Debug, Default, Serialize)]
struct Report {
    downloaded: Vec<Downloaded>,
    failed: Vec<Failed>,
}

impl Report {
    fn fail(&mut self, key: &str, error: serde_json::Value) {
        self.failed.push(Failed {
            key: key.to_owned(),
            error,
        });
    }
}

pub async fn download(
    context: &Context,
    keys: &[String],
    options: &Options,
) -> Result<(), CliError> {
    let mut session = Session::resume(context).await?;
    let progress = Progress::new(context.out.shows_progress());
    let mut unique: Vec<&str> = Vec::new();
    for key in keys {
        if !unique.contains(&key.as_str()) {
            unique.push(key);
        }
    }
    match unique.as_slice() {
        [key] => download_one(context, &mut session, &progress, key, options).await,
        _ => download_several(context, &mut session, &progress, &unique, options).await,
    }
}

async fn download_one(
    context: &Context,
    session: &mut Session,
    progress: &Progress,
    key: &str,
    options: &Options,
) -> Result<(), CliError> {
    let info = stat(session, key).await?;
    let target = destination::for_one(options.output.as_deref(), info);
    let transfer = progress.transfer(&target.info.filename, target.info.size, None);
    let warn = |message: &str| progress.suspend(|| context.out.warn(message));
    let downloaded = fetch(session, &target, options, &transfer, &warn).await;
    transfer.done();
    let downloaded = downloaded?;
    context.out.result(&downloaded, || downloaded.describe());
    Ok(())
}

/// Every key into one folder; one file's failure does not stop the others.
async fn download_several(
    context: &Context,
    session: &mut Session,
    progress: &Progress,
    keys: &[&str],
    options: &Options,
) -> Result<(), CliError> {
    let folder = destination::folder(options.output.as_deref()).await?;
    let mut failures = Failures::new(keys.len(), "downloaded");
    let mut report = Report::default();

    let mut found = Vec::new();
    for key in keys {
        match stat(session, key).await {
            Ok(info) => found.push(info),
            Err(err) => report.fail(key, failures.note(key, err, &context.out, progress)),
        }
        if failures.stopped() {
            found.clear();
            break;
        }
    }
    let targets = destination::in_folder(&folder, found);
    let total = (targets.len() > 1).then(|| {
        let bytes = targets.iter().map(|target| target.info.size).sum();
        progress.total(targets.len(), bytes)
    });
    let warn = |message: &str| progress.suspend(|| context.out.warn(message));
    for target in &targets {
        let transfer = progress.transfer(&target.info.filename, target.info.size, total.as_ref());
        let outcome = fetch(session, target, options, &transfer, &warn).await;
        transfer.done();
        match outcome {
            Ok(downloaded) => {
                progress.suspend(|| context.out.progress_line(&downloaded.describe()));
                report.downloaded.push(downloaded);
            }
            Err(err) => {
                let key = &target.info.key;
                report.fail(key, failures.note(key, err, &context.out, progress));
            }
        }
        if failures.stopped() {
            break;
        }
    }
    failures.finish(total, &report, &context.out)
}

/// The file's description, which says where it goes and how large it is.
async fn stat(session: &mut Session, key: &str) -> Result<FileInfo, CliError> {
    session
        .call(|mut clients| async move {
            let request = StatFileRequest {
                key: key.to_owned(),
            };
            clients
                .storage
                .stat_file(request)
                .await?
                .into_inner()
                .file
                .ok_or_else(|| {
                    CliError::Internal("the server answered StatFile without the file".into())
                })
        })
        .await
}

/// Downloads one file to its destination, continuing a partial download if there is
/// one to continue.
async fn fetch(
    session: &mut Session,
    target: &Target,
    options: &Options,
    transfer: &Transfer,
    warn: &dyn Fn(&str),
) -> Result<Downloaded, CliError> {
    let Target { info, destination } = target;
    if !options.force && tokio::fs::try_exists(destination).await.unwrap_or(false) {
        return Err(CliError::Refused(format!(
            "{} already exists; pass --force to replace it",
            destination.display()
        )));
    }
    let partial = Partial::beside(destination, &info.key);
    let origin = Origin::of(session.server(), info);
    let mut writer = open(&partial, origin, options.resume, transfer, warn).await?;
    let resumed_from = match receive(session, &mut writer, transfer, warn).await {
        Ok(offset) => (offset > 0).then_some(offset),
        Err(err) => {
            if writer.offset() > 0 {
                warn(&format!(
                    "kept {} of {} in {}; run the same command again to continue",
                    human_size(writer.offset()),
                    info.key,
                    writer.path().display()
                ));
            }
            return Err(err);
        }
    };
    let size = writer.offset();
    let filename = info.filename.clone();
    let key = writer.origin().key.clone();
    let sha256 = writer.finish(destination).await?;
    Ok(Downloaded {
        key,
        filename,
        path: destination.clone(),
        size,
        sha256,
        resumed_from,
    })
}

/// The partial to write `origin` into: the one an earlier run left when it can be
/// continued (as `resume` allows), else an empty one.
async fn open(
    partial: &Partial,
    origin: Origin,
    resume: Resume,
    transfer: &Transfer,
    warn: &dyn Fn(&str),
) -> Result<Writer, CliError> {
    let found = match resume {
        Resume::Never => Found::Nothing,
        Resume::Auto | Resume::Only => partial.inspect(&origin).await?,
    };
    let path = partial.path().display();
    match (found, resume) {
        (Found::Continuable(_), _) => partial.resume(origin, transfer).await,
        (Found::Nothing, Resume::Only) => Err(CliError::Refused(format!(
            "there is no partial download of {} to continue ({} does not exist)",
            origin.key, path
        ))),
        (Found::Stale { reason, .. }, Resume::Only) => Err(CliError::Refused(format!(
            "the partial download {path} cannot be continued: {reason}; run without --resume \
             to start over"
        ))),
        (Found::Stale { len, reason }, _) => {
            warn(&format!(
                "starting {} over: the {} in {path} cannot be continued: {reason}",
                origin.key,
                human_size(len)
            ));
            partial.start(origin).await
        }
        (Found::Nothing, _) => partial.start(origin).await,
    }
}

/// Asks for the bytes after those the partial holds, and appends them; returns the
/// offset they started at. If the server describes the file otherwise than the
/// partial's record (it was replaced since it was looked up), the partial starts over.
async fn receive(
    session: &mut Session,
    writer: &mut Writer,
    transfer: &Transfer,
    warn: &dyn Fn(&str),
) -> Result<u64, CliError> {
    let key = writer.origin().key.clone();
    // Twice at most: a file replaced once more in between is not worth chasing.
    for _ in 0..2 {
        let offset = writer.offset();
        let (info, mut stream) = open_stream(session, &key, offset).await?;
        let now = Origin::of(session.server(), &info);
        if now != *writer.origin() {
            writer.start_over(now).await?;
            if offset > 0 {
                warn(&format!(
                    "{key} changed on the server since it was looked up; starting over"
                ));
                continue;
            }
        }
        transfer.receiving(offset);
        while let Some(message) = stream.next().await {
            match message?.payload {
                Some(download_response::Payload::Chunk(chunk)) => {
                    writer.append(&chunk).await?;
                    transfer.transferred_up_to(writer.offset());
                }
                Some(download_response::Payload::Info(_)) => {
                    return Err(CliError::Internal(
                        "the server sent the file's info twice".into(),
                    ));
                }
                None => {}
            }
        }
        return Ok(offset);
    }
    Err(CliError::Refused(format!(
        "{key} keeps changing on the server; try again later"
    )))
}

/// A Download of `key` from `offset` on, and the file's description, its first message.
async fn open_stream(
    session: &mut Session,
    key: &str,
    offset: u64,
) -> Result<(FileInfo, Streaming<DownloadResponse>), CliError> {
    let request = &DownloadRequest {
        key: key.to_owned(),
        offset: (offset > 0).then_some(offset),
        ..Default::default()
    };
    let mut stream = session
        .call(|mut clients| async move {
            Ok(clients
                .storage
                .download(request.clone())
                .await?
                .into_inner())
        })
        .await?;
    match stream
        .next()
        .await
        .transpose()?
        .and_then(|first| first.payload)
    {
        Some(download_response::Payload::Info(info)) => Ok((info, stream)),
        _ => Err(CliError::Internal(
            "the server's download did not start with the file's info".into(),
        )),
    }
}
