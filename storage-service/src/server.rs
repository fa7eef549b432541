//! Builds storage-service from its configuration and serves it until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use strongbox_common::jwt::{KeyChannels, Verifier};
use strongbox_common::tls::{self, ServiceCa};
use strongbox_common::{secrets, server};
use strongbox_proto::storage::v1::storage_service_server::StorageServiceServer;
use tokio::net::TcpListener;

use crate::backend::Backend;
use crate::config::Config;
use crate::error::StorageError;
use crate::files::{Storage, now_ms};
use crate::guard::{MinRate, UploadGuard};
use crate::index::Index;
use crate::memory::UploadMemory;
use crate::multipart::Multipart;
use crate::policy::UploadPolicy;
use crate::service::StorageApi;
use crate::sessions::{ChunkStore, S3Parts, Sessions, Staging};
use crate::usage::LEASE_RENEWAL;

/// Room for a message's framing around its largest chunk.
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// Runs storage-service on `listener` until `shutdown` resolves. In-flight calls finish
/// first; an upload cut off by shutdown is aborted, never half-stored.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StorageError> {
    let addr = listener
        .local_addr()
        .map_err(|err| StorageError::Internal(err.to_string()))?;
    let storage = Arc::new(build(&config, &Index::holder(&host_name(), addr)).await?);
    let sweeper = tokio::spawn(clean_up(
        storage.clone(),
        sweep_interval(config.upload_session_ttl()),
    ));
    let leases = tokio::spawn(keep_leases(storage.clone()));
    let verifier = verifier(&config)?;
    let api = StorageApi {
        storage: storage.clone(),
        verifier: verifier.clone(),
    };
    let max_message = config.max_chunk_bytes as usize + MESSAGE_OVERHEAD;
    let service = StorageServiceServer::new(api)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

    let service = UploadGuard::new(
        service,
        storage.upload_memory.clone(),
        verifier,
        config.max_chunk_bytes as usize,
        config.upload_idle_timeout(),
        MinRate {
            bytes_per_second: config.min_upload_bytes_per_second,
            window: config.upload_rate_window(),
        },
    );

    let (routes, health) = server::base_routes();
    let routes = routes.add_service(service);
    health
        .set_serving::<StorageServiceServer<StorageApi>>()
        .await;
    let tls = config
        .served_certificate()
        .map(|certificate| certificate.server_config())
        .transpose()
        .map_err(|err| StorageError::Internal(err.to_string()))?;
    tracing::info!(
        %addr,
        tls = tls.is_some(),
        backend = %storage.backend.description,
        "storage-service listening"
    );
    let served = server::serve(listener, "storage-service", routes, tls, shutdown).await;

    health
        .set_not_serving::<StorageServiceServer<StorageApi>>()
        .await;
    sweeper.abort();
    leases.abort();
    storage.index.close().await;
    served.map_err(|err| StorageError::Internal(format!("gRPC server failed: {err}")))
}

/// This machine's name (a container's own in compose), which tells replicas on
/// different machines apart when they listen on the same address.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

async fn build(config: &Config, holder: &str) -> Result<Storage, StorageError> {
    std::fs::create_dir_all(&config.data.data_dir).map_err(|err| {
        StorageError::Internal(format!(
            "cannot create DATA_DIR {}: {err}",
            config.data.data_dir.display()
        ))
    })?;
    let link_secret = match &config.download_url_secret {
        Some(secret) => secret.expose().to_owned(),
        None => secrets::read_or_create(&config.download_secret_path(), || {
            Ok(hex::encode(secrets::random_bytes::<32>()?))
        })
        .map_err(|err| StorageError::Internal(format!("download link key: {err}")))?,
    };
    let backend = Backend::connect(config, link_secret.as_bytes()).await?;
    let index = Index::open(&config.database_url(), holder).await?;
    let multipart = backend
        .s3
        .clone()
        .map(|s3| Multipart::new(s3, index.clone()));
    let left_behind = index.take_over_from_predecessor().await?;
    if left_behind > 0 {
        tracing::info!(
            left_behind,
            "multipart uploads of a previous run will be aborted"
        );
    }
    let chunks = match &multipart {
        Some(multipart) => ChunkStore::S3(S3Parts::new(
            multipart.clone(),
            backend.reads.clone(),
            backend.object_options(),
        )),
        None => ChunkStore::Local(Staging::new(backend.store.clone())),
    };
    let policy = UploadPolicy::new(config.max_upload_bytes, &config.allowed_content_types);
    let sessions = Sessions::new(
        index.clone(),
        chunks,
        config.limits(),
        policy.max_bytes,
        config.max_chunk_bytes,
        config.upload_session_ttl(),
    );
    Ok(Storage {
        backend,
        index,
        multipart,
        upload_memory: UploadMemory::new(
            config.upload_memory_bytes,
            config.upload_memory_per_user_bytes(),
            config.upload_part_size.max(config.max_chunk_bytes),
            config.upload_memory_wait(),
        )?,
        policy,
        part_size: usize::try_from(config.upload_part_size)
            .map_err(|_| StorageError::Internal("UPLOAD_PART_SIZE is too large".into()))?,
        parts_in_flight: config.upload_parts_in_flight as usize,
        max_chunk_bytes: config.max_chunk_bytes,
        limits: config.limits(),
        sessions,
    })
}

