#!/usr/bin/env bash
# Starts the brokers the tests and examples need, natively (no Docker), if they are not
# already running. Usage: scripts/start-brokers.sh [rabbitmq|kafka|pubsub|all ...]   (default: all)
#
# Addresses follow the usual variables: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
# KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092; the first server is the one checked).
# PUBSUB_EMULATOR_HOST (default 127.0.0.1:8085; Google's Pub/Sub emulator, log in
# $MQTRACE_TOOLS/pubsub-emulator.log).
# A broker reachable at its address is left alone, whoever started it.
#
# Kafka without Docker is Tansu (a Kafka-protocol broker written in Rust, Apache-2.0), installed
# once with cargo into MQTRACE_TOOLS (default /var/tmp/mqtrace-tools, outside the checkout,
# reused across runs; the first install takes about 17 minutes on 2 cores) and run with
# in-memory storage. Its log: $MQTRACE_TOOLS/tansu.log.
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

TANSU_VERSION=0.6.0

start_kafka() {
  local servers="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
  local first="${servers%%,*}"
  first="${first#*://}"
  local host="${first%:*}" port="${first##*:}"
  [ "$port" = "$first" ] && port=9092
  if port_open "$host" "$port"; then
    log "Kafka already listening on $host:$port"
    return 0
  fi
  if [ "$host" != "127.0.0.1" ] && [ "$host" != "localhost" ]; then
    log "Kafka at $host:$port is not reachable and is not local; start it there"
    return 1
  fi
  local tools="${MQTRACE_TOOLS:-/var/tmp/mqtrace-tools}"
  local root="$tools/tansu"
  local bin="$root/bin/tansu"
  mkdir -p "$tools"
  if [ ! -x "$bin" ]; then
    log "installing tansu $TANSU_VERSION into $root (cargo install; about 17 min the first time)"
    cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked --root "$root" \
      >"$tools/tansu-install.log" 2>&1 || {
      log "cargo install tansu failed; see $tools/tansu-install.log"
      return 1
    }
  fi
  log "starting tansu on $host:$port (log: $tools/tansu.log)"
  nohup "$bin" broker \
    --listener-url "tcp://$host:$port" \
    --advertised-listener-url "tcp://$host:$port" \
    --storage-engine memory://tansu/ \
    >"$tools/tansu.log" 2>&1 </dev/null &
  wait_port "$host" "$port" 30 tansu || {
    tail -n 20 "$tools/tansu.log" >&2 || true
    return 1
  }
  log "Kafka (tansu) is up on $host:$port"
}

pubsub_answers() { # host port: the emulator answers "GET /" with 200
  (
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf 'GET / HTTP/1.0\r\nHost: %s:%s\r\n\r\n' "$1" "$2" >&3
    reply=""
    IFS= read -r -t 5 reply <&3 || true
    [[ "$reply" == *" 200"* ]]
  ) 2>/dev/null
}

start_pubsub() {
  # Google's Pub/Sub emulator (Java), from the google-cloud-cli-pubsub-emulator package.
  local hostport="${PUBSUB_EMULATOR_HOST:-127.0.0.1:8085}"
  hostport="${hostport#http://}"
  local host="${hostport%:*}" port="${hostport##*:}"
  [ "$port" = "$hostport" ] && port=8085
  if port_open "$host" "$port"; then
    log "Pub/Sub emulator already listening on $host:$port"
    return 0
  fi
  if [ "$host" != "127.0.0.1" ] && [ "$host" != "localhost" ]; then
    log "Pub/Sub emulator at $host:$port is not reachable and is not local; start it there"
    return 1
  fi
  local emulator=/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
  if [ ! -x "$emulator" ]; then
    # Packaged in Google's Cloud SDK apt repository, which must be configured on the machine.
    apt_install google-cloud-cli-pubsub-emulator || {
      log "could not install google-cloud-cli-pubsub-emulator (it comes from Google's Cloud SDK apt repository)"
      return 1
    }
  fi
  local tools="${MQTRACE_TOOLS:-/var/tmp/mqtrace-tools}"
  mkdir -p "$tools"
  log "starting the Pub/Sub emulator on $host:$port (log: $tools/pubsub-emulator.log)"
  nohup "$emulator" --host="$host" --port="$port" >"$tools/pubsub-emulator.log" 2>&1 </dev/null &
  wait_port "$host" "$port" 60 "Pub/Sub emulator" || {
    tail -n 20 "$tools/pubsub-emulator.log" >&2 || true
    return 1
  }
  # The port opens as the server starts; wait until it answers HTTP (it serves REST and gRPC).
  local i
  for ((i = 0; i < 120; i++)); do
    pubsub_answers "$host" "$port" && break
    sleep 0.25
  done
  log "Pub/Sub emulator is up on $host:$port"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(all)
for t in "${targets[@]}"; do
  case "$t" in
    rabbitmq) start_rabbitmq ;;
    kafka) start_kafka ;;
    pubsub) start_pubsub ;;
    all) start_rabbitmq; start_kafka; start_pubsub ;;
    *) log "unknown broker: $t (known: rabbitmq, kafka, pubsub, all)"; exit 2 ;;
  esac
done
