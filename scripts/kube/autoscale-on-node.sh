#!/usr/bin/env bash
# The gateways scaled on open connections per pod, on the release
# scripts/kube/install-on-node.sh made (namespace hermes-deployment): the chart's HPA with
# its Pods metric on hermes_connections_open, served by prometheus-adapter (built from its
# Go module by scripts/prometheus-adapter.sh) on the host as an extension API server, with
# the rule docs/kubernetes.md gives (scripts/kube/custom-metrics.sh).
#
# Steps: `helm upgrade` with autoscaling on (min 2, max 3, TARGET sockets per pod, no CPU
# metric: this node runs no metrics-server), the HPA holding 2 gateways; the adapter and
# the APIService; SOCKETS WebSockets through the gateways' Service; the custom metrics API
# reports them per pod; the HPA scales the Deployment to 3 and the third gateway becomes
# Ready. Then the sockets close, the APIService goes and `helm upgrade` turns autoscaling
# off again (2 gateways), so the later checks find the release as installed.
#
# On another cluster (HERMES_KUBE_CLUSTER=existing, scripts/kube/on-release.sh) the
# cluster's own prometheus-adapter serves the metric (with the rule docs/kubernetes.md
# gives; the script checks that its APIService is Available) and the sockets go to
# HERMES_WS_URL. See docs/dev/node.md.
#
# Usage: scripts/kube/autoscale-on-node.sh
# Environment: HERMES_AUTOSCALE_TARGET (10), HERMES_AUTOSCALE_SOCKETS (40)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

LOG_TAG=autoscale
# shellcheck source=scripts/kube/on-release.sh
source "$HERE/on-release.sh"
# shellcheck source=scripts/kube/release-prometheus.sh
source "$HERE/release-prometheus.sh"
TARGET=${HERMES_AUTOSCALE_TARGET:-10}
SOCKETS=${HERMES_AUTOSCALE_SOCKETS:-40}
# 2 gateways ask for a third once the average exceeds TARGET by the HPA's tolerance (10 %)
[ $((SOCKETS * 10)) -gt $((22 * TARGET)) ] ||
  die "SOCKETS ($SOCKETS) must exceed 2.2 x TARGET ($TARGET): the HPA ignores deviations within 10 %"
# shellcheck source=scripts/kube/custom-metrics.sh
source "$HERE/custom-metrics.sh"
work_dir autoscale
if [ "$CLUSTER" = existing ]; then
  apiservice_available ||
    die "APIService $APISERVICE is not Available: install prometheus-adapter with the rule in docs/kubernetes.md"
fi

hpa_json() { kc get hpa "$RELEASE-gateway" -o json; }
gateways_settled() { # gateways_settled N: N Ready gateways, none terminating, the HPA at N
  [ "$(ready_gateways | jq length)" = "$1" ] &&
    [ "$(kc get pods -l app.kubernetes.io/component=gateway -o json | jq '.items | length')" = "$1" ] &&
    [ "$(hpa_json | jq '.status.currentReplicas // 0')" = "$1" ]
}

# 1. The HPA, as a user turns it on. Helm drops `replicas` from the Deployment (the HPA
#    owns it now), which Kubernetes defaults to 1 for a moment: the HPA restores its
#    minimum (docs/kubernetes.md, "The HPA on open connections per pod").
cat > "$work/autoscaling.yaml" <<EOF
autoscaling:
  enabled: true
  minReplicas: 2
  maxReplicas: 3
  targetCPUUtilizationPercentage: ""
  connections:
    enabled: true
    targetAveragePerPod: "$TARGET"
EOF
"$HELM" upgrade "$RELEASE" "$ROOT/charts/hermes" -n "$NS" --reuse-values -f "$work/autoscaling.yaml" \
  --wait --timeout 300s >/dev/null || die "helm upgrade with autoscaling failed"
until_true 120 "the HPA holding 2 Ready gateways" gateways_settled 2
log "HPA $RELEASE-gateway: min 2, max 3, $TARGET open sockets per pod; 2 gateways Ready"

# 2. Prometheus, then prometheus-adapter with the rule docs/kubernetes.md gives (on the
#    local node; another cluster has its own).
[ "$CLUSTER" = existing ] || serve_custom_metrics

# 3. Sockets through the gateways' Service (kube-proxy spreads them over both pods;
#    another cluster: HERMES_WS_URL, its load balancer).
ws_url=$(gateway_ws_url)
open_admin
token=$(issue_token autoscale autoscale)
HERMES_WS="$ws_url" HERMES_TOKEN=$token N=$SOCKETS \
  background node --experimental-websocket --no-warnings -e '
    const n = Number(process.env.N);
    let open = 0;
    for (let i = 0; i < n; i++) {
      const ws = new WebSocket(process.env.HERMES_WS, ["hermes.v1", "bearer." + process.env.HERMES_TOKEN]);
      ws.onopen = () => { if (++open === n) console.log("open " + n); };
      ws.onclose = (e) => { console.log("a socket closed: " + e.code); process.exit(1); };
    }
    setInterval(() => {}, 1 << 30);' > "$work/sockets.log" 2>&1
sockets_pid=${bg_pids[-1]}
sockets_open() {
  grep -q "^open $SOCKETS$" "$work/sockets.log" ||
    { grep -q "closed" "$work/sockets.log" && die "$(cat "$work/sockets.log")"; return 1; }
}
until_true 60 "$SOCKETS WebSockets open at $ws_url" sockets_open
log "$SOCKETS WebSockets open at $ws_url"

# 4. The custom metrics API reports them per pod.
metric_path="/apis/custom.metrics.k8s.io/v1beta1/namespaces/$NS/pods/*/hermes_connections_open"
per_pod() { # "pod=value" per gateway; values are quantities ("20", "500m")
  "$HERMES_KUBECTL" get --raw "$metric_path" | jq -r '.items[] | "\(.describedObject.name)=\(.value)"'
}
metric_total() {
  "$HERMES_KUBECTL" get --raw "$metric_path" 2>/dev/null | jq '[.items[].value
    | if endswith("m") then (.[:-1] | tonumber) / 1000 else tonumber end] | add // 0'
}
metric_reports_sockets() { metric_total | jq -e ". >= $SOCKETS" >/dev/null; }
until_true 90 "the custom metrics API reporting $SOCKETS open sockets ($metric_path)" metric_reports_sockets
log "custom metrics API: $(per_pod | tr '\n' ' ')"

# 5. The HPA scales the gateways from 2 to 3.
t0=$SECONDS
on_exit '[ "$exit_rc" = 0 ] || hpa_json | jq -r ".status.conditions[]? | \"    HPA \\(.type)=\\(.status) \\(.reason): \\(.message)\"" >&2'
until_true 180 "the HPA scaling the gateways to 3" gateways_settled 3
log "HPA: $(hpa_json | jq -r '"desired \(.status.desiredReplicas), current \(.status.currentReplicas), metric \(.status.currentMetrics[0].pods.current.averageValue) per pod"'); 3 gateways Ready $((SECONDS - t0)) s after the metric"
kc get pods -l app.kubernetes.io/component=gateway -o wide >&2

# 6. Back as installed: the sockets close, autoscaling off (2 gateways).
kill "$sockets_pid" 2>/dev/null || true
"$HELM" upgrade "$RELEASE" "$ROOT/charts/hermes" -n "$NS" --reuse-values --set autoscaling.enabled=false \
  --wait --timeout 300s >/dev/null || die "helm upgrade turning autoscaling off failed"
log "autoscaling off again: $(kc get deployment "$RELEASE-gateway" -o jsonpath='{.spec.replicas}') gateways"
