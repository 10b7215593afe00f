"""permessage-deflate (RFC 7692) end to end.

Clients with and without the extension in one room all get every message; the
compressed copy (RSV1 set) is smaller on the wire for 1 KiB JSON bodies; a
decompression bomb is closed with 1009; RSV1 without the extension with 1002; the
Node `ws` client with perMessageDeflate works; `--permessage-deflate false` offers
nothing. Raw clients (helpers.RawWs) see the frame bits and count payload bytes.
"""

import json
import os
import pathlib
import struct
import subprocess
import time
import zlib

import pytest

from helpers import node_or_skip, OP_TEXT, RawWs, HOST, _WS_EXTRA, Client, encode_frame, mint_token, ws_connect

NODE_DIR = pathlib.Path(__file__).resolve().parents[1] / "node"
OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
TAIL = b"\x00\x00\xff\xff"


def chat_body(i: int, size: int = 1024) -> dict:
    """A chat-like JSON body of about `size` bytes of text (compressible as real chat is)."""
    words = ("the meeting moved to thursday, can you bring the slides and the notes from "
             "last week? sure, I will also ask sam about the budget numbers ")
    text = (f"message {i}: " + words * (size // len(words) + 1))[: size - 120]
    return {"kind": "chat", "id": f"m-{i:06d}", "author": {"name": "ann", "avatar": "/a/ann.png"},
            "text": text, "tags": ["team", "planning"]}


def raw(srv, user, headers=None) -> RawWs:
    hdrs = {"Authorization": f"Bearer {mint_token(user)}"}
    hdrs.update(headers or {})
    return RawWs(HOST, srv.port, "/v1/ws", hdrs)


def handshake_extensions(srv, headers) -> str | None:
    """The Sec-WebSocket-Extensions answer to an upgrade offering `headers`."""
    import socket
    s = socket.create_connection((HOST, srv.port), timeout=5)
    hdrs = {"Host": "t", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13",
            "Authorization": f"Bearer {mint_token('hs')}"}
    hdrs.update(headers)
    s.sendall((f"GET /v1/ws HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    s.close()
    assert b" 101 " in head.split(b"\r\n", 1)[0], head
    for line in head.decode().split("\r\n"):
        if line.lower().startswith("sec-websocket-extensions:"):
            return line.split(":", 1)[1].strip()
    return None


def recv_raw(rw: RawWs, timeout=5.0):
    """(first byte, payload) of the next server frame."""
    deadline = time.monotonic() + timeout
    h = rw.reader.read_exact(2, deadline)
    assert h is not None, "closed"
    b0, b1 = h
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", rw.reader.read_exact(2, deadline))[0]
    elif n == 127:
        n = struct.unpack("!Q", rw.reader.read_exact(8, deadline))[0]
    payload = rw.reader.read_exact(n, deadline)
    assert payload is not None, "closed"
    return b0, payload


def inflate(payload: bytes) -> bytes:
    d = zlib.decompressobj(wbits=-15)
    return d.decompress(payload + TAIL)


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def recv_msgs(rw: RawWs, n: int, timeout=10.0):
    """The next `n` msg frames: (compressed?, wire payload bytes, JSON)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        b0, payload = recv_raw(rw, max(0.1, deadline - time.monotonic()))
        assert b0 & 0x30 == 0, f"RSV2/3 set: {b0:#x}"
        compressed = bool(b0 & 0x40)
        body = inflate(payload) if compressed else payload
        if b0 & 0x0F != OP_TEXT:
            continue
        m = json.loads(body)
        if m.get("op") == "msg":
            got.append((compressed, len(payload), m))
    return got


def deflate_client(srv, user):
    conn = ws_connect(f"{srv.ws_base}/v1/ws", additional_headers={"Authorization": f"Bearer {mint_token(user)}"},
                      compression="deflate", proxy=None, open_timeout=5, ping_interval=None, close_timeout=3,
                      max_size=None, **_WS_EXTRA)
    return Client(conn)


@pytest.mark.timeout(60)
def test_deflate_and_plain_members_share_a_room(start_server, room):
    srv = start_server("--send-rate", "0")
    zc = deflate_client(srv, "zed")
    ext = zc.conn.response.headers.get("Sec-WebSocket-Extensions", "")
    assert ext.startswith("permessage-deflate") and "server_no_context_takeover" in ext, ext
    plain = srv.ws("pat")
    rz = raw(srv, "rz", OFFER)
    rp = raw(srv, "rp")
    for c in (zc, plain):
        r = c.next_ref()
        c.send({"op": "join", "room": room, "ref": r})
        c.wait(op="joined", ref=r)
    for rw in (rz, rp):
        rw.send_json({"op": "join", "room": room, "ref": "j"})
        while rw.recv_json().get("op") != "joined":
            pass
    n = 20
    bodies = [chat_body(i) for i in range(n)]
    assert all(900 <= len(json.dumps(b)) <= 1100 for b in bodies)
    for i, b in enumerate(bodies):
        # Sent compressed by the deflate client itself, so inbound inflation is in play too.
        zc.send({"op": "send", "room": room, "body": b, "ref": f"s{i}"})
    for c in (zc, plain):
        got = [c.wait(op="msg", room=room)["body"] for _ in range(n)]
        assert got == bodies
    z = recv_msgs(rz, n)
    p = recv_msgs(rp, n)
    assert [m["body"] for _, _, m in z] == bodies
    assert [m["body"] for _, _, m in p] == bodies
    assert all(c for c, _, _ in z), "every 1 KiB msg frame to a deflate member has RSV1"
    assert not any(c for c, _, _ in p), "no RSV1 to a member without the extension"
    zbytes, pbytes = sum(k for _, k, _ in z), sum(k for _, k, _ in p)
    assert zbytes * 2 < pbytes, f"compressed {zbytes} bytes vs plain {pbytes}"
    # Small replies may go plain (RSV1 clear) to a deflate member: still fine.
    rz.send_json({"op": "ping", "ref": "p"})
    b0, payload = recv_raw(rz)
    assert json.loads(inflate(payload) if b0 & 0x40 else payload)["op"] == "pong"


@pytest.mark.timeout(30)
def test_decompression_bomb_is_closed_with_1009(start_server):
    srv = start_server()
    rw = raw(srv, "bomber", OFFER)
    bomb = deflate(b"[" + b" " * (64 << 20) + b"]")
    assert len(bomb) < 100_000
    rw.sock.sendall(encode_frame(OP_TEXT, bomb, rsv=4))
    code, _ = rw.until_close(timeout=10)
    assert code == 1009
    # The server is fine.
    ok = raw(srv, "after", OFFER)
    ok.send_json({"op": "ping", "ref": "x"})
    assert ok.recv_json()["op"] == "pong"


@pytest.mark.timeout(30)
def test_rsv1_rules(start_server):
    srv = start_server()
    # Without the extension RSV1 is a protocol error.
    rw = raw(srv, "plain")
    rw.sock.sendall(encode_frame(OP_TEXT, deflate(b'{"op":"ping"}'), rsv=4))
    assert rw.until_close()[0] == 1002
    # With it, RSV1 on a control frame is too; compressed bad UTF-8 is 1007.
    rw = raw(srv, "z1", OFFER)
    rw.sock.sendall(encode_frame(0x9, b"", rsv=4))
    assert rw.until_close()[0] == 1002
    rw = raw(srv, "z2", OFFER)
    rw.sock.sendall(encode_frame(OP_TEXT, deflate(b'{"op":"ping","ref":"\xff"}'), rsv=4))
    assert rw.until_close()[0] == 1007
    # A compressed ping op fragmented over two frames (RSV1 on the first only) is answered.
    rw = raw(srv, "z3", OFFER)
    z = deflate(b'{"op":"ping","ref":"frag"}')
    rw.sock.sendall(encode_frame(OP_TEXT, z[:5], fin=False, rsv=4) + encode_frame(0x0, z[5:]))
    assert rw.recv_json() == {"op": "pong", "ref": "frag"}


@pytest.mark.timeout(30)
def test_negotiation_answers(start_server):
    srv = start_server()
    assert handshake_extensions(srv, {}) is None
    assert handshake_extensions(srv, {"Sec-WebSocket-Extensions": "permessage-deflate"}) == \
        "permessage-deflate; server_no_context_takeover"
    got = handshake_extensions(srv, {"Sec-WebSocket-Extensions":
                                     "permessage-deflate; x=1, permessage-deflate; server_max_window_bits=10; "
                                     "client_no_context_takeover"})
    assert got == "permessage-deflate; server_no_context_takeover; client_no_context_takeover; " \
                  "server_max_window_bits=10"
    assert handshake_extensions(srv, {"Sec-WebSocket-Extensions": "permessage-deflate; server_max_window_bits=7"}) \
        is None
    off = start_server("--permessage-deflate=false")
    assert handshake_extensions(off, {"Sec-WebSocket-Extensions": "permessage-deflate"}) is None
    # A deflate-capable client still works with it off.
    c = deflate_client(off, "z")
    c.send({"op": "ping", "ref": "1"})
    assert c.wait(op="pong")["ref"] == "1"


@pytest.mark.timeout(90)
def test_node_ws_client_with_permessage_deflate(start_server, room):
    node = node_or_skip(NODE_DIR)
    srv = start_server("--send-rate", "0")
    env = dict(os.environ, ROOMCAST_WS_URL=f"{srv.ws_base}/v1/ws", ROOMCAST_TOKEN=mint_token("node-z"),
               ROOMCAST_TOKEN2=mint_token("node-p"), ROOMCAST_ROOM=room)
    r = subprocess.run([node, "--test", "--test-reporter=spec", "deflate_client.js"], cwd=NODE_DIR, env=env,
                       capture_output=True, text=True, timeout=80)
    assert r.returncode == 0, f"node --test failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"


def test_each_message_is_compressed_once_for_every_reactor(start_server, room):
    """Deflate members spread over both reactors: the compressed frame is
    made once per message and shared, not once per reactor."""
    srv = start_server("--send-rate", "0", "--threads", "2")
    members = [raw(srv, f"z{i}", OFFER) for i in range(8)]
    for rw in members:
        rw.send_json({"op": "join", "room": room, "ref": "j"})
        while rw.recv_json().get("op") != "joined":
            pass
    m = srv.metrics()
    per_reactor = {r: m.total("roomcast_connections_open", reactor=r) for r in ("0", "1")}
    if min(per_reactor.values()) < 1:
        pytest.skip(f"the kernel put every connection on one reactor: {per_reactor}")
    before = m.total("roomcast_deflate_compressions_total")
    sender = srv.ws("sender")
    n = 10
    for i in range(n):
        assert sender.call("send", room=room, body=chat_body(i)).get("op") == "ack"
    for rw in members:
        z = recv_msgs(rw, n)
        assert all(c for c, _, _ in z)
    sender.close()
    assert srv.metrics().total("roomcast_deflate_compressions_total") - before == n


def image_like(seed: int, length: int, copies: int) -> bytes:
    """The generator of the deflate unit test `no_input_is_left_behind_when_the_output_buffer_fills`:
    a 7-bit alphabet with short copies, compressing to about three quarters like a bitmap."""
    m = (1 << 64) - 1
    x = ((seed * 0x9E3779B97F4A7C15) & m) | 1
    v = bytearray()
    while len(v) < length:
        x ^= (x << 13) & m
        x ^= x >> 7
        x ^= (x << 17) & m
        b = (x >> 24) & 0xFF
        if b < copies and len(v) > 300:
            start = len(v) - 1 - (x >> 40) % 256
            for k in range(3 + (x >> 50) % 6):
                v.append(v[start + k])
        else:
            v.append((b & 0x3F) | ((b >> 6) & 1) << 6)
    return bytes(v[:length])


@pytest.mark.timeout(60)
def test_compressed_echo_returns_every_byte(start_server):
    # The messages that used to come back a few hundred bytes short (Autobahn 12.2.9 found
    # it): the server's compressor filled its output buffer while input was still in its
    # lookahead. The websockets client inflates on its own, with context takeover on its side.
    srv = start_server("--echo", "--max-message-bytes", "1MiB")
    conn = ws_connect(f"{srv.ws_base}/v1/echo?access_token={mint_token('echo')}", compression="deflate",
                      proxy=None, open_timeout=5, ping_interval=None, close_timeout=3, max_size=None, **_WS_EXTRA)
    try:
        assert "permessage-deflate" in (conn.response.headers.get("Sec-WebSocket-Extensions") or "")
        for seed in [22, 392, 666, 1036, 1310] + list(range(12)):
            body = image_like(seed, 20_000 + (seed * 7919) % 60_000, (seed % 7) * 20 + 10)
            conn.send(body)
            got = conn.recv(timeout=10)
            assert len(got) == len(body) and got == body, f"seed {seed}: {len(got)} of {len(body)} bytes"
    finally:
        conn.close()


@pytest.mark.timeout(30)
def test_a_message_ending_in_a_final_block_is_followed_by_intact_ones(start_server):
    # RFC 7692 7.2.3.4 lets a sender end a message with BFINAL set. With context takeover
    # the tail the server adds must not leak into the next message (it used to read as
    # a stored-block header: the next message was closed with 1002 or came back as garbage).
    srv = start_server("--echo")
    rw = RawWs(HOST, srv.port, f"/v1/echo?access_token={mint_token('bfinal')}",
               {"Sec-WebSocket-Extensions": "permessage-deflate"})
    first = json.dumps(chat_body(1)).encode()
    c = zlib.compressobj(wbits=-15)
    rw.send_frame(OP_TEXT, c.compress(first) + c.flush(zlib.Z_FINISH), rsv=4)
    # The next ones from fresh streams, Huffman-coded and stored (level 0 starts with 0x00).
    nexts = []
    for level in (6, 0, 6):
        body = json.dumps(chat_body(len(nexts) + 2)).encode()
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        out = c.compress(body) + c.flush(zlib.Z_SYNC_FLUSH)
        rw.send_frame(OP_TEXT, out[:-4], rsv=4)
        nexts.append(body)
    for want in [first] + nexts:
        b0, payload = recv_raw(rw)
        assert b0 & 0x0F == OP_TEXT, f"frame {b0:#x}: {payload[:40]!r}"
        got = inflate(payload) if b0 & 0x40 else payload
        assert got == want
