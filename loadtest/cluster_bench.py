#!/usr/bin/env python3
"""Cluster benchmarks: several `roomcast serve` processes on one machine,
configured as one cluster (a `[cluster]` table per node, links over nng on
127.0.0.1), driven by `roomcast-loadtest`.

1. Latency (writes cluster-latency.txt): three nodes a, b, c. The rooms are
   all owned by node a (the same rendezvous hash as the server). Members are
   spread round-robin over a, b and c; the publishers are connected either to
   a (from the owner) or to b (from a non-owner, so every send is forwarded
   to a and its ack comes back through b). First the maximum rate, flat out,
   both ways; then, at half (and a quarter: `--fractions`) of the lower of
   the two, the two ways alternate for `--rounds` rounds: deliveries/s, publish-to-deliver latency (from the
   publisher's schedule to the member's receipt, over all members, and per
   node the members are on) and ack latency. Then `--rounds` "mixed" runs at
   the same rate: the even rooms' publishers on a, the odd rooms' on b, so
   both ways are measured under the same load in the same window (the
   machine's noise then hits both alike).
2. Scale (writes cluster-scale.txt): idle WebSocket connections, memory per
   connection on each node (RSS after − before, divided by the node's share),
   18,000 on one plain node against 90,000 over five nodes (18,000 each; the
   load generator runs several worker processes, from several source
   addresses in 127.0.0.0/8); then fan-out flat out in rooms owned by every
   node with members on every node, against the same rooms and members on one
   node: deliveries/s and server CPU per delivery (summed over the nodes, from
   /proc), i.e. deliveries per second of server CPU.

Every server runs with `--threads 1 --durability none` and the per-address
and rate limits off (one load generator from few addresses), pinned to core 1
(`taskset -c 1`); the load generator runs on core 0. Every run gets fresh
nodes on fresh data directories, is bounded in time, and every process
started here is stopped at the end, on an error, and on SIGINT/SIGTERM.

  loadtest/cluster_bench.sh                         # both parts, results in docs/bench/results/
  loadtest/cluster_bench.sh --only latency --duration 5s --out /tmp/clb
  loadtest/cluster_bench.sh --quick                 # short windows, small counts; results in the --out directory

Standard library only; builds nothing (run `cargo build --release --workspace` first).
"""

import argparse
import datetime
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
from compare import f_bytes, f_lat, f_num, free_port, g, kill_group, loadavg, machine  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "bench", "results")
JWT_SECRET = "cluster-bench-jwt-secret-0123456789"
CLUSTER_SECRET = "cluster-bench-shared-secret-0123456789"
SERVER_CORE = "1"
LOADGEN_CORE = "0"
HOST = "127.0.0.1"

# One load generator from a few addresses: the per-address and rate limits
# are off; fan-out is measured without fsync, as in compare.py.
SERVER_FLAGS = ["--threads", "1", "--durability", "none", "--send-rate", "0", "--max-queue-bytes", "64MiB",
                "--request-rate", "0", "--max-conns-per-ip", "0", "--connect-rate-per-ip", "0",
                "--post-rate-per-ip", "0", "--drain-timeout", "1s"]

_M64 = (1 << 64) - 1


def weight(node_id, room):
    """The server's rendezvous weight (src/cluster/ring.rs; tests/e2e/cluster.py):
    FNV-1a 64 over `id 0xff room`, then splitmix64's finaliser."""
    h = 0xCBF29CE484222325
    for b in node_id.encode() + b"\xff" + room.encode():
        h ^= b
        h = (h * 0x100000001B3) & _M64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _M64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _M64
    return h ^ (h >> 31)


def owner(room, ids):
    best_w, best = -1, None
    for node_id in ids:
        w = weight(node_id, room)
        if w > best_w:  # strictly greater: a tie stays with the lower index
            best_w, best = w, node_id
    return best


def rooms_owned_by(owner_id, ids, prefix, n):
    out, i = [], 0
    while len(out) < n:
        name = "%s-%s%d" % (prefix, owner_id, i)
        if owner(name, ids) == owner_id:
            out.append(name)
        i += 1
        if i > 100000:
            raise RuntimeError("no room for %s among %s" % (owner_id, ids))
    return out


