//! Refresh tokens: 256 random bits at login, handed to the client once and stored only
//! as their SHA-256, so a leaked database does not leak sessions.
//!
//! A rotated token's successor is not random but derived: HMAC-SHA256 under a server key
//! (`DATA_DIR/refresh-token-key`) of the presented token. A client whose Refresh answer
//! was lost retries with the same token; within `REFRESH_REUSE_INTERVAL_SECONDS` the
//! service derives the successor again, checks it against the stored hash and hands it
//! back, instead of revoking the session as if the token had been stolen (only hashes are
//! stored, so the successor could not be looked up).
//!
//! Why a keyed MAC rather than a plain hash of the spent token: a spent token is not a
//! secret any more — it sits in old logs, proxies, a stolen backup of the client. With
//! SHA-256 alone, anyone holding one could compute its successor offline and then every
//! later token of the session. With HMAC, only the holder of the server key can, so a
//! spent token is worth exactly as much as before: presenting it is detected as reuse.
//! Changing the key only means that retries of rotations made before the change are
//! treated as reuse; sessions themselves are unaffected.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use strongbox_common::config::Secret;
use strongbox_common::secrets;

use crate::error::AuthError;

const TOKEN_BYTES: usize = 32;
/// Unpadded base64url of 32 bytes.
const ENCODED_LEN: usize = 43;
/// The successor key: as long as SHA-256's output, the strength HMAC-SHA256 can use.
const KEY_BYTES: usize = 32;

/// A refresh token as the client holds it.
pub struct RefreshToken(String);

impl RefreshToken {
    pub fn generate() -> Result<Self, AuthError> {
        let bytes = secrets::random_bytes::<TOKEN_BYTES>().map_err(|err| {
            AuthError::Internal(format!("no randomness for a refresh token: {err}"))
        })?;
        Ok(Self::encode(&bytes))
    }

    fn encode(bytes: &[u8; TOKEN_BYTES]) -> Self {
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Accepts only strings shaped like the tokens this service issues.
    pub fn parse(raw: &str) -> Result<Self, AuthError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(AuthError::InvalidArgument(
                "refresh_token is required".into(),
            ));
        }
        let decodes = raw.len() == ENCODED_LEN
            && URL_SAFE_NO_PAD
                .decode(raw)
                .is_ok_and(|bytes| bytes.len() == TOKEN_BYTES);
        if !decodes {
            return Err(AuthError::InvalidArgument(
                "refresh_token is malformed; pass the refresh_token returned by Login or Refresh"
                    .into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.0.as_bytes()).to_vec()
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The server key that derives every rotated token's successor. Its `Debug` never
/// shows the key.
pub struct SuccessorKey([u8; KEY_BYTES]);

impl SuccessorKey {
    /// Reads the key at `path` (hex), generating 32 random bytes on first start.
    pub fn read_or_create(path: &Path) -> Result<Self, AuthError> {
        let text = secrets::read_or_create(path, || {
            Ok(hex::encode(secrets::random_bytes::<KEY_BYTES>()?))
        })
        // Its errors name the file (and say what to do with a short one).
        .map_err(|err| AuthError::Internal(format!("refresh-token key: {err}")))?;
        Self::parse(&text).map_err(|why| {
            AuthError::Internal(format!(
                "refresh-token key {}: {why}; delete the file to generate a new key",
                path.display()
            ))
        })
    }

    /// The key given in REFRESH_TOKEN_KEY.
    pub fn from_setting(setting: &Secret) -> Result<Self, AuthError> {
        Self::parse(setting.expose()).map_err(|why| {
            AuthError::Internal(format!(
                "REFRESH_TOKEN_KEY: {why}; make one with `openssl rand -hex 32`"
            ))
        })
    }

    /// A key from its hex text; at least 32 bytes, of which the first 32 are used.
    fn parse(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim()).map_err(|err| format!("not hex ({err})"))?;
        let Some(key) = bytes.first_chunk::<KEY_BYTES>() else {
            return Err(format!(
                "{} bytes is too short, it must hold at least {KEY_BYTES}",
                bytes.len()
            ));
        };
        Ok(Self(*key))
    }

    /// The successor of `presented`: the same every time, computable only with the key.
    pub fn successor_of(&self, presented: &RefreshToken) -> RefreshToken {
        // HMAC accepts a key of any length, so this cannot fail for ours.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(presented.0.as_bytes());
        RefreshToken::encode(&mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for SuccessorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SuccessorKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = RefreshToken::generate().unwrap();
        let b = RefreshToken::generate().unwrap();
        assert_ne!(a.hash(), b.hash());
        let text = a.into_string();
        assert_eq!(text.len(), ENCODED_LEN);
        assert!(RefreshToken::parse(&text).is_ok());
    }

    #[test]
    fn malformed_tokens_are_refused() {
        assert!(RefreshToken::parse("").is_err());
        assert!(RefreshToken::parse("not-a-token").is_err());
        assert!(RefreshToken::parse(&"!".repeat(43)).is_err());
    }

    #[test]
    fn the_hash_is_sha256_of_the_token_text() {
        let token = RefreshToken::parse("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        assert_eq!(
            token.hash(),
            Sha256::digest(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").to_vec()
        );
    }

    fn key(byte: u8) -> SuccessorKey {
        SuccessorKey::parse(&hex::encode([byte; KEY_BYTES])).unwrap()
    }

    #[test]
    fn a_successor_is_a_token_the_key_derives_the_same_every_time() {
        let presented = RefreshToken::generate().unwrap();
        let successor = key(1).successor_of(&presented);
        assert_eq!(successor.hash(), key(1).successor_of(&presented).hash());
        // Shaped like any other token, so clients and `parse` cannot tell them apart.
        assert!(RefreshToken::parse(&successor.into_string()).is_ok());
    }

    #[test]
    fn without_the_key_a_spent_token_does_not_give_its_successor() {
        let presented = RefreshToken::generate().unwrap();
        let successor = key(1).successor_of(&presented).into_string();
        assert_ne!(successor, key(2).successor_of(&presented).into_string());
        // Nor is it the plain hash of the spent token, which anyone could compute.
        let unkeyed = URL_SAFE_NO_PAD.encode(Sha256::digest(presented.0.as_bytes()));
        assert_ne!(successor, unkeyed);
    }

    #[test]
    fn a_short_or_garbled_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refresh-token-key");
        std::fs::write(&path, hex::encode([7u8; 16])).unwrap();
        let err = SuccessorKey::read_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("too short"), "{err}");
        assert!(err.contains("refresh-token-key"), "{err}");
        std::fs::write(&path, "not hex at all").unwrap();
        assert!(SuccessorKey::read_or_create(&path).is_err());
    }

    #[test]
    fn a_generated_key_is_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refresh-token-key");
        let presented = RefreshToken::generate().unwrap();
        let first = SuccessorKey::read_or_create(&path).unwrap();
        let again = SuccessorKey::read_or_create(&path).unwrap();
        assert_eq!(
            first.successor_of(&presented).hash(),
            again.successor_of(&presented).hash()
        );
        assert!(!format!("{first:?}").contains(&hex::encode(first.0)));
    }
}
