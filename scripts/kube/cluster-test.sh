#!/usr/bin/env bash
# The node checks of scripts/kube/node-test.sh on any existing cluster (kind, minikube, a
# cloud one) where Hermes is installed in consumer.mode deployment with 2 or more
# gateways: HERMES_KUBE_CLUSTER=existing for scripts/kube/on-release.sh and the check
# scripts. See docs/kubernetes.md, "The same checks on another cluster".
#
#   helm test                 always
#   upgrade under load        HERMES_UPGRADE_TAG (a second tag of the running image)
#   wss:// through ingress    HERMES_WSS_URL (Chromium must trust its certificate)
#   Prometheus queries/rules  HERMES_PROMETHEUS_URL (scraping the release through the
#                             chart's ServiceMonitor, its PrometheusRule loaded)
#   PDB                       always (evicts gateway pods through the eviction API)
#   HPA 2 -> 3                HERMES_AUTOSCALE=1 and prometheus-adapter with the rule of
#                             docs/kubernetes.md (changes the release's autoscaling values
#                             and turns them off again)
# A check whose input is not given is skipped, and said so.
#
# Usage: KUBECONFIG=... HERMES_NAMESPACE=... HERMES_WS_URL=... HERMES_TEST_AMQP_URL=... \
#          scripts/kube/cluster-test.sh
# Prints one line per check and `cluster: N passed, N failed, N skipped`; exit 1 on a
# failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export HERMES_KUBE_CLUSTER=existing
# shellcheck source=scripts/kube/parts.sh
source "$HERE/parts.sh"
for var in KUBECONFIG HERMES_NAMESPACE HERMES_WS_URL HERMES_TEST_AMQP_URL; do
  [ -n "${!var:-}" ] || { echo "cluster-test: set $var (see the header of $0)" >&2; exit 2; }
done
trap 'echo "cluster: $passed passed, $failed failed, $skipped skipped"' EXIT
HELM=$("$HERE/helm.sh" build)
release=${HERMES_RELEASE:-hermes}

part "helm test" "$HELM" test "$release" -n "$HERMES_NAMESPACE" --logs --timeout 300s || true
if [ -n "${HERMES_UPGRADE_TAG:-}" ]; then
  part "helm upgrade to $HERMES_UPGRADE_TAG under load: 0 lost, 0 duplicated" "$HERE/upgrade-on-node.sh" || true
else
  skip "upgrade under load" "HERMES_UPGRADE_TAG not set"
fi
if [ -n "${HERMES_WSS_URL:-}" ]; then
  part "wss:// through the ingress: Chromium, original snippet + hermes.js" "$HERE/ingress-on-node.sh" || true
else
  skip "wss:// through the ingress" "HERMES_WSS_URL not set"
fi
if [ -n "${HERMES_PROMETHEUS_URL:-}" ]; then
  part "Prometheus: every dashboard query and alert rule" "$HERE/prometheus-on-node.sh" || true
else
  skip "Prometheus queries and rules" "HERMES_PROMETHEUS_URL not set"
fi
part "PDB: a second gateway eviction refused" "$HERE/disruption-on-node.sh" pdb || true
if [ "${HERMES_AUTOSCALE:-0}" = 1 ]; then
  part "HPA on open connections per pod: 2 -> 3 gateways" "$HERE/autoscale-on-node.sh" || true
else
  skip "HPA 2 -> 3" "HERMES_AUTOSCALE=1 not set"
fi
[ "$failed" -eq 0 ]
