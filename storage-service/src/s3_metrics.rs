//! Every request `object_store` makes to S3, counted where it goes out: by operation
//! (`strongbox_s3_requests_total`), with its latency to the response's headers
//! (`strongbox_s3_request_duration_seconds`) and its failures
//! (`strongbox_s3_request_errors_total{operation, reason}`, the HTTP status or
//! `transport`). One wrapper around the HTTP client sees them all: object reads and
//! writes, multipart parts, listings, and the retries `object_store` makes.

use std::time::Instant;

use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};

/// `object_store`'s own reqwest client, metered.
#[derive(Debug, Default)]
pub struct MeteredConnector;

impl HttpConnector for MeteredConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Metered { inner }))
    }
}

#[derive(Debug)]
struct Metered {
    inner: HttpClient,
}

#[tonic::async_trait]
impl HttpService for Metered {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let operation = operation(request.method(), request.uri().query().unwrap_or(""));
        let began = Instant::now();
        let response = self.inner.execute(request).await;
        metrics::counter!("strongbox_s3_requests_total", "operation" => operation).increment(1);
        metrics::histogram!("strongbox_s3_request_duration_seconds", "operation" => operation)
            .record(began.elapsed().as_secs_f64());
        let failure = match &response {
            Ok(response) if is_failure(response.status(), operation) => {
                Some(response.status().as_u16().to_string())
            }
            Ok(_) => None,
            Err(_) => Some("transport".to_owned()),
        };
        if let Some(reason) = failure {
            metrics::counter!(
                "strongbox_s3_request_errors_total",
                "operation" => operation,
                "reason" => reason,
            )
            .increment(1);
        }
        response
    }
}

/// A status that means the request failed. A missing object asked for by HEAD or GET
/// is an answer, not a failure, and so is "not modified".
fn is_failure(status: http::StatusCode, operation: &str) -> bool {
    let answered = status == http::StatusCode::NOT_MODIFIED
        || (status == http::StatusCode::NOT_FOUND && matches!(operation, "head" | "get"));
    !answered && (status.is_client_error() || status.is_server_error())
}

/// The S3 API operation of a request, from its method and query parameters.
fn operation(method: &http::Method, query: &str) -> &'static str {
    let has = |name: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(name))
    };
    match *method {
        http::Method::GET if has("list-type") => "list",
        http::Method::GET if has("uploads") => "list_multipart",
        http::Method::GET if has("uploadId") => "list_parts",
        http::Method::GET => "get",
        http::Method::HEAD => "head",
        http::Method::PUT if has("partNumber") => "put_part",
        http::Method::PUT if query.is_empty() => "put",
        http::Method::POST if has("uploads") => "create_multipart",
        http::Method::POST if has("uploadId") => "complete_multipart",
        http::Method::POST if has("delete") => "delete_objects",
        http::Method::DELETE if has("uploadId") => "abort_multipart",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_by_their_s3_operation() {
        let cases = [
            (http::Method::GET, "list-type=2&prefix=a%2F", "list"),
            (http::Method::GET, "", "get"),
            (http::Method::HEAD, "", "head"),
            (http::Method::PUT, "", "put"),
            (http::Method::PUT, "partNumber=3&uploadId=abc", "put_part"),
            (http::Method::POST, "uploads", "create_multipart"),
            (http::Method::POST, "uploadId=abc", "complete_multipart"),
            (http::Method::DELETE, "uploadId=abc", "abort_multipart"),
            (http::Method::DELETE, "", "delete"),
            (http::Method::GET, "uploads&prefix=x", "list_multipart"),
        ];
        for (method, query, expected) in cases {
            assert_eq!(operation(&method, query), expected, "{method} ?{query}");
        }
    }

    #[test]
    fn a_missing_object_is_an_answer_and_a_refusal_is_a_failure() {
        assert!(!is_failure(http::StatusCode::NOT_FOUND, "head"));
        assert!(is_failure(http::StatusCode::NOT_FOUND, "put_part"));
        assert!(is_failure(http::StatusCode::FORBIDDEN, "get"));
        assert!(is_failure(http::StatusCode::SERVICE_UNAVAILABLE, "put"));
        assert!(!is_failure(http::StatusCode::OK, "put"));
    }
}
