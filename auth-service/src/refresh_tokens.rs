//! Refresh tokens: 256 random bits, handed to the client once and stored only as their
//! SHA-256, so a leaked database does not leak sessions.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use strongbox_common::secrets;

use crate::error::AuthError;

const TOKEN_BYTES: usize = 32;
/// Unpadded base64url of 32 bytes.
const ENCODED_LEN: usize = 43;

/// A refresh token as the client holds it.
pub struct RefreshToken(String);

impl RefreshToken {
    pub fn generate() -> Result<Self, AuthError> {
        let bytes = secrets::random_bytes::<TOKEN_BYTES>().map_err(|err| {
            AuthError::Internal(format!("no randomness for a refresh token: {err}"))
        })?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
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
}
