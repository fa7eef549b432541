//! A download whose client stops reading must not make the services buffer the file.
//! HTTP/2 flow control is what stops them: storage-service may run one stream window
//! (1 MiB) ahead of the gateway, and the gateway one client window (hyper's default,
//! 2 MiB) ahead of the client; past that, neither reads from its source. So while a
//! 256 MiB download sits unread, each process holds a few MiB more than an idle one.
//!
//! Measured on real storage-service and gateway processes (the kernel's high-water mark,
//! `VmHWM`, counts every buffer either ever touched), started afresh after the upload so
//! their peaks are the download's. A service that read ahead of its client — an
//! unbounded queue between the object store and the stream, a window sized for the file —
//! would pull the file in over loopback at tens to hundreds of MiB/s, and end the stall
//! far above the bound; the stall is long enough for that at the rate the rest of the
//! file then arrives (printed). The bound is on memory, not on time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{
    DownloadRequest, DownloadResponse, FileMetadata, ListFilesRequest, download_response,
};
use strongbox_tests::auth::{TestAuth, with_bearer};
use strongbox_tests::on_both_backends;
use strongbox_tests::process::ServiceProcess;
use strongbox_tests::s3::{ACCESS_KEY, SECRET_KEY, TestS3};
use strongbox_tests::storage::{BUCKET, Backend, metadata, pseudo_random, upload_messages};
use strongbox_tests::tools::workspace_binary;
use strongbox_tests::{Scratch, reserve_port};
use tonic::transport::{Channel, Endpoint};

const MIB: u64 = 1024 * 1024;
const FILE_SIZE: u64 = 256 * MIB;
/// How long the client reads nothing.
const STALL: Duration = Duration::from_secs(5);
/// storage-service's S3 request deadline in this test, shorter than the stall.
const STORAGE_TIMEOUT: Duration = Duration::from_secs(3);
/// A few HTTP/2 windows and socket buffers, with room for the allocator and the first
/// call's connections; buffering the file would take 256 MiB.
const GROWTH_LIMIT: u64 = 64 * MIB;

on_both_backends!(an_unread_download_holds_a_few_windows_in_each_service_not_the_file);

async fn an_unread_download_holds_a_few_windows_in_each_service_not_the_file(backend: Backend) {
    let dir = Scratch::new();
    let auth = TestAuth::start_in(&dir, |_| {});
    let s3 = (backend == Backend::S3).then(|| TestS3::start(&dir));
    let storage_url = free_url();
    let storage_environment = storage_environment(&dir, &auth, s3.as_ref(), &storage_url);
    let storage_binary = workspace_binary("storage-service");
    let storage = ServiceProcess::start(&storage_binary, &storage_environment, dir.path()).await;
    let token = auth
        .register_and_login("slow-reader@example.com")
        .await
        .access_token;
    let (key, sha256) = upload(&storage_url, &token).await;

    // Fresh processes: storage-service's peak so far is the upload's. Its S3 deadline
    // is now shorter than the stall: it bounds waiting for the server, never a reader's
    // pace (it once cut every download that outlasted it).
    storage.kill().await;
    let mut storage_environment = storage_environment;
    storage_environment.insert(
        "STORAGE_TIMEOUT_SECONDS".to_owned(),
        STORAGE_TIMEOUT.as_secs().to_string(),
    );
    let storage = ServiceProcess::start(&storage_binary, &storage_environment, dir.path()).await;
    let gateway_url = free_url();
    let gateway = ServiceProcess::start(
        &workspace_binary("gateway"),
        &gateway_environment(&auth, &storage_url, &gateway_url),
        dir.path(),
    )
    .await;
    let mut client = StorageServiceClient::new(channel(&gateway_url))
        .max_decoding_message_size(16 * MIB as usize);
    // One call first, so the gateway's upstream connections and both services' keys are
    // in place before the baseline is taken.
    client
        .list_files(with_bearer(ListFilesRequest::default(), &token))
        .await
        .expect("the gateway answers");
    let before = [storage.peak_rss(), gateway.peak_rss()];

    let request = DownloadRequest {
        key,
        ..Default::default()
    };
    let mut download = client
        .download(with_bearer(request, &token))
        .await
        .expect("the download opens")
        .into_inner();
    match download.message().await.expect("a first message") {
        Some(DownloadResponse {
            payload: Some(download_response::Payload::Info(info)),
        }) => assert_eq!(info.size, FILE_SIZE),
        other => panic!("a Download starts with the file's description, not {other:?}"),
    }
    tokio::time::sleep(STALL).await;
    let stalled = [storage.peak_rss(), gateway.peak_rss()];

    // The stall cost the download nothing: the rest arrives, whole and intact.
    let resumed = Instant::now();
    let (received, digest) = read_to_end(&mut download).await;
    let rest = resumed.elapsed();
    println!(
        "{backend:?}: peak RSS before / after a {} s stall: storage-service {} / {} MiB, \
         gateway {} / {} MiB; the rest of the file then arrived at {:.0} MiB/s",
        STALL.as_secs(),
        before[0] / MIB,
        stalled[0] / MIB,
        before[1] / MIB,
        stalled[1] / MIB,
        received as f64 / MIB as f64 / rest.as_secs_f64(),
    );
    assert_eq!(
        received, FILE_SIZE,
        "the whole file arrives after the stall"
    );
    assert_eq!(digest, sha256, "the file arrives intact after the stall");
    for (service, before, stalled) in [
        ("storage-service", before[0], stalled[0]),
        ("the gateway", before[1], stalled[1]),
    ] {
        let growth = stalled.saturating_sub(before);
        assert!(
            growth < GROWTH_LIMIT,
            "{service} grew by {} MiB while a {} MiB download sat unread",
            growth / MIB,
            FILE_SIZE / MIB
        );
    }
}

