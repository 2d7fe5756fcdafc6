# Sourced by the scripts that work on an installed release in consumer.mode deployment
# (upgrade-, ingress-, prometheus-, disruption- and autoscale-on-node.sh), which set HERE,
# ROOT and LOG_TAG (the prefix of their log lines) first.
#
# The cluster (HERMES_KUBE_CLUSTER):
#   node       (default) the local node of scripts/kube/node.sh and the release
#              scripts/kube/install-on-node.sh --mode deployment made (namespace
#              hermes-deployment); the test services of scripts/services; the machine
#              reaches Service and pod IPs directly
#   existing   any cluster: KUBECONFIG (required), HERMES_NAMESPACE (required),
#              HERMES_RELEASE (default hermes), kubectl on PATH or HERMES_KUBECTL; the
#              gateways are reached at HERMES_WS_URL (what browsers use: an ingress or load
#              balancer), one gateway's admin API through `kubectl port-forward`, the
#              release's broker at HERMES_TEST_AMQP_URL (docs/kubernetes.md, "The same
#              checks on another cluster")
#
# Gives log MESSAGE, die MESSAGE, CLUSTER, NS, RELEASE, QUEUE (the release's amqp.queue),
# KUBECONFIG, kc, HELM, the test services' environment (node), CARGO_TARGET_DIR, and:
#   build_e2e_bins BIN...   cargo build of those binaries of tests/ (debug)
#   ready_gateways          the Ready gateway pods not being deleted, as a JSON array
#   ready_gateway_ip        the pod IP of a Ready gateway (its admin API on 8081)
#   open_admin              sets admin: the URL of a Ready gateway's admin API (node: its
#                           pod IP; existing: a port-forward, closed on exit), and
#                           admin_key: the admin key (release_admin_key)
#   issue_token USER ROOM   a connect token from that admin API (after open_admin)
#   gateway_ws_url          the URL clients connect to (node: the Service's ClusterIP;
#                           existing: HERMES_WS_URL)
#   release_admin_key       the admin key (HERMES_ADMIN_KEY, else the release's Secret)
#   node_only WHAT          die unless CLUSTER is node, naming WHAT
#   work_dir NAME           a temporary directory in $work, removed on exit after the
#                           exit hooks (on_exit COMMAND...: exit_rc holds the exit
#                           status) and the processes started
#                           with `background COMMAND...` (killed and waited for)
#   until_true SECONDS WHAT COMMAND...   poll every 0.5 s; die naming WHAT at the deadline
#   free_port_from PORT     the first port from PORT on that nothing listens on (127.0.0.1)
# shellcheck shell=bash
log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { log "error: $*"; exit 1; }
CACHE=${HERMES_CACHE:-$HOME/.cache/hermes}
CLUSTER=${HERMES_KUBE_CLUSTER:-node}
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

case $CLUSTER in
  node)
    NS=hermes-deployment
    RELEASE=hermes
    eval "$("$HERE/node.sh" env)"
    # the broker the release consumes from, as the host reaches it
    # shellcheck disable=SC1091
    . "$CACHE/services.env"
    ;;
  existing)
    [ -n "${KUBECONFIG:-}" ] || die "HERMES_KUBE_CLUSTER=existing: set KUBECONFIG to the cluster's kubeconfig"
    NS=${HERMES_NAMESPACE:-}
    [ -n "$NS" ] || die "HERMES_KUBE_CLUSTER=existing: set HERMES_NAMESPACE to the release's namespace"
    RELEASE=${HERMES_RELEASE:-hermes}
    HERMES_KUBECTL=${HERMES_KUBECTL:-$(command -v kubectl || true)}
    [ -n "$HERMES_KUBECTL" ] || HERMES_KUBECTL=$("$HERE/control-plane.sh" build >/dev/null && "$HERE/control-plane.sh" paths | awk '$1 == "kubectl:" { print $2 }')
    [ -x "$HERMES_KUBECTL" ] || die "no kubectl: put one on PATH or set HERMES_KUBECTL"
    [ -n "${HERMES_TEST_AMQP_URL:-}" ] || die "HERMES_KUBE_CLUSTER=existing: set HERMES_TEST_AMQP_URL to the release's broker as this machine reaches it"
    export HERMES_TEST_AMQP_URL
    ;;
  *) die "HERMES_KUBE_CLUSTER must be node or existing, not $CLUSTER" ;;
