//! What an upload may be: its content type and its size, checked before a byte is
//! stored and again while bytes stream in.

use crate::error::StorageError;

pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// A syntactically valid MIME type, lower-cased (`type/subtype`, parameters dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType(String);

impl ContentType {
    pub fn parse(raw: &str) -> Result<Self, StorageError> {
        let essence = raw
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence.is_empty() {
            return Ok(Self(DEFAULT_CONTENT_TYPE.to_owned()));
        }
        let is_token = |part: &str| {
            !part.is_empty()
                && part.len() <= 127
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        match essence.split_once('/') {
            Some((kind, subtype)) if is_token(kind) && is_token(subtype) => Ok(Self(essence)),
            _ => Err(StorageError::InvalidArgument(format!(
                "content_type {raw:?} is not a MIME type like \"image/png\""
            ))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The limits every upload is held to.
#[derive(Debug, Clone)]
pub struct UploadPolicy {
    pub max_bytes: u64,
    /// Lower-case patterns: `type/subtype` or `type/*`. Empty allows any type.
    allowed_types: Vec<String>,
}

impl UploadPolicy {
    pub fn new(max_bytes: u64, allowed_types: &[String]) -> Self {
        let allowed_types = allowed_types
            .iter()
            .map(|pattern| pattern.trim().to_ascii_lowercase())
            .filter(|pattern| !pattern.is_empty())
            .collect();
        Self {
            max_bytes,
            allowed_types,
        }
    }

    pub fn check_content_type(&self, content_type: &ContentType) -> Result<(), StorageError> {
        let actual = content_type.as_str();
        let allowed = self.allowed_types.is_empty()
            || self
                .allowed_types
                .iter()
                .any(|pattern| match pattern.strip_suffix("/*") {
                    Some(kind) => actual.split('/').next() == Some(kind),
                    None => pattern == actual,
                });
        if allowed {
            Ok(())
        } else {
            Err(StorageError::InvalidArgument(format!(
                "content type {actual} is not accepted here; allowed: {}",
                self.allowed_types.join(", ")
            )))
        }
    }

    /// Refuses a declared size over the limit before any byte is sent.
    pub fn check_declared_size(&self, size: Option<u64>) -> Result<(), StorageError> {
        match size {
            Some(size) if size > self.max_bytes => Err(StorageError::TooLarge {
                limit: self.max_bytes,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_normalised_and_validated() {
        assert_eq!(
            ContentType::parse("").unwrap().as_str(),
            DEFAULT_CONTENT_TYPE
        );
        assert_eq!(
            ContentType::parse("Text/Plain; charset=UTF-8")
                .unwrap()
                .as_str(),
            "text/plain"
        );
        for bad in ["text", "/plain", "text/", "te xt/plain", "text/plain/x"] {
            assert!(ContentType::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn allowed_types_accept_exact_matches_and_wildcards() {
        let policy = UploadPolicy::new(10, &["image/*".into(), " application/pdf".into()]);
        let check = |raw: &str| policy.check_content_type(&ContentType::parse(raw).unwrap());
        assert!(check("image/png").is_ok());
        assert!(check("application/pdf").is_ok());
        assert!(check("text/plain").is_err());
        assert!(check("").is_err());
        let any = UploadPolicy::new(10, &[String::new()]);
        assert!(
            any.check_content_type(&ContentType::parse("text/plain").unwrap())
                .is_ok()
        );
    }

    #[test]
    fn declared_sizes_over_the_limit_are_refused_up_front() {
        let policy = UploadPolicy::new(10, &[]);
        assert!(policy.check_declared_size(Some(10)).is_ok());
        assert!(matches!(
            policy.check_declared_size(Some(11)),
            Err(StorageError::TooLarge { limit: 10 })
        ));
        assert!(policy.check_declared_size(None).is_ok());
    }
}
