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
//! The same multipart uploads carry both upload paths: a stream's bytes are cut into
//! parts by `parts.rs`, a resumable session's chunks are its parts (see `sessions.rs`),
//! so completing a session is one `CompleteMultipartUpload`, not a copy.

use std::sync::Arc;

use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, PutMultipartOptions, PutPayload};

use crate::error::StorageError;
use crate::index::Index;

/// How long a replica holds the abort of an abandoned upload (or of an expired
/// session's) before another replica's cleanup may take it over: far longer than an
/// abort takes, short enough that a replica dying mid-cleanup delays it little.
pub const CLEANUP_CLAIM: std::time::Duration = std::time::Duration::from_secs(60);

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

    /// The S3 store itself, for a file small enough to be one PUT.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.s3.clone()
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

    /// The id of the multipart upload building `path`, while it is neither completed
    /// nor aborted.
    pub async fn recorded(&self, path: &Path) -> Result<Option<String>, StorageError> {
        self.index.multipart_id(path.as_ref()).await
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

    /// Aborts every abandoned upload S3 confirms that no other replica's cleanup holds;
    /// returns how many it aborted and the last error among those it could not (their
    /// claims lapse, and whichever cleanup comes next tries again).
    pub async fn retry_abandoned(&self) -> Result<(usize, Option<StorageError>), StorageError> {
        let mut aborted = 0;
        let mut failed = None;
        let now = crate::files::now_ms();
        let claimed = self
            .index
            .claim_abandoned_multiparts(now, now + CLEANUP_CLAIM.as_millis() as i64)
            .await?;
        for (key, id) in claimed {
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
