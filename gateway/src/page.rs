//! The upload page, built from `web/` and embedded in the binary, so running the
//! gateway needs no Node and no files beside it.
//!
//! Every asset is served with a Content-Security-Policy that allows scripts, styles and
//! calls from this origin only: the page's one script is `/app.js` (no inline script or
//! style), it calls the gateway's own origin over grpc-web, and download links, which may
//! point at S3, are navigations, which `connect-src` does not govern. The icon is an
//! empty `data:` URL. The page may not be framed (clickjacking) and sends no referrer,
//! so a download URL is never leaked to another site in a `Referer`.

use axum::response::{IntoResponse, Response};
use http::{HeaderName, header};

const INDEX_HTML: &str = include_str!("../../web/dist/index.html");
const APP_JS: &str = include_str!("../../web/dist/app.js");
const APP_CSS: &str = include_str!("../../web/dist/app.css");

/// What the page may load and call, and who may frame it (nobody).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, &str); 7] = [
        (header::CONTENT_TYPE, content_type),
        // The bundle's name does not change with its content: revalidate every time.
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        // For browsers that predate `frame-ancestors`.
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    (headers, body).into_response()
}
