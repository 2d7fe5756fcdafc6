#!/usr/bin/env bash
# Disruptions of the release scripts/kube/install-on-node.sh made (consumer.mode
# deployment, namespace hermes-deployment), on the local node:
#   reaper    a gateway whose process is killed (SIGKILL through containerd, so it
#             cannot remove its own rows) and whose pod is then deleted: the leading
#             consumer reaps its registry rows (hermes_reaped_gateways_total goes up,
#             long before the rows' TTL), and the Deployment replaces the pod
#   pdb       two gateway evictions through the eviction API in a row: the first is
#             accepted, the second refused with 429 (the PodDisruptionBudget allows
#             one unavailable gateway), and accepted once the replacement is Ready
#
# On another cluster (HERMES_KUBE_CLUSTER=existing, scripts/kube/on-release.sh) only pdb
# runs: the reaper check kills a container through the node's containerd.
#
# Usage: scripts/kube/disruption-on-node.sh [reaper|pdb|all]   (default all)
# Prints `ok`/`FAIL` lines and `disruption: N passed, N failed`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
what=${1:-all}

LOG_TAG=disruption
# shellcheck source=scripts/kube/on-release.sh
source "$HERE/on-release.sh"
work_dir disruption

passed=0 failed=0
ok() { printf 'ok    %s\n' "$*"; passed=$((passed + 1)); }
bad() { printf 'FAIL  %s\n' "$*"; failed=$((failed + 1)); }

gateways() { kc get pods -l app.kubernetes.io/component=gateway -o json |
  jq -r '.items[] | select(.metadata.deletionTimestamp == null) | .metadata.name'; }
wait_ready_gateways() { # wait_ready_gateways N TIMEOUT
  local deadline=$((SECONDS + $2))
  until [ "$(ready_gateways | jq length)" -ge "$1" ]; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 1
  done
}
# metric NAME POD: the value of a metric line of a consumer (sum over label sets)
metric() {
  local ip
  ip=$(kc get pod "$2" -o jsonpath='{.status.podIP}')
  curl -sf --max-time 3 "http://$ip:8082/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }'
}
leader() { kc get lease hermes-reaper -o jsonpath='{.spec.holderIdentity}'; }

check_reaper() {
  local gw cid lead before after deadline t0
  node_only "the reaper check (SIGKILL through containerd)"
  wait_ready_gateways 2 120 || { bad "reaper: 2 gateways Ready to begin with"; return; }
  gw=$(gateways | head -n1)
  lead=$(leader)
  [ -n "$lead" ] || { bad "reaper: a consumer holds the Lease hermes-reaper"; return; }
  before=$(metric hermes_reaped_gateways_total "$lead")
  cid=$(kc get pod "$gw" -o jsonpath='{.status.containerStatuses[?(@.name=="gateway")].containerID}')
  cid=${cid#containerd://}
  t0=$SECONDS
  "$HERE/node.sh" ctr tasks kill -s SIGKILL "$cid" >/dev/null || { bad "reaper: SIGKILL of $gw"; return; }
  kc delete pod "$gw" --grace-period=0 --force >/dev/null 2>&1
  log "killed gateway $gw (SIGKILL), deleted its pod; leader $lead had reaped $before gateways"
  deadline=$((SECONDS + 25))
  after=$before
  while [ "$after" -le "$before" ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 1
    after=$(metric hermes_reaped_gateways_total "$lead")
  done
  if [ "$after" -gt "$before" ]; then
    ok "reaper: the rows of gateway $gw (killed, pod deleted) reaped by $lead in $((SECONDS - t0)) s (registry TTL 30 s)"
  else
    bad "reaper: hermes_reaped_gateways_total of $lead still $after $((SECONDS - t0)) s after $gw was killed and deleted"
  fi
  if wait_ready_gateways 2 120; then ok "reaper: the Deployment replaced $gw (2 gateways Ready)"; else bad "reaper: no replacement Ready for $gw"; fi
}

# evict POD: the HTTP status of an eviction through the API
evict() {
  "$HERMES_KUBECTL" create --raw "/api/v1/namespaces/$NS/pods/$1/eviction" -f - >/dev/null 2>"$evict_err" <<EOF && { echo 201; return; }
{"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "$1", "namespace": "$NS"}}
EOF
  if grep -q 'disruption budget' "$evict_err"; then echo 429; else echo "error: $(head -c 300 "$evict_err")"; fi
}

check_pdb() {
  local a b first second third
  kc get pdb "$RELEASE-gateway" >/dev/null 2>&1 || { bad "pdb: PodDisruptionBudget $RELEASE-gateway exists (pdb.enabled)"; return; }
  wait_ready_gateways 2 120 || { bad "pdb: 2 gateways Ready to begin with"; return; }
  # the disruption controller must have counted them: 2 healthy, 1 disruption allowed
  pdb_counted() {
    kc get pdb "$RELEASE-gateway" -o json |
      jq -e '.status.currentHealthy == 2 and .status.disruptionsAllowed == 1 and .status.observedGeneration == .metadata.generation' >/dev/null
  }
  until_true 30 "pdb: the PodDisruptionBudget counting 2 healthy gateways" pdb_counted
  local pods
  mapfile -t pods < <(gateways)
  a=${pods[0]:-} b=${pods[1]:-}
  first=$(evict "$a")
  second=$(evict "$b")
  if [ "$first" = 201 ]; then ok "pdb: eviction of $a accepted"; else bad "pdb: eviction of $a: $first"; fi
  if [ "$second" = 429 ]; then
    ok "pdb: eviction of $b right after refused (429, the budget allows 1 unavailable gateway)"
  else
    bad "pdb: eviction of $b right after $a: $second (want 429)"
  fi
  # once the replacement of $a is Ready (and counted), $b may go
  wait_ready_gateways 2 120 || { bad "pdb: no replacement Ready for $a"; return; }
  local deadline=$((SECONDS + 30))
  third=$(evict "$b")
  while [ "$third" = 429 ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 1; third=$(evict "$b"); done
  if [ "$third" = 201 ]; then ok "pdb: eviction of $b accepted once the replacement of $a was Ready"; else bad "pdb: eviction of $b later: $third"; fi
  wait_ready_gateways 2 120 || bad "pdb: 2 gateways Ready again"
}

evict_err=$work/evict.err
case $what in
  reaper) check_reaper ;;
  pdb) check_pdb ;;
  all)
    if [ "$CLUSTER" = node ]; then check_reaper; else log "reaper: skipped (it needs the local node)"; fi
    check_pdb
    ;;
  *) die "unknown check $what (reaper | pdb | all)" ;;
esac
echo "disruption: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
