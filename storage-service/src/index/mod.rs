//! The file index and the resumable-session table, in SQLite or PostgreSQL (one query
//! text, run on either native pool by `on_pool!`).
//!
//! The object store holds bytes; this index says which objects are files, whose they
//! are and what they were called. A file row is written only after its object is
//! complete, and every query is scoped by user id, so another user's key is simply
//! "not found".
//!
//! Quota rules (count a user's usage, then admit or record) run in write transactions
//! under the user's lock ([`Backend::begin_write`]): on PostgreSQL an advisory lock per
//! user, so replicas sharing the database admit exactly as one process does, and
//! different users never wait for each other.

use sqlx::FromRow;
use strongbox_common::database::{Backend, Migrations, Pool};
use strongbox_common::on_pool;
use uuid::Uuid;

use crate::error::StorageError;
use crate::names::{ObjectKey, UploadId};
use crate::usage::{Admission, InFlight, LEASE, Limits, Usage};

mod sessions;

pub use sessions::{Removal, Removed};

#[derive(Debug, Clone, FromRow)]
pub struct FileRow {
    pub key: String,
    pub user_id: String,
    pub filename: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// Where a listing page starts: just after this (created_at, key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub key: String,
}

static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

#[derive(Clone)]
pub struct Index {
    pool: Pool,
    /// This replica, as the holder of the in-flight rows it renews (see `usage.rs`) and
    /// of the multipart uploads it starts.
    holder: std::sync::Arc<str>,
}

impl Index {
    /// Opens the index at `url` for the replica `holder` (see [`Index::holder`]).
    pub async fn open(url: &str, holder: &str) -> Result<Self, StorageError> {
        let pool = Pool::open(url, &MIGRATIONS)
            .await
            .map_err(|err| StorageError::Internal(err.to_string()))?;
        Ok(Self {
            pool,
            holder: holder.into(),
        })
    }

