//! The two services behind the gateway, reached over HTTP/2 (h2c).
//!
//! Calls are forwarded as HTTP, not decoded and re-encoded: bytes stream through with
//! HTTP/2 flow control as the only buffer, so an upload's backpressure reaches the
//! client and the gateway's memory stays flat. Forwarding at this level also keeps
//! failure honest: if the client's stream breaks, the upstream stream is reset rather
//! than ended, so storage-service aborts instead of storing a truncated file.

use std::time::Duration;

use axum::body::Body;
use futures::TryStreamExt;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::proxy::status_response;

/// HTTP/2 windows sized for multi-MiB messages: hyper's 64 KiB default would stall a
/// large upload on round trips.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

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
    authority: Authority,
    client: Client<HttpConnector, Body>,
    /// A tonic channel to the same service, for the gateway's own calls (health,
    /// key fetching, downloads).
    pub channel: Channel,
}

impl Upstream {
    pub fn new(
        name: &'static str,
        url: &str,
        connect_timeout: Duration,
    ) -> Result<Self, BadUpstreamUrl> {
        let invalid = |reason: &str| BadUpstreamUrl {
            name,
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(invalid("only plain http:// (h2c) upstreams are supported"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| invalid("no host"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_initial_stream_window_size(STREAM_WINDOW)
            .http2_initial_connection_window_size(CONNECTION_WINDOW)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .timer(TokioTimer::new())
            .build(connector);
        let channel = Endpoint::from(uri)
            .connect_timeout(connect_timeout)
            .connect_lazy();
        Ok(Self {
            name,
            authority,
            client,
            channel,
        })
    }

    /// Sends `request` (a gRPC call, grpc-web already translated) to this upstream and
    /// returns its response, or an UNAVAILABLE status naming the upstream.
    pub async fn forward(&self, mut request: Request<Body>) -> Response<Body> {
        let path = request.uri().path_and_query().cloned();
        let mut target = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone());
        if let Some(path) = path {
            target = target.path_and_query(path);
        }
        match target.build() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(err) => {
                return status_response(Status::internal(format!("cannot route the call: {err}")));
            }
        }
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
        let request = request.map(|body| {
            Body::from_stream(
                body.into_data_stream()
                    .try_filter(|data| std::future::ready(!data.is_empty())),
            )
        });
        match self.client.request(request).await {
            Ok(response) => response.map(Body::new),
            Err(err) => {
                // hyper-util's error says only which step failed; the cause is its source.
                let cause =
                    std::iter::successors(std::error::Error::source(&err), |err| err.source())
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(": ");
                tracing::warn!(upstream = self.name, %err, %cause, "upstream call failed");
                status_response(Status::unavailable(format!(
                    "{} is unavailable; try again shortly",
                    self.name
                )))
            }
        }
    }
}
