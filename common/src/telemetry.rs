//! Tracing setup, once per process, and the W3C trace context that follows a call
//! across services.
//!
//! `RUST_LOG` picks the filter (default `info`), `LOG_FORMAT` the shape of each line:
//! text for a person (coloured only when written to a terminal), or one JSON object per
//! line for a log shipper, carrying the fields of the call's span (method, request id,
//! trace id, user id). Handlers never log secrets: passwords, tokens and presigned URLs
//! stay out of every field and message.
//!
//! Every call has a trace id, exported or not: it continues the caller's `traceparent`
//! (W3C Trace Context) or starts a trace, is written into the call's log lines, and the
//! gateway passes it on to the service behind it, so one id finds a call's lines in
//! every process. With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the call spans are also
//! exported over OTLP/gRPC; without it no OpenTelemetry layer is installed at all, and a
//! call's whole tracing cost is reading one header and drawing two random ids.

use std::io::IsTerminal;
use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider, SpanData};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, for a person reading a terminal or a file.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the call it belongs to.
    Json,
}

/// The logging and tracing settings every service binary shares.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TelemetryArgs {
    /// How log lines are written (the filter is `RUST_LOG`, default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// OTLP/gRPC collector to export each call's spans to, e.g. `http://collector:4317`
    /// (the `OTEL_BSP_*` variables tune batching). Unset: nothing is exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = otlp_endpoint)]
    pub otlp_endpoint: Option<String>,
}

fn otlp_endpoint(value: &str) -> Result<String, String> {
    match url::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Ok(value.to_owned())
        }
        _ => Err(format!(
            "{value:?} is not an OTLP/gRPC endpoint: give an http:// or https:// URL such as http://collector:4317"
        )),
    }
}

/// Whether call spans go to an OTLP collector (set once, by [`init`]).
static EXPORTING: OnceLock<bool> = OnceLock::new();

fn exporting() -> bool {
    EXPORTING.get().copied().unwrap_or(false)
}

/// What [`init`] set up; [`Telemetry::shutdown`] exports the spans still batched.
#[must_use = "call shutdown() before the process exits, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still batched, off the async runtime: the exporter's thread
    /// blocks while it sends.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(err)) = flushed {
                eprintln!("exporting the last spans failed: {err}");
            }
        }
    }
}

/// Cannot set up span export.
#[derive(Debug, thiserror::Error)]
#[error("cannot export spans to OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
pub struct TelemetryError(String);

/// Installs the global subscriber, writing to stdout, and the span exporter when an
/// endpoint is set; `component` names this process to the collector (`service.name`).
/// Calling it twice (tests, the all-in-one launcher) is harmless: the second call keeps
/// the first subscriber.
pub fn init(args: &TelemetryArgs, component: &'static str) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_target(false);
    let lines: Box<dyn Layer<Registry> + Send + Sync> = match args.log_format {
        LogFormat::Text => lines.with_ansi(std::io::stdout().is_terminal()).boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let provider = match &args.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint, component)?),
        None => None,
    };
    let spans = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("strongbox")));
    let installed = tracing_subscriber::registry()
        .with(lines)
        .with(spans)
        .with(filter)
        .try_init()
        .is_ok();
    if !installed {
        // Another subscriber came first and keeps its own export setting.
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Ok(Telemetry { provider: None });
    }
    let _ = EXPORTING.set(provider.is_some());
    Ok(Telemetry { provider })
}

fn tracer_provider(
    endpoint: &str,
    component: &'static str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = OnOwnRuntime::new(|| {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|err| TelemetryError(err.to_string()))
    })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(component).build())
        .build())
}

/// The OTLP exporter on a runtime of its own.
///
/// The SDK's batch processor exports from a thread of its own, where there is no Tokio
/// runtime, and the tonic exporter's channel needs one. A one-thread runtime that lives
/// as long as the exporter serves it, whatever the service's runtime is doing (also
/// while it shuts down).
#[derive(Debug)]
struct OnOwnRuntime<E> {
    exporter: E,
    runtime: Option<tokio::runtime::Runtime>,
}

