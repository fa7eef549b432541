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
//!   [`flow`](strongbox_common::server::flow)), so a stream whose client stops reading holds its own window and never
//!   the connection's;
//! - the gateway's own calls (health checks, key fetches) have a connection of their
//!   own, and so do download links;
//! - every call that is not a long stream gets a deadline (`grpc-timeout`, which the
//!   service enforces, and the gateway's own wait for the answer).
//!
//! A service may run as several replicas ([`discovery`]): each call goes to one that
//! answers, chosen per call by the power of two choices; a replica that fails its
//! health check, or refuses a connection, is taken out until a check passes again; a
//! call that never reached a replica (its connection could not be made, its body not
//! read) is sent to another.

mod discovery;
mod replica;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use futures::{Stream, TryStreamExt};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use strongbox_common::jwt::KeyChannel;
use strongbox_common::tls::ServiceCa;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use self::discovery::{ReplicaSet, Resolve, Target};
use self::replica::{Replica, ReplicaSettings};
use crate::proxy::status_response;

#[derive(Debug, thiserror::Error)]
#[error("{name} URL {url:?} is invalid: {reason}")]
pub struct BadUpstreamUrl {
    name: &'static str,
    url: String,
    reason: String,
}

impl BadUpstreamUrl {
    fn new(name: &'static str, url: &str, reason: &str) -> Self {
        Self {
            name,
            url: url.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// How long a replica has to answer its health check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One upstream service: every replica its URL setting names. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    /// "auth-service" or "storage-service", for messages.
    pub name: &'static str,
    shared: Arc<Shared>,
}

struct Shared {
    targets: Box<[Arc<Target>]>,
    settings: ReplicaSettings,
    resolve: Resolve,
    replicas: RwLock<ReplicaSet>,
    /// How long a refused caller should wait: about one health check.
    retry_after: Duration,
}

/// How long the gateway lets a forwarded call take before answering DEADLINE_EXCEEDED;
/// `None` for streams, which have the services' own idle and rate rules instead.
pub type Deadline = Option<Duration>;

impl Upstream {
    /// The service at `urls` (comma-separated); replicas named by address are known at
    /// once, names are resolved by [`Upstream::discover`].
    pub fn new(
        name: &'static str,
        urls: &str,
        ca: Option<&ServiceCa>,
        connect_timeout: Duration,
        connections: usize,
        health_interval: Duration,
    ) -> Result<Self, BadUpstreamUrl> {
        let targets: Vec<Arc<Target>> = Target::parse_list(name, urls)?
            .into_iter()
            .map(Arc::new)
            .collect();
        let tls = match targets.iter().find(|target| target.is_https()) {
            None => None,
            Some(target) => {
                let invalid = |reason: &str| BadUpstreamUrl::new(name, &target.url, reason);
                let ca = ca.ok_or_else(|| {
                    invalid("https:// needs SERVICE_CA_FILE, the CA that signed its certificate")
                })?;
                Some(
                    ca.client_config()
                        .map_err(|err| invalid(&err.to_string()))?,
                )
            }
        };
        let settings = ReplicaSettings {
            connect_timeout,
            connections,
            tls,
            ca: ca.cloned(),
        };
        let mut replicas = Vec::new();
        for target in &targets {
            if let Some(addr) = target.address() {
                let replica = Replica::new(target.clone(), addr, &settings)
                    .map_err(|err| BadUpstreamUrl::new(name, &target.url, &err.to_string()))?;
                replicas.push(Arc::new(replica));
            }
        }
        Ok(Self {
            name,
            shared: Arc::new(Shared {
                targets: targets.into(),
                settings,
                resolve: discovery::system_resolver(),
                replicas: RwLock::new(replicas.into()),
                retry_after: health_interval + CHECK_TIMEOUT,
            }),
        })
    }

    /// The replicas known now.
    fn replicas(&self) -> ReplicaSet {
        self.shared
            .replicas
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Resolves the service's names again and takes the replicas they name now.
    pub async fn discover(&self) {
        let current = self.replicas();
        let found = discovery::discover(
            self.name,
            &self.shared.targets,
            &current,
            &self.shared.settings,
            &self.shared.resolve,
        )
        .await;
        *self
            .shared
            .replicas
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = found;
    }

    /// Checks every replica's health at once, takes out those that do not answer
    /// SERVING and brings back those that do; returns how many answer.
    pub async fn check(&self) -> usize {
        let replicas = self.replicas();
        let answers = futures::future::join_all(replicas.iter().map(|replica| async move {
            let up = is_serving(replica.control.clone()).await;
            self.mark(replica, up, "health check");
            up
        }))
        .await;
        let up = answers.iter().filter(|up| **up).count();
        metrics::gauge!("strongbox_upstream_replicas", "upstream" => self.name)
            .set(replicas.len() as f64);
        metrics::gauge!("strongbox_upstream_replicas_up", "upstream" => self.name).set(up as f64);
        up
    }

    /// Records whether `replica` answers, logging a change.
    fn mark(&self, replica: &Replica, up: bool, by: &'static str) {
        if replica.set_up(up) {
            if up {
                tracing::info!(upstream = self.name, addr = %replica.addr, "replica answers again; back in use");
            } else {
                tracing::warn!(upstream = self.name, addr = %replica.addr, by, "replica does not answer; taken out");
            }
        }
    }

    /// A channel for the gateway's own calls to one answering replica (`tried`
    /// excluded), or why there is none.
    fn channel(
        &self,
        tried: &[SocketAddr],
        which: impl Fn(&Replica) -> &Channel,
    ) -> Result<(SocketAddr, Channel), Status> {
        let replicas = self.replicas();
        discovery::pick(&replicas, tried)
            .map(|replica| (replica.addr, which(replica).clone()))
            .ok_or_else(|| self.none_answering())
    }

    /// A channel for a download link's Download, avoiding the replicas in `tried`.
    pub fn downloads(&self, tried: &[SocketAddr]) -> Result<(SocketAddr, Channel), Status> {
        self.channel(tried, |replica| &replica.downloads)
    }

    /// Whether any replica answers (the gateway's own health).
    pub fn any_up(&self) -> bool {
        self.replicas().iter().any(|replica| replica.is_up())
    }

    fn none_answering(&self) -> Status {
        let seconds = self.shared.retry_after.as_secs().max(1);
        let mut status = Status::unavailable(format!(
            "no replica of {} is answering; try again in {seconds} s",
            self.name
        ));
        if let Ok(value) = MetadataValue::try_from(seconds.to_string()) {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }

    /// Sends `request` (a gRPC call, grpc-web already translated) to a replica of this
    /// upstream and returns its response, or a status naming the upstream. `held` (the
    /// caller's per-client permits) is kept until the response has been sent in full.
    pub async fn forward(
        &self,
        request: Request<Body>,
        deadline: Deadline,
        held: impl Send + Sync + 'static,
    ) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let deadline = deadline.map(|limit| set_grpc_timeout(&mut parts.headers, limit));
        prepare(&mut parts);
        let body = Reclaimable::new(body);
        let sent = self.send(&parts, &body);
        let answer = match deadline {
            Some(limit) => match tokio::time::timeout(limit, sent).await {
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
            None => sent.await,
        };
        match answer {
            Ok((response, in_flight)) => response.map(|body| {
                // The body keeps the stream busy (and the client's permits held) until
                // it has been read to the end or dropped.
                Body::new(body.map_frame(move |frame| {
                    let _kept = (&in_flight, &held);
                    frame
                }))
            }),
            Err(status) => status_response(status),
        }
    }

    /// Sends the call to one replica after another until one takes it: another is
    /// tried only when the last never got the call's message (its body unread: no
    /// connection, or one that closed first).
    async fn send(
        &self,
        parts: &Parts,
        body: &Reclaimable,
    ) -> Result<(Response<Incoming>, InFlight), Status> {
        let replicas = self.replicas();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut busy = false;
        loop {
            let Some(replica) = discovery::pick(&replicas, &tried) else {
                return Err(if busy {
                    tracing::warn!(upstream = self.name, "every upstream connection is full");
                    self.failed("busy");
                    busy_status(self.name)
                } else {
                    self.failed("unreachable");
                    self.none_answering()
                });
            };
            tried.push(replica.addr);
            let Some(connection) = replica.least_busy() else {
                busy = true;
                continue;
            };
            let request = retargeted(parts, replica, body.outgoing())?;
            let in_flight = InFlight::start(&connection.in_flight);
            let err = match connection.client.request(request).await {
                Ok(response) => return Ok((response, in_flight)),
                Err(err) => err,
            };
            // hyper-util's error says only which step failed; the cause is its source.
            let cause = std::iter::successors(std::error::Error::source(&err), |err| err.source())
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ");
            tracing::warn!(upstream = self.name, addr = %replica.addr, %err, %cause, "upstream call failed");
            // The replica cannot have acted on a call whose message it never got: that
            // call goes elsewhere, and the replica is out until a health check passes (a
            // call that could not even be carried says more than a check seconds old).
            // Once the body has been read, a failure may be the client's own (a stream
            // it cut), which says nothing about the replica.
            let unread = body.reclaim();
            if err.is_connect() || unread {
                self.mark(replica, false, "a call could not be carried");
            }
            if unread {
                metrics::counter!("strongbox_upstream_retries_total", "upstream" => self.name)
                    .increment(1);
                continue;
            }
            self.failed("unreachable");
            return Err(Status::unavailable(format!(
                "{} is unavailable; try again shortly",
                self.name
            )));
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
}

/// Key fetches go to the answering auth-service replicas, the less busy of two first.
impl KeyChannel for Upstream {
    fn channels(&self) -> Result<Vec<Channel>, Status> {
        let (mut tried, mut channels) = (Vec::new(), Vec::new());
        while let Ok((addr, channel)) = Upstream::channel(self, &tried, |replica| &replica.control)
        {
            tried.push(addr);
            channels.push(channel);
        }
        if channels.is_empty() {
            return Err(self.none_answering());
        }
        Ok(channels)
    }
}

/// One `grpc.health.v1` check over the gateway's own channel to a replica.
async fn is_serving(channel: Channel) -> bool {
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, check).await,
        Ok(Ok(response)) if response.get_ref().status() == tonic_health::pb::health_check_response::ServingStatus::Serving
    )
}

/// Makes the request HTTP/2 with only end-to-end headers.
fn prepare(parts: &mut Parts) {
    parts.version = Version::HTTP_2;
    let headers = &mut parts.headers;
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
}

/// The call as sent to `replica`: its URL's scheme and authority (the name, for TLS and
/// `:authority`; the replica's connector supplies the address).
fn retargeted(parts: &Parts, replica: &Replica, body: Body) -> Result<Request<Body>, Status> {
    let mut target = Uri::builder()
        .scheme(replica.target.scheme.clone())
        .authority(replica.target.authority.clone());
    if let Some(path) = parts.uri.path_and_query().cloned() {
        target = target.path_and_query(path);
    }
    let uri = target
        .build()
        .map_err(|err| Status::internal(format!("cannot route the call: {err}")))?;
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    Ok(request)
}

/// A request body that can be taken back if the replica it was sent to never read it,
/// and sent to another.
struct Reclaimable(Arc<Mutex<Option<Body>>>);

impl Reclaimable {
    fn new(body: Body) -> Self {
        Self(Arc::new(Mutex::new(Some(body))))
    }

    /// The body to send: it takes the original on its first poll. An empty chunk would
    /// go out as an empty DATA frame, and h2 servers count those per connection as a
    /// flood (storage-service closed the shared upstream connection after 100 uploads;
    /// a client's end of stream can arrive as one): those are left out.
    fn outgoing(&self) -> Body {
        let slot = Arc::clone(&self.0);
        let mut taken: Option<axum::body::BodyDataStream> = None;
        let stream = futures::stream::poll_fn(move |cx| {
            if taken.is_none() {
                let body = slot
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .take();
                match body {
                    Some(body) => taken = Some(body.into_data_stream()),
                    None => return Poll::Ready(None),
                }
            }
            let stream = taken.as_mut().expect("taken above");
            Stream::poll_next(std::pin::Pin::new(stream), cx)
        });
        Body::from_stream(stream.try_filter(|data| std::future::ready(!data.is_empty())))
    }

    /// Whether the body is still unread (so the call can go elsewhere).
    fn reclaim(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some()
    }
}

fn busy_status(name: &str) -> Status {
    let mut status = Status::unavailable(format!(
        "the gateway is carrying as many calls to {name} as it can; try again in 1 s"
    ));
    status
        .metadata_mut()
        .insert("retry-after", MetadataValue::from_static("1"));
    status
}

/// One call counted on a pooled connection until dropped.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn start(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
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
