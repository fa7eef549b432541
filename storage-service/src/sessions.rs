//! Resumable uploads for clients that cannot client-stream (browsers over grpc-web).
//!
//! A session is a row in the index, and every acknowledged chunk is recorded in the same
//! transaction that advances the session's offset; both survive a restart. Where the
//! chunk's bytes go depends on the backend:
//!
//! - S3: the session is a multipart upload (its id on record, see `multipart.rs`) and
//!   each chunk is one of its parts, so completing is a single CompleteMultipartUpload
//!   and no byte is written twice. S3 wants every part but the last to hold 5 MiB, so
//!   sessions announce that as `min_chunk_size`. The SHA-256 is computed as chunks
//!   arrive; after a restart (the running digest lives in memory) the completed object
//!   is read back once to compute it.
//! - A local directory: each chunk is staged as its own object under `_uploads/`, and
//!   completing streams them, in order, through the same [`UploadSink`] as a streaming
//!   upload (local copies are cheap), then drops the staging.
//!
//! Expired sessions are swept by [`Storage::purge_expired_sessions`].

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use strongbox_proto::storage::v1::{CreateUploadResponse, FileMetadata, GetUploadStatusResponse};
use uuid::Uuid;

use crate::backend::S3_MIN_PART_SIZE;
use crate::error::StorageError;
use crate::files::{NewFile, Storage, file_row, now_ms, timestamp_ms};
use crate::index::{FileRow, SessionRow};
use crate::multipart::Multipart;
use crate::names::{ObjectKey, Sha256Hex, UploadId};
use crate::policy::ContentType;
use crate::sink::Expectations;

const STAGING_PREFIX: &str = "_uploads";
const OPEN: &str = "open";
const COMPLETING: &str = "completing";

impl Storage {
    pub async fn create_session(
        &self,
        user: Uuid,
        metadata: FileMetadata,
    ) -> Result<CreateUploadResponse, StorageError> {
        let file = self.plan(user, metadata)?;
        let multipart_id = match &self.multipart {
            Some(multipart) => {
                let options = self
                    .backend
                    .put_options(&file.filename, file.content_type.as_str());
                Some(multipart.begin(&file.key.path(), options).await?)
            }
            None => None,
        };
        let now = now_ms();
        let id = UploadId::generate();
        let session = SessionRow {
            id: id.to_string(),
            user_id: user.to_string(),
            key: file.key.as_str().to_owned(),
            filename: file.filename.clone(),
            content_type: file.content_type.as_str().to_owned(),
            declared_size: file.expect.size.map(|size| size as i64),
            declared_sha256: file
                .expect
                .sha256
                .as_ref()
                .map(|sha| sha.as_str().to_owned()),
            received: 0,
            reserved: file.expect.size.unwrap_or(0) as i64,
            state: OPEN.to_owned(),
            created_at: now,
            expires_at: now + self.session_ttl.as_millis() as i64,
        };
        if let Err(err) = self.index.admit_session(&session, &self.limits).await {
            if let (Some(multipart), Some(id)) = (&self.multipart, multipart_id) {
                multipart.abort(&file.key.path(), &id).await;
            }
            return Err(err);
        }
        self.digests.start(id);
        tracing::info!(upload_id = %session.id, "upload session created");
        Ok(CreateUploadResponse {
            upload_id: session.id,
            max_chunk_size: self.max_chunk_bytes,
            expires_at: Some(timestamp_ms(session.expires_at)),
            min_chunk_size: self.min_chunk_bytes(),
        })
    }

    /// The least every chunk but the last must hold: S3's part minimum, since there
    /// each chunk is a part.
    fn min_chunk_bytes(&self) -> u64 {
        if self.multipart.is_some() {
            S3_MIN_PART_SIZE
        } else {
            0
        }
    }

