#!/usr/bin/env bash
# The whole test suite: starts the brokers it needs (natively, if they are not running),
# then runs every unit, doc and integration test against the real brokers.
#   scripts/test.sh            # everything
#   scripts/test.sh rabbitmq   # extra arguments go to `cargo test` (here: a name filter)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/start-brokers.sh all
# The Python peers of the interop tests (pinned, from PyPI; created once, outside the checkout).
scripts/interop-venv.sh >/dev/null

cargo test --workspace --all-features --no-fail-fast -- "$@"
