//! The two services behind the gateway, reached over HTTP/2 (h2c).
//!
//! Calls are forwarded as HTTP, not decoded and re-encoded: bytes stream through with
//! HTTP/2 flow control as the only buffer, so an upload's backpressure reaches the
//! client and the gateway's memory stays flat. Forwarding at this level also keeps
//! failure honest: if the client's stream breaks, the upstream stream is reset rather
//! than ended, so storage-service aborts instead of storing a truncated file.
//!
//! No client can starve the others of an upstream:
//! - calls spread over a small pool of connections, each to the least busy, and a
//!   call that would find every connection at the services' stream limit is refused
//!   at once instead of queueing inside the HTTP/2 client;
//! - each connection's receive window is every stream's window together (the rule of
//!   [`flow`]), so a stream whose client stops reading holds its own window and never
//!   the connection's;
//! - the gateway's own calls (health checks, key fetches) have a connection of their
//!   own, and so do download links;
//! - every call that is not a long stream gets a deadline (`grpc-timeout`, which the
//!   service enforces, and the gateway's own wait for the answer).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use futures::TryStreamExt;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version, header};
use http_body_util::BodyExt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use strongbox_common::server::flow;
use strongbox_common::tls::{self, ServiceCa};
use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// The pool's HTTP/2 client (the connector passes h2c through untouched).
type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

use crate::proxy::status_response;

#[derive(Debug, thiserror::Error)]
#[error("{name} URL {url:?} is invalid: {reason}")]
pub struct BadUpstreamUrl {
    name: &'static str,
    url: String,
    reason: String,
}

/// One upstream service.
#[derive(Clone)]
pub struct Upstream {
    /// "auth-service" or "storage-service", for messages.
    pub name: &'static str,
    /// http (h2c) or https, as the URL says: the pool's connector goes by it.
    scheme: Scheme,
    authority: Authority,
    pool: Arc<[PooledConnection]>,
    /// The gateway's own calls: health checks and verification keys. Never shared with
    /// client calls, so no client load can make the gateway think a service is down.
    pub control: Channel,
    /// Download links (`/files/…`), streamed by the gateway itself.
    pub downloads: Channel,
}

/// One HTTP/2 connection of the pool (a client with a pool of its own keeps exactly
/// one to the service), and how many calls it carries.
struct PooledConnection {
    client: UpstreamClient,
    in_flight: Arc<AtomicUsize>,
}

/// How long the gateway lets a forwarded call take before answering DEADLINE_EXCEEDED;
/// `None` for streams, which have the services' own idle and rate rules instead.
pub type Deadline = Option<Duration>;

impl Upstream {
    pub fn new(
        name: &'static str,
        url: &str,
        ca: Option<&ServiceCa>,
        connect_timeout: Duration,
        connections: usize,
    ) -> Result<Self, BadUpstreamUrl> {
        let invalid = |reason: &str| BadUpstreamUrl {
            name,
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        let tls = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP => None,
            Some(scheme) if *scheme == Scheme::HTTPS => {
                let ca = ca.ok_or_else(|| {
                    invalid("https:// needs SERVICE_CA_FILE, the CA that signed its certificate")
                })?;
                Some(
                    ca.client_config()
                        .map_err(|err| invalid(&err.to_string()))?,
                )
            }
            _ => return Err(invalid("use http:// (h2c) or https://")),
        };
        let scheme = if tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let authority = uri.authority().cloned().ok_or_else(|| invalid("no host"))?;
        let pool = (0..connections.max(1))
            .map(|_| PooledConnection {
                client: http2_client(connect_timeout, tls.clone()),
                in_flight: Arc::new(AtomicUsize::new(0)),
            })
            .collect();
        let endpoint = tls::service_endpoint(url, ca)
            .map_err(|err| invalid(&err.to_string()))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        Ok(Self {
            name,
            scheme,
            authority,
            pool,
            control: endpoint.connect_lazy(),
            downloads: endpoint.connect_lazy(),
        })
    }

