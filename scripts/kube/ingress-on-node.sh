#!/usr/bin/env bash
# wss:// through an ingress-like TLS front, on the release scripts/kube/install-on-node.sh
# made (namespace hermes-deployment) on the local node: Debian's nginx as a TLS reverse
# proxy in front of the gateways' Service, configured from what the chart's Ingress asks
# for (rendered from the release's own values with ingress.enabled and TLS: its path and
# path type, its Service and port, and the ingress-nginx annotations for long-lived
# WebSockets: proxy read/send timeouts, HTTP/1.1, no buffering), a certificate made here
# for push.hermes.test; then headless Chromium (tests/browser/ingress-wss.mjs) opens
# wss://push.hermes.test:<port>/<stage> with the original snippet and with hermes.js, and
# each receives a notification published to the release's RabbitMQ queue. nginx logs the
# path without the query string (a ?token= never reaches its log). See docs/dev/node.md.
#
# On another cluster (HERMES_KUBE_CLUSTER=existing, scripts/kube/on-release.sh) there is
# no proxy to make: Chromium opens HERMES_WSS_URL, the cluster's own ingress (its
# certificate must be one Chromium trusts), and the access log is the ingress's to check.
#
# Usage: scripts/kube/ingress-on-node.sh
# Environment: HERMES_INGRESS_PORT (the proxy's port on 127.0.0.1, default 18443),
#              HERMES_WSS_URL (existing clusters: wss://HOST/STAGE of the ingress)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
HOST=push.hermes.test
PORT=${HERMES_INGRESS_PORT:-18443}

LOG_TAG=ingress
# shellcheck source=scripts/kube/on-release.sh
source "$HERE/on-release.sh"
command -v nginx >/dev/null || apt_install nginx || die "apt-get install nginx failed"
[ -x /usr/bin/chromium ] || apt_install chromium || die "apt-get install chromium failed"
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm_ci_if_stale "$ROOT/tests/browser"
build_e2e_bins amqp-publish
work_dir ingress
browser_env=()

proxy() { # steps 1-3: the TLS front, as an ingress controller makes it; sets wss_url
  port_open "$PORT" && die "127.0.0.1:$PORT is taken (HERMES_INGRESS_PORT)"

  # 1. What the chart's Ingress asks for, from the release's own values.
  "$HELM" get values "$RELEASE" -n "$NS" -o yaml > "$work/values.yaml"
  "$HELM" template "$RELEASE" "$ROOT/charts/hermes" -n "$NS" -f "$work/values.yaml" \
    --set ingress.enabled=true --set "ingress.hosts={$HOST}" \
    --set ingress.tls[0].secretName=hermes-tls --set "ingress.tls[0].hosts={$HOST}" \
    --show-only templates/ingress.yaml |
    "$HERMES_KUBECTL" create --dry-run=client -o json -f - > "$work/ingress.json"
  jqi() { jq -r "$1" "$work/ingress.json"; }
  path=$(jqi '.spec.rules[0].http.paths[0].path')
  path_type=$(jqi '.spec.rules[0].http.paths[0].pathType')
  service=$(jqi '.spec.rules[0].http.paths[0].backend.service.name')
  port_name=$(jqi '.spec.rules[0].http.paths[0].backend.service.port.name')
  annotation() { jqi ".metadata.annotations[\"nginx.ingress.kubernetes.io/$1\"] // \"$2\""; }
  read_timeout=$(annotation proxy-read-timeout 60)
  send_timeout=$(annotation proxy-send-timeout 60)
  http_version=$(annotation proxy-http-version 1.1)
  buffering=$(annotation proxy-buffering on)
  [ "$(jqi '.spec.tls[0].hosts[0]')" = "$HOST" ] || die "the Ingress has no TLS for $HOST"
  case $path_type in Exact) location="= $path" ;; Prefix | ImplementationSpecific) location=$path ;;
    *) die "path type $path_type" ;; esac
  cluster_ip=$(kc get service "$service" -o jsonpath='{.spec.clusterIP}')
  service_port=$(kc get service "$service" -o jsonpath="{.spec.ports[?(@.name==\"$port_name\")].port}")
  [ -n "$cluster_ip" ] && [ -n "$service_port" ] || die "Service $service has no $port_name port"
  log "the Ingress asks for: $path_type $path -> $service:$port_name ($cluster_ip:$service_port), read/send timeouts ${read_timeout}/${send_timeout} s, HTTP/$http_version, buffering $buffering"

  # 2. The certificate, made here.
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=$HOST" \
    -addext "subjectAltName=DNS:$HOST" -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null ||
    die "openssl could not make the certificate"
  spki=$(openssl x509 -pubkey -noout -in "$work/tls.crt" | openssl pkey -pubin -outform der |
    openssl dgst -sha256 -binary | base64)

  # 3. nginx, as ingress-nginx would configure it for that Ingress.
  mkdir -p "$work/tmp"
  cat > "$work/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log info;
