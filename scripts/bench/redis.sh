#!/usr/bin/env bash
# Redis, the broker of the Centrifugo cluster in benchmark P7 (Centrifugo's `redis` engine):
# Debian's redis-server, run on loopback as our own process (no persistence, no systemd).
#
# Usage: scripts/bench/redis.sh build     install Debian's redis-server if it is missing
#                                         (apt-get), print the binary's path and version
#        scripts/bench/redis.sh start     start it, wait until it answers PING, write the pid
#                                         file (idempotent: a running one is left alone)
#        scripts/bench/redis.sh restart   stop, then start an empty one
#        scripts/bench/redis.sh stop      stop the process of the pid file
#        scripts/bench/redis.sh env       print HERMES_REDIS_URL=redis://ADDRESS:PORT
#
# Environment:
#   HERMES_CACHE         cache root (default ~/.cache/hermes)
#   HERMES_REDIS_STATE   where the config, pid file and log go (default $HERMES_CACHE/state/redis)
#   HERMES_REDIS_ADDRESS listen address (default 127.0.0.1)
#   HERMES_REDIS_PORT    port (default 16379, away from a system Redis on 6379)
set -euo pipefail

CACHE=${HERMES_CACHE:-$HOME/.cache/hermes}
STATE=${HERMES_REDIS_STATE:-$CACHE/state/redis}
ADDRESS=${HERMES_REDIS_ADDRESS:-127.0.0.1}
PORT=${HERMES_REDIS_PORT:-16379}
BIN=/usr/bin/redis-server
CLI=/usr/bin/redis-cli
CONFIG=$STATE/redis.conf
PIDFILE=$STATE/redis.pid
LOG=$STATE/redis.log

log() { printf '[redis] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build() {
  if [ ! -x "$BIN" ] || [ ! -x "$CLI" ]; then
    log "installing Debian's redis-server (once)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q redis-server >/dev/null 2>&1; then
      apt-get update -q >/dev/null
      apt-get install -y -q redis-server >/dev/null
    fi
    [ -x "$BIN" ] || die "redis-server is still missing after apt-get install"
  fi
  log "$("$BIN" --version)"
  echo "$BIN"
}

write_config() {
  mkdir -p "$STATE"
  # A broker only: no snapshots, no append-only file, nothing kept across restarts.
  cat >"$CONFIG" <<EOF
bind $ADDRESS
port $PORT
protected-mode yes
daemonize no
save ""
appendonly no
dir $STATE
logfile $LOG
loglevel warning
maxclients 10000
EOF
}

answers() { "$CLI" -h "$ADDRESS" -p "$PORT" ping 2>/dev/null | grep -q PONG; }

start() {
  [ -x "$BIN" ] || build >/dev/null
  local pid
  if pid=$(running_pid); then
    log "already running (pid $pid) on $ADDRESS:$PORT"
    echo "$pid"
    return 0
  fi
  if answers; then
    die "something not started by this script answers on $ADDRESS:$PORT (set HERMES_REDIS_PORT)"
  fi
  # A pid file of a dead process is never read as the new one.
  rm -f "$PIDFILE"
  write_config
  : >"$LOG"
  nohup "$BIN" "$CONFIG" >/dev/null 2>&1 </dev/null &
  pid=$!
  await_up "$pid" "$LOG" "redis-server on $ADDRESS:$PORT" answers
  echo "$pid" >"$PIDFILE.tmp" && mv -f "$PIDFILE.tmp" "$PIDFILE"
  log "running (pid $pid) on redis://$ADDRESS:$PORT"
  echo "$pid"
}

case "${1:-build}" in
  build) build ;;
  start) start ;;
  restart)
    stop
    start
    ;;
  stop) stop ;;
  env) echo "HERMES_REDIS_URL=redis://$ADDRESS:$PORT" ;;
  *) die "usage: $0 build|start|restart|stop|env" ;;
esac
