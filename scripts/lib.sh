# Process helpers shared by the scripts that start servers (scripts/services/*.sh,
# scripts/kube/control-plane.sh, scripts/bench/*.sh). Sourced, not run; each caller defines
# its own `say`/`log` for messages.

# pidfile_pid FILE PATTERN...: prints the pid in FILE when that process is alive and its
# command line contains every PATTERN, so a pid recycled by an unrelated process is not
# taken for ours.
pidfile_pid() {
  local file=$1 pid cmdline pattern
  shift
  [[ -s "$file" ]] || return 1
  pid="$(cat "$file" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  for pattern in "$@"; do
    [[ "$cmdline" == *"$pattern"* ]] || return 1
  done
  echo "$pid"
}

# terminate PID TIMEOUT_SECONDS [SIGNAL]: sends SIGNAL (TERM), waits up to TIMEOUT_SECONDS
# for the process to exit, then sends SIGKILL and waits for it. Prints the seconds waited.
terminate() {
  local pid=$1 timeout=$2 signal=${3:-TERM} waited=0
  kill -s "$signal" "$pid" 2>/dev/null || { echo 0; return 0; }
  while kill -0 "$pid" 2>/dev/null; do
    if ((waited == timeout * 10)); then
      echo "process $pid still running after $timeout s; sending SIGKILL" >&2
      kill -s KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  echo $((waited / 10))
}

# port_open PORT: true when something accepts connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# apt_install PKG...: installs Debian packages quietly, refreshing the package index only
# when the first attempt fails (a fresh machine's index may be empty or stale).
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "$@" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }
}

# npm_ci_if_stale DIR: `npm ci` in DIR when its node_modules is missing or older than its
# package.json or package-lock.json (the node test runners' packages, cached in place).
npm_ci_if_stale() {
  local dir=$1 stamp="$1/node_modules/.package-lock.json"
  if [[ ! -f "$stamp" || "$dir/package-lock.json" -nt "$stamp" || "$dir/package.json" -nt "$stamp" ]]; then
    echo "$(basename "$dir")/run.sh: npm ci" >&2
    (cd "$dir" && npm ci --no-audit --no-fund)
  fi
}

# gateway_bin REPO: prints the hermes-gateway binary the node test runners start:
# $HERMES_GATEWAY_BIN, else ${CARGO_TARGET_DIR:-target}/debug/hermes-gateway, relative paths
# taken from REPO; fails naming it when it is not there.
gateway_bin() {
  local bin="${HERMES_GATEWAY_BIN:-${CARGO_TARGET_DIR:-target}/debug/hermes-gateway}"
  case "$bin" in /*) ;; *) bin="$1/$bin" ;; esac
  if [[ ! -x "$bin" ]]; then
    echo "gateway binary not found or not executable: $bin (build it, or set HERMES_GATEWAY_BIN)" >&2
    return 1
  fi
  echo "$bin"
}
