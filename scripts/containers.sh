#!/usr/bin/env bash
# The containers, built and started for real: the images from the Dockerfile, the
# docker-compose.yml topology brought up with podman-compose, and the proofs that it
# works as deployed — every container healthy through its own healthcheck, the services
# reaching each other by name, processes running as the non-root user, an upload
# through the published gateway port, a presigned download through the published S3
# port, and data surviving `down` and `up` on the named volumes; then the same with
# docker-compose.scale.yml on top (PostgreSQL, two replicas of each service, the calls
# spread over them). Then everything is torn down, on failure too, so the next run
# starts clean. Fails loudly, never skips.
#
# Made for machines with no Docker engine and no image registry (this project's):
#   - podman (Debian) runs the containers; its default RLIMIT_NOFILE is refused here, so
#     containers.conf gets `default_ulimits = []`.
#   - The base image is made with debootstrap from Debian's packages, once.
#   - The binaries are built on the host (the Rust image cannot be pulled) and handed
#     to the Dockerfile's `prebuilt` stage; the cargo-chef path stays the default.
#   - MinIO's image cannot be pulled either: tests/containers/docker-compose.podman.yml
#     puts the suites' S3 server in its place; PostgreSQL's neither:
#     docker-compose.scale.podman.yml puts Debian's package in its place.
# Takes 60-90 s once the base image exists and the release build is current; the first
# run on a machine adds about 1.5 min (packages, debootstrap), a release build 5-8 min.
#
#   scripts/containers.sh        # as root: it installs podman & co. with apt-get
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

readonly project=strongbox-containers
readonly base_image=localhost/debian:bookworm
readonly image_prefix=localhost/strongbox
# The Dockerfile targets, each tagged $image_prefix/<target> (the override's names).
# The stages they share, `prebuilt` and `runtime`, are tagged too: removing the tags
# then leaves no image behind.
readonly targets=(prebuilt runtime auth-service storage-service gateway s3-stand-in postgres-stand-in)
long_running=(minio auth-service storage-service gateway)
readonly binaries=(auth-service storage-service gateway strongbox-cli strongbox-s3-server)
readonly service_uid=10001
# What docker-compose.yml publishes: the gateway, MinIO's API and its console.
readonly published_ports=(8000 9000 9001)
readonly gateway=127.0.0.1:8000
work=/var/tmp/$project
compose_args=(--project-name "$project" --env-file "$work/compose.env"
    -f docker-compose.yml -f tests/containers/docker-compose.podman.yml)

script_started=$(date +%s)
phase_started=$script_started
phase() {
    local now
    now=$(date +%s)
    if [ -n "${phase_name:-}" ]; then
        echo "   ($phase_name: $((now - phase_started)) s)"
    fi
    phase_name=$1
    phase_started=$now
    echo "== $phase_name"
}

fail() {
    echo "error: $*" >&2
    exit 1
}

compose() {
    podman-compose "${compose_args[@]}" "$@"
}

# Where this machine's apt gets Debian from: debootstrap uses the same mirror.
debian_mirror() {
    # shellcheck disable=SC2016 # apt's format placeholders, not shell
    apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' 'Origin: Debian' 'Release: bookworm' |
        head -n 1
}

install_tools() {
    [ "$(id -u)" -eq 0 ] || fail "run as root: podman runs rootful here and apt-get installs it"
    local missing=()
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    # netavark's network gives containers each other's names (aardvark-dns) and
    # publishes ports (iptables).
    [ -x /usr/lib/podman/netavark ] || missing+=(netavark)
    [ -x /usr/lib/podman/aardvark-dns ] || missing+=(aardvark-dns)
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} (Debian packages)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
            >"$work/apt.log" 2>&1 || fail "apt-get install ${missing[*]} failed; see $work/apt.log"
    fi
    # grpcurl (and jq) come from the test tools' one installer.
    ./scripts/install-test-tools.sh
    if [ ! -x .tools/bin/podman-compose ]; then
        echo "installing podman-compose into .tools/"
        [ -x .tools/venv/bin/pip ] || python3 -m venv .tools/venv
        .tools/venv/bin/pip install --quiet --disable-pip-version-check 'podman-compose==1.6.0'
        ln -sf "$repo/.tools/venv/bin/podman-compose" .tools/bin/podman-compose
    fi
    export PATH="$repo/.tools/bin:$PATH"
    allow_podman_ulimits
    local tool
    for tool in podman debootstrap podman-compose grpcurl jq curl ip sha256sum ss cargo; do
        command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing after installing"
    done
    # (podman's package also ships a CNI config, which it warns about: not used.)
    [ "$(podman info --format '{{.Host.NetworkBackend}}' 2>/dev/null)" = netavark ] ||
        fail "podman does not use netavark: containers would not resolve each other's names"
}

