//! Password hashing off the async runtime.
//!
//! bcrypt at cost 12 burns a few hundred milliseconds of CPU. Running it on a tokio
//! worker would stall every other call on that worker, so each hash runs on the
//! blocking pool, and a semaphore sized to the cores keeps a login burst from
//! queueing hundreds of threads that all fight for the same CPUs.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::credentials::Password;
use crate::error::AuthError;

#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    permits: Arc<Semaphore>,
    /// A real hash at the configured cost, verified against when the email is unknown,
    /// so a miss costs the same time as a wrong password (no enumeration by timing).
    decoy_hash: Arc<str>,
}

impl PasswordHasher {
    pub async fn new(cost: u32) -> Result<Self, AuthError> {
        let parallelism = std::thread::available_parallelism().map_or(2, usize::from);
        let decoy = run_blocking(move || bcrypt::hash("strongbox-decoy-password", cost)).await?;
        Ok(Self {
            cost,
            permits: Arc::new(Semaphore::new(parallelism)),
            decoy_hash: decoy.into(),
        })
    }

    pub async fn hash(&self, password: &Password) -> Result<String, AuthError> {
        let _permit = self.permits.acquire().await.map_err(closed)?;
        let password = password.clone();
        let cost = self.cost;
        run_blocking(move || bcrypt::hash(password.expose(), cost)).await
    }

    /// Checks `password` against `hash`, or against the decoy when there is no user.
    pub async fn verify(&self, password: &Password, hash: Option<&str>) -> Result<bool, AuthError> {
        let _permit = self.permits.acquire().await.map_err(closed)?;
        let known = hash.is_some();
        let hash: Arc<str> = hash.map_or_else(|| self.decoy_hash.clone(), Arc::from);
        let password = password.clone();
        let matches = run_blocking(move || bcrypt::verify(password.expose(), &hash)).await?;
        Ok(known && matches)
    }
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, bcrypt::BcryptError> + Send + 'static,
) -> Result<T, AuthError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| AuthError::Internal(format!("password hashing task failed: {err}")))?
        .map_err(|err| AuthError::Internal(format!("bcrypt: {err}")))
}

fn closed(_: tokio::sync::AcquireError) -> AuthError {
    AuthError::Internal("password hasher is shut down".into())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[tokio::test]
    async fn unknown_users_are_checked_against_a_decoy_of_the_same_cost() {
        let hasher = PasswordHasher::new(5).await.unwrap();
        // The decoy is a real bcrypt hash at the configured cost, so a miss does the
        // same work as a wrong password.
        let decoy = bcrypt::HashParts::from_str(&hasher.decoy_hash).unwrap();
        assert_eq!(decoy.get_cost(), 5);
        let password = Password::parse("strongbox-decoy-password".into()).unwrap();
        assert!(
            !hasher.verify(&password, None).await.unwrap(),
            "the decoy must never log anyone in"
        );
    }

    #[tokio::test]
    async fn hashes_verify_only_their_password() {
        let hasher = PasswordHasher::new(4).await.unwrap();
        let right = Password::parse("right password".into()).unwrap();
        let wrong = Password::parse("wrong password".into()).unwrap();
        let hash = hasher.hash(&right).await.unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert!(hasher.verify(&right, Some(&hash)).await.unwrap());
        assert!(!hasher.verify(&wrong, Some(&hash)).await.unwrap());
    }
}
