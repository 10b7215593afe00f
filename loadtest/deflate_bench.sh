#!/usr/bin/env bash
# permessage-deflate on and off, side by side, for 1 KiB chat-like JSON bodies:
# server CPU per delivery and bytes on the wire. The server is pinned to CPU 0,
# the load generator to CPU 1; one run each, the same build and arguments.
#   loadtest/deflate_bench.sh [DURATION] [RATE]      (default 10s, 200 messages/s)
# At 1000/s the load generator's own inflating (one core) is what saturates, and
# a backed-up receiver lets the server batch its writes: a rate it keeps up with
# compares the server's work fairly.
# Writes target/deflate-bench/{on,off}.json and prints the figures.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DUR="${1:-10s}"
RATE="${2:-200}"
OUT=target/deflate-bench
mkdir -p "$OUT"
export ROOMCAST_JWT_SECRET="deflate-bench-secret-0123456789abcdef"
run() { # $1: on|off, $2...: extra load generator flags
    local name=$1; shift
    local data port=18931 pid
    data=$(mktemp -d)
    taskset -c 0 target/release/roomcast serve --listen 127.0.0.1:$port --data "$data" --threads 1 \
        --send-rate 0 >"$OUT/$name-server.log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
    taskset -c 1 target/release/roomcast-loadtest fanout --url "ws://127.0.0.1:$port/v1/ws" \
        --server-pid "$pid" --rooms 1 --members 100 --rate "$RATE" --body-bytes 1024 --duration "$DUR" \
        --label "deflate-$name" --json "$OUT/$name.json" "$@" >"$OUT/$name.txt"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$data"
}
run off
run on --deflate
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'':28}{'off':>14}{'on':>14}")
rows = {}
for name in ("off", "on"):
    r = json.load(open(f"{out}/{name}.json"))
    r = r[0] if isinstance(r, list) else r
    res, c = r.get("resources", {}), r.get("counts", {})
    n = c.get("msgs_received_total") or 1
    rows[name] = {
        "deliveries": c.get("msgs_received_total"),
        "server CPU us/delivery": res.get("server_cpu_us_per_unit"),
        "bytes received": c.get("bytes_received_total"),
        "wire bytes/delivery": round(c.get("bytes_received_total", 0) / n, 1),
        "compressed frames": c.get("deflated_frames_total"),
        "undelivered": c.get("undelivered"),
        "p50 latency us": (r.get("latency") or {}).get("p50_us"),
        "p99 latency us": (r.get("latency") or {}).get("p99_us"),
        "loadgen CPU us/delivery": res.get("loadgen_cpu_us_per_unit"),
    }
for k in rows["off"]:
    a, b = rows["off"][k], rows["on"][k]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    print(f"{k:28}{fmt(a):>14}{fmt(b):>14}")
PY
