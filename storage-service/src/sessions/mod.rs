//! Resumable uploads for clients that cannot client-stream (browsers over grpc-web):
//! CreateUpload, then UploadChunk at increasing offsets, GetUploadStatus to find where
//! to continue, and CompleteUpload or AbortUpload.
//!
//! Nothing of a session lives in a process: its row, its acknowledged chunks, its
//! running SHA-256 and the chunks being stored right now are all in the index, so any
//! replica can serve any call of it, and a replica dying loses nothing acknowledged.
//! Every acknowledged chunk is recorded in the compare-and-set that advances the
//! session's offset; chunks sent ahead are coordinated in `storing.rs`; where the bytes
//! go is the chunk store's business (`chunk_store.rs`). Completion and removal are
//! claimed in the index, so two replicas never complete or abort one upload.

mod chunk_store;
mod session;
mod storing;

use std::time::Duration;

use bytes::Bytes;
use strongbox_proto::storage::v1::{CreateUploadResponse, FileMetadata, GetUploadStatusResponse};
use uuid::Uuid;

pub use chunk_store::{ChunkStore, S3Parts, Staging};
pub use session::{Chunk, ChunkTail, RunningDigest, Session, SessionState};

use crate::error::StorageError;
use crate::files::{NewFile, file_row, now_ms, timestamp_ms};
use crate::index::{FileRow, Index, Removal};
use crate::multipart::CLEANUP_CLAIM;
use crate::names::UploadId;
use crate::sink::UploadSink;
use crate::usage::Limits;
use storing::{Lookahead, Storing, open};

/// How long a CompleteUpload holds its session. Completing is one request to S3 (or a
/// local copy) and an index write; a completer that died is taken over after this.
const COMPLETION_CLAIM: Duration = Duration::from_secs(120);

pub struct Sessions {
    index: Index,
    chunks: ChunkStore,
    storing: Storing,
    limits: Limits,
    /// The largest file (`MAX_UPLOAD_BYTES`).
    max_bytes: u64,
    max_chunk_bytes: u64,
    ttl: Duration,
}

/// Where an accepted chunk goes.
struct Placement {
    /// The session as of the chunk's arrival (or of its predecessor's commit).
    session: Session,
    /// Sent ahead: the part number (0-based) after its predecessor's, which it must
    /// wait for. `None`: it takes the session's next part.
    after: Option<u64>,
}

impl Sessions {
    pub fn new(
        index: Index,
        chunks: ChunkStore,
        limits: Limits,
        max_bytes: u64,
        max_chunk_bytes: u64,
        ttl: Duration,
    ) -> Self {
        Self {
            index,
            chunks,
            storing: Storing::default(),
            limits,
            max_bytes,
            max_chunk_bytes,
            ttl,
        }
    }

    pub async fn create(&self, file: NewFile) -> Result<CreateUploadResponse, StorageError> {
        let begun = self.chunks.begin(&file).await?;
        let digest = self.chunks.keeps_digest().then(RunningDigest::default);
        let session = Session::new(&file, now_ms(), self.ttl, digest);
        if let Err(err) = self.index.admit_session(&session, &self.limits).await {
            self.chunks.abandon(&session.key, begun).await;
            return Err(err);
        }
        tracing::info!(upload_id = %session.id, "upload session created");
        Ok(CreateUploadResponse {
            upload_id: session.id.to_string(),
            max_chunk_size: self.max_chunk_bytes,
            expires_at: Some(timestamp_ms(session.expires_at)),
            min_chunk_size: self.chunks.min_chunk_bytes(),
        })
    }

    /// Stores `data` at `offset` and returns the session's new length. Bytes the session
    /// already has are acknowledged without being stored again.
    ///
    /// A chunk sent while the one before it is still on its way (see `storing.rs`) is
    /// stored right away — on S3 as the part after its predecessor's — and committed
    /// once its predecessor is: sending, storing and committing overlap across the two.
    pub async fn append(
        &self,
        user: Uuid,
        id: UploadId,
        offset: u64,
        data: Bytes,
    ) -> Result<u64, StorageError> {
        let length = data.len() as u64;
        if length > self.max_chunk_bytes {
            return Err(StorageError::MessageTooLarge {
                limit: self.max_chunk_bytes,
            });
        }
        let end = offset.checked_add(length).ok_or_else(|| {
            StorageError::InvalidArgument(format!(
                "offset {offset} is past the end of any file; send the offset GetUploadStatus gives"
            ))
        })?;
        let session = open(&self.index, user, id).await?;
        if end <= session.received {
            return Ok(session.received);
        }
        if end > self.max_bytes {
            return Err(StorageError::TooLarge {
                limit: self.max_bytes,
            });
        }
        if let Some(declared) = session.declared_size.filter(|&size| end > size) {
            return Err(StorageError::SizeMismatch {
                declared,
                received: end,
            });
        }
        // At most one chunk ahead may have a predecessor on its way; one further off,
        // or one overlapping what the session holds, is a client's mistake.
        let ahead = offset.wrapping_sub(session.received);
        if offset != session.received && (offset < session.received || ahead > self.max_chunk_bytes)
        {
            return Err(not_next(session.received, offset));
        }
        // Admitted before it may wait for a predecessor: the chunks of one user waiting
        // (and polling the index) are as many as the uploads it may have in progress.
        let chunk = self.index.admit_chunk(user, id, end, &self.limits).await?;
        let appended = match self.place(user, session, offset, end).await {
            Ok(Ok(placement)) => self.store_and_commit(user, placement, offset, data).await,
            Ok(Err(already)) => Ok(already),
            Err(err) => Err(err),
        };
        chunk.end().await;
        appended
    }

