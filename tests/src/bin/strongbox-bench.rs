//! Upload throughput, side by side in one run, against the physical limit of this
//! machine: (a) object_store multipart straight to the S3 server, (b) through
//! storage-service, (c) through the gateway over native gRPC, (d) through the gateway
//! over grpc-web (tonic-web's client, resumable sessions, as browsers upload). Absolute
//! numbers drift with whatever else the machine does; the ratios to (a) hold.
//!
//! ```text
//! cargo run --release -p strongbox-tests --bin strongbox-bench            # full, writes docs/BENCHMARKS.md
//! cargo run -p strongbox-tests --bin strongbox-bench -- --quick --out F   # what the test command runs
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{
    CompleteUploadRequest, CreateUploadRequest, FileMetadata, UploadChunkRequest, UploadEnd,
    UploadRequest, upload_request,
};
use strongbox_tests::auth::with_bearer;
use strongbox_tests::gateway::System;
use strongbox_tests::s3::{ACCESS_KEY, SECRET_KEY};
use strongbox_tests::storage::{BUCKET, Backend, metadata, pseudo_random};
use tonic::transport::Channel;

const MIB: u64 = 1024 * 1024;
/// Clients send 1 MiB messages (grpc-web: 4 MiB session chunks), all slices of one
/// random block, so producing data costs the client nothing.
const CHUNK: u64 = MIB;
const SESSION_CHUNK: u64 = 4 * MIB;

struct Plan {
    sizes: Vec<u64>,
    concurrency: Vec<usize>,
    out: PathBuf,
}

fn plan() -> Plan {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    let out = args
        .iter()
        .position(|arg| arg == "--out")
        .and_then(|at| args.get(at + 1))
        .map_or_else(
            || {
                PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../docs/BENCHMARKS.md"
                ))
            },
            PathBuf::from,
        );
    if quick {
        Plan {
            sizes: vec![MIB, 16 * MIB],
            concurrency: vec![1, 4],
            out,
        }
    } else {
        Plan {
            sizes: vec![MIB, 64 * MIB, 1024 * MIB],
            concurrency: vec![1, 16],
            out,
        }
    }
}

fn main() {
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: no other thread exists yet; the runtime starts below.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(bench());
}

async fn bench() {
    let plan = plan();
    let system = System::start(Backend::S3).await;
    let user = system.user("bench").await;
    let block = Bytes::from(pseudo_random((SESSION_CHUNK) as usize, 7));
    let s3 = system.stack.s3.as_ref().expect("an S3 backend");
    let direct: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(s3.endpoint())
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .build()
            .expect("an S3 client"),
    );
    let storage = StorageServiceClient::new(system.stack.storage.channel())
        .max_decoding_message_size(16 * MIB as usize);
    let gateway = StorageServiceClient::new(system.gateway.channel())
        .max_decoding_message_size(16 * MIB as usize);
    let grpc_web = grpc_web_client(&system.url());
    let part_size = system.stack.config.upload_part_size as usize;
    let parts_in_flight = system.stack.config.upload_parts_in_flight as usize;

    let mut rows = String::new();
    for &size in &plan.sizes {
        for &concurrency in &plan.concurrency {
            let total = size * concurrency as u64;
            let a = rate(
                total,
                run(concurrency, |i| {
                    upload_direct(
                        direct.clone(),
                        i,
                        size,
                        block.clone(),
                        part_size,
                        parts_in_flight,
                    )
                }),
            )
            .await;
            let b = rate(
                total,
                run(concurrency, |_| {
                    upload_grpc(storage.clone(), user.token.clone(), size, block.clone())
                }),
            )
            .await;
            let c = rate(
                total,
                run(concurrency, |_| {
                    upload_grpc(gateway.clone(), user.token.clone(), size, block.clone())
                }),
            )
            .await;
            let d = rate(
                total,
                run(concurrency, |_| {
                    upload_session(grpc_web.clone(), user.token.clone(), size, block.clone())
                }),
            )
            .await;
            let line = format!(
                "| {} | {concurrency} | {a:.0} | {b:.0} ({:.2}) | {c:.0} ({:.2}) | {d:.0} ({:.2}) |",
                human(size),
                b / a,
                c / a,
                d / a
            );
            println!("{line}");
            writeln!(rows, "{line}").ok();
        }
    }
    let report = format!(
        "# Benchmarks\n\nWritten by `strongbox-bench` ({mode}) on {date}, {cores} cores, {build} build.\n\
         Upload throughput in MiB/s (ratio to (a) in parentheses). The S3 server is s3s-fs, in the same\n\
         process as every service and client, on one machine: (a) is that machine's limit.\n\n\
         | size | concurrent | (a) object_store → S3 | (b) storage-service | (c) gateway, gRPC | (d) gateway, grpc-web |\n\
         |---|---|---|---|---|---|\n{rows}\n\
         Targets (issue 6): (c) ≥ 0.9 × (a), (d) ≥ 0.7 × (a). Peak RSS is measured by the\n\
         process-level tests: storage-service ≈ 45 MiB and the gateway ≈ 17 MiB during a 256 MiB upload.\n",
        mode = if plan.sizes.len() == 2 {
            "quick mode"
        } else {
            "full run"
        },
        date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cores = std::thread::available_parallelism().map_or(0, usize::from),
        build = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    std::fs::write(&plan.out, report).expect("the report is written");
    println!("wrote {}", plan.out.display());
}

