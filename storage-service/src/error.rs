//! The one error type of storage-service and its single mapping to `tonic::Status`.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("the file is larger than the upload limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(
        "one message may carry at most {limit} bytes of file data (MAX_CHUNK_BYTES); send \
         smaller chunks, or larger files with Upload or a resumable session (CreateUpload)"
    )]
    MessageTooLarge { limit: u64 },
    #[error("the file was declared as {declared} bytes but {received} bytes were sent")]
    SizeMismatch { declared: u64, received: u64 },
    #[error(
        "the content's SHA-256 is {actual}, not the declared {declared}; nothing was stored, upload it again"
    )]
    ChecksumMismatch { declared: String, actual: String },
    #[error(
        "the server is busy with other uploads: no room for this one came free within {} s. \
         Nothing was stored; try again in a few seconds",
        waited.as_secs_f64()
    )]
    Busy {
        waited: std::time::Duration,
        retry_after: std::time::Duration,
    },
    #[error(
        "this upload needs {needed} bytes, but only {} of your {limit}-byte storage quota \
         (USER_QUOTA_BYTES) are free: {counted} bytes are in your files and uploads in \
         progress. Nothing was stored; delete files or abort unfinished uploads to make room",
        limit.saturating_sub(*counted)
    )]
    ByteQuota {
        limit: u64,
        counted: u64,
        needed: u64,
    },
    #[error(
        "you have {counted} of the {limit} files you may keep (USER_MAX_FILES), counting \
         uploads in progress and open upload sessions. Nothing was stored; delete files or \
         abort unfinished uploads first"
    )]
    FileQuota { limit: u64, counted: u64 },
    #[error(
        "you already have {limit} open upload sessions, the most one user may have \
         (MAX_OPEN_SESSIONS_PER_USER); complete or abort one (CompleteUpload, AbortUpload) \
         before starting another"
    )]
    TooManySessions { limit: u32 },
    #[error(
        "you already have {limit} uploads in progress, the most one user may have at once \
         (MAX_CONCURRENT_UPLOADS_PER_USER). Nothing was stored; send this one again when \
         one of them has finished"
    )]
    TooManyUploads {
        limit: u32,
        retry_after: std::time::Duration,
    },
    #[error(
        "offset {offset} is past the end of the file, which holds {size} bytes; ask for an \
         offset of at most {size}"
    )]
    OutOfRange { offset: u64, size: u64 },
    #[error("the upload stream failed: {0}")]
    ClientStream(Status),
    #[error(transparent)]
    Token(#[from] strongbox_common::jwt::TokenError),
    #[error("object storage failed: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

impl From<StorageError> for Status {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::InvalidArgument(_) | StorageError::SizeMismatch { .. } => {
                Status::invalid_argument(err.to_string())
            }
            StorageError::NotFound(message) => Status::not_found(message),
            StorageError::FailedPrecondition(message) => Status::failed_precondition(message),
            StorageError::PermissionDenied(message) => Status::permission_denied(message),
            StorageError::TooLarge { .. }
            | StorageError::MessageTooLarge { .. }
            | StorageError::ByteQuota { .. }
            | StorageError::FileQuota { .. }
            | StorageError::TooManySessions { .. } => Status::resource_exhausted(err.to_string()),
            StorageError::ChecksumMismatch { .. } => Status::data_loss(err.to_string()),
            StorageError::OutOfRange { .. } => Status::out_of_range(err.to_string()),
            // Retryable: `retry-after` (whole seconds, as in HTTP) tells the client when.
            StorageError::Busy { retry_after, .. }
            | StorageError::TooManyUploads { retry_after, .. } => {
                let mut status = Status::resource_exhausted(err.to_string());
                status
                    .metadata_mut()
                    .insert("retry-after", retry_after.as_secs().max(1).into());
                status
            }
            // tonic reports an over-sized message as OUT_OF_RANGE; to the client it is a
            // limit it exceeded.
            StorageError::ClientStream(status) if status.code() == tonic::Code::OutOfRange => {
                Status::resource_exhausted(format!(
                    "{}; send the file in smaller chunks (see MAX_CHUNK_BYTES)",
                    status.message()
                ))
            }
            // The client went away or broke its stream; this status rarely reaches anyone.
            StorageError::ClientStream(status) => status,
            StorageError::Token(token) => token.into(),
            StorageError::ObjectStore(object_store::Error::NotFound { .. }) => {
                Status::not_found("the file's content is missing from storage")
            }
            StorageError::ObjectStore(source) => {
                tracing::warn!(%source, "object storage failed");
                Status::unavailable("object storage is unavailable; try again shortly")
            }
            StorageError::Database(source) => strongbox_common::database::status(&source),
            StorageError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error; try again later")
            }
        }
    }
}
