//! Secret material generated on first start and kept in the data directory.
//!
//! A key file is never written in place: it is written whole to a temporary file beside
//! it (mode 0600), synced, and then hard-linked to its final name. The link fails if the
//! name exists, so when two processes start at once exactly one key wins and the other
//! reads it, and no process, crash or reader ever sees an empty or half-written key
//! (`rename` would be atomic too, but would silently replace a key another process had
//! just created and maybe already used). A file too short to be a key is refused rather
//! than used: an empty HMAC key makes every signature forgeable.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::config::MIN_SECRET_BYTES;

/// Why a key file on disk cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} holds {len} bytes, fewer than the {MIN_SECRET_BYTES} of a key: it is empty or truncated. \
     Restore it from a backup, or delete it to have a new key generated at start \
     (what the old key signed or derived will no longer match)",
    path.display()
)]
pub struct ShortKeyFile {
    pub path: PathBuf,
    pub len: usize,
}

/// Returns the contents of `path`, first creating it (mode 0600, parents included)
/// with `generate()` if it does not exist. When two processes race, the loser reads
/// the winner's file, so both end up with the same secret. A file shorter than
/// [`MIN_SECRET_BYTES`] is refused with an error that names it and says what to do.
pub fn read_or_create(
    path: &Path,
    generate: impl FnOnce() -> io::Result<String>,
) -> io::Result<String> {
    if let Some(existing) = read_existing(path)? {
        return Ok(existing);
    }
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|err| with_path(err, dir))?;
    let contents = generate()?;
    if write_new(path, contents.as_bytes())? {
        tracing::info!(path = %path.display(), "generated a new secret");
        return Ok(contents);
    }
    read_existing(path)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} vanished while it was being created", path.display()),
        )
    })
}

/// Creates `path` with exactly `contents` (mode 0600) unless it already exists:
/// returns `false`, leaving the existing file alone, if another process got there first.
/// Parents must exist. The file appears whole or not at all.
pub fn write_new(path: &Path, contents: &[u8]) -> io::Result<bool> {
    let dir = parent_dir(path);
    let temp = TempFile::create(dir, path)?;
    temp.write_synced(contents)?;
    let created = match std::fs::hard_link(&temp.path, path) {
        Ok(()) => true,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => false,
        Err(err) => return Err(with_path(err, path)),
    };
    drop(temp);
    if created {
        sync_dir(dir)?;
    }
    Ok(created)
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(io::Error::other)?;
    Ok(bytes)
}

/// The file's contents, `None` if it does not exist, an error if it is too short.
fn read_existing(path: &Path) -> io::Result<Option<String>> {
    let contents = match std::fs::read_to_string(path) {
        Ok(contents) => contents,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(with_path(err, path)),
    };
    let len = contents.trim().len();
    if len < MIN_SECRET_BYTES {
        let short = ShortKeyFile {
            path: path.to_owned(),
            len,
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, short));
    }
    Ok(Some(contents))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Makes the new directory entry durable, so a crash after start cannot lose a key
/// that has already signed something.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|err| with_path(err, dir))?;
    let _ = dir;
    Ok(())
}

fn with_path(err: io::Error, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// A uniquely named file beside the final one, removed when dropped (after the final
/// name has been linked to it, or on any error).
struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    fn create(dir: &Path, target: &Path) -> io::Result<Self> {
        let name = target
            .file_name()
            .map_or_else(|| "secret".into(), |name| name.to_string_lossy());
        let suffix = u64::from_le_bytes(random_bytes::<8>()?);
        let path = dir.join(format!(".{name}.{}.{suffix:016x}.tmp", std::process::id()));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(|err| with_path(err, &path))?;
        Ok(Self { path, file })
    }

    fn write_synced(&self, contents: &[u8]) -> io::Result<()> {
        let mut file = &self.file;
        file.write_all(contents)?;
        file.sync_all()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tag: &str) -> String {
        format!("{tag:0>64}")
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_secret_is_created_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/secret");
        let first = read_or_create(&path, || Ok(key("one"))).unwrap();
        let second = read_or_create(&path, || Ok(key("two"))).unwrap();
        assert_eq!(
            (first.as_str(), second.as_str()),
            (&*key("one"), &*key("one"))
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(entries(&dir.path().join("nested")), ["secret"]);
    }

    #[test]
    fn concurrent_creators_agree_on_one_secret_and_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.key");
        let start = std::sync::Barrier::new(16);
        let secrets: Vec<String> = std::thread::scope(|scope| {
            let creators: Vec<_> = (0..16)
                .map(|n| {
                    let (path, start) = (&path, &start);
                    scope.spawn(move || {
                        start.wait();
                        read_or_create(path, || Ok(key(&n.to_string()))).unwrap()
                    })
                })
                .collect();
            creators.into_iter().map(|c| c.join().unwrap()).collect()
        });
        assert!(secrets.iter().all(|secret| *secret == secrets[0]));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), secrets[0]);
        assert_eq!(entries(dir.path()), ["shared.key"]);
    }

    #[test]
    fn a_short_or_empty_key_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        for (name, contents) in [("empty.key", ""), ("short.key", "0123456789\n")] {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            let err = read_or_create(&path, || Ok(key("new"))).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            let message = err.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("delete it"), "{message}");
            // Refused, not replaced: the operator decides.
            assert_eq!(std::fs::read_to_string(&path).unwrap(), contents);
        }
    }

    #[test]
    fn write_new_never_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("once");
        assert!(write_new(&path, b"first").unwrap());
        assert!(!write_new(&path, b"second").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(entries(dir.path()), ["once"]);
    }
}
