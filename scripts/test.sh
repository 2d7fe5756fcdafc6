#!/usr/bin/env bash
# Runs every test of Hermes on this machine, installing what the tests need first.
#
#   ./scripts/test.sh
#
# Steps: start the real services (Cassandra, RabbitMQ, an SQS server: scripts/services/up.sh,
# installed from the package registries on first use), formatting, clippy, the Rust unit,
# integration and end-to-end tests (they start the real hermes-gateway and hermes-consumer
# binaries against those services and speak WebSocket to the gateways; the consumer's
# Kubernetes tests also use the local kube-apiserver, started before them, and the chart's
# PromQL is evaluated on a Prometheus built from its Go module), then the AWS
# SDKs' ApiGatewayManagementApi clients against a real gateway (tests/sdk: boto3 from PyPI,
# @aws-sdk/client-apigatewaymanagementapi from npm), then the producer and token examples in
# Python, Node, Go, Ruby and curl (examples/run.sh), then the browser client package's own
# tests (clients/js: node --test, npm pack, tsc from npm), then the browser tests (headless
# Chromium from Debian driven by playwright-core). The Helm chart is linted
# and rendered with every ci/*-values.yaml (helm built from its Go module, cached) and
# k8s/hermes.yaml is checked to be current; every rendered manifest is applied as a
# server-side dry run to a real kube-apiserver built from its Go module
# (scripts/kube/control-plane.sh, cached). Last, the chart is installed for real on a
# one-node cluster on this machine (scripts/kube/node-test.sh: the image from the release
# binaries, helm install, helm test). Build outputs are cached outside the
# checkout in $CARGO_TARGET_DIR (default ~/.cache/hermes/target), so a second run skips
# the work. The last line sums up every runner: "N passed, N failed".
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hermes/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Incremental artefacts only help edit-compile loops; in a shared cache they grow without
# bound (22 GB seen here).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
mkdir -p "$CARGO_TARGET_DIR"
# Every checkout path leaves its own copies of the test binaries in the shared cache; past
# HERMES_TARGET_MAX_GB (default 20) the debug profile is dropped and rebuilt (a few minutes)
# rather than letting the disk fill (68 GB and "No space left on device" seen here).
debug_gb=$(( $(du -sk "$CARGO_TARGET_DIR/debug" 2>/dev/null | cut -f1 || echo 0) / 1048576 ))
if [ "$debug_gb" -ge "${HERMES_TARGET_MAX_GB:-20}" ]; then
  echo "test.sh: $CARGO_TARGET_DIR/debug holds ${debug_gb} GB; removing it before the build"
  rm -rf "$CARGO_TARGET_DIR/debug"
fi
log="$(mktemp -t hermes-test.XXXXXX)"
trap 'rm -f "$log"' EXIT

step() {
  echo
  echo "==> $1"
  shift
  local started=$SECONDS
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "==> done in $((SECONDS - started)) s (exit $rc)"
  return "$rc"
}

# What the rest cannot install itself (Debian with apt as root, Rust, Go, Node, Python):
# missing pieces stop the run now, named (README.md, Prerequisites).
step "prerequisites" scripts/prereqs.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "services" scripts/services/up.sh
# shellcheck disable=SC1091
source "${HERMES_CACHE:-$HOME/.cache/hermes}/services.env"

# The Kubernetes API server (built from its Go module on first use, ~9 min cold) and helm:
# the consumer's Kubernetes tests (tests/tests/kube_consumer.rs) run against them, and the
# dry-run step below reuses the same API server.
kube_tools() {
  scripts/kube/control-plane.sh start && scripts/kube/helm.sh build
}
step "kubernetes api server" kube_tools
eval "$(scripts/kube/control-plane.sh env)"
HERMES_TEST_KUBECONFIG="$KUBECONFIG"
HERMES_HELM="$(scripts/kube/helm.sh path)"
export HERMES_TEST_KUBECONFIG HERMES_KUBE_SERVER HERMES_KUBECTL HERMES_HELM

