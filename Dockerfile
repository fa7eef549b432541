# syntax=docker/dockerfile:1
# One Dockerfile, one target per service:
#   docker build --target auth-service .   (also storage-service, gateway)
# Dependencies are compiled in their own layer (cargo-chef), so a source change
# rebuilds only the workspace's own crates. Runtime images are Debian slim, run as a
# non-root user, and carry nothing but the binary and CA certificates.

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

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --create-home strongbox
USER strongbox
WORKDIR /data
ENV DATA_DIR=/data

FROM runtime AS auth-service
COPY --from=builder /src/target/release/auth-service /usr/local/bin/auth-service
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["auth-service", "healthcheck"]
ENTRYPOINT ["auth-service"]

FROM runtime AS storage-service
COPY --from=builder /src/target/release/storage-service /usr/local/bin/storage-service
EXPOSE 50052
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["storage-service", "healthcheck"]
ENTRYPOINT ["storage-service"]

FROM runtime AS gateway
COPY --from=builder /src/target/release/gateway /usr/local/bin/gateway
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["gateway", "healthcheck"]
ENTRYPOINT ["gateway"]
