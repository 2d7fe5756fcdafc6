#!/usr/bin/env bash
# The API Gateway management SDKs, unchanged but for their endpoint, against a real
# `hermes-gateway standalone` that accepts AWS Signature Version 4: boto3's
# `apigatewaymanagementapi` client (PyPI) and `@aws-sdk/client-apigatewaymanagementapi`
# (npm). Idempotent; safe to run again and again.
#
#   HERMES_GATEWAY_BIN=/path/to/hermes-gateway tests/sdk/run.sh [node --test args...]
#
# - Python: a venv in $HERMES_CACHE/venv-sdk with boto3==1.44.18 (HERMES_BOTO3_VERSION
#   overrides), created once.
# - Node: `npm ci` into tests/sdk/node_modules when it is missing or older than the lock file.
# - The tests (node's runner prints `# pass N` / `# fail N`) start the gateway, open
#   WebSockets and call both SDKs (the Python one through tests/sdk/boto3_calls.py).
# Default binary: ${CARGO_TARGET_DIR:-target}/debug/hermes-gateway (relative to the repo root).
# HERMES_TEST_VERBOSE=1 echoes the gateway's logs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"
cache="${HERMES_CACHE:-$HOME/.cache/hermes}"
venv="$cache/venv-sdk"
boto3_version="${HERMES_BOTO3_VERSION:-1.44.18}"

# 1. boto3 in its own cached venv.
if [[ ! -f "$venv/.hermes-boto3-$boto3_version" || ! -x "$venv/bin/python" ]]; then
  echo "run.sh: installing boto3==$boto3_version into $venv (once)" >&2
  command -v python3 >/dev/null || { echo "run.sh: python3 is required" >&2; exit 1; }
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "boto3==$boto3_version" ||
    { rm -rf "$venv"; echo "run.sh: pip install boto3==$boto3_version failed" >&2; exit 1; }
  touch "$venv/.hermes-boto3-$boto3_version"
fi
export HERMES_SDK_PYTHON="$venv/bin/python"

# 2. Node dependencies, only when node_modules is missing or older than the lock file.
npm_ci_if_stale "$here"

# 3. The gateway binary.
HERMES_GATEWAY_BIN="$(gateway_bin "$repo")"
export HERMES_GATEWAY_BIN

# 4. The tests (node --test exits non-zero on any failure).
cd "$here"
exec npm test -- "$@"
