//! The auth database: users, refresh tokens and failed logins, in SQLite or PostgreSQL
//! through sqlx (one query text, run on either native pool by `on_pool!`).
//!
//! The two check-then-act rules here run in write transactions
//! ([`Backend::begin_write`]): claiming a login attempt (count failures, then record
//! one) under the email's lock, and rotating a refresh token (find it live, then spend
//! it) under the refresh tokens' lock. On SQLite that is `BEGIN IMMEDIATE`, on
//! PostgreSQL an advisory lock, so the rules hold across replicas sharing the database.

use sqlx::FromRow;
use strongbox_common::database::{Backend, Migrations, Pool};
use strongbox_common::on_pool;
use uuid::Uuid;

use crate::credentials::{ClientAddress, Email};
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
    /// It had just been rotated and its successor is still unused: a client retrying a
    /// Refresh whose answer was lost. Nothing changed; the caller hands out the same
    /// successor again.
    Retried {
        user_id: String,
    },
    /// It had already been rotated: someone replayed it. Its family is now revoked.
    Reused,
    /// Its session was logged out or revoked.
    Revoked,
    Expired,
    Unknown,
}

/// A presented token that was not live, with its successor if it was rotated. A rotated
/// token's `revoked_at` is the moment of its rotation (revoking a family later only
/// touches tokens not yet revoked).
#[derive(FromRow)]
struct TokenState {
    user_id: String,
    family_id: String,
    expires_at: i64,
    revoked_at: Option<i64>,
    replaced_by: Option<String>,
    successor_hash: Option<Vec<u8>>,
    successor_expires_at: Option<i64>,
    successor_revoked_at: Option<i64>,
    successor_replaced_by: Option<String>,
}

impl TokenState {
    /// Whether presenting this token again is a retry of its rotation rather than a
    /// replay: rotated at most `reuse_interval` seconds ago, into the very successor the
    /// caller derived again (`successor_hash`), which nobody has used or revoked since.
    fn is_retry(&self, successor_hash: &[u8], now: i64, reuse_interval: i64) -> bool {
        let Some(rotated_at) = self.revoked_at else {
            return false;
        };
        let recent = reuse_interval > 0 && now.saturating_sub(rotated_at) <= reuse_interval;
        let successor_live = self.successor_revoked_at.is_none()
            && self.successor_replaced_by.is_none()
            && self.successor_expires_at.is_some_and(|expiry| expiry > now);
        let same_successor = self.successor_hash.as_deref() == Some(successor_hash);
        self.replaced_by.is_some() && recent && successor_live && same_successor
    }
}

/// The outcome of claiming a login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Under both limits: the attempt is recorded (pending) until its password is
    /// checked: then settled as a failure, or deleted on success.
    Claimed { attempt: i64 },
    /// A limit is reached by settled failures; it frees up when the oldest of them
    /// leaves the window.
    Refused { oldest_failure: i64 },
    /// A limit is reached only because attempts are still being checked: it frees up
    /// as soon as they are.
    InFlight,
}

/// The failed-login limits an attempt is claimed under, over failures after `since`.
#[derive(Debug, Clone, Copy)]
pub struct FailureLimits {
    pub per_client: u32,
    pub per_email: u32,
    pub since: i64,
}

/// A new refresh token to store.
pub struct NewRefreshToken<'a> {
    pub hash: &'a [u8],
    pub expires_at: i64,
}

/// A refresh token row, inserted at login and at every rotation.
const INSERT_REFRESH_TOKEN: &str =
    "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at, created_at)
     VALUES ($1, $2, $3, $4, $5, $6)";

/// Revokes every live token of a family (`$1` now, `$2` the family).
const REVOKE_FAMILY: &str =
    "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL";

/// The write lock every refresh token rotation and logout takes: a replay revoking a
/// family must not miss a successor that a concurrent rotation is adding to it.
const REFRESH_TOKENS_LOCK: &str = "refresh_tokens";

#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("./migrations/sqlite"),
    postgres: sqlx::migrate!("./migrations/postgres"),
};

