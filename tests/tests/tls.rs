//! HTTPS at the front door, from the real binaries: with `GATEWAY_TLS_CERT` and
//! `GATEWAY_TLS_KEY`, one port serves native gRPC (grpcurl with `-cacert`, and a tonic
//! client), grpc-web, the page and download links over TLS (h2, and HTTP/1.1 for
//! clients that ask for it), and nothing in plain text. The certificate is replaced on
//! SIGHUP and when its files change, and a broken replacement is never used. The
//! gateway's own `healthcheck` works over TLS (the deployment waits on it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{FileInfo, FileMetadata, GetDownloadUrlRequest, PutFileRequest};
use strongbox_tests::Scratch;
use strongbox_tests::auth::{new_account, with_bearer};
use strongbox_tests::process::Deployment;
use strongbox_tests::storage::{metadata, pseudo_random};
use strongbox_tests::tls::TestCa;
use strongbox_tests::tools;

/// Room for any P-256 certificate or key this suite makes, so one pair can replace
/// another at the same size.
const PEM_FILE_SIZE: usize = 4096;

/// A gateway serving TLS with a certificate of `ca`, the services behind it in plain
/// text on loopback (local storage, so download links come from the gateway).
async fn tls_gateway(scratch: &Scratch, ca: &TestCa) -> (Deployment, PathBuf, PathBuf) {
    let (cert, key) = ca
        .server_certificate()
        .write(scratch.path(), "gateway", PEM_FILE_SIZE);
    let deployment = Deployment::start(
        scratch,
        None,
        &[("RUST_LOG", "info".to_owned())],
        &[
            ("GATEWAY_TLS_CERT", cert.display().to_string()),
            ("GATEWAY_TLS_KEY", key.display().to_string()),
        ],
    )
    .await;
    (deployment, cert, key)
}

/// Stores `content` as `name` in one PutFile call.
async fn put_file(
    storage: &mut StorageServiceClient<tonic::transport::Channel>,
    token: &str,
    name: &str,
    content: &[u8],
) -> FileInfo {
    storage
        .put_file(with_bearer(
            PutFileRequest {
                metadata: Some(FileMetadata {
                    size: Some(content.len() as u64),
                    ..metadata(name, "")
                }),
                data: Bytes::copy_from_slice(content),
            },
            token,
        ))
        .await
        .unwrap_or_else(|status| panic!("PutFile {name}: {status:?}"))
        .into_inner()
        .file
        .expect("the stored file")
}

