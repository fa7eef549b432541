//! Upload throughput, side by side: (a) `object_store` multipart straight to the S3
//! server, the physical limit of this machine; (b) through storage-service; (c) through
//! the gateway over native gRPC; (d) through the gateway over grpc-web (tonic-web's
//! client, as browsers upload: files up to 1 MiB in one PutFile call, larger ones in
//! resumable sessions). Each measurement also records the
//! peak RSS of storage-service and the gateway, and deletes what it uploaded, so a full
//! run needs disk for one measurement at a time.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{
    CompleteUploadRequest, CreateUploadRequest, DeleteFileRequest, FileMetadata, ListFilesRequest,
    PutFileRequest, UploadChunkRequest, UploadEnd, UploadRequest, UploadResponse, upload_request,
};
use strongbox_tests::auth::with_bearer;
use strongbox_tests::process::mib;
use strongbox_tests::storage::{metadata, pseudo_random};
use tonic::transport::Channel;

use crate::system::System;
use crate::transfers::{Cpu, CpuMeter, MIB, Row, chunks, run, timed};

/// Clients send 1 MiB messages (grpc-web: 8 MiB session chunks, the default maximum), all
/// slices of one random block, so producing data costs the client nothing.
const CHUNK: u64 = MIB;
const SESSION_CHUNK: u64 = 8 * MIB;
/// The most clients at once a row may have (each its own user).
pub const MAX_CLIENTS: usize = 16;
/// Files up to this size go over grpc-web in one PutFile call, as the page sends them.
const WHOLE_FILE_MAX: u64 = MIB;
/// The part size and parts in flight storage-service runs with (its defaults), used for
/// the direct baseline too, so (a) and (b) do the same S3 requests.
const PART_SIZE: usize = 8 * MIB as usize;
const PARTS_IN_FLIGHT: usize = 2;

/// The clients of every path, shared by the upload and download measurements.
pub struct Clients {
    pub direct: Arc<dyn ObjectStore>,
    pub storage: StorageServiceClient<Channel>,
    pub gateway: StorageServiceClient<Channel>,
    grpc_web: GrpcWeb,
    /// One user per concurrent client, as on a shared server: the per-user limits (a
    /// user's share of upload memory, uploads in progress) then shape no row.
    pub tokens: Vec<String>,
    /// What every benchmark file is made of (see [`chunks`]).
    pub block: Bytes,
}

impl Clients {
    pub async fn new(system: &System) -> Self {
        // One at a time: auth-service refuses password checks beyond its hashing queue.
        let mut tokens = Vec::with_capacity(MAX_CLIENTS);
        for client in 0..MAX_CLIENTS {
            tokens.push(
                system
                    .user(&format!("uploads-{client}@bench.example"))
                    .await,
            );
        }
        Self {
            direct: system.direct_store(),
            storage: StorageServiceClient::new(system.storage.channel())
                .max_decoding_message_size(16 * MIB as usize),
            gateway: StorageServiceClient::new(system.gateway.channel())
                .max_decoding_message_size(16 * MIB as usize),
            grpc_web: grpc_web_client(&system.gateway.url),
            tokens,
            block: Bytes::from(pseudo_random(SESSION_CHUNK as usize, 7)),
        }
    }
}

pub async fn measure(
    system: &mut System,
    clients: &Clients,
    size: u64,
    concurrency: usize,
    rounds: u64,
) -> Row {
    let total = size * concurrency as u64 * rounds;
    let Clients {
        direct,
        tokens,
        block,
        ..
    } = clients;
    assert!(
        concurrency <= tokens.len(),
        "at most {MAX_CLIENTS} clients at once"
    );
    let rounds_per_client = rounds as usize;

    let mut cpu = [Cpu::default(); 4];
    let meter = CpuMeter::start(system);
    let paths = run(concurrency, rounds, |index| {
        upload_direct(direct.clone(), index, size, block.clone())
    });
    let (a, paths) = timed(paths).await;
    cpu[0] = meter.per_mib(total);
    for path in paths {
        direct
            .delete(&path)
            .await
            .expect("a benchmark object is deleted");
    }

    let mut storage_peak = [0; 3];
    let mut gateway_peak = [0; 2];
    let mut rates = [total as f64 / MIB as f64 / a.as_secs_f64(), 0.0, 0.0, 0.0];
    for (column, via) in [Via::Storage, Via::Gateway, Via::GrpcWeb]
        .into_iter()
        .enumerate()
    {
        system.storage.restart().await;
        system.gateway.restart().await;
        warm_up(clients).await;
        let meter = CpuMeter::start(system);
        let keys = run(concurrency, rounds, |index| {
            let block = block.clone();
            let token = tokens[index / rounds_per_client].clone();
            async move {
                match via {
                    Via::Storage => {
                        upload_grpc(clients.storage.clone(), token, size, block)
                            .await
                            .key
                    }
                    Via::Gateway => {
                        upload_grpc(clients.gateway.clone(), token, size, block)
                            .await
                            .key
                    }
                    Via::GrpcWeb if size <= WHOLE_FILE_MAX => {
                        put_file(clients.grpc_web.clone(), token, size, block).await
                    }
                    Via::GrpcWeb => {
                        upload_session(clients.grpc_web.clone(), token, size, block).await
                    }
                }
            }
        });
        let (elapsed, keys) = timed(keys).await;
        cpu[column + 1] = meter.per_mib(total);
        rates[column + 1] = total as f64 / MIB as f64 / elapsed.as_secs_f64();
        storage_peak[column] = mib(system.storage.process().peak_rss());
        if column > 0 {
            gateway_peak[column - 1] = mib(system.gateway.process().peak_rss());
        }
        delete_all(clients.storage.clone(), tokens, rounds_per_client, keys).await;
    }
    Row {
        size,
        concurrency,
        rounds,
        rates,
        storage_peak,
        gateway_peak,
        cpu,
    }
}

