# syntax=docker/dockerfile:1
# One Dockerfile, one target per service:
#   docker build --target auth-service .   (also storage-service, gateway)
# Dependencies are compiled in their own layer (cargo-chef), so a source change
# rebuilds only the workspace's own crates. Runtime images are Debian slim, run as a
# non-root user, and carry nothing but the binary and CA certificates.
#
# Where no registry can be reached (scripts/containers.sh), neither the Rust image nor
# Debian's can be pulled: the binaries are built on the host (the same glibc, Debian
# bookworm) and the base image is made locally with debootstrap:
#   podman build --build-arg BINARIES=prebuilt --build-arg RUNTIME_BASE=localhost/debian:bookworm \
#       --target auth-service -f Dockerfile CONTEXT
# where CONTEXT holds only target/release/<binaries>: the repository's target/ is far
# too big to be a build context, and .dockerignore keeps it out of the default one.

# The runtime images' base.
ARG RUNTIME_BASE=debian:bookworm-slim
# Where the binaries come from: `builder` (compiled here) or `prebuilt` (the context's).
ARG BINARIES=builder

FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p auth-service -p storage-service -p gateway

# Host-built release binaries, laid out as the builder's.
FROM scratch AS prebuilt
COPY target/release/ /src/target/release/

FROM ${BINARIES} AS binaries

FROM ${RUNTIME_BASE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --create-home strongbox
USER strongbox
WORKDIR /data
ENV DATA_DIR=/data

# MinIO's stand-in for scripts/containers.sh, where MinIO's image cannot be pulled: the
# suites' S3 server (tests/src/bin/strongbox-s3-server.rs). A test tool, so only from
# prebuilt binaries; the builder never compiles it.
FROM runtime AS s3-stand-in
COPY --from=binaries /src/target/release/strongbox-s3-server /usr/local/bin/strongbox-s3-server
EXPOSE 9000
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["strongbox-s3-server", "healthcheck"]
ENTRYPOINT ["strongbox-s3-server"]
CMD ["serve"]

# PostgreSQL's stand-in for scripts/containers.sh, where the postgres image cannot be
# pulled either: Debian's package behind the official image's variables
# (tests/containers/postgres-stand-in.sh, copied into that script's context).
FROM ${RUNTIME_BASE} AS postgres-stand-in
# The package makes a cluster of its own on install unless told not to.
RUN mkdir -p /etc/postgresql-common \
    && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres /var/run/postgresql
COPY tests/containers/postgres-stand-in.sh /usr/local/bin/postgres-stand-in
USER postgres
EXPOSE 5432
ENTRYPOINT ["postgres-stand-in"]

FROM runtime AS auth-service
COPY --from=binaries /src/target/release/auth-service /usr/local/bin/auth-service
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["auth-service", "healthcheck"]
ENTRYPOINT ["auth-service"]

FROM runtime AS storage-service
COPY --from=binaries /src/target/release/storage-service /usr/local/bin/storage-service
EXPOSE 50052
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["storage-service", "healthcheck"]
ENTRYPOINT ["storage-service"]

FROM runtime AS gateway
COPY --from=binaries /src/target/release/gateway /usr/local/bin/gateway
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["gateway", "healthcheck"]
ENTRYPOINT ["gateway"]
