//! The partial file a download is written to, kept between runs so that an interrupted
//! download continues where it stopped instead of starting over.
//!
//! It sits next to the destination, so the final rename stays on one file system, under
//! a name derived from the destination and the key (`.report.pdf.3f1c09ab12de.part`):
//! the same command finds it again. Beside it, `….part.json` records which file its
//! bytes begin: the server, the key, and the size and SHA-256 the server gave when the
//! first byte was written. A partial is continued only while the server still describes
//! the key that way; one of another version of the file, or without a record, starts
//! over.
//!
//! Nothing on disk is trusted beyond that: before the file is renamed into place, the
//! whole of it must hash to the server's SHA-256 (the bytes already on disk are hashed
//! first, the new ones as they arrive), and a mismatch deletes the partial. An
//! interrupted download (Ctrl-C, a lost connection, a crash) keeps its bytes; one that
//! received none leaves nothing behind. The partial is locked while it is written, so
//! two clients never write it at once.

use std::fs::{self, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use strongbox_proto::storage::v1::FileInfo;
use tokio::io::AsyncWriteExt;

use crate::args::ServerUrl;
use crate::config_dir::blocking;
use crate::errors::CliError;
use crate::progress::Transfer;

/// What one read of the bytes already on disk takes.
const READ_SIZE: usize = 1024 * 1024;

/// Which file a partial's bytes are the beginning of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub server: ServerUrl,
    pub key: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

impl Origin {
    pub fn of(server: &ServerUrl, info: &FileInfo) -> Self {
        Self {
            server: server.clone(),
            key: info.key.clone(),
            size: info.size,
            sha256: info.sha256.to_ascii_lowercase(),
        }
    }
}

/// What an earlier run left for a download.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// No bytes worth keeping.
    Nothing,
    /// `len` bytes of this very file.
    Continuable(u64),
    /// `len` bytes that cannot be trusted to begin this file, and why.
    Stale { len: u64, reason: &'static str },
}

/// Where a download's partial file and its record live.
#[derive(Debug, Clone)]
pub struct Partial {
    bytes: PathBuf,
    record: PathBuf,
}

impl Partial {
    /// The partial of `key` downloading to `destination`.
    pub fn beside(destination: &Path, key: &str) -> Self {
        let folder = match destination.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = destination
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Six bytes of the key's hash tell apart the keys that would land on one name.
        let tag = hex::encode(&Sha256::digest(key.as_bytes())[..6]);
        let bytes = folder.join(format!(".{name}.{tag}.part"));
        let record = folder.join(format!(".{name}.{tag}.part.json"));
        Self { bytes, record }
    }

    pub fn path(&self) -> &Path {
        &self.bytes
    }

    /// Whether the bytes here can be continued as the beginning of `origin`.
    pub async fn inspect(&self, origin: &Origin) -> Result<Found, CliError> {
        let len = match tokio::fs::metadata(&self.bytes).await {
            Ok(metadata) => metadata.len(),
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Found::Nothing),
            Err(err) => return Err(CliError::file(&self.bytes, err)),
        };
        if len == 0 {
            return Ok(Found::Nothing);
        }
        // A record that is missing or unreadable says nothing: the bytes are unknown.
        let recorded = tokio::fs::read(&self.record)
            .await
            .ok()
            .and_then(|text| serde_json::from_slice::<Origin>(&text).ok());
        let stale = |reason| Ok(Found::Stale { len, reason });
        match recorded {
            None => stale("there is no record of which file they begin"),
            Some(recorded) if recorded.key != origin.key || recorded.server != origin.server => {
                stale("they begin another file")
            }
            Some(recorded) if recorded != *origin => {
                stale("the file on the server has changed since (its size or SHA-256 differs)")
            }
            Some(_) if len > origin.size => stale("there are more of them than the file holds"),
            Some(_) => Ok(Found::Continuable(len)),
        }
    }

    /// Empties the partial (whatever it held) and records `origin` for it.
    pub async fn start(&self, origin: Origin) -> Result<Writer, CliError> {
        let (bytes, record) = (self.bytes.clone(), self.record.clone());
        let record_text = encode(&origin)?;
        let file = blocking(move || {
            let file = open_locked(&bytes, true)?;
            file.set_len(0).map_err(|err| CliError::file(&bytes, err))?;
            fs::write(&record, record_text).map_err(|err| CliError::file(&record, err))?;
            Ok(file)
        })
        .await?;
        Ok(Writer::new(self.clone(), origin, file, Sha256::new(), 0))
    }

    /// Opens the partial to continue it, hashing the bytes already there while
    /// `transfer` shows how far it got.
    pub async fn resume(&self, origin: Origin, transfer: &Transfer) -> Result<Writer, CliError> {
        transfer.hashing();
        let bytes = self.bytes.clone();
        let transfer = transfer.clone();
        let (file, hasher, len) = blocking(move || {
            let mut file = open_locked(&bytes, false)?;
            let failed = |err| CliError::file(&bytes, err);
            let mut hasher = Sha256::new();
            let mut len = 0u64;
            let mut buffer = vec![0; READ_SIZE];
            loop {
                match file.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(read) => {
                        hasher.update(&buffer[..read]);
                        len += read as u64;
                        transfer.hashed(read as u64);
                    }
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    Err(err) => return Err(failed(err)),
                }
            }
            Ok((file, hasher, len))
        })
        .await?;
        if len > origin.size {
            // Grown since it was inspected, by something that ignores the lock.
            drop(file);
            return self.start(origin).await;
        }
        Ok(Writer::new(self.clone(), origin, file, hasher, len))
    }

    /// Deletes the partial and its record; either may be gone already.
    fn remove(&self) {
        // Two unlinks; blocking the thread for them is cheaper than a task.
        let _ = fs::remove_file(&self.bytes);
        let _ = fs::remove_file(&self.record);
    }
}

