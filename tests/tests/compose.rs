//! docker-compose.yml, proven without a Docker engine: every variable it gives a
//! service is one that service's configuration declares, its addresses and ports line
//! up, and the three real binaries, started with exactly its environment (service names
//! mapped to loopback, MinIO played by a real S3 server), come up healthy through their
//! own `healthcheck` subcommand and complete an upload. It also holds the file to its
//! security rules: no credential has a default, MinIO is published on 127.0.0.1 only,
//! and storage-service uses its own bucket-limited MinIO user, made by a one-shot init
//! service it waits for.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use clap::CommandFactory;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::auth::v1::{LoginRequest, RegisterRequest};
use strongbox_proto::storage::v1::FileMetadata;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_tests::Scratch;
use strongbox_tests::auth::with_bearer;
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

/// The compose file, with `${VAR:-default}` and `${VAR:?message}` resolved from
/// `.env.example` (the README's setup copies it to `.env`), else from the default.
struct Compose {
    text: String,
    root: Yaml,
    dotenv: BTreeMap<String, String>,
}

impl Compose {
    fn load() -> Self {
        let text = std::fs::read_to_string(workspace().join("docker-compose.yml")).unwrap();
        let root = YamlLoader::load_from_str(&text).unwrap().remove(0);
        let dotenv = dotenvy::from_path_iter(workspace().join(".env.example"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        Self { text, root, dotenv }
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
        let environment = self.service(name)["environment"]
            .as_hash()
            .expect("a map of variables");
        environment
            .iter()
            .map(|(key, value)| {
                let raw = match value {
                    Yaml::String(text) => text.clone(),
                    Yaml::Integer(number) => number.to_string(),
                    other => panic!("{name}: unexpected value {other:?}"),
                };
                (key.as_str().unwrap().to_owned(), self.interpolate(&raw))
            })
            .collect()
    }

    fn interpolate(&self, raw: &str) -> String {
        let Some(inner) = raw
            .strip_prefix("${")
            .and_then(|rest| rest.strip_suffix('}'))
        else {
            return raw.to_owned();
        };
        let (variable, default) = inner
            .split_once(":-")
            .or_else(|| inner.split_once(":?").map(|(variable, _)| (variable, "")))
            .unwrap_or((inner, ""));
        self.dotenv
            .get(variable)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binaries_run_with_exactly_the_compose_environment() {
    let compose = Compose::load();
    let scratch = Scratch::new();
    let storage_env = compose.environment("storage-service");
    let s3 = TestS3::start_with_credentials(
        scratch.join("minio"),
        None,
        &storage_env["STORAGE_ACCESS_KEY"],
        &storage_env["STORAGE_SECRET_KEY"],
    );
    let (auth_port, storage_port, gateway_port) = (free_port(), free_port(), free_port());
    let (auth_metrics_port, storage_metrics_port) = (free_port(), free_port());
    let s3_address = s3.service.addr.to_string();
    let renames = [
        (
            "auth-service:50051".to_owned(),
            format!("127.0.0.1:{auth_port}"),
        ),
        (
            "storage-service:50052".to_owned(),
            format!("127.0.0.1:{storage_port}"),
        ),
        ("minio:9000".to_owned(), s3_address.clone()),
        (
            "localhost:9000".to_owned(),
            format!("localhost:{}", s3.service.addr.port()),
        ),
        (
            "localhost:8000".to_owned(),
            format!("localhost:{gateway_port}"),
        ),
        ("0.0.0.0:50051".to_owned(), format!("127.0.0.1:{auth_port}")),
        (
            "0.0.0.0:50052".to_owned(),
            format!("127.0.0.1:{storage_port}"),
        ),
        (
            "0.0.0.0:8000".to_owned(),
            format!("127.0.0.1:{gateway_port}"),
        ),
        (
            "0.0.0.0:9101".to_owned(),
            format!("127.0.0.1:{auth_metrics_port}"),
        ),
        (
            "0.0.0.0:9102".to_owned(),
            format!("127.0.0.1:{storage_metrics_port}"),
        ),
    ];

    let mut children = Vec::new();
    for service in SERVICES {
        let binary = workspace_binary(service);
        let mut environment: BTreeMap<String, String> = compose
            .environment(service)
            .iter()
            .map(|(key, value)| (key.clone(), localize(value, &renames)))
            .collect();
        if environment.contains_key("DATA_DIR") {
            environment.insert(
                "DATA_DIR".into(),
                scratch.join(service).display().to_string(),
            );
        }
        children.push(ServiceProcess::start(&binary, &environment, scratch.path()).await);
    }

    let gateway =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{gateway_port}"))
            .unwrap()
            .connect_lazy();
    let mut auth = AuthServiceClient::new(gateway.clone());
    let credentials = ("compose@example.com", "a compose password");
    auth.register(RegisterRequest {
        email: credentials.0.into(),
        password: credentials.1.into(),
    })
    .await
    .unwrap();
    let tokens = auth
        .login(LoginRequest {
            email: credentials.0.into(),
            password: credentials.1.into(),
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
    let user = User {
        storage: StorageServiceClient::new(gateway),
        token: tokens.access_token,
        id: uuid::Uuid::parse_str(&me.into_inner().user.unwrap().id).unwrap(),
    };
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
    assert_eq!(url.port(), Some(s3.service.addr.port()));
    let fetched = reqwest::get(url).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert!(fetched.bytes().await.unwrap() == content);
    // Each service answers Prometheus where compose says it does, and counted the upload.
    for port in [auth_metrics_port, storage_metrics_port, gateway_port] {
        let scrape = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap();
        assert_eq!(scrape.status(), 200, "metrics on port {port}");
        let text = scrape.text().await.unwrap();
        assert!(text.contains("strongbox_grpc_calls_total{"), "{text}");
    }
    drop(children);
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
    let compose = Compose::load();
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
