#!/usr/bin/env bash
# helm, built from its Go module with the Go toolchain on the machine (module
# proxy only, no release download), cached by version outside the checkout.
#
# Usage: scripts/kube/helm.sh             build (or reuse) helm, print its path
#        scripts/kube/helm.sh lint        helm lint --strict + helm template of
#                                         charts/hermes with every
#                                         charts/hermes/ci/*-values.yaml and
#                                         k8s/dev/values-dev.yaml
#        scripts/kube/helm.sh exec ARGS…  run the cached helm with ARGS
#
# Environment:
#   HERMES_CACHE         cache root (default ~/.cache/hermes); helm goes to
#                        $HERMES_CACHE/bin/helm-<version>/helm
#   HERMES_HELM_VERSION  helm version to build (default below)
#   HERMES_HELM_OUT      with `lint`: also write each rendered fixture to
#                        $HERMES_HELM_OUT/<fixture>.yaml (for dry-run checks)
#   Go: the default GOMODCACHE/GOCACHE are used (they persist on the machine).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CHART=$ROOT/charts/hermes
CACHE=${HERMES_CACHE:-$HOME/.cache/hermes}
HELM_VERSION=${HERMES_HELM_VERSION:-v3.22.0}
HELM_DIR=$CACHE/bin/helm-$HELM_VERSION
HELM=$HELM_DIR/helm

