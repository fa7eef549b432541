#!/usr/bin/env bash
# A throwaway PostgreSQL server for the test suites, from Debian's postgresql package,
# run as the unprivileged `postgres` user on a free loopback port.
#
#   scripts/postgres.sh fresh DIR   a new cluster in DIR (any old one stopped and wiped);
#                                   prints the superuser's URL
#   scripts/postgres.sh start DIR   the cluster already running in DIR, or a new one
#   scripts/postgres.sh stop DIR    stops it (nothing to do if none runs)
#
# Trust authentication on 127.0.0.1 only, fsync off: test data, never a deployment's.
set -euo pipefail
usage="usage: $0 fresh|start|stop DIR"
command=${1:?$usage}
dir=$(realpath -m "${2:?$usage}")

bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "error: PostgreSQL's server is not installed (apt-get install postgresql)" >&2
    exit 1
fi

# PostgreSQL refuses to run as root.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

running() {
    [ -f "$dir/port" ] && as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

url() {
    echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
}

stop() {
    if running; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
}

start() {
    rm -rf "$dir/data" "$dir/port"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$dir"
    fi
    as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >/dev/null
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # The server must not inherit the lock's descriptor, or it would hold the lock for
    # as long as it runs.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" \
        start >/dev/null 9>&-
    echo "$port" >"$dir/port"
}

mkdir -p "$dir"
# Test processes started side by side ask for the same cluster: one starts it.
exec 9>"$dir.lock"
flock 9
case $command in
    fresh) stop; start; url ;;
    start) running || start; url ;;
    stop) stop ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
