#!/usr/bin/env bash
# Each vendored crate is its upstream release plus vendor/<name>.patch, nothing else:
#   actix-http 3.19.0           (vendor/actix-http/HERMES-PATCH.md says what and why)
#   amq-protocol-types 10.6.3   (vendor/amq-protocol-types/HERMES-PATCH.md)
#
#   scripts/vendor.sh check [NAME]   each tree equals the published crate + its patch (test.sh runs it)
#   scripts/vendor.sh diff NAME      rewrite vendor/NAME.patch from the tree (after a change)
#
# The crates come from crates.io (checked against the index's SHA-256, cached in
# ~/.cache/hermes/vendor).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${HERMES_CACHE:-$HOME/.cache/hermes}/vendor"

# name version sha256, then the upstream paths the vendored copy leaves out (examples, tests
# and benches need dev-dependencies we do not build).
crates=(
  "actix-http 3.19.0 b796ba3c974e5133f6ca1a2c4e97c5941ea1a46d202df83344afaa18219f1a62 benches examples tests Cargo.lock Cargo.toml.orig"
  "amq-protocol-types 10.6.3 8a268a50e97bd5d52292a8b96636f6436215def6f3d128fb8218318f5feb4c33 tests Cargo.lock Cargo.toml.orig .cargo_vcs_info.json"
)

# Sets name, version, sha256, pruned for crate $1 (or fails).
select_crate() {
  local entry
  for entry in "${crates[@]}"; do
    read -r name version sha256 pruned_list <<<"$entry"
    if [ "$name" = "$1" ]; then
      read -r -a pruned <<<"$pruned_list"
      return 0
    fi
  done
  echo "vendor.sh: no vendored crate $1" >&2
  exit 64
}

# Prints the directory of the unpacked, pruned upstream crate (in a temporary directory).
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

# Checks one crate; returns 1 if its tree differs.
check_one() {
  select_crate "$1"
  local tree="$repo/vendor/$name" patch="$repo/vendor/$name.patch" upstream
  upstream="$(fetch)"
  (cd "$upstream" && git apply -p1 "$patch")
  local status=0
  diff -r -u "$upstream" "$tree" || status=1
  rm -rf "$(dirname "$upstream")"
  if [ "$status" -ne 0 ]; then
    echo "vendor/$name differs from $name $version + $(basename "$patch"); see the diff above (scripts/vendor.sh diff $name records a deliberate change)" >&2
  fi
  return "$status"
}

case "${1:-check}" in
  check)
    if [ -n "${2:-}" ]; then names=("$2"); else names=(); for e in "${crates[@]}"; do names+=("${e%% *}"); done; fi
    passed=0 failed=0
    for n in "${names[@]}"; do
      if check_one "$n"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
    done
    echo "vendor: $passed passed, $failed failed (${names[*]}: upstream + vendor/<name>.patch)"
    [ "$failed" -eq 0 ]
    ;;
  diff)
    select_crate "${2:?usage: scripts/vendor.sh diff NAME}"
    tree="$repo/vendor/$name"
    patch="$repo/vendor/$name.patch"
    upstream="$(fetch)"
    trap 'rm -rf "$(dirname "$upstream")"' EXIT
    # Relative a/ b/ paths so `patch -p1` applies it inside the unpacked crate.
    (cd "$(dirname "$upstream")" && cp -r "$tree" b && mv "$name-$version" a &&
      { diff -r -u -N a b || [ $? -eq 1 ]; } | sed -E 's/^((---|\+\+\+) [^\t]+)\t.*$/\1/' > "$patch")
    echo "wrote $patch ($(grep -c '^@@' "$patch") hunks)"
    ;;
  *)
    echo "usage: scripts/vendor.sh check [NAME] | diff NAME" >&2
    exit 64
    ;;
esac