    /// Stores `data` at `offset` and returns the session's new length. Bytes the session
    /// already has are acknowledged without being stored again.
    ///
    /// A chunk sent while the one before it is still on its way (see [`ChunksInFlight`])
    /// is stored right away — on S3 as the part after its predecessor's — and committed
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
        // Announced before anything else, so a chunk sent right behind this one finds it.
        let announced = self.appending.announce(id, offset + length);
        let mut session = self.open_session(user, id).await?;
        // A chunk at most one chunk ahead may have a predecessor on its way; one further
        // off is a client's mistake, refused below.
        let ahead = offset.saturating_sub(session.received as u64);
        let predecessor = if ahead > 0 && ahead <= self.max_chunk_bytes {
            let predecessor = self.predecessor(user, id, offset).await?;
            if predecessor.is_none() {
                session = self.open_session(user, id).await?;
            }
            predecessor
        } else {
            None
        };
        let received = session.received as u64;
        if offset + length <= received {
            return Ok(received);
        }
        if predecessor.is_none() && offset != received {
            return Err(not_next(received, offset));
        }
        let total = offset + length;
        if total > self.policy.max_bytes {
            return Err(StorageError::TooLarge {
                limit: self.policy.max_bytes,
            });
        }
        let declared = session.declared_size.map(|size| size as u64);
        if let Some(declared) = declared.filter(|&size| total > size) {
            return Err(StorageError::SizeMismatch {
                declared,
                received: total,
            });
        }
        let chunk = self
            .index
            .admit_chunk(user, id, total, &self.limits)
            .await?;
        let appended = self
            .store_and_commit(user, id, &session, (offset, data), predecessor, announced)
            .await;
        chunk.end().await;
        appended
    }

    /// Stores a chunk that passed every check and commits it to the session, after its
    /// predecessor if it has one on its way.
    async fn store_and_commit(
        &self,
        user: Uuid,
        id: UploadId,
        session: &SessionRow,
        (offset, data): (u64, Bytes),
        predecessor: Option<Predecessor>,
        announced: Announced<'_>,
    ) -> Result<u64, StorageError> {
        let length = data.len() as u64;
        let declared = session.declared_size.map(|size| size as u64);
        let stored = match (&self.multipart, predecessor) {
            (Some(multipart), None) => {
                let (index, last_length) = self.index.chunk_tail(id).await?;
                check_previous_chunk(last_length)?;
                let index = index as usize;
                announced.part_is(index);
                self.put_part(multipart, session, index, offset, data.clone(), declared)
                    .await?
            }
            (None, None) => self.stage_chunk(id, offset, data.clone()).await?,
            (Some(multipart), Some(mut predecessor)) => {
                let Some(before) = predecessor.part().await else {
                    // It ended before taking a part: it failed.
                    let now = self.open_session(user, id).await?.received as u64;
                    return Err(not_next(now, offset));
                };
                announced.part_is(before + 1);
                let stored = self
                    .put_part(
                        multipart,
                        session,
                        before + 1,
                        offset,
                        data.clone(),
                        declared,
                    )
                    .await?;
                self.after_predecessor(predecessor, user, id, offset, stored)
                    .await?
            }
            (None, Some(predecessor)) => {
                let stored = self.stage_chunk(id, offset, data.clone()).await?;
                self.after_predecessor(predecessor, user, id, offset, stored)
                    .await?
            }
        };
        match self
            .index
            .append_chunk(id, offset as i64, length as i64, stored.etag.as_deref())
            .await?
        {
            Some(new_length) => {
                self.digests.update(id, offset, &data);
                Ok(new_length as u64)
            }
            None => {
                self.discard_stored(stored).await;
                let now = self.index.session(user, id, now_ms()).await?;
                Err(StorageError::FailedPrecondition(format!(
                    "another chunk was stored at this offset first; the session now holds {} bytes",
                    now.received
                )))
            }
        }
    }

    /// Waits until the predecessor of a chunk stored ahead is done, and returns the chunk
    /// if it may be committed now: the session ends where it starts (and, on S3, its part
    /// is the next one). Otherwise the chunk is discarded and refused.
    async fn after_predecessor(
        &self,
        predecessor: Predecessor,
        user: Uuid,
        id: UploadId,
        offset: u64,
        stored: StoredChunk,
    ) -> Result<StoredChunk, StorageError> {
        predecessor.finished().await;
        let follows = async {
            let received = self.open_session(user, id).await?.received as u64;
            if received != offset {
                return Err(not_next(received, offset));
            }
            if let Some(part) = stored.part {
                let (parts, last_length) = self.index.chunk_tail(id).await?;
                check_previous_chunk(last_length)?;
                if parts as usize != part {
                    return Err(not_next(received, offset));
                }
            }
            Ok(())
        };
        match follows.await {
            Ok(()) => Ok(stored),
            Err(err) => {
                self.discard_stored(stored).await;
                Err(err)
            }
        }
    }

    /// Removes a chunk stored but not committed. A part on S3 needs nothing: one that is
    /// not committed is overwritten by the next chunk at its number, or left out of the
    /// object on completion (and discarded with it).
    async fn discard_stored(&self, stored: StoredChunk) {
        if let Some(staged) = stored.staged {
            self.backend.store.delete(&staged).await.ok();
        }
    }

    /// The chunk ending at `offset` if it is being stored, waiting for it to arrive for
    /// at most [`PREDECESSOR_GRACE`]; `None` once the session holds `offset` bytes or
    /// the grace is over.
    async fn predecessor(
        &self,
        user: Uuid,
        id: UploadId,
        offset: u64,
    ) -> Result<Option<Predecessor>, StorageError> {
        let deadline = tokio::time::Instant::now() + PREDECESSOR_GRACE;
        loop {
            let changed = self.appending.changed.notified();
            tokio::pin!(changed);
            // From here on no announcement can slip by unnoticed.
            changed.as_mut().enable();
            if let Some(before) = self.appending.ending_at(id, offset) {
                return Ok(Some(before));
            }
            if self.open_session(user, id).await?.received as u64 >= offset {
                return Ok(None);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// On S3: the chunk becomes part number `index` (0-based) of the session's upload.
    async fn put_part(
        &self,
        multipart: &Multipart,
        session: &SessionRow,
        index: usize,
        offset: u64,
        data: Bytes,
        declared: Option<u64>,
    ) -> Result<StoredChunk, StorageError> {
        let length = data.len() as u64;
        let last = declared.is_some_and(|declared| offset + length == declared);
        if declared.is_some() && !last && length < S3_MIN_PART_SIZE {
            return Err(StorageError::InvalidArgument(format!(
                "every chunk but the last must hold at least {S3_MIN_PART_SIZE} bytes \
                 (min_chunk_size); this one holds {length}"
            )));
        }
        let upload_id = self
            .index
            .multipart_id(&session.key)
            .await?
            .ok_or_else(|| {
                StorageError::FailedPrecondition(
                    "this upload's parts were already assembled; call CompleteUpload again".into(),
                )
            })?;
        let path = ObjectKey::from_stored(session.key.clone()).path();
        let part = multipart
            .put_part(&path, &upload_id, index, PutPayload::from_bytes(data))
            .await?;
        Ok(StoredChunk {
            etag: Some(part.content_id),
            part: Some(index),
            staged: None,
        })
    }

    /// On a local directory: the chunk is staged as an object of its own.
    async fn stage_chunk(
        &self,
        id: UploadId,
        offset: u64,
        data: Bytes,
    ) -> Result<StoredChunk, StorageError> {
        // Named by offset *and* length, so a racing writer of the same offset cannot
        // overwrite the chunk that wins the index update.
        let staged = staged_chunk(id, offset, data.len() as u64);
        self.backend
            .store
            .put(&staged, PutPayload::from_bytes(data))
            .await?;
        Ok(StoredChunk {
            etag: None,
            part: None,
            staged: Some(staged),
        })
    }

    pub async fn session_status(
        &self,
        user: Uuid,
        id: UploadId,
    ) -> Result<GetUploadStatusResponse, StorageError> {
        let session = self.index.session(user, id, now_ms()).await?;
        Ok(GetUploadStatusResponse {
            upload_id: session.id.clone(),
            offset: session.received as u64,
            expires_at: Some(timestamp_ms(session.expires_at)),
            metadata: Some(FileMetadata {
                filename: session.filename,
                content_type: session.content_type,
                size: session.declared_size.map(|size| size as u64),
                sha256: session.declared_sha256,
            }),
        })
    }

    /// Turns the session's chunks into the file.
    pub async fn complete(&self, user: Uuid, id: UploadId) -> Result<FileRow, StorageError> {
        let session = self.open_session(user, id).await?;
        if let Some(declared) = session
            .declared_size
            .filter(|&size| size != session.received)
        {
            return Err(StorageError::FailedPrecondition(format!(
                "the session holds {} of the {declared} declared bytes; send the rest from offset {} first",
                session.received, session.received
            )));
        }
        if !self.index.set_session_state(id, OPEN, COMPLETING).await? {
            return Err(StorageError::FailedPrecondition(
                "this upload is being completed".into(),
            ));
        }
        let assembled = match &self.multipart {
            Some(multipart) => self.complete_parts(multipart, id, &session).await,
            None => self.assemble(id, &session).await,
        };
        match assembled {
            Ok(row) => {
                self.digests.forget(id);
                if self.multipart.is_none() {
                    self.remove_staging(id).await;
                }
                tracing::info!(upload_id = %id, key = %row.key, "upload session completed");
                Ok(row)
            }
            // The bytes are not what was declared: keeping them would only fail again.
            Err(err @ StorageError::ChecksumMismatch { .. }) => {
                self.discard(&session).await;
                Err(err)
            }
            Err(err) => {
                self.index.set_session_state(id, COMPLETING, OPEN).await?;
                Err(err)
            }
        }
    }

    /// On S3: completes the multipart upload from the recorded parts, then makes it a
    /// file. A failure after S3 completed the object (reading it back, the index) leaves
    /// the session open with the object in place, so CompleteUpload can simply be called
    /// again; a session discarded instead removes the object.
    async fn complete_parts(
        &self,
        multipart: &Multipart,
        id: UploadId,
        session: &SessionRow,
    ) -> Result<FileRow, StorageError> {
        let file = new_file(session)?;
        let path = file.key.path();
        // Not on record any more: an earlier CompleteUpload got this far.
        if let Some(upload_id) = self.index.multipart_id(&session.key).await? {
            let mut parts = self
                .index
                .chunks(id)
                .await?
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
                    multipart
                        .put_part(&path, &upload_id, 0, PutPayload::default())
                        .await?,
                );
            }
            multipart.complete(&path, &upload_id, parts).await?;
        }
        let sha256 = match self.digests.finish(id, session.received as u64) {
            Some(sha256) => sha256,
            None => self.digest_of(&path).await?,
        };
        // On a mismatch the caller discards the session, which removes the object.
        if let Some(declared) = file
            .expect
            .sha256
            .as_ref()
            .filter(|&declared| *declared != sha256)
        {
            return Err(StorageError::ChecksumMismatch {
                declared: declared.as_str().to_owned(),
                actual: sha256.as_str().to_owned(),
            });
        }
        let row = file_row(&file, session.received as u64, sha256.as_str());
        self.index.complete_session(id, &row).await?;
        Ok(row)
    }

    /// The SHA-256 of a stored object, read back (only after a restart lost the running
    /// digest of a session).
    async fn digest_of(&self, path: &Path) -> Result<Sha256Hex, StorageError> {
        let mut pieces = self.backend.reads.get(path).await?.into_stream();
        let mut hasher = Sha256::new();
        while let Some(piece) = pieces.try_next().await? {
            hasher.update(&piece);
        }
        Ok(Sha256Hex::from_digest(&hasher.finalize()))
    }

    /// On a local directory: streams the staged chunks into the file.
    async fn assemble(&self, id: UploadId, session: &SessionRow) -> Result<FileRow, StorageError> {
        let file = new_file(session)?;
        let mut sink = self.open_sink(&file);
        for chunk in self.index.chunks(id).await? {
            let staged = self
                .backend
                .store
                .get(&staged_chunk(id, chunk.start as u64, chunk.length as u64))
                .await?;
            let mut pieces = staged.into_stream();
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
        let row = file_row(&file, written.size, written.sha256.as_str());
        if let Err(err) = self.index.complete_session(id, &row).await {
            self.remove_object(&file.key).await;
            return Err(err);
        }
        Ok(row)
    }

    pub async fn abort_session(&self, user: Uuid, id: UploadId) -> Result<(), StorageError> {
        let session = self.open_session(user, id).await?;
        self.discard(&session).await;
        tracing::info!(upload_id = %id, "upload session aborted");
        Ok(())
    }

    /// Deletes every session whose time ran out, with its chunks.
    pub async fn purge_expired_sessions(&self) -> Result<usize, StorageError> {
        let expired = self.index.expired_sessions(now_ms()).await?;
        for session in &expired {
            self.discard(session).await;
        }
        Ok(expired.len())
    }

    async fn open_session(&self, user: Uuid, id: UploadId) -> Result<SessionRow, StorageError> {
        let session = self.index.session(user, id, now_ms()).await?;
        if session.state != OPEN {
            return Err(StorageError::FailedPrecondition(
                "this upload is being completed".into(),
            ));
        }
        Ok(session)
    }

    async fn discard(&self, session: &SessionRow) {
        let id = match UploadId::from_stored(&session.id) {
            Ok(id) => id,
            Err(err) => {
                tracing::warn!(%err, "cannot discard an upload session");
                return;
            }
        };
        self.digests.forget(id);
        if let Err(err) = self.index.delete_session(id).await {
            tracing::warn!(%err, upload_id = %id, "could not delete an upload session");
            return;
        }
        let Some(multipart) = &self.multipart else {
            self.remove_staging(id).await;
            return;
        };
        let key = ObjectKey::from_stored(session.key.clone());
        match self.index.multipart_id(&session.key).await {
            Ok(Some(upload_id)) => multipart.abort(&key.path(), &upload_id).await,
            // Completed on S3 but never made a file (a checksum mismatch, or a failure
            // after completion): the object goes with the session.
            Ok(None) => self.remove_object(&key).await,
            Err(err) => {
                tracing::warn!(%err, upload_id = %id, "cannot look up a session's multipart upload");
            }
        }
    }

    async fn remove_staging(&self, id: UploadId) {
        let prefix = Path::from(format!("{STAGING_PREFIX}/{id}"));
        let staged: Vec<_> = match self
            .backend
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
            if let Err(err) = self.backend.store.delete(&path).await {
                tracing::warn!(%err, %path, "could not delete a staged chunk");
            }
        }
    }
}

