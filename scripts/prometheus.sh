#!/usr/bin/env bash
# Prometheus and promtool, built from their Go module (github.com/prometheus/prometheus,
# whose Go versions v0.3NN.P are the releases v3.NN.P) and cached by version, for the
# tests that evaluate the chart's PromQL (the dashboard's queries and the alert rules)
# against a real Prometheus scraping real gateways and consumers
# (tests/tests/prometheus_queries.rs).
#
#   scripts/prometheus.sh build   build if needed; print the directory of both binaries
#   scripts/prometheus.sh path    print that directory (nothing is built)
#
# Environment:
#   HERMES_CACHE                cache root (default ~/.cache/hermes); the binaries go to
#                               $HERMES_CACHE/bin/prometheus-<version>/
#   HERMES_PROMETHEUS_VERSION   module version (default v0.316.0, Prometheus 3.16.0)
# Go: the default GOMODCACHE/GOCACHE are used (they persist on the machine). The web UI's
# assets are not built in (the HTTP API, which the tests use, does not need them).
set -euo pipefail

CACHE=${HERMES_CACHE:-$HOME/.cache/hermes}
VERSION=${HERMES_PROMETHEUS_VERSION:-v0.316.0}
DIR=$CACHE/bin/prometheus-$VERSION
MOD=github.com/prometheus/prometheus

log() { printf '[prometheus] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# v0.316.0 -> 3.16.0
release() {
  local minor patch
  minor=${VERSION#v0.}
  patch=${minor#*.}
  minor=${minor%%.*}
  printf '%d.%d.%s' "$((minor / 100))" "$((minor % 100))" "$patch"
}

build() {
  if [ -x "$DIR/prometheus" ] && [ -x "$DIR/promtool" ]; then
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build Prometheus $VERSION)"
  mkdir -p "$DIR"
  log "building Prometheus $(release) ($MOD@$VERSION) with $(go version | awk '{print $3}') (first time: several minutes)"
  local start=$SECONDS tmp
  tmp=$(mktemp -d "$DIR/.build.XXXXXX")
  local ldflags="-s -w -X github.com/prometheus/common/version.Version=$(release)"
  ldflags+=" -X github.com/prometheus/common/version.Branch=module"
  # Into a temporary directory, then moved into place: an interrupted build never leaves
  # a half-written binary where the cache check looks. CGO off: static binaries.
  if ! GOBIN=$tmp CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" \
      "$MOD/cmd/prometheus@$VERSION" "$MOD/cmd/promtool@$VERSION"; then
    rm -rf "$tmp"
    die "go install $MOD/cmd/prometheus@$VERSION failed"
  fi
  mv -f "$tmp/prometheus" "$tmp/promtool" "$DIR/"
  rm -rf "$tmp"
  log "built $("$DIR/prometheus" --version 2>&1 | head -1) in $((SECONDS - start))s"
}

case "${1:-build}" in
  build) build; printf '%s\n' "$DIR" ;;
  path) printf '%s\n' "$DIR" ;;
  *) die "usage: $0 build|path" ;;
esac
