#!/usr/bin/env bash
# Renders charts/hermes into plain manifests for users without helm: k8s/hermes.yaml.
#
# Usage: scripts/kube/render-manifests.sh           write k8s/hermes.yaml
#        scripts/kube/render-manifests.sh --check   fail (exit 1) if k8s/hermes.yaml is
#                                                   not what the chart renders now
#
# The render uses the chart's default values with two exceptions, so that the file is
# the same at every render and holds no secret: the Secret is expected to exist
# (secrets.existingSecret=hermes, created by the user: see the header of the file),
# and the `helm test` Pod is left out. Release "hermes", namespace "hermes".
# helm comes from scripts/kube/helm.sh (built from its Go module, cached).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CHART=$ROOT/charts/hermes
OUT=$ROOT/k8s/hermes.yaml
RELEASE=hermes
NAMESPACE=hermes
SECRET=hermes

log() { printf '[render-manifests] %s\n' "$*" >&2; }

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) log "unknown argument '$1' (--check)"; exit 2 ;;
esac

helm=$("$HERE/helm.sh")
chart_version=$(awk '$1 == "version:" { print $2; exit }' "$CHART/Chart.yaml")

render() {
  cat <<HEADER
# GENERATED FILE, do not edit: scripts/kube/render-manifests.sh renders it from
# charts/hermes (chart $chart_version) with the default values; CI checks that it is current.
#
# Plain manifests for clusters without helm: release "$RELEASE" in namespace "$NAMESPACE",
# ScyllaDB at scylla:9042, RabbitMQ at rabbitmq:5672 (see charts/hermes/values.yaml and
# docs/kubernetes.md). Create the namespace and the Secret first, then apply:
#
#   kubectl create namespace $NAMESPACE
#   kubectl -n $NAMESPACE create secret generic $SECRET \\
#     --from-literal=HERMES_JWT_SECRET="\$(openssl rand -hex 32)" \\
#     --from-literal=HERMES_ADMIN_KEY="\$(openssl rand -hex 24)" \\
#     --from-literal=HERMES_INTERNAL_SECRET="\$(openssl rand -hex 24)" \\
#     --from-literal=HERMES_AMQP_URL='amqp://USER:PASSWORD@rabbitmq:5672/%2f'
#   kubectl apply -n $NAMESPACE -f k8s/hermes.yaml
#
# The Job hermes-schema makes the registry's keyspace and tables (hermes-gateway migrate);
# the gateways and consumers only check them (HERMES_SCYLLA_SCHEMA=verify) and restart
# until the Job is done (helm runs it first, as a hook). Delete the Job before the next apply.
#
# The image is hermes:<appVersion>: build it and push it where your cluster pulls from,
# then edit the two image: lines (or use the chart, which has a value for it).
HEADER
  "$helm" template "$RELEASE" "$CHART" \
    --namespace "$NAMESPACE" \
    --set "secrets.existingSecret=$SECRET" \
    --skip-tests
}

if $check; then
  tmp=$(mktemp)
  trap 'rm -f "$tmp"' EXIT
  render >"$tmp"
  if ! [ -f "$OUT" ]; then
    log "k8s/hermes.yaml does not exist: run scripts/kube/render-manifests.sh"
    exit 1
  fi
  if ! diff -u "$OUT" "$tmp" >&2; then
    log "k8s/hermes.yaml is not current: run scripts/kube/render-manifests.sh and commit it"
    exit 1
  fi
  log "k8s/hermes.yaml is current"
else
  mkdir -p "$(dirname "$OUT")"
  render >"$OUT.tmp"
  mv -f "$OUT.tmp" "$OUT"
  log "wrote k8s/hermes.yaml ($(grep -c '^kind: ' "$OUT") objects)"
fi
