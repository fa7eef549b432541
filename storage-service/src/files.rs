//! Stored files: turning an upload into a file, and listing, describing, downloading
//! and deleting files — always within the caller's namespace.

use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectStoreExt, PutOptions};
use sha2::{Digest, Sha256};
use strongbox_proto::storage::v1::{FileInfo, FileMetadata, download_response};
use uuid::Uuid;

use crate::backend::Backend;
use crate::error::StorageError;
use crate::index::{Cursor, FileRow, Index};
use crate::memory::UploadMemory;
use crate::multipart::Multipart;
use crate::names::{ObjectKey, SafeName, Sha256Hex};
use crate::parts::{Destination, PartWriter};
use crate::pieces::{self, Gathering, coalesce, stall_deadline};
use crate::policy::{ContentType, UploadPolicy};
use crate::sessions::Sessions;
use crate::sink::{Expectations, UploadSink, Written};
use crate::usage::{InFlight, Limits};

pub const STATUS_UPLOADED: &str = "uploaded";
/// Original filenames longer than this are refused (the key uses a shortened form anyway).
const MAX_FILENAME_BYTES: usize = 4096;
const DEFAULT_URL_TTL: Duration = Duration::from_secs(3600);
/// S3 presigned URLs cannot outlive 7 days.
const MAX_URL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_PAGE_SIZE: u32 = 100;
/// How a download's bytes become messages: at most a fraction of the 4 MiB every gRPC
/// client accepts by default, and one HTTP/2 stream window; under 256 KiB, a message
/// waits 2 ms while more gathers in the socket (at 130 MiB/s, about 256 KiB).
const DOWNLOAD_MESSAGES: Gathering = Gathering {
    limit: 1024 * 1024 - 64 * 1024,
    at_least: 256 * 1024,
    linger: Duration::from_millis(2),
};
const MAX_PAGE_SIZE: u32 = 1000;

/// Everything the service shares across calls.
pub struct Storage {
    pub backend: Backend,
    pub index: Index,
    /// S3's multipart uploads with their ids on record; `None` for a local directory.
    pub multipart: Option<Multipart>,
    /// The memory all uploads' file data shares.
    pub upload_memory: UploadMemory,
    pub policy: UploadPolicy,
    pub part_size: usize,
    pub parts_in_flight: usize,
    pub max_chunk_bytes: u64,
    /// What each user may store and have in progress.
    pub limits: Limits,
    /// Resumable uploads.
    pub sessions: Sessions,
}

/// A checked request to store a new file.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub user: Uuid,
    pub key: ObjectKey,
    pub filename: String,
    pub content_type: ContentType,
    pub expect: Expectations,
}

pub type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<download_response::Payload, StorageError>> + Send>>;

impl Storage {
    /// Checks what a client declared about a file and picks its key.
    pub fn plan(&self, user: Uuid, metadata: FileMetadata) -> Result<NewFile, StorageError> {
        if metadata.filename.len() > MAX_FILENAME_BYTES {
            return Err(StorageError::InvalidArgument(format!(
                "filename is longer than {MAX_FILENAME_BYTES} bytes"
            )));
        }
        // No file system allows it, and PostgreSQL's text cannot hold it: refused
        // alike on every database rather than stored on one and not another.
        if metadata.filename.contains('\0') {
            return Err(StorageError::InvalidArgument(
                "filename contains a NUL character (U+0000); rename the file without it".into(),
            ));
        }
        let content_type = ContentType::parse(&metadata.content_type)?;
        self.policy.check_content_type(&content_type)?;
        self.policy.check_declared_size(metadata.size)?;
        let sha256 = metadata
            .sha256
            .as_deref()
            .map(Sha256Hex::parse)
            .transpose()?;
        let safe = SafeName::from_original(&metadata.filename);
        let filename = if metadata.filename.is_empty() {
            safe.as_str().to_owned()
        } else {
            metadata.filename
        };
        Ok(NewFile {
            user,
            key: ObjectKey::generate(user, &safe, now_ms() as u64 / 1000)?,
            filename,
            content_type,
            expect: Expectations {
                max_bytes: self.policy.max_bytes,
                size: metadata.size,
                sha256,
            },
        })
    }

