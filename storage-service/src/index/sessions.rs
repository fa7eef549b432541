//! Resumable sessions in the index: their rows, their chunks, the chunks being stored
//! right now, and the claims that let several replicas share them.
//!
//! Rows become [`Session`] and [`Chunk`] here, once; the protocol (`sessions/`) never
//! sees a string state or a signed size. Every rule two replicas could race on is one
//! statement or one transaction: a chunk commits by compare-and-set on the session's
//! offset (with its running digest and the end of its announcement), a completion or a
//! removal is claimed by the one `UPDATE`/`DELETE` that finds the row as expected.

use sqlx::FromRow;
use strongbox_common::database::Backend;
use strongbox_common::on_pool;
use uuid::Uuid;

use super::{FileRow, Index, Statements, parse_user, to_sql, usage_lock};
use crate::error::StorageError;
use crate::names::{ObjectKey, Sha256Hex, UploadId};
use crate::policy::ContentType;
use crate::sessions::{Chunk, ChunkTail, RunningDigest, Session, SessionState};
use crate::usage::{Admission, Limits};

const NOT_FOUND: StorageError = StorageError::NotFound(
    "no upload session with this id (it may have expired or been completed); start a new upload",
);

#[derive(FromRow)]
struct SessionRow {
    id: String,
    user_id: String,
    key: String,
    filename: String,
    content_type: String,
    declared_size: Option<i64>,
    declared_sha256: Option<String>,
    received: i64,
    reserved: i64,
    state: String,
    created_at: i64,
    expires_at: i64,
    claimed_until: Option<i64>,
    digest: Option<Vec<u8>>,
    digested: Option<i64>,
}

impl TryFrom<SessionRow> for Session {
    type Error = StorageError;

    fn try_from(row: SessionRow) -> Result<Self, StorageError> {
        Ok(Self {
            id: UploadId::from_stored(&row.id)?,
            user: parse_user(&row.user_id)?,
            key: ObjectKey::from_stored(row.key),
            filename: row.filename,
            content_type: ContentType::parse(&row.content_type)
                .map_err(|err| stored("content type", err))?,
            declared_size: row.declared_size.map(from_sql).transpose()?,
            declared_sha256: row
                .declared_sha256
                .as_deref()
                .map(Sha256Hex::parse)
                .transpose()
                .map_err(|err| stored("declared SHA-256", err))?,
            received: from_sql(row.received)?,
            reserved: from_sql(row.reserved)?,
            state: SessionState::from_stored(&row.state)?,
            created_at: row.created_at,
            expires_at: row.expires_at,
            claimed_until: row.claimed_until,
            // A digest that does not cover every byte received is no digest of them.
            digest: match (row.digest, row.digested) {
                (Some(state), Some(digested)) if digested == row.received => {
                    Some(RunningDigest::from_bytes(&state)?)
                }
                _ => None,
            },
        })
    }
}

#[derive(FromRow)]
struct ChunkRow {
    start: i64,
    length: i64,
    etag: Option<String>,
}

/// Which sessions [`Index::remove_sessions`] takes.
#[derive(Debug, Clone, Copy)]
pub enum Removal {
    /// Every session whose time ran out (the sweeper).
    Expired,
    /// The user's open session (AbortUpload).
    Open { user: Uuid, id: UploadId },
    /// A session whose completion the caller holds (its bytes failed the checksum).
    Completing { id: UploadId },
}

/// A session taken off the index, whose stored chunks the remover now owns.
#[derive(Debug)]
pub struct Removed {
    pub session: Session,
    /// Its multipart upload on S3, if it still had one, now abandoned and claimed by
    /// the remover: should the remover die before aborting it, the cleanup of any
    /// replica aborts it once the claim lapses.
    pub multipart: Option<String>,
}

