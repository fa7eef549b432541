//! Logs as an operator ships them, from a real auth-service process writing to a pipe:
//! `LOG_FORMAT=json` gives one JSON object per line carrying the call's method, request
//! id and trace id (the caller's, continued even with no collector to export to); the default text has no terminal colour codes when it is not written to
//! a terminal; and neither ever holds the password of the call it logs.

use std::process::Stdio;
use std::time::Duration;

use strongbox_common::server::{REQUEST_ID_HEADER, check_serving};
use strongbox_proto::auth::v1::RegisterRequest;
use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_tests::Scratch;
use strongbox_tests::tools::workspace_binary;

const PASSWORD: &str = "a password that must never be logged";
/// The trace the test's caller is in (W3C `traceparent`); no collector is configured.
const CALLERS_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// Everything auth-service wrote to its stdout (a pipe) while it served one Register
/// with request id `request_id`, with `LOG_FORMAT` set to `format` if given.
async fn log_of_one_register(format: Option<&str>, request_id: &str) -> String {
    let scratch = Scratch::new();
    let listen = strongbox_tests::reserve_port(0)
        .local_addr()
        .expect("a free port");
    let mut command = tokio::process::Command::new(workspace_binary("auth-service"));
    command
        .env_clear()
        .env("AUTH_LISTEN", listen.to_string())
        .env("DATA_DIR", scratch.path())
        .env("BCRYPT_ROUNDS", "4")
        .env("RUST_LOG", "info")
        .current_dir(scratch.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(format) = format {
        command.env("LOG_FORMAT", format);
    }
    let mut child = command.spawn().expect("auth-service starts");
    let began = tokio::time::Instant::now();
    while let Err(unhealthy) = check_serving(listen).await {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "auth-service never became healthy: {unhealthy}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{listen}"))
        .expect("a URL")
        .connect()
        .await
        .expect("auth-service accepts connections");
    let mut request = tonic::Request::new(RegisterRequest {
        email: "logged@example.com".into(),
        password: PASSWORD.into(),
    });
    request
        .metadata_mut()
        .insert(REQUEST_ID_HEADER, request_id.parse().expect("ASCII"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{CALLERS_TRACE}-b7ad6b7169203331-01")
            .parse()
            .expect("ASCII"),
    );
    AuthServiceClient::new(channel)
        .register(request)
        .await
        .expect("Register succeeds");

    // The line is written before the response; give the pipe a moment, then stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.start_kill().expect("auth-service is running");
    let output = child
        .wait_with_output()
        .await
        .expect("auth-service is waited for");
    String::from_utf8(output.stdout).expect("logs are UTF-8")
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_calls_request_id() {
    let log = log_of_one_register(Some("json"), "log-test-json").await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("not one JSON object per line ({err}): {line}"))
        })
        .collect();
    assert!(
        lines
            .iter()
            .all(|line| line["level"].is_string() && line["timestamp"].is_string()),
        "{log}"
    );
    let registered = lines
        .iter()
        .find(|line| line["message"] == "registered")
        .unwrap_or_else(|| panic!("the Register call is logged: {log}"));
    assert_eq!(registered["span"]["request_id"], "log-test-json", "{log}");
    assert_eq!(registered["span"]["trace_id"], CALLERS_TRACE, "{log}");
    assert_eq!(
        registered["span"]["method"],
        "/auth.v1.AuthService/Register"
    );
    assert!(registered["user_id"].is_string(), "{registered}");
    assert!(!log.contains(PASSWORD), "the password is never logged");
}

#[tokio::test]
async fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let log = log_of_one_register(None, "log-test-text").await;
    assert!(
        log.lines()
            .any(|line| line.contains("request_id=log-test-text") && line.contains("registered")),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "no ANSI escape codes: {log:?}");
    assert!(!log.contains(PASSWORD), "the password is never logged");
}
