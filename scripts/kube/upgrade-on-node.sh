#!/usr/bin/env bash
# A rolling upgrade under load, on the release scripts/kube/install-on-node.sh made
# (consumer.mode deployment, namespace hermes-deployment) on the local node: the
# image the release runs is tagged anew in the node's containerd (the same contents
# under a new tag, as a release pipeline would push), then, while the fault checker's
# clients (hermes.v1 in Rust and hermes.js in Node, through the gateways' Service as
# a browser reaches it through a load balancer) receive what a steady publisher puts
# into the release's RabbitMQ queue, `helm upgrade --set image.tag=<new> --wait` rolls
# every gateway and consumer pod. Prints the checker's table (published, lost,
# duplicated, repeats) and fails unless nothing was lost or duplicated and every
# pod runs the new tag. See docs/dev/node.md.
#
# On another cluster (HERMES_KUBE_CLUSTER=existing, scripts/kube/on-release.sh) the new
# tag is HERMES_UPGRADE_TAG: the same repository, a tag the nodes can pull.
#
# Usage: scripts/kube/upgrade-on-node.sh
# Environment: HERMES_UPGRADE_RATE (notifications/s, default 20),
#              HERMES_UPGRADE_TIMEOUT (helm --wait, seconds, default 300),
#              HERMES_UPGRADE_TAG (existing clusters: the tag to roll to)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RATE=${HERMES_UPGRADE_RATE:-20}
TIMEOUT=${HERMES_UPGRADE_TIMEOUT:-300}

LOG_TAG=upgrade
# shellcheck source=scripts/kube/on-release.sh
source "$HERE/on-release.sh"

# --roll NEW_TAG OLD_POD...: the disruption the checker makes (below): the upgrade, then
# until every pod of the old version is gone (helm --wait returns once the new pods are
# Ready, while the old gateways may still drain their sockets).
if [ "${1:-}" = --roll ]; then
  new_tag=$2; shift 2
  "$HELM" upgrade "$RELEASE" "$ROOT/charts/hermes" -n "$NS" --reuse-values \
    --set-string image.tag="$new_tag" --wait --timeout "${TIMEOUT}s" >/dev/null ||
    die "helm upgrade failed"
  log "helm upgrade done; waiting for the old pods ($*) to be gone"
  kc wait --for=delete --timeout="${TIMEOUT}s" "${@/#/pod/}" >/dev/null ||
    die "old pods still there after ${TIMEOUT}s"
  exit 0
fi

build_e2e_bins installed-faults

# the new tag: the same image, tagged anew (a second run tags back)
image=$(kc get deployment "$RELEASE-gateway" -o jsonpath='{.spec.template.spec.containers[?(@.name=="gateway")].image}')
repo=${image%:*} tag=${image##*:}
# containerd stores references fully qualified, as the kubelet asks for them
qualified() {
  case $1 in
    */*) case ${1%%/*} in *.* | *:* | localhost) printf '%s' "$1" ;; *) printf 'docker.io/%s' "$1" ;; esac ;;
    *) printf 'docker.io/library/%s' "$1" ;;
  esac
}
retag() { # the node's containerd: the running image under $new_tag, pinned
  "$HERE/node.sh" ctr images tag --force "$(qualified "$image")" "$(qualified "$repo:$new_tag")" >/dev/null ||
    die "ctr images tag $(qualified "$image") $(qualified "$repo:$new_tag") failed"
  "$HERE/node.sh" ctr images label "$(qualified "$repo:$new_tag")" io.cri-containerd.pinned=pinned >/dev/null
  log "image $image tagged $repo:$new_tag"
}
if [ "$CLUSTER" = node ]; then
  case $tag in *-upgraded) new_tag=${tag%-upgraded} ;; *) new_tag=$tag-upgraded ;; esac
  retag
else
  new_tag=${HERMES_UPGRADE_TAG:-}
  [ -n "$new_tag" ] && [ "$new_tag" != "$tag" ] ||
    die "set HERMES_UPGRADE_TAG to a tag of $repo the nodes can pull, other than the running $tag"
fi

# what users reach: the public Service (existing: HERMES_WS_URL); the admin API of one
# gateway (tokens, warm-up)
work_dir upgrade
ws_url=$(gateway_ws_url)
open_admin
export HERMES_ADMIN_KEY=$admin_key

# the pods the upgrade replaces (the schema Job's and helm test's are not among them)
old_pods=$(kc get pods -o json | jq -r '.items[] | select(.metadata.annotations["helm.sh/hook"] == null)
  | select(.metadata.labels["app.kubernetes.io/component"] == "gateway"
    or .metadata.labels["app.kubernetes.io/component"] == "consumer") | .metadata.name' | tr '\n' ' ')
[ -n "$old_pods" ] || die "no gateway or consumer pods to replace"
t0=$SECONDS
rc=0
"$CARGO_TARGET_DIR/debug/installed-faults" \
  --ws "$ws_url" --admin "$admin" \
  --queue "$QUEUE" --rate "$RATE" --settle 4 --rust-clients 6 --node-clients 2 \
  --name "helm upgrade to $new_tag (rolling)" -- "$0" --roll "$new_tag" $old_pods || rc=$?
log "checker and upgrade took $((SECONDS - t0)) s"
case $rc in
  0) ;;
  1) die "the upgrade lost or duplicated notifications (table above)" ;;
  *) kc get pods -o wide >&2 || true; die "the upgrade or the checker failed (exit $rc)" ;;
esac

# every pod of the release runs the new tag and is Ready
stale=$(kc get pods -o json | jq -r --arg want "$repo:$new_tag" '.items[]
  | select(.metadata.annotations["helm.sh/hook"] == null)
  | select(.metadata.deletionTimestamp == null)
  | select(([.spec.containers[].image] | all(. == $want)) | not)
  | .metadata.name')
[ -z "$stale" ] || die "pods not on $repo:$new_tag after the upgrade: $stale"
log "every pod runs $repo:$new_tag; helm history:"
"$HELM" history "$RELEASE" -n "$NS" --max 3 >&2
