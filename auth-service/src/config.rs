//! auth-service settings: one `clap` struct, so `--help`, environment variables and
//! defaults come from the same declaration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use strongbox_common::config::{Command, DataDirArgs, Secret};
use strongbox_common::metrics::MetricsArgs;
use strongbox_common::telemetry::TelemetryArgs;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "auth-service",
    version,
    about = "Strongbox accounts, sessions and access tokens over gRPC"
)]
pub struct Config {
    /// `healthcheck`, `rotate-key`, or nothing to serve.
    #[command(subcommand)]
    pub command: Option<AuthCommand>,

    /// Address the gRPC server listens on.
    #[arg(long, env = "AUTH_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// PEM certificate chain to serve gRPC over TLS (with AUTH_TLS_KEY), for callers that
    /// use an https:// URL. Unset: h2c, for a private network.
    #[arg(long, env = "AUTH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of AUTH_TLS_CERT.
    #[arg(long, env = "AUTH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub metrics: MetricsArgs,

    #[command(flatten)]
    pub data: DataDirArgs,

    /// The accounts database: sqlite://FILE, or postgres://USER:PASSWORD@HOST/DB to share
    /// one among replicas [default: sqlite://<DATA_DIR>/auth.db].
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// PEM (PKCS#8) Ed25519 private key that signs access tokens; generated on first
    /// start if missing [default: <DATA_DIR>/jwt-ed25519.pem].
    #[arg(long, env = "JWT_PRIVATE_KEY_PATH")]
    pub jwt_private_key_path: Option<PathBuf>,

    /// The Ed25519 signing key itself, PEM (PKCS#8), in place of the key file: for
    /// replicas that share no volume, each given the same value. `\n` may stand for the
    /// line breaks. Rotate it with JWT_PUBLISHED_KEYS (see the README).
    #[arg(
        long,
        env = "JWT_PRIVATE_KEY",
        hide_env_values = true,
        conflicts_with_all = ["jwt_private_key_path", "jwt_secret"]
    )]
    pub jwt_private_key: Option<Secret>,

    /// More Ed25519 keys, PEM (PKCS#8) one after another, that are published for
    /// verification but never sign: during a rotation, the next key before it signs,
    /// then the previous one while its tokens live.
    #[arg(
        long,
        env = "JWT_PUBLISHED_KEYS",
        hide_env_values = true,
        requires = "jwt_private_key"
    )]
    pub jwt_published_keys: Option<Secret>,

    /// The key each refresh token's successor is derived from, hex (at least 32 bytes),
    /// so a retried Refresh gets the same new token from any replica; replicas that
    /// share no DATA_DIR need the same value [default: generated in
    /// <DATA_DIR>/refresh-token-key].
    #[arg(long, env = "REFRESH_TOKEN_KEY", hide_env_values = true)]
    pub refresh_token_key: Option<Secret>,

    /// Shared HS256 secret (at least 32 bytes). When set, tokens are signed with it
    /// instead of Ed25519 and every verifier needs the same secret.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// How long after `auth-service rotate-key` the new key starts signing, in seconds.
    /// Until then it is only published, so verifiers know it before they meet its tokens:
    /// keep it above the verifiers' key refetch interval (5 s) plus the key reload interval.
    #[arg(long, env = "JWT_KEY_ACTIVATION_DELAY_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub jwt_key_activation_delay_seconds: u64,

    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "ACCESS_TOKEN_EXPIRE_SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    pub access_token_expire_seconds: u64,

    /// Lifetime of refresh tokens, in seconds.
    #[arg(long, env = "REFRESH_TOKEN_EXPIRE_SECONDS", default_value_t = 2_592_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub refresh_token_expire_seconds: u64,

    /// bcrypt cost factor for password hashes (4–31).
    #[arg(long, env = "BCRYPT_ROUNDS", default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_rounds: u32,

    /// Failed logins allowed per email from one client address within the window before
    /// further attempts from that address are refused.
    #[arg(long, env = "LOGIN_MAX_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_failures: u32,

    /// Failed logins allowed per email from all addresses together within the window: a
    /// looser ceiling, so failures spread over many addresses are still bounded while a
    /// stranger's failures from one address do not lock the owner out.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_EMAIL", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_failures_per_email: u32,

    /// Password checks that may wait for a hashing thread; more are refused at once with
    /// UNAVAILABLE [default: the number of hashing threads, one per core].
    #[arg(long, env = "PASSWORD_HASH_QUEUE")]
    pub password_hash_queue: Option<usize>,

    /// A refresh token presented again within this many seconds of its rotation, while
    /// its successor is unused, gets that same successor (a retry whose answer was lost)
    /// instead of revoking the session. 0 treats every second use as theft.
    #[arg(long, env = "REFRESH_REUSE_INTERVAL_SECONDS", default_value_t = 10)]
    pub refresh_reuse_interval_seconds: u64,

    /// Length of the failed-login window, in seconds.
    #[arg(long, env = "LOGIN_FAILURE_WINDOW_SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    pub login_failure_window_seconds: u64,

    /// How often expired refresh tokens and stale login failures are purged, in seconds.
    #[arg(long, env = "TOKEN_PURGE_INTERVAL_SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_purge_interval_seconds: u64,
}

