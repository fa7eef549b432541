//! The system under measurement: the three release binaries as separate processes (so
//! each one's peak memory is its own), and the S3 server in this process (s3s-fs on
//! loopback, the same server the direct `object_store` baseline writes to).

use std::collections::BTreeMap;

use object_store::aws::AmazonS3Builder;
use object_store::{ClientOptions, ObjectStore};
use strongbox_proto::auth::v1::LoginRequest;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_tests::Scratch;
use strongbox_tests::auth::new_account;
use strongbox_tests::database::new_postgres_database;
use strongbox_tests::process::{Profile, ServiceProcess, workspace_binary_in};
use strongbox_tests::s3::{ACCESS_KEY, SECRET_KEY, TestS3};
use strongbox_tests::storage::BUCKET;
use tonic::transport::{Channel, Endpoint};

pub struct System {
    pub s3: TestS3,
    pub auth: Service,
    pub storage: Service,
    pub gateway: Service,
    /// Holds every process's data (and the S3 server's) until the run ends.
    _dir: Scratch,
}

/// Storage replicas and the gateway in front of them.
pub struct Replicas {
    pub storage: Vec<Service>,
    pub gateway: Service,
}

impl Replicas {
    pub async fn stop(self) {
        self.gateway.stop().await;
        for storage in self.storage {
            storage.stop().await;
        }
    }
}

/// A service process and where it listens.
pub struct Service {
    process: Option<ServiceProcess>,
    pub url: String,
    binary: std::path::PathBuf,
    environment: BTreeMap<String, String>,
    dir: std::path::PathBuf,
}

impl Service {
    pub fn process(&self) -> &ServiceProcess {
        self.process.as_ref().expect("the service runs")
    }

    /// Stops the process and starts a fresh one with the same settings and data. Each
    /// measurement starts from fresh processes, so the heap one measurement leaves
    /// behind (glibc keeps freed buffers for reuse) is not counted as the next one's peak.
    pub async fn restart(&mut self) {
        if let Some(old) = self.process.take() {
            old.kill().await;
        }
        self.process =
            Some(ServiceProcess::start(&self.binary, &self.environment, &self.dir).await);
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub async fn stop(mut self) {
        if let Some(process) = self.process.take() {
            process.kill().await;
        }
    }

    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url.clone())
            .expect("a valid URL")
            .connect_lazy()
    }
}

impl System {
    pub async fn start() -> Self {
        let dir = Scratch::new();
        let s3 = TestS3::start(&dir);
        let (auth_url, storage_url, gateway_url) = (free_url(), free_url(), free_url());
        let listen = |url: &str| url.trim_start_matches("http://").to_owned();
        let auth = start(
            &dir,
            "auth-service",
            [
                ("AUTH_LISTEN", listen(&auth_url)),
                ("DATA_DIR", dir.join("auth").display().to_string()),
                // The production default, stated: the login numbers are about cost 12.
                ("BCRYPT_ROUNDS", BCRYPT_COST.to_string()),
                // Benchmarks log in thousands of times per address.
                ("LOGIN_MAX_FAILURES", "1000".to_owned()),
                // The clients log in once; a full run outlasts the 15-minute default.
                ("ACCESS_TOKEN_EXPIRE_SECONDS", "86400".to_owned()),
            ],
            auth_url,
        )
        .await;
        let storage = start(
            &dir,
            "storage-service",
            [
                ("STORAGE_LISTEN", listen(&storage_url)),
                ("DATA_DIR", dir.join("storage").display().to_string()),
                ("STORAGE_ENDPOINT", s3.endpoint()),
                ("STORAGE_ACCESS_KEY", ACCESS_KEY.to_owned()),
                ("STORAGE_SECRET_KEY", SECRET_KEY.to_owned()),
                ("STORAGE_BUCKET", BUCKET.to_owned()),
                ("AUTH_SERVICE_URL", auth.url.clone()),
                // s3s-fs completes a multipart upload by copying its parts into one file;
                // sixteen 1 GiB completions at once take longer than the 30 s default.
                (
                    "STORAGE_TIMEOUT_SECONDS",
                    SLOW_S3_TIMEOUT.as_secs().to_string(),
                ),
            ],
            storage_url,
        )
        .await;
        let gateway = start(
            &dir,
            "gateway",
            [
                ("GATEWAY_LISTEN", listen(&gateway_url)),
                ("AUTH_SERVICE_URL", auth.url.clone()),
                ("STORAGE_SERVICE_URL", storage.url.clone()),
                // The upload measurements move hundreds of files a second for one user:
                // the per-user storage rate (100/s, burst 500) is meant for people, and
                // would measure the limit instead of the path. The per-client cap on open
                // calls (64) stays: at most 16 uploads × 2 chunks are open at once.
                // The hostile-load measurements start their own gateways with defaults.
                ("RATE_LIMIT_STORAGE", "off".to_owned()),
            ],
            gateway_url,
        )
        .await;
        Self {
            s3,
            auth,
            storage,
            gateway,
            _dir: dir,
        }
    }