    /// Puts a new Upload stream on record, holding its declared size of the user's
    /// quota (or, without one, a part at a time as it arrives), or refuses it.
    pub async fn admit_file(&self, file: &NewFile) -> Result<InFlight, StorageError> {
        match file.expect.size {
            Some(declared) => {
                self.index
                    .admit_file(file.user, declared, &self.limits)
                    .await
            }
            None => Ok(self
                .index
                .admit_file(file.user, 0, &self.limits)
                .await?
                .growing_by(self.part_size as u64)),
        }
    }

    /// Puts a file that arrived whole (PutFile) on record, or refuses it.
    pub async fn admit_whole(&self, file: &NewFile, bytes: u64) -> Result<InFlight, StorageError> {
        self.index.admit_file(file.user, bytes, &self.limits).await
    }

    /// Where `file`'s bytes go; its multipart upload starts once a first part is full.
    pub fn open_sink(&self, file: &NewFile) -> UploadSink {
        let options = self
            .backend
            .put_options(&file.filename, file.content_type.as_str());
        let destination = match &self.multipart {
            Some(multipart) => Destination::S3(multipart.clone()),
            None => Destination::Local(self.backend.store.clone()),
        };
        let writer = PartWriter::new(
            destination,
            self.upload_memory.for_user(file.user),
            file.key.path(),
            options,
            self.part_size,
            file.expect.size,
        );
        UploadSink::new(writer, self.parts_in_flight, file.expect.clone())
    }

    /// Completes the object and makes it a visible file, which takes over the upload's
    /// reservation.
    pub async fn commit(
        &self,
        file: NewFile,
        sink: UploadSink,
        upload: InFlight,
    ) -> Result<FileRow, StorageError> {
        match sink.finish().await {
            Ok(written) => self.record(&file, written, upload).await,
            Err(err) => {
                upload.end().await;
                Err(err)
            }
        }
    }

    /// Stores a file that arrived whole (PutFile) as one PUT and makes it a visible file.
    /// Its bytes are already in memory, reserved for the call (`guard.rs`): they go to
    /// storage as they are, not through a [`UploadSink`]'s part buffers.
    pub async fn store_whole(
        &self,
        file: NewFile,
        data: Bytes,
        upload: InFlight,
    ) -> Result<FileRow, StorageError> {
        match self.put_whole(&file, data).await {
            Ok(written) => self.record(&file, written, upload).await,
            Err(err) => {
                upload.end().await;
                Err(err)
            }
        }
    }

    async fn put_whole(&self, file: &NewFile, data: Bytes) -> Result<Written, StorageError> {
        file.expect.check_received(data.len() as u64)?;
        let written = Written {
            size: data.len() as u64,
            sha256: Sha256Hex::from_digest(&Sha256::digest(&data)),
        };
        file.expect.check_complete(&written)?;
        let options = PutOptions {
            attributes: self
                .backend
                .put_options(&file.filename, file.content_type.as_str())
                .attributes,
            ..Default::default()
        };
        self.backend
            .store
            .put_opts(&file.key.path(), data.into(), options)
            .await?;
        Ok(written)
    }

    /// Makes a stored object a visible file: its index row, or, if that cannot be
    /// written, no object either.
    async fn record(
        &self,
        file: &NewFile,
        written: Written,
        upload: InFlight,
    ) -> Result<FileRow, StorageError> {
        let row = file_row(file, written.size, written.sha256.as_str());
        if let Err(err) = self.index.insert_file_for(&row, upload).await {
            self.remove_object(&file.key).await;
            return Err(err);
        }
        tracing::info!(key = %file.key, size = row.size, "stored");
        Ok(row)
    }

    pub async fn file(&self, user: Uuid, raw_key: &str) -> Result<FileRow, StorageError> {
        let key = ObjectKey::parse_for(user, raw_key)?;
        self.index.file(user, &key).await
    }

