#!/usr/bin/env bash
# The run command: installs build dependencies when missing, builds the release
# binary and starts the gateway. Arguments go to `roomcast serve`, for example
#   ./scripts/run.sh --listen 127.0.0.1:8080 --data ./data --threads 4
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/deps.sh
source "$ROOT/scripts/deps.sh"

ensure_build_deps
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
exec "$TARGET_DIR/release/roomcast" serve "$@"
