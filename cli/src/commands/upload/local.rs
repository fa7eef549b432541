//! The local side of an upload: which files the given paths name, what they are called
//! on the server, and their SHA-256.
//!
//! A file named on the command line is uploaded even if it is a symbolic link (the user
//! pointed at it); inside a folder, links are skipped with a warning, since following
//! them could upload files from anywhere on the disk, or loop forever.

use std::fs::{self, Metadata};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};
use strongbox_proto::storage::v1::FileMetadata;
use tokio::io::AsyncReadExt;

use crate::args::ServerUrl;
use crate::config_dir::blocking;
use crate::errors::CliError;
use crate::pending_uploads::FileIdentity;
use crate::progress::Transfer;

/// What one read and one message carry: large enough to keep the pipe full, small
/// enough to stay far below the server's per-message limit (4 MiB by default).
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// A regular file to upload.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Absolute, to recognise the file on a later run from another folder.
    pub path: PathBuf,
    /// The path as the user would write it, for messages.
    pub shown: PathBuf,
    /// The name sent to the server: the file's name, or for a file inside a folder its
    /// path from the folder's parent, with `/` (the server sanitizes it for the key).
    pub name: String,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub modified_ns: u64,
    pub content_type: String,
}

impl LocalFile {
    fn new(path: PathBuf, shown: PathBuf, name: String, metadata: &Metadata) -> Self {
        let modified_ns = metadata
            .modified()
            .ok()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        let content_type = mime_guess::from_path(&name)
            .first_or_octet_stream()
            .essence_str()
            .to_owned();
        Self {
            path,
            shown,
            name,
            size: metadata.len(),
            modified_ns,
            content_type,
        }
    }

    /// Everything the server checks the bytes against.
    pub fn metadata(&self, sha256: &str) -> FileMetadata {
        FileMetadata {
            filename: self.name.clone(),
            content_type: self.content_type.clone(),
            size: Some(self.size),
            sha256: Some(sha256.to_owned()),
        }
    }

    pub fn identity(&self, server: &ServerUrl) -> FileIdentity {
        FileIdentity {
            server: server.clone(),
            path: self.path.clone(),
            size: self.size,
            modified_ns: self.modified_ns,
        }
    }

    pub async fn open(&self) -> Result<tokio::fs::File, CliError> {
        tokio::fs::File::open(&self.path)
            .await
            .map_err(|err| CliError::file(&self.shown, err))
    }
}

/// Something found under a folder that is not uploaded.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Found {
    pub files: Vec<LocalFile>,
    pub skipped: Vec<Skipped>,
}

/// The files `paths` name, folders expanded recursively in name order. A path that
/// does not exist fails the whole command before anything is sent.
pub async fn find(paths: Vec<PathBuf>) -> Result<Found, CliError> {
    // Walking folders is blocking file-system work.
    blocking(move || {
        let mut found = Found::default();
        for given in &paths {
            find_in(given, &mut found)?;
        }
        let mut seen = std::collections::HashSet::new();
        found.files.retain(|file| seen.insert(file.path.clone()));
        Ok(found)
    })
    .await
}

fn find_in(given: &Path, found: &mut Found) -> Result<(), CliError> {
    let failed = |err| CliError::file(given, err);
    let metadata = fs::metadata(given).map_err(failed)?;
    let absolute = fs::canonicalize(given).map_err(failed)?;
    let own_name = absolute
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    if metadata.is_file() {
        let file = LocalFile::new(absolute, given.to_owned(), own_name, &metadata);
        found.files.push(file);
    } else if metadata.is_dir() {
        walk(&absolute, given, &own_name, found);
    } else {
        found.skipped.push(Skipped {
            path: given.to_owned(),
            reason: "not a regular file or folder".into(),
        });
    }
    Ok(())
}

