//! Builds the gateway's one router and serves it until shutdown.
//!
//! ```text
//! /                          the upload page (and /app.js, /app.css)
//! /files/<key>               local-backend download links
//! /metrics                   Prometheus metrics of this process
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
use http::{HeaderName, HeaderValue, Method, header};
use strongbox_common::jwt::Verifier;
use strongbox_common::metrics::{self, CallMetricsLayer};
use strongbox_common::server::{self, REQUEST_ID_HEADER};
use strongbox_common::telemetry;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_web::GrpcWebLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::admission::Admission;
use crate::config::Config;
use crate::connections::{self, ConnectionLimits};
use crate::health::watch_upstreams;
use crate::proxy::{self, Gateway};
use crate::tls::FrontDoorTls;
use crate::upstream::{BadUpstreamUrl, Upstream};
use crate::{downloads, page};
use strongbox_common::tls::ServiceCa;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Upstream(#[from] BadUpstreamUrl),
    #[error("CORS_ALLOWED_ORIGINS has an invalid origin: {0}")]
    CorsOrigin(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    ServiceTls(#[from] strongbox_common::tls::TlsError),
    #[error("serving failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs the gateway on `listener` until `shutdown` resolves; open calls finish first.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let connections = usize::try_from(config.upstream_connections).unwrap_or(1);
    let ca = ServiceCa::load(config.service_ca_file.as_deref())?;
    let upstream = |name, urls: &str| {
        Upstream::new(
            name,
            urls,
            ca.as_ref(),
            config.upstream_connect_timeout(),
            connections,
            config.upstream_health_interval(),
        )
    };
    let auth = upstream("auth-service", &config.auth_service_url)?;
    let storage = upstream("storage-service", &config.storage_service_url)?;
    // Names resolved before the first call, so a deployment by name starts with its
    // replicas known; one that does not resolve yet is tried again by the watcher.
    tokio::join!(auth.discover(), storage.discover());
    let verifier = match &config.jwt_secret {
        Some(secret) => Verifier::shared_secret(secret.as_bytes()),
        None => Verifier::from_auth_service(auth.clone()),
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
        config.upstream_resolve_interval(),
    ));
    let gateway = Arc::new(Gateway {
        auth,
        storage,
        verifier,
        admission: Admission::new(&config),
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
        // Inside grpc-web's translation, so it sees every call's status in real trailers.
        .layer(CallMetricsLayer::new("gateway"))
        .layer(GrpcWebLayer::new())
        .layer(cors(&config.cors_allowed_origins)?);
    let app = Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/app.css", get(page::stylesheet))
        .route("/files/{*key}", get(downloads::download))
        .route("/metrics", get(scrape))
        .with_state(gateway)
        .merge(grpc)
        .fallback(proxy::unknown_call)
        .layer(middleware::from_fn(in_span));

    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(FrontDoorTls::load(cert, key)?)),
        _ => None,
    };
    let reloads = tls.as_ref().map(|tls| tls.watch());
    let limits = connection_limits(&config);
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = tls.is_some(),
        max_connections = limits.max_connections,
        "gateway listening"
    );
    connections::serve(listener, app, limits, tls, shutdown).await;
    watcher.abort();
    if let Some(reloads) = reloads {
        reloads.abort();
    }
    Ok(())
}

/// The connection caps, with the total clamped to what the open-file limit allows (each
/// connection is a descriptor; the rest are kept for upstreams, databases and files).
fn connection_limits(config: &Config) -> ConnectionLimits {
    const RESERVED_DESCRIPTORS: u64 = 256;
    let open_files = connections::raise_open_files_limit();
    let allowed = open_files.saturating_sub(RESERVED_DESCRIPTORS).max(1);
    if config.max_connections > allowed {
        tracing::warn!(
            configured = config.max_connections,
            open_files,
            "GATEWAY_MAX_CONNECTIONS is above what the open-file limit allows; using {allowed}"
        );
    }
    let to_usize = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
    ConnectionLimits {
        max_connections: to_usize(config.max_connections.min(allowed)),
        max_per_address: to_usize(config.max_connections_per_address),
        header_read_timeout: config.header_read_timeout(),
        idle_timeout: config.idle_timeout(),
        trusted_proxies: config.trusted_proxies(),
    }
}

/// CORS for grpc-web from other origins; with no origins configured, only the page's
/// own origin can call (browsers enforce it). `*` allows any origin, and then never
/// with credentials: the page's calls carry their token in a header, not a cookie.
fn cors(origins: &[String]) -> Result<CorsLayer, GatewayError> {
    let origins: Vec<&str> = origins
        .iter()
        .map(|origin| origin.trim())
        .filter(|origin| !origin.is_empty())
        .collect();
    let allow_origin = if origins.contains(&"*") {
        if origins.len() > 1 {
            return Err(GatewayError::CorsOrigin(
                "* cannot be combined with other origins".to_owned(),
            ));
        }
        AllowOrigin::any()
    } else {
        let origins = origins
            .into_iter()
            .map(|origin| {
                HeaderValue::from_str(origin)
                    .map_err(|_| GatewayError::CorsOrigin(origin.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(origins)
    };
    let header = HeaderName::from_static;
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            http::header::CONTENT_TYPE,
            http::header::AUTHORIZATION,
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
            header(REQUEST_ID_HEADER),
            header(telemetry::TRACEPARENT),
            header("tracestate"),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
        ]))
}

/// `GET /metrics`: every metric of this process (in the all-in-one launch, of all three
/// services), for Prometheus.
async fn scrape() -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(),
    )
}

/// A span per request, like the services' per-call spans. The request id and the trace
/// context it carries on to a service are set here, so the gateway's lines and the
/// service's name the same call.
async fn in_span(mut request: Request, next: Next) -> Response {
    let headers = request.headers_mut();
    if !headers.contains_key(REQUEST_ID_HEADER)
        && let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
    {
        headers.insert(REQUEST_ID_HEADER, id);
    }
    let (span, trace) = server::span_for(request.uri().path(), request.headers());
    trace.inject(request.headers_mut());
    next.run(request).instrument(span).await
}
