//! The auth database: users, refresh tokens and failed logins, in SQLite through sqlx.
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`, so it takes the write lock up
//! front and waits (busy timeout) instead of failing with "database is locked" when it
//! would later try to upgrade a read lock.

use sqlx::{FromRow, SqlitePool};
use strongbox_common::sqlite;
use uuid::Uuid;

use crate::credentials::Email;
use crate::error::AuthError;

#[derive(Debug, Clone, FromRow)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub created_at: i64,
}

impl UserRecord {
    pub fn user_id(&self) -> Result<Uuid, AuthError> {
        Uuid::parse_str(&self.id)
            .map_err(|err| AuthError::Internal(format!("stored user id: {err}")))
    }
}

/// What became of a presented refresh token.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// It was live; it is now spent and the successor replaces it.
    Rotated {
        user_id: String,
    },
    /// It had already been rotated: someone replayed it. Its family is now revoked.
    Reused,
    /// Its session was logged out or revoked.
    Revoked,
    Expired,
    Unknown,
}

#[derive(FromRow)]
struct TokenState {
    family_id: String,
    expires_at: i64,
    revoked_at: Option<i64>,
    replaced_by: Option<String>,
}

/// A new refresh token to store.
pub struct NewRefreshToken<'a> {
    pub hash: &'a [u8],
    pub expires_at: i64,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if missing) the database at `url` and runs the embedded migrations.
    pub async fn connect(url: &str) -> Result<Self, AuthError> {
        let pool = sqlite::open(url)
            .await
            .map_err(|err| AuthError::Internal(err.to_string()))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|err| AuthError::Internal(format!("database migration failed: {err}")))?;
        Ok(Self { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn insert_user(
        &self,
        email: &Email,
        password_hash: &str,
        now: i64,
    ) -> Result<UserRecord, AuthError> {
        let user = UserRecord {
            id: Uuid::new_v4().to_string(),
            email: email.as_str().to_owned(),
            password_hash: password_hash.to_owned(),
            created_at: now,
        };
        sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES (?, ?, ?, ?)")
            .bind(&user.id)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(user.created_at)
            .execute(&self.pool)
            .await
            .map_err(|err| match err.as_database_error() {
                Some(db) if db.is_unique_violation() => AuthError::EmailTaken,
                _ => AuthError::Database(err),
            })?;
        Ok(user)
    }

    pub async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, AuthError> {
        Ok(
            sqlx::query_as(
                "SELECT id, email, password_hash, created_at FROM users WHERE email = ?",
            )
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await?,
        )
    }

    pub async fn user_by_id(&self, id: Uuid) -> Result<Option<UserRecord>, AuthError> {
        Ok(
            sqlx::query_as("SELECT id, email, password_hash, created_at FROM users WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Failed logins for `email` since `since`: how many, and when the oldest was.
    pub async fn failures_since(
        &self,
        email: &Email,
        since: i64,
    ) -> Result<(i64, Option<i64>), AuthError> {
        Ok(sqlx::query_as(
            "SELECT COUNT(*), MIN(failed_at) FROM login_failures WHERE email = ? AND failed_at > ?",
        )
        .bind(email.as_str())
        .bind(since)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn record_failure(&self, email: &Email, now: i64) -> Result<(), AuthError> {
        sqlx::query("INSERT INTO login_failures (email, failed_at) VALUES (?, ?)")
            .bind(email.as_str())
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn clear_failures(&self, email: &Email) -> Result<(), AuthError> {
        sqlx::query("DELETE FROM login_failures WHERE email = ?")
            .bind(email.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Starts a new session (token family) for `user_id`.
    pub async fn start_session(
        &self,
        user_id: Uuid,
        token: NewRefreshToken<'_>,
        now: i64,
    ) -> Result<(), AuthError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at, created_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(user_id.to_string())
        .bind(Uuid::new_v4().to_string())
        .bind(token.hash)
        .bind(token.expires_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Spends the token hashed `presented` and, if it was live, stores `successor` in its
    /// family, all in one transaction: of two concurrent calls with one token, exactly
    /// one sees it live. A token that was already rotated revokes its whole family.
    pub async fn rotate(
        &self,
        presented: &[u8],
        successor: NewRefreshToken<'_>,
        now: i64,
    ) -> Result<Rotation, AuthError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let spent: Option<(String, String, String)> = sqlx::query_as(
            "UPDATE refresh_tokens SET revoked_at = ?
             WHERE token_hash = ? AND revoked_at IS NULL AND expires_at > ?
             RETURNING id, user_id, family_id",
        )
        .bind(now)
        .bind(presented)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((spent_id, user_id, family_id)) = spent {
            let successor_id = Uuid::new_v4().to_string();
            sqlx::query(
                "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at, created_at)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&successor_id)
            .bind(&user_id)
            .bind(&family_id)
            .bind(successor.hash)
            .bind(successor.expires_at)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE refresh_tokens SET replaced_by = ? WHERE id = ?")
                .bind(&successor_id)
                .bind(&spent_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(Rotation::Rotated { user_id });
        }

        let state: Option<TokenState> = sqlx::query_as(
            "SELECT family_id, expires_at, revoked_at, replaced_by FROM refresh_tokens WHERE token_hash = ?",
        )
        .bind(presented)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match state {
            None => Rotation::Unknown,
            Some(state) if state.replaced_by.is_some() => {
                revoke_family(&mut tx, &state.family_id, now).await?;
                Rotation::Reused
            }
            Some(state) if state.revoked_at.is_some() => Rotation::Revoked,
            Some(state) if state.expires_at <= now => Rotation::Expired,
            Some(_) => Rotation::Unknown,
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Ends the session (family) the token hashed `presented` belongs to. Unknown tokens
    /// are ignored, so logging out twice is harmless.
    pub async fn end_session(&self, presented: &[u8], now: i64) -> Result<(), AuthError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let family: Option<(String,)> =
            sqlx::query_as("SELECT family_id FROM refresh_tokens WHERE token_hash = ?")
                .bind(presented)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((family_id,)) = family {
            revoke_family(&mut tx, &family_id, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Ends every session of `user_id`; returns how many live tokens were revoked.
    pub async fn end_all_sessions(&self, user_id: Uuid, now: i64) -> Result<u64, AuthError> {
        let result = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(user_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Deletes refresh tokens past their expiry and failed logins older than the window.
    pub async fn purge(&self, now: i64, failures_before: i64) -> Result<(u64, u64), AuthError> {
        let tokens = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at <= ?")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let failures = sqlx::query("DELETE FROM login_failures WHERE failed_at <= ?")
            .bind(failures_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok((tokens, failures))
    }
}

async fn revoke_family(
    tx: &mut sqlx::SqliteConnection,
    family_id: &str,
    now: i64,
) -> Result<(), AuthError> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(family_id)
    .execute(tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> Store {
        Store::connect("sqlite::memory:").await.unwrap()
    }

    #[tokio::test]
    async fn rotation_spends_the_token_and_replay_revokes_the_family() {
        let store = store().await;
        let email = Email::parse("a@example.com").unwrap();
        let user = store.insert_user(&email, "hash", 0).await.unwrap();
        let user_id = user.user_id().unwrap();
        store
            .start_session(
                user_id,
                NewRefreshToken {
                    hash: b"first",
                    expires_at: 100,
                },
                0,
            )
            .await
            .unwrap();
        let next = NewRefreshToken {
            hash: b"second",
            expires_at: 100,
        };
        assert_eq!(
            store.rotate(b"first", next, 1).await.unwrap(),
            Rotation::Rotated {
                user_id: user.id.clone()
            }
        );
        let replay = NewRefreshToken {
            hash: b"third",
            expires_at: 100,
        };
        assert_eq!(
            store.rotate(b"first", replay, 2).await.unwrap(),
            Rotation::Reused
        );
        // The successor was revoked with its family.
        let after = NewRefreshToken {
            hash: b"fourth",
            expires_at: 100,
        };
        assert_eq!(
            store.rotate(b"second", after, 3).await.unwrap(),
            Rotation::Revoked
        );
    }

    #[tokio::test]
    async fn expired_and_unknown_tokens_are_told_apart() {
        let store = store().await;
        let email = Email::parse("b@example.com").unwrap();
        let user_id = store
            .insert_user(&email, "hash", 0)
            .await
            .unwrap()
            .user_id()
            .unwrap();
        store
            .start_session(
                user_id,
                NewRefreshToken {
                    hash: b"old",
                    expires_at: 10,
                },
                0,
            )
            .await
            .unwrap();
        let next = || NewRefreshToken {
            hash: b"new",
            expires_at: 100,
        };
        assert_eq!(
            store.rotate(b"old", next(), 10).await.unwrap(),
            Rotation::Expired
        );
        assert_eq!(
            store.rotate(b"nope", next(), 10).await.unwrap(),
            Rotation::Unknown
        );
        assert_eq!(store.purge(10, 0).await.unwrap().0, 1);
    }

    #[tokio::test]
    async fn duplicate_emails_are_refused() {
        let store = store().await;
        let email = Email::parse("c@example.com").unwrap();
        store.insert_user(&email, "hash", 0).await.unwrap();
        assert!(matches!(
            store.insert_user(&email, "hash", 0).await,
            Err(AuthError::EmailTaken)
        ));
    }
}
