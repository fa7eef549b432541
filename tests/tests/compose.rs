//! docker-compose.yml, proven without a Docker engine: every variable it gives a
//! service is one that service's configuration declares, its addresses and ports line
//! up, and the three real binaries, started with exactly its environment (service names
//! mapped to loopback, MinIO played by a real S3 server), come up healthy through their
//! own `healthcheck` subcommand and complete an upload. It also holds the file to its
//! security rules: no credential has a default, MinIO is published on 127.0.0.1 only,
//! and storage-service uses its own bucket-limited MinIO user, made by a one-shot init
//! service it waits for.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use clap::CommandFactory;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::auth::v1::{LoginRequest, RegisterRequest};
use strongbox_proto::storage::v1::FileMetadata;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_tests::Scratch;
use strongbox_tests::auth::with_bearer;
use strongbox_tests::database::new_postgres_database;
use strongbox_tests::metrics::Scrape;
use strongbox_tests::process::ServiceProcess;
use strongbox_tests::s3::TestS3;
use strongbox_tests::storage::{User, metadata, pseudo_random, sha256_hex};
use strongbox_tests::tools::workspace_binary;
use yaml_rust2::{Yaml, YamlLoader};

const SERVICES: [&str; 3] = ["auth-service", "storage-service", "gateway"];
/// Read by telemetry in every service rather than declared by a config struct.
const SHARED_VARIABLES: [&str; 1] = ["RUST_LOG"];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A compose file and the overrides given after it (`-f … -f …`), with `${VAR:-default}`
/// and `${VAR:?message}` resolved from `.env.example` (the README's setup copies it to
/// `.env`), else from the default.
struct Compose {
    text: String,
    root: Yaml,
    overrides: Vec<Yaml>,
    dotenv: BTreeMap<String, String>,
}

impl Compose {
    fn load() -> Self {
        Self::load_with(&[])
    }