/// Verifies with the shared secret if one is set, else with auth-service's published keys.
fn verifier(config: &Config) -> Result<Verifier, StorageError> {
    if let Some(secret) = &config.jwt_secret {
        return Ok(Verifier::shared_secret(secret.as_bytes()));
    }
    let ca = ServiceCa::load(config.service_ca_file.as_deref())
        .map_err(|err| StorageError::Internal(err.to_string()))?;
    let channels = config
        .auth_service_urls()
        .map(|url| {
            Ok(tls::service_endpoint(url, ca.as_ref())
                .map_err(|err| StorageError::Internal(format!("AUTH_SERVICE_URL: {err}")))?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .connect_lazy())
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    if channels.is_empty() {
        return Err(StorageError::Internal(
            "AUTH_SERVICE_URL names no URL: give auth-service's, or set JWT_SECRET".into(),
        ));
    }
    Ok(Verifier::from_auth_service(KeyChannels::new(channels)))
}

/// Often enough that an expired session (or an abandoned multipart upload) does not
/// linger much, rarely enough to cost nothing.
fn sweep_interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// The periodic cleanup: expired sessions, multipart uploads whose abort failed or
/// that a previous run left behind, and upload memory left idle since the last round.
async fn clean_up(storage: Arc<Storage>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        storage.upload_memory.trim();
        match storage.sessions.sweep_expired().await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "removed expired upload sessions"),
            Err(err) => {
                tracing::warn!(%err, "sweeping expired upload sessions failed; retrying next interval")
            }
        }
        if let Some(multipart) = &storage.multipart {
            match multipart.retry_abandoned().await {
                Ok((aborted, failed)) => {
                    if aborted > 0 {
                        tracing::info!(aborted, "aborted abandoned multipart uploads");
                    }
                    if let Some(err) = failed {
                        tracing::warn!(%err, "some abandoned multipart uploads could not be aborted; retrying next interval");
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "listing abandoned multipart uploads failed; retrying next interval")
                }
            }
        }
    }
}

/// Renews the leases of the uploads this process is receiving (`usage.rs`), and drops
/// those of processes that stopped renewing theirs.
async fn keep_leases(storage: Arc<Storage>) {
    let mut ticks = tokio::time::interval(LEASE_RENEWAL);
    loop {
        ticks.tick().await;
        if let Err(err) = storage.index.renew_leases().await {
            tracing::warn!(%err, "renewing the leases of uploads in progress failed; retrying");
        }
        // Sessions live in the database, not in a process: this is all replicas' count.
        if let Ok(open) = storage.index.open_sessions(now_ms()).await {
            metrics::gauge!("strongbox_upload_sessions_open").set(open as f64);
        }
        // A replica that died leaves its streams' multipart uploads: once its leases
        // lapse, whichever replica looks first hands them to the cleanup.
        match storage
            .index
            .abandon_dead_replicas_multiparts(now_ms())
            .await
        {
            Ok(0) => {}
            Ok(abandoned) => tracing::info!(
                abandoned,
                "multipart uploads of a replica that stopped will be aborted"
            ),
            Err(err) => {
                tracing::warn!(%err, "abandoning a stopped replica's uploads failed; retrying")
            }
        }
        match storage.index.sweep_expired_leases().await {
            Ok(0) => {}
            Ok(swept) => tracing::info!(swept, "dropped uploads in progress whose process stopped"),
            Err(err) => tracing::warn!(%err, "sweeping expired upload leases failed; retrying"),
        }
    }
}
