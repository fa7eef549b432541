//! S3 multipart uploads that cannot leak.
//!
//! An unfinished multipart upload keeps its parts on S3 until someone aborts it *by its
//! id*. `object_store`'s `WriteMultipart` keeps that id to itself, so when S3 is down at
//! the moment of an abort, the id is lost with the failed call and the parts linger. Here
//! the id is written to the index before the first part is sent and forgotten only once
//! S3 confirms the upload completed or aborted; a failed abort marks it abandoned, and
//! [`Multipart::retry_abandoned`] (run periodically, and after a restart for what the
//! previous run left) aborts it again until S3 confirms.
//!
//! The same parts carry both upload paths: a stream's bytes are cut into parts of
//! `part_size` here ([`PartWriter`], within the shared [`UploadMemory`]), a resumable
//! session's chunks are its parts (see `sessions.rs`), so completing a session is one
//! `CompleteMultipartUpload`, not a copy.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, PutMultipartOptions, PutOptions, PutPayload};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::error::StorageError;
use crate::index::Index;

/// The S3 store's multipart API and the ledger of its upload ids.
#[derive(Clone)]
pub struct Multipart {
    s3: Arc<AmazonS3>,
    index: Index,
}

impl Multipart {
    pub fn new(s3: Arc<AmazonS3>, index: Index) -> Self {
        Self { s3, index }
    }

    /// Starts a multipart upload of `path` and records its id.
    pub async fn begin(
        &self,
        path: &Path,
        options: PutMultipartOptions,
    ) -> Result<String, StorageError> {
        let id = self.s3.create_multipart_opts(path, options).await?;
        if let Err(err) = self.index.record_multipart(path.as_ref(), &id).await {
            // Unrecorded, it would be invisible to the cleanup: abort it now.
            self.s3.abort_multipart(path, &id).await.ok();
            return Err(err);
        }
        Ok(id)
    }

    pub async fn put_part(
        &self,
        path: &Path,
        id: &str,
        index: usize,
        data: PutPayload,
    ) -> Result<PartId, StorageError> {
        Ok(self.s3.put_part(path, &id.to_owned(), index, data).await?)
    }

    /// Completes the object from `parts` (in order) and forgets the upload.
    pub async fn complete(
        &self,
        path: &Path,
        id: &str,
        parts: Vec<PartId>,
    ) -> Result<(), StorageError> {
        self.s3
            .complete_multipart(path, &id.to_owned(), parts)
            .await?;
        self.forget(path).await;
        Ok(())
    }

    /// Aborts the upload; if S3 cannot be reached, leaves it to the cleanup.
    pub async fn abort(&self, path: &Path, id: &str) {
        match self.s3.abort_multipart(path, &id.to_owned()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => self.forget(path).await,
            Err(err) => {
                tracing::warn!(%err, %path, "aborting a multipart upload failed; the cleanup will retry");
                if let Err(err) = self.index.abandon_multipart(path.as_ref()).await {
                    tracing::error!(%err, %path, "cannot mark a multipart upload for cleanup");
                }
            }
        }
    }

    /// Aborts every abandoned upload S3 confirms; returns how many it aborted and the
    /// last error among those it could not.
    pub async fn retry_abandoned(&self) -> Result<(usize, Option<StorageError>), StorageError> {
        let mut aborted = 0;
        let mut failed = None;
        for (key, id) in self.index.abandoned_multiparts().await? {
            let path = Path::from(key);
            match self.s3.abort_multipart(&path, &id).await {
                // NotFound: it was completed or aborted after all.
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    self.forget(&path).await;
                    aborted += 1;
                }
                Err(err) => failed = Some(err.into()),
            }
        }
        Ok((aborted, failed))
    }

    async fn forget(&self, path: &Path) {
        if let Err(err) = self.index.forget_multipart(path.as_ref()).await {
            // Harmless: the cleanup would find the upload gone and forget it then.
            tracing::warn!(%err, %path, "cannot forget a finished multipart upload");
        }
    }
}

/// A stream's bytes on their way to S3, in parts of exactly `part_size`, at most
/// `in_flight` uploading at once. The multipart upload starts only when a first part is
/// full, so a file smaller than a part is one PUT — one request instead of three, and
/// nothing on S3 that could leak.
///
/// Chunks are copied into one buffer per part rather than kept as slices: a slice would
/// pin the whole receive buffer it came from, so memory would depend on how messages
/// happened to arrive. A part takes a slot of the service-wide [`UploadMemory`] to go
/// to S3 and frees it when its request ends.
pub struct PartWriter {
    multipart: Multipart,
    memory: UploadMemory,
    path: Path,
    options: PutMultipartOptions,
    /// Set once the multipart upload has started.
    id: Option<String>,
    part_size: usize,
    /// The part being filled.
    filling: Option<BytesMut>,
    next_part: usize,
    uploading: JoinSet<Result<(usize, PartId), StorageError>>,
    done: Vec<Option<PartId>>,
}