/// Where an appended chunk went: a part (its number and ETag) on S3, a staged object
/// locally.
struct StoredChunk {
    etag: Option<String>,
    part: Option<usize>,
    staged: Option<Path>,
}

fn not_next(received: u64, offset: u64) -> StorageError {
    StorageError::FailedPrecondition(format!(
        "the session holds {received} bytes, so the next chunk must start at offset {received}, not {offset}"
    ))
}

/// S3 wants every part but the last to hold 5 MiB: a smaller chunk must have been the
/// last one.
fn check_previous_chunk(last_length: Option<i64>) -> Result<(), StorageError> {
    match last_length.filter(|&last| (last as u64) < S3_MIN_PART_SIZE) {
        Some(last) => Err(StorageError::FailedPrecondition(format!(
            "the previous chunk held {last} bytes, under the {S3_MIN_PART_SIZE}-byte minimum \
             for every chunk but the last, so it was the last one; complete the upload, or \
             start again with larger chunks"
        ))),
        None => Ok(()),
    }
}

/// How long a chunk that arrived ahead of its predecessor waits for it to arrive. It
/// holds its memory meanwhile, and the predecessor may be waiting for memory: the wait
/// must end on its own, after which the chunk is refused and the client sends it again.
const PREDECESSOR_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The chunks of each session being stored right now, by the offset they end at.
///
/// A client may send a session's next chunk while the one before is still on its way
/// (the page does: sending one chunk and storing another then overlap, where one at a
/// time would alternate). The next chunk then waits here for its predecessor instead of
/// being refused for starting past the session's offset: for as long as the predecessor
/// is being stored (it holds its memory and needs nothing but storage to finish), and
/// for a short grace if it has not arrived yet (both are sent at once, so either may
/// be decoded first). On S3 it needs its predecessor's part number, published here.
#[derive(Default)]
pub struct ChunksInFlight {
    running: std::sync::Mutex<std::collections::HashMap<(UploadId, u64), InFlight>>,
    /// Wakes chunks waiting for a predecessor whenever one is announced or done.
    changed: tokio::sync::Notify,
}

