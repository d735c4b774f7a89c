#!/usr/bin/env bash
# Starts the brokers the tests and examples need, natively (no Docker), if they are not
# already running. Usage: scripts/start-brokers.sh [rabbitmq ...]   (default: all)
#
# Addresses follow the usual variables: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f).
# A broker reachable at its address is left alone, whoever started it.
set -euo pipefail

log() { printf '[start-brokers] %s\n' "$*" >&2; }

port_open() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0 || return 1
}

wait_port() { # host port seconds name
  local i
  for ((i = 0; i < $3 * 4; i++)); do
    port_open "$1" "$2" && return 0
    sleep 0.25
  done
  log "$4 did not open $1:$2 within $3 s"
  return 1
}

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    log "need root to apt-get install $*; install it yourself or run as root"
    return 1
  fi
  log "installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_rabbitmq() {
  local url="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
  local hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
  local host="${hostport%%:*}" port="${hostport##*:}"
  [ "$port" = "$hostport" ] && port=5672
  if port_open "$host" "$port"; then
    log "RabbitMQ already listening on $host:$port"
    return 0
  fi
  if [ "$host" != "127.0.0.1" ] && [ "$host" != "localhost" ]; then
    log "RabbitMQ at $host:$port is not reachable and is not local; start it there"
    return 1
  fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  log "starting RabbitMQ (rabbitmq-server -detached)"
  rabbitmq-server -detached || true
  wait_port "$host" "$port" 90 RabbitMQ
  # The port opens before the broker accepts connections; wait for the app to be up.
  if command -v rabbitmqctl >/dev/null; then
    timeout 90 rabbitmqctl -q await_startup >/dev/null 2>&1 || true
  fi
  log "RabbitMQ is up on $host:$port"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(rabbitmq)
for t in "${targets[@]}"; do
  case "$t" in
    rabbitmq) start_rabbitmq ;;
    all) start_rabbitmq ;;
    *) log "unknown broker: $t (known: rabbitmq)"; exit 2 ;;
  esac
done
