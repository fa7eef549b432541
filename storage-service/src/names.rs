//! Object keys and what goes into them, parsed at the edge.
//!
//! A key is `<user id>/<unix seconds>-<16 random hex>-<safe name>`: the user id
//! namespaces it, the timestamp sorts it, the random part keeps two same-name uploads in
//! the same second apart, and the safe name keeps it readable. The original filename is
//! stored beside the object, never trusted inside the key.

use std::fmt;

use object_store::path::Path;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
use uuid::Uuid;

use crate::error::StorageError;

/// Longest safe name, in bytes. The name in a key is a readable hint (the original is
/// kept in full beside it), so it is kept short: the whole key stays around 100 bytes,
/// well inside file-name limits of local disks and of S3 servers that map keys to
/// file names (s3s-fs, which the tests run, base64-encodes the key into one).
pub const MAX_SAFE_NAME_BYTES: usize = 40;
/// Longest extension kept intact when a name is shortened.
const MAX_EXTENSION_BYTES: usize = 10;
const FALLBACK_NAME: &str = "file";

/// Characters a safe name may hold besides ASCII letters and digits.
const SAFE_PUNCTUATION: &str = ".-_()+,";

/// A filename reduced to ASCII that is safe, unescaped, in an object key, a URL and a
/// local file name: letters, digits and `.-_()+,`. Accents are dropped (`März` → `Marz`),
/// everything else becomes `_`. ASCII matters: `object_store` percent-encodes other
/// bytes, which would make the stored key differ from ours and triple its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeName(String);

