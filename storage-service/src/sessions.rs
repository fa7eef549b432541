//! Resumable uploads for clients that cannot client-stream (browsers over grpc-web).
//!
//! A session is a row in the index; each acknowledged chunk is staged as its own object
//! under `_uploads/<session>/`, outside every user namespace, and recorded in the same
//! transaction that advances the session's offset. Both survive a restart. Completing
//! streams the staged chunks, in order, through the same [`UploadSink`] as a streaming
//! upload (so the same size, checksum and limit checks apply), then drops the staging.
//! Expired sessions are swept by [`Storage::purge_expired_sessions`].

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use strongbox_proto::storage::v1::{CreateUploadResponse, FileMetadata, GetUploadStatusResponse};
use uuid::Uuid;

use crate::error::StorageError;
use crate::files::{NewFile, Storage, file_row, now_ms, timestamp_ms};
use crate::index::{FileRow, SessionRow};
use crate::names::{ObjectKey, Sha256Hex};
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
        let now = now_ms();
        let session = SessionRow {
            id: Uuid::new_v4().to_string(),
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
            state: OPEN.to_owned(),
            created_at: now,
            expires_at: now + self.session_ttl.as_millis() as i64,
        };
        self.index.insert_session(&session).await?;
        tracing::info!(upload_id = %session.id, "upload session created");
        Ok(CreateUploadResponse {
            upload_id: session.id,
            max_chunk_size: self.max_chunk_bytes,
            expires_at: Some(timestamp_ms(session.expires_at)),
        })
    }

    /// Stores `data` at `offset` and returns the session's new length. Bytes the session
    /// already has are acknowledged without being stored again.
    pub async fn append(
        &self,
        user: Uuid,
        id: &str,
        offset: u64,
        data: Bytes,
    ) -> Result<u64, StorageError> {
        let session = self.open_session(user, id).await?;
        let received = session.received as u64;
        let length = data.len() as u64;
        if length > self.max_chunk_bytes {
            return Err(StorageError::InvalidArgument(format!(
                "a chunk may hold at most {} bytes",
                self.max_chunk_bytes
            )));
        }
        if offset + length <= received {
            return Ok(received);
        }
        if offset != received {
            return Err(StorageError::FailedPrecondition(format!(
                "the session holds {received} bytes, so the next chunk must start at offset {received}, not {offset}"
            )));
        }
        let total = received + length;
        if total > self.policy.max_bytes {
            return Err(StorageError::TooLarge {
                limit: self.policy.max_bytes,
            });
        }
        if let Some(declared) = session
            .declared_size
            .map(|size| size as u64)
            .filter(|&size| total > size)
        {
            return Err(StorageError::SizeMismatch {
                declared,
                received: total,
            });
        }
        // Named by offset *and* length, so a racing writer of the same offset cannot
        // overwrite the chunk that wins the index update.
        self.backend
            .store
            .put(
                &staged_chunk(id, offset, length),
                PutPayload::from_bytes(data),
            )
            .await?;
        match self
            .index
            .append_chunk(id, offset as i64, length as i64)
            .await?
        {
            Some(new_length) => Ok(new_length as u64),
            None => {
                self.backend
                    .store
                    .delete(&staged_chunk(id, offset, length))
                    .await
                    .ok();
                let now = self.index.session(user, id, now_ms()).await?;
                Err(StorageError::FailedPrecondition(format!(
                    "another chunk was stored at this offset first; the session now holds {} bytes",
                    now.received
                )))
            }
        }
    }

    pub async fn session_status(
        &self,
        user: Uuid,
        id: &str,
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

    /// Assembles the staged chunks into the file.
    pub async fn complete(&self, user: Uuid, id: &str) -> Result<FileRow, StorageError> {
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
                "this upload is already being completed".into(),
            ));
        }
        match self.assemble(&session).await {
            Ok(row) => {
                self.remove_staging(id).await;
                tracing::info!(upload_id = %id, key = %row.key, "upload session completed");
                Ok(row)
            }
            // The bytes are not what was declared: keeping them would only fail again.
            Err(err @ StorageError::ChecksumMismatch { .. }) => {
                self.discard(id).await;
                Err(err)
            }
            Err(err) => {
                self.index.set_session_state(id, COMPLETING, OPEN).await?;
                Err(err)
            }
        }
    }

    async fn assemble(&self, session: &SessionRow) -> Result<FileRow, StorageError> {
        let file = new_file(session)?;
        let mut sink = self.open_sink(&file).await?;
        for (start, length) in self.index.chunks(&session.id).await? {
            let staged = self
                .backend
                .store
                .get(&staged_chunk(&session.id, start as u64, length as u64))
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
        if let Err(err) = self.index.complete_session(&session.id, &row).await {
            self.remove_object(&file.key).await;
            return Err(err);
        }
        Ok(row)
    }

    pub async fn abort_session(&self, user: Uuid, id: &str) -> Result<(), StorageError> {
        self.open_session(user, id).await?;
        self.discard(id).await;
        tracing::info!(upload_id = %id, "upload session aborted");
        Ok(())
    }

    /// Deletes every session whose time ran out, with its staged chunks.
    pub async fn purge_expired_sessions(&self) -> Result<usize, StorageError> {
        let expired = self.index.expired_sessions(now_ms()).await?;
        for id in &expired {
            self.discard(id).await;
        }
        Ok(expired.len())
    }

    async fn open_session(&self, user: Uuid, id: &str) -> Result<SessionRow, StorageError> {
        let id = Uuid::parse_str(id).map_err(|_| {
            StorageError::NotFound("no upload session with this id; start a new upload")
        })?;
        let session = self.index.session(user, &id.to_string(), now_ms()).await?;
        if session.state != OPEN {
            return Err(StorageError::FailedPrecondition(
                "this upload is being completed".into(),
            ));
        }
        Ok(session)
    }

    async fn discard(&self, id: &str) {
        if let Err(err) = self.index.delete_session(id).await {
            tracing::warn!(%err, upload_id = %id, "could not delete an upload session");
            return;
        }
        self.remove_staging(id).await;
    }

    async fn remove_staging(&self, id: &str) {
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

fn staged_chunk(id: &str, start: u64, length: u64) -> Path {
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
