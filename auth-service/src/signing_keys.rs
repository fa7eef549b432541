//! The Ed25519 signing keys on disk, and the rules of rotating them with overlap.
//!
//! The first key is the file at `JWT_PRIVATE_KEY_PATH`, generated on first start and
//! active since forever. `auth-service rotate-key` adds keys in a directory beside it
//! (`jwt-ed25519.rotations/` for `jwt-ed25519.pem`), one PKCS#8 PEM file per key, named
//! by the unix second it starts signing: `1767225600.pem`. File names carry all the
//! state, so the command and a running service share nothing but the directory, and a
//! file appears whole or not at all (`secrets::write_new`).
//!
//! From those activation times alone, at any instant:
//! - the key that signs is the newest whose activation has passed;
//! - a key is published while it is pending, while it signs, and after it is superseded
//!   for as long as a token it signed may still verify ([`KeySet::published`]).
//!
//! A new key is published as soon as the service reloads the directory, but signs only
//! `JWT_KEY_ACTIVATION_DELAY_SECONDS` later, so a verifier that refetches keys for an
//! unknown kid (at most once per `jwt::MIN_REFETCH_INTERVAL`) already has it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::EncodingKey;
use sha2::{Digest, Sha256};
use strongbox_common::{jwt, secrets};

use crate::config::Config;
use crate::error::AuthError;
use crate::signing::unix_now;

/// How often a running service re-reads the key directory: one `read_dir` and a few
/// small files, cheap enough to do every second, so a rotation is published at once.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// One Ed25519 key and the moment it starts signing.
pub struct SigningKey {
    pub kid: String,
    /// Unix seconds; 0 for the original key.
    pub activates_at: u64,
    pub encoding: EncodingKey,
    pub public_raw: [u8; 32],
    pub public_pem: String,
}

impl SigningKey {
    fn from_pem(pem: &str, activates_at: u64, path: &Path) -> Result<Self, AuthError> {
        let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|err| {
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
        let encoding = EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|err| {
            AuthError::Internal(format!("loading the signing key {}: {err}", path.display()))
        })?;
        Ok(Self {
            kid: key_id(&public_raw),
            activates_at,
            encoding,
            public_raw,
            public_pem,
        })
    }
}

/// Every key on disk, oldest activation first (never empty: the original key is first),
/// and the keys published beside them that never sign (`JWT_PUBLISHED_KEYS`).
pub struct KeySet {
    keys: Vec<SigningKey>,
    published_only: Vec<SigningKey>,
}

impl KeySet {
    /// The key that signs at `now`: the newest whose activation has passed.
    pub fn signing(&self, now: u64) -> &SigningKey {
        self.keys
            .iter()
            .rev()
            .find(|key| key.activates_at <= now)
            .unwrap_or(&self.keys[0])
    }

    /// The keys verifiers need at `now`: pending, signing, or superseded less than
    /// `token_lifetime` ago (a token signed just before its key was superseded is
    /// valid that long).
    pub fn published(
        &self,
        now: u64,
        token_lifetime: Duration,
    ) -> impl Iterator<Item = &SigningKey> {
        let successors = self.keys.iter().skip(1).map(Some).chain([None]);
        self.keys
            .iter()
            .zip(successors)
            .filter(move |(_, successor)| match successor {
                None => true,
                Some(next) => next.activates_at.saturating_add(token_lifetime.as_secs()) > now,
            })
            .map(|(key, _)| key)
            .chain(&self.published_only)
    }

