//! The gRPC bootstrap every service shares: reflection (v1 and v1alpha, since grpcurl 1.8
//! only speaks v1alpha), `grpc.health.v1`, a tracing span per call, and graceful shutdown.
//!
//! A service builds its [`Routes`] on top of [`base_routes`] and hands them to [`serve`].
//! The gateway instead turns the same routes into an axum router to share its port.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;

use crate::telemetry::CallTrace;

/// HTTP/2 flow control of every server here (the services and the gateway).
///
/// An upload that waits for memory in storage-service stops reading, and what its client
/// already sent stays in HTTP/2 buffers, up to its stream window. The connection window
/// is all streams' windows together, so streams that wait can never use it up and
/// starve the streams that hold memory and need the rest of their bytes to free it.
/// (With a connection window smaller than that, uploads sharing one connection —
/// everything the gateway forwards does — can deadlock.) Unread bytes per connection
/// stay bounded by the streams open on it, one stream window each.
pub mod flow {
    /// Per stream: 1 MiB per round trip, ~1 GiB/s at 1 ms.
    pub const STREAM_WINDOW: u32 = 1024 * 1024;
    pub const MAX_CONCURRENT_STREAMS: u32 = 128;
    pub const CONNECTION_WINDOW: u32 = STREAM_WINDOW * MAX_CONCURRENT_STREAMS;
    /// Frames of up to 1 MiB instead of 16 KiB: fewer frames per multi-MiB message.
    pub const MAX_FRAME: u32 = 1024 * 1024;
}

/// Metadata key carrying a request id across services.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Metadata key carrying the address of the client a call came from, as the gateway
/// saw it (the socket's peer, or the forwarded address from a trusted proxy). The
/// gateway always overwrites it, so a client cannot choose its own; services behind
/// the gateway use it to key per-client limits (failed logins), and fall back to
/// their own peer address when it is absent.
pub const CLIENT_ADDRESS_HEADER: &str = "x-strongbox-client-address";