events { worker_connections 1024; }
http {
  client_body_temp_path $work/tmp/body;
  proxy_temp_path $work/tmp/proxy;
  fastcgi_temp_path $work/tmp/fastcgi;
  uwsgi_temp_path $work/tmp/uwsgi;
  scgi_temp_path $work/tmp/scgi;
  # \$uri, not \$request: the query string (a ?token=) stays out of the log
  log_format noquery '\$remote_addr [\$time_local] "\$request_method \$uri \$server_protocol" \$status \$request_time';
  access_log $work/access.log noquery;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  server {
    listen 127.0.0.1:$PORT ssl;
    server_name $HOST;
    ssl_certificate $work/tls.crt;
    ssl_certificate_key $work/tls.key;
    location $location {
      proxy_pass http://$cluster_ip:$service_port;
      proxy_http_version $http_version;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_read_timeout ${read_timeout}s;
      proxy_send_timeout ${send_timeout}s;
      proxy_buffering $buffering;
    }
  }
}
CONF
  nginx -t -c "$work/nginx.conf" -p "$work" >/dev/null 2>&1 || { nginx -t -c "$work/nginx.conf" -p "$work" >&2; die "nginx -t refused the configuration"; }
  background nginx -c "$work/nginx.conf" -p "$work"
  for _ in $(seq 1 100); do port_open "$PORT" && break; sleep 0.1; done
  port_open "$PORT" || die "nginx is not listening on 127.0.0.1:$PORT: $(cat "$work/error.log" 2>/dev/null)"
  log "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') on https://$HOST:$PORT (127.0.0.1)"
  wss_url=wss://$HOST:$PORT$path
  browser_env=(HERMES_RESOLVE="MAP $HOST 127.0.0.1" HERMES_SPKI="$spki")
}
if [ "$CLUSTER" = node ]; then
  proxy
else
  wss_url=${HERMES_WSS_URL:-}
  [[ $wss_url == wss://* ]] || die "set HERMES_WSS_URL to the ingress's wss:// URL of the gateways (with the stage path)"
fi

# 4. Tokens (admin API of a Ready gateway), the browser test.
open_admin
room=ingress-$RANDOM$RANDOM
publish=$work/publish
printf '#!/bin/sh\nexec %q %q "$1"\n' "$CARGO_TARGET_DIR/debug/amqp-publish" "$QUEUE" > "$publish"
chmod +x "$publish"
rc=0
(cd "$ROOT/tests/browser" &&
  env "${browser_env[@]}" HERMES_WSS_URL="$wss_url" \
  HERMES_TOKEN_ORIGINAL=$(issue_token ingress-original "$room") HERMES_TOKEN_CLIENT=$(issue_token ingress-client "$room") \
  HERMES_ROOM=$room HERMES_PUBLISH=$publish node --test ingress-wss.mjs) || rc=$?
if [ "$CLUSTER" = node ]; then
  log "nginx access log (path only):"
  sed 's/^/    /' "$work/access.log" >&2 || true
  if grep -q "token=" "$work/access.log"; then die "a token reached nginx's access log"; fi
fi
[ "$rc" -eq 0 ] || die "the browser test failed"
