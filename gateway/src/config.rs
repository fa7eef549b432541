//! gateway settings: one `clap` struct, so `--help`, environment variables and defaults
//! come from the same declaration.

use std::net::SocketAddr;
use std::time::Duration;

use strongbox_common::config::Command;

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

    /// auth-service's gRPC address.
    #[arg(
        long,
        env = "AUTH_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub auth_service_url: String,

    /// storage-service's gRPC address.
    #[arg(
        long,
        env = "STORAGE_SERVICE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub storage_service_url: String,

    /// Shared HS256 secret; when set, tokens are verified with it instead of auth-service's keys.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

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

    /// How often upstream health is checked for the gateway's own health service, in seconds.
    #[arg(long, env = "UPSTREAM_HEALTH_INTERVAL_SECONDS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_health_interval_seconds: u64,
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
}
