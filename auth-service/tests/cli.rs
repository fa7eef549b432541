//! The binary's command line: `--help` documents every setting with its variable.

use std::process::Command;

#[test]
fn help_lists_every_environment_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .arg("--help")
        .env("JWT_SECRET", "a-secret-that-must-never-be-printed-anywhere")
        .env(
            "JWT_PRIVATE_KEY",
            "a-private-key-that-must-never-be-printed",
        )
        .env(
            "JWT_PUBLISHED_KEYS",
            "published-keys-that-must-never-be-printed",
        )
        .env(
            "REFRESH_TOKEN_KEY",
            "a-refresh-key-that-must-never-be-printed",
        )
        .env(
            "DATABASE_URL",
            "postgres://strongbox:a-database-password-never-printed@db/auth",
        )
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
        "JWT_PRIVATE_KEY",
        "JWT_PUBLISHED_KEYS",
        "REFRESH_TOKEN_KEY",
        "ACCESS_TOKEN_EXPIRE_SECONDS",
        "REFRESH_TOKEN_EXPIRE_SECONDS",
        "BCRYPT_ROUNDS",
        "LOGIN_MAX_FAILURES",
        "LOGIN_FAILURE_WINDOW_SECONDS",
        "TOKEN_PURGE_INTERVAL_SECONDS",
        "JWT_KEY_ACTIVATION_DELAY_SECONDS",
        "rotate-key",
    ] {
        assert!(
            help.contains(variable),
            "--help does not mention {variable}"
        );
    }
    assert!(
        !help.contains("must-never-be-printed"),
        "--help printed JWT_SECRET, JWT_PRIVATE_KEY, JWT_PUBLISHED_KEYS or REFRESH_TOKEN_KEY"
    );
    assert!(
        !help.contains("a-database-password-never-printed"),
        "--help printed DATABASE_URL, password and all"
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
fn an_empty_or_short_jwt_secret_stops_the_service_at_start_naming_it() {
    let data = tempfile::tempdir().unwrap();
    for value in ["", "short-but-secret-value"] {
        let output = Command::new(env!("CARGO_BIN_EXE_auth-service"))
            .env("DATA_DIR", data.path())
            .env("AUTH_LISTEN", "127.0.0.1:0")
            .env("JWT_SECRET", value)
            .output()
            .unwrap();
        assert!(
            !output.status.success(),
            "JWT_SECRET={value:?} was accepted"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("JWT_SECRET"), "{stderr}");
        assert!(
            stderr.contains("at least 32") || stderr.contains("empty"),
            "{stderr}"
        );
        if !value.is_empty() {
            assert!(
                !stderr.contains(value),
                "the refusal echoes the secret: {stderr}"
            );
        }
    }
}

#[test]
fn a_truncated_signing_key_file_stops_the_service_naming_the_file() {
    let data = tempfile::tempdir().unwrap();
    let key = data.path().join("jwt-ed25519.pem");
    std::fs::write(&key, "").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .env_remove("JWT_SECRET")
        .env_remove("JWT_PRIVATE_KEY_PATH")
        .env("DATA_DIR", data.path())
        .env("AUTH_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&key.display().to_string()), "{stderr}");
    assert!(stderr.contains("empty or truncated"), "{stderr}");
}

#[test]
fn rotate_key_refuses_in_shared_secret_mode() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .arg("rotate-key")
        .env("DATA_DIR", data.path())
        .env("JWT_SECRET", "an-hs256-secret-of-at-least-32-bytes!")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("JWT_SECRET is set"), "{stderr}");
}

#[test]
fn rotate_key_refuses_when_the_key_comes_from_the_environment() {
    let data = tempfile::tempdir().unwrap();
    let key = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----";
    let output = Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .arg("rotate-key")
        .env("DATA_DIR", data.path())
        .env("JWT_PRIVATE_KEY", key)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("JWT_PUBLISHED_KEYS"), "{stderr}");
    assert!(
        !stderr.contains("MC4CAQAw"),
        "the key is never printed: {stderr}"
    );
}
