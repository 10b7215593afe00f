"""Clients and process handling for the end-to-end tests.

Everything here is independent of the server's own code: tokens are minted with
hmac + base64url, HTTP is spoken over plain sockets, and WebSocket either through
the `websockets` library or through a small frame codec for byte-level checks.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import inspect
import json
import os
import signal as signals
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

# websockets >= 17 wants `legacy=True` to return the connection directly (older ones lack the flag).
_WS_EXTRA = {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {}

SECRET = "test-secret-of-the-e2e-tests-0123456789"
HOST = "127.0.0.1"


# --------------------------------------------------------------------------- tokens


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def mint_token(sub: str, ttl: float = 3600, secret: str = SECRET, **claims) -> str:
    """An HS256 JWT for `sub`, expiring `ttl` seconds from now (negative: already expired)."""
    now = int(time.time())
    payload = {"sub": sub, "iat": now, "exp": int(now + ttl)}
    payload.update(claims)
    return sign_jwt(payload, secret)


def sign_jwt(payload: dict, secret: str = SECRET, alg: str = "HS256") -> str:
    """Any claims, signed with HMAC-SHA256 (the header says `alg`, to test refusals)."""
    header = {"alg": alg, "typ": "JWT"}
    signing = _b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + _b64url(
        json.dumps(payload, separators=(",", ":")).encode()
    )
    sig = hmac.new(secret.encode(), signing.encode("ascii"), hashlib.sha256).digest()
    return signing + "." + _b64url(sig)


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------- node


def node_or_skip(node_dir) -> str:
    """The `node` binary, once `ws` is known to be installed in `node_dir`:
    skips without node, fails without the modules scripts/test.sh installs."""
    import shutil

    import pytest

    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed")
    if not (node_dir / "node_modules" / "ws").is_dir():
        pytest.fail("tests/node/node_modules/ws missing: run `npm ci` in tests/node (scripts/test.sh does)")
    return node


# --------------------------------------------------------------------------- process


class Server:
    """One running `roomcast serve` process."""

    def __init__(self, binary, args, env, data_dir, port, log_path, cwd=None):
        self.binary = binary
        self.args = args
        self.port = port
        self.data_dir = data_dir
        self.lines: list[str] = []
        self._lines_lock = threading.Lock()
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [binary, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        self.exit_checked = False

    def _pump(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lines_lock:
                self.lines.append(line)
            try:
                self._log.write(line + "\n")
                self._log.flush()
            except ValueError:
                pass

    def output(self) -> str:
        with self._lines_lock:
            return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.1)
                raise RuntimeError(
                    f"server exited with {self.proc.returncode} before listening:\n{self.output()}"
                )
            if "listening on http://" in self.output():
                return
            # Fall back to probing the port after a while, in case the line is worded otherwise.
            if time.monotonic() - started > 2.0:
                try:
                    socket.create_connection((HOST, self.port), timeout=0.5).close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"server not listening within {timeout}s:\n{self.output()}")

    @property
    def http_base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def signal(self, sig=signals.SIGTERM):
        self.signalled = True
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0, sig=signals.SIGTERM) -> int | None:
        """Sends `sig` (unless a test already did: a second one may mean "stop at once") and
        waits; returns the exit code, or None if it had to be killed."""
        if self.proc.poll() is None:
            if not getattr(self, "signalled", False):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self._close_log()
                return None
        self._close_log()
        return self.proc.returncode

    def _close_log(self):
        self._reader.join(2)
        try:
            self._log.close()
        except Exception:
            pass

    # -- clients bound to this server

    def token(self, sub: str, ttl: float = 3600, **claims) -> str:
        return mint_token(sub, ttl, **claims)

    def http(self, timeout: float = 5.0) -> "HttpConn":
        return HttpConn(HOST, self.port, timeout)

    def request(self, method, path, body=None, headers=None, timeout=5.0) -> "Response":
        conn = self.http(timeout)
        try:
            return conn.request(method, path, body=body, headers=headers)
        finally:
            conn.close()

    def ws(self, user: str | None = "ann", *, token: str | None = None, path: str = "/v1/ws",
           query: str = "", subprotocols=None, headers=None, open_timeout: float = 5.0) -> "Client":
        """A `websockets` client; by default authenticated as `user` with a Bearer header."""
        hdrs = dict(headers or {})
        if token is None and user is not None:
            token = mint_token(user)
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        url = self.ws_base + path + (("?" + query) if query else "")
        conn = ws_connect(
            url,
            additional_headers=hdrs,
            subprotocols=subprotocols,
            compression=None,
            proxy=None,
            open_timeout=open_timeout,
            ping_interval=None,
            close_timeout=3,
            max_size=None,
            max_queue=None,
            **_WS_EXTRA,
        )
        return Client(conn)

    def raw_ws(self, user: str | None = "ann", *, path: str = "/v1/ws", rcvbuf: int | None = None,
               headers=None) -> "RawWs":
        hdrs = dict(headers or {})
        if user is not None:
            hdrs["Authorization"] = f"Bearer {mint_token(user)}"
        return RawWs(HOST, self.port, path, hdrs, rcvbuf=rcvbuf)

    def metrics(self) -> "Metrics":
        r = self.request("GET", "/metrics")
        assert r.status == 200, r
        return Metrics.parse(r.text)


# --------------------------------------------------------------------------- HTTP


@dataclass
class Response:
    status: int
    reason: str
    headers: dict
    body: bytes
    raw_head: str = ""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def __repr__(self):
        return f"<Response {self.status} {self.reason} {self.headers} {self.body[:300]!r}>"


class SocketReader:
    """Buffered reads from a socket, with an overall deadline per call."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def _fill(self, deadline: float) -> bool:
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("read timed out")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("read timed out")
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_until(self, delim: bytes, deadline: float, limit: int = 1 << 20) -> bytes | None:
        while True:
            i = self.buf.find(delim)
            if i >= 0:
                out = bytes(self.buf[: i + len(delim)])
                del self.buf[: i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise ValueError("delimiter not found within limit")
            if not self._fill(deadline):
                return None

    def read_exact(self, n: int, deadline: float) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill(deadline):
                return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self, deadline: float) -> bytes:
        while self._fill(deadline):
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out


