//! The `gateway` binary as an operator meets it: a shared secret too weak to keep
//! tokens unforgeable stops it at start, with a message that names the variable and
//! not the value.

use std::process::Command;

#[test]
fn an_empty_or_short_jwt_secret_stops_the_gateway_naming_it() {
    // Cargo's scratch directory for integration tests: no `.env` is picked up there.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    for value in ["", "short-gateway-secret"] {
        let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .env_clear()
            .current_dir(dir)
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("JWT_SECRET", value)
            .output()
            .unwrap();
        assert!(
            !output.status.success(),
            "JWT_SECRET={value:?} was accepted"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("JWT_SECRET"), "{stderr}");
        if !value.is_empty() {
            assert!(
                !stderr.contains(value),
                "the refusal echoes the secret: {stderr}"
            );
        }
    }
}