    /// An `object_store` client straight to the S3 server: the baseline.
    pub fn direct_store(&self) -> std::sync::Arc<dyn ObjectStore> {
        std::sync::Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(self.s3.endpoint())
                .with_bucket_name(BUCKET)
                .with_region("us-east-1")
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .with_client_options(
                    ClientOptions::new()
                        .with_allow_http(true)
                        .with_timeout(SLOW_S3_TIMEOUT),
                )
                .build()
                .expect("an S3 client"),
        )
    }

    pub fn auth_client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.auth.channel())
    }

    /// Registers `email` and returns an access token.
    pub async fn user(&self, email: &str) -> String {
        new_account(self.auth.channel(), email, PASSWORD)
            .await
            .access_token
    }

    /// A second auth-service with the same settings, its accounts in a new database on
    /// the PostgreSQL server the test suites use (`strongbox_tests::database`).
    pub async fn auth_on_postgres(&self) -> Service {
        let url = free_url();
        let database_url = new_postgres_database().await;
        let mut environment = self.auth.environment.clone();
        environment.insert(
            "AUTH_LISTEN".into(),
            url.trim_start_matches("http://").into(),
        );
        environment.insert(
            "DATA_DIR".into(),
            self.auth.dir.join("auth-on-postgres").display().to_string(),
        );
        environment.insert("DATABASE_URL".into(), database_url);
        start_in(&self.auth.dir, "auth-service", environment, url).await
    }

    /// `count` more storage-services with the settings of the first, their index in one
    /// new database on the PostgreSQL server the test suites use, and a gateway (with
    /// the main one's settings) in front of them all.
    pub async fn storage_replicas_on_postgres(&self, count: usize) -> Replicas {
        let database_url = new_postgres_database().await;
        let mut storage = Vec::with_capacity(count);
        for _ in 0..count {
            let url = free_url();
            let mut environment = self.storage.environment.clone();
            environment.insert(
                "STORAGE_LISTEN".into(),
                url.trim_start_matches("http://").into(),
            );
            environment.insert("STORAGE_DATABASE_URL".into(), database_url.clone());
            storage.push(start_in(&self.storage.dir, "storage-service", environment, url).await);
        }
        let url = free_url();
        let mut environment = self.gateway.environment.clone();
        environment.insert(
            "GATEWAY_LISTEN".into(),
            url.trim_start_matches("http://").into(),
        );
        let replicas: Vec<&str> = storage.iter().map(|service| service.url.as_str()).collect();
        environment.insert("STORAGE_SERVICE_URL".into(), replicas.join(","));
        let gateway = start_in(&self.gateway.dir, "gateway", environment, url).await;
        Replicas { storage, gateway }
    }

    /// Another gateway in front of the same services, with every limit at its default
    /// except `settings` (the hostile-load measurements start theirs fresh, so its
    /// peak memory is theirs alone).
    pub async fn extra_gateway(&self, settings: &[(&str, String)]) -> Service {
        let url = free_url();
        let mut environment = vec![
            (
                "GATEWAY_LISTEN",
                url.trim_start_matches("http://").to_owned(),
            ),
            ("AUTH_SERVICE_URL", self.auth.url.clone()),
            ("STORAGE_SERVICE_URL", self.storage.url.clone()),
        ];
        environment.extend(settings.iter().cloned());
        start_in(&self.gateway.dir, "gateway", environment, url).await
    }

    /// How many objects and multipart parts the S3 server holds, to check cleanup.
    pub fn s3_files(&self) -> usize {
        self.s3.files(BUCKET).len()
    }
}

/// Long enough for s3s-fs to complete large multipart uploads (see `System::start`).
const SLOW_S3_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

pub const PASSWORD: &str = "a benchmark password";
/// The cost auth-service hashes at here, and the bound is timed at.
pub const BCRYPT_COST: u32 = 12;

pub fn login(email: &str) -> LoginRequest {
    LoginRequest {
        email: email.to_owned(),
        password: PASSWORD.to_owned(),
    }
}

async fn start<const N: usize>(
    dir: &Scratch,
    binary: &str,
    settings: [(&str, String); N],
    url: String,
) -> Service {
    start_in(dir.path(), binary, settings, url).await
}

async fn start_in<N: Into<String>>(
    dir: &std::path::Path,
    binary: &str,
    settings: impl IntoIterator<Item = (N, String)>,
    url: String,
) -> Service {
    let mut environment: BTreeMap<String, String> = settings
        .into_iter()
        .map(|(name, value)| (name.into(), value))
        .collect();
    environment.insert("RUST_LOG".into(), "warn".into());
    let mut service = Service {
        process: None,
        url,
        binary: workspace_binary_in(Profile::current(), binary),
        environment,
        dir: dir.to_path_buf(),
    };
    service.restart().await;
    service
}

fn free_url() -> String {
    let port = strongbox_tests::reserve_port(0)
        .local_addr()
        .expect("a bound port")
        .port();
    format!("http://127.0.0.1:{port}")
}