class HttpConn:
    """HTTP/1.1 over one plain socket, for keep-alive, pipelining and malformed input."""

    def __init__(self, host, port, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.reader = SocketReader(self.sock)
        self.host = f"{host}:{port}"

    def send(self, data: bytes):
        self.sock.sendall(data)

    def build(self, method, path, body=None, headers=None) -> bytes:
        hdrs = {"Host": self.host}
        if body is not None:
            if not isinstance(body, (bytes, bytearray)):
                body = json.dumps(body).encode()
                hdrs["Content-Type"] = "application/json"
            hdrs["Content-Length"] = str(len(body))
        hdrs.update(headers or {})
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        return head.encode("latin-1") + (bytes(body) if body is not None else b"")

    def request(self, method, path, body=None, headers=None) -> Response:
        self.send(self.build(method, path, body, headers))
        return self.read_response(head_only=(method == "HEAD"))

    def read_response(self, head_only=False, timeout=None) -> Response | None:
        """One response; None if the peer closed before a status line."""
        deadline = time.monotonic() + (timeout or self.timeout)
        head = self.reader.read_until(b"\r\n\r\n", deadline)
        if head is None:
            return None
        text = head.decode("latin-1")
        lines = text.split("\r\n")
        parts = lines[0].split(" ", 2)
        assert parts[0].startswith("HTTP/1."), f"bad status line {lines[0]!r}"
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = {}
        for line in lines[1:]:
            if not line:
                continue
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = b""
        if not head_only and status not in (101, 204, 304) and not 100 <= status < 200:
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = self._read_chunked(deadline)
            elif "content-length" in headers:
                n = int(headers["content-length"])
                body = self.reader.read_exact(n, deadline)
                assert body is not None, "connection closed inside a response body"
            else:
                body = self.reader.read_to_eof(deadline)
        return Response(status, reason, headers, body, text)

    def _read_chunked(self, deadline) -> bytes:
        out = b""
        while True:
            line = self.reader.read_until(b"\r\n", deadline)
            assert line is not None
            n = int(line.split(b";")[0].strip(), 16)
            if n == 0:
                # trailers until the empty line
                while True:
                    t = self.reader.read_until(b"\r\n", deadline)
                    if t is None or t == b"\r\n":
                        return out
            out += self.reader.read_exact(n, deadline)
            self.reader.read_exact(2, deadline)

    def closed_by_peer(self, timeout=3.0) -> bool:
        """True if the peer closes (EOF or reset) within `timeout` without sending more bytes."""
        deadline = time.monotonic() + timeout
        try:
            while self.reader._fill(deadline):
                pass
        except TimeoutError:
            return False
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def assert_json_error(resp: Response, status: int, code: str):
    assert resp.status == status, resp
    ctype = resp.header("content-type", "")
    assert ctype.startswith("application/json"), f"error without JSON content type: {resp}"
    doc = resp.json()
    assert isinstance(doc.get("error"), dict), doc
    assert doc["error"].get("code") == code, doc
    assert isinstance(doc["error"].get("message"), str) and doc["error"]["message"], doc


# --------------------------------------------------------------------------- metrics


@dataclass
class Metrics:
    samples: list = field(default_factory=list)  # (name, labels dict, value)
    types: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "Metrics":
        m = cls()
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split()
                if len(parts) >= 4 and parts[1] == "TYPE":
                    m.types[parts[2]] = parts[3]
                continue
            if "{" in line:
                name, rest = line.split("{", 1)
                labels_s, _, value_s = rest.rpartition("}")
                labels = {}
                for item in _split_labels(labels_s):
                    k, _, v = item.partition("=")
                    assert v.startswith('"') and v.endswith('"'), f"bad label in {line!r}"
                    labels[k.strip()] = v[1:-1]
            else:
                name, _, value_s = line.partition(" ")
                labels = {}
            value = float(value_s.strip().split()[0])
            m.samples.append((name.strip(), labels, value))
        return m

    def get(self, name, **labels):
        return [(lab, v) for n, lab, v in self.samples if n == name and all(lab.get(k) == w for k, w in labels.items())]

    def total(self, name, **labels) -> float:
        return sum(v for _, v in self.get(name, **labels))


def _split_labels(s: str):
    out, cur, quoted, esc = [], "", False, False
    for ch in s:
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            cur += ch
            esc = True
        elif ch == '"':
            cur += ch
            quoted = not quoted
        elif ch == "," and not quoted:
            if cur.strip():
                out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


# --------------------------------------------------------------------------- WebSocket (library)


class Client:
    """A JSON-speaking wrapper around a `websockets` sync connection.

    Messages that a `wait` skips stay queued for later calls, so a test can wait for
    one reply without losing the frames that arrived around it.
    """

    def __init__(self, conn):
        self.conn = conn
        self.pending: collections.deque = collections.deque()
        self._ref = 0

    @property
    def subprotocol(self):
        return self.conn.subprotocol

    def next_ref(self) -> str:
        self._ref += 1
        return f"r{self._ref}"

    def send(self, obj):
        self.conn.send(json.dumps(obj) if not isinstance(obj, (str, bytes)) else obj)

    def _recv_raw(self, timeout):
        data = self.conn.recv(timeout=timeout)
        if isinstance(data, bytes):
            raise AssertionError(f"unexpected binary frame {data[:100]!r}")
        return json.loads(data)

    def recv(self, timeout: float = 5.0):
        if self.pending:
            return self.pending.popleft()
        return self._recv_raw(timeout)

    def wait(self, pred=None, timeout: float = 5.0, **fields):
        """The first message (queued or new) matching `pred` and `fields`; others stay queued."""

        def ok(m):
            if pred is not None and not pred(m):
                return False
            return all(m.get(k) == v for k, v in fields.items())

        for i, m in enumerate(self.pending):
            if ok(m):
                del self.pending[i]
                return m
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no message matching {fields} within {timeout}s; got {seen[:20]}")
            try:
                m = self._recv_raw(remaining)
            except TimeoutError:
                raise TimeoutError(f"no message matching {fields} within {timeout}s; got {seen[:20]}")
            if ok(m):
                return m
            seen.append(m)
            self.pending.append(m)

    def call(self, op, timeout: float = 5.0, **fields):
        """Sends `op` with a fresh ref and returns the reply carrying that ref (reply or error)."""
        ref = fields.pop("ref", None) or self.next_ref()
        self.send({"op": op, "ref": ref, **fields})
        return self.wait(lambda m: m.get("ref") == ref and m.get("op") != "msg", timeout=timeout)

    def join(self, room, **fields):
        r = self.call("join", room=room, **fields)
        assert r.get("op") == "joined", r
        return r

    def drain(self, quiet: float = 0.3):
        """Everything that arrives until nothing has come for `quiet` seconds."""
        out = list(self.pending)
        self.pending.clear()
        while True:
            try:
                out.append(self._recv_raw(quiet))
            except TimeoutError:
                return out

    def closed(self, timeout: float = 5.0):
        """Reads until the server closes; returns (code, reason, messages before the close)."""
        msgs = list(self.pending)
        self.pending.clear()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"connection not closed within {timeout}s; got {msgs[-5:]}")
            try:
                data = self.conn.recv(timeout=remaining)
                msgs.append(data)
            except TimeoutError:
                continue
            except ConnectionClosed as e:
                rcvd = e.rcvd
                return (rcvd.code if rcvd else None), (rcvd.reason if rcvd else None), msgs

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass


# --------------------------------------------------------------------------- WebSocket (raw)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def encode_frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask_fast(payload, key)
    return head + key + masked


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


class RawWs:
    """A WebSocket client that does the handshake by hand and speaks frames byte by byte."""

    def __init__(self, host, port, path, headers, rcvbuf=None, timeout=5.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Must be set before connect so the advertised window stays small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = SocketReader(self.sock)
        key = base64.b64encode(os.urandom(16)).decode()
        hdrs = {
            "Host": f"{host}:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
        }
        hdrs.update(headers)
        req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        self.sock.sendall(req.encode())
        head = self.reader.read_until(b"\r\n\r\n", time.monotonic() + timeout)
        assert head is not None, "closed during handshake"
        status = head.split(b"\r\n", 1)[0]
        assert b" 101 " in status + b" ", f"handshake refused: {head!r}"
        expect = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        assert expect in head, f"bad Sec-WebSocket-Accept in {head!r}"

    def send_frame(self, opcode, payload=b"", fin=True, mask=True, rsv=0):
        self.sock.sendall(encode_frame(opcode, payload, fin, mask, rsv))

    def send_text(self, text: str):
        self.send_frame(OP_TEXT, text.encode())

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    def send_close(self, code=1000, reason=b""):
        self.send_frame(OP_CLOSE, struct.pack("!H", code) + reason)

    def recv_frame(self, timeout: float = 5.0):
        """(fin, opcode, payload), or None on EOF/reset. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        h = self.reader.read_exact(2, deadline)
        if h is None:
            return None
        b0, b1 = h
        assert not b1 & 0x80, "server frame is masked"
        n = b1 & 0x7F
        if n == 126:
            ext = self.reader.read_exact(2, deadline)
            if ext is None:
                return None
            n = struct.unpack("!H", ext)[0]
        elif n == 127:
            ext = self.reader.read_exact(8, deadline)
            if ext is None:
                return None
            n = struct.unpack("!Q", ext)[0]
        payload = self.reader.read_exact(n, deadline)
        if payload is None:
            return None
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv_json(self, timeout: float = 5.0):
        """The next text frame as JSON, answering pings on the way."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv_frame(max(0.01, deadline - time.monotonic()))
            assert f is not None, "connection closed"
            fin, op, payload = f
            if op == OP_PING:
                self.send_frame(OP_PONG, payload)
                continue
            if op == OP_TEXT:
                return json.loads(payload)
            raise AssertionError(f"unexpected frame op={op} payload={payload[:100]!r}")

    def until_close(self, timeout: float = 5.0):
        """Reads frames until a close frame or EOF. Returns (close code or None, frames seen)."""
        deadline = time.monotonic() + timeout
        frames = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"not closed within {timeout}s; frames {[(f[1], f[2][:60]) for f in frames[-5:]]}")
            try:
                f = self.recv_frame(remaining)
            except TimeoutError:
                continue
            if f is None:
                return None, frames
            frames.append(f)
            if f[1] == OP_CLOSE:
                code = struct.unpack("!H", f[2][:2])[0] if len(f[2]) >= 2 else 1005
                return code, frames

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- durability