    /// Where a chunk at `offset` (the session's end, or within one chunk past it) goes,
    /// or (as the inner `Err`) the session's length if it turned out to hold the chunk
    /// already.
    async fn place(
        &self,
        user: Uuid,
        session: Session,
        offset: u64,
        end: u64,
    ) -> Result<Result<Placement, u64>, StorageError> {
        let mut session = session;
        if offset != session.received {
            match self
                .storing
                .predecessor(&self.index, user, session.id, offset)
                .await?
            {
                Lookahead::Predecessor { part } => {
                    return Ok(Ok(Placement {
                        session,
                        after: Some(part + 1),
                    }));
                }
                Lookahead::Missing(now) => return Err(not_next(now.received, offset)),
                Lookahead::Reached(now) if end <= now.received => return Ok(Err(now.received)),
                Lookahead::Reached(now) if now.received != offset => {
                    return Err(not_next(now.received, offset));
                }
                Lookahead::Reached(now) => session = now,
            }
        }
        Ok(Ok(Placement {
            session,
            after: None,
        }))
    }

    /// Stores a chunk that passed every check and commits it to the session, after its
    /// predecessor if it was sent ahead.
    async fn store_and_commit(
        &self,
        user: Uuid,
        placement: Placement,
        offset: u64,
        data: Bytes,
    ) -> Result<u64, StorageError> {
        let Placement { session, after } = placement;
        let id = session.id;
        let length = data.len() as u64;
        let part = match after {
            Some(part) => part,
            None => {
                let tail = self.index.chunk_tail(id).await?;
                self.chunks.check_follows(tail)?;
                tail.count
            }
        };
        let announcement = self
            .storing
            .announce(&self.index, id, offset + length, part)
            .await?;
        let stored = self
            .chunks
            .put(&session, part, offset, data.clone())
            .await?;
        let session = if after.is_some() {
            match self.follow(user, id, offset, part).await {
                Ok(session) => session,
                Err(err) => {
                    self.chunks.discard(stored).await;
                    return Err(err);
                }
            }
        } else {
            session
        };
        let digest = match session.digest {
            Some(digest) => Some(continue_digest(digest, data).await?),
            None => None,
        };
        let chunk = Chunk {
            start: offset,
            length,
            etag: stored.etag.clone(),
        };
        match self
            .index
            .commit_chunk(id, &chunk, digest.as_ref(), announcement.token())
            .await?
        {
            Some(new_length) => {
                announcement.committed();
                Ok(new_length)
            }
            None => {
                self.chunks.discard(stored).await;
                let now = self.index.session(user, id, now_ms()).await?;
                Err(StorageError::FailedPrecondition(format!(
                    "another chunk was stored at this offset first; the session now holds {} bytes",
                    now.received
                )))
            }
        }
    }

    /// Waits for the predecessor of a chunk stored ahead as part `part`, and returns the
    /// session if the chunk may commit now: the session ends where it starts and its
    /// last part is the one before.
    async fn follow(
        &self,
        user: Uuid,
        id: UploadId,
        offset: u64,
        part: u64,
    ) -> Result<Session, StorageError> {
        let session = self
            .storing
            .after_predecessor(&self.index, user, id, offset)
            .await?;
        if session.received != offset {
            return Err(not_next(session.received, offset));
        }
        let tail = self.index.chunk_tail(id).await?;
        self.chunks.check_follows(tail)?;
        if tail.count != part {
            return Err(not_next(session.received, offset));
        }
        Ok(session)
    }

    pub async fn status(
        &self,
        user: Uuid,
        id: UploadId,
    ) -> Result<GetUploadStatusResponse, StorageError> {
        let session = self.index.session(user, id, now_ms()).await?;
        Ok(GetUploadStatusResponse {
            upload_id: session.id.to_string(),
            offset: session.received,
            expires_at: Some(timestamp_ms(session.expires_at)),
            metadata: Some(FileMetadata {
                filename: session.filename,
                content_type: session.content_type.as_str().to_owned(),
                size: session.declared_size,
                sha256: session.declared_sha256.map(|sha| sha.as_str().to_owned()),
            }),
        })
    }