# Prometheus and promtool from their Go module (cached by version; about 8 min cold, seconds
# warm): tests/tests/prometheus_queries.rs evaluates the dashboard's queries and the alert
# rules on it.
step "prometheus" scripts/prometheus.sh build
HERMES_PROMETHEUS_DIR="$(scripts/prometheus.sh path)"
export HERMES_PROMETHEUS_DIR

step "format" cargo fmt --all -- --check
step "vendored crates" scripts/vendor.sh check
step "dependencies pinned once" scripts/deps-check.sh
step "clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "build" cargo build --workspace --bins --locked
# Every test creates its own keyspace on the one Cassandra node and its own queues on the
# one RabbitMQ node. Hundreds of keyspaces fill Cassandra's heap (per-table state) until it
# spends most of a core collecting garbage, and thousands of idle queues are work for the
# broker too, so what earlier runs left goes now and this run's when it ends
# (tests/src/bin/drop-keyspaces.rs, scripts/services/rabbitmq.sh delete-queues).
drop_test_state() {
  "$CARGO_TARGET_DIR/debug/drop-keyspaces" e2e_ hermes_test_ || return
  local queues
  queues=$(scripts/services/rabbitmq.sh delete-queues hermes-e2e-) || return
  echo "deleted $queues test queues"
}
step "stale test keyspaces and queues" drop_test_state
trap 'step "test keyspaces and queues" drop_test_state || true; rm -f "$log"' EXIT
step "rust tests" cargo test --workspace --locked
step "chart" scripts/kube/helm.sh lint
step "manifests" scripts/kube/render-manifests.sh --check
step "api server dry run" scripts/kube/dry-run.sh
step "api gateway sdks" env HERMES_GATEWAY_BIN="$CARGO_TARGET_DIR/debug/hermes-gateway" tests/sdk/run.sh
# The producer and token examples of docs/publishing.md and docs/tokens.md, each run against a
# real gateway and real consumers of RabbitMQ and SQS (Python from PyPI, Node from npm, Go
# modules, Ruby from Debian; about 15 s warm).
step "examples" env HERMES_GATEWAY_BIN="$CARGO_TARGET_DIR/debug/hermes-gateway" \
  HERMES_CONSUMER_BIN="$CARGO_TARGET_DIR/debug/hermes-consumer" examples/run.sh
step "js client" clients/js/run.sh
step "browser tests" env HERMES_GATEWAY_BIN="$CARGO_TARGET_DIR/debug/hermes-gateway" tests/browser/run.sh
# The chart installed for real (docs/dev/node.md, docs/dev/image.md): a one-node Kubernetes
# cluster on this machine, the image built from the release binaries without a Docker engine
# and checked against the Dockerfile, helm install in both consumer modes, every pod Ready,
# helm test; the node is removed afterwards. Warm about 1.5 min; cold it adds the release
# build and the node's Go builds.
kube_node() { scripts/kube/node-test.sh; }
step "kubernetes node" kube_node

# One closing line over every runner (cargo's "test result:" lines, helm's "helm: N passed,
# N failed" and node's "# pass"/"# fail").
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
helm_pass=$(grep -E '^(helm|dry-run|vendor|deps|node): [0-9]+ passed' "$log" | awk '{s+=$2} END {print s+0}')
helm_fail=$(grep -Eo '^(helm|dry-run|vendor|deps|node): [0-9]+ passed, [0-9]+ failed' "$log" | awk '{s+=$4} END {print s+0}')
node_pass=$(grep -E '^# pass [0-9]+' "$log" | awk '{s+=$3} END {print s+0}')
node_fail=$(grep -E '^# fail [0-9]+' "$log" | awk '{s+=$3} END {print s+0}')
echo
echo "$((passed + helm_pass + node_pass)) passed, $((failed + helm_fail + node_fail)) failed"
