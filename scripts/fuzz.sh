#!/usr/bin/env bash
# Short fuzz runs of every parser of outside bytes (cargo-fuzz, libFuzzer):
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
# Installs cargo-fuzz when missing. Runs without a sanitizer (`-s none`), so
# it works on the stable toolchain; crashes land in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in http_parse ws_decode proto_decode; do
    echo "==> fuzz $target for ${secs}s"
    (cd fuzz && cargo fuzz run -s none "$target" -- -max_total_time="$secs")
done