/// The memory all uploads share for parts on their way to S3, in part-sized slots.
///
/// Only parts already filled take a slot, never a part still waiting for its client's
/// bytes: a slot is then always freed by S3 answering (or timing out), whatever any
/// client does. (Taking a slot before filling deadlocks: uploads waiting for a slot stop
/// reading, their unread bytes use up the HTTP/2 connection's window they share with
/// the slot holders, and the holders never receive the rest of their parts.) Waiting is
/// fair, first come, first served.
#[derive(Clone)]
pub struct UploadMemory(Arc<Semaphore>);

impl UploadMemory {
    /// Room for `budget` bytes of parts of `part_size`; at least one part.
    pub fn new(budget: u64, part_size: u64) -> Result<Self, StorageError> {
        let slots = budget / part_size.max(1);
        if slots == 0 {
            return Err(StorageError::Internal(format!(
                "UPLOAD_MEMORY_BYTES ({budget}) must hold at least one part of UPLOAD_PART_SIZE ({part_size})"
            )));
        }
        Ok(Self(Arc::new(Semaphore::new(slots as usize))))
    }

    async fn slot(&self) -> Result<OwnedSemaphorePermit, StorageError> {
        self.0
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Internal("upload memory is closed".into()))
    }
}

impl PartWriter {
    pub fn new(
        multipart: Multipart,
        memory: UploadMemory,
        path: Path,
        options: PutMultipartOptions,
        part_size: usize,
    ) -> Self {
        Self {
            multipart,
            memory,
            path,
            options,
            id: None,
            part_size,
            filling: None,
            next_part: 0,
            uploading: JoinSet::new(),
            done: Vec::new(),
        }
    }

    /// Appends `chunk`, sending each part as it fills; a full part waits while
    /// `in_flight` parts of this upload are uploading and for a memory slot
    /// (backpressure all the way to the client).
    pub async fn write(&mut self, mut chunk: Bytes, in_flight: usize) -> Result<(), StorageError> {
        while !chunk.is_empty() {
            let part_size = self.part_size;
            let buffer = self
                .filling
                .get_or_insert_with(|| BytesMut::with_capacity(part_size));
            let piece = chunk.split_to((self.part_size - buffer.len()).min(chunk.len()));
            buffer.extend_from_slice(&piece);
            if buffer.len() == self.part_size {
                while self.uploading.len() >= in_flight {
                    self.settle_one().await?;
                }
                self.send_part().await?;
            }
        }
        Ok(())
    }

    /// Sends the part being filled (if any), starting the multipart upload first if
    /// this is its first part.
    async fn send_part(&mut self) -> Result<(), StorageError> {
        let Some(buffer) = self.filling.take() else {
            return Ok(());
        };
        let slot = self.memory.slot().await?;
        let id = match &self.id {
            Some(id) => id.clone(),
            None => {
                let id = self
                    .multipart
                    .begin(&self.path, std::mem::take(&mut self.options))
                    .await?;
                self.id = Some(id.clone());
                id
            }
        };
        let data = PutPayload::from_bytes(buffer.freeze());
        let index = self.next_part;
        self.next_part += 1;
        let (multipart, path) = (self.multipart.clone(), self.path.clone());
        self.uploading.spawn(async move {
            let part = multipart.put_part(&path, &id, index, data).await;
            drop(slot);
            Ok((index, part?))
        });
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<(), StorageError> {
        let Some(joined) = self.uploading.join_next().await else {
            return Ok(());
        };
        let (index, part) = joined
            .map_err(|err| StorageError::Internal(format!("a part upload failed: {err}")))??;
        if self.done.len() <= index {
            self.done.resize(index + 1, None);
        }
        self.done[index] = Some(part);
        Ok(())
    }

    /// Stores what is buffered — as the whole object if no part was sent yet, else as
    /// the last part — and completes the object. On failure the caller aborts.
    pub async fn finish(&mut self) -> Result<(), StorageError> {
        let Some(id) = self.id.clone() else {
            let data = self
                .filling
                .take()
                .map(|buffer| PutPayload::from_bytes(buffer.freeze()))
                .unwrap_or_default();
            let _slot = self.memory.slot().await?;
            let options = PutOptions {
                attributes: std::mem::take(&mut self.options.attributes),
                ..Default::default()
            };
            self.multipart
                .s3
                .put_opts(&self.path, data, options)
                .await?;
            return Ok(());
        };
        self.send_part().await?;
        while !self.uploading.is_empty() {
            self.settle_one().await?;
        }
        let parts = std::mem::take(&mut self.done)
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| StorageError::Internal("a part is missing".into()))?;
        self.multipart.complete(&self.path, &id, parts).await
    }

    /// Stops the part uploads and aborts the multipart upload, if one was started.
    pub async fn abort(mut self) {
        self.uploading.shutdown().await;
        if let Some(id) = &self.id {
            self.multipart.abort(&self.path, id).await;
        }
    }
}
