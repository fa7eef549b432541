//! Prometheus metrics, once per process.
//!
//! [`install`] puts the `metrics` recorder in place (the all-in-one launcher's three
//! services share it, so its gateway's `/metrics` shows them all); every instrument in
//! the services is a `metrics::counter!`/`gauge!`/`histogram!` named `strongbox_…`.
//! [`CallMetricsLayer`] counts each gRPC call by method and status with its latency;
//! [`serve`] answers `GET /metrics` on a listener of its own (`METRICS_LISTEN` of
//! auth-service and storage-service; the gateway answers on its own port).

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Latency buckets (seconds) for every `…_seconds` histogram: from a cached token check
/// to a large upload.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The optional metrics listener of a service.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct MetricsArgs {
    /// Address to answer Prometheus scrapes on (`GET /metrics`, plain HTTP); unset: no
    /// metrics listener. Keep it off the public network.
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The process's recorder; installed on first use.
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
            .expect("the buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder already installed (only a test harness would): keep it, and
        // this handle renders an empty page rather than failing the service.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Something to sample when a scrape comes: a gauge whose truth lives in a data
/// structure (free memory blocks, say) is read then rather than kept up to date on
/// every change. Returns `false` once what it samples is gone, and is then forgotten.
pub type Sampler = Box<dyn Fn() -> bool + Send + Sync>;

fn samplers() -> std::sync::MutexGuard<'static, Vec<Sampler>> {
    static SAMPLERS: std::sync::Mutex<Vec<Sampler>> = std::sync::Mutex::new(Vec::new());
    SAMPLERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `sample` before every scrape, as long as it returns `true`.
pub fn sample_on_scrape(sample: Sampler) {
    install();
    samplers().push(sample);
}

/// The text exposition of every metric of this process.
pub fn render() -> String {
    samplers().retain(|sample| sample());
    let handle = install();
    handle.run_upkeep();
    handle.render()
}

/// The `GET /metrics` response body's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Answers `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(|| async { ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], render()) }),
    );
    axum::serve(listener, app).await
}

/// Binds `addr` (`METRICS_LISTEN`) if set and answers scrapes on it in a task, aborted when the
/// returned guard is dropped (when the service stops).
pub async fn listen(
    addr: Option<std::net::SocketAddr>,
) -> Result<Option<MetricsListener>, crate::server::BindError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    install();
    let listener = crate::server::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "metrics listening");
    Ok(Some(MetricsListener(tokio::spawn(async move {
        if let Err(err) = serve(listener).await {
            tracing::warn!(%err, "the metrics listener stopped");
        }
    }))))
}

/// Stops the metrics listener when dropped.
pub struct MetricsListener(tokio::task::JoinHandle<()>);

impl Drop for MetricsListener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts every gRPC call (`strongbox_grpc_calls_total{component, method, code}`) and
/// times it to its last byte (`strongbox_grpc_call_duration_seconds{component, method}`).
/// A call the client abandons counts as `Cancelled`. The method label is the call's
/// path, except for paths no service has (answered `Unimplemented`): those are all
/// `unknown`, so a client making up paths cannot grow the label set.
#[derive(Debug, Clone, Copy)]
pub struct CallMetricsLayer {
    component: &'static str,
}

impl CallMetricsLayer {
    pub fn new(component: &'static str) -> Self {
        install();
        Self { component }
    }
}

impl<S> tower::Layer<S> for CallMetricsLayer {
    type Service = CallMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallMetrics {
            inner,
            component: self.component,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallMetrics<S> {
    inner: S,
    component: &'static str,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for CallMetrics<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Observed<ResponseBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/grpc"));
        let call = is_grpc.then(|| Call {
            component: self.component,
            method: request.uri().path().to_owned(),
            started: Instant::now(),
            done: false,
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let mut call = call;
            // A trailers-only response (an error before any message) ends here.
            if let (Some(call), Some(code)) = (call.as_mut(), grpc_status(response.headers())) {
                call.finish(code);
            }
            Ok(response.map(|body| Observed { body, call }))
        })
    }
}

/// A response body that records its call when the status arrives in its trailers, or
/// as cancelled if it is dropped before.
pub struct Observed<B> {
    body: B,
    call: Option<Call>,
}

impl<B> http_body::Body for Observed<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(call) = this.call.as_mut().filter(|call| !call.done) {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                        call.finish(code);
                    }
                }
                Poll::Ready(Some(Err(_))) => call.finish(tonic::Code::Internal),
                Poll::Ready(None) => call.finish(tonic::Code::Unknown),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

struct Call {
    component: &'static str,
    method: String,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: tonic::Code) {
        self.done = true;
        let method = if code == tonic::Code::Unimplemented {
            "unknown".to_owned()
        } else {
            std::mem::take(&mut self.method)
        };
        let elapsed: Duration = self.started.elapsed();
        metrics::counter!(
            "strongbox_grpc_calls_total",
            "component" => self.component,
            "method" => method.clone(),
            "code" => format!("{code:?}"),
        )
        .increment(1);
        metrics::histogram!(
            "strongbox_grpc_call_duration_seconds",
            "component" => self.component,
            "method" => method,
        )
        .record(elapsed.as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            self.finish(tonic::Code::Cancelled);
        }
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from_i32(value))
}
