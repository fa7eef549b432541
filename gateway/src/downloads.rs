//! `GET`/`HEAD /files/<key>?expires=…&signature=…`: the local backend's download links.
//!
//! The link's signature is checked by storage-service (which signed it); the gateway turns
//! its Download stream into the HTTP a static file server gives, so that browsers resume
//! downloads and seek in media: `Accept-Ranges`, one byte range answered 206 (several
//! ranges get the whole file, as RFC 9110 allows), a strong `ETag` for `If-None-Match` and
//! `If-Range`, and `HEAD`. Bytes are streamed chunk by chunk, never buffered.
//!
//! The ETag is the content's SHA-256: a key never gets other content, so it is as strong
//! a validator as there is. Storage-service describes the whole file before the bytes of
//! any range, so a plain `bytes=a-b` costs one call; what must be decided before asking
//! for bytes (HEAD, a suffix range, a conditional request) first asks for none.
//!
//! A link is a credential that expires: responses are `private` and cacheable no longer
//! than the link lives. The content is the user's, not the page's: always an attachment,
//! never sniffed, and sandboxed by CSP, so stored HTML or SVG opened directly cannot run
//! as the gateway's origin.

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use strongbox_common::http::content_disposition;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{
    DownloadRequest, DownloadResponse, FileInfo, download_response,
};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::limits::Held;
use crate::proxy::Gateway;
use crate::upstream::Upstream;

/// Stored content never runs as a page of this origin, even when opened directly: no
/// resources of its own, and a unique origin with no scripts.
pub const FILE_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; sandbox";

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
    let link = Link {
        storage: gateway.storage.clone(),
        key,
        expires,
        signature,
    };
    let wanted = Wanted::from_request(request.method(), request.headers());

    let asked = wanted.window_before_info().unwrap_or(Window::NOTHING);
    let (info, stream) = match link.open_or_refuse(asked).await {
        Ok(opened) => opened,
        Err(refusal) => return refusal,
    };
    let answer = wanted.answer(&info);
    let bytes = match &answer {
        Answer::NotModified => return not_modified(&info, expires),
        Answer::Unsatisfiable => return unsatisfiable(&info),
        Answer::Whole => 0..info.size,
        Answer::Part(part) => part.clone(),
    };
    // The bytes already asked for are sent when they are the answer's; otherwise the
    // answer's are asked for now (HEAD sends none).
    let body = if wanted.head {
        Body::empty()
    } else if asked.covers(info.size) == bytes {
        streamed(stream, open_call)
    } else {
        match link.open(Window::of(&bytes)).await {
            Ok((_, stream)) => streamed(stream, open_call),
            Err(status) => return from_status(&status),
        }
    };
    file_response(&info, expires, &answer, body)
}

/// A signed link, and the service asked for what it points at.
struct Link {
    storage: Upstream,
    key: String,
    expires: u64,
    signature: String,
}

impl Link {
    /// Like [`Link::open`], with a failure already turned into its HTTP answer. Only a
    /// window asked for before the size was known can start past the end: 416, which
    /// names the size, so that is asked for.
    async fn open_or_refuse(
        &self,
        window: Window,
    ) -> Result<(FileInfo, Streaming<DownloadResponse>), Response> {
        match self.open(window).await {
            Ok(opened) => Ok(opened),
            Err(status) if status.code() == Code::OutOfRange => {
                match self.open(Window::NOTHING).await {
                    Ok((info, _)) => Err(unsatisfiable(&info)),
                    Err(status) => Err(from_status(&status)),
                }
            }
            Err(status) => Err(from_status(&status)),
        }
    }

    /// Opens a Download of `window` and reads its first message, the file's description.
    /// A download only reads, so a replica that was unavailable is left for another.
    async fn open(
        &self,
        window: Window,
    ) -> Result<(FileInfo, Streaming<DownloadResponse>), Status> {
        let mut tried = Vec::new();
        loop {
            let (replica, channel) = self.storage.downloads(&tried)?;
            match self.open_on(channel, window).await {
                Err(status) if status.code() == Code::Unavailable => {
                    tracing::warn!(%replica, %status, "download unavailable on this replica");
                    tried.push(replica);
                    if self.storage.downloads(&tried).is_err() {
                        return Err(status);
                    }
                }
                opened => return opened,
            }
        }
    }

