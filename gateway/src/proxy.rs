//! The gRPC routes: each call to `auth.v1.AuthService` or `storage.v1.StorageService`
//! is checked here (admitted — rates, open calls — and bearer tokens verified before any
//! upstream is touched; the client's address attached) and forwarded
//! as-is to the service that owns it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use http::{HeaderValue, Request, Response};
use strongbox_common::jwt::Verifier;
use strongbox_common::server::CLIENT_ADDRESS_HEADER;
use tonic::Status;

use crate::admission::Admission;
use crate::client_address::ClientAddress;
use crate::upstream::Upstream;

/// Everything the routes share.
pub struct Gateway {
    pub auth: Upstream,
    pub storage: Upstream,
    pub verifier: Verifier,
    pub admission: Admission,
}

/// A gRPC error as an HTTP response (trailers-only, as gRPC and grpc-web clients expect).
pub fn status_response(status: Status) -> Response<Body> {
    status.into_http::<Body>()
}

/// `POST /auth.v1.AuthService/{method}`: public calls pass straight through once within
/// their client's rate; `Me` and `LogoutAll` need a valid token first.
pub async fn auth_call(
    State(gateway): State<Arc<Gateway>>,
    Path(method): Path<String>,
    request: Request<Body>,
) -> Response<Body> {
    let client = gateway.admission.client(&request);
    if let Err(refusal) = gateway.admission.auth_rate(&method, client) {
        tracing::debug!(%client, %method, "rate limited");
        return status_response(refusal.into_status());
    }
    let open_call = match gateway.admission.open_call(client) {
        Ok(open_call) => open_call,
        Err(refusal) => return status_response(refusal.into_status()),
    };
    if matches!(method.as_str(), "Me" | "LogoutAll")
        && let Err(status) = gateway
            .verifier
            .authenticate_headers(request.headers())
            .await
    {
        return status_response(status);
    }
    let deadline = gateway.admission.deadline(&method);
    gateway
        .auth
        .forward(prepared(request, client), deadline, open_call)
        .await
}

/// `POST /storage.v1.StorageService/{method}`: every call needs a valid token and must
/// be within its user's rate. The token itself is forwarded, and storage-service
/// verifies it again: it trusts no one.
pub async fn storage_call(
    State(gateway): State<Arc<Gateway>>,
    Path(method): Path<String>,
    request: Request<Body>,
) -> Response<Body> {
    let client = gateway.admission.client(&request);
    let open_call = match gateway.admission.open_call(client) {
        Ok(open_call) => open_call,
        Err(refusal) => return status_response(refusal.into_status()),
    };
    let caller = match gateway
        .verifier
        .authenticate_headers(request.headers())
        .await
    {
        Ok(caller) => caller,
        Err(status) => return status_response(status),
    };
    if let Err(refusal) = gateway.admission.storage_rate(caller.user_id) {
        tracing::debug!(%client, %method, "rate limited");
        return status_response(refusal.into_status());
    }
    let deadline = gateway.admission.deadline(&method);
    gateway
        .storage
        .forward(prepared(request, client), deadline, open_call)
        .await
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

/// Attaches the client's address, replacing whatever the client sent under that name.
/// (The request id and trace context were set for the whole request, in its span.)
fn prepared(mut request: Request<Body>, client: ClientAddress) -> Request<Body> {
    let headers = request.headers_mut();
    headers.remove(CLIENT_ADDRESS_HEADER);
    if let Ok(address) = HeaderValue::from_str(&client.to_string()) {
        headers.insert(CLIENT_ADDRESS_HEADER, address);
    }
    request
}
