# Sourced by the scripts that work on the release scripts/kube/install-on-node.sh made in
# consumer.mode deployment (upgrade-, ingress- and prometheus-on-node.sh); the sourcing
# script defines log and die first. Gives NS, RELEASE, QUEUE, KUBECONFIG, kc, HELM, the
# test services' environment, CARGO_TARGET_DIR, and:
#   build_e2e_bins BIN...   cargo build of those binaries of tests/ (debug)
#   ready_gateway_ip        the pod IP of a Ready gateway (its admin API on 8081)
#   release_admin_key       the admin key in the release's Secret
#   work_dir NAME           a temporary directory in $work, removed on exit after the
#                           exit hooks (on_exit COMMAND...: exit_rc holds the exit
#                           status) and the processes started
#                           with `background COMMAND...` (killed and waited for)
#   until_true SECONDS WHAT COMMAND...   poll every 0.5 s; die naming WHAT at the deadline
# shellcheck shell=bash
NS=hermes-deployment
RELEASE=hermes
QUEUE=hermes-kube-node-deployment
CACHE=${HERMES_CACHE:-$HOME/.cache/hermes}
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

eval "$("$HERE/node.sh" env)"
export KUBECONFIG
kc() { "$HERMES_KUBECTL" -n "$NS" "$@"; }
kc get deployment "$RELEASE-gateway" >/dev/null 2>&1 ||
  die "no release in $NS: run scripts/kube/install-on-node.sh --mode deployment first"
HELM=$("$HERE/helm.sh" build)
# the broker the release consumes from, as the host reaches it
# shellcheck disable=SC1091
. "$CACHE/services.env"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}

build_e2e_bins() {
  local args=() bin
  for bin in "$@"; do args+=(--bin "$bin"); done
  (cd "$ROOT" && cargo build -p hermes-e2e "${args[@]}" --locked --quiet) ||
    die "cargo build of $* failed"
}

ready_gateway_ip() {
  kc get pods -l app.kubernetes.io/component=gateway -o json | jq -r '[.items[]
    | select(.metadata.deletionTimestamp == null)
    | select([.status.conditions[]? | select(.type == "Ready" and .status == "True")] | length > 0)
    | .status.podIP][0] // empty'
}

release_admin_key() {
  kc get secret "$RELEASE" -o jsonpath='{.data.HERMES_ADMIN_KEY}' | base64 -d
}

work=
exit_hooks=()
bg_pids=()
work_dir() {
  work=$(mktemp -d -t "hermes-$1.XXXXXX")
  trap release_cleanup EXIT
}
on_exit() { exit_hooks+=("$*"); }
background() {
  "$@" &
  bg_pids+=($!)
}
release_cleanup() {
  exit_rc=$?
  local hook pid
  for hook in "${exit_hooks[@]}"; do eval "$hook" || true; done
  for pid in "${bg_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${bg_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -z "$work" ] || rm -rf "$work"
}

until_true() {
  local secs=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what: not within ${secs} s"
    sleep 0.5
  done
}
