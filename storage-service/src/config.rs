//! storage-service settings: one `clap` struct, so `--help`, environment variables and
//! defaults come from the same declaration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use strongbox_common::config::{Command, DataDirArgs, Secret};
use strongbox_common::metrics::MetricsArgs;
use strongbox_common::telemetry::TelemetryArgs;

use crate::usage::Limits;

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "storage-service",
    version,
    about = "Strongbox file storage over gRPC: streaming uploads into S3 or a local directory"
)]
pub struct Config {
    /// `healthcheck`, or nothing to serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address the gRPC server listens on.
    #[arg(long, env = "STORAGE_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// PEM certificate chain to serve gRPC over TLS (with STORAGE_TLS_KEY), for callers that
    /// use an https:// URL. Unset: h2c, for a private network.
    #[arg(long, env = "STORAGE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of STORAGE_TLS_CERT.
    #[arg(long, env = "STORAGE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// CA certificate (PEM) that signed the services' certificates: required for
    /// https:// service URLs, which trust it and nothing else.
    #[arg(long, env = "SERVICE_CA_FILE")]
    pub service_ca_file: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub metrics: MetricsArgs,

    #[command(flatten)]
    pub data: DataDirArgs,

    /// Database of the file index and upload sessions: sqlite://FILE, or
    /// postgres://USER:PASSWORD@HOST/DB for replicas sharing one
    /// [default: sqlite://<DATA_DIR>/storage.db].
    #[arg(long, env = "STORAGE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory of the local object store, used when STORAGE_ENDPOINT is not set
    /// [default: <DATA_DIR>/objects].
    #[arg(long, env = "STORAGE_DIR")]
    pub storage_dir: Option<PathBuf>,

    /// S3-compatible endpoint (e.g. http://minio:9000). Set → S3; unset → local directory.
    #[arg(long, env = "STORAGE_ENDPOINT")]
    pub storage_endpoint: Option<String>,

    /// S3 access key.
    #[arg(long, env = "STORAGE_ACCESS_KEY", default_value = "")]
    pub storage_access_key: String,

    /// S3 secret key.
    #[arg(
        long,
        env = "STORAGE_SECRET_KEY",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub storage_secret_key: String,

    /// S3 bucket; created at start if missing.
    #[arg(long, env = "STORAGE_BUCKET", default_value = "uploads")]
    pub storage_bucket: String,

    /// S3 region.
    #[arg(long, env = "STORAGE_REGION", default_value = "us-east-1")]
    pub storage_region: String,

    /// The S3 endpoint as browsers reach it; download URLs are signed for this host
    /// [default: STORAGE_ENDPOINT].
    #[arg(long, env = "STORAGE_PUBLIC_ENDPOINT")]
    pub storage_public_endpoint: Option<String>,

    /// Timeout of one S3 request, in seconds.
    #[arg(long, env = "STORAGE_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub storage_timeout_seconds: u64,

    /// auth-service, whose GetPublicKeys verifies access tokens (unless JWT_SECRET is
    /// set): one URL, or several replicas' separated by commas, tried in turn.
    #[arg(
        long,
        env = "AUTH_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub auth_service_url: String,

