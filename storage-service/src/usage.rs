//! Each user's share of the service: quotas on stored bytes and files, and limits on
//! what one user may have in progress.
//!
//! Everything counted here lives in the database (`index.rs`), not in a process, so
//! several replicas of the service share one count:
//! - stored bytes and files, kept per user by triggers on the file index;
//! - each open resumable session, which holds its declared size (or, without one, as
//!   far as its chunks reached) and counts as a file until it ends;
//! - each upload being received ([`InFlight`]): a stream or PutFile holds the bytes it
//!   declared or has received so far and counts as a file; a session chunk being stored
//!   counts only towards the uploads in progress.
//!
//! An upload is admitted by one transaction that reads the user's counts and writes its
//! own reservation, so two uploads of one user can never both take the last room. When
//! it ends, the reservation becomes the file in the same transaction that writes the
//! file's row — which is written only if the file fits beside everything else — or is
//! given back: a quota is never passed, not even by a byte.
//!
//! A stream of unknown size has on record the bytes it had received when it last
//! checked the quota, and goes on up to a part further without asking while the quota
//! had room for that. The look-ahead is its own: others see only the bytes on record,
//! so a stream's look-ahead never refuses another upload of its user; if others took
//! the room meanwhile, the stream is refused at its next check or when its file would
//! be written.

use std::time::Duration;

use uuid::Uuid;

use crate::error::StorageError;
use crate::index::Index;

/// How long an in-flight row lives unless its process renews it. A process that dies
/// mid-upload leaves its rows behind; they stop counting after this.
pub const LEASE: Duration = Duration::from_secs(120);
/// How often a running process renews the leases of the uploads it is receiving.
pub const LEASE_RENEWAL: Duration = Duration::from_secs(30);
/// What a user at the limit of uploads in progress is told to wait: uploads end in
/// seconds, or are cut for going too slowly within `UPLOAD_RATE_WINDOW_SECONDS`.
pub const UPLOADS_RETRY_AFTER: Duration = Duration::from_secs(2);

/// The limits each user is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Stored bytes, reservations of uploads in progress included; `None`: unlimited.
    pub quota_bytes: Option<u64>,
    /// Files, uploads in progress and open sessions included; `None`: unlimited.
    pub max_files: Option<u64>,
    pub max_open_sessions: u32,
    pub max_concurrent_uploads: u32,
}

/// What a user stores and has in progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub stored_bytes: u64,
    pub stored_files: u64,
    /// Held by open sessions and by uploads being received.
    pub reserved_bytes: u64,
    pub open_sessions: u64,
    /// Streams, PutFile calls and session chunks being received.
    pub uploads_in_progress: u64,
    /// The streams and PutFile calls among them: each will be a file.
    pub files_in_progress: u64,
}

impl Usage {
    /// Bytes counted against the quota.
    pub fn bytes(&self) -> u64 {
        self.stored_bytes.saturating_add(self.reserved_bytes)
    }

    /// Files counted against the file limit.
    pub fn files(&self) -> u64 {
        self.stored_files + self.open_sessions + self.files_in_progress
    }
}

/// What a new upload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A stream or PutFile: a new file of (at least) `bytes`.
    File { bytes: u64 },
    /// A new resumable session: a new file of (at least) `bytes`.
    Session { bytes: u64 },
    /// A chunk of an open session, which must come to hold `bytes` more.
    Chunk { bytes: u64 },
}

impl Limits {
    /// Whether a user with `usage` may start `admission`; the refusal says which limit
    /// and what to do.
    pub fn admit(&self, usage: &Usage, admission: Admission) -> Result<(), StorageError> {
        let (new_file, bytes) = match admission {
            Admission::File { bytes } | Admission::Session { bytes } => (true, bytes),
            Admission::Chunk { bytes } => (false, bytes),
        };
        match admission {
            Admission::Session { .. } => {
                if usage.open_sessions >= u64::from(self.max_open_sessions) {
                    return Err(StorageError::TooManySessions {
                        limit: self.max_open_sessions,
                    });
                }
            }
            Admission::File { .. } | Admission::Chunk { .. } => {
                if usage.uploads_in_progress >= u64::from(self.max_concurrent_uploads) {
                    return Err(StorageError::TooManyUploads {
                        limit: self.max_concurrent_uploads,
                        retry_after: UPLOADS_RETRY_AFTER,
                    });
                }
            }
        }
        if let Some(limit) = self
            .max_files
            .filter(|&limit| new_file && usage.files() >= limit)
        {
            return Err(StorageError::FileQuota {
                limit,
                counted: usage.files(),
            });
        }
        self.check_bytes(usage, bytes)
    }

    /// Whether `more` bytes fit in the quota beside `usage`.
    pub fn check_bytes(&self, usage: &Usage, more: u64) -> Result<(), StorageError> {
        match self.quota_bytes {
            Some(limit) if usage.bytes().saturating_add(more) > limit => {
                Err(StorageError::ByteQuota {
                    limit,
                    counted: usage.bytes(),
                    needed: more,
                })
            }
            _ => Ok(()),
        }
    }

    /// The most a reservation may grow to beside `others` (the user's usage without
    /// it): the quota's room, or no bound.
    pub fn room_beside(&self, others: &Usage) -> u64 {
        self.quota_bytes
            .map_or(u64::MAX, |limit| limit.saturating_sub(others.bytes()))
    }
}