/// What auth-service can do besides serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum AuthCommand {
    /// Asks the running service (at its listen address) for its grpc.health.v1 status;
    /// exits 0 when SERVING. For container healthchecks, which have no grpcurl.
    Healthcheck,
    /// Adds a new Ed25519 signing key beside the current one. It is published at once and
    /// signs from JWT_KEY_ACTIVATION_DELAY_SECONDS on; the old key stays published until
    /// the last token it signed has expired. The running service picks it up by itself.
    RotateKey,
}

impl AuthCommand {
    /// The subcommand every service shares, if this is one.
    pub fn shared(self) -> Option<Command> {
        match self {
            Self::Healthcheck => Some(Command::Healthcheck),
            Self::RotateKey => None,
        }
    }
}

impl Config {
    /// Settings with every default, keeping state under `data_dir` (for tests and the launcher).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        use clap::Parser;
        let mut config = Self::parse_from(["auth-service"]);
        config.data.data_dir = data_dir.into();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data.data_dir.join("auth.db").display()))
    }

    pub fn jwt_private_key_path(&self) -> PathBuf {
        self.jwt_private_key_path
            .clone()
            .unwrap_or_else(|| self.data.data_dir.join("jwt-ed25519.pem"))
    }

    pub fn jwt_key_activation_delay(&self) -> Duration {
        Duration::from_secs(self.jwt_key_activation_delay_seconds)
    }

    pub fn access_token_ttl(&self) -> Duration {
        Duration::from_secs(self.access_token_expire_seconds)
    }

    pub fn refresh_token_ttl(&self) -> Duration {
        Duration::from_secs(self.refresh_token_expire_seconds)
    }

    pub fn login_failure_window(&self) -> Duration {
        Duration::from_secs(self.login_failure_window_seconds)
    }

    /// The key that derives each refresh token's successor (see `refresh_tokens`).
    pub fn refresh_token_key_path(&self) -> PathBuf {
        self.data.data_dir.join("refresh-token-key")
    }

    pub fn refresh_reuse_interval(&self) -> Duration {
        Duration::from_secs(self.refresh_reuse_interval_seconds)
    }
}

impl Config {
    /// The certificate this service serves gRPC with, if TLS is on.
    pub fn served_certificate(&self) -> Option<strongbox_common::tls::ServedCertificate> {
        Some(strongbox_common::tls::ServedCertificate {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            cert_setting: "AUTH_TLS_CERT",
            key_setting: "AUTH_TLS_KEY",
        })
    }
}
