//! `strongbox-s3-server`: the suites' S3 server (`strongbox_tests::s3::serve`, s3s-fs)
//! as a process of its own, standing in for MinIO where MinIO's image cannot be pulled
//! (`scripts/containers.sh` runs it in the compose topology). Like MinIO it verifies
//! SigV4, presigned URLs and the host they were signed for included, so download URLs
//! are checked as a browser would meet them. It knows one access key, which plays
//! storage-service's own user; there is no admin account and no bucket policy.
//!
//! ```text
//! S3_ACCESS_KEY=… S3_SECRET_KEY=… strongbox-s3-server serve --root /data
//! strongbox-s3-server healthcheck                       # the container's own check
//! strongbox-s3-server healthcheck --endpoint http://minio:9000 --wait-seconds 60
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

/// An S3 server over a directory, for containers where MinIO cannot be had.
#[derive(Debug, Parser)]
#[command(name = "strongbox-s3-server")]
struct Args {
    /// Where the server listens; `healthcheck` checks this address unless given --endpoint
    #[arg(long, env = "S3_LISTEN", default_value = "0.0.0.0:9000", global = true)]
    listen: SocketAddr,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve S3 until SIGINT or SIGTERM
    Serve {
        /// The directory holding the buckets, one folder each (created if missing)
        #[arg(long, env = "S3_ROOT", default_value = "/data")]
        root: PathBuf,
        /// The one access key requests must be signed with
        #[arg(long, env = "S3_ACCESS_KEY", hide_env_values = true)]
        access_key: String,
        /// Its secret
        #[arg(long, env = "S3_SECRET_KEY", hide_env_values = true)]
        secret_key: String,
    },
    /// Exit 0 once an S3 server answers HTTP, else 1 (containers have no curl)
    Healthcheck {
        /// The server to check [default: the --listen address on this host]
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        /// Keep asking this long before giving up (a one-shot service that waits for S3)
        #[arg(long, default_value_t = 0)]
        wait_seconds: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Serve {
            root,
            access_key,
            secret_key,
        } => serve(args.listen, root, access_key, secret_key).await,
        Command::Healthcheck {
            endpoint,
            wait_seconds,
        } => {
            let endpoint = endpoint.unwrap_or_else(|| local_url(args.listen));
            healthcheck(&endpoint, Duration::from_secs(wait_seconds)).await
        }
    }
}

async fn serve(
    listen: SocketAddr,
    root: PathBuf,
    access_key: String,
    secret_key: String,
) -> ExitCode {
    let served = async {
        std::fs::create_dir_all(&root)
            .map_err(|err| format!("cannot create {}: {err}", root.display()))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|err| format!("cannot listen on {listen}: {err}"))?;
        eprintln!("serving S3 over {} on {listen}", root.display());
        // As PID 1 in a container the process has no default SIGTERM action: without
        // this, `podman stop` waits its whole timeout and then kills.
        strongbox_tests::s3::serve(
            listener,
            &root,
            access_key,
            secret_key,
            strongbox_common::shutdown::signal(),
        )
        .await
    };
    match served.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Any HTTP answer counts, as with MinIO's unauthenticated liveness endpoint: the server
/// is up and speaking HTTP. Whether it accepts storage-service's key is proven by
/// storage-service itself, which creates its bucket at start.
async fn healthcheck(endpoint: &str, wait: Duration) -> ExitCode {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            eprintln!("unhealthy: {err}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = Instant::now() + wait;
    loop {
        match client.get(endpoint).send().await {
            Ok(response) => {
                println!("SERVING ({endpoint} answered {})", response.status());
                return ExitCode::SUCCESS;
            }
            Err(err) if Instant::now() >= deadline => {
                eprintln!("unhealthy: {endpoint}: {err}");
                return ExitCode::FAILURE;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The URL of a server listening on `listen` from this host (a wildcard means here).
fn local_url(mut listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        listen.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{listen}")
}
