//! The `storage.v1.StorageService` implementation: authenticate, parse, delegate to
//! [`Storage`], map errors once (`error.rs`).

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use strongbox_common::jwt::Verifier;
use strongbox_proto::storage::v1::storage_service_server::StorageService;
use strongbox_proto::storage::v1::{
    AbortUploadRequest, AbortUploadResponse, CompleteUploadRequest, CompleteUploadResponse,
    CreateUploadRequest, CreateUploadResponse, DeleteFileRequest, DeleteFileResponse,
    DownloadRequest, DownloadResponse, FileInfo, FileMetadata, GetDownloadUrlRequest,
    GetDownloadUrlResponse, GetUploadStatusRequest, GetUploadStatusResponse, GetUsageRequest,
    GetUsageResponse, ListFilesRequest, ListFilesResponse, PutFileRequest, PutFileResponse,
    StatFileRequest, StatFileResponse, UploadChunkRequest, UploadChunkResponse, UploadRequest,
    UploadResponse,
};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::error::StorageError;
use crate::files::{ByteRange, DownloadStream, NewFile, Storage, now_ms, timestamp_ms};
use crate::index::FileRow;
use crate::names::UploadId;
use crate::protocol::{Step, UploadProtocol};
use crate::sink::UploadSink;
use crate::usage::InFlight;

pub struct StorageApi {
    pub(crate) storage: Arc<Storage>,
    pub(crate) verifier: Verifier,
}

/// Runs `work` as its own task and waits for it. A client that hangs up makes tonic drop
/// the call's future; work that must not stop half-way (completing or aborting a
/// multipart upload) then still runs to the end.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, StorageError>> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::spawn(work)
        .await
        .map_err(|err| StorageError::Internal(format!("upload task failed: {err}")))?
}

/// Counts file bytes received from clients, on every upload path, stored or not.
fn received(bytes: usize) {
    metrics::counter!("strongbox_upload_bytes_total").increment(bytes as u64);
}

/// Stores one Upload stream (its shape is checked by [`UploadProtocol`]): metadata,
/// then chunks into the sink, then commit. Any failure aborts the multipart upload
/// before the error is returned.
async fn store_stream(
    storage: Arc<Storage>,
    user: Uuid,
    mut stream: Streaming<UploadRequest>,
) -> Result<FileRow, StorageError> {
    let first = stream.message().await.map_err(StorageError::ClientStream)?;
    let (metadata, mut protocol) = UploadProtocol::start(first)?;
    let file = storage.plan(user, metadata)?;
    let mut upload = storage.admit_file(&file).await?;
    let mut sink = storage.open_sink(&file);
    if let Err(err) = receive(&mut stream, &mut protocol, &mut sink, &mut upload).await {
        tracing::info!(%err, received = sink.received(), "upload failed; aborting");
        sink.abort().await;
        upload.end().await;
        return Err(err);
    }
    storage.commit(file, sink, upload).await
}

/// Moves every chunk of the stream into the sink, within the upload's quota, until the
/// protocol says the file is complete.
async fn receive(
    stream: &mut Streaming<UploadRequest>,
    protocol: &mut UploadProtocol,
    sink: &mut UploadSink,
    upload: &mut InFlight,
) -> Result<(), StorageError> {
    loop {
        let message = stream.message().await.map_err(StorageError::ClientStream)?;
        match protocol.next(message)? {
            Step::Chunk(chunk) => {
                received(chunk.len());
                upload.cover(sink.received() + chunk.len() as u64).await?;
                sink.write(chunk).await?
            }
            Step::Continue => {}
            Step::Done => return Ok(()),
        }
    }
}

