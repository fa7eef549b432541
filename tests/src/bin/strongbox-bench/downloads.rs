//! Download throughput, beside the uploads: (a) `object_store` GET straight from the S3
//! server, the limit of this machine; (b) storage-service's `Download` stream; (c) the
//! same through the gateway; (d) the presigned S3 URL (`GetDownloadUrl` through the
//! gateway) fetched over HTTP, as a browser downloads. Each measurement also records the
//! peak RSS of storage-service and the gateway, restarted before each column so a
//! peak is that column's.
//!
//! The files are uploaded once per size through storage-service, untimed: one per client,
//! each its own user's, as the uploads have one user per client. Every byte received is
//! counted and each download's size checked, and the first download of each
//! measurement is hashed against the content's SHA-256 (about 0.7 ms of this process's
//! CPU per MiB on that one download, the same on every path), so a broken path cannot
//! look fast.
//!
//! A slow reader then holds one download of the largest file open through the gateway,
//! reading at 1 MiB/s: HTTP/2 flow control must stop both services at a few windows, so
//! their memory stays that of one idle stream however slowly a client reads.

use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use sha2::{Digest, Sha256};
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{
    DownloadRequest, DownloadResponse, GetDownloadUrlRequest, download_response,
};
use strongbox_tests::auth::with_bearer;
use strongbox_tests::process::mib;
use tonic::transport::Channel;

use crate::Plan;
use crate::system::System;
use crate::transfers::{Cpu, CpuMeter, MIB, Row, content_sha256, human, run, timed};
use crate::uploads::{Clients, delete_all, upload_grpc, warm_up};

/// How fast the slow reader reads.
pub const SLOW_READ_RATE: u64 = MIB;
/// Test files uploaded at once: s3s-fs copies a completed upload's parts into the object,
/// so each upload in progress briefly needs twice its size on disk.
const UPLOADS_AT_ONCE: usize = 4;

pub struct Downloads {
    pub rows: Vec<Row>,
    /// `None` when no size was measured.
    pub slow_reader: Option<SlowReader>,
}

/// One download through the gateway read at [`SLOW_READ_RATE`] for `window`.
pub struct SlowReader {
    pub size: u64,
    pub window: Duration,
    pub received: u64,
    /// Peak RSS in MiB of the freshly started processes meanwhile.
    pub storage_peak: u64,
    pub gateway_peak: u64,
}

/// Every download row of `plan` (each size's files uploaded once, measured at each
/// concurrency, deleted), then the slow reader on the largest size.
pub async fn measure(system: &mut System, clients: &Clients, plan: &Plan) -> Downloads {
    let http = http_client();
    let clients_at_most = plan.concurrency.iter().copied().max().unwrap_or(1);
    let largest = plan.download_sizes.iter().copied().max();
    let mut rows = Vec::new();
    let mut slow_reader = None;
    for &size in &plan.download_sizes {
        let files = Files::upload(clients, size, clients_at_most).await;
        for &concurrency in &plan.concurrency {
            let rounds = (least_per_measurement(plan) / (size * concurrency as u64)).max(1);
            let row = measure_row(system, clients, &http, &files, concurrency, rounds).await;
            println!("{}", crate::report::throughput_line(&row));
            println!("{}", crate::report::cpu_line(&row));
            rows.push(row);
        }
        if slow_reader.is_none() && Some(size) == largest {
            let slow = read_slowly(system, clients, &files, slow_read_window(plan.quick)).await;
            println!("{}", crate::report::slow_reader_line(&slow));
            slow_reader = Some(slow);
        }
        files.delete(clients).await;
    }
    Downloads { rows, slow_reader }
}

/// Downloads read the same objects again (from the page cache: no disk in the way), and
/// a 64 MiB download takes well under a second: 256 MiB per measurement measured one
/// build at 0.73–1.18 of (a) for 64 MiB × 1, so they move at least 1 GiB.
pub fn least_per_measurement(plan: &Plan) -> u64 {
    if plan.least_per_measurement == 0 {
        0
    } else {
        plan.least_per_measurement.max(1024 * MIB)
    }
}

fn slow_read_window(quick: bool) -> Duration {
    Duration::from_secs(if quick { 3 } else { 30 })
}

/// One file of `size` bytes per client, client `n`'s owned by user `n`.
struct Files {
    size: u64,
    sha256: String,
    keys: Vec<String>,
}

