#!/usr/bin/env bash
# Publish one notification through the admin API with curl: POST /v1/publish.
# Env: HERMES_ADMIN_URL (http://127.0.0.1:8081), HERMES_ADMIN_KEY (required), ROOM_ID (room-1).
# Prints the message it published.
set -euo pipefail
admin_url="${HERMES_ADMIN_URL:-http://127.0.0.1:8081}"
message=$(printf '{"user_id":"backend","room_id":"%s","data":{"type":"order.shipped","order_id":42,"via":"curl/http"},"id":"curl-%s","published_at":%s}' \
  "${ROOM_ID:-room-1}" "$(date +%s%N)" "$(date +%s%3N)")
# --fail-with-body: a refusal (400 naming the field, 401, 413, 502) exits non-zero and shows why.
curl -sS --fail-with-body -X POST "$admin_url/v1/publish" \
  -H "Authorization: Bearer $HERMES_ADMIN_KEY" \
  -H 'Content-Type: application/json' \
  --data-binary "$message" >/dev/null
echo "$message"
