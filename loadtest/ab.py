#!/usr/bin/env python3
"""A/B of roomcast builds on the fan-out loads, side by side in one run.

    python3 loadtest/ab.py LOADS REPS LABEL=BINARY [LABEL=BINARY ...]

A BINARY may be followed by serve flags, in one quoted word:
    off="target/release/roomcast --metrics-histograms=false"

LOADS is a comma list of 10x100, 1x1000, batch, halfmax (compare.py's
fan-out loads). Every repetition runs each load against each binary in
turn (server pinned to CPU 0, the load generator from target/release on
CPU 1, 5 s windows, or AB_DUR), then prints the median server CPU per
delivery and p99 per load and binary. Standard library only; loopback
only; each run stops by itself.
"""
import json, os, subprocess, sys, tempfile, time, random, shutil
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADS = {
 "10x100": ["--rooms","10","--members","100","--publishers","1","--rate","500"],
 "1x1000": ["--rooms","1","--members","1000","--publishers","1","--rate","100"],
 "batch": ["--rooms","1","--members","100","--publishers","1","--rate","3500"],
 "halfmax": ["--rooms","1","--members","100","--publishers","2","--rate","7000"],
}
loads = sys.argv[1].split(","); reps = int(sys.argv[2]); bins = [a.split("=",1) for a in sys.argv[3:]]
env = dict(os.environ, ROOMCAST_JWT_SECRET="compare-secret-of-32-bytes-or-more")
res = {}
for r in range(reps):
  for load in loads:
    for label, b in bins:
      d = tempfile.mkdtemp(); port = random.randint(20000, 40000)
      b, *flags = b.split()
      srv = subprocess.Popen(["taskset","-c","0",b,"serve","--listen",f"127.0.0.1:{port}","--data",d,"--threads","1","--send-rate","0","--max-queue-bytes","64MiB","--durability","none","--drain-timeout","1s"]+flags, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
      time.sleep(0.7)
      j = os.path.join(d, "result.json")
      lt = subprocess.run(["taskset","-c","1",os.path.join(ROOT, "target/release/roomcast-loadtest"),"fanout","--url",f"ws://127.0.0.1:{port}/v1/ws","--server-pid",str(srv.pid),"--body-bytes","100","--duration",os.environ.get("AB_DUR","5s"),"--warmup","1s","--sources","4","--json",j]+LOADS[load], env=env, capture_output=True, text=True)
      srv.terminate(); srv.wait()
      try:
        with open(j) as fh:
          x = json.load(fh)
        cpu = x["resources"]["server_cpu_us_per_unit"]; p99 = x["latency"]["p99_us"]/1000; p50=x["latency"]["p50_us"]/1000
      except (OSError, ValueError, KeyError):
        print(label, load, "failed", lt.stderr[-300:]); continue
      finally:
        shutil.rmtree(d, ignore_errors=True)
      res.setdefault((load,label),[]).append((cpu,p50,p99))
      print(f"{load:8} {label:10} cpu {cpu:5.2f} µs/del  p50 {p50:5.2f} ms  p99 {p99:5.2f} ms  load {os.getloadavg()[0]:.2f}", flush=True)
print("--- median")
for (load,label),v in sorted(res.items()):
  c=sorted(x[0] for x in v); p=sorted(x[2] for x in v)
  print(f"{load:8} {label:10} cpu {c[len(c)//2]:5.2f}  p99 {p[len(p)//2]:5.2f}  (n={len(v)})")
