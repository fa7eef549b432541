//! The access-token signer and the tokens it signs.
//!
//! Ed25519 by default: the private keys live only here (see [`crate::signing_keys`] for
//! the files and the rotation rules); verifiers get the public halves from
//! `GetPublicKeys`, named by a `kid` derived from each key. The set is re-read every
//! [`RELOAD_INTERVAL`] by a task that ends with the signer, so a key added by
//! `auth-service rotate-key` is published without a restart, and which key signs is
//! decided per token from the activation times. `JWT_SECRET` switches to HS256 for
//! deployments that share one secret.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use strongbox_common::config::Secret;
use strongbox_common::jwt::{self, Claims, Verifier};
use strongbox_proto::auth::v1::PublicKey;
use uuid::Uuid;

use crate::error::AuthError;
use crate::signing_keys::{KeyFiles, KeySet, RELOAD_INTERVAL, retired_key_lifetime};

enum Key {
    Ed25519(Arc<Ed25519Keys>),
    Hs256 {
        encoding: EncodingKey,
        verifier: Verifier,
    },
}

/// The Ed25519 key set as last read from disk, and this service's own verifier, kept
/// in step with it.
struct Ed25519Keys {
    /// Where the set is reloaded from; `None` for keys given in the environment.
    files: Option<KeyFiles>,
    set: RwLock<Arc<KeySet>>,
    verifier: Verifier,
    retired_lifetime: Duration,
}

/// Signs access tokens.
pub struct TokenSigner {
    key: Key,
    ttl: Duration,
}

impl TokenSigner {
    /// HS256 with a shared secret (at least `MIN_SECRET_BYTES`, by its type).
    pub fn hs256(secret: &Secret, ttl: Duration) -> Result<Self, AuthError> {
        Ok(Self {
            key: Key::Hs256 {
                encoding: EncodingKey::from_secret(secret.as_bytes()),
                verifier: Verifier::shared_secret(secret.as_bytes()),
            },
            ttl,
        })
    }

    /// Ed25519 with the key at `path` (generated there if it does not exist yet) and the
    /// keys rotated in beside it. Inside a tokio runtime, the set is reloaded
    /// periodically for as long as the signer lives.
    pub fn ed25519_from_file(path: &Path, ttl: Duration) -> Result<Self, AuthError> {
        let files = KeyFiles::beside(path);
        let set = files.load()?;
        Ok(Self::ed25519(Some(files), set, ttl))
    }

    /// Ed25519 with the keys given in JWT_PRIVATE_KEY and JWT_PUBLISHED_KEYS (see
    /// [`KeySet::from_environment`]); they change only with the environment, so nothing
    /// is reloaded.
    pub fn ed25519_from_environment(
        signing: &Secret,
        published: Option<&Secret>,
        ttl: Duration,
    ) -> Result<Self, AuthError> {
        let set = KeySet::from_environment(signing.expose(), published.map(Secret::expose))?;
        Ok(Self::ed25519(None, set, ttl))
    }

    fn ed25519(files: Option<KeyFiles>, set: KeySet, ttl: Duration) -> Self {
        let retired_lifetime = retired_key_lifetime(ttl);
        let verifier = Verifier::ed25519(verification_keys(&set, retired_lifetime));
        let keys = Arc::new(Ed25519Keys {
            files,
            set: RwLock::new(Arc::new(set)),
            verifier,
            retired_lifetime,
        });
        // Keys from the environment leave the published set as time passes too.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(reload_periodically(Arc::downgrade(&keys)));
        }
        Self {
            key: Key::Ed25519(keys),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Signs a fresh access token for `user_id`.
    pub fn sign(&self, user_id: Uuid) -> Result<String, AuthError> {
        let now = unix_now();
        let claims = Claims {
            sub: user_id.to_string(),
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs(),
            jti: Uuid::new_v4().to_string(),
            iss: jwt::ISSUER.to_owned(),
            aud: jwt::AUDIENCE.to_owned(),
        };
        let signed = match &self.key {
            Key::Ed25519(keys) => {
                let set = keys.current();
                let key = set.signing(now);
                let mut header = Header::new(Algorithm::EdDSA);
                header.kid = Some(key.kid.clone());
                jsonwebtoken::encode(&header, &claims, &key.encoding)
            }
            Key::Hs256 { encoding, .. } => {
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, encoding)
            }
        };
        signed.map_err(|err| AuthError::Internal(format!("signing an access token: {err}")))
    }