/// Adds the files below `dir`; `name` is the folder's name on the server ("" for `/`).
fn walk(dir: &Path, shown: &Path, name: &str, found: &mut Found) {
    let mut entries =
        match fs::read_dir(dir).and_then(|entries| entries.collect::<Result<Vec<_>, _>>()) {
            Ok(entries) => entries,
            Err(err) => {
                found.skipped.push(Skipped {
                    path: shown.to_owned(),
                    reason: format!("cannot read the folder: {err}"),
                });
                return;
            }
        };
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let child_name = if name.is_empty() {
            entry_name.clone()
        } else {
            format!("{name}/{entry_name}")
        };
        let child_shown = shown.join(&entry_name);
        let skip = |reason: String| Skipped {
            path: child_shown.clone(),
            reason,
        };
        // `file_type` and `symlink_metadata` describe the entry itself, not a link's target.
        match entry.file_type() {
            Ok(kind) if kind.is_symlink() => {
                found.skipped.push(skip("a symbolic link".into()));
            }
            Ok(kind) if kind.is_dir() => walk(&entry.path(), &child_shown, &child_name, found),
            Ok(kind) if kind.is_file() => match entry.metadata() {
                Ok(metadata) => {
                    let file = LocalFile::new(entry.path(), child_shown, child_name, &metadata);
                    found.files.push(file);
                }
                Err(err) => found.skipped.push(skip(err.to_string())),
            },
            Ok(_) => found.skipped.push(skip("not a regular file".into())),
            Err(err) => found.skipped.push(skip(err.to_string())),
        }
    }
}

/// The file's SHA-256 as lower-case hex, computed on the blocking pool (it reads the
/// whole file) while `transfer` shows how far it got.
pub async fn sha256(file: &LocalFile, transfer: &Transfer) -> Result<String, CliError> {
    transfer.hashing();
    let path = file.path.clone();
    let shown = file.shown.clone();
    let transfer = transfer.clone();
    blocking(move || {
        let failed = |err| CliError::file(&shown, err);
        let mut source = fs::File::open(&path).map_err(failed)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0; CHUNK_SIZE];
        loop {
            match source.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => {
                    hasher.update(&buffer[..read]);
                    transfer.hashed(read as u64);
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(failed(err)),
            }
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
}

/// The next `limit` bytes of `source`, fewer only at the end of the file.
pub async fn read_chunk(source: &mut tokio::fs::File, limit: usize) -> std::io::Result<Bytes> {
    let mut buffer = Vec::with_capacity(limit);
    (&mut *source)
        .take(limit as u64)
        .read_to_end(&mut buffer)
        .await?;
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn folders_are_walked_in_order_and_links_inside_them_skipped() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("photos");
        fs::create_dir_all(root.join("2024/summer")).unwrap();
        fs::write(root.join("b.txt"), "b").unwrap();
        fs::write(root.join("a.png"), "a").unwrap();
        fs::write(root.join("2024/summer/c.jpg"), "c").unwrap();
        std::os::unix::fs::symlink(root.join("a.png"), root.join("link.png")).unwrap();
        let single = scratch.path().join("notes.md");
        fs::write(&single, "# notes").unwrap();

        let found = find(vec![root.clone(), single, root.join("b.txt")])
            .await
            .unwrap();
        let names: Vec<&str> = found.files.iter().map(|file| file.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "photos/2024/summer/c.jpg",
                "photos/a.png",
                "photos/b.txt",
                "notes.md"
            ]
        );
        assert_eq!(found.files[1].content_type, "image/png");
        assert!(found.files.iter().all(|file| file.path.is_absolute()));
        assert_eq!(found.skipped.len(), 1);
        assert!(found.skipped[0].path.ends_with("link.png"));
    }

    #[tokio::test]
    async fn a_missing_path_fails_before_anything_is_sent() {
        let scratch = tempfile::tempdir().unwrap();
        let missing = find(vec![scratch.path().join("nope")]).await;
        assert!(matches!(missing, Err(CliError::File { .. })));
    }
}
