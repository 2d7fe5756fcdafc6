#!/usr/bin/env bash
# Prometheus scraping the release scripts/kube/install-on-node.sh made (namespace
# hermes-deployment) the way the chart's ServiceMonitor selects it, with Kubernetes
# service discovery and the chart's PrometheusRule (scripts/kube/release-prometheus.sh).
# Then traffic (a refused connect, the fault checker's clients and publisher through the
# Service and RabbitMQ, one poison message, a client's ping), and tests/src/bin/prometheus-check.rs: every
# query of the Grafana dashboard evaluates and returns data (except the families named
# below, with why), every alert rule is loaded and evaluated with health ok.
# See docs/dev/node.md.
#
# Usage: scripts/kube/prometheus-on-node.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

LOG_TAG=prometheus
# shellcheck source=scripts/kube/on-release.sh
source "$HERE/on-release.sh"
build_e2e_bins prometheus-check installed-faults amqp-publish

work_dir prometheus
# 1-3. the ServiceMonitor and PrometheusRule as the chart renders them, Prometheus on the
#      host configured from them, every gateway and consumer pod scraped (sets url, rules);
#      on another cluster its own Prometheus (HERMES_PROMETHEUS_URL)
# shellcheck source=scripts/kube/release-prometheus.sh
source "$HERE/release-prometheus.sh"
if [ "$CLUSTER" = node ]; then start_release_prometheus; else use_existing_prometheus; fi

# 4. Traffic that gives the labelled families their series.
ws_url=$(gateway_ws_url)
http_url=http${ws_url#ws}
refused=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
  -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
  "$http_url?token=not-a-jwt") || die "a connect with a bad token to $http_url failed (curl exit $?)"
[ "$refused" = 401 ] || die "a connect with a bad token answered $refused, not 401"
open_admin
export HERMES_ADMIN_KEY=$admin_key
"$CARGO_TARGET_DIR/debug/installed-faults" --ws "$ws_url" \
  --admin "$admin" --queue "$QUEUE" --rate 20 --settle 3 --rust-clients 2 \
  --node-clients 1 --name "nothing (traffic for the scrape)" -- true >/dev/null ||
  die "the traffic (installed-faults) failed"
"$CARGO_TARGET_DIR/debug/amqp-publish" --not-json "$QUEUE" 'not json'
# a client frame: {"action":"ping"} from a socket (Node's WebSocket), answered, then closed
token=$(issue_token prometheus-ping prometheus)
HERMES_WS="$ws_url" HERMES_TOKEN=$token timeout 20 node --experimental-websocket --no-warnings -e '
  const ws = new WebSocket(process.env.HERMES_WS, ["hermes.v1", "bearer." + process.env.HERMES_TOKEN]);
  ws.onopen = () => ws.send(JSON.stringify({ action: "ping" }));
  ws.onmessage = (e) => { if (JSON.parse(e.data).event === "pong") { ws.close(1000); } };
  ws.onclose = (e) => process.exit(e.code === 1000 ? 0 : 1);
  ws.onerror = () => process.exit(1);' || die "a ping over a socket through the Service got no pong"
# scraped twice since (a rate needs two samples): the consumer's dead letter, the
# gateway's client frame
scraped() {
  [ "$(query 'rate(hermes_dead_letters_total{reason="invalid_message"}[15s])' 2>/dev/null || echo 0)" -gt 0 ] &&
    [ "$(query 'rate(hermes_messages_received_total[15s])' 2>/dev/null || echo 0)" -gt 0 ]
}
until_true 60 "the poison message's dead letter and the ping scraped" scraped

# 5. Every dashboard query and alert rule.
# No data on a healthy cluster after this traffic, by design (they evaluate all the same):
#   hermes_messages_dropped_total   labelled by reason: needs a dropped frame
#   hermes_route_skipped_total      labelled by reason: needs a terminating gateway skipped
#   hermes_route_calls_total        labelled by route: no route integration configured
#   hermes_reaped_rows_total        needs a dead gateway's rows reaped (disruption-on-node.sh)
"$CARGO_TARGET_DIR/debug/prometheus-check" --url "$url" --rules "$rules" \
  --exempt hermes_messages_dropped_total --exempt hermes_route_skipped_total \
  --exempt hermes_route_calls_total --exempt hermes_reaped_rows_total