    async fn open_on(
        &self,
        channel: Channel,
        window: Window,
    ) -> Result<(FileInfo, Streaming<DownloadResponse>), Status> {
        let request = DownloadRequest {
            key: self.key.clone(),
            expires: self.expires,
            signature: self.signature.clone(),
            offset: window.offset,
            length: window.length,
        };
        let mut stream = StorageServiceClient::new(channel)
            .download(request)
            .await?
            .into_inner();
        match stream.message().await? {
            Some(DownloadResponse {
                payload: Some(download_response::Payload::Info(info)),
            }) => Ok((info, stream)),
            Some(_) => Err(Status::internal("storage-service sent no file description")),
            None => Err(Status::internal("storage-service sent nothing")),
        }
    }
}

/// The bytes of a Download after the file's description: from `offset`, `length` at
/// most (unset: from the start, to the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    offset: Option<u64>,
    length: Option<u64>,
}

impl Window {
    const ALL: Self = Self {
        offset: None,
        length: None,
    };
    /// The description alone.
    const NOTHING: Self = Self {
        offset: None,
        length: Some(0),
    };

    fn of(bytes: &Range<u64>) -> Self {
        Self {
            offset: Some(bytes.start),
            length: Some(bytes.end - bytes.start),
        }
    }

    /// The bytes storage-service sends for this window of a file of `size` bytes.
    fn covers(&self, size: u64) -> Range<u64> {
        let start = self.offset.unwrap_or(0).min(size);
        let end = self
            .length
            .map_or(size, |length| start.saturating_add(length).min(size));
        start..end
    }
}

/// One range of a `Range: bytes=…` header, as the client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// `first-last`, both included.
    Bounded { first: u64, last: u64 },
    /// `first-`: to the end.
    From(u64),
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The one range `value` asks for, or `None` when the header is to be ignored and
    /// the whole file sent: another unit, several ranges, or not a valid range (RFC 9110
    /// §14.2 lets a server ignore Range; serving several would need multipart bodies).
    fn parse(value: &str) -> Option<Self> {
        let (unit, set) = value.trim().split_once('=')?;
        if !unit.eq_ignore_ascii_case("bytes") || set.contains(',') {
            return None;
        }
        let (first, last) = set.trim().split_once('-')?;
        match (digits(first), digits(last)) {
            (Some(first), Some(last)) if first <= last => Some(Self::Bounded { first, last }),
            (Some(first), None) if last.is_empty() => Some(Self::From(first)),
            (None, Some(suffix)) if first.is_empty() => Some(Self::Suffix(suffix)),
            _ => None,
        }
    }

    /// Where the range starts when that is known without the file's size, and how much
    /// it asks for.
    fn window_before_size(self) -> Option<Window> {
        match self {
            Self::Bounded { first, last } => Some(Window {
                offset: Some(first),
                length: Some(last - first + 1),
            }),
            Self::From(first) => Some(Window {
                offset: Some(first),
                length: None,
            }),
            Self::Suffix(_) => None,
        }
    }

    /// The bytes of a file of `size` bytes the range covers; `None` when it covers none
    /// (416: it starts past the end, or asks for the last 0 bytes).
    fn within(self, size: u64) -> Option<Range<u64>> {
        let (start, end) = match self {
            Self::Bounded { first, last } => (first, last.saturating_add(1).min(size)),
            Self::From(first) => (first, size),
            Self::Suffix(length) => (size.saturating_sub(length), size),
        };
        (start < end).then_some(start..end)
    }
}