# podman raises every container's RLIMIT_NOFILE by default, which this machine refuses
# ("error setting rlimit type 7"). `default_ulimits = []` under [containers] keeps the
# inherited limit. Added to the system-wide file, leaving whatever else it says alone.
allow_podman_ulimits() {
    local conf=/etc/containers/containers.conf
    if [ -f "$conf" ] && grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=' "$conf"; then
        grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=[[:space:]]*\[[[:space:]]*\]' "$conf" ||
            fail "$conf sets default_ulimits; containers start here only with default_ulimits = [] under [containers]"
        return
    fi
    echo "adding default_ulimits = [] to $conf"
    mkdir -p "$(dirname "$conf")"
    if [ -f "$conf" ] && grep -Eq '^[[:space:]]*\[containers\]' "$conf"; then
        sed -i -E '0,/^[[:space:]]*\[containers\]/s//&\ndefault_ulimits = []/' "$conf"
    else
        printf '\n[containers]\ndefault_ulimits = []\n' >>"$conf"
    fi
}

# Debian bookworm's minimal system, as debian:bookworm-slim is: the runtime stage adds
# ca-certificates with apt as it does on the real base.
build_base_image() {
    if podman image exists "$base_image"; then
        echo "$base_image exists"
        return
    fi
    local mirror rootfs=/var/tmp/$project-rootfs
    mirror=$(debian_mirror)
    [ -n "$mirror" ] || fail "no Debian bookworm mirror in apt's sources for debootstrap"
    echo "debootstrap bookworm from $mirror"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        fail "debootstrap failed; see $work/debootstrap.log"
    # As the slim image: no package cache or lists (apt-get update fetches them).
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$base_image" >/dev/null
    rm -rf "$rootfs"
}

build_binaries() {
    local args=() binary
    for binary in "${binaries[@]}"; do
        args+=(--bin "$binary")
    done
    cargo build --quiet --release "${args[@]}" || fail "the release build failed"
}

# The images hold the release binaries twice over (context, then layers) beside the
# base image: ~1.5 GB. Say so plainly rather than fail deep inside podman's copier.
require_space() {
    local dir free_mib need_mib=3072
    for dir in /var/lib/containers "$work"; do
        mkdir -p "$dir"
        free_mib=$(df --output=avail -m "$dir" | tail -n 1 | tr -d ' ')
        [ "$free_mib" -ge "$need_mib" ] ||
            fail "$dir has $free_mib MiB free; building the images needs $need_mib MiB (a stale target/ is the usual cause: cargo clean)"
    done
}

# The build context holds the binaries only: the repository's target/ is tens of GB.
build_images() {
    local context=$work/context binary target
    mkdir -p "$context/target/release"
    for binary in "${binaries[@]}"; do
        cp target/release/"$binary" "$context/target/release/"
    done
    mkdir -p "$context/tests/containers"
    cp tests/containers/postgres-stand-in.sh "$context/tests/containers/"
    for target in "${targets[@]}"; do
        echo "building $image_prefix/$target"
        # The docker format keeps each image's HEALTHCHECK (OCI has none).
        podman build --quiet --format docker --target "$target" \
            --build-arg BINARIES=prebuilt --build-arg RUNTIME_BASE="$base_image" \
            --tag "$image_prefix/$target" --file Dockerfile "$context" >>"$work/build.log" 2>&1 ||
            fail "building the $target image failed; see the end of $work/build.log:$(echo; tail -n 20 "$work/build.log")"
    done
}

