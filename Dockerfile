# syntax=docker/dockerfile:1

# Stages (build one with `docker build --target NAME .`):
#   builder       toolchain, build dependencies and the source; the base of `build` and `tests`
#   build         compiles the release binary
#   tests         `cargo test --workspace` against the compose Postgres and Redis
#                 (`docker compose --profile tests run --rm tests`)
#   runtime-base  the runtime's packages and user, without netcron
#   prebuilt      runtime-base plus a binary built outside (see below)
#   runtime       the small image every role runs from (the default: it is the last stage)
# BuildKit and buildah (podman) build only the stages the chosen target needs, so building
# `tests` does not compile the release binary, building `runtime` does not compile the tests,
# and building `prebuilt` needs no Rust image at all.
#
# The base images are build arguments so that a machine without a registry can use images it
# built itself (scripts/podman-images passes a Debian bookworm made with mmdebstrap):
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_BASE=debian:bookworm-slim

# ---- builder -----------------------------------------------------------------
# The workspace needs Rust >= 1.94 (edition 2024).
FROM ${RUST_IMAGE} AS builder

# The `ssh2` crate (libssh2-sys) builds against OpenSSL and zlib, found with
# pkg-config. (Postgres and Redis TLS use rustls.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .

# ---- build -------------------------------------------------------------------
FROM builder AS build

# target/ lives in a cache mount, which is not part of the image layer, so the
# binary must be copied out of it within the same RUN.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/app/target \
    cargo build --release --locked --bin netcron \
    && cp target/release/netcron /usr/local/bin/netcron

# ---- tests -------------------------------------------------------------------
# Runs the whole test suite in a container. It needs the compose Postgres and Redis
# (DATABASE_URL / REDIS_URL, set by the `tests` service) and starts its own OpenSSH
# sshd processes on loopback ports, which is why it runs as root: sshd needs root to
# switch to the test user.
FROM builder AS tests

RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-server openssh-client python3 redis-server \
       pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

# The user the SSH tests log in as with a password (the tests would create it too,
# but it must exist before tests run in parallel), and sshd's privilege-separation
# directory.
RUN useradd -m -s /bin/sh netcron-test \
    && echo 'netcron-test:Netcron-test-pw-1' | chpasswd \
    && mkdir -p /run/sshd

# Compile the test binaries into the image, so `docker compose run tests` only runs
# them. No cache mounts here on purpose: target/ and the downloaded crates must stay
# in the layer for the CMD to find them.
RUN cargo test --workspace --locked --no-run

ENV RUST_BACKTRACE=1
CMD ["cargo", "test", "--workspace"]

# ---- runtime-base ------------------------------------------------------------
FROM ${RUNTIME_BASE} AS runtime-base

# ca-certificates: TLS roots; openssh-client: ssh tooling for operators;
# libssl3: the executor's libssh2 links OpenSSL dynamically (zlib comes with the
# base image);
# curl: for the compose healthchecks (`curl -fsS http://127.0.0.1:<port>/health`).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates openssh-client libssl3 curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 netcron \
    && useradd --system --uid 10001 --gid netcron --create-home --home-dir /home/netcron \
       --shell /usr/sbin/nologin netcron

# COPY ignores USER (the binary stays root's, mode 755), so both stages below can add
# the binary after this.
USER netcron
WORKDIR /home/netcron

# The api listens on 8080; the scheduler's and executor's ops listeners (/health and
# /metrics) are enabled by NETCRON_SCHEDULER_OPS_ADDR / NETCRON_EXECUTOR_OPS_ADDR, which
# docker-compose.yml sets to 0.0.0.0:9091 and 0.0.0.0:9092.
ENV NETCRON_API_ADDR=0.0.0.0:8080
EXPOSE 8080 9091 9092

# No HEALTHCHECK here: the same image runs the api, scheduler, executor and migrate
# roles, each with /health on a different port (and migrate with none), so
# docker-compose.yml defines one per service.
ENTRYPOINT ["/usr/local/bin/netcron"]
CMD ["all"]

# ---- prebuilt ----------------------------------------------------------------
# The runtime image from a binary built outside, for machines that cannot run the Rust
# stages: no registry to pull `rust:*` from and no rustup server to install a toolchain
# inside an image (this project's CI). The binary is built on the host, which must be
# Debian bookworm (or as old a glibc, 2.36, with OpenSSL 3) like the runtime base, and the
# build context is a directory holding only that binary as `netcron`:
#   mkdir ctx && cp target/release/netcron ctx/ && docker build --target prebuilt -t netcron ctx -f Dockerfile
# scripts/podman-images --bin PATH does this with podman.
FROM runtime-base AS prebuilt
COPY netcron /usr/local/bin/netcron

# ---- runtime -----------------------------------------------------------------
FROM runtime-base AS runtime
COPY --from=build /usr/local/bin/netcron /usr/local/bin/netcron
