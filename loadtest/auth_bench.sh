#!/usr/bin/env bash
# Connects/s with HS256, RS256 and EdDSA tokens against anonymous, one run
# after another on the same machine: the server pinned to CPU 0 with one
# reactor, the load generator to CPU 1. Each connection is an upgrade with
# its token checked, a join and a close. Loopback only; bounded.
#
#   loadtest/auth_bench.sh [CONNECTIONS]     (default 20000)
#
# Needs target/release/{roomcast,roomcast-loadtest} and .venv with PyJWT
# (scripts/test.sh sets both up). Prints one line per case.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-20000}"
BIN=target/release/roomcast
LG=target/release/roomcast-loadtest
PY=.venv/bin/python
WORK="$(mktemp -d)"
trap 'kill "${SRV:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
SECRET="auth-bench-secret-0123456789abcdef0123"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/rsa.pem" 2>/dev/null
openssl pkey -in "$WORK/rsa.pem" -pubout -out "$WORK/rsa.pub"
openssl genpkey -algorithm ED25519 -out "$WORK/ed.pem"
openssl pkey -in "$WORK/ed.pem" -pubout -out "$WORK/ed.pub"
mint() { # ALG KEYFILE
    "$PY" - "$1" "$2" <<'PY'
import sys, time, jwt
alg, key = sys.argv[1], sys.argv[2]
k = open(key).read() if alg != "HS256" else key
print(jwt.encode({"sub": "bench", "exp": int(time.time()) + 3600}, k, algorithm=alg))
PY
}
PORT=18741
run() { # LABEL TOKEN-ARGS SERVER-ARGS...
    local label="$1" targs="$2"
    shift 2
    rm -rf "$WORK/data"
    ROOMCAST_JWT_SECRET="$SECRET" taskset -c 0 "$BIN" serve --listen "127.0.0.1:$PORT" --data "$WORK/data" \
        --threads 1 --durability none --max-conns-per-ip 0 --connect-rate-per-ip 0 --request-rate 0 "$@" \
        >"$WORK/server.log" 2>&1 &
    SRV=$!
    for _ in $(seq 50); do grep -q listening "$WORK/server.log" && break; sleep 0.1; done
    # shellcheck disable=SC2086
    taskset -c 1 "$LG" connect --url "ws://127.0.0.1:$PORT/v1/ws" $targs --connections "$N" --concurrency 64 \
        --server-pid "$SRV" --label "$label" --json "$WORK/$label.json" >/dev/null
    kill "$SRV"; wait "$SRV" 2>/dev/null || true
    "$PY" - "$WORK/$label.json" "$label" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cpu = r["resources"]["server_cpu_us_per_unit"]
print(f"{sys.argv[2]:10s} {r['units_per_s']:9.0f} connects/s  server CPU {cpu:6.1f} us/connect  "
      f"upgrade p50 {r['latency']['p50_us']:7.0f} us  p99 {r['latency']['p99_us']:7.0f} us")
PY
}
run anonymous "--anonymous" --anonymous
run hs256 "--token $(mint HS256 "$SECRET")"
run rs256 "--token $(mint RS256 "$WORK/rsa.pem")" --jwt-public-key "$WORK/rsa.pub"
run eddsa "--token $(mint EdDSA "$WORK/ed.pem")" --jwt-public-key "$WORK/ed.pub"
