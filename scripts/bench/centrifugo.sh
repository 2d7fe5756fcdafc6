#!/usr/bin/env bash
# Centrifugo, the comparison server of the benchmarks, built from its Go module with the
# Go toolchain on the machine (module proxy only, no release download), cached by version
# outside the checkout, and run on loopback with real JWT auth.
#
# Usage: scripts/bench/centrifugo.sh build   build (or reuse) centrifugo, print its path
#                                            and the time the build took
#        scripts/bench/centrifugo.sh start   write a config, start it, wait until it
#                                            answers, write the pid file (idempotent)
#        scripts/bench/centrifugo.sh stop    stop the process of the pid file (and the
#                                            nodes and Redis of start-cluster)
#        scripts/bench/centrifugo.sh start-cluster
#                                            P7: HERMES_CENTRIFUGO_NODES nodes on consecutive
#                                            ports from the HTTP port, with the Redis engine on a
#                                            fresh Redis (scripts/bench/redis.sh restart); prints
#                                            `redis <url>`, then `node <i> <pid> <ws url>
#                                            <api url>` per node
#        scripts/bench/centrifugo.sh env     print the variables a client needs
#                                            (shell syntax, for `eval`)
#
# Environment:
#   HERMES_CACHE                cache root (default ~/.cache/hermes); the binary goes to
#                               $HERMES_CACHE/bin/centrifugo-<version>/centrifugo
#   HERMES_CENTRIFUGO_VERSION   version to build (default below)
#   HERMES_CENTRIFUGO_STATE     where the config, pid file and log go
#                               (default $HERMES_CACHE/state/centrifugo)
#   HERMES_CENTRIFUGO_ADDRESS   listen address (default 127.0.0.1)
#   HERMES_CENTRIFUGO_PORT      HTTP port: WebSocket, API and health (default 18000)
#   HERMES_CENTRIFUGO_PING_INTERVAL, HERMES_CENTRIFUGO_PONG_TIMEOUT
#                               heartbeat in seconds (default 25 and 8, Centrifugo's own)
#   HERMES_CENTRIFUGO_NODES     nodes of start-cluster (default 3); Redis: see redis.sh
#   Go: the default GOMODCACHE/GOCACHE are used (they persist on the machine).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${HERMES_CACHE:-$HOME/.cache/hermes}
VERSION=${HERMES_CENTRIFUGO_VERSION:-v6.9.1}
MOD=github.com/centrifugal/centrifugo/v6
BIN_DIR=$CACHE/bin/centrifugo-$VERSION
BIN=$BIN_DIR/centrifugo
STATE=${HERMES_CENTRIFUGO_STATE:-$CACHE/state/centrifugo}
ADDRESS=${HERMES_CENTRIFUGO_ADDRESS:-127.0.0.1}
PORT=${HERMES_CENTRIFUGO_PORT:-18000}
# Server → client heartbeat (Centrifugo's default is 25 s; the benchmarks give Hermes the same).
PING_INTERVAL=${HERMES_CENTRIFUGO_PING_INTERVAL:-25}
PONG_TIMEOUT=${HERMES_CENTRIFUGO_PONG_TIMEOUT:-8}
NODES=${HERMES_CENTRIFUGO_NODES:-3}
CONFIG=$STATE/config.json
PIDFILE=$STATE/centrifugo.pid
LOG=$STATE/centrifugo.log
SECRETS=$STATE/secrets.env
# The namespace of the benchmark channels: `bench:room`, ...
NAMESPACE=bench

