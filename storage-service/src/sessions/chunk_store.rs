//! Where a session's chunks go between being acknowledged and becoming a file: the one
//! place that knows the backend. The protocol (`sessions/mod.rs`) asks it to begin a
//! session, store a chunk as a numbered part, assemble the file and release what a
//! removed session left; it never asks which backend it is talking to.
//!
//! - [`S3Parts`]: each chunk is a part of the session's multipart upload, so completing
//!   is one `CompleteMultipartUpload` and no byte is written twice. The object never
//!   passes through this service whole, so the session's running SHA-256 is kept with
//!   the session, chunk by chunk.
//! - [`Staging`]: each chunk is an object of its own under `_uploads/<id>/`; completing
//!   streams them in order through an [`UploadSink`] (local copies are cheap), which
//!   hashes as it writes.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use super::{Chunk, ChunkTail, Session};
use crate::backend::{ObjectOptions, S3_MIN_PART_SIZE};
use crate::error::StorageError;
use crate::files::NewFile;
use crate::index::Removed;
use crate::multipart::Multipart;
use crate::names::{ObjectKey, Sha256Hex, UploadId};
use crate::sink::UploadSink;

const STAGING_PREFIX: &str = "_uploads";

pub enum ChunkStore {
    S3(S3Parts),
    Local(Staging),
}

/// A chunk stored but not yet committed to its session.
#[derive(Debug)]
pub struct StoredChunk {
    /// The part's ETag, on S3.
    pub etag: Option<String>,
    /// The staged object, locally.
    staged: Option<Path>,
}

/// A session's bytes made into its object.
#[derive(Debug)]
pub struct Assembled {
    pub size: u64,
    pub sha256: Sha256Hex,
}

/// What [`ChunkStore::begin`] started, for [`ChunkStore::abandon`] should the session
/// not be admitted after all.
pub struct Begun(Option<String>);

impl ChunkStore {
    /// The least every chunk but the last must hold: S3's part minimum, where each
    /// chunk is a part.
    pub fn min_chunk_bytes(&self) -> u64 {
        match self {
            Self::S3(_) => S3_MIN_PART_SIZE,
            Self::Local(_) => 0,
        }
    }

    /// Whether sessions keep their running SHA-256 (see the module comment).
    pub fn keeps_digest(&self) -> bool {
        matches!(self, Self::S3(_))
    }

    pub async fn begin(&self, file: &NewFile) -> Result<Begun, StorageError> {
        match self {
            Self::S3(parts) => parts.begin(file).await.map(|id| Begun(Some(id))),
            Self::Local(_) => Ok(Begun(None)),
        }
    }

    /// Undoes [`ChunkStore::begin`] for a session that was never admitted.
    pub async fn abandon(&self, key: &ObjectKey, begun: Begun) {
        if let (Self::S3(parts), Begun(Some(id))) = (self, begun) {
            parts.multipart.abort(&key.path(), &id).await;
        }
    }

