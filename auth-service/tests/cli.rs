//! The binary's command line: `--help` documents every setting with its variable.

use std::process::Command;

#[test]
fn help_lists_every_environment_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .arg("--help")
        .env("JWT_SECRET", "a-secret-that-must-never-be-printed-anywhere")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for variable in [
        "AUTH_LISTEN",
        "DATA_DIR",
        "DATABASE_URL",
        "JWT_PRIVATE_KEY_PATH",
        "JWT_SECRET",
        "ACCESS_TOKEN_EXPIRE_SECONDS",
        "REFRESH_TOKEN_EXPIRE_SECONDS",
        "BCRYPT_ROUNDS",
        "LOGIN_MAX_FAILURES",
        "LOGIN_FAILURE_WINDOW_SECONDS",
        "TOKEN_PURGE_INTERVAL_SECONDS",
    ] {
        assert!(
            help.contains(variable),
            "--help does not mention {variable}"
        );
    }
    assert!(
        !help.contains("a-secret-that-must-never-be-printed"),
        "--help printed JWT_SECRET"
    );
}

#[test]
fn bad_settings_fail_with_a_message_naming_them() {
    let output = Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .env("BCRYPT_ROUNDS", "99")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bcrypt-rounds") || stderr.contains("BCRYPT_ROUNDS"),
        "{stderr}"
    );
}

#[test]
fn a_short_jwt_secret_stops_the_service_at_start() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .env("DATA_DIR", data.path())
        .env("AUTH_LISTEN", "127.0.0.1:0")
        .env("JWT_SECRET", "short")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("JWT_SECRET must be at least 32 bytes"),
        "{stderr}"
    );
}