def log(msg):
    print("[cluster-bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def http_get(port, path, timeout=1.0):
    with urllib.request.urlopen("http://%s:%d%s" % (HOST, port, path), timeout=timeout) as r:
        return r.status, r.read().decode("utf-8", "replace")


def peer_up(text):
    """peer id -> value of roomcast_cluster_peer_up in a /metrics text."""
    out = {}
    for line in text.splitlines():
        if line.startswith("roomcast_cluster_peer_up{"):
            lab, _, val = line.rpartition(" ")
            peer = lab.split('peer="', 1)[-1].split('"', 1)[0]
            out[peer] = float(val)
    return out


def metric_sums(text, names):
    """name -> sum over its label sets, for the given metric names."""
    out = {n: 0.0 for n in names}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            try:
                out[name] += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                pass
    return out


class Runner:
    """Owns every child process so that none outlives the run."""

    def __init__(self, args, out):
        self.args = args
        self.out = out
        self.procs = []  # (name, Popen) of running servers
        self.loadgen = None
        self.dirs = []
        self.commands = []
        self.toml_example = ""

    def note(self, cmd, kind):
        """Records a command (`kind`: "server", "cluster-server" or "loadtest") for the report and
        commands.txt."""
        self.commands.append((kind, shlex.join(cmd)))
        with open(os.path.join(self.out, "commands.txt"), "a") as f:
            f.write(shlex.join(cmd) + "\n")

    # -- servers

    def start_nodes(self, ids, label, cluster=True):
        """Starts one server per id (a cluster when `cluster`, else plain
        servers); returns [(id, http_port, pid)] once every node answers
        /healthz and, in a cluster, reports every peer up."""
        base = tempfile.mkdtemp(prefix="%s-" % label, dir=self.out)
        self.dirs.append(base)
        nng = {i: free_port() for i in ids}
        nodes = []
        for i in ids:
            root = os.path.join(base, "node-" + i)
            data = os.path.join(root, "data")
            os.makedirs(data)
            port = free_port()
            cmd = ["taskset", "-c", SERVER_CORE, self.args.server, "serve", "--listen", "%s:%d" % (HOST, port),
                   "--data", data] + SERVER_FLAGS
            if cluster:
                cfg = os.path.join(root, "node.toml")
                lines = ["[cluster]", 'node-id = "%s"' % i, "nodes = ["]
                lines += ['  { id = "%s", addr = "tcp://%s:%d" },' % (j, HOST, nng[j]) for j in ids]
                lines += ["]", 'down-after = "5s"']
                with open(cfg, "w") as f:
                    f.write("\n".join(lines) + "\n")
                if i == ids[0]:
                    self.toml_example = "\n".join(lines)
                cmd += ["--config", cfg]
            env = dict(os.environ, ROOMCAST_JWT_SECRET=JWT_SECRET)
            if cluster:
                # Without a [cluster] table the server refuses this variable.
                env["ROOMCAST_CLUSTER_SECRET"] = CLUSTER_SECRET
            self.note(cmd, "cluster-server" if cluster else "server")
            # Logs outside the data directories, which are removed after each run.
            logpath = os.path.join(self.out, "%s-node-%s.log" % (label, i))
            logf = open(logpath, "ab")
            p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                 cwd=root)
            logf.close()
            self.procs.append((i, p))
            nodes.append((i, port, p, logpath))
        deadline = time.time() + 30
        for i, port, p, logpath in nodes:
            while True:
                if p.poll() is not None:
                    raise RuntimeError("node %s exited with %s at start; see %s" % (i, p.returncode, logpath))
                try:
                    if http_get(port, "/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError("node %s: no /healthz answer within 30 s" % i)
                time.sleep(0.05)
        if cluster and len(ids) > 1:
            for i, port, p, logpath in nodes:
                while True:
                    try:
                        up = peer_up(http_get(port, "/metrics")[1])
                    except OSError:
                        up = {}
                    if all(up.get(j) == 1 for j in ids if j != i):
                        break
                    if p.poll() is not None:
                        raise RuntimeError("node %s exited with %s; see %s" % (i, p.returncode, logpath))
                    if time.time() > deadline:
                        raise RuntimeError("node %s: peers not all up within 30 s: %s" % (i, up))
                    time.sleep(0.05)
        return [(i, port, p.pid) for i, port, p, _ in nodes]

    def metrics(self, nodes, names):
        out = {}
        for i, port, _ in nodes:
            try:
                out[i] = metric_sums(http_get(port, "/metrics", timeout=3)[1], names)
            except OSError:
                out[i] = None
        return out

    def stop_nodes(self):
        for _, p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for _, p in self.procs:
            kill_group(p, grace=5.0)
        self.procs = []
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.dirs = []

    def cleanup(self):
        kill_group(self.loadgen, grace=2.0)
        self.loadgen = None
        self.stop_nodes()

    # -- load generator

    def loadtest(self, name, argv, timeout):
        """Runs the load generator on its core; returns (exit status or
        "timeout", the JSON result or None)."""
        path = os.path.join(self.out, name + ".json")
        cmd = ["taskset", "-c", LOADGEN_CORE, self.args.loadtest] + argv + ["--json", path, "--label", name]
        self.note(cmd, "loadtest")
        env = dict(os.environ, ROOMCAST_JWT_SECRET=JWT_SECRET)
        with open(os.path.join(self.out, name + ".log"), "ab") as f:
            f.write(("$ %s\n" % shlex.join(cmd)).encode())
            f.flush()
            self.loadgen = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
            try:
                rc = self.loadgen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_group(self.loadgen, grace=2.0)
                rc = "timeout"
            self.loadgen = None
        res = None
        if os.path.exists(path):
            with open(path) as f:
                res = json.load(f)
        if rc != 0:
            log("%s: load generator exited %s (log: %s.log)" % (name, rc, os.path.join(self.out, name)))
        return rc, res


def url(port):
    return "ws://%s:%d/v1/ws" % (HOST, port)


def violations(res):
    v = (res or {}).get("violations") or {}
    return sum(int(v.get(k) or 0) for k in ("gaps", "dups", "errors"))


def table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def secs(s):
    s = s.strip()
    if s.endswith("ms"):
        return float(s[:-2]) / 1000
    if s.endswith("s"):
        return float(s[:-1])
    if s.endswith("m"):
        return float(s[:-1]) * 60
    return float(s)


# --------------------------------------------------------------------------- latency


def latency(runner, a):
    ids = ["a", "b", "c"]
    runs = []

    def one(way, rate, name, duration, warmup):
        nodes = runner.start_nodes(ids, name)
        port = {i: p for i, p, _ in nodes}
        rooms = rooms_owned_by("a", ids, name, a.lat_rooms)
        # "mixed": even rooms publish through a, odd rooms through b, in the same window.
        pubs = {"owner": ["a"], "non-owner": ["b"], "mixed": ["a", "b"]}[way]
        argv = ["fanout"] + [x for i in ids for x in ("--url", url(port[i]))] + [
            "--publish-url", ",".join(url(port[i]) for i in pubs), "--room-names", ",".join(rooms),
            "--members", str(a.lat_members), "--publishers", "1", "--body-bytes", "100",
            "--rate", f_rate(rate), "--window", "16", "--duration", duration, "--warmup", warmup,
            "--setup-timeout", "60s"] + [x for _, _, pid in nodes for x in ("--server-pid", str(pid))]
        budget = secs(duration) + secs(warmup) + 90
        rc, res = runner.loadtest(name, argv, budget)
        m = runner.metrics(nodes, ["roomcast_cluster_frames_sent_total", "roomcast_cluster_records_sent_total",
                                   "roomcast_cluster_send_timeouts_total", "roomcast_cluster_resyncs_total"])
        runner.stop_nodes()
        run = dict(name=name, way=way, rate=rate, rc=rc, res=res, metrics=m, ports=port)
        runs.append(run)
        if res:
            log("%s: %s deliveries/s, p50 %s, p99 %s" % (name, f_num(res.get("units_per_s")),
                                                         f_lat(g(res, "latency", "p50_us")),
                                                         f_lat(g(res, "latency", "p99_us"))))
        return run

    maxima = {}
    for way in ("owner", "non-owner"):
        r = one(way, 0, "lat-max-%s" % way, a.max_duration, "1s")
        res = r["res"]
        if res and r["rc"] in (0, 1) and res.get("units_per_s"):
            maxima[way] = res["units_per_s"] / a.lat_members
    if len(maxima) < 2:
        raise RuntimeError("no maximum rate measured: %s" % maxima)
    top = min(maxima.values())
    log("maximum %s msg/s" % {k: round(v) for k, v in maxima.items()})
    for frac in a.fractions:
        rate = top * frac
        tag = "f%d" % round(frac * 100)
        for rnd in range(1, a.rounds + 1):
            for way in ("owner", "non-owner"):
                r = one(way, rate, "lat-%s-%s-%d" % (tag, way, rnd), a.duration, a.warmup)
                r.update(round=rnd, frac=frac)
        for rnd in range(1, a.rounds + 1):
            r = one("mixed", rate, "lat-%s-mixed-%d" % (tag, rnd), a.duration, a.warmup)
            r.update(round=rnd, frac=frac)
    return dict(maxima=maxima, top=top, runs=runs)


def cores_used(res):
    """Server CPU seconds per second of the window, summed over the nodes."""
    cpu, measured = g(res, "resources", "server_cpu_us"), (res or {}).get("measured_s")
    return cpu / 1e6 / measured if cpu is not None and measured else None


def f_rate(r):
    return "%.1f" % r


def write_commands(w, commands, toml):
    """The commands of the run: one server command of each kind as an example (every node's differs
    only in ports and directories), a node's [cluster] table, and every load generator command."""
    w("The commands of this run. Servers (the environment gives ROOMCAST_JWT_SECRET and, for a cluster,")
    w("ROOMCAST_CLUSTER_SECRET), one per node, e.g.:")
    w("")
    for kind in ("server", "cluster-server"):
        first = next((c for k, c in commands if k == kind), None)
        if first:
            w("  " + first)
    if toml and any(k == "cluster-server" for k, _ in commands):
        w("")
        w("with node.toml (node-id differs per node):")
        w("")
        for line in toml.splitlines():
            w("  " + line)
    w("")
    w("Load generator runs (ROOMCAST_JWT_SECRET in the environment):")
    w("")
    for k, c in commands:
        if k == "loadtest":
            w("  " + c)


def f_frac(frac):
    return {0.5: "Half", 0.25: "A quarter"}.get(frac, "%g×" % frac)


def goal_name(frac):
    if frac == 0.5:
        return "Goal (issue 9, at half the maximum rate)"
    return "The goal's figure at %s of the maximum rate (for reference)" % f_frac(frac).lower()


def latency_section(w, a, lat, frac):
    """The tables of one rate (a fraction of the lower maximum)."""
    runs = lat["runs"]
    rate = lat["top"] * frac
    w("=== %s of the lower maximum: %s msg/s (%s deliveries/s), %s window after %s, the two ways alternating:"
      % (f_frac(frac), f_num(rate), f_num(rate * a.lat_members), a.duration, a.warmup))
    rows = []
    by_round = {}
    for r in runs:
        if r.get("frac") != frac or r["way"] == "mixed":
            continue
        res = r["res"] or {}
        lbu = g(res, "counts", "latency_by_url") or {}
        per_node = []
        for i in ("a", "b", "c"):
            p = lbu.get(url(r["ports"][i])) or {}
            per_node.append(f_lat(p.get("p99_us")))
        m = r["metrics"] or {}
        frames = sum((v or {}).get("roomcast_cluster_frames_sent_total", 0) for v in m.values())
        recs = sum((v or {}).get("roomcast_cluster_records_sent_total", 0) for v in m.values())
        rows.append([r["way"], r.get("round", ""), f_num(res.get("units_per_s")),
                     f_lat(g(res, "latency", "p50_us")), f_lat(g(res, "latency", "p99_us")),
                     f_lat(g(res, "latency", "p999_us")), f_lat(g(res, "latency", "max_us")),
                     f_lat(g(res, "ack_latency", "p50_us")), f_lat(g(res, "ack_latency", "p99_us"))]
                    + per_node + [f_num(recs / frames if frames else None),
                                  f_num(g(res, "resources", "server_cpu_us_per_unit")), f_num(cores_used(res)),
                                  str(violations(res))])
        by_round.setdefault(r.get("round"), {})[r["way"]] = res
    w(table(["publishers on", "round", "deliveries/s", "p50", "p99", "p99.9", "max", "ack p50", "ack p99",
             "p99 on a", "p99 on b", "p99 on c", "records/frame", "server µs/delivery", "server cores",
             "violations"], rows))
    w("")
    w("Added by the forward (non-owner minus owner, same round):")
    rows = []
    added = []
    for rnd in sorted(k for k in by_round if k is not None):
        o, n = by_round[rnd].get("owner"), by_round[rnd].get("non-owner")
        if not o or not n:
            continue
        d50 = g(n, "latency", "p50_us") - g(o, "latency", "p50_us")
        d99 = g(n, "latency", "p99_us") - g(o, "latency", "p99_us")
        a50 = g(n, "ack_latency", "p50_us") - g(o, "ack_latency", "p50_us")
        a99 = g(n, "ack_latency", "p99_us") - g(o, "ack_latency", "p99_us")
        added.append(d99)
        rows.append([str(rnd), f_lat(d50), f_lat(d99), f_lat(a50), f_lat(a99)])
    w(table(["round", "p50 added", "p99 added", "ack p50 added", "ack p99 added"], rows))
    w("")
    if added:
        worst = max(added)
        w("%s: under 2 ms added p99 for a forwarded publish: %s (worst round %s, mean %s)."
          % (goal_name(frac), "met" if worst < 2000 else "NOT met", f_lat(worst), f_lat(sum(added) / len(added))))
        spread = {}
        for way in ("owner", "non-owner"):
            p99s = [g(by_round[k].get(way), "latency", "p99_us") for k in by_round if by_round[k].get(way)]
            p99s = [p for p in p99s if p is not None]
            if p99s:
                spread[way] = max(p99s) - min(p99s)
        w("Run-to-run spread of the p99 over the rounds: from the owner %s, from a non-owner %s; an added p99"
          % (f_lat(spread.get("owner")), f_lat(spread.get("non-owner"))))
        w("smaller than that spread is within this machine's noise (a negative one says no more).")
    w("")
    w("Both ways in the same window (\"mixed\"): the same load at the same total rate, the publishers of")
    w("the even rooms on a (owner), of the odd rooms on b (non-owner); latency of the members of each half:")
    rows = []
    mixed_added = []
    for r in runs:
        if r.get("frac") != frac or r["way"] != "mixed":
            continue
        res = r["res"] or {}
        lbp = g(res, "counts", "latency_by_publish_url") or {}
        o, n = lbp.get(url(r["ports"]["a"])) or {}, lbp.get(url(r["ports"]["b"])) or {}
        for way, p in (("owner", o), ("non-owner", n)):
            rows.append([way, str(r["round"]), f_num(p.get("count")), f_lat(p.get("p50_us")), f_lat(p.get("p99_us")),
                         f_lat(p.get("p999_us")), f_lat(p.get("max_us")), f_lat(p.get("ack_p50_us")),
                         f_lat(p.get("ack_p99_us")), f_num(cores_used(res)), str(violations(res))])
        if o.get("p99_us") is not None and n.get("p99_us") is not None:
            d99 = n["p99_us"] - o["p99_us"]
            mixed_added.append(d99)
            rows.append(["added", str(r["round"]), "", f_lat(n["p50_us"] - o["p50_us"]), f_lat(d99), "", "",
                         f_lat(n["ack_p50_us"] - o["ack_p50_us"]), f_lat(n["ack_p99_us"] - o["ack_p99_us"]), "", ""])
    w(table(["publishers on", "round", "deliveries", "p50", "p99", "p99.9", "max", "ack p50", "ack p99",
             "server cores", "violations"], rows))
    w("")
    if mixed_added:
        worst = max(mixed_added)
        w("%s, both ways under the same load at the same moment: %s (worst round %s, mean %s of added p99)."
          % (goal_name(frac), "met" if worst < 2000 else "NOT met", f_lat(worst),
             f_lat(sum(mixed_added) / len(mixed_added))))
        w("")


def write_latency(path, a, lat, mach, started, load_start, load_end, cmdline, commands, toml):
    runs = lat["runs"]
    maxima = lat["maxima"]
    lines = []
    w = lines.append
    w("Cluster: publish-to-deliver latency from the owner and from a non-owner (loadtest/cluster_bench.py)")
    w("")
    w("  " + cmdline)
    w("")
    w("Taken %s on %s (%s CPUs%s), %s, kernel %s; load average %s at start, %s at end."
      % (started, mach["cpu"], mach["cpus"], ", " + mach["hypervisor"] if mach["hypervisor"] else "",
         mach["memory"], mach["kernel"], " ".join(load_start), " ".join(load_end)))
    w("The machine has 2 cores shared with other work: compare within a run, not across runs.")
    w("")
    w("Three nodes a, b, c on 127.0.0.1 (links over nng tcp://), each `roomcast serve --threads 1 --durability")
    w("none` with the per-address and rate limits off, all three pinned to core %s; the load generator on"
      % SERVER_CORE)
    w("core %s. %d rooms, every one owned by node a; %d members per room spread round-robin over a, b, c;"
      % (int(LOADGEN_CORE), a.lat_rooms, a.lat_members))
    w("one publisher per room, connected to a (\"owner\") or to b (\"non-owner\": each send is forwarded to a,")
    w("its ack comes back through b). 100-byte bodies. Latency runs from each message's scheduled send time to")
    w("its receipt by a member (every member, whichever node it is on); ack latency from the same time to the")
    w("publisher's ack. Fresh nodes on fresh data directories for every run.")
    w("")
    w("Maximum (flat out, 16 unacknowledged per publisher, %s window after 1 s):" % a.max_duration)
    rows = []
    for r in runs:
        if r["rate"] != 0:
            continue
        res = r["res"] or {}
        rows.append([r["way"], f_num(res.get("units_per_s")),
                     f_num((res.get("units_per_s") or 0) / a.lat_members), f_lat(g(res, "latency", "p50_us")),
                     f_lat(g(res, "latency", "p99_us")), f_num(g(res, "resources", "server_cpu_us_per_unit")),
                     f_num(g(res, "resources", "loadgen_cpu_us_per_unit")), str(violations(res))])
    w(table(["publishers on", "deliveries/s", "msg/s", "p50", "p99", "server µs/delivery",
             "loadgen µs/delivery", "violations"], rows))
    w("")
    for frac in a.fractions:
        latency_section(w, a, lat, frac)
    w("\"server cores\": the three nodes' CPU seconds per second (they share one core, so at most 1). The")
    w("flat-out maximum is reached with large batches (less CPU per delivery); paced at a fraction of it,")
    w("the nodes batch less and write to each member once per message, so CPU per delivery doubles or more:")
    w("at half the maximum the shared core is nearly saturated (the column above) and queueing on it, on a")
    w("machine shared with other work, dominates the latency of both ways alike; a quarter of the maximum")
    w("leaves the core headroom and shows the forward's own cost better.")
    w("")
    w("\"p99 on a/b/c\": the p99 of the members connected to that node. \"records/frame\": records the nodes")
    w("sent each other over the run (all links) divided by frames.")
    w("")
    write_commands(w, commands, toml)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- scale


def scale(runner, a):
    ids5 = ["a", "b", "c", "d", "e"]
    out = dict(idle=[], fanout=[], rooms={})
    per_node = a.idle_per_node

    # Idle: one plain node with N, then five nodes with N each.
    for label, ids, cluster in (("idle-1", ["a"], False), ("idle-5", ids5, True)):
        nodes = runner.start_nodes(ids, label, cluster=cluster)
        total = per_node * len(ids)
        argv = ["idle", "--connections", str(total), "--per-worker", "15000", "--sources", str(a.sources),
                "--settle", "2s", "--setup-timeout", "120s", "--setup-concurrency", "512"]
        argv += [x for _, port, _ in nodes for x in ("--url", url(port))]
        argv += [x for _, _, pid in nodes for x in ("--server-pid", str(pid))]
        rc, res = runner.loadtest(label, argv, 240)
        runner.stop_nodes()
        out["idle"].append(dict(name=label, ids=ids, rc=rc, res=res, nodes=nodes))
        if res:
            log("%s: %s held, %s B per connection" % (label, g(res, "counts", "held"),
                                                       f_num(res.get("rss_per_connection_bytes"))))

    # Fan-out: rooms owned by every node, members on every node; against the same on one node.
    for key, per_owner, members in fan_loads(a):
        rooms = []
        for i in ids5:
            rooms += rooms_owned_by(i, ids5, "fan%s" % key, per_owner)
        out["rooms"][key] = rooms
        for rnd in range(1, a.rounds + 1):
            for label, ids, cluster in (("1", ["a"], False), ("5", ids5, True)):
                name = "fanout-%s-%s-%d" % (key, label, rnd)
                nodes = runner.start_nodes(ids, name, cluster=cluster)
                argv = ["fanout", "--room-names", ",".join(rooms), "--members", str(members), "--publishers", "1",
                        "--body-bytes", "100", "--rate", "0", "--window", "16", "--duration", a.duration,
                        "--warmup", a.warmup, "--setup-timeout", "60s"]
                argv += [x for _, port, _ in nodes for x in ("--url", url(port))]
                argv += [x for _, _, pid in nodes for x in ("--server-pid", str(pid))]
                rc, res = runner.loadtest(name, argv, secs(a.duration) + secs(a.warmup) + 90)
                m = runner.metrics(nodes, ["roomcast_cluster_frames_sent_total",
                                           "roomcast_cluster_records_sent_total"]) if cluster else {}
                runner.stop_nodes()
                out["fanout"].append(dict(name=name, key=key, nodes=len(ids), round=rnd, rc=rc, res=res, metrics=m))
                if res:
                    log("%s: %s deliveries/s, %s server µs/delivery" % (
                        name, f_num(res.get("units_per_s")), f_num(g(res, "resources", "server_cpu_us_per_unit"))))
    return out


def fan_loads(a):
    """(key, rooms owned by each of the five nodes, members per room) of the scale part's fan-outs."""
    return [("%dx%d" % (5 * a.fan_rooms_per_node, a.fan_members), a.fan_rooms_per_node, a.fan_members),
            ("5x%d" % a.fan_big_members, 1, a.fan_big_members)]


def write_scale(path, a, sc, mach, started, load_start, load_end, cmdline, commands, toml):
    lines = []
    w = lines.append
    w("Cluster: five nodes on one machine against one node (loadtest/cluster_bench.py)")
    w("")
    w("  " + cmdline)
    w("")
    w("Taken %s on %s (%s CPUs%s), %s, kernel %s; load average %s at start, %s at end."
      % (started, mach["cpu"], mach["cpus"], ", " + mach["hypervisor"] if mach["hypervisor"] else "",
         mach["memory"], mach["kernel"], " ".join(load_start), " ".join(load_end)))
    w("The machine has 2 cores shared with other work: compare within a run, not across runs.")
    w("")
    w("Every server: `roomcast serve --threads 1 --durability none`, the per-address and rate limits off,")
    w("pinned to core %s (all five share it); the load generator on core %s. One node is a plain server"
      % (SERVER_CORE, LOADGEN_CORE))
    w("(no [cluster] table); five nodes are one cluster a..e with links over nng tcp:// on 127.0.0.1.")
    w("Fresh nodes on fresh data directories for every run.")
    w("")
    w("Idle WebSocket connections (upgraded, not joined), %s per node, from %d source addresses"
      % (f_num(a.idle_per_node), a.sources))
    w("127.0.0.1..%d, held by worker processes of at most 15,000 connections each. Memory per connection:"
      % a.sources)
    w("the node's RSS once all are held (after 2 s) minus its RSS before, divided by its connections.")
    w("")
    rows = []
    for run in sc["idle"]:
        res = run["res"] or {}
        servers = g(res, "counts", "servers") or []
        held = g(res, "counts", "held")
        if servers:
            for s, (i, _, _) in zip(servers, run["nodes"]):
                rows.append([run["name"], i, f_num(s.get("connections")), f_bytes(s.get("rss_before_bytes")),
                             f_bytes(s.get("rss_after_bytes")), f_num(s.get("rss_per_connection_bytes"))])
            rows.append([run["name"], "all", f_num(held), f_bytes(g(res, "resources", "server_rss_before_bytes")),
                         f_bytes(g(res, "resources", "server_rss_after_bytes")),
                         f_num(res.get("rss_per_connection_bytes"))])
        else:
            rows.append([run["name"], run["nodes"][0][0] if run["nodes"] else "?", f_num(held),
                         f_bytes(g(res, "resources", "server_rss_before_bytes")),
                         f_bytes(g(res, "resources", "server_rss_after_bytes")),
                         f_num(res.get("rss_per_connection_bytes"))])
        if run["rc"] != 0 or g(res, "counts", "failed"):
            rows.append([run["name"], "", "exit %s, failed %s" % (run["rc"], g(res, "counts", "failed")),
                         "", "", ""])
    w(table(["run", "node", "connections", "RSS before", "RSS after", "bytes/connection"], rows))
    w("")
    w("Fan-out flat out (16 unacknowledged per publisher, %s window after %s), two loads: %d rooms of %d"
      % (a.duration, a.warmup, 5 * a.fan_rooms_per_node, a.fan_members))
    w("members (%d rooms owned by each of the five node ids) and 5 rooms of %d members (one owned by each);"
      % (a.fan_rooms_per_node, a.fan_big_members))
    w("members spread round-robin over the nodes (so every node has members in every room), one publisher")
    w("per room (publisher j on node j mod 5), 100-byte bodies. Against the same rooms, members and")
    w("publishers on one node. Server CPU is utime+stime from /proc over the window, summed over the nodes;")
    w("deliveries per server core-second = 10^6 / (server µs per delivery); \"server cores\" = server CPU")
    w("seconds per second (five nodes share one core: at most 1). The load generator has one core too and")
    w("can be what limits the rate; the per-core figure compares the setups whatever the rate.")
    w("")
    rows = []
    per_core = {}
    for run in sc["fanout"]:
        res = run["res"] or {}
        cpu = g(res, "resources", "server_cpu_us_per_unit")
        measured = res.get("measured_s") or 0
        cores = (g(res, "resources", "server_cpu_us") or 0) / 1e6 / measured if measured else None
        pc = 1e6 / cpu if cpu else None
        if pc:
            per_core.setdefault((run["key"], run["nodes"]), []).append(pc)
        m = run.get("metrics") or {}
        frames = sum((v or {}).get("roomcast_cluster_frames_sent_total", 0) for v in m.values())
        recs = sum((v or {}).get("roomcast_cluster_records_sent_total", 0) for v in m.values())
        rows.append([run["key"], str(run["nodes"]), str(run["round"]), f_num(res.get("units_per_s")),
                     f_lat(g(res, "latency", "p50_us")), f_lat(g(res, "latency", "p99_us")),
                     f_num(cpu), f_num(cores), f_num(pc), f_num(g(res, "resources", "loadgen_cpu_us_per_unit")),
                     f_num(frames) if m else "–", f_num(recs / frames) if frames else "–",
                     str(violations(res)) if run["rc"] in (0, 1) else "exit %s" % run["rc"]])
    w(table(["load", "nodes", "round", "deliveries/s", "p50", "p99", "server µs/delivery", "server cores",
             "deliveries/s per core", "loadgen µs/delivery", "link frames", "records/frame", "violations"], rows))
    w("")
    w("\"link frames\": frames the nodes sent each other over the whole run (setup, warm-up, window and")
    w("drain, all links); \"records/frame\": records they carried per frame.")
    w("")
    for key, _, _ in fan_loads(a):
        one, five = per_core.get((key, 1)), per_core.get((key, 5))
        if one and five:
            one, five = sum(one) / len(one), sum(five) / len(five)
            w("%s: mean deliveries per server core-second, one node %s, five nodes %s (%.2f× of one node)."
              % (key, f_num(one), f_num(five), five / one))
    w("")
    write_commands(w, commands, toml)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default=os.path.join(ROOT, "target/release/roomcast"))
    ap.add_argument("--loadtest", default=os.path.join(ROOT, "target/release/roomcast-loadtest"))
    ap.add_argument("--only", default="latency,scale", help="latency, scale or both (comma-separated)")
    ap.add_argument("--out", help="logs and JSON (default: a new directory under /tmp)")
    ap.add_argument("--results", default=RESULTS, help="where cluster-latency.txt and cluster-scale.txt go")
    ap.add_argument("--quick", action="store_true",
                    help="3 s windows, 2,000 idle connections per node, one round; results in --out")
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--warmup", default="2s")
    ap.add_argument("--max-duration", default="5s", help="window of the flat-out runs that find the maximum")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fractions", default="0.5,0.25",
                    help="rates of the latency runs, as fractions of the lower flat-out maximum")
    ap.add_argument("--lat-rooms", type=int, default=10)
    ap.add_argument("--lat-members", type=int, default=30)
    ap.add_argument("--idle-per-node", type=int, default=18000)
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--fan-rooms-per-node", type=int, default=2)
    ap.add_argument("--fan-members", type=int, default=100)
    ap.add_argument("--fan-big-members", type=int, default=1000)
    a = ap.parse_args()
    a.fractions = [float(x) for x in a.fractions.split(",") if x.strip()]
    if a.quick:
        a.duration, a.warmup, a.max_duration, a.rounds, a.idle_per_node = "3s", "1s", "3s", 1, 2000
    for b in (a.server, a.loadtest):
        if not os.access(b, os.X_OK):
            sys.exit("not found: %s (cargo build --release --workspace)" % b)
    if not shutil.which("taskset"):
        sys.exit("taskset not found (util-linux)")
    parts = [p.strip() for p in a.only.split(",") if p.strip()]
    out = a.out or tempfile.mkdtemp(prefix="cluster-bench-")
    os.makedirs(out, exist_ok=True)
    results = out if a.quick and a.results == RESULTS else a.results
    os.makedirs(results, exist_ok=True)
    cmdline = "loadtest/cluster_bench.sh " + shlex.join(sys.argv[1:])
    runner = Runner(a, out)

    def on_signal(signum, _frame):
        runner.cleanup()
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    mach = machine()
    t0 = time.time()
    try:
        if "latency" in parts:
            started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
            ls = loadavg()
            runner.commands = []
            lat = latency(runner, a)
            write_latency(os.path.join(results, "cluster-latency.txt"), a, lat, mach, started, ls, loadavg(),
                          cmdline, runner.commands, runner.toml_example)
            log("wrote %s" % os.path.join(results, "cluster-latency.txt"))
        if "scale" in parts:
            started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
            ls = loadavg()
            runner.commands = []
            sc = scale(runner, a)
            write_scale(os.path.join(results, "cluster-scale.txt"), a, sc, mach, started, ls, loadavg(),
                        cmdline, runner.commands, runner.toml_example)
            log("wrote %s" % os.path.join(results, "cluster-scale.txt"))
    finally:
        runner.cleanup()
    log("done in %.0f s; logs and JSON in %s" % (time.time() - t0, out))


if __name__ == "__main__":
    main()