impl Files {
    async fn upload(clients: &Clients, size: u64, count: usize) -> Self {
        assert!(
            count <= clients.tokens.len(),
            "at most {} clients at once",
            clients.tokens.len()
        );
        let sha256 = content_sha256(size, &clients.block);
        let uploads = clients.tokens[..count].iter().map(|token| {
            upload_grpc(
                clients.storage.clone(),
                token.clone(),
                size,
                clients.block.clone(),
            )
        });
        let uploaded: Vec<_> = futures::stream::iter(uploads)
            .buffered(UPLOADS_AT_ONCE)
            .collect()
            .await;
        for file in &uploaded {
            assert_eq!(file.size, size, "a test file is stored whole");
            assert_eq!(file.sha256, sha256, "a test file is stored intact");
        }
        // The kernel writes the new objects back to disk in its own time; wait for it
        // here, or that writeback (up to 16 GiB) would take the CPU and the disk from the
        // first column measured, (a).
        let synced = tokio::process::Command::new("sync").status().await;
        assert!(
            matches!(&synced, Ok(status) if status.success()),
            "sync: {synced:?}"
        );
        Self {
            size,
            sha256,
            keys: uploaded.into_iter().map(|file| file.key).collect(),
        }
    }

    async fn delete(self, clients: &Clients) {
        delete_all(clients.storage.clone(), &clients.tokens, 1, self.keys).await;
    }
}

#[derive(Clone, Copy)]
enum Via {
    Storage,
    Gateway,
    PresignedUrl,
}

async fn measure_row(
    system: &mut System,
    clients: &Clients,
    http: &reqwest::Client,
    files: &Files,
    concurrency: usize,
    rounds: u64,
) -> Row {
    let total = files.size * concurrency as u64 * rounds;
    let rounds_per_client = rounds as usize;
    // Client `index / rounds` downloads its own user's file; the first download of a
    // measurement is hashed.
    let owner = |index: usize| index / rounds_per_client;
    let check = |index: usize| Received::new(files, index == 0);

    let mut cpu = [Cpu::default(); 4];
    let meter = CpuMeter::start(system);
    let downloads = run(concurrency, rounds, |index| {
        download_direct(clients, &files.keys[owner(index)], check(index))
    });
    // Every download checks itself; there is nothing to collect.
    let (a, _) = timed(downloads).await;
    cpu[0] = meter.per_mib(total);

    let mut storage_peak = [0; 3];
    let mut gateway_peak = [0; 2];
    let mut rates = [total as f64 / MIB as f64 / a.as_secs_f64(), 0.0, 0.0, 0.0];
    for (column, via) in [Via::Storage, Via::Gateway, Via::PresignedUrl]
        .into_iter()
        .enumerate()
    {
        system.storage.restart().await;
        system.gateway.restart().await;
        warm_up(clients).await;
        let meter = CpuMeter::start(system);
        let downloads = run(concurrency, rounds, |index| {
            let (key, token) = (&files.keys[owner(index)], &clients.tokens[owner(index)]);
            let received = check(index);
            async move {
                match via {
                    Via::Storage => download_grpc(&clients.storage, token, key, received).await,
                    Via::Gateway => download_grpc(&clients.gateway, token, key, received).await,
                    Via::PresignedUrl => {
                        download_url(&clients.gateway, http, token, key, received).await;
                    }
                }
            }
        });
        let (elapsed, _) = timed(downloads).await;
        cpu[column + 1] = meter.per_mib(total);
        rates[column + 1] = total as f64 / MIB as f64 / elapsed.as_secs_f64();
        storage_peak[column] = mib(system.storage.process().peak_rss());
        if column > 0 {
            gateway_peak[column - 1] = mib(system.gateway.process().peak_rss());
        }
    }
    Row {
        size: files.size,
        concurrency,
        rounds,
        rates,
        storage_peak,
        gateway_peak,
        cpu,
    }
}

/// What one download received: every byte counted, and hashed if asked.
struct Received<'a> {
    files: &'a Files,
    bytes: u64,
    digest: Option<Sha256>,
}

impl<'a> Received<'a> {
    fn new(files: &'a Files, hash: bool) -> Self {
        Self {
            files,
            bytes: 0,
            digest: hash.then(Sha256::new),
        }
    }

    fn add(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        if let Some(digest) = &mut self.digest {
            digest.update(chunk);
        }
    }

