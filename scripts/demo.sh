#!/usr/bin/env bash
# The one-command demo: an order's trace from an HTTP request through RabbitMQ, Kafka and
# Pub/Sub, printed as a waterfall per order, then a table of each stage's metrics.
#   scripts/demo.sh            # run it and print the traces and the table
#   scripts/demo.sh --check    # also verify them; exits non-zero if a trace is not as expected
#                              # or the table's counts do not add up
#
# It builds the examples (crate mqtrace-examples), starts the brokers that are not running
# (scripts/start-brokers.sh; they are left running afterwards, as scripts/test.sh does),
# creates the queues, topic and subscription, runs each stage as its own process, sends five
# orders (one with the caller's own traceparent, one that fails transiently twice, one poison
# order), waits until all are acked by the notifier or dead-lettered, stops the workers and
# prints the traces, then the table read from the metrics the workers exported (JSON lines in
# $dir/metrics, written every OTEL_METRIC_EXPORT_INTERVAL ms, default 5000 here, and at exit).
# Workers are stopped on every exit path.
#
# Variables: AMQP_URL, KAFKA_BOOTSTRAP_SERVERS, PUBSUB_EMULATOR_HOST (brokers, loopback by
# default); ORDER_API_ADDR (default 127.0.0.1:18080); OTEL_EXPORTER_OTLP_ENDPOINT (e.g.
# http://127.0.0.1:4318: the workers also send their spans there, e.g. to Jaeger);
# PUBSUB_PROJECT_ID (default: a new project per run, see below); MQTRACE_DEMO_DIR (where
# spans, metrics and logs go; default a new temporary directory); MQTRACE_DEMO_TIMEOUT (seconds to
# wait for the orders, default 90); CARGO_TARGET_DIR.
#
# Each run uses its own Pub/Sub project on the emulator (topic and subscription deleted at the
# end): Google's emulator keeps treating a streaming pull that a client cancelled as open and
# goes on handing it messages, so a subscription whose subscriber was ever killed loses
# messages until the emulator restarts.
set -euo pipefail
cd "$(dirname "$0")/.."

check=()
for arg in "$@"; do
  case "$arg" in
    --check) check=(--check) ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "usage: scripts/demo.sh [--check]" >&2; exit 2 ;;
  esac
done

log() { printf '[demo.sh] %s\n' "$*" >&2; }

started=$(date +%s)
# With the workspace's full feature set, as `cargo test --workspace --all-features` builds it,
# so that after the tests (scripts/test.sh) only the programs themselves are left to build.
log "building the examples (cargo build --workspace --all-features --bins)"
cargo build -q --workspace --all-features --bins
target="${CARGO_TARGET_DIR:-target}"
bin="$target/debug"
built=$(date +%s)

scripts/start-brokers.sh rabbitmq kafka pubsub

dir="${MQTRACE_DEMO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/mqtrace-demo.XXXXXX")}"
mkdir -p "$dir/spans" "$dir/metrics" "$dir/logs"
export MQTRACE_DEMO_SPANS="$dir/spans"
export MQTRACE_DEMO_METRICS="$dir/metrics"
export OTEL_METRIC_EXPORT_INTERVAL="${OTEL_METRIC_EXPORT_INTERVAL:-5000}"
export ORDER_API_ADDR="${ORDER_API_ADDR:-127.0.0.1:18080}"
export PUBSUB_PROJECT_ID="${PUBSUB_PROJECT_ID:-mqtrace-demo-$(date +%s)}"
if (exec 3<>"/dev/tcp/${ORDER_API_ADDR%:*}/${ORDER_API_ADDR##*:}") 2>/dev/null; then
  log "something already listens on $ORDER_API_ADDR; set ORDER_API_ADDR to a free address"
  exit 1
fi

pids=()
names=()
stop_workers() {
  local i pid n
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # They flush their spans and leave their consumer groups; give them up to 10 s in all.
  for ((n = 0; n < 40; n++)); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.25
  done
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      log "${names[$i]} did not stop; killing it"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
    wait "${pids[$i]}" 2>/dev/null || true
  done
  pids=()
  names=()
}
show_logs() {
  local f
  for f in "$dir"/logs/*.log; do
    echo "---- $(basename "$f") (last 15 lines)" >&2
    tail -n 15 "$f" >&2 || true
  done
}
set_up=0
cleanup() {
  stop_workers
  if [ "$set_up" -eq 1 ]; then
    "$bin/demo" teardown >/dev/null 2>&1 || log "could not delete the Pub/Sub topic and subscription"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

set_up=1
"$bin/demo" setup

for w in order-api validator enricher notifier dead-letters; do
  "$bin/$w" >"$dir/logs/$w.log" 2>&1 &
  pids+=($!)
  names+=("$w")
done
log "started order-api, validator, enricher, notifier, dead-letters (logs: $dir/logs)"

if ! "$bin/demo" send --url "$ORDER_API_ADDR"; then
  log "sending the orders failed"
  show_logs
  exit 1
fi
waited=0
"$bin/demo" wait --timeout "${MQTRACE_DEMO_TIMEOUT:-90}" || waited=$?
stop_workers
if [ "$waited" -ne 0 ]; then
  show_logs
fi

finished=$(date +%s)
log "spans, metrics and logs: $dir"
log "took $((finished - started)) s ($((built - started)) s building, $((finished - built)) s running)"
echo
rc=0
# Last, so a check's tally ("demo: N passed, N failed") closes the output; the metrics table
# comes after the waterfalls.
"$bin/demo" waterfall "${check[@]}" || rc=$?
[ "$waited" -eq 0 ] || exit 1
exit "$rc"
