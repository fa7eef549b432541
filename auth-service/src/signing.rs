//! The access-token signing key and the tokens it signs.
//!
//! Ed25519 by default: the private key lives only here, in a PKCS#8 PEM file that is
//! generated (mode 0600) on first start and reused after; verifiers get the public half
//! from `GetPublicKeys`, named by a `kid` derived from the key itself. `JWT_SECRET`
//! switches to HS256 for deployments that share one secret.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};
use strongbox_common::jwt::{self, Claims, Verifier};
use strongbox_common::secrets;
use strongbox_proto::auth::v1::PublicKey;
use uuid::Uuid;

use crate::error::AuthError;

/// HS256 secrets shorter than the hash output are guessable offline from any token.
const MIN_SECRET_BYTES: usize = 32;

enum Key {
    Ed25519 {
        kid: String,
        encoding: EncodingKey,
        public_raw: [u8; 32],
        public_pem: String,
    },
    Hs256 {
        encoding: EncodingKey,
        secret: Vec<u8>,
    },
}

/// Signs access tokens.
pub struct TokenSigner {
    key: Key,
    ttl: Duration,
}

impl TokenSigner {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &str, ttl: Duration) -> Result<Self, AuthError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthError::Internal(format!(
                "JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes; generate one with `openssl rand -hex 32`"
            )));
        }
        let secret = secret.as_bytes().to_vec();
        Ok(Self {
            key: Key::Hs256 {
                encoding: EncodingKey::from_secret(&secret),
                secret,
            },
            ttl,
        })
    }

    /// Ed25519 with the key at `path`, generating it there if it does not exist yet.
    pub fn ed25519_from_file(path: &Path, ttl: Duration) -> Result<Self, AuthError> {
        let pem = read_or_generate_key(path)?;
        let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|err| {
            AuthError::Internal(format!(
                "{} is not a PKCS#8 Ed25519 key: {err}",
                path.display()
            ))
        })?;
        let verifying = signing.verifying_key();
        let public_raw = verifying.to_bytes();
        let public_pem = verifying
            .to_public_key_pem(LineEnding::LF)
            .map_err(|err| AuthError::Internal(format!("encoding the public key: {err}")))?;
        let encoding = EncodingKey::from_ed_pem(pem.as_bytes())
            .map_err(|err| AuthError::Internal(format!("loading the signing key: {err}")))?;
        Ok(Self {
            key: Key::Ed25519 {
                kid: key_id(&public_raw),
                encoding,
                public_raw,
                public_pem,
            },
            ttl,
        })
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
        let (header, key) = match &self.key {
            Key::Ed25519 { kid, encoding, .. } => {
                let mut header = Header::new(Algorithm::EdDSA);
                header.kid = Some(kid.clone());
                (header, encoding)
            }
            Key::Hs256 { encoding, .. } => (Header::new(Algorithm::HS256), encoding),
        };
        jsonwebtoken::encode(&header, &claims, key)
            .map_err(|err| AuthError::Internal(format!("signing an access token: {err}")))
    }

    /// A verifier for the tokens this signer makes.
    pub fn verifier(&self) -> Verifier {
        match &self.key {
            Key::Ed25519 {
                kid, public_raw, ..
            } => Verifier::ed25519([(kid.clone(), *public_raw)]),
            Key::Hs256 { secret, .. } => Verifier::shared_secret(secret),
        }
    }

    /// What verifiers need; nothing in HS256 mode, whose secret is not public.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        match &self.key {
            Key::Ed25519 {
                kid,
                public_raw,
                public_pem,
                ..
            } => vec![PublicKey {
                kid: kid.clone(),
                alg: jwt::EDDSA.to_owned(),
                public_key: public_raw.to_vec().into(),
                public_key_pem: public_pem.clone(),
            }],
            Key::Hs256 { .. } => Vec::new(),
        }
    }
}

/// The kid of a public key: the first 16 hex digits of its SHA-256, stable across restarts.
fn key_id(public_raw: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public_raw)[..8])
}

fn read_or_generate_key(path: &Path) -> Result<String, AuthError> {
    secrets::read_or_create(path, || {
        let seed = secrets::random_bytes::<32>()?;
        let pem = ed25519_dalek::SigningKey::from_bytes(&seed)
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(std::io::Error::other)?;
        Ok(pem.to_string())
    })
    .map_err(|err| AuthError::Internal(format!("signing key {}: {err}", path.display())))
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

    #[test]
    fn short_shared_secrets_are_refused() {
        assert!(TokenSigner::hs256("too-short", Duration::from_secs(60)).is_err());
        assert!(TokenSigner::hs256(&"s".repeat(32), Duration::from_secs(60)).is_ok());
    }
}