/// An upload being received, on record in the database until it ends. A stream's
/// reservation grows as its bytes arrive ([`InFlight::cover`]); a file's becomes the
/// file in [`Index::insert_file_for`], anything else is given back by [`InFlight::end`]
/// or, if the upload's task is dropped, in the background.
pub struct InFlight {
    index: Index,
    pub id: Uuid,
    pub user: Uuid,
    pub limits: Limits,
    /// How many bytes it may receive before it asks the database again: its declared
    /// size, or for an upload of unknown size as far as the quota had room for.
    reach: u64,
    /// For an upload of unknown size, how far ahead of the bytes received it asks to
    /// reach, so that the quota is checked once per part, not once per message.
    /// `None`: the reservation is the declared size, which the upload cannot pass.
    step: Option<u64>,
    ended: bool,
}

impl InFlight {
    pub(crate) fn new(index: Index, id: Uuid, user: Uuid, limits: Limits, reserved: u64) -> Self {
        metrics::gauge!("strongbox_uploads_in_progress").increment(1.0);
        Self {
            index,
            id,
            user,
            limits,
            reach: reserved,
            step: None,
            ended: false,
        }
    }

    /// For an upload of unknown size: the reservation grows with the bytes received,
    /// checked against the quota every `step` bytes.
    pub fn growing_by(mut self, step: u64) -> Self {
        self.step = Some(step);
        self
    }

    /// Makes sure `total` bytes received fit in the quota, putting them on record once
    /// the upload passes its reach; fails with the quota's error, nothing more
    /// reserved, if they do not fit.
    pub async fn cover(&mut self, total: u64) -> Result<(), StorageError> {
        let Some(step) = self.step.filter(|_| total > self.reach) else {
            return Ok(());
        };
        self.reach = self
            .index
            .grow_in_flight(
                self.id,
                self.user,
                &self.limits,
                total,
                total.saturating_add(step),
            )
            .await?;
        Ok(())
    }

    /// The upload ended without a file (or its file row took the reservation over).
    pub async fn end(mut self) {
        self.ended = true;
        if let Err(err) = self.index.end_in_flight(self.id).await {
            tracing::warn!(%err, id = %self.id, "could not give back an upload's reservation; it expires on its own");
        }
    }

    /// The reservation was taken over (by a file row written with it).
    pub fn taken_over(mut self) {
        self.ended = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("strongbox_uploads_in_progress").decrement(1.0);
        if self.ended {
            return;
        }
        // The upload's task was dropped mid-way; give the reservation back now rather
        // than when its lease runs out.
        let (index, id) = (self.index.clone(), self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = index.end_in_flight(id).await {
                    tracing::warn!(%err, %id, "could not give back an upload's reservation; it expires on its own");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        quota_bytes: Some(1000),
        max_files: Some(3),
        max_open_sessions: 2,
        max_concurrent_uploads: 2,
    };

    fn usage(stored_bytes: u64, stored_files: u64) -> Usage {
        Usage {
            stored_bytes,
            stored_files,
            ..Usage::default()
        }
    }

    #[test]
    fn a_file_fits_up_to_the_last_byte_and_not_one_more() {
        let used = usage(600, 1);
        assert!(LIMITS.admit(&used, Admission::File { bytes: 400 }).is_ok());
        let err = LIMITS
            .admit(&used, Admission::File { bytes: 401 })
            .unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::ByteQuota {
                    limit: 1000,
                    counted: 600,
                    needed: 401
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn reservations_count_like_stored_bytes() {
        let used = Usage {
            reserved_bytes: 500,
            ..usage(400, 1)
        };
        assert!(LIMITS.check_bytes(&used, 100).is_ok());
        assert!(LIMITS.check_bytes(&used, 101).is_err());
        assert_eq!(LIMITS.room_beside(&used), 100);
    }

    #[test]
    fn sessions_and_uploads_in_progress_count_as_files() {
        let used = Usage {
            open_sessions: 1,
            files_in_progress: 1,
            uploads_in_progress: 1,
            ..usage(0, 1)
        };
        assert_eq!(used.files(), 3);
        assert!(matches!(
            LIMITS.admit(&used, Admission::File { bytes: 0 }),
            Err(StorageError::FileQuota {
                limit: 3,
                counted: 3
            })
        ));
        // A chunk of a session already counted is no new file.
        assert!(LIMITS.admit(&used, Admission::Chunk { bytes: 10 }).is_ok());
    }

    #[test]
    fn the_limits_on_work_in_progress_refuse_the_next_one() {
        let busy = Usage {
            uploads_in_progress: 2,
            ..Usage::default()
        };
        assert!(matches!(
            LIMITS.admit(&busy, Admission::Chunk { bytes: 1 }),
            Err(StorageError::TooManyUploads { limit: 2, .. })
        ));
        // Opening a session receives nothing yet.
        assert!(LIMITS.admit(&busy, Admission::Session { bytes: 1 }).is_ok());
        let sessions = Usage {
            open_sessions: 2,
            ..Usage::default()
        };
        assert!(matches!(
            LIMITS.admit(&sessions, Admission::Session { bytes: 0 }),
            Err(StorageError::TooManySessions { limit: 2 })
        ));
    }

    #[test]
    fn without_quotas_only_the_limits_on_work_in_progress_apply() {
        let unlimited = Limits {
            quota_bytes: None,
            max_files: None,
            ..LIMITS
        };
        let huge = usage(u64::MAX - 1, u64::MAX / 4);
        assert!(
            unlimited
                .admit(&huge, Admission::File { bytes: u64::MAX })
                .is_ok()
        );
        assert_eq!(unlimited.room_beside(&huge), u64::MAX);
    }
}
