#!/usr/bin/env bash
# Hermes vs Centrifugo, side by side on this machine: builds everything (the gateway, the
# consumer and the load generator in release, Centrifugo from its Go module), runs P1 (idle
# sockets), P2 (room fan-out), P3 (queue → socket latency at a steady rate to single users),
# P4 (connects/s with full auth, reconnect storm), P5 (delivery p99 during a first-connect
# flood against its baseline) and P7 (3 server processes against 1) for both servers
# alternately, RUNS times each, plus the box's own fan-out floors once per run (`floor`:
# loopback TCP, no server; `ws-floor`: P2 against the leanest possible WebSocket server), and writes bench/results.json and bench/RESULTS.md (medians, ratios,
# commands, machine, load) from every run in the runs directory.
#
# Usage: scripts/bench/run.sh
# Environment:
#   RUNS             runs per scenario and server (default 3)
#   P1_SOCKETS       idle sockets in P1 (default 19000)
#   P2_SOCKETS       sockets in the P2 room (default 10000)
#   P2_RATES         publishes/s tried in P2, comma list (default in hermes-bench)
#   P4_SOCKETS       clients in P4: connected at the measured rate, then the storm (default 19000)
#   P8_SOCKETS       idle sockets in P8 (default 19000)
#   P8_SECONDS       P8's counted window, seconds (default 600); P8 runs in the first run only
#                    (a count of writes, not a timing: 361.0 and 360.4 per socket-hour in two
#                    readings) and for Hermes only, after the CQL server is started
#   P7_NODES         server processes in P7 (default 3)
#   P7_SOCKETS_PER_NODE  sockets per server process in P7 (default 19000)
#   P7_OFFERED       offered deliveries/s of P7's ramp steps, comma list (default in hermes-bench)
#   P7 needs the CQL server (Hermes's registry): scripts/services/up.sh cassandra is run, and
#   $HERMES_CACHE/services.env read, when p7 is selected; Centrifugo's Redis comes from
#   scripts/bench/redis.sh (Debian's redis-server, installed on first use).
#   P3_SOCKETS       sockets (one user each) in P3 (default 19000)
#   P3_RATE          notifications/s in P3 (default 5000)
#   P3_SECONDS       seconds of measured publishing in P3 (default 10)
#   P3_RAMP          lower rates measured first in P3, on the same sockets (default 1000,2000)
#   P3 needs RabbitMQ and the CQL server: scripts/services/up.sh cassandra rabbitmq is run, and
#   $HERMES_CACHE/services.env read, when p3 is selected; hermes-consumer is built too.
#   P5_SOCKETS       sockets in the P5 room (default 2000)
#   P5_RATE          publishes/s into the P5 room (default 20)
#   P5_WINDOW        seconds of each P5 window, baseline and flood (default 20: at 10 the baseline p99 alone varied 17–24 ms between runs)
#   P5_FLOOD_TOKENS  Hermes's first-time tokens for the P5 flood (default 800)
#   P5_FLOOD_CONCURRENCY  flood connects in flight in P5 (default 256)
#   P5_FLOOD_RATE    flood connect attempts/s at most, retries included (default 0: no cap)
#   HEARTBEAT        heartbeat interval of both servers, seconds (default 25)
#   SCENARIOS        which to run (default "p1 ws-floor p2 p3 p4 p5 p7 p8 floor queue-floor": ws-floor
#                    right before P2, the run it is paired with for `lowest_step_p99_vs_floor`)
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
P8_SOCKETS=${P8_SOCKETS:-19000}
P8_SECONDS=${P8_SECONDS:-600}
P7_NODES=${P7_NODES:-3}
P7_SOCKETS_PER_NODE=${P7_SOCKETS_PER_NODE:-19000}
P3_SOCKETS=${P3_SOCKETS:-19000}
P3_RATE=${P3_RATE:-5000}
P3_SECONDS=${P3_SECONDS:-10}
P3_RAMP=${P3_RAMP:-1000,2000}
P5_SOCKETS=${P5_SOCKETS:-2000}
P5_RATE=${P5_RATE:-20}
P5_WINDOW=${P5_WINDOW:-20}
P5_FLOOD_TOKENS=${P5_FLOOD_TOKENS:-800}
P5_FLOOD_CONCURRENCY=${P5_FLOOD_CONCURRENCY:-256}
P5_FLOOD_RATE=${P5_FLOOD_RATE:-0}
HEARTBEAT=${HEARTBEAT:-25}
SCENARIOS=${SCENARIOS:-p1 ws-floor p2 p3 p4 p5 p7 p8 floor queue-floor}
SKIP_BUILD=${SKIP_BUILD:-0}
DIR=${BENCH_RUNS_DIR:-$CACHE/bench/runs-$(date -u +%Y%m%dT%H%M%SZ)}
FRESH_DIR=1
if [ -e "$DIR/commands.txt" ]; then FRESH_DIR=0; fi
mkdir -p "$DIR"
# Lines of timings.txt from earlier invocations into the same directory.
TIMINGS_BEFORE=$(cat "$DIR/timings.txt" 2>/dev/null | wc -l || true)
BENCH=$CARGO_TARGET_DIR/release/hermes-bench
GATEWAY=$CARGO_TARGET_DIR/release/hermes-gateway
CONSUMER=$CARGO_TARGET_DIR/release/hermes-consumer

