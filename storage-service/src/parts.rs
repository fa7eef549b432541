//! A stream's bytes cut into multipart parts, in bounded memory, for either backend.
//!
//! Parts are exactly `part_size` (S3 wants every part but the last to be the same
//! size), at most `in_flight` of one upload uploading at once. The multipart upload
//! starts only when a first part is full, so a file smaller than a part is one PUT —
//! one request instead of three, and nothing that could leak.
//!
//! A part's memory is reserved from the shared [`crate::memory::UploadMemory`] (within its user's share) before its first byte is
//! read (just what is left of a declared size, if that is less) and goes back when the
//! part's upload ends. Chunks are copied into the reserved blocks rather than kept as
//! slices: a slice would pin the whole receive buffer it came from, outside the budget.

use std::sync::Arc;

use bytes::Bytes;
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutMultipartOptions, PutOptions, PutPayload};
use tokio::task::JoinSet;

use crate::error::StorageError;
use crate::memory::{Block, Reservation, UserMemory};
use crate::multipart::Multipart;

/// Where the parts go.
#[derive(Clone)]
pub enum Destination {
    /// S3, each upload id on record until S3 confirms it finished (`multipart.rs`).
    S3(Multipart),
    /// A local directory: `object_store`'s own multipart upload, a temp file renamed on
    /// completion and removed on abort.
    Local(Arc<dyn ObjectStore>),
}

/// A multipart upload, once its first part is full.
enum Started {
    S3 { multipart: Multipart, id: String },
    Local(Box<dyn MultipartUpload>),
}

pub struct PartWriter {
    destination: Destination,
    memory: UserMemory,
    path: Path,
    options: PutMultipartOptions,
    started: Option<Started>,
    part_size: usize,
    /// Bytes still to come if the client declared a size: a last part may reserve less.
    remaining: Option<u64>,
    /// Memory for the rest of the part being filled.
    reservation: Option<Reservation>,
    /// The part being filled: its full blocks, the block being filled, its length.
    blocks: Vec<Bytes>,
    block: Option<Block>,
    filled: usize,
    next_part: usize,
    uploading: JoinSet<Result<(usize, Option<PartId>), StorageError>>,
    /// S3's receipts for the parts, by part number.
    done: Vec<Option<PartId>>,
}

impl PartWriter {
    pub fn new(
        destination: Destination,
        memory: UserMemory,
        path: Path,
        options: PutMultipartOptions,
        part_size: usize,
        declared_size: Option<u64>,
    ) -> Self {
        Self {
            destination,
            memory,
            path,
            options,
            started: None,
            part_size,
            remaining: declared_size,
            reservation: None,
            blocks: Vec::new(),
            block: None,
            filled: 0,
            next_part: 0,
            uploading: JoinSet::new(),
            done: Vec::new(),
        }
    }

    /// Appends `chunk`, sending each part as it fills. Waits for memory before a new
    /// part and while `in_flight` parts of this upload are uploading, reading nothing
    /// meanwhile: backpressure all the way to the client.
    pub async fn write(&mut self, mut chunk: Bytes, in_flight: usize) -> Result<(), StorageError> {
        while !chunk.is_empty() {
            if self.block.is_none() {
                if self.reservation.is_none() {
                    // Only here, with no part half-filled, may an upload wait for memory.
                    let wanted = self.remaining.map_or(self.part_size, |remaining| {
                        usize::try_from(remaining).map_or(self.part_size, |r| r.min(self.part_size))
                    });
                    self.reservation = Some(self.memory.reserve(wanted).await?);
                }
                let block = self.reservation.as_mut().and_then(Reservation::block);
                self.block = Some(block.ok_or_else(|| {
                    StorageError::Internal("an upload sent more than its declared size".into())
                })?);
            }
            let block = self.block.as_mut().expect("a block was just taken");
            let copied = block.fill_from(&mut chunk, self.part_size - self.filled);
            self.filled += copied;
            if let Some(remaining) = &mut self.remaining {
                *remaining = remaining.saturating_sub(copied as u64);
            }
            if block.is_full() || self.filled == self.part_size {
                self.seal_block();
            }
            if self.filled == self.part_size {
                while self.uploading.len() >= in_flight {
                    self.settle_one().await?;
                }
                self.send_part().await?;
            }
        }
        Ok(())
    }

