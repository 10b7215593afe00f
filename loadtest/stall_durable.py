#!/usr/bin/env python3
"""The room core's two figures, for one or two roomcast binaries side by side
in one run: a reactor's worst stall while cold rooms load (`cold-rooms`) and
the durable path (`durable` with 100 and 1000 publishers waiting for acks).

For every load and every binary in turn: a fresh server on a fresh data
directory, pinned to core 0 (`taskset -c 0`, `--threads 1 --durability
immediate`, the per-address and request limits off, and for `cold-rooms` a
1 s `--room-idle-timeout` so rooms go cold), waits for `/healthz`, runs
`roomcast-loadtest` pinned to core 1 with `--server-pid`, stops the server.
Then prints one table per figure. The loads alternate between the binaries
(A, B, A, B, ...) so a change in the machine's load hits both alike;
`--rounds N` repeats the whole set.

  loadtest/stall_durable.sh --server before=/path/to/roomcast --server after=target/release/roomcast
  loadtest/stall_durable.sh --server A=./roomcast --loadtest target/release/roomcast-loadtest --rounds 3

Standard library only. Logs, commands and JSON results go to --out
(default: a new directory under /tmp), which is printed at the end.
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import f_lat, f_num, free_port, kill_group, loadavg, run_loadgen  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "stall-durable-secret-0123456789abc"
SERVER_CORE = "0"
LOADGEN_CORE = "1"

# One load generator from one address: the per-address and per-connection
# request limits are off, as in compare.py.
BASE_FLAGS = ["--threads", "1", "--durability", "immediate", "--send-rate", "0", "--max-queue-bytes", "64MiB",
              "--request-rate", "0", "--max-conns-per-ip", "0", "--connect-rate-per-ip", "0",
              "--post-rate-per-ip", "0", "--drain-timeout", "1s"]


def log(msg):
    print("[stall-durable %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def loads(args):
    out = [dict(key="cold-rooms", scenario="cold-rooms",
                server_flags=["--room-idle-timeout", "1s"],
                argv=["--rooms", str(args.rooms), "--messages", str(args.messages), "--body-bytes", "100"]
                + shlex.split(args.cold_args))]
    for p in args.publishers:
        out.append(dict(key="durable-%d" % p, scenario="durable", server_flags=[],
                        argv=["--rooms", "1", "--publishers", str(p), "--window", "1", "--body-bytes", "100",
                              "--duration", args.duration, "--warmup", args.warmup]))
    return out


class Runner:
    """Owns the child processes so that none outlives the run."""

    def __init__(self, out):
        self.out = out
        self.server = None
        self.loadgen = None
        self.data = None
        self.commands = open(os.path.join(out, "commands.txt"), "a")

    def cleanup(self):
        kill_group(self.loadgen, grace=2.0)
        self.loadgen = None
        self.stop_server()
        self.commands.close()

    def note(self, cmd):
        self.commands.write(shlex.join(cmd) + "\n")
        self.commands.flush()

    def start_server(self, binary, flags, logpath):
        port = free_port()
        # A fresh data directory per run, removed when the server stops.
        data = self.data = tempfile.mkdtemp(prefix="data-", dir=self.out)
        cmd = ["taskset", "-c", SERVER_CORE, binary, "serve", "--listen", "127.0.0.1:%d" % port,
               "--data", data] + BASE_FLAGS + flags
        self.note(cmd)
        env = dict(os.environ, ROOMCAST_JWT_SECRET=SECRET)
        with open(logpath, "ab") as f:
            f.write(("$ %s\n" % shlex.join(cmd)).encode())
            f.flush()
            self.server = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True, cwd=self.out)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError("exited with %s at start" % self.server.returncode)
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=1) as r:
                    if r.status == 200:
                        return port, self.server.pid
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("no /healthz answer within 30 s")

    def stop_server(self):
        kill_group(self.server)
        self.server = None
        if self.data:
            shutil.rmtree(self.data, ignore_errors=True)
            self.data = None

    def run_loadgen(self, lt, argv, logpath, timeout):
        self.note(["taskset", "-c", LOADGEN_CORE, lt] + argv)
        return run_loadgen(self, lt, argv, logpath, timeout, secret=SECRET)


def g(d, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def violations(res):
    v = res.get("violations") or {}
    return sum(int(v.get(k) or 0) for k in ("gaps", "dups", "errors"))


def table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", action="append", required=True, metavar="NAME=PATH",
                    help="a roomcast binary to measure (once or twice; NAME labels it in the tables)")
    ap.add_argument("--loadtest", default=os.path.join(ROOT, "target/release/roomcast-loadtest"),
                    help="the roomcast-loadtest binary (default: target/release/roomcast-loadtest)")
    ap.add_argument("--publishers", default="100,1000", help="durable publisher counts (default 100,1000)")
    ap.add_argument("--duration", default="10s", help="durable measured window (default 10s)")
    ap.add_argument("--warmup", default="2s", help="durable warm-up (default 2s)")
    ap.add_argument("--rooms", type=int, default=100, help="cold rooms loaded at once (default 100)")
    ap.add_argument("--messages", type=int, default=200, help="messages per cold room (default 200)")
    ap.add_argument("--cold-args", default="", help="more cold-rooms flags, e.g. \"--since 50 --calm 3s\"")
    ap.add_argument("--only", help="comma-separated subset of the loads: cold-rooms, durable-100, ...")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the whole set this many times (default 1)")
    ap.add_argument("--out", help="directory for logs, commands and JSON (default: new under /tmp)")
    args = ap.parse_args()

    servers = []
    for s in args.server:
        name, sep, path = s.partition("=")
        if not sep or not name or not path:
            ap.error("--server wants NAME=PATH, got %r" % s)
        if not os.access(path, os.X_OK):
            ap.error("%s is not an executable file" % path)
        servers.append((name, os.path.abspath(path)))
    if len(servers) > 2:
        ap.error("at most two --server")
    if len({n for n, _ in servers}) != len(servers):
        ap.error("server names must differ")
    if not os.access(args.loadtest, os.X_OK):
        ap.error("%s is not an executable file (cargo build --release -p roomcast-loadtest)" % args.loadtest)
    try:
        args.publishers = [int(p) for p in args.publishers.split(",") if p]
    except ValueError:
        ap.error("--publishers wants numbers, e.g. 100,1000")
    only = set(args.only.split(",")) if args.only else None
    out = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="stall-durable-")
    os.makedirs(out, exist_ok=True)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    # Servers and load generators are stopped whatever ends the run.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    runner = Runner(out)
    runs = []
    load_start = loadavg()
    log("loadavg at start: %s" % " ".join(load_start))
    try:
        for rnd in range(1, args.rounds + 1):
            for load in loads(args):
                if only and load["key"] not in only:
                    continue
                for name, binary in servers:
                    runs.append(one(runner, args, rnd, load, name, binary, out))
    finally:
        runner.cleanup()
    load_end = loadavg()
    log("loadavg at end: %s" % " ".join(load_end))
    print(report(runs, servers, args, load_start, load_end, out))
    return 0 if all(r["status"] == "ok" for r in runs) else 1


def one(runner, args, rnd, load, name, binary, out):
    tag = "%s-%s-r%d" % (name, load["key"], rnd)
    jpath = os.path.join(out, tag + ".json")
    lpath = os.path.join(out, tag + ".log")
    entry = dict(server=name, load=load["key"], round=rnd, status="failed", result=None, loadavg=loadavg()[0])
    log("%s / %s, round %d (loadavg %s)" % (load["key"], name, rnd, entry["loadavg"]))
    try:
        port, pid = runner.start_server(binary, load["server_flags"], lpath)
    except Exception as e:  # noqa: BLE001 - recorded, the run goes on
        entry["status"] = "server did not start: %s" % e
        runner.stop_server()
        log("  -> " + entry["status"])
        return entry
    argv = [load["scenario"], "--url", "ws://127.0.0.1:%d/v1/ws" % port, "--server-pid", str(pid),
            "--json", jpath, "--label", "%s %s" % (name, load["key"])] + load["argv"]
    rc = runner.run_loadgen(args.loadtest, argv, lpath, 240)
    runner.stop_server()
    if rc in (0, 1) and os.path.exists(jpath):
        with open(jpath) as f:
            entry["result"] = json.load(f)
        entry["status"] = "ok" if rc == 0 else "violations"
    else:
        entry["status"] = "failed (exit %s, see %s)" % (rc, lpath)
    log("  -> " + entry["status"])
    time.sleep(1)
    return entry


def report(runs, servers, args, load_start, load_end, out):
    L = []
    L.append("loadavg at start %s, at end %s; %d round(s); server on core %s, load generator on core %s"
             % (" ".join(load_start), " ".join(load_end), args.rounds, SERVER_CORE, LOADGEN_CORE))
    for name, binary in servers:
        L.append("  %s = %s" % (name, binary))
    L.append("  loadtest = %s" % os.path.abspath(args.loadtest))
    dur = [r for r in runs if r["load"].startswith("durable")]
    if dur:
        rows = []
        for r in dur:
            res = r["result"] or {}
            ack = res.get("ack_latency") or {}
            rows.append([r["server"], r["load"].split("-")[1], r["round"],
                         f_num(res.get("units_per_s")) if res else "–",
                         f_lat(ack.get("p50_us")), f_lat(ack.get("p99_us")), f_lat(ack.get("max_us")),
                         f_num(g(res, "resources", "server_cpu_us_per_unit")),
                         violations(res) if res else "–", r["loadavg"], r["status"]])
        L.append("")
        L.append("Durable publishes (--durability immediate, --threads 1, window 1, 100 B bodies, %s after %s):"
                 % (args.duration, args.warmup))
        L.append(table(["server", "publishers", "round", "acked/s", "p50 ack", "p99 ack", "max ack",
                        "server µs/publish", "violations", "load", "status"], rows))
    cold = [r for r in runs if r["load"] == "cold-rooms"]
    if cold:
        rows = []
        for r in cold:
            res = r["result"] or {}
            c = res.get("counts") or {}
            rows.append([r["server"], r["round"],
                         f_lat(c.get("storm_probe_max_us")), f_lat(c.get("storm_probe_p99_us")),
                         f_lat(c.get("storm_probe_p50_us")), c.get("storm_probe_count", "–"),
                         f_lat(c.get("calm_probe_max_us")), f_lat(c.get("calm_probe_p99_us")),
                         f_lat(c.get("calm_probe_p50_us")),
                         f_num(c.get("all_joined_ms"), 1), f_num(c.get("all_answered_ms"), 1),
                         violations(res) if res else "–", r["loadavg"], r["status"]])
        L.append("")
        L.append("Stall while %d cold rooms load at once (%d messages each; join with since, send, history); "
                 "probe ping round trips:" % (args.rooms, args.messages))
        L.append(table(["server", "round", "storm max", "storm p99", "storm p50", "n", "calm max", "calm p99",
                        "calm p50", "all joined ms", "all answered ms", "errors", "load", "status"], rows))
    L.append("")
    L.append("logs, commands (commands.txt) and JSON: %s" % out)
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
