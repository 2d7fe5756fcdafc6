#!/usr/bin/env bash
# The gateways scaled on open connections per pod, on the release
# scripts/kube/install-on-node.sh made (namespace hermes-deployment): the chart's HPA with
# its Pods metric on hermes_connections_open, served by prometheus-adapter (built from its
# Go module by scripts/prometheus-adapter.sh) with the rule docs/kubernetes.md gives, read
# from that page. The adapter runs on the host as an extension API server of the node's
# kube-apiserver (the node profile of control-plane.sh turns the aggregation layer on): an
# APIService for custom.metrics.k8s.io, a Service without selector and an EndpointSlice to
# the host's address, a serving certificate signed by the cluster CA for the Service's
# name. Prometheus scrapes the pods as the chart's ServiceMonitor selects them
# (scripts/kube/release-prometheus.sh).
#
# Steps: `helm upgrade` with autoscaling on (min 2, max 3, TARGET sockets per pod, no CPU
# metric: this node runs no metrics-server), the HPA holding 2 gateways; the adapter and
# the APIService; SOCKETS WebSockets through the gateways' Service; the custom metrics API
# reports them per pod; the HPA scales the Deployment to 3 and the third gateway becomes
# Ready. Then the sockets close, the APIService goes and `helm upgrade` turns autoscaling
# off again (2 gateways), so the later checks find the release as installed.
# See docs/dev/node.md.
#
# Usage: scripts/kube/autoscale-on-node.sh
# Environment: HERMES_AUTOSCALE_TARGET (10), HERMES_AUTOSCALE_SOCKETS (40)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