    /// Turns the session's chunks into the file. Locally the bytes pass through the
    /// sink `open_sink` gives (see [`ChunkStore::assemble`]).
    ///
    /// A failure after the object was assembled (the index) leaves the session open
    /// with the object in place, so CompleteUpload can simply be called again; a session
    /// removed instead removes the object.
    pub async fn complete(
        &self,
        user: Uuid,
        id: UploadId,
        open_sink: impl FnOnce(&NewFile) -> UploadSink,
    ) -> Result<FileRow, StorageError> {
        let now = now_ms();
        let session = self.index.session(user, id, now).await?;
        if let Some(declared) = session
            .declared_size
            .filter(|&size| size != session.received)
        {
            return Err(StorageError::FailedPrecondition(format!(
                "the session holds {} of the {declared} declared bytes; send the rest from offset {} first",
                session.received, session.received
            )));
        }
        let until = now + COMPLETION_CLAIM.as_millis() as i64;
        if !self.index.claim_completion(id, now, until).await? {
            return Err(being_completed());
        }
        let chunks = self.index.chunks(id).await?;
        let assembled = match self.chunks.assemble(&session, chunks, open_sink).await {
            Ok(assembled) => assembled,
            // The bytes are not what was declared: keeping them would only fail again.
            Err(err @ StorageError::ChecksumMismatch { .. }) => {
                self.discard_completing(id).await;
                return Err(err);
            }
            Err(err) => {
                self.index.reopen(id).await?;
                return Err(err);
            }
        };
        if let Some(declared) = session
            .declared_sha256
            .as_ref()
            .filter(|&declared| *declared != assembled.sha256)
        {
            self.discard_completing(id).await;
            return Err(StorageError::ChecksumMismatch {
                declared: declared.as_str().to_owned(),
                actual: assembled.sha256.as_str().to_owned(),
            });
        }
        let row = file_row(
            &session.new_file(),
            assembled.size,
            assembled.sha256.as_str(),
        );
        if let Err(err) = self.index.complete_session(id, &row).await {
            self.index.reopen(id).await.ok();
            return Err(err);
        }
        self.chunks.completed(&session).await;
        tracing::info!(upload_id = %id, key = %row.key, "upload session completed");
        Ok(row)
    }

    pub async fn abort(&self, user: Uuid, id: UploadId) -> Result<(), StorageError> {
        if !self.remove(Removal::Open { user, id }).await? {
            // Not open: gone (NOT_FOUND), or being completed.
            self.index.session(user, id, now_ms()).await?;
            return Err(being_completed());
        }
        tracing::info!(upload_id = %id, "upload session aborted");
        Ok(())
    }

    /// Removes every session whose time ran out, with what it stored; returns how many.
    /// Each goes to exactly one replica's sweeper (see [`Index::remove_sessions`]).
    pub async fn sweep_expired(&self) -> Result<usize, StorageError> {
        let now = now_ms();
        let claim_until = now + CLEANUP_CLAIM.as_millis() as i64;
        let removed = self
            .index
            .remove_sessions(Removal::Expired, now, claim_until)
            .await?;
        let count = removed.len();
        for removed in removed {
            self.chunks.release(removed).await;
        }
        Ok(count)
    }

    /// Takes the sessions `which` names off the index and releases what they stored;
    /// false if there was none.
    async fn remove(&self, which: Removal) -> Result<bool, StorageError> {
        let now = now_ms();
        let claim_until = now + CLEANUP_CLAIM.as_millis() as i64;
        let removed = self.index.remove_sessions(which, now, claim_until).await?;
        let any = !removed.is_empty();
        for removed in removed {
            self.chunks.release(removed).await;
        }
        Ok(any)
    }

    /// Removes a session whose completion this call holds and whose bytes failed.
    async fn discard_completing(&self, id: UploadId) {
        if let Err(err) = self.remove(Removal::Completing { id }).await {
            // It stays 'completing' until the claim lapses; then the client may retry,
            // or it expires and the sweeper removes it.
            tracing::warn!(%err, upload_id = %id, "could not remove a session whose bytes failed");
        }
    }
}

fn not_next(received: u64, offset: u64) -> StorageError {
    StorageError::FailedPrecondition(format!(
        "the session holds {received} bytes, so the next chunk must start at offset {received}, not {offset}"
    ))
}

fn being_completed() -> StorageError {
    StorageError::FailedPrecondition(
        "this upload is being completed by an earlier CompleteUpload; if that call failed, \
         call CompleteUpload again in two minutes"
            .into(),
    )
}

/// The session's digest continued over `data`, on a blocking thread: a chunk of a few
/// MiB hashes for milliseconds.
async fn continue_digest(
    mut digest: RunningDigest,
    data: Bytes,
) -> Result<RunningDigest, StorageError> {
    tokio::task::spawn_blocking(move || {
        digest.update(&data);
        digest
    })
    .await
    .map_err(|err| StorageError::Internal(format!("hashing a chunk failed: {err}")))
}