log() { printf '[bench] %s\n' "$*" >&2; }

if [ "$SKIP_BUILD" = 1 ]; then
  log "SKIP_BUILD=1: using the binaries already built"
else
  log "building hermes-gateway and hermes-bench (release)"
  # Two commands: built together, cargo would unify the generator's dependency features into
  # the gateway (a different binary from `cargo build --release -p hermes-gateway`).
  cargo build --release -p hermes-gateway
  cargo build --release -p hermes-bench
  if [[ " $SCENARIOS " == *" p3 "* ]]; then cargo build --release -p hermes-consumer; fi
  cargo build -p hermes-e2e --bin drop-keyspaces
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
if [[ " $SCENARIOS " == *" p3 "* || " $SCENARIOS " == *" queue-floor "* ]]; then
  # P3 (and its floor, queue-floor): RabbitMQ and the CQL server of Hermes's registry (the consumer and the gateway use both).
  log "p3: starting RabbitMQ and the CQL server (scripts/services/up.sh cassandra rabbitmq)"
  "$ROOT/scripts/services/up.sh" cassandra rabbitmq >"$DIR/services-up-p3.log" 2>&1 || { cat "$DIR/services-up-p3.log" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$CACHE/services.env"
fi
if [[ " $SCENARIOS " == *" p8 "* ]]; then
  # P8: the CQL server of Hermes's registry, whose own write counts it reads.
  log "p8: starting the CQL server (scripts/services/up.sh cassandra)"
  "$ROOT/scripts/services/up.sh" cassandra >"$DIR/services-up-p8.log" 2>&1 || { cat "$DIR/services-up-p8.log" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$CACHE/services.env"
fi
if [[ " $SCENARIOS " == *" p7 "* ]]; then
  # P7: the CQL server of Hermes's shared registry, and Redis for the Centrifugo cluster.
  log "p7: starting the CQL server (scripts/services/up.sh cassandra) and installing Redis"
  "$ROOT/scripts/services/up.sh" cassandra >"$DIR/services-up.log" 2>&1 || { cat "$DIR/services-up.log" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$CACHE/services.env"
  "$HERE/redis.sh" build >/dev/null
fi
if [[ " $SCENARIOS " == *" p3 "* || " $SCENARIOS " == *" p7 "* || " $SCENARIOS " == *" p8 "* ]]; then
  # The CQL server is shared with test runs, which leave a keyspace per test behind: hundreds
  # of them filled its 1 GiB heap, and its back-to-back collections (0.7-1.3 s each, most of
  # a core) became the tail of P3. Drop them and start the node afresh (a clean heap).
  log "registry: dropping test keyspaces and restarting the CQL server"
  "$CARGO_TARGET_DIR/debug/drop-keyspaces" e2e_ hermes_test_ bench_p7_ >"$DIR/drop-keyspaces.log" 2>&1 || { cat "$DIR/drop-keyspaces.log" >&2; exit 1; }
  "$ROOT/scripts/services/cassandra.sh" restart >"$DIR/cassandra-restart.log" 2>&1 || { cat "$DIR/cassandra-restart.log" >&2; exit 1; }
fi
if [[ " $SCENARIOS " == *" p3 "* ]]; then
  # Test runs leave their queues on the broker too (1,480 of them before this step existed).
  queues=$("$ROOT/scripts/services/rabbitmq.sh" delete-queues hermes-e2e-) || exit 1
  log "broker: deleted $queues test queues"
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
P3_ARGS=(--sockets "$P3_SOCKETS" --rate "$P3_RATE" --ramp "$P3_RAMP" --seconds "$P3_SECONDS" --consumer-bin "$CONSUMER")
P5_ARGS=(--sockets "$P5_SOCKETS" --rate "$P5_RATE" --window-seconds "$P5_WINDOW" --flood-tokens "$P5_FLOOD_TOKENS" --flood-concurrency "$P5_FLOOD_CONCURRENCY" --flood-rate "$P5_FLOOD_RATE")
P7_ARGS=(--nodes "$P7_NODES" --sockets-per-node "$P7_SOCKETS_PER_NODE")
if [ -n "${P7_OFFERED:-}" ]; then P7_ARGS+=(--offered "$P7_OFFERED"); fi
scenario_commands() {
  for scenario in $SCENARIOS; do
    case $scenario in
      p1) echo "$BENCH p1 --server SERVER ${COMMON[*]} --sockets $P1_SOCKETS" ;;
      p2) echo "$BENCH p2 --server SERVER ${COMMON[*]} --sockets $P2_SOCKETS ${P2_EXTRA[*]}" ;;
      p3) echo "scripts/services/up.sh cassandra rabbitmq && . ~/.cache/hermes/services.env && $BENCH p3 --server SERVER ${COMMON[*]} ${P3_ARGS[*]}" ;;
      p4) echo "$BENCH p4 --server SERVER ${COMMON[*]} ${P4_ARGS[*]}" ;;
      p5) echo "$BENCH p5 --server SERVER ${COMMON[*]} ${P5_ARGS[*]}" ;;
      p7) echo "scripts/services/up.sh cassandra && . ~/.cache/hermes/services.env && $BENCH p7 --server SERVER ${COMMON[*]} ${P7_ARGS[*]}" ;;
      floor) echo "$BENCH floor --rounds 50 --sources 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5   # once per run, no server" ;;
      ws-floor) echo "$BENCH ws-floor --sockets $P2_SOCKETS ${P2_EXTRA[*]}   # once per run, no real server" ;;
      p8) echo "scripts/services/up.sh cassandra && . ~/.cache/hermes/services.env && $BENCH p8 ${COMMON[*]} --sockets $P8_SOCKETS --seconds $P8_SECONDS   # run 1 only, Hermes only" ;;
      queue-floor) echo "scripts/services/up.sh rabbitmq && $BENCH queue-floor --rate $P3_RATE --seconds $P3_SECONDS   # once per run, no server" ;;
    esac
  done
}
if [ "$FRESH_DIR" = 1 ]; then
  {
    echo "# build"
    echo "cargo build --release -p hermes-gateway"
    echo "cargo build --release -p hermes-bench"
    if [[ " $SCENARIOS " == *" p3 "* ]]; then echo "cargo build --release -p hermes-consumer"; fi
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
- P3: notifications to single users among $P3_SOCKETS sockets (each socket its own user) at
  $P3_RATE/s; a notification's latency runs from its send (\`sent_us\`, µs since the epoch, in its
  \`data\`, stamped just before it is handed to the broker or the HTTP client) to its receipt on
  its user's socket (the holders' HDR histograms, merged); \`p50_ms\`/\`p99_ms\` are over every
  notification of the measured window: 20 s of warm-up at the same rate, then $P3_SECONDS s of
  measured publishing, then up to 10 s for the last ones (\`lost\` = never received;
  \`achieved_rate\` = notifications / publishing time, the schedule kept). The same is done
  first at each rate of $P3_RAMP (each with its own warm-up, on the same sockets; keys
  \`at_<rate>_p50_ms\`, \`_p99_ms\`, \`_lost\` in the details), to show the highest of them at
  which the target still holds. The first warm-up also absorbs the registry server's work on the
  setup's writes (memtable flushes, compactions of 19,000 tokens and sockets); with 3 s of it
  those were measured instead (a trial at 1,000/s: p99 50 ms after 3 s, 6 ms after 40 s). Notification *n*
  goes to user *n*·*s* mod $P3_SOCKETS (*s* coprime with it): every user gets the same share and
  consecutive notifications reach sockets of every holder. Hermes: RabbitMQ → one
  \`hermes-consumer\` → one \`hermes-gateway serve\` in another process → socket (release
  builds, consumer defaults: prefetch 64, 64 routed at once, and with one live gateway no
  registry read per notification: \`HERMES_ROUTE_TO_ALL_MAX_GATEWAYS=2\` sends it to every
  gateway, see docs/architecture.md; the history is on, as by default: each notification's
  entry is written to the CQL server before it is routed), both on a ScyllaDB registry in
  the test Cassandra 5 (same box, consistency ONE, keyspace \`hermes_bench_p3\` reused by every
  run) and RabbitMQ on the same box (durable queue \`hermes-bench-p3\`, purged before each run).
  Each message is \`{"user_id": "p3-backend", "room_id": "p3", "to_user_id": "p3-u<k>", "id":
  "p3-<n>", "data": {"n", "sent_us"}}\`, persistent, to the default exchange; the publisher
  (lapin, one channel in confirm mode) hands each message off and a task of its own awaits its
  confirm, so confirms never hold up the $P3_RATE/s schedule (\`confirms_acked\`/\`_nacked\` in
  the JSON). Every user's token comes from the gateway's \`POST /v1/tokens\` (a bcrypt hash per
  token) with \`HERMES_BCRYPT_COST=4\` on this gateway so that $P3_SOCKETS tokens issue in
  seconds: P3 measures delivery, not auth. The registry TTL is the default's (30 s: since
  issue 21 the heartbeat writes the gateway's own row, not its sockets'; before, P3 and P7 ran
  with 900 to keep that rewrite out of the window). Centrifugo: v6.9.1 has no
  RabbitMQ consumer (its async consumers are PostgreSQL outbox, Kafka, NATS JetStream, Redis
  Streams, Google Pub/Sub, AWS SQS and Azure Service Bus), so its P3 is its nearest path, the
  server HTTP API, not a queue: each socket connects with an HS256 JWT whose \`channels\` claim
  subscribes it server-side to its own channel \`bench:p3-u<k>\`, and each notification is one
  \`POST /api/publish\` to that channel, up to 256 in flight over kept-alive connections.
- ws-floor (once per run): P2's room of $P2_SOCKETS sockets, holders, publisher and ramp
  against the leanest WebSocket server there can be (\`hermes-bench ws-floor-server\`, a
  child process): it answers the upgrade with no auth, encodes each published \`data\` once as
  one text frame and has 2 threads \`write\` it to their halves of the sockets with blocking
  calls (no epoll, no task or queue per socket). Its lowest step's p99 is the floor under P2's
  publish → last receipt with this generator on this box. It runs right before P2 in each
  run; \`lowest_step_p99_vs_floor\` is a server's P2 lowest-step p99 over the ws-floor's of the
  same run, and its median is over those pairs.
- queue-floor (once per run, no server): P3's publisher (the same body, persistent, confirms
  off the schedule) into RabbitMQ at $P3_RATE/s for $P3_SECONDS s after 3 s of warm-up, and one
  AMQP consumer (lapin, the client of Hermes's consumer) on its own connection with P3's prefetch (64) that reads \`sent_us\` and acks
  each message: publish → consumer latency and the CPU of RabbitMQ and of this process. The
  least any RabbitMQ-fed server's P3 costs on this box.
- P5: $P5_SOCKETS sockets in one room / channel (as in P2) get $P5_RATE publishes/s through the HTTP
  API (\`{"n", "sent_us"}\`); latency is per delivery: publish → receipt on each socket, every
  socket and every message (HDR histograms in the holders). After 2 s of warm-up, a baseline
  window of $P5_WINDOW s; then the flood starts (a separate process), runs 2 s, and the same
  window is measured again while it runs; \`p99_ratio\` = delivery p99 during the flood / p99
  of the baseline. Each window's publishes are all received (or 10 s pass) before its histogram
  is read. The flood: $P5_FLOOD_CONCURRENCY connects in flight, from the same 4 source
  addresses, each connect closed once accepted; a connect refused with 503 is retried with the
  same token after 200 ms. Hermes (\`hermes-gateway standalone\`, default bcrypt cost 10 and
  bcrypt pool: half the CPUs, a queue of 64): every flood connect is a first-time connect that
  costs a bcrypt verify. $P5_FLOOD_TOKENS tokens of distinct users in another room are issued
  through \`POST /v1/tokens\` before the measurement, and their fast verifier is removed
  through the internal registry API (\`/internal/v1/registry\`), which makes each exactly a
  token row written by the original system: Hermes stores the verifier at issue time, so a
  freshly issued token alone would skip bcrypt. Each token is used by one successful connect
  (\`flood_ok\`; \`flood_refused\` = 503 answers, the bcrypt queue full;
  \`flood_exhausted_after_s\` is set if the tokens ran out). Centrifugo: the flood connects
  with new HS256 JWTs (a distinct \`sub\` each, made by the flood process); there is no bcrypt
  layer, so its flood is the same in-flight count of cheap connects, at a much higher rate
  (\`flood_connects_per_s\`). Flood attempts/s cap (retries included, 0 = none): $P5_FLOOD_RATE.
- P7: $P7_NODES server processes on the box, $P7_SOCKETS_PER_NODE sockets each, all in one room /
  channel. Hermes: \`hermes-gateway serve\` × $P7_NODES (release build, defaults otherwise)
  sharing a ScyllaDB registry on the test Cassandra 5 (one node on the same box, consistency
  ONE, a fresh keyspace per run, dropped afterwards), with the default registry TTL (30 s: the
  heartbeat writes each gateway's own row; before issue 21 it rewrote every row a gateway held
  and P7 ran with 900 to keep that out of the measurement). One token, issued on gateway 1, is accepted by all of them (its verifier is
  in the shared registry). Publishes go through gateway 1's admin API \`POST /v1/publish\`, as an
  application would publish: its router delivers to its own sockets and forwards to the other
  gateways holding the room (their deliver streams, \`GET /internal/v1/deliver-stream\`). Centrifugo: $P7_NODES nodes
  (\`scripts/bench/centrifugo.sh start-cluster\`, consecutive ports) with the Redis engine on a
  fresh Redis (Debian's redis-server$(redis-server --version 2>/dev/null | awk '{print ", " $3}'), no persistence:
  \`scripts/bench/redis.sh\`); publishes through node 1's \`POST /api/publish\`, which reach
  the other nodes through Redis PUB/SUB. Phase 1: $P7_SOCKETS_PER_NODE sockets on node 1 only (the
  other processes run idle), a warm-up message, then P2's ramp. Phase 2: those sockets are
  closed, fresh ones open on every node, a warm-up, the same ramp. The ramp's steps are offered
  deliveries/s (publishes/s × sockets: ${P7_OFFERED:-10000,25000,50000,100000,150000,200000,250000,300000,400000,500000,600000,800000,1000000,1200000,1500000}),
  the same in both phases, 5 s each, every message timed as in P2 but allowed 10 s after the
  step's last publish (not 3 s) to reach every socket: with tens of thousands of sockets on 2
  cores a single message takes up to seconds. The ramp stops at the first step with a message late or lost, a publish
  refused (Hermes answers 502 when its deliver call to a holding gateway fails or takes more than
  \`HERMES_DELIVER_TIMEOUT_MS\`, 2 s) or the publisher behind schedule.
  \`deliveries_per_s\` (all processes) and \`one_node_deliveries_per_s\` are each the most
  deliveries/s measured in a step without any of these, whatever its p99: complete messages ×
  sockets / (first send → last receipt, or the step's 5 s if longer, so that a step of one or
  two messages is not credited with the speed of a single fan-out); that step's p50/p99 are in
  the details, and \`*_within_p99_limit\` adds P2's 50 ms limit;
  \`ratio_3_vs_1\` = their quotient; \`sockets_total\` = the sockets open in phase 2. Servers,
  Cassandra or Redis, and the generator share the 2 cores.
EOF

for i in $(seq 1 "$RUNS"); do
  # Alternate, and flip the order every run so neither server always goes first.
  if [ $((i % 2)) -eq 1 ]; then order=(hermes centrifugo); else order=(centrifugo hermes); fi
  for scenario in $SCENARIOS; do
    if [ "$scenario" = floor ]; then
      record_load "floor run $i"
      log "floor run $i/$RUNS"
      t0=$(date +%s)
      "$BENCH" floor --rounds 50 --sources "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5" >"$DIR/floor-$i.json"
      echo "floor run $i: $(($(date +%s) - t0)) s" >>"$DIR/timings.txt"
      log "$(tail -1 "$DIR/floor-$i.json")"
      continue
    fi
    if [ "$scenario" = ws-floor ]; then
      record_load "ws-floor run $i"
      log "ws-floor run $i/$RUNS"
      t0=$(date +%s)
      "$BENCH" ws-floor --sockets "$P2_SOCKETS" "${P2_EXTRA[@]}" >"$DIR/ws-floor-$i.json"
      echo "ws-floor run $i: $(($(date +%s) - t0)) s" >>"$DIR/timings.txt"
      log "$(tail -1 "$DIR/ws-floor-$i.json")"
      continue
    fi
    if [ "$scenario" = p8 ]; then
      [ "$i" = 1 ] || continue
      record_load "p8 hermes run $i"
      log "p8 hermes run $i (once)"
      t0=$(date +%s)
      "$BENCH" p8 "${COMMON[@]}" --sockets "$P8_SOCKETS" --seconds "$P8_SECONDS" >"$DIR/p8-hermes-$i.json"
      echo "p8 hermes run $i: $(($(date +%s) - t0)) s" >>"$DIR/timings.txt"
      log "$(tail -1 "$DIR/p8-hermes-$i.json")"
      continue
    fi
    if [ "$scenario" = queue-floor ]; then
      record_load "queue-floor run $i"
      log "queue-floor run $i/$RUNS"
      t0=$(date +%s)
      "$BENCH" queue-floor --rate "$P3_RATE" --seconds "$P3_SECONDS" >"$DIR/queue-floor-$i.json"
      echo "queue-floor run $i: $(($(date +%s) - t0)) s" >>"$DIR/timings.txt"
      log "$(tail -1 "$DIR/queue-floor-$i.json")"
      continue
    fi
    for server in "${order[@]}"; do
      record_load "$scenario $server run $i"
      log "$scenario $server run $i/$RUNS"
      t0=$(date +%s)
      case $scenario in
        p1) "$BENCH" p1 --server "$server" "${COMMON[@]}" --sockets "$P1_SOCKETS" >"$DIR/p1-$server-$i.json" ;;
        p2) "$BENCH" p2 --server "$server" "${COMMON[@]}" --sockets "$P2_SOCKETS" "${P2_EXTRA[@]}" >"$DIR/p2-$server-$i.json" ;;
        p3) "$BENCH" p3 --server "$server" "${COMMON[@]}" "${P3_ARGS[@]}" >"$DIR/p3-$server-$i.json" ;;
        p4) "$BENCH" p4 --server "$server" "${COMMON[@]}" "${P4_ARGS[@]}" >"$DIR/p4-$server-$i.json" ;;
        p5) "$BENCH" p5 --server "$server" "${COMMON[@]}" "${P5_ARGS[@]}" >"$DIR/p5-$server-$i.json" ;;
        p7) "$BENCH" p7 --server "$server" "${COMMON[@]}" "${P7_ARGS[@]}" >"$DIR/p7-$server-$i.json" ;;
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
