//! The streaming core: bytes go into a multipart upload part by part, hashed and
//! counted on the way, so one upload holds at most `parts_in_flight + 1` parts whatever
//! the file size (and, on S3, all uploads' parts in flight together at most
//! `UPLOAD_MEMORY_BYTES`).
//!
//! A multipart upload that is neither finished nor aborted leaks parts on the server, so
//! every path out of an [`UploadSink`] ends in `finish` or `abort`: errors abort
//! explicitly (and are awaited, so nothing is left when the client hears of them), and
//! a sink dropped mid-way — the client hung up and the call was cancelled — aborts in
//! the background. On S3 an abort that cannot reach the server is retried later (see
//! `multipart.rs`); a local directory's upload is a temp file, removed on abort.

use bytes::Bytes;
use object_store::WriteMultipart;
use sha2::{Digest, Sha256};

use crate::error::StorageError;
use crate::multipart::PartWriter;
use crate::names::Sha256Hex;

/// Where the parts go.
pub enum Writer {
    /// S3: parts we send ourselves, with the upload id on record.
    S3(PartWriter),
    /// A local directory: `object_store`'s own multipart (a temp file, renamed on finish).
    Local(WriteMultipart),
}

impl Writer {
    /// Appends `chunk`, waiting while `in_flight` parts are uploading.
    async fn write(&mut self, chunk: Bytes, in_flight: usize) -> Result<(), StorageError> {
        match self {
            Self::S3(parts) => parts.write(chunk, in_flight).await,
            Self::Local(local) => {
                local.wait_for_capacity(in_flight).await?;
                local.put(chunk);
                Ok(())
            }
        }
    }

    /// Completes the object, or aborts it and returns why not.
    async fn finish(self) -> Result<(), StorageError> {
        match self {
            Self::S3(mut parts) => match parts.finish().await {
                Ok(()) => Ok(()),
                Err(err) => {
                    parts.abort().await;
                    Err(err)
                }
            },
            // On failure `finish` aborts the upload itself.
            Self::Local(local) => local.finish().await.map(drop).map_err(Into::into),
        }
    }

    async fn abort(self) {
        match self {
            Self::S3(parts) => parts.abort().await,
            Self::Local(local) => {
                if let Err(err) = local.abort().await {
                    tracing::warn!(%err, "aborting an upload to the local directory failed");
                }
            }
        }
    }
}

/// What a finished upload turned out to be.
#[derive(Debug, Clone)]
pub struct Written {
    pub size: u64,
    pub sha256: Sha256Hex,
}

/// The checks a sink holds its bytes to.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub max_bytes: u64,
    pub size: Option<u64>,
    pub sha256: Option<Sha256Hex>,
}

pub struct UploadSink {
    writer: Option<Writer>,
    parts_in_flight: usize,
    hasher: Sha256,
    received: u64,
    expect: Expectations,
}

impl UploadSink {
    pub fn new(writer: Writer, parts_in_flight: usize, expect: Expectations) -> Self {
        Self {
            writer: Some(writer),
            parts_in_flight,
            hasher: Sha256::new(),
            received: 0,
            expect,
        }
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Appends `chunk`, waiting while `parts_in_flight` parts are still uploading
    /// (backpressure all the way to the client). Fails as soon as a limit is passed.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let received = self.received + chunk.len() as u64;
        if received > self.expect.max_bytes {
            return Err(StorageError::TooLarge {
                limit: self.expect.max_bytes,
            });
        }
        if let Some(declared) = self.expect.size.filter(|&declared| received > declared) {
            return Err(StorageError::SizeMismatch { declared, received });
        }
        let writer = self.writer.as_mut().ok_or_else(finished)?;
        // Hashing a chunk (≤ a few MiB) takes a few milliseconds: cheap enough to stay
        // on the async worker, like TLS encryption would.
        self.hasher.update(&chunk);
        writer.write(chunk, self.parts_in_flight).await?;
        self.received = received;
        Ok(())
    }

    /// Checks the declared size and checksum and completes the object, or aborts it.
    pub async fn finish(mut self) -> Result<Written, StorageError> {
        let sha256 = Sha256Hex::from_digest(&std::mem::take(&mut self.hasher).finalize());
        let received = self.received;
        if let Some(declared) = self.expect.size.filter(|&declared| declared != received) {
            self.abort().await;
            return Err(StorageError::SizeMismatch { declared, received });
        }
        if let Some(declared) = self
            .expect
            .sha256
            .clone()
            .filter(|declared| *declared != sha256)
        {
            self.abort().await;
            return Err(StorageError::ChecksumMismatch {
                declared: declared.as_str().to_owned(),
                actual: sha256.as_str().to_owned(),
            });
        }
        let writer = self.writer.take().ok_or_else(finished)?;
        writer.finish().await?;
        Ok(Written {
            size: self.received,
            sha256,
        })
    }

    /// Discards everything written so far.
    pub async fn abort(mut self) {
        if let Some(writer) = self.writer.take() {
            writer.abort().await;
        }
    }
}

impl Drop for UploadSink {
    fn drop(&mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(writer.abort());
            }
            Err(_) => {
                tracing::warn!("an upload was dropped outside the runtime; its parts may linger")
            }
        }
    }
}

fn finished() -> StorageError {
    StorageError::Internal("the upload was already finished".into())
}
