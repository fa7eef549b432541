//! The gateway's accept loop: HTTP/1.1 and HTTP/2 on one port, with the connection
//! hygiene a public server needs.
//!
//! - At most `GATEWAY_MAX_CONNECTIONS` connections, and `GATEWAY_MAX_CONNECTIONS_PER_ADDRESS`
//!   from one client address (trusted proxies are exempt: they carry many clients).
//!   A connection over either cap is closed at once, before anything is read.
//! - A connection must send its first request within `GATEWAY_HEADER_READ_TIMEOUT_SECONDS`
//!   (whatever the protocol, and before the protocol is even known), and a connection
//!   with no call in flight is closed after `GATEWAY_IDLE_TIMEOUT_SECONDS`. A watchdog
//!   per connection enforces both; HTTP/1.1 also has hyper's own header-read timeout
//!   for every request after the first. Idle sockets therefore cost nothing for long,
//!   and the accept loop never waits on any one of them.
//! - Not `axum::serve`: the HTTP/2 windows must be the services' ([`flow`]), since the
//!   gateway forwards uploads that may wait for memory.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use strongbox_common::server::flow;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::client_address::TrustedProxies;
use crate::limits::{Held, Holdings};
use crate::tls::FrontDoorTls;

/// How long a connection being closed for idleness (or at shutdown, once its calls are
/// done) may take to say goodbye before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The socket peer of the connection a request came on (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddress(pub SocketAddr);

/// Connection caps and timeouts.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_per_address: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Exempt from the per-address cap.
    pub trusted_proxies: TrustedProxies,
}