    /// A verifier for the tokens this signer makes; it follows key rotations.
    pub fn verifier(&self) -> Verifier {
        match &self.key {
            Key::Ed25519(keys) => keys.verifier.clone(),
            Key::Hs256 { verifier, .. } => verifier.clone(),
        }
    }

    /// What verifiers need now: every pending, signing or recently retired key;
    /// nothing in HS256 mode, whose secret is not public.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        let Key::Ed25519(keys) = &self.key else {
            return Vec::new();
        };
        let set = keys.current();
        set.published(unix_now(), keys.retired_lifetime)
            .map(|key| PublicKey {
                kid: key.kid.clone(),
                alg: jwt::EDDSA.to_owned(),
                public_key: key.public_raw.to_vec().into(),
                public_key_pem: key.public_pem.clone(),
            })
            .collect()
    }
}

impl Ed25519Keys {
    fn current(&self) -> Arc<KeySet> {
        // A panic while holding the lock cannot leave a half-swapped Arc behind.
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the key files (on the blocking pool: file I/O) and, if they changed,
    /// swaps the set and updates the verifier. A bad file is logged and the known keys
    /// keep working.
    async fn reload(&self) {
        if let Some(files) = self.files.clone() {
            self.reload_files(files).await;
        }
        // Every time: keys also leave the published set as time passes.
        let keys = verification_keys(&self.current(), self.retired_lifetime);
        self.verifier.replace_ed25519_keys(keys).await;
    }

    async fn reload_files(&self, files: KeyFiles) {
        let loaded = match tokio::task::spawn_blocking(move || files.reload()).await {
            Ok(Ok(set)) => set,
            Ok(Err(err)) => {
                tracing::warn!(%err, "reloading the signing keys failed; keeping the known ones");
                return;
            }
            Err(err) => {
                tracing::warn!(%err, "reloading the signing keys panicked");
                return;
            }
        };
        let changed = loaded.kids() != self.current().kids();
        if changed {
            tracing::info!(kids = ?loaded.kids(), "signing keys changed");
            *self.set.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
        }
    }
}

/// Reloads the keys every [`RELOAD_INTERVAL`] until the signer is dropped.
async fn reload_periodically(keys: Weak<Ed25519Keys>) {
    let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(keys) = keys.upgrade() else { return };
        keys.reload().await;
    }
}

/// The published keys as `(kid, raw public key)`, for a verifier.
fn verification_keys(set: &KeySet, retired_lifetime: Duration) -> Vec<(String, [u8; 32])> {
    set.published(unix_now(), retired_lifetime)
        .map(|key| (key.kid.clone(), key.public_raw))
        .collect()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_generated_key_is_reused_and_verifies_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/jwt.pem");
        let first = TokenSigner::ed25519_from_file(&path, Duration::from_secs(60)).unwrap();
        let second = TokenSigner::ed25519_from_file(&path, Duration::from_secs(60)).unwrap();
        assert_eq!(first.public_keys(), second.public_keys());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let user = Uuid::new_v4();
        let token = first.sign(user).unwrap();
        assert_eq!(
            second.verifier().verify(&token).await.unwrap().user_id,
            user
        );
    }

    #[tokio::test]
    async fn a_shared_secret_signs_hs256_and_publishes_nothing() {
        let secret: Secret = "s".repeat(32).parse().unwrap();
        let signer = TokenSigner::hs256(&secret, Duration::from_secs(60)).unwrap();
        let user = Uuid::new_v4();
        let token = signer.sign(user).unwrap();
        assert_eq!(
            signer.verifier().verify(&token).await.unwrap().user_id,
            user
        );
        assert!(signer.public_keys().is_empty());
    }
}