# .env.example with every change-me value replaced, as the README's setup asks.
write_env_file() {
    local line key value
    while IFS= read -r line; do
        key=${line%%=*}
        value=${line#*=}
        if [[ $line != \#* && $value == change-me* ]]; then
            value=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
            line="$key=$value"
        fi
        printf '%s\n' "$line"
    done <.env.example >"$work/compose.env"
}

# Whatever a run killed before its cleanup left: containers, network, volumes.
remove_leftovers() {
    [ -f "$work/compose.env" ] || write_env_file
    compose down --volumes >>"$work/teardown.log" 2>&1 || true
    local kind
    for kind in container network volume; do
        podman "$kind" ls --quiet --filter "label=io.podman.compose.project=$project" |
            xargs --no-run-if-empty podman "$kind" rm --force >/dev/null
    done
}

# podman schedules healthchecks with systemd timers; there is no systemd here, so this
# plays the timer: every 2 s, each running container's own healthcheck, as podman
# would run it (`podman healthcheck run` records the result in the container's state).
drive_healthchecks() {
    local container
    while sleep 2; do
        for container in $(podman ps --quiet --filter "label=io.podman.compose.project=$project"); do
            podman healthcheck run "$container" >/dev/null 2>&1 || true
        done
    done
}

container_of() {
    podman ps --all --quiet --filter "label=io.podman.compose.project=$project" \
        --filter "label=com.docker.compose.service=$1"
}

# "healthy" once every container of the service (each replica) is; else the status of
# one that is not.
health_of() {
    local container status all=healthy
    for container in $(container_of "$1"); do
        status=$(podman inspect --format '{{.State.Health.Status}}' "$container")
        [ "$status" = healthy ] || all=$status
    done
    echo "$all"
}

# Whether every container of the service (each replica) is running.
running() {
    local container
    for container in $(container_of "$1"); do
        [ "$(podman inspect --format '{{.State.Running}}' "$container")" = true ] || return 1
    done
}

# Each service and its depends_on, one line each: "service dependency:condition …".
dependencies() {
    compose config 2>/dev/null | .tools/venv/bin/python -c '
import sys, yaml
for name, service in yaml.safe_load(sys.stdin)["services"].items():
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        depends_on = {dependency: {} for dependency in depends_on}
    print(name, *(dependency + ":" + how.get("condition", "service_started")
                  for dependency, how in depends_on.items()))'
}

# Whether `service` meets a depends_on `condition` now (a one-shot that failed is fatal).
condition_met() {
    local service=$1 condition=$2 container state
    container=$(container_of "$service")
    [ -n "$container" ] || return 1
    case $condition in
        service_started) running "$service" ;;
        service_healthy) [ "$(health_of "$service")" = healthy ] ;;
        service_completed_successfully)
            state=$(podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$container")
            case $state in
                "exited 0") return 0 ;;
                exited*) fail "$service finished with exit code ${state#exited }" ;;
                *) return 1 ;;
            esac
            ;;
        *) fail "unknown depends_on condition $condition" ;;
    esac
}

# A Linux bridge without an address of its own takes the lowest of its ports' MAC
# addresses, so with netavark 1.4 (Debian 12) it changes as containers come and go.
# Containers that cached the old one reach neither aardvark-dns nor the outside until
# their ARP entry is re-probed, seconds later: a name lookup then outlasts
# storage-service's 3 s deadline to fetch auth-service's keys, and uploads fail.
# (Reproduced: restarting storage-service and the gateway failed the next upload 4 times
# in 8; pinned, 0 in 10.) Setting the bridge's address, to the one it has, pins it.
pin_bridge_address() {
    local bridge
    bridge=$(podman network inspect "${project}_strongbox" --format '{{.NetworkInterface}}') ||
        fail "podman-compose made no network ${project}_strongbox"
    # No container attached (a one-shot that has finished): the next one makes the bridge.
    [ -e "/sys/class/net/$bridge/address" ] || return 0
    ip link set dev "$bridge" address "$(cat "/sys/class/net/$bridge/address")"
}

