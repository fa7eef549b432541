//! `uploads.json`: the resumable upload sessions this client has started and not yet
//! completed, so a rerun of `upload` continues where an interrupted one stopped.
//!
//! An entry is found by the server, the file's absolute path, its size and its
//! modification time: a file that changed since is a different file and starts over.
//! The entry also keeps the SHA-256 computed before the session began, so resuming a
//! large file does not read it twice (the server checks the hash on completion anyway).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::args::ServerUrl;
use crate::config_dir::ConfigDir;
use crate::errors::CliError;

const DAMAGED_ADVICE: &str = " to start interrupted uploads over";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpload {
    pub server: ServerUrl,
    pub path: PathBuf,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub modified_ns: u64,
    pub upload_id: String,
    pub sha256: String,
    /// The chunk size the session was started with (CreateUpload's limits decide it, and
    /// GetUploadStatus does not repeat them).
    pub chunk_size: u64,
}

/// Which file an entry is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    pub server: ServerUrl,
    pub path: PathBuf,
    pub size: u64,
    pub modified_ns: u64,
}

impl PendingUpload {
    fn is_for(&self, file: &FileIdentity) -> bool {
        self.server == file.server
            && self.path == file.path
            && self.size == file.size
            && self.modified_ns == file.modified_ns
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PendingFile {
    uploads: Vec<PendingUpload>,
}

pub struct PendingUploads {
    dir: ConfigDir,
}

impl PendingUploads {
    pub fn new(dir: ConfigDir) -> Self {
        Self { dir }
    }

    pub async fn find(&self, file: &FileIdentity) -> Result<Option<PendingUpload>, CliError> {
        Ok(self
            .read()
            .await?
            .uploads
            .into_iter()
            .find(|entry| entry.is_for(file)))
    }

    /// Records a session, replacing any older one for the same path.
    pub async fn remember(&self, entry: PendingUpload) -> Result<(), CliError> {
        self.update(|pending| {
            pending
                .uploads
                .retain(|old| !(old.server == entry.server && old.path == entry.path));
            pending.uploads.push(entry);
        })
        .await
    }

    pub async fn forget(&self, upload_id: &str) -> Result<(), CliError> {
        self.update(|pending| pending.uploads.retain(|entry| entry.upload_id != upload_id))
            .await
    }

    async fn read(&self) -> Result<PendingFile, CliError> {
        let path = self.dir.uploads_file();
        Ok(self
            .dir
            .read_json(&path, DAMAGED_ADVICE)
            .await?
            .unwrap_or_default())
    }

    /// Read-modify-write under the state lock; the file is deleted once it is empty.
    async fn update(&self, change: impl FnOnce(&mut PendingFile)) -> Result<(), CliError> {
        let _lock = self.dir.lock().await?;
        let mut pending = self.read().await?;
        change(&mut pending);
        let path = self.dir.uploads_file();
        if pending.uploads.is_empty() {
            self.dir.remove(&path).await.map(drop)
        } else {
            self.dir.write_json(&path, &pending).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, upload_id: &str) -> PendingUpload {
        PendingUpload {
            server: ServerUrl::default_server(),
            path: path.into(),
            size: 10,
            modified_ns: 7,
            upload_id: upload_id.into(),
            sha256: "ab".repeat(32),
            chunk_size: 1024,
        }
    }

    fn identity(entry: &PendingUpload) -> FileIdentity {
        FileIdentity {
            server: entry.server.clone(),
            path: entry.path.clone(),
            size: entry.size,
            modified_ns: entry.modified_ns,
        }
    }

    #[tokio::test]
    async fn entries_are_found_by_an_unchanged_file_and_forgotten() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = ConfigDir::resolve(Some(scratch.path().to_owned())).unwrap();
        let pending = PendingUploads::new(dir.clone());
        let first = entry("/data/a.bin", "one");
        pending.remember(first.clone()).await.unwrap();
        pending.remember(entry("/data/b.bin", "two")).await.unwrap();

        assert_eq!(
            pending.find(&identity(&first)).await.unwrap(),
            Some(first.clone())
        );
        let touched = FileIdentity {
            modified_ns: 8,
            ..identity(&first)
        };
        assert_eq!(pending.find(&touched).await.unwrap(), None);

        // A new session for the same path replaces the old one.
        pending
            .remember(entry("/data/a.bin", "three"))
            .await
            .unwrap();
        let found = pending.find(&identity(&first)).await.unwrap().unwrap();
        assert_eq!(found.upload_id, "three");

        pending.forget("three").await.unwrap();
        pending.forget("two").await.unwrap();
        assert!(!dir.uploads_file().exists());
    }
}
