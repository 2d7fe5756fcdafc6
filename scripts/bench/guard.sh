#!/usr/bin/env bash
# Issue 17's performance guard: P2, P3 and P4 of two builds, alternated per round (ABBA), so
# that the machine's drift falls on both alike. Each build is a directory holding release
# binaries `hermes-gateway` and `hermes-consumer`.
#
#   A=/tmp/before B=/tmp/after [ROUNDS="1 2 3"] [SCENARIOS="p3 p2 p4"] [OUT=/tmp/guard] \
#     [BENCH=$CARGO_TARGET_DIR/release/hermes-bench] scripts/bench/guard.sh
#
# One JSON report per run in $OUT/<scenario>-<build dir name>-<round>.json (hermes-bench's
# stdout), its stderr beside it, and a log of start/exit lines in $OUT/log.txt. Start the
# services first (scripts/services/up.sh).
set -uo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
: "${A:?A= a directory with the first build's binaries}" "${B:?B= a directory with the second build's}"
OUT=${OUT:-/tmp/guard}
BENCH=${BENCH:-${CARGO_TARGET_DIR:-$HOME/.cache/hermes/target}/release/hermes-bench}
mkdir -p "$OUT"
# shellcheck disable=SC1091
. "$HOME/.cache/hermes/services.env"
run() { # build-dir scenario round
  local bin=$1 s=$2 i=$3 v
  v=$(basename "$1")
  local common=(--server hermes --hermes-bin "$bin/hermes-gateway"
    --centrifugo-script "$here/scripts/bench/centrifugo.sh" --heartbeat-seconds 25)
  echo "$(date -u +%T) $s $v round $i loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/log.txt"
  case $s in
    p2) "$BENCH" p2 "${common[@]}" --sockets 10000 ;;
    p3) "$BENCH" p3 "${common[@]}" --sockets 19000 --rate 5000 --ramp 1000,2000 --seconds 10 \
          --consumer-bin "$bin/hermes-consumer" ;;
    p4) "$BENCH" p4 "${common[@]}" --sockets 19000 ;;
    *) echo "guard: unknown scenario $s" >&2; return 64 ;;
  esac >"$OUT/$s-$v-$i.json" 2>"$OUT/$s-$v-$i.err"
  echo "$(date -u +%T) $s $v round $i exit $?" >>"$OUT/log.txt"
}
for i in ${ROUNDS:-1 2 3}; do
  if [ $((i % 2)) = 1 ]; then order="$A $B"; else order="$B $A"; fi
  for s in ${SCENARIOS:-p3 p2 p4}; do
    for v in $order; do run "$v" "$s" "$i"; done
  done
done
echo DONE >>"$OUT/log.txt"
