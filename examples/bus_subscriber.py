#!/usr/bin/env python3
"""Prints the messages a roomcast node publishes on its bus (`roomcast serve --bus-publish ADDR`).

Each node publishes every committed message of the rooms it owns on an nng Pub0 socket as
`room/<name>` NUL `<msg JSON>`; subscribe to every node's address to see every room. The bus
is best effort: pub/sub drops messages a slow subscriber cannot take, and what is published
before a subscriber connects is not kept for it. Clients that need every message use the
WebSocket API with `join` and `since`.

    pip install pynng
    python3 examples/bus_subscriber.py tcp://127.0.0.1:7001 --prefix room/lobby --count 10

prints one line per message, `ROOM SEQ BODY` (BODY as compact JSON), flushed as it comes.
It prints `subscribed ADDR PREFIX` on stderr at start and `connected ADDR` each time it
(re)connects, and exits 0 after `--count`
messages (0: never), or 1 when `--timeout` seconds pass first.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import pynng


_say_lock = threading.Lock()


def say(text: str) -> None:
    """One whole line on stderr. The connect callback runs on nng's thread;
    `print` writes the text and the newline separately, so two threads'
    lines could interleave mid-line without the lock."""
    with _say_lock:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("addr", help="the node's --bus-publish address, e.g. tcp://127.0.0.1:7001")
    ap.add_argument("--prefix", default="room/", help="topic prefix to subscribe to (default: room/, every room)")
    ap.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    ap.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (0: never)")
    args = ap.parse_args(argv)

    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    got = 0
    with pynng.Sub0() as sub:
        sub.subscribe(args.prefix.encode())
        sub.recv_timeout = 200  # ms: wakes up to check the deadline
        sub.add_post_pipe_connect_cb(lambda _pipe: say(f"connected {args.addr}"))
        # Non-blocking dial: the subscriber may start before the node and connects when it can.
        sub.dial(args.addr, block=False)
        say(f"subscribed {args.addr} {args.prefix}")
        while args.count == 0 or got < args.count:
            if deadline is not None and time.monotonic() > deadline:
                say(f"timed out after {got} messages")
                return 1
            try:
                raw = sub.recv()
            except pynng.Timeout:
                continue
            topic, sep, payload = raw.partition(b"\0")
            if not sep or not topic.startswith(b"room/"):
                say(f"skipping a message without a room topic: {raw[:80]!r}")
                continue
            try:
                msg = json.loads(payload)
            except ValueError:
                say(f"skipping a payload that is not JSON: {payload[:80]!r}")
                continue
            room = topic[len(b"room/"):].decode("utf-8", "replace")
            body = json.dumps(msg.get("body"), separators=(",", ":"), sort_keys=True)
            print(f"{room} {msg.get('seq')} {body}", flush=True)
            got += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
