# Prometheus for the release of on-release.sh, the way the chart's ServiceMonitor selects
# it: sourced after on-release.sh and `work_dir` by prometheus-on-node.sh and
# autoscale-on-node.sh. Prometheus (built from its Go module by scripts/prometheus.sh) on
# the host with Kubernetes service discovery (role endpointslice, the node's kubeconfig),
# one scrape job per ServiceMonitor endpoint, rendered from the release's own values
# (metrics.serviceMonitor.enabled, a 2 s interval): keep the Services the ServiceMonitor's
# selector matches and the endpoint port it names, target labels
# namespace/service/pod/container/endpoint and job from its jobLabel, as the Prometheus
# Operator does; the chart's PrometheusRule groups loaded as its rule file.
#
#   start_release_prometheus   start it, wait until every gateway and consumer pod is
#                              scraped; sets url (http://127.0.0.1:PORT) and rules (the
#                              number of alert rules)
#   use_existing_prometheus    HERMES_KUBE_CLUSTER=existing: the cluster's Prometheus at
#                              HERMES_PROMETHEUS_URL (the release has
#                              metrics.serviceMonitor and metrics.prometheusRule on);
#                              sets url and rules
#   query PROMQL               the number of series an instant query returns
# shellcheck shell=bash

query() { curl -sf --max-time 5 "$url/api/v1/query" --data-urlencode "query=$1" | jq -r '.data.result | length'; }

render_monitoring() { # the ServiceMonitor and the PrometheusRule as JSON in $work
  # kubectl turns them into JSON; it must know the kinds: on the node the stub CRDs of the
  # dry run make them known, another cluster has the Prometheus Operator's own
  if [ "$CLUSTER" = node ]; then
    "$HERMES_KUBECTL" apply --server-side --field-manager=hermes-ci -f "$HERE/crds/servicemonitor-stub.yaml" \
      -f "$HERE/crds/prometheusrule-stub.yaml" >/dev/null
    "$HERMES_KUBECTL" wait --for=condition=Established --timeout=60s crd/servicemonitors.monitoring.coreos.com \
      crd/prometheusrules.monitoring.coreos.com >/dev/null
  fi
  "$HELM" get values "$RELEASE" -n "$NS" -o yaml > "$work/values.yaml"
  render() { # render TEMPLATE: the object as JSON
    "$HELM" template "$RELEASE" "$ROOT/charts/hermes" -n "$NS" -f "$work/values.yaml" \
      --set metrics.serviceMonitor.enabled=true --set metrics.serviceMonitor.interval=2s \
      --set metrics.serviceMonitor.scrapeTimeout=1s --set metrics.prometheusRule.enabled=true \
      --show-only "templates/$1" | "$HERMES_KUBECTL" create --dry-run=client -o json -f -
  }
  render servicemonitor.yaml > "$work/servicemonitor.json"
  render prometheusrule.yaml > "$work/prometheusrule.json"
  jq '{groups: .spec.groups}' "$work/prometheusrule.json" > "$work/rules.json"
  rules=$(jq '[.groups[].rules[] | select(.alert)] | length' "$work/rules.json")
}

use_existing_prometheus() {
  url=${HERMES_PROMETHEUS_URL:-}
  [ -n "$url" ] || die "set HERMES_PROMETHEUS_URL to the cluster's Prometheus (it scrapes the release through the chart's ServiceMonitor)"
  render_monitoring
  curl -sf --max-time 5 "$url/-/ready" >/dev/null || die "Prometheus at $url is not ready"
  local up
  up=$(query 'up{namespace="'"$NS"'"} == 1' 2>/dev/null || echo 0)
  [ "$up" -gt 0 ] || die "Prometheus at $url scrapes no target of namespace $NS (metrics.serviceMonitor.enabled?)"
  log "Prometheus $url: $up targets up in $NS"
}

start_release_prometheus() {
  local prometheus_dir port want
  prometheus_dir=$("$ROOT/scripts/prometheus.sh" build)
  # 1. The ServiceMonitor and the PrometheusRule as the chart renders them for this release.
  render_monitoring

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
  "$prometheus_dir/promtool" check config "$work/prometheus.json" >/dev/null ||
    die "promtool refused the configuration: $("$prometheus_dir/promtool" check config "$work/prometheus.json" 2>&1)"

  # 3. Prometheus on the host (it reaches the API server and the pod IPs).
  port=$(free_port_from 19090)
  background "$prometheus_dir/prometheus" --config.file="$work/prometheus.json" --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$port" > "$work/prometheus.log" 2>&1
  url=http://127.0.0.1:$port
  want=$(kc get pods -o json | jq '[.items[] | select(.metadata.deletionTimestamp == null)
    | select(.metadata.labels["app.kubernetes.io/component"] == "gateway" or .metadata.labels["app.kubernetes.io/component"] == "consumer")] | length')
  targets_up() { [ "$(query 'up{namespace="'"$NS"'"} == 1' 2>/dev/null || echo 0)" = "$want" ]; }
  on_exit '[ "$exit_rc" = 0 ] || tail -n 5 "$work/prometheus.log" | sed "s/^/    prometheus: /" >&2'
  until_true 90 "every gateway and consumer pod scraped (up == 1, $want targets)" targets_up
  log "Prometheus $url: $want targets up through Kubernetes service discovery"
  curl -sf "$url/api/v1/targets" | jq -r '.data.activeTargets[] | "    \(.labels.job) \(.labels.namespace)/\(.labels.pod) service=\(.labels.service) endpoint=\(.labels.endpoint) \(.health)"' >&2
}
