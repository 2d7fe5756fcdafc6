#!/usr/bin/env bash
# Applies every manifest the chart renders (one file per charts/hermes/ci/*-values.yaml
# fixture, plus k8s/dev/values-dev.yaml) and k8s/hermes.yaml to the local kube-apiserver
# (scripts/kube/control-plane.sh) as a server-side dry run with strict field validation:
# no invalid field, no schema drift. ServiceMonitor objects are checked against a stub CRD
# (scripts/kube/crds/servicemonitor-stub.yaml: group/version/kind only; prometheusrule-stub.yaml:
# the rule groups' schema); HTTPRoute objects against the Gateway API's own CRD (from the Go
# module sigs.k8s.io/gateway-api).
#
#   scripts/kube/dry-run.sh          prints "dry-run: N passed, M failed", exits 1 on failure
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

"$here/control-plane.sh" start >/dev/null
eval "$("$here/control-plane.sh" env)"
export KUBECONFIG
kubectl="${HERMES_KUBECTL:?control-plane.sh env sets HERMES_KUBECTL}"

out="$(mktemp -d -t hermes-dry-run.XXXXXX)"
trap 'rm -rf "$out"' EXIT
HERMES_HELM_OUT="$out" "$here/helm.sh" lint >/dev/null
cp k8s/hermes.yaml "$out/k8s-hermes.yaml"

"$kubectl" apply --server-side --field-manager=hermes-ci -f "$here/crds/servicemonitor-stub.yaml" \
  -f "$here/crds/prometheusrule-stub.yaml" >/dev/null
"$kubectl" wait --for=condition=Established --timeout=60s crd/servicemonitors.monitoring.coreos.com \
  crd/prometheusrules.monitoring.coreos.com >/dev/null
# The Gateway API's HTTPRoute CRD, the real one, from its Go module (the chart's
# httpRoute option; the HA fixture renders one).
gateway_api=sigs.k8s.io/gateway-api@${HERMES_GATEWAY_API_VERSION:-v1.6.3}
gateway_api_dir=$(go mod download -json "$gateway_api" | jq -r '.Dir // empty')
[ -n "$gateway_api_dir" ] || { echo "dry-run: go mod download $gateway_api failed" >&2; exit 1; }
"$kubectl" apply --server-side --field-manager=hermes-ci \
  -f "$gateway_api_dir/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml" >/dev/null
"$kubectl" wait --for=condition=Established --timeout=60s crd/httproutes.gateway.networking.k8s.io >/dev/null
"$kubectl" create namespace hermes --dry-run=client -o yaml | "$kubectl" apply --server-side --field-manager=hermes-ci -f - >/dev/null

passed=0
failed=0
for file in "$out"/*.yaml; do
  name="$(basename "$file" .yaml)"
  if result="$("$kubectl" apply --server-side --dry-run=server --validate=strict \
      --field-manager=hermes-ci -n hermes -f "$file" 2>&1)"; then
    echo "dry-run: $name: $(grep -c 'server dry run' <<<"$result") objects accepted"
    passed=$((passed + 1))
  else
    echo "dry-run: $name: REFUSED"
    sed 's/^/    /' <<<"$result"
    failed=$((failed + 1))
  fi
done
echo "dry-run: $passed passed, $failed failed"
((failed == 0))
