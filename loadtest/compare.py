#!/usr/bin/env python3
"""Side-by-side comparison of roomcast with the baselines in loadtest/baselines.

Builds the servers and the load generator in release, then for every load and
every server in turn: starts a fresh server pinned to core 0 (`taskset -c 0`),
waits for `/healthz`, runs `roomcast-loadtest` pinned to core 1 with
`--server-pid`, stops the server. Writes BENCHMARKS.md with the machine, the
exact commands, one table per load (roomcast / baseline ratios), the charts
drawn by `roomcast-loadtest report` and every JSON result.

A scenario that fails is recorded as "failed" and the run goes on; servers are
stopped whatever happens (SIGINT and SIGTERM included).

Standard library only: it runs on a bare Python 3.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import perfprofile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LT = os.path.join(ROOT, "target/release/roomcast-loadtest")
RC = os.path.join(ROOT, "target/release/roomcast")
AXUM_DIR = os.path.join(ROOT, "loadtest/baselines/axum")
AXUM = os.path.join(AXUM_DIR, "target/release/roomcast-baseline-axum")
VENV = os.path.join(ROOT, "target/venv-socketify")
SOCKETIFY = os.path.join(ROOT, "loadtest/baselines/socketify/server.py")
SECRET = "compare-secret-of-32-bytes-or-more"
SERVER_CORE = "0"
LOADGEN_CORE = "1"
SERVERS = ["roomcast", "axum", "socketify"]
# Loads that `--profile` records with perf.
PROFILE_LOADS = ["fanout-10x100", "fanout-1x1000", "fanout-batch"]

# Figures from ISSUE 3's independent load generator, for orientation only;
# the verdicts below compare against figures measured in this run.
REFERENCE = {
    "fanout-10x100": {"axum": 9.1, "socketify": 6.5},
    "fanout-1x1000": {"axum": 7.0, "socketify": 4.5},
    "echo-200": {"axum": 13.8, "socketify": 16.3},
    "idle-10k": {"axum": 141000, "socketify": 1600},
    "connect": {"axum": 6300, "socketify": 12400},
}


def rel(path):
    return os.path.relpath(path, ROOT)


def log(msg):
    print("[compare %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[:3]
    except OSError:
        return ["?", "?", "?"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def kill_group(proc, grace=5.0):
    """SIGTERM the process group, then SIGKILL after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_loadgen(runner, lt, argv, logpath, timeout, secret=SECRET):
    """Runs the load generator `lt` on its core, its output appended to
    `logpath`; `runner.loadgen` holds it meanwhile (so a signal handler can
    stop it). Returns its exit status, or "timeout"."""
    cmd = ["taskset", "-c", LOADGEN_CORE, lt] + argv
    env = dict(os.environ, ROOMCAST_JWT_SECRET=secret)
    with open(logpath, "ab") as out:
        out.write(("$ %s\n" % shlex.join(cmd)).encode())
        out.flush()
        runner.loadgen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)
        try:
            rc = runner.loadgen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(runner.loadgen, grace=2.0)
            rc = "timeout"
        runner.loadgen = None
    return rc


class Runner:
    """Owns every child process so that none outlives the run."""

    def __init__(self, work):
        self.work = work
        self.server = None
        self.loadgen = None
        self.recorder = None

    def cleanup(self):
        if self.recorder:
            self.recorder.finish()
            self.recorder = None
        kill_group(self.loadgen, grace=2.0)
        self.loadgen = None
        kill_group(self.server)
        self.server = None

    # -- servers ---------------------------------------------------------

    def server_cmd(self, name, port, data, durable):
        listen = "127.0.0.1:%d" % port
        pin = ["taskset", "-c", SERVER_CORE]
        if name == "roomcast":
            return pin + [RC, "serve", "--listen", listen, "--data", data,
                          "--threads", "1", "--send-rate", "0", "--max-queue-bytes", "64MiB",
                          # One load generator, one address: the per-address
                          # and per-connection request limits are off.
                          "--request-rate", "0", "--max-conns-per-ip", "0",
                          "--connect-rate-per-ip", "0", "--post-rate-per-ip", "0",
                          "--durability", "immediate" if durable else "none",
                          "--drain-timeout", "1s"]
        if name == "axum":
            cmd = pin + [AXUM, "--listen", listen, "--threads", "1"]
            if durable:
                cmd += ["--durable", "--data", data]
            return cmd
        if name == "socketify":
            return pin + [os.path.join(VENV, "bin/python"), SOCKETIFY, "--listen", listen]
        raise ValueError(name)

    def start_server(self, name, durable, logpath):
        port = free_port()
        data = tempfile.mkdtemp(prefix="data-%s-" % name, dir=self.work)
        cmd = self.server_cmd(name, port, data, durable)
        env = dict(os.environ, ROOMCAST_JWT_SECRET=SECRET)
        out = open(logpath, "ab")
        out.write(("$ %s\n" % shlex.join(cmd)).encode())
        out.flush()
        self.server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True, cwd=self.work)
        out.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError("%s exited with %s at start" % (name, self.server.returncode))
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=1) as r:
                    if r.status == 200:
                        return port, self.server.pid
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("%s did not answer /healthz within 30 s" % name)

    def stop_server(self):
        kill_group(self.server)
        self.server = None

    # -- load generator -------------------------------------------------

    def run_loadgen(self, argv, logpath, timeout):
        return run_loadgen(self, LT, argv, logpath, timeout)


