//! Two replicas of each service behind one gateway, every one its own process: calls
//! spread over every replica; a replica killed outright (SIGKILL) is taken out within
//! seconds and a call that never reached it goes to another, so no caller sees it go; a
//! replica started again is used again; with none answering, a call is refused at once
//! and told when to retry.
//!
//! The storage replicas keep their index in one PostgreSQL database and their objects on
//! one S3 server, as replicas on several machines would; a replica restarted in the
//! middle of its peer's upload leaves that upload alone, and one killed mid-stream fails
//! its stream cleanly. The auth replicas share one data directory (SQLite, the embedded
//! default, serves several processes on one machine), and also run on one PostgreSQL
//! database, keeping every rule of the accounts database there.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::auth::v1::{LoginRequest, MeRequest, RefreshRequest};
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_proto::storage::v1::{FileMetadata, ListFilesRequest, UploadRequest};
use strongbox_tests::Scratch;
use strongbox_tests::auth::{new_account, with_bearer};
use strongbox_tests::database::new_postgres_database;
use strongbox_tests::metrics::Scrape;
use strongbox_tests::process::ServiceProcess;
use strongbox_tests::s3::{ACCESS_KEY, SECRET_KEY, TestS3};
use strongbox_tests::storage::{
    BUCKET, User, chunk_message, end_message, metadata, pseudo_random, sha256_hex,
};
use strongbox_tests::tools::workspace_binary;
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const MIB: usize = 1024 * 1024;

/// A replica that can be killed and started again on the same address and data.
struct Replica {
    binary: &'static str,
    environment: BTreeMap<String, String>,
    scratch_dir: std::path::PathBuf,
    listen: SocketAddr,
    metrics: SocketAddr,
    process: Option<ServiceProcess>,
}

impl Replica {
    async fn start(
        binary: &'static str,
        listen_variable: &str,
        scratch: &Scratch,
        settings: &[(&str, String)],
    ) -> Self {
        let (listen, metrics) = (free_addr(), free_addr());
        let mut environment: BTreeMap<String, String> = settings
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
        environment.insert(listen_variable.to_owned(), listen.to_string());
        environment.insert("METRICS_LISTEN".into(), metrics.to_string());
        environment.insert("RUST_LOG".into(), "warn".into());
        let mut replica = Self {
            binary,
            environment,
            scratch_dir: scratch.path().to_owned(),
            listen,
            metrics,
            process: None,
        };
        replica.restart().await;
        replica
    }

    async fn restart(&mut self) {
        self.process = Some(
            ServiceProcess::start(
                &workspace_binary(self.binary),
                &self.environment,
                &self.scratch_dir,
            )
            .await,
        );
    }

    async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill().await;
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Calls of `method` (its full path) this process has answered.
    async fn calls(&self, method: &str) -> f64 {
        Scrape::of(self.metrics)
            .await
            .value("strongbox_grpc_calls_total", &[("method", method)])
    }
}

/// Two auth-services on one data directory, two storage-services on one PostgreSQL
/// database and one S3 server, and a gateway given both replicas of each.
struct Deployment {
    auth: [Replica; 2],
    storage: [Replica; 2],
    s3: TestS3,
    _gateway: ServiceProcess,
    gateway_addr: SocketAddr,
    _scratch: Scratch,
}

impl Deployment {
    async fn start(health_interval_seconds: u64) -> Self {
        Self::start_with_auth(health_interval_seconds, &[]).await
    }

