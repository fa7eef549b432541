//! The one error type of auth-service and its single mapping to `tonic::Status`.
//!
//! Variants are what a caller can act on; internal detail (SQL errors, I/O) is logged
//! here and never sent.

use std::time::Duration;

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("an account with this email already exists; log in instead")]
    EmailTaken,
    #[error("email or password is incorrect")]
    BadCredentials,
    #[error("too many failed logins for this email; try again in {} seconds", whole_seconds(*.retry_after))]
    Throttled { retry_after: Duration },
    /// As many logins for this email from this address as may fail are being checked
    /// right now; one more could overshoot the failure limit.
    #[error("other logins to this account from this address are being checked; try again in 1 s")]
    AttemptsInFlight,
    /// Every hashing thread is busy and the queue is full: the call is refused at once
    /// rather than left waiting behind the others (see `passwords`).
    #[error("auth-service is busy checking passwords; try again in {} s", whole_seconds(*.retry_after))]
    Busy { retry_after: Duration },
    #[error("{0}")]
    SessionRejected(&'static str),
    #[error("the account for this access token no longer exists")]
    UnknownUser,
    #[error(transparent)]
    Token(#[from] strongbox_common::jwt::TokenError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::InvalidArgument(message) => Status::invalid_argument(message),
            AuthError::EmailTaken => Status::already_exists(err.to_string()),
            AuthError::BadCredentials | AuthError::SessionRejected(_) | AuthError::UnknownUser => {
                Status::unauthenticated(err.to_string())
            }
            AuthError::Throttled { retry_after } => {
                with_retry_after(Status::resource_exhausted(err.to_string()), retry_after)
            }
            AuthError::AttemptsInFlight => with_retry_after(
                Status::resource_exhausted(err.to_string()),
                Duration::from_secs(1),
            ),
            AuthError::Busy { retry_after } => {
                with_retry_after(Status::unavailable(err.to_string()), retry_after)
            }
            AuthError::Token(token) => token.into(),
            AuthError::Database(source) => strongbox_common::database::status(&source),
            AuthError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error; try again later")
            }
        }
    }
}

/// Adds `retry-after` (whole seconds, as in HTTP) so clients and the gateway can back off.
fn with_retry_after(mut status: Status, retry_after: Duration) -> Status {
    if let Ok(value) = whole_seconds(retry_after).to_string().parse() {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

/// At least one second, rounded up: "try again in 0 s" would invite a retry storm.
fn whole_seconds(duration: Duration) -> u64 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    seconds.max(1)
}