/// One call on every path, so fresh processes have their connections open and the
/// signing key fetched before anything is timed (as a running service would).
pub async fn warm_up(clients: &Clients) {
    let list = || with_bearer(ListFilesRequest::default(), &clients.tokens[0]);
    clients
        .storage
        .clone()
        .list_files(list())
        .await
        .expect("storage-service answers");
    clients
        .gateway
        .clone()
        .list_files(list())
        .await
        .expect("the gateway answers");
    clients
        .grpc_web
        .clone()
        .list_files(list())
        .await
        .expect("the gateway answers grpc-web");
}

#[derive(Clone, Copy)]
enum Via {
    Storage,
    Gateway,
    GrpcWeb,
}

async fn upload_direct(store: Arc<dyn ObjectStore>, index: usize, size: u64, block: Bytes) -> Path {
    let path = Path::from(format!("bench/direct-{index}-{}", uuid::Uuid::new_v4()));
    let mut writer = WriteMultipart::new_with_chunk_size(
        store
            .put_multipart(&path)
            .await
            .expect("a multipart upload"),
        PART_SIZE,
    );
    for chunk in chunks(size, &block, CHUNK) {
        writer
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .expect("parts upload");
        writer.put(chunk);
    }
    writer.finish().await.expect("the upload completes");
    path
}

fn declared(size: u64) -> FileMetadata {
    FileMetadata {
        size: Some(size),
        ..metadata("bench.bin", "")
    }
}

pub async fn upload_grpc(
    mut client: StorageServiceClient<Channel>,
    token: String,
    size: u64,
    block: Bytes,
) -> UploadResponse {
    let messages = std::iter::once(upload_request::Payload::Metadata(declared(size)))
        .chain(chunks(size, &block, CHUNK).map(upload_request::Payload::Chunk))
        .chain(std::iter::once(upload_request::Payload::End(UploadEnd {})))
        .map(|payload| UploadRequest {
            payload: Some(payload),
        });
    client
        .upload(with_bearer(futures::stream::iter(messages), &token))
        .await
        .expect("the upload succeeds")
        .into_inner()
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
    // As browsers do: no Nagle delay on the last bytes of a request.
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let http1 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector);
    let service = tonic_web::GrpcWebClientService::new(http1);
    StorageServiceClient::with_origin(service, url.parse().expect("a URL"))
        .max_decoding_message_size(16 * MIB as usize)
}

async fn put_file(mut client: GrpcWeb, token: String, size: u64, block: Bytes) -> String {
    let request = PutFileRequest {
        metadata: Some(declared(size)),
        data: block.slice(..size as usize),
    };
    client
        .put_file(with_bearer(request, &token))
        .await
        .expect("PutFile succeeds")
        .into_inner()
        .file
        .expect("the stored file")
        .key
}

async fn upload_session(mut client: GrpcWeb, token: String, size: u64, block: Bytes) -> String {
    let session = client
        .create_upload(with_bearer(
            CreateUploadRequest {
                metadata: Some(declared(size)),
            },
            &token,
        ))
        .await
        .expect("a session")
        .into_inner();
    // As the page does: each chunk is sent while the one before is still being stored
    // (the server lets it wait for its predecessor). One that arrived before its
    // predecessor is refused, and sent again once the predecessor is answered.
    let send = |offset: u64, data: Bytes| {
        let (mut client, token, upload_id) =
            (client.clone(), token.clone(), session.upload_id.clone());
        tokio::spawn(async move {
            let chunk = UploadChunkRequest {
                upload_id,
                offset,
                data,
            };
            client.upload_chunk(with_bearer(chunk, &token)).await
        })
    };
    let mut in_flight = std::collections::VecDeque::new();
    let mut offset = 0;
    for data in chunks(size, &block, SESSION_CHUNK) {
        let length = data.len() as u64;
        in_flight.push_back((offset, data.clone(), send(offset, data)));
        offset += length;
        if in_flight.len() > 1 {
            let (at, data, call) = in_flight.pop_front().expect("two in flight");
            settle_chunk(call, || send(at, data)).await;
        }
    }
    while let Some((at, data, call)) = in_flight.pop_front() {
        settle_chunk(call, || send(at, data)).await;
    }
    client
        .complete_upload(with_bearer(
            CompleteUploadRequest {
                upload_id: session.upload_id,
            },
            &token,
        ))
        .await
        .expect("the session completes")
        .into_inner()
        .file
        .expect("the stored file")
        .key
}

type ChunkCall = tokio::task::JoinHandle<
    Result<tonic::Response<strongbox_proto::storage::v1::UploadChunkResponse>, tonic::Status>,
>;

/// Waits for a chunk; if it was refused for arriving before its predecessor, sends it again.
async fn settle_chunk(call: ChunkCall, again: impl FnOnce() -> ChunkCall) {
    match call.await.expect("the chunk task") {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            again().await.expect("the chunk task").expect("a chunk");
        }
        Err(status) => panic!("a chunk failed: {status:?}"),
    }
}

/// Deletes the files [`run`] returned, each with its client's (user's) token.
pub async fn delete_all(
    mut client: StorageServiceClient<Channel>,
    tokens: &[String],
    rounds_per_client: usize,
    keys: Vec<String>,
) {
    for (index, key) in keys.into_iter().enumerate() {
        let token = &tokens[index / rounds_per_client];
        client
            .delete_file(with_bearer(DeleteFileRequest { key }, token))
            .await
            .expect("a benchmark file is deleted");
    }
}