# -- loads --------------------------------------------------------------------

def loads(quick):
    dur = "3s" if quick else "10s"
    warm = "1s" if quick else "2s"
    timed = ["--duration", dur, "--warmup", warm]
    fan = ["--body-bytes", "100"] + timed
    return [
        dict(key="fanout-10x100", scenario="fanout",
             title="Fan-out: 10 rooms × 100 members, 500 msg/s in all, 100 B bodies",
             args=["--rooms", "10", "--members", "100", "--publishers", "1", "--rate", "500"] + fan),
        dict(key="fanout-1x1000", scenario="fanout",
             title="Fan-out: 1 room × 1000 members, 100 msg/s, 100 B bodies",
             args=["--rooms", "1", "--members", "1000", "--publishers", "1", "--rate", "100"] + fan),
        dict(key="fanout-batch", scenario="fanout",
             title="Fan-out fast enough to batch: 1 room × 100 members, 3500 msg/s, 100 B bodies",
             args=["--rooms", "1", "--members", "100", "--publishers", "1", "--rate", "3500"] + fan),
        dict(key="fanout-capacity", scenario="fanout",
             title="Fan-out capacity: 1 room × 100 members, 2 publishers flat out (16 unacked each)",
             args=["--rooms", "1", "--members", "100", "--publishers", "2", "--rate", "0",
                   "--window", "16"] + fan),
        dict(key="fanout-halfmax", scenario="fanout",
             title="Fan-out latency at half of each server's measured capacity: 1 room × 100 members, 2 publishers",
             args=["--rooms", "1", "--members", "100", "--publishers", "2", "--rate", "{HALF}"] + fan,
             needs="fanout-capacity"),
        dict(key="echo-200", scenario="echo",
             title="Echo: 200 connections, 1 ping in flight each",
             args=["--connections", "200", "--inflight", "1"] + timed),
        dict(key="connect", scenario="connect",
             title="Connect: upgrade + join + close, 64 at a time, over 8 source addresses",
             args=["--connections", "1000000", "--concurrency", "64", "--sources", "8",
                   "--duration", dur]),
        dict(key="idle-10k", scenario="idle",
             title="Idle: 10,000 connections held (fresh server)",
             args=["--connections", "10000", "--sources", "2", "--settle", "2s"]),
        dict(key="idle-19k", scenario="idle",
             title="Idle: 19,000 connections held (fresh server)",
             args=["--connections", "19000", "--sources", "2", "--settle", "2s"],
             only=["roomcast"]),
    ]


DURABLE_PUBLISHERS = [1, 10, 100, 1000]


def durable_args(n, quick):
    dur = "3s" if quick else "10s"
    warm = "1s" if quick else "2s"
    return ["--rooms", "1", "--publishers", str(n), "--window", "1", "--body-bytes", "100",
            "--duration", dur, "--warmup", warm]


# -- build ----------------------------------------------------------------------

def sh(cmd, cwd=ROOT):
    log("$ " + shlex.join(cmd))
    subprocess.run(cmd, cwd=cwd, check=True)


def has_libuv():
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:
        return False
    return "libuv.so.1" in out


def build(skip_socketify):
    sh(["cargo", "build", "--release", "-p", "roomcast", "-p", "roomcast-loadtest"])
    sh(["cargo", "build", "--release"], cwd=AXUM_DIR)
    if skip_socketify:
        return
    if not has_libuv():
        if os.geteuid() == 0 and shutil.which("apt-get"):
            sh(["apt-get", "install", "-y", "libuv1"])
        else:
            raise RuntimeError("libuv1 is missing: apt-get install -y libuv1")
    py = os.path.join(VENV, "bin/python")
    if not os.path.exists(py):
        sh([sys.executable, "-m", "venv", VENV])
    sh([py, "-m", "pip", "install", "--quiet", "-r",
        os.path.join(ROOT, "loadtest/baselines/socketify/requirements.txt")])


# -- machine ----------------------------------------------------------------------

