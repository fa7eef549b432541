//! Download links as browsers and download managers use them, black-box against the whole
//! system: single byte ranges (a resumed download, a seek in a video), the SHA-256 as a
//! strong ETag, HEAD, caching no longer than the link lives, and the headers that keep
//! stored content from running as the page. On the local backend the gateway serves the
//! links; on S3 they are presigned S3 URLs, and the S3 server answers ranges itself.

use bytes::Bytes;
use http::header::{self, HeaderName};
use reqwest::{Method, Response, StatusCode};
use strongbox_proto::storage::v1::{FileMetadata, GetDownloadUrlRequest};
use strongbox_tests::gateway::System;
use strongbox_tests::storage::{Backend, User, metadata, pseudo_random, sha256_hex};

const MIB: usize = 1024 * 1024;

/// The whole system with one file stored through the gateway, and the file's link.
struct Stored {
    // Keeps the services running.
    _system: System,
    user: User,
    key: String,
    content: Vec<u8>,
    url: String,
    http: reqwest::Client,
}

impl Stored {
    async fn on(backend: Backend, filename: &str, content_type: &str, content: Vec<u8>) -> Self {
        let system = System::start(backend).await;
        let user = system.user("links").await;
        let declared = FileMetadata {
            size: Some(content.len() as u64),
            sha256: Some(sha256_hex(&content)),
            ..metadata(filename, content_type)
        };
        let chunks = content.chunks(MIB).map(Bytes::copy_from_slice).collect();
        let uploaded = user.upload(declared, chunks).await.unwrap();
        Self {
            _system: system,
            user,
            key: uploaded.key,
            content,
            url: uploaded.url,
            http: reqwest::Client::new(),
        }
    }

    /// A file of `size` pseudo-random bytes on the local backend.
    async fn local(size: usize) -> Self {
        Self::on(
            Backend::Local,
            "data.bin",
            "application/octet-stream",
            pseudo_random(size, 16),
        )
        .await
    }

    fn size(&self) -> usize {
        self.content.len()
    }

    fn etag(&self) -> String {
        format!("\"{}\"", sha256_hex(&self.content))
    }

    async fn get(&self, headers: &[(HeaderName, &str)]) -> Response {
        self.request(Method::GET, &self.url, headers).await
    }

    async fn request(&self, method: Method, url: &str, headers: &[(HeaderName, &str)]) -> Response {
        let mut request = self.http.request(method, url);
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        request.send().await.unwrap()
    }

    /// GETs `range` and checks it is answered 206 with exactly `bytes` of the file.
    async fn assert_range(&self, range: &str, bytes: std::ops::Range<usize>) {
        self.assert_part(&[(header::RANGE, range)], bytes).await;
    }

    /// GETs with `headers` (a Range among them) and checks they are answered 206 with
    /// exactly `bytes` of the file.
    async fn assert_part(&self, headers: &[(HeaderName, &str)], bytes: std::ops::Range<usize>) {
        let response = self.get(headers).await;
        assert_eq!(
            response.status(),
            StatusCode::PARTIAL_CONTENT,
            "{headers:?}"
        );
        let expected_range = format!("bytes {}-{}/{}", bytes.start, bytes.end - 1, self.size());
        assert_eq!(value(&response, header::CONTENT_RANGE), expected_range);
        assert_eq!(
            value(&response, header::CONTENT_LENGTH),
            bytes.len().to_string(),
            "{headers:?}"
        );
        let body = response.bytes().await.unwrap();
        assert!(body == self.content[bytes], "{headers:?}: other bytes");
    }

    /// GETs with `headers` and checks the whole file is answered 200.
    async fn assert_whole(&self, headers: &[(HeaderName, &str)]) {
        let response = self.get(headers).await;
        assert_eq!(response.status(), StatusCode::OK, "{headers:?}");
        assert!(response.headers().get(header::CONTENT_RANGE).is_none());
        let body = response.bytes().await.unwrap();
        assert!(body == self.content, "{headers:?}: not the whole file");
    }
}

