#!/usr/bin/env bash
# Hermes vs Centrifugo, side by side on this machine: builds everything (the gateway and the
# load generator in release, Centrifugo from its Go module), runs P1 (idle sockets), P2
# (room fan-out) and P4 (connects/s with full auth, reconnect storm) for both servers
# alternately, RUNS times each, and writes bench/results.json and bench/RESULTS.md (medians,
# ratios, commands, machine, load) from every run in the runs directory.
#
# Usage: scripts/bench/run.sh
# Environment:
#   RUNS             runs per scenario and server (default 3)
#   P1_SOCKETS       idle sockets in P1 (default 19000)
#   P2_SOCKETS       sockets in the P2 room (default 10000)
#   P2_RATES         publishes/s tried in P2, comma list (default in hermes-bench)
#   P4_SOCKETS       clients in P4: connected at the measured rate, then the storm (default 19000)
#   HEARTBEAT        heartbeat interval of both servers, seconds (default 25)
#   SCENARIOS        which to run (default "p1 p2 p4")
#   BENCH_RUNS_DIR   where the per-run JSON goes (default $HERMES_CACHE/bench/runs-<date>);
#                    an existing one keeps its runs (and commands.txt gets this invocation
#                    appended), so a scenario can be added to an earlier run's directory
#   SKIP_BUILD       1: use the binaries already built (no cargo or Centrifugo build)
#   CARGO_TARGET_DIR (default ~/.cache/hermes/target)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
CACHE=${HERMES_CACHE:-$HOME/.cache/hermes}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
RUNS=${RUNS:-3}
P1_SOCKETS=${P1_SOCKETS:-19000}
P2_SOCKETS=${P2_SOCKETS:-10000}
P4_SOCKETS=${P4_SOCKETS:-19000}
HEARTBEAT=${HEARTBEAT:-25}
SCENARIOS=${SCENARIOS:-p1 p2 p4}
SKIP_BUILD=${SKIP_BUILD:-0}
DIR=${BENCH_RUNS_DIR:-$CACHE/bench/runs-$(date -u +%Y%m%dT%H%M%SZ)}
FRESH_DIR=1
if [ -e "$DIR/commands.txt" ]; then FRESH_DIR=0; fi
mkdir -p "$DIR"
# Lines of timings.txt from earlier invocations into the same directory.
TIMINGS_BEFORE=$(cat "$DIR/timings.txt" 2>/dev/null | wc -l)
BENCH=$CARGO_TARGET_DIR/release/hermes-bench
GATEWAY=$CARGO_TARGET_DIR/release/hermes-gateway

log() { printf '[bench] %s\n' "$*" >&2; }

if [ "$SKIP_BUILD" = 1 ]; then
  log "SKIP_BUILD=1: using the binaries already built"
else
  log "building hermes-gateway and hermes-bench (release)"
  # Two commands: built together, cargo would unify the generator's dependency features into
  # the gateway (a different binary from `cargo build --release -p hermes-gateway`).
  cargo build --release -p hermes-gateway
  cargo build --release -p hermes-bench
  log "building Centrifugo"
  start=$(date +%s)
  "$HERE/centrifugo.sh" build 2>"$DIR/centrifugo-build.log" >/dev/null || { cat "$DIR/centrifugo-build.log" >&2; exit 1; }
  # Keep an earlier run's 'built ... in N s' line when this build only reused the binary.
  if grep -o 'built .*' "$DIR/centrifugo-build.log" >"$DIR/centrifugo-build.txt.new"; then
    mv "$DIR/centrifugo-build.txt.new" "$DIR/centrifugo-build.txt"
  else
    rm -f "$DIR/centrifugo-build.txt.new"
    [ -s "$DIR/centrifugo-build.txt" ] ||
      echo "reused the cached binary (the first build is timed in its log line 'built ... in N s')" >"$DIR/centrifugo-build.txt"
  fi
  log "centrifugo ready in $(($(date +%s) - start)) s"