/// One chunk in flight: a serial (see `announce`) and the receiving end of its part
/// number, which closes when the chunk is done.
type InFlight = (u64, tokio::sync::watch::Receiver<Option<usize>>);

impl ChunksInFlight {
    /// Records a chunk of `id` ending at `end` until the returned guard is dropped.
    fn announce(&self, id: UploadId, end: u64) -> Announced<'_> {
        let (part, receiver) = tokio::sync::watch::channel(None);
        let key = (id, end);
        let serial = {
            let mut running = self.lock();
            // Two chunks ending at the same offset (a retry racing the original): the
            // later one replaces the first as the one to wait for; either will do.
            let serial = running.get(&key).map_or(0, |(serial, _)| serial + 1);
            running.insert(key, (serial, receiver));
            serial
        };
        self.changed.notify_waiters();
        Announced {
            registry: self,
            key,
            serial,
            part,
        }
    }

    /// The chunk of `id` being stored that ends at `offset`, if there is one.
    fn ending_at(&self, id: UploadId, offset: u64) -> Option<Predecessor> {
        self.lock()
            .get(&(id, offset))
            .map(|(_, receiver)| Predecessor(receiver.clone()))
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(UploadId, u64), InFlight>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Announced<'a> {
    registry: &'a ChunksInFlight,
    key: (UploadId, u64),
    serial: u64,
    part: tokio::sync::watch::Sender<Option<usize>>,
}

