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
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

# 1. Chromium from Debian (never a browser download by playwright).
if [ ! -x /usr/bin/chromium ]; then
  echo "run.sh: installing chromium from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y chromium
fi

# 2. Node dependencies, only when node_modules is missing or older than the lock file.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm_ci_if_stale "$here"

# 3. The gateway binary.
HERMES_GATEWAY_BIN="$(gateway_bin "$repo")"
export HERMES_GATEWAY_BIN

# 4. The tests (node --test exits non-zero on any failure).
cd "$here"
exec npm test -- "$@"