fn encode(origin: &Origin) -> Result<Vec<u8>, CliError> {
    serde_json::to_vec_pretty(origin)
        .map_err(|err| CliError::Internal(format!("cannot encode a download's record: {err}")))
}

/// Opens the partial for appending (creating it when `create`), locked against other
/// clients.
fn open_locked(path: &Path, create: bool) -> Result<fs::File, CliError> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(create)
        .open(path)
        .map_err(|err| CliError::file(path, err))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(CliError::Refused(format!(
            "another strongbox-cli is downloading into {}; wait for it to finish",
            path.display()
        ))),
        Err(TryLockError::Error(err)) => Err(CliError::file(path, err)),
    }
}

/// A partial open for the bytes that follow its first [`Writer::offset`], with the
/// SHA-256 of those already in it. Dropped before [`Writer::finish`] (an error, Ctrl-C),
/// it keeps its bytes for the next run, unless it has none.
pub struct Writer {
    partial: Partial,
    origin: Origin,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    len: u64,
    finished: bool,
}

impl Writer {
    fn new(partial: Partial, origin: Origin, file: fs::File, hasher: Sha256, len: u64) -> Self {
        Self {
            partial,
            origin,
            file: Some(tokio::fs::File::from_std(file)),
            hasher,
            len,
            finished: false,
        }
    }

