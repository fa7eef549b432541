//! Small files: one client-streaming `Upload` call — metadata, 1 MiB chunks, then `end`.
//!
//! The metadata declares the size and SHA-256 and the stream closes with `end`: the
//! server refuses a stream that merely stops (it cannot tell a cancelled client from a
//! finished one), and checks the bytes against both declarations before keeping them.
//! Chunks are read lazily as tonic pulls them, so the file is never in memory and a slow
//! network slows the reading down.

use std::sync::{Arc, Mutex, PoisonError};

use futures::Stream;
use strongbox_proto::storage::v1::{FileMetadata, UploadEnd, UploadRequest, upload_request};

use super::Uploaded;
use super::local::{self, CHUNK_SIZE, LocalFile};
use crate::errors::CliError;
use crate::progress::Transfer;
use crate::session::Session;

/// A read error of the file, noted by the request stream (which can only end, not fail).
type ReadFailure = Arc<Mutex<Option<std::io::Error>>>;

pub async fn upload(
    session: &mut Session,
    file: &LocalFile,
    transfer: &Transfer,
) -> Result<Uploaded, CliError> {
    let sha256 = local::sha256(file, transfer).await?;
    let metadata = &file.metadata(&sha256);
    let response = session
        .call(|mut clients| async move {
            let source = file.open().await?;
            transfer.sending(0);
            let failure = ReadFailure::default();
            let messages = messages(metadata.clone(), source, transfer.clone(), failure.clone());
            let outcome = clients.storage.upload(messages).await;
            // A stream cut short by a read error leaves the server with fewer bytes than
            // declared, so it refuses the upload; the read error is the better message.
            if let Some(err) = failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                return Err(CliError::file(&file.shown, err));
            }
            Ok(outcome?.into_inner())
        })
        .await?;
    Ok(Uploaded::streamed(file, response))
}

enum Next {
    Metadata(FileMetadata, tokio::fs::File),
    Chunk(tokio::fs::File),
    Done,
}

fn messages(
    metadata: FileMetadata,
    source: tokio::fs::File,
    transfer: Transfer,
    failure: ReadFailure,
) -> impl Stream<Item = UploadRequest> + Send + 'static {
    futures::stream::unfold(Next::Metadata(metadata, source), move |next| {
        let transfer = transfer.clone();
        let failure = failure.clone();
        async move {
            let (payload, after) = match next {
                Next::Metadata(metadata, source) => (
                    upload_request::Payload::Metadata(metadata),
                    Next::Chunk(source),
                ),
                Next::Chunk(mut source) => match local::read_chunk(&mut source, CHUNK_SIZE).await {
                    Ok(chunk) if chunk.is_empty() => {
                        (upload_request::Payload::End(UploadEnd {}), Next::Done)
                    }
                    Ok(chunk) => {
                        transfer.sent(chunk.len() as u64);
                        (upload_request::Payload::Chunk(chunk), Next::Chunk(source))
                    }
                    Err(err) => {
                        *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(err);
                        return None;
                    }
                },
                Next::Done => return None,
            };
            let message = UploadRequest {
                payload: Some(payload),
            };
            Some((message, after))
        }
    })
}