def machine():
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = "%.1f GiB" % (int(line.split()[1]) / 1048576)
    except OSError:
        pass
    return {
        "cpu": info.get("Model name", platform.processor() or "?"),
        "cpus": info.get("CPU(s)", str(os.cpu_count())),
        "hypervisor": info.get("Hypervisor vendor", ""),
        "kernel": platform.release(),
        "memory": mem,
        "python": platform.python_version(),
        "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
    }


# -- formatting ---------------------------------------------------------------------

def g(d, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def f_num(v, digits=2):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return "{:,.0f}".format(v)
    if abs(v) >= 100:
        return "%.0f" % v
    return ("%." + str(digits) + "f") % v


def f_lat(us):
    if us is None:
        return "–"
    if us >= 1000:
        return "%.2f ms" % (us / 1000)
    return "%.0f µs" % us


def f_bytes(b):
    if b is None:
        return "–"
    if abs(b) >= 1024 * 1024:
        return "%.1f MiB" % (b / 1048576)
    if abs(b) >= 1024:
        return "%.1f KiB" % (b / 1024)
    return "%.0f B" % b


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def f_ratio(r):
    if r is None:
        return "–"
    return "%.3f×" % r if r < 0.1 else "%.2f×" % r


PLURAL = {"delivery": "deliveries", "round_trip": "round trips", "connection": "connections",
          "publish": "publishes"}


def cpu_per_unit(res):
    return g(res, "resources", "server_cpu_us_per_unit")


def violations(res):
    v = res.get("violations") or {}
    return sum(int(v.get(k) or 0) for k in ("gaps", "missing", "dups", "errors"))


# -- the run ----------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description="Compare roomcast with its baselines and write BENCHMARKS.md")
    ap.add_argument("--quick", action="store_true", help="3 s windows (1 s warm-up); writes to target/compare-quick")
    ap.add_argument("--out", help="directory for BENCHMARKS.md and bench/ (default: the repository root and "
                                  "docs/bench/, or target/compare-quick with --quick)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of " + ",".join(SERVERS))
    ap.add_argument("--only", help="comma-separated load keys to run (durable: 'durable')")
    ap.add_argument("--profile", action="store_true",
                    help="record the server with perf in the measured window of %s; writes bench/profile/"
                         % ", ".join(PROFILE_LOADS))
    args = ap.parse_args()
    if args.profile and not shutil.which("perf"):
        sys.exit("compare: --profile needs perf, which is not installed")

    servers = [s for s in args.servers.split(",") if s]
    for s in servers:
        if s not in SERVERS:
            ap.error("unknown server %r" % s)
    only = set(args.only.split(",")) if args.only else None

    if args.out:
        md_path = os.path.join(os.path.abspath(args.out), "BENCHMARKS.md")
        bench = os.path.join(os.path.abspath(args.out), "bench")
    elif args.quick:
        md_path = os.path.join(ROOT, "target/compare-quick/BENCHMARKS.md")
        bench = os.path.join(ROOT, "target/compare-quick/bench")
    else:
        md_path = os.path.join(ROOT, "BENCHMARKS.md")
        bench = os.path.join(ROOT, "docs/bench")
    results_dir = os.path.join(bench, "results")
    logs_dir = os.path.join(ROOT, "target/compare-logs")
    profile_dir = os.path.join(bench, "profile")
    # Only this tool's own results go: the other figures kept beside them
    # (auth, cluster, stall runs: *.txt) come from other scripts.
    if os.path.isdir(results_dir):
        for old in os.listdir(results_dir):
            if old.endswith(".json"):
                os.remove(os.path.join(results_dir, old))
    if args.profile:
        shutil.rmtree(profile_dir, ignore_errors=True)
        os.makedirs(profile_dir)
    shutil.rmtree(logs_dir, ignore_errors=True)
    os.makedirs(results_dir, exist_ok=True)
    os.makedirs(logs_dir, exist_ok=True)
    for old in os.listdir(bench):
        if old.endswith(".svg"):
            os.remove(os.path.join(bench, old))

    # Each idle run holds up to 19,000 sockets in the server: lift the soft
    # limit on open files to the hard one for every child.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    work = tempfile.mkdtemp(prefix="roomcast-compare-")
    runner = Runner(work)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = loadavg()
    runs = []  # dicts: load, server, durable, status, result, argv, loadavg
    skipped = []
    try:
        if not args.no_build:
            build("socketify" not in servers)
        for tool in [RC, LT] + ([AXUM] if "axum" in servers else []):
            if not os.path.exists(tool):
                raise RuntimeError("%s is missing (build it or drop --no-build)" % tool)
        log("loadavg at start: %s" % " ".join(load_start))

        def one(load_key, server, scenario, argv, durable, label, title):
            name = "%s-%s" % (server, label.replace(" ", "-")) if durable else "%s-%s" % (server, load_key)
            jpath = os.path.join(results_dir, name + ".json")
            lpath = os.path.join(logs_dir, name + ".log")
            entry = dict(load=load_key, server=server, durable=durable, label=label, status="failed",
                         result=None, argv=[scenario] + argv, loadavg=loadavg()[0], title=title)
            runs.append(entry)
            log("%s / %s (loadavg %s)" % (load_key if not durable else label, server, entry["loadavg"]))
            try:
                port, pid = runner.start_server(server, durable, lpath)
            except Exception as e:  # noqa: BLE001 - any start failure is recorded, not fatal
                entry["status"] = "failed: server did not start (%s)" % e
                runner.stop_server()
                log(entry["status"])
                return entry
            full = [scenario, "--url", "ws://127.0.0.1:%d/v1/ws" % port, "--server-pid", str(pid),
                    "--json", jpath, "--label", label] + argv
            timeout = 300 if scenario == "idle" else 200
            perf_data = os.path.join(logs_dir, name + ".perf.data")
            if args.profile and load_key in PROFILE_LOADS:
                runner.recorder = perfprofile.Recorder(pid, lpath, perf_data, LOADGEN_CORE)
            rc = runner.run_loadgen(full, lpath, timeout)
            recorded = runner.recorder.finish() if runner.recorder else False
            runner.recorder = None
            runner.stop_server()
            if rc in (0, 1) and os.path.exists(jpath):
                with open(jpath) as f:
                    entry["result"] = json.load(f)
                entry["status"] = "ok" if rc == 0 else "violations (exit 1)"
                if not entry["result"].get("units"):
                    entry["status"] = "no unit of work completed in the window"
                    entry["result"] = None
            else:
                entry["status"] = "failed (exit %s)" % rc
            log("  -> %s%s" % (entry["status"], "" if not entry["result"] else
                                ", %s %s/s, server %s µs/%s" % (
                                    f_num(entry["result"].get("units_per_s")), entry["result"].get("unit"),
                                    f_num(cpu_per_unit(entry["result"])), entry["result"].get("unit"))))
            if args.profile and load_key in PROFILE_LOADS:
                entry["profile"] = perfprofile.summarise(perf_data) if recorded else None
                ppath = os.path.join(profile_dir, "%s-%s.txt" % (load_key, server))
                with open(ppath, "w") as f:
                    f.write(perfprofile.text("%s / %s: %s" % (load_key, server, title), entry["result"],
                                             entry["profile"], LOADGEN_CORE))
                entry["profile_path"] = ppath
                c = perfprofile.split(entry["result"], entry["profile"])
                log("  profile: kernel %s, user %s µs/%s by perf (/proc: stime %s, utime %s); %s" % (
                    f_num(c["kernel"]), f_num(c["user"]), (entry["result"] or {}).get("unit", "unit"),
                    f_num(c["stime"]), f_num(c["utime"]), rel(ppath)))
            time.sleep(1)
            return entry

        capacity = {}
        for load in loads(args.quick):
            if only and load["key"] not in only:
                continue
            for server in servers:
                if server not in load.get("only", SERVERS):
                    continue
                argv = list(load["args"])
                if "{HALF}" in argv:
                    cap = capacity.get(server)
                    if not cap:
                        skipped.append("%s: %s skipped, its capacity run gave no figure" % (load["key"], server))
                        continue
                    members = 100
                    half = max(1, int(cap / members / 2))
                    argv = [str(half) if a == "{HALF}" else a for a in argv]
                e = one(load["key"], server, load["scenario"], argv, False, server, load["title"])
                if load["key"] == "fanout-capacity" and e["result"]:
                    capacity[server] = e["result"].get("units_per_s")
        if not only or "durable" in only:
            for n in DURABLE_PUBLISHERS:
                for server in servers:
                    if server == "socketify":
                        continue
                    label = "%s %dp" % (server, n)
                    one("durable-%d" % n, server, "durable", durable_args(n, args.quick), True, label,
                        "Durable publishes, %d publishers waiting for acks" % n)
            if "socketify" in servers:
                skipped.append("durable: socketify skipped, it keeps messages in memory only (no durable mode)")
        skipped.append("socketify is single-threaded by design: every server runs one event-loop thread here")
    finally:
        runner.cleanup()
        shutil.rmtree(work, ignore_errors=True)

    load_end = loadavg()
    charts = draw_charts(runs, bench)
    write_markdown(md_path, bench, args, servers, runs, skipped, charts, started, load_start, load_end)
    log("wrote %s" % rel(md_path))


def draw_charts(runs, bench):
    charts = {}
    groups = {}
    for r in runs:
        if r["result"] is None or r["result"].get("scenario") == "idle":
            continue
        key = "durable" if r["durable"] else r["load"]
        groups.setdefault(key, []).append(r)
    for key, rs in groups.items():
        out = os.path.join(bench, key + ".svg")
        files = [os.path.join(bench, "results", os.path.basename(r["result"]["params"]["json"])) for r in rs]
        files = [f for f in files if os.path.exists(f)]
        if not files:
            continue
        try:
            subprocess.run([LT, "report"] + files + ["--out", out], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
            charts[key] = out
        except (subprocess.SubprocessError, OSError) as e:
            log("chart %s failed: %s" % (key, e))
    return charts


def write_markdown(md_path, bench, args, servers, runs, skipped, charts, started, load_start, load_end):
    m = machine()
    md_dir = os.path.dirname(md_path)
    L = []
    w = L.append
    by = {}
    for r in runs:
        by[(r["load"], r["server"])] = r

    def res(load, server):
        r = by.get((load, server))
        return r["result"] if r else None

    busy = float(load_start[0]) > 1.5 if load_start[0] != "?" else False
    cmdline = "loadtest/compare.sh" + (" --quick" if args.quick else "")
    w("# Benchmarks: roomcast beside axum and uWebSockets (socketify)")
    w("")
    w("Generated by `%s` on %s. Every figure in this file comes from that one run; "
      "rerun it to refresh them. JSON results are in `%s/results/`, logs of the run in "
      "`target/compare-logs/`." % (cmdline, started.strftime("%Y-%m-%d %H:%M UTC"), rel(bench)))
    w("")
    if args.quick:
        w("> **Quick run** (3 s windows, 1 s warm-up): figures are indicative only.")
        w("")
    if busy:
        w("> **Shared, busy machine.** This run was made on a 2-core virtual machine that was shared with "
          "other work at the time (load average %s at start, %s at the end; above 1.5 means the two cores "
          "were already oversubscribed). Other processes took turns on both the server's and the load "
          "generator's core, so throughput and latency figures are pessimistic and noisy; CPU time per "
          "unit of work is the fairer comparison, and even it suffers from cache and scheduler "
          "interference. The ratios between servers, measured minutes apart, are the part to trust."
          % (" ".join(load_start), " ".join(load_end)))
        w("")

    w("## Machine")
    w("")
    w("| | |")
    w("| --- | --- |")
    w("| CPU | %s (%s CPUs%s) |" % (m["cpu"], m["cpus"], ", %s guest" % m["hypervisor"] if m["hypervisor"] else ""))
    w("| memory | %s |" % m["memory"])
    w("| kernel | Linux %s |" % m["kernel"])
    w("| toolchain | %s; Python %s (socketify) |" % (m["rustc"], m["python"]))
    w("| date | %s |" % started.strftime("%Y-%m-%d %H:%M:%S UTC"))
    w("| load average (1, 5, 15 min) | %s at start, %s at the end |" % (" ".join(load_start), " ".join(load_end)))
    w("")

    w("## How it was run")
    w("")
    w("Each server runs on core 0 with one event-loop thread; the load generator runs on core 1, one "
      "thread. Every scenario gets a freshly started server (memory figures are not flattered by an "
      "allocator that reuses what an earlier run freed). Server CPU is utime+stime of the whole server "
      "process (all its threads, roomcast's store writer included) read from `/proc/PID/stat` at the "
      "edges of the measured window, divided by the units of work done in it. The load generator's own "
      "CPU per unit is shown beside it.")
    w("")
    w("```sh")
    w("cargo build --release -p roomcast -p roomcast-loadtest")
    w("(cd loadtest/baselines/axum && cargo build --release)")
    w("python3 -m venv target/venv-socketify && target/venv-socketify/bin/pip install -r "
      "loadtest/baselines/socketify/requirements.txt")
    w("export ROOMCAST_JWT_SECRET=%s" % SECRET)
    w("# servers (PORT and DIR fresh for every scenario)")
    w("taskset -c 0 target/release/roomcast serve --listen 127.0.0.1:PORT --data DIR --threads 1 "
      "--send-rate 0 --max-queue-bytes 64MiB --durability none --drain-timeout 1s "
      "--request-rate 0 --max-conns-per-ip 0 --connect-rate-per-ip 0 --post-rate-per-ip 0")
    w("taskset -c 0 loadtest/baselines/axum/target/release/roomcast-baseline-axum --listen 127.0.0.1:PORT --threads 1")
    w("taskset -c 0 target/venv-socketify/bin/python loadtest/baselines/socketify/server.py --listen 127.0.0.1:PORT")
    w("# durable runs")
    w("taskset -c 0 target/release/roomcast serve ... --durability immediate")
    w("taskset -c 0 loadtest/baselines/axum/target/release/roomcast-baseline-axum ... --durable --data DIR")
    w("# load generator, per scenario")
    w("taskset -c 1 target/release/roomcast-loadtest SCENARIO --url ws://127.0.0.1:PORT/v1/ws "
      "--server-pid PID --json FILE --label SERVER ARGS")
    w("```")
    w("")
    w("In the non-durable loads roomcast still writes every message to its redb store before delivering "
      "it (`--durability none` skips only the fsync); the axum and socketify baselines keep messages in "
      "memory. Tokens are HS256 JWTs minted per user by the load generator and checked by every server.")
    w("")
    w("Scenario arguments (`SCENARIO ARGS` above):")
    w("")
    w("| load | arguments |")
    w("| --- | --- |")
    seen = set()
    for r in runs:
        key = r["load"]
        if key in seen:
            continue
        seen.add(key)
        argv = r["argv"]
        if key == "fanout-halfmax":
            argv = ["CAPACITY/200" if (i > 0 and argv[i - 1] == "--rate") else a
                    for i, a in enumerate(argv)]
        w("| %s | `%s` |" % (key, shlex.join(argv)))
    w("")
    w("`CAPACITY/200`: each server's own deliveries/s from `fanout-capacity` ÷ 100 members ÷ 2, "
      "i.e. half its maximum message rate.")
    w("")

    # -- goals --
    w("## Against the goals")
    w("")
    w("Goals from the load generator and durable-rooms issues; \"measured\" means in this run. "
      "Ratios are roomcast ÷ baseline (below 1 is better for CPU, above 1 for rates).")
    w("")
    w("| goal | roomcast | baseline(s) this run | verdict |")
    w("| --- | --- | --- | --- |")

    def verdict(ok):
        return "–" if ok is None else ("met" if ok else "**not met**")

    def cpu(load, server):
        return cpu_per_unit(res(load, server)) if res(load, server) else None

    for load, title in (("fanout-10x100", "fan-out 10×100 @ 500 msg/s: CPU/delivery ≤ uWebSockets"),
                        ("fanout-1x1000", "fan-out 1×1000 @ 100 msg/s: CPU/delivery ≤ uWebSockets")):
        rc, ax, so = cpu(load, "roomcast"), cpu(load, "axum"), cpu(load, "socketify")
        w("| %s | %s µs | axum %s µs, socketify %s µs (issue reference: %s / %s µs) | %s |" % (
            title, f_num(rc), f_num(ax), f_num(so), REFERENCE[load]["axum"], REFERENCE[load]["socketify"],
            verdict(None if rc is None or so is None else rc <= so)))
    rc, ax = cpu("fanout-batch", "roomcast"), cpu("fanout-batch", "axum")
    w("| fan-out 1×100 @ 3500 msg/s: CPU/delivery ≤ 0.5 × axum | %s µs (%s axum) | axum %s µs, socketify %s µs | %s |" % (
        f_num(rc), f_ratio(ratio(rc, ax)), f_num(ax), f_num(cpu("fanout-batch", "socketify")),
        verdict(None if rc is None or ax is None else rc <= 0.5 * ax)))
    cap = res("fanout-capacity", "roomcast")
    if cap:
        per_core = 1e6 / cpu_per_unit(cap) if cpu_per_unit(cap) else None
        lg = g(cap, "resources", "loadgen_cpu_us_per_unit")
        w("| fan-out capacity > 1M deliveries/s per server core | %s deliveries/s measured; %s per server core-second "
          "(1 / CPU per delivery); load generator %s µs/delivery | axum %s/s, socketify %s/s | %s |" % (
              f_num(cap.get("units_per_s")), f_num(per_core), f_num(lg),
              f_num((res("fanout-capacity", "axum") or {}).get("units_per_s")),
              f_num((res("fanout-capacity", "socketify") or {}).get("units_per_s")),
              verdict(None if per_core is None else per_core > 1e6)))
    hm = res("fanout-halfmax", "roomcast")
    if hm:
        p99 = g(hm, "latency", "p99_us")
        w("| p99 fan-out latency at half the max rate < 2 ms | %s at %s msg/s | axum %s, socketify %s (each at half its own max) | %s |" % (
            f_lat(p99), f_num(g(hm, "params", "rate")),
            f_lat(g(res("fanout-halfmax", "axum"), "latency", "p99_us")),
            f_lat(g(res("fanout-halfmax", "socketify"), "latency", "p99_us")),
            verdict(None if p99 is None else p99 < 2000)))
    rc, ax = cpu("echo-200", "roomcast"), cpu("echo-200", "axum")
    w("| echo 200 conns: CPU/round trip ≤ 0.6 × axum | %s µs (%s axum) | axum %s µs, socketify %s µs (reference %s / %s) | %s |" % (
        f_num(rc), f_ratio(ratio(rc, ax)), f_num(ax), f_num(cpu("echo-200", "socketify")),
        REFERENCE["echo-200"]["axum"], REFERENCE["echo-200"]["socketify"],
        verdict(None if rc is None or ax is None else rc <= 0.6 * ax)))
    i19 = g(res("idle-19k", "roomcast"), "rss_per_connection_bytes")
    w("| memory per idle connection at 19,000 ≤ 1.6 KB | %s (%s at 10k) | axum %s, socketify %s at 10k | %s |" % (
        f_bytes(i19), f_bytes(g(res("idle-10k", "roomcast"), "rss_per_connection_bytes")),
        f_bytes(g(res("idle-10k", "axum"), "rss_per_connection_bytes")),
        f_bytes(g(res("idle-10k", "socketify"), "rss_per_connection_bytes")),
        verdict(None if i19 is None else i19 <= 1600)))
    cr = g(res("connect", "roomcast"), "units_per_s")
    cs = g(res("connect", "socketify"), "units_per_s")
    w("| new connections/s ≥ uWebSockets | %s/s (%s µs server CPU each) | axum %s/s, socketify %s/s (reference 6.3k / 12.4k) | %s |" % (
        f_num(cr), f_num(cpu("connect", "roomcast")), f_num(g(res("connect", "axum"), "units_per_s")), f_num(cs),
        verdict(None if cr is None or cs is None else cr >= cs)))
    drs = [(n, res("durable-%d" % n, "roomcast"), res("durable-%d" % n, "axum")) for n in DURABLE_PUBLISHERS]
    best = max((d for d in drs if d[1]), key=lambda d: d[1].get("units_per_s") or 0, default=None)
    if best:
        n, rr, ar = best
        rate = rr.get("units_per_s")
        p99 = g(rr, "ack_latency", "p99_us") or g(rr, "latency", "p99_us")
        w("| durable ≥ 100k publishes/s with p99 ack < 5 ms | %s/s, p99 ack %s (%d publishers) | – | %s |" % (
            f_num(rate), f_lat(p99), n, verdict(rate >= 100000 and p99 is not None and p99 < 5000)))
        ax_best = max((d[2].get("units_per_s") or 0 for d in drs if d[2]), default=0)
        r20 = ratio(rate, ax_best)
        w("| durable ≥ 20× commit-per-message (axum --durable) | best %s/s | axum best %s/s | %s (%s) |" % (
            f_num(rate), f_num(ax_best), verdict(None if r20 is None else r20 >= 20), f_ratio(r20)))
    w("")

    # -- per-load tables --
    w("## Results per load")
    w("")
    w("Columns: rate of units of work; server CPU per unit; roomcast ÷ this server for CPU per unit and "
      "for rate; latency p50/p99 (fan-out: from the scheduled send time to each member's receipt; echo: "
      "round trip; connect: TCP connect to `joined`); the load generator's own CPU per unit; violations "
      "(gaps, missing, duplicates, errors); the 1-minute load average when the scenario started.")
    w("")
    seen = []
    for r in runs:
        if r["durable"] or r["load"] in seen:
            continue
        seen.append(r["load"])
    for load in seen:
        rows = [r for r in runs if r["load"] == load and not r["durable"]]
        w("### %s" % rows[0]["title"])
        w("")
        base = res(load, "roomcast")
        if rows[0]["argv"][0] == "idle":
            w("| server | held | server RSS before → after | memory per connection | roomcast ÷ this | server CPU per connection | load avg |")
            w("| --- | --- | --- | --- | --- | --- | --- |")
            for r in rows:
                x = r["result"]
                if not x:
                    w("| %s | %s | | | | | %s |" % (r["server"], r["status"], r["loadavg"]))
                    continue
                per = x.get("rss_per_connection_bytes")
                w("| %s | %s | %s → %s | %s | %s | %s µs | %s |" % (
                    r["server"], f_num(x.get("units")),
                    f_bytes(g(x, "resources", "server_rss_before_bytes")),
                    f_bytes(g(x, "resources", "server_rss_after_bytes")), f_bytes(per),
                    f_ratio(ratio(g(base, "rss_per_connection_bytes"), per)),
                    f_num(cpu_per_unit(x)), r["loadavg"]))
        else:
            unit = next((r["result"]["unit"] for r in rows if r["result"]), "unit")
            w("| server | %s/s | server CPU µs/%s | roomcast ÷ this (CPU/%s) | roomcast ÷ this (rate) | p50 | p99 | load generator CPU µs/%s | violations | load avg |" % (
                PLURAL.get(unit, unit), unit, unit, unit))
            w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for r in rows:
                x = r["result"]
                if not x:
                    w("| %s | %s | | | | | | | | %s |" % (r["server"], r["status"], r["loadavg"]))
                    continue
                rate_note = ""
                if r["load"] == "fanout-halfmax":
                    rate_note = " (at %s msg/s)" % f_num(g(x, "params", "rate"))
                w("| %s | %s%s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    r["server"], f_num(x.get("units_per_s")), rate_note, f_num(cpu_per_unit(x)),
                    f_ratio(ratio(cpu_per_unit(base), cpu_per_unit(x))),
                    f_ratio(ratio(g(base, "units_per_s"), x.get("units_per_s"))),
                    f_lat(g(x, "latency", "p50_us")), f_lat(g(x, "latency", "p99_us")),
                    f_num(g(x, "resources", "loadgen_cpu_us_per_unit")), violations(x), r["loadavg"]))
        if load in charts:
            w("")
            w("![%s](%s)" % (load, os.path.relpath(charts[load], md_dir)))
        w("")

    # -- profiles --
    profiled = [r for r in runs if "profile_path" in r]
    if profiled:
        w("## Where the time goes")
        w("")
        w("Server CPU per delivery in the fan-out loads, split into kernel and user time. The total is "
          "utime+stime from `/proc/PID/stat` at the window's edges, as in the tables above; during the "
          "same window `perf record -e cpu-clock -F %d -g -p PID` sampled the server (its threads only), "
          "and the kernel's share of those samples splits the total (the sampling costs the server a "
          "little CPU, which every figure of this run includes). \"/proc stime\" is the kernel's own "
          "split, for comparison: %s \"Top user-space symbols\": the three with the most self time "
          "outside the kernel. Each profile file has the top %d symbols, kernel ones included, the share "
          "per thread and the time per system call." % (perfprofile.FREQ, perfprofile.TICK_NOTE,
                                                        perfprofile.TOP))
        w("")
        w("| load | server | CPU µs/delivery | kernel µs/delivery | user µs/delivery | kernel share (perf) | "
          "/proc stime | top user-space symbols | profile |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in sorted(profiled, key=lambda r: PROFILE_LOADS.index(r["load"])):
            prof = r.get("profile")
            c = perfprofile.split(r["result"], prof)
            stime = ("%s µs (%.0f %%)" % (f_num(c["stime"]), 100 * c["stime"] / c["total"])
                     if c["stime"] is not None and c["total"] else "–")
            top = ", ".join("`%s` %.1f %%" % (s["sym"], s["pct"]) for s in prof["top_user"][:3]) \
                if prof else "no samples"
            w("| %s | %s | %s | %s | %s | %s | %s | %s | [%s](%s) |" % (
                r["load"], r["server"], f_num(c["total"]) if r["result"] else r["status"],
                f_num(c["kernel"]), f_num(c["user"]), "%.0f %%" % prof["kernel_pct"] if prof else "–",
                stime, top, os.path.basename(r["profile_path"]), os.path.relpath(r["profile_path"], md_dir)))
        w("")

    # -- durable --
    if any(r["durable"] for r in runs):
        w("## Durable publishes")
        w("")
        w("roomcast `--durability immediate` (store-writer thread, group commit, fsync) against the axum "
          "baseline's `--durable` (one redb write transaction, durably committed, per message), both with "
          "publishers in one room that each wait for their ack before sending the next message "
          "(`--window 1`). Ack latency is measured from the scheduled send time.")
        w("")
        w("| publishers | roomcast publishes/s | ack p50 | ack p99 | server CPU µs/publish | axum publishes/s | ack p50 | ack p99 | server CPU µs/publish | roomcast ÷ axum (rate) |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")

        def cells(r):
            if r is None:
                return ["not run"] + [""] * 3
            x = r["result"]
            if not x:
                return [r["status"]] + [""] * 3
            lat = x.get("ack_latency") or x.get("latency") or {}
            return [f_num(x.get("units_per_s")), f_lat(lat.get("p50_us")), f_lat(lat.get("p99_us")),
                    f_num(cpu_per_unit(x))]

        for n in DURABLE_PUBLISHERS:
            rr, ar = by.get(("durable-%d" % n, "roomcast")), by.get(("durable-%d" % n, "axum"))
            rq = ratio(g(rr, "result", "units_per_s"), g(ar, "result", "units_per_s"))
            w("| %d | %s | %s | %s |" % (n, " | ".join(cells(rr)), " | ".join(cells(ar)), f_ratio(rq)))
        if "durable" in charts:
            w("")
            w("![durable](%s)" % os.path.relpath(charts["durable"], md_dir))
        w("")

    if skipped:
        w("## Not run")
        w("")
        for s in skipped:
            w("- " + s)
        w("")
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        w("## Failures and violations")
        w("")
        for r in failed:
            w("- %s / %s: %s (log: `target/compare-logs/`)" % (r["label"] if r["durable"] else r["load"],
                                                              r["server"], r["status"]))
        w("")
    w("Charts: latency percentile curves and throughput bars drawn by `roomcast-loadtest report` from the "
      "JSON results (idle runs have no latency and are not drawn).")
    w("")
    os.makedirs(md_dir, exist_ok=True)
    with open(md_path, "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001
        log("error: %s" % e)
        sys.exit(2)
