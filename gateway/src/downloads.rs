//! `GET /files/<key>?expires=…&signature=…`: the local backend's download links.
//!
//! The link's signature is checked by storage-service (which signed it); the gateway
//! turns its Download stream into an HTTP response with the right Content-Type,
//! Content-Length and Content-Disposition, streaming chunk by chunk.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use http::{Request, StatusCode, header};
use strongbox_common::http::content_disposition;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{DownloadRequest, download_response};
use tonic::Code;

use crate::proxy::Gateway;

#[derive(Debug, serde::Deserialize)]
pub struct LinkParams {
    expires: Option<u64>,
    signature: Option<String>,
}

pub async fn download(
    State(gateway): State<Arc<Gateway>>,
    Path(key): Path<String>,
    Query(params): Query<LinkParams>,
    request: Request<Body>,
) -> Response {
    let client = gateway.admission.client(&request);
    let open_call = match gateway.admission.open_call(client) {
        Ok(open_call) => open_call,
        Err(refusal) => {
            let mut response = refuse(StatusCode::TOO_MANY_REQUESTS, &refusal.message);
            if let Ok(value) = refusal.retry_after_seconds().to_string().parse() {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
    };
    let (Some(expires), Some(signature)) = (params.expires, params.signature) else {
        return refuse(
            StatusCode::FORBIDDEN,
            "this download link is incomplete: it needs expires and signature",
        );
    };
    let request = DownloadRequest {
        key,
        expires,
        signature,
    };
    let mut client = StorageServiceClient::new(gateway.storage.downloads.clone());
    let mut stream = match client.download(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return from_status(&status),
    };
    let info = match stream.next().await {
        Some(Ok(first)) => match first.payload {
            Some(download_response::Payload::Info(info)) => info,
            _ => {
                return refuse(
                    StatusCode::BAD_GATEWAY,
                    "storage-service sent no file description",
                );
            }
        },
        Some(Err(status)) => return from_status(&status),
        None => return refuse(StatusCode::BAD_GATEWAY, "storage-service sent nothing"),
    };
    let chunks = stream
        // The download counts as the client's open call until its last byte is sent.
        .inspect(move |_| {
            let _open = &open_call;
        })
        .try_filter_map(|message| async move {
            Ok(match message.payload {
                Some(download_response::Payload::Chunk(chunk)) => Some(chunk),
                _ => None,
            })
        })
        .map_err(|status| std::io::Error::other(status.message().to_owned()));
    let headers = [
        (header::CONTENT_TYPE, info.content_type.clone()),
        (header::CONTENT_LENGTH, info.size.to_string()),
        (
            header::CONTENT_DISPOSITION,
            content_disposition(&info.filename),
        ),
        (header::CACHE_CONTROL, "private, no-store".to_owned()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
    ];
    (headers, Body::from_stream(chunks)).into_response()
}

fn from_status(status: &tonic::Status) -> Response {
    let code = match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    };
    refuse(code, status.message())
}

fn refuse(code: StatusCode, message: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}