fi
"$CACHE/bin/centrifugo-${HERMES_CENTRIFUGO_VERSION:-v6.9.1}/centrifugo" version >"$DIR/centrifugo-version.txt" 2>&1 || true

# Other load on the box (it is shared with test runs): recorded before each run.
record_load() {
  local heavy
  heavy=$(ps -eo comm= | grep -cE '^(cargo|rustc|java|beam.smp|chromium|chrome|hermes-gateway|hermes-consume|kube-apiserver|etcd)' || true)
  printf '%s  %-28s loadavg %s  other heavy processes: %s\n' "$(date -u +%H:%M:%S)" "$1" "$(cut -d' ' -f1-3 /proc/loadavg)" "$heavy" >>"$DIR/load.txt"
}

COMMON=(--hermes-bin "$GATEWAY" --centrifugo-script "$HERE/centrifugo.sh" --heartbeat-seconds "$HEARTBEAT")
P2_EXTRA=()
if [ -n "${P2_RATES:-}" ]; then P2_EXTRA=(--rates "$P2_RATES"); fi

P4_ARGS=(--sockets "$P4_SOCKETS")
scenario_commands() {
  for scenario in $SCENARIOS; do
    case $scenario in
      p1) echo "$BENCH p1 --server SERVER ${COMMON[*]} --sockets $P1_SOCKETS" ;;
      p2) echo "$BENCH p2 --server SERVER ${COMMON[*]} --sockets $P2_SOCKETS ${P2_EXTRA[*]}" ;;
      p4) echo "$BENCH p4 --server SERVER ${COMMON[*]} ${P4_ARGS[*]}" ;;
    esac
  done
}
if [ "$FRESH_DIR" = 1 ]; then
  {
    echo "# build"
    echo "cargo build --release -p hermes-gateway"
    echo "cargo build --release -p hermes-bench"
    echo "scripts/bench/centrifugo.sh build"
    echo "# each run (servers alternate; the order flips every run)"
    scenario_commands
    echo "# report"
    echo "$BENCH report --runs $DIR --out bench"
    echo "# all of it"
    echo "RUNS=$RUNS scripts/bench/run.sh"
  } >"$DIR/commands.txt"
else
  {
    echo "# then, into this same directory (its earlier runs kept):"
    echo "SCENARIOS='$SCENARIOS' RUNS=$RUNS SKIP_BUILD=$SKIP_BUILD BENCH_RUNS_DIR=$DIR scripts/bench/run.sh"
    echo "# which ran, servers alternating as above:"
    scenario_commands
    echo "$BENCH report --runs $DIR --out bench"
  } >>"$DIR/commands.txt"
fi

