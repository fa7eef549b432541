//! The gateway forwards uploads as HTTP/2 streams: its memory must stay flat whatever
//! the file size. Measured on a real `gateway` process (its kernel high-water mark,
//! `VmHWM`, counts every buffer) while a 256 MiB file, generated on the fly, streams
//! through it into storage-service.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{FileMetadata, UploadEnd, UploadRequest, upload_request};
use strongbox_tests::storage::{Backend, Stack, metadata, pseudo_random};
use strongbox_tests::tools::workspace_binary;

const MIB: u64 = 1024 * 1024;
const FILE_SIZE: u64 = 256 * MIB;
/// HTTP/2 windows (a few MiB per stream) plus the process itself: well under this.
/// Buffering the file would take 256 MiB.
const PEAK_RSS_LIMIT: u64 = 96 * MIB;

/// Kills the gateway process when the test ends, however it ends.
struct Process(tokio::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The file as a stream of 1 MiB chunks, made as they are sent; the same seed gives the
/// same bytes, so the digest is computed by a first pass over an identical stream.
fn chunks() -> impl Iterator<Item = Bytes> {
    (0..FILE_SIZE / MIB).map(|index| Bytes::from(pseudo_random(MIB as usize, index + 1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_upload_streams_through_the_gateway_in_flat_memory() {
    let stack = Stack::start(Backend::Local, |_| {}).await;
    let user = stack.user("memory").await;
    let port = strongbox_tests::reserve_port(0)
        .local_addr()
        .unwrap()
        .port();
    let binary = workspace_binary("gateway");
    let environment = [
        ("GATEWAY_LISTEN", format!("127.0.0.1:{port}")),
        ("AUTH_SERVICE_URL", stack.auth.service.url()),
        ("STORAGE_SERVICE_URL", stack.storage.url()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let child = tokio::process::Command::new(&binary)
        .env_clear()
        .envs(environment.clone())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let gateway = Process(child);
    let pid = gateway.0.id().unwrap();
    let mut healthy = false;
    for _ in 0..100 {
        let check = tokio::process::Command::new(&binary)
            .arg("healthcheck")
            .env_clear()
            .envs(environment.clone())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .unwrap();
        if check.success() {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "the gateway never became healthy");

    let mut digest = Sha256::new();
    chunks().for_each(|chunk| digest.update(&chunk));
    let sha256 = hex_lower(&digest.finalize());

    let streaming = Arc::new(AtomicBool::new(true));
    let peak_sample = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (streaming, peak_sample) = (streaming.clone(), peak_sample.clone());
        tokio::spawn(async move {
            while streaming.load(Ordering::Relaxed) {
                if let Some(rss) = status_field(pid, "VmRSS:") {
                    peak_sample.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let declared = FileMetadata {
        size: Some(FILE_SIZE),
        sha256: Some(sha256.clone()),
        ..metadata("big.bin", "")
    };
    let messages = std::iter::once(upload_request::Payload::Metadata(declared))
        .chain(chunks().map(upload_request::Payload::Chunk))
        .chain(std::iter::once(upload_request::Payload::End(UploadEnd {})))
        .map(|payload| UploadRequest {
            payload: Some(payload),
        });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    let mut client = StorageServiceClient::new(channel);
    let uploaded = client
        .upload(user.req(futures::stream::iter(messages).boxed()))
        .await
        .unwrap()
        .into_inner();
    streaming.store(false, Ordering::Relaxed);
    sampler.await.unwrap();

    assert_eq!(uploaded.size, FILE_SIZE);
    assert_eq!(uploaded.sha256, sha256);
    let high_water = status_field(pid, "VmHWM:")
        .unwrap()
        .max(peak_sample.load(Ordering::Relaxed));
    println!(
        "peak RSS of the gateway during a 256 MiB upload: {} MiB",
        high_water / MIB
    );
    assert!(
        high_water < PEAK_RSS_LIMIT,
        "the gateway peaked at {} MiB",
        high_water / MIB
    );
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
