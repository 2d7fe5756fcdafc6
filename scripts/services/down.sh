#!/usr/bin/env bash
# Stops the services that scripts/services/up.sh started (their data stays in
# $HERMES_CACHE/state; delete that directory for empty services next time).
#
#   scripts/services/down.sh [cassandra|rabbitmq|sqs ...]     (default: all three)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
services=("$@")
((${#services[@]})) || services=(sqs rabbitmq cassandra)
rc=0
for s in "${services[@]}"; do
  [[ -x "$here/$s.sh" ]] || { echo "down.sh: unknown service '$s' (cassandra, rabbitmq, sqs)" >&2; exit 64; }
  "$here/$s.sh" stop || rc=1
done
exit "$rc"