    /// Shared HS256 secret (at least 32 bytes); when set, tokens are verified with it
    /// instead of auth-service's keys.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// Largest file accepted, in bytes.
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = 5 * 1024 * MIB)]
    pub max_upload_bytes: u64,

    /// Comma-separated MIME types accepted (e.g. `image/*,application/pdf`); empty means any.
    #[arg(
        long,
        env = "ALLOWED_CONTENT_TYPES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub allowed_content_types: Vec<String>,

    /// Size of each multipart part sent to the object store, in bytes (S3 needs ≥ 5 MiB).
    #[arg(long, env = "UPLOAD_PART_SIZE", default_value_t = 8 * MIB)]
    pub upload_part_size: u64,

    /// Memory all uploads together may hold in file data (parts being filled or on
    /// their way to storage, resumable-session chunks), in bytes; at least one part and one
    /// chunk. An upload waits for room before it reads more, so memory stays bounded
    /// however many upload at once.
    #[arg(long, env = "UPLOAD_MEMORY_BYTES", default_value_t = 64 * MIB)]
    pub upload_memory_bytes: u64,

    /// The part of UPLOAD_MEMORY_BYTES one user's uploads may hold together, in bytes;
    /// at least one part and one chunk [default: half of UPLOAD_MEMORY_BYTES, or one
    /// part if that is more]. Beyond it a user's uploads wait for their own to move.
    #[arg(long, env = "UPLOAD_MEMORY_PER_USER_BYTES")]
    pub upload_memory_per_user_bytes: Option<u64>,

    /// How long an upload waits for room in UPLOAD_MEMORY_BYTES, in seconds; after
    /// that it fails RESOURCE_EXHAUSTED with `retry-after`, nothing stored.
    #[arg(long, env = "UPLOAD_MEMORY_WAIT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_memory_wait_seconds: u64,

    /// An upload body that arrives slower than this, in bytes per second averaged over
    /// UPLOAD_RATE_WINDOW_SECONDS of waiting for the client, is cancelled with
    /// DEADLINE_EXCEEDED and nothing of it stored; 0 turns the check off. The default
    /// (16 KiB/s) lets a slow phone on 3G through.
    #[arg(long, env = "MIN_UPLOAD_BYTES_PER_SECOND", default_value_t = 16 * 1024)]
    pub min_upload_bytes_per_second: u64,

    /// The window, in seconds, over which MIN_UPLOAD_BYTES_PER_SECOND is averaged.
    #[arg(long, env = "UPLOAD_RATE_WINDOW_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_rate_window_seconds: u64,

    /// An Upload stream that sends nothing for this many seconds is cancelled and
    /// nothing of it is stored, so a stalled client cannot hold upload memory.
    #[arg(long, env = "UPLOAD_IDLE_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_idle_timeout_seconds: u64,

    /// Parts of one upload in flight to the object store at once.
    #[arg(long, env = "UPLOAD_PARTS_IN_FLIGHT", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub upload_parts_in_flight: u64,

    /// Largest chunk in one gRPC message (Upload chunks, UploadChunk data, a whole PutFile),
    /// in bytes; at least 1 MiB, which clients may count on for PutFile. On S3 at least
    /// 5 MiB: each resumable-session chunk is a multipart part.
    #[arg(long, env = "MAX_CHUNK_BYTES", default_value_t = 8 * MIB, value_parser = clap::value_parser!(u64).range(MIB..))]
    pub max_chunk_bytes: u64,

    /// Unfinished resumable upload sessions are deleted after this many seconds.
    #[arg(long, env = "UPLOAD_SESSION_TTL_SECONDS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_session_ttl_seconds: u64,

    /// Most bytes one user may store, counting uploads in progress by their declared
    /// size or the bytes received so far; unset: no quota.
    #[arg(long, env = "USER_QUOTA_BYTES")]
    pub user_quota_bytes: Option<u64>,

    /// Most files one user may keep, counting uploads in progress and open upload
    /// sessions; unset: no limit.
    #[arg(long, env = "USER_MAX_FILES")]
    pub user_max_files: Option<u64>,

    /// Resumable upload sessions one user may have open at once; a new one beyond them
    /// is refused (the open ones are kept).
    #[arg(long, env = "MAX_OPEN_SESSIONS_PER_USER", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_open_sessions_per_user: u32,

    /// Uploads one user may have in progress at once: Upload streams, PutFile calls and
    /// session chunks being stored.
    #[arg(long, env = "MAX_CONCURRENT_UPLOADS_PER_USER", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_uploads_per_user: u32,

    /// Public base URL of the gateway, which serves the local backend's download links.
    #[arg(long, env = "PUBLIC_BASE_URL", default_value = "http://localhost:8000")]
    pub public_base_url: String,

    /// Key that signs the local backend's download links, at least 32 bytes
    /// [default: generated into <DATA_DIR>/download-links.key].
    #[arg(long, env = "DOWNLOAD_URL_SECRET", hide_env_values = true)]
    pub download_url_secret: Option<Secret>,
}

impl Config {
    /// Settings with every default, keeping state under `data_dir` (for tests and the launcher).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        use clap::Parser;
        let mut config = Self::parse_from(["storage-service"]);
        config.data.data_dir = data_dir.into();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }

    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.data.data_dir.join("storage.db").display()
            )
        })
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.storage_dir
            .clone()
            .unwrap_or_else(|| self.data.data_dir.join("objects"))
    }

    pub fn download_secret_path(&self) -> PathBuf {
        self.data.data_dir.join("download-links.key")
    }

    pub fn storage_timeout(&self) -> Duration {
        Duration::from_secs(self.storage_timeout_seconds)
    }

    pub fn upload_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.upload_idle_timeout_seconds)
    }

    pub fn upload_memory_wait(&self) -> Duration {
        Duration::from_secs(self.upload_memory_wait_seconds)
    }

    pub fn upload_rate_window(&self) -> Duration {
        Duration::from_secs(self.upload_rate_window_seconds)
    }

    pub fn upload_memory_per_user_bytes(&self) -> u64 {
        self.upload_memory_per_user_bytes.unwrap_or_else(|| {
            (self.upload_memory_bytes / 2)
                .max(self.upload_part_size.max(self.max_chunk_bytes))
                .min(self.upload_memory_bytes)
        })
    }

    pub fn limits(&self) -> Limits {
        Limits {
            quota_bytes: self.user_quota_bytes,
            max_files: self.user_max_files,
            max_open_sessions: self.max_open_sessions_per_user,
            max_concurrent_uploads: self.max_concurrent_uploads_per_user,
        }
    }

    pub fn upload_session_ttl(&self) -> Duration {
        Duration::from_secs(self.upload_session_ttl_seconds)
    }
}

impl Config {
    /// Every auth-service URL of `AUTH_SERVICE_URL`.
    pub fn auth_service_urls(&self) -> impl Iterator<Item = &str> {
        strongbox_common::config::url_list(&self.auth_service_url)
    }

    /// The certificate this service serves gRPC with, if TLS is on.
    pub fn served_certificate(&self) -> Option<strongbox_common::tls::ServedCertificate> {
        Some(strongbox_common::tls::ServedCertificate {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            cert_setting: "STORAGE_TLS_CERT",
            key_setting: "STORAGE_TLS_KEY",
        })
    }
}