#[tonic::async_trait]
impl StorageService for StorageApi {
    async fn upload(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResponse>, Status> {
        let user = self.verifier.authenticate(&request).await?;
        let row = detached(store_stream(
            self.storage.clone(),
            user,
            request.into_inner(),
        ))
        .await?;
        Ok(Response::new(upload_response(
            self.storage.describe(&row).await?,
        )))
    }

    async fn put_file(
        &self,
        request: Request<PutFileRequest>,
    ) -> Result<Response<PutFileResponse>, Status> {
        let user = self.verifier.authenticate(&request).await?;
        let PutFileRequest { metadata, data } = request.into_inner();
        let metadata = required(metadata)?;
        let limit = self.storage.max_chunk_bytes;
        if data.len() as u64 > limit {
            return Err(StorageError::MessageTooLarge { limit }.into());
        }
        received(data.len());
        let file = self.storage.plan(user, metadata)?;
        let upload = self.storage.admit_whole(&file, data.len() as u64).await?;
        let storage = self.storage.clone();
        let row = detached(async move { storage.store_whole(file, data, upload).await }).await?;
        let file = self.storage.describe(&row).await?;
        Ok(Response::new(PutFileResponse { file: Some(file) }))
    }

    async fn create_upload(
        &self,
        request: Request<CreateUploadRequest>,
    ) -> Result<Response<CreateUploadResponse>, Status> {
        let user = self.verifier.authenticate(&request).await?;
        let metadata = required(request.into_inner().metadata)?;
        let file = self.storage.plan(user, metadata)?;
        Ok(Response::new(self.storage.sessions.create(file).await?))
    }

    async fn upload_chunk(
        &self,
        request: Request<UploadChunkRequest>,
    ) -> Result<Response<UploadChunkResponse>, Status> {
        let user = self.verifier.authenticate(&request).await?;
        let chunk = request.into_inner();
        received(chunk.data.len());
        let id = UploadId::parse(&chunk.upload_id)?;
        let offset = self
            .storage
            .sessions
            .append(user, id, chunk.offset, chunk.data)
            .await?;
        Ok(Response::new(UploadChunkResponse { offset }))
    }

    async fn get_upload_status(
        &self,
        request: Request<GetUploadStatusRequest>,
    ) -> Result<Response<GetUploadStatusResponse>, Status> {
        let user = self.verifier.authenticate(&request).await?;
        let id = UploadId::parse(&request.into_inner().upload_id)?;
        Ok(Response::new(self.storage.sessions.status(user, id).await?))
    }

    async fn complete_upload(
        &self,
        request: Request<CompleteUploadRequest>,
    ) -> Result<Response<CompleteUploadResponse>, Status> {
        let user = self.verifier.authenticate(&request).await?;
        let storage = self.storage.clone();
        let id = UploadId::parse(&request.into_inner().upload_id)?;
        let row = detached(async move {
            let open_sink = |file: &NewFile| storage.open_sink(file);
            storage.sessions.complete(user, id, open_sink).await
        })
        .await?;
        let file = self.storage.describe(&row).await?;
        Ok(Response::new(CompleteUploadResponse { file: Some(file) }))
    }

    async fn abort_upload(
        &self,
        request: Request<AbortUploadRequest>,
    ) -> Result<Response<AbortUploadResponse>, Status> {
        let user = self.verifier.authenticate(&request).await?;
        let id = UploadId::parse(&request.into_inner().upload_id)?;
        self.storage.sessions.abort(user, id).await?;
        Ok(Response::new(AbortUploadResponse {}))
    }

    async fn list_files(
        &self,
        request: Request<ListFilesRequest>,
    ) -> Result<Response<ListFilesResponse>, Status> {
        let user = self.verifier.authenticate(&request).await?;
        let page = request.into_inner();
        let (files, next_page_token) = self
            .storage
            .list(user, page.page_size, &page.page_token)
            .await?;
        Ok(Response::new(ListFilesResponse {
            files,
            next_page_token,
        }))
    }

    async fn stat_file(
        &self,
        request: Request<StatFileRequest>,
    ) -> Result<Response<StatFileResponse>, Status> {
        let user = self.verifier.authenticate(&request).await?;
        let row = self.storage.file(user, &request.into_inner().key).await?;
        let file = self.storage.describe(&row).await?;
        Ok(Response::new(StatFileResponse { file: Some(file) }))
    }

    async fn get_download_url(
        &self,
        request: Request<GetDownloadUrlRequest>,
    ) -> Result<Response<GetDownloadUrlResponse>, Status> {
        let user = self.verifier.authenticate(&request).await?;
        let wanted = request.into_inner();
        let ttl = Storage::url_ttl(wanted.expires_in)?;
        let row = self.storage.file(user, &wanted.key).await?;
        let (url, expires_at) = self.storage.download_url(&row, ttl).await?;
        Ok(Response::new(GetDownloadUrlResponse {
            url,
            expires_at: Some(timestamp_ms(expires_at * 1000)),
        }))
    }

    type DownloadStream = futures::stream::BoxStream<'static, Result<DownloadResponse, Status>>;

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let row = if request.get_ref().signature.is_empty() {
            let user = self.verifier.authenticate(&request).await?;
            self.storage.file(user, &request.get_ref().key).await?
        } else {
            // A signed link is its own credential (like a presigned S3 URL).
            let link = request.get_ref();
            let now = (now_ms() / 1000) as u64;
            self.storage
                .backend
                .verify_link(&link.key, link.expires, &link.signature, now)?;
            self.storage.index.file_by_key(&link.key).await?
        };
        let range = ByteRange {
            offset: request.get_ref().offset,
            length: request.get_ref().length,
        };
        let stream: DownloadStream = self.storage.download(row, range).await?;
        let messages = stream.map(|payload| {
            payload
                .map(|payload| DownloadResponse {
                    payload: Some(payload),
                })
                .map_err(Status::from)
        });
        Ok(Response::new(messages.boxed()))
    }

    async fn get_usage(
        &self,
        request: Request<GetUsageRequest>,
    ) -> Result<Response<GetUsageResponse>, Status> {
        let user = self.verifier.authenticate(&request).await?;
        let usage = self.storage.index.usage(user, now_ms()).await?;
        let limits = &self.storage.limits;
        Ok(Response::new(GetUsageResponse {
            bytes_used: usage.stored_bytes,
            files: usage.stored_files,
            bytes_reserved: usage.reserved_bytes,
            open_sessions: saturating_u32(usage.open_sessions),
            uploads_in_progress: saturating_u32(usage.uploads_in_progress),
            quota_bytes: limits.quota_bytes,
            max_files: limits.max_files,
            max_open_sessions: limits.max_open_sessions,
            max_concurrent_uploads: limits.max_concurrent_uploads,
        }))
    }

    async fn delete_file(
        &self,
        request: Request<DeleteFileRequest>,
    ) -> Result<Response<DeleteFileResponse>, Status> {
        let user = self.verifier.authenticate(&request).await?;
        self.storage.delete(user, &request.into_inner().key).await?;
        Ok(Response::new(DeleteFileResponse {}))
    }
}

fn saturating_u32(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

fn required(metadata: Option<FileMetadata>) -> Result<FileMetadata, Status> {
    metadata.ok_or_else(|| {
        Status::invalid_argument(
            "metadata is required: filename, content_type and, if known, size and sha256",
        )
    })
}

fn upload_response(file: FileInfo) -> UploadResponse {
    UploadResponse {
        filename: file.filename,
        key: file.key,
        url: file.url,
        status: file.status,
        size: file.size,
        sha256: file.sha256,
        content_type: file.content_type,
        created_at: file.created_at,
        url_expires_at: file.url_expires_at,
    }
}
