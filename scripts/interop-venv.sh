#!/usr/bin/env bash
# Creates, once, the Python virtualenv the interop tests run other languages' OpenTelemetry
# instrumentations in (pinned versions from PyPI), and prints its python's path.
#   MQTRACE_VENV   where the venv lives (default /var/tmp/mqtrace-venv, outside the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MQTRACE_VENV:-/var/tmp/mqtrace-venv}"
reqs=(integration-tests/interop/requirements-*.txt)
want=$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.mqtrace-requirements" 2>/dev/null)" != "$want" ]; then
  echo "[interop-venv] creating $venv" >&2
  python3 -m venv "$venv"
  for r in "${reqs[@]}"; do
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$r" >&2
  done
  echo "$want" > "$venv/.mqtrace-requirements"
fi
echo "$venv/bin/python"
