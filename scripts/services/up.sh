#!/usr/bin/env bash
# Starts the real services Hermes's tests use, installing them first if needed (idempotent: a
# service that already runs and answers is left alone):
#   cassandra  Apache Cassandra 5.0 (Maven Central)  CQL   127.0.0.1:9042  (cassandra.sh)
#   rabbitmq   RabbitMQ (Debian)                     AMQP  127.0.0.1:5672  (rabbitmq.sh)
#   sqs        moto's SQS server (PyPI)              HTTP  127.0.0.1:9324  (sqs.sh)
#
#   scripts/services/up.sh [cassandra|rabbitmq|sqs ...]     (default: all three)
#   source "${HERMES_CACHE:-$HOME/.cache/hermes}/services.env"
#
# The services start in parallel (HERMES_SERVICES_SERIAL=1 starts them one after the other).
# Each one's output and time is printed when it is done, and the environment the tests read is
# written to $HERMES_CACHE/services.env (export lines, for `source`). Fails (exit 1) if any
# service does not come up, after printing why. scripts/services/down.sh stops them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HERMES_CACHE:-$HOME/.cache/hermes}"
mkdir -p "$cache"
services=("$@")
((${#services[@]})) || services=(cassandra rabbitmq sqs)
for s in "${services[@]}"; do
  [[ -x "$here/$s.sh" ]] || { echo "up.sh: unknown service '$s' (cassandra, rabbitmq, sqs)" >&2; exit 64; }
done

out="$(mktemp -d -t hermes-services.XXXXXX)"
trap 'rm -rf "$out"' EXIT
started=$SECONDS

run_one() { # service
  local t=$SECONDS rc=0
  "$here/$1.sh" start >"$out/$1.log" 2>&1 || rc=$?
  echo "$((SECONDS - t))" >"$out/$1.time"
  return "$rc"
}

declare -A pids=()
failed=()
if [[ "${HERMES_SERVICES_SERIAL:-0}" == 1 ]]; then
  for s in "${services[@]}"; do
    run_one "$s" || failed+=("$s")
    cat "$out/$s.log"
  done
else
  for s in "${services[@]}"; do
    run_one "$s" &
    pids[$s]=$!
  done
  for s in "${services[@]}"; do
    wait "${pids[$s]}" || failed+=("$s")
    cat "$out/$s.log"
  done
fi

echo
echo "services (total $((SECONDS - started)) s):"
for s in "${services[@]}"; do
  status="up"
  [[ " ${failed[*]} " == *" $s "* ]] && status="FAILED"
  printf '  %-10s %-7s %4s s   %s\n' "$s" "$status" "$(cat "$out/$s.time" 2>/dev/null || echo '?')" \
    "$("$here/$s.sh" env | head -n 1)"
done

if ((${#failed[@]})); then
  echo "up.sh: failed to start: ${failed[*]} (see the output above)" >&2
  exit 1
fi

# The environment for the tests, as export lines (values quoted for the shell).
envfile="$cache/services.env"
{
  echo "# Written by scripts/services/up.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ); source this file."
  for s in cassandra rabbitmq sqs; do
    "$here/$s.sh" env
  done | while IFS='=' read -r key value; do
    printf 'export %s=%q\n' "$key" "$value"
  done
} >"$envfile.tmp"
mv -f "$envfile.tmp" "$envfile"
echo "environment for the tests: $envfile"
sed -e '/^#/d' -e 's/^/  /' "$envfile"
