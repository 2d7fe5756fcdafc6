#!/usr/bin/env bash
# Prometheus scraping the release scripts/kube/install-on-node.sh made (namespace
# hermes-deployment) the way the chart's ServiceMonitor selects it: Prometheus (built from
# its Go module by scripts/prometheus.sh) on the host with Kubernetes service discovery
# (role endpointslice, the node's kubeconfig), one scrape job per ServiceMonitor endpoint,
# rendered from the release's own values (metrics.serviceMonitor.enabled, a 2 s interval):
# keep the Services the ServiceMonitor's selector matches and the endpoint port it names,
# target labels namespace/service/pod/container/endpoint and job from its jobLabel, as the
# Prometheus Operator does; the chart's PrometheusRule groups loaded as its rule file.
# Then traffic (a refused connect, the fault checker's clients and publisher through the
# Service and RabbitMQ, one poison message, a client's ping), and tests/src/bin/prometheus-check.rs: every
# query of the Grafana dashboard evaluates and returns data (except the families named
# below, with why), every alert rule is loaded and evaluated with health ok.
# See docs/dev/node.md.
#
# Usage: scripts/kube/prometheus-on-node.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

log() { printf '[prometheus] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/kube/on-release.sh
source "$HERE/on-release.sh"
PROMETHEUS_DIR=$("$ROOT/scripts/prometheus.sh" build)
build_e2e_bins prometheus-check installed-faults amqp-publish

work=$(mktemp -d -t hermes-prometheus.XXXXXX)
prom_pid=
cleanup() {
  [ -z "$prom_pid" ] || kill "$prom_pid" 2>/dev/null || true
  [ -z "$prom_pid" ] || wait "$prom_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# 1. The ServiceMonitor and the PrometheusRule as the chart renders them for this release
#    (kubectl turns them into JSON: the stub CRDs of the dry run make the kinds known).
"$HERMES_KUBECTL" apply --server-side --field-manager=hermes-ci -f "$HERE/crds/servicemonitor-stub.yaml" \
  -f "$HERE/crds/prometheusrule-stub.yaml" >/dev/null
"$HERMES_KUBECTL" wait --for=condition=Established --timeout=60s crd/servicemonitors.monitoring.coreos.com \
  crd/prometheusrules.monitoring.coreos.com >/dev/null
"$HELM" get values "$RELEASE" -n "$NS" -o yaml > "$work/values.yaml"
render() { # render TEMPLATE: the object as JSON
  "$HELM" template "$RELEASE" "$ROOT/charts/hermes" -n "$NS" -f "$work/values.yaml" \
    --set metrics.serviceMonitor.enabled=true --set metrics.serviceMonitor.interval=2s \
    --set metrics.serviceMonitor.scrapeTimeout=1s --set metrics.prometheusRule.enabled=true \
    --show-only "templates/$1" | "$HERMES_KUBECTL" create --dry-run=client -o json -f -
}
render servicemonitor.yaml > "$work/servicemonitor.json"
render prometheusrule.yaml > "$work/prometheusrule.json"

# 2. Prometheus's configuration: what the Operator generates from that ServiceMonitor.
jq --arg kubeconfig "$KUBECONFIG" --arg rules "$work/rules.json" '
  def sanitize: gsub("[^a-zA-Z0-9_]"; "_");
  . as $sm
  | {global: {scrape_interval: "2s", evaluation_interval: "2s"},
     rule_files: [$rules],
     scrape_configs: [ $sm.spec.endpoints | to_entries[] | .key as $i | .value as $ep | {
       job_name: "serviceMonitor/\($sm.metadata.namespace)/\($sm.metadata.name)/\($i)",
       scrape_interval: $ep.interval, scrape_timeout: $ep.scrapeTimeout, metrics_path: $ep.path,
       kubernetes_sd_configs: [{role: "endpointslice", kubeconfig_file: $kubeconfig,
                                namespaces: {names: $sm.spec.namespaceSelector.matchNames}}],
       relabel_configs: (
         [ $sm.spec.selector.matchLabels | to_entries[] |
           {source_labels: ["__meta_kubernetes_service_label_\(.key | sanitize)"], regex: .value, action: "keep"} ]
         + [ {source_labels: ["__meta_kubernetes_endpointslice_port_name"], regex: $ep.port, action: "keep"},
             {source_labels: ["__meta_kubernetes_namespace"], target_label: "namespace"},
             {source_labels: ["__meta_kubernetes_service_name"], target_label: "service"},
             {source_labels: ["__meta_kubernetes_pod_name"], target_label: "pod"},
             {source_labels: ["__meta_kubernetes_pod_container_name"], target_label: "container"},
             {target_label: "endpoint", replacement: $ep.port},
             {source_labels: ["__meta_kubernetes_service_name"], target_label: "job"},
             {source_labels: ["__meta_kubernetes_service_label_\($sm.spec.jobLabel | sanitize)"],
              regex: "(.+)", target_label: "job", replacement: "$1"} ])
     } ] }' "$work/servicemonitor.json" > "$work/prometheus.json"
jq '{groups: .spec.groups}' "$work/prometheusrule.json" > "$work/rules.json"
rules=$(jq '[.groups[].rules[] | select(.alert)] | length' "$work/rules.json")
"$PROMETHEUS_DIR/promtool" check config "$work/prometheus.json" >/dev/null ||
  die "promtool refused the configuration: $("$PROMETHEUS_DIR/promtool" check config "$work/prometheus.json" 2>&1)"

# 3. Prometheus on the host (it reaches the API server and the pod IPs).
port=19090
while port_open "$port"; do port=$((port + 1)); done
"$PROMETHEUS_DIR/prometheus" --config.file="$work/prometheus.json" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$port" > "$work/prometheus.log" 2>&1 &
prom_pid=$!
url=http://127.0.0.1:$port
query() { curl -sf --max-time 5 "$url/api/v1/query" --data-urlencode "query=$1" | jq -r '.data.result | length'; }
until_true() { # until_true SECONDS WHAT COMMAND...: poll every 0.5 s
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what: not within the deadline; log: $(tail -5 "$work/prometheus.log")"
    sleep 0.5
  done
}
targets_up() { [ "$(query 'up{namespace="'"$NS"'"} == 1' 2>/dev/null || echo 0)" = "$want" ]; }
want=$(kc get pods -o json | jq '[.items[] | select(.metadata.deletionTimestamp == null)
  | select(.metadata.labels["app.kubernetes.io/component"] == "gateway" or .metadata.labels["app.kubernetes.io/component"] == "consumer")] | length')
until_true 90 "every gateway and consumer pod scraped (up == 1, $want targets)" targets_up
log "Prometheus $url: $want targets up through Kubernetes service discovery"
curl -sf "$url/api/v1/targets" | jq -r '.data.activeTargets[] | "    \(.labels.job) \(.labels.namespace)/\(.labels.pod) service=\(.labels.service) endpoint=\(.labels.endpoint) \(.health)"' >&2

# 4. Traffic that gives the labelled families their series.
cluster_ip=$(kc get service "$RELEASE" -o jsonpath='{.spec.clusterIP}')
refused=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
  -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
  "http://$cluster_ip:8080/production?token=not-a-jwt")
[ "$refused" = 401 ] || die "a connect with a bad token answered $refused, not 401"
admin_ip=$(ready_gateway_ip)
HERMES_ADMIN_KEY=$(release_admin_key)
export HERMES_ADMIN_KEY
"$CARGO_TARGET_DIR/debug/installed-faults" --ws "ws://$cluster_ip:8080/production" \
  --admin "http://$admin_ip:8081" --queue "$QUEUE" --rate 20 --settle 3 --rust-clients 2 \
  --node-clients 1 --name "nothing (traffic for the scrape)" -- true >/dev/null ||
  die "the traffic (installed-faults) failed"
"$CARGO_TARGET_DIR/debug/amqp-publish" --not-json "$QUEUE" 'not json'
# a client frame: {"action":"ping"} from a socket (Node's WebSocket), answered, then closed
token=$(curl -sf --max-time 10 -X POST "http://$admin_ip:8081/v1/tokens" -H "Authorization: Bearer $HERMES_ADMIN_KEY" \
  -H 'Content-Type: application/json' -d '{"user_id":"prometheus-ping","room_id":"prometheus"}' | jq -r .token)
HERMES_WS="ws://$cluster_ip:8080/production" HERMES_TOKEN=$token timeout 20 node --experimental-websocket --no-warnings -e '
  const ws = new WebSocket(process.env.HERMES_WS, ["hermes.v1", "bearer." + process.env.HERMES_TOKEN]);
  ws.onopen = () => ws.send(JSON.stringify({ action: "ping" }));
  ws.onmessage = (e) => { if (JSON.parse(e.data).event === "pong") { ws.close(1000); } };
  ws.onclose = (e) => process.exit(e.code === 1000 ? 0 : 1);
  ws.onerror = () => process.exit(1);' || die "a ping over a socket through the Service got no pong"
# scraped twice since (a rate needs two samples): the consumer's dead letter, the
# gateway's client frame
scraped() {
  [ "$(query 'rate(hermes_dead_letters_total{reason="invalid_message"}[15s])' 2>/dev/null || echo 0)" -gt 0 ] &&
    [ "$(query 'rate(hermes_messages_received_total[15s])' 2>/dev/null || echo 0)" -gt 0 ]
}
until_true 60 "the poison message's dead letter and the ping scraped" scraped

# 5. Every dashboard query and alert rule.
# No data on a healthy cluster after this traffic, by design (they evaluate all the same):
#   hermes_messages_dropped_total   labelled by reason: needs a dropped frame
#   hermes_route_skipped_total      labelled by reason: needs a terminating gateway skipped
#   hermes_route_calls_total        labelled by route: no route integration configured
#   hermes_reaped_rows_total        needs a dead gateway's rows reaped (disruption-on-node.sh)
"$CARGO_TARGET_DIR/debug/prometheus-check" --url "$url" --rules "$rules" \
  --exempt hermes_messages_dropped_total --exempt hermes_route_skipped_total \
  --exempt hermes_route_calls_total --exempt hermes_reaped_rows_total