    /// How a replica names itself in the rows of what it is receiving: `host` and
    /// listen `address`, which no other live process has and a replica restarted in
    /// its place has again, so the newcomer knows those rows' process is gone.
    pub fn holder(host: &str, address: std::net::SocketAddr) -> String {
        format!("{host}/{address}")
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn file(&self, user: Uuid, key: &ObjectKey) -> Result<FileRow, StorageError> {
        let row: Option<FileRow> = on_pool!(&self.pool, pool => {
            sqlx::query_as("SELECT * FROM files WHERE key = $1 AND user_id = $2")
                .bind(key.as_str())
                .bind(user.to_string())
                .fetch_optional(pool)
                .await?
        });
        row.ok_or(StorageError::NotFound("no file with this key"))
    }

    /// A file by key alone, for signed links (whose signature already proved access).
    pub async fn file_by_key(&self, key: &str) -> Result<FileRow, StorageError> {
        let row: Option<FileRow> = on_pool!(&self.pool, pool => {
            sqlx::query_as("SELECT * FROM files WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?
        });
        row.ok_or(StorageError::NotFound("no file with this key"))
    }

    /// Up to `limit` files of `user`, newest first, after `cursor`.
    pub async fn list(
        &self,
        user: Uuid,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<FileRow>, StorageError> {
        let limit = i64::from(limit);
        let rows = on_pool!(&self.pool, pool => match cursor {
            None => {
                sqlx::query_as(
                    "SELECT * FROM files WHERE user_id = $1
                     ORDER BY created_at DESC, key DESC LIMIT $2",
                )
                .bind(user.to_string())
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            Some(cursor) => {
                sqlx::query_as(
                    "SELECT * FROM files
                     WHERE user_id = $1 AND (created_at < $2 OR (created_at = $2 AND key < $3))
                     ORDER BY created_at DESC, key DESC LIMIT $4",
                )
                .bind(user.to_string())
                .bind(cursor.created_at)
                .bind(&cursor.key)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
        });
        Ok(rows)
    }

    /// Removes a file's row; returns whether it existed.
    pub async fn delete_file(&self, user: Uuid, key: &ObjectKey) -> Result<bool, StorageError> {
        let deleted = on_pool!(&self.pool, pool => {
            sqlx::query("DELETE FROM files WHERE key = $1 AND user_id = $2")
                .bind(key.as_str())
                .bind(user.to_string())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(deleted > 0)
    }

    /// What `user` stores and has in progress now.
    pub async fn usage(&self, user: Uuid, now_ms: i64) -> Result<Usage, StorageError> {
        on_pool!(&self.pool, pool => {
            let mut connection = pool.acquire().await?;
            connection.count_usage(user, now_ms, None).await
        })
    }

    /// Puts a new stream or PutFile of `bytes` (so far) on record, if its user may start
    /// one: it counts as a file and as an upload in progress until it ends.
    pub async fn admit_file(
        &self,
        user: Uuid,
        bytes: u64,
        limits: &Limits,
    ) -> Result<InFlight, StorageError> {
        let id = Uuid::new_v4();
        let now = crate::files::now_ms();
        let row = self.in_flight_row(id, user, "file", bytes, now)?;
        on_pool!(&self.pool, pool => {
            let mut tx = pool.begin_write(&usage_lock(user)).await?;
            let usage = tx.locked_usage(user, now, None).await?;
            limits.admit(&usage, Admission::File { bytes })?;
            tx.insert_in_flight(&row).await?;
            tx.commit().await?;
        });
        Ok(InFlight::new(self.clone(), id, user, *limits, bytes))
    }

    /// Puts a chunk of session `session` that ends at `end` on record, if its user may
    /// have one more upload in progress; a session without a declared size first grows
    /// its reservation to `end`, within the quota.
    pub async fn admit_chunk(
        &self,
        user: Uuid,
        session: UploadId,
        end: u64,
        limits: &Limits,
    ) -> Result<InFlight, StorageError> {
        let id = Uuid::new_v4();
        let now = crate::files::now_ms();
        let row = self.in_flight_row(id, user, "chunk", 0, now)?;
        on_pool!(&self.pool, pool => {
            let mut tx = pool.begin_write(&usage_lock(user)).await?;
            let usage = tx.locked_usage(user, now, None).await?;
            let reserved: Option<(i64,)> =
                sqlx::query_as("SELECT reserved FROM upload_sessions WHERE id = $1 AND user_id = $2")
                    .bind(session.to_string())
                    .bind(user.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
            let (reserved,) = reserved.ok_or(StorageError::NotFound(
                "no upload session with this id (it may have expired or been completed); start a new upload",
            ))?;
            let more = end.saturating_sub(reserved as u64);
            limits.admit(&usage, Admission::Chunk { bytes: more })?;
            if more > 0 {
                sqlx::query("UPDATE upload_sessions SET reserved = $1 WHERE id = $2")
                    .bind(to_sql(end)?)
                    .bind(session.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.insert_in_flight(&row).await?;
            tx.commit().await?;
        });
        Ok(InFlight::new(self.clone(), id, user, *limits, 0))
    }

    fn in_flight_row(
        &self,
        id: Uuid,
        user: Uuid,
        kind: &'static str,
        bytes: u64,
        now_ms: i64,
    ) -> Result<InFlightRow, StorageError> {
        Ok(InFlightRow {
            id: id.to_string(),
            user_id: user.to_string(),
            kind,
            bytes: to_sql(bytes)?,
            holder: self.holder.clone(),
            expires_at: now_ms + LEASE.as_millis() as i64,
        })
    }

    /// Puts `received` bytes of an upload on record if they fit in the quota beside
    /// everything else of its user (else the quota's error, nothing changed). Returns
    /// how far it may go on without asking again: to `wanted`, or as far as the quota
    /// has room for now. That look-ahead is not on record, so it takes no room from the
    /// user's other uploads.
    pub async fn grow_in_flight(
        &self,
        id: Uuid,
        user: Uuid,
        limits: &Limits,
        received: u64,
        wanted: u64,
    ) -> Result<u64, StorageError> {
        let now = crate::files::now_ms();
        let others = on_pool!(&self.pool, pool => {
            let mut tx = pool.begin_write(&usage_lock(user)).await?;
            let others = tx.locked_usage(user, now, Some(id)).await?;
            limits.check_bytes(&others, received)?;
            sqlx::query("UPDATE uploads_in_flight SET bytes = $1 WHERE id = $2")
                .bind(to_sql(received)?)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            others
        });
        Ok(wanted.min(limits.room_beside(&others)).max(received))
    }

    /// Takes an upload off the record, giving back its reservation.
    pub async fn end_in_flight(&self, id: Uuid) -> Result<(), StorageError> {
        on_pool!(&self.pool, pool => {
            sqlx::query("DELETE FROM uploads_in_flight WHERE id = $1")
                .bind(id.to_string())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Keeps the uploads this process is receiving on record for another [`LEASE`].
    pub async fn renew_leases(&self) -> Result<(), StorageError> {
        let expires_at = crate::files::now_ms() + LEASE.as_millis() as i64;
        on_pool!(&self.pool, pool => {
            sqlx::query("UPDATE uploads_in_flight SET expires_at = $1 WHERE holder = $2")
                .bind(expires_at)
                .bind(&*self.holder)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Drops the rows of uploads whose process stopped renewing them (it died).
    pub async fn sweep_expired_leases(&self) -> Result<u64, StorageError> {
        let now = crate::files::now_ms();
        Ok(on_pool!(&self.pool, pool => {
            sqlx::query("DELETE FROM uploads_in_flight WHERE expires_at <= $1")
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// Writes the row of a file received by `upload`, whose reservation it takes over
    /// in the same transaction, if the file fits in the quota beside everything else
    /// of its user (a stream of unknown size may have gone past what it had on record).
    pub async fn insert_file_for(
        &self,
        file: &FileRow,
        upload: InFlight,
    ) -> Result<(), StorageError> {
        let now = crate::files::now_ms();
        let size = u64::try_from(file.size).unwrap_or(0);
        let fits = on_pool!(&self.pool, pool => {
            let mut tx = pool.begin_write(&usage_lock(upload.user)).await?;
            let others = tx.locked_usage(upload.user, now, Some(upload.id)).await?;
            match upload.limits.check_bytes(&others, size) {
                Err(over) => Err(over),
                Ok(()) => {
                    tx.insert_file(file).await?;
                    sqlx::query("DELETE FROM uploads_in_flight WHERE id = $1")
                        .bind(upload.id.to_string())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                }
            }
        });
        match fits {
            Ok(()) => {
                upload.taken_over();
                Ok(())
            }
            Err(over) => {
                upload.end().await;
                Err(over)
            }
        }
    }

    /// Notes a multipart upload before its first part is sent.
    pub async fn record_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        let now = crate::files::now_ms();
        on_pool!(&self.pool, pool => {
            sqlx::query(
                "INSERT INTO multipart_uploads (key, upload_id, holder, created_at)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(key)
            .bind(upload_id)
            .bind(&*self.holder)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The id of the multipart upload building `key`, while it is neither completed nor
    /// aborted.
    pub async fn multipart_id(&self, key: &str) -> Result<Option<String>, StorageError> {
        let row: Option<(String,)> = on_pool!(&self.pool, pool => {
            sqlx::query_as("SELECT upload_id FROM multipart_uploads WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(id,)| id))
    }

    /// Forgets a multipart upload that was completed or aborted.
    pub async fn forget_multipart(&self, key: &str) -> Result<(), StorageError> {
        on_pool!(&self.pool, pool => {
            sqlx::query("DELETE FROM multipart_uploads WHERE key = $1")
                .bind(key)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Marks a multipart upload for the cleanup to abort.
    pub async fn abandon_multipart(&self, key: &str) -> Result<(), StorageError> {
        on_pool!(&self.pool, pool => {
            sqlx::query("UPDATE multipart_uploads SET abandoned = 1 WHERE key = $1")
                .bind(key)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// At start, before any call: what this replica's previous process was receiving
    /// is dropped (it is gone: this one holds its address). Its uploads in flight stop
    /// counting against their users now rather than when their leases lapse, and its
    /// streams' multipart uploads (and those of rows older than holders) are abandoned.
    /// Resumable sessions' stay: a session outlives the process. Returns how many
    /// multipart uploads were abandoned.
    pub async fn take_over_from_predecessor(&self) -> Result<u64, StorageError> {
        on_pool!(&self.pool, pool => {
            sqlx::query("DELETE FROM uploads_in_flight WHERE holder = $1")
                .bind(&*self.holder)
                .execute(pool)
                .await?;
            Ok(sqlx::query(
                "UPDATE multipart_uploads SET abandoned = 1
                 WHERE abandoned = 0 AND key NOT IN (SELECT key FROM upload_sessions)
                   AND (holder IS NULL OR holder = $1)",
            )
            .bind(&*self.holder)
            .execute(pool)
            .await?
            .rows_affected())
        })
    }

    /// Abandons the streams' multipart uploads of other replicas that hold no live
    /// upload lease any more: they died (or lost the database for a whole [`LEASE`]),
    /// and their clients are gone. Run periodically by every replica.
    pub async fn abandon_dead_replicas_multiparts(&self, now_ms: i64) -> Result<u64, StorageError> {
        Ok(on_pool!(&self.pool, pool => {
            sqlx::query(
                "UPDATE multipart_uploads SET abandoned = 1
                 WHERE abandoned = 0 AND key NOT IN (SELECT key FROM upload_sessions)
                   AND holder != $1
                   AND NOT EXISTS (SELECT 1 FROM uploads_in_flight AS lease
                                   WHERE lease.holder = multipart_uploads.holder
                                     AND lease.expires_at > $2)",
            )
            .bind(&*self.holder)
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Claims the abandoned multipart uploads no replica holds (or whose holder's claim
    /// lapsed) until `until`: (key, upload id). One `UPDATE`, so of two replicas'
    /// cleanups each upload goes to one.
    pub async fn claim_abandoned_multiparts(
        &self,
        now_ms: i64,
        until: i64,
    ) -> Result<Vec<(String, String)>, StorageError> {
        Ok(on_pool!(&self.pool, pool => {
            sqlx::query_as(
                "UPDATE multipart_uploads SET claimed_until = $1
                 WHERE abandoned = 1 AND (claimed_until IS NULL OR claimed_until <= $2)
                 RETURNING key, upload_id",
            )
            .bind(until)
            .bind(now_ms)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Multipart uploads waiting to be aborted: (key, upload id).
    pub async fn abandoned_multiparts(&self) -> Result<Vec<(String, String)>, StorageError> {
        Ok(on_pool!(&self.pool, pool => {
            sqlx::query_as("SELECT key, upload_id FROM multipart_uploads WHERE abandoned = 1")
                .fetch_all(pool)
                .await?
        }))
    }
}

/// The write lock of a user's quota rules: every admission counts the user's usage and
/// records an upload under it, so of two racing uploads the second sees the first.
fn usage_lock(user: Uuid) -> String {
    format!("usage:{user}")
}

/// An upload in flight's row (see `usage.rs`).
struct InFlightRow {
    id: String,
    user_id: String,
    kind: &'static str,
    bytes: i64,
    holder: std::sync::Arc<str>,
    expires_at: i64,
}

/// Statements that run inside the transactions above, on either database's connection.
trait Statements {
    /// The user's usage, read inside a write transaction under the user's lock, so
    /// that nothing of the user's changes before the caller's own write commits.
    /// `excluding` leaves one in-flight upload out of the count.
    async fn locked_usage(
        &mut self,
        user: Uuid,
        now_ms: i64,
        excluding: Option<Uuid>,
    ) -> Result<Usage, StorageError>;

    async fn count_usage(
        &mut self,
        user: Uuid,
        now_ms: i64,
        excluding: Option<Uuid>,
    ) -> Result<Usage, StorageError>;

    async fn insert_file(&mut self, file: &FileRow) -> Result<(), StorageError>;

    async fn insert_in_flight(&mut self, row: &InFlightRow) -> Result<(), StorageError>;
}

/// Implements [`Statements`] once per driver from one text: each body is compiled
/// against that driver's connection type.
macro_rules! statements_on {
    ($($connection:ty),+) => {$(
        impl Statements for $connection {
            async fn locked_usage(
                &mut self,
                user: Uuid,
                now_ms: i64,
                excluding: Option<Uuid>,
            ) -> Result<Usage, StorageError> {
                // The row the triggers keep; created here so a user's first upload has it.
                sqlx::query(
                    "INSERT INTO user_usage (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user.to_string())
                .execute(&mut *self)
                .await?;
                self.count_usage(user, now_ms, excluding).await
            }

            async fn count_usage(
                &mut self,
                user: Uuid,
                now_ms: i64,
                excluding: Option<Uuid>,
            ) -> Result<Usage, StorageError> {
                let excluding = excluding.map(|id| id.to_string()).unwrap_or_default();
                // PostgreSQL sums BIGINTs as NUMERIC: cast back (a no-op on SQLite).
                let counts: (i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
                    "SELECT
                        COALESCE((SELECT stored_bytes FROM user_usage WHERE user_id = $1), 0),
                        COALESCE((SELECT stored_files FROM user_usage WHERE user_id = $1), 0),
                        (SELECT COUNT(*) FROM upload_sessions WHERE user_id = $1 AND expires_at > $2),
                        (SELECT CAST(COALESCE(SUM(reserved), 0) AS BIGINT) FROM upload_sessions
                            WHERE user_id = $1 AND expires_at > $2),
                        (SELECT COUNT(*) FROM uploads_in_flight
                            WHERE user_id = $1 AND expires_at > $2 AND id != $3),
                        (SELECT COUNT(*) FROM uploads_in_flight
                            WHERE user_id = $1 AND expires_at > $2 AND id != $3 AND kind = 'file'),
                        (SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM uploads_in_flight
                            WHERE user_id = $1 AND expires_at > $2 AND id != $3)",
                )
                .bind(user.to_string())
                .bind(now_ms)
                .bind(excluding)
                .fetch_one(&mut *self)
                .await?;
                let (stored_bytes, stored_files, sessions, session_bytes, uploads, files, upload_bytes) =
                    counts;
                let count = |value: i64| u64::try_from(value).unwrap_or(0);
                Ok(Usage {
                    stored_bytes: count(stored_bytes),
                    stored_files: count(stored_files),
                    reserved_bytes: count(session_bytes).saturating_add(count(upload_bytes)),
                    open_sessions: count(sessions),
                    uploads_in_progress: count(uploads),
                    files_in_progress: count(files),
                })
            }

            async fn insert_file(&mut self, file: &FileRow) -> Result<(), StorageError> {
                sqlx::query(
                    "INSERT INTO files (key, user_id, filename, content_type, size, sha256, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&file.key)
                .bind(&file.user_id)
                .bind(&file.filename)
                .bind(&file.content_type)
                .bind(file.size)
                .bind(&file.sha256)
                .bind(file.created_at)
                .execute(&mut *self)
                .await?;
                Ok(())
            }

            async fn insert_in_flight(&mut self, row: &InFlightRow) -> Result<(), StorageError> {
                sqlx::query(
                    "INSERT INTO uploads_in_flight (id, user_id, kind, bytes, holder, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&row.id)
                .bind(&row.user_id)
                .bind(row.kind)
                .bind(row.bytes)
                .bind(&*row.holder)
                .bind(row.expires_at)
                .execute(&mut *self)
                .await?;
                Ok(())
            }
        }
    )+};
}

statements_on!(sqlx::SqliteConnection, sqlx::PgConnection);

fn to_sql(value: u64) -> Result<i64, StorageError> {
    i64::try_from(value).map_err(|_| StorageError::Internal(format!("{value} is out of range")))
}

fn parse_user(raw: &str) -> Result<Uuid, StorageError> {
    Uuid::parse_str(raw).map_err(|err| StorageError::Internal(format!("stored user id: {err}")))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const UNLIMITED: Limits = Limits {
        quota_bytes: None,
        max_files: None,
        max_open_sessions: 10,
        max_concurrent_uploads: 10,
    };

    /// A session of `user` at `key` without declared size, open for a minute.
    pub(super) fn new_session(user: Uuid, key: &str, now: i64) -> crate::sessions::Session {
        let file = crate::files::NewFile {
            user,
            key: ObjectKey::from_stored(key.to_owned()),
            filename: "s.bin".into(),
            content_type: crate::policy::ContentType::parse("application/octet-stream").unwrap(),
            expect: crate::sink::Expectations {
                max_bytes: u64::MAX,
                size: None,
                sha256: None,
            },
        };
        let digest = Some(crate::sessions::RunningDigest::default());
        crate::sessions::Session::new(&file, now, std::time::Duration::from_secs(60), digest)
    }

    async fn abandoned(index: &Index) -> Vec<String> {
        let mut keys: Vec<String> = index
            .abandoned_multiparts()
            .await
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        keys.sort();
        keys
    }

    /// Two replicas on one database file: each leaves the other's live streams alone,
    /// abandons them once their leases lapse, and a replica restarted in place takes over
    /// its predecessor's at once. Sessions' multipart uploads are never a stream's.
    #[tokio::test]
    async fn a_replica_abandons_only_streams_whose_holder_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("index.db").display());
        let first = Index::open(&url, "host/10.0.0.1:50052").await.unwrap();
        let second = Index::open(&url, "host/10.0.0.2:50052").await.unwrap();
        let user = Uuid::new_v4();
        let first_stream = first.admit_file(user, 0, &UNLIMITED).await.unwrap();
        first.record_multipart("u/first", "id-1").await.unwrap();
        let second_stream = second.admit_file(user, 0, &UNLIMITED).await.unwrap();
        second.record_multipart("u/second", "id-2").await.unwrap();
        let now = crate::files::now_ms();
        let session = new_session(user, "u/session", now);
        first.admit_session(&session, &UNLIMITED).await.unwrap();
        first.record_multipart("u/session", "id-3").await.unwrap();

        // Both alive: nothing is abandoned, by either.
        assert_eq!(
            second.abandon_dead_replicas_multiparts(now).await.unwrap(),
            0
        );
        assert_eq!(
            first.abandon_dead_replicas_multiparts(now).await.unwrap(),
            0
        );

        // Past the first replica's leases (it stopped renewing): its stream is
        // abandoned by the other, its session's upload and the other's stream are not.
        let lapsed = now + LEASE.as_millis() as i64 + 1;
        // The second renews a few milliseconds on, so its lease outlasts `lapsed`.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        second.renew_leases().await.unwrap();
        assert_eq!(
            second
                .abandon_dead_replicas_multiparts(lapsed)
                .await
                .unwrap(),
            1
        );
        assert_eq!(abandoned(&second).await, ["u/first"]);

        // The second replica restarted in place takes over what its process left.
        let restarted = Index::open(&url, "host/10.0.0.2:50052").await.unwrap();
        assert_eq!(restarted.take_over_from_predecessor().await.unwrap(), 1);
        assert_eq!(abandoned(&restarted).await, ["u/first", "u/second"]);
        let usage = restarted.usage(user, now).await.unwrap();
        assert_eq!(
            usage.uploads_in_progress, 1,
            "its predecessor's upload stops counting; the first replica's still counts"
        );
        drop((first_stream, second_stream));
    }
}