# podman 4.3 can do neither half of depends_on: podman-compose skips `service_healthy`
# (podman cannot wait for health before 4.6), and containers chained by podman's own
# dependencies (--requires) fail to start ("generating dependency graph … not found in
# input list") once a dependency has one of its own. So each service is created without
# podman's dependencies (--no-deps) and started here once every condition
# docker-compose.yml gives it holds, as docker compose would.
up_and_healthy() {
    for port in "${published_ports[@]}"; do
        if ss -Hltn "sport = :$port" | grep -q .; then
            fail "port $port is in use; docker-compose.yml publishes it"
        fi
    done
    local lines line service dependencies dependency ready
    local -A started_services=()
    mapfile -t lines < <(dependencies)
    [ ${#lines[@]} -gt 0 ] || fail "podman-compose config lists no services"
    local deadline=$((SECONDS + 180))
    while [ ${#started_services[@]} -lt ${#lines[@]} ]; do
        for line in "${lines[@]}"; do
            read -r service dependencies <<<"$line"
            [ -z "${started_services[$service]:-}" ] || continue
            ready=true
            for dependency in $dependencies; do
                condition_met "${dependency%%:*}" "${dependency#*:}" || ready=false
            done
            $ready || continue
            compose up --detach --no-deps --no-build "$service" >>"$work/compose.log" 2>&1 ||
                fail "podman-compose up $service failed"
            pin_bridge_address
            started_services[$service]=1
        done
        [ $SECONDS -lt $deadline ] || fail "not started within 180 s: waiting on depends_on of the rest"
        sleep 1
    done
    local pending
    deadline=$((SECONDS + 120))
    while :; do
        pending=()
        for service in "${long_running[@]}"; do
            running "$service" || fail "$service is not running"
            [ "$(health_of "$service")" = healthy ] || pending+=("$service")
        done
        [ ${#pending[@]} -eq 0 ] && break
        [ $SECONDS -lt $deadline ] || fail "not healthy within 120 s: ${pending[*]}"
        sleep 1
    done
    local init
    init=$(container_of minio-init)
    [ "$(podman inspect --format '{{.State.ExitCode}}' "$init")" = 0 ] ||
        fail "minio-init did not finish successfully"
    echo "healthy: ${long_running[*]} ($(container_of auth-service | wc -l) auth-service, $(container_of storage-service | wc -l) storage-service); minio-init finished with 0"
}

prove_health_names_and_user() {
    local service container status
    for service in "${long_running[@]}"; do
        container=$(container_of "$service")
        # Once more by hand: the container's own healthcheck, now.
        podman healthcheck run "$container" >/dev/null || fail "$service's healthcheck fails"
        # PID 1 is the service itself; every uid (real, effective, saved, fs) is ours.
        status=$(podman exec "$container" cat /proc/1/status)
        grep -Eq "^Uid:([[:space:]]+${service_uid}){4}\$" <<<"$status" ||
            fail "$service does not run as uid $service_uid"
        [ "$(podman exec "$container" id -u)" = "$service_uid" ] ||
            fail "a command in $service does not run as uid $service_uid"
    done
    echo "every service runs as uid $service_uid"
    podman exec "$(container_of gateway)" getent hosts minio auth-service storage-service >/dev/null ||
        fail "service names do not resolve inside the gateway's container"
    # The gateway answers SERVING only while auth-service and storage-service answer it
    # at their service names; storage-service found S3 at `minio` to start at all.
    [ "$(grpcurl -plaintext "$gateway" grpc.health.v1.Health/Check | jq -r .status)" = SERVING ] ||
        fail "the gateway's health, through its published port, is not SERVING"
    echo "names resolve in the containers; the gateway reaches both services (SERVING)"
}

# The user's story through the published ports, with the terminal client.
cli() {
    STRONGBOX_CONFIG_DIR="$work/cli" STRONGBOX_SERVER="http://$gateway" \
        STRONGBOX_PASSWORD="$password" target/release/strongbox-cli --json "$@"
}

readonly email=containers@example.com
password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

prove_upload_and_presigned_download() {
    mkdir -p "$work/files"
    # Small goes in one Upload stream; above 8 MiB the client uses a resumable session,
    # which storage-service stores as an S3 multipart upload.
    head -c 300000 /dev/urandom >"$work/files/small.bin"
    head -c $((12 * 1024 * 1024)) /dev/urandom >"$work/files/large.bin"
    cli register "$email" >/dev/null || fail "register through $gateway failed"
    cli login "$email" >/dev/null || fail "login through $gateway failed"
    cli upload "$work/files/small.bin" "$work/files/large.bin" >/dev/null ||
        fail "upload through $gateway failed"
    local name
    for name in small.bin large.bin; do
        [ "$(listed_sha256 "$name")" = "$(sha256_of "$work/files/$name")" ] ||
            fail "$name is not listed with its SHA-256 after the upload"
    done
    echo "uploaded small.bin and large.bin through $gateway"
    prove_presigned_download large.bin
}

listed_sha256() {
    cli ls | jq -r --arg name "$1" '.[] | select(.filename == $name) | .sha256'
}

key_of() {
    cli ls | jq -r --arg name "$1" '.[] | select(.filename == $name) | .key'
}

sha256_of() {
    sha256sum "$1" | cut -d' ' -f1
}

access_token() {
    jq -r .access_token "$work/cli/credentials.json"
}

# A URL signed for STORAGE_PUBLIC_ENDPOINT (the published S3 port), fetched as a
# browser would, with no credentials; the same URL with a changed signature is refused.
prove_presigned_download() {
    local name=$1 url
    url=$(grpcurl -plaintext -H "authorization: Bearer $(access_token)" \
        -d "$(jq -n --arg key "$(key_of "$name")" '{key: $key}')" \
        "$gateway" storage.v1.StorageService/GetDownloadUrl | jq -r .url)
    [[ $url == http://localhost:9000/* ]] || fail "the download URL is not on the published S3 port: $url"
    curl --fail --silent --show-error --output "$work/files/presigned-$name" "$url" ||
        fail "the presigned download of $name failed"
    [ "$(sha256_of "$work/files/presigned-$name")" = "$(sha256_of "$work/files/$name")" ] ||
        fail "the presigned download of $name has other bytes"
    local forged status
    forged=$(sed -E 's/(X-Amz-Signature=)0/\11/; t; s/(X-Amz-Signature=)[0-9a-f]/\10/' <<<"$url")
    [ "$forged" != "$url" ] || fail "the download URL has no X-Amz-Signature: $url"
    status=$(curl --silent --output /dev/null --write-out '%{http_code}' "$forged")
    [ "$status" = 403 ] || fail "S3 answered $status, not 403, to a URL with a wrong signature"
    echo "presigned download of $name through localhost:9000 matches its SHA-256 (a forged one gets 403)"
}

# `down` keeps the named volumes: the accounts and signing key (auth-data), the file
# index (storage-data) and the objects (minio-data) must all come back.
prove_data_survives_restart() {
    local token_before
    token_before=$(access_token)
    compose down >>"$work/compose.log" 2>&1 || fail "podman-compose down failed"
    [ -z "$(podman ps --all --quiet --filter "label=io.podman.compose.project=$project")" ] ||
        fail "containers are left after down"
    local volume
    for volume in minio-data auth-data storage-data; do
        podman volume exists "${project}_$volume" || fail "the volume ${project}_$volume is gone after down"
    done
    echo "down: containers gone, volumes kept"
    up_and_healthy
    # The token issued before the restart still verifies: the signing key persisted.
    grpcurl -plaintext -H "authorization: Bearer $token_before" "$gateway" auth.v1.AuthService/Me |
        jq -e --arg email "$email" '.user.email == $email' >/dev/null ||
        fail "a token issued before the restart is refused: the signing key did not survive"
    cli login "$email" >/dev/null || fail "login after the restart failed: the account did not survive"
    local name key
    for name in small.bin large.bin; do
        [ "$(listed_sha256 "$name")" = "$(sha256_of "$work/files/$name")" ] ||
            fail "$name is not listed after the restart"
        key=$(key_of "$name")
        # The client checks the SHA-256 itself (exit code 6 if the bytes differ).
        cli download "$key" --output "$work/files/again-$name" >/dev/null ||
            fail "downloading $name through $gateway after the restart failed"
        [ "$(sha256_of "$work/files/again-$name")" = "$(sha256_of "$work/files/$name")" ] ||
            fail "$name downloaded after the restart has other bytes"
    done
    echo "after down and up: the old token verifies, login works, both files list and download intact"
    prove_presigned_download large.bin
}

# Calls a service's container has answered, from its Prometheus endpoint on the
# compose network (the host reaches the containers' addresses).
calls_answered() {
    local container=$1 port=$2 address
    address=$(podman inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$container")
    curl --fail --silent --show-error "http://$address:$port/metrics" |
        awk '/^strongbox_grpc_calls_total[{ ]/ { sum += $NF } END { print sum + 0 }'
}

# docker-compose.scale.yml on top: both services' databases on PostgreSQL and two
# replicas of each (tests/containers/docker-compose.scale.podman.yml gives the count and
# the stand-in image), found by the gateway through their service names.
prove_scaled() {
    compose down --volumes >>"$work/compose.log" 2>&1 || fail "podman-compose down failed"
    compose_args+=(-f docker-compose.scale.yml -f tests/containers/docker-compose.scale.podman.yml)
    long_running+=(postgres)
    up_and_healthy
    local service count addresses
    for service in auth-service storage-service; do
        count=$(container_of "$service" | wc -l)
        [ "$count" = 2 ] || fail "two $service replicas were asked for; $count run"
        addresses=$(podman exec "$(container_of gateway)" getent ahosts "$service" | awk '{ print $1 }' | sort -u | wc -l)
        [ "$addresses" = 2 ] || fail "$service resolves to $addresses addresses in the gateway's container, not 2"
    done
    echo "two replicas each of auth-service and storage-service, each name resolving to both"
    # The accounts are in PostgreSQL now: a new one. Large files go as resumable
    # sessions, whose chunks the gateway spreads over both storage replicas.
    rm -rf "$work/cli"
    local scaled_email=scaled@example.com name
    cli register "$scaled_email" >/dev/null || fail "register through $gateway (scaled) failed"
    cli login "$scaled_email" >/dev/null || fail "login through $gateway (scaled) failed"
    head -c $((20 * 1024 * 1024)) /dev/urandom >"$work/files/session.bin"
    cli upload "$work/files/small.bin" "$work/files/large.bin" "$work/files/session.bin" >/dev/null ||
        fail "upload through $gateway (scaled) failed"
    for name in small.bin large.bin session.bin; do
        [ "$(listed_sha256 "$name")" = "$(sha256_of "$work/files/$name")" ] ||
            fail "$name is not listed with its SHA-256 after the upload (scaled)"
    done
    for _ in $(seq 10); do
        cli ls >/dev/null || fail "listing through $gateway (scaled) failed"
    done
    cli download "$(key_of session.bin)" --output "$work/files/scaled-session.bin" >/dev/null ||
        fail "downloading session.bin (scaled) failed"
    [ "$(sha256_of "$work/files/scaled-session.bin")" = "$(sha256_of "$work/files/session.bin")" ] ||
        fail "session.bin downloaded (scaled) has other bytes"
    local container port answered
    for service in auth-service storage-service; do
        port=9101
        [ "$service" = auth-service ] || port=9102
        for container in $(container_of "$service"); do
            answered=$(calls_answered "$container" "$port")
            [ "${answered%.*}" -gt 0 ] || fail "a $service replica answered no call: the gateway does not spread"
        done
    done
    echo "uploads, a resumable session and downloads through the gateway; every replica answered calls"
}

health_driver=
topology_started=false
cleanup() {
    local status=$?
    trap - EXIT
    # Tear down as much as possible whatever fails on the way; what is left decides.
    set +e
    [ -z "$health_driver" ] || kill "$health_driver" 2>/dev/null
    if [ $status -ne 0 ] && $topology_started; then
        echo "== FAILED; the containers and their logs:" >&2
        podman ps --all --filter "label=io.podman.compose.project=$project" >&2 || true
        for container in $(podman ps --all --quiet --filter "label=io.podman.compose.project=$project"); do
            echo "-- $(podman inspect --format '{{.Name}}: {{.State.Status}}, health {{.State.Health.Status}}' "$container")" >&2
            podman logs --tail 30 "$container" >&2 || true
        done
        echo "-- podman-compose (last lines of $work/compose.log):" >&2
        tail -n 30 "$work/compose.log" >&2 || true
    fi
    phase "tear down"
    remove_leftovers
    podman rmi --force "${targets[@]/#/$image_prefix/}" >/dev/null 2>&1
    local kind left
    for kind in container network volume; do
        left=$(podman "$kind" ls --quiet --filter "label=io.podman.compose.project=$project")
        if [ -n "$left" ]; then
            echo "error: the tear-down left a $kind: $left" >&2
            status=1
        fi
    done
    left=$(podman images --quiet --filter "reference=$image_prefix/*")
    if [ -n "$left" ]; then
        echo "error: the tear-down left images: $left" >&2
        status=1
    fi
    rm -rf "$work"
    phase "done"
    echo "total: $(($(date +%s) - script_started)) s"
    if [ $status -ne 0 ]; then
        echo "error: the container check failed (exit $status)" >&2
    fi
    exit $status
}

phase "tools"
rm -rf "$work"
mkdir -p "$work"
install_tools
write_env_file
trap cleanup EXIT
remove_leftovers
phase "base image"
build_base_image
phase "release binaries"
build_binaries
phase "images"
require_space
build_images
phase "up"
topology_started=true
drive_healthchecks &
health_driver=$!
up_and_healthy
phase "proofs"
prove_health_names_and_user
prove_upload_and_presigned_download
phase "down and up again"
prove_data_survives_restart
phase "scaled: PostgreSQL and two replicas of each service"
prove_scaled
