//! The storage stack for the suites: auth-service, optionally an S3 server, and
//! storage-service wired together over loopback, and a client acting as one user.

use std::path::PathBuf;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use strongbox_proto::auth::v1::MeRequest;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{
    CompleteUploadRequest, CreateUploadRequest, CreateUploadResponse, DownloadRequest, FileInfo,
    FileMetadata, GetUploadStatusRequest, GetUsageRequest, GetUsageResponse, ListFilesRequest,
    PutFileRequest, UploadChunkRequest, UploadEnd, UploadRequest, UploadResponse,
    download_response, upload_request,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Status};
use uuid::Uuid;

use crate::auth::{TestAuth, with_bearer};
use crate::s3::{ACCESS_KEY, SECRET_KEY, TestS3};
use crate::{RunningService, Scratch, until_stopped};

pub const BUCKET: &str = "strongbox-test";

/// What storage-service runs on in a test: where it keeps objects, and its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A local directory, the index in SQLite: the embedded default.
    Local,
    /// A real S3 server, the index in SQLite.
    S3,
    /// A real S3 server, the index in a database of its own on a real PostgreSQL
    /// server: how replicas run.
    S3Postgres,
}

impl Backend {
    pub fn is_s3(self) -> bool {
        matches!(self, Self::S3 | Self::S3Postgres)
    }
}

pub struct Stack {
    pub auth: TestAuth,
    pub s3: Option<TestS3>,
    pub storage: RunningService,
    pub config: storage_service::Config,
    pub dir: Scratch,
}

impl Stack {
    pub async fn start(
        backend: Backend,
        adjust: impl FnOnce(&mut storage_service::Config),
    ) -> Self {
        Self::start_with_auth(backend, |_| {}, adjust).await
    }

    /// Like [`Stack::start`], with auth-service's settings adjusted too.
    pub async fn start_with_auth(
        backend: Backend,
        adjust_auth: impl FnOnce(&mut auth_service::Config),
        adjust: impl FnOnce(&mut storage_service::Config),
    ) -> Self {
        let _ = strongbox_common::telemetry::init(&Default::default(), "tests");
        let dir = Scratch::new();
        let auth = TestAuth::start_in(&dir, adjust_auth);
        let s3 = backend.is_s3().then(|| TestS3::start(&dir));
        let mut config = storage_service::Config::with_data_dir(dir.join("storage"));
        if backend == Backend::S3Postgres {
            config.database_url = Some(crate::database::new_postgres_database().await);
        }
        config.auth_service_url = auth.service.url();
        // Small parts keep multi-part paths exercised by small test files. S3's 5 MiB
        // minimum is the floor there.
        config.upload_part_size = 5 * 1024 * 1024;
        if let Some(s3) = &s3 {
            config.storage_endpoint = Some(s3.endpoint());
            config.storage_access_key = ACCESS_KEY.into();
            config.storage_secret_key = SECRET_KEY.into();
            config.storage_bucket = BUCKET.into();
        }
        adjust(&mut config);
        let storage = start_storage(config.clone(), 0).await;
        Self {
            auth,
            s3,
            storage,
            config,
            dir,
        }
    }

    /// Stops storage-service and starts it again on the same port with the same state.
    pub async fn restart_storage(&mut self) {
        let port = self.storage.addr.port();
        self.storage
            .stop()
            .await
            .expect("storage-service stops cleanly");
        self.storage = start_storage(self.config.clone(), port).await;
    }

    /// Registers a fresh user and returns a client acting as them.
    pub async fn user(&self, name: &str) -> User {
        let email = format!("{name}-{}@example.com", Uuid::new_v4().simple());
        let tokens = self.auth.register_and_login(&email).await;
        let me = self
            .auth
            .client()
            .me(with_bearer(MeRequest {}, &tokens.access_token))
            .await
            .expect("me")
            .into_inner()
            .user
            .expect("a user");
        User {
            storage: StorageServiceClient::new(self.storage.channel())
                .max_decoding_message_size(16 * 1024 * 1024),
            token: tokens.access_token,
            id: Uuid::parse_str(&me.id).expect("a UUID"),
        }
    }

    /// Every file in the object store: committed objects, staged chunks, and whatever
    /// a multipart upload in progress leaves on disk.
    pub fn stored_files(&self) -> Vec<PathBuf> {
        match &self.s3 {
            Some(s3) => s3.files(&self.config.storage_bucket),
            None => crate::files_below(&self.config.storage_dir()),
        }
    }

