#!/usr/bin/env bash
# Browser end-to-end: starts the whole system (the `strongbox` all-in-one launcher, debug
# build) on a free port with a fresh data directory, runs web/e2e/ in real Chromium
# against it, and stops it. Fails, never skips, when anything is missing.
#
#   scripts/e2e.sh                 # writes nothing into the working tree
#   scripts/e2e.sh --screenshot    # also renews docs/screenshot-upload.png
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
    "") ;;
    --screenshot) export SCREENSHOT="$PWD/docs/screenshot-upload.png" ;;
    *) echo "usage: $0 [--screenshot]" >&2; exit 2 ;;
esac

cargo build --quiet -p strongbox
data=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Quotas per user, so the page's usage line shows its limits and its meter; far above what
# the tests upload (the e2e asserts these two numbers as the page shows them).
DATA_DIR="$data" GATEWAY_LISTEN="127.0.0.1:$port" AUTH_LISTEN=127.0.0.1:0 STORAGE_LISTEN=127.0.0.1:0 \
    USER_QUOTA_BYTES=1000000000 USER_MAX_FILES=1000 \
    BCRYPT_ROUNDS=4 RUST_LOG=warn ./target/debug/strongbox >"$data/strongbox.log" 2>&1 &
pid=$!
cleanup() {
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
    if .tools/bin/grpcurl -plaintext -d '{"service": ""}' "127.0.0.1:$port" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "error: strongbox exited while starting:" >&2
        cat "$data/strongbox.log" >&2
        exit 1
    fi
    sleep 0.2
done

STRONGBOX_URL="http://localhost:$port" node --test web/e2e/