log() { printf '[centrifugo] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GO=$(command -v go || true)
[ -n "$GO" ] || GO=/usr/local/go/bin/go

build() {
  if [ -x "$BIN" ] && "$BIN" version 2>/dev/null | grep -q "${VERSION#v}"; then
    log "reusing $BIN ($("$BIN" version 2>/dev/null | head -1))"
    echo "$BIN"
    return 0
  fi
  [ -x "$GO" ] || die "no go toolchain (looked on PATH and /usr/local/go/bin/go)"
  mkdir -p "$BIN_DIR"
  local start tmp gomod need have
  start=$(date +%s.%N)
  # go.mod of that release, from the module proxy (cached in GOMODCACHE): if it needs a
  # newer Go than the machine's, use the approved toolchain from the module proxy.
  gomod=$("$GO" mod download -json "$MOD@$VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [ -f "$gomod" ] || die "cannot download $MOD@$VERSION"
  need=$(awk '$1 == "go" { print $2; exit }' "$gomod")
  have=$("$GO" env GOVERSION | sed 's/^go//')
  if [ -n "$need" ] && [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
    log "$MOD@$VERSION needs go $need, the machine has $have: GOTOOLCHAIN=go1.27.3"
    export GOTOOLCHAIN=go1.27.3
  fi
  log "building centrifugo $VERSION with $("$GO" env GOVERSION) (first time: several minutes)"
  # Build into a temporary directory and move into place, so an interrupted build never
  # leaves a half-written binary where the cache check looks.
  tmp=$(mktemp -d "$BIN_DIR/.build.XXXXXX")
  # The version string is set at link time, as Centrifugo's own release build does.
  if ! GOBIN=$tmp CGO_ENABLED=0 "$GO" install -trimpath \
    -ldflags "-s -w -X $MOD/internal/build.Version=${VERSION#v}" "$MOD@$VERSION"; then
    rm -rf "$tmp"
    die "go install $MOD@$VERSION failed"
  fi
  mv -f "$tmp/centrifugo" "$BIN"
  rm -rf "$tmp"
  log "built $("$BIN" version 2>/dev/null | head -1) in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
  echo "$BIN"
}

# Secrets are generated once per state directory, so `env` and `start` agree.
secrets() {
  mkdir -p "$STATE"
  if [ ! -s "$SECRETS" ]; then
    umask 077
    {
      echo "CENTRIFUGO_TOKEN_HMAC_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
      echo "CENTRIFUGO_API_KEY=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    } >"$SECRETS"
  fi
  # shellcheck disable=SC1090
  . "$SECRETS"
}

# Centrifugo v6 layout (internal/configtypes in the module): client.token.hmac_secret_key,
# client.allowed_origins, http_api.key, channel.namespaces, log.level, http_server; the
# cluster adds engine (configtypes.Engine: type, redis.address).
write_config() { # [config file] [port] [engine line, with its trailing comma]
  local file=${1:-$CONFIG} port=${2:-$PORT} engine=${3:-}
  secrets
  cat >"$file" <<EOF
{
  "log": { "level": "error" },
  "http_server": { "address": "$ADDRESS", "port": $port },
  $engine
  "health": { "enabled": true },
  "client": {
    "token": { "hmac_secret_key": "$CENTRIFUGO_TOKEN_HMAC_SECRET" },
    "allowed_origins": ["http://127.0.0.1", "http://localhost"],
    "ping_interval": "${PING_INTERVAL}s",
    "pong_timeout": "${PONG_TIMEOUT}s"
  },
  "http_api": { "key": "$CENTRIFUGO_API_KEY" },
  "channel": {
    "namespaces": [
      { "name": "$NAMESPACE", "allow_subscribe_for_client": true }
    ]
  }
}
EOF
}

start() {
  [ -x "$BIN" ] || build >/dev/null
  local pid
  if pid=$(running_pid); then
    log "already running (pid $pid)"
    echo "$pid"
    return 0
  fi
  # A pid file of a dead process is never read as the new one.
  rm -f "$PIDFILE"
  write_config
  nohup "$BIN" --config "$CONFIG" >"$LOG" 2>&1 </dev/null &
  pid=$!
  await_up "$pid" "$LOG" "centrifugo on http://$ADDRESS:$PORT" curl -fsS "http://$ADDRESS:$PORT/health"
  echo "$pid" >"$PIDFILE.tmp" && mv -f "$PIDFILE.tmp" "$PIDFILE"
  log "running (pid $pid) on http://$ADDRESS:$PORT, config $CONFIG"
  echo "$pid"
}

# The nodes of start-cluster: config, pid file and log per node in the state directory.
stop_cluster() {
  local f pid stopped=0
  for f in "$STATE"/cluster-*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null || true)
    if pid_alive "$pid"; then
      terminate "$pid" 10 >/dev/null
      stopped=$((stopped + 1))
    fi
    rm -f "$f"
  done
  [ "$stopped" -eq 0 ] || log "stopped $stopped cluster nodes"
  if [ -f "${HERMES_REDIS_STATE:-$CACHE/state/redis}/redis.pid" ]; then
    "$HERE/redis.sh" stop
  fi
}

start_cluster() {
  [ -x "$BIN" ] || build >/dev/null
  [ "$NODES" -ge 1 ] 2>/dev/null || die "HERMES_CENTRIFUGO_NODES must be a number ≥ 1"
  stop
  stop_cluster
  # A fresh, empty broker for every cluster.
  "$HERE/redis.sh" restart >/dev/null
  local redis_url i port pid conf nlog
  redis_url=$("$HERE/redis.sh" env | sed -n 's/^HERMES_REDIS_URL=//p')
  [ -n "$redis_url" ] || die "no HERMES_REDIS_URL from redis.sh env"
  echo "redis $redis_url"
  for i in $(seq 0 $((NODES - 1))); do
    port=$((PORT + i))
    conf=$STATE/cluster-$i.json
    nlog=$STATE/cluster-$i.log
    rm -f "$STATE/cluster-$i.pid"
    write_config "$conf" "$port" "\"engine\": { \"type\": \"redis\", \"redis\": { \"address\": [\"$redis_url\"] } },"
    nohup "$BIN" --config "$conf" >"$nlog" 2>&1 </dev/null &
    pid=$!
    await_up "$pid" "$nlog" "cluster node $i on http://$ADDRESS:$port" curl -fsS "http://$ADDRESS:$port/health"
    echo "$pid" >"$STATE/cluster-$i.pid"
    log "cluster node $i running (pid $pid) on http://$ADDRESS:$port, engine redis at $redis_url"
    echo "node $i $pid ws://$ADDRESS:$port/connection/websocket http://$ADDRESS:$port/api"
  done
}

print_env() {
  secrets
  local pid=""
  pid=$(running_pid || true)
  cat <<EOF
CENTRIFUGO_BIN=$BIN
CENTRIFUGO_VERSION=$VERSION
CENTRIFUGO_PID=$pid
CENTRIFUGO_WS_URL=ws://$ADDRESS:$PORT/connection/websocket
CENTRIFUGO_API_URL=http://$ADDRESS:$PORT/api
CENTRIFUGO_API_KEY=$CENTRIFUGO_API_KEY
CENTRIFUGO_TOKEN_HMAC_SECRET=$CENTRIFUGO_TOKEN_HMAC_SECRET
CENTRIFUGO_NAMESPACE=$NAMESPACE
EOF
}

case "${1:-build}" in
  build) build ;;
  start) start ;;
  stop)
    stop
    stop_cluster
    ;;
  start-cluster) start_cluster ;;
  env) print_env ;;
  *) die "usage: $0 build|start|stop|start-cluster|env" ;;
esac