impl<E> OnOwnRuntime<E> {
    fn new(build: impl FnOnce() -> Result<E, TelemetryError>) -> Result<Self, TelemetryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(|err| TelemetryError(err.to_string()))?;
        let exporter = {
            let _entered = runtime.enter();
            build()?
        };
        Ok(Self {
            exporter,
            runtime: Some(runtime),
        })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for OnOwnRuntime<E>
{
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        // Called on the batch processor's thread, which only waits for the result.
        std::future::ready(self.runtime().block_on(self.exporter.export(batch)))
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        let _entered = self.runtime.as_ref().map(|runtime| runtime.enter());
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        let _entered = self.runtime.as_ref().map(|runtime| runtime.enter());
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter.set_resource(resource);
    }
}

impl<E> Drop for OnOwnRuntime<E> {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics where blocking is not allowed (the
        // provider may be dropped on a runtime thread); this never blocks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The W3C header a call's trace context travels in.
pub const TRACEPARENT: &str = "traceparent";

/// A call's place in its trace: what its log lines carry and what it passes on.
#[derive(Debug, Clone)]
pub struct CallTrace {
    context: SpanContext,
}

impl CallTrace {
    /// Joins `span` to the trace the caller sent (`traceparent`, `tracestate`), or
    /// starts a trace, and records the trace id in the span's `trace_id` field.
    pub fn begin(span: &tracing::Span, headers: &http::HeaderMap) -> Self {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let context = if exporting() {
            // Only before the span is first entered; ours are new here.
            let _ = span.set_parent(parent);
            span.context().span().span_context().clone()
        } else {
            let ids = RandomIdGenerator::default();
            let remote = parent.span().span_context().clone();
            let (trace_id, flags, state) = if remote.is_valid() {
                (
                    remote.trace_id(),
                    remote.trace_flags(),
                    remote.trace_state().clone(),
                )
            } else {
                // Nothing is recorded here, but a service behind that exports must not
                // drop the call because its parent looks unsampled: every call is sampled.
                (ids.new_trace_id(), TraceFlags::SAMPLED, TraceState::NONE)
            };
            SpanContext::new(trace_id, ids.new_span_id(), flags, false, state)
        };
        span.record("trace_id", tracing::field::display(context.trace_id()));
        Self { context }
    }

    pub fn trace_id(&self) -> TraceId {
        self.context.trace_id()
    }

    /// Writes this call as the parent of the call it makes (`traceparent`, and
    /// `tracestate` when there is one), replacing what the client sent.
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        headers.remove(TRACEPARENT);
        headers.remove("tracestate");
        let context = opentelemetry::Context::new().with_remote_span_context(self.context.clone());
        TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(headers));
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(key),
            http::HeaderValue::try_from(value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> tracing::Span {
        tracing::info_span!("call", trace_id = tracing::field::Empty)
    }

    #[test]
    fn a_call_continues_its_callers_trace_and_passes_it_on_as_its_own_child() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let trace = CallTrace::begin(&span(), &headers);
        assert_eq!(
            trace.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );

        let mut onward = http::HeaderMap::new();
        trace.inject(&mut onward);
        let sent = onward[TRACEPARENT].to_str().unwrap();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(
            !sent.contains("00f067aa0ba902b7"),
            "a span id of its own: {sent}"
        );
        assert!(sent.ends_with("-01"), "the caller's sampling kept: {sent}");
    }

    #[test]
    fn a_call_without_a_valid_parent_starts_a_sampled_trace() {
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, "00-not-a-trace-01".parse().unwrap());
        let first = CallTrace::begin(&span(), &headers);
        let second = CallTrace::begin(&span(), &http::HeaderMap::new());
        assert_ne!(first.trace_id(), TraceId::INVALID);
        assert_ne!(first.trace_id(), second.trace_id());

        let mut onward = http::HeaderMap::new();
        first.inject(&mut onward);
        let sent = onward[TRACEPARENT].to_str().unwrap();
        assert_eq!(
            sent,
            format!("00-{}-{}-01", first.trace_id(), &sent[36..52])
        );
    }

    #[test]
    fn an_endpoint_must_be_an_http_url() {
        assert!(otlp_endpoint("http://collector:4317").is_ok());
        assert!(otlp_endpoint("collector:4317").is_err());
        assert!(otlp_endpoint("ftp://collector").is_err());
    }
}
