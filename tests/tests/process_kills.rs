//! Services killed outright — SIGKILL, so no shutdown path runs — and started again on
//! the same data: nothing acknowledged is lost, nothing half-done is left behind. The
//! killed service is its real binary; the others run in this process.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::auth::v1::{LoginRequest, MeRequest, RefreshRequest, RegisterRequest};
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{
    FileMetadata, GetUploadStatusRequest, UploadChunkRequest, UploadRequest, upload_request,
};
use strongbox_tests::Scratch;
use strongbox_tests::auth::{PASSWORD, TestAuth, with_bearer};
use strongbox_tests::process::ServiceProcess;
use strongbox_tests::s3::{ACCESS_KEY, SECRET_KEY, TestS3};
use strongbox_tests::storage::{BUCKET, User, metadata, pseudo_random, sha256_hex};
use strongbox_tests::tools::workspace_binary;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

const MIB: usize = 1024 * 1024;
const LIMIT: Duration = Duration::from_secs(30);

/// A service binary that can be killed and started again with the same settings.
struct Restartable {
    binary: &'static str,
    environment: BTreeMap<String, String>,
    scratch: Scratch,
    url: String,
    process: Option<ServiceProcess>,
}

impl Restartable {
    async fn start(
        binary: &'static str,
        listen_variable: &str,
        settings: &[(&str, String)],
    ) -> Self {
        let scratch = Scratch::new();
        let port = strongbox_tests::reserve_port(0)
            .local_addr()
            .unwrap()
            .port();
        let mut environment: BTreeMap<String, String> = settings
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
        environment.insert(listen_variable.to_owned(), format!("127.0.0.1:{port}"));
        environment.insert(
            "DATA_DIR".into(),
            scratch.join("data").display().to_string(),
        );
        environment.insert("RUST_LOG".into(), "warn".into());
        let mut service = Self {
            binary,
            environment,
            scratch,
            url: format!("http://127.0.0.1:{port}"),
            process: None,
        };
        service.restart().await;
        service
    }

    async fn restart(&mut self) {
        let binary = workspace_binary(self.binary);
        self.process =
            Some(ServiceProcess::start(&binary, &self.environment, self.scratch.path()).await);
    }

    async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill().await;
        }
    }

    fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url.clone())
            .unwrap()
            .connect_lazy()
    }
}

/// auth-service in this process, S3 in this process, storage-service as a process.
struct Stack {
    auth: TestAuth,
    s3: TestS3,
    storage: Restartable,
    _dir: Scratch,
}

impl Stack {
    async fn start() -> Self {
        let dir = Scratch::new();
        let auth = TestAuth::start_in(&dir, |_| {});
        let s3 = TestS3::start(&dir);
        let storage = Restartable::start(
            "storage-service",
            "STORAGE_LISTEN",
            &[
                ("STORAGE_ENDPOINT", s3.endpoint()),
                ("STORAGE_ACCESS_KEY", ACCESS_KEY.into()),
                ("STORAGE_SECRET_KEY", SECRET_KEY.into()),
                ("STORAGE_BUCKET", BUCKET.into()),
                ("AUTH_SERVICE_URL", auth.service.url()),
                ("UPLOAD_PART_SIZE", (5 * MIB).to_string()),
                // The periodic cleanup runs every TTL / 10: every second here.
                ("UPLOAD_SESSION_TTL_SECONDS", "10".into()),
            ],
        )
        .await;
        Self {
            auth,
            s3,
            storage,
            _dir: dir,
        }
    }

    async fn user(&self) -> User {
        let tokens = self
            .auth
            .register_and_login(&format!("{}@example.com", Uuid::new_v4().simple()))
            .await;
        let me = self
            .auth
            .client()
            .me(with_bearer(MeRequest {}, &tokens.access_token))
            .await
            .unwrap()
            .into_inner();
        User {
            storage: StorageServiceClient::new(self.storage.channel())
                .max_decoding_message_size(16 * MIB),
            token: tokens.access_token,
            id: Uuid::parse_str(&me.user.unwrap().id).unwrap(),
        }
    }

