//! Configuration loading shared by the services.
//!
//! Each service declares its settings once, as a `clap` struct whose fields carry
//! `env = "…"`: that one declaration gives `--help`, environment variables and
//! defaults. This module adds the `.env` file and the options all services share.

use std::path::PathBuf;

use clap::Parser;

/// Parses `T` from the command line and the environment, after loading `./.env`
/// (variables already set in the environment win over the file).
pub fn load<T: Parser>() -> T {
    // A missing .env is the normal case; a malformed one is worth a warning on stderr,
    // since tracing is not initialised before the configuration is known.
    if let Err(err) = dotenvy::dotenv()
        && !err.not_found()
    {
        eprintln!("warning: ignoring .env: {err}");
    }
    T::parse()
}

/// The URLs of a setting that names one service's replicas one by one, separated by
/// commas (`AUTH_SERVICE_URL=http://10.0.0.5:50051,http://10.0.0.6:50051`); blanks
/// around and between them are skipped.
pub fn url_list(setting: &str) -> impl Iterator<Item = &str> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
}

/// Where the embedded defaults keep their state (SQLite file, keys, local objects).
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArgs {
    /// Directory for the embedded state: the SQLite database, the signing key, local objects.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// What a service binary can do besides serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Asks the running service (at its listen address) for its grpc.health.v1 status;
    /// exits 0 when SERVING. For container healthchecks, which have no grpcurl.
    Healthcheck,
}

/// The fewest bytes a shared secret (`JWT_SECRET`, `DOWNLOAD_URL_SECRET`) or a generated
/// key file may have. An HMAC key shorter than the hash output can be guessed offline
/// from any token or link it signed; an empty one makes them forgeable by anyone.
pub const MIN_SECRET_BYTES: usize = 32;

/// A shared secret of at least [`MIN_SECRET_BYTES`], parsed once at the edge.
///
/// Its `Debug` is redacted, so a configuration struct that derives `Debug` can be logged
/// without the secret; read it with [`Secret::expose`] or [`Secret::as_bytes`] where it is
/// used. In a `clap` struct, `Option<Secret>` needs no `value_parser`: clap picks
/// [`SecretParser`], which names the variable (never the value) when one is refused.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Why a secret was refused. The value itself is never part of the message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("is set but empty")]
    Empty,
    #[error("is {0} bytes; it must be at least {MIN_SECRET_BYTES}")]
    TooShort(usize),
}

impl Secret {
    pub fn parse(value: &str) -> Result<Self, SecretError> {
        match value.len() {
            0 => Err(SecretError::Empty),
            n if n < MIN_SECRET_BYTES => Err(SecretError::TooShort(n)),
            _ => Ok(Self(value.to_owned())),
        }
    }

    /// The secret's text, for the one place that signs or verifies with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::str::FromStr for Secret {
    type Err = SecretError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// clap's parser for [`Secret`]: its error names the variable (or flag) and says how to
/// make a good secret, and, unlike clap's own value errors, does not echo the value.
#[derive(Clone, Copy, Debug, Default)]
pub struct SecretParser;

impl clap::builder::TypedValueParser for SecretParser {
    type Value = Secret;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Secret, clap::Error> {
        let name = arg.map_or_else(|| "the secret".to_owned(), setting_name);
        let refused = |reason: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "{name} {reason}; generate one with `openssl rand -hex 32`, or unset it to use the default\n"
                ),
            )
            .with_cmd(command)
        };
        let value = value
            .to_str()
            .ok_or_else(|| refused("is not valid UTF-8".to_owned()))?;
        Secret::parse(value).map_err(|err| refused(err.to_string()))
    }
}

/// `JWT_SECRET (--jwt-secret)`: how an operator may have given the setting.
fn setting_name(arg: &clap::Arg) -> String {
    let env = arg.get_env().map(|env| env.to_string_lossy());
    match (env, arg.get_long()) {
        (Some(env), Some(long)) => format!("{env} (--{long})"),
        (Some(env), None) => env.into_owned(),
        (None, Some(long)) => format!("--{long}"),
        (None, None) => arg.get_id().to_string(),
    }
}

impl clap::builder::ValueParserFactory for Secret {
    type Parser = SecretParser;

    fn value_parser() -> SecretParser {
        SecretParser
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Settings {
        #[arg(long, env = "STRONGBOX_TEST_SECRET", hide_env_values = true)]
        secret: Option<Secret>,
    }

    #[test]
    fn short_and_empty_secrets_are_refused_naming_the_flag_but_not_the_value() {
        for value in ["", "tiny-secret-value"] {
            let err = Settings::try_parse_from(["test", "--secret", value]).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains("STRONGBOX_TEST_SECRET (--secret)"),
                "{message}"
            );
            assert!(message.contains("openssl rand -hex 32"), "{message}");
            if !value.is_empty() {
                assert!(!message.contains(value), "{message}");
            }
        }
    }

    #[test]
    fn a_long_secret_is_accepted_and_never_printed_by_debug() {
        let value = "0123456789abcdef0123456789abcdef";
        let settings = Settings::try_parse_from(["test", "--secret", value]).unwrap();
        assert_eq!(settings.secret.as_ref().unwrap().expose(), value);
        assert!(!format!("{settings:?}").contains(value));
        assert_eq!(
            Secret::parse(&value[1..]),
            Err(SecretError::TooShort(MIN_SECRET_BYTES - 1))
        );
    }
}
