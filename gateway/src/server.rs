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
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use http::{HeaderName, HeaderValue, Method};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use strongbox_common::jwt::Verifier;
use strongbox_common::server::{self, REQUEST_ID_HEADER, flow};
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
    serve_http(listener, app, shutdown).await;
    watcher.abort();
    Ok(())
}

/// Serves `app` over HTTP/1.1 and HTTP/2 until `shutdown` resolves, then waits for open
/// connections to finish. Not `axum::serve`: the HTTP/2 windows must be the services'
/// ([`server::flow`]), since the gateway forwards uploads that may wait for memory.
async fn serve_http(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .initial_stream_window_size(flow::STREAM_WINDOW)
        .initial_connection_window_size(flow::CONNECTION_WINDOW)
        .max_concurrent_streams(flow::MAX_CONCURRENT_STREAMS)
        .max_frame_size(flow::MAX_FRAME)
        .keep_alive_interval(Duration::from_secs(30))
        .timer(TokioTimer::new());
    let connections = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small replies must not wait in Nagle's buffer for the peer's delayed ACK (40 ms).
        if let Err(err) = socket.set_nodelay(true) {
            tracing::warn!(%err, "cannot set TCP_NODELAY on a connection");
        }
        let connection = builder
            .serve_connection_with_upgrades(
                TokioIo::new(socket),
                TowerToHyperService::new(app.clone()),
            )
            .into_owned();
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
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