esac
export KUBECONFIG
kc() { "$HERMES_KUBECTL" -n "$NS" "$@"; }
kc get deployment "$RELEASE-gateway" >/dev/null 2>&1 || {
  [ "$CLUSTER" = existing ] || die "no release in $NS: run scripts/kube/install-on-node.sh --mode deployment first"
  die "no Deployment $RELEASE-gateway in namespace $NS (HERMES_NAMESPACE, HERMES_RELEASE)"
}
HELM=$("$HERE/helm.sh" build)
QUEUE=$("$HELM" get values "$RELEASE" -n "$NS" --all -o json | jq -r '.amqp.queue // empty')
[ -n "$QUEUE" ] || die "release $RELEASE in $NS has no amqp.queue"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}

node_only() {
  [ "$CLUSTER" = node ] || die "$1 needs the local node (HERMES_KUBE_CLUSTER=node)"
}

build_e2e_bins() {
  local args=() bin
  for bin in "$@"; do args+=(--bin "$bin"); done
  (cd "$ROOT" && cargo build -p hermes-e2e "${args[@]}" --locked --quiet) ||
    die "cargo build of $* failed"
}

ready_gateways() {
  kc get pods -l app.kubernetes.io/component=gateway -o json | jq '[.items[]
    | select(.metadata.deletionTimestamp == null)
    | select([.status.conditions[]? | select(.type == "Ready" and .status == "True")] | length > 0)]'
}

ready_gateway_ip() { ready_gateways | jq -r '.[0].status.podIP // empty'; }

release_admin_key() {
  if [ -n "${HERMES_ADMIN_KEY:-}" ]; then printf '%s' "$HERMES_ADMIN_KEY"; return; fi
  kc get secret "$RELEASE" -o jsonpath='{.data.HERMES_ADMIN_KEY}' | base64 -d
}

open_admin() {
  local ip pod port
  admin_key=$(release_admin_key)
  [ -n "$admin_key" ] || die "no admin key (HERMES_ADMIN_KEY, or HERMES_ADMIN_KEY in Secret $RELEASE)"
  if [ "$CLUSTER" = node ]; then
    ip=$(ready_gateway_ip)
    [ -n "$ip" ] || die "no Ready gateway"
    admin=http://$ip:8081
    return
  fi
  pod=$(ready_gateways | jq -r '.[0].metadata.name // empty')
  [ -n "$pod" ] || die "no Ready gateway"
  port=$(free_port_from 18081)
  background "$HERMES_KUBECTL" -n "$NS" port-forward "pod/$pod" "$port:8081" >/dev/null 2>&1
  until_true 30 "kubectl port-forward pod/$pod $port:8081" port_open "$port"
  admin=http://127.0.0.1:$port
}

issue_token() {
  local token
  token=$(curl -sf --max-time 10 -X POST "$admin/v1/tokens" -H "Authorization: Bearer $admin_key" \
    -H 'Content-Type: application/json' -d "{\"user_id\":\"$1\",\"room_id\":\"$2\"}" | jq -r .token)
  [ -n "$token" ] && [ "$token" != null ] || die "no token for $1 in $2 from the admin API at $admin"
  printf '%s' "$token"
}

gateway_ws_url() {
  if [ "$CLUSTER" = existing ]; then
    [ -n "${HERMES_WS_URL:-}" ] || die "HERMES_KUBE_CLUSTER=existing: set HERMES_WS_URL to the gateways' public URL (ws:// or wss://, with the stage path)"
    printf '%s' "$HERMES_WS_URL"
    return
  fi
  local ip port stage
  ip=$(kc get service "$RELEASE" -o jsonpath='{.spec.clusterIP}')
  port=$(kc get service "$RELEASE" -o jsonpath='{.spec.ports[?(@.name=="http")].port}')
  stage=$(kc get configmap "$RELEASE-gateway" -o jsonpath='{.data.HERMES_STAGE}' 2>/dev/null || true)
  [ -n "$ip" ] && [ -n "$port" ] || die "Service $RELEASE has no ClusterIP or http port"
  printf 'ws://%s:%s/%s' "$ip" "$port" "${stage:-production}"
}

work=
exit_hooks=()
bg_pids=()
work_dir() {
  work=$(mktemp -d -t "hermes-$1.XXXXXX")
  trap release_cleanup EXIT
}
on_exit() { exit_hooks+=("$*"); }
background() {
  "$@" &
  bg_pids+=($!)
}
release_cleanup() {
  exit_rc=$?
  local hook pid
  for hook in "${exit_hooks[@]}"; do eval "$hook" || true; done
  for pid in "${bg_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${bg_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -z "$work" ] || rm -rf "$work"
}

free_port_from() {
  local port=$1
  while port_open "$port"; do port=$((port + 1)); done
  echo "$port"
}

until_true() {
  local secs=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what: not within ${secs} s"
    sleep 0.5
  done
}