log() { printf '[helm] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The version and the default Kubernetes version (what `helm template` and the lint
# deprecation checks assume without --kube-version) are set at link time, as helm's own
# Makefile does; without them a `go install` build calls itself v3.N and Kubernetes 1.20.
build() {
  if [ -x "$HELM" ] && [ "$("$HELM" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; then
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build helm $HELM_VERSION)"
  mkdir -p "$HELM_DIR"
  log "building helm $HELM_VERSION with $(go version | awk '{print $3}') (first time: several minutes)"
  local start=$SECONDS mod gomod client_go major minor
  mod=helm.sh/helm/v3
  # go.mod of that helm release, from the module proxy (cached in GOMODCACHE).
  gomod=$(go mod download -json "$mod@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [ -f "$gomod" ] || die "cannot download $mod@$HELM_VERSION"
  client_go=$(awk '$1 == "k8s.io/client-go" && $2 ~ /^v0\./ { print $2; exit }' "$gomod")
  [ -n "$client_go" ] || die "no k8s.io/client-go in $gomod"
  # client-go v0.N.P goes with Kubernetes v1.N
  major=1
  minor=$(cut -d. -f2 <<<"$client_go")
  local ldflags="-s -w"
  ldflags+=" -X $mod/internal/version.version=$HELM_VERSION"
  ldflags+=" -X $mod/internal/version.gitTreeState=clean"
  ldflags+=" -X $mod/pkg/lint/rules.k8sVersionMajor=$major -X $mod/pkg/lint/rules.k8sVersionMinor=$minor"
  ldflags+=" -X $mod/pkg/chartutil.k8sVersionMajor=$major -X $mod/pkg/chartutil.k8sVersionMinor=$minor"
  # Build into a temporary directory and move into place, so an interrupted
  # build never leaves a half-written binary where the cache check looks.
  local tmp
  tmp=$(mktemp -d "$HELM_DIR/.build.XXXXXX")
  # CGO off: a static binary that does not depend on the machine's libc.
  if ! GOBIN=$tmp CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" "$mod/cmd/helm@$HELM_VERSION"; then
    rm -rf "$tmp"
    die "go install $mod/cmd/helm@$HELM_VERSION failed"
  fi
  mv -f "$tmp/helm" "$HELM"
  rm -rf "$tmp"
  log "built $("$HELM" version --short) (default Kubernetes v$major.$minor) in $((SECONDS - start))s"
}

lint() {
  [ -d "$CHART" ] || die "no chart at $CHART"
  local fixtures=("$CHART"/ci/*-values.yaml)
  [ -e "${fixtures[0]}" ] || die "no fixtures in $CHART/ci/"
  if [ -f "$ROOT/k8s/dev/values-dev.yaml" ]; then fixtures+=("$ROOT/k8s/dev/values-dev.yaml"); fi
  if [ -n "${HERMES_HELM_OUT:-}" ]; then mkdir -p "$HERMES_HELM_OUT"; fi

  local failed=0 passed=0 f name out
  # The chart's own values have no amqp.url (none can work by default: RabbitMQ's guest
  # user may only log in from localhost), so a bare render must fail and say so; the
  # default fixture lints the defaults with a URL.
  log "helm template $CHART without amqp.url: refused, naming the guest user"
  if err=$("$HELM" template hermes "$CHART" --namespace hermes 2>&1 >/dev/null); then
    log "rendered without amqp.url, but it should be refused"; failed=$((failed + 1))
  elif grep -q "amqp.url: required.*guest user may only log in from localhost" <<<"$err"; then
    passed=$((passed + 1))
  else
    log "refused for another reason: $err"; failed=$((failed + 1))
  fi
  for f in "${fixtures[@]}"; do
    name=$(basename "$f" .yaml)
    name=${name%-values}
    log "fixture $name: lint + template"
    if ! "$HELM" lint --strict "$CHART" -f "$f"; then
      failed=$((failed + 1)); continue
    fi
    if ! out=$("$HELM" template hermes "$CHART" --namespace hermes -f "$f"); then
      failed=$((failed + 1)); continue
    fi
    if [ -n "${HERMES_HELM_OUT:-}" ]; then printf '%s\n' "$out" >"$HERMES_HELM_OUT/$name.yaml"; fi
    log "fixture $name: $(grep -c '^kind: ' <<<"$out") objects"
    passed=$((passed + 1))
  done
  # Every value has a `## @param` and the chart README's values table is current.
  if command -v python3 >/dev/null 2>&1; then
    log "values.yaml @param comments and the README values table"
    if python3 "$CHART/scripts/values-table.py" --check; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
    log "values.schema.json is current"
    if python3 "$CHART/scripts/values-schema.py" --check; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  else
    log "python3 not found: values table and schema not checked"
  fi
  # An upgrade rendered where lookup cannot read the live Secret (here: helm template
  # --is-upgrade) must fail rather than make new secrets; with the secrets given it renders.
  log "helm template --is-upgrade without the secrets: refused"
  if err=$("$HELM" template hermes "$CHART" --namespace hermes --is-upgrade \
      -f "$CHART/ci/default-values.yaml" 2>&1 >/dev/null); then
    log "rendered an upgrade with new generated secrets, but it should be refused"; failed=$((failed + 1))
  elif grep -q "secrets: this upgrade cannot read the live Secret hermes/hermes" <<<"$err"; then
    if "$HELM" template hermes "$CHART" --namespace hermes --is-upgrade -f "$CHART/ci/default-values.yaml" \
        --set secrets.jwtSecret=j-0123456789abcdef0123456789abcdef --set secrets.adminKey=a-0123456789abcdef \
        --set secrets.internalSecret=i-0123456789abcdef >/dev/null; then
      passed=$((passed + 1))
    else
      log "an upgrade with the secrets given does not render"; failed=$((failed + 1))
    fi
  else
    log "refused for another reason: $err"; failed=$((failed + 1))
  fi
  # The schema refuses what would be ignored or misread: a misspelt key, a boolean given
  # as a string (the string "false" is true in a template).
  local bad
  for bad in "--set gateway.replicaCont=3" "--set metrics.prometheusRule.enabeld=true" \
    "--set-string gateway.serveClient=false"; do
    # shellcheck disable=SC2086
    if err=$("$HELM" template hermes "$CHART" --namespace hermes $bad 2>&1 >/dev/null); then
      log "values $bad: accepted, but the schema should refuse it"
      failed=$((failed + 1))
    elif grep -q "values don't meet the specifications of the schema" <<<"$err"; then
      log "values $bad: refused by the schema"
      passed=$((passed + 1))
    else
      log "values $bad: failed for another reason: $err"
      failed=$((failed + 1))
    fi
  done
  printf 'helm: %d passed, %d failed\n' "$passed" "$failed"
  [ "$failed" -eq 0 ]
}

case "${1:-build}" in
  build) build; printf '%s\n' "$HELM" ;;
  lint) build; lint ;;
  exec) shift; build; exec "$HELM" "$@" ;;
  path) printf '%s\n' "$HELM" ;;
  -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) die "unknown command '$1' (build | lint | exec ARGS… | path)" ;;
esac