    fn objects(&self) -> Vec<std::path::PathBuf> {
        strongbox_tests::files_below(&self.s3.root().join(BUCKET))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_storage_service_resumes_a_session_from_its_last_acknowledged_offset() {
    let mut stack = Stack::start().await;
    let user = stack.user().await;
    let content = pseudo_random(12 * MIB + 5, 31);
    let declared = FileMetadata {
        size: Some(content.len() as u64),
        sha256: Some(sha256_hex(&content)),
        ..metadata("film.mkv", "video/x-matroska")
    };
    let session = user.create_session(declared).await;
    let chunk = |start: usize| UploadChunkRequest {
        upload_id: session.upload_id.clone(),
        offset: start as u64,
        data: Bytes::copy_from_slice(&content[start..(start + 5 * MIB).min(content.len())]),
    };
    let acked = user
        .client()
        .upload_chunk(user.req(chunk(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.offset, 5 * MIB as u64);

    stack.storage.kill().await;
    stack.storage.restart().await;

    let status = bounded(
        "GetUploadStatus after the restart",
        user.client()
            .get_upload_status(user.req(GetUploadStatusRequest {
                upload_id: session.upload_id.clone(),
            })),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        status.offset,
        5 * MIB as u64,
        "the acknowledged chunk survived"
    );
    let mut offset = status.offset as usize;
    while offset < content.len() {
        offset = user
            .client()
            .upload_chunk(user.req(chunk(offset)))
            .await
            .unwrap()
            .into_inner()
            .offset as usize;
    }
    let file = user.complete_session(&session.upload_id).await;
    // The running digest died with the process; the object was read back for it.
    assert_eq!(file.sha256, sha256_hex(&content));
    let (_, downloaded) = user.download(&file.key).await.unwrap();
    assert!(downloaded == content, "the resumed file's bytes differ");
    assert_eq!(stack.objects().len(), 1);
    assert!(
        stack.s3.multipart_files().is_empty(),
        "{:?}",
        stack.s3.multipart_files()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_service_killed_mid_stream_leaves_no_parts_once_restarted() {
    let mut stack = Stack::start().await;
    let user = stack.user().await;
    let (feed, fed) = mpsc::channel(4);
    let message = |payload| UploadRequest {
        payload: Some(payload),
    };
    feed.send(message(upload_request::Payload::Metadata(metadata(
        "big.bin", "",
    ))))
    .await
    .unwrap();
    let mut client = user.client();
    let call = tokio::spawn({
        let request = user.req(ReceiverStream::new(fed));
        async move { client.upload(request).await }
    });
    for seed in 0..7 {
        feed.send(message(upload_request::Payload::Chunk(Bytes::from(
            pseudo_random(MIB, seed),
        ))))
        .await
        .unwrap();
    }
    bounded("the first part to reach S3", async {
        while !stack
            .s3
            .multipart_files()
            .iter()
            .any(|path| TestS3::is_part(path))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    stack.storage.kill().await;
    let outcome = bounded("the cut-off Upload", call).await.unwrap();
    assert!(
        outcome.is_err(),
        "an upload cut off by a crash cannot succeed"
    );
    drop(feed);
    stack.storage.restart().await;

    // The new process finds the previous run's multipart upload on record and aborts it.
    bounded("the cleanup of the dead upload's parts", async {
        while !stack.s3.multipart_files().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(stack.objects().is_empty(), "{:?}", stack.objects());
    assert!(user.list_all().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_auth_service_loses_nothing_and_its_tokens_still_work() {
    let mut auth = Restartable::start(
        "auth-service",
        "AUTH_LISTEN",
        &[("BCRYPT_ROUNDS", "4".into())],
    )
    .await;
    let mut client = AuthServiceClient::new(auth.channel());
    let email = "survivor@example.com";
    let credentials = LoginRequest {
        email: email.into(),
        password: PASSWORD.into(),
    };
    client
        .register(RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    let tokens = client
        .login(credentials.clone())
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();

    auth.kill().await;
    // A new client: one already connected may instead see its request cancelled with
    // the connection the kill closed (CANCELLED), depending on which it notices first.
    let mut client = AuthServiceClient::new(auth.channel());
    let down = bounded(
        "Login while auth-service is down",
        client.login(credentials.clone()),
    )
    .await
    .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");

    auth.restart().await;
    let mut client = AuthServiceClient::new(auth.channel());
    // The signing key, the user and the refresh token all survived the kill.
    client
        .me(with_bearer(MeRequest {}, &tokens.access_token))
        .await
        .unwrap();
    client
        .refresh(RefreshRequest {
            refresh_token: tokens.refresh_token,
        })
        .await
        .unwrap();
    client.login(credentials).await.unwrap();
    let again = client
        .register(RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
}

async fn bounded<T>(what: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, work)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {LIMIT:?}"))
}
