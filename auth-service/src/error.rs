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
    #[error("too many failed logins for this email; try again in {} seconds", .retry_after.as_secs().max(1))]
    Throttled { retry_after: Duration },
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
                let mut status = Status::resource_exhausted(err.to_string());
                if let Ok(value) = retry_after.as_secs().max(1).to_string().parse() {
                    status.metadata_mut().insert("retry-after", value);
                }
                status
            }
            AuthError::Token(token) => token.into(),
            AuthError::Database(source) => strongbox_common::sqlite::status(&source),
            AuthError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error; try again later")
            }
        }
    }
}
