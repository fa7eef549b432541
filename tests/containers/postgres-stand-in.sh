#!/bin/sh
# The official postgres image's interface, played by Debian's postgresql package, for
# scripts/containers.sh where no image can be pulled: POSTGRES_USER, POSTGRES_PASSWORD
# and POSTGRES_DB make the cluster on first start (password authentication over the
# network), data in /var/lib/postgresql/data, the server in the foreground as PID 1.
set -eu
: "${POSTGRES_USER:?set POSTGRES_USER}" "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
data=/var/lib/postgresql/data
bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
if [ ! -s "$data/PG_VERSION" ]; then
    password_file=$(mktemp)
    printf '%s' "$POSTGRES_PASSWORD" >"$password_file"
    "$bin/initdb" --pgdata "$data" --username "$POSTGRES_USER" --pwfile "$password_file" \
        --auth-local trust --auth-host scram-sha-256 >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >>"$data/pg_hba.conf"
    "$bin/pg_ctl" --pgdata "$data" --options "-c listen_addresses=''" --wait start >/dev/null
    psql --username "$POSTGRES_USER" --dbname postgres --quiet \
        --command "CREATE DATABASE \"$POSTGRES_DB\""
    "$bin/pg_ctl" --pgdata "$data" --mode fast --wait stop >/dev/null
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*'