fn value(response: &Response, name: HeaderName) -> String {
    let url = response.url().path().to_owned();
    response
        .headers()
        .get(&name)
        .unwrap_or_else(|| panic!("{url} answered {} without {name}", response.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// `url` with its signature reversed: the same characters, no longer the signature.
fn with_forged_signature(url: &str) -> String {
    let mut forged = url::Url::parse(url).unwrap();
    let query: Vec<(String, String)> = forged.query_pairs().into_owned().collect();
    forged.query_pairs_mut().clear();
    for (name, value) in &query {
        let value = match name.as_str() {
            "signature" => value.chars().rev().collect(),
            _ => value.clone(),
        };
        forged.query_pairs_mut().append_pair(name, &value);
    }
    forged.into()
}

/// A 12 MiB file crosses two 5 MiB upload parts: ranges are exact wherever they fall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_ranges_get_exactly_their_bytes() {
    let file = Stored::local(12 * MIB + 3).await;
    let size = file.size();

    let whole = file.get(&[]).await;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(value(&whole, header::ACCEPT_RANGES), "bytes");
    assert_eq!(value(&whole, header::CONTENT_LENGTH), size.to_string());
    assert!(whole.bytes().await.unwrap() == file.content);

    file.assert_range("bytes=10-19", 10..20).await;
    file.assert_range("bytes=0-0", 0..1).await;
    file.assert_range(&format!("bytes={}-", size - 5), size - 5..size)
        .await;
    file.assert_range("bytes=-5", size - 5..size).await;
    let across_parts = 5 * MIB - 100..10 * MIB + 100;
    let spec = format!("bytes={}-{}", across_parts.start, across_parts.end - 1);
    file.assert_range(&spec, across_parts).await;
    // A range that runs past the end is cut to it; so is a suffix longer than the file.
    file.assert_range(
        &format!("bytes={}-{}", size - 3, size + 1000),
        size - 3..size,
    )
    .await;
    file.assert_range(&format!("bytes=-{}", size + 1000), 0..size)
        .await;

    // Several ranges at once get the whole file (RFC 9110 allows it), as do ranges the
    // server does not understand.
    file.assert_whole(&[(header::RANGE, "bytes=0-1,5-6")]).await;
    file.assert_whole(&[(header::RANGE, "bytes=9-2")]).await;
    file.assert_whole(&[(header::RANGE, "lines=1-2")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_past_the_end_are_unsatisfiable() {
    let file = Stored::local(1000).await;
    for range in ["bytes=1000-", "bytes=5000-", "bytes=5000-6000", "bytes=-0"] {
        let response = file.get(&[(header::RANGE, range)]).await;
        assert_eq!(
            response.status(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{range}"
        );
        assert_eq!(value(&response, header::CONTENT_RANGE), "bytes */1000");
    }
    file.assert_range("bytes=999-", 999..1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sha256_is_a_strong_etag_for_revalidating_and_resuming() {
    let file = Stored::local(300 * 1024).await;
    let etag = file.etag();
    let whole = file.get(&[]).await;
    assert_eq!(value(&whole, header::ETAG), etag);

    let unchanged = file.get(&[(header::IF_NONE_MATCH, etag.as_str())]).await;
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(value(&unchanged, header::ETAG), etag);
    assert!(unchanged.bytes().await.unwrap().is_empty());
    let listed = format!("\"other\", W/{etag}");
    let weakly = file.get(&[(header::IF_NONE_MATCH, listed.as_str())]).await;
    assert_eq!(weakly.status(), StatusCode::NOT_MODIFIED, "{listed}");
    file.assert_whole(&[(header::IF_NONE_MATCH, "\"other\"")])
        .await;

    // A download resumes from where it stopped only while the file is the same one.
    let rest = 1000..file.size();
    file.assert_part(
        &[
            (header::RANGE, "bytes=1000-"),
            (header::IF_RANGE, etag.as_str()),
        ],
        rest,
    )
    .await;
    file.assert_whole(&[
        (header::RANGE, "bytes=1000-"),
        (header::IF_RANGE, "\"other\""),
    ])
    .await;
    let weak = format!("W/{etag}");
    file.assert_whole(&[
        (header::RANGE, "bytes=1000-"),
        (header::IF_RANGE, weak.as_str()),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_describes_the_file_without_its_bytes() {
    let file = Stored::local(2 * MIB + 1).await;
    // Range is defined for GET only: a HEAD describes the whole file, range or not.
    for headers in [&[][..], &[(header::RANGE, "bytes=10-19")][..]] {
        let response = file.request(Method::HEAD, &file.url, headers).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            value(&response, header::CONTENT_LENGTH),
            file.size().to_string()
        );
        assert_eq!(value(&response, header::ETAG), file.etag());
        assert_eq!(value(&response, header::ACCEPT_RANGES), "bytes");
        assert_eq!(
            value(&response, header::CONTENT_TYPE),
            "application/octet-stream"
        );
        assert!(value(&response, header::CONTENT_DISPOSITION).starts_with("attachment;"));
        assert!(response.bytes().await.unwrap().is_empty());
    }
}

/// Stored HTML opened straight from its link must not run as the gateway's origin (the
/// page's): it is an attachment, its type is not sniffed, and CSP sandboxes it into an
/// origin of its own with no scripts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_html_is_an_attachment_that_cannot_run_as_the_page() {
    let html = b"<!doctype html><script>fetch('/auth.v1.AuthService/Me')</script>".to_vec();
    let file = Stored::on(Backend::Local, "page.html", "text/html", html).await;
    for headers in [&[][..], &[(header::RANGE, "bytes=0-9")][..]] {
        let response = file.get(headers).await;
        assert!(response.status().is_success());
        assert_eq!(value(&response, header::CONTENT_TYPE), "text/html");
        assert_eq!(
            value(&response, header::CONTENT_DISPOSITION),
            "attachment; filename=\"page.html\"; filename*=UTF-8''page.html"
        );
        assert_eq!(value(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        let policy = value(&response, header::CONTENT_SECURITY_POLICY);
        let directives: Vec<&str> = policy.split(';').map(str::trim).collect();
        assert!(directives.contains(&"sandbox"), "{policy}");
        assert!(directives.contains(&"default-src 'none'"), "{policy}");
    }
}

/// The link is a credential that expires: no shared cache may keep the file, and no
/// cache may serve it for longer than the link is valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_lasts_no_longer_than_the_link() {
    let file = Stored::local(1000).await;
    let link = file
        .user
        .client()
        .get_download_url(file.user.req(GetDownloadUrlRequest {
            key: file.key.clone(),
            expires_in: 60,
        }))
        .await
        .unwrap()
        .into_inner();
    let response = file.request(Method::GET, &link.url, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cache_control = value(&response, header::CACHE_CONTROL);
    let max_age = cache_control
        .strip_prefix("private, max-age=")
        .and_then(|seconds| seconds.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("Cache-Control: {cache_control}"));
    assert!((50..=60).contains(&max_age), "{cache_control}");
}

/// Ranges and validators are answered only to a valid link: a forged one learns
/// nothing, not even that its ETag guess was right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_does_not_get_past_the_signature() {
    let file = Stored::local(1000).await;
    let forged = with_forged_signature(&file.url);
    assert_ne!(forged, file.url);
    let unsigned = file.url.split('?').next().unwrap().to_owned();
    let etag = file.etag();
    for url in [&forged, &unsigned] {
        for headers in [
            &[(header::RANGE, "bytes=10-19")][..],
            &[(header::RANGE, "bytes=-5")][..],
            &[(header::RANGE, "bytes=5000-")][..],
            &[(header::IF_NONE_MATCH, etag.as_str())][..],
        ] {
            let response = file.request(Method::GET, url, headers).await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{headers:?}");
            assert!(response.headers().get(header::ETAG).is_none());
        }
        let head = file.request(Method::HEAD, url, &[]).await;
        assert_eq!(head.status(), StatusCode::FORBIDDEN);
    }
}

/// On S3 the link is a presigned S3 URL: the S3 server answers ranges itself, so a
/// resumed download or a seek works on that backend too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presigned_s3_link_answers_ranges_itself() {
    let file = Stored::on(
        Backend::S3,
        "data.bin",
        "application/octet-stream",
        pseudo_random(12 * MIB + 3, 17),
    )
    .await;
    assert!(!file.url.contains("/files/"), "{}", file.url);
    file.assert_range("bytes=10-19", 10..20).await;
    let across_parts = 5 * MIB - 100..10 * MIB + 100;
    let spec = format!("bytes={}-{}", across_parts.start, across_parts.end - 1);
    file.assert_range(&spec, across_parts).await;
}