/// A decimal number with nothing else around it (`u64::from_str` would take a `+`).
fn digits(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// What a request asks for, from its method and headers.
#[derive(Debug, Default)]
struct Wanted {
    head: bool,
    range: Option<ByteRange>,
    if_range: Option<String>,
    if_none_match: Option<String>,
}

/// What the response is, once the file's description is known.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    NotModified,
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

impl Wanted {
    fn from_request(method: &Method, headers: &HeaderMap) -> Self {
        let text = |name| {
            headers
                .get(name)
                .and_then(|value: &HeaderValue| value.to_str().ok())
                .map(str::to_owned)
        };
        // Range is defined for GET only (RFC 9110 §14.2): a HEAD describes the whole.
        let range = if method == Method::GET {
            text(header::RANGE).and_then(|value| ByteRange::parse(&value))
        } else {
            None
        };
        Self {
            head: method == Method::HEAD,
            range,
            if_range: text(header::IF_RANGE),
            if_none_match: text(header::IF_NONE_MATCH),
        }
    }

    /// The bytes to ask for with the file's description, when the answer cannot depend
    /// on that description; `None` when it must be read first.
    fn window_before_info(&self) -> Option<Window> {
        let if_range = self.if_range.is_some() && self.range.is_some();
        if self.head || self.if_none_match.is_some() || if_range {
            return None;
        }
        match self.range {
            None => Some(Window::ALL),
            Some(range) => range.window_before_size(),
        }
    }

    /// RFC 9110 §13.2.2's order: If-None-Match, then If-Range, then Range.
    fn answer(&self, info: &FileInfo) -> Answer {
        let tag = etag(info);
        if let Some(candidates) = &self.if_none_match
            && matches_any(candidates, &tag)
        {
            return Answer::NotModified;
        }
        // If-Range compares strongly; a date never matches, having no Last-Modified.
        let range = match &self.if_range {
            Some(validator) if validator.trim() != tag => None,
            _ => self.range,
        };
        match range {
            None => Answer::Whole,
            Some(range) => range
                .within(info.size)
                .map_or(Answer::Unsatisfiable, Answer::Part),
        }
    }
}

/// If-None-Match's weak comparison: `*`, or any listed tag, `W/` or not.
fn matches_any(candidates: &str, tag: &str) -> bool {
    candidates.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
    })
}

fn etag(info: &FileInfo) -> String {
    format!("\"{}\"", info.sha256)
}

/// The chunks of `stream`, with the client's open call held until the last is sent.
fn streamed(stream: Streaming<DownloadResponse>, open_call: Held<IpAddr>) -> Body {
    let chunks = stream
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
    Body::from_stream(chunks)
}

/// 200 or 206 (or their HEAD) with `body`, which holds exactly the answer's bytes.
fn file_response(info: &FileInfo, expires: u64, answer: &Answer, body: Body) -> Response {
    let (status, length) = match answer {
        Answer::Part(part) => (StatusCode::PARTIAL_CONTENT, part.end - part.start),
        _ => (StatusCode::OK, info.size),
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    representation_headers(headers, info, expires);
    if let Answer::Part(part) = answer {
        let range = format!("bytes {}-{}/{}", part.start, part.end - 1, info.size);
        set(headers, header::CONTENT_RANGE, &range);
    }
    set(headers, header::CONTENT_TYPE, &info.content_type);
    set(headers, header::CONTENT_LENGTH, &length.to_string());
    set(
        headers,
        header::CONTENT_DISPOSITION,
        &content_disposition(&info.filename),
    );
    response
}

fn not_modified(info: &FileInfo, expires: u64) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    representation_headers(response.headers_mut(), info, expires);
    response
}

fn unsatisfiable(info: &FileInfo) -> Response {
    let message = format!(
        "this file holds {} bytes: the range asked for is past its end",
        info.size
    );
    let mut response = refuse(StatusCode::RANGE_NOT_SATISFIABLE, &message);
    let headers = response.headers_mut();
    set(
        headers,
        header::CONTENT_RANGE,
        &format!("bytes */{}", info.size),
    );
    set(headers, header::ACCEPT_RANGES, "bytes");
    response
}

/// What every answer about the file carries, 304 included: its validator, how long it
/// may be cached, and what keeps it from running as a page.
fn representation_headers(headers: &mut HeaderMap, info: &FileInfo, expires: u64) {
    set(headers, header::ETAG, &etag(info));
    set(headers, header::ACCEPT_RANGES, "bytes");
    set(headers, header::CACHE_CONTROL, &cache_control(expires));
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        FILE_CONTENT_SECURITY_POLICY,
    );
}

/// Private (the URL is a credential: no shared cache keeps it) and fresh no longer
/// than the link is valid.
fn cache_control(expires: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    format!("private, max-age={}", expires.saturating_sub(now))
}

