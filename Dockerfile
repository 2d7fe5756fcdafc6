# syntax=docker/dockerfile:1
#
# One image, both binaries: hermes-gateway and hermes-consumer.
#
#   docker build -t hermes:0.1.0 .
#
# Stages: chef (the Rust toolchain + cargo-chef) → planner (a recipe of the dependency
# graph, from the manifests only) → builder (dependencies compiled from the recipe in
# their own layer, cached until Cargo.toml/Cargo.lock change; then the workspace) →
# runtime (distroless: glibc and libgcc, no shell, no package manager, user 65532).
# See docs/kubernetes.md ("Images").

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
ARG CARGO_CHEF_VERSION=^0.1
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The vendored, patched actix-http ([patch.crates-io]) is a dependency: its real source must
# be there when the dependencies are cooked.
COPY vendor vendor
# Dependencies only: this layer is reused as long as the recipe (manifests, lock file) is
# the same, so a change of Hermes' own code recompiles Hermes alone.
RUN cargo chef cook --release --locked --recipe-path recipe.json \
      --bin hermes-gateway --bin hermes-consumer
COPY . .
RUN cargo build --release --locked --bin hermes-gateway --bin hermes-consumer \
 && mkdir -p /out \
 && cp target/release/hermes-gateway target/release/hermes-consumer /out/

# Same Debian release as the builder, so the glibc the binaries link against is there.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="hermes" \
      org.opencontainers.image.description="Hermes WebSocket push service: hermes-gateway and hermes-consumer" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/hermes-gateway /out/hermes-consumer /usr/local/bin/
USER 65532:65532
# 8080 public (WebSockets), 8081 internal (admin API, deliver API, metrics, probes),
# 8082 consumer (metrics, probes).
EXPOSE 8080 8081 8082
# The chart sets the command of each container: `hermes-gateway serve` or
# `hermes-consumer`. Standalone in a container:
#   docker run -p 8080:8080 -p 8081:8081 -e HERMES_LISTEN=0.0.0.0:8080 \
#     -e HERMES_INTERNAL_LISTEN=0.0.0.0:8081 hermes:0.1.0 hermes-gateway standalone
CMD ["hermes-gateway", "serve"]
