//! Builds auth-service from its configuration and serves it until shutdown.

use std::future::Future;
use std::time::Duration;

use strongbox_common::server;
use strongbox_proto::auth::v1::auth_service_server::AuthServiceServer;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::error::AuthError;
use crate::passwords::PasswordHasher;
use crate::refresh_tokens::SuccessorKey;
use crate::service::{AuthApi, LoginThrottle};
use crate::signing::{TokenSigner, unix_now};
use crate::store::Store;

/// Runs auth-service on `listener` until `shutdown` resolves; in-flight calls finish first.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AuthError> {
    let tls = config
        .served_certificate()
        .map(|certificate| certificate.server_config())
        .transpose()
        .map_err(|err| AuthError::Internal(err.to_string()))?;
    let api = build(&config).await?;
    let store = api.store.clone();
    let purge = tokio::spawn(purge_periodically(
        store.clone(),
        Duration::from_secs(config.token_purge_interval_seconds),
        config.login_failure_window(),
    ));

    let (routes, health) = server::base_routes();
    let routes = routes.add_service(AuthServiceServer::new(api));
    health.set_serving::<AuthServiceServer<AuthApi>>().await;
    tracing::info!(
        addr = %listener.local_addr().map_err(io)?,
        tls = tls.is_some(),
        "auth-service listening"
    );
    let served = server::serve(listener, "auth-service", routes, tls, shutdown).await;

    health.set_not_serving::<AuthServiceServer<AuthApi>>().await;
    purge.abort();
    store.close().await;
    served.map_err(|err| AuthError::Internal(format!("gRPC server failed: {err}")))
}

async fn build(config: &Config) -> Result<AuthApi, AuthError> {
    std::fs::create_dir_all(&config.data.data_dir).map_err(|err| {
        AuthError::Internal(format!(
            "cannot create DATA_DIR {}: {err}",
            config.data.data_dir.display()
        ))
    })?;
    let store = Store::connect(&config.database_url()).await?;
    let ttl = config.access_token_ttl();
    let signer = match (&config.jwt_secret, &config.jwt_private_key) {
        (Some(secret), _) => TokenSigner::hs256(secret, ttl)?,
        (None, Some(key)) => {
            TokenSigner::ed25519_from_environment(key, config.jwt_published_keys.as_ref(), ttl)?
        }
        (None, None) => TokenSigner::ed25519_from_file(&config.jwt_private_key_path(), ttl)?,
    };
    let successor_key = match &config.refresh_token_key {
        Some(key) => SuccessorKey::from_setting(key)?,
        None => SuccessorKey::read_or_create(&config.refresh_token_key_path())?,
    };
    let hasher = PasswordHasher::new(config.bcrypt_rounds, config.password_hash_queue).await?;
    Ok(AuthApi {
        verifier: signer.verifier(),
        store,
        hasher,
        signer,
        refresh_ttl: config.refresh_token_ttl(),
        throttle: LoginThrottle {
            max_failures: config.login_max_failures,
            max_failures_per_email: config.login_max_failures_per_email,
            window: config.login_failure_window(),
        },
        successor_key,
        refresh_reuse_interval: config.refresh_reuse_interval(),
    })
}

/// Deletes expired refresh tokens and stale failed logins every `interval`.
async fn purge_periodically(store: Store, interval: Duration, failure_window: Duration) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        let window = i64::try_from(failure_window.as_secs()).unwrap_or(i64::MAX);
        match store.purge(now, now.saturating_sub(window)).await {
            Ok((tokens, failures)) => tracing::debug!(tokens, failures, "purged expired rows"),
            Err(err) => tracing::warn!(%err, "purging expired rows failed; retrying next interval"),
        }
    }
}

fn io(err: std::io::Error) -> AuthError {
    AuthError::Internal(err.to_string())
}