    /// Sends `request` (a gRPC call, grpc-web already translated) to this upstream and
    /// returns its response, or a status naming the upstream. `held` (the caller's
    /// per-client permits) is kept until the response has been sent in full.
    pub async fn forward(
        &self,
        mut request: Request<Body>,
        deadline: Deadline,
        held: impl Send + Sync + 'static,
    ) -> Response<Body> {
        let Some(connection) = self.least_busy() else {
            tracing::warn!(upstream = self.name, "every upstream connection is full");
            self.failed("busy");
            return status_response(busy(self.name));
        };
        if let Err(status) = self.retarget(&mut request) {
            return status_response(status);
        }
        let deadline = deadline.map(|limit| set_grpc_timeout(request.headers_mut(), limit));
        let in_flight = InFlight::start(&connection.in_flight);
        let call = connection.client.request(request);
        let answer = match deadline {
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(answer) => answer,
                Err(_) => {
                    self.failed("deadline");
                    return status_response(Status::deadline_exceeded(format!(
                        "{} did not answer within {} s; try again",
                        self.name,
                        limit.as_secs_f64().ceil()
                    )));
                }
            },
            None => call.await,
        };
        match answer {
            Ok(response) => response.map(|body| {
                // The body keeps the stream busy (and the client's permits held) until
                // it has been read to the end or dropped.
                Body::new(body.map_frame(move |frame| {
                    let _kept = (&in_flight, &held);
                    frame
                }))
            }),
            Err(err) => {
                // hyper-util's error says only which step failed; the cause is its source.
                let cause =
                    std::iter::successors(std::error::Error::source(&err), |err| err.source())
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(": ");
                tracing::warn!(upstream = self.name, %err, %cause, "upstream call failed");
                self.failed("unreachable");
                status_response(Status::unavailable(format!(
                    "{} is unavailable; try again shortly",
                    self.name
                )))
            }
        }
    }

    /// Counts a call this upstream did not answer, and why.
    fn failed(&self, reason: &'static str) {
        metrics::counter!(
            "strongbox_upstream_failures_total",
            "upstream" => self.name,
            "reason" => reason,
        )
        .increment(1);
    }

    /// The pooled connection with the fewest calls, unless all are at the services'
    /// stream limit (a new stream would wait for a slot, behind calls that may never end).
    fn least_busy(&self) -> Option<&PooledConnection> {
        self.pool
            .iter()
            .min_by_key(|connection| connection.in_flight.load(Ordering::Relaxed))
            .filter(|connection| {
                connection.in_flight.load(Ordering::Relaxed) < flow::MAX_CONCURRENT_STREAMS as usize
            })
    }

    /// Points the request at this upstream, as HTTP/2 with only end-to-end headers.
    fn retarget(&self, request: &mut Request<Body>) -> Result<(), Status> {
        let mut target = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        if let Some(path) = request.uri().path_and_query().cloned() {
            target = target.path_and_query(path);
        }
        *request.uri_mut() = target
            .build()
            .map_err(|err| Status::internal(format!("cannot route the call: {err}")))?;
        *request.version_mut() = Version::HTTP_2;
        let headers = request.headers_mut();
        for hop_by_hop in [
            header::HOST,
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
        ] {
            headers.remove(hop_by_hop);
        }
        headers.remove("keep-alive");
        // grpc-web text bodies shrink when tonic-web decodes their base64, yet its body
        // still reports the original length as its size hint, which hyper would send as
        // Content-Length (and the upstream would reject the stream). gRPC frames carry
        // their own lengths: forward the body with no length at all.
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        // An empty chunk would go out as an empty DATA frame, and h2 servers count those
        // per connection as a flood: storage-service closed the shared upstream connection
        // after 100 uploads (a client's end of stream can arrive as one).
        let body = std::mem::replace(request.body_mut(), Body::empty());
        *request.body_mut() = Body::from_stream(
            body.into_data_stream()
                .try_filter(|data| std::future::ready(!data.is_empty())),
        );
        Ok(())
    }
}

/// An HTTP/2 client: h2c, or TLS trusting only `tls`'s CA when it is given.
fn http2_client(connect_timeout: Duration, tls: Option<rustls::ClientConfig>) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    // TLS needs the connector to accept https://; plain http:// passes straight through.
    connector.enforce_http(false);
    // Without a CA, Upstream::new refuses https:// URLs: an empty root store is never used.
    let tls = tls.unwrap_or_else(|| {
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

fn busy(name: &str) -> Status {
    let mut status = Status::unavailable(format!(
        "the gateway is carrying as many calls to {name} as it can; try again in 1 s"
    ));
    status
        .metadata_mut()
        .insert("retry-after", MetadataValue::from_static("1"));
    status
}

/// One call counted on a pooled connection until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn start(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Caps the call's `grpc-timeout` at `limit` (a client may ask for less, never more)
/// and returns the deadline in force.
fn set_grpc_timeout(headers: &mut HeaderMap, limit: Duration) -> Duration {
    let asked = headers
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout);
    let deadline = asked.map_or(limit, |asked| asked.min(limit));
    if let Ok(value) = HeaderValue::from_str(&format!("{}m", deadline.as_millis().max(1))) {
        headers.insert("grpc-timeout", value);
    }
    deadline
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_gateway_deadline_caps_what_the_client_asks() {
        let limit = Duration::from_secs(30);
        let mut none = HeaderMap::new();
        assert_eq!(set_grpc_timeout(&mut none, limit), limit);
        assert_eq!(none.get("grpc-timeout").unwrap(), "30000m");
        let mut shorter = HeaderMap::new();
        shorter.insert("grpc-timeout", HeaderValue::from_static("5S"));
        assert_eq!(
            set_grpc_timeout(&mut shorter, limit),
            Duration::from_secs(5)
        );
        let mut longer = HeaderMap::new();
        longer.insert("grpc-timeout", HeaderValue::from_static("1H"));
        assert_eq!(set_grpc_timeout(&mut longer, limit), limit);
        assert_eq!(longer.get("grpc-timeout").unwrap(), "30000m");
    }
}
