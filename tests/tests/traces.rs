//! Traces across the hop, from the real binaries: with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! set, the gateway and the service behind it export their call spans over OTLP/gRPC to
//! a collector (here an OTLP receiver in this process), and a call's two spans share one
//! trace id, the service's span a child of the gateway's. A caller's own `traceparent`
//! is continued, not replaced.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::auth::v1::{LoginRequest, RegisterRequest};
use strongbox_proto::storage::v1::ListFilesRequest;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_tests::Scratch;
use strongbox_tests::auth::with_bearer;
use strongbox_tests::process::Deployment;
use strongbox_tests::s3::TestS3;

/// One exported span, as far as this test looks at it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    method: Option<String>,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// An OTLP/gRPC receiver keeping every span it is sent.
#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| string(attribute.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                let method = span
                    .attributes
                    .iter()
                    .find(|attribute| attribute.key == "method")
                    .and_then(|attribute| string(attribute.value.as_ref()?.value.as_ref()?));
                spans.push(Exported {
                    service: service.clone(),
                    name: span.name,
                    method,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent_span_id: hex::encode(span.parent_span_id),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn string(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(text) => Some(text.clone()),
        _ => None,
    }
}

impl Collector {
    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("an address");
        let collector = Self::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    /// The spans of `method` from `service`, once there are `count` (export is batched).
    async fn spans_of(&self, service: &str, method: &str, count: usize) -> Vec<Exported> {
        let began = tokio::time::Instant::now();
        loop {
            let found: Vec<Exported> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|span| {
                    span.service == service
                        && span.name == "call"
                        && span.method.as_deref() == Some(method)
                })
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                began.elapsed() < Duration::from_secs(20),
                "{service} exported {} of {count} spans of {method}; all: {:#?}",
                found.len(),
                self.spans.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const REGISTER: &str = "/auth.v1.AuthService/Register";
const LIST_FILES: &str = "/storage.v1.StorageService/ListFiles";
const CALLERS_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_the_gateway_is_one_trace_in_both_processes() {
    let scratch = Scratch::new();
    let s3 = TestS3::start(&scratch);
    let (collector, collector_addr) = Collector::start().await;
    let exporting = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    let deployment = Deployment::start(&scratch, Some(&s3), &exporting, &[]).await;
    let gateway = deployment.gateway;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))
        .expect("a URL")
        .connect_lazy();
    let mut accounts = AuthServiceClient::new(channel.clone());
    let (email, password) = ("traced@example.com", "a traced password");
    let mut register = tonic::Request::new(RegisterRequest {
        email: email.into(),
        password: password.into(),
    });
    register.metadata_mut().insert(
        "traceparent",
        format!("00-{CALLERS_TRACE}-b7ad6b7169203331-01")
            .parse()
            .expect("ASCII"),
    );
    accounts.register(register).await.expect("Register");
    let token = accounts
        .login(LoginRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .expect("Login")
        .into_inner()
        .tokens
        .expect("tokens")
        .access_token;
    StorageServiceClient::new(channel)
        .list_files(with_bearer(ListFilesRequest::default(), &token))
        .await
        .expect("ListFiles");

    // No traceparent from the client: the gateway starts the trace, the service joins it.
    let at_gateway = collector.spans_of("gateway", LIST_FILES, 1).await;
    let behind = collector.spans_of("storage-service", LIST_FILES, 1).await;
    let (at_gateway, behind) = (&at_gateway[0], &behind[0]);
    assert_eq!(
        behind.trace_id, at_gateway.trace_id,
        "{at_gateway:?} {behind:?}"
    );
    assert_eq!(behind.parent_span_id, at_gateway.span_id);
    assert_ne!(behind.span_id, at_gateway.span_id);
    assert!(
        at_gateway.parent_span_id.is_empty(),
        "the gateway's span is the root: {at_gateway:?}"
    );

    // The client's traceparent: both spans in the client's trace, the gateway's a child
    // of the client's span.
    let at_gateway = collector.spans_of("gateway", REGISTER, 1).await;
    let behind = collector.spans_of("auth-service", REGISTER, 1).await;
    let (at_gateway, behind) = (&at_gateway[0], &behind[0]);
    assert_eq!(at_gateway.trace_id, CALLERS_TRACE);
    assert_eq!(at_gateway.parent_span_id, "b7ad6b7169203331");
    assert_eq!(behind.trace_id, CALLERS_TRACE);
    assert_eq!(behind.parent_span_id, at_gateway.span_id);

    // Separate calls are separate traces.
    let login = collector
        .spans_of("gateway", "/auth.v1.AuthService/Login", 1)
        .await;
    assert_ne!(login[0].trace_id, CALLERS_TRACE);
    assert_ne!(login[0].trace_id, at_gateway.trace_id);
}
