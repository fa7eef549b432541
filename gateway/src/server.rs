//! Builds the gateway's one router and serves it until shutdown.
//!
//! ```text
//! /                          the upload page (and /app.js, /app.css)
//! /files/<key>               local-backend download links
//! /auth.v1.AuthService/*     ┐ native gRPC and grpc-web (tonic-web translates grpc-web
//! /storage.v1.StorageService/* ┘ to gRPC, then the call is forwarded upstream)
//! /grpc.health.v1.Health/*   the gateway's own health (SERVING when upstreams are)
//! /grpc.reflection.*         reflection over both services
//! ```
//! grpc-web translation and CORS wrap the gRPC routes only: on the page's routes they
//! would turn plain HTTP/1.1 requests into errors.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use http::{HeaderName, HeaderValue, Method};
use strongbox_common::jwt::Verifier;
use strongbox_common::server::{self, REQUEST_ID_HEADER};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_web::GrpcWebLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::config::Config;
use crate::health::watch_upstreams;
use crate::proxy::{self, Gateway};
use crate::upstream::{BadUpstreamUrl, Upstream};
use crate::{downloads, page};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Upstream(#[from] BadUpstreamUrl),
    #[error("CORS_ALLOWED_ORIGINS has an invalid origin {0:?}")]
    CorsOrigin(String),
    #[error("serving failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs the gateway on `listener` until `shutdown` resolves; open calls finish first.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let auth = Upstream::new(
        "auth-service",
        &config.auth_service_url,
        config.upstream_connect_timeout(),
    )?;
    let storage = Upstream::new(
        "storage-service",
        &config.storage_service_url,
        config.upstream_connect_timeout(),
    )?;
    let verifier = match &config.jwt_secret {
        Some(secret) => Verifier::shared_secret(secret.as_bytes()),
        None => Verifier::from_auth_service(auth.channel.clone()),
    };
    let (grpc_routes, health) = server::base_routes();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let watcher = tokio::spawn(watch_upstreams(
        health,
        auth.clone(),
        storage.clone(),
        config.upstream_health_interval(),
    ));
    let gateway = Arc::new(Gateway {
        auth,
        storage,
        verifier,
    });

    let forwarded = Router::new()
        .route("/auth.v1.AuthService/{method}", post(proxy::auth_call))
        .route(
            "/storage.v1.StorageService/{method}",
            post(proxy::storage_call),
        )
        .with_state(gateway.clone());
    let grpc = grpc_routes
        .into_axum_router()
        .merge(forwarded)
        .layer(GrpcWebLayer::new())
        .layer(cors(&config.cors_allowed_origins)?);
    let app = Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/app.css", get(page::stylesheet))
        .route("/files/{*key}", get(downloads::download))
        .with_state(gateway)
        .merge(grpc)
        .fallback(proxy::unknown_call)
        .layer(middleware::from_fn(in_span));

    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    // Small replies must not wait in Nagle's buffer for the peer's delayed ACK (40 ms).
    let listener = listener.tap_io(|socket| {
        if let Err(err) = socket.set_nodelay(true) {
            tracing::warn!(%err, "cannot set TCP_NODELAY on a connection");
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    watcher.abort();
    Ok(served?)
}

/// CORS for grpc-web from other origins; with no origins configured, only the page's
/// own origin can call (browsers enforce it).
fn cors(origins: &[String]) -> Result<CorsLayer, GatewayError> {
    let origins = origins
        .iter()
        .map(|origin| origin.trim())
        .filter(|origin| !origin.is_empty())
        .map(|origin| {
            HeaderValue::from_str(origin).map_err(|_| GatewayError::CorsOrigin(origin.to_owned()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let header = HeaderName::from_static;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            http::header::CONTENT_TYPE,
            http::header::AUTHORIZATION,
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
            header(REQUEST_ID_HEADER),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
        ]))
}

/// A span per request, like the services' per-call spans.
async fn in_span(request: Request, next: Next) -> Response {
    let span = server::span_for(request.uri().path(), request.headers());
    next.run(request).instrument(span).await
}