/// Serves `app` until `shutdown` resolves, then lets open calls finish; over TLS when
/// `tls` is given.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<FrontDoorTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .header_read_timeout(limits.header_read_timeout)
        .timer(TokioTimer::new());
    builder
        .http2()
        .initial_stream_window_size(flow::STREAM_WINDOW)
        .initial_connection_window_size(flow::CONNECTION_WINDOW)
        .max_concurrent_streams(flow::MAX_CONCURRENT_STREAMS)
        .max_frame_size(flow::MAX_FRAME)
        .keep_alive_interval(Duration::from_secs(30))
        .timer(TokioTimer::new());
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Holdings::new(limits.max_per_address);
    let (stopping, stop) = watch::channel(false);
    let connections = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(permits) = admit(&total, &per_address, &limits, peer) else {
            // Dropping the socket closes it: the cheapest answer there is.
            continue;
        };
        let connection = Connection {
            activity: Arc::new(Activity::new()),
            limits: limits.clone(),
            peer,
            _permits: permits,
        };
        connections.spawn(connection.run(
            builder.clone(),
            socket,
            tls.clone(),
            app.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    stopping.send_replace(true);
    connections.close();
    connections.wait().await;
}

/// Resolves once the server is stopping. (Not `wait_for` in `select!` itself: its guard
/// is not `Send`.)
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// What an admitted connection holds until it closes.
struct Permits {
    _total: OwnedSemaphorePermit,
    _per_address: Option<Held<IpAddr>>,
}

fn admit(
    total: &Arc<Semaphore>,
    per_address: &Holdings<IpAddr>,
    limits: &ConnectionLimits,
    peer: SocketAddr,
) -> Option<Permits> {
    let Ok(total) = total.clone().try_acquire_owned() else {
        tracing::warn!(%peer, "refused a connection: GATEWAY_MAX_CONNECTIONS reached");
        crate::limits::refused("connections");
        return None;
    };
    let address = limits
        .trusted_proxies
        .client_of(peer, &http::HeaderMap::new());
    let per_address = if limits.trusted_proxies.contains(peer.ip()) {
        None
    } else {
        match per_address.try_hold(&address.limit_key()) {
            Some(held) => Some(held),
            None => {
                tracing::debug!(%peer, "refused a connection: GATEWAY_MAX_CONNECTIONS_PER_ADDRESS reached");
                crate::limits::refused("connections from one address");
                return None;
            }
        }
    };
    Some(Permits {
        _total: total,
        _per_address: per_address,
    })
}

struct Connection {
    activity: Arc<Activity>,
    limits: ConnectionLimits,
    peer: SocketAddr,
    _permits: Permits,
}

impl Connection {
    async fn run(
        self,
        builder: auto::Builder<TokioExecutor>,
        socket: TcpStream,
        tls: Option<Arc<FrontDoorTls>>,
        app: Router,
        mut stop: watch::Receiver<bool>,
    ) {
        // Small replies must not wait in Nagle's buffer for the peer's delayed ACK (40 ms).
        if let Err(err) = socket.set_nodelay(true) {
            tracing::warn!(%err, "cannot set TCP_NODELAY on a connection");
        }
        let Some(tls) = tls else {
            return self.serve(builder, socket, app, stop).await;
        };
        // The handshake is part of the first request's time: a client that connects and
        // says nothing is closed as soon with TLS as without.
        let handshake = tokio::time::timeout(self.limits.header_read_timeout, tls.accept(socket));
        let accepted = tokio::select! {
            accepted = handshake => accepted,
            () = stopped(&mut stop) => return,
        };
        match accepted {
            Ok(Ok(stream)) => self.serve(builder, stream, app, stop).await,
            Ok(Err(err)) => {
                tracing::debug!(peer = %self.peer, %err, "TLS handshake failed");
                metrics::counter!("strongbox_tls_handshake_failures_total").increment(1);
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "no TLS handshake within the header-read timeout");
                metrics::counter!("strongbox_tls_handshake_failures_total").increment(1);
            }
        }
    }

    async fn serve<S>(
        self,
        builder: auto::Builder<TokioExecutor>,
        socket: S,
        app: Router,
        mut stop: watch::Receiver<bool>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = self.service(app);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(socket), TowerToHyperService::new(service))
            .into_owned();
        let mut connection = std::pin::pin!(connection);
        loop {
            let quiet_until = self.activity.quiet_deadline(&self.limits);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%err, "connection ended with an error");
                    }
                    return;
                }
                () = stopped(&mut stop) => {
                    // Open calls finish; the connection then closes.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                    return;
                }
                () = tokio::time::sleep_until(quiet_until) => {
                    if self.activity.quiet_deadline(&self.limits) > Instant::now() {
                        continue;
                    }
                    tracing::debug!(peer = %self.peer, "closing an idle connection");
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
                    return;
                }
            }
        }
    }

    /// The router, with the peer's address attached to each request and each call
    /// counted as activity until its response has been sent.
    fn service(
        &self,
        app: Router,
    ) -> impl tower::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        let activity = self.activity.clone();
        let peer = self.peer;
        tower::service_fn(move |mut request: Request<Incoming>| {
            let app = app.clone();
            let call = activity.begin_call();
            request.extensions_mut().insert(PeerAddress(peer));
            async move {
                let response = app.oneshot(request).await?;
                Ok(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _open = &call;
                        frame
                    }))
                }))
            }
        })
    }
}

/// A connection's calls: how many are open, and when the last one ended (or when the
/// connection was accepted, before any).
struct Activity {
    open_calls: AtomicUsize,
    served_any: AtomicBool,
    quiet_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            open_calls: AtomicUsize::new(0),
            served_any: AtomicBool::new(false),
            quiet_since: Mutex::new(Instant::now()),
        }
    }

    fn begin_call(self: &Arc<Self>) -> OpenCall {
        self.open_calls.fetch_add(1, Ordering::SeqCst);
        self.served_any.store(true, Ordering::SeqCst);
        OpenCall(self.clone())
    }

    /// When the connection may be closed for having nothing to do: the header-read
    /// timeout after accepting, the idle timeout after a call; while calls are open, a
    /// full idle timeout from now (checked again then).
    fn quiet_deadline(&self, limits: &ConnectionLimits) -> Instant {
        if self.open_calls.load(Ordering::SeqCst) > 0 {
            return Instant::now() + limits.idle_timeout;
        }
        let since = *self
            .quiet_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let timeout = if self.served_any.load(Ordering::SeqCst) {
            limits.idle_timeout
        } else {
            limits.header_read_timeout
        };
        since + timeout
    }
}

/// One call counted as activity until its response is done.
struct OpenCall(Arc<Activity>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        *self
            .0
            .quiet_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.0.open_calls.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Raises this process's open-file limit to its hard limit, so the connection cap and
/// not the default soft limit (often 1,024) decides how many clients are served.
/// Returns the limit now in force.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}
