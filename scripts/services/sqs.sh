#!/usr/bin/env bash
# An SQS-compatible server for Hermes's tests: moto's server on http://127.0.0.1:9324, from PyPI.
#
#   scripts/services/sqs.sh start|stop|restart|status|env|install|reset|logs
#
# - Install: a venv in $HERMES_CACHE/venv-moto with moto==5.2.5 (HERMES_MOTO_VERSION overrides)
#   plus flask and flask-cors (what moto's server needs; the full `moto[server]` extra would also
#   pull CloudFormation, Docker, X-Ray... for other AWS services: 330 MB instead of 140 MB).
# - Run: `python -m moto.server -H 127.0.0.1 -p $HERMES_SQS_PORT` in the background (setsid, pid
#   file). State is in memory only: a restart empties every queue. `reset` empties it without a
#   restart (POST /moto-api/reset).
# - Ready = a real SQS JSON-protocol request (AmazonSQS.ListQueues) answers 200.
# - Logs: $HERMES_CACHE/state/sqs/moto.log (one line per request).
# - Credentials and region are not checked; use the ones `env` prints. Queue URLs look like AWS's:
#   http://127.0.0.1:9324/123456789012/<name>, ARNs arn:aws:sqs:us-east-1:123456789012:<name>.
#
# Environment: HERMES_CACHE (default ~/.cache/hermes), HERMES_SQS_PORT (9324),
# HERMES_SQS_START_TIMEOUT (60 s).
#
# ---- Why moto and not ElasticMQ (checked here on 2026-11-25) -------------------------------
# Candidates: moto 5.2.5 (PyPI, `moto_server`) and ElasticMQ 1.7.1
# (org.elasticmq:elasticmq-server_2.13 from Maven Central, newest that resolved via the range
# [1.0.0,): `mvn dependency:copy-dependencies`, then
# `java -Drest-sqs.bind-hostname=127.0.0.1 -Drest-sqs.bind-port=9331 -cp 'lib/*' org.elasticmq.server.Main`).
# Both were driven by boto3/botocore 1.44.8 (venv: `pip install 'moto[server]' boto3`) and by a
# scratch Rust program on the project's own aws-sdk-sqs 1.119.0 + aws-config 1.13.0 (same
# Cargo.lock), each: create a DLQ and a queue with RedrivePolicy maxReceiveCount=2 and
# VisibilityTimeout=1; ReceiveMessage WaitTimeSeconds=3 on the empty queue; ReceiveMessage
# WaitTimeSeconds=10 with a SendMessage 1.5 s later; receive without deleting until the message
# moves; ReceiveMessage on the DLQ; GetQueueUrl of a missing queue.
#   wire protocol: botocore's service model says "json"; every request had
#     X-Amz-Target: AmazonSQS.<Op> and Content-Type: application/x-amz-json-1.0 (seen with a
#     before-send hook); both servers answered all of them.                   moto OK  ElasticMQ OK
#   long polling: empty queue blocked 3.02 s (moto) / 3.06 s (ElasticMQ); the late send woke the
#     waiting receive after 1.52 s / 1.59 s (Rust SDK: 1.51 s / 1.52 s).      moto OK  ElasticMQ OK
#   DLQ redrive: after 2 receives the third found nothing and the DLQ held the message, with
#     ApproximateReceiveCount 2 on the last receive (boto3 and Rust).         moto OK  ElasticMQ OK
#   also both: MessageSystemAttributeNames (the SDK's new name for AttributeNames), message
#     attributes, ChangeMessageVisibility(0), DeleteMessageBatch; 20 send+receive on one queue
#     took 0.24 s (moto) / 0.47 s (ElasticMQ) while 10 long polls waited on another.
#   errors: GetQueueUrl of a missing queue. moto answers like AWS (`__type:
#     com.amazonaws.sqs#QueueDoesNotExist`, `x-amzn-query-error:
#     AWS.SimpleQueueService.NonExistentQueue;Sender`), and aws-sdk-sqs gives the typed
#     GetQueueUrlError::QueueDoesNotExist. ElasticMQ sends `X-Amzn-Query-Error:
#     com.amazonaws.sqs#QueueDoesNotExist`, which aws-sdk-sqs turns into an Unhandled error with
#     code "QueueDoesNotExist" (is_queue_does_not_exist() == false).          moto OK  ElasticMQ no
#   cost: moto venv 12-16 s to install, 140 MB, 78 MB RSS, ~1 s start; ElasticMQ 23 s of Maven,
#     37 MB of jars, 180 MB RSS, ~3 s start on a JVM.
# Decision: moto: passes all three required checks, and its errors match real SQS for the Rust SDK.
# Caveats of moto: Werkzeug's development server closes the connection after every response
# (no keep-alive), and state lives in memory only.
# ---------------------------------------------------------------------------------------------
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

cache="${HERMES_CACHE:-$HOME/.cache/hermes}"
state="${HERMES_SQS_STATE:-$cache/state/sqs}"
venv="$cache/venv-moto"
moto_version="${HERMES_MOTO_VERSION:-5.2.5}"
port="${HERMES_SQS_PORT:-9324}"
start_timeout="${HERMES_SQS_START_TIMEOUT:-60}"
pidfile="$state/moto.pid"
log="$state/moto.log"

