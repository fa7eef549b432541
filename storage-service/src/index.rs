//! The file index and the resumable-session table, in SQLite.
//!
//! The object store holds bytes; this index says which objects are files, whose they
//! are and what they were called. A file row is written only after its object is
//! complete, and every query is scoped by user id, so another user's key is simply
//! "not found".

use sqlx::{FromRow, SqlitePool};
use strongbox_common::sqlite;
use uuid::Uuid;

use crate::error::StorageError;
use crate::names::{ObjectKey, UploadId};

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
}

impl Index {
    pub async fn open(url: &str) -> Result<Self, StorageError> {
        let pool = sqlite::open(url)
            .await
            .map_err(|err| StorageError::Internal(err.to_string()))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|err| StorageError::Internal(format!("database migration failed: {err}")))?;
        Ok(Self { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn insert_file(&self, file: &FileRow) -> Result<(), StorageError> {
        let mut connection = self.pool.acquire().await?;
        insert_file(&mut connection, file).await
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

    pub async fn insert_session(&self, session: &SessionRow) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO upload_sessions (id, user_id, key, filename, content_type, declared_size,
                 declared_sha256, received, state, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, 0, 'open', ?, ?)",
        )
        .bind(&session.id)
        .bind(&session.user_id)
        .bind(&session.key)
        .bind(&session.filename)
        .bind(&session.content_type)
        .bind(session.declared_size)
        .bind(&session.declared_sha256)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&self.pool)
        .await?;
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
