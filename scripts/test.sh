#!/usr/bin/env bash
# The whole test suite: starts the brokers it needs (natively, if they are not running),
# then runs every unit, doc and integration test against the real brokers, then the demo
# (scripts/demo.sh --check: the example workers end to end, their traces verified) and the
# tracing-only example (which checks its own trace's nesting).
#   scripts/test.sh            # everything
#   scripts/test.sh rabbitmq   # extra arguments go to `cargo test` (here: a name filter)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/start-brokers.sh all
# The Python peers of the interop tests (pinned, from PyPI; created once, outside the checkout).
scripts/interop-venv.sh >/dev/null

cargo test --workspace --all-features --no-fail-fast -- "$@"

# The examples end to end: every stage as its own process, each order's trace checked.
# Only for the whole suite (a name filter means "just these tests").
if [ $# -eq 0 ]; then
  scripts/demo.sh --check
  cargo run -q -p mqtrace-examples --all-features --bin tracing-only
fi
