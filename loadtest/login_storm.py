#!/usr/bin/env python3
"""Login storm: logins/s through /v1/auth/login, and the WebSocket ping
latency of connected clients while the auth workers hash.

Loopback only; bounded in count and time. Against a running server:

    target/release/roomcast serve --listen 127.0.0.1:8080 --data /tmp/storm --auth-workers 2 &
    .venv/bin/python loadtest/login_storm.py --port 8080

It registers one user (or reuses it), then
1. times single logins one after another (each is about one argon2id hash),
2. runs `--rounds` storms of `--parallel` simultaneous logins and reports
   logins/s,
3. keeps `--clients` WebSocket clients pinging (one ping in flight each)
   for a quiet phase and during a storm, and prints p50/p99/max of both.

Successful logins do not count against the failed-login limits, so the
storms are not refused; registrations are limited per address (20 an
hour), so reuse one user name across runs on the same data directory.
"""

from __future__ import annotations

import argparse
import http.client
import inspect
import json
import statistics
import sys
import threading
import time

from websockets.sync.client import connect as ws_connect

# websockets 16+ warns about connections made outside a `with` unless asked for the old behaviour.
_WS_EXTRA = {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {}


def post(host, port, path, obj, timeout=30.0, source=None):
    """(status, headers dict, parsed JSON body or None)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout, source_address=(source, 0) if source else None)
    try:
        conn.request("POST", path, body=json.dumps(obj), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return r.status, {k.lower(): v for k, v in r.getheaders()}, doc
    finally:
        conn.close()


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Pinger(threading.Thread):
    """Connected clients pinging in turn; latencies in ms per phase."""

    def __init__(self, host, port, n, token, interval=0.02):
        super().__init__(daemon=True)
        self.conns = [
            ws_connect(f"ws://{host}:{port}/v1/ws", additional_headers={"Authorization": f"Bearer {token}"},
                       open_timeout=10, ping_interval=None, compression=None, proxy=None, **_WS_EXTRA)
            for _ in range(n)
        ]
        self.interval = interval
        self.phase = "quiet"
        self.samples: dict[str, list[float]] = {}
        self.lost = 0
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            for c in self.conns:
                t = time.perf_counter()
                waiter = c.ping()
                if waiter.wait(5):
                    self.samples.setdefault(self.phase, []).append((time.perf_counter() - t) * 1000)
                else:
                    self.lost += 1
            time.sleep(self.interval)

    def stop(self):
        self.stop_flag.set()
        self.join(10)
        for c in self.conns:
            try:
                c.close()
            except Exception:
                pass


def storm(host, port, user, password, parallel):
    """`parallel` logins released at once; (statuses, seconds)."""
    statuses = [None] * parallel
    gate = threading.Barrier(parallel + 1)

    def one(i):
        gate.wait()
        try:
            statuses[i] = post(host, port, "/v1/auth/login", {"username": user, "password": password}, timeout=60)[0]
        except OSError as e:
            statuses[i] = repr(e)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(parallel)]
    for t in threads:
        t.start()
    gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(120)
    return statuses, time.perf_counter() - t0


def ensure_user(host, port, user, password):
    status, _, doc = post(host, port, "/v1/auth/register", {"username": user, "password": password})
    if status not in (201, 409):
        sys.exit(f"register: {status} {doc}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", default="storm-user")
    ap.add_argument("--password", default="storm-password")
    ap.add_argument("--serial", type=int, default=10, help="single logins timed one after another")
    ap.add_argument("--parallel", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--quiet-s", type=float, default=3.0)
    a = ap.parse_args(argv)
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("loopback only")
    a.parallel = min(a.parallel, 500)
    a.rounds = min(a.rounds, 20)

    ensure_user(a.host, a.port, a.user, a.password)
    serial, token = [], None
    for _ in range(max(1, min(a.serial, 100))):
        t = time.perf_counter()
        status, _, doc = post(a.host, a.port, "/v1/auth/login", {"username": a.user, "password": a.password})
        serial.append((time.perf_counter() - t) * 1000)
        if status != 200:
            sys.exit(f"login: {status} {doc}")
        token = doc["access_token"]
    print(f"serial login: median {statistics.median(serial):.1f} ms, min {min(serial):.1f} ms ({len(serial)} logins)")

    pinger = Pinger(a.host, a.port, a.clients, token)
    pinger.start()
    time.sleep(a.quiet_s)
    pinger.phase = "storm"
    rates, codes = [], {}
    for _ in range(a.rounds):
        statuses, secs = storm(a.host, a.port, a.user, a.password, a.parallel)
        for s in statuses:
            codes[s] = codes.get(s, 0) + 1
        rates.append(sum(1 for s in statuses if s == 200) / secs)
    pinger.phase = "after"
    time.sleep(0.5)
    pinger.stop()
    print(f"storm: {a.rounds} x {a.parallel} parallel logins; statuses {codes}; "
          f"logins/s per round {', '.join(f'{r:.1f}' for r in rates)}")
    for phase in ("quiet", "storm"):
        xs = pinger.samples.get(phase, [])
        print(f"ws ping {phase:5} ({a.clients} clients, {len(xs)} pings): p50 {pct(xs, 50):.2f} ms, "
              f"p99 {pct(xs, 99):.2f} ms, max {max(xs, default=float('nan')):.2f} ms")
    print(f"pings unanswered within 5 s: {pinger.lost}")
    return {"serial_ms": serial, "rates": rates, "codes": codes, "pings": pinger.samples, "lost": pinger.lost}


if __name__ == "__main__":
    main()