async fn grpcurl(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(tools::find("grpcurl"))
        .args(args)
        .output()
        .await
        .expect("grpcurl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_serves_grpc_grpc_web_the_page_and_downloads_over_tls() {
    let scratch = Scratch::new();
    let ca = TestCa::new("Strongbox test CA");
    let (deployment, _, _) = tls_gateway(&scratch, &ca).await;
    let gateway = deployment.gateway;
    let target = format!("localhost:{}", gateway.port());
    let ca_file = ca.write(&scratch.join("ca.pem"));
    let ca_file = ca_file.to_str().expect("a UTF-8 path");

    // grpcurl, trusting the test CA: health and reflection over TLS.
    let health = grpcurl(&[
        "-cacert",
        ca_file,
        "-d",
        r#"{"service": ""}"#,
        &target,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(
        health.status.success() && String::from_utf8_lossy(&health.stdout).contains("SERVING"),
        "{health:?}"
    );
    let listed = grpcurl(&["-cacert", ca_file, &target, "list"]).await;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("auth.v1.AuthService") && listed.contains("storage.v1.StorageService"),
        "{listed}"
    );
    // … and refusing what it cannot verify, and plain text.
    let untrusted = grpcurl(&[
        "-max-time",
        "5",
        "-d",
        r#"{"service": ""}"#,
        &target,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(!untrusted.status.success(), "{untrusted:?}");
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("certificate"),
        "{untrusted:?}"
    );
    let plain = grpcurl(&[
        "-max-time",
        "5",
        "-plaintext",
        "-d",
        r#"{"service": ""}"#,
        &target,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(
        !plain.status.success(),
        "plain text must not be served: {plain:?}"
    );

    // A tonic client over TLS: an account, an upload, a download link.
    let channel = ca.grpc_channel(gateway);
    let token = new_account(channel.clone(), "tls@example.com", "a password over TLS")
        .await
        .access_token;
    let content = pseudo_random(300_000, 9);
    let mut storage = StorageServiceClient::new(channel);
    let stored = put_file(&mut storage, &token, "over-tls.bin", &content).await;
    let link = storage
        .get_download_url(with_bearer(
            GetDownloadUrlRequest {
                key: stored.key,
                expires_in: 60,
            },
            &token,
        ))
        .await
        .expect("GetDownloadUrl over TLS")
        .into_inner()
        .url;
    // The link's path and signature, at the gateway's HTTPS address.
    let link = url::Url::parse(&link).expect("a URL");
    let link = format!(
        "https://{target}{}?{}",
        link.path(),
        link.query().unwrap_or_default()
    );

    // The page and the download link over h2 (ALPN) …
    let https = ca.http_client();
    let page = https
        .get(format!("https://{target}/"))
        .send()
        .await
        .expect("the page over TLS");
    assert_eq!(page.status(), 200);
    assert_eq!(page.version(), http::Version::HTTP_2);
    assert!(page.text().await.unwrap().contains("<html"));
    let downloaded = https.get(&link).send().await.expect("the download link");
    assert_eq!(downloaded.status(), 200);
    assert_eq!(downloaded.bytes().await.unwrap(), content.as_slice());
    let ranged = https
        .get(&link)
        .header(http::header::RANGE, "bytes=1000-1999")
        .send()
        .await
        .expect("a range of the download link");
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().await.unwrap(), &content[1000..2000]);

    // … and over HTTP/1.1 for a client that offers nothing else.
    let http1 = ca.http_client_with(reqwest::Client::builder().http1_only());
    let page = http1
        .get(format!("https://{target}/"))
        .send()
        .await
        .expect("the page over TLS, HTTP/1.1");
    assert_eq!(page.version(), http::Version::HTTP_11);
    assert_eq!(page.status(), 200);

    // grpc-web, as the page sends it, over the same port.
    let grpc_web = https
        .post(format!("https://{target}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .expect("a grpc-web call over TLS");
    assert_eq!(grpc_web.status(), 200);
    let body = grpc_web.bytes().await.unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("grpc-status:0"),
        "{body:?}"
    );
}

/// Whether a client trusting only `ca` completes a request to the gateway.
async fn trusted_by(ca: &TestCa, gateway: SocketAddr) -> bool {
    ca.http_client()
        .get(format!("https://localhost:{}/", gateway.port()))
        .send()
        .await
        .is_ok()
}

/// Waits up to 10 s for `gateway` to serve a certificate of `ca`.
async fn until_trusted_by(ca: &TestCa, gateway: SocketAddr, what: &str) {
    let began = tokio::time::Instant::now();
    while !trusted_by(ca, gateway).await {
        assert!(began.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Gives `path` the modification time of `like`, so only a SIGHUP can tell it changed.
fn same_stamp(path: &Path, like: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(like))
        .expect("the modification time is set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_replaced_on_change_and_on_sighup_and_never_by_a_broken_one() {
    let scratch = Scratch::new();
    let (first, second, third) = (
        TestCa::new("first CA"),
        TestCa::new("second CA"),
        TestCa::new("third CA"),
    );
    let (deployment, cert, key) = tls_gateway(&scratch, &first).await;
    let gateway = deployment.gateway;
    assert!(trusted_by(&first, gateway).await);
    assert!(!trusted_by(&second, gateway).await);

    // A renewer writes a new pair: served without a restart.
    second
        .server_certificate()
        .write(scratch.path(), "gateway", PEM_FILE_SIZE);
    until_trusted_by(
        &second,
        gateway,
        "a changed certificate file is never picked up",
    )
    .await;

    // A broken replacement (the key of another certificate) is refused; the pair in use
    // stays.
    let stray = third.server_certificate();
    std::fs::write(
        &key,
        format!(
            "{}{}",
            stray.key,
            "\n".repeat(PEM_FILE_SIZE - stray.key.len())
        ),
    )
    .expect("the key is replaced");
    tokio::time::sleep(tls_check_interval() * 2).await;
    assert!(
        trusted_by(&second, gateway).await,
        "a key that does not match its certificate replaced a working pair"
    );

    // SIGHUP: a new pair at the same size and modification times as the files it
    // replaces (staged, then renamed into place at once), so only the signal can be
    // what loads it.
    let stamp = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
    let (cert_stamp, key_stamp) = (stamp(&cert), stamp(&key));
    let (staged_cert, staged_key) =
        third
            .server_certificate()
            .write(scratch.path(), "staged", PEM_FILE_SIZE);
    same_stamp(&staged_cert, cert_stamp);
    same_stamp(&staged_key, key_stamp);
    std::fs::rename(&staged_cert, &cert).unwrap();
    std::fs::rename(&staged_key, &key).unwrap();
    tokio::time::sleep(tls_check_interval() * 2).await;
    assert!(
        !trusted_by(&third, gateway).await,
        "the pair changed without a SIGHUP; this test cannot tell the two apart"
    );
    deployment.gateway_process.signal("HUP");
    until_trusted_by(&third, gateway, "SIGHUP did not reload the certificate").await;
    assert!(!trusted_by(&second, gateway).await);
}

/// How often the gateway looks at its certificate files.
fn tls_check_interval() -> Duration {
    gateway::tls::CHANGE_CHECK
}

/// TLS on the private hops too: auth-service and storage-service serve certificates of a
/// service CA, and the gateway and storage-service reach them at https:// URLs trusting
/// that CA alone. A whole account-and-file round trip works through it, and the services
/// no longer answer plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_can_be_called_over_tls_trusting_only_the_service_ca() {
    let scratch = Scratch::new();
    let service_ca = TestCa::new("Strongbox service CA");
    let deployment = Deployment::start_with(
        &scratch,
        None,
        &[("RUST_LOG", "warn".to_owned())],
        &[],
        Some(&service_ca),
    )
    .await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", deployment.gateway))
        .expect("a URL")
        .connect_lazy();
    let token = new_account(
        channel.clone(),
        "hops@example.com",
        "a password over every hop",
    )
    .await
    .access_token;
    let content = pseudo_random(200_000, 3);
    // storage-service verifies the token with auth-service's keys, fetched over TLS.
    let stored = put_file(
        &mut StorageServiceClient::new(channel.clone()),
        &token,
        "hops.bin",
        &content,
    )
    .await;
    let mut download = StorageServiceClient::new(channel)
        .download(with_bearer(
            strongbox_proto::storage::v1::DownloadRequest {
                key: stored.key,
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("Download")
        .into_inner();
    let mut received = Vec::new();
    while let Some(message) = download.message().await.expect("the stream") {
        if let Some(strongbox_proto::storage::v1::download_response::Payload::Chunk(chunk)) =
            message.payload
        {
            received.extend_from_slice(&chunk);
        }
    }
    assert!(received == content, "the file came back whole");

    // The services speak only TLS now, with a certificate of the service CA.
    let ca_file = scratch.join("service-ca.pem");
    for service in [deployment.auth, deployment.storage] {
        let target = service.to_string();
        let plain = grpcurl(&[
            "-max-time",
            "5",
            "-plaintext",
            "-d",
            r#"{"service": ""}"#,
            &target,
            "grpc.health.v1.Health/Check",
        ])
        .await;
        assert!(!plain.status.success(), "{target} answered plain text");
        let verified = grpcurl(&[
            "-cacert",
            ca_file.to_str().unwrap(),
            "-d",
            r#"{"service": ""}"#,
            &target,
            "grpc.health.v1.Health/Check",
        ])
        .await;
        assert!(
            String::from_utf8_lossy(&verified.stdout).contains("SERVING"),
            "{target}: {verified:?}"
        );
    }
}

/// An https:// service URL without a CA to trust is a configuration error at start,
/// not a connection that trusts whatever answers.
#[tokio::test]
async fn an_https_service_url_needs_the_service_ca() {
    let scratch = Scratch::new();
    let started = tokio::process::Command::new(tools::workspace_binary("gateway"))
        .env_clear()
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("AUTH_SERVICE_URL", "https://127.0.0.1:1")
        .current_dir(scratch.path())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), started)
        .await
        .expect("the gateway stops at once")
        .expect("the gateway runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SERVICE_CA_FILE") && stderr.contains("auth-service"),
        "{stderr}"
    );
}