    /// Panics, naming the path, unless the whole file (and, if hashed, the right
    /// content) arrived.
    fn check(self, path: &str) {
        assert_eq!(
            self.bytes, self.files.size,
            "{path} delivered {} bytes of a {}-byte file",
            self.bytes, self.files.size
        );
        if let Some(digest) = self.digest {
            assert_eq!(
                hex::encode(digest.finalize()),
                self.files.sha256,
                "{path} delivered other bytes than were uploaded"
            );
        }
    }
}

async fn download_direct(clients: &Clients, key: &str, mut received: Received<'_>) {
    // storage-service names each object by its key (`ObjectKey::path`).
    let mut body = clients
        .direct
        .get(&Path::from(key))
        .await
        .expect("the object is there")
        .into_stream();
    while let Some(chunk) = body.next().await {
        received.add(&chunk.expect("the object's bytes arrive"));
    }
    received.check("object_store GET");
}

async fn download_grpc(
    client: &StorageServiceClient<Channel>,
    token: &str,
    key: &str,
    mut received: Received<'_>,
) {
    let mut stream = open_download(client, token, key).await;
    while let Some(message) = stream.message().await.expect("the download continues") {
        match message.payload {
            Some(download_response::Payload::Chunk(chunk)) => received.add(&chunk),
            other => panic!("Download sent {other:?} after its first message"),
        }
    }
    received.check("Download");
}

/// A Download of `key`, its first message (the file's description) read and checked.
async fn open_download(
    client: &StorageServiceClient<Channel>,
    token: &str,
    key: &str,
) -> tonic::Streaming<DownloadResponse> {
    let request = DownloadRequest {
        key: key.to_owned(),
        ..Default::default()
    };
    let mut stream = client
        .clone()
        .download(with_bearer(request, token))
        .await
        .expect("the download opens")
        .into_inner();
    let first = stream.message().await.expect("a first message");
    assert!(
        matches!(
            first,
            Some(DownloadResponse {
                payload: Some(download_response::Payload::Info(_))
            })
        ),
        "a Download starts with the file's description, not {first:?}"
    );
    stream
}

async fn download_url(
    gateway: &StorageServiceClient<Channel>,
    http: &reqwest::Client,
    token: &str,
    key: &str,
    mut received: Received<'_>,
) {
    let request = GetDownloadUrlRequest {
        key: key.to_owned(),
        expires_in: 0,
    };
    let url = gateway
        .clone()
        .get_download_url(with_bearer(request, token))
        .await
        .expect("a download URL")
        .into_inner()
        .url;
    let mut response = http
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("the presigned URL answers");
    while let Some(chunk) = response.chunk().await.expect("the body continues") {
        received.add(&chunk);
    }
    received.check("the presigned URL");
}

/// An HTTP client as browsers are: no Nagle delay, a connection per download at once.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client")
}

/// Opens client 0's file through the gateway (freshly started, as is storage-service)
/// and reads it at [`SLOW_READ_RATE`] for `window`; then the services' peak memory.
async fn read_slowly(
    system: &mut System,
    clients: &Clients,
    files: &Files,
    window: Duration,
) -> SlowReader {
    system.storage.restart().await;
    system.gateway.restart().await;
    warm_up(clients).await;
    let mut stream = open_download(&clients.gateway, &clients.tokens[0], &files.keys[0]).await;
    let began = Instant::now();
    let mut received = 0;
    while began.elapsed() < window && received < files.size {
        // Never ahead of the rate: wait until what was read so far is due.
        let due = Duration::from_secs_f64(received as f64 / SLOW_READ_RATE as f64);
        tokio::time::sleep_until((began + due).into()).await;
        match stream.message().await.expect("the download continues") {
            Some(DownloadResponse {
                payload: Some(download_response::Payload::Chunk(chunk)),
            }) => received += chunk.len() as u64,
            other => panic!("Download sent {other:?} in the middle of the file"),
        }
    }
    let slow = SlowReader {
        size: files.size,
        window,
        received,
        storage_peak: mib(system.storage.process().peak_rss()),
        gateway_peak: mib(system.gateway.process().peak_rss()),
    };
    drop(stream);
    slow
}

/// What the slow reader did, in words, for the report.
pub fn describe(slow: &SlowReader) -> String {
    format!(
        "one {} download through the gateway, read at {} MiB/s for {} s",
        human(slow.size),
        SLOW_READ_RATE / MIB,
        slow.window.as_secs()
    )
}
