//! strongbox-cli, black-box: the real binary, run as a subprocess the way a user runs
//! it, against the real system (auth-service, storage-service, gateway) on loopback.
//! Every run gets its own config directory; results are read from `--json` output, exit
//! codes, and the files the client keeps.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use strongbox_proto::storage::v1::GetUploadStatusRequest;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_tests::Scratch;
use strongbox_tests::auth::with_bearer;
use strongbox_tests::gateway::System;
use strongbox_tests::storage::{Backend, pseudo_random, sha256_hex};
use strongbox_tests::tools::workspace_binary;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use uuid::Uuid;

const PASSWORD: &str = "a long and correct password";
const MIB: usize = 1024 * 1024;

/// One user's terminal: a config directory, a server, and a password in the environment.
struct Terminal {
    server: String,
    config: Scratch,
    email: String,
}

impl Terminal {
    fn new(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            config: Scratch::new(),
            email: format!("cli-{}@example.com", Uuid::new_v4().simple()),
        }
    }

    /// Registers and logs in through the client.
    async fn logged_in(system: &System) -> Self {
        let terminal = Self::new(&system.url());
        terminal.json(&["register", &terminal.email]).await;
        terminal.json(&["login", &terminal.email]).await;
        terminal
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_on(&self.server, args)
    }

    /// Like [`Terminal::command`], against another server.
    fn command_on(&self, server: &str, args: &[&str]) -> Command {
        // Built (debug) on first use, like the other suites' binaries.
        let mut command = Command::new(workspace_binary("strongbox-cli"));
        command
            .arg("--server")
            .arg(server)
            .arg("--config-dir")
            .arg(self.config.path())
            .args(args)
            .env_remove("STRONGBOX_SERVER")
            .env_remove("STRONGBOX_CONFIG_DIR")
            .env("STRONGBOX_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .await
            .expect("strongbox-cli runs")
    }

    /// Runs with `--json`, expects success, and returns the parsed stdout.
    async fn json(&self, args: &[&str]) -> Value {
        let output = self.run(&with_json(args)).await;
        assert!(
            output.status.success(),
            "strongbox-cli {args:?} failed ({:?}): {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "strongbox-cli {args:?} printed no JSON ({err}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Runs with `--json`, expects exit code `code`, and returns the error from stderr.
    async fn fails(&self, args: &[&str], code: i32) -> Value {
        let output = self.run(&with_json(args)).await;
        assert_eq!(
            output.status.code(),
            Some(code),
            "strongbox-cli {args:?}: stdout {} stderr {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        let error: Value = serde_json::from_str(last)
            .unwrap_or_else(|err| panic!("stderr is not a JSON error ({err}): {stderr}"));
        assert_eq!(error["error"]["exit_code"], code, "{error}");
        error
    }

    fn credentials_file(&self) -> PathBuf {
        self.config.join("credentials.json")
    }

    fn credentials(&self) -> Value {
        let text = std::fs::read_to_string(self.credentials_file()).expect("credentials.json");
        serde_json::from_str(&text).expect("credentials.json is JSON")
    }

    fn set_credentials(&self, credentials: &Value) {
        let text = serde_json::to_string(credentials).expect("JSON");
        std::fs::write(self.credentials_file(), text).expect("credentials.json is written");
    }

    /// The sessions in uploads.json (none when the file is absent).
    fn pending_uploads(&self) -> Vec<Value> {
        match std::fs::read_to_string(self.config.join("uploads.json")) {
            Ok(text) => {
                serde_json::from_str::<Value>(&text).expect("uploads.json is JSON")["uploads"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            }
            Err(_) => Vec::new(),
        }
    }
}

fn with_json<'a>(args: &[&'a str]) -> Vec<&'a str> {
    std::iter::once("--json")
        .chain(args.iter().copied())
        .collect()
}

fn write_file(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("a folder");
    std::fs::write(path, content).expect("a test file");
}

fn str_of<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{field}` in {value}"))
}

/// The uploaded entry for `filename` in an `upload --json` report.
fn uploaded<'a>(report: &'a Value, filename: &str) -> &'a Value {
    report["uploaded"]
        .as_array()
        .expect("an uploaded list")
        .iter()
        .find(|file| file["filename"] == filename)
        .unwrap_or_else(|| panic!("{filename} is not in {report}"))
}

fn listed_filenames(listing: &Value) -> Vec<String> {
    let mut names: Vec<String> = listing
        .as_array()
        .expect("ls --json prints an array")
        .iter()
        .map(|file| str_of(file, "filename").to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_upload_list_download_delete_logout() {
    let system = System::start(Backend::Local).await;
    let terminal = Terminal::new(&system.url());

    let registered = terminal.json(&["register", &terminal.email]).await;
    assert_eq!(registered["email"], terminal.email);
    let logged_in = terminal.json(&["login", &terminal.email]).await;
    assert_eq!(logged_in["server"], system.url());

    // The session is kept for the user alone, and without the password.
    let credentials_file = terminal.credentials_file();
    let mode = std::fs::metadata(&credentials_file)
        .expect("credentials.json")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let stored = std::fs::read_to_string(&credentials_file).expect("credentials.json");
    assert!(!stored.contains(PASSWORD));
    let credentials = terminal.credentials();
    assert_eq!(credentials["server"], system.url());
    assert!(!str_of(&credentials, "refresh_token").is_empty());

    let me = terminal.json(&["whoami"]).await;
    assert_eq!(me["email"], terminal.email);
    assert!(!str_of(&me, "id").is_empty());

    // A folder: small files, a nested one, one large enough for a resumable session, and
    // a symbolic link, which is skipped.
    let work = Scratch::new();
    let album = work.join("album");
    let small = pseudo_random(300 * 1024, 1);
    let nested = b"deep inside\n".to_vec();
    let large = pseudo_random(9 * MIB + 123, 2);
    write_file(&album.join("notes.txt"), b"hello, strongbox\n");
    write_file(&album.join("small.bin"), &small);
    write_file(&album.join("nested/deeper/inner.txt"), &nested);
    write_file(&album.join("large.bin"), &large);
    std::os::unix::fs::symlink(album.join("small.bin"), album.join("link.bin")).expect("a link");

    let report = terminal
        .json(&["upload", album.to_str().expect("UTF-8")])
        .await;
    assert_eq!(
        report["uploaded"].as_array().map(Vec::len),
        Some(4),
        "{report}"
    );
    assert_eq!(report["failed"], json!([]));
    let skipped = report["skipped"].as_array().expect("a skipped list");
    assert_eq!(skipped.len(), 1);
    assert!(str_of(&skipped[0], "path").ends_with("link.bin"));
    let large_upload = uploaded(&report, "album/large.bin");
    assert_eq!(large_upload["method"], "resumable");
    assert_eq!(large_upload["sha256"], sha256_hex(&large));
    assert_eq!(large_upload["size"], large.len());
    let nested_upload = uploaded(&report, "album/nested/deeper/inner.txt");
    assert_eq!(nested_upload["method"], "stream");
    assert_eq!(nested_upload["sha256"], sha256_hex(&nested));
    assert_eq!(
        uploaded(&report, "album/notes.txt")["content_type"],
        "text/plain"
    );
    assert!(terminal.pending_uploads().is_empty());

    let listing = terminal.json(&["ls"]).await;
    assert_eq!(
        listed_filenames(&listing),
        [
            "album/large.bin",
            "album/nested/deeper/inner.txt",
            "album/notes.txt",
            "album/small.bin"
        ]
    );

    // Downloads land where -o says, byte for byte.
    let downloads = Scratch::new();
    let nested_key = str_of(nested_upload, "key");
    let saved_as = downloads.join("inner-copy.txt");
    let saved = terminal
        .json(&[
            "download",
            nested_key,
            "-o",
            saved_as.to_str().expect("UTF-8"),
        ])
        .await;
    assert_eq!(saved["sha256"], sha256_hex(&nested));
    assert_eq!(std::fs::read(&saved_as).expect("the download"), nested);
    // Into a folder, under the file's own name (its last path component).
    let large_key = str_of(large_upload, "key");
    let into_folder = downloads.path().to_str().expect("UTF-8");
    terminal
        .json(&["download", large_key, "-o", into_folder])
        .await;
    assert!(std::fs::read(downloads.join("large.bin")).expect("the download") == large);
    // An existing file is not replaced without --force, and nothing else is left behind.
    terminal
        .fails(&["download", large_key, "-o", into_folder], 1)
        .await;
    terminal
        .json(&["download", large_key, "-o", into_folder, "--force"])
        .await;
    assert_eq!(
        std::fs::read_dir(downloads.path())
            .expect("a folder")
            .count(),
        2
    );

    let small_key = str_of(uploaded(&report, "album/small.bin"), "key");
    assert_eq!(
        terminal.json(&["rm", small_key]).await["deleted"],
        small_key
    );
    let listing = terminal.json(&["ls"]).await;
    assert_eq!(listing.as_array().map(Vec::len), Some(3));
    assert!(!listed_filenames(&listing).contains(&"album/small.bin".to_owned()));
    terminal.fails(&["rm", small_key], 4).await;

    terminal.json(&["logout"]).await;
    assert!(!credentials_file.exists());
    terminal.fails(&["whoami"], 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_downloads_on_the_s3_backend_with_a_piped_password() {
    let system = System::start(Backend::S3).await;
    let terminal = Terminal::new(&system.url());
    terminal.json(&["register", &terminal.email]).await;

    // The password from a pipe, as a script would give it.
    let mut login = terminal.command(&["--json", "login", &terminal.email]);
    login
        .env_remove("STRONGBOX_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = login.spawn().expect("strongbox-cli starts");
    let mut stdin = child.stdin.take().expect("a stdin pipe");
    stdin
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .await
        .expect("the password is written");
    drop(stdin);
    let output = child.wait_with_output().await.expect("login ends");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let work = Scratch::new();
    let photo = pseudo_random(2 * MIB + 5, 3);
    let video = pseudo_random(12 * MIB + 7, 4);
    write_file(&work.join("photo.jpg"), &photo);
    write_file(&work.join("video.mp4"), &video);
    let report = terminal
        .json(&[
            "upload",
            work.join("photo.jpg").to_str().expect("UTF-8"),
            work.join("video.mp4").to_str().expect("UTF-8"),
        ])
        .await;
    assert_eq!(uploaded(&report, "photo.jpg")["content_type"], "image/jpeg");
    assert_eq!(uploaded(&report, "video.mp4")["method"], "resumable");

    for (filename, content) in [("photo.jpg", &photo), ("video.mp4", &video)] {
        let key = str_of(uploaded(&report, filename), "key");
        let target = work.join(&format!("copy-of-{filename}"));
        terminal
            .json(&["download", key, "-o", target.to_str().expect("UTF-8")])
            .await;
        assert!(
            std::fs::read(&target).expect("the download") == *content,
            "{filename}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_access_token_is_refreshed_and_the_rotated_pair_saved() {
    let system = System::start(Backend::Local).await;
    let terminal = Terminal::logged_in(&system).await;

    // An access token about to expire is refreshed before the call.
    let mut credentials = terminal.credentials();
    let before = credentials.clone();
    credentials["access_token_expires_at"] = json!(0);
    terminal.set_credentials(&credentials);
    assert_eq!(terminal.json(&["whoami"]).await["email"], terminal.email);
    let refreshed = terminal.credentials();
    assert_ne!(refreshed["refresh_token"], before["refresh_token"]);
    assert_ne!(refreshed["access_token"], before["access_token"]);
    assert!(refreshed["access_token_expires_at"].as_u64() > Some(0));
    let mode = std::fs::metadata(terminal.credentials_file())
        .expect("credentials")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // An access token the server refuses, though not expired by the clock, is refreshed
    // once and the call retried.
    let mut credentials = terminal.credentials();
    credentials["access_token"] = json!("not-a-valid-token");
    terminal.set_credentials(&credentials);
    assert_eq!(terminal.json(&["ls"]).await, json!([]));
    let retried = terminal.credentials();
    assert_ne!(retried["refresh_token"], refreshed["refresh_token"]);
    assert_ne!(retried["access_token"], json!("not-a-valid-token"));

    // A refresh token that was already spent cannot be refreshed: log in again.
    let mut credentials = terminal.credentials();
    credentials["refresh_token"] = before["refresh_token"].clone();
    credentials["access_token_expires_at"] = json!(0);
    terminal.set_credentials(&credentials);
    let error = terminal.fails(&["whoami"], 3).await;
    assert!(
        str_of(&error["error"], "message").contains("log in again"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_large_upload_resumes_where_it_stopped() {
    let system = System::start(Backend::Local).await;
    let terminal = Terminal::logged_in(&system).await;
    let work = Scratch::new();
    let content = pseudo_random(64 * MIB + 11, 5);
    let path = work.join("dataset.bin");
    write_file(&path, &content);
    let path = path.to_str().expect("UTF-8");

    // Start the upload, and kill the client once the server has acknowledged some chunks.
    let mut child = terminal
        .command(&["--json", "upload", path])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strongbox-cli starts");
    let upload_id = wait_for_pending_session(&terminal, &mut child).await;
    let token = str_of(&terminal.credentials(), "access_token").to_owned();
    let mut storage = StorageServiceClient::new(system.gateway.channel());
    let mut offset = 0;
    for _ in 0..3000 {
        offset = upload_offset(&mut storage, &upload_id, &token).await;
        if offset >= 2 * MIB as u64 {
            break;
        }
        assert!(
            child.try_wait().expect("a child").is_none(),
            "the upload ended by itself"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.start_kill().expect("the client is killed");
    child.wait().await.expect("the client exits");
    let interrupted_at = upload_offset(&mut storage, &upload_id, &token).await;
    assert!(
        offset > 0 && interrupted_at >= offset,
        "{offset} then {interrupted_at}"
    );
    assert!(
        interrupted_at < content.len() as u64,
        "the upload finished before the kill"
    );
    assert_eq!(terminal.pending_uploads().len(), 1);

    // The same command again continues the same session.
    let report = terminal.json(&["upload", path]).await;
    let resumed = uploaded(&report, "dataset.bin");
    assert_eq!(resumed["method"], "resumable");
    let resumed_from = resumed["resumed_from"].as_u64().expect("resumed_from");
    assert!(
        resumed_from >= interrupted_at,
        "{resumed_from} < {interrupted_at}"
    );
    assert_eq!(resumed["sha256"], sha256_hex(&content));
    assert!(terminal.pending_uploads().is_empty());

    let copy = work.join("copy.bin");
    terminal
        .json(&[
            "download",
            str_of(resumed, "key"),
            "-o",
            copy.to_str().expect("UTF-8"),
        ])
        .await;
    assert!(std::fs::read(&copy).expect("the download") == content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_server_no_longer_has_starts_over() {
    let system = System::start(Backend::Local).await;
    let terminal = Terminal::logged_in(&system).await;
    let work = Scratch::new();
    let content = pseudo_random(9 * MIB, 7);
    let path = work.join("archive.tar");
    write_file(&path, &content);

    // An entry for exactly this file, naming a session the server does not know (as
    // after it expired and was swept).
    let metadata = std::fs::metadata(&path).expect("the file");
    let modified_ns = metadata
        .modified()
        .expect("a modification time")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64;
    let pending = json!({ "uploads": [{
        "server": system.url(),
        "path": std::fs::canonicalize(&path).expect("an absolute path"),
        "size": metadata.len(),
        "modified_ns": modified_ns,
        "upload_id": Uuid::new_v4().to_string(),
        "sha256": sha256_hex(b"something else"),
        "chunk_size": MIB,
    }]});
    std::fs::write(terminal.config.join("uploads.json"), pending.to_string())
        .expect("uploads.json is written");

    let report = terminal
        .json(&["upload", path.to_str().expect("UTF-8")])
        .await;
    let stored = uploaded(&report, "archive.tar");
    assert_eq!(stored["method"], "resumable");
    assert_eq!(stored["resumed_from"], Value::Null);
    assert_eq!(stored["sha256"], sha256_hex(&content));
    assert!(terminal.pending_uploads().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_what_is_stored_and_drops_after_a_delete() {
    let system = System::start(Backend::Local).await;
    let terminal = Terminal::logged_in(&system).await;
    let config = &system.stack.config;

    // Every field, under its stable name; no quota is configured, so both are null.
    assert_eq!(
        terminal.json(&["usage"]).await,
        json!({
            "bytes_used": 0,
            "files": 0,
            "bytes_reserved": 0,
            "open_sessions": 0,
            "uploads_in_progress": 0,
            "quota_bytes": null,
            "max_files": null,
            "max_open_sessions": config.max_open_sessions_per_user,
            "max_concurrent_uploads": config.max_concurrent_uploads_per_user,
        })
    );

    // One file streamed, one through a resumable session.
    let work = Scratch::new();
    let small = pseudo_random(300 * 1024, 8);
    let large = pseudo_random(9 * MIB + 5, 9);
    write_file(&work.join("small.bin"), &small);
    write_file(&work.join("large.bin"), &large);
    let report = terminal
        .json(&[
            "upload",
            work.join("small.bin").to_str().expect("UTF-8"),
            work.join("large.bin").to_str().expect("UTF-8"),
        ])
        .await;
    assert_eq!(uploaded(&report, "large.bin")["method"], "resumable");
    let usage = settled_usage(&terminal).await;
    assert_eq!(usage["bytes_used"], small.len() + large.len(), "{usage}");
    assert_eq!(usage["files"], 2, "{usage}");
    assert_eq!(usage["open_sessions"], 0, "{usage}");

    // A deleted file stops counting at once.
    terminal
        .json(&["rm", str_of(uploaded(&report, "small.bin"), "key")])
        .await;
    let usage = terminal.json(&["usage"]).await;
    assert_eq!(usage["bytes_used"], large.len(), "{usage}");
    assert_eq!(usage["files"], 1, "{usage}");

    assert_eq!(
        stdout_of(&terminal, &["usage"]).await,
        "9.0 MiB used, 1 file (no quota)\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_shows_the_quota_and_an_upload_beyond_it_is_refused() {
    const QUOTA: u64 = MIB as u64;
    let system = System::start_configured(
        Backend::Local,
        |config| {
            config.user_quota_bytes = Some(QUOTA);
            config.user_max_files = Some(10);
        },
        |_| {},
    )
    .await;
    let terminal = Terminal::logged_in(&system).await;
    let work = Scratch::new();
    let quarter = pseudo_random(MIB / 4, 10);
    write_file(&work.join("quarter.bin"), &quarter);
    write_file(&work.join("too-big.bin"), &pseudo_random(MIB, 11));
    terminal
        .json(&["upload", work.join("quarter.bin").to_str().expect("UTF-8")])
        .await;

    let usage = settled_usage(&terminal).await;
    assert_eq!(usage["quota_bytes"], QUOTA, "{usage}");
    assert_eq!(usage["max_files"], 10, "{usage}");
    assert_eq!(usage["bytes_used"], quarter.len(), "{usage}");
    assert_eq!(usage["files"], 1, "{usage}");
    assert_eq!(
        stdout_of(&terminal, &["usage"]).await,
        "256.0 KiB of 1.0 MiB used (25.0%), 1 file of 10\n"
    );

    // A file that does not fit in what is left is refused, and nothing of it stays counted.
    let error = terminal
        .fails(
            &["upload", work.join("too-big.bin").to_str().expect("UTF-8")],
            1,
        )
        .await;
    assert_eq!(error["error"]["grpc_code"], "ResourceExhausted", "{error}");
    assert!(
        str_of(&error["error"], "message").contains("quota"),
        "{error}"
    );
    let usage = settled_usage(&terminal).await;
    assert_eq!(usage["bytes_used"], quarter.len(), "{usage}");
    assert_eq!(usage["files"], 1, "{usage}");
}

/// `usage --json` once no upload is in progress any more: an upload's reservation is
/// given back as its call ends, which may be a moment after the client has its answer.
/// Fails if something stays reserved for longer than 5 s.
async fn settled_usage(terminal: &Terminal) -> Value {
    let mut usage = terminal.json(&["usage"]).await;
    for _ in 0..50 {
        if usage["uploads_in_progress"] == 0 && usage["bytes_reserved"] == 0 {
            return usage;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        usage = terminal.json(&["usage"]).await;
    }
    panic!("an upload stays in progress: {usage}");
}

/// What a successful command prints for people.
async fn stdout_of(terminal: &Terminal, args: &[&str]) -> String {
    let output = terminal.run(args).await;
    assert!(
        output.status.success(),
        "strongbox-cli {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// Waits until the running client has recorded its session in uploads.json.
async fn wait_for_pending_session(terminal: &Terminal, child: &mut Child) -> String {
    for _ in 0..3000 {
        if let Some(entry) = terminal.pending_uploads().first() {
            return str_of(entry, "upload_id").to_owned();
        }
        assert!(
            child.try_wait().expect("a child").is_none(),
            "the upload ended by itself"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no upload session was recorded within 30 s");
}

async fn upload_offset(
    storage: &mut StorageServiceClient<tonic::transport::Channel>,
    upload_id: &str,
    token: &str,
) -> u64 {
    let request = GetUploadStatusRequest {
        upload_id: upload_id.to_owned(),
    };
    storage
        .get_upload_status(with_bearer(request, token))
        .await
        .expect("the session exists")
        .into_inner()
        .offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_download_is_refused_and_nothing_is_saved() {
    let system = System::start(Backend::Local).await;
    let terminal = Terminal::logged_in(&system).await;
    let work = Scratch::new();
    write_file(&work.join("ledger.csv"), &pseudo_random(64 * 1024, 6));
    let report = terminal
        .json(&["upload", work.join("ledger.csv").to_str().expect("UTF-8")])
        .await;
    let key = str_of(uploaded(&report, "ledger.csv"), "key");

    // Flip one byte of the stored object behind the server's back.
    let objects = system.stack.stored_files();
    assert_eq!(objects.len(), 1, "{objects:?}");
    let mut stored = std::fs::read(&objects[0]).expect("the object");
    stored[100] ^= 0xff;
    std::fs::write(&objects[0], stored).expect("the object is rewritten");

    let downloads = Scratch::new();
    let target = downloads.join("ledger.csv");
    let error = terminal
        .fails(&["download", key, "-o", target.to_str().expect("UTF-8")], 6)
        .await;
    assert!(
        str_of(&error["error"], "message").contains("SHA-256"),
        "{error}"
    );
    assert_eq!(
        std::fs::read_dir(downloads.path())
            .expect("a folder")
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_have_distinct_exit_codes() {
    let mut system = System::start(Backend::Local).await;

    // Usage errors are clap's: 2.
    let nobody = Terminal::new(&system.url());
    assert_eq!(nobody.run(&[]).await.status.code(), Some(2));
    assert_eq!(nobody.run(&["download"]).await.status.code(), Some(2));
    assert_eq!(
        nobody
            .run(&["--server", "not a url", "ls"])
            .await
            .status
            .code(),
        Some(2)
    );

    // Not logged in: 3, before anything is read or sent.
    for args in [
        vec!["whoami"],
        vec!["ls"],
        vec!["logout"],
        vec!["rm", "some-key"],
        vec!["download", "some-key"],
        vec!["upload", "/nonexistent"],
        vec!["usage"],
    ] {
        nobody.fails(&args, 3).await;
    }

    // A missing key: 4, with the server's message.
    let terminal = Terminal::logged_in(&system).await;
    let error = terminal.fails(&["download", "no-such-key"], 4).await;
    assert_eq!(error["error"]["grpc_code"], "NotFound");
    assert!(!str_of(&error["error"], "message").is_empty());

    // Logged in to another server than the one asked for: 3.
    let elsewhere = terminal
        .command_on("http://127.0.0.1:9", &["ls"])
        .output()
        .await
        .expect("strongbox-cli runs");
    assert_eq!(elsewhere.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&elsewhere.stderr).contains("logged in to"));

    // Wrong password: the server's UNAUTHENTICATED, 3.
    let wrong = terminal
        .command(&["--json", "login", &terminal.email])
        .env("STRONGBOX_PASSWORD", "not the password")
        .output()
        .await
        .expect("strongbox-cli runs");
    assert_eq!(wrong.status.code(), Some(3));

    // A server that is not there: 5.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.local_addr().expect("an address").port()
    };
    let nowhere = Terminal::new(&format!("http://127.0.0.1:{closed_port}"));
    let error = nowhere.fails(&["register", &nowhere.email], 5).await;
    assert!(
        str_of(&error["error"], "message").contains("cannot reach"),
        "{error}"
    );

    // The gateway going down under a logged-in user: 5, and the session survives it.
    system.gateway.stop().await.expect("the gateway stops");
    terminal.fails(&["ls"], 5).await;
    assert!(terminal.credentials_file().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_where_it_stopped() {
    let system = System::start(Backend::Local).await;
    let terminal = Terminal::logged_in(&system).await;
    let work = Scratch::new();
    let content = pseudo_random(64 * MIB + 7, 12);
    write_file(&work.join("video.mkv"), &content);
    let report = terminal
        .json(&["upload", work.join("video.mkv").to_str().expect("UTF-8")])
        .await;
    let key = str_of(uploaded(&report, "video.mkv"), "key");
    let downloads = Scratch::new();
    let target = downloads.join("video.mkv");
    let target_arg = target.to_str().expect("UTF-8");

    // --resume insists on a partial download to continue; there is none yet.
    let error = terminal
        .fails(&["download", key, "-o", target_arg, "--resume"], 1)
        .await;
    assert!(
        str_of(&error["error"], "message").contains("no partial download"),
        "{error}"
    );
    assert!(names_in(downloads.path()).is_empty());

    // Killed outright mid-way: what arrived stays, under a hidden name.
    let (partial, kept, _) = interrupted_download(&terminal, key, &target, "KILL").await;
    assert!(!target.exists(), "nothing carries the real name yet");
    assert!(
        std::fs::read(&partial).expect("the partial") == content[..kept as usize],
        "the partial holds the file's first {kept} bytes"
    );

    // The same command again asks only for the rest.
    let resumed = terminal.json(&["download", key, "-o", target_arg]).await;
    assert_eq!(resumed["resumed_from"], kept, "{resumed}");
    assert_eq!(resumed["size"], content.len(), "{resumed}");
    assert_eq!(resumed["sha256"], sha256_hex(&content), "{resumed}");
    assert!(std::fs::read(&target).expect("the download") == content);
    assert_eq!(
        names_in(downloads.path()),
        ["video.mkv"],
        "no partial is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_download_corrupted_on_disk_fails_the_check_and_leaves_nothing() {
    let system = System::start(Backend::Local).await;
    let terminal = Terminal::logged_in(&system).await;
    let work = Scratch::new();
    let content = pseudo_random(64 * MIB + 3, 13);
    write_file(&work.join("backup.tar"), &content);
    let report = terminal
        .json(&["upload", work.join("backup.tar").to_str().expect("UTF-8")])
        .await;
    let key = str_of(uploaded(&report, "backup.tar"), "key");
    let downloads = Scratch::new();
    let target = downloads.join("backup.tar");
    let target_arg = target.to_str().expect("UTF-8");

    // Ctrl-C mid-way: the client exits 130 and keeps what arrived.
    let (partial, kept, status) = interrupted_download(&terminal, key, &target, "INT").await;
    assert_eq!(status.code(), Some(130));
    let mut on_disk = std::fs::read(&partial).expect("the partial");
    on_disk[kept as usize / 2] ^= 0xff;
    std::fs::write(&partial, on_disk).expect("the partial is rewritten");

    // Continuing it hashes the bytes on disk too: the whole file's SHA-256 is wrong.
    let error = terminal
        .fails(&["download", key, "-o", target_arg], 6)
        .await;
    assert!(
        str_of(&error["error"], "message").contains("SHA-256"),
        "{error}"
    );
    assert!(
        names_in(downloads.path()).is_empty(),
        "neither the file nor the partial is left: {:?}",
        names_in(downloads.path())
    );

    // The next run starts afresh.
    let fresh = terminal.json(&["download", key, "-o", target_arg]).await;
    assert_eq!(fresh["resumed_from"], Value::Null, "{fresh}");
    assert!(std::fs::read(&target).expect("the download") == content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_keys_download_into_one_folder() {
    let system = System::start(Backend::Local).await;
    let terminal = Terminal::logged_in(&system).await;
    let work = Scratch::new();
    let set = work.join("set");
    let (first, second, photo) = (
        b"notes of the first trip\n".to_vec(),
        b"notes of the second trip\n".to_vec(),
        pseudo_random(300 * 1024, 14),
    );
    write_file(&set.join("first/notes.txt"), &first);
    write_file(&set.join("second/notes.txt"), &second);
    write_file(&set.join("photo.jpg"), &photo);
    let report = terminal
        .json(&["upload", set.to_str().expect("UTF-8")])
        .await;
    let key_of = |filename| str_of(uploaded(&report, filename), "key").to_owned();
    let (first_key, second_key, photo_key) = (
        key_of("set/first/notes.txt"),
        key_of("set/second/notes.txt"),
        key_of("set/photo.jpg"),
    );

    // Into a folder that does not exist yet; a key given twice counts once, and a
    // missing key fails alone.
    let downloads = Scratch::new();
    let folder = downloads.join("trip");
    let output = terminal
        .run(&[
            "--json",
            "download",
            &first_key,
            &second_key,
            &photo_key,
            "no-such-key",
            &first_key,
            "-o",
            folder.to_str().expect("UTF-8"),
        ])
        .await;
    assert_eq!(
        output.status.code(),
        Some(4),
        "the one failure's code: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(
        report["downloaded"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    let failed = report["failed"].as_array().expect("a failed list");
    assert_eq!(failed.len(), 1, "{report}");
    assert_eq!(failed[0]["key"], "no-such-key");
    assert_eq!(failed[0]["error"]["grpc_code"], "NotFound");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("1 of 4 files could not be downloaded"),
        "{stderr}"
    );

    // Both notes.txt are kept, each under its key's own name.
    let key_name = |key: &str| key.rsplit('/').next().expect("a name").to_owned();
    let mut expected = vec![
        key_name(&first_key),
        key_name(&second_key),
        "photo.jpg".to_owned(),
    ];
    expected.sort();
    assert_eq!(names_in(&folder), expected);
    assert_eq!(
        std::fs::read(folder.join(key_name(&first_key))).expect("first"),
        first
    );
    assert_eq!(
        std::fs::read(folder.join(key_name(&second_key))).expect("second"),
        second
    );
    assert!(std::fs::read(folder.join("photo.jpg")).expect("the photo") == photo);
    for saved in report["downloaded"].as_array().expect("a list") {
        let path = PathBuf::from(str_of(saved, "path"));
        let bytes = std::fs::read(&path).expect("a saved file");
        assert_eq!(saved["sha256"], sha256_hex(&bytes), "{saved}");
    }

    // With several keys, -o must be a folder.
    let error = terminal
        .fails(
            &[
                "download",
                &first_key,
                &photo_key,
                "-o",
                folder.join("photo.jpg").to_str().expect("UTF-8"),
            ],
            1,
        )
        .await;
    assert!(
        str_of(&error["error"], "message").contains("not a folder"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_long_shows_each_files_sha256() {
    let system = System::start(Backend::Local).await;
    let terminal = Terminal::logged_in(&system).await;
    let work = Scratch::new();
    let (notes, photo) = (b"remember the milk\n".to_vec(), pseudo_random(5000, 15));
    write_file(&work.join("notes.txt"), &notes);
    write_file(&work.join("photo.jpg"), &photo);
    terminal
        .json(&[
            "upload",
            work.join("notes.txt").to_str().expect("UTF-8"),
            work.join("photo.jpg").to_str().expect("UTF-8"),
        ])
        .await;

    let long = stdout_of(&terminal, &["ls", "--long"]).await;
    for (name, content) in [("notes.txt", &notes), ("photo.jpg", &photo)] {
        let line = long
            .lines()
            .find(|line| line.ends_with(name))
            .unwrap_or_else(|| panic!("{name} is not listed: {long}"));
        assert!(line.contains(&sha256_hex(content)), "{line}");
        assert!(
            line.split_whitespace()
                .any(|word| word == content.len().to_string()),
            "the exact size: {line}"
        );
    }
    let short = stdout_of(&terminal, &["ls"]).await;
    assert!(!short.contains(&sha256_hex(&notes)), "{short}");

    // Scripts get the same from --json, with or without --long.
    let listing = terminal.json(&["ls", "--long"]).await;
    let hashes: Vec<&str> = listing
        .as_array()
        .expect("an array")
        .iter()
        .map(|file| str_of(file, "sha256"))
        .collect();
    assert!(hashes.contains(&sha256_hex(&notes).as_str()), "{listing}");
}

/// The names in `folder`, hidden ones included, sorted.
fn names_in(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .expect("a folder")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Starts `download KEY -o TARGET` and stops the client with `signal` (`KILL`, or
/// `INT` as Ctrl-C sends it) once its partial file next to the target holds 1 MiB.
/// Returns the partial, the bytes it kept, and how the client exited.
async fn interrupted_download(
    terminal: &Terminal,
    key: &str,
    target: &Path,
    signal: &str,
) -> (PathBuf, u64, std::process::ExitStatus) {
    let folder = target.parent().expect("a folder");
    let mut child = terminal
        .command(&[
            "--json",
            "download",
            key,
            "-o",
            target.to_str().expect("UTF-8"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strongbox-cli starts");
    let mut partial = None;
    for _ in 0..10_000 {
        let growing = names_in(folder)
            .into_iter()
            .map(|name| folder.join(name))
            .find(|path| path.to_string_lossy().ends_with(".part"))
            .filter(|path| std::fs::metadata(path).is_ok_and(|meta| meta.len() >= MIB as u64));
        if growing.is_some() {
            partial = growing;
            break;
        }
        assert!(
            child.try_wait().expect("a child").is_none(),
            "the download ended by itself"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let partial = partial.expect("the partial download grew to 1 MiB within 20 s");
    let pid = child.id().expect("a running client").to_string();
    let signalled = Command::new("kill")
        .args([format!("-{signal}"), pid])
        .status()
        .await
        .expect("kill runs");
    assert!(signalled.success(), "the client was signalled");
    let status = child.wait().await.expect("the client exits");
    let kept = std::fs::metadata(&partial)
        .expect("the partial is kept")
        .len();
    let size = std::fs::metadata(target).map(|meta| meta.len()).ok();
    assert!(
        size.is_none(),
        "the download finished before it was stopped"
    );
    assert!(kept >= MIB as u64, "{kept} bytes kept");
    (partial, kept, status)
}
