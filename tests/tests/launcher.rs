//! The all-in-one launcher (`strongbox`, the README's one command), run as a process:
//! it prints the page's address only once every service behind it answers, so the
//! first call a person (or a script) makes after reading the line succeeds; and a part
//! that cannot start ends the launch with that part's error, without ever saying it is
//! running.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::auth::v1::{LoginRequest, RegisterRequest};
use strongbox_tests::Scratch;
use strongbox_tests::tools::workspace_binary;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const RUNNING: &str = "Strongbox is running: open ";
/// A debug build starting three services with fresh databases and keys.
const START: Duration = Duration::from_secs(120);

/// The launcher on free ports with `data_dir`, run in `dir` (so no `.env` of the
/// developer's is read), its output captured.
fn launcher(dir: &Path, data_dir: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(workspace_binary("strongbox"));
    command
        .env_clear()
        .env("DATA_DIR", data_dir)
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("AUTH_LISTEN", "127.0.0.1:0")
        .env("STORAGE_LISTEN", "127.0.0.1:0")
        .env("BCRYPT_ROUNDS", "4")
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn the_address_is_printed_once_the_first_call_through_it_succeeds() {
    let scratch = Scratch::new();
    let mut child = launcher(scratch.path(), &scratch.join("data"))
        .spawn()
        .expect("the launcher starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(START, async {
        while let Some(line) = lines.next_line().await.expect("stdout reads") {
            if line.starts_with(RUNNING) {
                return line;
            }
        }
        panic!("the launcher ended without saying it runs");
    })
    .await
    .expect("the launcher says it runs");
    let url = line[RUNNING.len()..]
        .split_whitespace()
        .next()
        .expect("an address")
        .trim_end_matches('/')
        .replace("localhost", "127.0.0.1");

    // No retry: the line is the promise that the whole path answers now.
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("a URL")
        .connect()
        .await
        .expect("the gateway accepts connections");
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("the gateway answers health")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    let mut auth = AuthServiceClient::new(channel);
    let (email, password) = ("first@example.com", "a long enough password");
    auth.register(RegisterRequest {
        email: email.into(),
        password: password.into(),
    })
    .await
    .expect("the first Register succeeds");
    auth.login(LoginRequest {
        email: email.into(),
        password: password.into(),
    })
    .await
    .expect("and the first Login");

    let pid = child.id().expect("still running").to_string();
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(interrupted.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("Ctrl-C stops it")
        .expect("the launcher is waited for");
    assert!(exit.success(), "Ctrl-C is a clean stop: {exit}");
}

#[tokio::test]
async fn a_part_that_cannot_start_ends_the_launch_before_any_running_line() {
    let scratch = Scratch::new();
    // A data directory that is a file: no service can keep its database or objects.
    let not_a_directory = scratch.join("data");
    std::fs::write(&not_a_directory, b"not a directory").expect("a file");
    let child = launcher(scratch.path(), &not_a_directory)
        .spawn()
        .expect("the launcher starts");
    let output = tokio::time::timeout(START, child.wait_with_output())
        .await
        .expect("the launcher gives up")
        .expect("the launcher is waited for");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains(RUNNING), "it never says it runs: {stdout}");
    assert!(
        stderr.contains("error:") && stderr.contains("data"),
        "the error names what failed: {stderr}"
    );
}
