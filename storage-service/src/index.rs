//! The file index and the resumable-session table, in SQLite.
//!
//! The object store holds bytes; this index says which objects are files, whose they
//! are and what they were called. A file row is written only after its object is
//! complete, and every query is scoped by user id, so another user's key is simply
//! "not found".

use sqlx::{FromRow, SqlitePool};
use strongbox_common::database;
use uuid::Uuid;

use crate::error::StorageError;
use crate::names::{ObjectKey, UploadId};
use crate::usage::{Admission, InFlight, LEASE, Limits, Usage};

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

#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub key: String,
    pub filename: String,
    pub content_type: String,
    pub declared_size: Option<i64>,
    pub declared_sha256: Option<String>,
    pub received: i64,
    /// Bytes held against the user's quota (see `usage.rs`).
    pub reserved: i64,
    pub state: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct ChunkRow {
    pub start: i64,
    pub length: i64,
    pub etag: Option<String>,
}

/// Where a listing page starts: just after this (created_at, key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub key: String,
}

#[derive(Clone)]
pub struct Index {
    pool: SqlitePool,
    /// This process, as the holder of the in-flight rows it renews (see `usage.rs`).
    holder: std::sync::Arc<str>,
}

impl Index {
    pub async fn open(url: &str) -> Result<Self, StorageError> {
        let pool = database::open_sqlite(url)
            .await
            .map_err(|err| StorageError::Internal(err.to_string()))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|err| StorageError::Internal(format!("database migration failed: {err}")))?;
        Ok(Self {
            pool,
            holder: Uuid::new_v4().to_string().into(),
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn file(&self, user: Uuid, key: &ObjectKey) -> Result<FileRow, StorageError> {
        sqlx::query_as("SELECT * FROM files WHERE key = ? AND user_id = ?")
            .bind(key.as_str())
            .bind(user.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StorageError::NotFound("no file with this key"))
    }

    /// A file by key alone, for signed links (whose signature already proved access).
    pub async fn file_by_key(&self, key: &str) -> Result<FileRow, StorageError> {
        sqlx::query_as("SELECT * FROM files WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StorageError::NotFound("no file with this key"))
    }

    /// Up to `limit` files of `user`, newest first, after `cursor`.
    pub async fn list(
        &self,
        user: Uuid,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<FileRow>, StorageError> {
        let rows = match cursor {
            None => {
                sqlx::query_as(
                    "SELECT * FROM files WHERE user_id = ? ORDER BY created_at DESC, key DESC LIMIT ?",
                )
                .bind(user.to_string())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            Some(cursor) => {
                sqlx::query_as(
                    "SELECT * FROM files WHERE user_id = ? AND (created_at < ? OR (created_at = ? AND key < ?))
                     ORDER BY created_at DESC, key DESC LIMIT ?",
                )
                .bind(user.to_string())
                .bind(cursor.created_at)
                .bind(cursor.created_at)
                .bind(&cursor.key)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows)
    }

    /// Removes a file's row; returns whether it existed.
    pub async fn delete_file(&self, user: Uuid, key: &ObjectKey) -> Result<bool, StorageError> {
        let result = sqlx::query("DELETE FROM files WHERE key = ? AND user_id = ?")
            .bind(key.as_str())
            .bind(user.to_string())
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Records a new session if its user may open one (see [`Limits::admit`]): the
    /// session holds `session.reserved` bytes of the quota and counts as a file.
    pub async fn admit_session(
        &self,
        session: &SessionRow,
        limits: &Limits,
    ) -> Result<(), StorageError> {
        let user = parse_user(&session.user_id)?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let usage = locked_usage(&mut tx, user, session.created_at, None).await?;
        limits.admit(
            &usage,
            Admission::Session {
                bytes: session.reserved as u64,
            },
        )?;
        sqlx::query(
            "INSERT INTO upload_sessions (id, user_id, key, filename, content_type, declared_size,
                 declared_sha256, received, reserved, state, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, 'open', ?, ?)",
        )
        .bind(&session.id)
        .bind(&session.user_id)
        .bind(&session.key)
        .bind(&session.filename)
        .bind(&session.content_type)
        .bind(session.declared_size)
        .bind(&session.declared_sha256)
        .bind(session.reserved)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Resumable sessions still open, of all users.
    pub async fn open_sessions(&self, now_ms: i64) -> Result<u64, StorageError> {
        let (open,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM upload_sessions WHERE expires_at > ?")
                .bind(now_ms)
                .fetch_one(&self.pool)
                .await?;
        Ok(u64::try_from(open).unwrap_or(0))
    }

    /// What `user` stores and has in progress now.
    pub async fn usage(&self, user: Uuid, now_ms: i64) -> Result<Usage, StorageError> {
        let mut connection = self.pool.acquire().await?;
        count_usage(&mut connection, user, now_ms, None).await
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let usage = locked_usage(&mut tx, user, now, None).await?;
        limits.admit(&usage, Admission::File { bytes })?;
        self.insert_in_flight(&mut tx, id, user, "file", bytes, now)
            .await?;
        tx.commit().await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let usage = locked_usage(&mut tx, user, now, None).await?;
        let (reserved,): (i64,) =
            sqlx::query_as("SELECT reserved FROM upload_sessions WHERE id = ? AND user_id = ?")
                .bind(session.to_string())
                .bind(user.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StorageError::NotFound(
                    "no upload session with this id (it may have expired or been completed); start a new upload",
                ))?;
        let more = end.saturating_sub(reserved as u64);
        limits.admit(&usage, Admission::Chunk { bytes: more })?;
        if more > 0 {
            sqlx::query("UPDATE upload_sessions SET reserved = ? WHERE id = ?")
                .bind(to_sql(end)?)
                .bind(session.to_string())
                .execute(&mut *tx)
                .await?;
        }
        self.insert_in_flight(&mut tx, id, user, "chunk", 0, now)
            .await?;
        tx.commit().await?;
        Ok(InFlight::new(self.clone(), id, user, *limits, 0))
    }

    async fn insert_in_flight(
        &self,
        tx: &mut sqlx::SqliteConnection,
        id: Uuid,
        user: Uuid,
        kind: &str,
        bytes: u64,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO uploads_in_flight (id, user_id, kind, bytes, holder, expires_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(user.to_string())
        .bind(kind)
        .bind(to_sql(bytes)?)
        .bind(&*self.holder)
        .bind(now_ms + LEASE.as_millis() as i64)
        .execute(tx)
        .await?;
        Ok(())
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let others = locked_usage(&mut tx, user, now, Some(id)).await?;
        limits.check_bytes(&others, received)?;
        sqlx::query("UPDATE uploads_in_flight SET bytes = ? WHERE id = ?")
            .bind(to_sql(received)?)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(wanted.min(limits.room_beside(&others)).max(received))
    }

    /// Takes an upload off the record, giving back its reservation.
    pub async fn end_in_flight(&self, id: Uuid) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM uploads_in_flight WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keeps the uploads this process is receiving on record for another [`LEASE`].
    pub async fn renew_leases(&self) -> Result<(), StorageError> {
        sqlx::query("UPDATE uploads_in_flight SET expires_at = ? WHERE holder = ?")
            .bind(crate::files::now_ms() + LEASE.as_millis() as i64)
            .bind(&*self.holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Drops the rows of uploads whose process stopped renewing them (it died).
    pub async fn sweep_expired_leases(&self) -> Result<u64, StorageError> {
        let result = sqlx::query("DELETE FROM uploads_in_flight WHERE expires_at <= ?")
            .bind(crate::files::now_ms())
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let others = locked_usage(&mut tx, upload.user, now, Some(upload.id)).await?;
        let size = u64::try_from(file.size).unwrap_or(0);
        if let Err(over) = upload.limits.check_bytes(&others, size) {
            drop(tx);
            upload.end().await;
            return Err(over);
        }
        insert_file(&mut tx, file).await?;
        sqlx::query("DELETE FROM uploads_in_flight WHERE id = ?")
            .bind(upload.id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        upload.taken_over();
        Ok(())
    }

    /// A live session of `user`; unknown, foreign and expired ones are all "not found".
    pub async fn session(
        &self,
        user: Uuid,
        id: UploadId,
        now_ms: i64,
    ) -> Result<SessionRow, StorageError> {
        sqlx::query_as("SELECT * FROM upload_sessions WHERE id = ? AND user_id = ? AND expires_at > ?")
            .bind(id.to_string())
            .bind(user.to_string())
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StorageError::NotFound(
                "no upload session with this id (it may have expired or been completed); start a new upload",
            ))
    }

    /// Records a chunk at `start` (with its part's ETag on S3) if the session still ends
    /// there (compare and set: of two racing writers of one offset, one wins). Returns
    /// the new length.
    pub async fn append_chunk(
        &self,
        id: UploadId,
        start: i64,
        length: i64,
        etag: Option<&str>,
    ) -> Result<Option<i64>, StorageError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let advanced = sqlx::query(
            "UPDATE upload_sessions SET received = received + ? WHERE id = ? AND received = ? AND state = 'open'",
        )
        .bind(length)
        .bind(id.to_string())
        .bind(start)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if advanced == 0 {
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO upload_chunks (session_id, start, length, etag) VALUES (?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(start)
        .bind(length)
        .bind(etag)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(start + length))
    }

    /// The chunks of a session, in order.
    pub async fn chunks(&self, id: UploadId) -> Result<Vec<ChunkRow>, StorageError> {
        Ok(sqlx::query_as(
            "SELECT start, length, etag FROM upload_chunks WHERE session_id = ? ORDER BY start",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many chunks a session has, and the length of its last one.
    pub async fn chunk_tail(&self, id: UploadId) -> Result<(i64, Option<i64>), StorageError> {
        Ok(sqlx::query_as(
            "SELECT COUNT(*),
                    (SELECT length FROM upload_chunks WHERE session_id = ?1 ORDER BY start DESC LIMIT 1)
             FROM upload_chunks WHERE session_id = ?1",
        )
        .bind(id.to_string())
        .fetch_one(&self.pool)
        .await?)
    }

    /// Notes a multipart upload before its first part is sent.
    pub async fn record_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        sqlx::query("INSERT INTO multipart_uploads (key, upload_id, created_at) VALUES (?, ?, ?)")
            .bind(key)
            .bind(upload_id)
            .bind(crate::files::now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The id of the multipart upload building `key`, while it is neither completed nor
    /// aborted.
    pub async fn multipart_id(&self, key: &str) -> Result<Option<String>, StorageError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT upload_id FROM multipart_uploads WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(id,)| id))
    }

    /// Forgets a multipart upload that was completed or aborted.
    pub async fn forget_multipart(&self, key: &str) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM multipart_uploads WHERE key = ?")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks a multipart upload for the cleanup to abort.
    pub async fn abandon_multipart(&self, key: &str) -> Result<(), StorageError> {
        sqlx::query("UPDATE multipart_uploads SET abandoned = 1 WHERE key = ?")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// At start, before any call: multipart uploads of streams a previous run was
    /// receiving are abandoned (their clients are gone). Those of resumable sessions
    /// stay: the session outlives the process.
    pub async fn abandon_unowned_multiparts(&self) -> Result<u64, StorageError> {
        let result = sqlx::query(
            "UPDATE multipart_uploads SET abandoned = 1
             WHERE abandoned = 0 AND key NOT IN (SELECT key FROM upload_sessions)",
        )
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Multipart uploads waiting to be aborted: (key, upload id).
    pub async fn abandoned_multiparts(&self) -> Result<Vec<(String, String)>, StorageError> {
        Ok(
            sqlx::query_as("SELECT key, upload_id FROM multipart_uploads WHERE abandoned = 1")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Moves a session between 'open' and 'completing'; false if it was not in `from`.
    pub async fn set_session_state(
        &self,
        id: UploadId,
        from: &str,
        to: &str,
    ) -> Result<bool, StorageError> {
        let result = sqlx::query("UPDATE upload_sessions SET state = ? WHERE id = ? AND state = ?")
            .bind(to)
            .bind(id.to_string())
            .bind(from)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// Turns a completed session into its file row, in one transaction.
    pub async fn complete_session(&self, id: UploadId, file: &FileRow) -> Result<(), StorageError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        insert_file(&mut tx, file).await?;
        sqlx::query("DELETE FROM upload_sessions WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_session(&self, id: UploadId) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM upload_sessions WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sessions whose time ran out.
    pub async fn expired_sessions(&self, now_ms: i64) -> Result<Vec<SessionRow>, StorageError> {
        Ok(
            sqlx::query_as("SELECT * FROM upload_sessions WHERE expires_at <= ?")
                .bind(now_ms)
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

/// The user's usage, read inside a write transaction so that nothing of the user's
/// changes before the caller's own write commits. (SQLite's `BEGIN IMMEDIATE` takes the
/// database's write lock; the row written first is the user's own lock on databases
/// that lock rows.) `excluding` leaves one in-flight upload out of the count.
async fn locked_usage(
    tx: &mut sqlx::SqliteConnection,
    user: Uuid,
    now_ms: i64,
    excluding: Option<Uuid>,
) -> Result<Usage, StorageError> {
    sqlx::query("INSERT INTO user_usage (user_id) VALUES (?) ON CONFLICT (user_id) DO NOTHING")
        .bind(user.to_string())
        .execute(&mut *tx)
        .await?;
    count_usage(tx, user, now_ms, excluding).await
}

async fn count_usage(
    connection: &mut sqlx::SqliteConnection,
    user: Uuid,
    now_ms: i64,
    excluding: Option<Uuid>,
) -> Result<Usage, StorageError> {
    let excluding = excluding.map(|id| id.to_string()).unwrap_or_default();
    let counts: (i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT
            COALESCE((SELECT stored_bytes FROM user_usage WHERE user_id = ?1), 0),
            COALESCE((SELECT stored_files FROM user_usage WHERE user_id = ?1), 0),
            (SELECT COUNT(*) FROM upload_sessions WHERE user_id = ?1 AND expires_at > ?2),
            (SELECT COALESCE(SUM(reserved), 0) FROM upload_sessions
                WHERE user_id = ?1 AND expires_at > ?2),
            (SELECT COUNT(*) FROM uploads_in_flight
                WHERE user_id = ?1 AND expires_at > ?2 AND id != ?3),
            (SELECT COUNT(*) FROM uploads_in_flight
                WHERE user_id = ?1 AND expires_at > ?2 AND id != ?3 AND kind = 'file'),
            (SELECT COALESCE(SUM(bytes), 0) FROM uploads_in_flight
                WHERE user_id = ?1 AND expires_at > ?2 AND id != ?3)",
    )
    .bind(user.to_string())
    .bind(now_ms)
    .bind(excluding)
    .fetch_one(connection)
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

fn to_sql(value: u64) -> Result<i64, StorageError> {
    i64::try_from(value).map_err(|_| StorageError::Internal(format!("{value} is out of range")))
}

fn parse_user(raw: &str) -> Result<Uuid, StorageError> {
    Uuid::parse_str(raw).map_err(|err| StorageError::Internal(format!("stored user id: {err}")))
}

async fn insert_file(
    connection: &mut sqlx::SqliteConnection,
    file: &FileRow,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO files (key, user_id, filename, content_type, size, sha256, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&file.key)
    .bind(&file.user_id)
    .bind(&file.filename)
    .bind(&file.content_type)
    .bind(file.size)
    .bind(&file.sha256)
    .bind(file.created_at)
    .execute(connection)
    .await?;
    Ok(())
}