    /// docker-compose.yml with `overrides` on top, as compose merges them: an override's
    /// variables replace or add to a service's.
    fn load_with(overrides: &[&str]) -> Self {
        let read = |file: &str| std::fs::read_to_string(workspace().join(file)).unwrap();
        let parse = |text: &str| YamlLoader::load_from_str(text).unwrap().remove(0);
        let mut text = read("docker-compose.yml");
        let root = parse(&text);
        let overrides = overrides
            .iter()
            .map(|file| {
                let override_text = read(file);
                text.push_str(&override_text);
                parse(&override_text)
            })
            .collect();
        let dotenv = dotenvy::from_path_iter(workspace().join(".env.example"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        Self {
            text,
            root,
            overrides,
            dotenv,
        }
    }

    fn service(&self, name: &str) -> &Yaml {
        let service = &self.root["services"][name];
        assert!(
            !service.is_badvalue(),
            "docker-compose.yml has no service {name}"
        );
        service
    }

    fn environment(&self, name: &str) -> BTreeMap<String, String> {
        let mut merged = BTreeMap::new();
        for root in std::iter::once(&self.root).chain(&self.overrides) {
            let Some(environment) = root["services"][name]["environment"].as_hash() else {
                continue;
            };
            for (key, value) in environment {
                let raw = match value {
                    Yaml::String(text) => text.clone(),
                    Yaml::Integer(number) => number.to_string(),
                    other => panic!("{name}: unexpected value {other:?}"),
                };
                merged.insert(key.as_str().unwrap().to_owned(), self.interpolate(&raw));
            }
        }
        assert!(!merged.is_empty(), "no file gives {name} an environment");
        merged
    }

    /// A service's environment as one `file` gives it (for services only an override has).
    fn environment_in(&self, file: &str, name: &str) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string(workspace().join(file)).unwrap();
        let root = YamlLoader::load_from_str(&text).unwrap().remove(0);
        let environment = root["services"][name]["environment"]
            .as_hash()
            .unwrap_or_else(|| panic!("{file} gives {name} no environment"));
        environment
            .iter()
            .map(|(key, value)| {
                let raw = value.as_str().expect("a string").to_owned();
                (key.as_str().unwrap().to_owned(), self.interpolate(&raw))
            })
            .collect()
    }

    /// Resolves every `${…}` in `raw`, as compose does.
    fn interpolate(&self, raw: &str) -> String {
        let mut resolved = String::new();
        let mut rest = raw;
        while let Some(start) = rest.find("${") {
            resolved.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').expect("an unclosed ${");
            let inner = &after[..end];
            let (variable, default) = inner
                .split_once(":-")
                .or_else(|| inner.split_once(":?").map(|(variable, _)| (variable, "")))
                .unwrap_or((inner, ""));
            resolved.push_str(self.dotenv.get(variable).map_or(default, String::as_str));
            rest = &after[end + 1..];
        }
        resolved.push_str(rest);
        resolved
    }

    fn strings(&self, service: &str, field: &str) -> Vec<String> {
        self.service(service)[field]
            .as_vec()
            .map(|items| {
                items
                    .iter()
                    .map(|item| item.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The environment variables a service's configuration declares.
fn declared_variables(service: &str) -> Vec<String> {
    let command = match service {
        "auth-service" => auth_service::Config::command(),
        "storage-service" => storage_service::Config::command(),
        "gateway" => gateway::Config::command(),
        other => panic!("unknown service {other}"),
    };
    command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect()
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

#[test]
fn every_variable_is_one_the_service_accepts() {
    let compose = Compose::load();
    for service in SERVICES {
        let declared = declared_variables(service);
        for variable in compose.environment(service).keys() {
            assert!(
                declared.contains(variable) || SHARED_VARIABLES.contains(&variable.as_str()),
                "docker-compose.yml gives {service} {variable}, which its configuration does not declare"
            );
        }
    }
}

#[test]
fn addresses_ports_credentials_and_healthchecks_line_up() {
    let compose = Compose::load();
    let auth = compose.environment("auth-service");
    let storage = compose.environment("storage-service");
    let gateway = compose.environment("gateway");
    let minio = compose.environment("minio");

    let auth_url = format!("http://auth-service:{}", port_of(&auth["AUTH_LISTEN"]));
    let storage_url = format!(
        "http://storage-service:{}",
        port_of(&storage["STORAGE_LISTEN"])
    );
    assert_eq!(storage["AUTH_SERVICE_URL"], auth_url);
    assert_eq!(gateway["AUTH_SERVICE_URL"], auth_url);
    assert_eq!(gateway["STORAGE_SERVICE_URL"], storage_url);
    assert_eq!(storage["STORAGE_ENDPOINT"], "http://minio:9000");
    assert!(
        compose
            .strings("minio", "ports")
            .contains(&"127.0.0.1:9000:9000".to_owned())
    );
    assert_eq!(
        storage["STORAGE_PUBLIC_ENDPOINT"], "http://localhost:9000",
        "browsers reach MinIO's published port"
    );
    let gateway_port = port_of(&gateway["GATEWAY_LISTEN"]);
    assert!(
        compose
            .strings("gateway", "ports")
            .contains(&format!("{gateway_port}:{gateway_port}"))
    );
    assert_eq!(
        storage["PUBLIC_BASE_URL"],
        format!("http://localhost:{gateway_port}")
    );
    let init = compose.environment("minio-init");
    assert_eq!(init["MINIO_ROOT_USER"], minio["MINIO_ROOT_USER"]);
    assert_eq!(init["MINIO_ROOT_PASSWORD"], minio["MINIO_ROOT_PASSWORD"]);
    assert_eq!(init["STORAGE_ACCESS_KEY"], storage["STORAGE_ACCESS_KEY"]);
    assert_eq!(init["STORAGE_SECRET_KEY"], storage["STORAGE_SECRET_KEY"]);
    assert_eq!(init["STORAGE_BUCKET"], storage["STORAGE_BUCKET"]);

    for service in SERVICES {
        let test = compose.strings_in(service, "healthcheck", "test");
        assert_eq!(
            test,
            ["CMD", service, "healthcheck"],
            "{service}'s healthcheck uses its own subcommand"
        );
    }
    for (service, environment) in [("auth-service", &auth), ("storage-service", &storage)] {
        let data = &environment["DATA_DIR"];
        let volumes = compose.strings(service, "volumes");
        assert!(
            volumes
                .iter()
                .any(|volume| volume.ends_with(&format!(":{data}")) && !volume.starts_with('.')),
            "{service} keeps DATA_DIR ({data}) in a named volume: {volumes:?}"
        );
    }
}

impl Compose {
    fn strings_in(&self, service: &str, section: &str, field: &str) -> Vec<String> {
        self.service(service)[section][field]
            .as_vec()
            .map(|items| {
                items
                    .iter()
                    .map(|item| item.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Replaces compose's network names and published ports with this machine's.
fn localize(value: &str, renames: &[(String, String)]) -> String {
    renames.iter().fold(value.to_owned(), |value, (from, to)| {
        value.replace(from, to)
    })
}

fn free_port() -> u16 {
    strongbox_tests::reserve_port(0)
        .local_addr()
        .unwrap()
        .port()
}

/// The three binaries started with exactly a compose file's environment: `replicas` of
/// auth-service and of storage-service, service names mapped to their loopback
/// addresses (a name that resolves to every replica becomes the list of their URLs, the
/// documented equivalent), MinIO played by a real S3 server and the postgres service by
/// a database of the suites' PostgreSQL server.
struct Composed {
    children: Vec<ServiceProcess>,
    s3: TestS3,
    gateway_port: u16,
    /// Each auth-service's and storage-service's metrics address, by service.
    metrics: BTreeMap<&'static str, Vec<SocketAddr>>,
    _scratch: Scratch,
}

impl Composed {
    async fn start(compose: &Compose, replicas: usize) -> Self {
        let scratch = Scratch::new();
        let storage_env = compose.environment("storage-service");
        let s3 = TestS3::start_with_credentials(
            scratch.join("minio"),
            None,
            &storage_env["STORAGE_ACCESS_KEY"],
            &storage_env["STORAGE_SECRET_KEY"],
        );
        let gateway_port = free_port();
        let ports = |count: usize| (0..count).map(|_| free_port()).collect::<Vec<_>>();
        let listen: BTreeMap<&str, Vec<u16>> = [
            ("auth-service", ports(replicas)),
            ("storage-service", ports(replicas)),
        ]
        .into();
        let metrics_ports: BTreeMap<&str, Vec<u16>> = [
            ("auth-service", ports(replicas)),
            ("storage-service", ports(replicas)),
        ]
        .into();
        let urls = |service: &str| {
            listen[service]
                .iter()
                .map(|port| format!("http://127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let shared = [
            ("http://auth-service:50051".to_owned(), urls("auth-service")),
            (
                "http://storage-service:50052".to_owned(),
                urls("storage-service"),
            ),
            ("minio:9000".to_owned(), s3.service.addr.to_string()),
            (
                "localhost:9000".to_owned(),
                format!("localhost:{}", s3.service.addr.port()),
            ),
            (
                "localhost:8000".to_owned(),
                format!("localhost:{gateway_port}"),
            ),
            (
                "0.0.0.0:8000".to_owned(),
                format!("127.0.0.1:{gateway_port}"),
            ),
        ];
        // Each database the compose file names on the postgres service, one per name.
        let mut databases = BTreeMap::new();
        let mut children = Vec::new();
        for service in SERVICES {
            let count = if service == "gateway" { 1 } else { replicas };
            for replica in 0..count {
                let mut renames = shared.to_vec();
                if let Some(ports) = listen.get(service) {
                    let (own, metrics) = (ports[replica], metrics_ports[service][replica]);
                    let (listen_at, metrics_at) = match service {
                        "auth-service" => ("0.0.0.0:50051", "0.0.0.0:9101"),
                        _ => ("0.0.0.0:50052", "0.0.0.0:9102"),
                    };
                    renames.push((listen_at.to_owned(), format!("127.0.0.1:{own}")));
                    renames.push((metrics_at.to_owned(), format!("127.0.0.1:{metrics}")));
                }
                let mut environment = BTreeMap::new();
                for (key, value) in compose.environment(service) {
                    let value = match value.strip_prefix("postgres://") {
                        Some(url) => {
                            let name = url.rsplit('/').next().unwrap().to_owned();
                            assert!(url.contains("@postgres:5432/"), "{key}={value}");
                            if !databases.contains_key(&name) {
                                databases.insert(name.clone(), new_postgres_database().await);
                            }
                            databases[&name].clone()
                        }
                        None => localize(&value, &renames),
                    };
                    environment.insert(key, value);
                }
                if environment.contains_key("DATA_DIR") {
                    // Replicas of one service share its named volume.
                    environment.insert(
                        "DATA_DIR".into(),
                        scratch.join(service).display().to_string(),
                    );
                }
                let binary = workspace_binary(service);
                children.push(ServiceProcess::start(&binary, &environment, scratch.path()).await);
            }
        }
        let metrics = metrics_ports
            .into_iter()
            .map(|(service, ports)| {
                let addresses = ports
                    .into_iter()
                    .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
                    .collect();
                (service, addresses)
            })
            .collect();
        Self {
            children,
            s3,
            gateway_port,
            metrics,
            _scratch: scratch,
        }
    }

    fn gateway(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", self.gateway_port))
            .unwrap()
            .connect_lazy()
    }

    /// A new account, through the gateway.
    async fn user(&self, email: &str) -> User {
        let mut auth = AuthServiceClient::new(self.gateway());
        let password = "a compose password";
        auth.register(RegisterRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .unwrap();
        let tokens = auth
            .login(LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .tokens
            .unwrap();
        let me = auth
            .me(with_bearer(
                strongbox_proto::auth::v1::MeRequest {},
                &tokens.access_token,
            ))
            .await
            .unwrap();
        User {
            storage: StorageServiceClient::new(self.gateway()),
            token: tokens.access_token,
            id: uuid::Uuid::parse_str(&me.into_inner().user.unwrap().id).unwrap(),
        }
    }

    /// The calls each replica of `service` answered.
    async fn calls(&self, service: &str) -> Vec<f64> {
        let mut calls = Vec::new();
        for address in &self.metrics[service] {
            let scrape = Scrape::of(*address).await;
            calls.push(scrape.value("strongbox_grpc_calls_total", &[]));
        }
        calls
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binaries_run_with_exactly_the_compose_environment() {
    let composed = Composed::start(&Compose::load(), 1).await;
    let user = composed.user("compose@example.com").await;
    let content = pseudo_random(3 * 1024 * 1024, 21);
    let declared = FileMetadata {
        size: Some(content.len() as u64),
        ..metadata("compose.bin", "")
    };
    let uploaded = user
        .upload(declared, vec![Bytes::from(content.clone())])
        .await
        .unwrap();
    assert_eq!(uploaded.sha256, sha256_hex(&content));
    // The download URL is signed for the public endpoint, and works there.
    let url = url::Url::parse(&uploaded.url).unwrap();
    assert_eq!(url.host_str(), Some("localhost"));
    assert_eq!(url.port(), Some(composed.s3.service.addr.port()));
    let fetched = reqwest::get(url).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert!(fetched.bytes().await.unwrap() == content);
    // Each service answers Prometheus where compose says it does, and counted the upload.
    for service in ["auth-service", "storage-service"] {
        assert!(composed.calls(service).await[0] > 0.0, "{service}");
    }
    let scrape = reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        composed.gateway_port
    ))
    .await
    .unwrap();
    assert_eq!(scrape.status(), 200);
    let text = scrape.text().await.unwrap();
    assert!(text.contains("strongbox_grpc_calls_total{"), "{text}");
    drop(composed.children);
}

/// docker-compose.scale.yml on top: two replicas of each service on one PostgreSQL
/// server (a database each, as the file names them), their calls spread by the gateway,
/// and every upload path working across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaled_deployment_runs_with_exactly_its_compose_environment() {
    let compose = Compose::load_with(&["docker-compose.scale.yml"]);
    let composed = Composed::start(&compose, 2).await;
    let user = composed.user("scaled@example.com").await;
    let content = pseudo_random(6 * 1024 * 1024, 22);
    let streamed = user
        .upload_bytes("streamed.bin", &content)
        .await
        .expect("an upload through the gateway");
    assert_eq!(streamed.sha256, sha256_hex(&content));
    let session = user
        .create_session(FileMetadata {
            size: Some(content.len() as u64),
            sha256: Some(sha256_hex(&content)),
            ..metadata("resumable.bin", "")
        })
        .await;
    let part = 5 * 1024 * 1024;
    for start in (0..content.len()).step_by(part) {
        let end = (start + part).min(content.len());
        user.upload_chunk(&session.upload_id, start as u64, &content[start..end])
            .await
            .expect("a chunk through the gateway");
    }
    let file = user.complete_session(&session.upload_id).await;
    assert_eq!(file.sha256, sha256_hex(&content));
    for _ in 0..30 {
        user.list_all().await;
    }
    let listed = user.filenames().await;
    assert_eq!(listed, ["resumable.bin", "streamed.bin"]);
    for service in ["auth-service", "storage-service"] {
        let calls = composed.calls(service).await;
        assert!(
            calls.iter().all(|&answered| answered > 0.0),
            "every {service} replica answers a share: {calls:?}"
        );
    }
    drop(composed.children);
}

#[test]
fn the_scale_file_gives_each_service_its_own_database_on_the_postgres_service() {
    let compose = Compose::load_with(&["docker-compose.scale.yml"]);
    for service in SERVICES {
        let declared = declared_variables(service);
        for variable in compose.environment(service).keys() {
            assert!(
                declared.contains(variable) || SHARED_VARIABLES.contains(&variable.as_str()),
                "the scaled deployment gives {service} {variable}, which its configuration does not declare"
            );
        }
    }
    let postgres = compose.environment_in("docker-compose.scale.yml", "postgres");
    let password = &postgres["POSTGRES_PASSWORD"];
    let user = &postgres["POSTGRES_USER"];
    let auth = &compose.environment("auth-service")["DATABASE_URL"];
    let storage = &compose.environment("storage-service")["STORAGE_DATABASE_URL"];
    assert_eq!(
        *auth,
        format!(
            "postgres://{user}:{password}@postgres:5432/{}",
            postgres["POSTGRES_DB"]
        )
    );
    assert_eq!(
        *storage,
        format!("postgres://{user}:{password}@postgres:5432/storage")
    );
    let init = compose.environment_in("docker-compose.scale.yml", "postgres-init");
    assert_eq!(&init["PGPASSWORD"], password);
}

#[test]
fn the_readme_documents_every_variable() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    for service in SERVICES {
        for variable in declared_variables(service) {
            assert!(
                readme.contains(&format!("| `{variable}` |")),
                "README.md's configuration table lacks {variable} ({service})"
            );
        }
    }
}

/// Every `${…}` compose interpolates (a `$${…}` is the container's, not compose's).
fn interpolations(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let escaped = rest[..start].ends_with('$');
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .expect("an unclosed ${ in docker-compose.yml");
        if !escaped {
            found.push(&after[..end]);
        }
        rest = &after[end..];
    }
    found
}

/// Names that hold credentials, whatever the service.
fn is_credential(variable: &str) -> bool {
    ["SECRET", "PASSWORD", "ACCESS_KEY", "ROOT_USER"]
        .iter()
        .any(|marker| variable.contains(marker))
}

#[test]
fn no_credential_has_a_default() {
    let compose = Compose::load_with(&["docker-compose.scale.yml"]);
    let references = interpolations(&compose.text);
    let credentials: Vec<_> = references
        .iter()
        .filter(|reference| is_credential(reference))
        .collect();
    assert!(
        credentials.len() >= 4,
        "expected MinIO's and storage-service's credentials: {references:?}"
    );
    for reference in credentials {
        let (variable, message) = reference.split_once(":?").unwrap_or_else(|| {
            panic!("${{{reference}}} must be ${{VAR:?message}}: no default credential")
        });
        assert!(
            message.contains(variable),
            "the message of ${{{reference}}} should name {variable}"
        );
    }
    // And nothing credential-like is written into the file itself.
    for service in [
        "minio",
        "minio-init",
        "storage-service",
        "auth-service",
        "gateway",
    ] {
        for (variable, value) in compose.service(service)["environment"]
            .as_hash()
            .into_iter()
            .flatten()
        {
            let (variable, value) = (variable.as_str().unwrap(), value.as_str().unwrap_or(""));
            if is_credential(variable) {
                assert!(
                    value.starts_with("${") && value.contains(":?"),
                    "{service}: {variable} is not taken from the environment: {value}"
                );
            }
        }
    }
}

#[test]
fn minio_is_published_on_loopback_only() {
    let compose = Compose::load();
    let ports = compose.strings("minio", "ports");
    assert!(
        !ports.is_empty(),
        "download URLs need MinIO's API published"
    );
    for port in &ports {
        assert!(
            port.starts_with("127.0.0.1:"),
            "MinIO port {port} is published beyond 127.0.0.1"
        );
    }
    assert!(
        ports.contains(&"127.0.0.1:9001:9001".to_owned()),
        "{ports:?}"
    );
}

#[test]
fn storage_service_uses_its_own_bucket_limited_user_made_by_an_init_service() {
    let compose = Compose::load();
    let minio = compose.environment("minio");
    let storage = compose.environment("storage-service");
    assert_ne!(
        storage["STORAGE_ACCESS_KEY"], minio["MINIO_ROOT_USER"],
        "storage-service must not use MinIO's root user"
    );
    let raw_access_key = compose.service("storage-service")["environment"]["STORAGE_ACCESS_KEY"]
        .as_str()
        .unwrap();
    assert!(!raw_access_key.contains("MINIO_ROOT"), "{raw_access_key}");

    let init = compose.service("minio-init");
    assert!(
        init["image"].as_str().unwrap().starts_with("minio/mc:"),
        "the init service runs the mc client"
    );
    assert_eq!(
        init["depends_on"]["minio"]["condition"].as_str(),
        Some("service_healthy")
    );
    let script = compose.strings("minio-init", "command").join("\n");
    for step in [
        "mc alias set local http://minio:9000",
        "mc mb --ignore-existing",
        "mc admin policy create",
        "mc admin user add local \"$$STORAGE_ACCESS_KEY\"",
        "mc admin policy attach",
        "arn:aws:s3:::$$STORAGE_BUCKET/*",
    ] {
        assert!(
            script.contains(step),
            "minio-init does not run `{step}`:\n{script}"
        );
    }
    assert!(
        !script.contains("arn:aws:s3:::*"),
        "the policy must name storage-service's bucket, not every bucket"
    );
    assert_eq!(
        compose.service("storage-service")["depends_on"]["minio-init"]["condition"].as_str(),
        Some("service_completed_successfully"),
        "storage-service waits until its user exists"
    );
}