    /// A file as the API shows it, with a fresh download URL of the default lifetime.
    pub async fn describe(&self, row: &FileRow) -> Result<FileInfo, StorageError> {
        let (url, expires_at) = self.download_url(row, DEFAULT_URL_TTL).await?;
        Ok(FileInfo {
            filename: row.filename.clone(),
            key: row.key.clone(),
            url,
            status: STATUS_UPLOADED.to_owned(),
            size: row.size as u64,
            sha256: row.sha256.clone(),
            content_type: row.content_type.clone(),
            created_at: Some(timestamp_ms(row.created_at)),
            url_expires_at: Some(timestamp_ms(expires_at * 1000)),
        })
    }

    /// A download URL for `row` and its expiry (unix seconds).
    pub async fn download_url(
        &self,
        row: &FileRow,
        ttl: Duration,
    ) -> Result<(String, i64), StorageError> {
        let expires_at = now_ms() / 1000 + ttl.as_secs() as i64;
        let key = ObjectKey::from_stored(row.key.clone());
        let url = self
            .backend
            .download_url(&key, ttl, expires_at as u64)
            .await?;
        Ok((url.to_string(), expires_at))
    }

    /// The lifetime a client asked for, within bounds.
    pub fn url_ttl(requested_seconds: u32) -> Result<Duration, StorageError> {
        match Duration::from_secs(requested_seconds.into()) {
            Duration::ZERO => Ok(DEFAULT_URL_TTL),
            ttl if ttl > MAX_URL_TTL => Err(StorageError::InvalidArgument(format!(
                "expires_in may be at most {} seconds (7 days)",
                MAX_URL_TTL.as_secs()
            ))),
            ttl => Ok(ttl),
        }
    }

    /// One page of `user`'s files, newest first, and the token of the next page.
    pub async fn list(
        &self,
        user: Uuid,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<FileInfo>, String), StorageError> {
        let limit = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let cursor = (!page_token.is_empty())
            .then(|| parse_page_token(page_token))
            .transpose()?;
        // One extra row tells whether another page follows.
        let mut rows = self.index.list(user, cursor.as_ref(), limit + 1).await?;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(page_token_after).unwrap_or_default()
        } else {
            String::new()
        };
        let mut files = Vec::with_capacity(rows.len());
        for row in &rows {
            files.push(self.describe(row).await?);
        }
        Ok((files, next))
    }

    /// The file's description, then its bytes — all of them, or `range` of them —
    /// streamed from the object store.
    pub async fn download(
        &self,
        row: FileRow,
        range: ByteRange,
    ) -> Result<DownloadStream, StorageError> {
        let span = range.within(row.size as u64)?;
        let info = self.describe(&row).await?;
        let first =
            futures::stream::once(async move { Ok(download_response::Payload::Info(info)) });
        if span.is_empty() {
            // Nothing to send: object stores refuse an empty or past-the-end range.
            return Ok(Box::pin(first));
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(span)),
            ..Default::default()
        };
        let path = ObjectKey::from_stored(row.key).path();
        let get = self.backend.reads.get_opts(&path, options);
        let object = tokio::time::timeout(self.backend.timeout, get)
            .await
            .map_err(|_| object_store::Error::Generic {
                store: "object storage",
                source: format!("no answer in {} s", self.backend.timeout.as_secs()).into(),
            })??;
        let pieces = stall_deadline(
            pieces::of(object, DOWNLOAD_MESSAGES.limit),
            self.backend.timeout,
        );
        let chunks = coalesce(pieces, DOWNLOAD_MESSAGES)
            .inspect_ok(|chunk| {
                metrics::counter!("strongbox_download_bytes_total").increment(chunk.len() as u64);
            })
            .map_ok(download_response::Payload::Chunk)
            .map_err(StorageError::from);
        Ok(Box::pin(first.chain(chunks)))
    }

    /// Deletes the object, then its row, so a failure in between leaves a file that a
    /// retried delete finishes, never a listed file without content.
    pub async fn delete(&self, user: Uuid, raw_key: &str) -> Result<(), StorageError> {
        let row = self.file(user, raw_key).await?;
        let key = ObjectKey::from_stored(row.key);
        match self.backend.store.delete(&key.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        self.index.delete_file(user, &key).await?;
        tracing::info!(%key, "deleted");
        Ok(())
    }

    pub async fn remove_object(&self, key: &ObjectKey) {
        if let Err(err) = self.backend.store.delete(&key.path()).await {
            tracing::warn!(%err, %key, "could not remove an object that is not in the index");
        }
    }
}

