#!/usr/bin/env bash
# Starts a PRIVATE broker for the fault tests, which kill and restart it; never the shared ones.
# Usage: scripts/fault-broker.sh rabbitmq|pubsub|kafka DIR
#   rabbitmq: node mqtrace-fault@localhost on 127.0.0.1:5673 (dist port 25673), data and logs
#             under DIR (kept across restarts: durable queues survive), no plugins.
#   pubsub:   Google's emulator on 127.0.0.1:18085 (in memory).
#   kafka:    Tansu on 127.0.0.1:19092 with memory storage.
# Prints the broker's process id once its port accepts connections (the caller kills it with
# `kill -9 PID` to simulate a crash and runs this again to restart it). Ports: override with
# FAULT_RABBITMQ_PORT, FAULT_PUBSUB_PORT, FAULT_KAFKA_PORT.
set -euo pipefail

kind="$1"; dir="$2"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
tools="${MQTRACE_TOOLS:-/var/tmp/mqtrace-tools}"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 4; i++)); do
    port_open "$1" && return 0
    sleep 0.25
  done
  echo "fault-broker: $kind did not open 127.0.0.1:$1 within $2 s (log in $dir)" >&2
  return 1
}

case "$kind" in
rabbitmq)
  port="${FAULT_RABBITMQ_PORT:-5673}"
  mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
  echo '[].' >"$dir/enabled_plugins"
  export HOME="$dir/home" RABBITMQ_NODENAME=mqtrace-fault@localhost RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_DIST_PORT=$((port + 20000)) RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq" RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  setsid /usr/lib/rabbitmq/bin/rabbitmq-server >>"$dir/out.log" 2>&1 </dev/null &
  sh_pid=$!
  wait_port "$port" 60
  # The port opens before the app accepts connections on a cold start; give it a moment.
  for ((i = 0; i < 40; i++)); do
    grep -q "Starting broker... completed" "$dir/out.log" 2>/dev/null && break
    sleep 0.25
  done
  pgrep -P "$sh_pid" beam.smp || pgrep -P "$sh_pid"
  ;;
pubsub)
  port="${FAULT_PUBSUB_PORT:-18085}"
  setsid /usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator \
    --host=127.0.0.1 --port="$port" >>"$dir/pubsub.log" 2>&1 </dev/null &
  pid=$!
  wait_port "$port" 60
  pgrep -P "$pid" java || echo "$pid"
  ;;
kafka)
  port="${FAULT_KAFKA_PORT:-19092}"
  setsid "$tools/tansu/bin/tansu" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ \
    >>"$dir/tansu.log" 2>&1 </dev/null &
  pid=$!
  wait_port "$port" 30
  echo "$pid"
  ;;
*)
  echo "usage: $0 rabbitmq|pubsub|kafka DIR" >&2
  exit 2
  ;;
esac