    /// The kids, in order, to tell whether a reload changed anything.
    pub fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .chain(&self.published_only)
            .map(|key| key.kid.as_str())
            .collect()
    }

    /// The keys given in the environment: `signing` (JWT_PRIVATE_KEY) signs, each key
    /// in `published` (JWT_PUBLISHED_KEYS) is only published. Replicas given the same
    /// values sign and publish alike with no file between them; a rotation is two
    /// rollouts of new values (see the README), during which every replica publishes
    /// every key any replica signs with.
    pub fn from_environment(signing: &str, published: Option<&str>) -> Result<Self, AuthError> {
        let signing_pems = pem_blocks(signing);
        let [signing_pem] = signing_pems.as_slice() else {
            return Err(AuthError::Internal(format!(
                "JWT_PRIVATE_KEY must hold exactly one PEM key, not {}; put the keys that \
                 only verify in JWT_PUBLISHED_KEYS",
                signing_pems.len()
            )));
        };
        let key = SigningKey::from_pem(signing_pem, 0, Path::new("JWT_PRIVATE_KEY"))?;
        let mut published_only: Vec<SigningKey> = Vec::new();
        for pem in pem_blocks(published.unwrap_or_default()) {
            let extra = SigningKey::from_pem(&pem, u64::MAX, Path::new("JWT_PUBLISHED_KEYS"))?;
            let known = extra.kid == key.kid || published_only.iter().any(|k| k.kid == extra.kid);
            if !known {
                published_only.push(extra);
            }
        }
        Ok(Self {
            keys: vec![key],
            published_only,
        })
    }
}

/// The PEM blocks in `text`, each whole; `\n` written out (as a one-line environment
/// value holds it) stands for a line break.
fn pem_blocks(text: &str) -> Vec<String> {
    let text = text.replace("\\n", "\n");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
            if line.starts_with("-----END ") {
                blocks.extend(current.take());
            }
        }
    }
    blocks
}

/// How long after a key is superseded its tokens may still verify: their lifetime, the
/// verifiers' clock leeway, and the reload interval (a service that has not yet seen a
/// new key keeps signing with the old one until its next reload).
pub fn retired_key_lifetime(access_token_ttl: Duration) -> Duration {
    access_token_ttl + Duration::from_secs(jwt::LEEWAY_SECONDS) + RELOAD_INTERVAL
}

/// Where the keys live: the original file and the rotation directory beside it.
#[derive(Clone, Debug)]
pub struct KeyFiles {
    original: PathBuf,
    rotations: PathBuf,
}

impl KeyFiles {
    pub fn beside(original: &Path) -> Self {
        let stem = original
            .file_stem()
            .map_or_else(|| "jwt".into(), |stem| stem.to_string_lossy());
        Self {
            original: original.to_owned(),
            rotations: original.with_file_name(format!("{stem}.rotations")),
        }
    }

    /// Reads every key, generating the original one if it does not exist yet.
    pub fn load(&self) -> Result<KeySet, AuthError> {
        let pem = secrets::read_or_create(&self.original, generate_pem).map_err(|err| {
            AuthError::Internal(format!("signing key {}: {err}", self.original.display()))
        })?;
        let mut keys = vec![SigningKey::from_pem(&pem, 0, &self.original)?];
        for (activates_at, path) in self.rotation_files()? {
            let pem = std::fs::read_to_string(&path).map_err(|err| {
                AuthError::Internal(format!("reading signing key {}: {err}", path.display()))
            })?;
            keys.push(SigningKey::from_pem(&pem, activates_at, &path)?);
        }
        Ok(KeySet {
            keys,
            published_only: Vec::new(),
        })
    }

    /// Reads every key as [`KeyFiles::load`] does, but never creates one: while the
    /// service runs, an original key file that vanished is an error (and the known keys
    /// stay in use), not a reason to sign with a new key nothing else knows.
    pub fn reload(&self) -> Result<KeySet, AuthError> {
        if !self.original.exists() {
            return Err(AuthError::Internal(format!(
                "signing key {} is missing; restore it (the keys in memory keep signing)",
                self.original.display()
            )));
        }
        self.load()
    }

