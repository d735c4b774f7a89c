#!/usr/bin/env bash
# Runs each fuzz target of fuzz/ for a bounded time (libFuzzer through cargo-fuzz, on the
# stable toolchain with RUSTC_BOOTSTRAP=1). The committed seeds (fuzz/seeds/<target>) and
# regression inputs (fuzz/regressions/<target>, one per defect found) are run first; new
# corpus entries go to a scratch directory outside the checkout.
#   scripts/fuzz.sh                 # every target, 30 s each
#   scripts/fuzz.sh 60              # every target, 60 s each
#   scripts/fuzz.sh 300 baggage     # one target (or several), 300 s each
# Environment: MQTRACE_TOOLS (cargo-fuzz is installed there when missing, default
# /var/tmp/mqtrace-tools), MQTRACE_FUZZ_DIR (scratch corpus, default /var/tmp/mqtrace-fuzz),
# CARGO_TARGET_DIR (build directory, default /var/tmp/mqtrace-fuzz-target).
# Exits non-zero when a target crashes; the crashing input is in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-30}"
shift || true
tools="${MQTRACE_TOOLS:-/var/tmp/mqtrace-tools}"
scratch="${MQTRACE_FUZZ_DIR:-/var/tmp/mqtrace-fuzz}"
target_dir="${CARGO_TARGET_DIR:-/var/tmp/mqtrace-fuzz-target}"
export PATH="$tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz into $tools" >&2
  cargo install cargo-fuzz --locked --root "$tools"
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi

status=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "fuzz/seeds/$t" "fuzz/regressions/$t"
  echo "== fuzz $t for ${seconds}s" >&2
  if ! (cd fuzz && cargo fuzz run --target-dir "$target_dir" "$t" \
      "$scratch/$t" "seeds/$t" "regressions/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1); then
    echo "== fuzz $t: FAILED (see fuzz/artifacts/$t/)" >&2
    status=1
  fi
done
exit "$status"
