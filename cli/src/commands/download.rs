//! `download`: streams a file into a temporary file next to its destination, checks its
//! SHA-256 against the one the server recorded at upload, and only then renames it into
//! place. A failed, corrupted or interrupted download leaves nothing behind, and never
//! a half-written file under the real name.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use strongbox_proto::storage::v1::{DownloadRequest, FileInfo, download_response};
use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;

use crate::client::StorageClient;
use crate::commands::Context;
use crate::errors::CliError;
use crate::output::human_size;
use crate::progress::Progress;
use crate::session::Session;

#[derive(Debug, Serialize)]
struct Downloaded {
    key: String,
    filename: String,
    path: PathBuf,
    size: u64,
    sha256: String,
}

pub async fn download(
    context: &Context,
    key: &str,
    output: Option<&Path>,
    force: bool,
) -> Result<(), CliError> {
    let mut session = Session::resume(context).await?;
    let progress = Progress::new(context.out.shows_progress());
    let progress = &progress;
    let downloaded = session
        .call(|clients| async move { receive(clients.storage, key, output, force, progress).await })
        .await?;
    context.out.result(&downloaded, || {
        format!(
            "saved {} to {} ({}, sha256 {})",
            downloaded.key,
            downloaded.path.display(),
            human_size(downloaded.size),
            downloaded.sha256
        )
    });
    Ok(())
}

async fn receive(
    mut storage: StorageClient,
    key: &str,
    output: Option<&Path>,
    force: bool,
    progress: &Progress,
) -> Result<Downloaded, CliError> {
    let request = DownloadRequest {
        key: key.to_owned(),
        ..Default::default()
    };
    let mut stream = storage.download(request).await?.into_inner();
    let info = match stream
        .next()
        .await
        .transpose()?
        .and_then(|first| first.payload)
    {
        Some(download_response::Payload::Info(info)) => info,
        _ => {
            return Err(CliError::Internal(
                "the server's download did not start with the file's info".into(),
            ));
        }
    };
    let destination = destination(output, &info);
    if !force && tokio::fs::try_exists(&destination).await.unwrap_or(false) {
        return Err(CliError::Refused(format!(
            "{} already exists; pass --force to replace it",
            destination.display()
        )));
    }

    let mut partial = PartialFile::create(&destination).await?;
    let transfer = progress.transfer(&info.filename, info.size, None);
    transfer.receiving();
    // Hashing on the runtime is fine here: a few milliseconds per chunk, interleaved
    // with waiting for the network anyway.
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    while let Some(message) = stream.next().await {
        match message?.payload {
            Some(download_response::Payload::Chunk(chunk)) => {
                hasher.update(&chunk);
                partial.write(&chunk).await?;
                received += chunk.len() as u64;
                transfer.sent_up_to(received);
            }
            Some(download_response::Payload::Info(_)) => {
                return Err(CliError::Internal(
                    "the server sent the file's info twice".into(),
                ));
            }
            None => {}
        }
    }
    transfer.done();

    let actual = hex::encode(hasher.finalize());
    if !actual.eq_ignore_ascii_case(&info.sha256) {
        return Err(CliError::ChecksumMismatch {
            key: info.key,
            expected: info.sha256,
            actual,
        });
    }
    partial.persist().await?;
    Ok(Downloaded {
        key: info.key,
        filename: info.filename,
        path: destination,
        size: received,
        sha256: actual,
    })
}

/// `-o PATH` as given, or inside it when it is a folder; else the original name in the
/// current folder.
fn destination(output: Option<&Path>, info: &FileInfo) -> PathBuf {
    match output {
        Some(path) if path.is_dir() => path.join(local_name(&info.filename, &info.key)),
        Some(path) => path.to_owned(),
        None => PathBuf::from(local_name(&info.filename, &info.key)),
    }
}

/// A name that is safe to create in a folder: the original name comes from whoever
/// uploaded the file, so it may hold a path (`../../.bashrc`), separators, or control
/// characters. Only its last component is used, and the key's (sanitized by the server)
/// when nothing usable is left.
fn local_name(filename: &str, key: &str) -> String {
    let usable = |name: &str| {
        let cleaned: String = name.chars().filter(|c| !c.is_control()).collect();
        let cleaned = cleaned.trim().to_owned();
        (!cleaned.is_empty() && cleaned != "." && cleaned != "..").then_some(cleaned)
    };
    let last = |name: &str| {
        name.rsplit(['/', '\\'])
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    usable(&last(filename))
        .or_else(|| usable(&last(key)))
        .unwrap_or_else(|| "download".to_owned())
}

/// The temporary file a download is written to. Dropped before [`PartialFile::persist`]
/// (an error, a checksum mismatch, Ctrl-C), it deletes itself.
struct PartialFile {
    file: Option<File>,
    temporary: PathBuf,
    destination: PathBuf,
}

impl PartialFile {
    async fn create(destination: &Path) -> Result<Self, CliError> {
        let folder = match destination.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = destination
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = folder.join(format!(".{name}.{}.part", uuid::Uuid::new_v4().simple()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
            .await
            .map_err(|err| CliError::file(&temporary, err))?;
        Ok(Self {
            file: Some(file),
            temporary,
            destination: destination.to_owned(),
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        let Some(file) = self.file.as_mut() else {
            return Err(CliError::Internal("write after persist".into()));
        };
        file.write_all(bytes)
            .await
            .map_err(|err| CliError::file(&self.temporary, err))
    }

    /// Flushes the bytes to disk, then renames the file into place.
    async fn persist(mut self) -> Result<(), CliError> {
        if let Some(mut file) = self.file.take() {
            let synced = async {
                file.flush().await?;
                file.sync_all().await
            };
            synced
                .await
                .map_err(|err| CliError::file(&self.temporary, err))?;
        }
        tokio::fs::rename(&self.temporary, &self.destination)
            .await
            .map_err(|err| CliError::file(&self.destination, err))?;
        self.temporary = PathBuf::new();
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.temporary.as_os_str().is_empty() {
            // One unlink; blocking the thread for it is cheaper than a task.
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_server_cannot_escape_the_folder() {
        let key = "3f1c/1700000000-ab12-report.pdf";
        assert_eq!(local_name("report.pdf", key), "report.pdf");
        assert_eq!(local_name("photos/2024/cat.jpg", key), "cat.jpg");
        assert_eq!(local_name("../../.bashrc", key), ".bashrc");
        assert_eq!(local_name("..\\..\\evil.exe", key), "evil.exe");
        assert_eq!(local_name("..", key), "1700000000-ab12-report.pdf");
        assert_eq!(local_name("bad\u{7}name\n", key), "badname");
        assert_eq!(local_name("", ""), "download");
    }
}
