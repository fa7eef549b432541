//! External tools the suites drive (grpcurl). A missing tool fails the test with a
//! message saying how to get it: nothing is silently skipped.

use std::path::PathBuf;
use std::process::Output;

use tokio::process::Command;

/// Finds a tool: `$<NAME>` (upper-case) if set, else the repository's `.tools/bin`,
/// else `PATH`.
pub fn find(name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(name.to_uppercase()) {
        return PathBuf::from(path);
    }
    let repo_tools = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/bin")
        .join(name);
    if repo_tools.exists() {
        return repo_tools;
    }
    if let Some(found) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
    {
        return found;
    }
    panic!("`{name}` is not installed; run ./scripts/test.sh, which installs it into .tools/");
}

/// Runs grpcurl against a plaintext server with `args`, returning its output.
pub async fn grpcurl(args: &[&str]) -> Output {
    Command::new(find("grpcurl"))
        .arg("-plaintext")
        .args(args)
        .output()
        .await
        .expect("grpcurl runs")
}

/// Like [`grpcurl`], but fails the test unless grpcurl succeeds; returns its stdout.
pub async fn grpcurl_ok(args: &[&str]) -> String {
    let output = grpcurl(args).await;
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// The path of a workspace binary in this build's profile, built on first use. The
/// suites start the real binaries where a test is about the binary itself (its
/// environment, its subcommands, its memory).
pub fn workspace_binary(name: &str) -> PathBuf {
    crate::process::workspace_binary_in(crate::process::Profile::current(), name)
}
