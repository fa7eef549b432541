//! The `storage-service` binary as an operator meets it: `--help` documents every
//! setting without echoing secrets, and a store it cannot reach stops it at start with
//! a message that says which store.
//!
//! The variables are read from the `Config` declaration itself (`clap`'s command), so
//! a new setting is checked the day it is added and the list cannot drift.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use clap::CommandFactory;
use storage_service::Config;
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_storage-service");

/// A bound on any run of the binary: generous, because a loaded CI machine is slow, and
/// only there so a hang fails the test instead of stalling the suite.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Values that must never appear in anything the binary prints.
const SECRETS: [(&str, &str); 4] = [
    ("STORAGE_SECRET_KEY", "s3-secret-7f3a9c1e-never-print-me"),
    (
        "JWT_SECRET",
        "jwt-secret-5b2d8e4f-never-print-me-0123456789",
    ),
    ("DOWNLOAD_URL_SECRET", "link-secret-91c4a7d2-never-print-me"),
    (
        "STORAGE_DATABASE_URL",
        "postgres://strongbox:db-password-3e8b-never-print-me@db/storage",
    ),
];

/// Every environment variable the configuration declares, flattened groups included.
fn declared_env_vars() -> Vec<String> {
    Config::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

/// The binary with a clean environment (nothing inherited from the developer's shell)
/// and a scratch working directory (so no `.env` is picked up).
fn storage_service(dir: &Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `command` to completion; a run past [`RUN_LIMIT`] is killed and fails the test.
async fn run(mut command: Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the storage-service binary starts");
    // On timeout the future, and with it the child, is dropped: kill_on_drop kills it.
    tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("storage-service did not exit within {RUN_LIMIT:?}"))
        .expect("storage-service's output")
}

fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn help_lists_every_setting_and_no_secret_value() {
    let declared = declared_env_vars();
    // The settings deployments rely on: renaming or dropping one must be deliberate.
    for expected in [
        "STORAGE_LISTEN",
        "DATA_DIR",
        "STORAGE_DATABASE_URL",
        "STORAGE_DIR",
        "STORAGE_ENDPOINT",
        "STORAGE_ACCESS_KEY",
        "STORAGE_SECRET_KEY",
        "STORAGE_BUCKET",
        "STORAGE_REGION",
        "STORAGE_PUBLIC_ENDPOINT",
        "STORAGE_TIMEOUT_SECONDS",
        "AUTH_SERVICE_URL",
        "JWT_SECRET",
        "MAX_UPLOAD_BYTES",
        "ALLOWED_CONTENT_TYPES",
        "UPLOAD_PART_SIZE",
        "UPLOAD_PARTS_IN_FLIGHT",
        "MAX_CHUNK_BYTES",
        "UPLOAD_SESSION_TTL_SECONDS",
        "PUBLIC_BASE_URL",
        "DOWNLOAD_URL_SECRET",
    ] {
        assert!(
            declared.iter().any(|name| name == expected),
            "Config no longer declares {expected}: {declared:?}"
        );
    }

    let dir = tempfile::tempdir().expect("a temp dir");
    let mut command = storage_service(dir.path());
    command.arg("--help").envs(SECRETS);
    // A non-secret value set alongside: clap shows it, which proves the environment
    // reached the binary and that the secrets are hidden, not merely absent.
    command.env("STORAGE_ACCESS_KEY", "visible-access-key-42");
    let output = run(command).await;
    let help = printed(&output);
    assert!(output.status.success(), "--help failed: {help}");

    for name in &declared {
        assert!(
            help.contains(&format!("[env: {name}")),
            "--help does not document {name}:\n{help}"
        );
    }
    assert!(
        help.contains("[env: STORAGE_ACCESS_KEY=visible-access-key-42]"),
        "--help should show non-secret values from the environment:\n{help}"
    );
    for (name, value) in SECRETS {
        assert!(
            !help.contains(value),
            "--help printed the value of {name}:\n{help}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_s3_endpoint_stops_the_service_at_start_naming_endpoint_and_bucket() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // Port 1 on loopback: nothing listens there, so connections are refused at once.
    let endpoint = "http://127.0.0.1:1";
    let bucket = "strongbox-cli-unreachable";
    let mut command = storage_service(dir.path());
    command
        .envs(SECRETS)
        .env("STORAGE_LISTEN", "127.0.0.1:0")
        .env("DATA_DIR", dir.path().join("data"))
        .env("STORAGE_ENDPOINT", endpoint)
        .env("STORAGE_BUCKET", bucket)
        .env("STORAGE_ACCESS_KEY", "access")
        .env("STORAGE_TIMEOUT_SECONDS", "2")
        // Never contacted (JWT_SECRET is set); a dead address all the same.
        .env("AUTH_SERVICE_URL", "http://127.0.0.1:1");
    let output = run(command).await;
    let said = printed(&output);

    assert!(
        !output.status.success(),
        "storage-service must refuse to start without its store:\n{said}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error_line = stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no `error: ` line on stderr:\n{said}"));
    assert!(
        error_line.contains(endpoint),
        "the error should name the endpoint: {error_line}"
    );
    assert!(
        error_line.contains(bucket),
        "the error should name the bucket: {error_line}"
    );
    for (name, value) in SECRETS {
        assert!(!said.contains(value), "the output leaks {name}:\n{said}");
    }
    assert!(
        !said.contains("X-Amz-Signature"),
        "the output leaks a presigned URL:\n{said}"
    );
}

/// Runs storage-service on the local backend with `settings`, expecting it to refuse to
/// start, and returns what it printed.
async fn refused_with(dir: &Path, settings: &[(&str, &str)]) -> String {
    let mut command = storage_service(dir);
    command
        .env("STORAGE_LISTEN", "127.0.0.1:0")
        .env("DATA_DIR", dir.join("data"))
        .env("AUTH_SERVICE_URL", "http://127.0.0.1:1")
        .envs(settings.iter().copied());
    let output = run(command).await;
    let said = printed(&output);
    assert!(
        !output.status.success(),
        "storage-service started with {settings:?}:\n{said}"
    );
    said
}

#[tokio::test]
async fn empty_or_short_secrets_stop_the_service_naming_the_variable_not_the_value() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let good = "a-download-link-secret-of-32-bytes-or-more";
    for (variable, value) in [
        ("JWT_SECRET", ""),
        ("JWT_SECRET", "short-jwt-secret"),
        ("DOWNLOAD_URL_SECRET", ""),
        ("DOWNLOAD_URL_SECRET", "short"),
    ] {
        let other = if variable == "JWT_SECRET" {
            "DOWNLOAD_URL_SECRET"
        } else {
            "JWT_SECRET"
        };
        let said = refused_with(dir.path(), &[(variable, value), (other, good)]).await;
        assert!(
            said.contains(variable),
            "{variable}={value:?}: the refusal should name it:\n{said}"
        );
        if !value.is_empty() {
            assert!(
                !said.contains(value),
                "the refusal echoes {variable}:\n{said}"
            );
        }
    }
}

#[tokio::test]
async fn a_truncated_download_link_key_file_stops_the_service_naming_the_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let key = dir.path().join("data/download-links.key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::write(&key, "").unwrap();
    let said = refused_with(dir.path(), &[("JWT_SECRET", SECRETS[1].1)]).await;
    assert!(said.contains(&key.display().to_string()), "{said}");
    assert!(said.contains("empty or truncated"), "{said}");
}