log() { printf '[autoscale] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/kube/on-release.sh
source "$HERE/on-release.sh"
# shellcheck source=scripts/kube/release-prometheus.sh
source "$HERE/release-prometheus.sh"
ADAPTER=$("$ROOT/scripts/prometheus-adapter.sh" build)
TARGET=${HERMES_AUTOSCALE_TARGET:-10}
SOCKETS=${HERMES_AUTOSCALE_SOCKETS:-40}
[ "$SOCKETS" -gt $((2 * TARGET)) ] || die "SOCKETS ($SOCKETS) must exceed 2 x TARGET ($TARGET) for a third gateway"
ADAPTER_NS=hermes-metrics
APISERVICE=v1beta1.custom.metrics.k8s.io
PKI=$(dirname "$KUBECONFIG")/pki
HOST_IP=$(eval "$("$HERE/node.sh" env)"; echo "$HERMES_NODE_HOST_IP")
work_dir autoscale

hpa_json() { kc get hpa "$RELEASE-gateway" -o json; }
gateways_settled() { # gateways_settled N: N Ready gateways, none terminating, the HPA at N
  local pods
  pods=$(kc get pods -l app.kubernetes.io/component=gateway -o json)
  [ "$(jq '[.items[] | select(.metadata.deletionTimestamp == null)
      | select([.status.conditions[]? | select(.type == "Ready" and .status == "True")] | length > 0)] | length' <<< "$pods")" = "$1" ] &&
    [ "$(jq '.items | length' <<< "$pods")" = "$1" ] &&
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

# 2. Prometheus, then prometheus-adapter with the rule docs/kubernetes.md gives.
start_release_prometheus
{
  echo "rules:"
  awk '/^# prometheus-adapter values/ { f = 1; next } f && /^```/ { exit } c { print } f && /^  custom:$/ { c = 1 }' \
    "$ROOT/docs/kubernetes.md"
} > "$work/adapter.yaml"
grep -q 'seriesQuery:.*hermes_connections_open' "$work/adapter.yaml" ||
  die "no prometheus-adapter rule for hermes_connections_open found in docs/kubernetes.md"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/adapter.key" \
  -out "$work/adapter.csr" -subj "/CN=adapter.$ADAPTER_NS.svc" 2>/dev/null
printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
  "extendedKeyUsage=serverAuth" "subjectAltName=DNS:adapter.$ADAPTER_NS.svc,IP:$HOST_IP" > "$work/adapter.ext"
openssl x509 -req -in "$work/adapter.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
  -CAserial "$work/ca.srl" -days 1 -sha256 -extfile "$work/adapter.ext" -out "$work/adapter.crt" 2>/dev/null ||
  die "openssl could not sign the adapter's certificate"
aport=16443
while port_open "$aport"; do aport=$((aport + 1)); done
background "$ADAPTER" --secure-port="$aport" --bind-address="$HOST_IP" \
  --tls-cert-file="$work/adapter.crt" --tls-private-key-file="$work/adapter.key" \
  --lister-kubeconfig="$KUBECONFIG" --authentication-kubeconfig="$KUBECONFIG" \
  --authorization-kubeconfig="$KUBECONFIG" --prometheus-url="$url" \
  --metrics-relist-interval=5s --config="$work/adapter.yaml" --v=1 > "$work/adapter.log" 2>&1
on_exit '[ "$exit_rc" = 0 ] || tail -n 20 "$work/adapter.log" | sed "s/^/    adapter: /" >&2'
on_exit '"$HERMES_KUBECTL" delete apiservice "$APISERVICE" --ignore-not-found >/dev/null'
on_exit '"$HERMES_KUBECTL" delete namespace "$ADAPTER_NS" --ignore-not-found --wait=false >/dev/null'
"$HERMES_KUBECTL" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $ADAPTER_NS
---
apiVersion: v1
kind: Service
metadata:
  name: adapter
  namespace: $ADAPTER_NS
spec:
  ports:
    - name: https
      port: 443
      targetPort: $aport
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: adapter-host
  namespace: $ADAPTER_NS
  labels:
    kubernetes.io/service-name: adapter
addressType: IPv4
endpoints:
  - addresses: ["$HOST_IP"]
    conditions:
      ready: true
ports:
  - name: https
    port: $aport
    protocol: TCP
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: $APISERVICE
spec:
  group: custom.metrics.k8s.io
  version: v1beta1
  service:
    namespace: $ADAPTER_NS
    name: adapter
    port: 443
  caBundle: $(base64 -w0 < "$PKI/ca.crt")
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
apiservice_available() {
  [ "$("$HERMES_KUBECTL" get apiservice "$APISERVICE" -o json |
    jq -r '.status.conditions[]? | select(.type == "Available") | .status')" = True ]
}
on_exit '[ "$exit_rc" = 0 ] || "$HERMES_KUBECTL" get apiservice "$APISERVICE" -o json 2>/dev/null |
  jq -r ".status.conditions[]? | \"    APIService \\(.type)=\\(.status): \\(.message)\"" >&2'
until_true 90 "APIService $APISERVICE Available" apiservice_available
log "prometheus-adapter on https://$HOST_IP:$aport serves $APISERVICE through the API server"

# 3. Sockets through the gateways' Service (kube-proxy spreads them over both pods).
cluster_ip=$(kc get service "$RELEASE" -o jsonpath='{.spec.clusterIP}')
admin_ip=$(ready_gateway_ip)
token=$(curl -sf --max-time 10 -X POST "http://$admin_ip:8081/v1/tokens" -H "Authorization: Bearer $(release_admin_key)" \
  -H 'Content-Type: application/json' -d '{"user_id":"autoscale","room_id":"autoscale"}' | jq -r .token)
[ -n "$token" ] && [ "$token" != null ] || die "no token from the admin API of $admin_ip"
HERMES_WS="ws://$cluster_ip:8080/production" HERMES_TOKEN=$token N=$SOCKETS \
  background node --experimental-websocket --no-warnings -e '
    const n = Number(process.env.N);
    let open = 0;
    for (let i = 0; i < n; i++) {
      const ws = new WebSocket(process.env.HERMES_WS, ["hermes.v1", "bearer." + process.env.HERMES_TOKEN]);
      ws.onopen = () => { if (++open === n) console.log("open " + n); };
      ws.onclose = (e) => { console.log("a socket closed: " + e.code); process.exit(1); };
    }
    setInterval(() => {}, 1 << 30);' > "$work/sockets.log" 2>&1
sockets_open() {
  grep -q "^open $SOCKETS$" "$work/sockets.log" ||
    { grep -q "closed" "$work/sockets.log" && die "$(cat "$work/sockets.log")"; return 1; }
}
until_true 60 "$SOCKETS WebSockets open through Service $cluster_ip" sockets_open
log "$SOCKETS WebSockets open through the Service ($cluster_ip:8080)"

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
until_true 180 "the HPA scaling the gateways to 3 ($(hpa_json | jq -c '[.status.conditions[]? | {type, status, reason}]'))" \
  gateways_settled 3
log "HPA: $(hpa_json | jq -r '"desired \(.status.desiredReplicas), current \(.status.currentReplicas), metric \(.status.currentMetrics[0].pods.current.averageValue) per pod"'); 3 gateways Ready $((SECONDS - t0)) s after the metric"
kc get pods -l app.kubernetes.io/component=gateway -o wide >&2

# 6. Back as installed: the sockets close, autoscaling off (2 gateways).
kill "${bg_pids[-1]}" 2>/dev/null || true
"$HELM" upgrade "$RELEASE" "$ROOT/charts/hermes" -n "$NS" --reuse-values --set autoscaling.enabled=false \
  --wait --timeout 300s >/dev/null || die "helm upgrade turning autoscaling off failed"
log "autoscaling off again: $(kc get deployment "$RELEASE-gateway" -o jsonpath='{.spec.replicas}') gateways"