    /// Adds a new key that signs from `activates_at` (or the first free second after
    /// it, if another rotation took that one) and returns it.
    pub fn add(&self, activates_at: u64) -> Result<SigningKey, AuthError> {
        create_private_dir(&self.rotations)?;
        let pem = generate_pem().map_err(|err| AuthError::Internal(err.to_string()))?;
        for activates_at in activates_at..activates_at + 60 {
            let path = self.rotation_path(activates_at);
            let created = secrets::write_new(&path, pem.as_bytes()).map_err(|err| {
                AuthError::Internal(format!("writing signing key {}: {err}", path.display()))
            })?;
            if created {
                return SigningKey::from_pem(&pem, activates_at, &path);
            }
        }
        Err(AuthError::Internal(format!(
            "{} has a key for every second of the next minute; wait and retry",
            self.rotations.display()
        )))
    }

    /// Deletes rotated-in keys that are no longer published, so no retired private key
    /// lingers on disk. (The original file stays: without it the next start would make
    /// a new one.) Returns how many were deleted.
    pub fn prune(&self, now: u64, token_lifetime: Duration) -> Result<usize, AuthError> {
        let files = self.rotation_files()?;
        let activations: Vec<u64> = files.iter().map(|(at, _)| *at).collect();
        let mut pruned = 0;
        for (index, (_, path)) in files.iter().enumerate() {
            let superseded_at = activations.get(index + 1);
            let expired =
                superseded_at.is_some_and(|at| at.saturating_add(token_lifetime.as_secs()) <= now);
            if expired {
                std::fs::remove_file(path).map_err(|err| {
                    AuthError::Internal(format!("deleting {}: {err}", path.display()))
                })?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    fn rotation_path(&self, activates_at: u64) -> PathBuf {
        self.rotations.join(format!("{activates_at}.pem"))
    }

    /// `(activation, path)` of every `<unix seconds>.pem` in the rotation directory,
    /// oldest first. Other names (temporary files among them) are not keys.
    fn rotation_files(&self) -> Result<Vec<(u64, PathBuf)>, AuthError> {
        let entries = match std::fs::read_dir(&self.rotations) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => {
                return Err(AuthError::Internal(format!(
                    "reading {}: {err}",
                    self.rotations.display()
                )));
            }
        };
        let mut files: Vec<(u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name();
                let activates_at = name.to_str()?.strip_suffix(".pem")?.parse().ok()?;
                Some((activates_at, entry.path()))
            })
            .collect();
        files.sort();
        Ok(files)
    }
}

/// What `auth-service rotate-key` did, for its output.
pub struct Rotation {
    pub new_kid: String,
    pub activates_at: u64,
    pub previous_kid: String,
    pub pruned: usize,
}

/// `auth-service rotate-key`: adds a key that signs `JWT_KEY_ACTIVATION_DELAY_SECONDS`
/// from now (and after every pending key), and deletes keys whose tokens have all expired.
pub fn rotate(config: &Config) -> Result<Rotation, AuthError> {
    if config.jwt_secret.is_some() {
        return Err(AuthError::Internal(
            "JWT_SECRET is set: tokens are signed with the shared secret, which has no key to \
             rotate; change JWT_SECRET on every service instead"
                .into(),
        ));
    }
    if config.jwt_private_key.is_some() {
        return Err(AuthError::Internal(
            "JWT_PRIVATE_KEY is set: the key comes from the environment, not a file this \
             command can add to; rotate it with JWT_PUBLISHED_KEYS (see the README)"
                .into(),
        ));
    }
    let files = KeyFiles::beside(&config.jwt_private_key_path());
    let current = files.load()?;
    let now = unix_now();
    let previous_kid = current.signing(now).kid.clone();
    let newest = current.keys.last().map_or(0, |key| key.activates_at);
    let activates_at = (now + config.jwt_key_activation_delay().as_secs()).max(newest + 1);
    let added = files.add(activates_at)?;
    let pruned = files.prune(now, retired_key_lifetime(config.access_token_ttl()))?;
    Ok(Rotation {
        new_kid: added.kid,
        activates_at: added.activates_at,
        previous_kid,
        pruned,
    })
}

/// The kid of a public key: the first 16 hex digits of its SHA-256, stable across restarts.
fn key_id(public_raw: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public_raw)[..8])
}

