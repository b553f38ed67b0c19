# syntax=docker/dockerfile:1

# ---- builder -----------------------------------------------------------------
# The workspace needs Rust >= 1.94 (edition 2024).
FROM rust:1.95-bookworm AS builder

# The `ssh2` crate (libssh2-sys) builds against OpenSSL and zlib, found with
# pkg-config. (Postgres and Redis TLS use rustls.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .

# target/ lives in a cache mount, which is not part of the image layer, so the
# binary must be copied out of it within the same RUN.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/app/target \
    cargo build --release --locked --bin netcron \
    && cp target/release/netcron /usr/local/bin/netcron

# ---- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates: TLS roots; openssh-client: ssh tooling for operators;
# libssl3: the executor's libssh2 links OpenSSL dynamically (zlib comes with the
# base image);
# curl: for the compose healthcheck (`curl -fsS http://127.0.0.1:8080/health`).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates openssh-client libssl3 curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 netcron \
    && useradd --system --uid 10001 --gid netcron --create-home --home-dir /home/netcron \
       --shell /usr/sbin/nologin netcron

COPY --from=builder /usr/local/bin/netcron /usr/local/bin/netcron

USER netcron
WORKDIR /home/netcron

ENV NETCRON_API_ADDR=0.0.0.0:8080
EXPOSE 8080

# No HEALTHCHECK here: the same image runs the api, scheduler, executor and
# migrate roles, and only the api (or `all`) serves /health. Compose defines it.
ENTRYPOINT ["/usr/local/bin/netcron"]
CMD ["all"]