/// Routes with health and reflection already mounted, plus the health reporter a
/// service uses to announce its own services as SERVING.
pub fn base_routes() -> (Routes, HealthReporter) {
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(strongbox_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the compiled-in descriptor set is valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(strongbox_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the compiled-in descriptor set is valid");
    let routes = Routes::default()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    (routes, health)
}

/// The span every call runs in (tonic's `trace_fn`).
pub fn call_span(request: &http::Request<()>) -> tracing::Span {
    span_for(request.uri().path(), request.headers()).0
}

/// A span naming the call's path, request id and trace id (continuing the caller's
/// trace, see [`CallTrace`]), with room for the user id once it is known. Never
/// metadata values: they carry bearer tokens.
pub fn span_for(path: &str, headers: &http::HeaderMap) -> (tracing::Span, CallTrace) {
    let request_id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!(
        "call",
        method = %path,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        user_id = tracing::field::Empty,
    );
    let trace = CallTrace::begin(&span, headers);
    (span, trace)
}

/// Serves `routes` on `listener` (over TLS with `tls`) until `shutdown` resolves, then
/// lets in-flight calls finish.
pub async fn serve(
    listener: TcpListener,
    component: &'static str,
    routes: Routes,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // `Server::tcp_nodelay` only reaches sockets tonic accepts itself; on an incoming
    // stream it is a no-op. Without TCP_NODELAY a small response (a unary reply, a
    // trailer) can sit in Nagle's buffer until the peer's delayed ACK, 40 ms on Linux.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    server
        .layer(crate::metrics::CallMetricsLayer::new(component))
        .trace_fn(call_span)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .initial_stream_window_size(flow::STREAM_WINDOW)
        .initial_connection_window_size(flow::CONNECTION_WINDOW)
        .max_concurrent_streams(flow::MAX_CONCURRENT_STREAMS)
        .max_frame_size(flow::MAX_FRAME)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Connections the kernel may hold completed but not yet accepted. Beyond the backlog
/// it drops handshakes, and a client that sent nothing yet believes it is connected to a
/// socket no server ever sees (so no timeout of ours can close it). 4,096 is Linux's
/// default ceiling (`net.core.somaxconn`); a burst of connections must fit in it.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listen address, with an error that names it.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, BindError> {
    let error = |source| BindError { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(error)?;
    // As std's and tokio's own `bind` do: a restarted service can take its port back
    // while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(addr).map_err(error)?;
    socket.listen(LISTEN_BACKLOG).map_err(error)
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    addr: std::net::SocketAddr,
    source: std::io::Error,
}

/// Logs a fatal startup or serving error and turns it into a failing exit code.
pub fn exit_with(err: &dyn std::fmt::Display) -> std::process::ExitCode {
    tracing::error!("{err}");
    eprintln!("error: {err}");
    std::process::ExitCode::FAILURE
}

/// The `healthcheck` subcommand: checks the service listening on `listen` (a wildcard
/// address means this host) and turns its health into an exit code.
pub async fn healthcheck(listen: std::net::SocketAddr) -> std::process::ExitCode {
    report_health(check_serving(listen).await)
}

/// A health check's result as the `healthcheck` subcommand's output and exit code.
pub fn report_health(checked: Result<(), String>) -> std::process::ExitCode {
    match checked {
        Ok(()) => {
            println!("SERVING");
            std::process::ExitCode::SUCCESS
        }
        Err(unhealthy) => {
            eprintln!("unhealthy: {unhealthy}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where to reach a server listening on `listen` from this host (a wildcard address
/// means loopback).
pub fn local_target(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut target = listen;
    if target.ip().is_unspecified() {
        target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    target
}

/// One `grpc.health.v1` check of the server listening on `listen` (a wildcard address
/// means this host), answered within 5 s: `Ok` if it is SERVING, else what it said
/// instead.
pub async fn check_serving(listen: std::net::SocketAddr) -> Result<(), String> {
    let target = local_target(listen);
    let channel = async move {
        tonic::transport::Endpoint::from_shared(format!("http://{target}"))?
            .connect()
            .await
    };
    check_serving_with(channel, target).await
}

/// [`check_serving`] over a channel that `connect` makes (plain or TLS).
pub async fn check_serving_with(
    connect: impl Future<Output = Result<tonic::transport::Channel, tonic::transport::Error>>,
    target: std::net::SocketAddr,
) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let check = async {
        let channel = connect.await?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(response.into_inner().status())
    };
    match tokio::time::timeout(Duration::from_secs(5), check).await {
        Ok(Ok(ServingStatus::Serving)) => Ok(()),
        Ok(Ok(status)) => Err(status.as_str_name().to_owned()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer from {target} within 5 s")),
    }
}

/// The whole `main` of a service binary, after its configuration is parsed: answer
/// `healthcheck` (over TLS, trusting `tls_cert`, when the service serves it), or set up
/// telemetry (as `component`), bind `listen` and run the service until SIGINT/SIGTERM.
/// `serve` is the service's `run`.
pub async fn run_binary<F, Fut, E>(
    component: &'static str,
    listen: std::net::SocketAddr,
    tls_cert: Option<&std::path::Path>,
    command: Option<crate::config::Command>,
    telemetry: &crate::telemetry::TelemetryArgs,
    metrics: Option<std::net::SocketAddr>,
    serve: F,
) -> std::process::ExitCode
where
    F: FnOnce(TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if command == Some(crate::config::Command::Healthcheck) {
        return match tls_cert {
            Some(cert) => report_health(crate::tls::check_serving_pinned(listen, cert).await),
            None => healthcheck(listen).await,
        };
    }
    let telemetry = match crate::telemetry::init(telemetry, component) {
        Ok(telemetry) => telemetry,
        Err(err) => return exit_with(&err),
    };
    let exit = async {
        let listener = bind(listen).await.map_err(|err| exit_with(&err))?;
        let _metrics = crate::metrics::listen(metrics)
            .await
            .map_err(|err| exit_with(&err))?;
        serve(listener, Box::pin(crate::shutdown::signal()))
            .await
            .map_err(|err| exit_with(&err))
    }
    .await;
    telemetry.shutdown().await;
    match exit {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(code) => code,
    }
}