say() { echo "sqs: $*"; }
die() { echo "sqs: $*" >&2; exit 1; }

ensure_installed() {
  [[ -f "$venv/.hermes-moto-$moto_version" && -x "$venv/bin/python" ]] && return 0
  say "installing moto==$moto_version into $venv (once)"
  command -v python3 >/dev/null || die "python3 is required"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "moto==$moto_version" 'flask!=2.2.0,!=2.2.1' flask-cors ||
    { rm -rf "$venv"; die "pip install moto==$moto_version failed"; }
  touch "$venv/.hermes-moto-$moto_version"
}

running_pid() { pidfile_pid "$pidfile" moto.server; }

# A real SQS request in the JSON protocol; prints the number of queues.
sqs_probe() { # port
  python3 - "$1" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(
    "http://127.0.0.1:%s/" % sys.argv[1], data=b"{}", method="POST",
    headers={"X-Amz-Target": "AmazonSQS.ListQueues",
             "Content-Type": "application/x-amz-json-1.0",
             "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/sqs/aws4_request, "
                              "SignedHeaders=host, Signature=0"})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        body = json.load(r)
    print(len(body.get("QueueUrls", [])))
except Exception as e:
    sys.exit("127.0.0.1:%s: %s" % (sys.argv[1], e))
PY
}

start() {
  local pid started=$SECONDS
  if pid="$(running_pid)"; then
    if sqs_probe "$port" >/dev/null 2>&1; then
      say "already running and healthy on http://127.0.0.1:$port (moto, pid $pid)"
      return 0
    fi
    say "already running (pid $pid) but not answering yet; waiting"
  else
    if sqs_probe "$port" >/dev/null 2>&1; then
      say "an SQS-compatible server not started by this script already answers on http://127.0.0.1:$port; using it"
      return 0
    fi
    port_open "$port" && die "port $port on 127.0.0.1 is in use by another process (set HERMES_SQS_PORT)"
    ensure_installed
    mkdir -p "$state"
    if [[ -f "$log" ]] && (($(stat -c %s "$log") > 50 * 1024 * 1024)); then
      mv -f "$log" "$log.1"
    fi
    # A pid file left by a process that is gone (SIGKILL, a reboot) must not be read as the
    # new process's: remove it, then wait for the new one to write it.
    rm -f "$pidfile"
    # shellcheck disable=SC2016 # $$ is the pid of the inner bash, which becomes python.
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$pidfile" \
      "$venv/bin/python" -m moto.server -H 127.0.0.1 -p "$port" </dev/null >>"$log" 2>&1 &
    for _ in 1 2 3 4 5 6 7 8 9 10; do [[ -s "$pidfile" ]] && break; sleep 0.1; done
    pid="$(cat "$pidfile")"
  fi
  while ! sqs_probe "$port" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "sqs: moto (pid $pid) exited before it answered; last 50 lines of $log:" >&2
      tail -n 50 "$log" >&2
      rm -f "$pidfile"
      exit 1
    fi
    if ((SECONDS - started >= start_timeout)); then
      echo "sqs: moto did not answer on 127.0.0.1:$port within $start_timeout s (pid $pid left running); last 50 lines of $log:" >&2
      tail -n 50 "$log" >&2
      exit 1
    fi
    sleep 0.2
  done
  say "started in $((SECONDS - started)) s on http://127.0.0.1:$port (moto $moto_version, pid $pid, log $log)"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$pidfile"
    say "not running"
    return 0
  fi
  terminate "$pid" 10 >/dev/null
  rm -f "$pidfile"
  say "stopped (pid $pid)"
}

status() {
  local pid n
  if pid="$(running_pid)"; then
    if n="$(sqs_probe "$port" 2>&1)"; then
      say "running and healthy on http://127.0.0.1:$port (moto, pid $pid, $n queues)"
      return 0
    fi
    say "running (pid $pid) but not answering on 127.0.0.1:$port: $n"
    return 1
  fi
  say "not running"
  return 3
}

case "${1:-}" in
  install)
    ensure_installed
    say "moto $moto_version installed in $venv"
    ;;
  start) start ;;
  stop) stop ;;
  restart)
    stop
    start
    ;;
  status) status ;;
  env)
    echo "HERMES_TEST_SQS_ENDPOINT=http://127.0.0.1:$port"
    echo "AWS_REGION=us-east-1"
    echo "AWS_ACCESS_KEY_ID=test"
    echo "AWS_SECRET_ACCESS_KEY=test"
    ;;
  reset)
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b"", method="POST"), timeout=10)' \
      "http://127.0.0.1:$port/moto-api/reset"
    say "all queues deleted (moto reset)"
    ;;
  logs) echo "$log" ;;
  *)
    echo "usage: $0 start|stop|restart|status|env|install|reset|logs" >&2
    exit 64
    ;;
esac
