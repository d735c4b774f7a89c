# Shared by scripts/start-brokers.sh and scripts/stop-brokers.sh (sourced, not run).
# The one place that reads the broker address variables and where pid files live.

log() { printf '[%s] %s\n' "${LOG_NAME:-brokers}" "$*" >&2; }
die() { log "$*"; exit 1; }

# Tools and state live outside the checkout, reused across runs.
TOOLS="${MQTRACE_TOOLS:-/var/tmp/mqtrace-tools}"
RUN_DIR="$TOOLS/run"

# parse_address SPEC DEFAULT_PORT: sets HOST and PORT from the first address of SPEC.
# SPEC may have a scheme (amqp://, http://, tcp://), user info (guest:guest@), a path (/%2f),
# several comma-separated servers (the first one counts) and an IPv6 host in brackets
# ([::1]:9092); HOST is printed without the brackets.
parse_address() {
  local spec="$1" default_port="$2"
  spec="${spec%%,*}"
  spec="${spec#*://}"
  spec="${spec##*@}"
  spec="${spec%%/*}"
  spec="${spec%%\?*}"
  if [[ "$spec" == \[* ]]; then
    HOST="${spec#\[}"; HOST="${HOST%%\]*}"
    local rest="${spec#*\]}"
    PORT="${rest#:}"
  elif [[ "$spec" == *:*:* ]]; then
    # A bare IPv6 address without brackets has no port part.
    HOST="$spec"; PORT=""
  elif [[ "$spec" == *:* ]]; then
    HOST="${spec%:*}"; PORT="${spec##*:}"
  else
    HOST="$spec"; PORT=""
  fi
  [ -n "$HOST" ] || HOST=127.0.0.1
  [ -n "$PORT" ] || PORT="$default_port"
  [[ "$PORT" =~ ^[0-9]+$ ]] || die "bad port in address '$1'"
}

# The addresses of the three brokers, from the usual variables (loopback defaults).
rabbitmq_address() { parse_address "${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}" 5672; }
kafka_address() { parse_address "${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}" 9092; }
pubsub_address() { parse_address "${PUBSUB_EMULATOR_HOST:-127.0.0.1:8085}" 8085; }

# HOST in a URL (IPv6 in brackets).
url_host() { if [[ "$1" == *:* ]]; then printf '[%s]' "$1"; else printf '%s' "$1"; fi; }

is_local() { case "$1" in 127.0.0.1 | localhost | ::1) return 0 ;; *) return 1 ;; esac; }

port_open() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# pid_file BROKER PORT: where start-brokers.sh records a broker it started.
pid_file() { printf '%s/%s-%s.pid' "$RUN_DIR" "$1" "$2"; }
