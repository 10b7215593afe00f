"""`perf record` of a server during the load generator's measured window, and
what the recording says: used by `compare.py --profile`.

The load generator prints `window: start` and `window: end` on stderr at the
window's edges (just after it reads the server's CPU from /proc); a thread
follows its log for those lines and starts and stops `perf record -p PID`
there. The recording misses the few milliseconds perf takes to attach.

Standard library only.
"""

import os
import re
import signal
import subprocess
import textwrap
import threading
import time

FREQ = 999  # samples per second: low overhead, not a multiple of the timer tick
TOP = 15
TOP_USER = 10


def perf_cmd(pid, data, core):
    """The recorder: CPU-clock samples (a VM may have no cycle counter) with
    frame-pointer call chains, of every thread of `pid`, perf itself on `core`."""
    return ["taskset", "-c", core, "perf", "record", "-e", "cpu-clock", "-F", str(FREQ), "-g",
            "-p", str(pid), "-o", data]


class Recorder:
    """Follows `logpath` from its current end and records `pid` with perf
    between the `window: start` and `window: end` lines."""

    def __init__(self, pid, logpath, data, core):
        self.cmd = perf_cmd(pid, data, core)
        self.logpath = logpath
        self.data = data
        self.perf = None
        self.started = False
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.offset = os.path.getsize(logpath)
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self):
        rest = b""
        with open(self.logpath, "rb") as f:
            f.seek(self.offset)
            while not self.done.is_set():
                chunk = f.read()
                if not chunk:
                    time.sleep(0.005)
                    continue
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    if b"window: start" in line:
                        self._start()
                    elif b"window: end" in line:
                        self.stop()
                        return

    def _start(self):
        with self.lock:
            if self.started or self.done.is_set():
                return
            self.started = True
            log = open(self.data + ".log", "wb")
            self.perf = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            log.close()

    def stop(self):
        """Stops the recording (SIGINT: perf writes its file and exits)."""
        with self.lock:
            self.done.set()
            p, self.perf = self.perf, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def finish(self):
        """Stops whatever still runs; True when a recording was written."""
        self.stop()
        self.thread.join(timeout=5)
        return self.started and os.path.exists(self.data)


def _report(data, *args):
    """`perf report` rows as (percent, [fields...]), tab-separated."""
    cmd = ["perf", "report", "-i", data, "--stdio", "-g", "none", "--percent-limit", "0",
           "-t", "\t"] + list(args)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    rows, samples = [], None
    for line in out.splitlines():
        m = re.match(r"# Samples: (\d+)", line)
        if m:
            samples = int(m.group(1))
        if line.startswith("#") or "\t" not in line:
            continue
        fields = [x.strip() for x in line.split("\t")]
        try:
            pct = float(fields[0].rstrip("%"))
        except ValueError:
            continue
        rows.append((pct, fields[1:]))
    return samples, rows


def summarise(data):
    """What a recording says: samples, the sampled kernel share, the share per
    thread, the top symbols by self time and the system calls by time spent in
    them and below. None when perf found no sample."""
    samples, syms = _report(data, "--no-children", "--sort", "dso,sym")
    if not samples:
        return None
    top = []
    kernel = 0.0
    for pct, (dso, sym) in syms:
        is_k = sym.startswith("[k]")
        kernel += pct if is_k else 0.0
        top.append(dict(pct=pct, kernel=is_k, sym=sym[3:].strip(), dso=dso))
    _, threads = _report(data, "--no-children", "--sort", "comm")
    _, incl = _report(data, "--children", "--sort", "sym")
    syscalls = []
    for row in incl:
        # --children prints the inclusive share, then the self share.
        pct, fields = row
        name = fields[-1][3:].strip() if fields[-1].startswith("[k]") else ""
        m = re.match(r"__(?:x64|ia32)_sys_(\w+)$", name)
        if m:
            syscalls.append(dict(pct=pct, name=m.group(1)))
    return dict(samples=samples, kernel_pct=kernel, top=top[:TOP],
                top_user=[t for t in top if not t["kernel"]][:TOP_USER],
                threads=[dict(pct=p, comm=f[0]) for p, f in threads],
                syscalls=syscalls)


