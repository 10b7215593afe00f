"""Edge hardening against the real binary: odd headers and huge token expiries, out-of-bound
settings, one output budget per connection, bounded room state, request and per-IP limits,
token subjects, message bodies, confined backups and slow members of a busy room.

Clients here are raw sockets driven without blocking (`Raw`): a test can queue bytes, push them
for a while without reading anything back, and later read what the server gave. Memory is the
server's resident set (VmRSS in /proc/PID/status); nothing here asserts on latency.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import select
import selectors
import socket
import stat
import subprocess
import time

import pytest

from conftest import base_env
from helpers import (HOST, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, Response, Watcher, assert_json_error, mint_token,
                     sign_jwt)

MiB = 1 << 20


# --------------------------------------------------------------------------- small tools


def rss(srv) -> int:
    """The server's resident set size in bytes."""
    with open(f"/proc/{srv.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def wait_rss_below(srv, limit: int, timeout: float) -> int:
    """Polls the RSS until it is at most `limit` or `timeout` passes; returns the last reading."""
    deadline = time.monotonic() + timeout
    while True:
        now = rss(srv)
        if now <= limit or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def healthy(srv, source: str | None = None) -> bool:
    try:
        c = Raw(srv.port, source=source)
        c.queue(http_req("GET", "/healthz"))
        r = c.responses(1, timeout=5)
        c.close()
        return bool(r) and r[0].status == 200
    except OSError:
        return False


def bearer(token: str):
    return ("Authorization", f"Bearer {token}")


def http_req(method: str, path: str, body=None, headers=()) -> bytes:
    """One HTTP/1.1 request; header values may be bytes (sent as they are)."""
    lines = [f"{method} {path} HTTP/1.1".encode(), f"Host: {HOST}".encode()]
    if body is not None:
        if not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body, separators=(",", ":")).encode()
            lines.append(b"Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}".encode())
    for k, v in headers:
        lines.append(k.encode() + b": " + (v if isinstance(v, (bytes, bytearray)) else v.encode("latin-1")))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (bytes(body) if body is not None else b"")


