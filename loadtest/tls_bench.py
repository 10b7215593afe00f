#!/usr/bin/env python3
"""TLS figures, side by side with plain TCP in one run, one reactor.

Server (`--threads 1`) on core 0, load generator on core 1 (taskset), a
self-signed certificate from `roomcast dev-cert` (ECDSA P-256):

  1. handshakes: `connect` (TCP connect, handshake, upgrade, join, close) in
     plain, in TLS resuming the client's sessions (tickets), and in TLS with
     every connection a full handshake (`--full-handshakes`); the server's
     `roomcast_tls_handshakes_total` says how many of each it did;
  2. fan-out over TLS against plain: the capacity load (1 room × 100
     members, 2 publishers flat out) and 10 rooms × 100 members at 500 msg/s
     (server CPU per delivery);
  3. memory per idle connection, TLS against plain (fresh server each).

Writes docs/bench/results/tls.txt (or --out) and prints it. Standard library
only; builds nothing (run `cargo build --release --workspace` first).

  python3 loadtest/tls_bench.py [--duration 10s] [--idle 10000] [--out FILE]
"""

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RC = os.path.join(ROOT, "target/release/roomcast")
LT = os.path.join(ROOT, "target/release/roomcast-loadtest")
SECRET = "tls-bench-secret-of-32-bytes-or-more"
SERVER_CORE, LOADGEN_CORE = "0", "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Server:
    def __init__(self, work, cert, key, logf):
        self.port, self.tls_port = free_port(), free_port()
        data = tempfile.mkdtemp(prefix="data-", dir=work)
        cmd = ["taskset", "-c", SERVER_CORE, RC, "serve", "--listen", "127.0.0.1:%d" % self.port,
               "--tls-listen", "127.0.0.1:%d" % self.tls_port, "--tls-cert", cert, "--tls-key", key,
               "--data", data, "--threads", "1", "--send-rate", "0", "--max-queue-bytes", "64MiB",
               "--request-rate", "0", "--max-conns-per-ip", "0", "--connect-rate-per-ip", "0",
               "--post-rate-per-ip", "0", "--durability", "none", "--drain-timeout", "1s"]
        logf.write("$ %s\n" % shlex.join(cmd))
        logf.flush()
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=dict(os.environ, ROOMCAST_JWT_SECRET=SECRET))
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.port, timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def handshakes(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port, timeout=5) as r:
            text = r.read().decode()
        got = {"full": 0, "resumed": 0}
        for kind in got:
            for m in re.finditer(r'^roomcast_tls_handshakes_total\{[^}]*kind="%s"\} (\d+)' % kind, text, re.M):
                got[kind] += int(m.group(1))
        return got

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def loadgen(work, logf, scenario, url, pid, argv):
    out = os.path.join(work, "r.json")
    cmd = ["taskset", "-c", LOADGEN_CORE, LT, scenario, "--url", url, "--server-pid", str(pid),
           "--json", out] + argv
    logf.write("$ %s\n" % shlex.join(cmd))
    logf.flush()
    subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, timeout=400, check=True,
                   env=dict(os.environ, ROOMCAST_JWT_SECRET=SECRET))
    with open(out) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--idle", type=int, default=10000, help="connections held for the memory figure")
    ap.add_argument("--concurrency", type=int, default=4,
                    help="connections in progress at once in the connect rows; low, because the client keeps at "
                         "most 8 TLS 1.3 tickets per server, and more in flight at once would make full "
                         "handshakes of most of the \"resumed\" row")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/bench/results/tls.txt"))
    args = ap.parse_args()
    for tool in (RC, LT):
        if not os.path.exists(tool):
            sys.exit("%s is missing: cargo build --release --workspace" % tool)
    work = tempfile.mkdtemp(prefix="tls-bench-")
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run([RC, "dev-cert", "--out-cert", cert, "--out-key", key, "--name", "127.0.0.1"], check=True,
                   capture_output=True)
    logf = open(os.path.join(work, "run.log"), "w")
    log("log: %s" % logf.name)
    timed = ["--duration", args.duration, "--warmup", "2s"]
    rows = []
    start_load = os.getloadavg()[0]

    def fresh():
        return Server(work, cert, key, logf)

    # 1. handshakes
    for label, tls, extra in [("plain", False, []), ("TLS, resumed", True, []),
                              ("TLS, full handshake", True, ["--full-handshakes"])]:
        srv = fresh()
        try:
            before = srv.handshakes()
            scheme = "wss://127.0.0.1:%d" % srv.tls_port if tls else "ws://127.0.0.1:%d" % srv.port
            r = loadgen(work, logf, "connect", scheme + "/v1/ws", srv.proc.pid,
                        ["--connections", "1000000", "--concurrency", str(args.concurrency), "--sources", "8",
                         "--duration", args.duration] + extra)
            after = srv.handshakes()
        finally:
            srv.stop()
        cpu = r["resources"]["server_cpu_us_per_unit"]
        kinds = {k: after[k] - before[k] for k in after}
        rows.append(("connect", label, "%.0f conn/s" % r["units_per_s"], "%.1f µs" % cpu,
                     "%.0f/s" % (1e6 / cpu if cpu else 0),
                     "full %d, resumed %d" % (kinds["full"], kinds["resumed"]) if tls else "-"))
        log("connect %s: %.0f/s, %.1f µs server CPU each, %s" % (label, r["units_per_s"], cpu, kinds))

    # 2. fan-out
    fan = {}
    for load, argv in [("capacity 1×100", ["--rooms", "1", "--members", "100", "--publishers", "2", "--rate", "0",
                                           "--window", "16", "--body-bytes", "100"]),
                       ("10×100 @ 500/s", ["--rooms", "10", "--members", "100", "--publishers", "1", "--rate", "500",
                                           "--body-bytes", "100"])]:
        for label, tls in [("plain", False), ("TLS", True)]:
            srv = fresh()
            try:
                scheme = "wss://127.0.0.1:%d" % srv.tls_port if tls else "ws://127.0.0.1:%d" % srv.port
                r = loadgen(work, logf, "fanout", scheme + "/v1/ws", srv.proc.pid, argv + timed)
            finally:
                srv.stop()
            fan[(load, label)] = r
            lat = r.get("latency") or {}
            rows.append(("fanout " + load, label, "%.0f deliveries/s" % r["units_per_s"],
                         "%.2f µs" % r["resources"]["server_cpu_us_per_unit"],
                         "p99 %.2f ms" % (lat.get("p99_us", 0) / 1000), "-"))
            log("fanout %s %s: %.0f/s" % (load, label, r["units_per_s"]))

    # 3. idle memory
    idle = {}
    for label, tls in [("plain", False), ("TLS", True)]:
        srv = fresh()
        try:
            scheme = "wss://127.0.0.1:%d" % srv.tls_port if tls else "ws://127.0.0.1:%d" % srv.port
            r = loadgen(work, logf, "idle", scheme + "/v1/ws", srv.proc.pid,
                        ["--connections", str(args.idle), "--sources", "2", "--settle", "2s"])
        finally:
            srv.stop()
        idle[label] = r.get("rss_per_connection_bytes") or 0
        rows.append(("idle %d" % args.idle, label, "%.1f KiB per connection" % (idle[label] / 1024), "-", "-", "-"))
        log("idle %s: %.0f B per connection" % (label, idle[label]))

    end_load = os.getloadavg()[0]
    cap_plain = fan[("capacity 1×100", "plain")]["units_per_s"]
    cap_tls = fan[("capacity 1×100", "TLS")]["units_per_s"]
    lines = ["TLS against plain, one reactor (server on core %s, load generator on core %s)" % (SERVER_CORE,
                                                                                               LOADGEN_CORE),
             "run: %s, load average %.2f at start, %.2f at the end" % (time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                       time.gmtime()),
                                                                         start_load, end_load),
             "command: python3 loadtest/tls_bench.py --duration %s --idle %d --concurrency %d" % (
                 args.duration, args.idle, args.concurrency),
             "",
             "%-24s %-20s %-24s %-12s %-14s %s" % ("load", "transport", "rate", "server CPU", "one core", "handshakes"),
             ]
    for r in rows:
        lines.append("%-24s %-20s %-24s %-12s %-14s %s" % r)
    lines += ["",
              "TLS fan-out capacity: %.0f%% of plain (%.0f against %.0f deliveries/s)" % (
                  100 * cap_tls / cap_plain if cap_plain else 0, cap_tls, cap_plain),
              "TLS idle connection: %.1f KiB more than plain (%.1f KiB in all)" % (
                  (idle["TLS"] - idle["plain"]) / 1024, idle["TLS"] / 1024),
              "\"server CPU\" is per unit (connection, delivery); \"one core\" is 10^6 / that: what one reactor",
              "would do with its core to itself. In the connect rows a unit is TCP connect, TLS handshake,",
              "WebSocket upgrade, join and close; the last column is what /metrics counted during the run."]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
