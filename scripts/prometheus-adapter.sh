#!/usr/bin/env bash
# prometheus-adapter (the custom metrics API server an HPA's Pods metric on
# hermes_connections_open reads through; docs/kubernetes.md), built from its Go module
# through the wrapper module scripts/kube/go/adapter and cached by version. A first step of
# issue 18's autoscaling test: nothing runs it yet.
#
#   scripts/prometheus-adapter.sh build   build if needed; print the binary's path
#   scripts/prometheus-adapter.sh path    print that path (nothing is built)
#
# Why a wrapper module: `go install sigs.k8s.io/prometheus-adapter/cmd/adapter@v0.12.0` is
# refused by the module proxy here (go reads the module's version list for deprecations and
# the proxy answers 403 "This module version is not available"), while the version itself
# is served: `go build` inside a module that requires it works (2 min 07 s cold on 2 cores).
#
# Environment: HERMES_CACHE (default ~/.cache/hermes); the binary goes to
# $HERMES_CACHE/bin/prometheus-adapter-<version>/adapter. The version is the wrapper
# module's (go.mod).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${HERMES_CACHE:-$HOME/.cache/hermes}
MODDIR=$HERE/kube/go/adapter
MOD=sigs.k8s.io/prometheus-adapter
VERSION=$(awk -v m="$MOD" '$1 == "require" && $2 == m { print $3 }' "$MODDIR/go.mod")
DIR=$CACHE/bin/prometheus-adapter-$VERSION

log() { printf '[prometheus-adapter] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ -n "$VERSION" ] || die "no 'require $MOD vX.Y.Z' line in $MODDIR/go.mod"

build() {
  [ -x "$DIR/adapter" ] && return 0
  command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build $MOD $VERSION)"
  mkdir -p "$DIR"
  log "building $MOD $VERSION with $(go version | awk '{print $3}') (first time: a few minutes)"
  local start=$SECONDS tmp
  tmp=$(mktemp -d "$DIR/.build.XXXXXX")
  # Into a temporary directory, then moved into place (an interrupted build leaves nothing
  # where the cache check looks). CGO off: a static binary.
  if ! (cd "$MODDIR" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" \
      -o "$tmp/adapter" "$MOD/cmd/adapter"); then
    rm -rf "$tmp"
    die "go build $MOD/cmd/adapter ($VERSION) failed"
  fi
  mv -f "$tmp/adapter" "$DIR/adapter"
  rm -rf "$tmp"
  log "built $DIR/adapter in $((SECONDS - start))s"
}

case "${1:-build}" in
  build) build; printf '%s\n' "$DIR/adapter" ;;
  path) printf '%s\n' "$DIR/adapter" ;;
  *) die "usage: $0 build|path" ;;
esac
