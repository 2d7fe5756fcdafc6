#!/usr/bin/env bash
# `helm install` of charts/hermes on the local node (scripts/kube/node.sh), the
# way a user would: the image built without a Docker engine
# (scripts/image/build.sh) and loaded into the node's containerd, pullPolicy
# Never, 2 gateways, the consumer on RabbitMQ, Cassandra and RabbitMQ of
# scripts/services reached from the pods at host.hermes.internal; waits until
# every pod is Running and Ready, then `helm test`. See docs/dev/node.md.
#
# Usage: scripts/kube/install-on-node.sh [install] [--mode deployment|sidecar] [--no-build]
#        scripts/kube/install-on-node.sh uninstall [--mode deployment|sidecar]
#   --mode      consumer.mode (default deployment); each mode is its own release
#               in its own namespace (hermes-<mode>), keyspace and queue
#   --no-build  use the image tarballs already built (no cargo, no npm)
#
# Environment:
#   HERMES_IMAGE_TAG   image tag (default: build.sh's, dev-<git commit>)
#   HERMES_INSTALL_TIMEOUT  seconds for `helm install --wait` (default 300)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${HERMES_CACHE:-$HOME/.cache/hermes}
TIMEOUT=${HERMES_INSTALL_TIMEOUT:-300}

log() { printf '[install] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cmd=install mode=deployment build=1
while [ $# -gt 0 ]; do
  case $1 in
    install | uninstall) cmd=$1 ;;
    --mode) mode=${2:?--mode deployment|sidecar}; shift ;;
    --no-build) build=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
case $mode in deployment | sidecar) ;; *) die "--mode must be deployment or sidecar" ;; esac

NS=hermes-$mode
RELEASE=hermes
KEYSPACE=hermes_kube_node_$mode
QUEUE=hermes-kube-node-$mode

now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1fs", ms / 1000 }'; }

HELM=$("$HERE/helm.sh" build)
helm() { "$HELM" "$@"; }

if [ "$cmd" = uninstall ]; then
  eval "$("$HERE/node.sh" env)"
  export KUBECONFIG
  helm uninstall "$RELEASE" -n "$NS" --wait || true
  "$HERMES_KUBECTL" delete namespace "$NS" --ignore-not-found
  exit 0
fi

t_all=$(now_ms)
# 1. the services the pods use (idempotent; leaves running ones alone)
"$ROOT/scripts/services/up.sh" cassandra rabbitmq >/dev/null ||
  die "scripts/services/up.sh cassandra rabbitmq failed"
# 2. the node
"$HERE/node.sh" up >/dev/null
eval "$("$HERE/node.sh" env)"
export KUBECONFIG
kc() { "$HERMES_KUBECTL" "$@"; }

# 3. the images
t0=$(now_ms)
build_args=()
[ "$build" = 1 ] || build_args+=(--no-cargo)
[ -z "${HERMES_IMAGE_TAG:-}" ] || build_args+=(--tag "$HERMES_IMAGE_TAG")
eval "$("$ROOT/scripts/image/build.sh" hermes "${build_args[@]}" --load)"
HERMES_TAR=$IMAGE_TAR HERMES_IMAGE=$IMAGE
NODE_TAR=$CACHE/images/node-test-${HERMES_NODE_TEST_VERSION:-22.23.5}.tar
if [ "$build" = 1 ] || [ ! -f "$NODE_TAR" ]; then
  eval "$("$ROOT/scripts/image/build.sh" node-test --load)"
  TEST_IMAGE=$IMAGE
else
  "$HERE/node.sh" load "$NODE_TAR"
  TEST_IMAGE=hermes.local/node:22
fi
log "images $HERMES_IMAGE ($HERMES_TAR) and $TEST_IMAGE loaded in $(secs $(( $(now_ms) - t0 )))"

# 4. helm install
values=$(mktemp)
trap 'rm -f "$values"' EXIT
cat > "$values" <<EOF
image:
  repository: ${HERMES_IMAGE%%:*}
  tag: "${HERMES_IMAGE#*:}"
  pullPolicy: Never
gateway:
  replicaCount: 2
consumer:
  mode: $mode
scylla:
  nodes: ["host.hermes.internal:9042"]
  keyspace: $KEYSPACE
  consistency: ONE
amqp:
  # through the node's forwarder RabbitMQ sees a loopback client, so guest may log in
  url: "amqp://guest:guest@host.hermes.internal:5672/%2f"
  queue: $QUEUE
tests:
  image: $TEST_IMAGE
pdb:
  enabled: true
EOF
t0=$(now_ms)
log "helm upgrade --install $RELEASE charts/hermes -n $NS (consumer.mode=$mode, image $HERMES_IMAGE, pullPolicy Never)"
if ! helm upgrade --install "$RELEASE" "$ROOT/charts/hermes" -n "$NS" --create-namespace \
  -f "$values" --wait --timeout "${TIMEOUT}s" >&2; then
  kc -n "$NS" get pods -o wide >&2 || true
  kc -n "$NS" describe pods >&2 || true
  kc -n "$NS" logs --all-containers --prefix -l app.kubernetes.io/instance="$RELEASE" --tail 20 >&2 || true
  die "helm install did not become ready"
fi
kc -n "$NS" get pods -o wide >&2
# every pod Running and Ready
not_ready=$(kc -n "$NS" get pods -o json | jq -r '.items[] | select(.metadata.annotations["helm.sh/hook"] == null)
  | select(.status.phase != "Running" or ([.status.conditions[]? | select(.type == "Ready" and .status == "True")] | length) == 0)
  | .metadata.name')
[ -z "$not_ready" ] || die "pods not Running and Ready: $not_ready"
pods=$(kc -n "$NS" get pods --no-headers | wc -l)
log "installed: $pods pods Running and Ready in $(secs $(( $(now_ms) - t0 )))"

# 5. helm test
t0=$(now_ms)
if ! helm test "$RELEASE" -n "$NS" --logs --timeout "${TIMEOUT}s" >&2; then
  die "helm test failed"
fi
log "helm test passed in $(secs $(( $(now_ms) - t0 ))) (all: $(secs $(( $(now_ms) - t_all ))))"
