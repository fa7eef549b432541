#!/usr/bin/env bash
# The one command that runs every check: installs the test tools, then formatting,
# lints (buf, clippy), and every test suite over real sockets.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-tools.sh
export PATH="$PWD/.tools/bin:$PATH"

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== buf lint"
(cd proto && buf lint)
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --profile ci
else
    cargo test --workspace
fi
