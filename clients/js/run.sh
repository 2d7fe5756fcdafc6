#!/usr/bin/env bash
# @hermes/client's own tests, in Node (no gateway, no browser; tests/browser/run.sh runs
# the client in headless Chromium against a real gateway). Idempotent.
#
#   clients/js/run.sh [node --test args...]
#
# - `npm ci` (typescript, pinned in package-lock.json) when node_modules is missing or
#   older than the lock file.
# - `node --test`: the decision logic against a scripted WebSocket; hermes.mjs generated
#   from hermes.js; `npm pack` installed offline into a fresh project, then `require`d and
#   `import`ed; the TypeScript examples under `tsc --noEmit`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

npm_ci_if_stale "$here"
cd "$here"
exec npm test -- "$@"
