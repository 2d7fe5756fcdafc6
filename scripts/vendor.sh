#!/usr/bin/env bash
# The vendored actix-http is upstream 3.19.0 plus vendor/actix-http.patch, nothing else.
#
#   scripts/vendor.sh check    the tree equals the published crate + the patch (test.sh runs it)
#   scripts/vendor.sh diff     rewrite vendor/actix-http.patch from the tree (after a change)
#
# The crate comes from crates.io (checked against the index's SHA-256, cached in
# ~/.cache/hermes/vendor). What the patch changes and why: vendor/actix-http/HERMES-PATCH.md.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name=actix-http
version=3.19.0
sha256=b796ba3c974e5133f6ca1a2c4e97c5941ea1a46d202df83344afaa18219f1a62
tree="$repo/vendor/$name"
patch="$repo/vendor/$name.patch"
cache="${HERMES_CACHE:-$HOME/.cache/hermes}/vendor"
# Upstream paths the vendored copy leaves out (examples, tests and benches need
# dev-dependencies we do not build), and the files it adds.
pruned=(benches examples tests Cargo.lock Cargo.toml.orig)

fetch() {
  local crate="$cache/$name-$version.crate"
  mkdir -p "$cache"
  if [ ! -f "$crate" ] || ! echo "$sha256  $crate" | sha256sum -c --status; then
    curl -sSfL --retry 3 -o "$crate.part" "https://static.crates.io/crates/$name/$name-$version.crate"
    if ! echo "$sha256  $crate.part" | sha256sum -c --status; then
      echo "vendor.sh: $name-$version.crate from crates.io does not match SHA-256 $sha256" >&2
      rm -f "$crate.part"
      exit 1
    fi
    mv "$crate.part" "$crate"
  fi
  local work
  work="$(mktemp -d -t hermes-vendor.XXXXXX)"
  tar -xzf "$crate" -C "$work"
  local upstream="$work/$name-$version"
  for p in "${pruned[@]}"; do rm -rf "${upstream:?}/$p"; done
  echo "$upstream"
}

case "${1:-check}" in
  check)
    upstream="$(fetch)"
    trap 'rm -rf "$(dirname "$upstream")"' EXIT
    (cd "$upstream" && git apply -p1 "$patch")
    if diff -r -u "$upstream" "$tree"; then
      echo "vendor: 1 passed, 0 failed ($name $version + $(basename "$patch"))"
    else
      echo "vendor: 0 passed, 1 failed: vendor/$name differs from $name $version + $(basename "$patch"); see the diff above (scripts/vendor.sh diff records a deliberate change)"
      exit 1
    fi
    ;;
  diff)
    upstream="$(fetch)"
    trap 'rm -rf "$(dirname "$upstream")"' EXIT
    # Relative a/ b/ paths so `patch -p1` applies it inside the unpacked crate.
    (cd "$(dirname "$upstream")" && cp -r "$tree" b && mv "$name-$version" a &&
      { diff -r -u -N a b || [ $? -eq 1 ]; } | sed -E 's/^((---|\+\+\+) [^\t]+)\t.*$/\1/' > "$patch")
    echo "wrote $patch ($(grep -c '^@@' "$patch") hunks)"
    ;;
  *)
    echo "usage: scripts/vendor.sh check|diff" >&2
    exit 64
    ;;
esac
