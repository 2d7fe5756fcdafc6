#!/usr/bin/env bash
# A one-node Kubernetes cluster on this machine, without a Docker engine and
# without downloads from outside the package registries: kubelet, kube-proxy,
# kube-controller-manager and kube-scheduler built from k8s.io/kubernetes
# (wrapper module scripts/kube/go/node, same version as the API server),
# CoreDNS from its Go module (scripts/kube/go/coredns), containerd + runc +
# CNI plugins from Debian, and a control plane of its own
# (scripts/kube/control-plane.sh with a separate state dir and ports; the
# shared one the tests use is never touched). See docs/dev/node.md.
#
# The node lives in a network namespace of its own (hermes-node): containerd,
# kubelet, kube-proxy and CoreDNS run in it, the pods' bridge, addresses and
# iptables rules exist only there, and it has no default route, so nothing
# from a pod leaves the machine. The host reaches it through a veth pair:
#   host 10.87.0.1 (hn-host)  <->  node 10.87.0.2 (hn-node)
#   pods 10.88.0.0/16 (bridge hermes0, gateway 10.88.0.1)
#   Services 10.96.0.0/16, cluster DNS 10.87.0.2 (CoreDNS in the node netns)
#   API server https://10.87.0.1:PORT (bound to the host end of the veth)
# The host has routes to the pods and the Services through the veth, so
# `curl http://<ClusterIP>` works from the host. Host services on loopback
# (Cassandra, RabbitMQ, SQS of scripts/services) are forwarded to
# 10.87.0.1:<same port> by socat, so pods reach them at host.hermes.internal
# (a name CoreDNS serves) and they see loopback clients.
#
# Usage: scripts/kube/node.sh COMMAND
#   build    build (or reuse) every binary and the local images, cached by version
#   up       build if needed, then start everything (idempotent); prints env
#   down     stop everything and remove the node's state: pods, containers,
#            mounts, network namespace, cgroups, iptables rules, control plane
#            data (binaries and image tarballs stay cached)
#   status   say what runs; exit 1 unless the node is Ready
#   env      print KUBECONFIG=..., HERMES_KUBECTL=... (eval-able)
#   load IMAGE.tar   import an OCI/Docker image tarball into the node's
#            containerd (namespace k8s.io) and pin it; pods use it with
#            imagePullPolicy Never (or IfNotPresent)
#   check    the node proof: a test pod (the local echo image) Running and
#            Ready with a pod IP, reached from the host through a Service's
#            ClusterIP, and by name from another pod through cluster DNS
#   ctr ARGS...      run ctr against the node's containerd (namespace k8s.io)
#   paths    print binaries, state, logs
#
# Environment:
#   HERMES_CACHE            cache root (default ~/.cache/hermes); binaries in
#                           $HERMES_CACHE/bin/<name>-<version>/, images in
#                           $HERMES_CACHE/images/
#   HERMES_NODE_STATE       node state (default $HERMES_CACHE/state/node)
#   HERMES_NODE_CP_STATE    its control plane's state (default
#                           $HERMES_CACHE/state/node-control-plane)
#   HERMES_NODE_FORWARD     host loopback ports forwarded to 10.87.0.1
#                           (default "9042 5672 9324": Cassandra, RabbitMQ, SQS)
#   HERMES_NODE_START_TIMEOUT  seconds to wait for the node to be Ready (180)
#   HERMES_NODE_KUBELET_EXTRA_ARGS  extra kubelet flags (word-split)
#   Go builds run under `nice -n 10`; the default GOMODCACHE/GOCACHE are used.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
GO_DIR=$HERE/go
CACHE=${HERMES_CACHE:-$HOME/.cache/hermes}
STATE=${HERMES_NODE_STATE:-$CACHE/state/node}
CP_STATE=${HERMES_NODE_CP_STATE:-$CACHE/state/node-control-plane}
RUN=/run/hermes-node
START_TIMEOUT=${HERMES_NODE_START_TIMEOUT:-180}
FORWARD_PORTS=${HERMES_NODE_FORWARD-9042 5672 9324}
CP_SCRIPT=$HERE/control-plane.sh

