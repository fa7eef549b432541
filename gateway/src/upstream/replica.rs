//! One replica of a service: one address its URL names, with the gateway's connections
//! to it and whether it is answering.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use strongbox_common::server::flow;
use strongbox_common::tls::{self, ServiceCa, TlsError};
use tonic::transport::Channel;

use super::discovery::Target;

/// The pool's HTTP/2 client (the connector passes h2c through untouched).
pub(super) type UpstreamClient = Client<HttpsConnector<HttpConnector<ThisReplica>>, Body>;

/// What every replica of one service is reached with.
pub(super) struct ReplicaSettings {
    pub connect_timeout: Duration,
    /// Pooled connections per replica.
    pub connections: usize,
    /// TLS for https:// targets: trusts only the service CA.
    pub tls: Option<rustls::ClientConfig>,
    pub ca: Option<ServiceCa>,
}

pub struct Replica {
    pub addr: SocketAddr,
    pub(super) target: Arc<Target>,
    pool: Box<[PooledConnection]>,
    /// The gateway's own calls (health checks, verification keys), never shared with
    /// client calls, so no client load can make the gateway think the replica is down.
    pub(super) control: Channel,
    /// Download links (`/files/…`), streamed by the gateway itself.
    pub(super) downloads: Channel,
    up: AtomicBool,
}

/// One HTTP/2 connection of the pool (a client with a pool of its own keeps exactly
/// one to the replica), and how many calls it carries.
pub(super) struct PooledConnection {
    pub client: UpstreamClient,
    pub in_flight: Arc<AtomicUsize>,
}

impl Replica {
    /// A replica taken to be up until a check or a call says otherwise: a new address
    /// is as likely to answer as the ones already known, and a call that cannot reach
    /// it is retried elsewhere.
    pub(super) fn new(
        target: Arc<Target>,
        addr: SocketAddr,
        settings: &ReplicaSettings,
    ) -> Result<Self, TlsError> {
        let pool = (0..settings.connections.max(1))
            .map(|_| PooledConnection {
                client: http2_client(addr, settings),
                in_flight: Arc::new(AtomicUsize::new(0)),
            })
            .collect();
        let endpoint = tls::replica_endpoint(&target.url, addr, settings.ca.as_ref())?
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true);
        Ok(Self {
            addr,
            target,
            pool,
            control: endpoint.connect_lazy(),
            downloads: endpoint.connect_lazy(),
            up: AtomicBool::new(true),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records whether the replica answers; true if that changed.
    pub(super) fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed) != up
    }

    /// Calls in flight on every pooled connection.
    pub(super) fn in_flight(&self) -> usize {
        self.pool
            .iter()
            .map(|connection| connection.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    /// The pooled connection with the fewest calls, unless all are at the services'
    /// stream limit (a new stream would wait for a slot, behind calls that may never end).
    pub(super) fn least_busy(&self) -> Option<&PooledConnection> {
        self.pool
            .iter()
            .min_by_key(|connection| connection.in_flight.load(Ordering::Relaxed))
            .filter(|connection| {
                connection.in_flight.load(Ordering::Relaxed) < flow::MAX_CONCURRENT_STREAMS as usize
            })
    }
}

/// The connector's resolver for one replica: whatever the URL's name resolves to now,
/// this pool connects to its own address (the URL keeps the name, for TLS and
/// `:authority`).
#[derive(Clone, Copy)]
pub(super) struct ThisReplica(SocketAddr);

impl tower::Service<Name> for ThisReplica {
    type Response = std::iter::Once<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Name) -> Self::Future {
        std::future::ready(Ok(std::iter::once(self.0)))
    }
}

/// An HTTP/2 client to `addr`: h2c, or TLS trusting only the service CA.
fn http2_client(addr: SocketAddr, settings: &ReplicaSettings) -> UpstreamClient {
    let mut connector = HttpConnector::new_with_resolver(ThisReplica(addr));
    connector.set_connect_timeout(Some(settings.connect_timeout));
    connector.set_nodelay(true);
    // TLS needs the connector to accept https://; plain http:// passes straight through.
    connector.enforce_http(false);
    // Without a CA, Upstream::new refuses https:// URLs: an empty root store is never used.
    let tls = settings.tls.clone().unwrap_or_else(|| {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("the provider supports TLS 1.2 and 1.3")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
    });
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http2()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(flow::STREAM_WINDOW)
        .http2_initial_connection_window_size(flow::CONNECTION_WINDOW)
        .http2_max_frame_size(flow::MAX_FRAME)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .timer(TokioTimer::new())
        .build(connector)
}
