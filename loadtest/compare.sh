#!/usr/bin/env bash
# Side-by-side comparison of roomcast with its baselines (loadtest/baselines):
# builds every server and the load generator in release, runs the same
# scenarios against each server pinned to core 0 with the load generator
# pinned to core 1, and writes BENCHMARKS.md with the charts and JSON results
# in docs/bench/. The work is done by compare.py (standard library only).
#
#   loadtest/compare.sh            # full run (10 s windows), writes BENCHMARKS.md
#   loadtest/compare.sh --quick    # 3 s windows, writes target/compare-quick/
#   loadtest/compare.sh --profile  # also perf-records the server in the fan-out
#                                  # loads' measured windows: kernel/user CPU per
#                                  # delivery and top symbols in docs/bench/profile/
#   loadtest/compare.sh --help     # every option
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
exec python3 "$root/loadtest/compare.py" "$@"
