//! gateway settings: one `clap` struct, so `--help`, environment variables and defaults
//! come from the same declaration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use strongbox_common::config::{Command, Secret};
use strongbox_common::telemetry::TelemetryArgs;

use crate::client_address::TrustedProxies;
use crate::limits::RateLimit;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gateway",
    version,
    about = "The Strongbox front door: gRPC, grpc-web, the upload page and download links on one port"
)]
pub struct Config {
    /// `healthcheck`, or nothing to serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address the gateway listens on (native gRPC, grpc-web and the page share it).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// PEM certificate chain (leaf first) to serve HTTPS on GATEWAY_LISTEN, with
    /// GATEWAY_TLS_KEY; reloaded on SIGHUP and when the file changes. Unset: plain HTTP.
    #[arg(long, env = "GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of GATEWAY_TLS_CERT (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate (PEM) that signed the services' certificates: required for
    /// https:// service URLs, which trust it and nothing else.
    #[arg(long, env = "SERVICE_CA_FILE")]
    pub service_ca_file: Option<PathBuf>,

    /// auth-service's gRPC address: one URL, or several comma-separated (one per
    /// replica); a name that resolves to several addresses names a replica at each.
    #[arg(
        long,
        env = "AUTH_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub auth_service_url: String,

    /// storage-service's gRPC address: one URL, or several comma-separated, like
    /// AUTH_SERVICE_URL.
    #[arg(
        long,
        env = "STORAGE_SERVICE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub storage_service_url: String,

    /// Shared HS256 secret (at least 32 bytes); when set, tokens are verified with it
    /// instead of auth-service's keys.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// Comma-separated origins allowed to call grpc-web cross-origin
    /// (e.g. `https://app.example.com`); empty means same-origin only.
    #[arg(
        long,
        env = "CORS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub cors_allowed_origins: Vec<String>,

    /// How long to wait for a connection to an upstream service, in seconds.
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT_SECONDS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_connect_timeout_seconds: u64,

    /// How often every upstream replica's health is checked, in seconds: a replica that
    /// does not answer is taken out until it answers again.
    #[arg(long, env = "UPSTREAM_HEALTH_INTERVAL_SECONDS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_health_interval_seconds: u64,

    /// How often service names are resolved again, in seconds (replicas appear and go
    /// as the name's addresses do).
    #[arg(long, env = "UPSTREAM_RESOLVE_INTERVAL_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_resolve_interval_seconds: u64,

    /// HTTP/2 connections the gateway keeps to each service replica for client calls (each
    /// carries up to 128 at once; health checks and key fetches have their own).
    #[arg(long, env = "UPSTREAM_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub upstream_connections: u64,

    /// Proxies (comma-separated CIDRs, e.g. `10.0.0.0/8,::1/128`) whose
    /// `X-Forwarded-For` / `Forwarded` headers name the client; empty trusts none, and
    /// the socket's peer is the client.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', default_value = "", value_parser = parse_cidr)]
    pub trusted_proxies: Vec<Option<IpNet>>,

    /// Register calls per client address: `<count>/<s|m|h>[,burst=<n>]`, or `off`.
    #[arg(long, env = "RATE_LIMIT_REGISTER", default_value = "60/h,burst=30")]
    pub rate_limit_register: RateLimit,

    /// Login calls per client address.
    #[arg(long, env = "RATE_LIMIT_LOGIN", default_value = "30/m,burst=30")]
    pub rate_limit_login: RateLimit,

    /// Refresh calls per client address.
    #[arg(long, env = "RATE_LIMIT_REFRESH", default_value = "60/m,burst=30")]
    pub rate_limit_refresh: RateLimit,

    /// Storage calls per user (every call counts: an upload session's chunks too).
    #[arg(long, env = "RATE_LIMIT_STORAGE", default_value = "100/s,burst=500")]
    pub rate_limit_storage: RateLimit,

    /// Calls one client address may have open at once (streams included).
    #[arg(long, env = "GATEWAY_MAX_CALLS_PER_CLIENT", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_calls_per_client: u64,

    /// Deadline of a unary call that sets none or a longer one, in seconds.
    #[arg(long, env = "GATEWAY_CALL_DEADLINE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub call_deadline_seconds: u64,

    /// Deadline of a call that moves file data: `PutFile` and `UploadChunk` (up to
    /// 8 MiB on a slow link) and `CompleteUpload` (S3 assembling a large file), in seconds.
    #[arg(long, env = "GATEWAY_UPLOAD_CALL_DEADLINE_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_call_deadline_seconds: u64,

    /// Open connections the gateway accepts at once (clamped to the open-file limit).
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Open connections one client address may hold (trusted proxies are exempt).
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_address: u64,

    /// Seconds a new connection has to send its first request (any protocol).
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_seconds: u64,

    /// Seconds a connection with no call in flight stays open.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_seconds: u64,
}

impl Config {
    /// Settings with every default, listening on a free loopback port (tests, launcher).
    pub fn for_upstreams(auth_service_url: String, storage_service_url: String) -> Self {
        use clap::Parser;
        let mut config = Self::parse_from(["gateway"]);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.auth_service_url = auth_service_url;
        config.storage_service_url = storage_service_url;
        config
    }

    pub fn upstream_connect_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_connect_timeout_seconds)
    }

    pub fn upstream_health_interval(&self) -> Duration {
        Duration::from_secs(self.upstream_health_interval_seconds)
    }

    pub fn upstream_resolve_interval(&self) -> Duration {
        Duration::from_secs(self.upstream_resolve_interval_seconds)
    }

    pub fn trusted_proxies(&self) -> TrustedProxies {
        TrustedProxies::new(self.trusted_proxies.iter().flatten().copied().collect())
    }

    pub fn call_deadline(&self) -> Duration {
        Duration::from_secs(self.call_deadline_seconds)
    }

    pub fn upload_call_deadline(&self) -> Duration {
        Duration::from_secs(self.upload_call_deadline_seconds)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_seconds)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }
}

/// A CIDR (`10.0.0.0/8`) or a single address; an empty item (the empty default) is none.
fn parse_cidr(text: &str) -> Result<Option<IpNet>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(Some)
        .map_err(|_| format!("{text:?} is not a CIDR like 10.0.0.0/8 or an IP address"))
}
