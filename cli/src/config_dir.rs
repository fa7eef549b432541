//! The client's state directory (`~/.config/strongbox` by default): `credentials.json`
//! and `uploads.json`.
//!
//! Both files hold secrets or pointers to them, so every write creates a new file with
//! mode 0600 from the start (never a chmod afterwards, which would leave a window where
//! the file is readable) and renames it over the old one, so a crash mid-write never
//! leaves half a file. Several `strongbox-cli` processes may run at once; read-modify-write
//! sequences hold an advisory lock on `state.lock`.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use directories::ProjectDirs;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::errors::CliError;

#[derive(Debug, Clone)]
pub struct ConfigDir {
    root: PathBuf,
}

/// Held while a read-modify-write of the state runs; dropping it unlocks.
#[must_use]
pub struct StateLock {
    _file: File,
}

impl ConfigDir {
    /// `explicit` (from `--config-dir` / `STRONGBOX_CONFIG_DIR`), else the platform's
    /// config directory for the user.
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Self, CliError> {
        explicit
            .or_else(|| {
                ProjectDirs::from("", "", "strongbox").map(|dirs| dirs.config_dir().to_owned())
            })
            .map(|root| Self { root })
            .ok_or_else(|| {
                CliError::Refused(
                    "there is no home directory to keep credentials in; pass --config-dir DIR"
                        .into(),
                )
            })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn credentials_file(&self) -> PathBuf {
        self.root.join("credentials.json")
    }

    pub fn uploads_file(&self) -> PathBuf {
        self.root.join("uploads.json")
    }

    /// Reads and parses a JSON state file; `None` when it does not exist.
    pub async fn read_json<T: DeserializeOwned>(
        &self,
        path: &Path,
        advice: &'static str,
    ) -> Result<Option<T>, CliError> {
        let text = match tokio::fs::read(path).await {
            Ok(text) => text,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(CliError::file(path, err)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|err| CliError::DamagedState {
                path: path.to_owned(),
                detail: err.to_string(),
                advice,
            })
    }

    /// Replaces `path` with `value` as JSON, readable by the user only.
    pub async fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), CliError> {
        let mut text = serde_json::to_vec_pretty(value)
            .map_err(|err| CliError::Internal(format!("cannot encode state: {err}")))?;
        text.push(b'\n');
        let root = self.root.clone();
        let path = path.to_owned();
        blocking(move || write_private(&root, &path, &text)).await
    }

    /// Deletes `path`; true if it existed.
    pub async fn remove(&self, path: &Path) -> Result<bool, CliError> {
        match tokio::fs::remove_file(path).await {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(false),
            Err(err) => Err(CliError::file(path, err)),
        }
    }

    /// Waits for the exclusive lock on the state (another `strongbox-cli` may hold it
    /// for as long as one Refresh call takes).
    pub async fn lock(&self) -> Result<StateLock, CliError> {
        let root = self.root.clone();
        // flock blocks the thread while it waits, so it waits off the runtime.
        blocking(move || {
            create_private_dir(&root)?;
            let path = root.join("state.lock");
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(|err| CliError::file(&path, err))?;
            file.lock().map_err(|err| CliError::file(&path, err))?;
            Ok(StateLock { _file: file })
        })
        .await
    }
}

/// Runs blocking file-system work on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CliError> + Send + 'static,
) -> Result<T, CliError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| CliError::Internal(format!("a background task failed: {err}")))?
}

fn create_private_dir(root: &Path) -> Result<(), CliError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|err| CliError::file(root, err))
}

/// Writes `text` to a fresh 0600 file next to `path`, flushes it to disk, then renames
/// it over `path`.
fn write_private(root: &Path, path: &Path, text: &[u8]) -> Result<(), CliError> {
    create_private_dir(root)?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = root.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)
        .and_then(|mut file| {
            file.write_all(text)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&staging, path));
    written.map_err(|err| {
        let _ = std::fs::remove_file(&staging);
        CliError::file(path, err)
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn state_files_are_private_and_replaced_whole() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = ConfigDir::resolve(Some(scratch.path().join("nested/strongbox"))).unwrap();
        let path = dir.credentials_file();
        dir.write_json(&path, &vec!["first"]).await.unwrap();
        dir.write_json(&path, &vec!["second"]).await.unwrap();

        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let read: Option<Vec<String>> = dir.read_json(&path, "").await.unwrap();
        assert_eq!(read, Some(vec!["second".to_owned()]));
        // No staging files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn a_missing_file_is_none_and_a_damaged_one_an_error() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = ConfigDir::resolve(Some(scratch.path().to_owned())).unwrap();
        let path = dir.uploads_file();
        let missing: Option<Vec<String>> = dir.read_json(&path, "").await.unwrap();
        assert!(missing.is_none());
        std::fs::write(&path, "{not json").unwrap();
        let damaged = dir.read_json::<Vec<String>>(&path, "").await;
        assert!(matches!(damaged, Err(CliError::DamagedState { .. })));
    }
}