def frame(op: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A masked client frame."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | op
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, 0x80 | 127]) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if not n:
        return head + key
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return head + key + (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


def ws_json(obj) -> bytes:
    return frame(OP_TEXT, obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode())


def parse_frame(buf: bytearray, pos: int):
    """(op, payload, next pos) of the server frame at `pos`, or None while incomplete."""
    if len(buf) < pos + 2:
        return None
    b0, b1 = buf[pos], buf[pos + 1]
    assert not b1 & 0x80, "server frame is masked"
    n, at = b1 & 0x7F, pos + 2
    if n == 126:
        if len(buf) < at + 2:
            return None
        n, at = int.from_bytes(buf[at:at + 2], "big"), at + 2
    elif n == 127:
        if len(buf) < at + 8:
            return None
        n, at = int.from_bytes(buf[at:at + 8], "big"), at + 8
    if len(buf) < at + n:
        return None
    return b0 & 0x0F, bytes(buf[at:at + n]), at + n


def parse_response(buf: bytearray):
    """(Response, bytes used) of the HTTP response at the front of `buf`, or None while incomplete."""
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return None
    head = bytes(buf[:i]).decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    assert parts[0].startswith("HTTP/1."), f"bad status line {lines[0]!r}"
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    assert "chunked" not in headers.get("transfer-encoding", ""), "chunked answers are not expected"
    n = 0 if status == 101 else int(headers.get("content-length", "0"))
    if len(buf) < i + 4 + n:
        return None
    return Response(status, parts[2] if len(parts) > 2 else "", headers, bytes(buf[i + 4:i + 4 + n]), head), i + 4 + n


_OPEN: list = []


@pytest.fixture(autouse=True)
def _close_clients(start_server):
    """Closes this test's raw clients before its servers are stopped (set up after
    `start_server`, so torn down before it): a failed test must not leave the drain waiting."""
    yield
    while _OPEN:
        _OPEN.pop().close()


class Raw:
    """A TCP client to the server that never blocks: bytes are queued and pushed by `pump`, which
    reads only when asked to, so a test decides exactly when the server's output is taken."""

    def __init__(self, port: int, source: str | None = None, rcvbuf: int | None = None, timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the advertised window stays small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        _OPEN.append(self)
        self.out = bytearray()
        self.inbuf = bytearray()
        self.eof = False
        self.frames: list = []  # (op, payload) parsed so far
        self.resps: list = []  # Response parsed so far

    def queue(self, data: bytes):
        self.out += data

    def pump(self, until, timeout: float, read: bool = True) -> bool:
        """Sends what is queued (and reads, if `read`) until `until()` holds (True) or `timeout`
        passes or the peer is gone (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if until():
                return True
            now = time.monotonic()
            if now >= deadline or (self.eof and (read or not self.out)):
                return until()
            rl = [self.sock] if read and not self.eof else []
            wl = [self.sock] if self.out and not self.eof else []
            if not rl and not wl:
                time.sleep(min(0.02, deadline - now))
                continue
            r, w, _ = select.select(rl, wl, [], min(0.05, deadline - now))
            if w:
                try:
                    n = self.sock.send(self.out[: 1 << 18])
                    del self.out[:n]
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    self.eof = True
                    self.out.clear()
            if r:
                try:
                    chunk = self.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    self.inbuf += chunk
                else:
                    self.eof = True

    def push(self, timeout: float) -> bool:
        """Sends for at most `timeout` s without reading; True once everything went out."""
        return self.pump(lambda: not self.out, timeout, read=False)

    # -- HTTP

    def _parse_responses(self):
        while True:
            got = parse_response(self.inbuf)
            if got is None:
                return
            self.resps.append(got[0])
            del self.inbuf[: got[1]]

    def responses(self, n: int, timeout: float = 10.0) -> list:
        """Reads until `n` responses have come (fewer if the peer closes or time runs out)."""
        def done():
            self._parse_responses()
            return len(self.resps) >= n
        self.pump(done, timeout)
        return self.resps

    # -- WebSocket

    def upgrade(self, headers=(), path: str = "/v1/ws", timeout: float = 5.0):
        """Sends an upgrade request; returns the answer, or None if the peer closed (or reset)
        without one; no answer at all within `timeout` raises. After a 101 what follows is
        read as frames."""
        key = base64.b64encode(os.urandom(16)).decode()
        hdrs = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
                ("Sec-WebSocket-Version", "13"), *headers]
        self.queue(http_req("GET", path, headers=hdrs))
        got = self.responses(1, timeout)
        if not got:
            if not self.eof:
                raise TimeoutError(f"no answer to an upgrade within {timeout}s")
            return None
        r = got[0]
        if r.status == 101:
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
            assert r.header("sec-websocket-accept", "").encode() == accept, r
        return r

    def _parse_frames(self):
        pos = 0
        while True:
            got = parse_frame(self.inbuf, pos)
            if got is None:
                break
            op, payload, pos = got
            self.frames.append((op, payload))
        if pos:
            del self.inbuf[:pos]

    def wait_frames(self, pred, timeout: float = 10.0) -> bool:
        """Reads until `pred(self.frames)` holds."""
        def done():
            self._parse_frames()
            return pred(self.frames)
        return self.pump(done, timeout)

    def texts(self) -> list:
        """The text frames so far as JSON."""
        return [json.loads(p) for op, p in self.frames if op == OP_TEXT]

    def call(self, obj: dict, timeout: float = 5.0) -> dict:
        """Sends one op with a fresh ref and returns the text reply carrying it."""
        ref = "c" + os.urandom(4).hex()
        self.queue(ws_json({**obj, "ref": ref}))

        def replied(frames):
            return any(op == OP_TEXT and ref.encode() in p for op, p in frames)
        assert self.wait_frames(replied, timeout), f"no reply to {obj} within {timeout}s (eof={self.eof})"
        for i, (op, p) in enumerate(self.frames):
            if op == OP_TEXT and ref.encode() in p:
                m = json.loads(p)
                if m.get("ref") == ref:
                    del self.frames[i]
                    return m
        raise AssertionError("reply vanished")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def ws_open(srv, user: str | None = "ann", token: str | None = None, source=None, rcvbuf=None) -> Raw:
    c = Raw(srv.port, source=source, rcvbuf=rcvbuf)
    if token is None and user is not None:
        token = mint_token(user)
    r = c.upgrade([bearer(token)] if token else [])
    assert r is not None and r.status == 101, f"upgrade refused: {r}"
    return c


def refused(r) -> str | None:
    """None when an upgrade answer is a proper refusal (503 with Retry-After, or closed without
    an answer); otherwise what went wrong."""
    if r is None:
        return None
    if r.status == 503 and r.header("retry-after"):
        return None
    return f"expected 503 with Retry-After or a close, got {r.status} {r.headers}"


def post_all(srv, room: str, bodies: list, token: str, ids=None, source=None, timeout=30.0) -> list:
    """Pipelines one POST per body on one connection; returns the responses in order."""
    c = Raw(srv.port, source=source)
    for i, b in enumerate(bodies):
        doc = {"body": b}
        if ids is not None:
            doc["id"] = ids[i]
        c.queue(http_req("POST", f"/v1/rooms/{room}/messages", doc, [bearer(token)]))
    got = c.responses(len(bodies), timeout)
    c.close()
    assert len(got) == len(bodies), f"{len(got)} answers to {len(bodies)} posts"
    return got


def get_history(srv, room: str, token: str | None = None, **params):
    q = "&".join(f"{k}={v}" for k, v in params.items())
    r = srv.request("GET", f"/v1/rooms/{room}/messages" + (f"?{q}" if q else ""),
                    headers={"Authorization": f"Bearer {token or mint_token('reader')}"}, timeout=10)
    assert r.status == 200, r
    return r.json()


# --------------------------------------------------------------------------- 1. odd Authorization headers

ODD_AUTH = [
    b"bearer\xc3\xa9",
    b"Bearer\xe2\x82\xacx",
    b"bearer \xc3",
    b"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9",
    b"Bearer",
    b"bearer  x",
    b"\xff" * 8192,
]


def _odd_requests(value: bytes):
    auth = [("Authorization", value)]
    yield "GET messages", http_req("GET", "/v1/rooms/x/messages", headers=auth)
    yield "POST messages", http_req("POST", "/v1/rooms/x/messages", {"body": 1}, auth)
    key = base64.b64encode(os.urandom(16)).decode()
    yield "upgrade", http_req("GET", "/v1/ws", headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"), *auth])
    yield "POST backup", http_req("POST", "/v1/admin/backup", b"", auth)


def test_odd_authorization_headers_401(start_server):
    srv = start_server("--send-rate", "0")
    for rnd in range(3):  # every connection may land on another reactor
        for value in ODD_AUTH:
            for what, req in _odd_requests(value):
                c = Raw(srv.port)
                c.queue(req)
                got = c.responses(1, timeout=3)
                c.close()
                assert got, f"round {rnd}: no answer to {what} with Authorization {value[:20]!r}"
                assert_json_error(got[0], 401, "unauthorized")
        assert healthy(srv), f"/healthz does not answer after round {rnd}"
    assert srv.proc.poll() is None


# --------------------------------------------------------------------------- 2. huge numbers


def test_huge_token_exp_works(start_server):
    srv = start_server("--send-rate", "0")
    for exp in (18446744073709551615, 10**19, 2**63):
        tok = sign_jwt({"sub": "bigexp", "iat": int(time.time()), "exp": exp})
        for _ in range(2):  # both reactors
            c = Raw(srv.port)
            r = c.upgrade([bearer(tok)], timeout=3)
            assert r is not None and r.status == 101, f"exp={exp}: upgrade answered {r}"
            assert c.call({"op": "ping"}, timeout=3)["op"] == "pong"
            c.queue(frame(OP_PING, b"huge-exp"))
            assert c.wait_frames(lambda fs: (OP_PONG, b"huge-exp") in fs, 3), f"exp={exp}: no pong frame"
            c.close()
        r = srv.request("GET", "/v1/rooms/bigexp/messages", headers={"Authorization": f"Bearer {tok}"}, timeout=3)
        assert r.status == 200, r
    assert healthy(srv)


def _one_line_error(proc_out: str, key: str) -> str | None:
    """None if the output is one line naming `key` (clap's 'For more information' hint aside)."""
    lines = [l for l in proc_out.splitlines() if l.strip() and not l.startswith("For more information")]
    norm = lambda s: s.lower().replace("_", "-")  # noqa: E731
    if len(lines) != 1 or norm(key) not in norm(lines[0]):
        return f"expected one line naming {key}, got {proc_out!r}"
    return None


def test_out_of_bound_settings_exit_2(roomcast_bin, tmp_path):
    cfg = tmp_path / "roomcast.toml"
    cfg.write_text('dedup-window = "1000000d"\n')
    cases = [
        (["serve", "--request-timeout", "18446744073709551615"], {}, ("request-timeout",)),
        (["serve", "--idle-timeout", "100000d"], {}, ("idle-timeout",)),
        (["serve", "--max-message-bytes", "1TiB"], {}, ("max-message-bytes",)),
        (["serve", "--max-message-bytes", "1024GiB", "--max-queue-bytes", "1024GiB"], {},
         ("max-message-bytes", "max-queue-bytes")),
        (["serve", "--max-queue-bytes", "100GiB"], {}, ("max-queue-bytes",)),
        (["serve"], {"ROOMCAST_DRAIN_TIMEOUT": "99999999d"}, ("drain-timeout",)),
        (["serve", "--config", str(cfg)], {}, ("dedup-window",)),
        (["token", "--sub", "a", "--ttl", "18446744073709551615"], {}, ("ttl",)),
    ]
    procs = []
    for k, (args, env, keys) in enumerate(cases):
        if args[0] == "serve":
            data = tmp_path / f"d{k}"
            data.mkdir()
            args = [*args, "--listen", "127.0.0.1:0", "--data", str(data), "--threads", "1"]
        p = subprocess.Popen([roomcast_bin, *args], env=base_env(env), cwd=tmp_path, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append((p, args, env, keys))
    problems = []
    deadline = time.monotonic() + 6
    for p, args, env, keys in procs:
        try:
            out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            problems.append(f"{args} {env}: still running (not refused); stdout {out[-200:]!r}")
            continue
        if p.returncode != 2:
            problems.append(f"{args} {env}: exit {p.returncode}, stdout {out[-200:]!r}, stderr {err[-300:]!r}")
            continue
        why = [_one_line_error(err, k) for k in keys]
        if all(why):
            problems.append(f"{args} {env}: {why[0]}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- 3. one output budget


def test_history_flood_without_reading(start_server):
    srv = start_server("--send-rate", "0", "--post-rate-per-ip", "0", "--durability", "none")
    room = "hist-flood"
    pad = "x" * 1000
    got = post_all(srv, room, [{"n": i, "pad": pad} for i in range(1000)], mint_token("seed"))
    assert all(r.status == 201 for r in got), [r for r in got if r.status != 201][:3]
    warm = ws_open(srv, "warm")
    page = warm.call({"op": "history", "room": room, "limit": 1000}, timeout=20)
    assert page["op"] == "history" and page["messages"], page
    warm.close()
    time.sleep(0.3)
    base = rss(srv)

    flood = ws_open(srv, "flood", rcvbuf=16384)
    for i in range(60):
        flood.queue(ws_json({"op": "history", "room": room, "limit": 1000, "ref": i}))
    t0 = time.monotonic()
    flood.push(3)
    time.sleep(max(0.0, 3 - (time.monotonic() - t0)))
    grown = rss(srv) - base
    assert healthy(srv), "/healthz does not answer while a client sits on its history pages"
    assert grown < 24 * MiB, f"RSS grew {grown / MiB:.1f} MiB for 60 unread history pages"

    def all_in(frames):
        return sum(1 for op, _ in frames if op == OP_TEXT) >= 60
    assert flood.wait_frames(all_in, 40), f"only {len(flood.frames)} frames came back"
    replies = flood.texts()
    assert sorted(m.get("ref") for m in replies) == list(range(60)), [m.get("ref") for m in replies][:10]
    for m in replies:
        assert m["op"] == "history" and m["room"] == room and isinstance(m["more"], bool), str(m)[:200]
        seqs = [x["seq"] for x in m["messages"]]
        assert seqs and seqs == sorted(seqs) and 1 <= seqs[0] and seqs[-1] <= 1000, seqs[:5]
        assert all(x["body"]["pad"] == pad for x in m["messages"])
    flood.close()


def test_pipelined_http_without_reading(start_server):
    srv = start_server("--send-rate", "0")
    tok = mint_token("piper")
    page = srv.request("GET", "/")
    assert page.status == 200 and page.body, page
    time.sleep(0.2)
    base = rss(srv)

    c = Raw(srv.port, rcvbuf=16384)
    n, markers = 4000, {}
    for i in range(n):
        if i % 500 == 250:
            markers[i] = f"ord-{i}"
            c.queue(http_req("GET", f"/v1/rooms/ord-{i}/messages?limit=1", headers=[bearer(tok)]))
        else:
            c.queue(http_req("GET", "/"))
    t0 = time.monotonic()
    c.push(3)
    time.sleep(max(0.0, 3 - (time.monotonic() - t0)))
    grown = rss(srv) - base
    assert healthy(srv), "/healthz does not answer while a client pipelines without reading"
    assert grown < 24 * MiB, f"RSS grew {grown / MiB:.1f} MiB for {n} unread pipelined answers"

    got = c.responses(n, timeout=40)
    assert len(got) == n, f"{len(got)} of {n} answers (eof={c.eof})"
    for i, r in enumerate(got):
        assert r.status == 200, (i, r)
        if i in markers:
            assert r.json()["room"] == markers[i], f"answer {i} is out of order: {r}"
        else:
            assert r.body == page.body, f"answer {i} is not the page"
    c.close()


def test_pings_without_reading_pongs(start_server):
    srv = start_server("--send-rate", "0")
    c = ws_open(srv, "pinger", rcvbuf=16384)
    assert c.call({"op": "ping"})["op"] == "pong"
    time.sleep(0.2)
    base = rss(srv)
    # The kernel takes the first few MiB of pongs, so it takes this many to reach the server's own queue.
    n = 250_000
    payloads = [b"%08d" % i + b"p" * 117 for i in range(n)]
    c.queue(b"".join(frame(OP_PING, p) for p in payloads))
    t0 = time.monotonic()
    c.push(3)
    time.sleep(max(0.0, 3 - (time.monotonic() - t0)))
    grown = rss(srv) - base
    assert healthy(srv)
    assert grown < 16 * MiB, f"RSS grew {grown / MiB:.1f} MiB for {n} unread pongs"

    # Reading now: pongs echo pings in order (a server may answer only the latest of a run).
    c.queue(ws_json({"op": "ping", "ref": "last"}))
    # The pong op answers the last request, so it comes last.
    assert c.wait_frames(lambda fs: fs and fs[-1][0] == OP_TEXT, 40), f"no pong op (eof={c.eof})"
    pongs = [p for op, p in c.frames if op == OP_PONG]
    assert pongs and all(op in (OP_PONG, OP_TEXT) for op, _ in c.frames), {op for op, _ in c.frames}
    idx = [int(p[:8]) for p in pongs]
    assert all(p == payloads[i] for p, i in zip(pongs, idx)) and idx == sorted(set(idx)), idx[:10]
    assert idx[-1] == n - 1, f"the last ping ({n - 1}) got no pong; last was {idx[-1]}"
    assert c.texts()[-1] == {"op": "pong", "ref": "last"}
    c.close()


# --------------------------------------------------------------------------- 4. bounded rooms


def _history_of_rooms(srv, names: list, timeout: float):
    c = ws_open(srv, "roamer")
    c.queue(b"".join(ws_json({"op": "history", "room": r, "ref": i}) for i, r in enumerate(names)))
    ok = c.wait_frames(lambda fs: len(fs) >= len(names), timeout)
    assert ok, f"{len(c.frames)} of {len(names)} history answers (eof={c.eof})"
    bad = [p for op, p in c.frames if op != OP_TEXT or not p.startswith(b'{"op":"history"')]
    assert not bad, bad[:3]
    c.close()


def test_made_up_rooms_are_forgotten(start_server):
    srv = start_server("--room-idle-timeout", "1s", "--request-rate", "0")
    _history_of_rooms(srv, [f"warm-{i}" for i in range(2000)], 20)
    time.sleep(2.5)
    base = rss(srv)
    tag = os.urandom(3).hex()
    _history_of_rooms(srv, [f"made-up-{tag}-{i:06d}" for i in range(100_000)], 60)
    after = wait_rss_below(srv, base + 16 * MiB, 8)
    assert after <= base + 16 * MiB, (
        f"RSS {after / MiB:.1f} MiB stays {(after - base) / MiB:.1f} MiB above {base / MiB:.1f} MiB "
        "after 100,000 made-up rooms")
    assert healthy(srv)


def test_evicted_room_keeps_seqs_and_dedup(start_server):
    srv = start_server("--room-idle-timeout", "1s", "--send-rate", "0")
    room, tok = "evict-me", mint_token("ev")
    first = post_all(srv, room, ["a", "b", "c"], tok, ids=["e1", "e2", "e3"])
    assert [r.json()["seq"] for r in first] == [1, 2, 3], first
    time.sleep(2.5)
    r = post_all(srv, room, ["d"], tok, ids=["e4"])[0]
    assert r.status == 201 and r.json()["seq"] == 4, r
    time.sleep(2.5)
    again = post_all(srv, room, ["a again"], tok, ids=["e1"])[0]
    assert again.status == 201 and (again.json()["seq"], again.json()["ts"]) == (1, first[0].json()["ts"]), again
    c = ws_open(srv, "ev")
    ack = c.call({"op": "send", "room": room, "body": "b again", "id": "e2"})
    assert (ack["op"], ack["seq"], ack["ts"]) == ("ack", 2, first[1].json()["ts"]), ack
    assert c.call({"op": "send", "room": room, "body": "e"})["seq"] == 5
    h = c.call({"op": "history", "room": room, "limit": 100})
    assert [(m["seq"], m["body"]) for m in h["messages"]] == [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")], h
    c.close()


# --------------------------------------------------------------------------- 5. request bucket


def _ping_burst(srv, n: int):
    c = ws_open(srv, "burst")
    c.queue(b"".join(ws_json({"op": "ping", "ref": i}) for i in range(n)))
    assert c.wait_frames(lambda fs: len(fs) >= n, 15), f"{len(c.frames)} of {n} answers (eof={c.eof})"
    replies = c.texts()
    assert sorted(m.get("ref") for m in replies) == list(range(n))
    return c, replies


def test_request_bucket_limits_pings(start_server):
    srv = start_server()
    c, replies = _ping_burst(srv, 400)
    limited = [m for m in replies if m["op"] == "error"]
    assert all(m["op"] in ("pong", "error") for m in replies)
    assert limited, "400 pings in a burst were all answered"
    for m in limited:
        assert m["code"] == "rate_limited" and isinstance(m.get("retry_after_ms"), int) and m["retry_after_ms"] > 0, m
    time.sleep(limited[-1]["retry_after_ms"] / 1000 + 0.05)
    assert c.call({"op": "ping"})["op"] == "pong"
    assert not c.eof
    c.close()


def test_request_rate_0_disables(start_server):
    srv = start_server("--request-rate", "0")
    c, replies = _ping_burst(srv, 400)
    assert all(m["op"] == "pong" for m in replies), [m for m in replies if m["op"] != "pong"][:3]
    c.close()


# --------------------------------------------------------------------------- 6. per-IP limits


def test_max_conns_per_ip(start_server):
    srv = start_server("--max-conns-per-ip", "10")
    conns = [ws_open(srv, f"u{i}") for i in range(10)]
    for c in conns:
        assert c.call({"op": "ping"})["op"] == "pong"
    extra = Raw(srv.port)
    why = refused(extra.upgrade([bearer(mint_token("u10"))]))
    extra.close()
    assert why is None, f"the 11th connection from 127.0.0.1: {why}"
    other = ws_open(srv, "elsewhere", source="127.0.0.2")
    assert other.call({"op": "ping"})["op"] == "pong"
    assert conns[0].call({"op": "ping"})["op"] == "pong", "an admitted connection stopped working"
    for c in conns[:5]:
        c.close()
    fresh = []
    for i in range(5):
        deadline = time.monotonic() + 5
        while True:
            c = Raw(srv.port)
            r = c.upgrade([bearer(mint_token(f"n{i}"))])
            if r is not None and r.status == 101:
                fresh.append(c)
                break
            c.close()
            assert time.monotonic() < deadline, f"new connection {i} still refused after 5 were closed: {r}"
            time.sleep(0.1)
    for c in fresh:
        assert c.call({"op": "ping"})["op"] == "pong"
    extra = Raw(srv.port)
    why = refused(extra.upgrade([bearer(mint_token("u11"))]))
    extra.close()
    assert why is None, f"an 11th connection again: {why}"
    for c in conns[5:] + fresh + [other]:
        c.close()


def test_connect_rate_per_ip(start_server):
    srv = start_server("--connect-rate-per-ip", "5", "--connect-burst-per-ip", "5")
    tok = mint_token("rapid")
    t0 = time.monotonic()
    conns = [Raw(srv.port) for _ in range(6)]
    elapsed = time.monotonic() - t0
    for c in conns:
        key = base64.b64encode(os.urandom(16)).decode()
        c.queue(http_req("GET", "/v1/ws", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                   ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13"),
                                                   bearer(tok)]))
    answers = []
    for c in conns:
        got = c.responses(1, timeout=5)
        answers.append(got[0] if got else None)
    accepted = [i for i, r in enumerate(answers) if r is not None and r.status == 101]
    problems = [refused(r) for i, r in enumerate(answers) if i not in accepted]
    assert not [p for p in problems if p], problems
    allowed = 5 + int(elapsed * 5)  # the burst, plus what refilled while connecting
    assert 5 <= len(accepted) <= allowed, (
        f"{len(accepted)} of 6 rapid connects in {elapsed:.3f}s were accepted; expected 5..{allowed}")
    other = ws_open(srv, "elsewhere", source="127.0.0.3")
    assert other.call({"op": "ping"})["op"] == "pong"
    for c in conns + [other]:
        c.close()


# --------------------------------------------------------------------------- 7. POST limits


def _check_429(r):
    assert_json_error(r, 429, "rate_limited")
    ra = r.header("retry-after")
    assert ra is not None and ra.isdigit(), f"429 without a Retry-After in seconds: {r}"


def test_post_rate_per_user(start_server):
    srv = start_server("--durability", "none")
    room = "post-flood"
    t0 = time.monotonic()
    got = post_all(srv, room, list(range(300)), mint_token("poster"))
    elapsed = time.monotonic() - t0
    statuses = [r.status for r in got]
    assert set(statuses) <= {201, 429}, statuses
    assert statuses[:100] == [201] * 100, statuses[:100]
    n201 = statuses.count(201)
    assert n201 <= 100 + 50 * elapsed + 1, f"{n201} of 300 posts in {elapsed:.2f}s were taken (burst 100, 50/s)"
    for r in got:
        if r.status == 429:
            _check_429(r)
    h = get_history(srv, room, limit=1000)
    assert [m["seq"] for m in h["messages"]] == list(range(1, n201 + 1))


def test_post_rate_per_ip(start_server):
    srv = start_server("--post-rate-per-ip", "1", "--post-burst-per-ip", "5", "--send-rate", "0",
                       "--durability", "none")
    room = "post-ip"
    c = Raw(srv.port)
    for i in range(10):
        c.queue(http_req("POST", f"/v1/rooms/{room}/messages", {"body": i}, [bearer(mint_token(f"s{i}"))]))
    t0 = time.monotonic()
    got = c.responses(10, timeout=10)
    elapsed = time.monotonic() - t0
    c.close()
    statuses = [r.status for r in got]
    assert len(statuses) == 10, statuses
    assert statuses[:5] == [201] * 5, statuses
    allowed = 5 + int(elapsed)
    assert statuses.count(201) <= allowed, f"{statuses} in {elapsed:.2f}s (burst 5, 1/s per IP)"
    if elapsed < 1:
        assert statuses[5] == 429, statuses
    for r in got:
        if r.status == 429:
            _check_429(r)
    r = post_all(srv, room, ["from .2"], mint_token("s99"), source="127.0.0.2")[0]
    assert r.status == 201, r


# --------------------------------------------------------------------------- 8. token subjects


def test_token_subjects(start_server):
    srv = start_server("--send-rate", "0")
    for sub in ["a\r\nb", "a\x00b", "x" * 8000, "y" * 129, "é" * 64 + "a", "", "del\x7f", "esc\x1b[31m"]:
        tok = mint_token(sub)
        c = Raw(srv.port)
        r = c.upgrade([bearer(tok)], timeout=3)
        c.close()
        assert r is not None and r.status == 401, f"upgrade with sub {sub[:20]!r} ({len(sub.encode())} bytes): {r}"
        for method, body in (("GET", None), ("POST", {"body": "hi"})):
            r = srv.request(method, "/v1/rooms/subs/messages", body=body,
                            headers={"Authorization": f"Bearer {tok}"}, timeout=3)
            assert r.status == 401, f"{method} with sub {sub[:20]!r}: {r}"
    assert get_history(srv, "subs")["messages"] == [], "a refused subject got a message stored"
    for sub in ("y" * 128, "é" * 64):
        c = ws_open(srv, sub)
        assert c.call({"op": "send", "room": "subs", "body": "ok"})["op"] == "ack"
        c.close()
        r = srv.request("POST", "/v1/rooms/subs/messages", body={"body": "ok"},
                        headers={"Authorization": f"Bearer {mint_token(sub)}"}, timeout=3)
        assert r.status == 201, r
    froms = [m["from"] for m in get_history(srv, "subs")["messages"]]
    assert froms == ["y" * 128] * 2 + ["é" * 64] * 2, froms


# --------------------------------------------------------------------------- 9. message bodies


def nested(depth: int, arrays_only: bool = False) -> str:
    opens = "".join("[" if arrays_only or i % 2 == 0 else '{"a":' for i in range(depth))
    closes = "".join("]" if arrays_only or i % 2 == 0 else "}" for i in reversed(range(depth)))
    return opens + "0" + closes


def _send_raw_body(c: Raw, room: str, body: str, timeout: float = 5.0) -> dict:
    ref = "b" + os.urandom(4).hex()
    c.queue(ws_json(f'{{"op":"send","room":"{room}","ref":"{ref}","body":{body}}}'.encode()))

    def replied(frames):
        return any(op == OP_TEXT and f'"ref":"{ref}"'.encode() in p for op, p in frames)
    assert c.wait_frames(replied, timeout), f"no reply to a send (eof={c.eof})"
    for i, (op, p) in enumerate(c.frames):
        if op == OP_TEXT and f'"ref":"{ref}"'.encode() in p:
            del c.frames[i]
            return json.loads(p)
    raise AssertionError("reply vanished")


def _post_raw_body(srv, room: str, body: str) -> Response:
    c = Raw(srv.port)
    c.queue(http_req("POST", f"/v1/rooms/{room}/messages", f'{{"body":{body}}}'.encode(),
                     [bearer(mint_token("poster")), ("Content-Type", "application/json")]))
    got = c.responses(1, timeout=5)
    c.close()
    assert got, "no answer to a post"
    return got[0]


REFUSED_BODIES = {
    "30000 nested arrays": nested(30000, arrays_only=True),
    "depth 65": nested(65),
    "depth 65 arrays": nested(65, arrays_only=True),
    "1e400": "1e400",
    "-1e400": "-1e400",
    "5000 digits": "9" * 5000,
    "1e400 inside": '{"x":[1,2,{"y":1e400}]}',
}
ACCEPTED_BODIES = {
    "depth 64": nested(64),
    "depth 64 arrays": nested(64, arrays_only=True),
    "1.5e300": "1.5e300",
    "20 digits": "12345678901234567890",
}


def test_body_depth_and_numbers(start_server):
    srv = start_server("--send-rate", "0", "--max-message-bytes", "1MiB")
    room = "bodies"
    watcher = ws_open(srv, "watch")
    assert watcher.call({"op": "join", "room": room})["op"] == "joined"
    sender = ws_open(srv, "sender")
    problems = []
    for what, body in REFUSED_BODIES.items():
        r = _send_raw_body(sender, room, body)
        if (r.get("op"), r.get("code")) != ("error", "bad_request"):
            problems.append(f"WS send {what}: {str(r)[:120]}")
        r = _post_raw_body(srv, room, body)
        if r.status != 400:
            problems.append(f"POST {what}: {r.status}")
    marker = sender.call({"op": "send", "room": room, "body": "marker"})
    assert marker["op"] == "ack", marker
    # The watcher's first message is the marker: nothing refused reached it.
    assert watcher.wait_frames(lambda fs: any(b'"op":"msg"' in p for op, p in fs), 5)
    first = next(p for op, p in watcher.frames if b'"op":"msg"' in p)
    if b'"body":"marker"' not in first:
        problems.append(f"the other member received {first[:80]!r}... before the marker")
    if marker["seq"] != 1:
        problems.append(f"refused bodies took seqs: the marker has seq {marker['seq']}")
    for what, body in ACCEPTED_BODIES.items():
        r = _send_raw_body(sender, room, body)
        if r.get("op") != "ack":
            problems.append(f"WS send {what}: {str(r)[:120]}")
        r = _post_raw_body(srv, room, body)
        if r.status != 201:
            problems.append(f"POST {what}: {r.status} {r.body[:100]!r}")
    assert not problems, "\n".join(problems)
    h = get_history(srv, room, limit=100)
    assert len(h["messages"]) == 1 + 2 * len(ACCEPTED_BODIES), [m["seq"] for m in h["messages"]]
    # Over the HTTP body limit (here 1 MiB): 413.
    r = _post_raw_body(srv, room, '"' + "z" * MiB + '"')
    assert r.status == 413, r
    watcher.close()
    sender.close()


def test_body_depth_setting_and_http_limit(start_server):
    srv = start_server("--send-rate", "0", "--max-body-depth", "2", "--max-message-bytes", "4KiB",
                       "--max-queue-bytes", "1MiB")
    room = "shallow"
    c = ws_open(srv, "shallow")
    assert _send_raw_body(c, room, "[[0]]")["op"] == "ack"
    r = _send_raw_body(c, room, "[[[0]]]")
    assert (r["op"], r.get("code")) == ("error", "bad_request"), r
    assert _post_raw_body(srv, room, '{"a":[0]}').status == 201
    assert _post_raw_body(srv, room, '{"a":[{}]}').status == 400
    c.close()
    # The HTTP body limit is --max-message-bytes.
    r = _post_raw_body(srv, room, '"' + "z" * 5000 + '"')
    assert r.status == 413, r
    assert _post_raw_body(srv, room, '"' + "z" * 3000 + '"').status == 201
    assert len(get_history(srv, room)["messages"]) == 3


# --------------------------------------------------------------------------- 10. backups

ADMIN = {"Authorization": f"Bearer {mint_token('root', role='admin')}"}


def _file_state(path):
    st = os.stat(path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return st.st_ino, st.st_size, st.st_mtime_ns, digest


def test_backups_confined(start_server, tmp_path):
    srv = start_server("--send-rate", "0")
    data = str(srv.data_dir)
    backups = os.path.join(data, "backups")
    room = "backed"
    c = ws_open(srv, "ann")
    acks = [c.call({"op": "send", "room": room, "body": i, "id": f"m{i}"}) for i in range(3)]
    assert [a["seq"] for a in acks] == [1, 2, 3], acks

    outside = tmp_path / "elsewhere" / "anything.redb"
    r = srv.request("POST", "/v1/admin/backup", body={"out": str(outside)}, headers=ADMIN, timeout=30)
    assert r.status == 400, r
    assert not (tmp_path / "elsewhere").exists(), "a refused backup wrote outside the data directory"
    for name in ["../x", "a/b", "", "..", "a\\b", "/etc/x", "n" * 124 + ".redb"]:
        r = srv.request("POST", "/v1/admin/backup", body={"name": name}, headers=ADMIN, timeout=30)
        assert_json_error(r, 400, "bad_request")
    assert not os.path.exists(os.path.join(data, "x")) and not os.path.exists(os.path.join(backups, "a"))
    assert not os.path.isdir(backups) or not os.listdir(backups), os.listdir(backups)

    r = srv.request("POST", "/v1/admin/backup", body={"name": "b1.redb"}, headers=ADMIN, timeout=30)
    assert r.status == 200, r
    b1 = os.path.join(backups, "b1.redb")
    assert r.json()["path"] == b1 and r.json()["messages"] == 3, r
    assert stat.S_IMODE(os.stat(b1).st_mode) == 0o600, oct(os.stat(b1).st_mode)
    before = _file_state(b1)
    assert c.call({"op": "send", "room": room, "body": "later"})["seq"] == 4
    r = srv.request("POST", "/v1/admin/backup", body={"name": "b1.redb"}, headers=ADMIN, timeout=30)
    assert_json_error(r, 409, "bad_request")
    assert _file_state(b1) == before, "an existing backup was replaced"
    longest = "n" * 123 + ".redb"
    r = srv.request("POST", "/v1/admin/backup", body={"name": longest}, headers=ADMIN, timeout=30)
    assert r.status == 200 and os.path.exists(os.path.join(backups, longest)), r

    live = os.path.join(data, "roomcast.redb")
    live_ino = os.stat(live).st_ino
    r = srv.request("POST", "/v1/admin/backup", body={"name": "roomcast.redb"}, headers=ADMIN, timeout=30)
    assert r.status == 200 and r.json()["path"] == os.path.join(backups, "roomcast.redb"), r
    assert os.stat(live).st_ino == live_ino, "the live database was replaced"
    assert c.call({"op": "send", "room": room, "body": "after"})["seq"] == 5
    again = c.call({"op": "send", "room": room, "body": "dup", "id": "m1"})
    assert (again["seq"], again["ts"]) == (2, acks[1]["ts"]), again
    h = c.call({"op": "history", "room": room, "limit": 10})
    assert [m["seq"] for m in h["messages"]] == [1, 2, 3, 4, 5], h
    c.close()


# --------------------------------------------------------------------------- 11. slow members


def closed_all(conns: list, timeout: float) -> tuple[int, set]:
    """Reads every connection at once until each sees a close frame or EOF; returns (how many did
    not within `timeout`, close codes seen, None standing for EOF without a close frame)."""
    sel = selectors.DefaultSelector()
    for c in conns:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sel.register(c.sock, selectors.EVENT_READ, c)
    open_, codes = len(conns), set()
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        for key, _ in sel.select(0.1):
            c = key.data
            try:
                chunk = c.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            code = "open"
            if not chunk:
                code = None
            else:
                c.inbuf += chunk
                c._parse_frames()
                close = [p for op, p in c.frames if op == OP_CLOSE]
                c.frames.clear()  # only the close frame matters here
                if close:
                    code = int.from_bytes(close[0][:2], "big") if len(close[0]) >= 2 else None
            if code != "open":
                codes.add(code)
                sel.unregister(c.sock)
                open_ -= 1
    sel.close()
    return open_, codes


def test_slow_members_of_busy_room(start_server):
    # Loopback sockets hold up to ~3 MiB each in the kernel before the server's own queue (default
    # 4 MiB) fills, so the room gets 9000 messages of 1 KiB: enough to put every never-reading
    # member past its cap.
    srv = start_server("--send-rate", "0", "--durability", "none")
    room = "busy"
    watchers = [Watcher(srv, room, user=f"healthy{i}") for i in range(2)]
    for w in watchers:
        w.start()
    time.sleep(0.3)
    base = rss(srv)
    slow = []
    for _ in range(200):
        c = ws_open(srv, "slow", rcvbuf=4096)
        assert c.call({"op": "join", "room": room})["op"] == "joined"
        slow.append(c)

    n, pad = 9000, "x" * 1000
    pub = ws_open(srv, "publisher")
    pub.queue(b"".join(ws_json({"op": "send", "room": room, "ref": i, "body": {"n": i, "pad": pad}})
                       for i in range(n)))
    assert pub.wait_frames(lambda fs: len(fs) >= n, 60), f"{len(pub.frames)} of {n} acks (eof={pub.eof})"
    acks = pub.texts()
    assert [(m["op"], m["ref"]) for m in acks] == [("ack", i) for i in range(n)], \
        [m for m in acks if m["op"] != "ack"][:3]
    pub.close()

    deadline = time.monotonic() + 30
    while any(len(w.msgs) < n for w in watchers) and time.monotonic() < deadline \
            and all(w.is_alive() for w in watchers):
        time.sleep(0.1)
    for w in watchers:
        w.finish()
    for k, w in enumerate(watchers):
        assert not w.problems, w.problems[:3]
        seqs = [m["seq"] for m in w.msgs]
        missing = sorted(set(range(1, n + 1)) - set(seqs))
        assert seqs == list(range(1, n + 1)), f"healthy{k}: {len(seqs)} msgs, missing {missing[:5]}"
        assert [m["body"]["n"] for m in w.msgs] == list(range(n))
        assert w.client.call("ping")["op"] == "pong", "a healthy member lost its connection"

    not_closed, codes = closed_all(slow, 20)
    assert not_closed == 0, f"{not_closed} of 200 slow members were not closed"
    assert codes <= {4000, None}, codes
    for c in slow:
        c.close()
    for w in watchers:
        w.client.close()
    after = wait_rss_below(srv, base + 32 * MiB, 8)
    assert after <= base + 32 * MiB, (
        f"RSS {after / MiB:.1f} MiB stays {(after - base) / MiB:.1f} MiB above {base / MiB:.1f} MiB "
        "after 200 slow members were closed")
    assert healthy(srv)
