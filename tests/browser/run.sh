#!/usr/bin/env bash
# Browser tests: headless Debian Chromium + playwright-core against a real
# `hermes-gateway standalone`. Idempotent; safe to run again and again.
#
#   HERMES_GATEWAY_BIN=/path/to/hermes-gateway tests/browser/run.sh [node --test args...]
#
# Default binary: ${CARGO_TARGET_DIR:-target}/debug/hermes-gateway (relative to the repo root).
# HERMES_TEST_VERBOSE=1 echoes the gateway's logs and the pages' consoles.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

# 1. Chromium from Debian (never a browser download by playwright).
if [ ! -x /usr/bin/chromium ]; then
  echo "run.sh: installing chromium from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y chromium
fi

# 2. Node dependencies, only when node_modules is missing or older than the lock file.
cd "$here"
stamp="node_modules/.package-lock.json"
if [ ! -d node_modules ] || [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ] || [ package.json -nt "$stamp" ]; then
  echo "run.sh: npm ci" >&2
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
fi

# 3. The gateway binary.
bin="${HERMES_GATEWAY_BIN:-${CARGO_TARGET_DIR:-target}/debug/hermes-gateway}"
case "$bin" in /*) ;; *) bin="$repo/$bin" ;; esac
if [ ! -x "$bin" ]; then
  echo "run.sh: gateway binary not found or not executable: $bin (build it, or set HERMES_GATEWAY_BIN)" >&2
  exit 1
fi
export HERMES_GATEWAY_BIN="$bin"

# 4. The tests (node --test exits non-zero on any failure).
exec npm test -- "$@"
