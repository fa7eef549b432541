//! The gRPC routes: each call to `auth.v1.AuthService` or `storage.v1.StorageService`
//! is checked here (bearer tokens verified before any upstream is touched, a request id
//! attached) and forwarded as-is to the service that owns it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use http::{HeaderValue, Request, Response};
use strongbox_common::jwt::Verifier;
use strongbox_common::server::REQUEST_ID_HEADER;
use tonic::Status;

use crate::upstream::Upstream;

/// Everything the routes share.
pub struct Gateway {
    pub auth: Upstream,
    pub storage: Upstream,
    pub verifier: Verifier,
}

/// A gRPC error as an HTTP response (trailers-only, as gRPC and grpc-web clients expect).
pub fn status_response(status: Status) -> Response<Body> {
    status.into_http::<Body>()
}

/// `POST /auth.v1.AuthService/{method}`: public calls pass straight through; `Me` and
/// `LogoutAll` need a valid token first.
pub async fn auth_call(
    State(gateway): State<Arc<Gateway>>,
    Path(method): Path<String>,
    request: Request<Body>,
) -> Response<Body> {
    if matches!(method.as_str(), "Me" | "LogoutAll")
        && let Err(status) = gateway
            .verifier
            .authenticate_headers(request.headers())
            .await
    {
        return status_response(status);
    }
    gateway.auth.forward(with_request_id(request)).await
}

/// `POST /storage.v1.StorageService/{method}`: every call needs a valid token. The
/// token itself is forwarded, and storage-service verifies it again: it trusts no one.
pub async fn storage_call(
    State(gateway): State<Arc<Gateway>>,
    Path(_method): Path<String>,
    request: Request<Body>,
) -> Response<Body> {
    if let Err(status) = gateway
        .verifier
        .authenticate_headers(request.headers())
        .await
    {
        return status_response(status);
    }
    gateway.storage.forward(with_request_id(request)).await
}

/// Any other gRPC path: UNIMPLEMENTED, as a gRPC server would say.
pub async fn unknown_call(request: Request<Body>) -> Response<Body> {
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    if is_grpc {
        status_response(Status::unimplemented(format!(
            "no such method: {}",
            request.uri().path()
        )))
    } else {
        let mut response = Response::new(Body::from("not found\n"));
        *response.status_mut() = http::StatusCode::NOT_FOUND;
        response
    }
}

/// Keeps the caller's request id, or starts one, so one id follows a call across services.
fn with_request_id(mut request: Request<Body>) -> Request<Body> {
    if !request.headers().contains_key(REQUEST_ID_HEADER)
        && let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
    {
        request.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    request
}