    fn seal_block(&mut self) {
        if let Some(block) = self.block.take().filter(|block| !block.is_empty()) {
            self.blocks.push(block.freeze());
        }
    }

    /// The part being filled, as it is now, ready to send.
    fn take_part(&mut self) -> PutPayload {
        self.seal_block();
        self.filled = 0;
        // What the part did not use goes back to the budget now.
        self.reservation = None;
        std::mem::take(&mut self.blocks).into_iter().collect()
    }

    /// Sends the part being filled (if any), starting the multipart upload first if
    /// this is its first part.
    async fn send_part(&mut self) -> Result<(), StorageError> {
        let data = self.take_part();
        if data.content_length() == 0 {
            return Ok(());
        }
        let mut started = match self.started.take() {
            Some(started) => started,
            None => self.start().await?,
        };
        let index = self.next_part;
        self.next_part += 1;
        match &mut started {
            Started::S3 { multipart, id } => {
                let (multipart, path, id) = (multipart.clone(), self.path.clone(), id.clone());
                self.uploading.spawn(async move {
                    let part = multipart.put_part(&path, &id, index, data).await?;
                    Ok((index, Some(part)))
                });
            }
            Started::Local(upload) => {
                let part = upload.put_part(data);
                self.uploading.spawn(async move {
                    part.await?;
                    Ok((index, None))
                });
            }
        }
        self.started = Some(started);
        Ok(())
    }

    async fn start(&mut self) -> Result<Started, StorageError> {
        let options = std::mem::take(&mut self.options);
        Ok(match &self.destination {
            Destination::S3(multipart) => Started::S3 {
                multipart: multipart.clone(),
                id: multipart.begin(&self.path, options).await?,
            },
            Destination::Local(store) => {
                Started::Local(store.put_multipart_opts(&self.path, options).await?)
            }
        })
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
        self.done[index] = part;
        Ok(())
    }

    /// Stores what is buffered — as the whole object if no part was sent yet, else as
    /// the last part — and completes the object. On failure the caller aborts.
    pub async fn finish(&mut self) -> Result<(), StorageError> {
        if self.started.is_none() {
            // Nothing sent yet: the whole file is this one part.
            let data = self.take_part();
            let options = PutOptions {
                attributes: std::mem::take(&mut self.options.attributes),
                ..Default::default()
            };
            let store = match &self.destination {
                Destination::S3(multipart) => multipart.store(),
                Destination::Local(store) => store.clone(),
            };
            store.put_opts(&self.path, data, options).await?;
            return Ok(());
        }
        self.send_part().await?;
        while !self.uploading.is_empty() {
            self.settle_one().await?;
        }
        match &mut self.started {
            Some(Started::S3 { multipart, id }) => {
                let parts = std::mem::take(&mut self.done)
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| StorageError::Internal("a part is missing".into()))?;
                multipart.complete(&self.path, id, parts).await
            }
            Some(Started::Local(upload)) => {
                upload.complete().await?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Stops the part uploads and aborts the multipart upload, if one was started.
    pub async fn abort(mut self) {
        self.uploading.shutdown().await;
        match &mut self.started {
            Some(Started::S3 { multipart, id }) => multipart.abort(&self.path, id).await,
            Some(Started::Local(upload)) => {
                if let Err(err) = upload.abort().await {
                    tracing::warn!(%err, path = %self.path, "aborting an upload to the local directory failed");
                }
            }
            None => {}
        }
    }
}