def kill_server(srv: Server, timeout: float = 10.0) -> int:
    """SIGKILLs `srv` and waits for it; teardown then does not expect exit 0 from it."""
    srv.signalled = True
    srv.proc.send_signal(signals.SIGKILL)
    srv.proc.wait(timeout)
    srv.exit_checked = True
    srv._close_log()
    return srv.proc.returncode


def stop_server(srv: Server, timeout: float = 15.0) -> int | None:
    """SIGTERMs `srv`, waits, and returns its exit code (None if it had to be killed)."""
    srv.signal(signals.SIGTERM)
    return srv.stop(timeout)


def full_history(client: "Client", room: str, after: int = 0, page: int = 1000, timeout: float = 10.0) -> list:
    """Every stored message of `room` with seq > `after`, paged forwards with `history` `after`."""
    out = []
    while True:
        r = client.call("history", room=room, after=after, limit=page, timeout=timeout)
        assert r.get("op") == "history", r
        msgs = r["messages"]
        out.extend(msgs)
        if not r["more"]:
            return out
        assert msgs, f"history after={after} is empty but says more: {r}"
        after = msgs[-1]["seq"]


class Publisher(threading.Thread):
    """Sends to `room` with ids `<prefix>-<n>`, keeping up to `window` sends unanswered, until
    `finish()` (then it waits up to `settle` s for the last replies) or until the connection
    drops. Records `sent` (ids in send order), `acks` (id -> (seq, ts)) and `refused`
    (id -> error code); `problems` lists anything unexpected."""

    def __init__(self, server: Server, room: str, prefix: str, user: str = "pub", window: int = 16,
                 limit: int | None = None, settle: float = 5.0):
        super().__init__(daemon=True)
        self.client = server.ws(user)
        self.room, self.prefix, self.window, self.limit, self.settle = room, prefix, window, limit, settle
        self.sent: list[str] = []
        self.acks: dict[str, tuple[int, int]] = {}
        self.refused: dict[str, str] = {}
        self.problems: list = []
        self.dropped = False
        self._halt = threading.Event()

    def finish(self, timeout: float = 10.0):
        self._halt.set()
        self.join(timeout)
        assert not self.is_alive(), f"publisher {self.prefix} did not stop"

    def last_seq(self) -> int:
        """The highest acked seq so far (safe while the thread runs)."""
        return max((s for s, _ in list(self.acks.values())), default=0)

    def run(self):
        conn = self.client.conn
        outstanding: dict[int, str] = {}
        n = 0
        settle_deadline = None
        try:
            while True:
                stopping = self._halt.is_set() or (self.limit is not None and n >= self.limit)
                while not stopping and len(outstanding) < self.window:
                    mid = f"{self.prefix}-{n}"
                    conn.send(json.dumps({"op": "send", "room": self.room, "id": mid, "ref": n,
                                          "body": {"p": self.prefix, "n": n}}))
                    self.sent.append(mid)
                    outstanding[n] = mid
                    n += 1
                    stopping = self.limit is not None and n >= self.limit
                if stopping:
                    if not outstanding:
                        return
                    if settle_deadline is None:
                        settle_deadline = time.monotonic() + self.settle
                    elif time.monotonic() > settle_deadline:
                        self.problems.append(f"no reply to {sorted(outstanding.values())[:5]}")
                        return
                try:
                    m = json.loads(conn.recv(timeout=0.5))
                except TimeoutError:
                    continue
                if m.get("op") == "msg":
                    continue
                mid = outstanding.pop(m.get("ref"), None)
                if mid is None:
                    self.problems.append(f"unexpected {m}")
                elif m.get("op") == "ack":
                    if m.get("id") != mid or m.get("room") != self.room:
                        self.problems.append(f"ack for {mid} is {m}")
                    self.acks[mid] = (m["seq"], m["ts"])
                elif m.get("op") == "error":
                    self.refused[mid] = m.get("code")
                else:
                    self.problems.append(f"reply to {mid} is {m}")
        except (ConnectionClosed, OSError):
            self.dropped = True
        except Exception as e:  # reported by the test
            self.problems.append(repr(e))


class Watcher(threading.Thread):
    """A member of `room` that records every `msg` it sees until `finish()` or the connection drops."""

    def __init__(self, server: Server, room: str, user: str = "watch", since: int | None = None):
        super().__init__(daemon=True)
        self.client = server.ws(user)
        self.room = room
        fields = {} if since is None else {"since": since}
        self.joined = self.client.join(room, **fields)
        self.msgs: list = [m for m in self.client.pending if m.get("op") == "msg" and m.get("room") == room]
        self.client.pending.clear()
        self.problems: list = []
        self._halt = threading.Event()

    def finish(self, timeout: float = 10.0):
        self._halt.set()
        self.join(timeout)

    def run(self):
        try:
            while not self._halt.is_set():
                try:
                    m = json.loads(self.client.conn.recv(timeout=0.2))
                except TimeoutError:
                    continue
                if m.get("op") == "msg" and m.get("room") == self.room:
                    self.msgs.append(m)
        except (ConnectionClosed, OSError):
            pass
        except Exception as e:
            self.problems.append(repr(e))
