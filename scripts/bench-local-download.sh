#!/usr/bin/env bash
# Downloads from a local directory (the embedded default), which the benchmark harness
# does not cover (its S3 server is in its own process): the one-process launch on a fresh
# directory, one 512 MiB file uploaded and downloaded three times with the CLI, printing
# each download's rate and the CPU the launch process (all three services) spent per MiB.
# The CLI's own work (the SHA-256 check, writing the file) is not in that CPU figure but
# is in the rate. Release build; ports 18000, 18051 and 18052; leaves nothing behind.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p strongbox -p strongbox-cli
bin=$root/target/release
work=$(mktemp -d)
launch=
cleanup() {
  [[ -n $launch ]] && kill "$launch" 2>/dev/null && wait "$launch" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/config"
cd "$work"
export DATA_DIR=$work/data GATEWAY_LISTEN=127.0.0.1:18000 AUTH_LISTEN=127.0.0.1:18051 \
  STORAGE_LISTEN=127.0.0.1:18052 RATE_LIMIT_STORAGE=off
"$bin/strongbox" >"$work/launch.log" 2>&1 &
launch=$!
for _ in $(seq 150); do
  grep -q "localhost:18000" "$work/launch.log" && break
  sleep 0.2
done
grep -q "localhost:18000" "$work/launch.log" || { cat "$work/launch.log"; exit 1; }

export STRONGBOX_CONFIG_DIR=$work/config STRONGBOX_SERVER=http://localhost:18000 \
  STRONGBOX_PASSWORD=correct-horse-battery-staple
cli=$bin/strongbox-cli
"$cli" register bench@example.com >/dev/null
"$cli" login bench@example.com >/dev/null
head -c $((512 << 20)) /dev/urandom >"$work/file.bin"
"$cli" upload "$work/file.bin" >/dev/null 2>&1
key=$("$cli" --json ls | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["key"])')
rm "$work/file.bin"
sync

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$launch/stat"; }
ticks_per_second=$(getconf CLK_TCK)
for round in 1 2 3; do
  before=$(cpu_ticks)
  start=$(date +%s.%N)
  "$cli" download "$key" -o "$work/copy.bin" -f >/dev/null 2>&1
  end=$(date +%s.%N)
  after=$(cpu_ticks)
  rm "$work/copy.bin"
  python3 -c "
seconds = $end - $start
cpu = ($after - $before) / $ticks_per_second
print(f'512 MiB, download $round: {512 / seconds:.0f} MiB/s, services {cpu * 1000 / 512:.2f} ms of CPU per MiB')"
done