/// Sets a header from text that came from storage-service or from numbers; a value no
/// header can hold (a control character in a content type) is left out, not sent.
fn set(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn from_status(status: &Status) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> FileInfo {
        FileInfo {
            size,
            sha256: "ab".repeat(32),
            ..Default::default()
        }
    }

    fn wanted(range: &str) -> Wanted {
        Wanted {
            range: ByteRange::parse(range),
            ..Default::default()
        }
    }

    #[test]
    fn one_byte_range_is_read_and_anything_else_is_ignored() {
        use ByteRange::*;
        assert_eq!(
            ByteRange::parse("bytes=10-19"),
            Some(Bounded {
                first: 10,
                last: 19
            })
        );
        assert_eq!(ByteRange::parse("Bytes= 10- "), Some(From(10)));
        assert_eq!(ByteRange::parse("bytes=-5"), Some(Suffix(5)));
        for ignored in [
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=+5-",
            "bytes=-",
            "bytes=a-b",
            "items=0-1",
            "bytes 0-1",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(ByteRange::parse(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn ranges_are_cut_to_the_file_and_past_its_end_are_unsatisfiable() {
        let answer = |range| wanted(range).answer(&file(100));
        assert_eq!(answer("bytes=10-19"), Answer::Part(10..20));
        assert_eq!(answer("bytes=90-500"), Answer::Part(90..100));
        assert_eq!(answer("bytes=95-"), Answer::Part(95..100));
        assert_eq!(answer("bytes=-5"), Answer::Part(95..100));
        assert_eq!(answer("bytes=-500"), Answer::Part(0..100));
        assert_eq!(answer("bytes=100-"), Answer::Unsatisfiable);
        assert_eq!(answer("bytes=-0"), Answer::Unsatisfiable);
        assert_eq!(answer("bytes=0-1,5-6"), Answer::Whole);
        assert_eq!(wanted("bytes=0-").answer(&file(0)), Answer::Unsatisfiable);
    }

    #[test]
    fn validators_decide_before_ranges() {
        let tag = etag(&file(100));
        let with = |if_none_match: Option<&str>, if_range: Option<&str>| Wanted {
            if_none_match: if_none_match.map(str::to_owned),
            if_range: if_range.map(str::to_owned),
            ..wanted("bytes=10-19")
        };
        let answer = |wanted: Wanted| wanted.answer(&file(100));
        assert_eq!(answer(with(Some(&tag), None)), Answer::NotModified);
        assert_eq!(
            answer(with(Some(&format!("\"x\", W/{tag}")), None)),
            Answer::NotModified
        );
        assert_eq!(answer(with(Some("*"), None)), Answer::NotModified);
        assert_eq!(answer(with(Some("\"x\""), None)), Answer::Part(10..20));
        assert_eq!(answer(with(None, Some(&tag))), Answer::Part(10..20));
        assert_eq!(answer(with(None, Some("\"x\""))), Answer::Whole);
        assert_eq!(answer(with(None, Some(&format!("W/{tag}")))), Answer::Whole);
        assert_eq!(
            answer(with(None, Some("Wed, 21 Oct 2015 07:28:00 GMT"))),
            Answer::Whole
        );
    }

    #[test]
    fn bytes_are_asked_for_at_once_only_when_the_answer_cannot_change_them() {
        let head = Wanted {
            head: true,
            ..Default::default()
        };
        assert_eq!(head.window_before_info(), None);
        assert_eq!(Wanted::default().window_before_info(), Some(Window::ALL));
        assert_eq!(
            wanted("bytes=10-19").window_before_info(),
            Some(Window::of(&(10..20)))
        );
        assert_eq!(wanted("bytes=-5").window_before_info(), None);
        let conditional = Wanted {
            if_none_match: Some("\"x\"".to_owned()),
            ..Default::default()
        };
        assert_eq!(conditional.window_before_info(), None);
        // What was asked for is reused when it is exactly what is to be sent.
        assert_eq!(Window::ALL.covers(100), 0..100);
        assert_eq!(Window::NOTHING.covers(100), 0..0);
        assert_eq!(Window::of(&(90..600)).covers(100), 90..100);
    }
}
