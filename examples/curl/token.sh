#!/usr/bin/env bash
# Ask Hermes for a connect token with curl: POST /v1/tokens (it stores bcrypt(token) for the
# user and room and returns the signed JWT with its expiry).
# Env: HERMES_ADMIN_URL (http://127.0.0.1:8081), HERMES_ADMIN_KEY (required), USER_ID (user-1),
# ROOM_ID (room-1), TOKEN_TTL_SECONDS (3600). Prints {"token","expires_at","user_id","room_id"}.
set -euo pipefail
admin_url="${HERMES_ADMIN_URL:-http://127.0.0.1:8081}"
curl -sS --fail-with-body -X POST "$admin_url/v1/tokens" \
  -H "Authorization: Bearer $HERMES_ADMIN_KEY" \
  -H 'Content-Type: application/json' \
  --data-binary "$(printf '{"user_id":"%s","room_id":"%s","ttl_seconds":%s}' \
    "${USER_ID:-user-1}" "${ROOM_ID:-room-1}" "${TOKEN_TTL_SECONDS:-3600}")"
echo