cat >"$DIR/method.md" <<EOF
- Servers: \`hermes-gateway standalone\` (release build, memory registry, admin API on its internal
  listener, JWT HS512 + bcrypt second layer, verdict cache at its default) and Centrifugo
  $(head -1 "$DIR/centrifugo-version.txt" | tr -d '\n') (config from \`scripts/bench/centrifugo.sh\`: HS256 connection JWT,
  HTTP API key, namespace \`bench\` with client subscribe, memory engine, log level error). Both
  heartbeat every $HEARTBEAT s (Hermes: WebSocket pings answered by tungstenite; Centrifugo: its
  application-level \`{}\` ping answered with \`{}\`). A fresh server process for every run.
- Generator: \`hermes-bench\` (tokio + tokio-tungstenite, 4 KiB read buffer, no write buffer),
  socket-holder child processes of at most 9,500 sockets each (the open-file limit is 20,000 per
  process), source addresses 127.0.0.2-5 round robin, 64 connects in flight per holder. Hermes
  sockets connect with \`?token=JWT\` (one token from \`POST /v1/tokens\` for user \`bench-user\`
  in room \`bench\`); Centrifugo sockets send \`connect\` with an HS256 JWT (\`sub\` bench-user)
  and \`subscribe\` to \`bench:room\`. Server and generator share the 2 cores (not pinned).
- P1: RSS (VmRSS of /proc/PID/status) 2 s after start, then the idle CPU (utime+stime of
  /proc/PID/stat) over 10 s without sockets; then $P1_SOCKETS sockets, one heartbeat cycle
  + 3 s, RSS again, idle CPU over 30 s. \`rss_per_socket_kib\` = ΔRSS / sockets;
  \`cpu_us_per_socket_s\` = (CPU µs/s with sockets − CPU µs/s without) / sockets.
- P2: $P2_SOCKETS sockets in one room/channel; after a warm-up message, publishes through the
  HTTP API (Hermes \`POST /v1/publish\`, Centrifugo \`POST /api/publish\` with X-API-Key) at
  increasing rates, 5 s per rate, each payload \`{"seq", "sent_us"}\` stamped at send time.
  A message's latency is send → its receipt on the last socket; \`deliveries_per_s\` = complete
  messages × sockets / (first send → last receipt of the step). The reported rate is the highest
  step in which every message reached every socket, the publisher kept its schedule and
  p99 ≤ 50 ms; p50/p99 are that step's (HDR histogram). Steps go on past the p99 limit and stop
  at the first step that loses messages or falls behind its schedule; the highest complete step,
  whatever its p99, is reported as \`max_deliveries_per_s_any_p99\` (with \`max_step_p50_ms\`,
  \`max_step_p99_ms\`) in the details.
- P4: $P4_SOCKETS clients connect through the holders (64 connects in flight per holder, connect
  only: no subscribe on Centrifugo) after one warm-up connect with the same token, so every
  measured Hermes connect takes the full auth on its fast path: JWT HS512 check + the
  second-layer check answered by the verdict cache after the token's first bcrypt verify (one
  token from \`POST /v1/tokens\` reused by every client). A connect's latency runs from the
  TCP connect to the 101 (Hermes) or to the reply to Centrifugo's \`connect\` command (where
  it checks the HS256 JWT); \`connects_per_s\` = connects / (first connect start → last
  connect done), \`p99_ms\` from the HDR histogram of all of them. After 3 s, the storm: every
  holder drops all its sockets at once (TCP reset, no close frame) and reconnects all of them
  with 512 in flight per holder, no retry, 10 s timeout per connect;
  \`storm_seconds\` = first reconnect start → last reconnect done (over all holders),
  \`storm_failures\` = reconnects that failed. The generator's sockets close with a reset
  (SO_LINGER 0) so that no TIME_WAIT slows the port search of the next run's binds (P1/P2 runs
  made before P4 was added closed theirs normally, after their measurement).
EOF

for i in $(seq 1 "$RUNS"); do
  # Alternate, and flip the order every run so neither server always goes first.
  if [ $((i % 2)) -eq 1 ]; then order=(hermes centrifugo); else order=(centrifugo hermes); fi
  for scenario in $SCENARIOS; do
    for server in "${order[@]}"; do
      record_load "$scenario $server run $i"
      log "$scenario $server run $i/$RUNS"
      t0=$(date +%s)
      case $scenario in
        p1) "$BENCH" p1 --server "$server" "${COMMON[@]}" --sockets "$P1_SOCKETS" >"$DIR/p1-$server-$i.json" ;;
        p2) "$BENCH" p2 --server "$server" "${COMMON[@]}" --sockets "$P2_SOCKETS" "${P2_EXTRA[@]}" >"$DIR/p2-$server-$i.json" ;;
        p4) "$BENCH" p4 --server "$server" "${COMMON[@]}" "${P4_ARGS[@]}" >"$DIR/p4-$server-$i.json" ;;
      esac
      echo "$scenario $server run $i: $(($(date +%s) - t0)) s" >>"$DIR/timings.txt"
      log "$(tail -1 "$DIR/$scenario-$server-$i.json")"
    done
  done
done
"$HERE/centrifugo.sh" stop
tail -n +$((TIMINGS_BEFORE + 1)) "$DIR/timings.txt" >>"$DIR/load.txt"
"$BENCH" report --runs "$DIR" --out "$ROOT/bench"
log "runs in $DIR; wrote bench/results.json and bench/RESULTS.md"
