# Shared by scripts/bench/centrifugo.sh and scripts/bench/redis.sh (sourced, not run).
# The caller defines log, die, BIN (the server binary) and PIDFILE.

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# True when $1 is a live process running $BIN (a recycled pid is not ours).
pid_alive() {
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$BIN")" ]
}

# The pid of $PIDFILE when that process is alive.
running_pid() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE" 2>/dev/null || true)
  if pid_alive "$pid"; then echo "$pid"; return 0; fi
  return 1
}

# await_up PID LOG WHAT CHECK...: waits up to 30 s until CHECK succeeds; dies (with the log's
# tail) if PID exits first or the time runs out.
await_up() {
  local pid=$1 logfile=$2 what=$3
  shift 3
  local deadline=$((SECONDS + 30))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -20 "$logfile" >&2
      die "$what exited during start (log: $logfile)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill "$pid" 2>/dev/null || true
      die "$what does not answer after 30 s (log: $logfile)"
    fi
    sleep 0.05
  done
}

# Stops the process of $PIDFILE (idempotent).
stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$PIDFILE"
    log "not running"
    return 0
  fi
  terminate "$pid" 10 >/dev/null
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}
