//! Large files: a resumable session (CreateUpload, UploadChunk…, CompleteUpload).
//!
//! The session's id is written to `uploads.json` before the first byte is sent, so
//! whatever stops this process (a lost connection, Ctrl-C, a crash) the next `upload` of
//! the unchanged file asks GetUploadStatus where the server stands and continues from
//! there. Each chunk is its own call, so an access token that expires during an hour-long
//! upload is refreshed between chunks, and a re-sent chunk is harmless (the server
//! ignores bytes it already has).

use std::io::SeekFrom;

use strongbox_proto::storage::v1::{
    CompleteUploadRequest, CreateUploadRequest, FileInfo, GetUploadStatusRequest,
    UploadChunkRequest,
};
use tokio::io::AsyncSeekExt;
use tonic::Code;

use super::Uploaded;
use super::local::{self, LocalFile};
use crate::errors::CliError;
use crate::pending_uploads::{PendingUpload, PendingUploads};
use crate::progress::Transfer;
use crate::session::Session;

/// A session ready to receive bytes from `offset`.
struct Plan {
    upload_id: String,
    chunk_size: usize,
    offset: u64,
    /// Where a session from an earlier run stood, if this continues one.
    resumed_from: Option<u64>,
}

pub async fn upload(
    session: &mut Session,
    pending: &PendingUploads,
    file: &LocalFile,
    transfer: &Transfer,
) -> Result<Uploaded, CliError> {
    let mut started_over = false;
    loop {
        let plan = prepare(session, pending, file, transfer).await?;
        match send(session, file, &plan, transfer).await {
            Ok(stored) => {
                pending.forget(&plan.upload_id).await?;
                return Ok(Uploaded::resumable(file, stored, plan.resumed_from));
            }
            // The session expired, or was swept, on the server: its bytes are gone, so
            // the file starts over (once; a second loss is an error worth seeing).
            Err(err) if err.code() == Some(Code::NotFound) && !started_over => {
                pending.forget(&plan.upload_id).await?;
                started_over = true;
            }
            Err(err) => {
                // DATA_LOSS: the file changed without its size or time changing; the
                // session can never complete. Anything else may pass: keep it to resume.
                if err.code() == Some(Code::DataLoss) {
                    pending.forget(&plan.upload_id).await?;
                }
                return Err(err);
            }
        }
    }
}

/// Continues the session an earlier run left for this file, or starts one.
async fn prepare(
    session: &mut Session,
    pending: &PendingUploads,
    file: &LocalFile,
    transfer: &Transfer,
) -> Result<Plan, CliError> {
    let identity = file.identity(session.server());
    if let Some(entry) = pending.find(&identity).await? {
        if let Some(offset) = server_offset(session, &entry.upload_id, file.size).await? {
            return Ok(Plan {
                // The size the session started with: its chunks so far all have it.
                chunk_size: usize::try_from(entry.chunk_size).unwrap_or(MAX_SESSION_CHUNK),
                upload_id: entry.upload_id,
                offset,
                resumed_from: Some(offset),
            });
        }
        pending.forget(&entry.upload_id).await?;
    }

    let sha256 = local::sha256(file, transfer).await?;
    let request = &CreateUploadRequest {
        metadata: Some(file.metadata(&sha256)),
    };
    let created = session
        .call(|mut clients| async move {
            Ok(clients
                .storage
                .create_upload(request.clone())
                .await?
                .into_inner())
        })
        .await?;
    let chunk = chunk_size(created.max_chunk_size, created.min_chunk_size);
    pending
        .remember(PendingUpload {
            server: identity.server,
            path: identity.path,
            size: identity.size,
            modified_ns: identity.modified_ns,
            upload_id: created.upload_id.clone(),
            sha256,
            chunk_size: chunk as u64,
        })
        .await?;
    Ok(Plan {
        upload_id: created.upload_id,
        chunk_size: chunk,
        offset: 0,
        resumed_from: None,
    })
}

/// Where the server's session stands; `None` when it is gone or cannot be this file's.
async fn server_offset(
    session: &mut Session,
    upload_id: &str,
    size: u64,
) -> Result<Option<u64>, CliError> {
    let status = session
        .call(|mut clients| async move {
            let request = GetUploadStatusRequest {
                upload_id: upload_id.to_owned(),
            };
            Ok(clients
                .storage
                .get_upload_status(request)
                .await?
                .into_inner())
        })
        .await;
    match status {
        Ok(status) if status.offset <= size => Ok(Some(status.offset)),
        Ok(_) => Ok(None),
        Err(err) if err.code() == Some(Code::NotFound) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Sends the bytes from the plan's offset, then completes the session.
async fn send(
    session: &mut Session,
    file: &LocalFile,
    plan: &Plan,
    transfer: &Transfer,
) -> Result<FileInfo, CliError> {
    let mut source = file.open().await?;
    let mut offset = plan.offset;
    let mut position = u64::MAX;
    transfer.sending(offset);
    while offset < file.size {
        if position != offset {
            source
                .seek(SeekFrom::Start(offset))
                .await
                .map_err(|err| CliError::file(&file.shown, err))?;
        }
        let want = plan
            .chunk_size
            .min(usize::try_from(file.size - offset).unwrap_or(usize::MAX));
        let data = local::read_chunk(&mut source, want)
            .await
            .map_err(|err| CliError::file(&file.shown, err))?;
        if data.is_empty() {
            return Err(CliError::Refused(format!(
                "{} became shorter while it was being uploaded; upload it again",
                file.shown.display()
            )));
        }
        position = offset + data.len() as u64;
        let upload_id = plan.upload_id.as_str();
        let data = &data;
        let acknowledged = session
            .call(|mut clients| async move {
                let request = UploadChunkRequest {
                    upload_id: upload_id.to_owned(),
                    offset,
                    data: data.clone(),
                };
                Ok(clients
                    .storage
                    .upload_chunk(request)
                    .await?
                    .into_inner()
                    .offset)
            })
            .await?;
        // The server's offset is the truth; only a server that went backwards (or stood
        // still) could make this loop run forever.
        if acknowledged <= offset {
            return Err(CliError::Internal(format!(
                "the server acknowledged offset {acknowledged} after a chunk at {offset}"
            )));
        }
        offset = acknowledged;
        transfer.transferred_up_to(offset);
    }

    transfer.finishing();
    let upload_id = plan.upload_id.as_str();
    let completed = session
        .call(|mut clients| async move {
            let request = CompleteUploadRequest {
                upload_id: upload_id.to_owned(),
            };
            Ok(clients.storage.complete_upload(request).await?.into_inner())
        })
        .await?;
    completed.file.ok_or_else(|| {
        CliError::Internal("the server answered CompleteUpload without the file".into())
    })
}

/// The most one UploadChunk carries. Each chunk is a round trip, and on S3 a multipart
/// part (at least 5 MiB but the last), so chunks are larger than a streaming upload's;
/// 8 MiB is also the server's default maximum.
const MAX_SESSION_CHUNK: usize = 8 * 1024 * 1024;

/// What one UploadChunk carries: [`MAX_SESSION_CHUNK`], or less if the server accepts less.
/// Never under the server's `min_chunk_size` (S3's part minimum), which wins over ours.
fn chunk_size(server_max: u64, server_min: u64) -> usize {
    let at_most = match usize::try_from(server_max) {
        Ok(0) | Err(_) => MAX_SESSION_CHUNK,
        Ok(max) => max.min(MAX_SESSION_CHUNK),
    };
    at_most.max(usize::try_from(server_min).unwrap_or(usize::MAX))
}