impl Announced<'_> {
    /// Tells a chunk waiting behind this one which part number this one takes.
    fn part_is(&self, index: usize) {
        self.part.send_replace(Some(index));
    }
}

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        let mut running = self.registry.lock();
        if running
            .get(&self.key)
            .is_some_and(|(serial, _)| *serial == self.serial)
        {
            running.remove(&self.key);
        }
        drop(running);
        self.registry.changed.notify_waiters();
    }
}

struct Predecessor(tokio::sync::watch::Receiver<Option<usize>>);

impl Predecessor {
    /// The predecessor's part number, once it has one; `None` if it ended without.
    async fn part(&mut self) -> Option<usize> {
        let waited = self.0.wait_for(Option::is_some).await.map(|part| *part);
        waited.unwrap_or_else(|_| *self.0.borrow())
    }

    /// Returns once the chunk is stored or has failed.
    async fn finished(mut self) {
        // `changed` fails once the sender is dropped, when the chunk is done.
        while self.0.changed().await.is_ok() {}
    }
}

/// The running SHA-256 of each open session, fed chunk by chunk in offset order. It
/// lives in memory only: a session that outlives the process, or whose chunks arrive
/// in an order the digest cannot follow, has its object read back once on completion.
#[derive(Default)]
pub struct SessionDigests {
    running: std::sync::Mutex<std::collections::HashMap<UploadId, (u64, Sha256)>>,
}

