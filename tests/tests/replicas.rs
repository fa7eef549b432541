//! Two replicas of each service behind one gateway, every one its own process: calls
//! spread over every replica; a replica killed outright (SIGKILL) is taken out within
//! seconds and a call that never reached it goes to another, so no caller sees it go; a
//! replica started again is used again; with none answering, a call is refused at once
//! and told when to retry.
//!
//! The replicas of a service share one data directory: SQLite, the embedded default,
//! serves several processes on one machine, so every call here means the same on
//! either replica.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use strongbox_proto::auth::v1::MeRequest;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::storage::v1::ListFilesRequest;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_tests::Scratch;
use strongbox_tests::auth::{new_account, with_bearer};
use strongbox_tests::metrics::Scrape;
use strongbox_tests::process::ServiceProcess;
use strongbox_tests::storage::{User, metadata, pseudo_random};
use strongbox_tests::tools::workspace_binary;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

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

/// Two auth-services and two storage-services, each pair on one data directory, and a
/// gateway given both replicas of each.
struct Deployment {
    auth: [Replica; 2],
    storage: [Replica; 2],
    _gateway: ServiceProcess,
    gateway_addr: SocketAddr,
    _scratch: Scratch,
}

impl Deployment {
    async fn start(health_interval_seconds: u64) -> Self {
        let scratch = Scratch::new();
        let auth_settings = [
            ("DATA_DIR", scratch.join("auth").display().to_string()),
            ("BCRYPT_ROUNDS", "4".to_owned()),
        ];
        // One after the other: the first creates the database and the signing key the
        // second then shares.
        let first_auth =
            Replica::start("auth-service", "AUTH_LISTEN", &scratch, &auth_settings).await;
        let second_auth =
            Replica::start("auth-service", "AUTH_LISTEN", &scratch, &auth_settings).await;
        let storage_settings = [
            ("DATA_DIR", scratch.join("storage").display().to_string()),
            ("AUTH_SERVICE_URL", first_auth.url()),
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