fn generate_pem() -> std::io::Result<String> {
    let seed = secrets::random_bytes::<32>()?;
    let pem = ed25519_dalek::SigningKey::from_bytes(&seed)
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(std::io::Error::other)?;
    Ok(pem.to_string())
}

fn create_private_dir(dir: &Path) -> Result<(), AuthError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|err| AuthError::Internal(format!("creating {}: {err}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFETIME: Duration = Duration::from_secs(100);

    fn kids<'a>(keys: impl Iterator<Item = &'a SigningKey>) -> Vec<u64> {
        keys.map(|key| key.activates_at).collect()
    }

    #[test]
    fn a_rotated_key_is_published_before_it_signs_and_the_old_one_until_its_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::beside(&dir.path().join("jwt-ed25519.pem"));
        files.load().unwrap();
        files.add(1000).unwrap();
        let set = files.load().unwrap();

        // Before activation: the original signs, both are published.
        assert_eq!(set.signing(999).activates_at, 0);
        assert_eq!(kids(set.published(999, LIFETIME)), [0, 1000]);
        // From activation the new key signs; the old one stays for a token lifetime.
        assert_eq!(set.signing(1000).activates_at, 1000);
        assert_eq!(kids(set.published(1099, LIFETIME)), [0, 1000]);
        assert_eq!(kids(set.published(1100, LIFETIME)), [1000]);
    }

    #[test]
    fn rotations_in_the_same_second_take_the_next_and_expired_keys_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::beside(&dir.path().join("jwt-ed25519.pem"));
        files.load().unwrap();
        let first = files.add(1000).unwrap();
        let second = files.add(1000).unwrap();
        assert_eq!((first.activates_at, second.activates_at), (1000, 1001));
        assert_ne!(first.kid, second.kid);

        assert_eq!(files.prune(1100, LIFETIME).unwrap(), 0);
        assert_eq!(files.prune(1101, LIFETIME).unwrap(), 1);
        assert_eq!(kids(files.load().unwrap().keys.iter()), [0, 1001]);
    }

    /// Keys from the environment: the one in JWT_PRIVATE_KEY signs, the ones in
    /// JWT_PUBLISHED_KEYS are published and never sign, whichever order a rotation
    /// puts them in; a one-line value with `\n` for its line breaks reads the same.
    #[test]
    fn environment_keys_sign_with_one_and_publish_the_others() {
        let (old, new) = (generate_pem().unwrap(), generate_pem().unwrap());
        let kid_of = |pem: &str| {
            KeySet::from_environment(pem, None)
                .unwrap()
                .signing(0)
                .kid
                .clone()
        };
        let (old_kid, new_kid) = (kid_of(&old), kid_of(&new));
        let before = KeySet::from_environment(&old, Some(&new)).unwrap();
        let after = KeySet::from_environment(&new.replace('\n', "\\n"), Some(&old)).unwrap();
        for (set, signing) in [(&before, &old_kid), (&after, &new_kid)] {
            for now in [0, u64::MAX] {
                assert_eq!(&set.signing(now).kid, signing);
            }
            let mut published: Vec<&str> = set
                .published(u64::MAX, LIFETIME)
                .map(|key| key.kid.as_str())
                .collect();
            published.sort();
            let mut both = vec![old_kid.as_str(), new_kid.as_str()];
            both.sort();
            assert_eq!(published, both);
        }
        let two = format!("{old}{new}");
        let err = KeySet::from_environment(&two, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("exactly one PEM key"), "{err}");
        let err = KeySet::from_environment(
            &old,
            Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("JWT_PUBLISHED_KEYS"), "{err}");
    }

    #[test]
    fn a_reload_never_makes_a_new_original_key() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("jwt-ed25519.pem");
        let files = KeyFiles::beside(&original);
        files.load().unwrap();
        std::fs::remove_file(&original).unwrap();
        let Err(err) = files.reload() else {
            panic!("a reload without the original key succeeded");
        };
        assert!(err.to_string().contains("is missing"), "{err}");
        assert!(!original.exists(), "a reload created a signing key");
    }
}
