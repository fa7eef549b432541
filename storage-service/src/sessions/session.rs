//! A resumable session as the protocol sees it: typed, validated once where the index
//! reads its row (`index/sessions.rs`), never a string or an `i64` past that point.

use std::time::Duration;

use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::StorageError;
use crate::files::NewFile;
use crate::names::{ObjectKey, Sha256Hex, UploadId};
use crate::policy::ContentType;
use crate::sink::Expectations;

/// Where a session is in its life. There is no "expired" state: expiry is a time, and
/// an expired session is simply not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Accepting chunks.
    Open,
    /// A CompleteUpload holds it until its claim lapses (see `claimed_until`).
    Completing,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Completing => "completing",
        }
    }

    pub fn from_stored(raw: &str) -> Result<Self, StorageError> {
        match raw {
            "open" => Ok(Self::Open),
            "completing" => Ok(Self::Completing),
            other => Err(StorageError::Internal(format!(
                "a stored session state is unknown: {other:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: UploadId,
    pub user: Uuid,
    pub key: ObjectKey,
    pub filename: String,
    pub content_type: ContentType,
    pub declared_size: Option<u64>,
    pub declared_sha256: Option<Sha256Hex>,
    /// The bytes acknowledged so far: the offset the next chunk starts at.
    pub received: u64,
    /// Bytes held against the user's quota (see `usage.rs`).
    pub reserved: u64,
    pub state: SessionState,
    /// Unix milliseconds.
    pub created_at: i64,
    pub expires_at: i64,
    /// Until when (unix ms) the CompleteUpload that moved it to `Completing` holds it.
    pub claimed_until: Option<i64>,
    /// The SHA-256 of the first `received` bytes, where the chunk store needs it kept.
    pub digest: Option<RunningDigest>,
}

impl Session {
    /// A new, empty session of `file`, open for `ttl` from `now_ms`.
    pub fn new(file: &NewFile, now_ms: i64, ttl: Duration, digest: Option<RunningDigest>) -> Self {
        Self {
            id: UploadId::generate(),
            user: file.user,
            key: file.key.clone(),
            filename: file.filename.clone(),
            content_type: file.content_type.clone(),
            declared_size: file.expect.size,
            declared_sha256: file.expect.sha256.clone(),
            received: 0,
            reserved: file.expect.size.unwrap_or(0),
            state: SessionState::Open,
            created_at: now_ms,
            expires_at: now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
            claimed_until: None,
            digest,
        }
    }

    /// The file this session becomes: size and checksum as declared, if they were.
    pub fn new_file(&self) -> NewFile {
        NewFile {
            user: self.user,
            key: self.key.clone(),
            filename: self.filename.clone(),
            content_type: self.content_type.clone(),
            expect: Expectations {
                max_bytes: u64::MAX,
                size: self.declared_size,
                sha256: self.declared_sha256.clone(),
            },
        }
    }
}

/// One acknowledged chunk, with its part's ETag where chunks are S3 parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub start: u64,
    pub length: u64,
    pub etag: Option<String>,
}

/// How many chunks a session has acknowledged, and how long its last one was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkTail {
    pub count: u64,
    pub last_length: Option<u64>,
}

/// A SHA-256 in progress that can be written to the database and continued by another
/// process (sha2's serialized hasher state: the chaining value, the block count and the
/// bytes of the unfinished block).
#[derive(Clone, Default)]
pub struct RunningDigest(Sha256);

impl RunningDigest {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Sha256Hex {
        Sha256Hex::from_digest(&self.0.finalize())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.serialize().to_vec()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        let corrupt =
            || StorageError::Internal("a session's stored digest state is corrupt".into());
        let state = SerializedState::<Sha256>::try_from(bytes).map_err(|_| corrupt())?;
        Sha256::deserialize(&state).map(Self).map_err(|_| corrupt())
    }
}

impl std::fmt::Debug for RunningDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunningDigest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A digest saved after every chunk and continued from the saved bytes, as replicas
    /// taking turns do, ends where one hasher fed everything ends — for cuts inside a
    /// block and on its boundary alike.
    #[test]
    fn a_digest_continued_from_its_saved_state_matches_one_pass() {
        let content: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for cuts in [
            &[0usize, 1, 63, 64, 65, 5000, 10_000][..],
            &[128, 640, 9999],
        ] {
            let mut saved = RunningDigest::default().to_bytes();
            let mut from = 0;
            for &cut in cuts.iter().chain([&content.len()]) {
                let mut digest = RunningDigest::from_bytes(&saved).unwrap();
                digest.update(&content[from..cut.max(from)]);
                saved = digest.to_bytes();
                from = cut.max(from);
            }
            let continued = RunningDigest::from_bytes(&saved).unwrap().finish();
            assert_eq!(
                continued,
                Sha256Hex::from_digest(&Sha256::digest(&content)),
                "{cuts:?}"
            );
        }
        assert!(RunningDigest::from_bytes(b"not a state").is_err());
    }

    #[test]
    fn states_read_back_as_written() {
        for state in [SessionState::Open, SessionState::Completing] {
            assert_eq!(SessionState::from_stored(state.as_str()).unwrap(), state);
        }
        assert!(SessionState::from_stored("expired").is_err());
    }
}