impl Index {
    /// Records a new session if its user may open one (see [`Limits::admit`]): the
    /// session holds `session.reserved` bytes of the quota and counts as a file.
    pub async fn admit_session(
        &self,
        session: &Session,
        limits: &Limits,
    ) -> Result<(), StorageError> {
        let user = session.user;
        let digest = session.digest.as_ref().map(RunningDigest::to_bytes);
        on_pool!(&self.pool, pool => {
            let mut tx = pool.begin_write(&usage_lock(user)).await?;
            let usage = tx.locked_usage(user, session.created_at, None).await?;
            limits.admit(&usage, Admission::Session { bytes: session.reserved })?;
            sqlx::query(
                "INSERT INTO upload_sessions (id, user_id, key, filename, content_type,
                     declared_size, declared_sha256, received, reserved, state, created_at,
                     expires_at, digest, digested)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, 'open', $9, $10, $11, 0)",
            )
            .bind(session.id.to_string())
            .bind(user.to_string())
            .bind(session.key.as_str())
            .bind(&session.filename)
            .bind(session.content_type.as_str())
            .bind(session.declared_size.map(to_sql).transpose()?)
            .bind(session.declared_sha256.as_ref().map(Sha256Hex::as_str))
            .bind(to_sql(session.reserved)?)
            .bind(session.created_at)
            .bind(session.expires_at)
            .bind(digest)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Resumable sessions still open, of all users.
    pub async fn open_sessions(&self, now_ms: i64) -> Result<u64, StorageError> {
        let (open,): (i64,) = on_pool!(&self.pool, pool => {
            sqlx::query_as("SELECT COUNT(*) FROM upload_sessions WHERE expires_at > $1")
                .bind(now_ms)
                .fetch_one(pool)
                .await?
        });
        Ok(u64::try_from(open).unwrap_or(0))
    }

    /// A live session of `user`; unknown, foreign and expired ones are all "not found".
    pub async fn session(
        &self,
        user: Uuid,
        id: UploadId,
        now_ms: i64,
    ) -> Result<Session, StorageError> {
        let row: Option<SessionRow> = on_pool!(&self.pool, pool => {
            sqlx::query_as(
                "SELECT * FROM upload_sessions WHERE id = $1 AND user_id = $2 AND expires_at > $3",
            )
            .bind(id.to_string())
            .bind(user.to_string())
            .bind(now_ms)
            .fetch_optional(pool)
            .await?
        });
        row.ok_or(NOT_FOUND)?.try_into()
    }

    /// The chunks of a session, in order.
    pub async fn chunks(&self, id: UploadId) -> Result<Vec<Chunk>, StorageError> {
        let rows: Vec<ChunkRow> = on_pool!(&self.pool, pool => {
            sqlx::query_as(
                "SELECT start, length, etag FROM upload_chunks WHERE session_id = $1 ORDER BY start",
            )
            .bind(id.to_string())
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|row| {
                Ok(Chunk {
                    start: from_sql(row.start)?,
                    length: from_sql(row.length)?,
                    etag: row.etag,
                })
            })
            .collect()
    }

    /// How many chunks a session has, and the length of its last one.
    pub async fn chunk_tail(&self, id: UploadId) -> Result<ChunkTail, StorageError> {
        let (count, last_length): (i64, Option<i64>) = on_pool!(&self.pool, pool => {
            sqlx::query_as(
                "SELECT COUNT(*),
                        (SELECT length FROM upload_chunks WHERE session_id = $1
                         ORDER BY start DESC LIMIT 1)
                 FROM upload_chunks WHERE session_id = $1",
            )
            .bind(id.to_string())
            .fetch_one(pool)
            .await?
        });
        Ok(ChunkTail {
            count: from_sql(count)?,
            last_length: last_length.map(from_sql).transpose()?,
        })
    }

    /// Announces a chunk of `id` ending at `end`, stored as part `part`, until
    /// `expires_at` or until it commits or is withdrawn. Replaces an announcement of the
    /// same end (a retry racing the original: either will do for the chunk after).
    pub async fn announce_chunk(
        &self,
        id: UploadId,
        end: u64,
        part: u64,
        token: &str,
        expires_at: i64,
    ) -> Result<(), StorageError> {
        on_pool!(&self.pool, pool => {
            sqlx::query(
                "INSERT INTO upload_chunks_storing (session_id, end_offset, part, token, expires_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (session_id, end_offset) DO UPDATE
                 SET part = excluded.part, token = excluded.token, expires_at = excluded.expires_at",
            )
            .bind(id.to_string())
            .bind(to_sql(end)?)
            .bind(to_sql(part)?)
            .bind(token)
            .bind(expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The part number of the chunk of `id` being stored that ends at `end`, if one is
    /// announced and its announcement has not lapsed.
    pub async fn chunk_storing(
        &self,
        id: UploadId,
        end: u64,
        now_ms: i64,
    ) -> Result<Option<u64>, StorageError> {
        let row: Option<(i64,)> = on_pool!(&self.pool, pool => {
            sqlx::query_as(
                "SELECT part FROM upload_chunks_storing
                 WHERE session_id = $1 AND end_offset = $2 AND expires_at > $3",
            )
            .bind(id.to_string())
            .bind(to_sql(end)?)
            .bind(now_ms)
            .fetch_optional(pool)
            .await?
        });
        row.map(|(part,)| from_sql(part)).transpose()
    }

    /// Withdraws an announcement, if it is still the one made under `token`.
    pub async fn withdraw_chunk(
        &self,
        id: UploadId,
        end: u64,
        token: &str,
    ) -> Result<(), StorageError> {
        on_pool!(&self.pool, pool => {
            sqlx::query(
                "DELETE FROM upload_chunks_storing
                 WHERE session_id = $1 AND end_offset = $2 AND token = $3",
            )
            .bind(id.to_string())
            .bind(to_sql(end)?)
            .bind(token)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Commits the chunk at `start` (with its part's ETag on S3, and the session's digest
    /// now covering it, where one is kept) if the session still ends at `start`: of two
    /// racing writers of one offset, on any replicas, one wins. The chunk's announcement
    /// under `token` ends in the same transaction. Returns the new length, or `None` if
    /// the session had moved on (or was no longer open).
    pub async fn commit_chunk(
        &self,
        id: UploadId,
        chunk: &Chunk,
        digest: Option<&RunningDigest>,
        token: &str,
    ) -> Result<Option<u64>, StorageError> {
        let end = chunk.start + chunk.length;
        let digest = digest.map(RunningDigest::to_bytes);
        on_pool!(&self.pool, pool => {
            let mut tx = pool.begin_write(&format!("session:{id}")).await?;
            let advanced = sqlx::query(
                "UPDATE upload_sessions
                 SET received = $1, digest = $2, digested = CASE WHEN $2 IS NULL THEN NULL ELSE $1 END
                 WHERE id = $3 AND received = $4 AND state = 'open'",
            )
            .bind(to_sql(end)?)
            .bind(digest)
            .bind(id.to_string())
            .bind(to_sql(chunk.start)?)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if advanced == 0 {
                return Ok(None);
            }
            sqlx::query(
                "INSERT INTO upload_chunks (session_id, start, length, etag) VALUES ($1, $2, $3, $4)",
            )
            .bind(id.to_string())
            .bind(to_sql(chunk.start)?)
            .bind(to_sql(chunk.length)?)
            .bind(&chunk.etag)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM upload_chunks_storing
                 WHERE session_id = $1 AND end_offset = $2 AND token = $3",
            )
            .bind(id.to_string())
            .bind(to_sql(end)?)
            .bind(token)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(Some(end))
    }

    /// Moves an open session to 'completing' for the caller until `until`, or takes over
    /// one whose completer's claim lapsed (it died). False if another holds it.
    pub async fn claim_completion(
        &self,
        id: UploadId,
        now_ms: i64,
        until: i64,
    ) -> Result<bool, StorageError> {
        let claimed = on_pool!(&self.pool, pool => {
            sqlx::query(
                "UPDATE upload_sessions SET state = 'completing', claimed_until = $1
                 WHERE id = $2 AND expires_at > $3
                   AND (state = 'open' OR claimed_until IS NULL OR claimed_until <= $3)",
            )
            .bind(until)
            .bind(id.to_string())
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(claimed > 0)
    }

    /// Gives a completion back: the session is open again (the completion failed in a
    /// way a retry may not).
    pub async fn reopen(&self, id: UploadId) -> Result<(), StorageError> {
        on_pool!(&self.pool, pool => {
            sqlx::query(
                "UPDATE upload_sessions SET state = 'open', claimed_until = NULL
                 WHERE id = $1 AND state = 'completing'",
            )
            .bind(id.to_string())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Turns a completed session into its file row, in one transaction.
    pub async fn complete_session(&self, id: UploadId, file: &FileRow) -> Result<(), StorageError> {
        let user = parse_user(&file.user_id)?;
        on_pool!(&self.pool, pool => {
            let mut tx = pool.begin_write(&usage_lock(user)).await?;
            tx.insert_file(file).await?;
            sqlx::query("DELETE FROM upload_sessions WHERE id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Takes the sessions `which` names off the index, with their chunks and
    /// announcements, and hands each one's multipart upload to the caller (abandoned and
    /// claimed until `claim_until`, in the same transaction). The `DELETE` is the claim:
    /// of two replicas sweeping at once, each session goes to exactly one.
    pub async fn remove_sessions(
        &self,
        which: Removal,
        now_ms: i64,
        claim_until: i64,
    ) -> Result<Vec<Removed>, StorageError> {
        let (query, lock) = match which {
            Removal::Expired => (
                "DELETE FROM upload_sessions WHERE expires_at <= $1 RETURNING *",
                "sessions".to_owned(),
            ),
            Removal::Open { id, .. } => (
                "DELETE FROM upload_sessions
                 WHERE expires_at > $1 AND id = $2 AND user_id = $3 AND state = 'open'
                 RETURNING *",
                format!("session:{id}"),
            ),
            Removal::Completing { id } => (
                "DELETE FROM upload_sessions WHERE id = $1 AND state = 'completing' RETURNING *",
                format!("session:{id}"),
            ),
        };
        let (rows, multiparts) = on_pool!(&self.pool, pool => {
            let mut tx = pool.begin_write(&lock).await?;
            let removal = sqlx::query_as(query);
            let removal = match which {
                Removal::Expired => removal.bind(now_ms),
                Removal::Open { user, id } => removal
                    .bind(now_ms)
                    .bind(id.to_string())
                    .bind(user.to_string()),
                Removal::Completing { id } => removal.bind(id.to_string()),
            };
            let rows: Vec<SessionRow> = removal.fetch_all(&mut *tx).await?;
            let mut multiparts = Vec::with_capacity(rows.len());
            for row in &rows {
                let upload: Option<(String,)> = sqlx::query_as(
                    "UPDATE multipart_uploads SET abandoned = 1, claimed_until = $1
                     WHERE key = $2 RETURNING upload_id",
                )
                .bind(claim_until)
                .bind(&row.key)
                .fetch_optional(&mut *tx)
                .await?;
                multiparts.push(upload.map(|(upload_id,)| upload_id));
            }
            tx.commit().await?;
            (rows, multiparts)
        });
        rows.into_iter()
            .zip(multiparts)
            .map(|(row, multipart)| {
                Ok(Removed {
                    session: row.try_into()?,
                    multipart,
                })
            })
            .collect()
    }
}

fn from_sql(value: i64) -> Result<u64, StorageError> {
    u64::try_from(value)
        .map_err(|_| StorageError::Internal(format!("a stored size is negative: {value}")))
}

fn stored(what: &str, err: StorageError) -> StorageError {
    StorageError::Internal(format!("a session's stored {what} is invalid: {err}"))
}