impl SafeName {
    pub fn from_original(original: &str) -> Self {
        let mapped: String = original
            .nfkd()
            .filter(|&c| !c.is_control() && !is_combining_mark(c))
            .map(|c| {
                if c.is_ascii_alphanumeric() || SAFE_PUNCTUATION.contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        // No hidden files, no `.`/`..`, no trailing dots (Windows drops them).
        let trimmed = mapped
            .trim_start_matches(['.', '_'])
            .trim_end_matches(['.', '_']);
        let name = if trimmed.chars().any(|c| c.is_ascii_alphanumeric()) {
            trimmed.to_owned()
        } else {
            FALLBACK_NAME.to_owned()
        };
        Self(shorten(name, original))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Cuts `name` to [`MAX_SAFE_NAME_BYTES`] on a character boundary, keeping a short
/// extension from the original.
fn shorten(name: String, original: &str) -> String {
    if name.len() <= MAX_SAFE_NAME_BYTES {
        return name;
    }
    let extension = name.rsplit_once('.').map(|(_, ext)| ext).filter(|ext| {
        !ext.is_empty() && ext.len() <= MAX_EXTENSION_BYTES && original.contains(ext)
    });
    let suffix = extension.map(|ext| format!(".{ext}")).unwrap_or_default();
    let mut stem_end = MAX_SAFE_NAME_BYTES - suffix.len();
    while !name.is_char_boundary(stem_end) {
        stem_end -= 1;
    }
    format!("{}{suffix}", &name[..stem_end])
}

/// A key inside one user's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// A fresh key for a new file of `user`.
    pub fn generate(user: Uuid, name: &SafeName, unix_seconds: u64) -> Result<Self, StorageError> {
        let random = strongbox_common::secrets::random_bytes::<8>()
            .map_err(|err| StorageError::Internal(format!("no randomness for a key: {err}")))?;
        Ok(Self(format!(
            "{user}/{unix_seconds}-{}-{}",
            hex::encode(random),
            name.as_str()
        )))
    }

    /// Accepts `raw` only if it is a well-formed key in `user`'s namespace. Anything
    /// else is "not found", so probing another user's keys reveals nothing.
    pub fn parse_for(user: Uuid, raw: &str) -> Result<Self, StorageError> {
        let Some((owner, rest)) = raw.split_once('/') else {
            return Err(StorageError::NotFound("no file with this key"));
        };
        let owned = Uuid::parse_str(owner).is_ok_and(|owner| owner == user);
        let well_formed = !rest.is_empty()
            && rest.len() <= MAX_SAFE_NAME_BYTES + 64
            && !rest.starts_with('.')
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || SAFE_PUNCTUATION.contains(c));
        if owned && well_formed {
            Ok(Self(raw.to_owned()))
        } else {
            Err(StorageError::NotFound("no file with this key"))
        }
    }

    /// A key as stored in the index (already validated when it was generated).
    pub fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn path(&self) -> Path {
        Path::from(self.0.as_str())
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a resumable upload session, in the one spelling the service hands out:
/// 36 characters of lower-case hex and hyphens (`0f8e…-…`, as `Uuid`'s `Display` writes
/// it). `Uuid::parse_str` alone would also take upper case, braces, `urn:uuid:` and the
/// bare 32 digits, so one session could be addressed under several names: in the chunk
/// announcements and the staging paths those would be different sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UploadId(Uuid);

impl UploadId {
    /// A fresh, random id.
    pub fn generate() -> Self {
        Self(Uuid::new_v4())
    }

    /// Accepts only the canonical spelling. Any other is INVALID_ARGUMENT rather than
    /// NOT_FOUND: the check looks at the text alone, never at which sessions exist, so
    /// it reveals nothing, and a client that upper-cased or wrapped the id it was given
    /// learns what it did wrong instead of looking for a session that expired.
    pub fn parse(raw: &str) -> Result<Self, StorageError> {
        match Uuid::try_parse(raw) {
            Ok(id) if Self(id).to_string() == raw => Ok(Self(id)),
            _ => Err(StorageError::InvalidArgument(
                "upload_id must be the id CreateUpload returned, exactly as returned: 36 \
                 lower-case hex digits and hyphens, like 3f2b8c1e-7d4a-4e6f-9a0b-1c2d3e4f5a6b"
                    .into(),
            )),
        }
    }

    /// An id read back from the index, which only ever stores canonical ones.
    pub fn from_stored(raw: &str) -> Result<Self, StorageError> {
        Self::parse(raw).map_err(|_| {
            StorageError::Internal(format!("a stored upload id is not canonical: {raw:?}"))
        })
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// A SHA-256 digest as 64 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn parse(raw: &str) -> Result<Self, StorageError> {
        let lower = raw.trim().to_ascii_lowercase();
        if lower.len() != 64 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StorageError::InvalidArgument(
                "sha256 must be 64 hex digits (the SHA-256 of the whole file)".into(),
            ));
        }
        Ok(Self(lower))
    }

    pub fn from_digest(digest: &[u8]) -> Self {
        Self(hex::encode(digest))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safe(original: &str) -> String {
        SafeName::from_original(original).0
    }

    #[test]
    fn ordinary_names_are_kept() {
        assert_eq!(safe("report-2024 (final).pdf"), "report-2024_(final).pdf");
        assert_eq!(safe("Übersicht_März.xlsx"), "Ubersicht_Marz.xlsx");
        assert_eq!(safe("日本語.txt"), "txt");
        assert_eq!(safe("ｆｕｌｌ　ｗｉｄｔｈ.txt"), "full_width.txt");
    }

    #[test]
    fn hostile_names_cannot_escape_or_hide() {
        for hostile in [
            "../../etc/passwd",
            "/etc/passwd",
            "..\\..\\boot.ini",
            "a/../../b",
            "C:\\x\\y",
        ] {
            let name = safe(hostile);
            assert!(
                !name.contains('/') && !name.contains('\\') && !name.starts_with('.'),
                "{hostile} -> {name}"
            );
        }
        assert_eq!(safe("../../etc/passwd"), "etc_passwd");
        assert_eq!(safe("evil\u{0}name\n.txt"), "evilname.txt");
        assert_eq!(safe("invoice\u{202e}fdp.exe"), "invoice_fdp.exe");
        assert_eq!(safe("a..b"), "a..b");
    }

    #[test]
    fn empty_or_meaningless_names_get_a_generated_one() {
        for empty in ["", ".", "..", "...", "   ", "\u{0}", "///", "._."] {
            assert_eq!(safe(empty), FALLBACK_NAME, "{empty:?}");
        }
    }

    #[test]
    fn long_names_are_cut_on_a_char_boundary_keeping_the_extension() {
        let name = safe(&format!("{}.tar.gz", "é".repeat(100)));
        assert_eq!(name.len(), MAX_SAFE_NAME_BYTES);
        assert!(name.ends_with(".gz") && name.starts_with("eee"));
        let ascii = safe(&"a".repeat(1024));
        assert_eq!(ascii.len(), MAX_SAFE_NAME_BYTES);
    }

    #[test]
    fn keys_are_namespaced_and_parsed_only_for_their_owner() {
        let alice = Uuid::new_v4();
        let bob = Uuid::new_v4();
        let key =
            ObjectKey::generate(alice, &SafeName::from_original("a.txt"), 1_700_000_000).unwrap();
        assert!(key.as_str().starts_with(&format!("{alice}/1700000000-")));
        assert!(key.as_str().ends_with("-a.txt"));
        assert_eq!(ObjectKey::parse_for(alice, key.as_str()).unwrap(), key);
        assert!(ObjectKey::parse_for(bob, key.as_str()).is_err());
        for bad in [
            "",
            "nope",
            &format!("{alice}/"),
            &format!("{alice}/../{bob}/x"),
            &format!("{alice}/a/b"),
        ] {
            assert!(ObjectKey::parse_for(alice, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn two_keys_for_the_same_name_in_the_same_second_differ() {
        let user = Uuid::new_v4();
        let name = SafeName::from_original("same.txt");
        let a = ObjectKey::generate(user, &name, 1).unwrap();
        let b = ObjectKey::generate(user, &name, 1).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn upload_ids_are_accepted_only_as_handed_out() {
        let id = UploadId::generate();
        let canonical = id.to_string();
        assert_eq!(UploadId::parse(&canonical).unwrap(), id);
        let uuid = Uuid::parse_str(&canonical).unwrap();
        for other in [
            canonical.to_ascii_uppercase(),
            format!("{{{canonical}}}"),
            format!("urn:uuid:{canonical}"),
            uuid.simple().to_string(),
            format!(" {canonical}"),
            format!("{canonical}\n"),
            String::new(),
            "not-an-id".into(),
        ] {
            let err = UploadId::parse(&other).unwrap_err();
            assert!(
                matches!(&err, StorageError::InvalidArgument(message) if message.contains("lower-case")),
                "{other:?}: {err}"
            );
        }
    }

    #[test]
    fn sha256_must_be_64_hex_digits() {
        assert!(Sha256Hex::parse(&"A".repeat(64)).is_ok());
        assert!(Sha256Hex::parse("abc").is_err());
        assert!(Sha256Hex::parse(&"g".repeat(64)).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever a client calls its file, the key part is short, plain ASCII, not
        /// hidden, and round-trips as a key of its owner only.
        #[test]
        fn any_name_becomes_a_safe_key_of_its_owner_only(original in any::<String>(), seconds in 0u64..10_000_000_000) {
            let safe = SafeName::from_original(&original);
            let name = safe.as_str();
            prop_assert!(!name.is_empty() && name.len() <= MAX_SAFE_NAME_BYTES);
            prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || SAFE_PUNCTUATION.contains(c)));
            // Not hidden, and never `.` or `..` (inner dots, as in `a..b`, are harmless
            // without a separator).
            prop_assert!(!name.starts_with('.'));
            let owner = Uuid::new_v4();
            let key = ObjectKey::generate(owner, &safe, seconds).unwrap();
            prop_assert_eq!(key.as_str().matches('/').count(), 1);
            prop_assert_eq!(ObjectKey::parse_for(owner, key.as_str()).unwrap(), key.clone());
            prop_assert!(ObjectKey::parse_for(Uuid::new_v4(), key.as_str()).is_err());
            // object_store would percent-encode anything unusual; a safe key needs none.
            let path = key.path();
            prop_assert_eq!(path.as_ref(), key.as_str());
        }

        /// Whatever is offered as an upload id, it parses only if it is exactly the
        /// canonical spelling of the id it parses to: one session, one name.
        #[test]
        fn an_upload_id_has_one_spelling(raw in any::<String>()) {
            if let Ok(id) = UploadId::parse(&raw) {
                prop_assert_eq!(id.to_string(), raw);
            }
        }

        /// Every spelling `uuid` accepts besides the canonical one is refused.
        #[test]
        fn other_spellings_of_a_real_id_are_refused(bits in any::<u128>(), upper in any::<bool>()) {
            let uuid = Uuid::from_u128(bits);
            let canonical = uuid.hyphenated().to_string();
            prop_assert_eq!(UploadId::parse(&canonical).unwrap().to_string(), canonical.clone());
            let mut others = vec![
                uuid.simple().to_string(),
                uuid.braced().to_string(),
                uuid.urn().to_string(),
            ];
            if upper && canonical.bytes().any(|b| b.is_ascii_alphabetic()) {
                others.push(canonical.to_ascii_uppercase());
            }
            for other in others {
                prop_assert!(UploadId::parse(&other).is_err(), "{other}");
            }
        }

        /// Arbitrary text offered as a key never parses unless it is a plausible key in
        /// the caller's namespace.
        #[test]
        fn foreign_or_malformed_keys_never_parse(raw in any::<String>()) {
            let user = Uuid::new_v4();
            if let Ok(key) = ObjectKey::parse_for(user, &raw) {
                let namespace = format!("{user}/");
                prop_assert!(key.as_str().starts_with(&namespace));
            }
        }
    }
}