def split(result, prof):
    """Server CPU per unit: `total` (utime + stime from /proc, which the
    kernel scales to the task's exact run time), `kernel` and `user` (the
    total split by the shares of perf's samples), and `stime` and `utime` (the
    kernel's own split, from /proc). Missing figures are None."""
    out = dict(total=None, kernel=None, user=None, stime=None, utime=None)
    units = (result or {}).get("units")
    if not units:
        return out
    res = result.get("resources") or {}
    total = res.get("server_cpu_us")
    if total is None:
        return out
    out["total"] = total / units
    if prof:
        out["kernel"] = out["total"] * prof["kernel_pct"] / 100
        out["user"] = out["total"] - out["kernel"]
    if res.get("server_system_cpu_us") is not None and res.get("server_user_cpu_us") is not None:
        out["stime"] = res["server_system_cpu_us"] / units
        out["utime"] = res["server_user_cpu_us"] / units
    return out


# Why the two splits can disagree, for the files and BENCHMARKS.md.
TICK_NOTE = ("/proc's utime/stime split is itself sampled on most kernels (tick-based accounting; it is "
             "exact only on nohz_full CPUs): one scheduler tick at a time, scaled to the exact total. A load "
             "paced by a timer (500 msg/s is one message every 2 ms; a tick is 4 ms at HZ=250) can meet the "
             "tick at the same point of its cycle every time and tilt that split either way. perf samples "
             "at %d Hz, in step with neither, and its split is the one given as kernel and user." % FREQ)


# How to read the kernel's top symbols.
SKID_NOTE = ("(cpu-clock samples are timer interrupts: time spent with interrupts off is charged to the "
             "point where they come back on, so _raw_spin_unlock_irqrestore stands mostly for waking the "
             "readers (sock_def_readable) and finish_task_switch for going to sleep in epoll_wait and "
             "waking; `perf report -i` on the recording in target/compare-logs/ shows the call chains.)")


def text(title, result, prof, core):
    """The profile file of one server under one load."""
    L = [title, ""]
    unit = (result or {}).get("unit", "unit")
    if result and result.get("units"):
        L.append("window: %.2f s, %d units (%s)" % (result.get("measured_s", 0), result["units"], unit))
    c = split(result, prof)
    if c["total"] is not None:
        L.append("server CPU per %s, every thread:" % unit)
        L.append("  total  %7.3f µs  (utime + stime, /proc/PID/stat at the window's edges)" % c["total"])
        if c["kernel"] is not None:
            L.append("  kernel %7.3f µs  (%.1f %% of perf's samples)" % (c["kernel"], prof["kernel_pct"]))
            L.append("  user   %7.3f µs" % c["user"])
        if c["stime"] is not None:
            L.append("  /proc's own split: stime %.3f µs, utime %.3f µs (%.1f %% kernel)" % (
                c["stime"], c["utime"], 100 * c["stime"] / c["total"] if c["total"] else 0))
        L.append("")
        L.extend(wrap(TICK_NOTE))
    L.append("")
    L.append("$ " + " ".join(perf_cmd("SERVER_PID", "FILE", core)))
    if prof is None:
        L.append("no samples recorded (see the perf log beside the load generator's in target/compare-logs/)")
        return "\n".join(L) + "\n"
    L.append("%d samples, %.1f %% of them in the kernel" % (prof["samples"], prof["kernel_pct"]))
    L.append("")
    L.append("by thread:")
    for t in prof["threads"]:
        L.append("  %6.2f %%  %s" % (t["pct"], t["comm"]))
    L.append("")
    L.append("top %d symbols by self time ([k] kernel, [.] user):" % TOP)
    for s in prof["top"]:
        L.append("  %6.2f %%  %s %s  (%s)" % (s["pct"], "[k]" if s["kernel"] else "[.]", s["sym"], s["dso"]))
    L.extend(wrap(SKID_NOTE))
    L.append("")
    L.append("top %d user-space symbols by self time:" % TOP_USER)
    for s in prof["top_user"]:
        L.append("  %6.2f %%  %s  (%s)" % (s["pct"], s["sym"], s["dso"]))
    if prof["syscalls"]:
        L.append("")
        L.append("system calls, time in the call and below it (from the kernel call chains):")
        for s in prof["syscalls"]:
            if s["pct"] >= 0.1:
                L.append("  %6.2f %%  %s" % (s["pct"], s["name"]))
    return "\n".join(L) + "\n"


def wrap(paragraph):
    return textwrap.wrap(paragraph, 100)