    /// Whether a chunk may follow the session's last one. On S3 a chunk under the part
    /// minimum can only have been the last.
    pub fn check_follows(&self, tail: ChunkTail) -> Result<(), StorageError> {
        match (self, tail.last_length) {
            (Self::S3(_), Some(last)) if last < S3_MIN_PART_SIZE => {
                Err(StorageError::FailedPrecondition(format!(
                    "the previous chunk held {last} bytes, under the {S3_MIN_PART_SIZE}-byte \
                     minimum for every chunk but the last, so it was the last one; complete \
                     the upload, or start again with larger chunks"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Stores the chunk at `offset` as part `part` (0-based) of the session.
    pub async fn put(
        &self,
        session: &Session,
        part: u64,
        offset: u64,
        data: Bytes,
    ) -> Result<StoredChunk, StorageError> {
        match self {
            Self::S3(parts) => parts.put(session, part, offset, data).await,
            Self::Local(staging) => staging.put(session.id, offset, data).await,
        }
    }

    /// Removes a chunk stored but not committed. A part on S3 needs nothing: one that is
    /// not committed is overwritten by the next chunk at its number, or left out of the
    /// object on completion (and discarded with it).
    pub async fn discard(&self, stored: StoredChunk) {
        if let (Self::Local(staging), Some(staged)) = (self, stored.staged) {
            staging.store.delete(&staged).await.ok();
        }
    }

    /// Makes the session's committed `chunks` its object. Locally the bytes pass
    /// through the sink `open_sink` gives, which checks what the session declared.
    pub async fn assemble(
        &self,
        session: &Session,
        chunks: Vec<Chunk>,
        open_sink: impl FnOnce(&NewFile) -> UploadSink,
    ) -> Result<Assembled, StorageError> {
        match self {
            Self::S3(parts) => parts.assemble(session, chunks).await,
            Self::Local(staging) => {
                staging
                    .assemble(session.id, chunks, open_sink(&session.new_file()))
                    .await
            }
        }
    }

    /// After the session became a file: what only served to build it goes.
    pub async fn completed(&self, session: &Session) {
        if let Self::Local(staging) = self {
            staging.remove(session.id).await;
        }
    }

    /// Frees everything a session taken off the index had stored: its multipart upload,
    /// its staged chunks, an object assembled but never made a file.
    pub async fn release(&self, removed: Removed) {
        let key = removed.session.key.path();
        match self {
            Self::S3(parts) => match removed.multipart {
                Some(id) => parts.multipart.abort(&key, &id).await,
                // Completed on S3 but never made a file (a checksum mismatch, or a
                // failure after completion): the object goes with the session.
                None => remove_object(&*parts.store, &key).await,
            },
            Self::Local(staging) => {
                staging.remove(removed.session.id).await;
                remove_object(&*staging.store, &key).await;
            }
        }
    }
}

pub struct S3Parts {
    multipart: Multipart,
    store: Arc<dyn ObjectStore>,
    /// For reading an object back (see [`S3Parts::assemble`]).
    reads: Arc<dyn ObjectStore>,
    options: ObjectOptions,
}

impl S3Parts {
    pub fn new(multipart: Multipart, reads: Arc<dyn ObjectStore>, options: ObjectOptions) -> Self {
        Self {
            store: multipart.store(),
            multipart,
            reads,
            options,
        }
    }

    async fn begin(&self, file: &NewFile) -> Result<String, StorageError> {
        let options = self
            .options
            .for_file(&file.filename, file.content_type.as_str());
        self.multipart.begin(&file.key.path(), options).await
    }

    async fn put(
        &self,
        session: &Session,
        part: u64,
        offset: u64,
        data: Bytes,
    ) -> Result<StoredChunk, StorageError> {
        let length = data.len() as u64;
        let last = session
            .declared_size
            .is_some_and(|declared| offset + length == declared);
        if session.declared_size.is_some() && !last && length < S3_MIN_PART_SIZE {
            return Err(StorageError::InvalidArgument(format!(
                "every chunk but the last must hold at least {S3_MIN_PART_SIZE} bytes \
                 (min_chunk_size); this one holds {length}"
            )));
        }
        let path = session.key.path();
        let upload_id = self.multipart.recorded(&path).await?.ok_or_else(|| {
            StorageError::FailedPrecondition(
                "this upload's parts were already assembled; call CompleteUpload again".into(),
            )
        })?;
        let index = usize::try_from(part)
            .map_err(|_| StorageError::Internal(format!("part {part} is out of range")))?;
        let stored = self
            .multipart
            .put_part(&path, &upload_id, index, PutPayload::from_bytes(data))
            .await?;
        Ok(StoredChunk {
            etag: Some(stored.content_id),
            staged: None,
        })
    }

    /// Completes the multipart upload from the recorded parts, unless an earlier
    /// CompleteUpload got that far (the upload is no longer on record), and finishes the
    /// session's digest. A session without one (begun before digests were kept) has its
    /// object read back once.
    async fn assemble(
        &self,
        session: &Session,
        chunks: Vec<Chunk>,
    ) -> Result<Assembled, StorageError> {
        let path = session.key.path();
        if let Some(upload_id) = self.multipart.recorded(&path).await? {
            let mut parts = chunks
                .into_iter()
                .map(|chunk| {
                    chunk
                        .etag
                        .map(|content_id| PartId { content_id })
                        .ok_or_else(|| StorageError::Internal("a chunk has no part ETag".into()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if parts.is_empty() {
                // An empty file: S3 wants one part, even an empty one.
                parts.push(
                    self.multipart
                        .put_part(&path, &upload_id, 0, PutPayload::default())
                        .await?,
                );
            }
            self.multipart.complete(&path, &upload_id, parts).await?;
        }
        let sha256 = match &session.digest {
            Some(digest) => digest.clone().finish(),
            None => self.digest_of(&path).await?,
        };
        Ok(Assembled {
            size: session.received,
            sha256,
        })
    }

    async fn digest_of(&self, path: &Path) -> Result<Sha256Hex, StorageError> {
        let mut pieces = self.reads.get(path).await?.into_stream();
        let mut hasher = Sha256::new();
        while let Some(piece) = pieces.try_next().await? {
            hasher.update(&piece);
        }
        Ok(Sha256Hex::from_digest(&hasher.finalize()))
    }
}

pub struct Staging {
    store: Arc<dyn ObjectStore>,
}

impl Staging {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    async fn put(
        &self,
        id: UploadId,
        offset: u64,
        data: Bytes,
    ) -> Result<StoredChunk, StorageError> {
        // Named by offset *and* length, so a racing writer of the same offset cannot
        // overwrite the chunk that wins the commit.
        let staged = staged_chunk(id, offset, data.len() as u64);
        self.store
            .put(&staged, PutPayload::from_bytes(data))
            .await?;
        Ok(StoredChunk {
            etag: None,
            staged: Some(staged),
        })
    }

    async fn assemble(
        &self,
        id: UploadId,
        chunks: Vec<Chunk>,
        mut sink: UploadSink,
    ) -> Result<Assembled, StorageError> {
        for chunk in chunks {
            let staged = staged_chunk(id, chunk.start, chunk.length);
            let mut pieces = match self.store.get(&staged).await {
                Ok(staged) => staged.into_stream(),
                Err(err) => {
                    sink.abort().await;
                    return Err(err.into());
                }
            };
            loop {
                match pieces.try_next().await {
                    Ok(Some(piece)) => sink.write(piece).await?,
                    Ok(None) => break,
                    Err(err) => {
                        sink.abort().await;
                        return Err(err.into());
                    }
                }
            }
        }
        let written = sink.finish().await?;
        Ok(Assembled {
            size: written.size,
            sha256: written.sha256,
        })
    }

    async fn remove(&self, id: UploadId) {
        let prefix = Path::from(format!("{STAGING_PREFIX}/{id}"));
        let staged: Vec<_> = match self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
        {
            Ok(staged) => staged,
            Err(err) => {
                tracing::warn!(%err, upload_id = %id, "could not list staged chunks");
                return;
            }
        };
        for path in staged {
            if let Err(err) = self.store.delete(&path).await {
                tracing::warn!(%err, %path, "could not delete a staged chunk");
            }
        }
    }
}

fn staged_chunk(id: UploadId, start: u64, length: u64) -> Path {
    Path::from(format!("{STAGING_PREFIX}/{id}/{start:020}-{length}"))
}

async fn remove_object(store: &dyn ObjectStore, key: &Path) {
    match store.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(err) => tracing::warn!(%err, %key, "could not remove an upload's unfinished object"),
    }
}
