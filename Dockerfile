# syntax=docker/dockerfile:1
# One image with every stratusfs program: `stratusfs` (meta, mount, admin, up) and
# `stratusfs-operator` (the CSI driver joins it with [8]).
#
#   docker build -t stratusfs .                      # compiles in the builder stage
#
# or, with binaries built on the host (no Rust toolchain in the image build; buildah works too):
#
#   cargo build --release --locked -p fs-core -p stratusfs-operator
#   mkdir -p dist && cp "$(cargo metadata --format-version 1 | jq -r .target_directory)"/release/{stratusfs,stratusfs-operator} dist/
#   docker build --target runtime-prebuilt -t stratusfs .
#
# The runtime runs as uid 65532; the roles that need root (the CSI node plugin's FUSE mounts) ask
# for it in their pod's securityContext.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p fs-core -p stratusfs-operator \
 && mkdir -p /out \
 && cp target/release/stratusfs target/release/stratusfs-operator /out/

FROM debian:${DEBIAN}-slim AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 stratusfs \
 && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin stratusfs
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["stratusfs", "--help"]

# Binaries built on the host, in dist/ of the build context (BIN_DIR to change it).
FROM base AS runtime-prebuilt
ARG BIN_DIR=dist
COPY ${BIN_DIR}/stratusfs ${BIN_DIR}/stratusfs-operator /usr/local/bin/
USER 65532:65532

# The default: binaries from the builder stage.
FROM base AS runtime
COPY --from=builder /out/ /usr/local/bin/
USER 65532:65532
