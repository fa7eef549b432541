//! The streaming core: bytes go into a multipart upload part by part (`parts.rs`),
//! hashed and counted on the way, so one upload holds at most `parts_in_flight + 1`
//! parts whatever the file size, and all uploads together at most `UPLOAD_MEMORY_BYTES`.
//!
//! A multipart upload that is neither finished nor aborted leaks parts on the server, so
//! every path out of an [`UploadSink`] ends in `finish` or `abort`: errors abort
//! explicitly (and are awaited, so nothing is left when the client hears of them), and
//! a sink dropped mid-way — the client hung up and the call was cancelled — aborts in
//! the background. On S3 an abort that cannot reach the server is retried later (see
//! `multipart.rs`); a local directory's upload is a temp file, removed on abort.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::error::StorageError;
use crate::names::Sha256Hex;
use crate::parts::PartWriter;

/// What a finished upload turned out to be.
#[derive(Debug, Clone)]
pub struct Written {
    pub size: u64,
    pub sha256: Sha256Hex,
}

/// The checks an upload's bytes are held to.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub max_bytes: u64,
    pub size: Option<u64>,
    pub sha256: Option<Sha256Hex>,
}

impl Expectations {
    /// Whether `received` bytes so far can still make a valid file: checked as bytes
    /// arrive, so an upload fails the moment it passes a limit.
    pub fn check_received(&self, received: u64) -> Result<(), StorageError> {
        if received > self.max_bytes {
            return Err(StorageError::TooLarge {
                limit: self.max_bytes,
            });
        }
        match self.size {
            Some(declared) if received > declared => {
                Err(StorageError::SizeMismatch { declared, received })
            }
            _ => Ok(()),
        }
    }

    /// Whether the complete content is what the client declared.
    pub fn check_complete(&self, written: &Written) -> Result<(), StorageError> {
        let received = written.size;
        if let Some(declared) = self.size.filter(|&declared| declared != received) {
            return Err(StorageError::SizeMismatch { declared, received });
        }
        match &self.sha256 {
            Some(declared) if *declared != written.sha256 => Err(StorageError::ChecksumMismatch {
                declared: declared.as_str().to_owned(),
                actual: written.sha256.as_str().to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

pub struct UploadSink {
    writer: Option<PartWriter>,
    parts_in_flight: usize,
    hasher: Sha256,
    received: u64,
    expect: Expectations,
}

impl UploadSink {
    pub fn new(writer: PartWriter, parts_in_flight: usize, expect: Expectations) -> Self {
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
        self.expect.check_received(received)?;
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
        let written = Written {
            size: self.received,
            sha256: Sha256Hex::from_digest(&std::mem::take(&mut self.hasher).finalize()),
        };
        if let Err(err) = self.expect.check_complete(&written) {
            self.abort().await;
            return Err(err);
        }
        let mut writer = self.writer.take().ok_or_else(finished)?;
        if let Err(err) = writer.finish().await {
            writer.abort().await;
            return Err(err);
        }
        Ok(written)
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
