#!/usr/bin/env bash
# The one command that runs every check: installs the test tools, then formatting,
# lints (buf, clippy, tsc), checks the committed web bundle is current, runs every Rust
# suite over real sockets (on SQLite and on a PostgreSQL server started for the run),
# and the browser end-to-end tests in Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
# A test run must leave the working tree as it found it.
tree_before=$(git status --porcelain)

./scripts/install-test-tools.sh
export PATH="$PWD/.tools/bin:$PATH"

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== buf lint"
(cd proto && buf lint)
echo "== docker-compose config"
# Validated with the example settings, as `cp .env.example .env` would give them.
docker-compose --env-file .env.example -f docker-compose.yml config -q
echo "== web: typecheck, and the committed bundle matches its sources"
(cd web && npm run --silent typecheck && npm run --silent build >/dev/null)
if ! git diff --quiet -- web/dist web/src/gen; then
    echo "error: web/dist or web/src/gen is stale; run (cd web && npm run build) and commit:" >&2
    git diff --stat -- web/dist web/src/gen >&2
    exit 1
fi
echo "== PostgreSQL: a fresh cluster for this run, for the suites that run on both databases"
STRONGBOX_TEST_POSTGRES_URL=$(./scripts/postgres.sh fresh target/test-postgres)
export STRONGBOX_TEST_POSTGRES_URL
trap './scripts/postgres.sh stop target/test-postgres' EXIT
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== tests"
# Some suites start the real binaries (compose, CLI, gateway memory): build them first,
# so no test spends its time budget compiling.
cargo build --quiet --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --profile ci
else
    cargo test --workspace
fi
echo "== benchmark harness, quick mode (numbers discarded: this only keeps it working)"
bench_out=$(mktemp)
cargo run --quiet -p strongbox-tests --bin strongbox-bench -- --quick --out "$bench_out" >/dev/null
grep -q '| 16 MiB | 4 |' "$bench_out"
rm -f "$bench_out"
echo "== browser end-to-end"
./scripts/e2e.sh
echo "== the working tree is as the run found it"
tree_after=$(git status --porcelain)
if [ "$tree_after" != "$tree_before" ]; then
    echo "error: the test run changed the working tree:" >&2
    diff <(echo "$tree_before") <(echo "$tree_after") >&2 || true
    exit 1
fi