    /// Waits (bounded) until the object store holds exactly `expected` files, returning
    /// what it holds at the end. Aborts run in the background after a cancellation.
    pub async fn settle_stored_files(&self, expected: usize) -> Vec<PathBuf> {
        for _ in 0..100 {
            let files = self.stored_files();
            if files.len() == expected {
                return files;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.stored_files()
    }
}

async fn start_storage(config: storage_service::Config, port: u16) -> RunningService {
    let mut service = RunningService::start_on(port, 2, move |listener, stopped| {
        storage_service::run(config, listener, until_stopped(stopped))
    });
    service.wait_until_serving().await;
    service
}

/// A client of storage-service acting as one user.
pub struct User {
    pub storage: StorageServiceClient<Channel>,
    pub token: String,
    pub id: Uuid,
}

impl User {
    pub fn client(&self) -> StorageServiceClient<Channel> {
        self.storage.clone()
    }

    /// `message` with this user's bearer token.
    pub fn req<T>(&self, message: T) -> Request<T> {
        with_bearer(message, &self.token)
    }

    /// Streams `chunks` after `metadata`, then `end`.
    pub async fn upload(
        &self,
        metadata: FileMetadata,
        chunks: Vec<Bytes>,
    ) -> Result<UploadResponse, Status> {
        let request = self.req(futures::stream::iter(upload_messages(metadata, chunks)));
        Ok(self.client().upload(request).await?.into_inner())
    }

    /// Uploads `count` files of `size` bytes at once on this user's one connection, in
    /// 1 MiB chunks with size and SHA-256 declared, and checks each downloads intact. Fails
    /// if they do not all finish within a minute: uploads waiting for memory must not
    /// stall the ones holding it.
    pub async fn upload_at_once_intact(&self, count: u64, size: usize, seed: u64) {
        let contents: Vec<Vec<u8>> = (0..count)
            .map(|index| pseudo_random(size, seed + index))
            .collect();
        let uploads = contents.iter().enumerate().map(|(index, content)| {
            let chunks = content
                .chunks(1024 * 1024)
                .map(Bytes::copy_from_slice)
                .collect();
            let declared = FileMetadata {
                size: Some(content.len() as u64),
                sha256: Some(sha256_hex(content)),
                ..metadata(&format!("turn-{index}.bin"), "")
            };
            self.upload(declared, chunks)
        });
        let uploaded = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            futures::future::join_all(uploads),
        )
        .await
        .expect("uploads waiting for memory must not stall the ones holding it");
        for (content, uploaded) in contents.iter().zip(uploaded) {
            let uploaded = uploaded.expect("the upload succeeds");
            let (_, downloaded) = self.download(&uploaded.key).await.expect("a download");
            assert!(downloaded == *content, "{} differs", uploaded.filename);
        }
    }

    /// Uploads `content` in 256 KiB chunks under `filename`, declaring its size.
    pub async fn upload_bytes(
        &self,
        filename: &str,
        content: &[u8],
    ) -> Result<UploadResponse, Status> {
        let chunks = content
            .chunks(256 * 1024)
            .map(Bytes::copy_from_slice)
            .collect();
        let declared = FileMetadata {
            size: Some(content.len() as u64),
            ..metadata(filename, "application/octet-stream")
        };
        self.upload(declared, chunks).await
    }

    /// Stores `data` whole in one PutFile call.
    pub async fn put_file(&self, metadata: FileMetadata, data: Bytes) -> Result<FileInfo, Status> {
        let request = self.req(PutFileRequest {
            metadata: Some(metadata),
            data,
        });
        let file = self.client().put_file(request).await?.into_inner().file;
        Ok(file.expect("PutFile describes the stored file"))
    }

    /// Opens an Upload stream of `metadata` whose later messages are sent through the
    /// returned channel; the call runs as a task.
    pub fn open_upload(&self, metadata: FileMetadata) -> (mpsc::Sender<UploadRequest>, UploadCall) {
        let (sender, receiver) = mpsc::channel(8);
        sender
            .try_send(UploadRequest {
                payload: Some(upload_request::Payload::Metadata(metadata)),
            })
            .expect("room for the metadata");
        let (mut client, request) = (
            self.client(),
            self.req(tokio_stream::wrappers::ReceiverStream::new(receiver)),
        );
        let call = tokio::spawn(async move {
            client
                .upload(request)
                .await
                .map(tonic::Response::into_inner)
        });
        (sender, call)
    }

    /// Where an open session of this user resumes (GetUploadStatus).
    pub async fn session_offset(&self, upload_id: &str) -> u64 {
        self.client()
            .get_upload_status(self.req(GetUploadStatusRequest {
                upload_id: upload_id.to_owned(),
            }))
            .await
            .expect("the session is still there")
            .into_inner()
            .offset
    }

    /// Starts a resumable session for `metadata`.
    pub async fn create_session(&self, metadata: FileMetadata) -> CreateUploadResponse {
        self.client()
            .create_upload(self.req(CreateUploadRequest {
                metadata: Some(metadata),
            }))
            .await
            .expect("CreateUpload")
            .into_inner()
    }

    /// Sends `data` at `offset` of a resumable session (UploadChunk); the session's new
    /// length.
    pub async fn upload_chunk(
        &self,
        upload_id: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<u64, Status> {
        let request = self.req(UploadChunkRequest {
            upload_id: upload_id.to_owned(),
            offset,
            data: Bytes::copy_from_slice(data),
        });
        Ok(self
            .client()
            .upload_chunk(request)
            .await?
            .into_inner()
            .offset)
    }

    /// Completes a resumable session into its file.
    pub async fn complete_session(&self, upload_id: &str) -> FileInfo {
        self.client()
            .complete_upload(self.req(CompleteUploadRequest {
                upload_id: upload_id.to_owned(),
            }))
            .await
            .expect("CompleteUpload")
            .into_inner()
            .file
            .expect("the stored file")
    }

    /// Downloads a file through the Download stream: its info and its bytes.
    pub async fn download(&self, key: &str) -> Result<(FileInfo, Vec<u8>), Status> {
        download_with(
            &self.client(),
            self.req(DownloadRequest {
                key: key.into(),
                ..Default::default()
            }),
        )
        .await
    }

    /// What this user stores and has in progress (GetUsage).
    pub async fn usage(&self) -> GetUsageResponse {
        self.client()
            .get_usage(self.req(GetUsageRequest {}))
            .await
            .expect("GetUsage")
            .into_inner()
    }

    pub async fn list_all(&self) -> Vec<FileInfo> {
        self.client()
            .list_files(self.req(ListFilesRequest {
                page_size: 1000,
                page_token: String::new(),
            }))
            .await
            .expect("list")
            .into_inner()
            .files
    }

    /// The filenames this user's files are listed under, sorted (one per file: a name
    /// listed twice appears twice).
    pub async fn filenames(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .list_all()
            .await
            .into_iter()
            .map(|file| file.filename)
            .collect();
        names.sort();
        names
    }
}

/// The messages of a whole Upload stream: `metadata`, `chunks`, then `end`.
pub fn upload_messages(
    metadata: FileMetadata,
    chunks: impl IntoIterator<Item = Bytes>,
) -> impl Iterator<Item = UploadRequest> {
    std::iter::once(upload_request::Payload::Metadata(metadata))
        .chain(chunks.into_iter().map(upload_request::Payload::Chunk))
        .chain(std::iter::once(upload_request::Payload::End(UploadEnd {})))
        .map(|payload| UploadRequest {
            payload: Some(payload),
        })
}

/// An Upload call running as a task.
pub type UploadCall = tokio::task::JoinHandle<Result<UploadResponse, Status>>;

/// An Upload stream message carrying `bytes`.
pub fn chunk_message(bytes: Vec<u8>) -> UploadRequest {
    UploadRequest {
        payload: Some(upload_request::Payload::Chunk(Bytes::from(bytes))),
    }
}

/// The message that ends an Upload stream.
pub fn end_message() -> UploadRequest {
    UploadRequest {
        payload: Some(upload_request::Payload::End(UploadEnd {})),
    }
}

/// Reads a Download stream to the end.
pub async fn download_with(
    client: &StorageServiceClient<Channel>,
    request: Request<DownloadRequest>,
) -> Result<(FileInfo, Vec<u8>), Status> {
    let mut stream = client.clone().download(request).await?.into_inner();
    let mut info = None;
    let mut content = Vec::new();
    while let Some(message) = stream.next().await {
        match message?.payload {
            Some(download_response::Payload::Info(first)) => info = Some(first),
            Some(download_response::Payload::Chunk(chunk)) => content.extend_from_slice(&chunk),
            None => {}
        }
    }
    Ok((
        info.expect("the stream starts with the file's info"),
        content,
    ))
}

pub fn metadata(filename: &str, content_type: &str) -> FileMetadata {
    FileMetadata {
        filename: filename.into(),
        content_type: content_type.into(),
        size: None,
        sha256: None,
    }
}

pub fn sha256_hex(content: &[u8]) -> String {
    hex_lower(&Sha256::digest(content))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Deterministic pseudo-random bytes (xorshift), so test files do not compress away.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Starts an upload of `chunks` MiB to `url` (metadata without a size, then chunks,
/// then silence), and makes the client vanish mid-stream: the client runs on a runtime
/// of its own, and dropping that runtime closes its connection, which is what a crashed
/// or disconnected client looks like to the server.
pub fn upload_then_vanish(url: String, token: String, filename: &str, chunks: u64) {
    let filename = filename.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a client runtime");
        runtime.block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .expect("a URL")
                .connect_lazy();
            let mut client = StorageServiceClient::new(channel);
            let meta = upload_request::Payload::Metadata(metadata(&filename, ""));
            let chunks = (0..chunks).map(|seed| {
                upload_request::Payload::Chunk(Bytes::from(pseudo_random(1024 * 1024, seed)))
            });
            let messages = std::iter::once(meta)
                .chain(chunks)
                .map(|payload| UploadRequest {
                    payload: Some(payload),
                });
            let stream = futures::stream::iter(messages).chain(futures::stream::pending());
            let upload = client.upload(with_bearer(stream, &token));
            let outcome = tokio::time::timeout(std::time::Duration::from_millis(700), upload).await;
            assert!(
                outcome.is_err(),
                "the upload must still be waiting for more bytes: {outcome:?}"
            );
        });
        drop(runtime);
    })
    .join()
    .expect("the vanishing client ran");
}
