#!/usr/bin/env bash
# Stops the brokers scripts/start-brokers.sh started (the ones with a pid file in
# $MQTRACE_TOOLS/run/); a broker it did not start is never touched.
# Usage: scripts/stop-brokers.sh [rabbitmq|kafka|pubsub|all ...]   (default: all)
# Exits non-zero if a broker it started is still running afterwards.
set -euo pipefail
LOG_NAME=stop-brokers
# shellcheck source=scripts/brokers-lib.sh
. "$(dirname "$0")/brokers-lib.sh"

failed=0

stop_one() { # broker pidfile
  local broker="$1" pidfile="$2" pid i
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null; then
    log "$broker ($(basename "$pidfile" .pid)) is not running; removing its pid file"
    rm -f "$pidfile"
    return 0
  fi
  if [ "$broker" = rabbitmq ]; then
    # rabbitmqctl stop PIDFILE returns once the node's process has exited.
    timeout 60 rabbitmqctl -q stop "$pidfile" >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
  else
    # start-brokers.sh ran it in its own session: end the whole process group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  fi
  for ((i = 0; i < 80; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$broker (pid $pid) did not stop within 20 s; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  if kill -0 "$pid" 2>/dev/null; then
    log "$broker (pid $pid) is still running"
    failed=1
    return 0
  fi
  rm -f "$pidfile"
  log "stopped $broker (pid $pid)"
}

stop_broker() { # broker
  local f found=0
  for f in "$RUN_DIR/$1"-*.pid; do
    [ -e "$f" ] || continue
    found=1
    stop_one "$1" "$f"
  done
  [ "$found" -eq 1 ] || log "no $1 started by start-brokers.sh (no pid file in $RUN_DIR)"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(all)
for t in "${targets[@]}"; do
  case "$t" in
    rabbitmq | kafka | pubsub) stop_broker "$t" ;;
    all) stop_broker rabbitmq; stop_broker kafka; stop_broker pubsub ;;
    *) log "unknown broker: $t (known: rabbitmq, kafka, pubsub, all)"; exit 2 ;;
  esac
done
exit "$failed"