    /// How many bytes the partial holds, and so where the download continues.
    pub fn offset(&self) -> u64 {
        self.len
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn path(&self) -> &Path {
        self.partial.path()
    }

    pub async fn append(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        let Some(file) = self.file.as_mut() else {
            return Err(CliError::Internal(
                "write after the download finished".into(),
            ));
        };
        // tokio's File returns from a write once the bytes are handed to a blocking
        // thread; the flush waits for that write, so the bytes counted here are on disk
        // when the writer is dropped (Ctrl-C, an error) and the next run finds them.
        let written = async {
            file.write_all(bytes).await?;
            file.flush().await
        };
        written
            .await
            .map_err(|err| CliError::file(&self.partial.bytes, err))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Empties the partial to begin `origin` instead: the file changed on the server.
    pub async fn start_over(&mut self, origin: Origin) -> Result<(), CliError> {
        let Some(file) = self.file.as_mut() else {
            return Err(CliError::Internal(
                "restart after the download finished".into(),
            ));
        };
        file.set_len(0)
            .await
            .map_err(|err| CliError::file(&self.partial.bytes, err))?;
        tokio::fs::write(&self.partial.record, encode(&origin)?)
            .await
            .map_err(|err| CliError::file(&self.partial.record, err))?;
        self.origin = origin;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    /// Checks the whole file against its origin and renames it to `destination`;
    /// returns its SHA-256. Bytes that do not hash to the origin's SHA-256 are deleted;
    /// a file still short of its size is kept, to be continued.
    pub async fn finish(mut self, destination: &Path) -> Result<String, CliError> {
        if self.len < self.origin.size {
            return Err(CliError::Incomplete {
                key: self.origin.key.clone(),
                received: self.len,
                size: self.origin.size,
            });
        }
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if actual != self.origin.sha256 {
            self.file = None;
            self.partial.remove();
            self.finished = true;
            return Err(CliError::ChecksumMismatch {
                key: self.origin.key.clone(),
                expected: self.origin.sha256.clone(),
                actual,
            });
        }
        self.persist(destination).await?;
        Ok(actual)
    }

    /// Flushes the bytes to disk, renames the partial into place, and drops its record.
    async fn persist(&mut self, destination: &Path) -> Result<(), CliError> {
        let bytes = &self.partial.bytes;
        if let Some(mut file) = self.file.take() {
            let synced = async {
                file.flush().await?;
                file.sync_all().await
            };
            synced.await.map_err(|err| CliError::file(bytes, err))?;
        }
        tokio::fs::rename(bytes, destination)
            .await
            .map_err(|err| CliError::file(destination, err))?;
        self.finished = true;
        let _ = tokio::fs::remove_file(&self.partial.record).await;
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.finished && self.len == 0 {
            self.partial.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Progress;

    fn origin_of(content: &[u8]) -> Origin {
        Origin {
            server: ServerUrl::default_server(),
            key: "3f1c/1700000000-ab12-report.pdf".into(),
            size: content.len() as u64,
            sha256: hex::encode(Sha256::digest(content)),
        }
    }

    fn transfer() -> Transfer {
        Progress::new(false).transfer("report.pdf", 0, None)
    }

    fn names_in(folder: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_partial_is_named_after_its_destination_and_key() {
        let destination = Path::new("/data/report.pdf");
        let first = Partial::beside(destination, "a/1-x-report.pdf");
        assert_eq!(
            first.path(),
            Partial::beside(destination, "a/1-x-report.pdf").path()
        );
        assert_ne!(
            first.path(),
            Partial::beside(destination, "a/2-y-report.pdf").path()
        );
        let name = first.path().file_name().unwrap().to_string_lossy();
        assert!(
            name.starts_with(".report.pdf.") && name.ends_with(".part"),
            "{name}"
        );
        assert_eq!(first.path().parent(), Some(Path::new("/data")));
        let here = Partial::beside(Path::new("report.pdf"), "k");
        assert_eq!(here.path().parent(), Some(Path::new(".")));
    }

    #[tokio::test]
    async fn an_interrupted_partial_continues_and_is_checked_whole() {
        let scratch = tempfile::tempdir().unwrap();
        let destination = scratch.path().join("report.pdf");
        let content = b"the whole of the file, in two runs".to_vec();
        let origin = origin_of(&content);
        let partial = Partial::beside(&destination, &origin.key);

        let mut first = partial.start(origin.clone()).await.unwrap();
        first.append(&content[..10]).await.unwrap();
        drop(first);
        assert_eq!(
            partial.inspect(&origin).await.unwrap(),
            Found::Continuable(10)
        );

        let mut second = partial.resume(origin.clone(), &transfer()).await.unwrap();
        assert_eq!(second.offset(), 10);
        second.append(&content[10..]).await.unwrap();
        assert_eq!(second.finish(&destination).await.unwrap(), origin.sha256);
        assert_eq!(fs::read(&destination).unwrap(), content);
        assert_eq!(names_in(scratch.path()), ["report.pdf"]);
    }

    #[tokio::test]
    async fn bytes_of_another_version_or_of_unknown_origin_are_stale() {
        let scratch = tempfile::tempdir().unwrap();
        let destination = scratch.path().join("report.pdf");
        let origin = origin_of(b"version one");
        let partial = Partial::beside(&destination, &origin.key);
        let mut writer = partial.start(origin.clone()).await.unwrap();
        writer.append(b"version").await.unwrap();
        drop(writer);

        let replaced = Origin {
            sha256: origin_of(b"version two").sha256,
            ..origin.clone()
        };
        let found = partial.inspect(&replaced).await.unwrap();
        assert!(matches!(found, Found::Stale { len: 7, .. }), "{found:?}");
        let shorter = Origin {
            size: 3,
            ..origin.clone()
        };
        assert!(matches!(
            partial.inspect(&shorter).await.unwrap(),
            Found::Stale { .. }
        ));

        fs::remove_file(&partial.record).unwrap();
        assert!(matches!(
            partial.inspect(&origin).await.unwrap(),
            Found::Stale { .. }
        ));

        // Starting over empties the bytes and records the new origin.
        drop(partial.start(replaced.clone()).await.unwrap());
        assert_eq!(partial.inspect(&replaced).await.unwrap(), Found::Nothing);
    }

    #[tokio::test]
    async fn corrupted_bytes_are_deleted_and_a_short_file_is_kept() {
        let scratch = tempfile::tempdir().unwrap();
        let destination = scratch.path().join("report.pdf");
        let content = b"0123456789".to_vec();
        let origin = origin_of(&content);
        let partial = Partial::beside(&destination, &origin.key);

        let mut writer = partial.start(origin.clone()).await.unwrap();
        writer.append(&content[..4]).await.unwrap();
        let short = writer.finish(&destination).await.unwrap_err();
        assert!(
            matches!(short, CliError::Incomplete { received: 4, .. }),
            "{short}"
        );
        assert_eq!(
            partial.inspect(&origin).await.unwrap(),
            Found::Continuable(4)
        );

        // A byte flipped on disk since: the whole file's hash tells.
        let mut on_disk = fs::read(partial.path()).unwrap();
        on_disk[1] ^= 0xff;
        fs::write(partial.path(), on_disk).unwrap();
        let mut writer = partial.resume(origin.clone(), &transfer()).await.unwrap();
        writer.append(&content[4..]).await.unwrap();
        let corrupted = writer.finish(&destination).await.unwrap_err();
        assert!(
            matches!(corrupted, CliError::ChecksumMismatch { .. }),
            "{corrupted}"
        );
        assert!(names_in(scratch.path()).is_empty());
    }

    #[tokio::test]
    async fn a_partial_without_bytes_leaves_nothing_and_a_locked_one_is_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let destination = scratch.path().join("report.pdf");
        let origin = origin_of(b"content");
        let partial = Partial::beside(&destination, &origin.key);

        let writer = partial.start(origin.clone()).await.unwrap();
        let second = partial.start(origin.clone()).await.err().unwrap();
        assert!(
            second.to_string().contains("another strongbox-cli"),
            "{second}"
        );
        drop(writer);
        assert!(names_in(scratch.path()).is_empty());
    }
}