NETNS=hermes-node
NETNS_PATH=/run/netns/$NETNS
HOST_IF=hn-host
NODE_IF=hn-node
HOST_IP=10.87.0.1
NODE_IP=10.87.0.2
TRANSIT_PREFIX=30
POD_CIDR=10.88.0.0/16
POD_GW=10.88.0.1
BRIDGE=hermes0
SERVICE_CIDR=10.96.0.0/16
CLUSTER_DOMAIN=cluster.local
NODE_NAME=hermes-node
CGROUP_ROOT=hermes-node
PAUSE_IMAGE=hermes.local/pause:1.0
ECHO_IMAGE=hermes.local/echo:1.0

log() { printf '[node] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$CP_STATE" != "$CACHE/state/control-plane" ] ||
  die "HERMES_NODE_CP_STATE is the shared control plane's state dir; the node needs its own"

# the node's control plane: control-plane.sh with its own state, address,
# Service range and the `node` profile
cp_run() {
  HERMES_KUBE_STATE=$CP_STATE HERMES_KUBE_ADDRESS=$HOST_IP HERMES_KUBE_SERVICE_CIDR=$SERVICE_CIDR \
    HERMES_KUBE_PROFILE=node HERMES_KUBE_API_PORT='' HERMES_KUBE_ETCD_PORT='' HERMES_KUBE_ETCD_PEER_PORT='' \
    "$CP_SCRIPT" "$@"
}

# --- versions and binaries ---------------------------------------------------
modver() { # modver DIR MODULE: the version DIR/go.mod requires
  awk -v m="$2" '
    $1 == "require" && $2 == m && $3 ~ /^v/ { print $3; exit }
    $1 == m && $2 ~ /^v/                    { print $2; exit }
  ' "$1/go.mod"
}
K8S_VERSION=$(modver "$GO_DIR/node" k8s.io/kubernetes)
APISERVER_K8S_VERSION=$(modver "$GO_DIR/apiserver" k8s.io/kubernetes)
COREDNS_VERSION=$(modver "$GO_DIR/coredns" github.com/coredns/coredns)
[ -n "$K8S_VERSION" ] || die "no k8s.io/kubernetes version in $GO_DIR/node/go.mod"
[ "$K8S_VERSION" = "$APISERVER_K8S_VERSION" ] ||
  die "go/node pins k8s.io/kubernetes $K8S_VERSION but go/apiserver pins $APISERVER_K8S_VERSION (run: scripts/kube/control-plane.sh pin VERSION)"
bin_path() { echo "$CACHE/bin/$1-$2/$1"; }
KUBELET_BIN=$(bin_path kubelet "$K8S_VERSION")
PROXY_BIN=$(bin_path kube-proxy "$K8S_VERSION")
KCM_BIN=$(bin_path kube-controller-manager "$K8S_VERSION")
SCHED_BIN=$(bin_path kube-scheduler "$K8S_VERSION")
COREDNS_BIN=$(bin_path coredns "$COREDNS_VERSION")
KUBECTL_BIN=$(bin_path kubectl "$K8S_VERSION")
IMAGES_STAMP=$(cat "$GO_DIR/images/go.mod" "$GO_DIR"/images/*/main.go "$ROOT/scripts/image/oci-image.py" | sha256sum | cut -c1-12)
IMAGES_DIR=$CACHE/images
PAUSE_TAR=$IMAGES_DIR/pause-$IMAGES_STAMP.tar
ECHO_TAR=$IMAGES_DIR/echo-$IMAGES_STAMP.tar

now_ms() { date +%s%3N; }
fmt_secs() { awk -v ms="$1" 'BEGIN { printf "%.1fs", ms / 1000 }'; }

# build_one NAME WRAPPER_DIR PACKAGE OUT LDFLAGS [ENV...]: go build, reused while
# the wrapper module, the Go version and the flags are unchanged
build_one() {
  local name=$1 dir=$2 pkg=$3 out=$4 ldflags=$5 stamp t0
  shift 5
  command -v go >/dev/null || die "go is not on PATH"
  stamp=$( { cat "$dir/go.mod" "$dir/go.sum" 2>/dev/null; go env GOVERSION; echo "$ldflags $*"; } | sha256sum | cut -c1-16)
  if [ -x "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "$name: cached $out"
    return 0
  fi
  log "$name: building $pkg (go build in ${dir#"$HERE"/}) ..."
  mkdir -p "$(dirname "$out")"
  t0=$(now_ms)
  ( cd "$dir" && env GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly" "$@" \
      nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$out.tmp.$$" "$pkg" ) ||
    { rm -f "$out.tmp.$$"; die "$name: go build failed"; }
  mv -f "$out.tmp.$$" "$out"
  echo "$stamp" > "$out.stamp"
  log "$name: built $out in $(fmt_secs $(( $(now_ms) - t0 )))"
}

k8s_ldflags() {
  local minor=${K8S_VERSION#v1.} kv="-s -w" p
  minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kv+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  echo "$kv"
}

build_images() {
  [ -f "$PAUSE_TAR" ] && [ -f "$ECHO_TAR" ] && { log "images: cached $PAUSE_TAR $ECHO_TAR"; return 0; }
  local tmp t0
  t0=$(now_ms)
  tmp=$(mktemp -d)
  mkdir -p "$tmp/pause" "$tmp/echo" "$IMAGES_DIR"
  ( cd "$GO_DIR/images" && GOWORK=off CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "-s -w" -o "$tmp/pause/pause" ./pause &&
    GOWORK=off CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "-s -w" -o "$tmp/echo/echo" ./echo ) ||
    { rm -rf "$tmp"; die "images: go build failed"; }
  python3 "$ROOT/scripts/image/oci-image.py" --rootfs "$tmp/pause" --name "$PAUSE_IMAGE" \
    --out "$PAUSE_TAR" --entrypoint '["/pause"]' --user 65535:65535 >/dev/null
  python3 "$ROOT/scripts/image/oci-image.py" --rootfs "$tmp/echo" --name "$ECHO_IMAGE" \
    --out "$ECHO_TAR" --entrypoint '["/echo"]' --user 65532:65532 --expose 8080/tcp >/dev/null
  rm -rf "$tmp"
  log "images: built $PAUSE_IMAGE and $ECHO_IMAGE in $(fmt_secs $(( $(now_ms) - t0 )))"
}

cmd_build() {
  local t0 kv
  t0=$(now_ms)
  cp_run build
  kv=$(k8s_ldflags)
  build_one kubelet "$GO_DIR/node" k8s.io/kubernetes/cmd/kubelet "$KUBELET_BIN" "$kv"
  build_one kube-proxy "$GO_DIR/node" k8s.io/kubernetes/cmd/kube-proxy "$PROXY_BIN" "$kv"
  build_one kube-controller-manager "$GO_DIR/node" k8s.io/kubernetes/cmd/kube-controller-manager "$KCM_BIN" "$kv"
  build_one kube-scheduler "$GO_DIR/node" k8s.io/kubernetes/cmd/kube-scheduler "$SCHED_BIN" "$kv"
  build_one coredns "$GO_DIR/coredns" . "$COREDNS_BIN" \
    "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
  build_images
  log "build: done in $(fmt_secs $(( $(now_ms) - t0 ))) (Kubernetes $K8S_VERSION, CoreDNS $COREDNS_VERSION)"
}

# --- prerequisites (Debian packages) -------------------------------------------
ensure_packages() {
  local missing=() p
  for p in containerd:containerd runc:runc iptables:iptables conntrack:conntrack socat:socat jq:jq \
    containernetworking-plugins:/usr/lib/cni/bridge; do
    command -v "${p#*:}" >/dev/null 2>&1 || [ -x "${p#*:}" ] || missing+=("${p%%:*}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; } ||
    die "apt-get install ${missing[*]} failed"
}

# --- processes -----------------------------------------------------------------
# start_daemon NAME NETNS(yes|no) BIN ARGS...: setsid, pid file, log file
start_daemon() {
  local name=$1 in_ns=$2 bin=$3
  shift 3
  if pidfile_pid "$STATE/run/$name.pid" "$bin" >/dev/null; then return 0; fi
  mkdir -p "$STATE/run" "$STATE/logs"
  if [ "$in_ns" = yes ]; then
    setsid nsenter --net="$NETNS_PATH" -- "$bin" "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1 &
  else
    setsid "$bin" "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1 &
  fi
  echo $! > "$STATE/run/$name.pid"
}
running() { pidfile_pid "$STATE/run/$1.pid" "$2" >/dev/null; }
# alive PID: running, not a zombie (the daemons are children of PID 1 here, which
# reaps them only every few seconds, so `kill -0` alone waits for that)
alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
# stop_pid PID TIMEOUT [SIGNAL]: signal, wait until it is gone, SIGKILL after TIMEOUT s
stop_pid() {
  local pid=$1 timeout=$2 n=0
  kill -s "${3:-TERM}" "$pid" 2>/dev/null || return 0
  while alive "$pid"; do
    if [ "$n" -eq $((timeout * 10)) ]; then
      log "pid $pid still running after ${timeout}s; SIGKILL"
      kill -s KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1
    n=$((n + 1))
  done
}
stop_daemon() { # stop_daemon NAME BIN [TIMEOUT]
  local pid
  pid=$(pidfile_pid "$STATE/run/$1.pid" "$2") || { rm -f "$STATE/run/$1.pid"; return 0; }
  local t0; t0=$(now_ms)
  stop_pid "$pid" "${3:-15}"
  rm -f "$STATE/run/$1.pid"
  log "stopped $1 (pid $pid) in $(fmt_secs $(( $(now_ms) - t0 )))"
}
# wait_until WHAT TIMEOUT NAME BIN CHECK...: poll CHECK; fail early if NAME died
wait_until() {
  local what=$1 timeout=$2 name=$3 bin=$4
  shift 4
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$name" ] && ! running "$name" "$bin"; then
      log "$what: $name exited; last log lines:"; tail -n 30 "$STATE/logs/$name.log" >&2; return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "$what: not ready after ${timeout}s"; [ -z "$name" ] || tail -n 30 "$STATE/logs/$name.log" >&2; return 1
    fi
    sleep 0.5
  done
}
in_ns() { nsenter --net="$NETNS_PATH" -- "$@"; }

# --- network namespace ---------------------------------------------------------
net_up() {
  if [ ! -e "$NETNS_PATH" ]; then
    ip netns add "$NETNS"
    log "network namespace $NETNS"
  fi
  if ! ip link show "$HOST_IF" >/dev/null 2>&1; then
    ip link add "$HOST_IF" type veth peer name "$NODE_IF"
    ip link set "$NODE_IF" netns "$NETNS"
    ip addr add "$HOST_IP/$TRANSIT_PREFIX" dev "$HOST_IF"
    ip link set "$HOST_IF" up
  fi
  in_ns ip link set lo up
  in_ns ip addr replace "$NODE_IP/$TRANSIT_PREFIX" dev "$NODE_IF"
  in_ns ip link set "$NODE_IF" up
  # routing and bridge netfilter inside the node's namespace only (these
  # sysctls are per network namespace); no default route there
  in_ns sysctl -qw net.ipv4.ip_forward=1
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null || true
  in_ns sysctl -qw net.bridge.bridge-nf-call-iptables=1 || die "net.bridge.bridge-nf-call-iptables cannot be set in $NETNS"
  # the host reaches the pods and the Services through the node
  ip route replace "$POD_CIDR" via "$NODE_IP" dev "$HOST_IF"
  ip route replace "$SERVICE_CIDR" via "$NODE_IP" dev "$HOST_IF"
}
net_down() {
  if [ -e "$NETNS_PATH" ]; then
    ip netns del "$NETNS" && log "removed network namespace $NETNS (its bridge, veth and iptables rules with it)"
  fi
  ip link del "$HOST_IF" 2>/dev/null || true
}

# --- cgroups -------------------------------------------------------------------
# cgroup v1 hierarchies (+ the cgroup2 `unified` mount) in which pods go under
# /$CGROUP_ROOT; the kubelet wants its cgroupRoot to exist in every one
cgroup_dirs() {
  local m
  for m in /sys/fs/cgroup/*/; do
    m=${m%/}
    if mountpoint -q "$m"; then echo "$m/$CGROUP_ROOT"; fi
  done
}
cgroups_up() {
  local d
  for d in $(cgroup_dirs); do
    [ -d "$d" ] && continue
    mkdir "$d"
    if [ -f "$d/cpuset.cpus" ]; then
      cat "$(dirname "$d")/cpuset.cpus" > "$d/cpuset.cpus"
      cat "$(dirname "$d")/cpuset.mems" > "$d/cpuset.mems"
    fi
  done
}
cgroup_pids() { # every process in /$CGROUP_ROOT (any hierarchy)
  local d
  for d in $(cgroup_dirs); do
    if [ -d "$d" ]; then find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true; fi
  done | sort -un
}
cgroups_down() {
  local d pids
  for _ in $(seq 1 50); do
    pids=$(cgroup_pids)
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.1
  done
  for d in $(cgroup_dirs); do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$d" ] && log "warning: could not remove cgroup $d"
  done
  return 0
}

# --- containerd ----------------------------------------------------------------
CONTAINERD_SOCK=$RUN/containerd/containerd.sock
ctr_k8s() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

write_configs() {
  mkdir -p "$STATE"/{containerd,cni/net.d,cni/ipam,cni/bin,kubelet,kube-proxy,coredns,logs,run} "$RUN"
  # CNI plugins: Debian's, and the node's own hermes-host-loopback
  local plugin ports_json
  for plugin in /usr/lib/cni/*; do ln -sfn "$plugin" "$STATE/cni/bin/$(basename "$plugin")"; done
  install -m 0755 "$HERE/cni/hermes-host-loopback" "$STATE/cni/bin/hermes-host-loopback"
  ports_json=$(jq -nc --arg p "$FORWARD_PORTS" '$p | split(" ") | map(select(length > 0) | tonumber)')
  cat > "$STATE/containerd/config.toml" <<EOF
# Written by scripts/kube/node.sh
version = 2
root = "$STATE/containerd/root"
state = "$RUN/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$RUN/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # built locally by node.sh and imported; never pulled (no registry here)
  sandbox_image = "$PAUSE_IMAGE"
  disable_apparmor = true
  # no process here has CAP_SYS_RESOURCE (not even root: it is not in the
  # bounding set), so runc cannot lower oom_score_adj (-998 for the pause
  # container): clamp it to containerd's own value instead
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$STATE/cni/bin"
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1
EOF
  cat > "$STATE/cni/net.d/10-hermes-node.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "hermes-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$STATE/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "hermes-host-loopback", "host": "$HOST_IP", "ports": $ports_json}
  ]
}
EOF
  # pods with dnsPolicy Default get this; ClusterFirst pods get the cluster DNS
  echo "nameserver $NODE_IP" > "$STATE/kubelet/resolv.conf"
  cat > "$STATE/kubelet/config.yaml" <<EOF
# Written by scripts/kube/node.sh; docs/dev/node.md says why each setting is here.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $CP_STATE/pki/ca.crt}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
# cgroup v1 (hierarchies under /sys/fs/cgroup, cgroup2 only at .../unified):
# kubelet >= 1.35 refuses it unless failCgroupV1 is false; no systemd, so the
# cgroupfs driver; pods under /$CGROUP_ROOT (made by node.sh in every hierarchy)
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
# without CAP_SYS_RESOURCE the kubelet can neither lower its own oom_score_adj
# (default -999) nor raise RLIMIT_NOFILE beyond the hard limit (default 1000000)
oomScoreAdj: 0
maxOpenFiles: $(ulimit -Hn)
clusterDNS: [$NODE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $STATE/kubelet/resolv.conf
# images come from local tarballs and cannot be pulled again: never collect them
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# a development node on a shared disk: evict only when really short
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
rotateCertificates: false
serverTLSBootstrap: false
staticPodPath: ""
maxPods: 110
shutdownGracePeriod: 0s
EOF
  cat > "$STATE/kube-proxy/config.yaml" <<EOF
# Written by scripts/kube/node.sh
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $CP_STATE/kubeconfig
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
nodePortAddresses: ["$NODE_IP/32"]
iptables:
  localhostNodePorts: false
# conntrack table sizes are global (not per network namespace): leave them
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
# no CAP_SYS_RESOURCE here: keep oom_score_adj as it is (default -999)
oomScoreAdj: 0
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
EOF
  cat > "$STATE/coredns/Corefile" <<EOF
# Written by scripts/kube/node.sh: cluster DNS on $NODE_IP:53 (node netns);
# no upstream: names outside $CLUSTER_DOMAIN get no answer (nothing leaves the machine)
.:53 {
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    hosts {
        $HOST_IP host.hermes.internal
        fallthrough
    }
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $CP_STATE/kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
    loadbalance
}
EOF
}

containerd_up() {
  start_daemon containerd yes "$(command -v containerd)" --config "$STATE/containerd/config.toml"
  wait_until containerd 60 containerd "$(command -v containerd)" ctr_k8s version ||
    die "containerd did not start (log: $STATE/logs/containerd.log)"
}

# import TAR and pin the image so that nothing ever collects it
cmd_load() {
  local tar=${1:?usage: $0 load IMAGE.tar} name
  [ -S "$CONTAINERD_SOCK" ] || die "the node's containerd is not running ($0 up)"
  ctr_k8s images import --no-unpack=false "$tar" >/dev/null 2>&1 || ctr_k8s images import "$tar" >/dev/null ||
    die "ctr images import $tar failed"
  name=$(tar -xOf "$tar" index.json 2>/dev/null | jq -r '.manifests[0].annotations["io.containerd.image.name"] // empty' || true)
  [ -n "$name" ] && ctr_k8s images label "$name" io.cri-containerd.pinned=pinned >/dev/null
  log "loaded ${name:-$tar}"
}

# --- control plane ---------------------------------------------------------------
KUBECONFIG_NODE=$CP_STATE/kubeconfig
kc() { KUBECONFIG=$KUBECONFIG_NODE "$KUBECTL_BIN" "$@"; }
CP_PORTS_ENV=$STATE/ports.env

control_plane_up() {
  cp_run start >/dev/null
  local kcm_port sched_port
  # shellcheck disable=SC1090
  [ -f "$CP_PORTS_ENV" ] && . "$CP_PORTS_ENV"
  kcm_port=${KCM_PORT:-$(free_port)}
  sched_port=${SCHED_PORT:-$(free_port "$kcm_port")}
  printf 'KCM_PORT=%s\nSCHED_PORT=%s\n' "$kcm_port" "$sched_port" > "$CP_PORTS_ENV"
  start_daemon kube-controller-manager no "$KCM_BIN" \
    --kubeconfig "$KUBECONFIG_NODE" \
    --authentication-kubeconfig "$KUBECONFIG_NODE" --authorization-kubeconfig "$KUBECONFIG_NODE" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$STATE/kcm-certs" \
    --service-account-private-key-file "$CP_STATE/pki/sa.key" \
    --root-ca-file "$CP_STATE/pki/ca.crt" \
    --service-cluster-ip-range "$SERVICE_CIDR" --cluster-cidr "$POD_CIDR" --allocate-node-cidrs=false \
    --use-service-account-credentials=false --leader-elect=false --v 1
  start_daemon kube-scheduler no "$SCHED_BIN" \
    --kubeconfig "$KUBECONFIG_NODE" \
    --authentication-kubeconfig "$KUBECONFIG_NODE" --authorization-kubeconfig "$KUBECONFIG_NODE" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false --v 1
}
free_port() { # free_port EXCLUDE...: a free port on 127.0.0.1
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 20000 ))
    [[ " $* " == *" $p "* ]] && continue
    port_open "$p" || { echo "$p"; return; }
  done
  die "no free port"
}

# --- node components ---------------------------------------------------------------
node_up() {
  # shellcheck disable=SC2086
  start_daemon kubelet yes "$KUBELET_BIN" \
    --config "$STATE/kubelet/config.yaml" \
    --kubeconfig "$KUBECONFIG_NODE" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --root-dir "$STATE/kubelet/root" --cert-dir "$STATE/kubelet/pki" \
    --v 1 ${HERMES_NODE_KUBELET_EXTRA_ARGS:-}
  start_daemon kube-proxy yes "$PROXY_BIN" --config "$STATE/kube-proxy/config.yaml" --v 1
  start_daemon coredns yes "$COREDNS_BIN" -conf "$STATE/coredns/Corefile"
}

forwarders_up() {
  local p
  for p in $FORWARD_PORTS; do
    start_daemon "forward-$p" no "$(command -v socat)" \
      "TCP-LISTEN:$p,bind=$HOST_IP,fork,reuseaddr" "TCP:127.0.0.1:$p"
  done
}

node_ready() {
  [ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
dns_ready() { in_ns curl -sf --max-time 2 http://127.0.0.1:18181/ready; }

cmd_up() {
  local t0 t1
  [ "$(id -u)" = 0 ] || die "needs root (network namespace, cgroups, containerd)"
  ensure_packages
  cmd_build
  t0=$(now_ms)
  net_up
  cgroups_up
  write_configs
  control_plane_up
  containerd_up
  ctr_k8s images ls -q | grep -qx "$PAUSE_IMAGE" || cmd_load "$PAUSE_TAR"
  ctr_k8s images ls -q | grep -qx "$ECHO_IMAGE" || cmd_load "$ECHO_TAR"
  forwarders_up
  node_up
  wait_until "node Ready" "$START_TIMEOUT" kubelet "$KUBELET_BIN" node_ready ||
    die "node $NODE_NAME not Ready (logs: $STATE/logs/)"
  wait_until "cluster DNS" 60 coredns "$COREDNS_BIN" dns_ready || die "CoreDNS not ready (log: $STATE/logs/coredns.log)"
  t1=$(now_ms)
  log "node $NODE_NAME Ready in $(fmt_secs $((t1 - t0))) (network, control plane, containerd, kubelet, kube-proxy, CoreDNS)"
  cmd_env
}

# --- down ------------------------------------------------------------------------
shims_of_ours() { # containerd shims started by our containerd (its socket in their command line)
  local p
  for p in $(pgrep -f containerd-shim 2>/dev/null); do
    tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$CONTAINERD_SOCK" && echo "$p"
  done
  return 0
}
pod_netns_paths() { # network namespaces containerd made for our pods
  [ -S "$CONTAINERD_SOCK" ] || return 0
  local id
  for id in $(ctr_k8s containers ls -q 2>/dev/null); do
    ctr_k8s containers info "$id" 2>/dev/null |
      jq -r '.Spec.linux.namespaces[]? | select(.type == "network") | .path // empty'
  done | sort -u
}
unmount_under() { # unmount every mount point under $1, deepest first
  local m
  { findmnt -rn -o TARGET | grep -E "^$1(/|$)" || true; } | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: cannot unmount $m"
  done
}

cmd_down() {
  local netns_paths p t0
  t0=$(now_ms)
  netns_paths=$(pod_netns_paths || true)
  stop_daemon kubelet "$KUBELET_BIN" 30
  stop_daemon kube-proxy "$PROXY_BIN"
  stop_daemon coredns "$COREDNS_BIN"
  # the pods' processes: every one of them is in /$CGROUP_ROOT
  cgroups_down
  for p in $(shims_of_ours); do stop_pid "$p" 5; done
  stop_daemon containerd "$(command -v containerd || echo containerd)" 30
  for p in $(shims_of_ours); do stop_pid "$p" 5 KILL; done
  for p in $netns_paths; do
    [[ $p == /run/netns/* || $p == /var/run/netns/* ]] || continue
    umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null || true
    rm -f "$p"
  done
  for p in $FORWARD_PORTS; do stop_daemon "forward-$p" "$(command -v socat || echo socat)"; done
  stop_daemon kube-scheduler "$SCHED_BIN"
  stop_daemon kube-controller-manager "$KCM_BIN"
  cp_run reset >/dev/null 2>&1 || true
  net_down
  cgroups_down
  unmount_under "$RUN"
  unmount_under "$STATE"
  if findmnt -rn -o TARGET | grep -qE "^($STATE|$RUN)(/|$)"; then
    die "mounts remain under $STATE or $RUN; not deleting them"
  fi
  rm -rf --one-file-system "$RUN" "$STATE"
  log "down: node state removed ($STATE, $RUN, $CP_STATE) in $(fmt_secs $(( $(now_ms) - t0 )))"
}

# --- status, env ---------------------------------------------------------------------
cmd_status() {
  local n s ok=0
  for n in containerd:"$(command -v containerd || echo containerd)" kubelet:"$KUBELET_BIN" \
    kube-proxy:"$PROXY_BIN" coredns:"$COREDNS_BIN" kube-controller-manager:"$KCM_BIN" \
    kube-scheduler:"$SCHED_BIN"; do
    if running "${n%%:*}" "${n#*:}"; then s="running (pid $(cat "$STATE/run/${n%%:*}.pid"))"; else s=stopped; ok=1; fi
    printf '%-24s %s\n' "${n%%:*}" "$s"
  done
  cp_run status 2>/dev/null | sed -n '1,3p' || ok=1
  if [ -e "$NETNS_PATH" ]; then echo "netns $NETNS: $(in_ns ip -br addr | tr -s ' ' | paste -sd';')"; else echo "netns $NETNS: absent"; ok=1; fi
  if [ -x "$KUBECTL_BIN" ] && [ -f "$KUBECONFIG_NODE" ] && node_ready; then
    echo "node $NODE_NAME: Ready"
    kc get pods -A -o wide 2>/dev/null || true
  else
    echo "node $NODE_NAME: not Ready"; ok=1
  fi
  return $ok
}

cmd_env() {
  [ -f "$KUBECONFIG_NODE" ] || die "not up (no $KUBECONFIG_NODE); run: $0 up"
  printf 'KUBECONFIG=%q\n' "$KUBECONFIG_NODE"
  printf 'HERMES_KUBECTL=%q\n' "$KUBECTL_BIN"
  printf 'HERMES_NODE_HOST_IP=%q\n' "$HOST_IP"
  printf 'HERMES_NODE_NAME=%q\n' "$NODE_NAME"
}

cmd_paths() {
  echo "kubelet: $KUBELET_BIN"
  echo "kube-proxy: $PROXY_BIN"
  echo "kube-controller-manager: $KCM_BIN"
  echo "kube-scheduler: $SCHED_BIN"
  echo "coredns: $COREDNS_BIN"
  echo "kubectl: $KUBECTL_BIN"
  echo "images: $PAUSE_TAR $ECHO_TAR"
  echo "state: $STATE (logs: $STATE/logs/)"
  echo "control plane state: $CP_STATE"
  echo "containerd socket: $CONTAINERD_SOCK"
}

# --- check: the node's proof ---------------------------------------------------------
cmd_check() {
  local ns=node-check t0 ip cip out
  node_ready || die "node not Ready ($0 up)"
  t0=$(now_ms)
  kc delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
  kc create namespace "$ns" >/dev/null
  kc -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: echo
          image: $ECHO_IMAGE
          imagePullPolicy: Never
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
          resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 64Mi}}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
EOF
  kc -n "$ns" rollout status deployment/echo --timeout=120s >&2 || { kc -n "$ns" describe pods >&2; die "echo pods not Ready"; }
  log "pods Ready in $(fmt_secs $(( $(now_ms) - t0 )))"
  kc -n "$ns" get pods -o wide >&2
  ip=$(kc -n "$ns" get pods -l app=echo -o 'jsonpath={.items[0].status.podIP}')
  [[ $ip == 10.88.* ]] || die "pod IP '$ip' is not in $POD_CIDR"
  out=$(curl -sf --max-time 5 "http://$ip:8080/") || die "pod IP $ip:8080 not reachable from the host"
  log "host -> pod $ip:8080: $out"
  cip=$(kc -n "$ns" get service echo -o 'jsonpath={.spec.clusterIP}')
  wait_until "Service $cip" 30 "" "" curl -sf --max-time 2 "http://$cip/" || die "ClusterIP $cip not reachable from the host"
  out=$(curl -sf --max-time 5 "http://$cip/")
  log "host -> Service echo ClusterIP $cip:80: $out"
  # from a pod: the Service by name (cluster DNS), the API server through the
  # `kubernetes` Service, a host service through host.hermes.internal
  kc -n "$ns" run probe --image="$ECHO_IMAGE" --image-pull-policy=Never --restart=Never \
    --overrides='{"spec":{"securityContext":{"runAsNonRoot":true,"runAsUser":65532}}}' \
    --env=ECHO_LISTEN=127.0.0.1:9999 >/dev/null
  kc -n "$ns" wait pod/probe --for=condition=Ready --timeout=60s >/dev/null || die "probe pod not Ready"
  out=$(kc -n "$ns" exec probe -- /echo get http://echo/) || die "pod -> http://echo/ (cluster DNS + Service) failed: $out"
  log "pod -> http://echo/ (DNS search path, ClusterIP): $out"
  out=$(kc -n "$ns" exec probe -- /echo get https://kubernetes.default.svc/readyz) ||
    die "pod -> https://kubernetes.default.svc/readyz failed: $out"
  log "pod -> https://kubernetes.default.svc/readyz: $out"
  kc delete namespace "$ns" --wait=false >/dev/null
  log "check: passed in $(fmt_secs $(( $(now_ms) - t0 )))"
}

case "${1:-}" in
  build)  cmd_build ;;
  up)     cmd_up ;;
  down)   cmd_down ;;
  status) cmd_status ;;
  env)    cmd_env ;;
  load)   shift; cmd_load "$@" ;;
  check)  cmd_check ;;
  ctr)    shift; ctr_k8s "$@" ;;
  paths)  cmd_paths ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
