#!/usr/bin/env bash
# The chart installed for real, as scripts/test.sh's last step: the local node
# (scripts/kube/node.sh up + check), the Hermes image built from the release
# binaries without a Docker engine and checked against the Dockerfile
# (scripts/image/build.sh, scripts/image/check.sh), then `helm install` + every
# pod Ready + `helm test` in both consumer modes (scripts/kube/install-on-node.sh),
# a rolling `helm upgrade` under load counted by the fault checker
# (scripts/kube/upgrade-on-node.sh), wss:// through a TLS proxy configured from the
# chart's Ingress with Chromium (scripts/kube/ingress-on-node.sh), Prometheus scraping the
# pods through Kubernetes service discovery (scripts/kube/prometheus-on-node.sh), the
# reaper and the PodDisruptionBudget at work (scripts/kube/disruption-on-node.sh), the
# HPA scaling the gateways on open connections through prometheus-adapter
# (scripts/kube/autoscale-on-node.sh), then `node.sh down`. See docs/dev/node.md and docs/dev/image.md.
#
# Usage: scripts/kube/node-test.sh
# Environment: HERMES_NODE_KEEP=1 leaves the node and both releases running.
# Prints one line per part and `node: N passed, N failed`; exit 1 on a failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

# One node per machine (one network namespace, one state dir): test runs from
# several checkouts take turns.
lock=${HERMES_CACHE:-$HOME/.cache/hermes}/state/node-test.lock
mkdir -p "$(dirname "$lock")"
exec 9>"$lock"
if ! flock -n 9; then
  echo "node-test: another run holds $lock; waiting (30 min at most)"
  flock -w 1800 9 || { echo "node-test: still locked after 30 min"; exit 1; }
fi

# shellcheck source=scripts/kube/parts.sh
source "$HERE/parts.sh"

finish() {
  if [ "${HERMES_NODE_KEEP:-0}" != 1 ]; then
    "$HERE/node.sh" down >/dev/null 2>&1 || echo "node.sh down failed" >&2
  fi
  echo "node: $passed passed, $failed failed"
}
trap finish EXIT

# from a clean slate: a run that was cut short may have left a node behind
"$HERE/node.sh" down >/dev/null 2>&1 || true
part "node up" "$HERE/node.sh" up
part "node check (pods Ready, pod IP, Service from the host, DNS, API from a pod)" "$HERE/node.sh" check
image_env=$(mktemp)
build_image() { "$ROOT/scripts/image/build.sh" hermes > "$image_env"; }
part "image build (cargo build --release, Debian base)" build_image
# shellcheck disable=SC1090
. "$image_env"; rm -f "$image_env"
part "image check against the Dockerfile" "$ROOT/scripts/image/check.sh" "$IMAGE_TAR"
tag=${IMAGE#*:}
part "helm install + helm test, consumer.mode=deployment" \
  env HERMES_IMAGE_TAG="$tag" "$HERE/install-on-node.sh" --mode deployment --no-build
part "helm upgrade to a new image tag under load: 0 lost, 0 duplicated" "$HERE/upgrade-on-node.sh"
part "wss:// through nginx (TLS) configured from the chart's Ingress: Chromium, original snippet + hermes.js" \
  "$HERE/ingress-on-node.sh"
part "Prometheus with Kubernetes service discovery as the ServiceMonitor selects: every dashboard query and alert rule" \
  "$HERE/prometheus-on-node.sh"
part "reaper: a killed and deleted gateway's rows reaped; PDB: a second eviction refused" \
  "$HERE/disruption-on-node.sh" all
part "HPA on open connections per pod through prometheus-adapter: 2 -> 3 gateways" "$HERE/autoscale-on-node.sh"
part "helm install + helm test, consumer.mode=sidecar" \
  env HERMES_IMAGE_TAG="$tag" "$HERE/install-on-node.sh" --mode sidecar --no-build
[ "$failed" -eq 0 ]
