#!/usr/bin/env bash
# The fault checker on its own: three gateways, a RabbitMQ and an SQS consumer on the test
# services (started if needed), publishers at a steady rate, Rust and hermes.js clients;
# each fault in turn (SIGSTOP of a gateway, rolling SIGTERM, kill -9 of a gateway, kill -9
# of the consumer, RabbitMQ, SQS server and Cassandra restarts). Prints one line per fault
# and last "faults: N lost, M duplicated across K faults"; exits 1 if anything was lost or
# duplicated. The same checker runs in ./scripts/test.sh (tests/tests/faults.rs).
#
#   scripts/faults.sh [--rate N] [--settle SECONDS] [--only WORDS]...
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hermes/target}"
scripts/services/up.sh >/dev/null
# shellcheck disable=SC1091
source "${HERMES_CACHE:-$HOME/.cache/hermes}/services.env"
cargo build --workspace --bins --locked --quiet
HERMES_GATEWAY_BIN="$CARGO_TARGET_DIR/debug/hermes-gateway" \
HERMES_CONSUMER_BIN="$CARGO_TARGET_DIR/debug/hermes-consumer" \
  exec "$CARGO_TARGET_DIR/debug/faults" "$@"