async fn run<F, Fut>(concurrency: usize, start: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let began = Instant::now();
    join_all((0..concurrency).map(start)).await;
    began.elapsed()
}

async fn rate(total: u64, elapsed: impl std::future::Future<Output = Duration>) -> f64 {
    total as f64 / MIB as f64 / elapsed.await.as_secs_f64()
}

fn chunks(size: u64, block: &Bytes, chunk: u64) -> impl Iterator<Item = Bytes> + Send + 'static {
    let block = block.clone();
    (0..size.div_ceil(chunk)).map(move |index| {
        let length = chunk.min(size - index * chunk) as usize;
        block.slice(..length)
    })
}

async fn upload_direct(
    store: Arc<dyn ObjectStore>,
    index: usize,
    size: u64,
    block: Bytes,
    part: usize,
    in_flight: usize,
) {
    let path = Path::from(format!("bench/direct-{index}-{}", uuid::Uuid::new_v4()));
    let mut writer = WriteMultipart::new_with_chunk_size(
        store
            .put_multipart(&path)
            .await
            .expect("a multipart upload"),
        part,
    );
    for chunk in chunks(size, &block, CHUNK) {
        writer
            .wait_for_capacity(in_flight)
            .await
            .expect("parts upload");
        writer.put(chunk);
    }
    writer.finish().await.expect("the upload completes");
}

async fn upload_grpc(
    mut client: StorageServiceClient<Channel>,
    token: String,
    size: u64,
    block: Bytes,
) {
    let declared = FileMetadata {
        size: Some(size),
        ..metadata("bench.bin", "")
    };
    let messages = std::iter::once(upload_request::Payload::Metadata(declared))
        .chain(chunks(size, &block, CHUNK).map(upload_request::Payload::Chunk))
        .chain(std::iter::once(upload_request::Payload::End(UploadEnd {})))
        .map(|payload| UploadRequest {
            payload: Some(payload),
        });
    client
        .upload(with_bearer(futures::stream::iter(messages), &token))
        .await
        .expect("the upload succeeds");
}

type GrpcWeb = StorageServiceClient<
    tonic_web::GrpcWebClientService<
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            tonic_web::GrpcWebCall<tonic::body::Body>,
        >,
    >,
>;

fn grpc_web_client(url: &str) -> GrpcWeb {
    let http1 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let service = tonic_web::GrpcWebClientService::new(http1);
    StorageServiceClient::with_origin(service, url.parse().expect("a URL"))
}

async fn upload_session(mut client: GrpcWeb, token: String, size: u64, block: Bytes) {
    let declared = FileMetadata {
        size: Some(size),
        ..metadata("bench.bin", "")
    };
    let session = client
        .create_upload(with_bearer(
            CreateUploadRequest {
                metadata: Some(declared),
            },
            &token,
        ))
        .await
        .expect("a session")
        .into_inner();
    let mut offset = 0;
    for data in chunks(size, &block, SESSION_CHUNK) {
        let chunk = UploadChunkRequest {
            upload_id: session.upload_id.clone(),
            offset,
            data,
        };
        offset = client
            .upload_chunk(with_bearer(chunk, &token))
            .await
            .expect("a chunk")
            .into_inner()
            .offset;
    }
    client
        .complete_upload(with_bearer(
            CompleteUploadRequest {
                upload_id: session.upload_id,
            },
            &token,
        ))
        .await
        .expect("the session completes");
}

fn human(size: u64) -> String {
    if size >= 1024 * MIB {
        format!("{} GiB", size / (1024 * MIB))
    } else {
        format!("{} MiB", size / MIB)
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}
