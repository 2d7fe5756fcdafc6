#!/usr/bin/env bash
# Runs every example in examples/ against real services and prints one line per example:
# the producers (Python, Node, Go, Ruby, curl; RabbitMQ, SQS, POST /v1/publish) each publish
# one notification that a WebSocket connected to a real gateway must receive, and the token
# examples (PyJWT, jsonwebtoken, golang-jwt, ruby-jwt; issued, seed and HERMES_TOKEN_CHECK=off
# tokens) each mint a JWT that must open a WebSocket (examples/examples.test.mjs).
# Idempotent; the toolchains' dependencies are installed once:
#
#   HERMES_GATEWAY_BIN=... HERMES_CONSUMER_BIN=... examples/run.sh [node --test args...]
#
# - Python: a venv in $HERMES_CACHE/venv-examples with python/requirements.txt (PyPI),
#   made again when that file changes.
# - Node: `npm ci` into examples/node_modules when it is missing or older than the lock file.
# - Go: the four programs built into $HERMES_CACHE/examples-go (modules from the Go proxy into
#   the default GOMODCACHE, like the other Go builds here; go.sum is committed).
# - Ruby: Debian's ruby, ruby-bunny, ruby-aws-sdk (version 1) and ruby-jwt, apt-get installed
#   when missing (rubygems.org is not used).
# - Services: RabbitMQ and the SQS server from $HERMES_CACHE/services.env; started with
#   scripts/services/up.sh when that file does not name them.
# Default binaries: ${CARGO_TARGET_DIR:-target}/debug/hermes-gateway and hermes-consumer.
# HERMES_TEST_VERBOSE=1 echoes the processes' logs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"
cache="${HERMES_CACHE:-$HOME/.cache/hermes}"
say() { echo "examples/run.sh: $*" >&2; }

# 1. Python: one venv, made again when the requirements change.
venv="$cache/venv-examples"
stamp="$venv/.hermes-$(sha256sum "$here/python/requirements.txt" | cut -c1-16)"
if [[ ! -f "$stamp" || ! -x "$venv/bin/python" ]]; then
  say "installing python/requirements.txt into $venv (once)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$here/python/requirements.txt" ||
    { rm -rf "$venv"; say "pip install failed"; exit 1; }
  touch "$stamp"
fi
export HERMES_EXAMPLES_PYTHON="$venv/bin/python"

# 2. Node: npm ci when node_modules is stale.
npm_ci_if_stale "$here"

# 3. Go: build the programs (go build is a no-op when nothing changed).
command -v go >/dev/null || { say "go is required (README.md, Prerequisites)"; exit 1; }
export HERMES_EXAMPLES_GO_BIN="$cache/examples-go"
mkdir -p "$HERMES_EXAMPLES_GO_BIN"
(cd "$here/go" && GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly" go build -o "$HERMES_EXAMPLES_GO_BIN/" ./...) ||
  { say "go build failed"; exit 1; }

# 4. Ruby from Debian, with the libraries it packages.
ruby_packages=(ruby ruby-bunny ruby-aws-sdk ruby-jwt)
missing=()
for p in "${ruby_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  say "apt-get install ${missing[*]}"
  apt_install "${missing[@]}" || { say "apt-get install ${missing[*]} failed"; exit 1; }
fi

# 5. The services and the binaries.
services_env="$cache/services.env"
if [[ -z "${HERMES_TEST_AMQP_URL:-}" || -z "${HERMES_TEST_SQS_ENDPOINT:-}" ]]; then
  # shellcheck disable=SC1090
  [[ -f "$services_env" ]] && source "$services_env"
fi
if [[ -z "${HERMES_TEST_AMQP_URL:-}" || -z "${HERMES_TEST_SQS_ENDPOINT:-}" ]]; then
  "$repo/scripts/services/up.sh" rabbitmq sqs
  # shellcheck disable=SC1090
  source "$services_env"
fi
export HERMES_TEST_AMQP_URL HERMES_TEST_SQS_ENDPOINT
HERMES_GATEWAY_BIN="$(gateway_bin "$repo")"
consumer="${HERMES_CONSUMER_BIN:-$(dirname "$HERMES_GATEWAY_BIN")/hermes-consumer}"
[[ -x "$consumer" ]] || { say "consumer binary not found: $consumer (build it, or set HERMES_CONSUMER_BIN)"; exit 1; }
export HERMES_GATEWAY_BIN HERMES_CONSUMER_BIN="$consumer"

# 6. The tests, then one line per example.
HERMES_EXAMPLES_REPORT="$(mktemp -t hermes-examples.XXXXXX)"
export HERMES_EXAMPLES_REPORT
trap 'rm -f "$HERMES_EXAMPLES_REPORT"' EXIT
cd "$here"
rc=0
npm test -- "$@" || rc=$?
echo
echo "examples (language, path, what it published or minted, received):"
sort "$HERMES_EXAMPLES_REPORT"
exit "$rc"
