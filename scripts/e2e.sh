#!/usr/bin/env bash
# Browser end-to-end: starts the whole system (the `strongbox` all-in-one launcher, debug
# build) on a free port with a fresh data directory, runs web/e2e/ in real Chromium
# against it, and stops it; then again over HTTPS, with a certificate from a test CA that
# only Chromium's own trust store (an NSS database in a scratch $HOME) knows. Fails, never
# skips, when anything is missing.
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
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -INT "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$data"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts the launcher on 127.0.0.1:$1 with its own data directory $2 (and whatever else the
# environment of the call adds), then waits until the gateway answers health; $3 are
# grpcurl's transport options for it.
launch() {
    local port=$1 dir=$2 transport=$3
    mkdir -p "$dir"
    # Quotas per user, so the page's usage line shows its limits and its meter; far above
    # what the tests upload (the e2e asserts these two numbers as the page shows them).
    DATA_DIR="$dir" GATEWAY_LISTEN="127.0.0.1:$port" AUTH_LISTEN=127.0.0.1:0 STORAGE_LISTEN=127.0.0.1:0 \
        USER_QUOTA_BYTES=1000000000 USER_MAX_FILES=1000 \
        BCRYPT_ROUNDS=4 RUST_LOG=warn ./target/debug/strongbox >"$dir/strongbox.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 1 100); do
        # shellcheck disable=SC2086 # $transport is a list of options
        if .tools/bin/grpcurl $transport -d '{"service": ""}' "localhost:$port" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then
            return
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: strongbox exited while starting:" >&2
            cat "$dir/strongbox.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    echo "error: strongbox on port $port never answered health:" >&2
    cat "$dir/strongbox.log" >&2
    exit 1
}

port=$(free_port)
launch "$port" "$data/plain" -plaintext
STRONGBOX_URL="http://localhost:$port" node --test web/e2e/upload.test.mjs web/e2e/downloads.test.mjs

echo "-- over HTTPS, with a test CA in Chromium's trust store"
tls="$data/tls"
mkdir -p "$tls" "$data/home/.pki/nssdb"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=Strongbox e2e test CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$tls/gateway.key" -out "$tls/gateway.csr" 2>/dev/null
openssl x509 -req -in "$tls/gateway.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 2 -out "$tls/gateway.crt" 2>/dev/null \
    -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n')
certutil -d "sql:$data/home/.pki/nssdb" -N --empty-password
certutil -d "sql:$data/home/.pki/nssdb" -A -t "C,," -n "Strongbox e2e test CA" -i "$tls/ca.pem"
tls_port=$(free_port)
GATEWAY_TLS_CERT="$tls/gateway.crt" GATEWAY_TLS_KEY="$tls/gateway.key" \
    launch "$tls_port" "$data/https" "-cacert $tls/ca.pem"
HOME="$data/home" STRONGBOX_URL="https://localhost:$tls_port" node --test web/e2e/https.test.mjs || { cat "$data/https/strongbox.log"; exit 1; }