impl Store {
    /// Opens the database at `url` (SQLite, creating it if missing, or PostgreSQL) and
    /// runs the embedded migrations.
    pub async fn connect(url: &str) -> Result<Self, AuthError> {
        let pool = Pool::open(url, &MIGRATIONS)
            .await
            .map_err(|err| AuthError::Internal(err.to_string()))?;
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
        let inserted = on_pool!(&self.pool, pool => {
            sqlx::query(
                "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&user.id)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(user.created_at)
            .execute(pool)
            .await
            .map(drop)
        });
        inserted.map_err(|err| match err.as_database_error() {
            Some(db) if db.is_unique_violation() => AuthError::EmailTaken,
            _ => AuthError::Database(err),
        })?;
        Ok(user)
    }

    pub async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, AuthError> {
        Ok(on_pool!(&self.pool, pool => {
            sqlx::query_as(
                "SELECT id, email, password_hash, created_at FROM users WHERE email = $1",
            )
            .bind(email.as_str())
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn user_by_id(&self, id: Uuid) -> Result<Option<UserRecord>, AuthError> {
        Ok(on_pool!(&self.pool, pool => {
            sqlx::query_as("SELECT id, email, password_hash, created_at FROM users WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Claims a login attempt for `email` from `client` before its password is checked:
    /// in one transaction, counts the recent failures and, when under `limits`, records
    /// the attempt as a failure. Of N concurrent attempts, at most the limit are claimed,
    /// so at most that many passwords are ever checked per window, on any replica.
    pub async fn claim_login_attempt(
        &self,
        email: &Email,
        client: &ClientAddress,
        limits: FailureLimits,
        now: i64,
    ) -> Result<Claim, AuthError> {
        on_pool!(&self.pool, pool => {
            // Both limits count rows of this email only: its lock is the whole rule's.
            let mut tx = pool.begin_write(email.as_str()).await?;
            let from_client: Counted = sqlx::query_as(
                "SELECT COUNT(*) AS attempts, COALESCE(SUM(pending), 0) AS pending,
                        MIN(CASE WHEN pending = 0 THEN failed_at END) AS oldest_settled
                 FROM login_failures
                 WHERE email = $1 AND client_address = $2 AND failed_at > $3",
            )
            .bind(email.as_str())
            .bind(client.as_str())
            .bind(limits.since)
            .fetch_one(&mut *tx)
            .await?;
            if let Some(refusal) = from_client.refusal(limits.per_client, now) {
                return Ok(refusal);
            }
            let for_email: Counted = sqlx::query_as(
                "SELECT COUNT(*) AS attempts, COALESCE(SUM(pending), 0) AS pending,
                        MIN(CASE WHEN pending = 0 THEN failed_at END) AS oldest_settled
                 FROM login_failures WHERE email = $1 AND failed_at > $2",
            )
            .bind(email.as_str())
            .bind(limits.since)
            .fetch_one(&mut *tx)
            .await?;
            if let Some(refusal) = for_email.refusal(limits.per_email, now) {
                return Ok(refusal);
            }
            let (attempt,): (i64,) = sqlx::query_as(pool.pick(
                "INSERT INTO login_failures (email, client_address, failed_at, pending)
                 VALUES ($1, $2, $3, 1) RETURNING rowid",
                "INSERT INTO login_failures (email, client_address, failed_at, pending)
                 VALUES ($1, $2, $3, 1) RETURNING id",
            ))
            .bind(email.as_str())
            .bind(client.as_str())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Claim::Claimed { attempt })
        })
    }

    /// A claimed attempt's password was wrong: it stays counted, as a failure.
    pub async fn settle_failure(&self, attempt: i64) -> Result<(), AuthError> {
        on_pool!(&self.pool, pool => {
            sqlx::query(pool.pick(
                "UPDATE login_failures SET pending = 0 WHERE rowid = $1",
                "UPDATE login_failures SET pending = 0 WHERE id = $1",
            ))
            .bind(attempt)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// A login succeeded: forgets its claimed attempt and every failure of `email` from
    /// the same `client`. Failures from other addresses stay counted.
    pub async fn clear_failures(
        &self,
        email: &Email,
        client: &ClientAddress,
    ) -> Result<(), AuthError> {
        on_pool!(&self.pool, pool => {
            sqlx::query("DELETE FROM login_failures WHERE email = $1 AND client_address = $2")
                .bind(email.as_str())
                .bind(client.as_str())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Starts a new session (token family) for `user_id`.
    pub async fn start_session(
        &self,
        user_id: Uuid,
        token: NewRefreshToken<'_>,
        now: i64,
    ) -> Result<(), AuthError> {
        on_pool!(&self.pool, pool => {
            sqlx::query(INSERT_REFRESH_TOKEN)
                .bind(Uuid::new_v4().to_string())
                .bind(user_id.to_string())
                .bind(Uuid::new_v4().to_string())
                .bind(token.hash)
                .bind(token.expires_at)
                .bind(now)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Spends the token hashed `presented` and, if it was live, stores `successor` in its
    /// family, all in one transaction: of two concurrent calls with one token, exactly
    /// one sees it live. A token that was already rotated revokes its whole family,
    /// unless it is a retry (see [`TokenState::is_retry`]) within `reuse_interval` seconds.
    pub async fn rotate(
        &self,
        presented: &[u8],
        successor: NewRefreshToken<'_>,
        now: i64,
        reuse_interval: i64,
    ) -> Result<Rotation, AuthError> {
        on_pool!(&self.pool, pool => {
            let mut tx = pool.begin_write(REFRESH_TOKENS_LOCK).await?;
            let spent: Option<(String, String, String)> = sqlx::query_as(
                "UPDATE refresh_tokens SET revoked_at = $1
                 WHERE token_hash = $2 AND revoked_at IS NULL AND expires_at > $1
                 RETURNING id, user_id, family_id",
            )
            .bind(now)
            .bind(presented)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((spent_id, user_id, family_id)) = spent {
                let successor_id = Uuid::new_v4().to_string();
                sqlx::query(INSERT_REFRESH_TOKEN)
                    .bind(&successor_id)
                    .bind(&user_id)
                    .bind(&family_id)
                    .bind(successor.hash)
                    .bind(successor.expires_at)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE refresh_tokens SET replaced_by = $1 WHERE id = $2")
                    .bind(&successor_id)
                    .bind(&spent_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok(Rotation::Rotated { user_id });
            }

            let state: Option<TokenState> = sqlx::query_as(
                "SELECT t.user_id, t.family_id, t.expires_at, t.revoked_at, t.replaced_by,
                        s.token_hash AS successor_hash, s.expires_at AS successor_expires_at,
                        s.revoked_at AS successor_revoked_at,
                        s.replaced_by AS successor_replaced_by
                 FROM refresh_tokens t LEFT JOIN refresh_tokens s ON s.id = t.replaced_by
                 WHERE t.token_hash = $1",
            )
            .bind(presented)
            .fetch_optional(&mut *tx)
            .await?;
            let outcome = match state {
                None => Rotation::Unknown,
                Some(state) if state.is_retry(successor.hash, now, reuse_interval) => {
                    Rotation::Retried {
                        user_id: state.user_id,
                    }
                }
                Some(state) if state.replaced_by.is_some() => {
                    sqlx::query(REVOKE_FAMILY)
                        .bind(now)
                        .bind(&state.family_id)
                        .execute(&mut *tx)
                        .await?;
                    Rotation::Reused
                }
                Some(state) if state.revoked_at.is_some() => Rotation::Revoked,
                Some(state) if state.expires_at <= now => Rotation::Expired,
                Some(_) => Rotation::Unknown,
            };
            tx.commit().await?;
            Ok(outcome)
        })
    }

    /// Ends the session (family) the token hashed `presented` belongs to. Unknown tokens
    /// are ignored, so logging out twice is harmless.
    pub async fn end_session(&self, presented: &[u8], now: i64) -> Result<(), AuthError> {
        on_pool!(&self.pool, pool => {
            let mut tx = pool.begin_write(REFRESH_TOKENS_LOCK).await?;
            let family: Option<(String,)> =
                sqlx::query_as("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
                    .bind(presented)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((family_id,)) = family {
                sqlx::query(REVOKE_FAMILY)
                    .bind(now)
                    .bind(&family_id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Ends every session of `user_id`; returns how many live tokens were revoked.
    pub async fn end_all_sessions(&self, user_id: Uuid, now: i64) -> Result<u64, AuthError> {
        let result = on_pool!(&self.pool, pool => {
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(user_id.to_string())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(result)
    }

    /// Deletes refresh tokens past their expiry and failed logins older than the window.
    pub async fn purge(&self, now: i64, failures_before: i64) -> Result<(u64, u64), AuthError> {
        on_pool!(&self.pool, pool => {
            let tokens = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at <= $1")
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected();
            let failures = sqlx::query("DELETE FROM login_failures WHERE failed_at <= $1")
                .bind(failures_before)
                .execute(pool)
                .await?
                .rows_affected();
            Ok((tokens, failures))
        })
    }
}

/// A refusal that lifts when `oldest` (the oldest counted failure) leaves the window.
/// Attempts counted against one limit: all of them, those still pending, and the
/// oldest settled failure.
#[derive(FromRow)]
struct Counted {
    attempts: i64,
    pending: i64,
    oldest_settled: Option<i64>,
}

impl Counted {
    fn refusal(&self, limit: u32, now: i64) -> Option<Claim> {
        let limit = i64::from(limit);
        if self.attempts < limit {
            return None;
        }
        Some(if self.attempts - self.pending >= limit {
            Claim::Refused {
                oldest_failure: self.oldest_settled.unwrap_or(now),
            }
        } else {
            Claim::InFlight
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default reuse interval, in seconds.
    const REUSE: i64 = 10;

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
            store.rotate(b"first", next, 1, REUSE).await.unwrap(),
            Rotation::Rotated {
                user_id: user.id.clone()
            }
        );
        // A replay derives a different successor than the one stored (it is not the
        // client's retry), so even within the interval it revokes the family.
        let replay = NewRefreshToken {
            hash: b"third",
            expires_at: 100,
        };
        assert_eq!(
            store.rotate(b"first", replay, 2, REUSE).await.unwrap(),
            Rotation::Reused
        );
        // The successor was revoked with its family.
        let after = NewRefreshToken {
            hash: b"fourth",
            expires_at: 100,
        };
        assert_eq!(
            store.rotate(b"second", after, 3, REUSE).await.unwrap(),
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
            store.rotate(b"old", next(), 10, REUSE).await.unwrap(),
            Rotation::Expired
        );
        assert_eq!(
            store.rotate(b"nope", next(), 10, REUSE).await.unwrap(),
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

    /// A user with one session whose first token (`b"first"`, expiring at 100) was
    /// rotated at `rotated_at` into `b"second"`.
    async fn rotated_session(store: &Store, rotated_at: i64) -> String {
        let email = Email::parse("r@example.com").unwrap();
        let user = store.insert_user(&email, "hash", 0).await.unwrap();
        let token = |hash| NewRefreshToken {
            hash,
            expires_at: 100,
        };
        store
            .start_session(user.user_id().unwrap(), token(b"first"), 0)
            .await
            .unwrap();
        let rotated = store
            .rotate(b"first", token(b"second"), rotated_at, REUSE)
            .await
            .unwrap();
        assert!(matches!(rotated, Rotation::Rotated { .. }));
        user.id
    }

    fn successor(hash: &[u8]) -> NewRefreshToken<'_> {
        NewRefreshToken {
            hash,
            expires_at: 100,
        }
    }

    #[tokio::test]
    async fn a_retry_within_the_interval_gets_the_same_live_successor() {
        let store = store().await;
        let user_id = rotated_session(&store, 10).await;
        for now in [10, 15, 10 + REUSE] {
            assert_eq!(
                store
                    .rotate(b"first", successor(b"second"), now, REUSE)
                    .await
                    .unwrap(),
                Rotation::Retried {
                    user_id: user_id.clone()
                },
                "at {now}"
            );
        }
        // Nothing was revoked: the successor rotates as usual.
        assert!(matches!(
            store
                .rotate(b"second", successor(b"third"), 21, REUSE)
                .await
                .unwrap(),
            Rotation::Rotated { .. }
        ));
    }

    #[tokio::test]
    async fn a_retry_after_the_interval_is_reuse() {
        let store = store().await;
        rotated_session(&store, 10).await;
        let late = store
            .rotate(b"first", successor(b"second"), 11 + REUSE, REUSE)
            .await
            .unwrap();
        assert_eq!(late, Rotation::Reused);
        let after = store
            .rotate(b"second", successor(b"third"), 12 + REUSE, REUSE)
            .await
            .unwrap();
        assert_eq!(after, Rotation::Revoked, "the family was not revoked");
    }

    #[tokio::test]
    async fn a_retry_after_the_successor_was_used_is_reuse() {
        let store = store().await;
        rotated_session(&store, 10).await;
        store
            .rotate(b"second", successor(b"third"), 11, REUSE)
            .await
            .unwrap();
        let retry = store
            .rotate(b"first", successor(b"second"), 12, REUSE)
            .await
            .unwrap();
        assert_eq!(retry, Rotation::Reused);
        let newest = store
            .rotate(b"third", successor(b"fourth"), 13, REUSE)
            .await
            .unwrap();
        assert_eq!(newest, Rotation::Revoked, "the family was not revoked");
    }

    #[tokio::test]
    async fn an_interval_of_zero_treats_every_second_use_as_reuse() {
        let store = store().await;
        rotated_session(&store, 10).await;
        let retry = store
            .rotate(b"first", successor(b"second"), 10, 0)
            .await
            .unwrap();
        assert_eq!(retry, Rotation::Reused);
    }

    fn limits(per_client: u32, per_email: u32) -> FailureLimits {
        FailureLimits {
            per_client,
            per_email,
            since: 0,
        }
    }

    async fn claims(store: &Store, client: &ClientAddress, limits: FailureLimits) -> Vec<Claim> {
        let email = Email::parse("t@example.com").unwrap();
        let mut outcomes = Vec::new();
        for now in 1..=4 {
            let claim = store
                .claim_login_attempt(&email, client, limits, now)
                .await
                .unwrap();
            // Each claimed attempt turns out a wrong password.
            if let Claim::Claimed { attempt } = claim {
                store.settle_failure(attempt).await.unwrap();
            }
            outcomes.push(normalised(claim));
        }
        outcomes
    }

    /// Claims compared by kind: attempt ids are the database's business.
    fn normalised(claim: Claim) -> Claim {
        match claim {
            Claim::Claimed { .. } => CLAIMED,
            other => other,
        }
    }

    const CLAIMED: Claim = Claim::Claimed { attempt: 0 };

    #[tokio::test]
    async fn attempts_still_being_checked_refuse_for_a_moment_not_for_the_window() {
        let store = store().await;
        let email = Email::parse("t@example.com").unwrap();
        let here = ClientAddress::from_call(Some("192.0.2.1"), None);
        let claim = |now| store.claim_login_attempt(&email, &here, limits(2, 50), now);
        let first = claim(1).await.unwrap();
        claim(2).await.unwrap();
        // Two attempts in flight fill the limit: the third is told to retry shortly.
        assert_eq!(claim(3).await.unwrap(), Claim::InFlight);
        // Once one of them turns out a wrong password, it still counts, in flight or not.
        let Claim::Claimed { attempt } = first else {
            panic!("{first:?}");
        };
        store.settle_failure(attempt).await.unwrap();
        assert_eq!(claim(4).await.unwrap(), Claim::InFlight);
        // Only settled failures make a refusal that waits out the window.
        store.clear_failures(&email, &here).await.unwrap();
        let a = claim(5).await.unwrap();
        let b = claim(6).await.unwrap();
        for claimed in [a, b] {
            let Claim::Claimed { attempt } = claimed else {
                panic!("{claimed:?}");
            };
            store.settle_failure(attempt).await.unwrap();
        }
        assert_eq!(
            claim(7).await.unwrap(),
            Claim::Refused { oldest_failure: 5 }
        );
    }

    #[tokio::test]
    async fn attempts_are_claimed_up_to_the_limit_per_client_address() {
        let store = store().await;
        let here = ClientAddress::from_call(Some("192.0.2.1"), None);
        let there = ClientAddress::from_call(Some("192.0.2.2"), None);
        let refused = Claim::Refused { oldest_failure: 1 };
        assert_eq!(
            claims(&store, &here, limits(2, 50)).await,
            [CLAIMED, CLAIMED, refused.clone(), refused]
        );
        // Another address has a count of its own.
        assert_eq!(claims(&store, &there, limits(2, 50)).await[0], CLAIMED);
        // A success clears its own address only.
        let email = Email::parse("t@example.com").unwrap();
        store.clear_failures(&email, &there).await.unwrap();
        assert_eq!(claims(&store, &there, limits(2, 50)).await[0], CLAIMED);
        assert_ne!(claims(&store, &here, limits(2, 50)).await[0], CLAIMED);
    }

    #[tokio::test]
    async fn the_per_email_ceiling_refuses_even_a_fresh_address() {
        let store = store().await;
        let first = ClientAddress::from_call(Some("192.0.2.1"), None);
        let second = ClientAddress::from_call(Some("192.0.2.2"), None);
        let fresh = ClientAddress::from_call(Some("192.0.2.3"), None);
        claims(&store, &first, limits(2, 4)).await;
        claims(&store, &second, limits(2, 4)).await;
        assert_eq!(
            claims(&store, &fresh, limits(2, 4)).await[0],
            Claim::Refused { oldest_failure: 1 }
        );
    }
}
