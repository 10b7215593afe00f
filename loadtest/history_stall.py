#!/usr/bin/env python3
"""Does paging through a large history stall the reactor for everyone else?

Starts roomcast with ONE reactor (so any stall would hit every client),
stores N messages in one room, then measures the round-trip latency of
healthy clients (`roomcast-loadtest echo`) twice, side by side:

  1. alone;
  2. while another client pages through the whole room, 1000 messages a
     page (`history` with `before`), over and over.

and prints both p50/p99/max and their ratio. The pager is a plain Python
websockets client. Pinning: server on core 0, clients on core 1 (taskset).

  .venv/bin/python loadtest/history_stall.py [--messages 100000] [--duration 10s]
"""

import argparse
import asyncio
import json
import os
import re
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import websockets

REPO = pathlib.Path(__file__).resolve().parents[1]
SECRET = "stall-secret-of-32-bytes-or-more-0"
FIRST_SEQ = re.compile(r'"messages":\[\{"room":"[^"]*","seq":(\d+)')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(binary, sub):
    env = dict(os.environ, ROOMCAST_JWT_SECRET=SECRET)
    out = subprocess.run([binary, "token", "--sub", sub, "--ttl", "7200"], env=env, capture_output=True, text=True)
    return out.stdout.strip()


async def fill(url, room, n):
    """Stores n messages, pipelined with a window of 2000 unacked sends."""
    async with websockets.connect(url, max_size=None) as ws:
        sent = acked = 0
        window = 2000
        body = {"text": "x" * 80}
        while acked < n:
            while sent < n and sent - acked < window:
                sent += 1
                await ws.send(json.dumps({"op": "send", "room": room, "body": body, "ref": sent}))
            m = json.loads(await ws.recv())
            if m.get("op") == "ack":
                acked += 1
            elif m.get("op") == "error":
                raise SystemExit(f"fill failed: {m}")


def pager(url, room, stop, pages):
    async def run():
        async with websockets.connect(url, max_size=None) as ws:
            while not stop.is_set():
                before = None
                while not stop.is_set():
                    req = {"op": "history", "room": room, "limit": 1000, "ref": 1}
                    if before is not None:
                        req["before"] = before
                    await ws.send(json.dumps(req))
                    # The pager shares a core with the measuring clients:
                    # read only what paging needs (the first seq, `more`),
                    # not the whole page, so it takes as little CPU as it can.
                    raw = await ws.recv()
                    first = FIRST_SEQ.search(raw)
                    pages[0] += 1
                    pages[1] += raw.count('"seq":')
                    if first is None or not raw.rstrip("}").endswith('"more":true'):
                        break
                    before = int(first.group(1))

    asyncio.run(run())


def echo(lt, url, pid, duration, label, out):
    cmd = ["taskset", "-c", "1", str(lt), "echo", "--url", url, "--secret", SECRET, "--connections", "20",
           "--inflight", "1", "--duration", duration, "--warmup", "1s", "--server-pid", str(pid),
           "--label", label, "--json", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "roomcast"))
    ap.add_argument("--loadtest", default=str(REPO / "target" / "release" / "roomcast-loadtest"))
    args = ap.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="stall-"))
    port = free_port()
    env = dict(os.environ, ROOMCAST_JWT_SECRET=SECRET)
    server = subprocess.Popen(
        ["taskset", "-c", "0", args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--data", str(work / "data"),
         "--threads", "1", "--send-rate", "0", "--durability", "none", "--max-queue-bytes", "64MiB",
         "--request-rate", "0", "--max-conns-per-ip", "0", "--connect-rate-per-ip", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in server.stdout:
            if "listening on" in line:
                break
        url = f"ws://127.0.0.1:{port}/v1/ws?access_token={token(args.bin, 'pager')}"
        t0 = time.time()
        asyncio.run(fill(url, "big", args.messages))
        print(f"stored {args.messages} messages in {time.time() - t0:.1f} s")
        ws_url = f"ws://127.0.0.1:{port}/v1/ws"

        alone = echo(args.loadtest, ws_url, server.pid, args.duration, "alone", work / "alone.json")
        stop = threading.Event()
        pages = [0, 0]
        t = threading.Thread(target=pager, args=(url, "big", stop, pages), daemon=True)
        t.start()
        time.sleep(0.5)
        busy = echo(args.loadtest, ws_url, server.pid, args.duration, "while paging", work / "busy.json")
        stop.set()
        t.join(timeout=30)

        def pct(r, p):
            return r["latency"][f"{p}_us"]

        print(f"pager read {pages[0]} pages, {pages[1]} messages while the echo clients ran")
        print(f"{'':14} {'p50 µs':>10} {'p99 µs':>10} {'max µs':>10} {'rt/s':>10}")
        for name, r in (("alone", alone), ("while paging", busy)):
            print(f"{name:14} {pct(r, 'p50'):>10.0f} {pct(r, 'p99'):>10.0f} {pct(r, 'max'):>10.0f} {r['units_per_s']:>10.0f}")
        print(f"p99 ratio (while paging / alone): {pct(busy, 'p99') / max(pct(alone, 'p99'), 1):.2f}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
