#!/usr/bin/env bash
# Smoke test: builds release, starts a roomcast server, runs every scenario
# for about two seconds with small counts, renders a chart, and exits
# non-zero if any scenario fails. Figures are printed, not asserted.
#
#   loadtest/smoke.sh                 # uses target/release/roomcast
#   ROOMCAST_BIN=/path/to/roomcast loadtest/smoke.sh
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release -p roomcast-loadtest --bin roomcast-loadtest
if [ -z "${ROOMCAST_BIN:-}" ]; then
  cargo build --release -p roomcast --bin roomcast
  ROOMCAST_BIN="$root/target/release/roomcast"
fi
LT="$root/target/release/roomcast-loadtest"
PORT="${PORT:-$((20000 + RANDOM % 20000))}"
URL="ws://127.0.0.1:$PORT/v1/ws"
work="$(mktemp -d)"
export ROOMCAST_JWT_SECRET="smoke-secret-of-32-bytes-or-more"

# One load generator from one address: the request and per-address limits are off.
# Idle rooms are forgotten after 1 s so that cold-rooms can make them cold.
"$ROOMCAST_BIN" serve --listen "127.0.0.1:$PORT" --data "$work/data" --threads 1 --anonymous --send-rate 0 \
  --room-idle-timeout 1s --request-rate 0 --max-conns-per-ip 0 --connect-rate-per-ip 0 --post-rate-per-ip 0 \
  >"$work/server.log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  grep -q "listening" "$work/server.log" 2>/dev/null && break
  sleep 0.1
done

common=(--url "$URL" --server-pid "$server" --duration 2s --warmup 500ms)
failed=0
run() {
  local name="$1"; shift
  echo "--- $name"
  if ! timeout 120 "$LT" "$@" --json "$work/$name.json" --label "$name"; then
    echo "FAILED: $name"
    failed=1
  fi
}
run fanout fanout "${common[@]}" --rooms 2 --members 50 --publishers 1 --rate 200 --body-bytes 100
run fanout-flat fanout "${common[@]}" --rooms 1 --members 20 --publishers 2 --rate 0 --window 8
run echo echo "${common[@]}" --connections 20 --inflight 2
run durable durable "${common[@]}" --publishers 2
run connect connect --url "$URL" --server-pid "$server" --duration 2s --connections 300 --concurrency 8
run cold-rooms cold-rooms --url "$URL" --server-pid "$server" --rooms 10 --messages 50 --calm 500ms --after 200ms
run idle idle --url "$URL" --server-pid "$server" --connections 200 --join
run idle-anon idle --url "$URL" --server-pid "$server" --connections 200 --anonymous
if [ "$failed" = 0 ]; then
  "$LT" report "$work"/*.json --out "$work/chart.svg"
fi
exit "$failed"
