//! Signed download links for the local backend, served by the gateway's `/files/` route.
//!
//! A link is `<PUBLIC_BASE_URL>/files/<key>?expires=<unix seconds>&signature=<hex>`,
//! where the signature is HMAC-SHA256 over the key and the expiry. Like an S3
//! presigned URL, the link is itself the credential, so it is checked in constant time
//! and only until it expires.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use url::Url;

use crate::error::StorageError;
use crate::names::ObjectKey;

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct LinkSigner {
    secret: Vec<u8>,
    base_url: Url,
}

impl LinkSigner {
    pub fn new(secret: &[u8], base_url: &str) -> Result<Self, StorageError> {
        let base_url = Url::parse(base_url).map_err(|err| {
            StorageError::Internal(format!("PUBLIC_BASE_URL {base_url:?} is not a URL: {err}"))
        })?;
        Ok(Self {
            secret: secret.to_vec(),
            base_url,
        })
    }

    /// A link to `key` valid until `expires` (unix seconds).
    pub fn link(&self, key: &ObjectKey, expires: u64) -> Url {
        let mut url = self.base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .push("files")
                .extend(key.as_str().split('/'));
        }
        url.query_pairs_mut()
            .append_pair("expires", &expires.to_string())
            .append_pair("signature", &self.signature(key.as_str(), expires));
        url
    }

    /// Checks a link's parameters; on success the link may read `key`.
    pub fn verify(
        &self,
        key: &str,
        expires: u64,
        signature: &str,
        now: u64,
    ) -> Result<(), StorageError> {
        let refused = || {
            StorageError::PermissionDenied(
                "this download link is invalid or has expired; ask for a new one",
            )
        };
        if expires < now {
            return Err(refused());
        }
        let signature = hex::decode(signature).map_err(|_| refused())?;
        self.mac(key, expires)
            .verify_slice(&signature)
            .map_err(|_| refused())
    }

    fn signature(&self, key: &str, expires: u64) -> String {
        hex::encode(self.mac(key, expires).finalize().into_bytes())
    }

    fn mac(&self, key: &str, expires: u64) -> HmacSha256 {
        // HMAC accepts keys of any length.
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::from_stored(
            "5f0c6b8e-3a63-4f57-9b55-2b6f2a9d8d11/1700000000-0011223344556677-a b.txt".into(),
        )
    }

    #[test]
    fn a_link_verifies_until_it_expires_and_not_for_another_key() {
        let signer = LinkSigner::new(b"secret", "http://localhost:8000/").unwrap();
        let url = signer.link(&key(), 2000);
        assert!(
            url.as_str()
                .starts_with("http://localhost:8000/files/5f0c6b8e-")
        );
        let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        let signature = &query["signature"];
        assert!(signer.verify(key().as_str(), 2000, signature, 1999).is_ok());
        assert!(
            signer
                .verify(key().as_str(), 2000, signature, 2001)
                .is_err()
        );
        assert!(
            signer
                .verify(key().as_str(), 2001, signature, 1999)
                .is_err()
        );
        assert!(
            signer
                .verify("someone/else", 2000, signature, 1999)
                .is_err()
        );
        let other = LinkSigner::new(b"other secret", "http://localhost:8000").unwrap();
        assert!(other.verify(key().as_str(), 2000, signature, 1999).is_err());
    }
}