    /// Like [`Deployment::start`], with more settings for both auth replicas.
    async fn start_with_auth(health_interval_seconds: u64, auth_extra: &[(&str, String)]) -> Self {
        let scratch = Scratch::new();
        let mut auth_settings = vec![
            ("DATA_DIR", scratch.join("auth").display().to_string()),
            ("BCRYPT_ROUNDS", "4".to_owned()),
        ];
        auth_settings.extend_from_slice(auth_extra);
        // One after the other: the first creates the database and the signing key the
        // second then shares.
        let first_auth =
            Replica::start("auth-service", "AUTH_LISTEN", &scratch, &auth_settings).await;
        let second_auth =
            Replica::start("auth-service", "AUTH_LISTEN", &scratch, &auth_settings).await;
        let s3 = TestS3::start(&scratch);
        let storage_settings = [
            // Shared for the download-link key; the index and objects are elsewhere.
            ("DATA_DIR", scratch.join("storage").display().to_string()),
            ("STORAGE_DATABASE_URL", new_postgres_database().await),
            ("STORAGE_ENDPOINT", s3.endpoint()),
            ("STORAGE_ACCESS_KEY", ACCESS_KEY.to_owned()),
            ("STORAGE_SECRET_KEY", SECRET_KEY.to_owned()),
            ("STORAGE_BUCKET", BUCKET.to_owned()),
            // S3's smallest part, so a few MiB make a multipart upload.
            ("UPLOAD_PART_SIZE", (5 * MIB).to_string()),
            (
                "AUTH_SERVICE_URL",
                format!("{},{}", first_auth.url(), second_auth.url()),
            ),
        ];
        let first_storage = Replica::start(
            "storage-service",
            "STORAGE_LISTEN",
            &scratch,
            &storage_settings,
        )
        .await;
        let second_storage = Replica::start(
            "storage-service",
            "STORAGE_LISTEN",
            &scratch,
            &storage_settings,
        )
        .await;
        let gateway_addr = free_addr();
        let gateway_environment: BTreeMap<String, String> = [
            ("GATEWAY_LISTEN", gateway_addr.to_string()),
            (
                "AUTH_SERVICE_URL",
                format!("{},{}", first_auth.url(), second_auth.url()),
            ),
            (
                "STORAGE_SERVICE_URL",
                format!("{}, {}", first_storage.url(), second_storage.url()),
            ),
            (
                "UPSTREAM_HEALTH_INTERVAL_SECONDS",
                health_interval_seconds.to_string(),
            ),
            // This suite's clients all come from 127.0.0.1, more often than one person.
            ("RATE_LIMIT_LOGIN", "600/m,burst=100".to_owned()),
            ("RATE_LIMIT_REFRESH", "600/m,burst=100".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        let gateway = ServiceProcess::start(
            &workspace_binary("gateway"),
            &gateway_environment,
            scratch.path(),
        )
        .await;
        Self {
            auth: [first_auth, second_auth],
            storage: [first_storage, second_storage],
            s3,
            _gateway: gateway,
            gateway_addr,
            _scratch: scratch,
        }
    }

    fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.gateway_addr))
            .expect("a valid URL")
            .connect_lazy()
    }

    /// A new account, its storage client talking to the gateway.
    async fn user(&self, email: &str) -> User {
        let tokens = new_account(self.channel(), email, "correct horse battery").await;
        let me = AuthServiceClient::new(self.channel())
            .me(with_bearer(MeRequest {}, &tokens.access_token))
            .await
            .expect("Me")
            .into_inner()
            .user
            .expect("a user");
        User {
            storage: StorageServiceClient::new(self.channel()),
            token: tokens.access_token,
            id: me.id.parse().expect("a user id"),
        }
    }

    /// The gateway's count of `storage-service` replicas answering, once it is `wanted`;
    /// fails if that takes longer than a few health checks.
    async fn storage_replicas_become(&self, wanted: f64) {
        let mut seen = f64::NAN;
        for _ in 0..100 {
            seen = Scrape::of(self.gateway_addr).await.value(
                "strongbox_upstream_replicas_up",
                &[("upstream", "storage-service")],
            );
            if seen == wanted {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the gateway counts {seen} storage replicas answering, not {wanted}");
    }
}

/// Asserts the calls of `method` the two replicas answered are `total` together, with a
/// share on each.
async fn spread(replicas: &[Replica; 2], method: &str, total: usize) {
    let answered = [
        replicas[0].calls(method).await,
        replicas[1].calls(method).await,
    ];
    assert_eq!(
        answered[0] + answered[1],
        total as f64,
        "{method}: {answered:?}"
    );
    assert!(
        answered[0] > 0.0 && answered[1] > 0.0,
        "{method}: both replicas take a share: {answered:?}"
    );
}

fn free_addr() -> SocketAddr {
    strongbox_tests::reserve_port(0)
        .local_addr()
        .expect("a free port")
}

async fn put(user: &User, name: &str, seed: u64) {
    user.put_file(
        metadata(name, "application/octet-stream"),
        Bytes::from(pseudo_random(4096, seed)),
    )
    .await
    .unwrap_or_else(|status| panic!("PutFile {name}: {status:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_every_replica_and_one_killed_is_taken_out_then_used_again() {
    let mut deployment = Deployment::start(1).await;
    let user = deployment.user("spread@example.com").await;

    for index in 0..24 {
        put(&user, &format!("before-{index}.bin"), index).await;
    }
    let mut me = AuthServiceClient::new(deployment.channel());
    for _ in 0..24 {
        me.me(with_bearer(MeRequest {}, &user.token))
            .await
            .expect("Me");
    }
    // Each call went to one replica or the other, and both took a share.
    spread(
        &deployment.storage,
        "/storage.v1.StorageService/PutFile",
        24,
    )
    .await;
    // Me: the account's own, and the 24.
    spread(&deployment.auth, "/auth.v1.AuthService/Me", 25).await;

    // Killed outright: every call still succeeds (one that picked the dead replica
    // before the gateway knew is sent to the other), and it is taken out.
    deployment.storage[1].kill().await;
    for index in 0..12 {
        put(&user, &format!("during-{index}.bin"), 100 + index).await;
    }
    deployment.storage_replicas_become(1.0).await;
    let failures = Scrape::of(deployment.gateway_addr).await.value(
        "strongbox_upstream_failures_total",
        &[("upstream", "storage-service")],
    );
    assert_eq!(failures, 0.0, "no call failed while a replica was down");

    // Back on the same address: checked, used again.
    deployment.storage[1].restart().await;
    deployment.storage_replicas_become(2.0).await;
    for index in 0..24 {
        put(&user, &format!("after-{index}.bin"), 200 + index).await;
    }
    assert!(
        deployment.storage[1]
            .calls("/storage.v1.StorageService/PutFile")
            .await
            > 0.0,
        "the restarted replica takes calls again"
    );

    // Every file stored once, whichever replica stored it.
    let listed = user.list_all().await;
    let names: HashSet<&str> = listed.iter().map(|file| file.filename.as_str()).collect();
    assert_eq!(listed.len(), 60);
    assert_eq!(names.len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_never_reached_a_dead_replica_is_retried_and_with_none_left_refused_at_once() {
    // Health checks a minute apart: only the calls themselves can find the dead replica.
    let mut deployment = Deployment::start(60).await;
    let user = deployment.user("retry@example.com").await;
    put(&user, "kept.bin", 1).await;

    deployment.storage[1].kill().await;
    // Each call picks either replica until one finds the dead one: that call is sent
    // to the other, and the dead one is not picked again.
    for _ in 0..40 {
        let listed = user
            .client()
            .list_files(user.req(ListFilesRequest {
                page_size: 10,
                page_token: String::new(),
            }))
            .await
            .expect("ListFiles while a replica is dead");
        assert_eq!(listed.into_inner().files.len(), 1);
    }
    let gateway = Scrape::of(deployment.gateway_addr).await;
    let storage = [("upstream", "storage-service")];
    assert_eq!(
        gateway.value("strongbox_upstream_retries_total", &storage),
        1.0
    );
    assert_eq!(
        gateway.value("strongbox_upstream_failures_total", &storage),
        0.0
    );

    // The last replica gone too: refused at once, saying when to try again.
    deployment.storage[0].kill().await;
    let started = std::time::Instant::now();
    let refused = user
        .client()
        .list_files(user.req(ListFilesRequest::default()))
        .await
        .expect_err("no replica answers");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("no replica of storage-service"),
        "{refused:?}"
    );
    assert!(
        refused.metadata().get("retry-after").is_some(),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a refusal does not wait for a deadline"
    );
    // Auth is untouched by storage going away.
    AuthServiceClient::new(deployment.channel())
        .me(with_bearer(MeRequest {}, &user.token))
        .await
        .expect("Me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_replicas_on_one_postgresql_rotate_a_token_once_and_throttle_together() {
    let url = new_postgres_database().await;
    let deployment = Deployment::start_with_auth(
        1,
        &[
            ("DATABASE_URL", url),
            // Every second use of a refresh token is reuse: one of eight succeeds.
            ("REFRESH_REUSE_INTERVAL_SECONDS", "0".to_owned()),
            ("LOGIN_MAX_FAILURES", "5".to_owned()),
            // Room for every guess: what stops them is the throttle alone.
            ("PASSWORD_HASH_QUEUE", "64".to_owned()),
        ],
    )
    .await;
    let mut accounts = AuthServiceClient::new(deployment.channel());
    new_account(
        deployment.channel(),
        "pg@example.com",
        "correct horse battery",
    )
    .await;

    // Eight concurrent Refresh calls with one token, over both replicas: exactly one
    // rotates it. Four rounds, each from a login of its own.
    for round in 0..4 {
        let tokens = accounts
            .login(LoginRequest {
                email: "pg@example.com".into(),
                password: "correct horse battery".into(),
            })
            .await
            .expect("Login")
            .into_inner()
            .tokens
            .expect("a token pair");
        let refreshes = (0..8).map(|_| {
            let mut client = AuthServiceClient::new(deployment.channel());
            let refresh_token = tokens.refresh_token.clone();
            async move { client.refresh(RefreshRequest { refresh_token }).await }
        });
        let outcomes = join_all(refreshes).await;
        let rotated = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        assert_eq!(rotated, 1, "round {round}: {outcomes:?}");
        for refused in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
            assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        }
    }
    spread(&deployment.auth, "/auth.v1.AuthService/Refresh", 32).await;

    // Wrong passwords from one address, all at once over both replicas, are claimed in
    // one database: five are checked, every other is refused with a time to retry.
    let guesses = (0..24).map(|_| {
        let mut client = AuthServiceClient::new(deployment.channel());
        async move {
            client
                .login(LoginRequest {
                    email: "pg@example.com".into(),
                    password: "wrong password".into(),
                })
                .await
                .expect_err("a wrong password")
        }
    });
    let refusals = join_all(guesses).await;
    let checked = refusals
        .iter()
        .filter(|status| status.code() == Code::Unauthenticated)
        .count();
    assert_eq!(checked, 5, "{refusals:?}");
    for status in refusals
        .iter()
        .filter(|s| s.code() != Code::Unauthenticated)
    {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.metadata().get("retry-after").is_some(), "{status:?}");
    }
    // The account's own login, the four rounds' and the guesses.
    spread(&deployment.auth, "/auth.v1.AuthService/Login", 29).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_fetches_a_rotated_key_from_the_auth_replica_still_answering() {
    let mut deployment =
        Deployment::start_with_auth(1, &[("JWT_KEY_ACTIVATION_DELAY_SECONDS", "1".to_owned())])
            .await;
    let user = deployment.user("keys@example.com").await;
    // The storage replicas fetch the first key from the first auth replica they name.
    put(&user, "first-key.bin", 1).await;
    put(&user, "first-key-again.bin", 2).await;

    // A new key, in the key files both auth replicas share; then the first one is gone.
    let rotated = std::process::Command::new(workspace_binary("auth-service"))
        .arg("rotate-key")
        .env_clear()
        .envs(&deployment.auth[0].environment)
        .output()
        .expect("auth-service rotate-key runs");
    assert!(rotated.status.success(), "{rotated:?}");
    deployment.auth[0].kill().await;
    // Past the new key's activation, the replicas' key reload, and the storage
    // replicas' least interval between two key fetches.
    tokio::time::sleep(strongbox_common::jwt::MIN_REFETCH_INTERVAL + Duration::from_secs(1)).await;

    let fresh = AuthServiceClient::new(deployment.channel())
        .login(LoginRequest {
            email: "keys@example.com".into(),
            password: "correct horse battery".into(),
        })
        .await
        .expect("Login on the replica still answering")
        .into_inner()
        .tokens
        .expect("a token pair");
    let kid = |token: &str| {
        jsonwebtoken::decode_header(token)
            .expect("a JWT")
            .kid
            .expect("a kid")
    };
    assert_ne!(
        kid(&fresh.access_token),
        kid(&user.token),
        "signed with the new key"
    );
    // Both storage replicas meet the new kid: each fetches the keys again, and the auth
    // replica it tries first is gone, so it must go on to the one still answering.
    let uploader = User {
        storage: StorageServiceClient::new(deployment.channel()),
        token: fresh.access_token,
        id: user.id,
    };
    for index in 0..12 {
        uploader
            .put_file(
                metadata(&format!("new-key-{index}.bin"), "application/octet-stream"),
                Bytes::from(pseudo_random(1024, index)),
            )
            .await
            .unwrap_or_else(|status| panic!("PutFile with a token of the new key: {status:?}"));
    }
    spread(
        &deployment.storage,
        "/storage.v1.StorageService/PutFile",
        14,
    )
    .await;
}

/// `user`, calling one replica directly instead of the gateway.
fn on_replica(user: &User, replica: &Replica) -> User {
    User {
        storage: StorageServiceClient::new(
            Endpoint::from_shared(replica.url())
                .expect("a valid URL")
                .connect_lazy(),
        ),
        token: user.token.clone(),
        id: user.id,
    }
}

/// Sends `bytes` in 1 MiB chunk messages.
async fn send_chunks(feed: &mpsc::Sender<UploadRequest>, bytes: &[u8]) {
    for chunk in bytes.chunks(MIB) {
        feed.send(chunk_message(chunk.to_vec()))
            .await
            .expect("the upload is still being received");
    }
}

/// Waits (bounded) until the S3 server holds a part of some multipart upload.
async fn a_part_reaches_s3(s3: &TestS3) {
    for _ in 0..300 {
        if s3
            .multipart_files()
            .iter()
            .any(|path| TestS3::is_part(path))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no part of the upload reached S3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_mid_stream_leaves_its_peers_upload_alone_and_one_killed_stores_nothing()
 {
    let mut deployment = Deployment::start(1).await;
    let user = deployment.user("streams@example.com").await;
    let content = pseudo_random(7 * MIB, 7);

    // A stream on replica 0 with its first part on S3; meanwhile replica 1 is killed and
    // started again, and at start it takes over what its own previous process left.
    let on_first = on_replica(&user, &deployment.storage[0]);
    let (feed, call) = on_first.open_upload(metadata("kept.bin", ""));
    send_chunks(&feed, &content[..6 * MIB]).await;
    a_part_reaches_s3(&deployment.s3).await;
    deployment.storage[1].kill().await;
    deployment.storage[1].restart().await;
    deployment.storage_replicas_become(2.0).await;
    // Its first cleanup runs as it starts; a put through it proves it is past that.
    put(&user, "after-restart.bin", 1).await;
    put(&user, "after-restart-2.bin", 2).await;
    send_chunks(&feed, &content[6 * MIB..]).await;
    feed.send(end_message())
        .await
        .expect("the end of the upload");
    drop(feed);
    let stored = call
        .await
        .expect("the call task")
        .expect("the peer's restart leaves the upload alone");
    let (_, downloaded) = user.download(&stored.key).await.expect("Download");
    assert!(downloaded == content, "byte-identical");
    assert!(
        deployment.s3.multipart_files().is_empty(),
        "completed: no multipart upload left"
    );

    // Replica 0 killed in the middle of a stream: the stream fails, nothing of it is
    // listed, and the same upload through the gateway (to the replica left) succeeds.
    let (feed, call) = on_first.open_upload(metadata("cut.bin", ""));
    send_chunks(&feed, &content[..6 * MIB]).await;
    a_part_reaches_s3(&deployment.s3).await;
    deployment.storage[0].kill().await;
    let cut = call.await.expect("the call task");
    assert!(cut.is_err(), "a stream cut by its replica's death fails");
    let listed = user.filenames().await;
    assert!(!listed.contains(&"cut.bin".to_owned()), "{listed:?}");
    let retried = user
        .upload_bytes("cut.bin", &content)
        .await
        .expect("the retry through the gateway");
    let (_, downloaded) = user.download(&retried.key).await.expect("Download");
    assert!(downloaded == content, "byte-identical");
    assert_eq!(user.list_all().await.len(), 4);
}

/// Calls of `operation` this storage replica made to S3.
async fn s3_requests(replica: &Replica, operation: &str) -> f64 {
    Scrape::of(replica.metrics)
        .await
        .value("strongbox_s3_requests_total", &[("operation", operation)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_served_by_any_replica_and_survives_one_killed_in_its_middle() {
    const PART: usize = 5 * MIB;
    let mut deployment = Deployment::start(1).await;
    let user = deployment.user("sessions@example.com").await;
    let replicas = [
        on_replica(&user, &deployment.storage[0]),
        on_replica(&user, &deployment.storage[1]),
    ];

    // Chunks alternate between the replicas; two of them are sent at once, the later
    // one to the other replica, where it must wait for its predecessor's part there.
    let content = pseudo_random(4 * PART + MIB, 21);
    let declared = FileMetadata {
        size: Some(content.len() as u64),
        sha256: Some(sha256_hex(&content)),
        ..metadata("alternating.bin", "")
    };
    let session = replicas[0].create_session(declared).await;
    let id = session.upload_id.as_str();
    let chunk = |index: usize| &content[index * PART..((index + 1) * PART).min(content.len())];
    assert_eq!(
        replicas[1]
            .upload_chunk(id, 0, chunk(0))
            .await
            .expect("chunk 0"),
        PART as u64
    );
    assert_eq!(
        replicas[0]
            .upload_chunk(id, PART as u64, chunk(1))
            .await
            .expect("chunk 1"),
        2 * PART as u64
    );
    let (third, fourth) = tokio::join!(
        replicas[1].upload_chunk(id, 2 * PART as u64, chunk(2)),
        replicas[0].upload_chunk(id, 3 * PART as u64, chunk(3)),
    );
    assert_eq!(third.expect("chunk 2"), 3 * PART as u64);
    assert_eq!(fourth.expect("chunk 3, sent ahead"), 4 * PART as u64);
    assert_eq!(
        replicas[1]
            .upload_chunk(id, 4 * PART as u64, chunk(4))
            .await
            .expect("the last chunk"),
        content.len() as u64
    );
    // The replica completing it saw only some chunks: it finishes the digest kept with
    // the session instead of reading the object back.
    let reads_before = s3_requests(&deployment.storage[0], "get").await;
    let file = replicas[0].complete_session(id).await;
    assert_eq!(file.sha256, sha256_hex(&content));
    assert_eq!(
        s3_requests(&deployment.storage[0], "get").await,
        reads_before
    );
    let (_, downloaded) = user.download(&file.key).await.expect("Download");
    assert!(downloaded == content, "byte-identical");

    // Replica 0 killed while a chunk of a session is on its way to it: the session
    // goes on from where the other replica says it stands, and completes intact.
    let content = pseudo_random(3 * PART, 22);
    let declared = FileMetadata {
        size: Some(content.len() as u64),
        sha256: Some(sha256_hex(&content)),
        ..metadata("survivor.bin", "")
    };
    let session = replicas[0].create_session(declared).await;
    let id = session.upload_id.clone();
    replicas[0]
        .upload_chunk(&id, 0, &content[..PART])
        .await
        .expect("chunk 0");
    let on_its_way = {
        let (replica, id, data) = (
            on_replica(&user, &deployment.storage[0]),
            id.clone(),
            content[PART..2 * PART].to_vec(),
        );
        tokio::spawn(async move { replica.upload_chunk(&id, PART as u64, &data).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    deployment.storage[0].kill().await;
    // Acknowledged or cut off: either way the other replica knows where it stands.
    let acknowledged = on_its_way.await.expect("the call task").ok();
    let offset = replicas[1].session_offset(&id).await;
    assert!(
        offset == PART as u64 || offset == 2 * PART as u64,
        "the session holds whole chunks: {offset}"
    );
    if let Some(acknowledged) = acknowledged {
        assert_eq!(offset, acknowledged, "an acknowledged chunk is kept");
    }
    for start in (offset as usize..content.len()).step_by(PART) {
        replicas[1]
            .upload_chunk(&id, start as u64, &content[start..start + PART])
            .await
            .expect("the session continues on the replica left");
    }
    let file = replicas[1].complete_session(&id).await;
    assert_eq!(file.sha256, sha256_hex(&content));
    let (_, downloaded) = user.download(&file.key).await.expect("Download");
    assert!(downloaded == content, "byte-identical");

    // Every file listed once; no multipart upload of either session left behind.
    let listed = user.filenames().await;
    assert_eq!(listed, ["alternating.bin", "survivor.bin"]);
    assert!(
        deployment.s3.multipart_files().is_empty(),
        "no multipart upload left: {:?}",
        deployment.s3.multipart_files()
    );
}

/// A fresh Ed25519 key as PKCS#8 PEM, what JWT_PRIVATE_KEY holds.
fn ed25519_pem(seed: u8) -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
        .to_pkcs8_pem(LineEnding::LF)
        .expect("a PEM")
        .to_string()
}

/// An auth client calling `replica` directly.
fn auth_on(replica: &Replica) -> AuthServiceClient<Channel> {
    AuthServiceClient::new(
        Endpoint::from_shared(replica.url())
            .expect("a valid URL")
            .connect_lazy(),
    )
}

async fn me_on(replica: &Replica, access_token: &str) -> Result<String, tonic::Status> {
    let me = auth_on(replica)
        .me(with_bearer(MeRequest {}, access_token))
        .await?;
    Ok(me.into_inner().user.expect("a user").email)
}

/// Two auth-services that share no volume — only one PostgreSQL database, and keys
/// given in the environment — are interchangeable: a token one signs verifies on the
/// other, a Refresh retried on the other gets the same successor, and a key rotation
/// done as two rollouts (publish the next key everywhere, then sign with it and keep
/// publishing the previous one) never leaves a token unverifiable anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_replicas_sharing_no_volume_take_their_keys_from_the_environment_and_rotate_them() {
    let scratch = Scratch::new();
    let database = new_postgres_database().await;
    let (old, new) = (ed25519_pem(1), ed25519_pem(2));
    let settings = |name: &str, signing: &str, published: &str| {
        vec![
            ("DATA_DIR", scratch.join(name).display().to_string()),
            ("DATABASE_URL", database.clone()),
            ("BCRYPT_ROUNDS", "4".to_owned()),
            // One line, as an environment file holds it.
            ("JWT_PRIVATE_KEY", signing.replace('\n', "\\n")),
            ("JWT_PUBLISHED_KEYS", published.to_owned()),
            ("REFRESH_TOKEN_KEY", hex::encode([7u8; 32])),
        ]
    };
    let mut first = Replica::start(
        "auth-service",
        "AUTH_LISTEN",
        &scratch,
        &settings("first", &old, &new),
    )
    .await;
    let second = Replica::start(
        "auth-service",
        "AUTH_LISTEN",
        &scratch,
        &settings("second", &old, &new),
    )
    .await;

    let tokens = new_account(
        Endpoint::from_shared(first.url()).unwrap().connect_lazy(),
        "env-keys@example.com",
        "correct horse battery",
    )
    .await;
    assert_eq!(
        me_on(&second, &tokens.access_token)
            .await
            .expect("Me on the other replica"),
        "env-keys@example.com"
    );
    // A Refresh retried on the other replica (its answer was lost) gets the same pair.
    let refresh = |replica: &Replica| {
        let mut client = auth_on(replica);
        let refresh_token = tokens.refresh_token.clone();
        async move {
            client
                .refresh(RefreshRequest { refresh_token })
                .await
                .expect("Refresh")
                .into_inner()
                .tokens
                .expect("a token pair")
                .refresh_token
        }
    };
    assert_eq!(refresh(&first).await, refresh(&second).await);

    // The second rollout reaches the first replica: it signs with the new key and
    // publishes the old one. Its tokens verify on the replica not yet rolled, and the
    // old tokens still verify on it.
    first.kill().await;
    for (name, value) in settings("first", &new, &old) {
        first.environment.insert(name.to_owned(), value);
    }
    first.restart().await;
    let login = auth_on(&first)
        .login(LoginRequest {
            email: "env-keys@example.com".into(),
            password: "correct horse battery".into(),
        })
        .await
        .expect("Login")
        .into_inner()
        .tokens
        .expect("a token pair");
    let new_kid = jsonwebtoken::decode_header(&login.access_token)
        .unwrap()
        .kid;
    let old_kid = jsonwebtoken::decode_header(&tokens.access_token)
        .unwrap()
        .kid;
    assert_ne!(
        new_kid, old_kid,
        "the rolled replica signs with the new key"
    );
    me_on(&second, &login.access_token)
        .await
        .expect("a token of the new key on the replica still signing with the old");
    me_on(&first, &tokens.access_token)
        .await
        .expect("a token of the old key on the rolled replica");
}
