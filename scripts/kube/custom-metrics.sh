# prometheus-adapter serving custom.metrics.k8s.io on the local node, for the release of
# on-release.sh: sourced after on-release.sh, release-prometheus.sh and `work_dir` by
# autoscale-on-node.sh. Prometheus as the chart's ServiceMonitor selects the pods
# (start_release_prometheus), then prometheus-adapter (built from its Go module by
# scripts/prometheus-adapter.sh) on the host with the rule docs/kubernetes.md gives, read
# from that page, as an extension API server of the node's kube-apiserver (the node
# profile of control-plane.sh turns the aggregation layer on): an APIService, a Service
# without selector and an EndpointSlice to the host's address, a serving certificate
# signed by the cluster CA for the Service's name. Removed on exit (on_exit).
#
#   serve_custom_metrics    start both, wait until the APIService is Available
#   apiservice_available    whether APIService v1beta1.custom.metrics.k8s.io is Available
# shellcheck shell=bash
ADAPTER_NS=hermes-metrics
APISERVICE=v1beta1.custom.metrics.k8s.io

apiservice_available() {
  [ "$("$HERMES_KUBECTL" get apiservice "$APISERVICE" -o json 2>/dev/null |
    jq -r '.status.conditions[]? | select(.type == "Available") | .status')" = True ]
}

serve_custom_metrics() {
  local adapter pki host_ip aport
  adapter=$("$ROOT/scripts/prometheus-adapter.sh" build)
  pki=$(dirname "$KUBECONFIG")/pki
  host_ip=$HERMES_NODE_HOST_IP
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
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:adapter.$ADAPTER_NS.svc,IP:$host_ip" > "$work/adapter.ext"
  openssl x509 -req -in "$work/adapter.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -CAserial "$work/ca.srl" -days 1 -sha256 -extfile "$work/adapter.ext" -out "$work/adapter.crt" 2>/dev/null ||
    die "openssl could not sign the adapter's certificate"
  aport=$(free_port_from 16443)
  background "$adapter" --secure-port="$aport" --bind-address="$host_ip" \
    --tls-cert-file="$work/adapter.crt" --tls-private-key-file="$work/adapter.key" \
    --lister-kubeconfig="$KUBECONFIG" --authentication-kubeconfig="$KUBECONFIG" \
    --authorization-kubeconfig="$KUBECONFIG" --prometheus-url="$url" \
    --metrics-relist-interval=5s --config="$work/adapter.yaml" --v=1 > "$work/adapter.log" 2>&1
  on_exit '[ "$exit_rc" = 0 ] || tail -n 20 "$work/adapter.log" | sed "s/^/    adapter: /" >&2'
  on_exit '"$HERMES_KUBECTL" delete apiservice "$APISERVICE" --ignore-not-found >/dev/null'
  on_exit '"$HERMES_KUBECTL" delete namespace "$ADAPTER_NS" --ignore-not-found --wait=false >/dev/null'
  # a namespace an earlier run deleted may still be terminating
  "$HERMES_KUBECTL" wait --for=delete "namespace/$ADAPTER_NS" --timeout=120s >/dev/null 2>&1 ||
    die "namespace $ADAPTER_NS still terminating after 120 s"
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
  - addresses: ["$host_ip"]
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
  caBundle: $(base64 -w0 < "$pki/ca.crt")
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
  on_exit '[ "$exit_rc" = 0 ] || "$HERMES_KUBECTL" get apiservice "$APISERVICE" -o json 2>/dev/null |
    jq -r ".status.conditions[]? | \"    APIService \\(.type)=\\(.status): \\(.message)\"" >&2'
  until_true 90 "APIService $APISERVICE Available" apiservice_available
  log "prometheus-adapter on https://$host_ip:$aport serves $APISERVICE through the API server"
}