impl SessionDigests {
    fn start(&self, id: UploadId) {
        self.lock().insert(id, (0, Sha256::new()));
    }

    /// Adds the chunk at `offset`; a chunk out of order drops the digest.
    fn update(&self, id: UploadId, offset: u64, data: &[u8]) {
        // Hashing a chunk takes milliseconds: not under the lock other sessions need.
        let Some((hashed, mut hasher)) = self.lock().remove(&id) else {
            return;
        };
        if hashed != offset {
            return;
        }
        hasher.update(data);
        self.lock().insert(id, (hashed + data.len() as u64, hasher));
    }

    /// The digest, if it covers exactly `length` bytes.
    fn finish(&self, id: UploadId, length: u64) -> Option<Sha256Hex> {
        let (hashed, hasher) = self.lock().remove(&id)?;
        (hashed == length).then(|| Sha256Hex::from_digest(&hasher.finalize()))
    }

    fn forget(&self, id: UploadId) {
        self.lock().remove(&id);
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<UploadId, (u64, Sha256)>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn staged_chunk(id: UploadId, start: u64, length: u64) -> Path {
    Path::from(format!("{STAGING_PREFIX}/{id}/{start:020}-{length}"))
}

fn new_file(session: &SessionRow) -> Result<NewFile, StorageError> {
    let user = Uuid::parse_str(&session.user_id)
        .map_err(|err| StorageError::Internal(format!("stored user id: {err}")))?;
    Ok(NewFile {
        user,
        key: ObjectKey::from_stored(session.key.clone()),
        filename: session.filename.clone(),
        content_type: ContentType::parse(&session.content_type)?,
        expect: Expectations {
            max_bytes: u64::MAX,
            size: session.declared_size.map(|size| size as u64),
            sha256: session
                .declared_sha256
                .as_deref()
                .map(Sha256Hex::parse)
                .transpose()?,
        },
    })
}
