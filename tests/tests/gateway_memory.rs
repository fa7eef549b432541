//! The gateway forwards uploads as HTTP/2 streams: its memory must stay flat whatever
//! the file size. Measured on a real `gateway` process (its kernel high-water mark,
//! `VmHWM`, counts every buffer) while a 256 MiB file, generated on the fly, streams
//! through it into storage-service.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use strongbox_proto::storage::v1::FileMetadata;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_tests::Scratch;
use strongbox_tests::process::ServiceProcess;
use strongbox_tests::storage::{Backend, Stack, metadata, pseudo_random, upload_messages};
use strongbox_tests::tools::workspace_binary;

const MIB: u64 = 1024 * 1024;
const FILE_SIZE: u64 = 256 * MIB;
/// HTTP/2 windows (a few MiB per stream) plus the process itself: well under this.
/// Buffering the file would take 256 MiB.
const PEAK_RSS_LIMIT: u64 = 96 * MIB;

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
    let environment = BTreeMap::from([
        ("GATEWAY_LISTEN".to_owned(), format!("127.0.0.1:{port}")),
        ("AUTH_SERVICE_URL".to_owned(), stack.auth.service.url()),
        ("STORAGE_SERVICE_URL".to_owned(), stack.storage.url()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ]);
    let scratch = Scratch::new();
    let gateway =
        ServiceProcess::start(&workspace_binary("gateway"), &environment, scratch.path()).await;

    let mut digest = Sha256::new();
    chunks().for_each(|chunk| digest.update(&chunk));
    let sha256 = hex_lower(&digest.finalize());

    let declared = FileMetadata {
        size: Some(FILE_SIZE),
        sha256: Some(sha256.clone()),
        ..metadata("big.bin", "")
    };
    let messages = upload_messages(declared, chunks());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    let mut client = StorageServiceClient::new(channel);
    let uploaded = client
        .upload(user.req(futures::stream::iter(messages).boxed()))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(uploaded.size, FILE_SIZE);
    assert_eq!(uploaded.sha256, sha256);
    let high_water = gateway.peak_rss();
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
