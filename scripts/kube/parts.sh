# Sourced by node-test.sh and cluster-test.sh: numbered checks with a closing count.
#   part NAME COMMAND...   run, time, count; returns the command's status
#   skip NAME WHY          count a check that cannot run here, with why
# Counters: passed, failed, skipped.
# shellcheck shell=bash
passed=0 failed=0 skipped=0
part() {
  local name=$1 t0=$SECONDS rc=0
  shift
  echo "--> $name"
  "$@" || rc=$?
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1)); echo "ok    $name ($((SECONDS - t0)) s)"
  else
    failed=$((failed + 1)); echo "FAIL  $name ($((SECONDS - t0)) s, exit $rc)"
  fi
  return "$rc"
}
skip() {
  skipped=$((skipped + 1)); echo "skip  $1: $2"
}