/// The part of a file a Download asks for: from `offset`, `length` bytes at most (to
/// the end when unset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: Option<u64>,
    pub length: Option<u64>,
}

impl ByteRange {
    /// The bytes of a file of `size` bytes this range covers; past the end is
    /// OUT_OF_RANGE, naming the size.
    pub fn within(&self, size: u64) -> Result<std::ops::Range<u64>, StorageError> {
        let start = self.offset.unwrap_or(0);
        if start > size {
            return Err(StorageError::OutOfRange {
                offset: start,
                size,
            });
        }
        let end = self
            .length
            .map_or(size, |length| start.saturating_add(length).min(size));
        Ok(start..end)
    }
}

pub fn file_row(file: &NewFile, size: u64, sha256: &str) -> FileRow {
    FileRow {
        key: file.key.as_str().to_owned(),
        user_id: file.user.to_string(),
        filename: file.filename.clone(),
        content_type: file.content_type.as_str().to_owned(),
        size: size as i64,
        sha256: sha256.to_owned(),
        created_at: now_ms(),
    }
}

fn page_token_after(row: &FileRow) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", row.created_at, row.key))
}

fn parse_page_token(token: &str) -> Result<Cursor, StorageError> {
    let invalid = || {
        StorageError::InvalidArgument(
            "page_token is invalid; pass next_page_token from the previous page".into(),
        )
    };
    let decoded = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(decoded).map_err(|_| invalid())?;
    let (created_at, key) = text.split_once(':').ok_or_else(invalid)?;
    if key.chars().any(char::is_control) {
        return Err(invalid());
    }
    Ok(Cursor {
        created_at: created_at.parse().map_err(|_| invalid())?,
        key: key.to_owned(),
    })
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

pub fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let row = FileRow {
            key: "u/1-ab-x.txt".into(),
            user_id: "u".into(),
            filename: "x.txt".into(),
            content_type: "text/plain".into(),
            size: 1,
            sha256: String::new(),
            created_at: 1_700_000_000_123,
        };
        let cursor = parse_page_token(&page_token_after(&row)).unwrap();
        assert_eq!(
            cursor,
            Cursor {
                created_at: row.created_at,
                key: row.key
            }
        );
        assert!(parse_page_token("!!!").is_err());
        assert!(parse_page_token(&URL_SAFE_NO_PAD.encode("no-colon")).is_err());
    }

    #[test]
    fn a_range_is_cut_to_the_file_and_may_not_start_past_its_end() {
        let range = |offset, length| ByteRange { offset, length };
        assert_eq!(range(None, None).within(10).unwrap(), 0..10);
        assert_eq!(range(Some(4), None).within(10).unwrap(), 4..10);
        assert_eq!(range(Some(4), Some(3)).within(10).unwrap(), 4..7);
        assert_eq!(range(Some(4), Some(u64::MAX)).within(10).unwrap(), 4..10);
        assert_eq!(range(Some(10), None).within(10).unwrap(), 10..10);
        assert_eq!(range(Some(0), Some(0)).within(10).unwrap(), 0..0);
        assert!(matches!(
            range(Some(11), None).within(10),
            Err(StorageError::OutOfRange {
                offset: 11,
                size: 10
            })
        ));
    }

    #[test]
    fn url_lifetimes_default_to_an_hour_and_stop_at_a_week() {
        assert_eq!(Storage::url_ttl(0).unwrap(), DEFAULT_URL_TTL);
        assert_eq!(Storage::url_ttl(60).unwrap(), Duration::from_secs(60));
        assert!(Storage::url_ttl(604_800).is_ok());
        assert!(Storage::url_ttl(604_801).is_err());
    }
}