fn storage_environment(
    dir: &Scratch,
    auth: &TestAuth,
    s3: Option<&TestS3>,
    url: &str,
) -> BTreeMap<String, String> {
    let mut environment = BTreeMap::from([
        ("STORAGE_LISTEN".to_owned(), listen(url)),
        (
            "DATA_DIR".to_owned(),
            dir.join("storage").display().to_string(),
        ),
        ("AUTH_SERVICE_URL".to_owned(), auth.service.url()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ]);
    if let Some(s3) = s3 {
        environment.extend([
            ("STORAGE_ENDPOINT".to_owned(), s3.endpoint()),
            ("STORAGE_ACCESS_KEY".to_owned(), ACCESS_KEY.to_owned()),
            ("STORAGE_SECRET_KEY".to_owned(), SECRET_KEY.to_owned()),
            ("STORAGE_BUCKET".to_owned(), BUCKET.to_owned()),
        ]);
    }
    environment
}

fn gateway_environment(auth: &TestAuth, storage_url: &str, url: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("GATEWAY_LISTEN".to_owned(), listen(url)),
        ("AUTH_SERVICE_URL".to_owned(), auth.service.url()),
        ("STORAGE_SERVICE_URL".to_owned(), storage_url.to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ])
}

/// Uploads [`FILE_SIZE`] bytes straight to storage-service; returns the key and the
/// content's SHA-256.
async fn upload(storage_url: &str, token: &str) -> (String, String) {
    // 1 MiB slices of an 8 MiB random block, each MiB different from the one before.
    let block = Bytes::from(pseudo_random(8 * MIB as usize, 17));
    let chunks = move || {
        let block = block.clone();
        (0..FILE_SIZE / MIB).map(move |index| {
            let start = ((index % 8) * MIB) as usize;
            block.slice(start..start + MIB as usize)
        })
    };
    let mut digest = Sha256::new();
    chunks().for_each(|chunk| digest.update(&chunk));
    let sha256 = hex::encode(digest.finalize());
    let declared = FileMetadata {
        size: Some(FILE_SIZE),
        sha256: Some(sha256.clone()),
        ..metadata("big.bin", "")
    };
    let messages = upload_messages(declared, chunks());
    let uploaded = StorageServiceClient::new(channel(storage_url))
        .upload(with_bearer(futures::stream::iter(messages), token))
        .await
        .expect("the upload succeeds")
        .into_inner();
    assert_eq!(uploaded.size, FILE_SIZE);
    (uploaded.key, sha256)
}

/// Reads the rest of a Download: the bytes received and their SHA-256.
async fn read_to_end(download: &mut tonic::Streaming<DownloadResponse>) -> (u64, String) {
    let mut received = 0;
    let mut digest = Sha256::new();
    while let Some(message) = download.message().await.expect("the download continues") {
        match message.payload {
            Some(download_response::Payload::Chunk(chunk)) => {
                received += chunk.len() as u64;
                digest.update(&chunk);
            }
            other => panic!("Download sent {other:?} in the middle of the file"),
        }
    }
    (received, hex::encode(digest.finalize()))
}

fn free_url() -> String {
    let port = reserve_port(0).local_addr().expect("a bound port").port();
    format!("http://127.0.0.1:{port}")
}

fn listen(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .expect("a valid URL")
        .connect_lazy()
}
